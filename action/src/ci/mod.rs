//! Results where CI users look, behind one interface for both CI systems.
//!
//! A [`CiSystem`] does three things: it frames each arch's log lines as a
//! collapsible block, it writes the report files the CI system reads after
//! the step (outputs, job summary, dotenv), and it keeps the commit's status
//! in step with the build through the CI system's API. [`detect`] picks the
//! implementation from the environment:
//!
//! * [`github::GitHub`] in GitHub Actions (`GITHUB_ACTIONS=true`) or wherever
//!   `BAKERY_GITHUB_TOKEN` is set (check runs only);
//! * [`gitlab::GitLab`] in GitLab CI (`GITLAB_CI=true`) or wherever
//!   `BAKERY_GITLAB_TOKEN` is set (commit statuses only);
//! * [`Plain`] anywhere else: nothing extra is printed or written.
//!
//! Reporting never fails a build: an API error is a warning in the log.

pub mod github;
pub mod gitlab;

use crate::env::ClientEnv;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bakery_plan::Plan;
use bakery_protocol::api::BuildStatus;
use futures_util::future::BoxFuture;

use crate::outcome::ServiceResult;

/// Longest one report to the CI system's API may take: a blackholed API
/// (accepts connections, never answers) must not hold a build's end, nor a
/// cancelled job past the runner's grace period.
pub const REPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The CI system's API as the build loop uses it: each report bounded by
/// [`REPORT_TIMEOUT`], and none tried again once one has run out.
#[derive(Default)]
pub struct Reporting {
    gave_up: std::sync::atomic::AtomicBool,
}

impl Reporting {
    /// Runs `report` unless an earlier one ran out of time; a report that
    /// runs out now says so, once.
    pub async fn bounded(&self, report: impl std::future::Future<Output = ()>) {
        use std::sync::atomic::Ordering;
        if self.gave_up.load(Ordering::SeqCst) {
            return;
        }
        if tokio::time::timeout(REPORT_TIMEOUT, report).await.is_err()
            && !self.gave_up.swap(true, Ordering::SeqCst)
        {
            tracing::warn!(
                "the CI system's API did not answer within {}s: no more checks or statuses are sent for this run; the build goes on",
                REPORT_TIMEOUT.as_secs()
            );
        }
    }
}

/// The last log lines of each `<service>-<arch>`.
pub type Tails = BTreeMap<crate::task_label::TaskLabel, Vec<String>>;

/// What a CI system shows of a build. Every method has a do-nothing default,
/// so a system implements only what it has.
///
/// The async methods return boxed futures so the printer and the build loop
/// can hold an `Arc<dyn CiSystem>` without knowing which system runs them.
pub trait CiSystem: Send + Sync {
    /// What to print before a run of lines from `label` (the `n`th run), after
    /// the run `previous` (if any) ended.
    fn switch_block(&self, _previous: Option<(&str, usize)>, _label: &str, _n: usize) -> String {
        String::new()
    }

    /// Whether log lines go in collapsible blocks here.
    fn has_blocks(&self) -> bool {
        false
    }

    /// What closes the open block, if any.
    fn close_block(&self, _open: Option<(&str, usize)>) -> String {
        String::new()
    }

    /// Writes the report files for every service's result.
    fn write_reports(
        &self,
        _plan: &Plan,
        _results: &[ServiceResult],
        _tails: &Tails,
    ) -> std::io::Result<()> {
        Ok(())
    }

    /// A build was submitted and its agents are starting.
    fn started<'a>(&'a self, _status: &'a BuildStatus) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// A task or the build changed state.
    fn updated<'a>(&'a self, _status: &'a BuildStatus) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// The build ended with `status`.
    fn finished<'a>(
        &'a self,
        _plan: &'a Plan,
        _status: &'a BuildStatus,
        _tails: &'a Tails,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// No CI system: plain log lines, no files, no statuses.
pub struct Plain;

impl CiSystem for Plain {}

/// The CI system the environment describes. `with_statuses` is false for
/// commands that only read a build (`bakery logs`), which must not touch the
/// commit's checks.
pub async fn detect(env: &ClientEnv, with_statuses: bool) -> Arc<dyn CiSystem> {
    // The API clients (octocrab, gitlab) use rustls; one provider for both.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let is = |k: &str| env.var(k).as_deref() == Some("true");
    let token = |k: &str| with_statuses && env.var(k).is_some();
    if is("GITHUB_ACTIONS") || token("BAKERY_GITHUB_TOKEN") {
        Arc::new(github::GitHub::from_env(env, with_statuses))
    } else if is("GITLAB_CI") || token("BAKERY_GITLAB_TOKEN") {
        Arc::new(gitlab::GitLab::from_env(env, with_statuses).await)
    } else {
        Arc::new(Plain)
    }
}

/// What a service's check run (GitHub) or commit statuses (GitLab) are
/// called: `bakery: <service>`, and with `BAKERY_CHECK_NAME` (the action's
/// and component's `check-name`) ` (<name>)` after it, so that matrix jobs
/// building the same service report separately instead of overwriting
/// one another. `label` is `BAKERY_CHECK_NAME`.
pub(crate) fn check_name(service: &str, label: Option<&str>) -> String {
    match label {
        Some(name) => format!("bakery: {service} ({})", name.trim()),
        None => format!("bakery: {service}"),
    }
}

/// Appends `text` to a report file the CI system also writes to.
pub(crate) fn append(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(text.as_bytes())
}
