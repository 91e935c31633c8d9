//! Human-readable output.

use crate::task_label::TaskLabel;
use std::fmt::Write;
use std::path::Path;

use bakery_plan::Plan;
use bakery_protocol::api::{BuildState, TaskState};

use crate::outcome::ServiceResult;
use crate::printer::Printer;

/// The plan as an aligned table, then one line per multi-arch index.
pub fn plan_table(plan: &Plan, repo: &Path) -> String {
    let repo = std::path::absolute(repo).unwrap_or_else(|_| repo.to_path_buf());
    let mut rows = vec![[
        "SERVICE",
        "ARCH",
        "RUNS ON",
        "CONTEXT",
        "DOCKERFILE",
        "TARGET",
        "MEMORY",
        "DISK",
        "PUSH",
        "CACHE",
    ]
    .map(String::from)];
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for (service, build) in plan.builds() {
        let context = build.context_dir.strip_prefix(&repo).map_or_else(
            |_| build.context_dir.display().to_string(),
            |p| {
                if p.as_os_str().is_empty() {
                    ".".into()
                } else {
                    p.display().to_string()
                }
            },
        );
        rows.push([
            service.name.clone(),
            build.arch.to_string(),
            // Where the agent runs: ecs, k8s, local, or the controller's choice.
            build
                .spec
                .platform
                .map_or("(default)".into(), |p| p.to_string()),
            context,
            match &build.dockerfile_outside {
                Some(file) => file.display().to_string(),
                None => build.spec.dockerfile.clone(),
            },
            or_dash(build.spec.target.clone()),
            or_dash(build.spec.memory.as_ref().map(ToString::to_string)),
            or_dash(build.spec.disk.as_ref().map(ToString::to_string)),
            build.push.clone().unwrap_or_else(|| "(no push)".into()),
            // The resolved per-arch repository: where a derived one lands is
            // the first thing to check when a registry refuses the push.
            match (&build.spec.cache.enable, &build.spec.cache.repo) {
                (Some(true), Some(repo)) => repo.clone(),
                (Some(true), None) => "(local layers only)".into(),
                _ => "-".into(),
            },
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    for service in &plan.services {
        if let Some(dest) = &service.destination {
            let platforms: Vec<&str> = service.builds.iter().map(|b| b.arch.platform()).collect();
            let _ = writeln!(
                out,
                "\n{} → {} ({})",
                service.name,
                dest,
                platforms.join(", ")
            );
        }
    }
    out
}

/// A byte count in the largest unit that keeps it above 1.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The table CI users read first: one row per (service, arch), the index,
/// for failures the Dockerfile line and the last lines of the failing
/// arch's log, and the total time.
pub fn print_summary(
    plan: &Plan,
    results: &[ServiceResult],
    printer: &Printer,
    started: std::time::Instant,
) {
    if printer.json() {
        return print_summary_json(plan, results, printer, started);
    }
    let summary = Summary::of(results);
    let mut out = String::from("\n");
    push_table(&mut out, &summary.rows);
    for line in &summary.indexes {
        out.push_str(&format!("multi-arch index {line}\n"));
    }
    for failure in &summary.failures {
        push_failure(&mut out, plan, printer, failure);
    }
    out.push_str(&format!(
        "\n{} in {:.1}s\n",
        if summary.failures.is_empty() {
            "finished"
        } else {
            "failed"
        },
        started.elapsed().as_secs_f64()
    ));
    // Not print!: a closed stdout (`bakery build | head -1`) must not end
    // the build's clean-up in a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
}

/// What the summary shows, gathered from the results.
struct Summary<'a> {
    /// The table, its header first.
    rows: Vec<[String; 5]>,
    /// `service: destination → digest`, per index written.
    indexes: Vec<String>,
    failures: Vec<Failure<'a>>,
}

/// A failed arch, or a build that failed without one.
struct Failure<'a> {
    /// The task's label, or the service's name.
    name: String,
    error: String,
    /// The failed arch, if one did.
    task: Option<(&'a str, bakery_protocol::Arch)>,
}

impl<'a> Summary<'a> {
    fn of(results: &'a [ServiceResult]) -> Summary<'a> {
        let mut summary = Summary {
            rows: vec![["SERVICE", "ARCH", "STATUS", "DURATION", "DIGEST"].map(String::from)],
            indexes: Vec::new(),
            failures: Vec::new(),
        };
        for ServiceResult { service, status } in results {
            let Some(status) = status else {
                let dash = || "-".to_string();
                summary
                    .rows
                    .push([service.clone(), dash(), "skipped".into(), dash(), dash()]);
                continue;
            };
            for t in &status.tasks {
                let secs = match (t.started_ms, t.finished_ms) {
                    (Some(s), Some(f)) => format!("{:.1}s", f.saturating_sub(s) as f64 / 1000.0),
                    _ => "-".into(),
                };
                summary.rows.push([
                    service.clone(),
                    t.arch.to_string(),
                    task_word(t.state, t.push.is_some()).into(),
                    secs,
                    t.digest.clone().unwrap_or_else(|| "-".into()),
                ]);
                if t.state == TaskState::Failed {
                    summary.failures.push(Failure {
                        name: TaskLabel::new(service, t.arch).to_string(),
                        error: t.error.clone().unwrap_or_default(),
                        task: Some((service.as_str(), t.arch)),
                    });
                }
            }
            match (&status.destination, &status.index_digest, status.state) {
                (Some(dest), Some(digest), _) => {
                    summary
                        .indexes
                        .push(format!("{service}: {dest} → {digest}"));
                }
                (_, _, BuildState::Failed)
                    if !status.tasks.iter().any(|t| t.state == TaskState::Failed) =>
                {
                    summary.failures.push(Failure {
                        name: service.clone(),
                        error: status.error.clone().unwrap_or_default(),
                        task: None,
                    });
                }
                _ => {}
            }
        }
        summary
    }
}

/// The rows as columns padded to their widest cell.
fn push_table(out: &mut String, rows: &[[String; 5]]) {
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
}

/// A failure: where in the Dockerfile, the error, a hint, and the arch's
/// last lines (without the error again).
fn push_failure(out: &mut String, plan: &Plan, printer: &Printer, failure: &Failure<'_>) {
    let Failure { name, error, task } = failure;
    let tail = task
        .map(|(service, arch)| printer.tail(&TaskLabel::new(service, arch)))
        .unwrap_or_default();
    let at = task
        .and_then(|(service, arch)| {
            crate::ci::github::locate::failed_line(plan, service, arch, error, &tail)
        })
        .map(|(df, line)| format!(" at {}:{line}", shown_path(&df)))
        .unwrap_or_default();
    out.push_str(&format!("\n{name} failed{at}: {error}\n"));
    if let Some(hint) =
        task.and_then(|(service, arch)| failure_hint(plan, service, arch, error, &tail))
    {
        out.push_str(&format!("  hint: {hint}\n"));
    }
    // The error is the builder's last line: shown once, above.
    let tail: Vec<&String> = tail.iter().filter(|l| !repeats(l, error)).collect();
    if !tail.is_empty() {
        out.push_str(&format!("last lines of {name}:\n"));
        for l in tail {
            out.push_str(&format!("  {l}\n"));
        }
    }
}

/// The summary in `--log-format json`: one object per service (its
/// tasks, its index), then one for the whole run, so that every line of
/// stdout parses as JSON.
fn print_summary_json(
    plan: &Plan,
    results: &[ServiceResult],
    printer: &Printer,
    started: std::time::Instant,
) {
    let mut out = String::new();
    let mut ok = true;
    for ServiceResult { service, status } in results {
        let Some(status) = status else {
            let line = serde_json::json!({"service": service, "summary": {"state": "skipped"}});
            out.push_str(&format!("{line}\n"));
            ok = false;
            continue;
        };
        let tasks: Vec<serde_json::Value> = status
            .tasks
            .iter()
            .map(|t| {
                let error = t.error.as_deref().unwrap_or_default();
                let tail = printer.tail(&TaskLabel::new(service, t.arch));
                let at =
                    crate::ci::github::locate::failed_line(plan, service, t.arch, error, &tail);
                serde_json::json!({
                    "arch": t.arch,
                    "state": t.state,
                    "seconds": t.started_ms.zip(t.finished_ms)
                        .map(|(s, f)| f.saturating_sub(s) as f64 / 1000.0),
                    "digest": t.digest,
                    "error": t.error,
                    "dockerfile": at.as_ref().map(|(df, _)| shown_path(df)),
                    "line": at.map(|(_, l)| l),
                    "hint": failure_hint(plan, service, t.arch, error, &tail),
                })
            })
            .collect();
        ok &= status.state == BuildState::Succeeded;
        let line = serde_json::json!({"service": service, "summary": {
            "state": status.state,
            "tasks": tasks,
            "destination": status.destination,
            "index_digest": status.index_digest,
            "error": status.error,
        }});
        out.push_str(&format!("{line}\n"));
    }
    let end =
        serde_json::json!({"finished": {"ok": ok, "seconds": started.elapsed().as_secs_f64()}});
    out.push_str(&format!("{end}\n"));
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
}

/// What to do about a failed arch, where the error does not say.
fn failure_hint(
    plan: &Plan,
    service: &str,
    arch: bakery_protocol::Arch,
    error: &str,
    tail: &[String],
) -> Option<String> {
    crate::hints::dockerignore_hint(plan.build(service, arch)?, error, tail)
}

/// A task's state in the words the summary and `bakery status` share.
pub fn task_word(state: TaskState, pushes: bool) -> &'static str {
    match state {
        TaskState::Succeeded if pushes => "pushed",
        TaskState::Succeeded => "built",
        TaskState::Failed => "failed",
        TaskState::Cancelled => "cancelled",
        TaskState::Queued => "queued",
        TaskState::Starting => "starting",
        TaskState::Running => "running",
    }
}

/// A build's state in the same words as [`task_word`].
pub fn build_word(state: BuildState, pushes: bool) -> &'static str {
    match state {
        BuildState::Running => "running",
        BuildState::Indexing => "writing the index",
        BuildState::Succeeded if pushes => "pushed",
        BuildState::Succeeded => "built",
        BuildState::Failed => "failed",
        BuildState::Cancelled => "cancelled",
    }
}

/// Whether a log line says what `error` already says: the agent's and the
/// controller's `error: …` line, or the builder's line the error quotes.
fn repeats(line: &str, error: &str) -> bool {
    let line = line.trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    !line.is_empty() && (line == error || error.ends_with(line) || line.ends_with(error))
}

/// A path as a person would type it here: relative to the working
/// directory when it is below it.
fn shown_path(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}
