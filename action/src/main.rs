//! `bakery`: the client CI runs. Everything is in the library.

use std::process::ExitCode;

use clap::Parser;

use bakery::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    bakery::init_logging(cli.log_format);
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
    match runtime.block_on(bakery::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            bakery::print_error(&e);
            ExitCode::FAILURE
        }
    }
}
