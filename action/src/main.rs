//! `bakery`: the client CI runs. Everything is in the library.

use std::process::ExitCode;

use bakery::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse_args().with_progress();
    bakery::init_logging(cli.log_format);
    // Following, inspecting, planning and packing run on one thread: the
    // log stream of `bakery logs` is read and printed where it arrives,
    // with no hand-off (and wake-up) between threads per event. A build
    // may run an embedded controller and its agents: all cores.
    let single = matches!(
        cli.command,
        Some(bakery::cli::Command::Logs { .. } | bakery::cli::Command::Status { .. })
    );
    if !matches!(cli.command, None | Some(bakery::cli::Command::Build { .. })) {
        // A reader that stops reading (`bakery logs ID | head -1`) ends these
        // commands as it ends `cat`: quietly, by SIGPIPE, not by a panic in
        // println!. A build keeps running its clean-up instead (its output
        // ignores a closed pipe).
        // SAFETY: at start-up, before any other thread exists; SIG_DFL
        // installs no handler of ours.
        #[allow(unsafe_code)]
        unsafe {
            let _ = nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            );
        }
    }
    let mut builder = if single {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // With --log-format json, stdout is JSON only, and a build that fails
    // before its summary still ends with the `finished` object.
    let json_build = cli.log_format == Some(bakery::cli::LogFormat::Json)
        && matches!(cli.command, None | Some(bakery::cli::Command::Build { .. }));
    let started = std::time::Instant::now();
    match runtime.block_on(bakery::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            bakery::print_error(&e);
            if json_build {
                let end = serde_json::json!({"finished": {
                    "ok": false,
                    "seconds": started.elapsed().as_secs_f64(),
                    "error": format!("{e:#}"),
                }});
                println!("{end}");
            }
            ExitCode::FAILURE
        }
    }
}
