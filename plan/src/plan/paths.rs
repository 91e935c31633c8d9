//! Files on disk: compose discovery, the Dockerfile check, path normalisation.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use crate::error::PlanError;

/// With neither `--config` nor `--compose` and no config.yaml: the compose
/// file `docker compose` would use — `COMPOSE_FILE`, then `compose.yaml`,
/// `compose.yml`, `docker-compose.yaml`, `docker-compose.yml` in the repository.
pub(super) fn discover_compose(
    repo: &Path,
    env: &HashMap<String, String>,
) -> Result<PathBuf, PlanError> {
    const NAMES: [&str; 4] = [
        "compose.yaml",
        "compose.yml",
        "docker-compose.yaml",
        "docker-compose.yml",
    ];
    if let Some(listed) = env.get("COMPOSE_FILE").filter(|v| !v.trim().is_empty()) {
        let separator = env
            .get("COMPOSE_PATH_SEPARATOR")
            .and_then(|s| s.chars().next())
            .unwrap_or(':');
        let files: Vec<&str> = listed.split(separator).filter(|f| !f.is_empty()).collect();
        if files.len() > 1 {
            return Err(PlanError::Conflict(format!(
                "COMPOSE_FILE names {} files ({listed}); bakery reads one compose file: pass it with --compose",
                files.len()
            )));
        }
        let path = repo.join(files[0]);
        if !path.is_file() {
            return Err(PlanError::Conflict(format!(
                "COMPOSE_FILE names {}, which does not exist",
                path.display()
            )));
        }
        return Ok(path);
    }
    NAMES
        .iter()
        .map(|n| repo.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| PlanError::NothingToBuild {
            looked_for: format!(
                "{} and a compose file ({}) in {}",
                repo.join("config.yaml").display(),
                NAMES.join(", "),
                repo.display()
            ),
        })
}

/// Where a build's Dockerfile is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Placement {
    /// Inside the context, by this `/`-separated relative path.
    InContext(String),
    /// Outside it (compose and buildx allow that): this file is sent
    /// beside the context.
    Beside(PathBuf),
}

/// Finds the Dockerfile, given relative to the context or as an absolute
/// path. A Dockerfile that resolves (through `..` or a symlink) to a file
/// outside the context is sent beside it, if it is in the repository: a
/// file elsewhere on the runner (its Docker logins, say) is never sent,
/// whatever a config or a symlink in a pull request names. Errors are
/// (message, hint).
pub(super) fn check_dockerfile(
    repo: &Path,
    context: &Path,
    dockerfile: &str,
) -> Result<Placement, (String, String)> {
    let given = Path::new(dockerfile);
    let path = normalize(&context.join(given));
    if !path.is_file() {
        return Err(not_found(context, dockerfile, &path));
    }
    let (Ok(root), Ok(real)) = (context.canonicalize(), path.canonicalize()) else {
        return Err(not_found(context, dockerfile, &path));
    };
    if let Some(rel) = real.strip_prefix(&root).ok().and_then(Path::to_str) {
        return Ok(Placement::InContext(rel.replace('\\', "/")));
    }
    let in_repo = repo.canonicalize().is_ok_and(|r| real.starts_with(r));
    if !in_repo {
        return Err((
            format!(
                "dockerfile `{dockerfile}` is {}, outside the repository {}",
                real.display(),
                repo.display()
            ),
            "bakery sends a Dockerfile from outside the context only from inside the repository (--repo); copy it into the repository".into(),
        ));
    }
    Ok(Placement::Beside(real))
}

fn not_found(context: &Path, dockerfile: &str, path: &Path) -> (String, String) {
    if !path.starts_with(context) {
        return (
            format!(
                "dockerfile `{dockerfile}` not found (looked for {})",
                path.display()
            ),
            "a dockerfile is relative to the build context, or an absolute path".into(),
        );
    }
    let mut near: Vec<String> = std::fs::read_dir(context)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.contains("Dockerfile")
                || n.contains("dockerfile")
                || n.ends_with(".Containerfile")
                || n == "Containerfile"
        })
        .collect();
    near.sort();
    let hint = if near.is_empty() {
        "dockerfile paths are relative to the build context".to_string()
    } else {
        format!("the context has: {}", near.join(", "))
    };
    (
        format!(
            "dockerfile `{dockerfile}` not found in the build context `{}`",
            context.display()
        ),
        hint,
    )
}

pub(super) fn absolute(p: &Path) -> PathBuf {
    normalize(&std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
}

/// Lexically removes `.` and `..`, so paths compare as users expect.
pub(super) fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
