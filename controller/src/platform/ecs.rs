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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::platform::fargate::FargateSize;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, CapacityProviderStrategyItem, Compatibility,
    ContainerDefinition, ContainerOverride, CpuArchitecture, KeyValuePair, LaunchType,
    LogConfiguration, LogDriver, NetworkConfiguration, NetworkMode, OsFamily,
    RepositoryCredentials, RuntimePlatform, Tag, TaskDefinitionFamilyStatus, TaskDefinitionField,
    TaskDefinitionStatus, TaskOverride,
};
use aws_sdk_ecs::Client;
use bakery_protocol::Arch;
use sha2::{Digest, Sha256};

use super::{AgentPlatform, ExitSender, Exited, Launch, PlatformError};
use crate::config::Config;

/// The container name in every agent task definition.
pub const CONTAINER: &str = "agent";
pub const OWNER_TAG: &str = "bakery:owner";
pub const CONFIG_TAG: &str = "bakery:config";

/// What the ECS platform needs, checked once at start-up.
#[derive(Debug, Clone)]
pub struct EcsSettings {
    pub cluster: String,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub exec_role_arn: Option<String>,
    pub task_role_arn: Option<String>,
    pub image: String,
    pub image_secret_arn: Option<String>,
    pub log_group: Option<String>,
    pub region: Option<String>,
    pub assign_public_ip: bool,
    pub launch_type: Option<String>,
    pub owner: String,
    pub poll_interval: Duration,
    /// Extra non-secret agent environment (INSECURE_REGISTRIES).
    pub agent_env: Vec<(String, String)>,
}

use bakery_protocol::registry::parse_list as list;

impl EcsSettings {
    /// Reads the ECS variables, naming every missing one at once.
    pub fn from_config(c: &Config) -> Result<EcsSettings, String> {
        let mut missing = Vec::new();
        if c.ecs_cluster.is_none() {
            missing.push("ECS_CLUSTER");
        }
        if list(&c.ecs_subnets).is_empty() {
            missing.push("ECS_SUBNETS");
        }
        if list(&c.ecs_security_groups).is_empty() {
            missing.push("ECS_SECURITY_GROUPS");
        }
        if c.agent_image.is_none() {
            missing.push("AGENT_IMAGE");
        }
        if c.ecs_exec_role_arn.is_none() {
            missing.push("ECS_EXEC_ROLE_ARN");
        }
        if c.controller_url.is_none() {
            missing.push("CONTROLLER_URL (the URL agents on Fargate reach the controller at)");
        }
        if !missing.is_empty() {
            return Err(format!("DEFAULT_PLATFORM=ecs needs {}", missing.join(", ")));
        }
        if !c
            .bakery_owner
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        {
            return Err(format!(
                "BAKERY_OWNER `{}` may only hold letters, digits, - and _",
                c.bakery_owner
            ));
        }
        let mut agent_env = Vec::new();
        if !c.insecure_registries.is_empty() {
            agent_env.push((
                "INSECURE_REGISTRIES".to_string(),
                c.insecure_registries.clone(),
            ));
        }
        Ok(EcsSettings {
            cluster: c.ecs_cluster.clone().unwrap_or_default(),
            subnets: list(&c.ecs_subnets),
            security_groups: list(&c.ecs_security_groups),
            exec_role_arn: c.ecs_exec_role_arn.clone(),
            task_role_arn: c.ecs_task_role_arn.clone(),
            image: c.agent_image.clone().unwrap_or_default(),
            image_secret_arn: c.agent_image_secret_arn.clone(),
            log_group: c.ecs_log_group.clone(),
            region: c.aws_region.clone(),
            assign_public_ip: c.ecs_assign_public_ip,
            launch_type: c.ecs_launch_type.clone(),
            owner: c.bakery_owner.clone(),
            poll_interval: c.ecs_poll_interval,
            agent_env,
        })
    }

