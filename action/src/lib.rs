//! bakery, the client CI runs: it plans the build from config.yaml, a
//! compose file or flags, checks every base image, packs and uploads the
//! contexts, asks the controller (a remote one, or one embedded in this
//! process) to build, follows the logs and reports where CI users look.
//!
//! Read top-down:
//!
//! * [`cli`]: the flags, each also an environment variable; `env`: the
//!   environment, read once; `client`: the controller's URL and the
//!   client token;
//! * `input`: flags to a [`bakery_plan::Plan`];
//! * `build`: `bakery build` (upload, submit, follow, cancel);
//!   `commands`: `logs`, `status`, `plan`, `pack`;
//! * `logins`: the runner's registry logins, sent with the builds that
//!   need them and checked against the destination first;
//! * `preflight`: the base-image check before anything is uploaded;
//! * `printer` and `render`: what a person reads (`blocks`: one CI
//!   log block per task, named by its `task_label`); `outcome`: what the
//!   reports are made of; `ci`: GitHub and GitLab behind one trait (log
//!   blocks, report files, commit checks and statuses); `progress`: bars
//!   and heartbeats for long steps; `hints`: what to do about a failure
//!   the builder's words do not explain.

mod blocks;
mod build;
mod ci;
pub mod cli;
mod client;
mod commands;
mod env;
mod hints;
mod input;
mod logins;
mod outcome;
mod preflight;
mod printer;
mod progress;
mod render;
mod task_label;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Result;

use cli::{Cli, Command, LogFormat};

/// Prints a failed command's error; in a GitHub Actions step a plan error
/// is also an annotation at the file and line it names.
pub fn print_error(e: &anyhow::Error) {
    eprintln!("error: {e:#}");
    if let Some(d) = e
        .downcast_ref::<bakery_plan::PlanError>()
        .and_then(bakery_plan::PlanError::diagnostic)
    {
        ci::github::annotate(
            env::ClientEnv::current(),
            d,
            "bakery: invalid build configuration",
        );
    }
}

/// Whether to colour a stream: `CLICOLOR_FORCE` (set, not `0`) forces it,
/// `NO_COLOR` (set, not empty) turns it off, else only on a terminal
/// (no-color.org, bixense.com/clicolors).
pub fn colour(is_terminal: bool) -> bool {
    let set = |k: &str| env::ClientEnv::current().var_os(k);
    if set("CLICOLOR_FORCE").is_some_and(|v| v != "0") {
        return true;
    }
    match progress::display() {
        progress::Display::Colour => return set("NO_COLOR").is_none(),
        progress::Display::Lines => return false,
        progress::Display::Auto | progress::Display::Quiet => {}
    }
    set("NO_COLOR").is_none() && is_terminal
}

/// Runs one command line.
pub async fn run(mut cli: Cli) -> Result<ExitCode> {
    let command = cli.command.take().unwrap_or(Command::Build {
        named: Vec::new(),
        detach: false,
        codec: bakery_pack::Codec::Gzip,
    });
    if let Command::Build { named, .. }
    | Command::Plan { named, .. }
    | Command::Pack { named, .. } = &command
    {
        cli.input.services.extend(named.iter().cloned());
    }
    // An empty CONTROLLER_URL (a CI variable that is not set in this
    // project, an input left empty) means none, as unset does.
    let url = cli
        .controller_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| client::Remote::new(u, cli.insecure, env::ClientEnv::current()))
        .transpose()?;
    match command {
        Command::Build { detach, codec, .. } => {
            let plan = input::plan(&cli.input)?;
            if detach && url.is_none() {
                anyhow::bail!(
                    "--detach needs CONTROLLER_URL: an embedded controller ends with this process"
                );
            }
            let target = match url {
                Some(remote) => build::Target::Remote(remote),
                None => build::Target::Embedded,
            };
            let opts = build::BuildOptions {
                async_mode: cli.input.async_mode,
                detach,
                codec,
                format: cli.log_format,
                asks: build::Asks::from_input(&cli.input)?,
            };
            let ok = match build::build(plan, target, opts).await {
                Ok(ok) => ok,
                Err(e) => match e.downcast_ref::<build::Cancelled>() {
                    Some(cancelled) => {
                        eprintln!("{cancelled}");
                        return Ok(ExitCode::from(cancelled.exit_code()));
                    }
                    None => return Err(e),
                },
            };
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Logs { id } => commands::logs(url.as_ref(), &id, cli.log_format).await,
        Command::Status { id, json } => commands::status(url.as_ref(), &id, json).await,
        Command::Plan { json, offline, .. } => commands::plan(&cli.input, json, offline)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Version => {
            println!("bakery {}", cli::LONG_VERSION);
            Ok(ExitCode::SUCCESS)
        }
        Command::Pack {
            output,
            codec,
            json,
            ..
        } => {
            let output = output.unwrap_or_else(|| std::env::temp_dir().join("bakery-pack"));
            commands::pack(&cli.input, &output, codec, json).map(|()| ExitCode::SUCCESS)
        }
    }
}

/// Logs to stderr (stdout carries the build's own log), filtered by
/// `BAKERY_LOG`.
pub fn init_logging(format: Option<LogFormat>) {
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
            .with_ansi(colour(std::io::stderr().is_terminal()))
            .with_target(false)
            .init(),
    }
}
