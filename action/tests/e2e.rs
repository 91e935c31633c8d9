//! Whole builds against real components: a Debian docker-registry, buildah,
//! moto_server as S3, and the controller and agent binaries.

mod support;
use support::provenance::image_entries;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

const DOCKERFILE_AMD64: &str = "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nARG TARGETARCH\nCOPY hello.txt /hello.txt\nRUN echo \"built natively for ${TARGETARCH}\" > /built-by-run.txt\n";
const DOCKERFILE_ARM64: &str = "FROM scratch\nCOPY hello.txt /hello.txt\n";

fn hello_project(registry: &Server, base: &str) -> tempfile::TempDir {
    let config = format!(
        "global:\n  kaniko:\n    destination: {}/e2e/hello:1.0\n    build-args:\n      BASE_IMAGE: {base}\nbake:\n  - arch: amd64\n  - arch: arm64\n    kaniko:\n      dockerfile: Dockerfile.arm64\n",
        registry.host()
    );
    project(&[
        ("Dockerfile", DOCKERFILE_AMD64),
        ("Dockerfile.arm64", DOCKERFILE_ARM64),
        ("hello.txt", "hello\n"),
        ("config.yaml", &config),
    ])
}

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

/// Checks the registry holds a two-arch index over the right images.
fn assert_multi_arch(registry: &Server, tag: &str) {
    let index_ref = format!("{}/e2e/hello:{tag}", registry.host());
    let index = raw_manifest(&index_ref);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let manifests = &image_entries(&index);
    let mut platforms: Vec<String> = manifests
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    platforms.sort();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    for m in manifests {
        let arch = m["platform"]["architecture"].as_str().unwrap();
        let by_digest = format!(
            "{}/e2e/hello@{}",
            registry.host(),
            m["digest"].as_str().unwrap()
        );
        assert_eq!(
            image_config(&by_digest)["architecture"],
            arch,
            "config of the {arch} manifest"
        );
        // The per-arch tag points at the digest the index pins.
        let per_arch = raw_manifest(&format!("{}/e2e/hello:{tag}_{arch}", registry.host()));
        assert_eq!(
            per_arch,
            raw_manifest(&by_digest),
            "{arch} tag and pinned digest agree"
        );
    }
    let amd64 = manifests
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .unwrap();
    let amd64_ref = format!(
        "{}/e2e/hello@{}",
        registry.host(),
        amd64["digest"].as_str().unwrap()
    );
    assert_eq!(
        file_in_image(&amd64_ref, "/built-by-run.txt").as_deref(),
        Some("built natively for amd64\n"),
        "the amd64 RUN step ran"
    );
    // Each image has its SLSA provenance beside it, as BuildKit attaches it.
    let statements = support::provenance::provenance_statements(
        &format!("{}/e2e/hello", registry.host()),
        &index,
    );
    for (statement, image) in statements.iter().zip(manifests) {
        let predicate = &statement["predicate"];
        assert_eq!(
            predicate["runDetails"]["builder"]["version"]["builder"], "buildah",
            "{statement}"
        );
        let deps = predicate["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .unwrap();
        assert!(
            deps.iter()
                .any(|d| d["name"] == "context" && d["digest"]["sha256"].is_string()),
            "{statement}"
        );
        let arch = image["platform"]["architecture"].as_str().unwrap();
        assert_eq!(
            predicate["buildDefinition"]["externalParameters"]["platform"],
            format!("linux/{arch}")
        );
        // amd64 is built FROM the base image, resolved by digest (arm64 FROM scratch).
        let base = deps.iter().find(|d| {
            d["uri"]
                .as_str()
                .is_some_and(|u| u.starts_with("pkg:docker/"))
        });
        if arch == "amd64" {
            let base = base.unwrap_or_else(|| panic!("no base in {statement}"));
            assert!(base["digest"]["sha256"].is_string(), "{base}");
        } else {
            assert!(base.is_none(), "{statement}");
        }
    }
}

#[test]
fn embedded_build_pushes_a_multi_arch_index() {
    let registry = registry();
    let base = push_base_image(&registry);
    let repo = hello_project(&registry, &base);
    let data = tempfile::tempdir().unwrap();
    let out = bakery(
        repo.path(),
        &["build"],
        &[("DATA_DIR", data.path().to_str().unwrap())],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    // docker-compose style prefixes, then the summary table.
    assert!(all.contains("hello-amd64 | "), "{all}");
    assert!(all.contains("hello-arm64 | "), "{all}");
    assert!(all.contains("SERVICE  ARCH   STATUS"), "{all}");
    // The platform args bakery passes are not reported as the user's; the
    // user's own are (the arm64 Dockerfile does not use BASE_IMAGE).
    let unused: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("were not consumed"))
        .collect();
    assert!(unused.iter().all(|l| !l.contains("TARGET")), "{unused:?}");
    assert!(
        unused.iter().any(|l| l.contains("[BASE_IMAGE]")),
        "{unused:?}"
    );
    assert!(
        all.contains(&format!(
            "multi-arch index hello: {}/e2e/hello:1.0 → sha256:",
            registry.host()
        )),
        "{all}"
    );
    assert_multi_arch(&registry, "1.0");
    assert!(processes_mentioning(data.path().to_str().unwrap()).is_empty());
}

#[test]
fn s3_contexts_are_uploaded_once_and_read_by_agents() {
    let registry = registry();
    let base = push_base_image(&registry);
    let s3 = s3("contexts");
    let s3_env = [
        ("S3_BUCKET", "contexts"),
        ("S3_ENDPOINT", &*s3.host()),
        ("S3_SSL", "false"),
        ("S3_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];
    let controller = controller(&s3_env);
    let repo = hello_project(&registry, &base);
    let mut env = s3_env.to_vec();
    let url = controller.url();
    env.push(("CONTROLLER_URL", &url));
    let records = tempfile::tempdir().unwrap();
    let records_dir = records.path().display().to_string();
    env.push(("BAKERY_PACK_CACHE", &records_dir));

    // Files written a moment ago are not trusted by their metadata.
    let first = bakery(repo.path(), &["build"], &env);
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("(uploaded)"), "{}", text(&first));
    assert_multi_arch(&registry, "1.0");
    assert_eq!(std::fs::read_dir(records.path()).unwrap().count(), 0);

    // Unchanged context: nothing is sent again; once the files have
    // settled, what it packed to is recorded.
    std::thread::sleep(bakery_pack::SETTLE + std::time::Duration::from_secs(1));
    let second = bakery(repo.path(), &["build"], &env);
    assert!(second.status.success(), "{}", text(&second));
    assert!(!text(&second).contains("(uploaded)"), "{}", text(&second));
    assert!(text(&second).contains("unchanged, not uploaded"));

    // The record: not even packed.
    let third = bakery(repo.path(), &["build"], &env);
    assert!(third.status.success(), "{}", text(&third));
    assert!(
        text(&third).contains("(unchanged by file metadata: neither packed nor uploaded)"),
        "{}",
        text(&third)
    );

    // An edit that keeps the size and puts the mtime back is still seen
    // (ctime), packed and uploaded.
    let file = repo.path().join("hello.txt");
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    std::fs::write(&file, "HELLO\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let fourth = bakery(repo.path(), &["build"], &env);
    assert!(fourth.status.success(), "{}", text(&fourth));
    assert!(text(&fourth).contains("(uploaded)"), "{}", text(&fourth));

    // Credentials from an AWS profile's `credential_process` (aws-vault,
    // granted), not the environment: the client signs with what it prints.
    let aws = tempfile::tempdir().unwrap();
    let called = aws.path().join("called");
    let script = aws.path().join("creds.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch '{}'\necho '{{\"Version\": 1, \"AccessKeyId\": \"test\", \"SecretAccessKey\": \"test\"}}'\n",
            called.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = aws.path().join("config");
    std::fs::write(
        &config,
        format!("[profile ci]\ncredential_process = {}\n", script.display()),
    )
    .unwrap();
    let config = config.display().to_string();
    let no_file = aws.path().join("none").display().to_string();
    let mut profile_env: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .filter(|(k, _)| !k.starts_with("AWS_"))
        .collect();
    profile_env.extend([
        ("AWS_CONFIG_FILE", config.as_str()),
        ("AWS_SHARED_CREDENTIALS_FILE", no_file.as_str()),
        ("AWS_PROFILE", "ci"),
    ]);
    std::fs::write(&file, "HELLO AGAIN\n").unwrap();
    let fifth = bakery(repo.path(), &["build"], &profile_env);
    assert!(fifth.status.success(), "{}", text(&fifth));
    assert!(text(&fifth).contains("(uploaded)"), "{}", text(&fifth));
    assert!(called.exists(), "the profile's credential_process ran");

    let listing = Command::new("curl")
        .args(["-fsS", &format!("{}/contexts?list-type=2", s3.url())])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert_eq!(
        listing.matches("<Key>contexts/sha256-").count(),
        3,
        "one archive, then the two edited ones: {listing}"
    );
}

#[test]
fn failing_dockerfile_fails_the_build_with_the_builders_error() {
    let registry = registry();
    let base = push_base_image(&registry);
    let repo = project(&[
        (
            "Dockerfile",
            "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo compiling && echo 'fatal: missing-dependency-xyz' >&2 && exit 3\n",
        ),
        (
            "config.yaml",
            &format!(
                "global:\n  arch: amd64\n  kaniko:\n    destination: {}/e2e/broken:1\n    build-args: {{BASE_IMAGE: {base}}}\n",
                registry.host()
            ),
        ),
    ]);
    let data = tempfile::tempdir().unwrap();
    let out = bakery(
        repo.path(),
        &["build"],
        &[("DATA_DIR", data.path().to_str().unwrap())],
    );
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("broken-amd64 | fatal: missing-dependency-xyz"),
        "{all}"
    );
    // The summary repeats the failing step's last lines at the end.
    let summary = &all[all.find("SERVICE  ARCH").expect("summary")..];
    assert!(summary.contains("failed"), "{summary}");
    assert!(summary.contains("missing-dependency-xyz"), "{summary}");
    // The failure leads with its Dockerfile line, and is said once in the
    // log and once in the summary (it was three times in each).
    assert!(
        summary.contains("broken-amd64 failed at Dockerfile:3: "),
        "{summary}"
    );
    let log = &all[..all.find("SERVICE  ARCH").unwrap()];
    let said = |text: &str| text.matches("failed (exit code").count();
    assert_eq!(said(log), 1, "{log}");
    assert_eq!(said(summary), 1, "{summary}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("failed in "),
        "a total time line ends the summary: {stdout}"
    );
    assert!(
        processes_mentioning(data.path().to_str().unwrap()).is_empty(),
        "nothing left running"
    );
}

/// A RUN step that prints numbered lines slowly.
fn slow_project(registry: &Server, base: &str, lines: u32, name: &str) -> tempfile::TempDir {
    project(&[
        (
            "Dockerfile",
            &format!(
                "ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nRUN for i in $(seq 1 {lines}); do echo line-$i; sleep 0.02; done; sleep 600\n"
            ),
        ),
        (
            "config.yaml",
            &format!(
                "global:\n  arch: amd64\n  kaniko:\n    destination: {}/e2e/{name}:1\n    build-args: {{BASE_IMAGE: {base}}}\n",
                registry.host()
            ),
        ),
    ])
}

#[test]
fn interrupting_the_client_cancels_the_build_and_stops_agents() {
    interrupt_cancels("INT", false);
}

/// CI systems cancel a job with SIGTERM.
#[test]
fn terminating_the_client_cancels_the_build_and_stops_agents() {
    interrupt_cancels("TERM", false);
}

/// Without CONTROLLER_URL the agents are this process's: none may outlive
/// it (they did, for up to ~10 s, until the embedded controller was shut
/// down on the interrupted path as on the others).
#[test]
fn terminating_the_client_stops_its_embedded_agents_before_it_exits() {
    interrupt_cancels("TERM", true);
}

fn interrupt_cancels(signal: &str, embedded: bool) {
    let registry = registry();
    let base = push_base_image(&registry);
    let controller = controller(&[]);
    let repo = slow_project(&registry, &base, 3, "slow");
    // In a GitHub Actions step: the summary and outputs are written even so.
    let step = tempfile::tempdir().unwrap();
    let (outputs, summary) = (step.path().join("output"), step.path().join("summary"));
    let embedded_data = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_bakery"));
    if embedded {
        command
            .env_remove("CONTROLLER_URL")
            .env("DATA_DIR", embedded_data.path());
    } else {
        command.env("CONTROLLER_URL", controller.url());
    }
    let mut child = command
        .current_dir(repo.path())
        .arg("build")
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_OUTPUT", &outputs)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .env_remove("BAKERY_GITHUB_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !line.contains("line-3") {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the build ended before it ran"
        );
        assert!(Instant::now() < deadline);
    }
    let data = if embedded {
        embedded_data.path().to_path_buf()
    } else {
        controller.dir.path().join("data")
    };
    assert!(
        !processes_mentioning(data.to_str().unwrap()).is_empty(),
        "the agent runs"
    );
    let interrupted = Instant::now();
    nix_kill(child.id(), signal);
    let status = child.wait().unwrap();
    // 128 + the signal, as a shell reports a command it ended.
    let expected = if signal == "INT" { 130 } else { 143 };
    assert_eq!(status.code(), Some(expected), "{status:?}");
    let summary = std::fs::read_to_string(&summary).unwrap_or_default();
    assert!(
        summary.contains("⏹️ cancelled"),
        "the summary says cancelled: {summary}"
    );
    let outputs = std::fs::read_to_string(&outputs).unwrap_or_default();
    assert!(outputs.contains(r#""state":"cancelled""#), "{outputs}");
    if embedded {
        let left = processes_mentioning(data.to_str().unwrap());
        assert!(left.is_empty(), "outlived bakery: {left:?}");
    }
    // Agents gone within 10 s of the interrupt.
    loop {
        let left = processes_mentioning(data.to_str().unwrap());
        if left.is_empty() {
            break;
        }
        assert!(
            interrupted.elapsed() < Duration::from_secs(10),
            "still running: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn nix_kill(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Reads SSE `log` events from a raw HTTP stream until `stop` says so.
fn read_events(
    url: &str,
    last_event_id: Option<u64>,
    mut stop: impl FnMut(u64, &str) -> bool,
) -> (Vec<(u64, String)>, bool) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sN", url]);
    if let Some(id) = last_event_id {
        cmd.args(["-H", &format!("Last-Event-ID: {id}")]);
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let reader = BufReader::new(child.stdout.take().unwrap());
    let (mut events, mut event, mut id, mut ended) = (Vec::new(), String::new(), 0u64, false);
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().unwrap();
        } else if let Some(v) = line.strip_prefix("data:") {
            if event == "log" {
                let data: serde_json::Value = serde_json::from_str(v.trim()).unwrap();
                let text = data["line"].as_str().unwrap().to_string();
                assert_eq!(data["seq"].as_u64(), Some(id));
                events.push((id, text.clone()));
                if stop(id, &text) {
                    break;
                }
            } else if event == "end" {
                ended = true;
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    (events, ended)
}

#[test]
fn a_follower_that_reconnects_gets_every_line_once() {
    let registry = registry();
    let base = push_base_image(&registry);
    let controller = controller(&[]);
    let repo = slow_project(&registry, &base, 120, "chatty");
    let id = submit_detached(repo.path(), &controller.url());
    let logs = format!("{}/v1/builds/{id}/logs", controller.url());

    // First connection: drop it in the middle of the RUN output.
    let (first, _) = read_events(&logs, None, |_, line| line == "line-40");
    let last = first.last().unwrap().0;
    // Second connection resumes after the last line seen, until line-120.
    let (second, _) = read_events(&logs, Some(last), |_, line| line == "line-120");
    let mut seen: Vec<(u64, String)> = first.into_iter().chain(second).collect();
    let seqs: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    seen.retain(|(_, l)| l.starts_with("line-"));
    let numbers: Vec<String> = seen.iter().map(|(_, l)| l.clone()).collect();
    assert_eq!(
        numbers,
        (1..=120).map(|i| format!("line-{i}")).collect::<Vec<_>>()
    );

    // A second follower from the start sees the same lines: followers do not share a channel.
    let (again, _) = read_events(&logs, None, |_, line| line == "line-120");
    assert_eq!(again.len() as u64, seqs.len() as u64);

    let cancel = Command::new("curl")
        .args([
            "-fsS",
            "-X",
            "POST",
            &format!("{}/v1/builds/{id}/cancel", controller.url()),
        ])
        .output()
        .unwrap();
    assert!(cancel.status.success());
    let (_, ended) = read_events(&logs, Some(u64::MAX), |_, _| false);
    assert!(ended, "the stream ends with the build");
}

/// Whether some line carries the `docker compose`-style prefix of `label`.
fn has_prefixed(output: &str, label: &str) -> bool {
    output.lines().any(|l| {
        l.split_once(" | ")
            .is_some_and(|(prefix, _)| prefix.trim_end() == label)
    })
}

#[test]
fn sequential_builds_stop_at_the_first_failure() {
    let registry = registry();
    let repo = two_services(&registry, "e2e");
    let out = bakery(repo.path(), &["--compose", "compose.yaml", "build"], &[]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(has_prefixed(&all, "bad-amd64"), "{all}");
    assert!(
        !has_prefixed(&all, "good-amd64"),
        "good never started: {all}"
    );
    assert!(all.contains("good     -      skipped"), "{all}");
}

#[test]
fn async_builds_everything_at_once_and_reports_failures_together() {
    let registry = registry();
    let repo = two_services(&registry, "e2e");
    let out = bakery(
        repo.path(),
        &["--compose", "compose.yaml", "--async", "build"],
        &[],
    );
    let all = text(&out);
    assert!(!out.status.success(), "one service failed: {all}");
    assert!(has_prefixed(&all, "good-arm64"), "{all}");
    assert!(all.contains("bad-amd64 failed"), "{all}");
    assert!(all.contains("multi-arch index good: "), "{all}");
    let index = raw_manifest(&format!("{}/e2e/good:1", registry.host()));
    assert_eq!(
        image_entries(&index).len(),
        2,
        "the good service still pushed its index"
    );
}

#[test]
fn detached_builds_are_followed_later_with_status_and_logs() {
    let registry = registry();
    let controller = controller(&[]);
    let repo = two_services(&registry, "e2e");
    let url = controller.url();
    let env = [("CONTROLLER_URL", url.as_str())];
    let out = bakery(
        repo.path(),
        &[
            "--compose",
            "compose.yaml",
            "--services",
            "good",
            "build",
            "--detach",
        ],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (service, id) = stdout.trim().split_once('\t').expect("service<TAB>id");
    assert_eq!(service, "good");

    let logs = bakery(repo.path(), &["logs", id], &env);
    assert!(logs.status.success(), "{}", text(&logs));
    assert!(
        text(&logs)
            .lines()
            .any(|l| l.starts_with("good-arm64") && l.contains(" | pushed")),
        "{}",
        text(&logs)
    );

    let status = bakery(repo.path(), &["status", id, "--json"], &env);
    assert!(status.status.success(), "{}", text(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["state"], "succeeded");
    assert!(status["index_digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));

    // In words, the summary's: `pushed`, not the enum's `Succeeded`.
    let words = bakery(repo.path(), &["status", id], &env);
    let words = String::from_utf8_lossy(&words.stdout).into_owned();
    assert!(
        words.lines().next().unwrap().ends_with(" pushed"),
        "{words}"
    );
    assert!(words.contains("  amd64 pushed sha256:"), "{words}");
    assert!(!words.contains("Succeeded"), "{words}");

    let unknown = bakery(repo.path(), &["status", "b000000000000"], &env);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("no build `b000000000000`"),
        "{}",
        text(&unknown)
    );
}

#[test]
fn github_actions_gets_groups_annotations_outputs_and_a_summary() {
    let registry = registry();
    let repo = two_services(&registry, "e2e");
    let ci = tempfile::tempdir().unwrap();
    let (output, summary) = (ci.path().join("output"), ci.path().join("summary"));
    let out = bakery(
        repo.path(),
        &["--compose", "compose.yaml", "--async", "build"],
        &[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_OUTPUT", output.to_str().unwrap()),
            ("GITHUB_STEP_SUMMARY", summary.to_str().unwrap()),
            ("GITHUB_WORKSPACE", repo.path().to_str().unwrap()),
        ],
    );
    let all = text(&out);
    assert!(!out.status.success());
    // One block per task however the arches' lines interleave (a block per
    // change of arch gave 23 for one two-arch build), each closed, and every
    // task line inside its own task's block.
    for label in ["bad-amd64", "good-amd64", "good-arm64"] {
        assert_eq!(
            all.matches(&format!("::group::{label}\n")).count(),
            1,
            "{label}: {all}"
        );
    }
    assert_eq!(all.matches("::group::").count(), 3, "{all}");
    assert_eq!(all.matches("::endgroup::").count(), 3, "{all}");
    let mut open = None;
    for line in all.lines() {
        if let Some(label) = line.strip_prefix("::group::") {
            open = Some(label.to_string());
        } else if line == "::endgroup::" {
            open = None;
        } else if let Some((task, _)) = line.split_once(" | ") {
            assert_eq!(open.as_deref(), Some(task.trim()), "{line}");
        }
    }
    assert!(!all.contains("\x1b["), "no colour codes without a TTY");
    // The buildah error names the step; the annotation points at its line.
    assert!(
        all.contains("::error file=bad/Dockerfile,line=2,title=bad (amd64) build failed::buildah build failed"),
        "{all}"
    );
    // The summary table comes after the last group, so it is not folded away.
    let last_end = all.rfind("::endgroup::").unwrap();
    assert!(all.find("SERVICE  ARCH").unwrap() > last_end, "{all}");

    let outputs = std::fs::read_to_string(&output).unwrap();
    let get = |k: &str| {
        outputs
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_string()
    };
    let metadata: serde_json::Value = serde_json::from_str(&get("metadata")).unwrap();
    let good_digest = metadata["good"]["containerimage.digest"].as_str().unwrap();
    assert!(good_digest.starts_with("sha256:"));
    assert_eq!(
        get("digest"),
        good_digest,
        "bad pushed no index, so the digest is good's"
    );
    assert_eq!(
        get("images"),
        format!("{}/e2e/good:1@{good_digest}", registry.host())
    );
    // build-push-action's shape at the top level, for the first image.
    assert_eq!(get("imageid"), good_digest);
    assert_eq!(metadata["containerimage.digest"], good_digest);
    assert_eq!(
        metadata["image.name"],
        format!("{}/e2e/good:1", registry.host())
    );
    assert_eq!(metadata["bad"]["state"], "failed");
    assert!(metadata["good"]["arches"]["arm64"]["containerimage.digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));

    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(md.contains("| good | amd64 | ✅ pushed |"), "{md}");
    assert!(md.contains("| bad | amd64 | ❌ failed |"), "{md}");
    assert!(
        md.contains(&format!(
            "- **good**: `{}/e2e/good:1@{good_digest}`",
            registry.host()
        )),
        "{md}"
    );
    assert!(md.contains("<details><summary><b>bad-amd64</b>"), "{md}");
    assert!(
        md.contains("COPY no-such-file.txt /"),
        "the failing log excerpt: {md}"
    );
}

#[test]
fn gitlab_ci_gets_sections_and_a_dotenv_report() {
    let registry = registry();
    let repo = two_services(&registry, "e2e");
    let dotenv = repo.path().join("build.env");
    let out = bakery(
        repo.path(),
        &["--compose", "compose.yaml", "--services", "good", "build"],
        &[
            ("GITLAB_CI", "true"),
            ("BAKERY_DOTENV", dotenv.to_str().unwrap()),
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("section_start:") && all.contains(":bakery_good-amd64_"),
        "{all}"
    );
    assert!(all.contains("[collapsed=true]"), "{all}");
    assert_eq!(
        all.matches("section_start:").count(),
        all.matches("section_end:").count(),
        "{all}"
    );
    let report = std::fs::read_to_string(&dotenv).unwrap();
    let digest = report
        .lines()
        .find_map(|l| l.strip_prefix("BAKERY_GOOD_DIGEST="))
        .expect("index digest");
    assert!(digest.starts_with("sha256:"));
    assert!(report.contains(&format!(
        "BAKERY_GOOD_IMAGE={}/e2e/good:1@{digest}",
        registry.host()
    )));
    // The generic pair, for a job that builds one image.
    assert!(
        report.contains(&format!("BAKERY_DIGEST={digest}\n")),
        "{report}"
    );
    assert!(report.contains(&format!(
        "BAKERY_IMAGE={}/e2e/good:1@{digest}\n",
        registry.host()
    )));
    assert!(report
        .lines()
        .any(|l| l.starts_with("BAKERY_GOOD_AMD64_DIGEST=sha256:")));
    assert!(report
        .lines()
        .any(|l| l.starts_with("BAKERY_GOOD_ARM64_DIGEST=sha256:")));
}

#[test]
fn flags_build_like_buildx_and_tag_the_index_twice() {
    let registry = registry();
    let repo = project(&[
        ("Dockerfile.copy", "FROM scratch\nCOPY hello.txt /\n"),
        ("hello.txt", "hi\n"),
    ]);
    let (one, two) = (
        format!("{}/e2e/flags:1.0", registry.host()),
        format!("{}/e2e/flags:latest", registry.host()),
    );
    let out = bakery(
        repo.path(),
        &[
            "--tag",
            &one,
            "--tag",
            &two,
            "--platform",
            "linux/amd64,linux/arm64",
            "--file",
            "Dockerfile.copy",
            "build",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let a = raw_manifest(&one);
    assert_eq!(image_entries(&a).len(), 2);
    assert_eq!(a, raw_manifest(&two), "both tags name the same index");
}

/// `--file` from the workspace, outside `--context` (build-push-action and
/// compose allow it): the Dockerfile travels beside the context and is
/// taken out of it before the build, so `COPY . .` does not copy it.
#[test]
fn a_dockerfile_outside_the_context_builds_and_stays_out_of_the_image() {
    let registry = registry();
    let repo = project(&[
        (
            "docker/app.Dockerfile",
            "FROM scratch\nCOPY . /ctx/\n# marker-of-the-outside-dockerfile\n",
        ),
        ("app/hello.txt", "hi\n"),
    ]);
    let tag = format!("{}/e2e/outside:1", registry.host());
    let out = bakery(
        repo.path(),
        &[
            "--tag",
            &tag,
            "--platform",
            "linux/amd64,linux/arm64",
            "--context",
            "app",
            "--file",
            "docker/app.Dockerfile",
            "build",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(image_entries(&raw_manifest(&tag)).len(), 2);
    assert_eq!(
        file_in_image(&tag, "ctx/hello.txt").as_deref(),
        Some("hi\n")
    );
    assert!(
        !image_holds(&tag, "marker-of-the-outside-dockerfile"),
        "the Dockerfile is not in the image"
    );
}

/// `--push=false` (the action's `push: false`, for pull requests from
/// forks) builds every arch and pushes nothing: no arch image, no index.
#[test]
fn push_false_builds_every_arch_and_pushes_nothing() {
    let registry = registry();
    let repo = project(&[
        ("Dockerfile.copy", "FROM scratch\nCOPY hello.txt /\n"),
        ("hello.txt", "hi\n"),
    ]);
    let tag = format!("{}/e2e/nopush:1", registry.host());
    let out = bakery(
        repo.path(),
        &[
            "--tag",
            &tag,
            "--platform",
            "linux/amd64,linux/arm64",
            "--file",
            "Dockerfile.copy",
            "build",
        ],
        &[("BAKERY_PUSH", "false")],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("nopush-amd64") && all.contains("nopush-arm64"),
        "both arches built: {all}"
    );
    let catalog = Command::new("curl")
        .args(["-fsS", &format!("{}/v2/_catalog", registry.url())])
        .output()
        .unwrap();
    let catalog = String::from_utf8_lossy(&catalog.stdout);
    assert!(catalog.contains("repositories"), "{catalog}");
    assert!(!catalog.contains("nopush"), "nothing pushed: {catalog}");
}

/// A failing RUN with quotes in it, continued over two lines, is annotated
/// at its first line (the step's text in buildah's error holds quotes, and
/// the regex that read it stopped at the first one); a plan error at its
/// file and line.
#[test]
fn failures_are_annotated_at_their_dockerfile_and_config_lines() {
    let registry = registry();
    let base = push_base_image(&registry);
    let repo = project(&[(
        "Dockerfile",
        &format!("FROM {base}\n\nRUN echo \"about to fail\" && \\\n    exit 3\n"),
    )]);
    let tag = format!("{}/e2e/annotated:1", registry.host());
    let github = [
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_WORKSPACE", repo.path().to_str().unwrap()),
    ];
    let out = bakery(repo.path(), &["--tag", &tag, "build"], &github);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("::error file=Dockerfile,line=3,title=annotated (amd64) build failed::"),
        "{all}"
    );
    std::fs::write(
        repo.path().join("config.yaml"),
        "global:\n  kaniko:\n    destnation: r.io/x:1\n",
    )
    .unwrap();
    let out = bakery(repo.path(), &["build"], &github);
    let all = text(&out);
    assert!(!out.status.success());
    assert!(
        all.contains(
            "::error file=config.yaml,line=3,col=5,title=bakery%3A invalid build configuration::unknown key `destnation`"
        ),
        "{all}"
    );
}

#[test]
fn the_client_presents_the_controller_token() {
    let registry = registry();
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), "a-long-controller-token-0123456789\n").unwrap();
    let controller = controller(&[("CONTROLLER_TOKEN_FILE", token_file.path().to_str().unwrap())]);
    let repo = project(&[("Dockerfile", "FROM scratch\nCOPY Dockerfile /\n")]);
    let tag = format!("{}/e2e/auth:1", registry.host());
    let url = controller.url();
    let without = bakery(
        repo.path(),
        &["--tag", &tag, "build"],
        &[("CONTROLLER_URL", &url)],
    );
    assert!(!without.status.success());
    assert!(
        text(&without).contains("set CONTROLLER_TOKEN"),
        "{}",
        text(&without)
    );
    let with = bakery(
        repo.path(),
        &["--tag", &tag, "build"],
        &[
            ("CONTROLLER_URL", &url),
            ("CONTROLLER_TOKEN", "a-long-controller-token-0123456789"),
        ],
    );
    assert!(with.status.success(), "{}", text(&with));
    assert!(
        !text(&with).contains("a-long-controller-token"),
        "the token is never printed"
    );
}

/// A registry password used by a build, echoed by its pre-script and by a
/// RUN step, appears nowhere: not in the client's output, the API's answers,
/// the log stream, nor the controller's own log.
#[test]
fn secrets_appear_in_no_output_of_a_whole_build() {
    const SECRET: &str = "s3cr3t-Registry-Passw0rd";
    let registry = registry();
    let base = push_base_image(&registry);
    let controller = controller(&[]);
    let repo = project(&[
        ("Dockerfile", "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nARG PW\nRUN echo \"the password is $PW\"\n"),
        (
            "config.yaml",
            &format!(
                "global:\n  arch: amd64\n  pre-script: echo \"pre-script sees {SECRET}\"\n  kaniko-credentials:\n    - {{registry: {r}, username: ci, password: {SECRET}}}\n  kaniko:\n    destination: {r}/e2e/secret:1\n    build-args: {{BASE_IMAGE: {base}, PW: {SECRET}}}\n",
                r = registry.host()
            ),
        ),
    ]);
    let url = controller.url();
    let out = bakery(repo.path(), &["build"], &[("CONTROLLER_URL", &url)]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("pre-script sees ***"),
        "the line is there, masked: {all}"
    );
    assert!(all.contains("the password is ***"), "{all}");

    let plan = bakery(repo.path(), &["plan", "--json"], &[]);
    let mut everything = format!("{all}{}", text(&plan));
    // The controller's own log.
    for entry in std::fs::read_dir(controller.dir.path()).unwrap().flatten() {
        if entry.path().is_file() {
            everything.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    assert!(
        everything.contains("controller listening"),
        "the controller log was read"
    );
    assert!(
        !everything.contains(SECRET),
        "a secret leaked:\n{everything}"
    );
}

/// An agent killed mid-build (OOM killer, node loss) fails its build within
/// seconds, with the reason, not after BUILD_RESULT_TIMEOUT.
#[test]
fn a_killed_agent_fails_the_build_within_seconds() {
    killed_agent(&[]);
}

/// Without the sandbox's PID namespace, what the agent's builder started
/// (in process groups of their own) is found from the list the agent keeps
/// beside its work dir, and ended with it.
#[test]
fn a_killed_unsandboxed_agent_leaves_no_builder_behind() {
    killed_agent(&[("LOCAL_AGENT_ISOLATION", "none")]);
}

fn killed_agent(env: &[(&str, &str)]) {
    let registry = registry();
    let base = push_base_image(&registry);
    let controller = controller(env);
    let repo = slow_project(&registry, &base, 3, "killed");
    let id = submit_detached(repo.path(), &controller.url());
    let data = controller.dir.path().join("data");
    // Wait until the RUN step runs (its `sleep 600` is up), then kill the agent process itself.
    let status_url = format!("{}/v1/builds/{id}", controller.url());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The log stream stays open while the build runs: read what is there for a second.
        let log = Command::new("curl")
            .args([
                "-sN",
                "--max-time",
                "1",
                &format!("{}/v1/builds/{id}/logs", controller.url()),
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&log.stdout).contains("line-3") {
            break;
        }
        assert!(Instant::now() < deadline, "the RUN step never started");
    }
    let pids = Command::new("pgrep")
        .args(["-f", "bakery-agent"])
        .output()
        .unwrap();
    let mine: Vec<String> = String::from_utf8_lossy(&pids.stdout)
        .lines()
        .filter(|pid| {
            // The agent itself, not the namespace tools that start it.
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            exe.file_name().is_some_and(|n| n == "bakery-agent")
                && std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                    String::from_utf8_lossy(&env).contains(&format!("BAKERY_TASK_ID={id}-amd64"))
                })
        })
        .map(String::from)
        .collect();
    assert_eq!(mine.len(), 1, "exactly this build's agent");
    let killed = Instant::now();
    assert!(Command::new("kill")
        .args(["-9", &mine[0]])
        .status()
        .unwrap()
        .success());
    loop {
        let s = Command::new("curl")
            .args(["-fsS", &status_url])
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap();
        if status["state"] == "failed" {
            let error = status["error"].as_str().unwrap();
            // In its namespaces the agent is the child of util-linux's
            // `unshare --fork`, which cannot re-raise a SIGKILL on itself
            // and exits 1 instead.
            assert!(
                error.contains("agent was killed by signal 9 before reporting a result")
                    || error.contains("agent exited with code 1 before reporting a result"),
                "{error}"
            );
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "not failed within seconds: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its builder (same process group) is gone too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(data.to_str().unwrap()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left running: {:?}",
            processes_mentioning(data.to_str().unwrap())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The controller crashes (SIGKILL) in the middle of a RUN step and a new one
/// starts on the same DATA_DIR: the build carries on to a pushed image, the
/// following client prints every line exactly once, and the stored log has
/// no gap and no duplicate.
#[test]
fn a_controller_restart_mid_build_loses_nothing() {
    let registry = registry();
    let base = push_base_image(&registry);
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_string();
    let env = [("DATA_DIR", data_dir.as_str())];
    let mut first = controller_on(port, &env);
    let lines = 150;
    let repo = project(&[
        (
            "Dockerfile",
            &format!(
                "ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nRUN for i in $(seq 1 {lines}); do echo line-$i; sleep 0.04; done\n"
            ),
        ),
        (
            "config.yaml",
            &format!(
                "global:\n  arch: amd64\n  kaniko:\n    destination: {}/e2e/restart:1\n    build-args: {{BASE_IMAGE: {base}}}\n",
                registry.host()
            ),
        ),
    ]);
    let mut client = Command::new(env!("CARGO_BIN_EXE_bakery"))
        .current_dir(repo.path())
        .arg("build")
        .env("CONTROLLER_URL", first.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(client.stdout.take().unwrap());
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !printed.iter().any(|l: &String| l.ends_with("line-20")) {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the build ended early"
        );
        printed.push(line.trim_end().to_string());
        assert!(Instant::now() < deadline, "the RUN step never started");
    }
    // Crash: no graceful anything.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let second = controller_on(port, &env);

    for line in stdout.lines() {
        printed.push(line.unwrap());
    }
    let status = client.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut client.stderr.take().unwrap(), &mut stderr).unwrap();
    let output = printed.join("\n");
    assert!(status.success(), "{output}\n{stderr}");
    for i in 1..=lines {
        let n = printed
            .iter()
            .filter(|l| l.ends_with(&format!(" line-{i}")) || **l == format!("line-{i}"))
            .count();
        assert_eq!(n, 1, "line-{i} printed {n} times:\n{output}");
    }
    // The stored log, from the start: seqs 1..n, each RUN line once.
    let logs = format!(
        "{}/v1/builds/{}/logs",
        second.url(),
        only_build_id(&data_dir)
    );
    let (events, ended) = read_events(&logs, None, |_, _| false);
    assert!(ended);
    let seqs: Vec<u64> = events.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let run_lines: Vec<&String> = events
        .iter()
        .map(|(_, l)| l)
        .filter(|l| l.starts_with("line-"))
        .collect();
    assert_eq!(run_lines.len(), lines as usize);
    assert!(events
        .iter()
        .any(|(_, l)| l.contains("the controller restarted")));
    let index = raw_manifest(&format!("{}/e2e/restart:1", registry.host()));
    assert_eq!(image_entries(&index).len(), 1);
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&data_dir).is_empty() {
        assert!(Instant::now() < deadline, "left running");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The id of the one build run under `data_dir`, from its agent's log file
/// (`work/<build>-<arch>.log`).
fn only_build_id(data_dir: &str) -> String {
    let work = std::path::Path::new(data_dir).join("work");
    let names: Vec<String> = std::fs::read_dir(&work)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix("-amd64.log").map(String::from))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    names[0].clone()
}

/// `--cache` keeps RUN layers in a per-arch registry cache, so the next
/// build on a fresh agent (its own empty storage) reuses them: the RUN step's
/// output is byte for byte the first build's, although it records the time.
/// The RUN follows an ARG in a build stage, as a compile step often does:
/// buildah 1.28 does not look an ARG step up in the cache repository, and
/// every step after it ran again until the agent fetched it beforehand.
#[test]
fn the_layer_cache_carries_run_steps_to_a_fresh_agent() {
    let registry = registry();
    let base = push_base_image(&registry);
    let repo = project(&[
        (
            "Dockerfile",
            "ARG BASE_IMAGE\nFROM ${BASE_IMAGE} AS build\nARG GREETING=hi\n\
             RUN date +%s%N > /ran-at.txt && echo \"$GREETING\" >> /ran-at.txt\n\
             FROM ${BASE_IMAGE}\nCOPY --from=build /ran-at.txt /ran-at.txt\nCOPY late.txt /late.txt\n",
        ),
        ("late.txt", "one\n"),
    ]);
    let tag = format!("{}/e2e/cached:1", registry.host());
    let build = || {
        let out = bakery(
            repo.path(),
            &[
                "--tag",
                &tag,
                "--platform",
                "linux/amd64",
                "--build-arg",
                &format!("BASE_IMAGE={base}"),
                "--cache",
                "build",
            ],
            &[],
        );
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        all
    };
    let cold = build();
    assert!(!cold.contains("Using cache"), "{cold}");
    let first = file_in_image(&tag, "/ran-at.txt").unwrap();
    // The cache went to the derived amd64 repository, and only there.
    let tags = |repository: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                &format!("{}/v2/{repository}/tags/list", registry.url()),
            ])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let cached = tags("e2e/cached-cache-amd64");
    assert!(
        !cached["tags"].as_array().unwrap().is_empty(),
        "cache layers pushed: {cached}"
    );
    let arm64 = tags("e2e/cached-cache-arm64");
    assert!(
        arm64["tags"].is_null(),
        "no arm64 cache from an amd64 build: {arm64}"
    );

    let hint = tags("e2e/cached-cache-amd64");
    assert!(
        hint["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "bakery-arg-steps"),
        "the ARG step's key is kept for the next build: {hint}"
    );

    std::fs::write(repo.path().join("late.txt"), "two\n").unwrap();
    let warm = build();
    assert!(warm.contains("Using cache"), "{warm}");
    assert!(
        warm.contains("layer cache: 1 of 1 ARG steps fetched"),
        "{warm}"
    );
    assert_eq!(
        file_in_image(&tag, "/ran-at.txt").unwrap(),
        first,
        "the RUN layer came from the cache"
    );
    assert_eq!(
        file_in_image(&tag, "/late.txt").as_deref(),
        Some("two\n"),
        "the changed COPY ran again"
    );
}

/// `kaniko.compression: zstd` reaches the builder: the layers the build
/// adds are pushed as zstd, and the index over them is written as usual.
#[test]
fn zstd_compression_pushes_zstd_layers() {
    let registry = registry();
    let base = push_base_image(&registry);
    let config = format!(
        "global:\n  kaniko:\n    destination: {}/e2e/zstd:1\n    compression: zstd\n    build-args:\n      BASE_IMAGE: {base}\nbake:\n  - arch: amd64\n",
        registry.host()
    );
    let repo = project(&[
        ("Dockerfile", DOCKERFILE_AMD64),
        ("hello.txt", "hello\n"),
        ("config.yaml", &config),
    ]);
    let out = bakery(repo.path(), &["build"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let index = raw_manifest(&format!("{}/e2e/zstd:1", registry.host()));
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest = raw_manifest(&format!("{}/e2e/zstd@{digest}", registry.host()));
    let types: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    // The base image's layers are reused as the registry has them; the
    // layers this build adds are zstd.
    let base_layers = raw_manifest(&base)["layers"].as_array().unwrap().len();
    let (reused, added) = types.split_at(base_layers);
    assert!(!added.is_empty(), "{types:?}");
    assert!(
        added
            .iter()
            .all(|t| *t == "application/vnd.oci.image.layer.v1.tar+zstd"),
        "{types:?}"
    );
    assert!(reused.iter().all(|t| t.ends_with("+gzip")), "{types:?}");
}

/// The controller dies for good mid-build: its agent gives up at its own
/// deadline (BAKERY_DEADLINE: the task and result timeouts together) and
/// takes its builder with it, instead of building (and, on ECS, billing)
/// until the RUN step ends by itself.
#[test]
fn an_agent_whose_controller_is_gone_stops_at_its_deadline() {
    let registry = registry();
    let base = push_base_image(&registry);
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_string();
    let env = [
        ("DATA_DIR", data_dir.as_str()),
        ("BUILD_TASK_TIMEOUT", "5s"),
        ("BUILD_RESULT_TIMEOUT", "5s"),
    ];
    let mut controller = controller_on(free_port(), &env);
    let repo = slow_project(&registry, &base, 5, "deadline");
    let mut client = Command::new(env!("CARGO_BIN_EXE_bakery"))
        .current_dir(repo.path())
        .arg("build")
        .env("CONTROLLER_URL", controller.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(client.stdout.take().unwrap());
    let started = Instant::now();
    loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the build ended early"
        );
        if line.contains("line-5") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the RUN step never started"
        );
    }
    controller.child.kill().unwrap();
    controller.child.wait().unwrap();
    let _ = client.kill();
    let _ = client.wait();
    assert!(
        !processes_mentioning(&data_dir).is_empty(),
        "the agent outlives its controller (the case under test)"
    );
    // Deadline 10 s from the agent's start, which was seconds ago.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_mentioning(&data_dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left running past the deadline: {:?}",
            processes_mentioning(&data_dir)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// On a terminal (a pseudo-terminal from `script`) the arch prefixes are
/// coloured; `NO_COLOR` turns that off, and `CLICOLOR_FORCE` forces it
/// without a terminal (no-color.org, bixense.com/clicolors).
#[test]
fn no_color_and_clicolor_force_are_honoured() {
    let registry = registry();
    let repo = project(&[
        ("Dockerfile", "FROM scratch\nCOPY hello.txt /\n"),
        ("hello.txt", "hi\n"),
    ]);
    let tag = format!("{}/e2e/colour:1", registry.host());
    let command = format!("{} --tag {tag} build", env!("CARGO_BIN_EXE_bakery"));
    let on_a_terminal = |env: &[(&str, &str)]| {
        let out = Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .current_dir(repo.path())
            .env_remove("CONTROLLER_URL")
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = on_a_terminal(&[]);
    assert!(
        coloured.contains("\x1b["),
        "a terminal gets colour: {coloured}"
    );
    let plain = on_a_terminal(&[("NO_COLOR", "1")]);
    assert!(plain.contains("colour-amd64"), "{plain}");
    assert!(!plain.contains("\x1b["), "NO_COLOR: {plain:?}");
    let forced = bakery(
        repo.path(),
        &["--tag", &tag, "build"],
        &[("CLICOLOR_FORCE", "1")],
    );
    assert!(forced.status.success());
    assert!(
        String::from_utf8_lossy(&forced.stdout).contains("\x1b["),
        "CLICOLOR_FORCE"
    );
}
