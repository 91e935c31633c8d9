//! GitLab CI (`GITLAB_CI=true`): collapsible log sections per arch, a
//! dotenv report (`BAKERY_DOTENV`, default `bakery.env`) with the digests,
//! and with `BAKERY_GITLAB_TOKEN` (and `CI_SERVER_URL`, `CI_PROJECT_ID`,
//! `CI_COMMIT_SHA`) one commit status per service × arch, `pending` →
//! `running` → `success`/`failed`/`canceled`, linked to the job
//! (`CI_JOB_URL`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

use bakery_plan::Plan;
use bakery_protocol::api::{BuildStatus, TaskState};
use futures_util::future::BoxFuture;
use gitlab::api::projects::repository::commits::{CommitStatusState, CreateCommitStatus};
use gitlab::api::AsyncQuery;

use super::CiSystem;
use crate::env::ClientEnv;
use crate::outcome::{submitted, ServiceResult};

/// GitLab CI as bakery reports to it.
pub struct GitLab {
    /// In a GitLab job: where the dotenv report goes.
    dotenv: Option<PathBuf>,
    statuses: Option<Statuses>,
}

impl GitLab {
    /// Reads the job's environment: a dotenv report when `GITLAB_CI=true`,
    /// and commit statuses when `with_statuses` and `BAKERY_GITLAB_TOKEN`
    /// allow (a failure to set them up is a warning).
    pub async fn from_env(env: &ClientEnv, with_statuses: bool) -> GitLab {
        let dotenv = (env.var("GITLAB_CI").as_deref() == Some("true")).then(|| {
            env.var_os("BAKERY_DOTENV")
                .map_or_else(|| "bakery.env".into(), PathBuf::from)
        });
        let mut statuses = None;
        if let Some(token) = env.var("BAKERY_GITLAB_TOKEN").filter(|_| with_statuses) {
            // Setting up the client asks the API: bounded like every call.
            match tokio::time::timeout(super::REPORT_TIMEOUT, Statuses::new(env, &token)).await {
                Ok(Ok(s)) => statuses = Some(s),
                Ok(Err(e)) => tracing::warn!("GitLab commit statuses disabled: {e}"),
                Err(_) => tracing::warn!(
                    "GitLab commit statuses disabled: CI_SERVER_URL did not answer within {}s",
                    super::REPORT_TIMEOUT.as_secs()
                ),
            }
        }
        GitLab { dotenv, statuses }
    }

    async fn update(&self, status: &BuildStatus) {
        if let Some(statuses) = &self.statuses {
            if let Err(e) = statuses.update(status).await {
                tracing::warn!("could not set the GitLab commit status: {e}");
            }
        }
    }
}

impl CiSystem for GitLab {
    fn has_blocks(&self) -> bool {
        self.dotenv.is_some()
    }

    fn switch_block(&self, previous: Option<(&str, usize)>, label: &str, n: usize) -> String {
        if self.dotenv.is_none() {
            return String::new();
        }
        let now = now_secs();
        let mut out = String::new();
        if let Some((prev, pn)) = previous {
            let _ = writeln!(
                out,
                "\x1b[0Ksection_end:{now}:{}\r\x1b[0K",
                section(prev, pn)
            );
        }
        let _ = writeln!(
            out,
            "\x1b[0Ksection_start:{now}:{}[collapsed=true]\r\x1b[0K{label}",
            section(label, n)
        );
        out
    }

    fn close_block(&self, open: Option<(&str, usize)>) -> String {
        match (&self.dotenv, open) {
            (Some(_), Some((label, n))) => format!(
                "\x1b[0Ksection_end:{}:{}\r\x1b[0K\n",
                now_secs(),
                section(label, n)
            ),
            _ => String::new(),
        }
    }

    fn write_reports(
        &self,
        _plan: &Plan,
        results: &[ServiceResult],
        _tails: &super::Tails,
    ) -> std::io::Result<()> {
        match &self.dotenv {
            Some(path) => std::fs::write(path, dotenv_report(results)),
            None => Ok(()),
        }
    }

    /// Every arch shows `pending` first, even when its agent has already
    /// checked in by the time the client first reads the build: GitLab
    /// users read the pipeline as queued → running → result.
    fn started<'a>(&'a self, status: &'a BuildStatus) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut pending = status.clone();
            for task in &mut pending.tasks {
                task.state = TaskState::Starting;
                task.digest = None;
                task.error = None;
            }
            self.update(&pending).await;
            self.update(status).await;
        })
    }

    fn updated<'a>(&'a self, status: &'a BuildStatus) -> BoxFuture<'a, ()> {
        Box::pin(self.update(status))
    }

    fn finished<'a>(
        &'a self,
        _plan: &'a Plan,
        status: &'a BuildStatus,
        _tails: &'a super::Tails,
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.update(status))
    }
}

fn now_secs() -> u64 {
    bakery_protocol::api::now_ms() / 1000
}

/// GitLab section names allow `[A-Za-z0-9_.-]`; each run of lines gets its own.
fn section(label: &str, n: usize) -> String {
    let clean: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("bakery_{clean}_{n}")
}

