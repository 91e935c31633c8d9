//! What a build prints: with `--log-format json` every line of stdout is
//! one JSON object (log lines, then a summary per service, then the run's
//! end), for tools that read it; an arch that goes quiet gets a heartbeat.

mod support;
use support::*;

use std::process::{Command, Output};

/// `bakery ARGS` in `repo` on the embedded controller, with its own data
/// directory; `env` added.
fn bakery(repo: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bakery"))
        .current_dir(repo)
        .args(args)
        .env_remove("CONTROLLER_URL")
        .env("DATA_DIR", data.path())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

#[test]
fn json_mode_prints_json_only_on_stdout() {
    let registry = registry();
    let host = registry.host();
    let repo = project(&[
        ("Dockerfile", "FROM scratch\nCOPY a.txt /a.txt\n"),
        ("a.txt", "a\n"),
        ("broken/Dockerfile", "FROM scratch\nCOPY missing.txt /m\n"),
        (
            "compose.yaml",
            &format!(
                "services:\n  ok:\n    build: .\n    image: {host}/json/ok:1\n    platform: linux/arm64\n  bad:\n    build: broken\n    image: {host}/json/bad:1\n"
            ),
        ),
    ]);
    let (out, stdout) = bakery(
        repo.path(),
        &["--log-format", "json", "--async", "build"],
        &[],
    );
    assert!(!out.status.success(), "bad fails: {stdout}");
    let objects: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{stdout}"))
        })
        .collect();
    assert!(
        objects
            .iter()
            .any(|o| o["service"] == "ok" && o["line"].is_string()),
        "log lines: {stdout}"
    );
    let summary = |name: &str| {
        objects
            .iter()
            .find(|o| o["service"] == name && o["summary"].is_object())
            .unwrap_or_else(|| panic!("no summary of {name}: {stdout}"))["summary"]
            .clone()
    };
    let ok = summary("ok");
    assert_eq!(ok["state"], "succeeded", "{ok}");
    assert_eq!(ok["tasks"][0]["arch"], "arm64", "{ok}");
    assert!(
        ok["index_digest"].as_str().unwrap().starts_with("sha256:"),
        "{ok}"
    );
    let bad = summary("bad");
    assert_eq!(bad["state"], "failed", "{bad}");
    assert_eq!(
        bad["tasks"][0]["line"], 2,
        "the COPY's Dockerfile line: {bad}"
    );
    let end = objects.last().unwrap();
    assert_eq!(end["finished"]["ok"], false, "{end}");
    assert!(end["finished"]["seconds"].as_f64().unwrap() > 0.0, "{end}");
}

/// A RUN step that prints nothing for a while: the client says the arch is
/// still running (the interval shortened by BAKERY_HEARTBEAT for the test;
/// 30 s by default), and says nothing with BAKERY_HEARTBEAT=0.
#[test]
fn a_silent_arch_gets_a_heartbeat() {
    let registry = registry();
    let base = push_base_image(&registry);
    let host = registry.host();
    let repo = project(&[
        (
            "Dockerfile",
            "ARG BASE\nFROM ${BASE}\nRUN echo before && sleep 4 && echo after\n",
        ),
        (
            "config.yaml",
            &format!("global:\n  arch: amd64\n  kaniko:\n    destination: {host}/quiet/app:1\n    build-args: {{BASE: {base}}}\n"),
        ),
    ]);
    let run = |beat: &str| {
        let (out, stdout) = bakery(repo.path(), &["build"], &[("BAKERY_HEARTBEAT", beat)]);
        assert!(out.status.success(), "{stdout}");
        stdout
    };
    let stdout = run("1");
    let (before, after) = (
        stdout.find("| before").unwrap(),
        stdout.find("| after").unwrap(),
    );
    let silence = &stdout[before..after];
    let beat = silence
        .lines()
        .find(|l| l.contains("no output for"))
        .unwrap_or_else(|| panic!("no heartbeat during the sleep: {stdout}"));
    assert!(beat.starts_with("app-amd64 | … no output for "), "{beat}");
    assert!(beat.ends_with("(still running)"), "{beat}");

    let stdout = run("0");
    assert!(!stdout.contains("no output for"), "{stdout}");
}

/// A COPY of a file that `.dockerignore` leaves out: the builder says "no
/// such file"; the summary says which .dockerignore line excludes it.
#[test]
fn a_dockerignored_copy_names_the_dockerignore_line() {
    let registry = registry();
    let host = registry.host();
    let repo = project(&[
        ("Dockerfile", "FROM scratch\nCOPY app.env /app.env\n"),
        ("app.env", "A=1\n"),
        (".dockerignore", "# secrets stay home\n*.env\n"),
        (
            "config.yaml",
            &format!("global:\n  arch: amd64\n  kaniko:\n    destination: {host}/ignored/app:1\n"),
        ),
    ]);
    let (out, stdout) = bakery(repo.path(), &["build"], &[]);
    assert!(!out.status.success(), "{stdout}");
    let hint = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("hint: "))
        .unwrap_or_else(|| panic!("no hint: {stdout}"));
    assert!(hint.contains("`app.env`"), "{hint}");
    assert!(hint.contains(".dockerignore:2 (`*.env`)"), "{hint}");
}

/// A build that fails before its summary (bad input) still ends its JSON
/// stdout with the `finished` object, saying why.
#[test]
fn json_mode_says_finished_when_the_plan_fails() {
    let repo = project(&[(
        "config.yaml",
        "global:\n  kaniko:\n    destination: r.io/app:1\n",
    )]);
    let (out, stdout) = bakery(repo.path(), &["--log-format", "json", "build"], &[]);
    assert!(!out.status.success());
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let end: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(end["finished"]["ok"], false, "{end}");
    assert!(
        end["finished"]["error"]
            .as_str()
            .unwrap()
            .contains("Dockerfile"),
        "{end}"
    );
}

/// `--progress quiet` (docker buildx's): no build log, the summary only;
/// `--progress plain` is plain lines.
#[test]
fn progress_quiet_prints_the_summary_only() {
    let registry = registry();
    let host = registry.host();
    let repo = project(&[
        ("Dockerfile", "FROM scratch\nCOPY a.txt /a.txt\n"),
        ("a.txt", "a\n"),
        (
            "config.yaml",
            &format!("global:\n  arch: amd64\n  kaniko:\n    destination: {host}/quiet/app:1\n"),
        ),
    ]);
    let run = |mode: &str| {
        let (out, stdout) = bakery(
            repo.path(),
            &["--progress", mode, "build"],
            &[("CLICOLOR_FORCE", "")],
        );
        assert!(out.status.success(), "{mode}: {stdout}");
        stdout
    };
    let quiet = run("quiet");
    assert!(!quiet.contains("app-amd64 |"), "{quiet}");
    assert!(
        quiet.contains("SERVICE  ARCH") && quiet.contains("multi-arch index app:"),
        "{quiet}"
    );
    let plain = run("plain");
    assert!(plain.contains("app-amd64 | "), "{plain}");
    assert!(!plain.contains('\u{1b}'), "no colour: {plain}");
}
