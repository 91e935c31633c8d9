//! What a build's SLSA provenance attestation records, as the client asks
//! for it: whether there is one ([`Provenance::mode`]) and the source it was
//! built from ([`Source`]), which only the CI job knows. The controller
//! writes the attestation itself (it knows the builder, the bases and the
//! digests); see `docs/provenance.md`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The provenance a build asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// How much it records.
    pub mode: ProvenanceMode,
    /// The source the build came from, as the CI job describes it.
    #[serde(default, deserialize_with = "crate::object::object")]
    pub source: Source,
}

/// How much the attestation records, as BuildKit's `mode=min|max`: `min`
/// (build-push-action's default) names the builder, the source, the base
/// images by digest, the context digest, build-arg names and the times;
/// `max` adds the Dockerfile, the target and the labels. No mode records a
/// build-arg value or a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProvenanceMode {
    /// The default.
    #[default]
    Min,
    /// `min` and the build's definition.
    Max,
}

impl fmt::Display for ProvenanceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProvenanceMode::Min => "min",
            ProvenanceMode::Max => "max",
        })
    }
}

/// `--provenance` as docker buildx and build-push-action take it:
/// `true`/`false` (any case getBooleanInput reads), `min`, `max`,
/// `mode=min`, `mode=max`. `None` is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProvenanceSetting(pub Option<ProvenanceMode>);

impl FromStr for ProvenanceSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mode = s.trim();
        let mode = mode.strip_prefix("mode=").unwrap_or(mode);
        match mode {
            "" | "true" | "True" | "TRUE" | "1" | "min" => {
                Ok(ProvenanceSetting(Some(ProvenanceMode::Min)))
            }
            "max" => Ok(ProvenanceSetting(Some(ProvenanceMode::Max))),
            "false" | "False" | "FALSE" | "0" => Ok(ProvenanceSetting(None)),
            other => Err(format!(
                "`{other}` is not a provenance setting: use true, false, mode=min or mode=max \
                 (other buildx attributes such as builder-id are not supported)"
            )),
        }
    }
}

/// Where the build's source came from. Every field is optional: a build
/// run by hand outside CI has none of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The repository's URL (`https://github.com/acme/app`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The commit built (40 hex digits for git).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The CI configuration that ran the build: GitHub's workflow ref
    /// (`acme/app/.github/workflows/ci.yml@refs/heads/main`), GitLab's
    /// configuration path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// The run's URL: the workflow run (and attempt) or the GitLab job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

impl Source {
    /// The source as a CI job's environment describes it: GitHub Actions
    /// (`GITHUB_*`, and the pull request's head commit the action passes
    /// as `BAKERY_GITHUB_SHA`) or GitLab CI (`CI_*`); empty elsewhere.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Source {
        if var("GITHUB_ACTIONS").as_deref() == Some("true") {
            let server = var("GITHUB_SERVER_URL").unwrap_or_else(|| "https://github.com".into());
            let repository = var("GITHUB_REPOSITORY");
            let run = match (&repository, var("GITHUB_RUN_ID")) {
                (Some(repo), Some(id)) => Some(format!(
                    "{server}/{repo}/actions/runs/{id}/attempts/{}",
                    var("GITHUB_RUN_ATTEMPT").unwrap_or_else(|| "1".into())
                )),
                _ => None,
            };
            return Source {
                repository: repository.map(|r| format!("{server}/{r}")),
                commit: var("BAKERY_GITHUB_SHA").or_else(|| var("GITHUB_SHA")),
                config: var("GITHUB_WORKFLOW_REF"),
                run,
            };
        }
        if var("GITLAB_CI").as_deref() == Some("true") {
            return Source {
                repository: var("CI_PROJECT_URL"),
                commit: var("CI_COMMIT_SHA"),
                config: var("CI_CONFIG_PATH"),
                run: var("CI_JOB_URL"),
            };
        }
        Source::default()
    }

    /// Each field with its name, for checking.
    pub fn fields(&self) -> [(&'static str, Option<&str>); 4] {
        [
            ("repository", self.repository.as_deref()),
            ("commit", self.commit.as_deref()),
            ("config", self.config.as_deref()),
            ("run", self.run.as_deref()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provenance_settings_read_as_buildx_reads_them() {
        let mode = |s: &str| s.parse::<ProvenanceSetting>().map(|p| p.0);
        assert_eq!(mode("true"), Ok(Some(ProvenanceMode::Min)));
        assert_eq!(mode("mode=max"), Ok(Some(ProvenanceMode::Max)));
        assert_eq!(mode("max"), Ok(Some(ProvenanceMode::Max)));
        assert_eq!(mode("False"), Ok(None));
        let refused = mode("mode=max,builder-id=x").unwrap_err();
        assert!(refused.contains("builder-id=x"), "{refused}");
    }

    #[test]
    fn a_github_job_describes_its_source() {
        let env = |k: &str| {
            Some(
                match k {
                    "GITHUB_ACTIONS" => "true",
                    "GITHUB_SERVER_URL" => "https://github.com",
                    "GITHUB_REPOSITORY" => "acme/app",
                    "GITHUB_SHA" => "merge",
                    "BAKERY_GITHUB_SHA" => "head",
                    "GITHUB_RUN_ID" => "42",
                    "GITHUB_WORKFLOW_REF" => "acme/app/.github/workflows/ci.yml@refs/heads/main",
                    _ => return None,
                }
                .to_string(),
            )
        };
        let source = Source::from_env(env);
        assert_eq!(
            source.repository.as_deref(),
            Some("https://github.com/acme/app")
        );
        assert_eq!(source.commit.as_deref(), Some("head"));
        assert_eq!(
            source.run.as_deref(),
            Some("https://github.com/acme/app/actions/runs/42/attempts/1")
        );
        assert_eq!(Source::from_env(|_| None), Source::default());
    }
}
