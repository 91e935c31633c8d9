//! `bakery build`: plan, pack, upload, submit, follow, summarise.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bakery_pack::{pack_to_dir, Codec, PackOptions};
use bakery_plan::{Plan, ServicePlan};
use bakery_protocol::api::{
    BuildState, BuildStatus, ContextStore, CreateBuild, LogEvent, TaskRequest, TaskState,
};

use crate::ci::Ci;
use crate::cli::LogFormat;
use crate::client::{self, Controller, Event};
use crate::status::StatusReporter;

/// How the build runs and prints.
pub struct BuildOptions {
    pub async_mode: bool,
    pub detach: bool,
    pub codec: Codec,
    pub format: Option<LogFormat>,
}

/// Where the controller is: a URL, or one started in this process.
pub enum Target {
    Remote(String),
    Embedded,
}

pub async fn build(plan: Plan, target: Target, opts: BuildOptions) -> Result<bool> {
    let insecure = bakery_protocol::registry::parse_list(
        &std::env::var("INSECURE_REGISTRIES").unwrap_or_default(),
    );
    let problems = crate::preflight::check_bases(&plan, &insecure).await;
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        bail!(
            "{} base image problem{}: nothing was uploaded or built",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
    }
    let embedded;
    let controller = match target {
        Target::Remote(url) => client::connect(&url),
        Target::Embedded => {
            embedded = start_embedded().await?;
            client::connect(&embedded.0.url())
        }
    };
    let info = controller.info().await.map_err(|e| match e {
        bakery_client::Error::Unreachable { .. } => {
            anyhow::anyhow!("{e}; is CONTROLLER_URL right?")
        }
        e => e.into(),
    })?;
    let keys = upload_contexts(&plan, &controller, &info.context_store, opts.codec).await?;

    let printer = Printer::new(&plan, opts.format);
    let reporter = StatusReporter::from_env().await;
    let services: Vec<&ServicePlan> = plan.services.iter().collect();
    let submitted: Arc<Mutex<Vec<String>>> = Arc::default();
    let cancel_on_signal = {
        let controller = controller.clone();
        let submitted = Arc::clone(&submitted);
        async move {
            // CI systems cancel a job with SIGTERM; a person with Ctrl-C.
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            eprintln!("interrupted: cancelling the builds");
            let ids = submitted.lock().map(|s| s.clone()).unwrap_or_default();
            let cancels = ids.iter().map(|id| controller.cancel(id));
            // A CI system kills the job soon after its SIGTERM: cancel every
            // build at once, and do not wait for a controller that hangs.
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(15),
                futures_util::future::join_all(cancels),
            )
            .await;
        }
    };

    let run = async {
        let mut results: Vec<(String, Option<BuildStatus>, f64)> = Vec::new();
        if opts.detach || opts.async_mode {
            let mut ids = Vec::new();
            for service in &services {
                let id = controller.create(&request(service, &keys)?).await?;
                submitted.lock().expect("lock").push(id.clone());
                ids.push((service.name.clone(), id));
            }
            if opts.detach {
                for (service, id) in &ids {
                    println!("{service}\t{id}");
                }
                return Ok(None);
            }
            let (reporter, plan) = (&reporter, &plan);
            let follows = ids.iter().map(|(service, id)| {
                let controller = controller.clone();
                let printer = &printer;
                async move {
                    let started = Instant::now();
                    let status =
                        follow_one(&controller, printer, reporter, plan, service, id).await;
                    (service.clone(), status, started.elapsed().as_secs_f64())
                }
            });
            for (service, status, secs) in futures_util::future::join_all(follows).await {
                results.push((service, Some(status?), secs));
            }
        } else {
            for service in &services {
                let started = Instant::now();
                let id = controller.create(&request(service, &keys)?).await?;
                submitted.lock().expect("lock").push(id.clone());
                let status =
                    follow_one(&controller, &printer, &reporter, &plan, &service.name, &id).await?;
                let failed = status.state != BuildState::Succeeded;
                results.push((
                    service.name.clone(),
                    Some(status),
                    started.elapsed().as_secs_f64(),
                ));
                if failed {
                    break;
                }
            }
            for service in services.iter().skip(results.len()) {
                results.push((service.name.clone(), None, 0.0));
            }
        }
        Ok::<_, anyhow::Error>(Some(results))
    };

    let results = tokio::select! {
        r = run => r?,
        _ = cancel_on_signal => {
            // Give the controller a moment (10 s in all) to stop the agents,
            // then report.
            let ids = submitted.lock().map(|s| s.clone()).unwrap_or_default();
            let stopped = async {
                for id in &ids {
                    loop {
                        let status = controller.status(id).await;
                        if status.map(|s| s.state.is_terminal()).unwrap_or(true) {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), stopped).await;
            bail!("cancelled");
        }
    };
    let Some(results) = results else {
        return Ok(true);
    };
    let ok = results
        .iter()
        .all(|(_, s, _)| s.as_ref().is_some_and(|s| s.state == BuildState::Succeeded));
    printer.end_block();
    print_summary(&results, &printer);
    printer.report(&plan, &results);
    Ok(ok)
}

/// Follows one build to its end, keeping the commit status in step.
async fn follow_one(
    controller: &Controller,
    printer: &Printer,
    reporter: &StatusReporter,
    plan: &Plan,
    service: &str,
    id: &str,
) -> Result<BuildStatus> {
    if let Ok(status) = controller.status(id).await {
        reporter.started(&status).await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<BuildStatus>();
    let follow = async move {
        controller
            .follow(id, |event| match event {
                Event::Log(line) => printer.line(service, &line),
                Event::Status(status) | Event::End(status) => {
                    let _ = tx.send(status);
                }
            })
            .await
    };
    let updates = async {
        while let Some(status) = rx.recv().await {
            reporter.updated(&status).await;
        }
    };
    let (status, ()) = tokio::join!(follow, updates);
    let status = status?;
    let one = [(service.to_string(), Some(status.clone()), 0.0)];
    let summary = crate::ci::markdown_summary(&one, &printer.tails());
    let annotations = crate::ci::annotations(plan, &one, &printer.ci.workspace());
    reporter.finished(&status, &summary, &annotations).await;
    Ok(status)
}

/// A controller inside this process, with a data dir of its own unless
/// DATA_DIR names one: two CI jobs on one machine must not share a journal
/// (the second could not open it), and a build of this run is not resumed by
/// a later one (its agents end with this process).
async fn start_embedded() -> Result<(bakery_controller::Running, Option<tempfile::TempDir>)> {
    let mut config = bakery_controller::Config::from_env()?;
    let data = if std::env::var_os("DATA_DIR").is_none() {
        let dir = tempfile::Builder::new()
            .prefix("bakery-embedded-")
            .tempdir()
            .context("creating the embedded controller's data directory")?;
        config.data_dir = dir.path().to_path_buf();
        Some(dir)
    } else {
        None
    };
    config.listen_addr = "127.0.0.1:0".into();
    config.controller_url = None;
    config.default_platform = bakery_protocol::Platform::Local;
    config.s3_bucket = None;
    let running = bakery_controller::start(config)
        .await
        .context("starting the embedded controller")?;
    Ok((running, data))
}

/// A packed context as the build request names it.
#[derive(Clone)]
struct Uploaded {
    key: bakery_protocol::ContextKey,
    /// Bytes of file content it unpacks to.
    content_bytes: u64,
}

/// Packs each distinct context once and uploads what the store lacks.
async fn upload_contexts(
    plan: &Plan,
    controller: &Controller,
    store: &ContextStore,
    codec: Codec,
) -> Result<HashMap<(PathBuf, String), Uploaded>> {
    let tmp = tempfile::tempdir().context("creating a temporary directory for context archives")?;
    let s3 = match store {
        ContextStore::S3(location) => {
            Some(bakery_store::S3Store::connect(s3_settings(location)).await)
        }
        ContextStore::Controller => None,
    };
    let mut keys = HashMap::new();
    for (_, build) in plan.builds() {
        let id = (build.context_dir.clone(), build.spec.dockerfile.clone());
        if keys.contains_key(&id) {
            continue;
        }
        let started = Instant::now();
        let (path, packed) = {
            let (dir, df, out) = (id.0.clone(), id.1.clone(), tmp.path().to_path_buf());
            tokio::task::spawn_blocking(move || {
                pack_to_dir(
                    &dir,
                    &df,
                    &out,
                    &PackOptions {
                        codec,
                        ..PackOptions::default()
                    },
                )
            })
            .await?
            .with_context(|| format!("packing {}", id.0.display()))?
        };
        for w in &packed.warnings {
            tracing::warn!("{w}");
        }
        let key = packed.key();
        let uploaded = Uploaded {
            key: key.clone(),
            content_bytes: packed.content_bytes,
        };
        if keys.values().any(|k: &Uploaded| k.key == key) {
            // Same bytes as a context already handled (another Dockerfile in
            // the same directory, say): nothing more to report.
            keys.insert(id, uploaded);
            continue;
        }
        let sent = match (store, &s3) {
            (ContextStore::Controller, _) => controller.upload_context(&key, &path).await?,
            (ContextStore::S3(_), Some(s3)) => s3.upload_if_absent(&key, &path).await?,
            (ContextStore::S3(_), None) => unreachable!("connected above"),
        };
        eprintln!(
            "context {}: {} files, {} → {} ({}) in {:.2}s",
            id.0.display(),
            packed.entries,
            crate::render::bytes(packed.content_bytes),
            crate::render::bytes(packed.size),
            if sent {
                "uploaded"
            } else {
                "unchanged, not uploaded"
            },
            started.elapsed().as_secs_f64()
        );
        keys.insert(id, uploaded);
    }
    Ok(keys)
}

/// The controller's bucket, with the client's own `S3_*` variables winning:
/// the client may reach S3 through another endpoint than the controller.
fn s3_settings(location: &bakery_protocol::api::S3Location) -> bakery_store::S3Settings {
    let mut settings = bakery_store::S3Settings {
        bucket: location.bucket.clone(),
        endpoint: location.endpoint.clone(),
        region: location.region.clone(),
        ssl: location.ssl,
    };
    if let Some(own) = bakery_store::S3Settings::from_env() {
        if own.bucket != settings.bucket {
            tracing::warn!(
                "S3_BUCKET is `{}` but the controller uses `{}`; uploading to the controller's",
                own.bucket,
                settings.bucket
            );
        }
        settings.endpoint = own.endpoint.or(settings.endpoint);
        settings.region = own.region.or(settings.region);
        settings.ssl = own.ssl;
    }
    settings
}

fn request(
    service: &ServicePlan,
    keys: &HashMap<(PathBuf, String), Uploaded>,
) -> Result<CreateBuild> {
    let tasks = service
        .builds
        .iter()
        .map(|b| {
            let uploaded = keys
                .get(&(b.context_dir.clone(), b.spec.dockerfile.clone()))
                .context("context was not packed")?
                .clone();
            Ok(TaskRequest {
                arch: b.arch,
                push: b.push.clone(),
                context_key: uploaded.key,
                context_bytes: Some(uploaded.content_bytes),
                spec: b.spec.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(CreateBuild {
        service: service.name.clone(),
        destination: service.destination.clone(),
        tags: service.tags.clone(),
        tasks,
    })
}

/// Prints log lines with `docker compose`-style prefixes.
pub struct Printer {
    width: usize,
    color: bool,
    format: Option<LogFormat>,
    colors: Mutex<HashMap<String, usize>>,
    /// Last lines per task, shown again under a failure.
    tails: Mutex<HashMap<String, Vec<String>>>,
    pub ci: Ci,
    /// The CI log block (group/section) open now: label and its number.
    block: Mutex<Option<(String, usize)>>,
}

const PALETTE: [&str; 6] = ["36", "33", "32", "35", "34", "31"];

impl Printer {
    pub fn new(plan: &Plan, format: Option<LogFormat>) -> Printer {
        let width = plan
            .builds()
            .map(|(s, b)| s.name.len() + 1 + b.arch.as_str().len())
            .max()
            .unwrap_or(10);
        Printer::with_width(width, format)
    }

    /// A printer for one service's log (`bakery logs`).
    pub fn standalone(service: &str, format: Option<LogFormat>) -> Printer {
        Printer::with_width(service.len() + "-amd64".len(), format)
    }

    fn with_width(width: usize, format: Option<LogFormat>) -> Printer {
        Printer {
            width,
            color: format.is_none() && std::io::stdout().is_terminal(),
            format,
            colors: Mutex::default(),
            tails: Mutex::default(),
            ci: Ci::detect(),
            block: Mutex::default(),
        }
    }

    pub fn line(&self, service: &str, event: &LogEvent) {
        let label = format!("{service}-{}", event.arch);
        let text = strip_ansi(&event.line);
        {
            let mut tails = self.tails.lock().expect("lock");
            let tail = tails.entry(label.clone()).or_default();
            tail.push(text.clone());
            if tail.len() > 15 {
                tail.remove(0);
            }
        }
        let mut out = std::io::stdout().lock();
        {
            // In CI, each run of lines from one arch goes in a collapsible block.
            let mut block = self.block.lock().expect("lock");
            if block.as_ref().map(|(l, _)| l.as_str()) != Some(label.as_str()) {
                let n = block.as_ref().map_or(0, |(_, n)| n + 1);
                let previous = block.as_ref().map(|(l, n)| (l.as_str(), *n));
                let _ = out.write_all(self.ci.switch_block(previous, &label, n).as_bytes());
                *block = Some((label.clone(), n));
            }
        }
        let _ = match self.format {
            Some(LogFormat::Json) => {
                let mut v = serde_json::to_value(event).unwrap_or_default();
                v["service"] = serde_json::json!(service);
                writeln!(out, "{v}")
            }
            Some(LogFormat::Simple) => writeln!(out, "{text}"),
            _ if self.color => {
                let n = {
                    let mut colors = self.colors.lock().expect("lock");
                    let next = colors.len();
                    *colors.entry(label.clone()).or_insert(next)
                };
                writeln!(
                    out,
                    "\x1b[{}m{label:<w$} |\x1b[0m {text}",
                    PALETTE[n % PALETTE.len()],
                    w = self.width
                )
            }
            _ => writeln!(out, "{label:<w$} | {text}", w = self.width),
        };
    }

    fn tail(&self, label: &str) -> Vec<String> {
        self.tails
            .lock()
            .expect("lock")
            .get(label)
            .cloned()
            .unwrap_or_default()
    }

    /// Ends the open CI log block, so what follows is not folded away.
    pub fn end_block(&self) {
        let open = self.block.lock().expect("lock").take();
        print!(
            "{}",
            self.ci
                .close_block(open.as_ref().map(|(l, n)| (l.as_str(), *n)))
        );
    }

    /// The last lines of every task's log.
    pub fn tails(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        self.tails
            .lock()
            .expect("lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Writes the CI reports (outputs, summary, annotations, dotenv).
    pub fn report(&self, plan: &Plan, results: &[(String, Option<BuildStatus>, f64)]) {
        let tails: std::collections::BTreeMap<String, Vec<String>> = self
            .tails
            .lock()
            .expect("lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Err(e) = self.ci.report(plan, results, &tails) {
            tracing::warn!("could not write the CI report: {e}");
        }
    }
}

fn strip_ansi(s: &str) -> String {
    static ANSI: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\x1b\[[0-9;?]*[ -/]*[@-~]").expect("valid regex")
    });
    ANSI.replace_all(s, "").into_owned()
}

/// The table CI users read first: one row per (service, arch), the index,
/// and for failures the last lines of the failing arch's log.
fn print_summary(results: &[(String, Option<BuildStatus>, f64)], printer: &Printer) {
    let mut rows = vec![["SERVICE", "ARCH", "STATUS", "DURATION", "DIGEST"].map(String::from)];
    let mut failures = Vec::new();
    let mut indexes = Vec::new();
    for (service, status, _) in results {
        let Some(status) = status else {
            rows.push([
                service.clone(),
                "-".into(),
                "skipped".into(),
                "-".into(),
                "-".into(),
            ]);
            continue;
        };
        for t in &status.tasks {
            let secs = match (t.started_ms, t.finished_ms) {
                (Some(s), Some(f)) => format!("{:.1}s", f.saturating_sub(s) as f64 / 1000.0),
                _ => "-".into(),
            };
            let state = match t.state {
                TaskState::Succeeded => "pushed",
                TaskState::Failed => "failed",
                TaskState::Cancelled => "cancelled",
                TaskState::Queued | TaskState::Starting | TaskState::Running => "unfinished",
            };
            rows.push([
                service.clone(),
                t.arch.to_string(),
                state.into(),
                secs,
                t.digest.clone().unwrap_or_else(|| "-".into()),
            ]);
            if t.state == TaskState::Failed {
                failures.push((
                    format!("{service}-{}", t.arch),
                    t.error.clone().unwrap_or_default(),
                ));
            }
        }
        match (&status.destination, &status.index_digest, status.state) {
            (Some(dest), Some(digest), _) => indexes.push(format!("{service}: {dest} → {digest}")),
            (_, _, BuildState::Failed)
                if !status.tasks.iter().any(|t| t.state == TaskState::Failed) =>
            {
                failures.push((service.clone(), status.error.clone().unwrap_or_default()))
            }
            _ => {}
        }
    }
    let mut out = String::from("\n");
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for line in &indexes {
        out.push_str(&format!("multi-arch index {line}\n"));
    }
    for (label, error) in &failures {
        out.push_str(&format!("\n{label} failed: {error}\n"));
        let tail = printer.tail(label);
        if !tail.is_empty() {
            out.push_str(&format!("last lines of {label}:\n"));
            for l in tail {
                out.push_str(&format!("  {l}\n"));
            }
        }
    }
    print!("{out}");
}
