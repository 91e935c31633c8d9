//! OpenID Connect ID tokens, as GitHub Actions and GitLab CI issue them,
//! verified against JWKS served on 127.0.0.1 with key pairs made here: an
//! issuer that counts its hits and can hang (accept, never answer), two
//! issuers at once, and what each CI tenant may see.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::{Json, Router};
use bakery_controller::Config;
use bakery_protocol::api::Creator;
use bakery_protocol::Arch;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

const AUDIENCE: &str = "https://bakery.example.com";
const ADMIN: &str = "static-token-for-admins-0123";

/// An OIDC issuer on loopback with one RSA key `k1`.
struct Issuer {
    url: String,
    key: EncodingKey,
    /// Discovery and JWKS requests it was sent.
    hits: Arc<AtomicU64>,
    /// While set, it accepts requests and never answers them.
    hang: Arc<AtomicBool>,
}

impl Issuer {
    async fn start(dir: &std::path::Path, name: &str) -> Issuer {
        let (key, n) = rsa_key(dir, name);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let jwks = json!({"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256", "n": n, "e": "AQAB"}]});
        let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/.well-known/jwks")});
        let (hits, hang) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let serve = |doc: Value| {
            let (hits, hang) = (Arc::clone(&hits), Arc::clone(&hang));
            move || {
                let (doc, hits, hang) = (doc.clone(), Arc::clone(&hits), Arc::clone(&hang));
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    if hang.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    Json(doc)
                }
            }
        };
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(serve(discovery)))
            .route("/.well-known/jwks", get(serve(jwks)));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Issuer {
            url,
            key,
            hits,
            hang,
        }
    }

    /// A token of this issuer with `extra` claims (which may override the
    /// defaults), signed with its key.
    fn token(&self, extra: Value) -> String {
        self.token_with(extra, Header::new(Algorithm::RS256), &self.key)
    }

    fn token_with(&self, extra: Value, mut header: Header, key: &EncodingKey) -> String {
        header.kid.get_or_insert_with(|| "k1".into());
        let mut claims = json!({
            "iss": self.url, "aud": AUDIENCE, "exp": now() + 300, "iat": now(),
            "sub": "repo:octo-org/app:ref:refs/heads/main",
        });
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        encode(&header, &claims, key).unwrap()
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

fn rsa_key(dir: &std::path::Path, name: &str) -> (EncodingKey, String) {
    let pem = dir.join(format!("{name}.pem"));
    let made = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&pem)
        .arg("2048")
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let out = Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    let hex = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("Modulus=")
        .to_string();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    (
        EncodingKey::from_rsa_pem(&std::fs::read(&pem).unwrap()).unwrap(),
        n,
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn config(dir: &std::path::Path, issuers: &str, allow: &str) -> Config {
    Config::from_vars(
        [
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("DATA_DIR", dir.join("data").to_str().unwrap()),
            ("CONTROLLER_TOKEN", ADMIN),
            ("OIDC_ISSUERS", issuers),
            ("OIDC_AUDIENCE", AUDIENCE),
            ("OIDC_ALLOW", allow),
            // The stand-in agents run locally; these tests are about who
            // may call, not where builds run.
            ("LOCAL_PLATFORM_SHARED", "true"),
            ("LOCAL_AGENT_ISOLATION", "none"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap()
}

async fn start_error(dir: &std::path::Path, issuers: &str, allow: &str) -> String {
    match bakery_controller::start(config(dir, issuers, allow)).await {
        Ok(_) => panic!("started with OIDC_ISSUERS={issuers} OIDC_ALLOW={allow}"),
        Err(e) => e.to_string(),
    }
}

async fn call(url: &str, token: &str) -> (StatusCode, String) {
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

#[tokio::test]
async fn ci_id_tokens_are_verified_against_the_issuers_keys_and_allow_list() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::start(dir.path(), "issuer").await;
    let (other_key, _) = rsa_key(dir.path(), "attacker");
    let running = bakery_controller::start(config(
        dir.path(),
        &issuer.url,
        "repository=octo-org/*,ref=refs/heads/main;project_path=group/app",
    ))
    .await
    .unwrap();
    let info = format!("{}/v1/info", running.url());

    // A GitHub Actions job of an allowed repository and branch.
    let github = json!({"repository": "octo-org/app", "ref": "refs/heads/main"});
    assert_eq!(
        call(&info, &issuer.token(github.clone())).await.0,
        StatusCode::OK
    );
    // A GitLab job of the allowed project.
    let gitlab = json!({"project_path": "group/app", "ref": "main"});
    assert_eq!(call(&info, &issuer.token(gitlab)).await.0, StatusCode::OK);
    // The static token still works beside OIDC.
    assert_eq!(call(&info, ADMIN).await.0, StatusCode::OK);

    let with = |extra: Value| {
        let mut c = github.clone();
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    let mut crit = Header::new(Algorithm::RS256);
    crit.crit = Some(vec!["exp-ext".into()]);
    let mut long_kid = Header::new(Algorithm::RS256);
    long_kid.kid = Some("K".repeat(8_000));
    let cases = vec![
        (
            issuer.token(with(json!({"repository": "evil-org/app"}))),
            "claims not allowed by OIDC_ALLOW: repository=evil-org/app",
        ),
        (
            issuer.token(with(json!({"ref": "refs/heads/dev"}))),
            "claims not allowed",
        ),
        (
            issuer.token(with(json!({"exp": now() - 600}))),
            "has expired",
        ),
        (
            issuer.token(with(json!({"nbf": now() + 3600}))),
            "not valid yet",
        ),
        (issuer.token(with(json!({"aud": "sigstore"}))), "audience"),
        (
            issuer.token_with(github.clone(), Header::new(Algorithm::RS256), &other_key),
            "signature does not verify",
        ),
        (
            issuer.token(with(json!({"iss": "https://evil.example.com"}))),
            "is not in OIDC_ISSUERS",
        ),
        (
            issuer.token_with(github.clone(), crit, &issuer.key),
            "crit: exp-ext",
        ),
        (
            issuer.token_with(github.clone(), long_kid, &issuer.key),
            "no key `KKKK",
        ),
        (format!("a.{}.c", "A".repeat(20_000)), "longer than 16 KiB"),
    ];
    for (t, why) in cases {
        let (status, body) = call(&info, &t).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(
            body.contains("ID token refused") && body.contains(why),
            "want `{why}` in {body}"
        );
        assert!(
            body.len() < 1_000,
            "a token's values are not echoed whole: {body}"
        );
    }
    running.shutdown().await;
}

/// One issuer that accepts connections and never answers held up every
/// other issuer's tokens (88 s) and was asked again for every request.
#[tokio::test]
async fn a_hanging_issuer_is_asked_once_and_holds_up_no_other() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (healthy, slow) = (
        Issuer::start(dir.path(), "healthy").await,
        Issuer::start(dir.path(), "slow").await,
    );
    let running = bakery_controller::start(config(
        dir.path(),
        &format!("{},{}", healthy.url, slow.url),
        &format!(
            "iss={},repository=octo-org/*;iss={},repository=octo-org/*",
            healthy.url, slow.url
        ),
    ))
    .await
    .unwrap();
    let info = format!("{}/v1/info", running.url());
    let claims = json!({"repository": "octo-org/app"});
    assert_eq!(
        call(&info, &healthy.token(claims.clone())).await.0,
        StatusCode::OK
    );
    slow.hang.store(true, Ordering::SeqCst);
    let stuck: Vec<_> = (0..20)
        .map(|_| {
            let (info, token) = (info.clone(), slow.token(claims.clone()));
            tokio::spawn(async move { call(&info, &token).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let (status, body) = call(&info, &healthy.token(claims.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "the healthy issuer's token waited {:?} behind the hanging one",
        asked.elapsed()
    );
    for request in stuck {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("cannot be fetched"), "{body}");
    }
    assert_eq!(slow.hits(), 1, "20 requests, one fetch");
    // Remembered: the next token is answered at once, without a fetch.
    let asked = Instant::now();
    let (status, _) = call(&info, &slow.token(claims.clone())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(asked.elapsed() < Duration::from_secs(1));
    assert_eq!(slow.hits(), 1, "no fetch within the backoff");
    assert_eq!(running.app.oidc_key_fetches(&slow.url).unwrap(), 1);
    // Keys once fetched serve while their issuer hangs.
    healthy.hang.store(true, Ordering::SeqCst);
    assert_eq!(call(&info, &healthy.token(claims)).await.0, StatusCode::OK);
    running.shutdown().await;
}

/// With two issuers, a rule without `iss=` let an organisation of the same
/// name on the other issuer through.
#[tokio::test]
async fn rules_are_tied_to_their_issuer() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (public, enterprise) = (
        Issuer::start(dir.path(), "public").await,
        Issuer::start(dir.path(), "enterprise").await,
    );
    let issuers = format!("{},{}", public.url, enterprise.url);
    let e = start_error(dir.path(), &issuers, "repository=my-org/*").await;
    assert!(e.contains("names no issuer"), "{e}");
    let running = bakery_controller::start(config(
        dir.path(),
        &issuers,
        &format!("iss={},repository=my-org/*", enterprise.url),
    ))
    .await
    .unwrap();
    let info = format!("{}/v1/info", running.url());
    let mine = json!({"repository": "my-org/app"});
    assert_eq!(
        call(&info, &enterprise.token(mine.clone())).await.0,
        StatusCode::OK
    );
    let (status, body) = call(&info, &public.token(mine)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a stranger's my-org on the other issuer: {body}"
    );
    running.shutdown().await;
}

/// Configurations that used to start and admit too much.
#[tokio::test]
async fn configurations_that_admit_too_much_do_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::start(dir.path(), "issuer").await;
    let port = issuer.url.rsplit(':').next().unwrap().to_string();
    for (issuers, allow, why) in [
        (issuer.url.clone(), ",".to_string(), "empty condition"),
        (issuer.url.clone(), "repository=my-org/*;,".into(), "rule 2"),
        (
            "http://localhost.example.com".into(),
            "repository=a/*".into(),
            "https",
        ),
        (
            format!("http://localhost@127.0.0.2:{port}"),
            "repository=a/*".into(),
            "user name",
        ),
        (
            "http://127.0.0.1:80@203.0.113.7".into(),
            "repository=a/*".into(),
            "user name",
        ),
    ] {
        let e = start_error(dir.path(), &issuers, &allow).await;
        assert!(e.contains(why), "{issuers} / {allow}: {e}");
    }
    assert_eq!(
        issuer.hits(),
        0,
        "nothing was fetched from a refused issuer"
    );
}

/// Builds of several CI identities on a local platform without namespaces
/// would share the host: refused unless the operator says it is understood.
#[tokio::test]
async fn the_local_platform_with_several_identities_needs_consent() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::start(dir.path(), "issuer").await;
    let mut cfg = config(dir.path(), &issuer.url, "repository=octo-org/*");
    cfg.local_platform_shared = false;
    let Err(e) = bakery_controller::start(cfg).await else {
        panic!("started")
    };
    assert!(e.to_string().contains("LOCAL_PLATFORM_SHARED=true"), "{e}");
    // With agents in namespaces (root, a subordinate id range: scripts/setup)
    // the builds do not share a trust domain, and it starts.
    let mut cfg = config(dir.path(), &issuer.url, "repository=octo-org/*");
    cfg.local_platform_shared = false;
    cfg.local_agent_isolation = bakery_controller::platform::local::Isolation::Namespaces;
    let running = bakery_controller::start(cfg)
        .await
        .expect("isolated local agents need no consent");
    running.shutdown().await;
}

/// A discovery document that names another issuer is not trusted.
#[tokio::test]
async fn a_discovery_document_must_name_its_issuer() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::start(dir.path(), "issuer").await;
    // The same server under another loopback name: its document says 127.0.0.1.
    let alias = issuer.url.replace("127.0.0.1", "localhost");
    let running = bakery_controller::start(config(dir.path(), &alias, "repository=octo-org/*"))
        .await
        .unwrap();
    let token = issuer.token(json!({"iss": alias, "repository": "octo-org/app"}));
    let (status, body) = call(&format!("{}/v1/info", running.url()), &token).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("names issuer"), "{body}");
    running.shutdown().await;
}

/// Each build records who created it; a CI identity sees, follows and
/// cancels only its own repository's builds, the static token all.
#[tokio::test]
async fn a_ci_tenant_sees_and_cancels_only_its_own_builds() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::start(dir.path(), "issuer").await;
    let agent = dir.path().join("agent.sh");
    std::fs::write(&agent, "#!/bin/sh\nsleep 30\n").unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&agent)
        .status()
        .unwrap();
    let mut cfg = config(dir.path(), &issuer.url, "repository=octo-org/*");
    cfg.agent_binary = Some(agent);
    let running = bakery_controller::start(cfg).await.unwrap();
    let url = |p: &str| format!("{}{p}", running.url());
    let http = reqwest::Client::new();
    let (alice, mallory) = (
        issuer.token(json!({"repository": "octo-org/app", "sub": "repo:octo-org/app:ref:refs/heads/main"})),
        issuer.token(json!({"repository": "octo-org/other", "sub": "repo:octo-org/other:ref:refs/heads/main"})),
    );
    let body = b"context".to_vec();
    let key = {
        use sha2::Digest;
        format!(
            "contexts/sha256-{}.tar.gz",
            hex::encode(sha2::Sha256::digest(&body))
        )
    };
    let put = http
        .put(url(&format!("/v1/contexts/{key}")))
        .bearer_auth(&alice)
        .body(body);
    assert_eq!(put.send().await.unwrap().status(), StatusCode::CREATED);
    let create = |token: &str| {
        http.post(url("/v1/builds"))
            .bearer_auth(token)
            .header("Idempotency-Key", "same-key-everywhere")
            .json(&support::unpushed_request(&key, &[Arch::Amd64]))
            .send()
    };
    let resp = create(&alice).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let get_as = |token: &str, path: String| http.get(url(&path)).bearer_auth(token).send();
    // The creator, and an administrator, see it and who made it.
    for token in [&alice, ADMIN] {
        let resp = get_as(token, format!("/v1/builds/{id}")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let status: bakery_protocol::api::BuildStatus = resp.json().await.unwrap();
        let Some(Creator::Oidc(who)) = status.created_by else {
            panic!("no creator: {status:?}")
        };
        assert_eq!(who.repository.as_deref(), Some("octo-org/app"));
        assert_eq!(who.subject, "repo:octo-org/app:ref:refs/heads/main");
        assert!(!serde_json::to_string(&who).unwrap().contains(&alice[..20]));
    }
    // Another repository of the same allowed organisation sees nothing.
    for path in [format!("/v1/builds/{id}"), format!("/v1/builds/{id}/logs")] {
        let resp = get_as(&mallory, path).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
    let cancel = http
        .post(url(&format!("/v1/builds/{id}/cancel")))
        .bearer_auth(&mallory);
    assert_eq!(cancel.send().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert!(!running
        .app
        .builds()
        .get(&id)
        .unwrap()
        .status()
        .state
        .is_terminal());
    // Its Idempotency-Key is its own: the same key gives the other tenant a new build.
    let theirs = create(&mallory)
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_ne!(theirs["id"].as_str().unwrap(), id);
    let again = create(&alice).await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(
        again["id"].as_str().unwrap(),
        id,
        "the creator's retry gets its build"
    );
    let cancel = http
        .post(url(&format!("/v1/builds/{id}/cancel")))
        .bearer_auth(&alice);
    assert_eq!(cancel.send().await.unwrap().status(), StatusCode::ACCEPTED);
    // Namespaced keys cannot meet: `octo-org/a` + `b-1` and `octo-org/ab` + `-1`.
    let create_as = |repo: &str, idempotency: &'static str| {
        let token = issuer.token(json!({"repository": repo}));
        http.post(url("/v1/builds"))
            .bearer_auth(token)
            .header("Idempotency-Key", idempotency)
            .json(&support::unpushed_request(&key, &[Arch::Amd64]))
            .send()
    };
    let first: Value = create_as("octo-org/a", "b-1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let second: Value = create_as("octo-org/ab", "-1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(first["id"], second["id"], "{first} {second}");
    running.shutdown().await;
}
