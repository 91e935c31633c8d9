//! The agent's side of the controller API. Every call retries transient
//! failures (connection refused while the controller restarts, 5xx) with
//! backoff; 4xx answers are final, since retrying cannot fix them.

use std::time::Duration;

use bakery_protocol::api::{AgentLine, AgentLogs, AgentResult, AgentTask, ApiError};
use reqwest::{Client, RequestBuilder, StatusCode};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("controller refused {what}: {status} {message}")]
    Refused {
        what: &'static str,
        status: StatusCode,
        message: String,
    },
    #[error("controller unreachable for {what} after {attempts} attempts: {message}")]
    Unreachable {
        what: &'static str,
        attempts: u32,
        message: String,
    },
}

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

/// What the controller said when it refused a call (its `{"error": ...}`).
async fn refusal(resp: reqwest::Response) -> String {
    resp.json::<ApiError>()
        .await
        .map(|e| e.error)
        .unwrap_or_else(|_| "no details".into())
}

/// Longest silence within one answer from the controller.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest a small call (spec, log batch, result) may take in all.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Controller {
    http: Client,
    base: String,
    task: String,
    token: String,
    /// How long to keep retrying one call before giving up.
    pub patience: Duration,
    /// How long the controller has to answer a new log stream.
    pub stream_answer: Duration,
}

impl Controller {
    pub fn new(base: &str, task: &str, token: &str) -> Controller {
        // A controller that accepts the connection and then says nothing
        // is a failed attempt, retried like a refused one: no call waits
        // forever. (The log stream's acknowledgements have a deadline of
        // their own; a long quiet stream just reconnects.)
        let mut http = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(READ_TIMEOUT);
        if base.starts_with("http://") {
            // Plain HTTP needs no trust store: loading and parsing the
            // system's CA certificates was a good part of an agent's start.
            http = http.tls_certs_only(std::iter::empty());
        }
        let http = http
            .build()
            .expect("the HTTP client builds with default settings");
        Controller {
            http,
            base: base.trim_end_matches('/').to_string(),
            task: task.to_string(),
            token: token.to_string(),
            patience: Duration::from_secs(300),
            stream_answer: Duration::from_secs(10),
        }
    }

    fn url(&self, what: &str) -> String {
        format!("{}/v1/agent/tasks/{}/{what}", self.base, self.task)
    }

    /// Sends the request from `make` until it gets a non-5xx answer.
    async fn send(
        &self,
        what: &'static str,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<reqwest::Response, ControllerError> {
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let outcome = make().bearer_auth(&self.token).send().await;
            let retry_reason = match outcome {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) if resp.status().is_client_error() => {
                    let status = resp.status();
                    let message = refusal(resp).await;
                    return Err(ControllerError::Refused {
                        what,
                        status,
                        message,
                    });
                }
                Ok(resp) => format!("HTTP {}", resp.status()),
                Err(e) => e.to_string(),
            };
            if started.elapsed() > self.patience {
                return Err(ControllerError::Unreachable {
                    what,
                    attempts,
                    message: retry_reason,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    pub async fn spec(&self) -> Result<AgentTask, ControllerError> {
        let resp = self
            .send("the task spec", || {
                self.http.get(self.url("spec")).timeout(CALL_TIMEOUT)
            })
            .await?;
        resp.json().await.map_err(|e| ControllerError::Unreachable {
            what: "the task spec",
            attempts: 1,
            message: e.to_string(),
        })
    }

    pub async fn context(&self) -> Result<reqwest::Response, ControllerError> {
        self.send("the build context", || self.http.get(self.url("context")))
            .await
    }

    pub async fn logs(&self, lines: &[AgentLine]) -> Result<(), ControllerError> {
        let body = AgentLogs {
            lines: lines.to_vec(),
        };
        self.send("log lines", || {
            self.http
                .post(self.url("logs"))
                .timeout(CALL_TIMEOUT)
                .json(&body)
        })
        .await
        .map(|_| ())
    }

    /// Opens the log stream (see the controller's `log_stream`): one
    /// attempt; the caller decides what a failure means. A controller that
    /// does not answer before `body` ends (a proxy that buffers requests
    /// holds it back) is [`StreamOpen::Unsupported`], like one without the
    /// endpoint: the caller falls back to batches.
    pub async fn open_log_stream(&self, body: reqwest::Body) -> StreamOpen {
        let request = self
            .http
            .post(self.url("log-stream"))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body)
            .send();
        match tokio::time::timeout(self.stream_answer, request).await {
            Err(_) => StreamOpen::Unsupported(format!(
                "no answer within {:?} (a proxy that buffers requests?)",
                self.stream_answer
            )),
            Ok(Err(e)) => StreamOpen::Failed(e.to_string()),
            Ok(Ok(resp)) if resp.status().is_success() => StreamOpen::Open(resp),
            Ok(Ok(resp))
                if resp.status() == StatusCode::NOT_FOUND
                    || resp.status() == StatusCode::METHOD_NOT_ALLOWED =>
            {
                StreamOpen::Unsupported(format!("HTTP {}", resp.status()))
            }
            Ok(Ok(resp)) if resp.status().is_client_error() => {
                let status = resp.status();
                StreamOpen::Refused(format!("HTTP {status}: {}", refusal(resp).await))
            }
            Ok(Ok(resp)) => StreamOpen::Failed(format!("HTTP {}", resp.status())),
        }
    }

    pub async fn result(&self, result: &AgentResult) -> Result<(), ControllerError> {
        self.send("the result", || {
            self.http
                .post(self.url("result"))
                .timeout(CALL_TIMEOUT)
                .json(result)
        })
        .await
        .map(|_| ())
    }
}
