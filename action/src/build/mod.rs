//! `bakery build`: check bases, pack and upload, submit, follow, summarise.
//!
//! * [`upload`] packs each distinct context once and puts it where the
//!   controller reads contexts;
//! * [`embedded`] starts a controller in this process when no
//!   CONTROLLER_URL is given;
//! * this module submits the builds (one after another, or all at once with
//!   `--async`), follows their logs through the [`Printer`], keeps the commit
//!   status in step and cancels everything on SIGTERM or Ctrl-C.

mod asks;
mod embedded;
mod pack_cache;
mod upload;

pub use asks::Asks;
pub use upload::large_context_warning;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use bakery_pack::Codec;
use bakery_plan::Plan;
use bakery_protocol::api::{BuildState, BuildStatus};

use crate::ci::CiSystem;
use crate::cli::LogFormat;
use crate::client::{self, Controller, Event};

use crate::outcome::ServiceResult;
use crate::printer::Printer;
use upload::Contexts;

/// How the build runs and prints.
pub struct BuildOptions {
    /// `--async`: submit every service at once and follow them together;
    /// otherwise one after another, stopping at the first failure.
    pub async_mode: bool,
    /// `--detach`: submit, print `service<TAB>build-id` lines, and return without following.
    pub detach: bool,
    /// `--codec`: how the context archives are compressed.
    pub codec: Codec,
    /// `--log-format`; `None` prints for a person (coloured prefixes on a terminal).
    pub format: Option<LogFormat>,
    /// Provenance, annotations, named contexts and SSH keys, for every build.
    pub asks: Asks,
}

/// Where the controller is: a URL, or one started in this process.
pub enum Target {
    /// A controller at this URL (`CONTROLLER_URL`).
    Remote(client::Remote),
    /// A controller started inside this process, running
    /// agents on this machine (the local platform).
    Embedded,
}

/// Runs the plan's builds; `Ok(true)` when every one succeeded (or, with
/// `--detach`, was submitted).
pub async fn build(mut plan: Plan, target: Target, opts: BuildOptions) -> Result<bool> {
    let started = std::time::Instant::now();
    let insecure = crate::env::ClientEnv::current().insecure_registries();
    check_logins(&mut plan, &insecure).await?;
    check_bases(&plan, &insecure).await?;
    let mut embedded = None;
    let controller = match target {
        Target::Remote(remote) => client::connect(&remote),
        Target::Embedded => {
            let running = embedded::start_embedded().await?;
            let controller = client::connect(&client::Remote::new(
                &running.0.url(),
                false,
                crate::env::ClientEnv::current(),
            )?);
            embedded = Some(running);
            controller
        }
    };
    let info = controller.info().await.map_err(|e| match e {
        bakery_client::Error::Unreachable { .. } => {
            anyhow::anyhow!("{e}; is CONTROLLER_URL right?")
        }
        e => e.into(),
    })?;
    let contexts = upload::upload_contexts(
        &plan,
        &controller,
        &info.context_store,
        opts.codec,
        &opts.asks,
    )
    .await?;
    let ci = crate::ci::detect(crate::env::ClientEnv::current(), true).await;
    let run = Run {
        plan: &plan,
        controller: &controller,
        embedded: embedded.as_ref().map(|(running, _)| running),
        contexts: &contexts,
        printer: Printer::new(&plan, opts.format, ci.clone()),
        ci,
        submitted: Arc::default(),
        reporting: crate::ci::Reporting::default(),
        asks: &opts.asks,
    };
    let outcome = run.finish(&opts, started).await;
    drop(run);
    if let Some((running, data)) = embedded {
        // The agents this process started are stopped before it exits,
        // whether the run succeeded, failed or was interrupted (and before
        // their data dir goes): nothing runs when nobody builds. A second
        // signal meanwhile ends the wait, as a second Ctrl-C does in docker.
        tokio::select! {
            _ = tokio::time::timeout(Duration::from_secs(15), running.shutdown()) => {}
            _ = interrupted() => eprintln!("interrupted again: not waiting for the agents to stop"),
        }
        drop(data);
    }
    outcome
}

