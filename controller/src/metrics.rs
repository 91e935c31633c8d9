//! Prometheus metrics, served at `GET /metrics` (text exposition format).
//!
//! What an operator needs to answer "is bakery healthy, and is it fast?":
//! how many builds are in each state, how long agents take to start (image
//! pull, scheduling), how long each arch takes to build, how much log flows,
//! and whether the platform's API (ECS, Kubernetes) is failing us. The names
//! are part of the interface: [`NAMES`] lists them, the README documents
//! them, and a test checks both.

use std::time::Duration;

use bakery_protocol::api::BuildState;
use bakery_protocol::Arch;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::platform::Operation;

/// Every metric this controller exposes, as it appears in the exposition.
pub const NAMES: [&str; 5] = [
    "bakery_builds",
    "bakery_agent_start_seconds",
    "bakery_build_duration_seconds",
    "bakery_log_lines_total",
    "bakery_platform_api_errors_total",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlatformArch {
    platform: String,
    arch: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ArchOutcome {
    arch: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlatformOperation {
    platform: String,
    operation: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Cheap to share; every method is lock-free apart from the first use of a
/// label set.
pub struct Metrics {
    registry: Registry,
    builds: Family<StateLabel, Gauge>,
    agent_start: Histograms<PlatformArch>,
    build_duration: Histograms<ArchOutcome>,
    log_lines: Counter,
    platform_errors: Family<PlatformOperation, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every series, registered and at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let builds = Family::<StateLabel, Gauge>::default();
        registry.register(
            "bakery_builds",
            "Builds the controller holds, by state (finished ones until BUILD_RETENTION ends)",
            builds.clone(),
        );
        // 0.1 s .. ~7 min: a local agent starts in milliseconds, a Fargate
        // task pulling a large image in minutes.
        let agent_start: Histograms<PlatformArch> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.1, 2.0, 13)));
        registry.register_with_unit(
            "bakery_agent_start",
            "Time from launching an agent to its check-in",
            Unit::Seconds,
            agent_start.clone(),
        );
        // 1 s .. ~2.3 h.
        let build_duration: Histograms<ArchOutcome> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 14)));
        registry.register_with_unit(
            "bakery_build_duration",
            "Time from launching an arch's agent to its end, by arch and outcome",
            Unit::Seconds,
            build_duration.clone(),
        );
        let log_lines = Counter::default();
        registry.register(
            "bakery_log_lines",
            "Log lines received from agents",
            log_lines.clone(),
        );
        let platform_errors = Family::<PlatformOperation, Counter>::default();
        registry.register(
            "bakery_platform_api_errors",
            "Failed calls to a platform's API (ECS, Kubernetes, local processes), by operation",
            platform_errors.clone(),
        );
        Metrics {
            registry,
            builds,
            agent_start,
            build_duration,
            log_lines,
            platform_errors,
        }
    }

    /// Records that an agent on `platform` for `arch`
    /// checked in `after` its launch (`bakery_agent_start`).
    pub fn agent_started(&self, platform: &str, arch: Arch, after: Duration) {
        self.agent_start
            .get_or_create(&PlatformArch {
                platform: platform.to_string(),
                arch: arch.as_str().to_string(),
            })
            .observe(after.as_secs_f64());
    }

    /// `outcome`: the task's final state (succeeded, failed, cancelled).
    pub fn arch_finished(&self, arch: Arch, outcome: &str, took: Duration) {
        self.build_duration
            .get_or_create(&ArchOutcome {
                arch: arch.as_str().to_string(),
                outcome: outcome.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts `n` log lines received from agents (`bakery_log_lines`).
    pub fn log_lines(&self, n: usize) {
        self.log_lines.inc_by(n as u64);
    }

    /// Creates the platform's error series at 0, so that they are exposed
    /// (and `rate()` works) before the first error.
    pub fn platform_operations(&self, platform: &str, operations: &[Operation]) {
        for operation in operations {
            let _ = self.platform_errors.get_or_create(&PlatformOperation {
                platform: platform.to_string(),
                operation: operation.as_str().to_string(),
            });
        }
    }

    /// Counts a failed call to `platform`'s API (`bakery_platform_api_errors`).
    pub fn platform_error(&self, platform: &str, operation: Operation) {
        self.platform_errors
            .get_or_create(&PlatformOperation {
                platform: platform.to_string(),
                operation: operation.as_str().to_string(),
            })
            .inc();
    }

    /// The exposition, with the build gauge set from `states` (the state of
    /// every build held now: a gauge read at scrape time cannot drift).
    pub fn render(&self, states: impl IntoIterator<Item = BuildState>) -> String {
        let mut counts = [0i64; 5];
        for s in states {
            counts[state_index(s)] += 1;
        }
        for s in ALL_STATES {
            self.builds
                .get_or_create(&StateLabel {
                    state: state_name(s).to_string(),
                })
                .set(counts[state_index(s)]);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

const ALL_STATES: [BuildState; 5] = [
    BuildState::Running,
    BuildState::Indexing,
    BuildState::Succeeded,
    BuildState::Failed,
    BuildState::Cancelled,
];

fn state_index(s: BuildState) -> usize {
    ALL_STATES.iter().position(|x| *x == s).unwrap_or(0)
}

fn state_name(s: BuildState) -> &'static str {
    match s {
        BuildState::Running => "running",
        BuildState::Indexing => "indexing",
        BuildState::Succeeded => "succeeded",
        BuildState::Failed => "failed",
        BuildState::Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_name_is_exposed_with_its_labels() {
        let m = Metrics::new();
        m.agent_started("local", Arch::Arm64, Duration::from_millis(40));
        m.arch_finished(Arch::Amd64, "succeeded", Duration::from_secs(3));
        m.log_lines(7);
        m.platform_error("ecs", Operation::DescribeTasks);
        let text = m.render([BuildState::Running, BuildState::Running, BuildState::Failed]);
        for name in NAMES {
            assert!(
                text.contains(&format!("# TYPE {}", name.trim_end_matches("_total"))),
                "{name} missing:\n{text}"
            );
        }
        assert!(
            text.contains("bakery_builds{state=\"running\"} 2"),
            "{text}"
        );
        assert!(text.contains("bakery_builds{state=\"failed\"} 1"), "{text}");
        assert!(
            text.contains("bakery_builds{state=\"succeeded\"} 0"),
            "{text}"
        );
        assert!(text.contains("bakery_log_lines_total 7"), "{text}");
        assert!(
            text.contains(
                "bakery_platform_api_errors_total{platform=\"ecs\",operation=\"DescribeTasks\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("bakery_agent_start_seconds_count{platform=\"local\",arch=\"arm64\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "bakery_build_duration_seconds_sum{arch=\"amd64\",outcome=\"succeeded\"} 3.0"
            ),
            "{text}"
        );
    }
}
