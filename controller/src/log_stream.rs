//! An agent's log as one long request: `POST /v1/agent/tasks/{task}/log-stream`.
//!
//! A request per batch costs both sides a full HTTP exchange (headers,
//! routing, a response) for a handful of lines; at 1,000 chatty builds that
//! exchange, not the lines, was most of the work. Here the agent opens one
//! request for its whole run and writes its lines into the body as
//! newline-delimited [`AgentLine`] JSON; the controller answers at once and
//! streams back acknowledgements in the response body: the highest seq that
//! is on disk, one decimal number per line. The agent forgets a line only
//! once it is acknowledged, and after a broken connection resends what was
//! not, which the seq numbers de-duplicate — the same promise as the batch
//! endpoint, which stays for agents behind a proxy that buffers requests.
//!
//! Acknowledgements are paced ([`ACK_EVERY`]): saving does not wait for them
//! (followers see a line as soon as the journal has it), they only let the
//! agent drop what it keeps for a resend. The last one, when the agent ends
//! its body, goes out at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bakery_protocol::api::AgentLine;
use bakery_protocol::object::Object;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::state::Build;
use crate::App;

/// Least time between two acknowledgements while the agent is still
/// writing. An acknowledgement only lets the agent forget lines (at most
/// this much log is resent after a crash, and dropped as duplicates); each
/// one wakes the agent, and a thousand agents sharing a machine felt that.
pub const ACK_EVERY: Duration = Duration::from_secs(1);

/// Most lines a build holds unsaved before its agents' streams wait for
/// the journal: without it, agents faster than the disk filled the
/// controller's memory (ten agents sending 1M lines each took it to 1.25
/// GB). Waiting stops the reading, so the agent's queue fills and it holds
/// the builder back (see the agent's QUEUE_LIMIT): no line is dropped. One
/// commit saves all of them (~1 MB of lines).
pub const UNSAVED_LIMIT: usize = 8192;

/// Longest line accepted; the agent cuts its lines at 64 KiB, so more
/// means a broken stream.
const MAX_LINE: usize = 1 << 20;

/// What the reader has taken in so far.
#[derive(Clone, Copy, Default)]
struct Progress {
    /// Highest seq appended to the build.
    seq: u64,
    /// The agent ended its body (or the stream broke, or the task ended).
    ended: bool,
}

/// Reads `body` into task `index` of `build` and returns the
/// acknowledgements as a response body. The work runs in its own task, so
/// the response (and with it the first acknowledgement) is not held up by
/// the request body, which only ends when the agent is done.
pub fn serve(app: Arc<App>, build: Arc<Build>, index: usize, body: Body) -> Body {
    let (acks, acks_rx) = mpsc::channel::<Result<Bytes, Infallible>>(4);
    let (progress, seen) = watch::channel(Progress::default());
    let ended = Arc::new(Notify::new());
    tokio::spawn(read_lines(
        app.clone(),
        build,
        index,
        body,
        progress,
        Arc::clone(&ended),
    ));
    tokio::spawn(acknowledge(app, seen, ended, acks));
    Body::from_stream(receiver_stream(acks_rx))
}

fn receiver_stream<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn read_lines(
    app: Arc<App>,
    build: Arc<Build>,
    index: usize,
    body: Body,
    progress: watch::Sender<Progress>,
    ended: Arc<Notify>,
) {
    let mut frames = body.into_data_stream();
    // The start of a line whose end is in a later frame. Complete lines are
    // parsed straight from the frame: nothing is copied, and no buffer
    // sized for the largest burst stays allocated per stream.
    let mut partial: Vec<u8> = Vec::new();
    loop {
        // A stopping controller ends the stream where it is: the lines so
        // far are acknowledged, and the agent sends the rest to the next one.
        let frame = tokio::select! {
            frame = frames.next() => frame,
            () = app.stopping.cancelled() => None,
        };
        let Some(Ok(frame)) = frame else { break };
        let Some(last) = frame.iter().rposition(|b| *b == b'\n') else {
            partial.extend_from_slice(&frame);
            if partial.len() > MAX_LINE {
                tracing::warn!(
                    "build {}: agent log line over 1 MiB; stream closed",
                    build.id
                );
                break;
            }
            continue;
        };
        let (complete, rest) = frame.split_at(last + 1);
        let mut raws: Vec<&[u8]> = complete[..last].split(|b| *b == b'\n').collect();
        let joined;
        if !partial.is_empty() {
            partial.extend_from_slice(raws[0]);
            joined = std::mem::take(&mut partial);
            raws[0] = &joined;
        }
        let mut batch: Vec<AgentLine> = Vec::with_capacity(raws.len());
        let mut bad = false;
        for raw in raws.into_iter().filter(|r| !r.is_empty()) {
            match serde_json::from_slice::<Object<AgentLine>>(raw) {
                Ok(Object(line)) if line.seq > 0 => batch.push(line),
                parsed => {
                    let e = parsed.map_or_else(|e| e.to_string(), |_| "seq 0".into());
                    tracing::warn!("build {}: agent log stream: {e}; stream closed", build.id);
                    bad = true;
                    break;
                }
            }
        }
        partial.extend_from_slice(rest);
        let Some(added) = build.append_agent_lines(index, &batch) else {
            break; // the task ended (cancelled, or its result is in)
        };
        app.metrics.log_lines(added);
        if let Some(last) = batch.last() {
            let seq = last.seq;
            progress.send_modify(|p| p.seq = p.seq.max(seq));
        }
        if bad || !wait_for_the_journal(&app.stopping, &build).await {
            break;
        }
    }
    progress.send_modify(|p| p.ended = true);
    ended.notify_one();
}

