//! Build logs as `docker compose` prints them: one prefixed, coloured line
//! per log line, each arch's run of lines in a CI log block.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use bakery_plan::Plan;
use bakery_protocol::api::LogEvent;

use crate::blocks::Blocks;
use crate::ci::{CiSystem, Tails};
use crate::cli::LogFormat;
use crate::outcome::ServiceResult;

/// Prints log lines with `docker compose`-style prefixes.
pub struct Printer {
    width: usize,
    color: bool,
    format: Option<LogFormat>,
    colors: Mutex<HashMap<String, usize>>,
    /// Last lines per task, shown again under a failure.
    tails: Mutex<HashMap<String, Tail>>,
    ci: Arc<dyn CiSystem>,
    /// One CI log block (group/section) per task.
    blocks: Blocks,
}

const PALETTE: [&str; 6] = ["36", "33", "32", "35", "34", "31"];

impl Printer {
    /// A printer for `plan`'s builds: prefixes padded to its longest
    /// `service-arch`, colour only on a terminal with no `format` set.
    pub fn new(plan: &Plan, format: Option<LogFormat>, ci: Arc<dyn CiSystem>) -> Printer {
        let width = plan
            .builds()
            .map(|(s, b)| s.name.len() + 1 + b.arch.as_str().len())
            .max()
            .unwrap_or(10);
        Printer::with_width(width, format, ci)
    }

    /// A printer for one service's log (`bakery logs`).
    pub fn standalone(service: &str, format: Option<LogFormat>, ci: Arc<dyn CiSystem>) -> Printer {
        Printer::with_width(service.len() + "-amd64".len(), format, ci)
    }

    fn with_width(width: usize, format: Option<LogFormat>, ci: Arc<dyn CiSystem>) -> Printer {
        Printer {
            width,
            color: format.is_none() && crate::colour(std::io::stdout().is_terminal()),
            format,
            colors: Mutex::default(),
            tails: Mutex::default(),
            blocks: Blocks::new(Arc::clone(&ci)),
            ci,
        }
    }

    /// Whether stdout carries JSON only (`--log-format json`).
    pub fn json(&self) -> bool {
        self.format == Some(LogFormat::Json)
    }

    /// Prints one log line of `service`, in `format`, inside its
    /// task's CI log block; remembers it for [`Printer::tail`].
    pub fn line(&self, service: &str, event: &LogEvent) {
        let label = format!("{service}-{}", event.arch);
        let mut text = strip_ansi(&event.line);
        let quiet = crate::progress::display() == crate::progress::Display::Quiet;
        {
            let mut tails = self.tails.lock().expect("lock");
            let tail = tails.entry(label.clone()).or_default();
            let shown = tail.without_repeat(&text);
            tail.push(&text);
            if let Some(shown) = shown {
                text = shown;
            }
        }
        if quiet {
            // Kept for the summary's last lines; not shown.
            return;
        }
        let rendered = match self.format {
            Some(LogFormat::Json) => {
                let mut v = serde_json::to_value(event).unwrap_or_default();
                v["service"] = serde_json::json!(service);
                format!("{v}\n")
            }
            Some(LogFormat::Simple) => format!("{text}\n"),
            _ if self.color => {
                let n = {
                    let mut colors = self.colors.lock().expect("lock");
                    let next = colors.len();
                    *colors.entry(label.clone()).or_insert(next)
                };
                format!(
                    "\x1b[{}m{label:<w$} |\x1b[0m {text}\n",
                    PALETTE[n % PALETTE.len()],
                    w = self.width
                )
            }
            _ => format!("{label:<w$} | {text}\n", w = self.width),
        };
        self.blocks.line(&label, &rendered);
    }

