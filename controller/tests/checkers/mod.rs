//! Third-party checkers the tests run from the virtualenvs scripts/setup
//! makes for them: checkov (the examples), schemathesis (the API).

// Each test file that declares this module uses part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// `relative` under the tools directory scripts/setup installs into
/// (BAKERY_TOOLS_DIR, else ~/.cache/bakery/tools).
pub fn tool(relative: &str) -> PathBuf {
    let tools = std::env::var_os("BAKERY_TOOLS_DIR").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/bakery/tools"),
        PathBuf::from,
    );
    tools.join(relative)
}

fn checkov_binary() -> PathBuf {
    tool("checkov/bin/checkov")
}

/// Runs checkov with `args` (what to scan, the framework), offline, and
/// asserts it passed: every failed check is fixed, or skipped in the file
/// with a written reason. Returns its report.
pub fn checkov_passes(args: &[&str]) -> String {
    let binary = checkov_binary();
    let out = Command::new(&binary)
        .args(args)
        .args(["--compact", "--skip-download", "--quiet"])
        // No calls to Prisma Cloud for guideline links: offline.
        .env("BC_SKIP_MAPPING", "TRUE")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (scripts/setup installs checkov there)",
                binary.display()
            )
        });
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "checkov {args:?} failed:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report
}
