//! RunTask: one Fargate task per agent, in the configured subnets, tagged
//! with this controller's owner id, the build and the arch; the only
//! override is the agent's environment, which holds no secret besides the
//! task's own token.

use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, CapacityProviderStrategyItem, ContainerOverride,
    EphemeralStorage, KeyValuePair, LaunchType, NetworkConfiguration, Tag, TaskOverride,
};

use super::placement::{is_capacity_shortage, Placement};
use super::settings::{agent_environment, CONTAINER, OWNER_TAG};
use super::{sdk_error, EcsPlatform};
use crate::platform::Launch;

/// Why RunTask started no task.
#[derive(Debug)]
pub(super) enum RunFailure {
    /// The request failed: refused, unreachable, or not made.
    Request(String),
    /// ECS answered, placing nothing: its `failures[]`, each reason and
    /// detail (a capacity shortage is one of these, not an error).
    NotPlaced(Vec<String>),
}

impl RunFailure {
    /// "No capacity now" ([`is_capacity_shortage`] on a failure ECS
    /// listed), which passes; anything else will not.
    pub(super) fn is_capacity_shortage(&self) -> bool {
        match self {
            RunFailure::NotPlaced(reasons) => reasons.iter().any(|r| is_capacity_shortage(r)),
            RunFailure::Request(_) => false,
        }
    }
}

impl std::fmt::Display for RunFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunFailure::Request(e) => f.write_str(e),
            RunFailure::NotPlaced(reasons) => {
                write!(f, "RunTask started nothing: {}", reasons.join("; "))
            }
        }
    }
}

impl EcsPlatform {
    /// Starts the agent task of `launch`; its ARN, or why nothing started.
    pub(super) async fn run_task(
        &self,
        launch: &Launch,
        definition: &str,
        placement: &Placement,
    ) -> Result<String, RunFailure> {
        let s = &self.settings;
        let mut request = self
            .client
            .run_task()
            .cluster(&s.cluster)
            .task_definition(definition)
            .count(1)
            .network_configuration(self.network_configuration().map_err(RunFailure::Request)?)
            .overrides(self.overrides(launch).map_err(RunFailure::Request)?)
            .started_by(
                format!("bakery/{}", launch.build_id)
                    .chars()
                    .take(36)
                    .collect::<String>(),
            );
        for (key, value) in [
            (OWNER_TAG, s.owner.as_str()),
            ("bakery:build", launch.build_id.as_str()),
            ("bakery:arch", launch.arch.as_str()),
        ] {
            request = request.tags(Tag::builder().key(key).value(value).build());
        }
        if let Some(provider) = placement.capacity_provider {
            let item = CapacityProviderStrategyItem::builder()
                .capacity_provider(provider.as_str())
                .weight(1)
                .build()
                .map_err(|e| RunFailure::Request(e.to_string()))?;
            request = request.capacity_provider_strategy(item);
        }
        if let Some(lt) = &placement.launch_type {
            request = request.launch_type(LaunchType::from(lt.as_str()));
        }
        let out = request
            .send()
            .await
            .map_err(|e| RunFailure::Request(format!("RunTask: {}", sdk_error(&e))))?;
        if let Some(task) = out.tasks().first().and_then(|t| t.task_arn()) {
            return Ok(task.to_string());
        }
        Err(RunFailure::NotPlaced(
            out.failures()
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
                .collect(),
        ))
    }

    fn network_configuration(&self) -> Result<NetworkConfiguration, String> {
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
        Ok(NetworkConfiguration::builder()
            .awsvpc_configuration(vpc)
            .build())
    }

    fn overrides(&self, launch: &Launch) -> Result<TaskOverride, String> {
        let mut env_override = ContainerOverride::builder().name(CONTAINER);
        for (k, v) in agent_environment(&self.settings, launch) {
            env_override =
                env_override.environment(KeyValuePair::builder().name(k).value(v).build());
        }
        let mut task = TaskOverride::builder().container_overrides(env_override.build());
        if let Some(gib) = fargate_disk(launch.disk)? {
            task = task.ephemeral_storage(EphemeralStorage::builder().size_in_gib(gib).build());
        }
        Ok(task.build())
    }
}

/// Fargate's ephemeral storage for `disk`: 21 to 200 GiB when asked (20 is
/// its default, so less than 21 is 21); more than 200 fails the launch.
pub(super) fn fargate_disk(
    disk: Option<bakery_protocol::resources::Disk>,
) -> Result<Option<i32>, String> {
    match disk.map(bakery_protocol::resources::Disk::gib) {
        None => Ok(None),
        Some(gib) if gib > 200 => Err(format!(
            "disk {gib}G is more than Fargate's 200 GiB of ephemeral storage"
        )),
        Some(gib) => Ok(Some(gib.max(21) as i32)),
    }
}
