//! The log path's cost per line, counted rather than timed (the machine is
//! shared; a count is the same on a busy one): `bakery logs` of a finished
//! 40,000-line build under `strace -c`. Before the output was buffered and
//! the stream read on one thread, every line cost a `write` and more than
//! one `futex` (378k writes and 345k futex calls for 200k lines).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::load::{create, two_arch, upload};
use support::*;

/// Calls of `syscall` in an `strace -c` summary.
fn calls(summary: &str, syscall: &str) -> u64 {
    summary
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.last() == Some(&syscall)).then(|| cols.get(3).and_then(|c| c.parse().ok()))
        })
        .flatten()
        .next()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bakery_logs_writes_and_wakes_per_read_not_per_line() {
    const PER_ARCH: u64 = 20_000;
    let data = tempfile::tempdir().unwrap();
    let load = format!("{PER_ARCH}@1000000");
    let controller = controller_on(
        free_port(),
        &[
            ("DATA_DIR", data.path().to_str().unwrap()),
            ("BAKERY_AGENT_LOAD", &load),
        ],
    );
    let base = controller.url();
    let http = reqwest::Client::new();
    let key = upload(&http, &base).await;
    let id = create(&http, &base, &two_arch(&key, 0)).await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let status: serde_json::Value = http
            .get(format!("{base}/v1/builds/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["state"] == "succeeded" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the build did not finish: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("strace");
    let printed = dir.path().join("printed");
    let out = tokio::task::block_in_place(|| {
        Command::new("strace")
            .args(["-f", "-c", "-e", "trace=write,futex", "-o"])
            .arg(&summary)
            .arg(env!("CARGO_BIN_EXE_bakery"))
            .args(["logs", &id])
            .env("CONTROLLER_URL", &base)
            .env_remove("GITHUB_ACTIONS")
            .env_remove("GITLAB_CI")
            .stdout(std::fs::File::create(&printed).unwrap())
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = std::fs::read_to_string(&printed)
        .unwrap()
        .lines()
        .filter(|l| l.contains(" | load "))
        .count() as u64;
    assert_eq!(lines, 2 * PER_ARCH, "every line printed");
    let summary = std::fs::read_to_string(&summary).unwrap();
    let (writes, futexes) = (calls(&summary, "write"), calls(&summary, "futex"));
    eprintln!("bakery logs, {lines} lines: {writes} write, {futexes} futex");
    // The fault this guards against is one call (or more) per line; per
    // network read it is a few hundred for 40,000 lines.
    assert!(writes > 0, "strace counted the writes: {summary}");
    assert!(
        writes * 20 < lines,
        "{writes} writes for {lines} lines:\n{summary}"
    );
    assert!(
        futexes * 20 < lines,
        "{futexes} futex calls for {lines} lines:\n{summary}"
    );
    // A reader that stops early ends it quietly, as it ends `cat`.
    let piped = tokio::task::block_in_place(|| {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "'{}' logs {id} | head -n 1",
                env!("CARGO_BIN_EXE_bakery")
            ))
            .env("CONTROLLER_URL", &base)
            .env_remove("GITHUB_ACTIONS")
            .env_remove("GITLAB_CI")
            .output()
            .unwrap()
    });
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&piped.stdout).lines().count(), 1);
}
