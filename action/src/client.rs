//! The client's side of the controller API.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bakery_protocol::api::{self, ApiError, BuildStatus, CreateBuild, Created, Info, LogEvent};
use futures_util::StreamExt;
use reqwest::{Client, Response, StatusCode};

/// One try of a call: worth another, or final.
enum Attempt {
    Again(anyhow::Error),
    Final(anyhow::Error),
}

impl Attempt {
    fn error(&self) -> &anyhow::Error {
        match self {
            Attempt::Again(e) | Attempt::Final(e) => e,
        }
    }
    fn into_error(self) -> anyhow::Error {
        match self {
            Attempt::Again(e) | Attempt::Final(e) => e,
        }
    }
}

/// 128 random bits, hex: one per build submitted.
fn idempotency_key() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    hex::encode(bytes)
}

#[derive(Clone)]
pub struct Controller {
    http: Client,
    base: String,
}

/// CONTROLLER_TOKEN, or the content of CONTROLLER_TOKEN_FILE.
fn client_token() -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    var("CONTROLLER_TOKEN").or_else(|| {
        var("CONTROLLER_TOKEN_FILE")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| t.trim().to_string())
    })
}

impl Controller {
    pub fn new(base: &str) -> Controller {
        Controller {
            http: {
                let mut headers = reqwest::header::HeaderMap::new();
                if let Some(token) = client_token() {
                    if let Ok(mut value) =
                        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                    {
                        value.set_sensitive(true);
                        headers.insert(reqwest::header::AUTHORIZATION, value);
                    }
                }
                Client::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .default_headers(headers)
                    .build()
                    .expect("the HTTP client builds with default settings")
            },
            base: base.trim_end_matches('/').to_string(),
        }
    }

    async fn check(resp: Response, what: &str) -> Result<Response> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let message = resp
            .json::<ApiError>()
            .await
            .map(|e| e.error)
            .unwrap_or_default();
        bail!("{what}: the controller answered {status}: {message}")
    }

    pub async fn info(&self) -> Result<Info> {
        let resp = self
            .http
            .get(format!("{}/v1/info", self.base))
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot reach the controller at {}; is CONTROLLER_URL right?",
                    self.base
                )
            })?;
        Ok(Self::check(resp, "reading controller info")
            .await?
            .json()
            .await?)
    }

    /// Uploads an archive unless the controller already has it. Returns
    /// whether bytes were sent.
    pub async fn upload_context(
        &self,
        key: &bakery_protocol::ContextKey,
        file: &Path,
    ) -> Result<bool> {
        let url = format!("{}/v1/contexts/{key}", self.base);
        let head = self
            .http
            .head(&url)
            .send()
            .await
            .context("checking the context")?;
        if head.status() == StatusCode::OK {
            return Ok(false);
        }
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("opening {}", file.display()))?;
        let len = f.metadata().await?.len();
        let body =
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20));
        let resp = self
            .http
            .put(&url)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await
            .context("uploading the context")?;
        Self::check(resp, "uploading the context").await?;
        Ok(true)
    }

    /// Submits a build. A connection that fails or a 5xx answer (a
    /// controller restarting, a journal slow to confirm) is retried with
    /// backoff under one `Idempotency-Key`, so a retry of a request whose
    /// answer was lost gets the same build, not a second one.
    pub async fn create(&self, request: &CreateBuild) -> Result<String> {
        use backon::{ExponentialBuilder, Retryable};
        let key = idempotency_key();
        let url = format!("{}/v1/builds", self.base);
        let attempt = || async {
            let resp = self
                .http
                .post(&url)
                .header("Idempotency-Key", &key)
                .timeout(Duration::from_secs(60))
                .json(request)
                .send()
                .await
                .map_err(|e| {
                    Attempt::Again(anyhow::Error::new(e).context("submitting the build"))
                })?;
            if resp.status().is_server_error() {
                let e = Self::check(resp, "submitting the build").await.err();
                return Err(Attempt::Again(
                    e.unwrap_or_else(|| anyhow::anyhow!("server error")),
                ));
            }
            let resp = Self::check(resp, "submitting the build")
                .await
                .map_err(Attempt::Final)?;
            let created: Created = resp.json().await.map_err(|e| Attempt::Final(e.into()))?;
            Ok(created.id)
        };
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(500))
                    .with_max_delay(Duration::from_secs(5))
                    .with_max_times(6)
                    .with_jitter(),
            )
            .when(|e| matches!(e, Attempt::Again(_)))
            .notify(|e, pause| tracing::warn!("{:#}; retrying in {pause:.1?}", e.error()))
            .await
            .map_err(Attempt::into_error)
    }

    pub async fn status(&self, id: &str) -> Result<BuildStatus> {
        let resp = self
            .http
            .get(format!("{}/v1/builds/{id}", self.base))
            .send()
            .await?;
        Ok(Self::check(resp, "reading the build status")
            .await?
            .json()
            .await?)
    }

    pub async fn cancel(&self, id: &str) -> Result<()> {
        let resp = self
            .http
            .post(format!("{}/v1/builds/{id}/cancel", self.base))
            .send()
            .await?;
        Self::check(resp, "cancelling the build").await?;
        Ok(())
    }

    /// Follows a build's log to its end, calling `on` for each line and
    /// status. A dropped connection is resumed after the last line received
    /// (`Last-Event-ID`), so no line is lost or repeated. Returns the final status.
    pub async fn follow(
        &self,
        id: &str,
        mut on: impl FnMut(LogEvent),
        mut on_status: impl FnMut(BuildStatus),
    ) -> Result<BuildStatus> {
        use eventsource_stream::Eventsource;
        let mut last_seq: u64 = 0;
        let mut failures = 0u32;
        loop {
            let mut request = self.http.get(format!("{}/v1/builds/{id}/logs", self.base));
            if last_seq > 0 {
                request = request.header("Last-Event-ID", last_seq.to_string());
            }
            let outcome: Result<Option<BuildStatus>> = async {
                let resp = Self::check(request.send().await?, "following the log").await?;
                let mut events = resp.bytes_stream().eventsource();
                while let Some(event) = events.next().await {
                    let event = event.map_err(|e| anyhow::anyhow!("log stream: {e}"))?;
                    failures = 0;
                    match event.event.as_str() {
                        api::event::LOG => {
                            let line: LogEvent = serde_json::from_str(&event.data)?;
                            if line.seq > last_seq {
                                last_seq = line.seq;
                                on(line);
                            }
                        }
                        api::event::STATUS => on_status(serde_json::from_str(&event.data)?),
                        api::event::END => return Ok(Some(serde_json::from_str(&event.data)?)),
                        _ => {}
                    }
                }
                Ok(None)
            }
            .await;
            match outcome {
                Ok(Some(end)) => return Ok(end),
                Ok(None) => {}
                Err(e) if e.to_string().contains("answered 4") => return Err(e),
                Err(e) => {
                    failures += 1;
                    if failures > 30 {
                        return Err(e.context("the log stream kept failing"));
                    }
                    tracing::warn!(
                        "log stream interrupted ({e:#}); resuming after line {last_seq}"
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(10)))).await;
        }
    }
}
