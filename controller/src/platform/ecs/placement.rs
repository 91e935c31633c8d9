//! Where one RunTask call puts its task: a Fargate capacity provider (the
//! default; Spot when the build asks for it) or an explicit launch type.
//! Chosen apart from the SDK call so the choice is testable.

use super::settings::EcsSettings;

/// Fargate's two capacity providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacityProvider {
    Fargate,
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
    pub capacity_provider: Option<CapacityProvider>,
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
