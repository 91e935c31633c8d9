//! Build logs as `docker compose` prints them: one prefixed, coloured line
//! per log line, each arch's run of lines in a CI log block.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use bakery_plan::Plan;
use bakery_protocol::api::LogEvent;

use crate::blocks::Blocks;
use crate::ci::{CiSystem, Tails};
use crate::cli::LogFormat;
use crate::outcome::ServiceResult;
use crate::task_label::TaskLabel;

/// Prints log lines with `docker compose`-style prefixes.
pub struct Printer {
    width: usize,
    color: bool,
    format: Option<LogFormat>,
    /// Each task's colour and last lines, and the buffers a line is
    /// rendered in: one lock per line.
    tasks: Mutex<Tasks>,
    ci: Arc<dyn CiSystem>,
    /// One CI log block (group/section) per task.
    blocks: Blocks,
}

/// What the printer keeps per task, by label (`service-arch`).
#[derive(Default)]
struct Tasks {
    /// In the order first seen. A build has a handful of tasks: comparing
    /// labels is quicker than hashing one for every line.
    by_label: Vec<(TaskLabel, TaskLog)>,
    /// The label of the line being printed and the line as printed: reused
    /// from line to line, so that a line allocates nothing once they have
    /// grown (a chatty build prints millions).
    label: TaskLabel,
    rendered: String,
}

impl Tasks {
    /// The task labelled `self.label`, first seen now or earlier.
    fn current(&mut self) -> &mut TaskLog {
        let at = if let Some(at) = self.by_label.iter().position(|(l, _)| *l == self.label) {
            at
        } else {
            let color = self.by_label.len();
            let task = TaskLog {
                color,
                tail: Tail::default(),
            };
            self.by_label.push((self.label.clone(), task));
            color
        };
        &mut self.by_label[at].1
    }

    fn get(&self, label: &TaskLabel) -> Option<&TaskLog> {
        self.by_label
            .iter()
            .find_map(|(l, task)| (l == label).then_some(task))
    }
}

struct TaskLog {
    /// Its place in [`PALETTE`] (modulo), in the order tasks were first seen.
    color: usize,
    /// Last lines, shown again under a failure.
    tail: Tail,
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
            tasks: Mutex::default(),
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
        let quiet = crate::progress::display() == crate::progress::Display::Quiet;
        let mut tasks = self.tasks.lock().expect("lock");
        let tasks = &mut *tasks;
        tasks.label.set(service, event.arch);
        let task = tasks.current();
        let stripped = strip_ansi(&event.line);
        let shown = task.tail.without_repeat(&stripped);
        task.tail.push(&stripped);
        if quiet {
            // Kept for the summary's last lines; not shown.
            return;
        }
        let text = shown.as_deref().unwrap_or(&stripped);
        let color = task.color;
        let out = &mut tasks.rendered;
        out.clear();
        match self.format {
            Some(LogFormat::Json) => {
                let mut v = serde_json::to_value(event).unwrap_or_default();
                v["service"] = serde_json::json!(service);
                out.push_str(&v.to_string());
                out.push('\n');
            }
            Some(LogFormat::Simple) => {
                out.push_str(text);
                out.push('\n');
            }
            _ => {
                let color = self.color.then(|| PALETTE[color % PALETTE.len()]);
                prefixed(out, tasks.label.as_str(), self.width, color, text);
            }
        }
        self.blocks.line(tasks.label.as_str(), &tasks.rendered);
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
            let label = TaskLabel::new(service, *arch);
            let silent = {
                let mut tasks = self.tasks.lock().expect("lock");
                tasks.label.clone_from(&label);
                let tail = &mut tasks.current().tail;
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
                _ => {
                    let mut out = String::new();
                    prefixed(&mut out, label.as_str(), self.width, None, &text);
                    out
                }
            };
            self.blocks.line(label.as_str(), &rendered);
            self.blocks.flush();
        }
    }

    /// The task of `service` for `arch` ended (`complete`: and its whole
    /// log has been delivered): its log block may close.
    pub fn task_ended(&self, service: &str, arch: bakery_protocol::Arch, complete: bool) {
        let label = TaskLabel::new(service, arch);
        if complete {
            self.blocks.task_complete(label.as_str());
        } else {
            self.blocks.task_ended(label.as_str());
        }
    }

    /// The last lines of task `label`, with the Dockerfile step they
    /// belong to first when it has scrolled out: shown again under a failure.
    pub fn tail(&self, label: &TaskLabel) -> Vec<String> {
        self.tasks
            .lock()
            .expect("lock")
            .get(label)
            .map(|t| t.tail.lines())
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
        self.tasks
            .lock()
            .expect("lock")
            .by_label
            .iter()
            .map(|(k, v)| (k.clone(), v.tail.lines()))
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
        // The line that falls out lends its buffer to the one that comes in.
        let mut slot = if self.lines.len() >= Self::LINES {
            self.lines.pop_front().unwrap_or_default()
        } else {
            String::new()
        };
        slot.clear();
        slot.push_str(line);
        self.lines.push_back(slot);
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

/// `label | text`, the label padded to `width` and coloured with the SGR
/// code `color` if any: `docker compose`'s prefix.
fn prefixed(out: &mut String, label: &str, width: usize, color: Option<&str>, text: &str) {
    if let Some(code) = color {
        out.push_str("\x1b[");
        out.push_str(code);
        out.push('m');
    }
    out.push_str(label);
    out.extend(std::iter::repeat_n(
        ' ',
        width.saturating_sub(label.chars().count()),
    ));
    out.push_str(" |");
    if color.is_some() {
        out.push_str("\x1b[0m");
    }
    out.push(' ');
    out.push_str(text);
    out.push('\n');
}

fn strip_ansi(s: &str) -> std::borrow::Cow<'_, str> {
    static ANSI: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\x1b\[[0-9;?]*[ -/]*[@-~]").expect("valid regex")
    });
    // Most lines have no escape at all: no regex for them.
    if !s.contains('\x1b') {
        return std::borrow::Cow::Borrowed(s);
    }
    ANSI.replace_all(s, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_padded_and_coloured_as_compose_does() {
        let mut out = String::new();
        prefixed(&mut out, "web-amd64", 12, Some("36"), "hello");
        assert_eq!(out, "\x1b[36mweb-amd64    |\x1b[0m hello\n");
        out.clear();
        prefixed(&mut out, "wide-label-arm64", 4, None, "x");
        assert_eq!(out, format!("{:<4} | x\n", "wide-label-arm64"));
    }

    #[test]
    fn a_tail_keeps_the_last_lines_and_the_last_step() {
        let mut tail = Tail::default();
        tail.push("STEP 1/2: RUN make");
        for i in 0..100 {
            tail.push(&format!("line {i}"));
        }
        let lines = tail.lines();
        assert_eq!(lines.len(), Tail::LINES + 1);
        assert_eq!(lines[0], "STEP 1/2: RUN make");
        assert_eq!(lines[1], "line 85");
        assert_eq!(lines.last().map(String::as_str), Some("line 99"));
    }
}
