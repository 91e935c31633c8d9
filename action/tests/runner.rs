//! The composite action as a GitHub runner runs it (support/runner.rs): the
//! release it installs served over loopback (the real client, packed as the
//! release workflow packs it), a real controller with buildah agents and
//! real registries. Pinned by SHA, at `@v0`, `uses: ./`, `push: false`,
//! tags in two registries, a failing RUN with quotes, and a cancel.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::runner::{repo_root, Runner};
use support::*;

/// The version the action's Cargo.toml names (what it installs).
fn version() -> String {
    let cargo = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    cargo
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap()
        .to_string()
}

/// `acme/bakery`'s release of this version, with the real client, served
/// over HTTP as github.com serves release downloads.
struct Releases {
    _dir: tempfile::TempDir,
    server: Child,
    url: String,
}

impl Drop for Releases {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn releases() -> Releases {
    let dir = tempfile::tempdir().unwrap();
    let arch = if std::env::consts::ARCH == "aarch64" {
        "aarch64"
    } else {
        "x86_64"
    };
    let name = format!("bakery-{arch}-unknown-linux-musl");
    let assets = dir
        .path()
        .join(format!("acme/bakery/releases/download/v{}", version()));
    std::fs::create_dir_all(&assets).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_bakery"));
    let tarball = assets.join(format!("{name}.tar.gz"));
    let packed = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -cf - -C '{}' bakery | gzip -1 > '{}' && cd '{}' && sha256sum {name}.tar.gz > {name}.tar.gz.sha256",
            bin.parent().unwrap().display(),
            tarball.display(),
            assets.display()
        ))
        .status()
        .unwrap();
    assert!(packed.success());
    let port = free_port();
    let server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the release server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Releases {
        _dir: dir,
        server,
        url: format!("http://127.0.0.1:{port}"),
    }
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

#[test]
fn pinned_by_sha_the_action_installs_builds_two_registries_and_sets_outputs() {
    let releases = releases();
    let (one, two) = (registry(), registry());
    let controller = controller(&[]);
    let runner = Runner::new(&releases.url);
    write(
        &runner.workspace(),
        &[
            ("Dockerfile", "FROM scratch\nCOPY hello.txt /\n"),
            ("hello.txt", "hi\n"),
        ],
    );
    let action = runner.checkout(support::runner::SHA);
    let tags = format!("{}/acme/app:1\n{}/acme/app:1\n", one.host(), two.host());
    let url = controller.url();
    let run = runner.run(
        &action,
        &[
            ("controller-url", &url),
            ("tags", &tags),
            ("platforms", "linux/amd64,linux/arm64"),
        ],
    );
    assert!(run.success, "{}", run.log);
    assert!(
        run.log.contains(&format!("bakery {}", version())),
        "{}",
        run.log
    );
    let digest = &run.outputs["digest"];
    assert!(digest.starts_with("sha256:"), "{:?}", run.outputs);
    assert_eq!(&run.outputs["imageid"], digest);
    for t in tags.lines() {
        assert!(run.outputs["images"].contains(t), "{:?}", run.outputs);
        assert_eq!(raw_manifest(t), raw_manifest(tags.lines().next().unwrap()));
    }
    let metadata: serde_json::Value = serde_json::from_str(&run.outputs["metadata"]).unwrap();
    assert_eq!(&metadata["containerimage.digest"], digest.as_str());
    assert!(run.summary.contains("app"), "{}", run.summary);

    // `@v0` on a fresh runner: the same release, downloaded and checked.
    let runner = Runner::new(&releases.url);
    write(
        &runner.workspace(),
        &[
            ("Dockerfile", "FROM scratch\nCOPY hello.txt /\n"),
            ("hello.txt", "hi\n"),
        ],
    );
    let action = runner.checkout("v0");
    let tag = format!("{}/acme/nopush:1", one.host());
    let run = runner.run(
        &action,
        &[("controller-url", &url), ("tags", &tag), ("push", "false")],
    );
    assert!(run.success, "{}", run.log);
    assert_eq!(run.outputs["digest"], "", "push: false pushes no index");
    let catalog = Command::new("curl")
        .args(["-fsS", &format!("{}/v2/_catalog", one.url())])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&catalog.stdout).contains("nopush"));
}

/// `uses: ./`: the action in the workflow's own checkout installs the
/// release of the workflow's repository; a failing RUN whose text has
/// quotes and a continuation is annotated at its first line.
#[test]
fn used_from_the_workspace_a_failing_run_is_annotated_at_its_line() {
    let releases = releases();
    let registry = registry();
    let base = push_base_image(&registry);
    let controller = controller(&[]);
    let runner = Runner::new(&releases.url);
    let action = runner.checkout_local();
    write(
        &runner.workspace(),
        &[(
            "Dockerfile",
            &format!("FROM {base}\nRUN echo \"it's \\\"quoted\\\"\" \\\n  && exit 3\n"),
        )],
    );
    let tag = format!("{}/acme/fails:1", registry.host());
    let url = controller.url();
    let run = runner.run(
        &action,
        &[
            ("controller-url", &url),
            ("tags", &tag),
            ("platforms", "linux/amd64"),
        ],
    );
    assert!(!run.success, "{}", run.log);
    assert!(
        run.log.contains(&format!("bakery {}", version())),
        "{}",
        run.log
    );
    assert!(
        run.log.contains("::error file=Dockerfile,line=2,"),
        "{}",
        run.log
    );
}

/// A cancelled job: the runner signals the process it started (bakery,
/// through `exec`; a shell in between had waited on it and been killed
/// with it, leaving the build running); the summary still says what
/// happened, and the build's agents are stopped.
#[test]
fn a_cancelled_step_still_writes_the_summary_and_cancels_the_build() {
    let releases = releases();
    let registry = registry();
    let base = push_base_image(&registry);
    let controller = controller(&[]);
    let runner = Runner::new(&releases.url);
    let action = runner.checkout(support::runner::SHA);
    write(
        &runner.workspace(),
        &[(
            "Dockerfile",
            &format!("FROM {base}\nRUN echo slow-step-started && sleep 600\n"),
        )],
    );
    let tag = format!("{}/acme/cancel:1", registry.host());
    let url = controller.url();
    let with = [
        ("controller-url", url.as_str()),
        ("tags", tag.as_str()),
        ("platforms", "linux/amd64"),
    ];
    let mut running = runner.start(&action, &with);
    assert!(running.start_step());
    running.wait_step(); // the install
    assert!(running.start_step());
    let deadline = Instant::now() + Duration::from_secs(120);
    while !running.step_log().contains("slow-step-started") {
        assert!(Instant::now() < deadline, "{}", running.step_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let signals = running.cancel_step();
    assert_eq!(
        signals,
        ["INT"],
        "bakery itself got the SIGINT and ended in time"
    );
    let run = running.finish();
    assert!(!run.success, "{}", run.log);
    assert!(
        run.summary.contains("cancelled"),
        "{}\n{}",
        run.summary,
        run.log
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    // The build's agents (their environment names this controller) stop.
    while !processes_with_env_mentioning(&url).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left running: {:?}",
            processes_with_env_mentioning(&url)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
