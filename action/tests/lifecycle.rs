//! The real controller binary through a deploy: SIGTERM with followers
//! and agents' log streams open ends them and exits within seconds, and
//! the next controller on the same DATA_DIR finishes every build with
//! every line followed exactly once; and a short soak of many two-arch
//! builds under few agent slots with random cancels and a restart in the
//! middle. Agents are the real `bakery-agent` in load mode (they check in,
//! stream numbered lines through the real log stream, and report).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::{Duration, Instant};

use bakery_protocol::api::{BuildState, BuildStatus, LogEvent};
use futures_util::StreamExt;
use support::load::{create, two_arch, upload};
use support::*;

/// A controller process on `port` over `data`, with load-mode agents.
fn start(port: u16, data: &std::path::Path, env: &[(&str, &str)]) -> Server {
    let data = data.display().to_string();
    let mut all = vec![("DATA_DIR", data.as_str())];
    all.extend_from_slice(env);
    controller_on(port, &all)
}

/// Sends SIGTERM and waits for the process to exit; how long it took.
fn terminate(child: &mut Child) -> Duration {
    let started = Instant::now();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    loop {
        if child.try_wait().unwrap().is_some() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the controller did not exit within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What one follower saw: every log event, and the final status.
struct Followed {
    lines: Vec<LogEvent>,
    end: BuildStatus,
    reconnects: u32,
}

/// Follows a build as `bakery logs` does, reconnecting with
/// `Last-Event-ID` whenever the stream ends without `end`.
async fn follow(base: String, id: String) -> Followed {
    use eventsource_stream::Eventsource;
    let http = reqwest::Client::new();
    let (mut lines, mut last, mut reconnects) = (Vec::new(), 0u64, 0u32);
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        assert!(Instant::now() < deadline, "{id}: the log never ended");
        let resp = http
            .get(format!("{base}/v1/builds/{id}/logs"))
            .header("Last-Event-ID", last.to_string())
            .send()
            .await;
        if let Ok(resp) = resp.and_then(reqwest::Response::error_for_status) {
            let mut events = resp.bytes_stream().eventsource();
            while let Some(Ok(event)) = events.next().await {
                match event.event.as_str() {
                    "log" => {
                        let line: LogEvent = serde_json::from_str(&event.data).unwrap();
                        assert_eq!(line.seq, last + 1, "{id}: a line lost or repeated");
                        last = line.seq;
                        lines.push(line);
                    }
                    "end" => {
                        let end = serde_json::from_str(&event.data).unwrap();
                        return Followed {
                            lines,
                            end,
                            reconnects,
                        };
                    }
                    _ => {}
                }
            }
        }
        reconnects += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The agents' numbered lines per task, from what a follower saw.
fn load_lines(followed: &Followed) -> BTreeMap<String, Vec<u64>> {
    let mut per_task: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for l in &followed.lines {
        if let Some(n) = l
            .line
            .strip_prefix("load ")
            .and_then(|r| r.split(' ').next())
        {
            per_task
                .entry(l.task.clone())
                .or_default()
                .push(n.parse().unwrap());
        }
    }
    per_task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_every_stream_at_once_and_the_next_controller_finishes_the_build() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = [("BAKERY_AGENT_LOAD", "200@40")];
    let mut first = start(port, data.path(), &env);
    let base = first.url();
    let http = reqwest::Client::new();
    let key = upload(&http, &base).await;
    let id = create(&http, &base, &two_arch(&key, 0)).await;
    let follower = tokio::spawn(follow(base.clone(), id.clone()));
    // Both agents stream; the follower reads.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let took = tokio::task::block_in_place(|| terminate(&mut first.child));
    assert!(
        took < Duration::from_secs(8),
        "SIGTERM took {took:?}: the controller waited on open streams"
    );
    let log = std::fs::read_to_string(first.dir.path().join("controller.log")).unwrap();
    assert!(log.contains("unfinished builds resume"), "{log}");
    // The next controller on the same DATA_DIR (the journal was released).
    let _second = start(port, data.path(), &env);
    let followed = tokio::time::timeout(Duration::from_secs(120), follower)
        .await
        .expect("the build ends")
        .unwrap();
    assert_eq!(
        followed.end.state,
        BuildState::Succeeded,
        "{:?}",
        followed.end
    );
    assert!(
        followed.reconnects >= 1,
        "the follower's stream was ended by the shutdown"
    );
    for (task, numbers) in load_lines(&followed) {
        let want: Vec<u64> = (1..=200).collect();
        assert_eq!(numbers, want, "{task}: every line exactly once, in order");
    }
    assert_eq!(load_lines(&followed).len(), 2);
}

/// 50 two-arch builds under 3 agent slots, random cancels, and one
/// SIGTERM/restart in the middle: every build ends, every followed log is
/// complete, and no agent or work dir is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_fifty_two_arch_builds_three_slots_cancels_and_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = [
        ("BAKERY_AGENT_LOAD", "20@40"),
        ("MAX_CONCURRENT_AGENTS", "3"),
    ];
    let mut first = start(port, data.path(), &env);
    let base = first.url();
    let http = reqwest::Client::new();
    let key = upload(&http, &base).await;
    let mut ids = Vec::new();
    for n in 0..50 {
        ids.push(create(&http, &base, &two_arch(&key, n)).await);
    }
    let followers: Vec<_> = ids
        .iter()
        .map(|id| tokio::spawn(follow(base.clone(), id.clone())))
        .collect();
    // Cancel every seventh build at a moment of its life.
    let mut cancelled = BTreeSet::new();
    for (n, id) in ids.iter().enumerate().filter(|(n, _)| n % 7 == 3) {
        tokio::time::sleep(Duration::from_millis(150 * (n as u64 % 4))).await;
        let resp = http
            .post(format!("{base}/v1/builds/{id}/cancel"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
        cancelled.insert(id.clone());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let took = tokio::task::block_in_place(|| terminate(&mut first.child));
    assert!(took < Duration::from_secs(8), "SIGTERM took {took:?}");
    let second = start(port, data.path(), &env);
    let mut ended = BTreeMap::new();
    for (id, follower) in ids.iter().zip(followers) {
        let followed = tokio::time::timeout(Duration::from_secs(240), follower)
            .await
            .expect("every build ends")
            .unwrap();
        let state = followed.end.state;
        assert!(state.is_terminal(), "{id}: {state:?}");
        if !cancelled.contains(id) {
            assert_eq!(state, BuildState::Succeeded, "{id}: {:?}", followed.end);
            let lines = load_lines(&followed);
            assert_eq!(lines.len(), 2, "{id}: both arches logged");
            for (task, numbers) in lines {
                assert_eq!(numbers, (1..=20).collect::<Vec<_>>(), "{task}");
            }
        }
        ended.insert(id.clone(), state);
    }
    assert_eq!(ended.len(), 50);
    // Nothing left running, and every agent's work dir is gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = processes_with_env_mentioning(&format!(
            "BAKERY_WORK_DIR={}",
            data.path().join("work").display()
        ));
        let work = data.path().join("work");
        let dirs: Vec<_> = std::fs::read_dir(&work)
            .map(|d| d.flatten().filter(|e| e.path().is_dir()).collect())
            .unwrap_or_default();
        if left.is_empty() && dirs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {left:?} {:?}",
            dirs.iter().map(std::fs::DirEntry::path).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(second);
}

/// A controller that accepts connections and never answers (a hung
/// process, a black-holing proxy): `bakery build` fails, naming it, instead
/// of hanging the CI job (it waited for ever).
#[test]
fn a_controller_that_never_answers_fails_the_client_in_bounded_time() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn);
        }
    });
    let repo = project(&[
        ("Dockerfile", "FROM scratch\nCOPY a /\n"),
        ("a", "a\n"),
        (
            "config.yaml",
            "global:\n  arch: amd64\n  kaniko:\n    destination: 127.0.0.1:1/x/y:1\n",
        ),
    ]);
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bakery"))
        .current_dir(repo.path())
        .arg("build")
        .env("CONTROLLER_URL", &url)
        .output()
        .unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!("cannot reach the controller at {url}")),
        "{text}"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
}
