//! Builds whose agents run in load mode (`BAKERY_AGENT_LOAD`: they check
//! in and stream numbered lines instead of building), created through the
//! HTTP API: for tests of the log path, shutdowns and soaks.

/// Uploads a context (the load-mode agent never reads it) and returns its key.
pub async fn upload(http: &reqwest::Client, base: &str) -> String {
    use sha2::Digest;
    let body = b"load-mode context".to_vec();
    let key = format!(
        "contexts/sha256-{}.tar.gz",
        hex::encode(sha2::Sha256::digest(&body))
    );
    let resp = http
        .put(format!("{base}/v1/contexts/{key}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    key
}

/// A build of both arches that pushes nothing.
pub fn two_arch(key: &str, n: usize) -> serde_json::Value {
    let spec = serde_json::json!({
        "platform": null, "dockerfile": "Dockerfile", "target": null, "build_args": {},
        "labels": {}, "env": {}, "pre_script": null, "post_script": null, "credentials": [],
        "cpu": null, "memory": null, "spot": false, "cache": {}, "cache_from": [],
        "snapshot_mode": null, "use_new_run": false, "cleanup": false,
        "custom_platform": "linux/amd64", "no_push": true, "ignore_path": [], "extra_flags": []
    });
    let task = |arch: &str| {
        let mut spec = spec.clone();
        spec["custom_platform"] = serde_json::json!(format!("linux/{arch}"));
        serde_json::json!({"arch": arch, "push": null, "context_key": key, "spec": spec})
    };
    serde_json::json!({
        "service": format!("soak-{n}"), "destination": null,
        "tasks": [task("amd64"), task("arm64")]
    })
}

pub async fn create(http: &reqwest::Client, base: &str, body: &serde_json::Value) -> String {
    let resp = http
        .post(format!("{base}/v1/builds"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}
