//! bakery-controller: arrives with issue #3. This crate exists so the workspace
//! has its final shape; it does nothing yet and says so.

fn main() -> std::process::ExitCode {
    eprintln!("bakery-controller is not implemented yet (issue #3)");
    std::process::ExitCode::FAILURE
}
