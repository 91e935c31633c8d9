//! The endpoints one agent uses for its task, with the task's own token.
//! Every call retries transient failures (connection refused while the
//! controller restarts, 5xx) with backoff, within one budget shared by all
//! calls ([`AgentApi::patience`]); a refusal (4xx) is final.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use bakery_protocol::api::{AgentLine, AgentLogs, AgentResult, AgentTask};
use reqwest::{Method, RequestBuilder, StatusCode};

use crate::http::{answer, json, Deadlines, Http};
use crate::Error;

const DEADLINES: Deadlines = Deadlines {
    connect: Duration::from_secs(10),
    read: Duration::from_secs(120),
    call: Duration::from_secs(60),
};

/// What came of opening the log stream.
pub enum StreamOpen {
    /// Acknowledgements follow in the response body.
    Open(reqwest::Response),
    /// Not here or not getting through: use batches.
    Unsupported(String),
    /// The controller does not want this task's lines any more.
    Refused(String),
    /// Worth another try (connection refused, 5xx).
    Failed(String),
}

/// The controller as one agent sees it.
#[derive(Clone)]
pub struct AgentApi {
    http: Http,
    task: String,
    /// How long the controller may stay unreachable, over all calls
    /// together, before the agent gives up on it.
    pub patience: Duration,
    /// How long the controller has to answer a new log stream.
    pub stream_answer: Duration,
    /// Since when every call has failed (shared by the clones: one outage
    /// is one budget, not one per call the agent makes during it).
    failing_since: Arc<Mutex<Option<Instant>>>,
}

impl AgentApi {
    /// The controller at `base`, for task `task` with its `token`.
    pub fn new(base: &str, task: &str, token: &str) -> AgentApi {
        AgentApi::with_http(Http::new(base, Some(token), DEADLINES), task)
    }

