//! What GitHub shows of a run: step outputs, the job summary, and error
//! annotations at the Dockerfile line a build failed on.

use crate::task_label::TaskLabel;
use std::fmt::Write as _;
use std::path::Path;

use bakery_plan::Plan;
use bakery_protocol::api::TaskState;

use super::locate::failed_line;
use crate::outcome::{submitted, ServiceResult};

/// The step outputs, shaped like docker/build-push-action's: `digest` and
/// `imageid` (a multi-arch image has no single config digest, so both are
/// the first service's index digest), `images` (every tag of every pushed
/// index, as `name@digest`),
/// and `metadata`: build-push-action's `containerimage.digest` and
/// `image.name` (every tag, comma-joined) for the first image at the top
/// level, and each service's detail, per arch, beside them.
pub fn github_outputs(plan: &Plan, results: &[ServiceResult]) -> String {
    let mut metadata = serde_json::Map::new();
    let mut images = Vec::new();
    let mut digest = String::new();
    for (service, status) in submitted(results) {
        let arches: serde_json::Map<String, serde_json::Value> = status
            .tasks
            .iter()
            .map(|t| {
                (
                    t.arch.to_string(),
                    serde_json::json!({"image.name": t.push, "containerimage.digest": t.digest, "status": t.state}),
                )
            })
            .collect();
        let names = image_names(plan, service, status.destination.as_deref());
        if let (Some(_), Some(d)) = (&status.destination, &status.index_digest) {
            images.extend(names.split(',').map(|name| format!("{name}@{d}")));
            if digest.is_empty() {
                digest.clone_from(d);
                metadata.insert("containerimage.digest".into(), d.clone().into());
                metadata.insert("image.name".into(), names.clone().into());
            }
        }
        metadata.insert(
            service.clone(),
            serde_json::json!({
                "image.name": names,
                "containerimage.digest": status.index_digest,
                "state": status.state,
                "build.id": status.id,
                "arches": arches,
            }),
        );
    }
    format!(
        "digest={digest}\nimageid={digest}\nimages={}\nmetadata={}\n",
        images.join(","),
        serde_json::Value::Object(metadata)
    )
}

/// The multi-arch tag and every other tag of `service`, comma-joined.
fn image_names(plan: &Plan, service: &str, destination: Option<&str>) -> String {
    let extra = plan
        .services
        .iter()
        .find(|s| s.name == service)
        .map(|s| s.tags.clone())
        .unwrap_or_default();
    destination
        .into_iter()
        .map(str::to_string)
        .chain(extra)
        .collect::<Vec<_>>()
        .join(",")
}

/// The job summary: a row per service × arch, the indexes, and for each
/// failure the error and the last log lines.
pub fn markdown_summary(results: &[ServiceResult], tails: &crate::ci::Tails) -> String {
    let mut md = String::from(
        "### bakery\n\n| service | arch | status | duration | digest |\n|---|---|---|---|---|\n",
    );
    let mut failures = String::new();
    let mut indexes = String::new();
    for ServiceResult { service, status } in results {
        let Some(status) = status else {
            let _ = writeln!(md, "| {service} | – | ⏭️ skipped | – | – |");
            continue;
        };
        for t in &status.tasks {
            let icon = match t.state {
                TaskState::Succeeded => "✅ pushed",
                TaskState::Failed => "❌ failed",
                TaskState::Cancelled => "⏹️ cancelled",
                _ => "⏳ unfinished",
            };
            let secs = match (t.started_ms, t.finished_ms) {
                (Some(s), Some(f)) => format!("{:.1}s", f.saturating_sub(s) as f64 / 1000.0),
                _ => "–".into(),
            };
            let digest = t
                .digest
                .as_deref()
                .map_or_else(|| "–".into(), |d| format!("`{d}`"));
            let _ = writeln!(
                md,
                "| {service} | {} | {icon} | {secs} | {digest} |",
                t.arch
            );
            if t.state == TaskState::Failed {
                let label = TaskLabel::new(service, t.arch);
                let tail = tails.get(&label).map(|l| l.join("\n")).unwrap_or_default();
                let fence = fence_for(&tail);
                let _ = write!(
                    failures,
                    "\n<details><summary><b>{label}</b>: {}</summary>\n\n{fence}\n{tail}\n{fence}\n</details>\n",
                    html_escape(t.error.as_deref().unwrap_or("failed")),
                );
            }
        }
        if let (Some(dest), Some(d)) = (&status.destination, &status.index_digest) {
            let _ = writeln!(indexes, "- **{service}**: `{dest}@{d}`");
        }
    }
    if !indexes.is_empty() {
        let _ = write!(md, "\nMulti-arch images:\n{indexes}");
    }
    md.push_str(&failures);
    md.push('\n');
    md
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A failed arch, pointed at the Dockerfile line the builder failed on when
/// it can be found (buildah names the step, Kaniko and BuildKit the line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// The Dockerfile, relative to the workspace.
    pub path: Option<String>,
    /// The line in the Dockerfile the build failed at; `None` when it could not be told.
    pub line: Option<usize>,
    /// The annotation's title: `<service> (<arch>) build failed`.
    pub title: String,
    /// The task's error, as the controller reported it.
    pub message: String,
}

