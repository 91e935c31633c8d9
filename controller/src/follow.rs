//! `GET /v1/builds/{id}/logs`: a build's log as server-sent events.
//!
//! `log` lines (id = seq), `status` changes, and a final `end`. A client
//! that reconnects sends `Last-Event-ID` and gets every line after it
//! exactly once. When the controller stops, every follower's stream ends
//! (without `end`), so that a rollout is not held open by the clients
//! watching it: they reconnect to the next controller and resume.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use bakery_protocol::api::{self, BuildStatus};
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
    let follower = Follower {
        changed: build.subscribe(),
        build,
        cursor: after,
        last_status: None,
        queued: String::new(),
        finished: false,
        stopping: app.stopping.clone(),
        journal: Arc::clone(&app.journal),
    };
    let chunks = stream::unfold(follower, |mut f| async move {
        f.next().await.map(|c| (Ok::<_, Infallible>(c), f))
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

/// Most lines a follower takes from its build at a time: what a follower
/// that falls behind holds in memory (a thousand lagging followers of 256
/// lines each held ~75 MB).
const FOLLOW_STEP: usize = 64;

/// Most lines a follower reads from the journal at a time: rows hold ~100
/// lines, so a read is a few rows, and what a lagging follower holds stays
/// near [`FOLLOW_STEP`]'s.
const JOURNAL_STEP: usize = 512;

/// One client following one build's log.
struct Follower {
    build: Arc<Build>,
    changed: tokio::sync::watch::Receiver<u64>,
    /// The seq of the last line sent.
    cursor: u64,
    last_status: Option<BuildStatus>,
    /// Events made and not yet taken by the connection, as text.
    queued: String,
    /// The `end` event is queued: nothing follows it.
    finished: bool,
    /// The controller is stopping: the stream ends where it is.
    stopping: CancellationToken,
    /// Where the lines no longer in memory are read from.
    journal: Arc<crate::journal::Journal>,
}

impl Follower {
    /// The next chunk: every event made since the last one.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if !self.queued.is_empty() {
                return Some(Bytes::from(std::mem::take(&mut self.queued)));
            }
            if self.finished || self.stopping.is_cancelled() {
                return None;
            }
            let (cursor, queued) = (&mut self.cursor, &mut self.queued);
            let snapshot = self.build.snapshot_after(*cursor, FOLLOW_STEP, |line| {
                *cursor = line.seq;
                push_event(queued, api::event::LOG, Some(line.seq), &line);
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
                let name = if terminal {
                    api::event::END
                } else {
                    api::event::STATUS
                };
                push_event(&mut self.queued, name, None, &status);
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
                    () = tokio::time::sleep(KEEP_ALIVE) => return Some(Bytes::from_static(b":\n\n")),
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
            push_event(&mut self.queued, api::event::LOG, Some(line.seq), line);
        }
        true
    }
}
