//! The registries a build talks to, asked once before the builder starts.
//!
//! A registry that accepts connections and never answers held the builder
//! at `Copying blob` until the controller's BUILD_RESULT_TIMEOUT (10
//! minutes), and the error then blamed the timeout. Each registry the build
//! pulls from or pushes to is sent `GET /v2/` first: one that gives no
//! answer within [`PROBE_TIMEOUT`] fails the task at once, named with the
//! step that needs it. Any answer (401 included), and any failure that is
//! not a time-out (refused, unknown host, a certificate only the builder is
//! configured to trust), is left to the builder, which reports those itself
//! and fast.

use std::time::Duration;

use crate::AgentError;

/// How long a registry has to answer `GET /v2/`.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// One registry and what the build needs it for.
pub(crate) struct Use {
    /// The registry host (`docker.io`, `registry.example.com:5000`).
    pub host: String,
    /// The step that needs it (`pull of the base images`, `push`).
    pub step: &'static str,
}

/// Asks every registry in `uses` at once; the first that does not answer
/// in time fails the task. `plain_http` lists hosts reached over HTTP.
pub(crate) async fn check(
    uses: Vec<Use>,
    plain_http: &[String],
    timeout: Duration,
) -> Result<(), AgentError> {
    let Ok(http) = reqwest::Client::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    else {
        return Ok(());
    };
    let probes = uses.iter().map(|u| {
        let http = http.clone();
        async move {
            let scheme = if plain_http.contains(&u.host) {
                "http"
            } else {
                "https"
            };
            let host = if u.host == "docker.io" {
                "registry-1.docker.io"
            } else {
                u.host.as_str()
            };
            match http.get(format!("{scheme}://{host}/v2/")).send().await {
                Err(e) if e.is_timeout() => Err(AgentError::Registry {
                    host: u.host.clone(),
                    step: u.step,
                    waited: timeout,
                }),
                _ => Ok(()),
            }
        }
    });
    futures_util::future::join_all(probes)
        .await
        .into_iter()
        .collect()
}

/// The registries of a task: those its Dockerfile and cache pull from, then
/// its push destination's (each once, the first need named).
pub(crate) fn uses(pull_hosts: &[String], push: Option<&str>) -> Vec<Use> {
    let mut uses: Vec<Use> = Vec::new();
    let pulls = pull_hosts
        .iter()
        .map(|h| (h.clone(), "pull of the base images"));
    let pushes = push.map(|p| {
        (
            bakery_protocol::reference::registry_of(p).to_string(),
            "push",
        )
    });
    for (host, step) in pulls.chain(pushes) {
        if !uses.iter().any(|u| u.host == host) {
            uses.push(Use { host, step });
        }
    }
    uses
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that accepts (the kernel does) and never answers.
    #[tokio::test]
    async fn a_registry_that_never_answers_is_named_with_its_step() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = silent.local_addr().unwrap().to_string();
        let uses = uses(&[], Some(&format!("{host}/app:1")));
        let e = check(
            uses,
            std::slice::from_ref(&host),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains(&host) && e.contains("push"), "{e}");
        drop(silent);
    }

    /// Refused and answered are the builder's to report.
    #[tokio::test]
    async fn only_silence_fails_the_probe() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refused = closed.local_addr().unwrap().to_string();
        drop(closed);
        let uses = uses(std::slice::from_ref(&refused), None);
        assert!(check(uses, &[refused], Duration::from_millis(300))
            .await
            .is_ok());
    }

    #[test]
    fn each_registry_once_with_its_first_need() {
        let u = uses(
            &["docker.io".into(), "r.example".into()],
            Some("r.example/app:1_amd64"),
        );
        let got: Vec<(&str, &str)> = u.iter().map(|u| (u.host.as_str(), u.step)).collect();
        assert_eq!(
            got,
            [
                ("docker.io", "pull of the base images"),
                ("r.example", "pull of the base images")
            ]
        );
    }
}
