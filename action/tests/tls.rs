//! The client and a real build over the controller's own HTTPS, with a
//! private CA trusted through SSL_CERT_FILE (scripts/dev-tls makes it);
//! and the client's refusal to send its token over plain HTTP.

mod support;
use support::provenance::image_entries;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::*;

fn bakery(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bakery"))
        .current_dir(dir)
        .args(args)
        .env_remove("CONTROLLER_URL")
        .env_remove("SSL_CERT_FILE")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `bakery-controller` serving HTTPS with `tls`'s certificate; its local
/// agents are given the CA (AGENT_CA_FILE) and trust nothing else for it.
fn https_controller(tls: &Path, token: &str) -> (Server, String) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("controller.log")).unwrap();
    let child = Command::new(sibling_binary("bakery-controller"))
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("DATA_DIR", dir.path().join("data"))
        .env("TLS_CERT_FILE", tls.join("server.pem"))
        .env("TLS_KEY_FILE", tls.join("server.key"))
        .env_remove("SSL_CERT_FILE")
        .env("AGENT_CA_FILE", tls.join("ca.pem"))
        .env("CONTROLLER_TOKEN", token)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Command::new("curl")
        .args(["-sk", "-o", "/dev/null", &format!("{url}/healthz")])
        .status()
        .is_ok_and(|s| !s.success())
    {
        assert!(
            Instant::now() < deadline,
            "the HTTPS controller did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (Server { child, dir, port }, url)
}

#[test]
fn a_build_runs_over_https_with_a_private_ca() {
    let tls = tempfile::tempdir().unwrap();
    let made = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/dev-tls"))
        .arg(tls.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let token = "a-long-enough-controller-token";
    let (_controller, url) = https_controller(tls.path(), token);
    let registry = registry();
    let repo = project(&[
        ("Dockerfile", "FROM scratch\nCOPY hello.txt /\n"),
        ("hello.txt", "hello\n"),
        (
            "config.yaml",
            &format!(
                "global:\n  kaniko:\n    destination: {}/tls/hello:1\nbake:\n  - arch: amd64\n  - arch: arm64\n",
                registry.host()
            ),
        ),
    ]);
    let ca = tls.path().join("ca.pem");
    let env = [
        ("CONTROLLER_URL", url.as_str()),
        ("CONTROLLER_TOKEN", token),
    ];
    // Without the CA the certificate is refused, and the error says so.
    let out = bakery(repo.path(), &["build"], &env);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.to_lowercase().contains("certificate"), "{all}");
    // With it, the build runs: client and agents over HTTPS.
    let mut env = env.to_vec();
    env.push(("SSL_CERT_FILE", ca.to_str().unwrap()));
    let out = bakery(repo.path(), &["build"], &env);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let index = raw_manifest(&format!("{}/tls/hello:1", registry.host()));
    assert_eq!(image_entries(&index).len(), 2, "{index}");
}

/// A token over plain HTTP to a host that is not loopback is refused
/// before anything is sent: the address below is never contacted.
#[test]
fn the_client_refuses_plain_http_beyond_loopback() {
    let repo = project(&[
        ("Dockerfile", "FROM scratch\n"),
        (
            "config.yaml",
            "global:\n  kaniko:\n    destination: r.example/app:1\nbake:\n  - arch: amd64\n",
        ),
    ]);
    for args in [&["build"][..], &["status", "some-id"], &["logs", "some-id"]] {
        let started = Instant::now();
        let out = bakery(
            repo.path(),
            args,
            &[
                ("CONTROLLER_URL", "http://bakery.invalid:8080"),
                ("CONTROLLER_TOKEN", "a-long-enough-controller-token"),
            ],
        );
        let all = text(&out);
        assert!(!out.status.success(), "{args:?}: {all}");
        assert!(
            all.contains("refusing to talk plain HTTP to bakery.invalid")
                && all.contains("BAKERY_INSECURE=true"),
            "{args:?}: {all}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{args:?}");
    }
}
