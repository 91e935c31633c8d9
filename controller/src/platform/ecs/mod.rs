//! AWS ECS on Fargate: one task per agent, on the arch's own hardware.
//!
//! Task definitions are one family per (arch, CPU, memory), named and tagged
//! with this controller's owner id and a hash of the settings that shape them
//! (image, roles, log group, image credentials). A family whose latest
//! revision carries the current hash is reused; otherwise a revision is
//! registered. At start-up, with CLEANUP_ECS_TASK_DEFINITIONS=true, revisions
//! tagged with our owner id and an old hash are deregistered — revisions
//! without our owner tag are never touched.
//!
//! Nothing secret goes into a task definition or a RunTask override: the
//! agent gets its task id, the controller URL and a per-task token (which
//! reads the spec once), and fetches the rest from the controller.

mod fargate;
mod placement;
mod run;
mod secret;
mod settings;
mod sweep;
mod task_definition;
#[cfg(test)]
mod tests;
mod throttle;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ecs::operation::stop_task::StopTaskError;
use aws_sdk_ecs::Client;
use backon::{BackoffBuilder, ExponentialBuilder};

pub use fargate::FargateSize;
pub use placement::{CapacityProvider, Placement};
pub use settings::{agent_environment, EcsSettings, CONFIG_TAG, CONTAINER, OWNER_TAG};

use super::{AgentHandle, AgentPlatform, ExitSender, Launch, PlatformError};
use crate::config::Config;
use watch::{lock, mark_stopping, Watched, WatchedTask};

/// The ECS platform: each agent a Fargate task of its arch,
/// launched with RunTask and watched by polling DescribeTasks.
pub struct EcsPlatform {
    client: Client,
    settings: EcsSettings,
    /// The tasks being watched, by ARN.
    watched: Watched,
    /// RunTask's client-side rate.
    throttle: throttle::Throttle,
    /// Family → the task definition ARN in use, once found or registered.
    definitions: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl EcsPlatform {
    /// Connects, settles the agent image credentials, cleans up stale task
    /// definitions if asked, and starts watching tasks.
    pub async fn start(
        config: &Config,
        exits: ExitSender,
        keep: &std::collections::HashSet<String>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<EcsPlatform, PlatformError> {
        let mut settings = EcsSettings::from_config(config).map_err(PlatformError::Config)?;
        // Each attempt has 10 s to connect and 30 s to answer: an endpoint
        // that accepts connections and says nothing is a failed attempt
        // (retried), not a launch or a watch that hangs.
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(30))
            .operation_attempt_timeout(std::time::Duration::from_secs(60))
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            // Adaptive: on throttling the SDK also slows its own rate, so a
            // burst of launches backs off instead of retrying in lockstep.
            .retry_config(aws_config::retry::RetryConfig::adaptive().with_max_attempts(6))
            .timeout_config(timeouts);
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let shared = loader.load().await;
        // awslogs needs the region: the SDK's, when none is configured.
        if settings.region.is_none() {
            settings.region = shared.region().map(ToString::to_string);
        }
        let client = Client::new(&shared);
        settings.image_secret_arn = secret::image_secret(&shared, config, &settings).await?;
        let platform = EcsPlatform {
            client,
            settings,
            watched: Arc::default(),
            throttle: throttle::Throttle::default(),
            definitions: std::sync::Mutex::default(),
        };
        let orphans = sweep::stop_orphans(
            &platform.client,
            &platform.settings.cluster,
            &platform.settings.owner,
            keep,
        )
        .await;
        if orphans > 0 {
            tracing::info!(
                orphans,
                "stopped agent tasks that no build in the journal knows"
            );
        }
        if config.cleanup_ecs_task_definitions {
            let removed = platform.cleanup_stale().await?;
            tracing::info!(removed, "deregistered stale agent task definitions");
        }
        tokio::spawn(watch::watch(
            platform.client.clone(),
            platform.settings.clone(),
            Arc::clone(&platform.watched),
            exits,
            metrics,
        ));
        Ok(platform)
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &EcsSettings {
        &self.settings
    }
}

/// An SDK error as the chain of its messages. Never the `Debug` form: that
/// carries the raw HTTP response, which can echo request data back.
fn sdk_error<E: std::error::Error + 'static>(e: &E) -> String {
    bakery_protocol::error_chain::flatten(e)
}

#[async_trait::async_trait]
impl AgentPlatform for EcsPlatform {
    fn name(&self) -> &'static str {
        "ecs"
    }

