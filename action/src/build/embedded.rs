//! The controller a build without CONTROLLER_URL starts in this process.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use bakery_protocol::api::BuildStatus;

use crate::client::Event;

/// A controller inside this process, with a data dir of its own unless
/// DATA_DIR names one: two CI jobs on one machine must not share a journal
/// (the second could not open it), and a build of this run is not resumed by
/// a later one (its agents end with this process).
pub(super) async fn start_embedded(
) -> Result<(bakery_controller::Running, Option<tempfile::TempDir>)> {
    let mut config = for_this_process(bakery_controller::Config::from_env()?);
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
    let running = bakery_controller::start(config)
        .await
        .context("starting the embedded controller")?;
    Ok((running, data))
}

/// What of the environment's controller settings an embedded controller
/// must not take: a CI job's DATABASE_URL or S3_BUCKET are the app's own
/// (its tests' database), never this process's state.
fn for_this_process(mut config: bakery_controller::Config) -> bakery_controller::Config {
    config.listen_addr = "127.0.0.1:0".into();
    config.controller_url = None;
    config.default_platform = bakery_protocol::Platform::Local;
    config.s3_bucket = None;
    config.database_url = None;
    config.database_ca_file = None;
    config.state_key = None;
    config
}

/// Follows build `id` on the controller in this process, as
/// `Controller::follow` does over HTTP: `on` gets each line and status,
/// and `Event::Idle` whenever nothing more is ready (the printer flushes
/// there); the final status is returned, not handed to `on`. A log that
/// ends early (a line could not be read back from the journal) is followed
/// again after its last line, with the HTTP client's back-off and patience.
pub(super) async fn follow(
    running: &bakery_controller::Running,
    id: &str,
    mut on: impl FnMut(Event),
) -> Result<BuildStatus> {
    let mut last_seq = 0;
    let mut failing_since: Option<std::time::Instant> = None;
    let mut delay = Duration::from_millis(200);
    loop {
        let log = running
            .follow(id, last_seq)
            .with_context(|| format!("build {id} is not known to the embedded controller"))?;
        let before = last_seq;
        if let Some(end) = follow_once(log, &mut last_seq, &mut on).await {
            return Ok(end);
        }
        on(Event::Idle);
        if last_seq > before {
            failing_since = None;
            delay = Duration::from_millis(200);
        }
        let since = *failing_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() > bakery_client::FOLLOW_PATIENCE {
            bail!(
                "the log of build {id} could not be read after line {last_seq} for {} s (the controller's log says why)",
                bakery_client::FOLLOW_PATIENCE.as_secs()
            );
        }
        tracing::warn!("log of build {id} interrupted; resuming after line {last_seq}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// One pass of [`follow`]: `Some` final status, or `None` if the log ended
/// without one.
async fn follow_once(
    mut log: bakery_controller::LocalFollow,
    last_seq: &mut u64,
    on: &mut impl FnMut(Event),
) -> Option<BuildStatus> {
    use bakery_controller::Followed;
    loop {
        // What is ready is printed before waiting for more, and the wait
        // is announced, so output is written once per wait, not per line.
        let batch = match futures_util::FutureExt::now_or_never(log.next()) {
            Some(batch) => batch,
            None => {
                on(Event::Idle);
                log.next().await
            }
        }?;
        for event in batch {
            match event {
                Followed::Log(line) => {
                    *last_seq = line.seq;
                    on(Event::Log(line));
                }
                Followed::Status(status) => on(Event::Status(status)),
                Followed::End(status) => return Some(status),
            }
        }
        // A follower that is behind always has lines ready: the status
        // reports, heartbeat, other services and Ctrl-C beside it get their
        // turn.
        tokio::task::consume_budget().await;
    }
}

#[cfg(test)]
mod tests {
    /// A CI job's own database and bucket stay the job's: the embedded
    /// controller keeps its state in its temp dir (it once created its
    /// tables in the app's test database when DATABASE_URL was set).
    #[test]
    fn the_embedded_controller_takes_no_database_or_bucket_from_the_environment() {
        let config = bakery_controller::Config::from_vars([
            (
                "DATABASE_URL".to_string(),
                "postgres://app:pw@db/app_test".to_string(),
            ),
            ("STATE_KEY".to_string(), "a2V5".to_string()),
            ("DATABASE_CA_FILE".to_string(), "/ca.pem".to_string()),
            ("S3_BUCKET".to_string(), "apps-bucket".to_string()),
        ])
        .unwrap();
        assert!(config.database_url.is_some(), "read from the environment");
        let config = super::for_this_process(config);
        assert!(config.database_url.is_none() && config.state_key.is_none());
        assert!(config.database_ca_file.is_none() && config.s3_bucket.is_none());
    }
}
