//! The agent's side of the controller API. Every call retries transient
//! failures (connection refused while the controller restarts, 5xx) with
//! backoff; 4xx answers are final, since retrying cannot fix them.

use std::time::Duration;

use bakery_core::api::{AgentLine, AgentLogs, AgentResult, AgentTask, ApiError};
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

#[derive(Clone)]
pub struct Controller {
    http: Client,
    base: String,
    task: String,
    token: String,
    /// How long to keep retrying one call before giving up.
    pub patience: Duration,
}

impl Controller {
    pub fn new(base: &str, task: &str, token: &str) -> Controller {
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("the HTTP client builds with default settings");
        Controller {
            http,
            base: base.trim_end_matches('/').to_string(),
            task: task.to_string(),
            token: token.to_string(),
            patience: Duration::from_secs(300),
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
                    let message = resp
                        .json::<ApiError>()
                        .await
                        .map(|e| e.error)
                        .unwrap_or_else(|_| "no details".into());
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
            .send("the task spec", || self.http.get(self.url("spec")))
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
        self.send("log lines", || self.http.post(self.url("logs")).json(&body))
            .await
            .map(|_| ())
    }

    pub async fn result(&self, result: &AgentResult) -> Result<(), ControllerError> {
        self.send("the result", || {
            self.http.post(self.url("result")).json(result)
        })
        .await
        .map(|_| ())
    }
}
