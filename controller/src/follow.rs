//! `GET /v1/builds/{id}/logs`: a build's log as server-sent events.
//!
//! `log` lines (id = seq), `status` changes, and a final `end`. A client
//! that reconnects sends `Last-Event-ID` and gets every line after it
//! exactly once. When the controller stops, every follower's stream ends
//! (without `end`), so that a rollout is not held open by the clients
//! watching it: they reconnect to the next controller and resume.
//!
//! The same [`Follower`] also serves a reader in this process
//! ([`LocalFollow`], the embedded controller's own client) with typed
//! events: no JSON, HTTP or SSE between a build and its printer.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use bakery_protocol::api::{self, BuildStatus, LogEvent, LogEventRef};
use futures_util::stream;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::routes::{find, Result};
use crate::state::Build;
use crate::App;

/// The query of `GET /v1/builds/{id}/logs`.
#[derive(Deserialize)]
pub struct FollowQuery {
    /// Resume after this seq (same as the `Last-Event-ID` header).
    after: Option<u64>,
}

/// `GET /v1/builds/{id}/logs`: the build's log as server-sent events, from after
/// `Last-Event-ID` (or `?after=`), until the build ends or the controller stops.
pub async fn follow_logs(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    id: std::result::Result<Path<String>, PathRejection>,
    query: std::result::Result<Query<FollowQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let Path(id) = id?;
    let Query(query) = query?;
    let build = find(&app, &id, &caller)?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or(query.after)
        .unwrap_or(0);
    // Produced as the connection reads: no task or channel between the
    // build and the socket, and every event made at once goes out as one
    // chunk (a client that reads a long log pays per chunk, not per line).
    let follower = Follower::<Sse>::new(&app, build, after);
    let chunks = stream::unfold(follower, |mut f| async move {
        f.next()
            .await
            .map(|c| (Ok::<_, Infallible>(Bytes::from(c.0)), f))
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(chunks))
        .expect("a valid response"))
}

/// How long a quiet stream waits before a comment line keeps proxies and
/// clients from timing it out (as axum's SSE keep-alive).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Appends one server-sent event (`data` is one line of JSON).
fn push_event(out: &mut String, name: &str, id: Option<u64>, data: &impl serde::Serialize) {
    let _ = writeln!(out, "event: {name}");
    if let Some(id) = id {
        let _ = writeln!(out, "id: {id}");
    }
    out.push_str("data: ");
    out.push_str(&serde_json::to_string(data).expect("events serialise"));
    out.push_str("\n\n");
}

