//! Start-up of the agent platforms: which ones the configuration names,
//! each one started (ECS and Kubernetes behind cargo features), the trust
//! the local platform can offer, and the agent slots per platform.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bakery_protocol::Platform;

use crate::platform::local::LocalPlatform;
use crate::platform::{self, AgentPlatform, Operation};
use crate::{config, metrics, App, Config, StartError};

/// Starts one agent platform. ECS and Kubernetes are cargo features (on in
/// `bakery-controller`, off in the controller the CI client embeds): a
/// build without one says so rather than failing later.
// Only the ECS and Kubernetes platforms await anything at start.
#[cfg_attr(
    not(any(feature = "ecs", feature = "k8s")),
    allow(clippy::unused_async)
)]
async fn start_platform(
    p: Platform,
    config: &Config,
    exits: platform::ExitSender,
    keep: &std::collections::HashSet<String>,
    metrics: &Arc<metrics::Metrics>,
) -> Result<Box<dyn AgentPlatform>, StartError> {
    // Without a cloud feature these serve no platform.
    let _ = (keep, metrics);
    Ok(match p {
        Platform::Local => Box::new(
            LocalPlatform::new(
                LocalPlatform::resolve_agent(config.agent_binary.as_deref())?,
                config.data_dir.join("work"),
                config.insecure_registries.clone(),
                exits,
            )
            .confined(
                platform::local::Sandbox::detect(config.local_agent_isolation, &config.data_dir)
                    .await
                    .map_err(config::ConfigError::new)?,
            ),
        ),
        #[cfg(feature = "ecs")]
        Platform::Ecs => Box::new(
            platform::ecs::EcsPlatform::start(config, exits, keep, Arc::clone(metrics)).await?,
        ),
        #[cfg(feature = "k8s")]
        Platform::K8s => Box::new(
            platform::k8s::K8sPlatform::start(config, exits, keep, Arc::clone(metrics)).await?,
        ),
        #[cfg(not(feature = "ecs"))]
        Platform::Ecs => return Err(not_built(p, "ecs")),
        #[cfg(not(feature = "k8s"))]
        Platform::K8s => return Err(not_built(p, "k8s")),
    })
}

#[cfg(not(all(feature = "ecs", feature = "k8s")))]
fn not_built(p: Platform, feature: &str) -> StartError {
    config::ConfigError::new(format!(
        "the {p} platform is not in this build of the controller (cargo feature `{feature}`); run the bakery-controller release binary or image"
    ))
    .into()
}

/// Without namespaces the local platform runs every build's pre- and
/// post-script and builder on this host, as the controller's user, next to
/// DATA_DIR: one build can read another's secrets there. With several CI
/// identities (OIDC) that is refused unless LOCAL_PLATFORM_SHARED=true says
/// it is understood.
pub(crate) fn check_local_trust(
    config: &Config,
    platforms: &HashMap<Platform, Box<dyn AgentPlatform>>,
    many_identities: bool,
) -> Result<(), StartError> {
    match platforms.get(&Platform::Local) {
        None => return Ok(()),
        Some(local) if local.isolates_builds() => {
            tracing::info!(
                "local platform: each agent runs in its own user, mount and PID namespaces"
            );
            return Ok(());
        }
        Some(_) => {}
    }
    if many_identities && !config.local_platform_shared {
        return Err(config::ConfigError::new(
            "the local platform cannot isolate agents on this host (the line above says why), so its builds run as the controller's user and builds of different CI identities (OIDC_ISSUERS) could read each other's registry logins, secrets and agent tokens: run the controller as root with a subordinate id range for root (SECURITY.md), run agents on ECS or Kubernetes (DEFAULT_PLATFORM=ecs or k8s), or set LOCAL_PLATFORM_SHARED=true to accept one trust domain",
        )
        .into());
    }
    tracing::info!("local platform: builds run on this host as the controller's user and share one trust domain (see SECURITY.md)");
    Ok(())
}

/// Every platform the configuration names: the default, and ECS and
/// Kubernetes when their cluster or namespace is set.
pub(crate) async fn start_platforms(
    config: &Config,
    exits: platform::ExitSender,
    keep: &HashSet<String>,
    metrics: &Arc<metrics::Metrics>,
) -> Result<HashMap<Platform, Box<dyn AgentPlatform>>, StartError> {
    let mut wanted = vec![config.default_platform];
    if config.ecs_cluster.is_some() && !wanted.contains(&Platform::Ecs) {
        wanted.push(Platform::Ecs);
    }
    if config.k8s_namespace.is_some() && !wanted.contains(&Platform::K8s) {
        wanted.push(Platform::K8s);
    }
    let mut platforms: HashMap<Platform, Box<dyn AgentPlatform>> = HashMap::new();
    for p in wanted {
        let platform = start_platform(p, config, exits.clone(), keep, metrics).await?;
        metrics.platform_operations(
            platform.name(),
            &[Operation::Launch, Operation::Stop, Operation::Adopt],
        );
        platforms.insert(p, platform);
    }
    Ok(platforms)
}

/// One slot per agent that may run at once on each platform
/// ([`Config::agent_slots`]).
pub(crate) fn agent_slots(
    config: &Config,
    platforms: &HashMap<Platform, Box<dyn AgentPlatform>>,
) -> HashMap<Platform, Arc<tokio::sync::Semaphore>> {
    platforms
        .keys()
        .map(|p| {
            (
                *p,
                Arc::new(tokio::sync::Semaphore::new(config.agent_slots(*p))),
            )
        })
        .collect()
}