    /// [`AgentApi::new`], trusting for the controller's HTTPS only the
    /// certificates in `ca_pem` (the controller's AGENT_CA_FILE, given to
    /// the agent as [`bakery_protocol::api::agent_env::CONTROLLER_CA`]).
    pub fn with_ca(base: &str, task: &str, token: &str, ca_pem: &str) -> Result<AgentApi, Error> {
        let roots = reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes())
            .ok()
            .filter(|certs| !certs.is_empty())
            .ok_or_else(|| Error::Local {
                what: "reading the controller's CA",
                cause: std::io::Error::other(format!(
                    "{} holds no PEM certificate",
                    bakery_protocol::api::agent_env::CONTROLLER_CA
                )),
            })?;
        let http = Http::with_roots(base, Some(token), DEADLINES, Some(roots));
        Ok(AgentApi::with_http(http, task))
    }

    fn with_http(http: Http, task: &str) -> AgentApi {
        AgentApi {
            http,
            task: task.to_string(),
            patience: Duration::from_secs(300),
            stream_answer: Duration::from_secs(10),
            failing_since: Arc::default(),
        }
    }

    fn path(&self, what: &str) -> String {
        format!("/v1/agent/tasks/{}/{what}", self.task)
    }

    /// A call got through: the controller is reachable.
    pub fn reached(&self) {
        *self
            .failing_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// A call failed. Whether the controller has now been unreachable for
    /// longer than [`AgentApi::patience`], counted from the first failure
    /// of any call since the last success.
    pub fn unreachable_too_long(&self) -> bool {
        let mut since = self
            .failing_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        since.get_or_insert_with(Instant::now).elapsed() > self.patience
    }

    /// Sends the request from `make` until it is answered other than 5xx,
    /// or the budget is spent.
    async fn send(
        &self,
        what: &'static str,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<reqwest::Response, Error> {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let outcome = match make().send().await {
                Ok(resp) => answer(what, resp).await,
                Err(e) => Err(self.http.unreachable(what, &e)),
            };
            match outcome {
                Err(e) if e.is_transient() => {
                    if self.unreachable_too_long() {
                        return Err(e);
                    }
                }
                other => {
                    self.reached();
                    return other;
                }
            }
            tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
        }
    }

    /// The task's spec; fetching it is the agent's check-in.
    pub async fn spec(&self) -> Result<AgentTask, Error> {
        const WHAT: &str = "fetching the task spec";
        let resp = self
            .send(WHAT, || self.http.call(Method::GET, &self.path("spec")))
            .await?;
        json(WHAT, resp).await
    }

    /// The build context, from the controller's own store; the body is
    /// read by the caller, without an overall deadline.
    pub async fn context(&self) -> Result<reqwest::Response, Error> {
        self.send("downloading the build context", || {
            self.http.request(Method::GET, &self.path("context"))
        })
        .await
    }

    /// A batch of log lines.
    pub async fn logs(&self, lines: &[AgentLine]) -> Result<(), Error> {
        let body = AgentLogs {
            lines: lines.to_vec(),
        };
        self.send("sending log lines", || {
            self.http.call(Method::POST, &self.path("logs")).json(&body)
        })
        .await
        .map(drop)
    }

    /// Opens the log stream (see the controller's `log_stream`): one
    /// attempt; the caller decides what a failure means. A controller that
    /// does not answer before `body` ends (a proxy that buffers requests
    /// holds it back) is [`StreamOpen::Unsupported`], like one without the
    /// endpoint: the caller falls back to batches.
    pub async fn open_log_stream(&self, body: reqwest::Body) -> StreamOpen {
        let request = self
            .http
            .request(Method::POST, &self.path("log-stream"))
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body)
            .send();
        let resp = match tokio::time::timeout(self.stream_answer, request).await {
            Err(_) => {
                return StreamOpen::Unsupported(format!(
                    "no answer within {:?} (a proxy that buffers requests?)",
                    self.stream_answer
                ))
            }
            Ok(Err(e)) => return StreamOpen::Failed(crate::http::describe(&e)),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
            return StreamOpen::Unsupported(format!("HTTP {status}"));
        }
        match answer("opening the log stream", resp).await {
            Ok(resp) => StreamOpen::Open(resp),
            Err(Error::Refused {
                status, message, ..
            }) => StreamOpen::Refused(format!("HTTP {status}: {message}")),
            Err(e) => StreamOpen::Failed(e.to_string()),
        }
    }

    /// The task's result.
    pub async fn result(&self, result: &AgentResult) -> Result<(), Error> {
        self.send("reporting the result", || {
            self.http
                .call(Method::POST, &self.path("result"))
                .json(result)
        })
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One outage is one budget: an agent whose controller is gone gives up
    /// after `patience` in all, not after `patience` for each call it makes
    /// (spec, log lines, result: it took three times the documented wait).
    #[tokio::test]
    async fn the_retry_budget_is_shared_by_every_call() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let mut api = AgentApi::new(&url, "t", "token");
        api.patience = Duration::from_secs(1);
        let started = Instant::now();
        assert!(matches!(api.spec().await, Err(Error::Unreachable { .. })));
        assert!(started.elapsed() >= Duration::from_secs(1));
        let later = Instant::now();
        let result = AgentResult::Failed { error: "x".into() };
        assert!(api.clone().result(&result).await.is_err());
        assert!(
            later.elapsed() < Duration::from_millis(500),
            "the second call did not start a budget of its own"
        );
    }

    /// A refusal is final and typed: the status and the controller's own
    /// message, without a retry.
    #[tokio::test]
    async fn a_refusal_is_typed_and_not_retried() {
        use axum::{http::StatusCode as S, routing::get, Json, Router};
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = Arc::clone(&calls);
        let app = Router::new().route(
            "/v1/agent/tasks/t/spec",
            get(move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async {
                    (
                        S::GONE,
                        Json(serde_json::json!({"error": "the build was cancelled"})),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let api = AgentApi::new(&url, "t", "token");
        match api.spec().await {
            Err(Error::Refused {
                status, message, ..
            }) => {
                assert_eq!(status, StatusCode::GONE);
                assert_eq!(message, "the build was cancelled");
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
