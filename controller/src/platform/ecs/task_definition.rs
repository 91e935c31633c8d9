//! Agent task definitions: one family per (arch, CPU, memory), reused while
//! its latest revision carries this controller's owner tag and the current
//! settings hash, registered anew otherwise; stale revisions of ours are
//! deregistered at start-up when asked.

use aws_sdk_ecs::types::{
    Compatibility, ContainerDefinition, CpuArchitecture, LinuxParameters, LogConfiguration,
    LogDriver, NetworkMode, OsFamily, RepositoryCredentials, RuntimePlatform, Tag,
    TaskDefinitionFamilyStatus, TaskDefinitionField, TaskDefinitionStatus,
};
use bakery_protocol::Arch;

use super::fargate::FargateSize;
use super::settings::{CONFIG_TAG, CONTAINER, OWNER_TAG};
use super::{sdk_error, EcsPlatform};
use crate::platform::PlatformError;

impl EcsPlatform {
    /// The task definition for `arch` and `size`: the one this process
    /// registered or found before (the settings, and so the hash, do not
    /// change while it runs), else the latest revision of the family when it
    /// is ours and current, else a new registration. A Describe that fails
    /// (throttled, say) fails the launch: registering then would add a
    /// revision at every throttled call.
    pub async fn task_definition(
        &self,
        arch: Arch,
        size: FargateSize,
    ) -> Result<String, PlatformError> {
        let s = &self.settings;
        let family = s.family(arch, size);
        if let Some(arn) = super::watch::lock(&self.definitions).get(&family) {
            return Ok(arn.clone());
        }
        let hash = s.config_hash();
        let arn = match self.current_revision(&family, &hash).await? {
            Some(arn) => arn,
            None => self.register(&family, &hash, arch, size).await?,
        };
        super::watch::lock(&self.definitions).insert(family, arn.clone());
        Ok(arn)
    }

    /// Registers a revision of `family` for `arch` and `size`, tagged with
    /// our owner and `hash`.
    async fn register(
        &self,
        family: &str,
        hash: &str,
        arch: Arch,
        size: FargateSize,
    ) -> Result<String, PlatformError> {
        let s = &self.settings;
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
            .family(family)
            .requires_compatibilities(Compatibility::Fargate)
            .network_mode(NetworkMode::Awsvpc)
            .cpu(size.cpu_units.to_string())
            .memory(size.memory_mib.to_string())
            .runtime_platform(platform)
            .container_definitions(self.container_definition(size)?)
            .tags(Tag::builder().key(OWNER_TAG).value(&s.owner).build())
            .tags(Tag::builder().key(CONFIG_TAG).value(hash).build());
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

    /// The family's latest revision, when it is active, ours and current;
    /// `None` also when the family does not exist (ECS answers a
    /// ClientException "Unable to describe task definition").
    async fn current_revision(
        &self,
        family: &str,
        hash: &str,
    ) -> Result<Option<String>, PlatformError> {
        let out = match self
            .client
            .describe_task_definition()
            .task_definition(family)
            .include(TaskDefinitionField::Tags)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_client_exception()) =>
            {
                return Ok(None)
            }
            Err(e) => {
                return Err(PlatformError::Launch(format!(
                    "describing the task definition {family}: {}",
                    sdk_error(&e)
                )))
            }
        };
        let current = tag(out.tags(), OWNER_TAG) == Some(self.settings.owner.as_str())
            && tag(out.tags(), CONFIG_TAG) == Some(hash);
        let Some(definition) = out.task_definition() else {
            return Ok(None);
        };
        let active = definition.status() == Some(&TaskDefinitionStatus::Active);
        Ok((current && active)
            .then(|| definition.task_definition_arn().map(String::from))
            .flatten())
    }

    /// The agent container: image (with its registry login when private),
    /// size, and the CloudWatch log group when one is configured.
    fn container_definition(
        &self,
        size: FargateSize,
    ) -> Result<ContainerDefinition, PlatformError> {
        let s = &self.settings;
        let mut container = ContainerDefinition::builder()
            .name(CONTAINER)
            .image(&s.image)
            .essential(true)
            .cpu(size.cpu_units as i32)
            .memory(size.memory_mib as i32)
            // An init as PID 1 (ECS's docker-init): it reaps what a build's
            // processes leave behind, and passes SIGTERM to the agent.
            .linux_parameters(
                LinuxParameters::builder()
                    .init_process_enabled(true)
                    .build(),
            );
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
        Ok(container.build())
    }

    /// Deregisters revisions owned by this controller whose settings hash is
    /// not the current one. Returns how many were deregistered.
    pub async fn cleanup_stale(&self) -> Result<usize, PlatformError> {
        let s = &self.settings;
        let prefix = format!("{}-agent-", s.owner);
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
            removed += self.cleanup_family(family).await.map_err(err)?;
        }
        Ok(removed)
    }

    /// Deregisters the stale revisions of one family of ours.
    async fn cleanup_family(&self, family: &str) -> Result<usize, String> {
        let s = &self.settings;
        let current = s.config_hash();
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
            .map_err(|e| sdk_error(&e))?;
        let mut removed = 0;
        for arn in arns {
            let out = self
                .client
                .describe_task_definition()
                .task_definition(&arn)
                .include(TaskDefinitionField::Tags)
                .send()
                .await
                .map_err(|e| sdk_error(&e))?;
            let ours = tag(out.tags(), OWNER_TAG) == Some(s.owner.as_str());
            let stale = tag(out.tags(), CONFIG_TAG) != Some(current.as_str());
            if ours && stale {
                self.client
                    .deregister_task_definition()
                    .task_definition(&arn)
                    .send()
                    .await
                    .map_err(|e| sdk_error(&e))?;
                tracing::info!(%arn, "deregistered stale task definition");
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn tag<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}
