//! `bakery-loadgen`: the controller under many builds at once.
//!
//! Starts a real `bakery-controller` (local platform) whose agents run in
//! load mode (`BAKERY_AGENT_LOAD`: they check in, stream timestamped lines at
//! a fixed rate and report), creates N builds, follows each with its own SSE
//! client from line 1, and prints: aggregate line throughput, agent→client
//! delivery latency (p50/p99), the controller's peak RSS, agent start-up
//! (launch → first agent line, as the controller timestamps them), and
//! whether every line arrived exactly once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bakery_client::{Controller, Event};
use bakery_protocol::api::{BuildStatus, CreateBuild, LogEvent, TaskRequest};
use bakery_protocol::Arch;
use bakery_protocol::BuildSpec;
use clap::Parser;
use sha2::Digest;

#[derive(Parser)]
struct Args {
    /// Builds at once (each with one agent and one follower).
    #[arg(long, default_value_t = 10)]
    builds: usize,
    /// Lines each agent sends.
    #[arg(long, default_value_t = 1000)]
    lines: u64,
    /// Lines per second per agent.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Seconds over which the builds are created, evenly (0: all at once).
    /// A fleet of CI jobs does not start in the same millisecond; with a
    /// ramp, latency is measured on a machine that is not busy starting a
    /// thousand processes at once.
    #[arg(long, default_value_t = 0.0)]
    ramp: f64,
    /// Also print the latency of the lines made in each half second, and of
    /// each agent's first lines: where in the run a tail comes from.
    #[arg(long)]
    timeline: bool,
    /// Directory holding bakery-controller and bakery-agent.
    #[arg(long)]
    bin_dir: PathBuf,
    /// The controller on core 0 only, the agents on core 1 (`taskset`);
    /// run the load generator itself on core 1 too (`taskset -c 1`). On two
    /// shared cores the figure measures the machine as much as the
    /// controller; pinned, the controller has one core of its own.
    #[arg(long)]
    pin: bool,
}

/// What one follower saw.
#[derive(Default)]
struct Seen {
    load_lines: Vec<u64>,
    /// Per line: when the agent made it (unix micros), and its latency (µs).
    latencies_us: Vec<(u128, u64)>,
    first_ms: Option<u64>,
    last_ms: Option<u64>,
    launch_ms: Option<u64>,
    agent_first_ms: Option<u64>,
    seqs_ok: bool,
    status: Option<BuildStatus>,
}

impl Seen {
    /// Reads one log line: the launch and agent start-up markers, and the
    /// load lines' numbers and send times.
    fn take(&mut self, line: &LogEvent) -> Result<()> {
        if line.line.starts_with("starting the ") {
            self.launch_ms = Some(line.ms);
        } else if line.line.starts_with("bakery-agent ") {
            self.agent_first_ms = Some(line.ms);
        } else if let Some(rest) = line.line.strip_prefix("load ") {
            let mut parts = rest.split(' ');
            let n: u64 = parts.next().unwrap_or("0").parse()?;
            let sent_us: u128 = parts.next().unwrap_or("0").parse()?;
            let now = unix_micros();
            self.load_lines.push(n);
            self.latencies_us
                .push((sent_us, now.saturating_sub(sent_us) as u64));
            let now_ms = (now / 1000) as u64;
            self.first_ms.get_or_insert(now_ms);
            self.last_ms = Some(now_ms);
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let data = tempfile::tempdir()?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let mut command = std::process::Command::new(if args.pin {
        PathBuf::from("taskset")
    } else {
        args.bin_dir.join("bakery-controller")
    });
    let mut agent = args.bin_dir.join("bakery-agent");
    if args.pin {
        command
            .args(["-c", "0"])
            .arg(args.bin_dir.join("bakery-controller"));
        // Agents inherit the controller's core: a wrapper moves each to
        // core 1. It runs outside the sandbox (which binds the agent
        // executable itself), as load-mode agents build nothing.
        let wrapper = data.path().join("agent-on-core-1");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec taskset -c 1 '{}' \"$@\"\n",
                agent.display()
            ),
        )?;
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        agent = wrapper;
    }
    // The controller is what is measured: its agents run as its own user,
    // not each in namespaces of its own (a sandboxed start is a shell,
    // unshare and mounts: on two shared cores, a thousand of them took the
    // agents' start p50 from 14 ms to 5.5 s). On ECS and Kubernetes each
    // agent starts on a machine of its own.
    command.env("LOCAL_AGENT_ISOLATION", "none");
    let mut controller = command
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("DATA_DIR", data.path())
        .env("AGENT_BINARY", agent)
        .env("MAX_CONCURRENT_AGENTS", args.builds.to_string())
        .env("BAKERY_LOG", "warn")
        .env("BAKERY_AGENT_LOAD", format!("{}@{}", args.lines, args.rate))
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting bakery-controller")?;
    let result = run(&args, port, controller.id()).await;
    let _ = controller.kill();
    let _ = controller.wait();
    result
}

