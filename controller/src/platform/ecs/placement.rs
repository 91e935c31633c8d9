//! Where one RunTask call puts its task: a Fargate capacity provider (the
//! default; Spot when the build asks for it) or an explicit launch type.
//! Chosen apart from the SDK call so the choice is testable.

use super::settings::EcsSettings;

/// Fargate's two capacity providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacityProvider {
    /// On-demand Fargate.
    Fargate,
    /// Fargate Spot: cheaper, and may have no capacity (then the launch falls back to on-demand).
    FargateSpot,
}

impl CapacityProvider {
    /// The provider's name in the ECS API.
    pub fn as_str(self) -> &'static str {
        match self {
            CapacityProvider::Fargate => "FARGATE",
            CapacityProvider::FargateSpot => "FARGATE_SPOT",
        }
    }
}

/// How one RunTask call will place its task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The capacity provider to run with, when no launch type is set.
    pub capacity_provider: Option<CapacityProvider>,
    /// ECS_LAUNCH_TYPE, which replaces the capacity provider strategy.
    pub launch_type: Option<String>,
}

impl Placement {
    /// ECS_LAUNCH_TYPE when set; else Fargate Spot for
    /// a `spot` build, on-demand Fargate otherwise.
    pub fn choose(settings: &EcsSettings, spot: bool) -> Placement {
        match &settings.launch_type {
            Some(lt) => Placement {
                capacity_provider: None,
                launch_type: Some(lt.clone()),
            },
            None => Placement {
                capacity_provider: Some(if spot {
                    CapacityProvider::FargateSpot
                } else {
                    CapacityProvider::Fargate
                }),
                launch_type: None,
            },
        }
    }

    /// The on-demand placement to fall back to when Spot has no capacity.
    pub fn on_demand(&self) -> Option<Placement> {
        (self.capacity_provider == Some(CapacityProvider::FargateSpot)).then_some(Placement {
            capacity_provider: Some(CapacityProvider::Fargate),
            launch_type: None,
        })
    }
}

/// Whether a RunTask failure means "no capacity now", a state that passes
/// ("Capacity is unavailable at this time. Please try again later or in a
/// different availability zone", `RESOURCE:FARGATE_SPOT`), not a
/// configuration that never places a task ("No Container Instances were
/// found in your capacity provider").
pub fn is_capacity_shortage(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("capacity is unavailable")
        || m.contains("insufficient capacity")
        || m.contains("resource:fargate")
}
