//! Build secrets as files the builders read (`--secret id=…,src=…`, the
//! same flag for buildah and the Kaniko fork): never on a command line or
//! in the environment, readable by the agent only, inside the work dir the
//! builders exclude from the image, deleted with it.

use std::path::{Path, PathBuf};

use bakery_protocol::spec::BuildSecret;

use crate::error::{io, AgentError};

/// Writes each of `secrets` (build secrets, SSH keys) into `<work>/<dir>`
/// and returns `(id, path)` pairs.
pub(crate) fn write_files(
    work: &Path,
    dir: &str,
    secrets: &[BuildSecret],
) -> Result<Vec<(String, PathBuf)>, AgentError> {
    if secrets.is_empty() {
        return Ok(Vec::new());
    }
    let dir = work.join(dir);
    std::fs::create_dir_all(&dir).map_err(io("creating the secrets dir"))?;
    let mut files = Vec::new();
    for (i, secret) in secrets.iter().enumerate() {
        // Numbered, not named by id: an id is the user's text.
        let path = dir.join(i.to_string());
        crate::step::write_private(&path, secret.value.expose().as_bytes())
            .map_err(io("writing a build secret"))?;
        files.push((secret.id.clone(), path));
    }
    Ok(files)
}

/// buildah's `--ssh` flags for key `files`.
pub(crate) fn ssh_flags(files: &[(String, PathBuf)]) -> impl Iterator<Item = String> + '_ {
    files
        .iter()
        .map(|(id, path)| format!("--ssh={id}={}", path.display()))
}

/// The builders' flags for `files`.
pub(crate) fn flags(files: &[(String, PathBuf)]) -> impl Iterator<Item = String> + '_ {
    files
        .iter()
        .map(|(id, path)| format!("--secret=id={id},src={}", path.display()))
}