/// Where a [`Follower`] puts the events it makes, until its reader takes
/// them all at once.
trait Queue: Default {
    fn log(&mut self, line: LogEventRef<'_>);
    /// A status change; `end`: the final one.
    fn status(&mut self, end: bool, status: &BuildStatus);
    /// A quiet stream says it is alive.
    fn keep_alive(&mut self);
    fn is_empty(&self) -> bool;
}

/// Events as the text of server-sent events, for a connection.
#[derive(Default)]
struct Sse(String);

impl Queue for Sse {
    fn log(&mut self, line: LogEventRef<'_>) {
        push_event(&mut self.0, api::event::LOG, Some(line.seq), &line);
    }
    fn status(&mut self, end: bool, status: &BuildStatus) {
        let name = if end {
            api::event::END
        } else {
            api::event::STATUS
        };
        push_event(&mut self.0, name, None, status);
    }
    fn keep_alive(&mut self) {
        self.0.push_str(":\n\n");
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One event of a build's log, as [`LocalFollow`] hands it out: what the
/// SSE stream carries, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Followed {
    /// A log line.
    Log(LogEvent),
    /// The build's status, whenever a task or the build changes state.
    Status(BuildStatus),
    /// The final status: nothing follows it.
    End(BuildStatus),
}

impl Queue for Vec<Followed> {
    fn log(&mut self, line: LogEventRef<'_>) {
        self.push(Followed::Log(line.to_event()));
    }
    fn status(&mut self, end: bool, status: &BuildStatus) {
        let status = status.clone();
        self.push(if end {
            Followed::End(status)
        } else {
            Followed::Status(status)
        });
    }
    fn keep_alive(&mut self) {}
    fn is_empty(&self) -> bool {
        Vec::is_empty(self)
    }
}

/// A build's log followed inside this process: the events of
/// `GET /v1/builds/{id}/logs`, in batches, without encoding them.
pub struct LocalFollow(futures_util::stream::BoxStream<'static, Vec<Followed>>);

impl LocalFollow {
    pub(crate) fn new(app: &crate::App, build: Arc<Build>, after: u64) -> LocalFollow {
        let follower = Follower::<Vec<Followed>>::new(app, build, after);
        LocalFollow(Box::pin(stream::unfold(follower, |mut f| async move {
            f.next().await.map(|batch| (batch, f))
        })))
    }

    /// The events made since the last call, waiting for some when there
    /// are none; `None` once [`Followed::End`] was handed out, when the
    /// controller is stopping, or when lines no longer in memory could not
    /// be read from the journal (its log says why; follow again after the
    /// last line to retry). A batch may be empty (a quiet stream's
    /// keep-alive). Dropping the future loses nothing: a read it started
    /// goes on, and the next call takes its lines.
    pub async fn next(&mut self) -> Option<Vec<Followed>> {
        futures_util::StreamExt::next(&mut self.0).await
    }
}

/// Most lines a follower takes from its build at a time: what a follower
/// that falls behind holds in memory (a thousand lagging followers of 256
/// lines each held ~75 MB).
const FOLLOW_STEP: usize = 64;

/// Most lines a follower reads from the journal at a time: rows hold ~100
/// lines, so a read is a few rows, and what a lagging follower holds stays
/// near [`FOLLOW_STEP`]'s.
const JOURNAL_STEP: usize = 512;

/// One client following one build's log.
struct Follower<Q> {
    build: Arc<Build>,
    changed: tokio::sync::watch::Receiver<u64>,
    /// The seq of the last line sent.
    cursor: u64,
    last_status: Option<BuildStatus>,
    /// Events made and not yet taken by the reader.
    queued: Q,
    /// The `end` event is queued: nothing follows it.
    finished: bool,
    /// The controller is stopping: the stream ends where it is.
    stopping: CancellationToken,
    /// Where the lines no longer in memory are read from.
    journal: Arc<crate::journal::Journal>,
}

impl<Q: Queue> Follower<Q> {
    /// Follows `build` from after line `after`.
    fn new(app: &crate::App, build: Arc<Build>, after: u64) -> Follower<Q> {
        Follower {
            changed: build.subscribe(),
            build,
            cursor: after,
            last_status: None,
            queued: Q::default(),
            finished: false,
            stopping: app.stopping.clone(),
            journal: Arc::clone(&app.journal),
        }
    }

    /// The next chunk: every event made since the last one.
    async fn next(&mut self) -> Option<Q> {
        loop {
            if !self.queued.is_empty() {
                return Some(std::mem::take(&mut self.queued));
            }
            if self.finished || self.stopping.is_cancelled() {
                return None;
            }
            let (cursor, queued) = (&mut self.cursor, &mut self.queued);
            let snapshot = self.build.snapshot_after(*cursor, FOLLOW_STEP, |line| {
                *cursor = line.seq;
                queued.log(line);
            });
            if snapshot.saved_only {
                if !self.read_saved().await {
                    return None;
                }
                continue;
            }
            let (status, caught_up) = (snapshot.status, snapshot.caught_up);
            let terminal = status.state.is_terminal();
            // The end waits for the last lines to be saved (and sent).
            let hold = terminal && !caught_up;
            if !hold && self.last_status.as_ref() != Some(&status) {
                self.queued.status(terminal, &status);
                self.last_status = Some(status);
            }
            if terminal && !hold {
                self.finished = true;
                continue;
            }
            // Nothing new: wait for saved lines or a status change. (After a
            // full step the next one is taken as soon as this is sent.)
            if self.queued.is_empty() {
                tokio::select! {
                    changed = self.changed.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                    }
                    () = self.stopping.cancelled() => return None,
                    () = tokio::time::sleep(KEEP_ALIVE) => {
                        let mut alive = Q::default();
                        alive.keep_alive();
                        return Some(alive);
                    }
                }
            }
        }
    }

    /// Queues the next lines from the journal, where the lines no longer
    /// in memory are. False if none could be read: the stream ends, and
    /// the client reconnects from its last line.
    async fn read_saved(&mut self) -> bool {
        let (journal, id, after) = (
            Arc::clone(&self.journal),
            self.build.id.clone(),
            self.cursor,
        );
        let read =
            tokio::task::spawn_blocking(move || journal.read_lines(&id, after, JOURNAL_STEP)).await;
        let lines = match read {
            Ok(Ok(lines)) if !lines.is_empty() => lines,
            Ok(Ok(_)) => {
                tracing::error!(build = %self.build.id, after, "the journal holds no lines after this one, though the build has let go of them");
                return false;
            }
            Ok(Err(e)) => {
                tracing::error!(build = %self.build.id, "reading saved lines: {e}");
                return false;
            }
            Err(e) => {
                tracing::error!(build = %self.build.id, "reading saved lines: {e}");
                return false;
            }
        };
        for line in &lines {
            self.cursor = line.seq;
            self.queued.log(line.borrowed());
        }
        true
    }
}
