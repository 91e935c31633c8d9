//! Progress of the client's long steps (packing, uploading a context): a
//! bar on a terminal, and in a CI log, where a bar would be noise, a line
//! every 10 s once a step has run that long. A big context then never runs
//! minutes in silence.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What `--progress` asked for beyond the log format: set once, at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// Bars and colour on a terminal, lines elsewhere (the default).
    Auto,
    /// Lines even on a terminal (`--progress plain`).
    Lines,
    /// Colour even without a terminal (`--progress tty`).
    Colour,
    /// No build log, no progress (`--progress quiet`).
    Quiet,
}

static DISPLAY: std::sync::OnceLock<Display> = std::sync::OnceLock::new();

/// Sets the display for the process (the first call wins).
pub fn set_display(display: Display) {
    let _ = DISPLAY.set(display);
}

/// The display `--progress` set.
pub fn display() -> Display {
    DISPLAY.get().copied().unwrap_or(Display::Auto)
}

/// How often a line is printed without a terminal: 10 s, or sooner when
/// `BAKERY_HEARTBEAT` (the silence the client tolerates) is shorter.
pub fn every() -> Duration {
    heartbeat()
        .unwrap_or(Duration::MAX)
        .min(Duration::from_secs(10))
}

/// `BAKERY_HEARTBEAT`: seconds (fractions allowed) a step or an arch may
/// go without output before the client says it is still going; `None`
/// when set to 0 (never).
pub fn heartbeat() -> Option<Duration> {
    let secs = crate::env::ClientEnv::current()
        .var("BAKERY_HEARTBEAT")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(30.0);
    (secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

/// One step under way; dropping it ends its display.
pub struct Step {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    shower: Option<std::thread::JoinHandle<()>>,
}

impl Step {
    /// Starts showing `what` (`packing ./web`), `total` bytes if known.
    pub fn start(what: String, total: Option<u64>) -> Step {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        if display() == Display::Quiet {
            return Step {
                done,
                stop,
                shower: None,
            };
        }
        let terminal = std::io::stderr().is_terminal() && display() != Display::Lines;
        let (d, s) = (Arc::clone(&done), Arc::clone(&stop));
        let shower = std::thread::Builder::new()
            .name("bakery-progress".into())
            .spawn(move || {
                if terminal {
                    bar(&what, total, &d, &s);
                } else {
                    lines(&what, total, &d, &s);
                }
            })
            .ok();
        Step { done, stop, shower }
    }

    /// The byte counter the work updates.
    pub fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.done)
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(shower) = self.shower.take() {
            shower.thread().unpark();
            let _ = shower.join();
        }
    }
}

/// A bar (or, with no total, a spinner with a byte count) on stderr, once
/// the step has run a second (sooner with a shorter `BAKERY_HEARTBEAT`): a
/// quick step leaves the terminal as it was.
fn bar(what: &str, total: Option<u64>, done: &AtomicU64, stop: &AtomicBool) {
    let shown_from = Instant::now() + every().min(Duration::from_secs(1));
    while Instant::now() < shown_from {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        std::thread::park_timeout(shown_from.saturating_duration_since(Instant::now()));
    }
    if stop.load(Ordering::Relaxed) {
        return;
    }
    let bar = match total {
        Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = if total.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}"
    } else {
        "{spinner} {msg} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    while !stop.load(Ordering::Relaxed) {
        bar.set_position(done.load(Ordering::Relaxed));
        bar.tick();
        std::thread::park_timeout(Duration::from_millis(150));
    }
    bar.finish_and_clear();
}

/// A line every [`every`] once the step has run that long.
fn lines(what: &str, total: Option<u64>, done: &AtomicU64, stop: &AtomicBool) {
    let started = Instant::now();
    let every = every();
    let mut next = started + every;
    loop {
        let now = Instant::now();
        if now < next {
            std::thread::park_timeout(next - now);
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if Instant::now() < next {
            continue;
        }
        next += every;
        let so_far = crate::render::bytes(done.load(Ordering::Relaxed));
        let of = total
            .map(|t| format!(" of {}", crate::render::bytes(t)))
            .unwrap_or_default();
        eprintln!(
            "{what}: {so_far}{of} after {}s",
            started.elapsed().as_secs()
        );
    }
}
