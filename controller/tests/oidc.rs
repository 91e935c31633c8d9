//! OpenID Connect ID tokens, as GitHub Actions and GitLab CI issue them,
//! verified against a JWKS served on 127.0.0.1 with a key pair made here.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::{Json, Router};
use bakery_controller::Config;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn rsa_key(dir: &std::path::Path, name: &str) -> (EncodingKey, String) {
    let pem = dir.join(format!("{name}.pem"));
    assert!(Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&pem)
        .arg("2048")
        .output()
        .unwrap()
        .status
        .success());
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

#[tokio::test]
async fn ci_id_tokens_are_verified_against_the_issuers_keys_and_allow_list() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (key, n) = rsa_key(dir.path(), "issuer");
    let (other_key, _) = rsa_key(dir.path(), "attacker");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let jwks = json!({"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256", "n": n, "e": "AQAB"}]});
    let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/.well-known/jwks")});
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { Json(discovery) }),
        )
        .route("/.well-known/jwks", get(move || async move { Json(jwks) }));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let config = Config::from_vars(
        [
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("DATA_DIR", dir.path().to_str().unwrap()),
            ("CONTROLLER_TOKEN", "static-token-for-admins-0123"),
            ("OIDC_ISSUERS", issuer.as_str()),
            ("OIDC_AUDIENCE", "https://bakery.example.com"),
            (
                "OIDC_ALLOW",
                "repository=octo-org/*,ref=refs/heads/main;project_path=group/app",
            ),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap();
    let running = bakery_controller::start(config).await.unwrap();
    let info = format!("{}/v1/info", running.url());
    let http = reqwest::Client::new();

    let token = |claims: Value, key: &EncodingKey| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("k1".into());
        encode(&header, &claims, key).unwrap()
    };
    let claims = |extra: Value| {
        let mut c = json!({
            "iss": issuer, "aud": "https://bakery.example.com", "exp": now() + 300, "iat": now(),
            "sub": "repo:octo-org/app:ref:refs/heads/main",
        });
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    let call = |t: String| {
        let http = http.clone();
        let info = info.clone();
        async move {
            let resp = http.get(&info).bearer_auth(t).send().await.unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    };

    // A GitHub Actions job of an allowed repository and branch.
    let github = claims(json!({"repository": "octo-org/app", "ref": "refs/heads/main"}));
    assert_eq!(call(token(github.clone(), &key)).await.0, StatusCode::OK);
    // A GitLab job of the allowed project.
    let gitlab = claims(json!({"project_path": "group/app", "ref": "main"}));
    assert_eq!(call(token(gitlab, &key)).await.0, StatusCode::OK);
    // The static token still works beside OIDC.
    assert_eq!(
        call("static-token-for-admins-0123".into()).await.0,
        StatusCode::OK
    );

    let cases = vec![
        (
            token(
                claims(json!({"repository": "evil-org/app", "ref": "refs/heads/main"})),
                &key,
            ),
            "claims not allowed by OIDC_ALLOW: repository=evil-org/app",
        ),
        (
            token(
                claims(json!({"repository": "octo-org/app", "ref": "refs/heads/dev"})),
                &key,
            ),
            "claims not allowed",
        ),
        (
            token(
                claims(
                    json!({"repository": "octo-org/app", "ref": "refs/heads/main", "exp": now() - 600}),
                ),
                &key,
            ),
            "has expired",
        ),
        (
            token(
                claims(
                    json!({"repository": "octo-org/app", "ref": "refs/heads/main", "aud": "sigstore"}),
                ),
                &key,
            ),
            "audience",
        ),
        (
            token(github.clone(), &other_key),
            "signature does not verify",
        ),
        (
            token(
                claims(
                    json!({"repository": "octo-org/app", "ref": "refs/heads/main", "iss": "https://evil.example.com"}),
                ),
                &key,
            ),
            "is not in OIDC_ISSUERS",
        ),
    ];
    for (t, why) in cases {
        let (status, body) = call(t).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(
            body.contains("ID token refused") && body.contains(why),
            "want `{why}` in {body}"
        );
    }
    running.shutdown().await;
}
