//! Build status on the commit, through the CI system's API.
//!
//! * GitHub (`BAKERY_GITHUB_TOKEN`, `GITHUB_REPOSITORY`, `GITHUB_SHA` or
//!   `BAKERY_GITHUB_SHA`): one check run per service, `in_progress` when its
//!   agents start, `completed` with a conclusion, the summary table and
//!   annotations at the failing Dockerfile lines at the end (octocrab).
//! * GitLab (`BAKERY_GITLAB_TOKEN`, `CI_SERVER_URL`, `CI_PROJECT_ID`,
//!   `CI_COMMIT_SHA`): one commit status per service × arch, `pending` →
//!   `running` → `success`/`failed`/`canceled`, linked to the job (`CI_JOB_URL`).
//!
//! Reporting never fails a build: an API error is a warning in the log.

use std::collections::HashMap;
use std::sync::Mutex;

use bakery_protocol::api::{BuildState, BuildStatus, TaskState};
use gitlab::api::projects::repository::commits::{CommitStatusState, CreateCommitStatus};
use gitlab::api::AsyncQuery;
use octocrab::models::CheckRunId;
use octocrab::params::checks::{
    CheckRunConclusion, CheckRunOutput, CheckRunOutputAnnotation, CheckRunOutputAnnotationLevel,
    CheckRunStatus,
};

use crate::ci::Annotation;

fn var(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

struct GitHub {
    client: octocrab::Octocrab,
    owner: String,
    repo: String,
    sha: String,
    details_url: Option<String>,
    /// Build id → check run.
    runs: Mutex<HashMap<String, CheckRunId>>,
}

struct GitLab {
    client: gitlab::AsyncGitlab,
    project: String,
    sha: String,
    reference: Option<String>,
    job_url: Option<String>,
    /// (service, arch) → last state sent.
    sent: Mutex<HashMap<(String, String), CommitStatusState>>,
}

#[derive(Default)]
pub struct StatusReporter {
    github: Option<GitHub>,
    gitlab: Option<GitLab>,
}

impl StatusReporter {
    /// Reporters for what the environment configures; none otherwise.
    pub async fn from_env() -> StatusReporter {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut reporter = StatusReporter::default();
        if let (Some(token), Some(repository)) =
            (var("BAKERY_GITHUB_TOKEN"), var("GITHUB_REPOSITORY"))
        {
            match GitHub::new(&token, &repository) {
                Ok(gh) => reporter.github = Some(gh),
                Err(e) => tracing::warn!("GitHub check runs disabled: {e}"),
            }
        }
        if let Some(token) = var("BAKERY_GITLAB_TOKEN") {
            match GitLab::new(&token).await {
                Ok(gl) => reporter.gitlab = Some(gl),
                Err(e) => tracing::warn!("GitLab commit statuses disabled: {e}"),
            }
        }
        reporter
    }

    /// A build was submitted and its agents are starting.
    pub async fn started(&self, status: &BuildStatus) {
        if let Some(gh) = &self.github {
            if let Err(e) = gh.start(status).await {
                tracing::warn!("could not create the GitHub check run: {e}");
            }
        }
        // Every arch shows `pending` first, even when its agent has already
        // checked in by the time the client first reads the build: GitLab
        // users read the pipeline as queued → running → result.
        let mut pending = status.clone();
        for task in &mut pending.tasks {
            task.state = TaskState::Starting;
            task.digest = None;
            task.error = None;
        }
        self.gitlab_update(&pending).await;
        self.gitlab_update(status).await;
    }

    /// A task or the build changed state.
    pub async fn updated(&self, status: &BuildStatus) {
        self.gitlab_update(status).await;
    }

    /// The build ended.
    pub async fn finished(&self, status: &BuildStatus, summary: &str, annotations: &[Annotation]) {
        if let Some(gh) = &self.github {
            if let Err(e) = gh.complete(status, summary, annotations).await {
                tracing::warn!("could not complete the GitHub check run: {e}");
            }
        }
        self.gitlab_update(status).await;
    }

    async fn gitlab_update(&self, status: &BuildStatus) {
        if let Some(gl) = &self.gitlab {
            if let Err(e) = gl.update(status).await {
                tracing::warn!("could not set the GitLab commit status: {e}");
            }
        }
    }
}

impl GitHub {
    fn new(token: &str, repository: &str) -> Result<GitHub, String> {
        let (owner, repo) = repository
            .split_once('/')
            .ok_or_else(|| format!("GITHUB_REPOSITORY `{repository}` is not owner/repo"))?;
        let sha = var("BAKERY_GITHUB_SHA")
            .or_else(|| var("GITHUB_SHA"))
            .ok_or("neither BAKERY_GITHUB_SHA nor GITHUB_SHA is set")?;
        let mut builder = octocrab::Octocrab::builder().personal_token(token.to_string());
        if let Some(api) = var("GITHUB_API_URL") {
            builder = builder.base_uri(api).map_err(|e| e.to_string())?;
        }
        let details_url = match (var("GITHUB_SERVER_URL"), var("GITHUB_RUN_ID")) {
            (Some(server), Some(run)) => Some(format!("{server}/{repository}/actions/runs/{run}")),
            _ => None,
        };
        Ok(GitHub {
            client: builder.build().map_err(|e| e.to_string())?,
            owner: owner.to_string(),
            repo: repo.to_string(),
            sha,
            details_url,
            runs: Mutex::default(),
        })
    }

    async fn start(&self, status: &BuildStatus) -> Result<(), octocrab::Error> {
        let checks = self.client.checks(&self.owner, &self.repo);
        let mut request = checks
            .create_check_run(format!("bakery: {}", status.service), &self.sha)
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

    async fn complete(
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

impl GitLab {
    async fn new(token: &str) -> Result<GitLab, String> {
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
        Ok(GitLab {
            client,
            project,
            sha,
            reference: var("CI_COMMIT_REF_NAME"),
            job_url: var("CI_JOB_URL"),
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
            let name = format!("bakery/{}/{}", status.service, task.arch);
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
