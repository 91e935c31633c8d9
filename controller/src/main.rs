//! `bakery-controller`: configured from the environment (see the README).

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc gives every thread that allocates its own heap arena (up to eight
/// per core), and memory freed in one is not reused by the others: with
/// log lines allocated on the runtime's workers and journal chunks on its
/// blocking threads, 1,000 chatty builds left ~330 MB resident against
/// ~250 MB with two arenas, at no cost in throughput (bench/RESULTS.md).
/// Set before the runtime starts its threads.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before
    // any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

async fn run() -> anyhow::Result<()> {
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json");
    let filter = tracing_subscriber::EnvFilter::try_from_env("BAKERY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }

    // Handlers first: a SIGTERM that arrives as soon as the controller says
    // it listens (a quick redeploy) must suspend it, not kill it mid-write.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let config = bakery_controller::Config::from_env()?;
    // A signal while starting ends the process: a standby may wait for
    // hours (STANDBY), and a start is safe to abandon at any point.
    let running = tokio::select! {
        started = bakery_controller::start(config) => started.context("starting the controller")?,
        _ = int.recv() => return Ok(()),
        _ = term.recv() => {
            tracing::info!("stopped before it started serving");
            return Ok(());
        }
    };
    let lost = tokio::select! {
        _ = int.recv() => false,
        _ = term.recv() => false,
        () = running.database_lost() => true,
    };
    // A restart (a deploy, a moved pod) must not cost anyone their build:
    // agents keep running and the next start resumes what is unfinished.
    let left = running.suspend().await;
    tracing::info!(
        unfinished = left,
        "stopped; unfinished builds resume when a controller starts on the same DATA_DIR (or DATABASE_URL)"
    );
    // Not a clean stop: an orchestrator's restart policy brings it back,
    // as a standby of the controller that took the database.
    if lost {
        anyhow::bail!("stopped: this controller lost the state database (see the log above)");
    }
    Ok(())
}
