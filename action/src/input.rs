//! From the command line's input flags to a resolved [`Plan`]: a `--tag`
//! build described by flags, or a config/compose file with the flags that
//! apply to every selected service.

use std::collections::BTreeMap;

use anyhow::Result;
use bakery_plan::secrets::SecretRef;
use bakery_plan::{InlineBuild, Overrides, Plan, PlanOptions};

use crate::cli::Input;

/// The plan the flags describe, with its notes (the compose file found,
/// warnings) printed to stderr.
pub fn plan(input: &Input) -> Result<Plan> {
    let flags = Flags::parse(input)?;
    let inline = inline_build(input, &flags);
    let overrides = if inline.is_some() {
        Overrides {
            secrets: flags.secrets,
            ..Overrides::default()
        }
    } else {
        refuse_tag_only_flags(input)?;
        // With a config or compose file, these apply to every selected service.
        Overrides {
            platforms: flags.platforms,
            build_args: flags.build_args,
            labels: flags.labels,
            target: input.target.clone(),
            cache: input.cache,
            cache_repo: flags.cache_repo,
            secrets: flags.secrets,
            no_push: !input.push,
            disk: input.disk,
            no_cache: input.no_cache,
        }
    };
    let opts = PlanOptions {
        config: input.config.clone(),
        compose: input.compose.clone(),
        // `--services ''`, `BAKERY_SERVICES=` and `api,` name no service.
        services: trimmed(&input.services),
        profiles: trimmed(&input.profiles),
        inline,
        overrides,
        env: crate::env::ClientEnv::current().text_vars(),
        ..PlanOptions::new(&input.repo)
    };
    let mut plan = Plan::resolve(&opts)?;
    if !input.arch_tags {
        plan.stage_arch_pushes();
    }
    if let Some(found) = &plan.discovered {
        eprintln!(
            "using {} (no config.yaml; pass --compose or --config to choose)",
            found.display()
        );
    }
    // In the errors' style, so they read alike and stay out of log filters.
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(plan)
}

/// The list flags, trimmed, empty items dropped (CI inputs often end in a
/// newline or a trailing comma).
struct Flags {
    build_args: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    platforms: Vec<String>,
    cache_repo: Option<String>,
    secrets: Vec<SecretRef>,
}

impl Flags {
    fn parse(input: &Input) -> Result<Flags> {
        Ok(Flags {
            build_args: pairs(&input.build_args, "--build-arg")?,
            labels: pairs(&input.labels, "--label")?,
            platforms: trimmed(&input.platforms),
            cache_repo: input.cache_repo.clone().filter(|r| !r.trim().is_empty()),
            secrets: secrets(&input.secrets)?,
        })
    }
}

/// `--secret` values; an error quotes the flag's text (ids and paths,
/// never a value: values come from files and variables).
fn secrets(items: &[String]) -> Result<Vec<SecretRef>> {
    trimmed(items)
        .iter()
        .map(|s| {
            SecretRef::parse(s, |var| crate::env::ClientEnv::current().is_set(var))
                .map_err(|m| anyhow::anyhow!("--secret `{s}`: {m}"))
        })
        .collect()
}

fn trimmed(items: &[String]) -> Vec<String> {
    items
        .iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// `KEY=VALUE` items as a map.
fn pairs(items: &[String], flag: &str) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('=') {
            Some((k, _)) if k.trim().is_empty() => {
                anyhow::bail!("{flag} `{s}`: the name before `=` is empty; write KEY=VALUE")
            }
            Some((k, v)) => Ok((k.trim().to_string(), v.to_string())),
            None => anyhow::bail!("{flag} `{s}` is not KEY=VALUE"),
        })
        .collect()
}

/// A `--tag` build: the image is described by flags alone.
fn inline_build(input: &Input, flags: &Flags) -> Option<InlineBuild> {
    if input.tags.is_empty() {
        return None;
    }
    Some(InlineBuild {
        context: input.context.clone().unwrap_or_else(|| ".".into()),
        dockerfile: input.file.clone(),
        tags: trimmed(&input.tags),
        platforms: flags.platforms.clone(),
        build_args: flags.build_args.clone(),
        labels: flags.labels.clone(),
        target: input.target.clone(),
        cache: input.cache,
        cache_repo: flags.cache_repo.clone(),
        no_push: !input.push,
        disk: input.disk,
    })
}

/// `--file` and `--context` describe a `--tag` build; with a file they
/// would be silently ignored.
fn refuse_tag_only_flags(input: &Input) -> Result<()> {
    // The action and the component pass the default context, `.`.
    let context = input.context.as_deref().is_some_and(|c| c.trim() != ".");
    for (flag, given) in [("--file", input.file.is_some()), ("--context", context)] {
        if given {
            anyhow::bail!(
                "{flag} describes a --tag build; with a config or compose file, set the Dockerfile and context there (compose `build.dockerfile`/`build.context`, config.yaml `kaniko.dockerfile`/`kaniko.context-path`)"
            );
        }
    }
    Ok(())
}
