//! Records the commit and target `bakery version` prints. A build outside
//! a git checkout may set BAKERY_VERSION_COMMIT; elsewhere git says.
//! (Cargo also sets these variables for `cargo test`'s processes, so they
//! must not be names bakery reads as settings: BAKERY_TARGET is --target.)

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=BAKERY_VERSION_COMMIT");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    // A new commit changes what HEAD's ref points at: rebuild then.
    // (A file that does not exist, such as a ref packed away, would make
    // cargo rerun this every time: those are left out.)
    let head = git(&["rev-parse", "--git-path", "HEAD"]);
    let branch = git(&["rev-parse", "--symbolic-full-name", "HEAD"])
        .and_then(|r| git(&["rev-parse", "--git-path", &r]));
    for path in [head, branch].into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("BAKERY_VERSION_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BAKERY_VERSION_COMMIT={commit}");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=BAKERY_VERSION_TARGET={target}");
}