async fn run(args: &Args, port: u16, pid: u32) -> Result<()> {
    let controller = Controller::new(&format!("http://127.0.0.1:{port}"), None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while controller.info().await.is_err() {
        if Instant::now() > deadline {
            bail!("the controller did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key = upload_load_context(&controller).await?;

    // Builds are created concurrently (or on a schedule, with --ramp), as a
    // fleet of CI jobs would: created one after another, each waiting for
    // its journal commit, the creation itself was the bound of the run.
    let started = Instant::now();
    let started_us = unix_micros();
    let mut followers = Vec::new();
    for i in 0..args.builds {
        let request = request(&key, i);
        let controller = controller.clone();
        let at = started + Duration::from_secs_f64(args.ramp * i as f64 / args.builds as f64);
        followers.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let id = controller.create(&request).await?;
            follow(&controller, &id).await
        }));
    }
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                if let Some(kb) = vm_hwm_kb(pid) {
                    peak.store(kb, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut seen = Vec::new();
    for f in followers {
        seen.push(f.await??);
    }
    let wall = started.elapsed();
    sampler.abort();
    let peak_kb = vm_hwm_kb(pid).unwrap_or(peak.load(std::sync::atomic::Ordering::Relaxed));
    let controller_cpu = cpu_seconds(pid).unwrap_or(0.0);
    // The last agents are reaped right after their builds end.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = Cpu {
        controller: controller_cpu,
        agents: children_cpu_seconds(pid).unwrap_or(0.0),
        own: cpu_seconds(std::process::id()).unwrap_or(0.0),
    };
    let lost = check_delivery(args, &seen)?;
    report(args, &seen, started_us, wall, peak_kb, &cpu, lost);
    if args.timeline {
        print_timeline(&seen, started_us);
    }
    if lost > 0 {
        bail!("lines were lost");
    }
    Ok(())
}

/// A context the load-mode agents never read, stored like any other.
async fn upload_load_context(controller: &Controller) -> Result<bakery_protocol::ContextKey> {
    let body = b"load-mode context".to_vec();
    let key: bakery_protocol::ContextKey = format!(
        "contexts/sha256-{}.tar.gz",
        hex::encode(sha2::Sha256::digest(&body))
    )
    .parse()
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), &body)?;
    controller.upload_context(&key, file.path(), None).await?;
    Ok(key)
}

/// CPU seconds used over the run.
struct Cpu {
    controller: f64,
    agents: f64,
    own: f64,
}

/// How many builds lost, repeated or reordered a line; an error if any
/// build did not succeed.
fn check_delivery(args: &Args, seen: &[Seen]) -> Result<usize> {
    let expected: Vec<u64> = (1..=args.lines).collect();
    let mut lost = 0usize;
    for s in seen {
        if s.load_lines != expected || !s.seqs_ok {
            lost += 1;
        }
        let state = s.status.as_ref().map(|st| st.state);
        if state != Some(bakery_protocol::api::BuildState::Succeeded) {
            bail!("a build ended {state:?}");
        }
    }
    Ok(lost)
}

fn sorted(values: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut v: Vec<u64> = values.collect();
    v.sort_unstable();
    v
}

fn report(
    args: &Args,
    seen: &[Seen],
    started_us: u128,
    wall: Duration,
    peak_kb: u64,
    cpu: &Cpu,
    lost: usize,
) {
    let total: usize = seen.iter().map(|s| s.load_lines.len()).sum();
    let first = seen.iter().filter_map(|s| s.first_ms).min().unwrap_or(0);
    let last = seen.iter().filter_map(|s| s.last_ms).max().unwrap_or(0);
    let span = (last.saturating_sub(first)).max(1) as f64 / 1000.0;
    let lat = sorted(
        seen.iter()
            .flat_map(|s| s.latencies_us.iter().map(|(_, l)| *l)),
    );
    // Apart: lines made while agents are still being started (each start
    // costs ~3 ms of CPU here, see bench/RESULTS.md) and those made after.
    let steady_from = started_us + ((args.ramp + 1.0) * 1e6) as u128;
    let steady = sorted(
        seen.iter()
            .flat_map(|s| &s.latencies_us)
            .filter(|(sent, _)| *sent >= steady_from)
            .map(|(_, l)| *l),
    );
    let starts = sorted(
        seen.iter()
            .filter_map(|s| Some(s.agent_first_ms? - s.launch_ms?)),
    );
    println!(
        "builds={} lines/build={} rate/agent={}/s ramp={}s total_lines={} wall={:.1}s",
        args.builds,
        args.lines,
        args.rate,
        args.ramp,
        total,
        wall.as_secs_f64()
    );
    println!(
        "  throughput: {:.0} lines/s (first to last line delivered: {:.1}s; offered {} lines/s)",
        total as f64 / span,
        span,
        args.builds as u64 * args.rate
    );
    println!("  delivery latency agent->client: {}", spread(&lat));
    println!(
        "    of lines made from 1 s after the last build was created ({} lines): p50 {:.1} ms, p99 {:.1} ms",
        steady.len(),
        pct(&steady, 50.0) as f64 / 1000.0,
        pct(&steady, 99.0) as f64 / 1000.0
    );
    println!("  controller peak RSS: {:.1} MB", peak_kb as f64 / 1024.0);
    println!(
        "  CPU: controller {:.1} s ({:.1} us/line), the {} agents {:.1} s, this load generator (the followers) {:.1} s, over {:.1} s wall on {} cores",
        cpu.controller,
        cpu.controller * 1e6 / total.max(1) as f64,
        args.builds,
        cpu.agents,
        cpu.own,
        wall.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    );
    println!(
        "  agent start (launch -> first agent line at the controller): p50 {} ms, p99 {} ms",
        pct(&starts, 50.0),
        pct(&starts, 99.0)
    );
    println!(
        "  builds with a lost, repeated or reordered line: {lost} of {}",
        seen.len()
    );
}

