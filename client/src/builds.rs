//! The endpoints a CI client uses: info, contexts, builds and their logs.

use std::path::Path;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use bakery_protocol::api::{BuildStatus, CreateBuild, Created, Info};
use bakery_protocol::ContextKey;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};

use crate::http::{json, Deadlines, Http};
use crate::{Error, Event};

/// How long a build's log may keep failing (a controller restarting, a
/// network partition) before a follower gives up: as long as agents keep
/// retrying the controller.
pub const FOLLOW_PATIENCE: Duration = Duration::from_secs(300);

const DEADLINES: Deadlines = Deadlines {
    connect: Duration::from_secs(10),
    // The log stream has a keep-alive every 15 s: a minute of silence is a
    // dead connection, reconnected.
    read: Duration::from_secs(60),
    call: Duration::from_secs(30),
};

/// The controller as a CI client sees it.
#[derive(Clone)]
pub struct Controller {
    http: Http,
}

impl Controller {
    /// A client of the controller at `base` (`http://host:port`), sending
    /// `token` (the client token) with every request when given.
    pub fn new(base: &str, token: Option<&str>) -> Controller {
        Controller {
            http: Http::new(base, token, DEADLINES),
        }
    }

    /// The controller's base URL.
    pub fn base(&self) -> &str {
        self.http.base()
    }

    /// `GET /v1/info`.
    pub async fn info(&self) -> Result<Info, Error> {
        const WHAT: &str = "reading the controller's info";
        let resp = self
            .http
            .send(WHAT, self.http.call(Method::GET, "/v1/info"))
            .await?;
        json(WHAT, resp).await
    }

    /// Whether the controller's store already holds the context `key`.
    pub async fn has_context(&self, key: &ContextKey) -> Result<bool, Error> {
        let head = self
            .http
            .call(Method::HEAD, &format!("/v1/contexts/{key}"))
            .send()
            .await
            .map_err(|e| self.http.unreachable("checking the context", &e))?;
        Ok(head.status() == StatusCode::OK)
    }

