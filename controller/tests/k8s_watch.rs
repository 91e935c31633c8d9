//! What kmock cannot emulate: watch resumption by resourceVersion. A scripted
//! API server answers with responses in the exact shape a real API server
//! sends (PodList with a list resourceVersion, chunked watch events, and the
//! `410 Gone` "too old resource version" ERROR event an API server emits when
//! a watch resumes from a compacted version). The platform must re-list and
//! still report the pod that failed meanwhile.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use bakery_controller::platform::k8s::K8sPlatform;
use bakery_controller::platform::{AgentPlatform, Launch};
use bakery_controller::Config;
use serde_json::{json, Value};

fn pod(phase: &str, rv: &str, extra: Value) -> Value {
    let mut status = json!({"phase": phase});
    if let (Some(s), Some(e)) = (status.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": "bakery-b1-amd64", "namespace": "bakery", "uid": "7c3b2a6e-5f0e-4b8a-9d4c-2f1e0a9b8c7d",
            "resourceVersion": rv, "creationTimestamp": "2026-11-24T06:00:00Z",
            "labels": {"app.kubernetes.io/managed-by": "bakery", "bakery.dev/owner": "bakery", "bakery.dev/task": "b1-amd64"}
        },
        "spec": {"containers": [{"name": "agent", "image": "agent"}], "restartPolicy": "Never"},
        "status": status
    })
}

#[derive(Default)]
struct Script {
    lists: AtomicUsize,
    watches: AtomicUsize,
}

async fn pods(
    State(script): State<Arc<Script>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> impl IntoResponse {
    if q.get("watch").map(String::as_str) == Some("true")
        || q.get("watch").map(String::as_str) == Some("1")
    {
        let n = script.watches.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            // The first watch resumes from a version the server has compacted away.
            let gone = json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version: 1000 (1187)", "reason": "Expired", "code": 410}});
            return (axum::http::StatusCode::OK, format!("{gone}\n")).into_response();
        }
        // Later watches stay open with nothing new.
        tokio::time::sleep(Duration::from_secs(30)).await;
        return (axum::http::StatusCode::OK, String::new()).into_response();
    }
    let n = script.lists.fetch_add(1, Ordering::SeqCst);
    let items = if n < 2 {
        // Start-up orphan cleanup and the first list: nothing yet / pending.
        if n == 0 {
            vec![]
        } else {
            vec![pod("Pending", "1000", json!({}))]
        }
    } else {
        // After the 410 the re-list shows the pod evicted meanwhile.
        vec![pod(
            "Failed",
            "1187",
            json!({"reason": "Evicted", "message": "The node was low on resource: ephemeral-storage."}),
        )]
    };
    Json(json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": if n < 2 { "1000" } else { "1187" }}, "items": items}))
        .into_response()
}

async fn create(Json(body): Json<Value>) -> impl IntoResponse {
    let mut pod = body;
    pod["metadata"]["resourceVersion"] = json!("999");
    (axum::http::StatusCode::CREATED, Json(pod))
}

#[tokio::test]
async fn a_watch_that_expires_relists_and_still_reports_the_failed_pod() {
    let script = Arc::new(Script::default());
    let app = Router::new()
        .route("/api/v1/namespaces/bakery/pods", get(pods).post(create))
        .with_state(Arc::clone(&script));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{addr}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n"),
    )
    .unwrap();
    // SAFETY: the only test in this binary, so nothing reads the
    // environment meanwhile.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("KUBECONFIG", &kubeconfig);
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = Config::from_vars(
        [
            ("K8S_NAMESPACE", "bakery"),
            ("AGENT_IMAGE", "agent"),
            ("CONTROLLER_URL", "http://controller"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let platform = K8sPlatform::start(&config, tx, &Default::default(), Default::default())
        .await
        .unwrap();
    let handle = platform
        .launch(Launch {
            build_id: "b1".into(),
            task_id: "b1-amd64".into(),
            arch: bakery_protocol::Arch::Amd64,
            cpu: bakery_protocol::resources::Cpu::from_millis(500),
            memory: bakery_protocol::resources::Memory::from_mib(2048),
            disk: None,
            spot: false,
            relaunch: false,
            env: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(handle.as_str(), "bakery-b1-amd64");
    let exited = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("reported")
        .unwrap();
    assert_eq!(exited.task_id, "b1-amd64");
    assert!(
        exited
            .reason
            .to_string()
            .contains("pod failed: Evicted: The node was low on resource: ephemeral-storage."),
        "{}",
        exited.reason
    );
    assert!(
        script.watches.load(Ordering::SeqCst) >= 1,
        "the watch was tried"
    );
    assert!(
        script.lists.load(Ordering::SeqCst) >= 3,
        "and the 410 made it re-list"
    );
}