    /// The family of task definitions for one arch and size.
    pub fn family(&self, arch: Arch, size: FargateSize) -> String {
        format!(
            "{}-agent-{arch}-{}cpu-{}mib",
            self.owner, size.cpu_units, size.memory_mib
        )
    }

    /// A hash of everything that shapes a task definition besides arch and
    /// size: a change makes existing revisions stale.
    pub fn config_hash(&self) -> String {
        let parts = [
            self.image.as_str(),
            self.exec_role_arn.as_deref().unwrap_or(""),
            self.task_role_arn.as_deref().unwrap_or(""),
            self.log_group.as_deref().unwrap_or(""),
            self.image_secret_arn.as_deref().unwrap_or(""),
            self.region.as_deref().unwrap_or(""),
        ];
        hex::encode(&Sha256::digest(parts.join("\n").as_bytes())[..8])
    }
}

/// How one RunTask call will place its task: built apart from the SDK call
/// so the choice (Spot or not, launch type or providers) is testable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub capacity_provider: Option<&'static str>,
    pub launch_type: Option<String>,
}

impl Placement {
    pub fn choose(settings: &EcsSettings, spot: bool) -> Placement {
        match &settings.launch_type {
            Some(lt) => Placement {
                capacity_provider: None,
                launch_type: Some(lt.clone()),
            },
            None => Placement {
                capacity_provider: Some(if spot { "FARGATE_SPOT" } else { "FARGATE" }),
                launch_type: None,
            },
        }
    }

    /// The on-demand placement to fall back to when Spot has no capacity.
    pub fn on_demand(&self) -> Option<Placement> {
        (self.capacity_provider == Some("FARGATE_SPOT")).then_some(Placement {
            capacity_provider: Some("FARGATE"),
            launch_type: None,
        })
    }
}

/// The environment an agent task gets: never a secret besides its own token.
pub fn agent_environment(settings: &EcsSettings, launch: &Launch) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = launch
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.push((
        bakery_protocol::api::agent_env::BUILDER.into(),
        "kaniko".into(),
    ));
    env.extend(settings.agent_env.iter().cloned());
    env
}

pub struct EcsPlatform {
    client: Client,
    settings: EcsSettings,
    /// Task ARN → task id, for the tasks being watched.
    watched: Arc<Mutex<HashMap<String, String>>>,
}

