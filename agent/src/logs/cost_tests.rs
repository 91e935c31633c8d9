//! What the agent spends on each line a builder prints, counted in
//! instructions under callgrind (a count, not a time: the same on a busy
//! machine). A chatty build prints a million lines; building a substring
//! searcher for each line (`str::find`, `str::contains` with a string
//! needle) for the platform-args warning and the agent's two paths was
//! the largest single cost in a profile of the agent on a chatty build
//! (5 % of the whole build's CPU). Counted here in the suite's dev-profile
//! build (unoptimised, so the figures are ~10× a release build's): 15,300
//! instructions per line with a searcher built per line, 7,700 with them
//! built once and the line copied once.

use std::process::Command;

use super::LogSink;
use bakery_protocol::redact::Redactor;

/// Lines the workload prints when the guard runs it.
const LINES: usize = 20_000;

/// Instructions the agent may spend per line in the dev profile (see the
/// module's doc): between the 7,700 of searchers built once and the
/// 15,300 of one built per line.
const MAX_PER_LINE: u64 = 11_000;

/// The workload the guard counts: `bakery_cost_lines` builder lines
/// (100 when unset, as a plain test), each as the agent takes it from the
/// builder's output (the warning filter, then the sink: redaction, the
/// agent's paths, the queue). [`instructions_per_line_are_bounded`] runs
/// it alone under callgrind.
#[test]
fn line_workload() {
    let lines: usize = std::env::var("bakery_cost_lines")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let (sink, mut rx) = LogSink::capture();
    sink.set_paths(
        std::path::Path::new("/var/lib/bakery/work/b1234-amd64/context"),
        std::path::Path::new("/var/lib/bakery/work/b1234-amd64"),
    );
    sink.set_redactor(Redactor::new([
        "s3cr3t-registry-password",
        "npm_TOKENabcdef",
    ]));
    let mut line = String::new();
    for n in 0..lines {
        use std::fmt::Write;
        line.clear();
        let _ = write!(
            line,
            "{n} compiling src/module.c -O2 -Wall: warnings 0, objects 1, time 0.01s, cache: miss, result: ok"
        );
        if let Some(shown) = crate::builder::user_line(&line) {
            sink.line(shown);
        }
        while rx.try_recv().is_ok() {}
    }
}

/// Instructions callgrind counts for the workload with `lines` lines.
fn instructions(lines: usize) -> u64 {
    let out = tempfile::NamedTempFile::new().unwrap();
    let test_binary = std::env::current_exe().unwrap();
    let run = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.path().display()))
        .arg(&test_binary)
        .args([
            "--exact",
            "logs::cost_tests::line_workload",
            "--test-threads=1",
        ])
        .env("bakery_cost_lines", lines.to_string())
        .output()
        .expect("valgrind runs (scripts/setup installs it)");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("1 passed"), "the workload ran: {stdout}");
    let profile = std::fs::read_to_string(out.path()).unwrap();
    profile
        .lines()
        .find_map(|l| l.strip_prefix("totals: "))
        .or_else(|| profile.lines().find_map(|l| l.strip_prefix("summary: ")))
        .and_then(|t| t.trim().parse().ok())
        .expect("callgrind's totals")
}

#[test]
fn instructions_per_line_are_bounded() {
    let base = instructions(0);
    let total = instructions(LINES);
    let per_line = total.saturating_sub(base) / LINES as u64;
    eprintln!("{per_line} instructions per line ({total} for {LINES} lines, {base} without)");
    assert!(
        per_line > 100,
        "the workload did its lines: {per_line} instructions per line"
    );
    assert!(
        per_line <= MAX_PER_LINE,
        "the agent spends {per_line} instructions per builder line (at most {MAX_PER_LINE})"
    );
}