/// Every base image has the platform it is pulled for, or nothing is
/// uploaded.
/// `bakery plan`'s check of the base images: with the runner's logins
/// (for private bases), without asking whether they may push.
pub async fn check_plan_bases(plan: &mut Plan) -> Result<()> {
    let insecure = crate::env::ClientEnv::current().insecure_registries();
    let env = crate::env::ClientEnv::current().text_vars();
    let (_, warnings) = crate::logins::attach(plan, &env).await?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    check_bases(plan, &insecure).await
}

async fn check_bases(plan: &Plan, insecure: &[String]) -> Result<()> {
    let problems = crate::preflight::check_bases(plan, insecure).await;
    if problems.is_empty() {
        return Ok(());
    }
    for p in &problems {
        eprintln!("error: {p}");
        crate::ci::github::annotate(crate::env::ClientEnv::current(), p, "bakery: base image");
    }
    bail!(
        "{} base image problem{}: nothing was uploaded or built",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
}

/// Adds the runner's registry logins to the builds that need them, then
/// asks each destination registry whether its login may push: a missing or
/// refused login fails before anything is uploaded.
async fn check_logins(plan: &mut Plan, insecure: &[String]) -> Result<()> {
    let env = crate::env::ClientEnv::current().text_vars();
    let (logins, warnings) = crate::logins::attach(plan, &env).await?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let mut failed = 0;
    for finding in crate::logins::check_destinations(plan, &logins, insecure).await {
        if finding.is_error() {
            failed += 1;
            eprintln!("error: {finding}");
        } else {
            eprintln!("warning: {finding}");
        }
    }
    if failed > 0 {
        bail!("a registry login is missing or refused: nothing was uploaded or built");
    }
    Ok(())
}

/// A build cancelled by a signal; the process exits 128 + its number, as a
/// shell reports a command the signal ended (130 for SIGINT, 143 for
/// SIGTERM), after the summary.
#[derive(Debug, thiserror::Error)]
#[error("cancelled by {}", if *.0 == SIGINT { "SIGINT" } else { "SIGTERM" })]
pub struct Cancelled(pub i32);

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

impl Cancelled {
    /// The process's exit status.
    pub fn exit_code(&self) -> u8 {
        (128 + self.0).clamp(0, 255) as u8
    }
}

/// SIGTERM (how CI systems cancel a job) or Ctrl-C (how a person does):
/// which one came.
async fn interrupted() -> i32 {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => SIGINT,
                _ = term.recv() => SIGTERM,
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            SIGINT
        }
    }
}

/// One `bakery build` in progress.
struct Run<'a> {
    plan: &'a Plan,
    controller: &'a Controller,
    /// The controller in this process, if it is one: logs are read from it
    /// directly.
    embedded: Option<&'a bakery_controller::Running>,
    contexts: &'a Contexts,
    printer: Printer,
    /// Where the commit's checks or statuses go.
    ci: Arc<dyn CiSystem>,
    /// (service, build id) of the builds created so far, for cancelling.
    submitted: Arc<Mutex<Vec<(String, String)>>>,
    /// Each call to the CI system's API, bounded.
    reporting: crate::ci::Reporting,
    /// What every build asks for besides its plan.
    asks: &'a Asks,
}

