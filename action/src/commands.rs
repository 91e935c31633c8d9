//! The subcommands other than `build`: following, inspecting, planning and
//! packing, each a thin layer over the libraries.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use bakery_pack::{pack_to_dir, Codec, PackOptions};
use bakery_protocol::api::{BuildState, BuildStatus};

use crate::cli::{Input, LogFormat};
use crate::client::{self, Controller, Event};
use crate::printer::Printer;

fn controller(remote: Option<&client::Remote>, command: &str) -> Result<Controller> {
    let remote = remote.with_context(|| format!("`bakery {command}` needs CONTROLLER_URL"))?;
    Ok(client::connect(remote))
}

fn exit_code(status: &BuildStatus) -> ExitCode {
    if status.state == BuildState::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `bakery logs ID`: a build's log to its end, then its state.
pub async fn logs(
    url: Option<&client::Remote>,
    id: &str,
    format: Option<LogFormat>,
) -> Result<ExitCode> {
    let controller = controller(url, "logs")?;
    let service = controller.status(id).await?.service;
    let printer = Printer::standalone(
        &service,
        format,
        crate::ci::detect(crate::env::ClientEnv::current(), false).await,
    );
    let status = controller
        .follow(id, |event| match event {
            Event::Log(line) => printer.line(&service, &line),
            Event::Idle => printer.flush(),
            _ => {}
        })
        .await?;
    printer.end_block();
    println!(
        "{}: {:?}{}",
        status.id,
        status.state,
        status
            .error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    Ok(exit_code(&status))
}

/// `bakery status ID [--json]`.
pub async fn status(url: Option<&client::Remote>, id: &str, json: bool) -> Result<ExitCode> {
    let status = controller(url, "status")?.status(id).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(exit_code(&status));
    }
    let word = crate::render::build_word(status.state, status.destination.is_some());
    println!("{} {} {word}", status.id, status.service);
    if let Some(creator) = &status.created_by {
        println!("  created by {creator}");
    }
    for t in &status.tasks {
        println!(
            "  {} {} {}",
            t.arch,
            crate::render::task_word(t.state, t.push.is_some()),
            t.digest.clone().or(t.error.clone()).unwrap_or_default()
        );
    }
    if let Some(d) = &status.index_digest {
        println!(
            "  index {}@{d}",
            status.destination.clone().unwrap_or_default()
        );
    }
    Ok(exit_code(&status))
}

/// `bakery plan [--json]`: what would be built, passwords masked, checked
/// as `build` checks it before uploading
/// (each base image has each planned platform) unless `offline`, so that
/// plan never passes what build refuses.
pub async fn plan(input: &Input, json: bool, offline: bool) -> Result<()> {
    let mut plan = crate::input::plan(input)?;
    // The flags build checks before it packs anything.
    crate::build::Asks::from_input(input)?;
    if !offline {
        crate::build::check_plan_bases(&mut plan).await?;
    }
    let plan = plan.redacted();
    if json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", crate::render::plan_table(&plan, &input.repo));
    }
    Ok(())
}

/// `bakery pack --output DIR`: each distinct context packed once.
/// Named contexts (`--build-context`, compose `additional_contexts`) are
/// packed in, as `build` packs them.
pub fn pack(input: &Input, output: &Path, codec: Codec, json: bool) -> Result<()> {
    let plan = crate::input::plan(input)?;
    let asks = crate::build::Asks::from_input(input)?;
    let keys: Vec<PathBuf> = asks
        .key_files()
        .iter()
        .filter_map(|f| std::fs::canonicalize(f).ok())
        .collect();
    let opts = PackOptions {
        codec,
        ..PackOptions::default()
    };
    let mut done: Vec<(PathBuf, PathBuf, Vec<PathBuf>)> = Vec::new();
    let mut results = Vec::new();
    for (_, build) in plan.builds() {
        let named = asks.contexts.over(&build.named_contexts);
        let key = (
            build.context_dir.clone(),
            build.dockerfile_path(),
            named.dirs(),
        );
        if done.contains(&key) {
            continue;
        }
        let started = Instant::now();
        let step = crate::progress::Step::start(format!("packing {}", key.0.display()), None);
        let opts = PackOptions {
            dockerfile_beside: build.dockerfile_outside.clone(),
            named: named.pack(&keys),
            progress: Some(step.counter()),
            ..opts.clone()
        };
        let (path, packed) = pack_to_dir(&key.0, &build.spec.dockerfile, output, &opts)
            .with_context(|| format!("packing {}", key.0.display()))?;
        drop(step);
        for w in &packed.warnings {
            tracing::warn!("{w}");
        }
        if let Some(w) = crate::build::large_context_warning(&key.0, &packed) {
            eprintln!("warning: {w}");
        }
        if !json {
            println!(
                "{}  {} entries, {} excluded, {} → {} in {:.2}s",
                path.display(),
                packed.entries,
                packed.excluded,
                crate::render::bytes(packed.content_bytes),
                crate::render::bytes(packed.size),
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
    Ok(())
}
