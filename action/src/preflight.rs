//! Before anything is uploaded or any agent starts: every base image the
//! build pulls has the platform it is pulled for.
//!
//! A builder asked for linux/arm64 on a base image without an arm64 variant
//! uses the one it has and says so only in a warning mid-log. Here each
//! stage's `FROM` (and `COPY --from` image) that the build needs is
//! resolved as the builder will (build args substituted, `--platform`
//! honoured, `scratch` and stage names skipped) and looked up in its
//! registry: an index must list the platform, a single image's config must
//! be it. Every problem is reported at once, at its Dockerfile line. An
//! image the client cannot read (a login it does not have, a network it
//! cannot reach) is not an error here: the controller checks each pushed
//! image's architecture after the build anyway.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bakery_controller::verify::platforms_of;
use bakery_plan::{ArchBuild, Diagnostic, Location, Plan};
use bakery_protocol::dockerfile;
use bakery_protocol::image_platform::ImagePlatform;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;

/// Longest one registry request may take: a check that cannot be done
/// quickly is skipped, not waited for.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Images looked up at once.
const PARALLEL: usize = 8;

/// One image, pulled for one platform, and every place that pulls it so.
#[derive(Debug, Clone)]
struct Wanted {
    image: String,
    platform: String,
    /// Dockerfile lines, with the service that builds there.
    at: Vec<(PathBuf, usize, String)>,
    auth: RegistryAuth,
}

/// Checks every base image of `plan`; the problems, located, if any.
pub async fn check_bases(plan: &Plan, insecure: &[String]) -> Vec<Diagnostic> {
    let wanted = wanted(plan);
    if wanted.is_empty() {
        return Vec::new();
    }
    let mut plain: Vec<String> = insecure.to_vec();
    for w in &wanted {
        let host = bakery_protocol::reference::registry_of(&w.image).to_string();
        if bakery_protocol::registry::is_insecure(&host, insecure) && !plain.contains(&host) {
            plain.push(host);
        }
    }
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain),
        connect_timeout: Some(TIMEOUT),
        read_timeout: Some(TIMEOUT),
        ..ClientConfig::default()
    });
    let checks = futures_util::stream::iter(wanted.into_iter().map(|w| {
        let client = &client;
        async move {
            let found = tokio::time::timeout(TIMEOUT * 3, platforms_of(client, &w.image, &w.auth))
                .await
                .map_err(|_| "timed out".to_string())
                .and_then(|r| r);
            (w, found)
        }
    }))
    .buffer_unordered(PARALLEL)
    .collect::<Vec<_>>()
    .await;
    let mut problems = Vec::new();
    for (w, found) in checks {
        let found = match found {
            Ok(found) => found,
            // The registry answered, and has no such image: the build
            // would fail at its FROM.
            Err(e) if is_missing(&e) => {
                for (file, line, service) in &w.at {
                    problems.push(Diagnostic {
                        location: Location::new(file, *line, 1),
                        message: format!(
                            "base image {} does not exist in its registry (service `{service}`): {e}",
                            w.image
                        ),
                        hint: Some("check the image's name and tag, and the build args that make them".into()),
                    });
                }
                continue;
            }
            Err(e) => {
                tracing::debug!("could not look up base image ({e}); the pushed image is checked after the build");
                continue;
            }
        };
        let want = ImagePlatform::parse(&w.platform);
        if found.serves(&want) {
            continue;
        }
        let have = found
            .platforms
            .first()
            .map_or_else(|| "another platform's".into(), ToString::to_string);
        for (file, line, service) in &w.at {
            problems.push(Diagnostic {
                location: Location::new(file, *line, 1),
                message: format!("{} (service `{service}`)", found.shortfall(&w.image, &want)),
                hint: Some(format!(
                    "the builder would use the {have} image and publish it as {}; use a base with a {} variant (an index), or do not build {} for this service",
                    w.platform, w.platform, w.platform
                )),
            });
        }
    }
    problems.sort_by_key(ToString::to_string);
    problems
}

/// Every (image, platform) the plan's builds pull, with where.
fn wanted(plan: &Plan) -> Vec<Wanted> {
    let mut by_key: BTreeMap<(String, String), Wanted> = BTreeMap::new();
    for (service, build) in plan.builds() {
        let path = build.dockerfile_path();
        let target = &build.spec.custom_platform;
        for pull in pulls(build) {
            let platform = pull.platform.clone().unwrap_or_else(|| target.clone());
            let host = bakery_protocol::reference::registry_of(&pull.image).to_string();
            let auth = build
                .spec
                .credentials
                .iter()
                .find(|c| c.registry == host)
                .map_or(RegistryAuth::Anonymous, |c| {
                    RegistryAuth::Basic(c.username.clone(), c.password.expose().to_string())
                });
            let entry = by_key
                .entry((pull.image.clone(), platform.clone()))
                .or_insert_with(|| Wanted {
                    image: pull.image.clone(),
                    platform,
                    at: Vec::new(),
                    auth,
                });
            let at = (path.clone(), pull.line, service.name.clone());
            if !entry.at.contains(&at) {
                entry.at.push(at);
            }
        }
    }
    by_key.into_values().collect()
}

/// What `build`'s Dockerfile pulls (nothing when it cannot be read or the
/// builder would refuse it: that is for the builder to report).
fn pulls(build: &ArchBuild) -> Vec<dockerfile::Pull> {
    let path = build.dockerfile_path();
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    let target = &build.spec.custom_platform;
    // The agent runs on the arch it builds: the build platform is the target.
    let mut args = dockerfile::platform_args(target, target);
    args.extend(build.spec.build_args.clone());
    let Ok(stages) = dockerfile::stages(&text, &args) else {
        return Vec::new();
    };
    dockerfile::pulls(&stages, build.spec.target.as_deref()).unwrap_or_default()
}

/// The images `build` pulls (its base images and `COPY --from` images), for
/// the logins it needs.
pub fn base_images(build: &ArchBuild) -> Vec<String> {
    pulls(build).into_iter().map(|p| p.image).collect()
}

/// Whether a lookup's error is the registry saying the image is not there
/// (`MANIFEST_UNKNOWN`, `NAME_UNKNOWN`), not that it cannot be read here
/// (no login: Docker Hub answers 401 for a missing repository too).
fn is_missing(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("manifest unknown")
        || e.contains("not known to registry")
        || e.contains("image manifest not found")
}
