//! The ECS platform's settings, read once from the controller's
//! configuration, and what they derive: task definition families, the hash
//! that makes a revision stale, and the agent's environment.

use std::time::Duration;

use bakery_protocol::api::agent_env;
use bakery_protocol::registry::parse_list as list;
use bakery_protocol::Arch;
use sha2::{Digest, Sha256};

use super::fargate::FargateSize;
use crate::config::Config;
use crate::platform::Launch;

/// The container name in every agent task definition.
pub const CONTAINER: &str = "agent";
/// The tag naming the controller (BAKERY_OWNER) that owns a task definition or task.
pub const OWNER_TAG: &str = "bakery:owner";
/// The tag holding the [`EcsSettings::config_hash`] a task
/// definition was made with: a revision with another is stale.
pub const CONFIG_TAG: &str = "bakery:config";

/// What the ECS platform needs, checked once at start-up.
#[derive(Debug, Clone)]
pub struct EcsSettings {
    /// ECS_CLUSTER: the cluster the agent tasks run in.
    pub cluster: String,
    /// ECS_SUBNETS: the subnets of the agents' awsvpc network.
    pub subnets: Vec<String>,
    /// ECS_SECURITY_GROUPS: the security groups of the agents' network interfaces.
    pub security_groups: Vec<String>,
    /// ECS_EXEC_ROLE_ARN: the task execution role (image pull, logs).
    pub exec_role_arn: Option<String>,
    /// ECS_TASK_ROLE_ARN: the agents' own AWS identity; `None` gives them none.
    pub task_role_arn: Option<String>,
    /// AGENT_IMAGE: the agent container image.
    pub image: String,
    /// The Secrets Manager secret with the agent image's registry login
    /// (given, or stored at start-up); `None` for a public image.
    pub image_secret_arn: Option<String>,
    /// ECS_LOG_GROUP: the CloudWatch Logs group of the agents' own output; `None`: it is not kept.
    pub log_group: Option<String>,
    /// AWS_REGION, also the region of the agents' logs;
    /// `None` leaves it to the standard AWS chain.
    pub region: Option<String>,
    /// ECS_ASSIGN_PUBLIC_IP: give each agent a public IP (subnets without a NAT gateway).
    pub assign_public_ip: bool,
    /// ECS_LAUNCH_TYPE: run tasks with this launch type instead of a capacity provider strategy.
    pub launch_type: Option<String>,
    /// BAKERY_OWNER: names the task definition families and tags what this controller owns.
    pub owner: String,
    /// ECS_POLL_INTERVAL: how often the watched tasks are described.
    pub poll_interval: Duration,
    /// Extra non-secret agent environment (INSECURE_REGISTRIES).
    pub agent_env: Vec<(String, String)>,
}

/// ECS_LAUNCH_TYPE, checked at start-up rather than by the first RunTask:
/// agents run on Fargate, so FARGATE is the one launch type (EC2 and
/// EXTERNAL have no Fargate task sizes; FARGATE_SPOT is a capacity
/// provider, which the default strategy already uses).
fn launch_type(value: Option<&str>) -> Result<Option<String>, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("FARGATE") => Ok(Some("FARGATE".into())),
        Some(v) if v.eq_ignore_ascii_case("FARGATE_SPOT") => Err(format!(
            "ECS_LAUNCH_TYPE is `{v}`: FARGATE_SPOT is a capacity provider, not a launch type; unset ECS_LAUNCH_TYPE (bakery then uses FARGATE_SPOT through the cluster's capacity provider strategy for spot builds) or set it to FARGATE"
        )),
        Some(v) => Err(format!(
            "ECS_LAUNCH_TYPE is `{v}`: bakery's agents run on Fargate; set it to FARGATE (for a cluster without capacity providers) or unset it"
        )),
    }
}

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
        let launch_type = launch_type(c.ecs_launch_type.as_deref())?;
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
            launch_type,
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
            // What the code fixes in every revision changed (2: an init
            // process): controllers of an earlier version registered
            // revisions without it, which must not be taken for current.
            TASK_DEFINITION_SHAPE,
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

/// The version of the fixed parts of the agent task definition, in
/// [`EcsSettings::config_hash`]: bumped when they change.
const TASK_DEFINITION_SHAPE: &str = "shape 2";

/// The environment an agent task gets: never a secret besides its own token.
pub fn agent_environment(settings: &EcsSettings, launch: &Launch) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = launch
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.push((
        agent_env::BUILDER.into(),
        agent_env::BuilderKind::Kaniko.as_str().into(),
    ));
    env.extend(settings.agent_env.iter().cloned());
    env
}

#[cfg(test)]
mod launch_type_tests {
    use super::launch_type;

    #[test]
    fn only_fargate_is_a_launch_type() {
        assert_eq!(launch_type(None), Ok(None));
        assert_eq!(launch_type(Some("fargate")), Ok(Some("FARGATE".into())));
        let spot = launch_type(Some("FARGATE_SPOT")).unwrap_err();
        assert!(
            spot.contains("capacity provider, not a launch type"),
            "{spot}"
        );
        let ec2 = launch_type(Some("EC2")).unwrap_err();
        assert!(ec2.starts_with("ECS_LAUNCH_TYPE is `EC2`"), "{ec2}");
    }
}