impl EcsPlatform {
    /// Connects, settles the agent image credentials, cleans up stale task
    /// definitions if asked, and starts watching tasks.
    pub async fn start(
        config: &Config,
        exits: ExitSender,
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
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(6))
            .timeout_config(timeouts);
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let client = Client::new(&shared);
        settings.image_secret_arn = image_secret(&shared, config, &settings).await?;
        let platform = EcsPlatform {
            client,
            settings,
            watched: Arc::default(),
        };
        if config.cleanup_ecs_task_definitions {
            let removed = platform.cleanup_stale().await?;
            tracing::info!(removed, "deregistered stale agent task definitions");
        }
        tokio::spawn(watch(
            platform.client.clone(),
            platform.settings.clone(),
            Arc::clone(&platform.watched),
            exits,
            metrics,
        ));
        Ok(platform)
    }

    pub fn settings(&self) -> &EcsSettings {
        &self.settings
    }

    /// The task definition for `arch` and `size`: the latest revision of the
    /// family when it is ours and current, else a new registration.
    pub async fn task_definition(
        &self,
        arch: Arch,
        size: FargateSize,
    ) -> Result<String, PlatformError> {
        let s = &self.settings;
        let family = s.family(arch, size);
        let hash = s.config_hash();
        if let Ok(out) = self
            .client
            .describe_task_definition()
            .task_definition(&family)
            .include(TaskDefinitionField::Tags)
            .send()
            .await
        {
            let current = tag(out.tags(), OWNER_TAG) == Some(s.owner.as_str())
                && tag(out.tags(), CONFIG_TAG) == Some(hash.as_str());
            let active = out.task_definition().and_then(|t| t.status())
                == Some(&TaskDefinitionStatus::Active);
            if let (true, true, Some(arn)) = (
                current,
                active,
                out.task_definition().and_then(|t| t.task_definition_arn()),
            ) {
                return Ok(arn.to_string());
            }
        }
        let mut container = ContainerDefinition::builder()
            .name(CONTAINER)
            .image(&s.image)
            .essential(true)
            .cpu(size.cpu_units as i32)
            .memory(size.memory_mib as i32);
        if let Some(arn) = &s.image_secret_arn {
            let creds = RepositoryCredentials::builder()
                .credentials_parameter(arn)
                .build()
                .map_err(|e| PlatformError::Launch(e.to_string()))?;
            container = container.repository_credentials(creds);
        }
        if let Some(group) = &s.log_group {
            let mut logs = LogConfiguration::builder()
                .log_driver(LogDriver::Awslogs)
                .options("awslogs-group", group)
                .options("awslogs-stream-prefix", "bakery");
            if let Some(region) = &s.region {
                logs = logs.options("awslogs-region", region);
            }
            container = container.log_configuration(
                logs.build()
                    .map_err(|e| PlatformError::Launch(e.to_string()))?,
            );
        }
        let platform = RuntimePlatform::builder()
            .cpu_architecture(match arch {
                Arch::Amd64 => CpuArchitecture::X8664,
                Arch::Arm64 => CpuArchitecture::Arm64,
            })
            .operating_system_family(OsFamily::Linux)
            .build();
        let mut request = self
            .client
            .register_task_definition()
            .family(&family)
            .requires_compatibilities(Compatibility::Fargate)
            .network_mode(NetworkMode::Awsvpc)
            .cpu(size.cpu_units.to_string())
            .memory(size.memory_mib.to_string())
            .runtime_platform(platform)
            .container_definitions(container.build())
            .tags(Tag::builder().key(OWNER_TAG).value(&s.owner).build())
            .tags(Tag::builder().key(CONFIG_TAG).value(&hash).build());
        if let Some(role) = &s.exec_role_arn {
            request = request.execution_role_arn(role);
        }
        if let Some(role) = &s.task_role_arn {
            request = request.task_role_arn(role);
        }
        let out = request.send().await.map_err(|e| {
            PlatformError::Launch(format!("registering {family}: {}", sdk_error(&e)))
        })?;
        let arn = out
            .task_definition()
            .and_then(|t| t.task_definition_arn())
            .ok_or_else(|| {
                PlatformError::Launch(format!("registering {family}: no ARN in the answer"))
            })?;
        tracing::info!(%family, %arn, "registered agent task definition");
        Ok(arn.to_string())
    }

    /// Deregisters revisions owned by this controller whose settings hash is
    /// not the current one. Returns how many were deregistered.
    pub async fn cleanup_stale(&self) -> Result<usize, PlatformError> {
        let s = &self.settings;
        let prefix = format!("{}-agent-", s.owner);
        let current = s.config_hash();
        let err = |e: String| PlatformError::Config(format!("cleaning up task definitions: {e}"));
        let families = self
            .client
            .list_task_definition_families()
            .family_prefix(&prefix)
            .status(TaskDefinitionFamilyStatus::Active)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<String>, _>>()
            .await
            .map_err(|e| err(sdk_error(&e)))?;
        let mut removed = 0;
        for family in families.iter().filter(|f| f.starts_with(&prefix)) {
            let arns = self
                .client
                .list_task_definitions()
                .family_prefix(family)
                .status(TaskDefinitionStatus::Active)
                .into_paginator()
                .items()
                .send()
                .collect::<Result<Vec<String>, _>>()
                .await
                .map_err(|e| err(sdk_error(&e)))?;
            for arn in arns {
                let out = self
                    .client
                    .describe_task_definition()
                    .task_definition(&arn)
                    .include(TaskDefinitionField::Tags)
                    .send()
                    .await
                    .map_err(|e| err(sdk_error(&e)))?;
                let ours = tag(out.tags(), OWNER_TAG) == Some(s.owner.as_str());
                let stale = tag(out.tags(), CONFIG_TAG) != Some(current.as_str());
                if ours && stale {
                    self.client
                        .deregister_task_definition()
                        .task_definition(&arn)
                        .send()
                        .await
                        .map_err(|e| err(sdk_error(&e)))?;
                    tracing::info!(%arn, "deregistered stale task definition");
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    async fn run_task(
        &self,
        launch: &Launch,
        definition: &str,
        placement: &Placement,
    ) -> Result<String, String> {
        let s = &self.settings;
        let vpc = AwsVpcConfiguration::builder()
            .set_subnets(Some(s.subnets.clone()))
            .set_security_groups(Some(s.security_groups.clone()))
            .assign_public_ip(if s.assign_public_ip {
                AssignPublicIp::Enabled
            } else {
                AssignPublicIp::Disabled
            })
            .build()
            .map_err(|e| e.to_string())?;
        let mut env_override = ContainerOverride::builder().name(CONTAINER);
        for (k, v) in agent_environment(s, launch) {
            env_override =
                env_override.environment(KeyValuePair::builder().name(k).value(v).build());
        }
        let mut request = self
            .client
            .run_task()
            .cluster(&s.cluster)
            .task_definition(definition)
            .count(1)
            .network_configuration(
                NetworkConfiguration::builder()
                    .awsvpc_configuration(vpc)
                    .build(),
            )
            .overrides(
                TaskOverride::builder()
                    .container_overrides(env_override.build())
                    .build(),
            )
            .started_by(
                format!("bakery/{}", launch.build_id)
                    .chars()
                    .take(36)
                    .collect::<String>(),
            )
            .tags(Tag::builder().key(OWNER_TAG).value(&s.owner).build())
            .tags(
                Tag::builder()
                    .key("bakery:build")
                    .value(&launch.build_id)
                    .build(),
            )
            .tags(
                Tag::builder()
                    .key("bakery:arch")
                    .value(launch.arch.as_str())
                    .build(),
            );
        if let Some(provider) = placement.capacity_provider {
            let item = CapacityProviderStrategyItem::builder()
                .capacity_provider(provider)
                .weight(1)
                .build()
                .map_err(|e| e.to_string())?;
            request = request.capacity_provider_strategy(item);
        }
        if let Some(lt) = &placement.launch_type {
            request = request.launch_type(LaunchType::from(lt.as_str()));
        }
        let out = request
            .send()
            .await
            .map_err(|e| format!("RunTask: {}", sdk_error(&e)))?;
        if let Some(task) = out.tasks().first().and_then(|t| t.task_arn()) {
            return Ok(task.to_string());
        }
        let reasons: Vec<String> = out
            .failures()
            .iter()
            .map(|f| {
                format!(
                    "{} {}",
                    f.reason().unwrap_or("unknown"),
                    f.detail().unwrap_or("")
                )
                .trim()
                .to_string()
            })
            .collect();
        Err(format!("RunTask started nothing: {}", reasons.join("; ")))
    }
}

fn tag<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// An SDK error as the chain of its messages. Never the `Debug` form: that
/// carries the raw HTTP response, which can echo request data back.
fn sdk_error<E: std::error::Error + 'static>(e: &E) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Whether a RunTask failure means "no Spot capacity now".
fn is_capacity_shortage(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("capacity") || m.contains("spot")
}

#[async_trait::async_trait]
impl AgentPlatform for EcsPlatform {
    fn name(&self) -> &'static str {
        "ecs"
    }

    async fn launch(&self, launch: Launch) -> Result<String, PlatformError> {
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
        let placement = Placement::choose(&self.settings, launch.spot);
        let arn = match self.run_task(&launch, &definition, &placement).await {
            Ok(arn) => arn,
            Err(e) => match placement.on_demand().filter(|_| is_capacity_shortage(&e)) {
                Some(on_demand) => {
                    tracing::warn!(task = %launch.task_id, "no Fargate Spot capacity ({e}); running on demand");
                    self.run_task(&launch, &definition, &on_demand)
                        .await
                        .map_err(PlatformError::Launch)?
                }
                None => return Err(PlatformError::Launch(e)),
            },
        };
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(arn.clone(), launch.task_id.clone());
        Ok(arn)
    }

    async fn adopt(&self, task_id: &str, handle: &str) -> Result<(), PlatformError> {
        // The watcher describes it at its next poll, and reports it if it
        // stopped while the controller was down.
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(handle.to_string(), task_id.to_string());
        Ok(())
    }

    async fn stop(&self, handle: &str) -> Result<(), PlatformError> {
        let watched = self
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(handle);
        if watched.is_none() {
            // Already seen stopped by the watcher: nothing to do.
            return Ok(());
        }
        match self
            .client
            .stop_task()
            .cluster(&self.settings.cluster)
            .task(handle)
            .reason("stopped by bakery: the build ended")
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let message = sdk_error(&e);
                if message.contains("not found") || message.contains("STOPPED") {
                    Ok(())
                } else {
                    Err(PlatformError::Stop(format!("StopTask {handle}: {message}")))
                }
            }
        }
    }
}

