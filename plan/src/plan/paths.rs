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

/// The Dockerfile must be a file inside the context, since the context is
/// all the agent receives. Errors are (message, hint).
pub(super) fn check_dockerfile(context: &Path, dockerfile: &str) -> Result<(), (String, String)> {
    let rel = Path::new(dockerfile);
    if rel.is_absolute() || rel.components().any(|c| c == Component::ParentDir) {
        return Err((
            format!("dockerfile `{dockerfile}` is outside the build context"),
            "the agent only receives the context; give the Dockerfile's path relative to the context".into(),
        ));
    }
    let path = context.join(rel);
    if !path.is_file() {
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
        return Err((
            format!(
                "dockerfile `{dockerfile}` not found in the build context `{}`",
                context.display()
            ),
            hint,
        ));
    }
    // A symlink (or a directory on the way that is one) leading out of the
    // context is stored as a link: the agent would find nothing, or a file
    // of its own machine.
    let inside = match (context.canonicalize(), path.canonicalize()) {
        (Ok(root), Ok(real)) => real.starts_with(root),
        _ => true,
    };
    if !inside {
        return Err((
            format!("dockerfile `{dockerfile}` is a symlink that leads out of the build context"),
            "the agent only receives the context; copy the Dockerfile into it, or make the context the directory that holds it".into(),
        ));
    }
    Ok(())
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
