//! A shortened soak of one controller shared by many builds: six two-arch
//! builds with real agents, buildah and a registry, one cancelled, the
//! controller stopped with SIGTERM and started again mid-way. Every build
//! ends (five pushed, one cancelled), none is stuck, every log is complete,
//! and nothing is left running.

mod support;
use support::provenance::image_entries;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-m", "10"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn state(url: &str, id: &str) -> serde_json::Value {
    serde_json::from_str(&curl(&[&format!("{url}/v1/builds/{id}")])).unwrap_or_default()
}

#[test]
fn builds_cancels_and_a_restart_on_one_controller_all_end_complete() {
    let registry = registry();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let env = [("DATA_DIR", data_dir.to_str().unwrap())];
    let port = free_port();
    let mut controller = controller_on(port, &env);
    let url = controller.url();
    let projects: Vec<_> = (0..6)
        .map(|n| {
            project(&[
                ("Dockerfile", "FROM scratch\nCOPY a /a\n"),
                ("a", &format!("build {n}\n")),
                (
                    "config.yaml",
                    &format!(
                        "global:\n  pre-script: sleep 2\n  kaniko:\n    destination: {}/soak/app{n}:1\nbake:\n  - arch: amd64\n  - arch: arm64\n",
                        registry.host()
                    ),
                ),
            ])
        })
        .collect();
    let ids: Vec<String> = projects
        .iter()
        .map(|p| submit_detached(p.path(), &url))
        .collect();
    let cancelled = &ids[5];
    let answer = curl(&["-X", "POST", &format!("{url}/v1/builds/{cancelled}/cancel")]);
    assert!(answer.contains(cancelled), "{answer}");
    // A redeploy while builds run: SIGTERM, then a new controller on the
    // same DATA_DIR and port; agents keep going and report to it.
    std::thread::sleep(Duration::from_secs(1));
    let running = ids
        .iter()
        .filter(|id| state(&url, id)["state"] == "running")
        .count();
    assert!(
        running >= 2,
        "the fault: builds are running when the controller stops"
    );
    Command::new("kill")
        .args(["-TERM", &controller.child.id().to_string()])
        .status()
        .unwrap();
    let stopped = controller.child.wait().unwrap();
    assert!(stopped.success(), "{stopped:?}");
    controller = controller_on(port, &env);
    let deadline = Instant::now() + Duration::from_secs(180);
    let ends: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| loop {
            let s = state(&url, id);
            if matches!(
                s["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                break s;
            }
            assert!(Instant::now() < deadline, "stuck: {s}");
            std::thread::sleep(Duration::from_millis(250));
        })
        .collect();
    for (n, (id, end)) in ids.iter().zip(&ends).enumerate() {
        let want = if id == cancelled {
            "cancelled"
        } else {
            "succeeded"
        };
        assert_eq!(end["state"], want, "{end}");
        if want == "succeeded" {
            let log = curl(&[&format!("{url}/v1/builds/{id}/logs")]);
            for arch in ["amd64", "arm64"] {
                assert!(
                    log.contains(&format!(
                        "pushed {}/soak/app{n}:1_{arch}@sha256:",
                        registry.host()
                    )),
                    "{arch} of build {n}: {log}"
                );
            }
            let index = raw_manifest(&format!("{}/soak/app{n}:1", registry.host()));
            assert_eq!(image_entries(&index).len(), 2, "{index}");
        }
    }
    drop(controller);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_mentioning(data_dir.to_str().unwrap()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left running: {:?}",
            processes_mentioning(data_dir.to_str().unwrap())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
