//! The agent's log shipping against controllers that cannot take the log
//! stream, or not at the first try: every line must still arrive, once and
//! in order.
//! (The stream itself, with a real controller, is covered by the
//! controller's API tests and the end-to-end restart test.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use bakery_client::AgentApi;
use bakery_protocol::api::{AgentLine, AgentLogs};

#[derive(Clone, Copy)]
enum StreamEndpoint {
    /// An older controller: 404.
    Missing,
    /// A proxy that buffers the request body: no answer until it ends.
    Buffered,
    /// 503 once, then a stream that reads the whole body and acknowledges
    /// its last line.
    FailsOnce,
}

#[derive(Default)]
struct Received {
    lines: Vec<(u64, String)>,
    stream_attempts: usize,
    batch_requests: usize,
}

type Shared = Arc<Mutex<Received>>;

async fn serve(endpoint: StreamEndpoint) -> (String, Shared) {
    let received = Shared::default();
    let app = Router::new()
        .route(
            "/v1/agent/tasks/t/logs",
            post(
                |State(r): State<Shared>, Json(batch): Json<AgentLogs>| async move {
                    let mut r = r.lock().unwrap();
                    r.batch_requests += 1;
                    r.lines
                        .extend(batch.lines.into_iter().map(|l| (l.seq, l.line)));
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/v1/agent/tasks/t/log-stream",
            post(move |State(r): State<Shared>, body: Body| async move {
                let attempt = {
                    let mut r = r.lock().unwrap();
                    r.stream_attempts += 1;
                    r.stream_attempts
                };
                match endpoint {
                    StreamEndpoint::Missing => StatusCode::NOT_FOUND.into_response(),
                    StreamEndpoint::Buffered => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        StatusCode::OK.into_response()
                    }
                    StreamEndpoint::FailsOnce if attempt == 1 => {
                        StatusCode::SERVICE_UNAVAILABLE.into_response()
                    }
                    StreamEndpoint::FailsOnce => {
                        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                        let mut last = 0;
                        for raw in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                            let line: AgentLine = serde_json::from_slice(raw).unwrap();
                            last = line.seq;
                            r.lock().unwrap().lines.push((line.seq, line.line));
                        }
                        format!("{last}\n").into_response()
                    }
                }
            }),
        )
        .with_state(Arc::clone(&received));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// Sends 50 lines through the agent's shipper, pausing every ten unless
/// `at_once`, and waits until the shipper is done.
async fn ship_through(endpoint: StreamEndpoint, at_once: bool) -> Received {
    let (url, received) = serve(endpoint).await;
    let mut controller = AgentApi::new(&url, "t", "token");
    controller.stream_answer = Duration::from_millis(300);
    let (sink, shipper) = bakery_agent::logs::start(controller);
    for i in 1..=50 {
        sink.line(format!("line {i}"));
        if i % 10 == 0 && !at_once {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::timeout(Duration::from_secs(20), shipper.finish(sink))
        .await
        .expect("the shipper finishes");
    let taken = std::mem::take(&mut *received.lock().unwrap());
    taken
}

fn assert_all_once_in_order(received: &Received) {
    let expected: Vec<(u64, String)> = (1..=50).map(|i| (i, format!("line {i}"))).collect();
    assert_eq!(received.lines, expected);
}

#[tokio::test(flavor = "current_thread")]
async fn without_the_stream_endpoint_lines_go_in_batches() {
    let received = ship_through(StreamEndpoint::Missing, false).await;
    assert_eq!(received.stream_attempts, 1, "tried once, then batches");
    assert!(received.batch_requests > 0);
    assert_all_once_in_order(&received);
}

#[tokio::test(flavor = "current_thread")]
async fn behind_a_proxy_that_buffers_requests_lines_go_in_batches() {
    let received = ship_through(StreamEndpoint::Buffered, false).await;
    assert_eq!(received.stream_attempts, 1);
    assert_all_once_in_order(&received);
}

#[tokio::test(flavor = "current_thread")]
async fn lines_queued_when_the_stream_failed_go_on_the_next_one_which_then_ends() {
    // Every line is written (and the sink closed) before the retry: the
    // retried stream carries the backlog and must end its body by itself.
    let received = ship_through(StreamEndpoint::FailsOnce, true).await;
    assert_eq!(received.stream_attempts, 2);
    assert_eq!(received.batch_requests, 0, "no fall back to batches");
    assert_all_once_in_order(&received);
}

#[tokio::test(flavor = "current_thread")]
async fn a_huge_line_is_cut_at_64_kib() {
    let (url, received) = serve(StreamEndpoint::Missing).await;
    let (sink, shipper) = bakery_agent::logs::start(AgentApi::new(&url, "t", "token"));
    sink.line("é".repeat(100_000));
    shipper.finish(sink).await;
    let lines = std::mem::take(&mut received.lock().unwrap().lines);
    assert_eq!(lines.len(), 1);
    let (_, line) = &lines[0];
    assert!(
        line.ends_with(" [line cut at 64 KiB]"),
        "{}",
        &line[line.len() - 40..]
    );
    assert!(line.len() <= (64 << 10) + 30, "{}", line.len());
}
