//! Shipping log lines to the controller as they are produced.
//!
//! Lines are redacted, numbered and queued, then gathered into batches (at
//! most one per 30 ms; what arrives meanwhile joins it), so a chatty build
//! costs few writes and a quiet one shows each line at once.
//!
//! The batches go into one long request, the log stream, whose response
//! acknowledges what the controller has saved (controller `log_stream`).
//! Every line is kept until acknowledged; after a broken connection (a
//! controller restart) the unacknowledged ones are sent again under the
//! same numbers, and the controller drops those it already has. Where the
//! stream cannot be opened (an older controller, a proxy that buffers
//! request bodies) each batch is its own request, answered once saved.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bakery_protocol::api::AgentLine;
use bakery_protocol::redact::Redactor;
use bytes::Bytes;
use futures_util::StreamExt;
use memchr::memmem::Finder;
use tokio::sync::{mpsc, Notify};

use bakery_client::{AgentApi, StreamOpen};

const MAX_BATCH: usize = 1000;
/// Longest line shipped, in bytes.
const MAX_LINE: usize = 64 << 10;
/// Least time between two batches: a chatty build writes ~30 times a second
/// instead of once per line, at a delay nobody reading a log can see; a
/// line after a quiet spell goes out at once.
pub const LINGER: Duration = Duration::from_millis(30);
/// See [`gather`].
const SLACK: Duration = Duration::from_millis(5);

/// Most bytes of lines queued or sent and not yet acknowledged before the
/// builder's output waits ([`LogSink::room`]): a controller slower than the
/// build slows the build down instead of growing the agent (an unbounded
/// queue held 886 MB for a 10M-line build). No line is ever dropped for it.
pub const QUEUE_LIMIT: usize = 64 << 20;

/// What is queued and not yet acknowledged, in bytes; shared by the sink
/// (which adds) and the shipper (which releases on acknowledgement).
pub(crate) struct Budget {
    bytes: std::sync::atomic::AtomicUsize,
    limit: usize,
    room: Notify,
}

impl Budget {
    fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            bytes: std::sync::atomic::AtomicUsize::new(0),
            limit,
            room: Notify::new(),
        })
    }

    fn take(&self, bytes: usize) {
        self.bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::SeqCst);
    }

    /// Lines of `bytes` left the queue (acknowledged, or given up on).
    pub(crate) fn release(&self, bytes: usize) {
        let before = self
            .bytes
            .fetch_sub(bytes, std::sync::atomic::Ordering::SeqCst);
        if before >= self.limit && before - bytes < self.limit {
            self.room.notify_waiters();
        }
    }

    fn full(&self) -> bool {
        self.bytes.load(std::sync::atomic::Ordering::SeqCst) >= self.limit
    }
}

/// A line's weight in the [`Budget`]: its text and its numbering.
pub(crate) fn weight(line: &str) -> usize {
    line.len() + 32
}

/// Cheap to clone; every clone feeds the same stream.
#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::UnboundedSender<String>,
    redactor: std::sync::Arc<std::sync::RwLock<Redactor>>,
    /// The agent's own directories, as the log names them instead.
    paths: std::sync::Arc<std::sync::RwLock<Vec<(Finder<'static>, &'static str)>>>,
    budget: Arc<Budget>,
}

impl LogSink {
    /// Queues one line of output: trailing line breaks
    /// dropped, secrets redacted, cut at 64 KiB. Never blocks.
    pub fn line(&self, line: impl AsRef<str>) {
        let redactor = self
            .redactor
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let clean = redactor.redact(line.as_ref().trim_end_matches(['\r', '\n']));
        drop(redactor);
        let mut clean = self.name_paths(clean);
        if clean.len() > MAX_LINE {
            // A minified file echoed by a RUN step is not worth megabytes of
            // log; the cut keeps every line within what the controller takes.
            let mut end = MAX_LINE;
            while !clean.is_char_boundary(end) {
                end -= 1;
            }
            clean.truncate(end);
            clean.push_str(" [line cut at 64 KiB]");
        }
        self.budget.take(weight(&clean));
        let _ = self.tx.send(clean);
    }

    /// Waits while the queue is over [`QUEUE_LIMIT`]: what reads a
    /// builder's output calls it after each line, so a full queue stops the
    /// reading and the builder blocks on its pipe until the controller
    /// catches up. At once when there is room (one atomic load).
    pub async fn room(&self) {
        loop {
            if !self.budget.full() {
                return;
            }
            let notified = self.budget.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.budget.full() {
                return;
            }
            notified.await;
        }
    }

