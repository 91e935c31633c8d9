//! Is the login for each destination good? Asked of the registry before
//! anything is uploaded, so a missing or refused login fails in seconds
//! rather than after a full build (or, worse, between the arch images and
//! the index).

use std::collections::BTreeMap;
use std::time::Duration;

use bakery_plan::Plan;
use reqwest::header::WWW_AUTHENTICATE;
use reqwest::StatusCode;

use super::Login;

/// Each question to a registry gets this long.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One destination's problem, or a reason it could not be asked.
#[derive(Debug, PartialEq, Eq)]
pub enum Finding {
    /// The registry wants a login and none was found.
    NoLogin {
        /// The registry host.
        host: String,
    },
    /// The registry refused the login that would be used.
    Refused {
        /// The registry host.
        host: String,
        /// Where the refused login came from (see [`super::Source`]).
        source: String,
        /// The HTTP status of the refusal (401 or 403).
        status: u16,
    },
    /// The registry could not be asked from here (the agents may still
    /// reach it): a warning, not an error.
    Unreachable {
        /// The registry host, or `every registry` when no HTTP client could be made.
        host: String,
        /// Why it could not be asked (the transport error, without the URL).
        cause: String,
    },
    /// No login on the runner for a cloud registry that agents reach with
    /// their own identity (an ECS task role, a workload identity): a note.
    CloudIdentity {
        /// The registry host (ECR, GCR, Artifact Registry or ACR).
        host: String,
    },
}

impl Finding {
    /// Whether the build cannot go on.
    pub fn is_error(&self) -> bool {
        matches!(self, Finding::NoLogin { .. } | Finding::Refused { .. })
    }
}

/// ECR, GCR, Artifact Registry and ACR: Kaniko logs in to these with the
/// agent's cloud identity (an ECS task role, GKE or AKS workload identity),
/// so a runner without a login for them is normal.
fn pushes_with_cloud_identity(host: &str) -> bool {
    let host = host.split(':').next().unwrap_or(host);
    (host.contains(".dkr.ecr.")
        && (host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn")))
        || host == "gcr.io"
        || host.ends_with(".gcr.io")
        || host.ends_with("-docker.pkg.dev")
        || host.ends_with(".azurecr.io")
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::NoLogin { host } => write!(
                f,
                "no login for {host}: run docker login {host}, or add kaniko-credentials for it"
            ),
            Finding::Refused { host, source, status } => write!(
                f,
                "{host} refused the login from {source} (HTTP {status}): log in again, or fix kaniko-credentials for it"
            ),
            Finding::Unreachable { host, cause } => write!(
                f,
                "could not check the login for {host} from here ({cause}); the agents will try"
            ),
            Finding::CloudIdentity { host } => write!(
                f,
                "no login for {host} on this runner: the agents push with their own cloud identity (task role, workload identity)"
            ),
        }
    }
}

/// Asks every destination registry whether its login (from `logins`) may
/// push to the destination repository: each tag's registry too, since the
/// index is written in every repository a tag names.
pub async fn check_destinations(
    plan: &Plan,
    logins: &BTreeMap<String, Login>,
    insecure: &[String],
) -> Vec<Finding> {
    let mut repos: BTreeMap<String, String> = BTreeMap::new();
    for service in &plan.services {
        for dest in service.destination.iter().chain(&service.tags) {
            if let Ok(r) = bakery_protocol::reference::ImageRef::parse(dest) {
                repos
                    .entry(r.registry.to_lowercase())
                    .or_insert(r.repository);
            }
        }
    }
    let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            return vec![Finding::Unreachable {
                host: "every registry".into(),
                cause: e.to_string(),
            }]
        }
    };
    let mut findings = Vec::new();
    for (host, repo) in repos {
        let plain = bakery_protocol::registry::is_insecure(&host, insecure);
        let login = logins.get(&host);
        if let Some(f) = check_one(&client, &host, &repo, plain, login).await {
            findings.push(f);
        }
    }
    findings
}

async fn check_one(
    client: &reqwest::Client,
    host: &str,
    repo: &str,
    plain: bool,
    login: Option<&Login>,
) -> Option<Finding> {
    let scheme = if plain { "http" } else { "https" };
    let api = if host == "docker.io" {
        "registry-1.docker.io"
    } else {
        host
    };
    let unreachable = |e: reqwest::Error| Finding::Unreachable {
        host: host.to_string(),
        cause: without_url(&e),
    };
    let base = client.get(format!("{scheme}://{api}/v2/"));
    let first = match base.send().await {
        Ok(r) => r,
        Err(e) => return Some(unreachable(e)),
    };
    if first.status() != StatusCode::UNAUTHORIZED {
        return None;
    }
    let Some(login) = login else {
        let host = host.to_string();
        if pushes_with_cloud_identity(&host) {
            return Some(Finding::CloudIdentity { host });
        }
        return Some(Finding::NoLogin { host });
    };
    let challenge = first
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let asked = match bearer_realm(&challenge) {
        Some((realm, service)) => {
            let mut query = vec![("scope", format!("repository:{repo}:pull,push"))];
            if let Some(service) = service {
                query.push(("service", service));
            }
            client.get(realm).query(&query)
        }
        None => client.get(format!("{scheme}://{api}/v2/")),
    };
    let answer = asked
        .basic_auth(&login.username, Some(login.password.expose()))
        .send()
        .await;
    match answer {
        Ok(r) if r.status().is_success() => None,
        Ok(r) if matches!(r.status().as_u16(), 401 | 403) => Some(Finding::Refused {
            host: host.to_string(),
            source: login.source.to_string(),
            status: r.status().as_u16(),
        }),
        Ok(r) => Some(Finding::Unreachable {
            host: host.to_string(),
            cause: format!("HTTP {}", r.status()),
        }),
        Err(e) => Some(unreachable(e)),
    }
}

/// reqwest's message without the URL, which may carry a query.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    kind.to_string()
}

/// `Bearer realm="…",service="…"`: where tokens come from.
fn bearer_realm(challenge: &str) -> Option<(String, Option<String>)> {
    let rest = challenge
        .strip_prefix("Bearer ")
        .or_else(|| challenge.strip_prefix("bearer "))?;
    let mut realm = None;
    let mut service = None;
    for part in rest.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        let v = v.trim_matches('"').to_string();
        match k.trim() {
            "realm" => realm = Some(v),
            "service" => service = Some(v),
            _ => {}
        }
    }
    Some((realm?, service))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_read() {
        assert_eq!(
            bearer_realm(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#
            ),
            Some((
                "https://auth.docker.io/token".into(),
                Some("registry.docker.io".into())
            ))
        );
        assert_eq!(bearer_realm(r#"Basic realm="Registry Realm""#), None);
    }

    #[test]
    fn cloud_registries_are_left_to_the_agents_identity() {
        for host in [
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            "eu.gcr.io",
            "europe-docker.pkg.dev",
            "team.azurecr.io",
        ] {
            assert!(pushes_with_cloud_identity(host), "{host}");
        }
        for host in [
            "ghcr.io",
            "registry.example.com",
            "docker.io",
            "127.0.0.1:5000",
            "ecr.example.com",
        ] {
            assert!(!pushes_with_cloud_identity(host), "{host}");
        }
    }
}