impl Run<'_> {
    /// Runs every build and prints the summary, or on SIGTERM or Ctrl-C
    /// cancels them and prints it saying so; `Ok(true)` when every build
    /// succeeded (or, with `--detach`, was submitted).
    async fn finish(&self, opts: &BuildOptions, started: std::time::Instant) -> Result<bool> {
        let results = tokio::select! {
            r = self.all(opts) => r?,
            signal = interrupted() => {
                // The job still gets its summary and outputs, saying cancelled.
                let results = self.cancel().await;
                self.conclude_cancelled(&results).await;
                self.printer.end_block();
                crate::render::print_summary(self.plan, &results, &self.printer, started);
                self.printer.report(self.plan, &results);
                return Err(Cancelled(signal).into());
            }
        };
        let Some(results) = results else {
            return Ok(true);
        };
        self.printer.end_block();
        crate::render::print_summary(self.plan, &results, &self.printer, started);
        self.printer.report(self.plan, &results);
        Ok(results.iter().all(ServiceResult::succeeded))
    }

    /// Every service's result; `None` with `--detach` (ids printed).
    async fn all(&self, opts: &BuildOptions) -> Result<Option<Vec<ServiceResult>>> {
        if !(opts.detach || opts.async_mode) {
            return self.one_by_one().await.map(Some);
        }
        let mut ids = Vec::new();
        for service in &self.plan.services {
            ids.push((service.name.clone(), self.submit(service).await?));
        }
        if opts.detach {
            // stdout stays `service<TAB>id` for scripts; how to follow goes
            // to stderr, for people.
            for (service, id) in &ids {
                if opts.format == Some(crate::cli::LogFormat::Json) {
                    println!("{}", serde_json::json!({"service": service, "id": id}));
                } else {
                    println!("{service}\t{id}");
                }
            }
            if let Some((_, id)) = ids.first() {
                eprintln!("follow with: bakery logs {id}    (state: bakery status {id})");
            }
            return Ok(None);
        }
        let follows = ids.iter().map(|(service, id)| self.follow(service, id));
        let mut results = Vec::new();
        for ((service, _), status) in ids
            .iter()
            .zip(futures_util::future::join_all(follows).await)
        {
            results.push(ServiceResult::ended(service, status?));
        }
        Ok(Some(results))
    }

    /// One service after the other; after a failure the rest are skipped.
    async fn one_by_one(&self) -> Result<Vec<ServiceResult>> {
        let mut results = Vec::new();
        for service in &self.plan.services {
            let id = self.submit(service).await?;
            let status = self.follow(&service.name, &id).await?;
            let failed = status.state != BuildState::Succeeded;
            results.push(ServiceResult::ended(&service.name, status));
            if failed {
                break;
            }
        }
        for service in self.plan.services.iter().skip(results.len()) {
            results.push(ServiceResult::skipped(&service.name));
        }
        Ok(results)
    }

    async fn submit(&self, service: &bakery_plan::ServicePlan) -> Result<String> {
        let id = self
            .controller
            .create(&upload::request(service, self.contexts, self.asks)?)
            .await?;
        self.submitted
            .lock()
            .expect("lock")
            .push((service.name.clone(), id.clone()));
        Ok(id)
    }

    /// Follows one build to its end, keeping the commit status in step.
    async fn follow(&self, service: &str, id: &str) -> Result<BuildStatus> {
        if let Ok(status) = self.controller.status(id).await {
            self.reporting.bounded(self.ci.started(&status)).await;
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<BuildStatus>();
        let running = std::sync::Mutex::new(Vec::new());
        // Borrowed by both futures; `tx` moves into the follower, so the
        // updates end when it does.
        let running = &running;
        let follow = async move {
            let on = |event| match event {
                Event::Log(line) => self.printer.line(service, &line),
                Event::Status(status) => {
                    for task in status.tasks.iter().filter(|t| t.state.is_terminal()) {
                        self.printer.task_ended(service, task.arch, false);
                    }
                    *running.lock().expect("lock") = status
                        .tasks
                        .iter()
                        .filter(|t| !t.state.is_terminal())
                        .map(|t| (t.arch, t.state))
                        .collect();
                    let _ = tx.send(status);
                }
                Event::End(status) => {
                    for task in &status.tasks {
                        self.printer.task_ended(service, task.arch, true);
                    }
                    let _ = tx.send(status);
                }
                Event::Idle => self.printer.flush(),
            };
            match self.embedded {
                Some(running) => embedded::follow(running, id, on).await,
                None => Ok(self.controller.follow(id, on).await?),
            }
        };
        let updates = async {
            while let Some(status) = rx.recv().await {
                self.reporting.bounded(self.ci.updated(&status)).await;
            }
        };
        let heartbeat = async {
            let Some(after) = heartbeat_after() else {
                return std::future::pending::<std::convert::Infallible>().await;
            };
            let since = std::time::Instant::now();
            let mut tick = tokio::time::interval(after.min(Duration::from_secs(5)));
            loop {
                tick.tick().await;
                let running = running.lock().expect("lock").clone();
                self.printer.heartbeat(service, &running, after, since);
            }
        };
        let status = tokio::select! {
            (status, ()) = async { tokio::join!(follow, updates) } => status?,
            never = heartbeat => match never {},
        };
        self.reporting
            .bounded(self.ci.finished(self.plan, &status, &self.printer.tails()))
            .await;
        Ok(status)
    }

    /// Concludes the check run or commit statuses of every cancelled build
    /// (a build still stopping is reported cancelled: the user cancelled
    /// it), all at once and bounded: a required check left in progress
    /// would block the merge.
    async fn conclude_cancelled(&self, results: &[ServiceResult]) {
        let tails = self.printer.tails();
        let reports = results
            .iter()
            .filter_map(|r| r.status.as_ref())
            .map(|status| {
                let mut status = status.clone();
                if !status.state.is_terminal() {
                    status.state = bakery_protocol::api::BuildState::Cancelled;
                    for t in &mut status.tasks {
                        if !t.state.is_terminal() {
                            t.state = bakery_protocol::api::TaskState::Cancelled;
                        }
                    }
                }
                let tails = &tails;
                async move { self.ci.finished(self.plan, &status, tails).await }
            });
        let all = self.reporting.bounded(async {
            futures_util::future::join_all(reports).await;
        });
        // Cancel (3 s) + stop (2 s) + this (2 s) stay within the runner's
        // 7.5 s between SIGINT and SIGTERM.
        let _ = tokio::time::timeout(Duration::from_secs(2), all).await;
    }

    /// Cancels every submitted build at once (a CI system kills the job
    /// soon after its SIGTERM, and a hanging controller is not waited for),
    /// gives the controller a few seconds to stop the agents, and returns
    /// every service's result as it stands, for the summary and the CI
    /// reports. All of it, with [`Run::conclude_cancelled`], fits in the
    /// runner's grace: SIGINT, SIGTERM 7.5 s later, SIGKILL 2.5 s after.
    async fn cancel(&self) -> Vec<ServiceResult> {
        eprintln!("interrupted: cancelling the builds");
        let submitted = self.submitted.lock().map(|s| s.clone()).unwrap_or_default();
        let cancels = submitted.iter().map(|(_, id)| self.controller.cancel(id));
        let _ = tokio::time::timeout(
            Duration::from_secs(3),
            futures_util::future::join_all(cancels),
        )
        .await;
        let mut last: Vec<Option<BuildStatus>> = vec![None; submitted.len()];
        let stopped = async {
            for (i, (_, id)) in submitted.iter().enumerate() {
                loop {
                    let status = self.controller.status(id).await.ok();
                    let done = status.as_ref().is_none_or(|s| s.state.is_terminal());
                    last[i] = status.or(last[i].take());
                    if done {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), stopped).await;
        self.plan
            .services
            .iter()
            .map(|service| {
                let seen = submitted
                    .iter()
                    .zip(&last)
                    .find(|((name, _), _)| name == &service.name)
                    .and_then(|(_, status)| status.clone());
                match seen {
                    Some(status) => ServiceResult::ended(&service.name, status),
                    None => ServiceResult::skipped(&service.name),
                }
            })
            .collect()
    }
}

/// How long a running arch may print nothing before bakery says so.
fn heartbeat_after() -> Option<Duration> {
    crate::progress::heartbeat()
}
