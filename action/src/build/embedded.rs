//! The controller a build without CONTROLLER_URL starts in this process.

use anyhow::{bail, Context, Result};
use bakery_protocol::api::BuildStatus;

use crate::client::Event;

/// A controller inside this process, with a data dir of its own unless
/// DATA_DIR names one: two CI jobs on one machine must not share a journal
/// (the second could not open it), and a build of this run is not resumed by
/// a later one (its agents end with this process).
pub(super) async fn start_embedded(
) -> Result<(bakery_controller::Running, Option<tempfile::TempDir>)> {
    let mut config = bakery_controller::Config::from_env()?;
    let data = if crate::env::ClientEnv::current()
        .var_os("DATA_DIR")
        .is_none()
    {
        let dir = tempfile::Builder::new()
            .prefix("bakery-embedded-")
            .tempdir()
            .context("creating the embedded controller's data directory")?;
        config.data_dir = dir.path().to_path_buf();
        Some(dir)
    } else {
        None
    };
    config.listen_addr = "127.0.0.1:0".into();
    config.controller_url = None;
    config.default_platform = bakery_protocol::Platform::Local;
    config.s3_bucket = None;
    let running = bakery_controller::start(config)
        .await
        .context("starting the embedded controller")?;
    Ok((running, data))
}

/// Follows build `id` on the controller in this process, as
/// `Controller::follow` does over HTTP: `on` gets each line and status,
/// and `Event::Idle` whenever nothing more is ready (the printer flushes
/// there); the final status is returned, not handed to `on`.
pub(super) async fn follow(
    running: &bakery_controller::Running,
    id: &str,
    mut on: impl FnMut(Event),
) -> Result<BuildStatus> {
    use bakery_controller::Followed;
    let mut log = running
        .follow(id)
        .with_context(|| format!("build {id} is not known to the embedded controller"))?;
    loop {
        // What is ready is printed before waiting for more, and the wait
        // is announced, so output is written once per wait, not per line.
        let batch = match futures_util::FutureExt::now_or_never(log.next()) {
            Some(batch) => batch,
            None => {
                on(Event::Idle);
                log.next().await
            }
        };
        let Some(batch) = batch else {
            on(Event::Idle);
            bail!("the embedded controller stopped before build {id} ended");
        };
        for event in batch {
            match event {
                Followed::Log(line) => on(Event::Log(line)),
                Followed::Status(status) => on(Event::Status(status)),
                Followed::End(status) => return Ok(status),
            }
        }
    }
}
