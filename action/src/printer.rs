//! Build logs as `docker compose` prints them: one prefixed, coloured line
//! per log line, each arch's run of lines in a CI log block.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use bakery_plan::Plan;
use bakery_protocol::api::LogEvent;

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
    tails: Mutex<HashMap<String, Vec<String>>>,
    ci: Arc<dyn CiSystem>,
    /// The CI log block (group/section) open now: label and its number.
    block: Mutex<Option<(String, usize)>>,
}

const PALETTE: [&str; 6] = ["36", "33", "32", "35", "34", "31"];

impl Printer {
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
            color: format.is_none() && std::io::stdout().is_terminal(),
            format,
            colors: Mutex::default(),
            tails: Mutex::default(),
            ci,
            block: Mutex::default(),
        }
    }

    pub fn line(&self, service: &str, event: &LogEvent) {
        let label = format!("{service}-{}", event.arch);
        let text = strip_ansi(&event.line);
        {
            let mut tails = self.tails.lock().expect("lock");
            let tail = tails.entry(label.clone()).or_default();
            tail.push(text.clone());
            if tail.len() > 15 {
                tail.remove(0);
            }
        }
        let mut out = std::io::stdout().lock();
        {
            // In CI, each run of lines from one arch goes in a collapsible block.
            let mut block = self.block.lock().expect("lock");
            if block.as_ref().map(|(l, _)| l.as_str()) != Some(label.as_str()) {
                let n = block.as_ref().map_or(0, |(_, n)| n + 1);
                let previous = block.as_ref().map(|(l, n)| (l.as_str(), *n));
                let _ = out.write_all(self.ci.switch_block(previous, &label, n).as_bytes());
                *block = Some((label.clone(), n));
            }
        }
        let _ = match self.format {
            Some(LogFormat::Json) => {
                let mut v = serde_json::to_value(event).unwrap_or_default();
                v["service"] = serde_json::json!(service);
                writeln!(out, "{v}")
            }
            Some(LogFormat::Simple) => writeln!(out, "{text}"),
            _ if self.color => {
                let n = {
                    let mut colors = self.colors.lock().expect("lock");
                    let next = colors.len();
                    *colors.entry(label.clone()).or_insert(next)
                };
                writeln!(
                    out,
                    "\x1b[{}m{label:<w$} |\x1b[0m {text}",
                    PALETTE[n % PALETTE.len()],
                    w = self.width
                )
            }
            _ => writeln!(out, "{label:<w$} | {text}", w = self.width),
        };
    }

    pub fn tail(&self, label: &str) -> Vec<String> {
        self.tails
            .lock()
            .expect("lock")
            .get(label)
            .cloned()
            .unwrap_or_default()
    }

    /// Ends the open CI log block, so what follows is not folded away.
    pub fn end_block(&self) {
        let open = self.block.lock().expect("lock").take();
        print!(
            "{}",
            self.ci
                .close_block(open.as_ref().map(|(l, n)| (l.as_str(), *n)))
        );
    }

    /// The last lines of every task's log.
    pub fn tails(&self) -> Tails {
        self.tails
            .lock()
            .expect("lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Writes the CI reports (outputs, summary, annotations, dotenv).
    pub fn report(&self, plan: &Plan, results: &[ServiceResult]) {
        if let Err(e) = self.ci.write_reports(plan, results, &self.tails()) {
            tracing::warn!("could not write the CI report: {e}");
        }
    }
}

fn strip_ansi(s: &str) -> String {
    static ANSI: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\x1b\[[0-9;?]*[ -/]*[@-~]").expect("valid regex")
    });
    ANSI.replace_all(s, "").into_owned()
}