/// The journal DATABASE_URL names, or the embedded one in DATA_DIR.
// Without PostgreSQL nothing here waits, but the signature is the same.
#[cfg_attr(not(feature = "postgres"), allow(clippy::unused_async))]
pub(crate) async fn open_journal(config: &Config) -> Result<crate::journal::Journal, StartError> {
    if config.state_key.is_some() && config.database_url.is_none() {
        return Err(StartError::Journal(crate::journal::JournalError::Secrets(
            "STATE_KEY seals build secrets into the database DATABASE_URL names, and it is \
             not set: set DATABASE_URL, or unset STATE_KEY (the embedded journal keeps \
             secrets in DATA_DIR/secrets)"
                .into(),
        )));
    }
    if config.standby && config.database_url.is_none() {
        return Err(StartError::Journal(crate::journal::JournalError::Postgres(
            "STANDBY waits for the controller that holds the state database DATABASE_URL \
             names, and it is not set: set DATABASE_URL, or unset STANDBY"
                .into(),
        )));
    }
    let Some(url) = &config.database_url else {
        return Ok(crate::journal::Journal::open(
            &config.data_dir.join("builds.redb"),
        )?);
    };
    #[cfg(feature = "postgres")]
    {
        let _ = url;
        let target = postgres_target(config)?;
        let journal = crate::journal::Journal::connect(target, &config.data_dir).await?;
        // One of several controllers on the database: stop acting when cut
        // off from it, before a standby takes it over.
        journal.set_fence(config.standby);
        Ok(journal)
    }
    #[cfg(not(feature = "postgres"))]
    {
        let _ = url;
        Err(StartError::Journal(crate::journal::JournalError::Postgres(
            "DATABASE_URL is set, but this controller was built without PostgreSQL \
             (the `postgres` feature of bakery-controller): run bakery-controller, or unset it"
                .into(),
        )))
    }
}

/// Puts the journal's builds back in the registry and resumes the unfinished
/// ones. A build on a platform this controller no longer runs fails, named.
pub(crate) fn resume_builds(app: &Arc<App>, restored: Vec<crate::journal::Restored>) {
    let mut resumed = 0;
    for saved in restored {
        let build = Arc::new(crate::state::Build::restore(
            saved,
            Some(app.journal.signal()),
            app.config.build_log_limit,
        ));
        app.builds.insert(Arc::clone(&build));
        let status = build.status();
        if status.state.is_terminal() {
            continue;
        }
        if !build.read().acknowledged() {
            // Saved, but its creation was answered 503 (or not at all): the
            // client was not told it exists, so it must not run.
            build.update(|b| b.withdraw("the controller stopped before it confirmed this build to the client, so it was never started; submit it again"));
            continue;
        }
        if let Some(missing) = status
            .tasks
            .iter()
            .find(|t| !app.platforms.contains_key(&t.platform))
        {
            let error = format!(
                "the controller restarted without the {} platform this build's {} agent runs on",
                missing.platform, missing.arch
            );
            build.update(|b| b.fail(error));
            continue;
        }
        resumed += 1;
        app.spawn_supervisor(crate::supervisor::resume(Arc::clone(app), build));
    }
    if resumed > 0 {
        tracing::info!(
            resumed,
            "resuming the builds an earlier run left unfinished"
        );
    }
}

/// How to reach the state database DATABASE_URL names.
#[cfg(feature = "postgres")]
fn postgres_target(config: &Config) -> Result<crate::journal::postgres::Target, StartError> {
    use crate::journal::{sealing::StateKey, JournalError};
    let url = config.database_url.as_ref().ok_or_else(|| {
        StartError::Journal(JournalError::Postgres("DATABASE_URL is not set".into()))
    })?;
    let state_key = match &config.state_key {
        Some(text) => Some(StateKey::from_base64(text.expose()).map_err(JournalError::Secrets)?),
        None => None,
    };
    Ok(crate::journal::postgres::Target {
        url: url.expose().to_string(),
        ca_file: config.database_ca_file.clone(),
        // A standby waits for as long as it takes.
        owner_wait: (!config.standby).then_some(crate::journal::postgres::OWNER_WAIT),
        state_key,
        replica_url: config.replica_url.clone(),
        takeover_wait: crate::journal::postgres::FENCE_WAIT,
    })
}

/// What a standby forwards requests with: to the URL the active controller
/// published (REPLICA_URL), read from the database.
// Without PostgreSQL there is never one, but the signature is the same.
#[cfg_attr(not(feature = "postgres"), allow(clippy::unnecessary_wraps))]
pub(crate) fn forwarder(
    config: &Config,
) -> Result<Option<Arc<crate::forward::Forwarder>>, StartError> {
    if !config.standby || config.database_url.is_none() {
        return Ok(None);
    }
    #[cfg(feature = "postgres")]
    {
        let active = crate::journal::postgres::ActiveUrl::watch(&postgres_target(config)?)?;
        let forwarder = crate::forward::Forwarder::new(move || active.current()).map_err(|e| {
            StartError::Journal(crate::journal::JournalError::Postgres(e.to_string()))
        })?;
        Ok(Some(Arc::new(forwarder)))
    }
    #[cfg(not(feature = "postgres"))]
    Ok(None)
}