impl Annotation {
    /// As a GitHub Actions workflow command.
    pub fn workflow_command(&self) -> String {
        match (&self.path, self.line) {
            (Some(path), Some(line)) => format!(
                "::error file={},line={line},title={}::{}",
                escape_property(path),
                escape_property(&self.title),
                escape_data(&self.message)
            ),
            _ => format!(
                "::error title={}::{}",
                escape_property(&self.title),
                escape_data(&self.message)
            ),
        }
    }
}

/// One annotation per failed arch, at the Dockerfile line it failed on
/// when [`locate`] finds it (from the error, else from the arch's log
/// `tails`).
pub fn annotations(
    plan: &Plan,
    results: &[ServiceResult],
    workspace: &Path,
    tails: &crate::ci::Tails,
) -> Vec<Annotation> {
    let mut out = Vec::new();
    for (service, status) in submitted(results) {
        for t in status.tasks.iter().filter(|t| t.state == TaskState::Failed) {
            let message = t.error.clone().unwrap_or_else(|| "failed".into());
            let tail = tails
                .get(&TaskLabel::new(service, t.arch))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let at = failed_line(plan, service, t.arch, &message, tail);
            let line = at.as_ref().map(|(_, l)| *l);
            let path = at.map(|(df, _)| repository_path(&df, workspace));
            out.push(Annotation {
                path,
                line,
                title: format!("{service} ({}) build failed", t.arch),
                message,
            });
        }
    }
    out
}

/// A located problem (a plan error, a base image without the platform) as
/// a workflow command at its file, line and column.
pub fn diagnostic_command(d: &bakery_plan::Diagnostic, workspace: &Path, title: &str) -> String {
    let file = repository_path(&d.location.file, workspace);
    let message = match &d.hint {
        Some(hint) => format!("{}\n{hint}", d.message),
        None => d.message.clone(),
    };
    format!(
        "::error file={},line={},col={},title={}::{}",
        escape_property(&file),
        d.location.line,
        d.location.column,
        escape_property(title),
        escape_data(&message)
    )
}

/// `file` as GitHub wants annotation paths: relative to the root of the
/// repository it is in, the nearest directory at or below the workspace
/// holding `.git` (actions/checkout with `path:` checks out below the
/// workspace); else relative to the workspace.
pub fn repository_path(file: &Path, workspace: &Path) -> String {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if !d.starts_with(workspace) {
            break;
        }
        if d.join(".git").exists() {
            return file.strip_prefix(d).unwrap_or(file).display().to_string();
        }
        dir = d.parent();
    }
    file.strip_prefix(workspace)
        .unwrap_or(file)
        .display()
        .to_string()
}

fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod repository_path_tests {
    use super::repository_path;

    #[test]
    fn annotation_paths_are_relative_to_the_checkout_also_below_the_workspace() {
        let ws = tempfile::tempdir().unwrap();
        let repo = ws.path().join("src");
        std::fs::create_dir_all(repo.join(".git")).unwrap();
        std::fs::create_dir_all(repo.join("docker")).unwrap();
        let file = repo.join("docker/Dockerfile");
        assert_eq!(repository_path(&file, ws.path()), "docker/Dockerfile");
        // Without a .git: relative to the workspace, as before.
        let plain = ws.path().join("other/Dockerfile");
        assert_eq!(repository_path(&plain, ws.path()), "other/Dockerfile");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn workflow_command_escaping() {
        assert_eq!(escape_data("50%\nnext"), "50%25%0Anext");
        assert_eq!(escape_property("a:b,c"), "a%3Ab%2Cc");
    }
}

/// A code fence longer than any run of backticks in `text`, so that log
/// lines cannot close it and write Markdown (links, images, headings) into
/// the job summary or a check run.
fn fence_for(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    "`".repeat(longest.max(2) + 1)
}

#[cfg(test)]
mod fence_tests {
    use super::fence_for;

    #[test]
    fn a_log_line_cannot_close_the_fence() {
        assert_eq!(fence_for("plain"), "```");
        assert_eq!(fence_for("a ``` b\n````` c"), "``````");
        let tail = "```\n# injected heading\n![x](https://example.com/x.png)";
        let fence = fence_for(tail);
        assert!(!tail.contains(fence.as_str()));
    }
}