    /// For each task of `service` still under way (`running`, with its
    /// state) that has printed nothing for `after` (counted from `since`
    /// before its first line), a line saying so: a quiet package install
    /// or an agent still starting would otherwise look like a hang.
    pub fn heartbeat(
        &self,
        service: &str,
        running: &[(bakery_protocol::Arch, bakery_protocol::api::TaskState)],
        after: std::time::Duration,
        since: std::time::Instant,
    ) {
        if crate::progress::display() == crate::progress::Display::Quiet {
            return;
        }
        let now = std::time::Instant::now();
        for (arch, state) in running {
            let label = format!("{service}-{arch}");
            let silent = {
                let mut tails = self.tails.lock().expect("lock");
                let tail = tails.entry(label.clone()).or_default();
                let heard = *tail.heard.get_or_insert(since);
                if now.duration_since(heard) < after {
                    continue;
                }
                tail.heard = Some(now);
                now.duration_since(heard)
            };
            let what = match state {
                bakery_protocol::api::TaskState::Queued => "queued",
                bakery_protocol::api::TaskState::Starting => "its agent is starting",
                _ => "still running",
            };
            let text = format!("… no output for {}s ({what})", silent.as_secs());
            let rendered = match self.format {
                Some(LogFormat::Json) => format!(
                    "{}\n",
                    serde_json::json!({"service": service, "arch": arch, "silent_seconds": silent.as_secs(), "state": state})
                ),
                Some(LogFormat::Simple) => format!("{text}\n"),
                _ => format!("{label:<w$} | {text}\n", w = self.width),
            };
            self.blocks.line(&label, &rendered);
            self.blocks.flush();
        }
    }

    /// The task of `service` for `arch` ended (`complete`: and its whole
    /// log has been delivered): its log block may close.
    pub fn task_ended(&self, service: &str, arch: bakery_protocol::Arch, complete: bool) {
        let label = format!("{service}-{arch}");
        if complete {
            self.blocks.task_complete(&label);
        } else {
            self.blocks.task_ended(&label);
        }
    }

    /// The last lines of task `label` (`service-arch`), with the Dockerfile step
    /// they belong to first when it has scrolled out: shown again under a failure.
    pub fn tail(&self, label: &str) -> Vec<String> {
        self.tails
            .lock()
            .expect("lock")
            .get(label)
            .map(Tail::lines)
            .unwrap_or_default()
    }

    /// Ends the open CI log block and shows what waited for one, so what
    /// follows is not folded away; everything printed so far is written.
    pub fn end_block(&self) {
        self.blocks.close();
    }

    /// Writes the lines printed so far (they are buffered: see [`Blocks`]).
    pub fn flush(&self) {
        self.blocks.flush();
    }

    /// The last lines of every task's log.
    pub fn tails(&self) -> Tails {
        self.tails
            .lock()
            .expect("lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.lines()))
            .collect()
    }

    /// Writes the CI reports (outputs, summary, annotations, dotenv).
    pub fn report(&self, plan: &Plan, results: &[ServiceResult]) {
        if let Err(e) = self.ci.write_reports(plan, results, &self.tails()) {
            tracing::warn!("could not write the CI report: {e}");
        }
    }
}

/// A task's last lines, and the last build instruction it logged even when
/// its output has pushed that out: the annotation needs it to find the
/// Dockerfile line (Kaniko's errors name no instruction), and a person
/// reading the failure wants to see which step it was.
#[derive(Default)]
struct Tail {
    lines: std::collections::VecDeque<String>,
    step: Option<String>,
    /// When the task last printed, or was last said to be silent.
    heard: Option<std::time::Instant>,
}

impl Tail {
    const LINES: usize = 15;

    fn push(&mut self, line: &str) {
        // A clock read from the vDSO: no system call per line.
        self.heard = Some(std::time::Instant::now());
        if crate::ci::github::locate::is_instruction(line) {
            self.step = Some(line.to_string());
        }
        self.lines.push_back(line.to_string());
        if self.lines.len() > Self::LINES {
            self.lines.pop_front();
        }
    }

    /// `error: … failed (exit code 1): <the builder's last line>` right
    /// after that line: shown without the repeat (the summary keeps it).
    fn without_repeat(&self, line: &str) -> Option<String> {
        if !line.starts_with("error: ") {
            return None;
        }
        self.lines.iter().rev().take(3).find_map(|earlier| {
            let earlier = earlier.trim();
            let cut = line.strip_suffix(earlier)?.strip_suffix(": ")?;
            (!earlier.is_empty()).then(|| format!("{cut} (the builder's error is above)"))
        })
    }

    fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(self.lines.len() + 1);
        if let Some(step) = self.step.as_ref().filter(|s| !self.lines.contains(s)) {
            out.push(step.clone());
        }
        out.extend(self.lines.iter().cloned());
        out
    }
}

fn strip_ansi(s: &str) -> String {
    static ANSI: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\x1b\[[0-9;?]*[ -/]*[@-~]").expect("valid regex")
    });
    // Most lines have no escape at all: no regex for them.
    if !s.contains('\x1b') {
        return s.to_string();
    }
    ANSI.replace_all(s, "").into_owned()
}