/// Waits while `build` holds more than [`UNSAVED_LIMIT`] unsaved lines.
/// False if the controller is stopping meanwhile.
async fn wait_for_the_journal(stopping: &CancellationToken, build: &Build) -> bool {
    if build.unsaved_lines() <= UNSAVED_LIMIT {
        return true;
    }
    // Woken when the journal saves lines (and on status changes).
    let mut saved = build.subscribe();
    while build.unsaved_lines() > UNSAVED_LIMIT {
        tokio::select! {
            changed = saved.changed() => if changed.is_err() { return false },
            () = stopping.cancelled() => return false,
        }
    }
    true
}

async fn acknowledge(
    app: Arc<App>,
    mut seen: watch::Receiver<Progress>,
    ended: Arc<Notify>,
    acks: mpsc::Sender<Result<Bytes, Infallible>>,
) {
    let mut acked = 0u64;
    let mut last_ack = tokio::time::Instant::now() - ACK_EVERY;
    loop {
        // The first lines since the last answer...
        if seen.changed().await.is_err() {
            return;
        }
        // ...and what arrives until the next one is due is covered by it.
        // Only the end cuts the wait short: lines meanwhile wake nobody.
        tokio::select! {
            _ = tokio::time::sleep_until(last_ack + ACK_EVERY) => {}
            _ = ended.notified() => {}
        }
        let now = *seen.borrow_and_update();
        if now.seq > acked {
            // The last acknowledgement is what the agent waits for before it
            // reports; the others hold nothing up.
            let saved = if now.ended {
                app.journal.flush().await
            } else {
                app.journal.flush_paced().await
            };
            if let Err(e) = saved {
                // Unacknowledged lines are resent by the agent.
                tracing::warn!("agent log stream: {e}");
                return;
            }
            if acks
                .send(Ok(Bytes::from(format!("{}\n", now.seq))))
                .await
                .is_err()
            {
                return;
            }
            acked = now.seq;
            last_ack = tokio::time::Instant::now();
        }
        if now.ended {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Journal;
    use crate::state::Registry;

    /// Agents faster than the disk once filled the controller's memory: a
    /// stream now waits while its build holds too many unsaved lines, and
    /// goes on once the journal has saved them.
    #[tokio::test]
    async fn a_stream_waits_while_its_build_holds_too_many_unsaved_lines() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(Journal::open(&dir.path().join("builds.redb")).unwrap());
        let build = Arc::new(Build::new(
            "bpressure".into(),
            crate::journal::tests::request(),
            bakery_protocol::Platform::Local,
            Some(journal.signal()),
            u64::MAX,
        ));
        let registry = Arc::new(Registry::default());
        registry.insert(Arc::clone(&build));
        let lines: Vec<AgentLine> = (1..=UNSAVED_LIMIT as u64 + 100)
            .map(|seq| AgentLine {
                seq,
                line: format!("line {seq}"),
            })
            .collect();
        build.append_agent_lines(0, &lines);
        assert!(
            build.unsaved_lines() > UNSAVED_LIMIT,
            "the fault: nothing saved"
        );

        let stopping = CancellationToken::new();
        let mut waiting = std::pin::pin!(wait_for_the_journal(&stopping, &build));
        assert!(
            futures_util::poll!(&mut waiting).is_pending(),
            "the stream waits"
        );
        tokio::spawn(Arc::clone(&journal).run_writer(registry));
        let went_on = tokio::time::timeout(Duration::from_secs(10), waiting).await;
        assert_eq!(went_on, Ok(true), "it goes on once the lines are saved");
        assert_eq!(build.unsaved_lines(), 0);
    }
}