/// Latency by when lines were made (half seconds from the first build's
/// creation), then by their place in each build's log.
fn print_timeline(seen: &[Seen], started_us: u128) {
    let mut by_time: std::collections::BTreeMap<u128, Vec<u64>> = Default::default();
    for (sent, latency) in seen.iter().flat_map(|s| &s.latencies_us) {
        by_time
            .entry(sent.saturating_sub(started_us) / 500_000)
            .or_default()
            .push(*latency);
    }
    let print = |what: String, mut lat: Vec<u64>| {
        lat.sort_unstable();
        println!("    {what}: {} lines, {}", lat.len(), spread(&lat));
    };
    println!("  latency by when lines were made:");
    for (half_seconds, lat) in by_time {
        print(format!("from {:>5.1} s", half_seconds as f64 / 2.0), lat);
    }
    println!("  latency by place in the build's log:");
    for i in 0..4 {
        let lat = seen
            .iter()
            .filter_map(|s| Some(s.latencies_us.get(i)?.1))
            .collect();
        print(format!("line {}", i + 1), lat);
    }
}

async fn follow(controller: &Controller, id: &str) -> Result<Seen> {
    let mut seen = Seen {
        seqs_ok: true,
        ..Seen::default()
    };
    let mut last_seq = 0u64;
    let mut problem = None;
    let status = controller
        .follow(id, |event| {
            let Event::Log(line) = event else { return };
            if line.seq != last_seq + 1 {
                seen.seqs_ok = false;
            }
            last_seq = line.seq;
            if let Err(e) = seen.take(&line) {
                problem.get_or_insert(e);
            }
        })
        .await?;
    if let Some(e) = problem {
        return Err(e);
    }
    seen.status = Some(status);
    Ok(seen)
}

fn request(key: &bakery_protocol::ContextKey, i: usize) -> CreateBuild {
    CreateBuild {
        service: format!("load-{i}"),
        destination: None,
        tags: vec![],
        tasks: vec![TaskRequest {
            arch: Arch::Amd64,
            push: None,
            context_key: key.clone(),
            context_bytes: None,
            spec: spec(),
        }],
        provenance: None,
        index_annotations: Default::default(),
        descriptor_annotations: Default::default(),
    }
}

fn spec() -> BuildSpec {
    BuildSpec {
        no_push: true,
        ..BuildSpec::new("Dockerfile", bakery_protocol::Arch::Amd64)
    }
}

/// "p50 …, p99 …, max …" of sorted latencies in µs, printed in ms.
fn spread(sorted: &[u64]) -> String {
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(sorted, 50.0) as f64 / 1000.0,
        pct(sorted, 99.0) as f64 / 1000.0,
        sorted.last().copied().unwrap_or(0) as f64 / 1000.0
    )
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i]
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// utime + stime of a process, in seconds (clock ticks of 1/100 s).
/// User + system CPU of `pid` itself.
fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_seconds(pid, 11)
}

/// User + system CPU of `pid`'s children that have exited and been
/// waited for: the controller's agents, on the local platform.
fn children_cpu_seconds(pid: u32) -> Option<f64> {
    stat_seconds(pid, 13)
}

/// Two consecutive clock-tick fields of /proc/<pid>/stat (counted after
/// the command name), summed, in seconds.
fn stat_seconds(pid: u32, first: usize) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let a: f64 = fields.get(first)?.parse().ok()?;
    let b: f64 = fields.get(first + 1)?.parse().ok()?;
    Some((a + b) / 100.0)
}

fn unix_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}
