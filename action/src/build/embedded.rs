//! The controller a build without CONTROLLER_URL starts in this process.

use anyhow::{Context, Result};

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