    /// A sink whose lines the test reads back.
    #[cfg(test)]
    pub(crate) fn capture() -> (LogSink, mpsc::UnboundedReceiver<String>) {
        let (sink, rx, _) = LogSink::capture_within(usize::MAX);
        (sink, rx)
    }

    /// [`LogSink::capture`] with a queue of `limit` bytes, which only the
    /// test releases (nothing is acknowledged).
    #[cfg(test)]
    pub(crate) fn capture_within(
        limit: usize,
    ) -> (LogSink, mpsc::UnboundedReceiver<String>, Arc<Budget>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Budget::new(limit);
        let sink = LogSink {
            tx,
            redactor: std::sync::Arc::new(std::sync::RwLock::new(Redactor::new(
                Vec::<String>::new(),
            ))),
            paths: Default::default(),
            budget: Arc::clone(&budget),
        };
        (sink, rx, budget)
    }

    /// From now on the log names the unpacked context `<context>` and the
    /// rest of the agent's work directory `<agent work dir>`: a builder's
    /// error then reads `<context>/app.env`, not a temporary path of a
    /// machine the user never sees.
    pub fn set_paths(&self, context: &std::path::Path, work: &std::path::Path) {
        let mut paths: Vec<(String, &'static str)> = [
            (context.display().to_string(), "<context>"),
            (work.display().to_string(), "<agent work dir>"),
        ]
        .into_iter()
        .map(|(p, n)| (p.trim_end_matches('/').to_string(), n))
        // Only absolute paths below the root: a short or relative one
        // would match unrelated text.
        .filter(|(p, _)| p.starts_with('/') && p.len() > 4)
        .collect();
        // The context lies in the work dir: the longer path first.
        paths.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        // Searchers built once: building one per line was the agent's
        // largest cost on a chatty build.
        *self
            .paths
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = paths
            .into_iter()
            .map(|(p, n)| (Finder::new(p.as_bytes()).into_owned(), n))
            .collect();
    }

    /// `text` with the paths of [`LogSink::set_paths`] named, each where it
    /// is a whole path (followed by `/`, a quote, a space, `:` or the end):
    /// `<work>/contexts/0` is not `<context>s/0`.
    pub fn name_paths(&self, text: String) -> String {
        let paths = self
            .paths
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut text = text;
        for (finder, name) in paths.iter() {
            if finder.find(text.as_bytes()).is_none() {
                continue;
            }
            // The needle is a whole `&str`, so every match is on char boundaries.
            let len = finder.needle().len();
            let mut out = String::with_capacity(text.len());
            let mut rest = text.as_str();
            while let Some(at) = finder.find(rest.as_bytes()) {
                let after = &rest[at + len..];
                let whole = after
                    .chars()
                    .next()
                    .is_none_or(|c| matches!(c, '/' | '"' | '\'' | ' ' | ':' | ')' | ']' | ','));
                out.push_str(&rest[..at]);
                out.push_str(if whole { name } else { &rest[at..at + len] });
                rest = after;
            }
            out.push_str(rest);
            text = out;
        }
        text
    }

    /// Secrets learnt after start-up (from the spec) are masked from then on.
    pub fn set_redactor(&self, redactor: Redactor) {
        *self
            .redactor
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = redactor;
    }
}

/// The sending half; [`Shipper::finish`] flushes everything queued.
pub struct Shipper {
    handle: tokio::task::JoinHandle<()>,
}

/// Starts shipping to `controller`: the sink takes lines, the shipper
/// delivers them in the background until [`Shipper::finish`].
pub fn start(controller: AgentApi) -> (LogSink, Shipper) {
    start_after(controller, 0)
}

/// [`start`], numbering lines from `first_seq + 1`: an agent that takes
/// over a task whose earlier agent was reclaimed continues its numbering.
pub fn start_after(controller: AgentApi, first_seq: u64) -> (LogSink, Shipper) {
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let budget = Budget::new(QUEUE_LIMIT);
    let outbox = Arc::new(Outbox {
        state: Mutex::default(),
        changed: Notify::new(),
        budget: Arc::clone(&budget),
    });
    let handle = tokio::spawn(async move {
        tokio::join!(
            gather(rx, Arc::clone(&outbox), first_seq),
            deliver(controller, outbox)
        );
    });
    (
        LogSink {
            tx,
            redactor: Default::default(),
            paths: Default::default(),
            budget,
        },
        Shipper { handle },
    )
}

