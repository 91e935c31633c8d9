//! `bakery`: the client CI runs.

mod cli;
mod render;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use bakery_core::context::{pack_to_dir, PackOptions};
use bakery_core::{Plan, PlanOptions};
use clap::Parser;

use cli::{Cli, Command, Input, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BAKERY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
    let opts = PlanOptions {
        config: input.config.clone(),
        compose: input.compose.clone(),
        services: input.services.clone(),
        ..PlanOptions::new(&input.repo)
    };
    let plan = Plan::resolve(&opts)?;
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    Ok(plan)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
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
                let key = (
                    build.spec.context_dir.clone(),
                    build.spec.dockerfile.clone(),
                );
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