/// `BAKERY_DIGEST` and `BAKERY_IMAGE` (the first service's index), then
/// `BAKERY_<SERVICE>_DIGEST`, `_IMAGE`, and per arch `_<ARCH>_DIGEST`.
pub fn dotenv_report(results: &[ServiceResult]) -> String {
    // Plan::resolve refused services whose keys collide.
    let key = bakery_plan::output_key;
    let mut out = String::new();
    // The first service's index as well, for a job that builds one image
    // (build-push-action's single `digest`).
    if let Some((dest, d)) =
        submitted(results).find_map(|(_, s)| s.destination.as_ref().zip(s.index_digest.as_ref()))
    {
        let _ = writeln!(out, "BAKERY_DIGEST={d}");
        let _ = writeln!(out, "BAKERY_IMAGE={dest}@{d}");
    }
    for (service, status) in submitted(results) {
        let k = key(service);
        if let (Some(dest), Some(d)) = (&status.destination, &status.index_digest) {
            let _ = writeln!(out, "BAKERY_{k}_DIGEST={d}");
            let _ = writeln!(out, "BAKERY_{k}_IMAGE={dest}@{d}");
        }
        for t in &status.tasks {
            if let Some(d) = &t.digest {
                let _ = writeln!(out, "BAKERY_{k}_{}_DIGEST={d}", key(t.arch.as_str()));
            }
        }
    }
    out
}

/// Commit statuses through GitLab's API.
struct Statuses {
    client: gitlab::AsyncGitlab,
    project: String,
    sha: String,
    reference: Option<String>,
    /// The pipeline the statuses belong to, so GitLab shows them on it.
    pipeline: Option<u64>,
    job_url: Option<String>,
    /// `BAKERY_CHECK_NAME`: matrix jobs' statuses apart.
    label: Option<String>,
    /// (service, arch) → last state sent.
    sent: Mutex<HashMap<(String, String), CommitStatusState>>,
}

impl Statuses {
    async fn new(env: &ClientEnv, token: &str) -> Result<Statuses, String> {
        let var = |k: &str| env.var(k);
        let server = var("CI_SERVER_URL").ok_or("CI_SERVER_URL is not set")?;
        let project = var("CI_PROJECT_ID").ok_or("CI_PROJECT_ID is not set")?;
        let sha = var("CI_COMMIT_SHA").ok_or("CI_COMMIT_SHA is not set")?;
        let (insecure, host) = match server.split_once("://") {
            Some(("http", host)) => (true, host.trim_end_matches('/').to_string()),
            Some((_, host)) => (false, host.trim_end_matches('/').to_string()),
            None => (false, server.clone()),
        };
        let mut builder = gitlab::GitlabBuilder::new(host, token);
        if insecure {
            builder.insecure();
        }
        let client = builder.build_async().await.map_err(|e| e.to_string())?;
        Ok(Statuses {
            client,
            project,
            sha,
            // In a merge request pipeline the MR's branch, which its page
            // shows statuses for.
            reference: var("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME")
                .or_else(|| var("CI_COMMIT_REF_NAME")),
            pipeline: var("CI_PIPELINE_ID").and_then(|p| p.parse().ok()),
            job_url: var("CI_JOB_URL"),
            label: var("BAKERY_CHECK_NAME"),
            sent: Mutex::default(),
        })
    }

    async fn update(&self, status: &BuildStatus) -> Result<(), String> {
        for task in &status.tasks {
            let state = match task.state {
                TaskState::Queued | TaskState::Starting => CommitStatusState::Pending,
                TaskState::Running => CommitStatusState::Running,
                TaskState::Succeeded => CommitStatusState::Success,
                TaskState::Failed => CommitStatusState::Failed,
                TaskState::Cancelled => CommitStatusState::Canceled,
            };
            let key = (status.service.clone(), task.arch.to_string());
            if self.sent.lock().expect("lock").get(&key) == Some(&state) {
                continue;
            }
            let name = match &self.label {
                Some(n) => format!("bakery/{}/{}/{}", status.service, n.trim(), task.arch),
                None => format!("bakery/{}/{}", status.service, task.arch),
            };
            let description: String = match (&task.digest, &task.error) {
                (Some(d), _) => format!("pushed {d}"),
                (None, Some(e)) => e.clone(),
                _ => format!("{} build {:?}", task.arch, task.state).to_lowercase(),
            }
            .chars()
            .take(255)
            .collect();
            let mut builder = CreateCommitStatus::builder();
            builder
                .project(self.project.as_str())
                .commit(self.sha.as_str())
                .state(state)
                .name(name.as_str())
                .description(description.as_str());
            if let Some(url) = &self.job_url {
                builder.target_url(url.as_str());
            }
            if let Some(r) = &self.reference {
                builder.ref_(r.as_str());
            }
            if let Some(id) = self.pipeline {
                builder.pipeline_id(id);
            }
            let endpoint = builder.build().map_err(|e| e.to_string())?;
            gitlab::api::ignore(endpoint)
                .query_async(&self.client)
                .await
                .map_err(|e| e.to_string())?;
            self.sent.lock().expect("lock").insert(key, state);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitlab_section_names_are_valid() {
        assert_eq!(section("api-amd64", 2), "bakery_api-amd64_2");
        assert_eq!(section("my app/x", 0), "bakery_my_app_x_0");
    }
}