/// Describes watched tasks in batches of 100 every poll interval (doubling
/// on errors, up to a minute) and reports those that stopped.
async fn watch(
    client: Client,
    settings: EcsSettings,
    watched: Arc<Mutex<HashMap<String, String>>>,
    exits: ExitSender,
    metrics: Arc<crate::metrics::Metrics>,
) {
    metrics.platform_operations("ecs", &["DescribeTasks"]);
    let mut delay = settings.poll_interval;
    loop {
        tokio::time::sleep(delay).await;
        let arns: Vec<String> = watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut failed = false;
        for chunk in arns.chunks(100) {
            let out = match client
                .describe_tasks()
                .cluster(&settings.cluster)
                .set_tasks(Some(chunk.to_vec()))
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    tracing::warn!("DescribeTasks failed, backing off: {}", sdk_error(&e));
                    metrics.platform_error("ecs", "DescribeTasks");
                    failed = true;
                    break;
                }
            };
            let mut stopped: Vec<(String, String, bool)> = Vec::new();
            for task in out.tasks() {
                if task.last_status() != Some("STOPPED") {
                    continue;
                }
                let arn = task.task_arn().unwrap_or_default().to_string();
                let container = task
                    .containers()
                    .iter()
                    .find(|c| c.name() == Some(CONTAINER));
                let code = container.and_then(|c| c.exit_code());
                let mut reason = format!(
                    "ECS task stopped: {}",
                    task.stopped_reason().unwrap_or("no reason given")
                );
                if let Some(code) = code {
                    reason.push_str(&format!("; agent exit code {code}"));
                }
                if let Some(r) = container.and_then(|c| c.reason()) {
                    reason.push_str(&format!(" ({r})"));
                }
                stopped.push((arn, reason, code == Some(0)));
            }
            for failure in out.failures() {
                if failure.reason() == Some("MISSING") {
                    let arn = failure.arn().unwrap_or_default().to_string();
                    stopped.push((arn, "ECS task no longer exists".into(), false));
                }
            }
            for (arn, reason, success) in stopped {
                let task_id = watched
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&arn);
                if let Some(task_id) = task_id {
                    let _ = exits.send(Exited {
                        task_id,
                        reason,
                        success,
                    });
                }
            }
        }
        delay = if failed {
            (delay * 2).min(Duration::from_secs(60))
        } else {
            settings.poll_interval
        };
    }
}