    async fn launch(&self, launch: Launch) -> Result<AgentHandle, PlatformError> {
        let size =
            FargateSize::round_up(launch.cpu, launch.memory).map_err(PlatformError::Launch)?;
        if !size.is_exact(launch.cpu, launch.memory) {
            tracing::info!(
                task = %launch.task_id,
                "cpu {} / memory {} rounded up to the Fargate size {} units / {} MiB",
                launch.cpu, launch.memory, size.cpu_units, size.memory_mib
            );
        }
        let definition = self.task_definition(launch.arch, size).await?;
        // Fargate Spot runs X86_64 Linux tasks only (AWS's Fargate capacity
        // provider considerations): an arm64 task asks for on-demand.
        let spot = launch.spot && launch.arch == bakery_protocol::Arch::Amd64;
        if launch.spot && !spot {
            tracing::info!(task = %launch.task_id, "Fargate Spot has no ARM64 capacity: the arm64 agent runs on demand");
        }
        let placement = Placement::choose(&self.settings, spot);
        let arn = self
            .run_until_placed(&launch, &definition, placement)
            .await?;
        let url = launch
            .env
            .get(bakery_protocol::api::agent_env::CONTROLLER_URL)
            .map(String::as_str);
        lock(&self.watched).insert(arn.clone(), WatchedTask::new(&launch.task_id, url));
        Ok(AgentHandle::new(arn))
    }

    async fn adopt(&self, task_id: &str, handle: &AgentHandle) -> Result<(), PlatformError> {
        // The watcher describes it at its next poll, and reports it if it
        // stopped while the controller was down.
        lock(&self.watched).insert(handle.to_string(), WatchedTask::new(task_id, None));
        Ok(())
    }

    async fn stop(&self, handle: &AgentHandle) -> Result<(), PlatformError> {
        if !mark_stopping(&self.watched, handle.as_str()) {
            // Already seen stopped by the watcher: nothing to do.
            return Ok(());
        }
        // Watched until ECS says STOPPED: a StopTask that fails here is
        // sent again by the watcher.
        send_stop(&self.client, &self.settings.cluster, handle.as_str())
            .await
            .map_err(PlatformError::Stop)
    }

    fn diagnosis(&self, handle: &AgentHandle) -> Option<String> {
        lock(&self.watched)
            .get(handle.as_str())
            .and_then(|t| t.waiting().map(String::from))
    }
}

/// StopTask; a task ECS no longer has is stopped.
pub(super) async fn send_stop(client: &Client, cluster: &str, arn: &str) -> Result<(), String> {
    match client
        .stop_task()
        .cluster(cluster)
        .task(arn)
        .reason("stopped by bakery: the build ended")
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(task_is_gone) => Ok(()),
        Err(e) => {
            let message = sdk_error(&e);
            tracing::warn!("StopTask {arn}: {message}; sent again at the next poll");
            Err(format!("StopTask {arn}: {message}"))
        }
    }
}

/// Whether StopTask failed because ECS no longer has the task: its
/// `InvalidParameterException` with "The referenced task was not found."
/// (a stopped task ECS still has is stopped again without an error), or
/// the cluster itself is gone, with every task in it. The error's type is
/// checked first; the words are ECS's, pinned by a test.
fn task_is_gone(e: &StopTaskError) -> bool {
    match e {
        StopTaskError::ClusterNotFoundException(_) => true,
        StopTaskError::InvalidParameterException(p) => p
            .message()
            .is_some_and(|m| m.to_ascii_lowercase().contains("task was not found")),
        _ => false,
    }
}

impl EcsPlatform {
    /// RunTask, through the rate limit, until a task is placed: Spot's
    /// "no capacity" falls back to on demand, and on demand's is waited
    /// out with backoff (the supervisor bounds it by BUILD_TASK_TIMEOUT).
    /// Any other failure ends the launch.
    async fn run_until_placed(
        &self,
        launch: &Launch,
        definition: &str,
        mut placement: Placement,
    ) -> Result<String, PlatformError> {
        let mut pauses = ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(2))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            self.throttle.acquire().await;
            let e = match self.run_task(launch, definition, &placement).await {
                Ok(arn) => return Ok(arn),
                Err(e) if e.is_capacity_shortage() => e,
                Err(e) => return Err(PlatformError::Launch(e.to_string())),
            };
            if let Some(on_demand) = placement.on_demand() {
                tracing::warn!(task = %launch.task_id, "Fargate Spot has no capacity ({e}); running on demand");
                placement = on_demand;
                continue;
            }
            let pause = pauses.next().unwrap_or(Duration::from_secs(30));
            tracing::warn!(task = %launch.task_id, "Fargate has no capacity ({e}); trying again in {pause:?}");
            tokio::time::sleep(pause).await;
        }
    }
}
