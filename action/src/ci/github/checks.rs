//! Check runs through GitHub's API (octocrab): one per service,
//! `in_progress` when its agents start, `completed` with a conclusion, the
//! summary table and the annotations at the end.

use std::collections::HashMap;
use std::sync::Mutex;

use bakery_protocol::api::{BuildState, BuildStatus};
use octocrab::models::CheckRunId;
use octocrab::params::checks::{
    CheckRunConclusion, CheckRunOutput, CheckRunOutputAnnotation, CheckRunOutputAnnotationLevel,
    CheckRunStatus,
};

use super::report::Annotation;
use crate::env::ClientEnv;

/// `BAKERY_GITHUB_TOKEN` with `GITHUB_REPOSITORY` and the commit
/// (`BAKERY_GITHUB_SHA`, else `GITHUB_SHA`).
pub(super) struct Checks {
    client: octocrab::Octocrab,
    owner: String,
    repo: String,
    sha: String,
    details_url: Option<String>,
    /// `BAKERY_CHECK_NAME`, see [`crate::ci::check_name`].
    label: Option<String>,
    /// Build id → check run.
    runs: Mutex<HashMap<String, CheckRunId>>,
}

impl Checks {
    pub(super) fn new(env: &ClientEnv, token: &str, repository: &str) -> Result<Checks, String> {
        let var = |k: &str| env.var(k);
        let (owner, repo) = repository
            .split_once('/')
            .ok_or_else(|| format!("GITHUB_REPOSITORY `{repository}` is not owner/repo"))?;
        let sha = var("BAKERY_GITHUB_SHA")
            .or_else(|| var("GITHUB_SHA"))
            .ok_or("neither BAKERY_GITHUB_SHA nor GITHUB_SHA is set")?;
        // Every call bounded (the build loop bounds each report to
        // REPORT_TIMEOUT as well, and gives up on the API after the first
        // that runs out): a blackholed API must not hang the job.
        let limit = super::super::REPORT_TIMEOUT * 2;
        let mut builder = octocrab::Octocrab::builder()
            .personal_token(token.to_string())
            .set_connect_timeout(Some(limit))
            .set_read_timeout(Some(limit))
            .set_write_timeout(Some(limit));
        if let Some(api) = var("GITHUB_API_URL") {
            builder = builder.base_uri(api).map_err(|e| e.to_string())?;
        }
        let details_url = match (var("GITHUB_SERVER_URL"), var("GITHUB_RUN_ID")) {
            (Some(server), Some(run)) => Some(format!("{server}/{repository}/actions/runs/{run}")),
            _ => None,
        };
        Ok(Checks {
            client: builder.build().map_err(|e| e.to_string())?,
            owner: owner.to_string(),
            repo: repo.to_string(),
            sha,
            details_url,
            label: var("BAKERY_CHECK_NAME"),
            runs: Mutex::default(),
        })
    }

    pub(super) async fn start(&self, status: &BuildStatus) -> Result<(), octocrab::Error> {
        let checks = self.client.checks(&self.owner, &self.repo);
        let mut request = checks
            .create_check_run(
                crate::ci::check_name(&status.service, self.label.as_deref()),
                &self.sha,
            )
            .status(CheckRunStatus::InProgress)
            .external_id(status.id.clone());
        if let Some(url) = &self.details_url {
            request = request.details_url(url.clone());
        }
        let run = request.send().await?;
        self.runs
            .lock()
            .expect("lock")
            .insert(status.id.clone(), run.id);
        Ok(())
    }

    pub(super) async fn complete(
        &self,
        status: &BuildStatus,
        summary: &str,
        annotations: &[Annotation],
    ) -> Result<(), octocrab::Error> {
        let Some(id) = self.runs.lock().expect("lock").get(&status.id).copied() else {
            return Ok(());
        };
        let conclusion = match status.state {
            BuildState::Succeeded => CheckRunConclusion::Success,
            BuildState::Cancelled => CheckRunConclusion::Cancelled,
            _ => CheckRunConclusion::Failure,
        };
        let title = match (&status.state, &status.destination, &status.index_digest) {
            (BuildState::Succeeded, Some(dest), Some(d)) => format!("pushed {dest}@{d}"),
            (BuildState::Succeeded, _, _) => "built".to_string(),
            _ => status
                .error
                .clone()
                .unwrap_or_else(|| "failed".into())
                .chars()
                .take(200)
                .collect(),
        };
        // GitHub takes at most 50 annotations per request.
        let annotations: Vec<CheckRunOutputAnnotation> = annotations
            .iter()
            .filter_map(|a| {
                Some(CheckRunOutputAnnotation {
                    path: a.path.clone()?,
                    start_line: a.line? as u32,
                    end_line: a.line? as u32,
                    start_column: None,
                    end_column: None,
                    annotation_level: CheckRunOutputAnnotationLevel::Failure,
                    message: a.message.clone(),
                    title: Some(a.title.clone()),
                    raw_details: None,
                })
            })
            .take(50)
            .collect();
        self.client
            .checks(&self.owner, &self.repo)
            .update_check_run(id)
            .status(CheckRunStatus::Completed)
            .conclusion(conclusion)
            .completed_at(chrono::Utc::now())
            .output(CheckRunOutput {
                title,
                summary: summary.chars().take(60_000).collect(),
                text: None,
                annotations,
                images: vec![],
            })
            .send()
            .await?;
        Ok(())
    }
}

/// An API error as a person can act on it: octocrab's own message is just
/// `GitHub`. The status, GitHub's message, and for the usual causes what to
/// change.
pub(super) fn explain(e: &octocrab::Error) -> String {
    let octocrab::Error::GitHub { source, .. } = e else {
        return e.to_string();
    };
    let status = source.status_code.as_u16();
    let hint = match status {
        403 => ": the token may not write checks; give the job `permissions: checks: write`, or set the action input `token: \"\"` to skip check runs",
        401 => ": the token is not valid (BAKERY_GITHUB_TOKEN, the action input `token`)",
        404 => ": the token cannot see this repository or commit (GITHUB_REPOSITORY, BAKERY_GITHUB_SHA)",
        422 => ": GitHub refused the check run's content",
        _ => "",
    };
    format!("GitHub answered HTTP {status}: {}{hint}", source.message)
}