impl Shipper {
    /// Waits until every line queued through `sink` (dropped here) is sent
    /// and acknowledged, or given up on.
    pub async fn finish(self, sink: LogSink) {
        drop(sink);
        let _ = self.handle.await;
    }
}

/// Lines between the sink and the controller's acknowledgement.
struct Outbox {
    state: Mutex<OutboxState>,
    /// Wakes [`deliver`] in batch mode: new lines, or the end.
    changed: Notify,
    /// Released as lines leave `unacked`.
    budget: Arc<Budget>,
}

#[derive(Default)]
struct OutboxState {
    /// Sent or not, not yet acknowledged; in seq order.
    unacked: VecDeque<AgentLine>,
    /// The open log stream's body, if there is one: new batches are written
    /// here under the same lock that queues them, so lines go out in order
    /// even while a reconnect resends the backlog.
    stream: Option<mpsc::UnboundedSender<Bytes>>,
    /// The sink is gone: no line will be added.
    closed: bool,
    /// The controller refused the task's lines: new ones are dropped at
    /// once (and released), so the build's output never waits for room
    /// that cannot come.
    refused: bool,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops the first `n` unacknowledged lines (or those up to `seq`),
    /// releasing their weight.
    fn drop_front(&self, state: &mut OutboxState, n: usize, seq: u64) {
        let mut bytes = 0;
        for _ in 0..n {
            match state.unacked.front() {
                Some(l) if l.seq <= seq => {
                    bytes += weight(&l.line);
                    state.unacked.pop_front();
                }
                _ => break,
            }
        }
        self.budget.release(bytes);
    }
}

/// Numbers the sink's lines, batches them ([`LINGER`]) and queues each
/// batch in the outbox (and on the open stream).
async fn gather(mut rx: mpsc::UnboundedReceiver<String>, outbox: Arc<Outbox>, first_seq: u64) {
    let mut seq = first_seq;
    let mut batch: Vec<String> = Vec::new();
    let mut last_sent = tokio::time::Instant::now() - LINGER;
    loop {
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        // A quiet log goes out at once; a chatty one at most once per
        // LINGER (what arrives meanwhile joins the batch). What is already
        // queued joins without a wait, and a linger with less than SLACK
        // left is not waited out: a timer that fires a moment later costs
        // the agent a second wake-up for nothing.
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(line) => batch.push(line),
                Err(_) => break,
            }
        }
        let deadline = last_sent + LINGER;
        let wait = deadline > tokio::time::Instant::now() + SLACK;
        while wait && batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(line)) => batch.push(line),
                // Closed (the rest goes out now) or the linger is over.
                Ok(None) | Err(_) => break,
            }
        }
        last_sent = tokio::time::Instant::now();
        {
            let mut state = outbox.lock();
            if state.refused {
                outbox
                    .budget
                    .release(batch.drain(..).map(|l| weight(&l)).sum());
                continue;
            }
            let mut wire = Vec::new();
            for line in batch.drain(..) {
                seq += 1;
                let line = AgentLine { seq, line };
                if state.stream.is_some() {
                    encode(&mut wire, &line);
                }
                state.unacked.push_back(line);
            }
            if let Some(stream) = &state.stream {
                if stream.send(Bytes::from(wire)).is_err() {
                    // The connection is gone; deliver resends on the next one.
                    state.stream = None;
                }
            }
        }
        outbox.changed.notify_one();
    }
    let mut state = outbox.lock();
    state.closed = true;
    // Ends the request body: the controller answers with its last
    // acknowledgement and ends the response.
    state.stream = None;
    drop(state);
    outbox.changed.notify_one();
}

fn encode(wire: &mut Vec<u8>, line: &AgentLine) {
    serde_json::to_writer(&mut *wire, line).expect("a log line serialises");
    wire.push(b'\n');
}

