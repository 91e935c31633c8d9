//! Shipping log lines to the controller as they are produced.
//!
//! Lines are redacted, numbered and queued; a background task sends them in
//! batches (at most one per 30 ms; what accumulates meanwhile, and while the
//! previous batch was in flight, joins it), so a chatty build costs few
//! requests and a quiet one shows each line at once. Retried batches carry the same numbers, and the controller drops
//! lines it already has.

use bakery_core::api::AgentLine;
use bakery_core::redact::Redactor;
use tokio::sync::mpsc;

use crate::controller::Controller;

const MAX_BATCH: usize = 1000;
/// Least time between two batches: a chatty build sends ~30 requests a
/// second instead of one per line (each request also costs the controller a
/// journal commit), at a delay nobody reading a log can see; a line after a
/// quiet spell goes out at once.
const LINGER: std::time::Duration = std::time::Duration::from_millis(30);

/// Cheap to clone; every clone feeds the same stream.
#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::UnboundedSender<String>,
    redactor: std::sync::Arc<std::sync::RwLock<Redactor>>,
}

impl LogSink {
    pub fn line(&self, line: impl AsRef<str>) {
        let redactor = self.redactor.read().unwrap_or_else(|p| p.into_inner());
        let clean = redactor.redact(line.as_ref().trim_end_matches(['\r', '\n']));
        let _ = self.tx.send(clean);
    }

    /// Secrets learnt after start-up (from the spec) are masked from then on.
    pub fn set_redactor(&self, redactor: Redactor) {
        *self.redactor.write().unwrap_or_else(|p| p.into_inner()) = redactor;
    }
}

/// The sending half; [`Shipper::finish`] flushes everything queued.
pub struct Shipper {
    handle: tokio::task::JoinHandle<()>,
}

pub fn start(controller: Controller) -> (LogSink, Shipper) {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let handle = tokio::spawn(async move {
        let mut seq = 0u64;
        let mut batch: Vec<AgentLine> = Vec::new();
        let mut last_sent = tokio::time::Instant::now() - LINGER;
        loop {
            let Some(first) = rx.recv().await else { break };
            seq += 1;
            batch.push(AgentLine { seq, line: first });
            // A quiet log goes out at once; a chatty one at most once per
            // LINGER (what arrives meanwhile joins the batch).
            let deadline = last_sent + LINGER;
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(line)) => {
                        seq += 1;
                        batch.push(AgentLine { seq, line });
                    }
                    // Closed (the rest goes out now) or the linger is over.
                    Ok(None) | Err(_) => break,
                }
            }
            last_sent = tokio::time::Instant::now();
            if let Err(e) = controller.logs(&batch).await {
                // The controller is gone or refuses us: keep the build going,
                // the result report will say what it can.
                eprintln!("bakery-agent: could not send log lines: {e}");
            }
            batch.clear();
        }
    });
    (
        LogSink {
            tx,
            redactor: Default::default(),
        },
        Shipper { handle },
    )
}

impl Shipper {
    /// Waits until every line queued through `sink` (dropped here) is sent.
    pub async fn finish(self, sink: LogSink) {
        drop(sink);
        let _ = self.handle.await;
    }
}
