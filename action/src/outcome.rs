//! What a run of `bakery build` produced, service by service: what every
//! report (the summary table, CI outputs, job summary, dotenv) is made of.

use bakery_protocol::api::{BuildState, BuildStatus};

/// One service's outcome.
#[derive(Debug, Clone)]
pub struct ServiceResult {
    /// The service's name, as in the plan.
    pub service: String,
    /// The build's last status; `None` when it was never submitted (an
    /// earlier service failed in a sequential run).
    pub status: Option<BuildStatus>,
}

impl ServiceResult {
    /// A submitted build that ended as `status`.
    pub fn ended(service: impl Into<String>, status: BuildStatus) -> ServiceResult {
        ServiceResult {
            service: service.into(),
            status: Some(status),
        }
    }

    /// A service not submitted.
    pub fn skipped(service: impl Into<String>) -> ServiceResult {
        ServiceResult {
            service: service.into(),
            status: None,
        }
    }

    /// Whether the build was submitted and succeeded.
    pub fn succeeded(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.state == BuildState::Succeeded)
    }
}

/// The submitted services' final statuses.
pub fn submitted(results: &[ServiceResult]) -> impl Iterator<Item = (&String, &BuildStatus)> {
    results
        .iter()
        .filter_map(|r| r.status.as_ref().map(|s| (&r.service, s)))
}
