//! GitHub Actions (`GITHUB_ACTIONS=true`): each arch's log in `::group::`
//! blocks, `::error file=…,line=…::` annotations pointing at the Dockerfile
//! line a builder failed on, step outputs (`digest`, `images`, `metadata`)
//! in `$GITHUB_OUTPUT` and a job summary table in `$GITHUB_STEP_SUMMARY`.
//! With `BAKERY_GITHUB_TOKEN` (and `GITHUB_REPOSITORY`, `GITHUB_SHA` or
//! `BAKERY_GITHUB_SHA`) also one check run per service (see [`checks`]).

mod checks;
pub mod locate;
pub mod report;

use std::path::PathBuf;

use bakery_plan::Plan;
use bakery_protocol::api::BuildStatus;
use futures_util::future::BoxFuture;

use super::{append, CiSystem, Tails};
use crate::env::ClientEnv;
use crate::outcome::ServiceResult;
use checks::Checks;
pub use report::{annotations, github_outputs, markdown_summary};

/// GitHub Actions as bakery reports to it.
pub struct GitHub {
    /// In a workflow step: the files the runner reads after the step.
    files: Option<StepFiles>,
    checks: Option<Checks>,
    /// The checkout annotation paths are relative to.
    workspace: PathBuf,
}

/// What the runner hands a step.
struct StepFiles {
    output: Option<PathBuf>,
    summary: Option<PathBuf>,
}

impl GitHub {
    /// What the environment configures; check runs only when `with_checks`.
    pub fn from_env(env: &ClientEnv, with_checks: bool) -> GitHub {
        let files = (env.var("GITHUB_ACTIONS").as_deref() == Some("true")).then(|| StepFiles {
            output: env.var_os("GITHUB_OUTPUT").map(PathBuf::from),
            summary: env.var_os("GITHUB_STEP_SUMMARY").map(PathBuf::from),
        });
        let mut checks = None;
        if let (Some(token), Some(repository), true) = (
            env.var("BAKERY_GITHUB_TOKEN"),
            env.var("GITHUB_REPOSITORY"),
            with_checks,
        ) {
            match Checks::new(env, &token, &repository) {
                Ok(c) => checks = Some(c),
                Err(e) => tracing::warn!("GitHub check runs disabled: {e}"),
            }
        }
        GitHub {
            files,
            checks,
            workspace: workspace(env),
        }
    }
}

/// In a workflow step, prints `d` as an annotation at its place too.
pub fn annotate(env: &ClientEnv, d: &bakery_plan::Diagnostic, title: &str) {
    if env.var("GITHUB_ACTIONS").as_deref() == Some("true") {
        println!("{}", report::diagnostic_command(d, &workspace(env), title));
    }
}

/// `GITHUB_WORKSPACE`, else the working directory.
fn workspace(env: &ClientEnv) -> PathBuf {
    env.var_os("GITHUB_WORKSPACE")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default()
}

impl CiSystem for GitHub {
    fn has_blocks(&self) -> bool {
        self.files.is_some()
    }

    fn switch_block(&self, previous: Option<(&str, usize)>, label: &str, _n: usize) -> String {
        if self.files.is_none() {
            return String::new();
        }
        let end = if previous.is_some() {
            "::endgroup::\n"
        } else {
            ""
        };
        format!("{end}::group::{label}\n")
    }

    fn close_block(&self, open: Option<(&str, usize)>) -> String {
        match (&self.files, open) {
            (Some(_), Some(_)) => "::endgroup::\n".into(),
            _ => String::new(),
        }
    }

    fn write_reports(
        &self,
        plan: &Plan,
        results: &[ServiceResult],
        tails: &Tails,
    ) -> std::io::Result<()> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        for a in annotations(plan, results, &self.workspace, tails) {
            println!("{}", a.workflow_command());
        }
        if let Some(path) = &files.output {
            append(path, &github_outputs(plan, results))?;
        }
        if let Some(path) = &files.summary {
            append(path, &markdown_summary(results, tails))?;
        }
        Ok(())
    }

    fn started<'a>(&'a self, status: &'a BuildStatus) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(checks) = &self.checks {
                if let Err(e) = checks.start(status).await {
                    tracing::warn!(
                        "could not create the GitHub check run: {}",
                        checks::explain(&e)
                    );
                }
            }
        })
    }

    fn finished<'a>(
        &'a self,
        plan: &'a Plan,
        status: &'a BuildStatus,
        tails: &'a Tails,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(checks) = &self.checks else {
                return;
            };
            let one = [ServiceResult::ended(status.service.clone(), status.clone())];
            let summary = markdown_summary(&one, tails);
            let annotations = annotations(plan, &one, &self.workspace, tails);
            if let Err(e) = checks.complete(status, &summary, &annotations).await {
                tracing::warn!(
                    "could not complete the GitHub check run: {}",
                    checks::explain(&e)
                );
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The step's files and the workspace come from the environment
    /// given; outside a workflow step (GITHUB_ACTIONS unset) there are none.
    #[test]
    fn a_step_is_read_from_the_environment_given() {
        let env = ClientEnv::from_vars([
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_OUTPUT", "/runner/out"),
            ("GITHUB_STEP_SUMMARY", "/runner/summary"),
            ("GITHUB_WORKSPACE", "/runner/work/app"),
        ]);
        let github = GitHub::from_env(&env, false);
        assert_eq!(github.workspace, PathBuf::from("/runner/work/app"));
        let files = github.files.unwrap();
        assert_eq!(files.output, Some(PathBuf::from("/runner/out")));
        assert_eq!(files.summary, Some(PathBuf::from("/runner/summary")));
        let outside = ClientEnv::from_vars([("GITHUB_OUTPUT", "/runner/out")]);
        assert!(GitHub::from_env(&outside, false).files.is_none());
    }
}