    /// Uploads a context archive unless the controller already has it.
    /// Returns whether bytes were sent. The upload itself has no overall
    /// deadline (a large context on a slow link takes what it takes), only
    /// the read deadline between packets. `progress`, when given, counts
    /// the bytes sent.
    pub async fn upload_context(
        &self,
        key: &ContextKey,
        file: &Path,
        progress: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    ) -> Result<bool, Error> {
        const WHAT: &str = "uploading the context";
        let path = format!("/v1/contexts/{key}");
        if self.has_context(key).await? {
            return Ok(false);
        }
        let local = |cause| Error::Local { what: WHAT, cause };
        let f = tokio::fs::File::open(file).await.map_err(local)?;
        let len = f.metadata().await.map_err(local)?.len();
        let chunks = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20);
        let counted = futures_util::StreamExt::inspect(chunks, move |chunk| {
            if let (Some(progress), Ok(chunk)) = (&progress, chunk) {
                progress.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let body = reqwest::Body::wrap_stream(counted);
        let request = self
            .http
            .request(Method::PUT, &path)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body);
        self.http.send(WHAT, request).await?;
        Ok(true)
    }

    /// Submits a build; returns its id. A connection that fails or a 5xx
    /// answer (a controller restarting, a journal slow to confirm) is
    /// retried with backoff under one `Idempotency-Key`, so a retry of a
    /// request whose answer was lost gets the same build, not a second one.
    pub async fn create(&self, request: &CreateBuild) -> Result<String, Error> {
        const WHAT: &str = "submitting the build";
        let key = idempotency_key();
        let attempt = || async {
            let call = self
                .http
                .call(Method::POST, "/v1/builds")
                .timeout(self.http.deadlines.call * 2)
                .header("Idempotency-Key", &key)
                .json(request);
            let created: Created = json(WHAT, self.http.send(WHAT, call).await?).await?;
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
            .when(Error::is_transient)
            .notify(|e, pause| tracing::warn!("{e}; retrying in {pause:.1?}"))
            .await
    }

    /// `GET /v1/builds/{id}`.
    pub async fn status(&self, id: &str) -> Result<BuildStatus, Error> {
        const WHAT: &str = "reading the build status";
        let call = self.http.call(Method::GET, &format!("/v1/builds/{id}"));
        json(WHAT, self.http.send(WHAT, call).await?).await
    }

    /// `POST /v1/builds/{id}/cancel`.
    pub async fn cancel(&self, id: &str) -> Result<(), Error> {
        let call = self
            .http
            .call(Method::POST, &format!("/v1/builds/{id}/cancel"));
        self.http.send("cancelling the build", call).await.map(drop)
    }

    /// Follows a build's log to its end, calling `on` for each event, and
    /// returns the final status. A dropped connection is resumed after the
    /// last line received (`Last-Event-ID`), so no line is lost or
    /// repeated; a refusal (4xx) ends it at once; failures without a single
    /// event between them end it after [`FOLLOW_PATIENCE`].
    pub async fn follow(&self, id: &str, mut on: impl FnMut(Event)) -> Result<BuildStatus, Error> {
        let backoff = || {
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut delays = backoff();
        let mut last_seq = 0;
        // Since when the stream has failed without a single event between.
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            match self
                .follow_once(id, &mut last_seq, &mut failing_since, &mut on)
                .await
            {
                Ok(Some(end)) => return Ok(end),
                Ok(None) => {
                    on(Event::Idle);
                    delays = backoff();
                }
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => {
                    // What was read before the stream broke is shown now,
                    // not after the back-off and reconnect.
                    on(Event::Idle);
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > FOLLOW_PATIENCE {
                        return Err(e);
                    }
                    tracing::warn!("log stream interrupted ({e}); resuming after line {last_seq}");
                }
            }
            tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
        }
    }

    /// One connection of [`Controller::follow`]: `Some` final status, or
    /// `None` when the stream ended without one.
    async fn follow_once(
        &self,
        id: &str,
        last_seq: &mut u64,
        failing_since: &mut Option<std::time::Instant>,
        on: &mut impl FnMut(Event),
    ) -> Result<Option<BuildStatus>, Error> {
        const WHAT: &str = "following the log";
        let mut request = self
            .http
            .request(Method::GET, &format!("/v1/builds/{id}/logs"));
        if *last_seq > 0 {
            request = request.header("Last-Event-ID", last_seq.to_string());
        }
        let resp = self.http.send(WHAT, request).await?;
        let mut body = resp.bytes_stream();
        let mut decoder = crate::sse::SseDecoder::default();
        loop {
            // What is already read is handled before waiting for more;
            // waiting is announced, so output can be flushed once per read.
            let next = match futures_util::FutureExt::now_or_never(body.next()) {
                Some(next) => next,
                None => {
                    on(Event::Idle);
                    body.next().await
                }
            };
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| Error::Unreachable {
                what: WHAT,
                base: self.http.base().to_string(),
                message: e.to_string(),
            })?;
            *failing_since = None;
            decoder.push(&chunk);
            if decoder.unread() > crate::sse::MAX_LINE {
                return Err(Error::Decode {
                    what: WHAT,
                    message: format!(
                        "a line of the event stream is over {} bytes",
                        crate::sse::MAX_LINE
                    ),
                });
            }
            while let Some(event) = decoder.next_event() {
                let parsed = Event::parse(event.event, event.data).map_err(|e| Error::Decode {
                    what: WHAT,
                    message: e.to_string(),
                })?;
                match parsed {
                    Some(Event::Log(line)) if line.seq <= *last_seq => {}
                    Some(Event::Log(line)) => {
                        *last_seq = line.seq;
                        on(Event::Log(line));
                    }
                    Some(Event::End(status)) => return Ok(Some(status)),
                    Some(event) => on(event),
                    None => {}
                }
            }
        }
        Ok(None)
    }
}

/// 128 random bits, hex: one per build submitted.
fn idempotency_key() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    hex::encode(bytes)
}
