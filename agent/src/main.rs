//! bakery-agent: arrives with issue #3. This crate exists so the workspace
//! has its final shape; it does nothing yet and says so.

fn main() -> std::process::ExitCode {
    eprintln!("bakery-agent is not implemented yet (issue #3)");
    std::process::ExitCode::FAILURE
}
