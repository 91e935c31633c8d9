//! Registry logins for the builder, as a Docker `config.json` in the work
//! dir (never on a command line or in the environment).

use std::path::{Path, PathBuf};

use bakery_protocol::api::AgentTask;
use base64::Engine;

use crate::error::{io, AgentError};

/// Registry logins as a Docker `config.json`, readable by the agent only.
pub(crate) fn write_docker_config(
    work: &Path,
    task: &AgentTask,
) -> Result<Option<PathBuf>, AgentError> {
    if task.spec.credentials.is_empty() {
        return Ok(None);
    }
    let mut auths = serde_json::Map::new();
    for c in &task.spec.credentials {
        let key = if c.registry == "docker.io" || c.registry == "index.docker.io" {
            "https://index.docker.io/v1/".to_string()
        } else {
            c.registry.clone()
        };
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            c.username,
            c.password.expose()
        ));
        auths.insert(key, serde_json::json!({ "auth": token }));
    }
    let dir = work.join("docker");
    std::fs::create_dir_all(&dir).map_err(io("creating the registry config dir"))?;
    let path = dir.join("config.json");
    let body = serde_json::to_vec(&serde_json::json!({ "auths": auths })).expect("json serialises");
    crate::step::write_private(&path, &body).map_err(io("writing the registry config"))?;
    Ok(Some(dir))
}