/// The Secrets Manager secret holding the agent image's registry login:
/// AGENT_IMAGE_SECRET_ARN if given (checked to exist), else one created from
/// AGENT_IMAGE_USERNAME/AGENT_IMAGE_PASSWORD (or found from an earlier start).
async fn image_secret(
    shared: &aws_config::SdkConfig,
    config: &Config,
    settings: &EcsSettings,
) -> Result<Option<String>, PlatformError> {
    let sm = aws_sdk_secretsmanager::Client::new(shared);
    let fail = |e: String| PlatformError::Config(format!("agent image credentials: {e}"));
    if let Some(arn) = &config.agent_image_secret_arn {
        let out = sm
            .describe_secret()
            .secret_id(arn)
            .send()
            .await
            .map_err(|e| fail(sdk_error(&e)))?;
        return Ok(out.arn().map(String::from).or_else(|| Some(arn.clone())));
    }
    let (Some(user), Some(password)) = (&config.agent_image_username, &config.agent_image_password)
    else {
        return Ok(None);
    };
    let name = format!("{}/agent-image-registry", settings.owner);
    if let Ok(out) = sm.describe_secret().secret_id(&name).send().await {
        return Ok(out.arn().map(String::from));
    }
    let value = serde_json::json!({"username": user, "password": password.expose()}).to_string();
    let out = sm
        .create_secret()
        .name(&name)
        .description("Registry login for the bakery agent image (created by bakery-controller)")
        .secret_string(value)
        .send()
        .await
        .map_err(|e| fail(sdk_error(&e)))?;
    Ok(out.arn().map(String::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(launch_type: Option<&str>) -> EcsSettings {
        EcsSettings {
            cluster: "c".into(),
            subnets: vec!["subnet-1".into()],
            security_groups: vec!["sg-1".into()],
            exec_role_arn: Some("arn:exec".into()),
            task_role_arn: None,
            image: "img".into(),
            image_secret_arn: None,
            log_group: None,
            region: None,
            assign_public_ip: false,
            launch_type: launch_type.map(String::from),
            owner: "bakery".into(),
            poll_interval: Duration::from_secs(5),
            agent_env: vec![],
        }
    }

    #[test]
    fn spot_uses_the_spot_provider_and_falls_back_to_on_demand() {
        let s = settings(None);
        let spot = Placement::choose(&s, true);
        assert_eq!(spot.capacity_provider, Some("FARGATE_SPOT"));
        assert_eq!(spot.launch_type, None);
        assert_eq!(spot.on_demand().unwrap().capacity_provider, Some("FARGATE"));
        let on_demand = Placement::choose(&s, false);
        assert_eq!(on_demand.capacity_provider, Some("FARGATE"));
        assert!(on_demand.on_demand().is_none(), "nothing below on-demand");
        let lt = Placement::choose(&settings(Some("FARGATE")), true);
        assert_eq!(
            (lt.capacity_provider, lt.launch_type.as_deref()),
            (None, Some("FARGATE"))
        );
        assert!(is_capacity_shortage(
            "RESOURCE:FARGATE_SPOT capacity is unavailable at this time"
        ));
        assert!(!is_capacity_shortage("AccessDeniedException"));
    }

    #[test]
    fn families_and_hashes() {
        let s = settings(None);
        let size = FargateSize {
            cpu_units: 1024,
            memory_mib: 2048,
        };
        assert_eq!(
            s.family(Arch::Arm64, size),
            "bakery-agent-arm64-1024cpu-2048mib"
        );
        let mut other = s.clone();
        other.image = "img:2".into();
        assert_ne!(s.config_hash(), other.config_hash());
        assert_eq!(s.config_hash(), settings(None).config_hash());
    }

    #[test]
    fn missing_variables_are_named_together() {
        let config =
            Config::from_vars([("DEFAULT_PLATFORM".to_string(), "ecs".to_string())]).unwrap();
        let e = EcsSettings::from_config(&config).unwrap_err();
        for var in [
            "ECS_CLUSTER",
            "ECS_SUBNETS",
            "ECS_SECURITY_GROUPS",
            "AGENT_IMAGE",
            "ECS_EXEC_ROLE_ARN",
            "CONTROLLER_URL",
        ] {
            assert!(e.contains(var), "{e}");
        }
    }
}
