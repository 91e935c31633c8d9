//! Registry logins the runner already has, sent with the build.
//!
//! A CI job logs in before it builds (`docker/login-action`, `docker
//! login`, `buildah login`, GitLab's `CI_REGISTRY_*` variables); the agents
//! run elsewhere and never see that login. So the client collects, per
//! registry host, the first login among (in this order):
//!
//! 1. config.yaml `kaniko-credentials` (already in the plan; `${VAR}` there
//!    reads the environment);
//! 2. the Docker config (`$DOCKER_CONFIG/config.json`, else
//!    `~/.docker/config.json`): `credHelpers`, then `credsStore`, each by
//!    running `docker-credential-<helper> get` as Docker does, then `auths`;
//! 3. the containers auth file (`REGISTRY_AUTH_FILE`, else
//!    `$XDG_RUNTIME_DIR/containers/auth.json`);
//! 4. on GitLab, `CI_REGISTRY_USER` / `CI_REGISTRY_PASSWORD` for `CI_REGISTRY`;
//!
//! and adds to each build only the logins for the registries it touches
//! (its tags, cache repository, `cache-from` images and base images). They
//! travel as config.yaml's do: in the build's spec, fetched once by the
//! agent, used by the controller for the index, scrubbed when the build ends.
//! [`check`] then asks the destination registry whether the login is good
//! before anything is uploaded.

pub mod check;
mod docker_config;
mod helper;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use bakery_plan::Plan;
use bakery_protocol::spec::{Credential, Secret};

pub use check::check_destinations;

/// Where a login came from, for messages (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// config.yaml's `kaniko-credentials`.
    ConfigYaml,
    /// The `auths` of this Docker config file.
    DockerConfig(PathBuf),
    /// The credential helper `docker-credential-<name>`, by its name.
    Helper(String),
    /// This containers auth file (buildah's, podman's).
    AuthFile(PathBuf),
    /// GitLab's `CI_REGISTRY_USER` and `CI_REGISTRY_PASSWORD`.
    GitLab,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::ConfigYaml => f.write_str("config.yaml kaniko-credentials"),
            Source::DockerConfig(p) | Source::AuthFile(p) => write!(f, "{}", p.display()),
            Source::Helper(h) => write!(f, "docker-credential-{h}"),
            Source::GitLab => f.write_str("CI_REGISTRY_USER/CI_REGISTRY_PASSWORD"),
        }
    }
}

/// One registry login.
#[derive(Debug, Clone)]
pub struct Login {
    /// The user name to log in with.
    pub username: String,
    /// The password or token; never printed.
    pub password: Secret,
    /// Where the login came from, for messages.
    pub source: Source,
}

/// What went wrong finding a login. Never carries a password.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// A Docker config or containers auth file that cannot be read or parsed:
    /// an error, as Docker would make it.
    #[error("{path}: {cause}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong with it (for an `auths` entry, which one).
        cause: String,
    },
    /// A credential helper failed or answered with something unreadable: a
    /// warning, since it may be for a registry the build only pulls from.
    #[error("docker-credential-{helper} get for {host}: {cause}")]
    Helper {
        /// The helper's name (`docker-credential-<helper>`).
        helper: String,
        /// The registry host it was asked about.
        host: String,
        /// What went wrong: it could not run, it failed, or its answer does not parse.
        cause: String,
    },
}