/// Gets the outbox's lines to the controller until the sink is closed and
/// every line is acknowledged: over the log stream, reconnecting when it
/// breaks, or in batches where there is no stream.
async fn deliver(controller: AgentApi, outbox: Arc<Outbox>) {
    let backoff = || {
        backon::BackoffBuilder::build(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .with_jitter()
                .without_max_times(),
        )
    };
    let mut delays = backoff();
    loop {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let body = reqwest::Body::wrap_stream(body_stream(rx));
        // Everything not yet acknowledged goes first, under the same lock
        // that hands new batches to this connection.
        {
            let mut state = outbox.lock();
            if state.closed && state.unacked.is_empty() {
                return;
            }
            let mut wire = Vec::new();
            for line in &state.unacked {
                encode(&mut wire, line);
            }
            if !wire.is_empty() {
                let _ = tx.send(Bytes::from(wire));
            }
            if state.closed {
                // Nothing more will come: the body ends after the backlog.
                drop(tx);
            } else {
                state.stream = Some(tx);
            }
        }
        let problem = match controller.open_log_stream(body).await {
            StreamOpen::Open(resp) => {
                controller.reached();
                delays = backoff();
                match read_acks(resp, &outbox).await {
                    Ok(()) => {
                        let state = outbox.lock();
                        if state.closed && state.unacked.is_empty() {
                            return;
                        }
                        "the controller ended the log stream".to_string()
                    }
                    Err(StreamEnd::Broken(why)) => why,
                    Err(StreamEnd::Silent) => {
                        return fall_back(&controller, &outbox, "no acknowledgement came back")
                            .await
                    }
                }
            }
            StreamOpen::Unsupported(why) => return fall_back(&controller, &outbox, &why).await,
            StreamOpen::Refused(why) => {
                // The task is over for the controller: nothing will be taken.
                eprintln!("bakery-agent: the controller refused log lines: {why}");
                let mut state = outbox.lock();
                state.stream = None;
                state.refused = true;
                outbox.drop_front(&mut state, usize::MAX, u64::MAX);
                return;
            }
            StreamOpen::Failed(why) => why,
        };
        outbox.lock().stream = None;
        if controller.unreachable_too_long() {
            // Keep the build going; the result report will say what it can.
            let mut state = outbox.lock();
            eprintln!(
                "bakery-agent: could not send {} log lines: {problem}",
                state.unacked.len()
            );
            outbox.drop_front(&mut state, usize::MAX, u64::MAX);
        }
        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
    }
}

fn body_stream(
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|b| b.map(Ok)))
}

/// How long lines may wait for an acknowledgement before the connection is
/// taken for dead (a controller that stopped answering without closing it).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a log stream ended early.
enum StreamEnd {
    /// Worth reconnecting.
    Broken(String),
    /// Lines went out but nothing ever came back: something between us and
    /// the controller holds the response.
    Silent,
}

/// Drops acknowledged lines until the controller ends the response.
async fn read_acks(resp: reqwest::Response, outbox: &Outbox) -> Result<(), StreamEnd> {
    let mut body = resp.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut heard = false;
    loop {
        let chunk = match tokio::time::timeout(ACK_TIMEOUT, body.next()).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(()),
            // Quiet is fine while there is nothing to acknowledge.
            Err(_) if outbox.lock().unacked.is_empty() => continue,
            Err(_) if heard => {
                return Err(StreamEnd::Broken(format!(
                    "no acknowledgement within {}s",
                    ACK_TIMEOUT.as_secs()
                )))
            }
            Err(_) => return Err(StreamEnd::Silent),
        };
        heard = true;
        let chunk = chunk.map_err(|e| StreamEnd::Broken(format!("log stream: {e}")))?;
        pending.extend_from_slice(&chunk);
        let Some(end) = pending.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        let acked = std::str::from_utf8(&pending[..end])
            .ok()
            .and_then(|s| s.lines().filter_map(|l| l.trim().parse::<u64>().ok()).max());
        pending.drain(..=end);
        if let Some(acked) = acked {
            let mut state = outbox.lock();
            outbox.drop_front(&mut state, usize::MAX, acked);
        }
    }
}

/// One request per batch, answered once saved: for controllers the stream
/// cannot reach. Batches are what [`gather`] queued since the last one.
async fn fall_back(controller: &AgentApi, outbox: &Outbox, why: &str) {
    outbox.lock().stream = None;
    eprintln!("bakery-agent: no log stream ({why}); sending lines in batches");
    loop {
        let (batch, closed) = {
            let state = outbox.lock();
            let batch: Vec<AgentLine> = state.unacked.iter().take(MAX_BATCH).cloned().collect();
            (batch, state.closed)
        };
        if batch.is_empty() {
            if closed {
                return;
            }
            outbox.changed.notified().await;
            continue;
        }
        if let Err(e) = controller.logs(&batch).await {
            // The controller is gone or refuses us: keep the build going,
            // the result report will say what it can.
            eprintln!("bakery-agent: could not send log lines: {e}");
        }
        let mut state = outbox.lock();
        outbox.drop_front(&mut state, batch.len(), u64::MAX);
    }
}

#[cfg(test)]
mod cost_tests;

#[cfg(test)]
mod tests;
