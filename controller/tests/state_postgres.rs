//! The controller with DATABASE_URL against a real PostgreSQL server
//! (support/postgres.rs): what an operator sees when the database goes
//! away and comes back. The journal's own behaviour on PostgreSQL (reads,
//! migrations, the lock) is tested beside it (controller/src/journal/
//! postgres/tests.rs); restarts and retention in api.rs, on both backends.

mod support;

use std::time::{Duration, Instant};

use bakery_protocol::api::BuildState;
use bakery_protocol::Arch;
use reqwest::StatusCode;
use support::*;

/// The database stops: /readyz says not ready at once, even idle; a new
/// build is answered 503 within JOURNAL_TIMEOUT (not a hang); when it is back, the controller
/// reconnects on its own and the next build runs to the end and is saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_answered_503_and_its_end_needs_no_restart() {
    let server = postgres::Server::start();
    let url = server.database();
    let env = [("DATABASE_URL", url.as_str()), ("JOURNAL_TIMEOUT", "2s")];
    let mut h = Harness::new(&succeeding_agent("0.2"), &env).await;
    let key = h.upload(b"ctx").await;

    server.stop();
    // Idle, nothing to save: readiness still asks the server.
    let ready = h.http.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "idle and not ready"
    );
    let start = Instant::now();
    let resp = h
        .http
        .post(h.url("/v1/builds"))
        .json(&unpushed_request(&key, &[Arch::Amd64]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the outage was injected"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let ready = h.http.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    server.resume();
    let mut id = None;
    eventually(
        "a build is accepted again",
        Duration::from_secs(30),
        async || {
            let resp = h
                .http
                .post(h.url("/v1/builds"))
                .json(&unpushed_request(&key, &[Arch::Amd64]))
                .send()
                .await
                .unwrap();
            if resp.status() == StatusCode::CREATED {
                let body: serde_json::Value = resp.json().await.unwrap();
                id = Some(body["id"].as_str().unwrap().to_string());
            }
            id.is_some()
        },
    )
    .await;
    let id = id.unwrap();
    let status = h.wait_end(&id, Duration::from_secs(20)).await;
    assert_eq!(status.state, BuildState::Succeeded);
    // The controller took the database's lock again with its new session:
    // a second controller is still refused it.
    let second = bakery_controller::journal::postgres::Target {
        url: url.clone(),
        ca_file: None,
        owner_wait: Some(Duration::from_secs(1)),
        state_key: None,
        replica_url: None,
        takeover_wait: Duration::ZERO,
    };
    let dir = tempfile::tempdir().unwrap();
    let refused = bakery_controller::journal::Journal::connect(second, dir.path()).await;
    let e = refused.err().expect("refused").to_string();
    assert!(
        e.contains("another controller is using this database"),
        "{e}"
    );
    h.restart(&[]).await;
    assert_eq!(h.status(&id).await.state, BuildState::Succeeded);
}

/// A TCP relay to whichever port the test names: the one address agents
/// and clients know, in front of two controllers; or, in front of
/// PostgreSQL, one that can go silent (connections stay open and nothing
/// passes either way, as a network partition looks).
struct Relay {
    port: u16,
    target: std::sync::Arc<std::sync::atomic::AtomicU16>,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(AtomicU16::new(target));
        let silent = Arc::new(AtomicBool::new(false));
        let (to, cut) = (Arc::clone(&target), Arc::clone(&silent));
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let port = to.load(Ordering::SeqCst);
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    continue;
                };
                let (a_read, a_write) = inbound.into_split();
                let (b_read, b_write) = outbound.into_split();
                tokio::spawn(pass(a_read, b_write, Arc::clone(&cut)));
                tokio::spawn(pass(b_read, a_write, Arc::clone(&cut)));
            }
        });
        Relay {
            port,
            target,
            silent,
        }
    }

    fn send_to(&self, port: u16) {
        self.target.store(port, std::sync::atomic::Ordering::SeqCst);
    }

    fn go_silent(&self) {
        self.silent.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// STANDBY: a second controller on the same database waits, alive but
/// not ready, answering 503; when the first stops (a rollout, a drained
/// node), it takes the database and the build over: its agent, still
/// running, reports to it through the same address and the build ends
/// as succeeded, its log read back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_a_running_build_when_the_active_controller_stops() {
    let server = postgres::Server::start();
    let url = server.database();
    let standby_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let relay = Relay::start(0).await;
    let shared = format!("http://127.0.0.1:{}", relay.port);
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("CONTROLLER_URL", shared.as_str()),
    ];
    let mut h = Harness::new(&succeeding_agent("3"), &env).await;
    let active_port: u16 = h.url("").rsplit(':').next().unwrap().parse().unwrap();
    relay.send_to(active_port);

    let mut vars = env.to_vec();
    let listen = format!("127.0.0.1:{standby_port}");
    vars.extend([("STANDBY", "true"), ("LISTEN_ADDR", listen.as_str())]);
    let config = Harness::config(h.dir.path(), &vars);
    let standby = tokio::spawn(bakery_controller::start(config));
    let standby_url = format!("http://127.0.0.1:{standby_port}");
    let http = reqwest::Client::new();
    eventually("the standby answers", Duration::from_secs(10), async || {
        let health = http.get(format!("{standby_url}/healthz")).send().await;
        health.is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    let ready = http
        .get(format!("{standby_url}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let create = http
        .post(format!("{standby_url}/v1/builds"))
        .json(&unpushed_request(
            &format!("contexts/sha256-{}.tar.gz", "0".repeat(64)),
            &[Arch::Amd64],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(create.headers().contains_key("retry-after"));
    assert!(create.text().await.unwrap().contains("standby"));

    let key = h.upload(b"ctx").await;
    let id = h.create(&unpushed_request(&key, &[Arch::Amd64])).await;
    eventually("the agent checks in", Duration::from_secs(10), async || {
        h.status(&id).await.tasks[0].state == bakery_protocol::api::TaskState::Running
    })
    .await;
    // The active controller stops as on SIGTERM; its agent runs on.
    let stopped = Instant::now();
    h.running.take().unwrap().suspend().await;
    relay.send_to(standby_port);
    let running = tokio::time::timeout(Duration::from_secs(20), standby)
        .await
        .expect("the standby takes over within 20 s")
        .unwrap()
        .expect("the standby starts");
    println!(
        "takeover: {:?} after the active controller stopped",
        stopped.elapsed()
    );
    let taken = running
        .app
        .builds()
        .get(&id)
        .expect("the build was taken over");
    assert!(
        !taken.status().state.is_terminal(),
        "taken over while it ran"
    );
    h.running = Some(running);
    let status = h.wait_end(&id, Duration::from_secs(20)).await;
    assert_eq!(status.state, BuildState::Succeeded, "{status:?}");
    let log = h.log_text(&id).await;
    assert!(log.contains("agent started"), "the log read back: {log}");
}

/// A child process killed when dropped: a failed test leaves none running.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A controller process with `env`, its output in `log`.
fn controller_process(env: &[(&str, String)], log: &std::path::Path) -> Killed {
    let out = std::fs::File::create(log).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_bakery-controller"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("LOCAL_AGENT_ISOLATION", "none")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .map(Killed)
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `GET http://127.0.0.1:{port}{path}` answers `code`.
async fn answers(port: u16, path: &str, code: StatusCode) -> bool {
    let r = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await;
    r.is_ok_and(|r| r.status() == code)
}

/// Build `id`'s status as the controller on `port` answers it.
async fn status_on(port: u16, id: &str) -> Option<bakery_protocol::api::BuildStatus> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/v1/builds/{id}"))
        .await
        .ok()?;
    r.json().await.ok()
}

/// Uploads a context and creates an unpushed one-arch build through `base`.
async fn create_through(base: &str) -> String {
    use sha2::Digest;
    let http = reqwest::Client::new();
    let body = b"ctx".to_vec();
    let key = format!(
        "contexts/sha256-{}.tar.gz",
        hex::encode(sha2::Sha256::digest(&body))
    );
    let put = http
        .put(format!("{base}/v1/contexts/{key}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let created: serde_json::Value = http
        .post(format!("{base}/v1/builds"))
        .json(&unpushed_request(&key, &[Arch::Amd64]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["id"].as_str().unwrap().to_string()
}

/// Two controller processes, each with its REPLICA_URL, behind one address
/// that reaches the standby only: the standby forwards every request (the
/// upload, the create, the agent's, the status) to the active one. The
/// active process is then killed (SIGKILL: a node lost, an OOM kill) while
/// its agent runs: the standby takes the database over as soon as the
/// server sees the dead session end, adopts the agent, and the build
/// succeeds through the same address. The takeover time is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_active_controller_is_killed() {
    let server = postgres::Server::start();
    let url = server.database();
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent.sh");
    // It reports as a real agent does, retrying while no controller
    // answers (the standby waits before it takes over from a crash).
    let patient = curl_agent(
        r#"sleep 4
curl -fsS --retry 40 --retry-all-errors --retry-delay 1 -H "$auth" -H 'content-type: application/json' -d '{"outcome":"succeeded","digest":null}' "$base/result" || exit 8"#,
    );
    std::fs::write(&agent, format!("#!/bin/sh\n{patient}\n")).unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (a, b) = (free_port(), free_port());
    let relay = Relay::start(b).await;
    let shared = format!("http://127.0.0.1:{}", relay.port);
    let env = |port: u16, standby: bool| {
        vec![
            ("DATABASE_URL", url.clone()),
            ("CONTROLLER_URL", shared.clone()),
            ("DATA_DIR", dir.path().join("data").display().to_string()),
            ("AGENT_BINARY", agent.display().to_string()),
            ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("STANDBY", standby.to_string()),
            ("REPLICA_URL", format!("http://127.0.0.1:{port}")),
        ]
    };
    let mut active = controller_process(&env(a, false), &dir.path().join("a.log"));
    eventually(
        "the active controller is ready",
        Duration::from_secs(20),
        async || answers(a, "/readyz", StatusCode::OK).await,
    )
    .await;
    let mut standby = controller_process(&env(b, true), &dir.path().join("b.log"));
    eventually(
        "the standby is alive",
        Duration::from_secs(20),
        async || answers(b, "/healthz", StatusCode::OK).await,
    )
    .await;
    eventually(
        "the standby forwards",
        Duration::from_secs(10),
        async || answers(b, "/readyz", StatusCode::OK).await,
    )
    .await;

    let id = create_through(&shared).await;
    assert_eq!(status_on(b, &id).await.unwrap().id, id, "forwarded");
    // Killed once the agent has its spec: had its answer been cut off too,
    // a real agent would ask again; this stand-in would exit.
    let spec = dir.path().join(format!("data/work/{id}-amd64.spec"));
    eventually(
        "the agent has its spec",
        Duration::from_secs(10),
        async || std::fs::metadata(&spec).is_ok_and(|m| m.len() > 0),
    )
    .await;
    active.0.kill().unwrap();
    let killed = Instant::now();
    active.0.wait().unwrap();
    eventually(
        "the standby takes over",
        Duration::from_secs(40),
        async || {
            let log = std::fs::read_to_string(dir.path().join("b.log")).unwrap_or_default();
            log.contains("controller listening") && answers(b, "/readyz", StatusCode::OK).await
        },
    )
    .await;
    println!("takeover: {:?} after SIGKILL", killed.elapsed());
    let taken = status_on(b, &id)
        .await
        .expect("the standby knows the build");
    let logs = || {
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
        let work = std::fs::read_dir(dir.path().join("data/work"))
            .map(|d| {
                let read = |p: std::path::PathBuf| std::fs::read_to_string(&p).unwrap_or_default();
                d.flatten()
                    .map(|e| format!("{:?}: {}", e.path(), read(e.path())))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        format!(
            "a.log:\n{}\nb.log:\n{}\nthe agent's files:\n{work}",
            read("a.log"),
            read("b.log")
        )
    };
    assert!(
        !taken.state.is_terminal(),
        "taken over while it ran: {taken:?}\n{}",
        logs()
    );
    eventually("the build succeeds", Duration::from_secs(30), async || {
        status_on(b, &id)
            .await
            .is_some_and(|s| s.state == BuildState::Succeeded)
    })
    .await;
    let pid = nix::unistd::Pid::from_raw(standby.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(standby.0.wait().unwrap().success());
    let log = std::fs::read_to_string(dir.path().join("b.log")).unwrap();
    assert!(!log.contains("postgres://"), "no URL in the log: {log}");
}

/// An agent writes its token beside its work dir and waits.
const TOKEN_AGENT: &str = r#"echo "$BAKERY_TASK_TOKEN" > "$BAKERY_WORK_DIR.token"; sleep 300"#;

/// Through a standby (forwarding to the active controller's REPLICA_URL):
/// an agent's log stream, full duplex (the answer starts before the body
/// ends, acknowledgements come back while lines go out), and a follower's
/// SSE log, each line once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_forwards_an_agents_log_stream_and_a_followers_log() {
    use futures_util::StreamExt;
    let server = postgres::Server::start();
    let url = server.database();
    let (a, b) = (free_port(), free_port());
    let (listen_a, replica_a) = (format!("127.0.0.1:{a}"), format!("http://127.0.0.1:{a}"));
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("LISTEN_ADDR", listen_a.as_str()),
        ("REPLICA_URL", replica_a.as_str()),
    ];
    let h = Harness::new(&curl_agent(TOKEN_AGENT), &env).await;
    let listen_b = format!("127.0.0.1:{b}");
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("LISTEN_ADDR", listen_b.as_str()),
        ("STANDBY", "true"),
    ];
    let standby = tokio::spawn(bakery_controller::start(Harness::config(
        h.dir.path(),
        &vars,
    )));
    eventually(
        "the standby forwards",
        Duration::from_secs(10),
        async || answers(b, "/readyz", StatusCode::OK).await,
    )
    .await;
    let via = format!("http://127.0.0.1:{b}");
    let id = create_through(&via).await;
    let task = format!("{id}-amd64");
    let token_file = h.dir.path().join("data/work").join(format!("{task}.token"));
    let mut token = String::new();
    eventually(
        "the agent writes its token",
        Duration::from_secs(10),
        async || {
            token = std::fs::read_to_string(&token_file).unwrap_or_default();
            token.ends_with('\n')
        },
    )
    .await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let body = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|s| s.map(Ok::<_, std::io::Error>))
    });
    let sent = reqwest::Client::new()
        .post(format!("{via}/v1/agent/tasks/{task}/log-stream"))
        .bearer_auth(token.trim())
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let answer = tokio::time::timeout(Duration::from_secs(5), sent)
        .await
        .expect("the answer starts before the body ends")
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let line = |n: u64| {
        format!(
            "{}\n",
            serde_json::json!({"seq": n, "line": format!("chatty {n}")})
        )
    };
    tx.send((1..=500).map(line).collect()).unwrap();
    let mut acks = answer.bytes_stream();
    let mut acked = String::new();
    while !acked.lines().any(|l| l == "500") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), acks.next())
            .await
            .expect("acknowledged while the stream is open")
            .expect("the stream is open")
            .unwrap();
        acked.push_str(&String::from_utf8_lossy(&chunk));
    }
    tx.send((501..=1000).map(line).collect()).unwrap();
    drop(tx);
    while let Some(chunk) = acks.next().await {
        acked.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert_eq!(acked.lines().last(), Some("1000"), "{acked}");

    let cancel = reqwest::Client::new()
        .post(format!("{via}/v1/builds/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::ACCEPTED);
    h.wait_end(&id, Duration::from_secs(10)).await;
    let log = reqwest::get(format!("{via}/v1/builds/{id}/logs"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let chatty: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| d.contains("\"chatty "))
        .collect();
    assert_eq!(chatty.len(), 1000, "every line once, through the standby");
    standby.abort();
}

/// A controller cut off from the database long enough for another to take
/// it (here: the server restarted, and a second controller took the lock
/// before this one reconnected) learns it while idle, within seconds, and
/// says so: `Running::database_lost` resolves (the binary then stops as on
/// SIGTERM, leaving builds and agents to the other), and nothing it is
/// asked to save is confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_that_lost_the_database_to_another_knows_it() {
    let server = postgres::Server::start();
    let url = server.database();
    let env = [("DATABASE_URL", url.as_str()), ("JOURNAL_TIMEOUT", "2s")];
    let h = Harness::new(&succeeding_agent("0.2"), &env).await;
    server.stop();
    server.resume();
    let other = bakery_controller::journal::postgres::Target {
        url: url.clone(),
        ca_file: None,
        owner_wait: Some(Duration::from_secs(2)),
        state_key: None,
        replica_url: None,
        takeover_wait: Duration::ZERO,
    };
    let dir = tempfile::tempdir().unwrap();
    let _taken = bakery_controller::journal::Journal::connect(other, dir.path())
        .await
        .expect("the lock died with the server: another controller takes it");
    let running = h.running.as_ref().unwrap();
    tokio::time::timeout(Duration::from_secs(20), running.database_lost())
        .await
        .expect("the first controller learns it lost the database");
    let key = h.upload(b"ctx").await;
    let resp = h
        .http
        .post(h.url("/v1/builds"))
        .json(&unpushed_request(&key, &[Arch::Amd64]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// A client that gives up while its new build waits to be saved (the
/// database is down) leaves no build behind running, unacknowledged and
/// unsupervised: the dropped request withdraws it. (Found by trying the
/// PostgreSQL backend: such a build sat "starting" past
/// BUILD_TASK_TIMEOUT until a restart.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_the_client_gave_up_on_is_withdrawn() {
    let server = postgres::Server::start();
    let url = server.database();
    let env = [("DATABASE_URL", url.as_str()), ("JOURNAL_TIMEOUT", "20s")];
    let h = Harness::new(&succeeding_agent("0.2"), &env).await;
    let key = h.upload(b"ctx").await;
    server.stop();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let sent = impatient
        .post(h.url("/v1/builds"))
        .json(&unpushed_request(&key, &[Arch::Amd64]))
        .send()
        .await;
    assert!(sent.is_err_and(|e| e.is_timeout()), "the client gave up");
    let builds = h.app().builds();
    eventually(
        "the build is withdrawn",
        Duration::from_secs(5),
        async || {
            let all = builds.all();
            !all.is_empty() && all.iter().all(|b| b.status().state == BuildState::Failed)
        },
    )
    .await;
    server.resume();
}

/// Copies `from` to `to` until either ends, dropping what comes once `cut`.
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if !cut.load(std::sync::atomic::Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err()
        {
            break;
        }
    }
}

/// One of several controllers on a database (STANDBY) fences itself when
/// cut off from it: the connection silent (a partition, nothing refused),
/// within FENCE_AFTER and a check it counts the database lost and stops
/// every build's supervisor, before a standby could take the builds over.
/// A lone controller (no STANDBY) waits such an outage out instead
/// (`a_database_outage_is_answered_503_and_its_end_needs_no_restart`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_capable_controller_cut_off_from_the_database_fences_itself() {
    let server = postgres::Server::start();
    let url = server.database();
    let db_port: u16 = url
        .split(':')
        .nth(2)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    let hole = Relay::start(db_port).await;
    let through = url.replace(&format!(":{db_port}/"), &format!(":{}/", hole.port));
    let env = [("DATABASE_URL", through.as_str()), ("STANDBY", "true")];
    let h = Harness::new(&succeeding_agent("30"), &env).await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&unpushed_request(&key, &[Arch::Amd64])).await;
    hole.go_silent();
    let cut = Instant::now();
    let running = h.running.as_ref().unwrap();
    tokio::time::timeout(Duration::from_secs(20), running.database_lost())
        .await
        .expect("the controller fences itself");
    println!("fenced {:?} after the database went silent", cut.elapsed());
    assert!(
        cut.elapsed() >= Duration::from_secs(6),
        "not before FENCE_AFTER"
    );
    assert!(
        !h.status(&id).await.state.is_terminal(),
        "its build is left as it was"
    );
}
