use std::time::Duration;

use bakery_protocol::Arch;

use super::fargate::FargateSize;
use super::placement::{is_capacity_shortage, CapacityProvider, Placement};
use super::settings::EcsSettings;
use crate::config::Config;

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
    assert_eq!(spot.capacity_provider, Some(CapacityProvider::FargateSpot));
    assert_eq!(spot.launch_type, None);
    assert_eq!(
        spot.on_demand().unwrap().capacity_provider,
        Some(CapacityProvider::Fargate)
    );
    let on_demand = Placement::choose(&s, false);
    assert_eq!(on_demand.capacity_provider, Some(CapacityProvider::Fargate));
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
    assert!(is_capacity_shortage(
        "RunTask started nothing: Capacity is unavailable at this time. Please try again later or in a different availability zone"
    ));
    assert!(
        !is_capacity_shortage("No Container Instances were found in your capacity provider"),
        "a setup that never places a task fails at once"
    );
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
    let config = Config::from_vars([("DEFAULT_PLATFORM".to_string(), "ecs".to_string())]).unwrap();
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

#[test]
fn disk_maps_to_fargate_ephemeral_storage() {
    use super::run::fargate_disk;
    let gib = |g: u32| Some(bakery_protocol::resources::Disk::from_gib(g));
    assert_eq!(fargate_disk(None), Ok(None));
    assert_eq!(
        fargate_disk(gib(10)),
        Ok(Some(21)),
        "asked for, at least Fargate's 21"
    );
    assert_eq!(fargate_disk(gib(120)), Ok(Some(120)));
    let e = fargate_disk(gib(500)).unwrap_err();
    assert!(e.contains("200 GiB"), "{e}");
}

/// StopTask of a task ECS no longer has answers InvalidParameterException,
/// "The referenced task was not found." (ECS's words): that task is
/// stopped. The same words in another error type, or another
/// InvalidParameterException, are not.
#[test]
fn stop_task_reads_a_gone_task_by_its_error_type() {
    use aws_sdk_ecs::operation::stop_task::StopTaskError;
    use aws_sdk_ecs::types::error::{ClientException, InvalidParameterException};
    let gone = StopTaskError::InvalidParameterException(
        InvalidParameterException::builder()
            .message("The referenced task was not found.")
            .build(),
    );
    assert!(super::task_is_gone(&gone));
    let other = StopTaskError::InvalidParameterException(
        InvalidParameterException::builder()
            .message("Long arn format must be used for tagging operations")
            .build(),
    );
    assert!(!super::task_is_gone(&other));
    let client = StopTaskError::ClientException(
        ClientException::builder()
            .message("The referenced task was not found.")
            .build(),
    );
    assert!(!super::task_is_gone(&client));
    let no_cluster = StopTaskError::ClusterNotFoundException(
        aws_sdk_ecs::types::error::ClusterNotFoundException::builder()
            .message("Cluster not found.")
            .build(),
    );
    assert!(super::task_is_gone(&no_cluster));
}

/// A capacity shortage is read from the failures ECS lists, never from a
/// request error that happens to use the words.
#[test]
fn capacity_shortage_is_a_placement_failure_not_an_error_text() {
    use super::run::RunFailure;
    let spot = RunFailure::NotPlaced(vec![
        "Capacity is unavailable at this time. Please try again later or in a different availability zone".into(),
    ]);
    assert!(spot.is_capacity_shortage());
    assert!(spot
        .to_string()
        .starts_with("RunTask started nothing: Capacity"));
    let setup = RunFailure::NotPlaced(vec!["MISSING".into()]);
    assert!(!setup.is_capacity_shortage());
    let error = RunFailure::Request("RunTask: capacity is unavailable (a proxy's words)".into());
    assert!(!error.is_capacity_shortage());
}
