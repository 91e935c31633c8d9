//! `bakery`: the client CI runs.

mod build;
mod ci;
mod cli;
mod client;
mod preflight;
mod render;
mod status;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use bakery_pack::{pack_to_dir, PackOptions};
use bakery_plan::{Plan, PlanOptions};
use clap::Parser;

use cli::{Cli, Command, Input, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BAKERY_LOG")
        // The embedded controller's own progress is in the build log already.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,bakery_controller=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Some(LogFormat::Json) => builder.json().init(),
        Some(LogFormat::Simple) => builder
            .without_time()
            .with_target(false)
            .with_level(false)
            .with_ansi(false)
            .init(),
        Some(LogFormat::Plain) => builder.with_ansi(false).init(),
        None => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .init(),
    }
}

fn plan(input: &Input) -> Result<Plan> {
    let pairs =
        |items: &[String], flag: &str| -> Result<std::collections::BTreeMap<String, String>> {
            items
                .iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| match s.split_once('=') {
                    Some((k, v)) => Ok((k.trim().to_string(), v.to_string())),
                    None => anyhow::bail!("{flag} `{s}` is not KEY=VALUE"),
                })
                .collect()
        };
    let build_args = pairs(&input.build_args, "--build-arg")?;
    let labels = pairs(&input.labels, "--label")?;
    let platforms: Vec<String> = input
        .platforms
        .iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let cache_repo = input.cache_repo.clone().filter(|r| !r.trim().is_empty());
    let inline = if input.tags.is_empty() {
        None
    } else {
        Some(bakery_plan::InlineBuild {
            context: input.context.clone().unwrap_or_else(|| ".".into()),
            dockerfile: input.file.clone(),
            tags: input
                .tags
                .iter()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
            platforms: platforms.clone(),
            build_args: build_args.clone(),
            labels: labels.clone(),
            target: input.target.clone(),
            cache: input.cache,
            cache_repo: cache_repo.clone(),
        })
    };
    if inline.is_none() {
        // The action and the component pass the default context, `.`.
        let context = input.context.as_deref().is_some_and(|c| c.trim() != ".");
        for (flag, given) in [("--file", input.file.is_some()), ("--context", context)] {
            if given {
                anyhow::bail!(
                    "{flag} describes a --tag build; with a config or compose file, set the Dockerfile and context there (compose `build.dockerfile`/`build.context`, config.yaml `kaniko.dockerfile`/`kaniko.context-path`)"
                );
            }
        }
    }
    // With a config or compose file, these apply to every selected service.
    let overrides = bakery_plan::Overrides {
        platforms: if inline.is_some() {
            Vec::new()
        } else {
            platforms
        },
        build_args: if inline.is_some() {
            Default::default()
        } else {
            build_args
        },
        labels: if inline.is_some() {
            Default::default()
        } else {
            labels
        },
        target: input.target.clone().filter(|_| inline.is_none()),
        cache: input.cache && inline.is_none(),
        cache_repo: cache_repo.filter(|_| inline.is_none()),
    };
    let opts = PlanOptions {
        config: input.config.clone(),
        compose: input.compose.clone(),
        services: input.services.clone(),
        inline,
        overrides,
        ..PlanOptions::new(&input.repo)
    };
    let plan = Plan::resolve(&opts)?;
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

async fn run(cli: Cli) -> Result<ExitCode> {
    let command = cli.command.unwrap_or(Command::Build {
        detach: false,
        codec: bakery_pack::Codec::Gzip,
    });
    match command {
        Command::Build { detach, codec } => {
            let plan = plan(&cli.input)?;
            let target = match &cli.controller_url {
                Some(url) => build::Target::Remote(url.clone()),
                None => build::Target::Embedded,
            };
            let opts = build::BuildOptions {
                async_mode: cli.input.async_mode,
                detach,
                codec,
                format: cli.log_format,
            };
            if detach && cli.controller_url.is_none() {
                anyhow::bail!(
                    "--detach needs CONTROLLER_URL: an embedded controller ends with this process"
                );
            }
            let ok = build::build(plan, target, opts).await?;
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Command::Logs { id } => {
            let controller = client::connect(
                cli.controller_url
                    .as_deref()
                    .context("`bakery logs` needs CONTROLLER_URL")?,
            );
            let service = controller.status(&id).await?.service;
            let printer = build::Printer::standalone(&service, cli.log_format);
            let status = controller
                .follow(&id, |event| {
                    if let client::Event::Log(line) = event {
                        printer.line(&service, &line)
                    }
                })
                .await?;
            println!(
                "{}: {:?}{}",
                status.id,
                status.state,
                status.error.map(|e| format!(": {e}")).unwrap_or_default()
            );
            return Ok(
                if status.state == bakery_protocol::api::BuildState::Succeeded {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                },
            );
        }
        Command::Status { id, json } => {
            let controller = client::connect(
                cli.controller_url
                    .as_deref()
                    .context("`bakery status` needs CONTROLLER_URL")?,
            );
            let status = controller.status(&id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                println!("{} {} {:?}", status.id, status.service, status.state);
                for t in &status.tasks {
                    println!(
                        "  {} {:?} {}",
                        t.arch,
                        t.state,
                        t.digest.clone().or(t.error.clone()).unwrap_or_default()
                    );
                }
                if let Some(d) = &status.index_digest {
                    println!(
                        "  index {}@{d}",
                        status.destination.clone().unwrap_or_default()
                    );
                }
            }
            return Ok(
                if status.state == bakery_protocol::api::BuildState::Succeeded {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                },
            );
        }
        Command::Plan { json } => {
            let plan = plan(&cli.input)?.redacted();
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", render::plan_table(&plan, &cli.input.repo));
            }
        }
        Command::Pack {
            output,
            codec,
            json,
        } => {
            let plan = plan(&cli.input)?;
            let opts = PackOptions {
                codec,
                ..PackOptions::default()
            };
            let mut done: Vec<(std::path::PathBuf, String)> = Vec::new();
            let mut results = Vec::new();
            for (_, build) in plan.builds() {
                let key = (build.context_dir.clone(), build.spec.dockerfile.clone());
                if done.contains(&key) {
                    continue;
                }
                let started = std::time::Instant::now();
                let (path, packed) = pack_to_dir(&key.0, &key.1, &output, &opts)
                    .with_context(|| format!("packing {}", key.0.display()))?;
                for w in &packed.warnings {
                    tracing::warn!("{w}");
                }
                if !json {
                    println!(
                        "{}  {} entries, {} excluded, {} → {} in {:.2}s",
                        path.display(),
                        packed.entries,
                        packed.excluded,
                        render::bytes(packed.content_bytes),
                        render::bytes(packed.size),
                        started.elapsed().as_secs_f64()
                    );
                }
                results.push(serde_json::json!({
                    "context": key.0, "dockerfile": key.1, "path": path, "key": packed.key(), "packed": packed,
                }));
                done.push(key);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&results)?);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
