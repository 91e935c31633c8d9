//! What a build, or someone without a token, can see or cost: the
//! controller's environment never reaches a build, a build arg's value is
//! on no process's command line, an unauthenticated request costs no
//! memory, and an unprotected controller says so at start-up.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn bakery(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bakery"))
        .current_dir(dir)
        .args(args)
        .env_remove("CONTROLLER_URL")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A COPY-only project whose pre-script prints its environment.
fn env_printing_project(registry: &Server, name: &str) -> tempfile::TempDir {
    project(&[
        ("Dockerfile", "FROM scratch\nCOPY hello.txt /\n"),
        ("hello.txt", "hi\n"),
        (
            "config.yaml",
            &format!(
                "global:\n  arch: amd64\n  pre-script: env\n  env:\n    FROM_THE_CONFIG: yes-please\n  kaniko:\n    destination: {}/exposure/{name}:1\n",
                registry.host()
            ),
        ),
    ])
}

/// `pre-script: env` on a controller whose environment holds its token and
/// cloud credentials (it printed both), and on the embedded controller
/// inside a CI job's environment.
#[test]
fn a_pre_script_sees_none_of_the_controllers_environment() {
    const TOKEN: &str = "controller-token-0123456789abcdef";
    const AWS: &str = "controller-aws-secret-key-xyz";
    let registry = registry();
    let controller = controller(&[("CONTROLLER_TOKEN", TOKEN), ("AWS_SECRET_ACCESS_KEY", AWS)]);
    let repo = env_printing_project(&registry, "remote");
    let url = controller.url();
    let out = bakery(
        repo.path(),
        &["build"],
        &[("CONTROLLER_URL", &url), ("CONTROLLER_TOKEN", TOKEN)],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("PATH="),
        "the pre-script printed its environment: {all}"
    );
    assert!(all.contains("FROM_THE_CONFIG=yes-please"), "{all}");
    // What the script is told about its build, as a Dockerfile is.
    for told in [
        "BAKERY_ARCH=amd64",
        "TARGETARCH=amd64",
        "TARGETOS=linux",
        "TARGETPLATFORM=linux/amd64",
        "BAKERY_SERVICE=remote",
        "BAKERY_BUILD_ID=",
    ] {
        assert!(all.contains(told), "{told}: {all}");
    }
    for leaked in [TOKEN, AWS, "AWS_SECRET_ACCESS_KEY", "BAKERY_TASK_TOKEN"] {
        assert!(!all.contains(leaked), "{leaked} reached the build:\n{all}");
    }

    // The embedded controller runs inside the CI job: the job's tokens.
    const JOB: &str = "ghs_the-ci-jobs-own-token";
    let repo = env_printing_project(&registry, "embedded");
    let out = bakery(
        repo.path(),
        &["build"],
        &[("GITHUB_TOKEN", JOB), ("CI_JOB_TOKEN", JOB)],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("PATH="), "{all}");
    assert!(
        !all.contains(JOB),
        "the job's token reached the build:\n{all}"
    );
}

/// A build arg's value is on no process's command line (visible to every
/// user in `ps`) while the build runs, and only the builder itself has it
/// in its environment. The plan warns that such an arg ends up in the
/// image's history.
#[test]
fn build_arg_values_are_on_no_command_line() {
    const VALUE: &str = "db-password-in-a-build-arg-42";
    let registry = registry();
    let base = push_base_image(&registry);
    let repo = project(&[
        ("Dockerfile", "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN sleep 3\n"),
        (
            "config.yaml",
            &format!(
                "global:\n  arch: amd64\n  kaniko:\n    destination: {}/exposure/argv:1\n    build-args:\n      BASE_IMAGE: {base}\n      DB_PASSWORD: {VALUE}\n",
                registry.host()
            ),
        ),
    ]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_bakery"))
        .current_dir(repo.path())
        .arg("build")
        .env_remove("CONTROLLER_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut saw_builder, mut holders) = (false, std::collections::BTreeSet::new());
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the build hangs"
        );
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            assert!(!cmdline.contains(VALUE), "on a command line: {cmdline}");
            saw_builder |= cmdline.contains("--build-arg=DB_PASSWORD");
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            if environ.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()) {
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                holders.insert(comm.trim().to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        saw_builder,
        "the builder was seen running (the check looked)"
    );
    // buildah, and what buildah re-executes of itself for a RUN step.
    assert!(
        holders.iter().all(|c| c == "buildah" || c == "exe"),
        "who had the value: {holders:?}"
    );
    assert!(
        all.contains("build arg `DB_PASSWORD` of `argv` looks like a secret"),
        "{all}"
    );
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A gigabyte posted to an agent route without a token: refused before it
/// is read, and the controller's peak memory does not move.
#[test]
fn an_unauthenticated_gigabyte_costs_the_controller_nothing() {
    let controller = controller(&[]);
    let pid = controller.child.id();
    let before = rss_kb(pid, "VmHWM:");
    let started = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 1073741824 /dev/zero | curl -s -o /dev/null -w '%{{http_code}}' -X POST \
             -H 'content-type: application/json' -T - {}/v1/agent/tasks/nobody-amd64/logs",
            controller.url()
        ))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(code, "401", "refused without a token");
    let after = rss_kb(pid, "VmHWM:");
    assert!(
        after < before + 50 * 1024,
        "peak RSS went from {before} kB to {after} kB"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// Listening beyond loopback with no token: anyone can build. Said at start.
#[test]
fn an_open_controller_beyond_loopback_warns_at_start_up() {
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let open = controller_on(port, &[("LISTEN_ADDR", &listen)]);
    let log = std::fs::read_to_string(open.dir.path().join("controller.log")).unwrap();
    assert!(log.contains("no CONTROLLER_TOKEN"), "{log}");
    let closed = controller(&[]);
    let log = std::fs::read_to_string(closed.dir.path().join("controller.log")).unwrap();
    assert!(
        !log.contains("no CONTROLLER_TOKEN"),
        "loopback needs no warning: {log}"
    );
}