/// The registry host a Docker config or auth.json key names: keys are
/// `host`, `host:port`, `https://host/v1/` or a repository path.
pub fn normalise_host(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

/// Every registry host each build touches, by (service, arch) index.
fn touched(plan: &Plan) -> Vec<BTreeSet<String>> {
    let host = |r: &str| bakery_protocol::reference::registry_of(r).to_string();
    plan.builds()
        .map(|(service, build)| {
            let spec = &build.spec;
            let mut hosts: BTreeSet<String> = service
                .destination
                .iter()
                .chain(&service.tags)
                .chain(&build.push)
                .chain(&spec.cache.repo)
                .chain(&spec.cache_from)
                .map(|r| host(r))
                .collect();
            hosts.extend(crate::preflight::base_images(build).iter().map(|r| host(r)));
            hosts
        })
        .collect()
}

/// Adds the runner's logins to every build that touches their registry.
/// config.yaml's own logins win. Returns the logins used, by host, for
/// [`check_destinations`], and warnings: a credential helper that fails is
/// one (Docker would stop; a helper for a registry only pulled from must
/// not stop the build, and a destination without a login is caught by the
/// check). A Docker config that cannot be read is an error.
pub async fn attach(
    plan: &mut Plan,
    env: &HashMap<String, String>,
) -> Result<(BTreeMap<String, Login>, Vec<String>), LoginError> {
    let mut warnings = Vec::new();
    let touched = touched(plan);
    if let Some(dir) = env.get("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        if !std::path::Path::new(dir).join("config.json").is_file() {
            warnings.push(format!(
                "DOCKER_CONFIG={dir} holds no config.json: no Docker logins were read (docker login writes one there)"
            ));
        }
    }
    let mut sources: Option<Sources> = None;
    let mut found: BTreeMap<String, Option<Login>> = BTreeMap::new();
    for (hosts, (_, build)) in touched.iter().zip(plan.builds()) {
        for c in &build.spec.credentials {
            let login = Login {
                username: c.username.clone(),
                password: c.password.clone(),
                source: Source::ConfigYaml,
            };
            found
                .entry(normalise_host(&c.registry))
                .or_insert(Some(login));
        }
        for h in hosts {
            if !found.contains_key(h) {
                let sources = match &mut sources {
                    Some(s) => s,
                    None => sources.insert(Sources::read(env)?),
                };
                let login = match sources.lookup(h).await {
                    Err(e @ LoginError::Helper { .. }) => {
                        warnings.push(e.to_string());
                        None
                    }
                    other => other?,
                };
                found.insert(h.clone(), login);
            }
        }
    }
    let found: BTreeMap<String, Login> = found
        .into_iter()
        .filter_map(|(h, l)| l.map(|l| (h, l)))
        .collect();
    let builds = plan.services.iter_mut().flat_map(|s| s.builds.iter_mut());
    for (hosts, build) in touched.iter().zip(builds) {
        let have: BTreeSet<String> = build
            .spec
            .credentials
            .iter()
            .map(|c| normalise_host(&c.registry))
            .collect();
        for h in hosts.iter().filter(|h| !have.contains(*h)) {
            if let Some(l) = found.get(h).filter(|l| l.source != Source::ConfigYaml) {
                build.spec.credentials.push(Credential {
                    registry: h.clone(),
                    username: l.username.clone(),
                    password: l.password.clone(),
                });
            }
        }
    }
    Ok((found, warnings))
}

/// Every file the runner's logins may be read from: kept out of uploaded
/// contexts.
pub fn login_files(env: &HashMap<String, String>) -> Vec<PathBuf> {
    let var = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
    [
        var("DOCKER_CONFIG").map(|d| PathBuf::from(d).join("config.json")),
        var("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")),
        var("REGISTRY_AUTH_FILE").map(PathBuf::from),
        var("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("containers/auth.json")),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The runner's login files, each read once per run, and the credential
/// helpers that failed in it (not asked again).
struct Sources {
    docker: Option<(PathBuf, docker_config::DockerConfig)>,
    auth_file: Option<(PathBuf, docker_config::DockerConfig)>,
    gitlab: Option<(String, String, String)>,
    broken: HashSet<String>,
}

impl Sources {
    fn read(env: &HashMap<String, String>) -> Result<Sources, LoginError> {
        let var = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let read = |path: Option<PathBuf>| -> Result<_, LoginError> {
            match path.filter(|p| p.exists()) {
                Some(p) => Ok(Some((p.clone(), docker_config::read(&p)?))),
                None => Ok(None),
            }
        };
        let docker = var("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".docker")))
            .map(|d| d.join("config.json"));
        let auth_file = var("REGISTRY_AUTH_FILE").map(PathBuf::from).or_else(|| {
            var("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("containers/auth.json"))
        });
        let gitlab = match (
            var("CI_REGISTRY"),
            var("CI_REGISTRY_USER"),
            var("CI_REGISTRY_PASSWORD"),
        ) {
            (Some(r), Some(u), Some(p)) => Some((normalise_host(&r), u, p)),
            _ => None,
        };
        Ok(Sources {
            docker: read(docker)?,
            auth_file: read(auth_file)?,
            gitlab,
            broken: HashSet::new(),
        })
    }

    /// The runner's login for `host`: Docker config, auth file, GitLab.
    async fn lookup(&mut self, host: &str) -> Result<Option<Login>, LoginError> {
        if let Some((path, config)) = &self.docker {
            if let Some(login) = config.login(host, path, &mut self.broken).await? {
                return Ok(Some(login));
            }
        }
        if let Some((path, config)) = &self.auth_file {
            if let Some(login) = config.stored(host, path)? {
                return Ok(Some(Login {
                    source: Source::AuthFile(path.clone()),
                    ..login
                }));
            }
        }
        Ok(self
            .gitlab
            .as_ref()
            .filter(|(registry, _, _)| registry == host)
            .map(|(_, user, password)| Login {
                username: user.clone(),
                password: Secret::new(password.clone()),
                source: Source::GitLab,
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalised_as_docker_does() {
        assert_eq!(normalise_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(
            normalise_host("Registry.Example.com:5000"),
            "registry.example.com:5000"
        );
        assert_eq!(
            normalise_host("http://127.0.0.1:5000/v2/"),
            "127.0.0.1:5000"
        );
        assert_eq!(normalise_host("ghcr.io/team/app"), "ghcr.io");
    }
}
