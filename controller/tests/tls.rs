//! The controller's own HTTPS (TLS_CERT_FILE / TLS_KEY_FILE) with a CA made
//! by `scripts/dev-tls`: clients that trust the CA reach it, agents check in
//! over it, a rotated certificate is served without a restart, and a bad
//! pair fails start-up with the file named.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bakery_protocol::api::BuildState;
use bakery_protocol::Arch;
use reqwest::StatusCode;
use support::Harness;

fn dev_tls(dir: &Path, name: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/dev-tls");
    let out = Command::new("bash")
        .arg(script)
        .arg(dir)
        .arg(name)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client that trusts only `ca.pem`, reporting the peer's certificate.
fn trusting(dir: &Path) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.join("ca.pem")).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .tls_info(true)
        .build()
        .unwrap()
}

async fn peer_certificate(dir: &Path, url: &str) -> Vec<u8> {
    let resp = trusting(dir).get(url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let info = resp.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
    info.peer_certificate().unwrap().to_vec()
}

fn der(pem: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(pem)
        .output()
        .unwrap();
    out.stdout
}

#[tokio::test]
async fn the_controller_serves_https_and_rotates_its_certificate() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tls = tempfile::tempdir().unwrap();
    dev_tls(tls.path(), "first");
    let (cert, key) = (tls.path().join("server.pem"), tls.path().join("server.key"));
    let ca = tls.path().join("ca.pem").display().to_string();
    // A curl agent that trusts the CA, as SSL_CERT_FILE makes real agents do.
    let agent =
        support::succeeding_agent("0").replace("curl -fsS", &format!("curl --cacert {ca} -fsS"));
    let h = Harness::new(
        &agent,
        &[
            ("TLS_CERT_FILE", cert.to_str().unwrap()),
            ("TLS_KEY_FILE", key.to_str().unwrap()),
        ],
    )
    .await;
    let health = h.url("/healthz");
    assert!(health.starts_with("https://127.0.0.1:"), "{health}");
    assert_eq!(peer_certificate(tls.path(), &health).await, der(&cert));
    // Plain HTTP on the HTTPS port gets no answer.
    let plain = health.replace("https://", "http://");
    let resp = reqwest::Client::new()
        .get(&plain)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(resp.is_err() || !resp.unwrap().status().is_success());
    // A client without the CA refuses the certificate.
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([])
        .build()
        .unwrap();
    assert!(untrusting.get(&health).send().await.is_err());

    // A build whose agent checks in and reports over HTTPS.
    let http = trusting(tls.path());
    let key_ref = {
        use sha2::Digest;
        let body = b"ctx".to_vec();
        let key = format!(
            "contexts/sha256-{}.tar.gz",
            hex::encode(sha2::Sha256::digest(&body))
        );
        let put = http.put(h.url(&format!("/v1/contexts/{key}"))).body(body);
        assert_eq!(put.send().await.unwrap().status(), StatusCode::CREATED);
        key
    };
    let resp = http
        .post(h.url("/v1/builds"))
        .json(&support::unpushed_request(&key_ref, &[Arch::Amd64]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let status_url = h.url(&format!("/v1/builds/{id}"));
    support::eventually(
        "the build over HTTPS ends",
        Duration::from_secs(30),
        async || {
            let s: bakery_protocol::api::BuildStatus = http
                .get(&status_url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            s.state.is_terminal()
        },
    )
    .await;
    let s: bakery_protocol::api::BuildStatus = http
        .get(&status_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s.state, BuildState::Succeeded, "{s:?}");

    // Rotated in place (as cert-manager does): served within the check.
    let first = der(&cert);
    dev_tls(tls.path(), "second");
    let second = der(&cert);
    assert_ne!(second, first);
    let wait = bakery_controller::tls::RELOAD_CHECK * 3;
    support::eventually("the rotated certificate is served", wait, async || {
        peer_certificate(tls.path(), &health).await == second
    })
    .await;
    // A broken rewrite, or the path swapped for an endless file, keeps the
    // last good certificate in service, and handshakes go on meanwhile.
    for broken in ["garbage", "/dev/zero"] {
        std::fs::remove_file(&cert).unwrap();
        if broken == "garbage" {
            std::fs::write(&cert, "not a certificate").unwrap();
        } else {
            std::os::unix::fs::symlink(broken, &cert).unwrap();
        }
        tokio::time::sleep(wait).await;
        let started = std::time::Instant::now();
        assert_eq!(
            peer_certificate(tls.path(), &health).await,
            second,
            "{broken}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "{broken}");
    }
}

#[tokio::test]
async fn a_bad_certificate_or_key_fails_start_up_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    dev_tls(&one, "one");
    dev_tls(&two, "two");
    let start = |vars: &[(&str, &Path)]| {
        let env: Vec<(String, String)> = [("LISTEN_ADDR", "127.0.0.1:0".to_string())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .chain([(
                "DATA_DIR".to_string(),
                dir.path().join("data").display().to_string(),
            )])
            .chain(
                vars.iter()
                    .map(|(k, v)| (k.to_string(), v.display().to_string())),
            )
            .collect();
        bakery_controller::Config::from_vars(env).unwrap()
    };
    let cases: Vec<(Vec<(&str, std::path::PathBuf)>, &str)> = vec![
        (
            vec![("TLS_CERT_FILE", one.join("server.pem"))],
            "TLS_KEY_FILE is not",
        ),
        (
            vec![
                ("TLS_CERT_FILE", one.join("server.pem")),
                ("TLS_KEY_FILE", two.join("server.key")),
            ],
            "is not the certificate's",
        ),
        (
            vec![
                ("TLS_CERT_FILE", one.join("server.key")),
                ("TLS_KEY_FILE", one.join("server.key")),
            ],
            "holds no PEM certificate",
        ),
        (
            vec![
                ("TLS_CERT_FILE", one.join("missing.pem")),
                ("TLS_KEY_FILE", one.join("server.key")),
            ],
            "missing.pem",
        ),
    ];
    for (vars, why) in cases {
        let vars: Vec<(&str, &Path)> = vars.iter().map(|(k, v)| (*k, v.as_path())).collect();
        let Err(e) = bakery_controller::start(start(&vars)).await else {
            panic!("started with {vars:?}")
        };
        assert!(e.to_string().contains(why), "{vars:?}: {e}");
    }
}
