//! bakery-controller: the server between CI clients and build agents.
//!
//! Read top-down:
//!
//! * `config`: the environment variables it reads.
//! * `routes`: the HTTP API: the router, authentication, and the
//!   client's endpoints (create, status, cancel, contexts); `follow`: a
//!   build's log as server-sent events; `agent_api`: the agent's
//!   endpoints (spec, context, logs, result); `create`: a checked
//!   build request registered, saved and started, once per idempotency key.
//! * `log_stream`: an agent's log as one long request, acknowledged as
//!   it is saved.
//! * [`state`]: builds, tasks and their logs in memory.
//! * [`journal`]: the same on disk or in PostgreSQL, so a restart resumes
//!   every build; `standby`: a controller waiting to take the database
//!   over, and `forward`: the requests it sends on to the active one.
//! * `supervisor`: one build from launch through timeouts to cleanup.
//! * [`platform`]: where agents run, behind one trait (`local` here);
//!   `startup` starts the configured ones.
//! * `auth`: who is calling, and which builds they may touch;
//!   [`serve`] and [`tls`]: the listener, its limits and its HTTPS.
//! * [`verify`]: each pushed image is the architecture it was built for.
//! * [`index`]: joining per-arch images into the multi-arch index;
//!   `provenance`: the SLSA attestation listed beside each image;
//!   `replicate`: the images copied into a build's other repositories.
//! * `store`: contexts on the controller's disk, when there is no S3.
//! * [`metrics`]: what `/metrics` exposes to Prometheus.

mod agent_api;
mod auth;
mod config;
mod create;
mod follow;
mod forward;
pub mod index;
pub mod journal;
mod log_stream;
pub mod metrics;
pub mod platform;
mod provenance;
mod replicate;
mod routes;
pub mod serve;
mod standby;
mod startup;
pub mod state;
mod store;
mod supervisor;
pub mod tls;
pub mod verify;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinSet;

use bakery_protocol::Platform;

pub use config::Config;
pub use follow::{Followed, LocalFollow};
use platform::AgentPlatform;

/// Largest context upload (when contexts are kept on the controller):
/// streamed to disk under this cap. Other routes have small limits of
/// their own ([`routes`]).
const MAX_CONTEXT_BYTES: u64 = 8 << 30;

/// How long a stopping controller waits for its connections to end once
/// it has told every stream to end: then it exits regardless.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long [`Running::shutdown`] waits for every build's agents to be
/// stopped, all builds together.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Everything the handlers and supervisors share.
pub struct App {
    /// The configuration it was started with.
    pub(crate) config: Config,
    /// The URL agents are given to reach this controller.
    pub(crate) agent_url: String,
    /// AGENT_CA_FILE's certificates (PEM), given to every agent.
    pub(crate) agent_ca: Option<String>,
    /// Every build held: running ones, and finished ones until BUILD_RETENTION ends.
    pub(crate) builds: Arc<state::Registry>,
    /// The builds and their logs on disk (`<DATA_DIR>/builds.redb`): what a restart resumes from.
    pub(crate) journal: Arc<journal::Journal>,
    /// The platforms this controller can run agents on: DEFAULT_PLATFORM,
    /// plus ECS when ECS_CLUSTER is set (and k8s when configured).
    pub(crate) platforms: HashMap<Platform, Box<dyn AgentPlatform>>,
    /// Contexts uploaded to the controller itself, when there is no S3 bucket.
    pub(crate) disk: store::DiskStore,
    /// Contexts in S3 (read on behalf of local agents, which get no cloud
    /// credentials of the controller's), connected at start-up so that the
    /// region it resolves is the one clients and agents are told.
    s3: Option<bakery_store::S3Store>,
    /// The Prometheus series `/metrics` exposes.
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// What clients must present, if anything.
    pub(crate) client_token: Option<bakery_protocol::spec::Secret>,
    /// OpenID Connect ID tokens accepted instead, if configured.
    pub(crate) oidc: Option<auth::oidc::Oidc>,
    /// Refused authentications, logged at a bounded rate.
    pub(crate) refusals: auth::Refusals,
    /// Agent slots per platform (MAX_CONCURRENT_AGENTS).
    pub(crate) slots: HashMap<Platform, Arc<tokio::sync::Semaphore>>,
    /// Cancelled when the controller stops: log followers and agents' log
    /// streams end (and reconnect to the next controller) instead of
    /// holding the shutdown open.
    pub(crate) stopping: tokio_util::sync::CancellationToken,
    /// The journal writer and the periodic passes: ended with the
    /// controller, so that nothing of it (the journal file's lock
    /// included) outlives it.
    background: std::sync::Mutex<JoinSet<()>>,
    /// One per unfinished build, under one shutdown deadline.
    supervisors: std::sync::Mutex<JoinSet<()>>,
    /// Held by a retention pass while it writes (on the blocking pool),
    /// and by the shutdown before it closes the journal.
    retention: Arc<tokio::sync::Mutex<()>>,
}

/// A controller serving on a socket.
pub struct Running {
    /// The shared state its handlers and supervisors use.
    pub app: Arc<App>,
    /// The address it listens on (with the port the OS chose, for port 0).
    pub addr: SocketAddr,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Whether it serves HTTPS.
    tls: bool,
}

/// Why a controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address, as LISTEN_ADDR gave it.
        addr: String,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// A platform could not be set up (missing ECS or Kubernetes
    /// settings, an unreachable API, no agent binary).
    #[error(transparent)]
    PlatformSetup(#[from] platform::PlatformError),
    /// A configuration variable has a value that cannot be used.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// TLS_CERT_FILE / TLS_KEY_FILE cannot be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The build journal could not be opened or read back.
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
}

impl Running {
    /// The base URL clients use.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Resolves once another controller has taken the state database (a
    /// standby, after this one was cut off from it): the caller stops this
    /// one as on SIGTERM, leaving the builds and their agents to the other.
    pub async fn database_lost(&self) {
        self.app.journal.lost().await;
    }

    /// Follows build `id`'s log after line `after` (0: from the first),
    /// inside this process: what `GET /v1/builds/{id}/logs` sends, typed.
    /// The embedded controller's client reads its builds so; encoding each
    /// line as an event, sending it over loopback HTTP and decoding it
    /// again cost that client as much as printing it. `None`: no such
    /// build.
    pub fn follow(&self, id: &str, after: u64) -> Option<LocalFollow> {
        let build = self.app.builds.get(id)?;
        Some(LocalFollow::new(&self.app, build, after))
    }

    /// Cancels unfinished builds, waits for their agents to be stopped, and
    /// stops serving. Nothing this controller started is left running.
    pub async fn shutdown(self) {
        let unfinished: Vec<_> = self
            .app
            .builds
            .all()
            .into_iter()
            .filter(|b| !b.status().state.is_terminal())
            .collect();
        for build in &unfinished {
            build.update(|b| b.cancel());
        }
        // Each supervisor ends once its agents are stopped (and its index,
        // if it was writing one, is written): one deadline for all of them,
        // so a hung platform costs the shutdown 60 s, not 60 s per build.
        let mut supervisors = std::mem::take(&mut *self.app.supervisors.lock().expect("lock"));
        let all_ended = tokio::time::timeout(STOP_GRACE, async {
            while supervisors.join_next().await.is_some() {}
        })
        .await;
        if all_ended.is_err() {
            tracing::warn!(
                "{} builds did not finish stopping within {} s",
                supervisors.len(),
                STOP_GRACE.as_secs()
            );
            supervisors.abort_all();
        }
        self.stop_serving().await;
    }

    /// Stops serving and leaves unfinished builds as they are: their agents
    /// keep running (and retrying their reports), and the next controller
    /// started on the same DATA_DIR resumes them. What a rolling restart
    /// wants. Returns how many builds were left to resume.
    pub async fn suspend(self) -> usize {
        let unfinished = self
            .app
            .builds
            .all()
            .iter()
            .filter(|b| !b.status().state.is_terminal())
            .count();
        self.stop_serving().await;
        unfinished
    }

    /// Stops accepting connections, ends every stream (followers and
    /// agents reconnect to the next controller), saves what came in, and
    /// gives up on connections that are still open after [`SHUTDOWN_GRACE`]:
    /// a rollout must not wait on a client.
    async fn stop_serving(self) {
        let _ = self.shutdown.send(true);
        self.app.stopping.cancel();
        let mut server = self.server;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
            .await
            .is_err()
        {
            tracing::warn!(
                "connections still open {}s after the shutdown began; closing them",
                SHUTDOWN_GRACE.as_secs()
            );
            server.abort();
        }
        if let Err(e) = self.app.journal.flush().await {
            tracing::error!("{e}");
        }
        // Everything at once, then waited for: nothing changes a build
        // after the journal writer is gone.
        let mut sets: Vec<JoinSet<()>> = [&self.app.background, &self.app.supervisors]
            .map(|set| std::mem::take(&mut *set.lock().expect("lock")))
            .into();
        for tasks in &mut sets {
            tasks.abort_all();
        }
        for tasks in &mut sets {
            while tasks.join_next().await.is_some() {}
        }
        // A retention pass on the blocking pool outlives its aborted task:
        // the journal closes (and compacts) once it is done.
        let _retention = self.app.retention.lock().await;
        let journal = Arc::clone(&self.app.journal);
        let _ = tokio::task::spawn_blocking(move || journal.close()).await;
    }
}

/// What tests and operators' tools may read of the shared state; the
/// handlers and supervisors reach the fields themselves.
impl App {
    /// Every build held, running and retained.
    pub fn builds(&self) -> &state::Registry {
        &self.builds
    }

    /// The build journal.
    pub fn journal(&self) -> &journal::Journal {
        &self.journal
    }

    /// Agent slots free on `platform` now; `None` for a platform it does
    /// not run.
    pub fn free_agent_slots(&self, platform: Platform) -> Option<usize> {
        self.slots.get(&platform).map(|s| s.available_permits())
    }

    /// How many times the OpenID Connect keys of `issuer` were fetched;
    /// `None` without OIDC.
    pub fn oidc_key_fetches(&self, issuer: &str) -> Option<u64> {
        self.oidc.as_ref().map(|o| o.key_fetches(issuer))
    }
}

impl App {
    /// The URL agents on `platform` are given to reach this controller.
    pub fn agent_url_for(&self, platform: Platform) -> &str {
        match (&self.config.k8s_controller_url, platform) {
            (Some(url), Platform::K8s) => url,
            _ => &self.agent_url,
        }
    }

    /// The contexts bucket, when S3 is configured.
    pub fn s3(&self) -> Option<&bakery_store::S3Store> {
        self.s3.as_ref()
    }

    /// Runs `work` in the background until it ends or the controller stops.
    pub fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        push_task(&self.background, work);
    }

    /// Runs a build's supervisor; [`Running::shutdown`] waits for them.
    pub fn spawn_supervisor(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        push_task(&self.supervisors, work);
    }

    /// The platform a task runs on.
    pub fn platform(&self, p: Platform) -> &dyn AgentPlatform {
        self.platforms
            .get(&p)
            .expect("tasks are only accepted for configured platforms")
            .as_ref()
    }
}

fn push_task(
    set: &std::sync::Mutex<JoinSet<()>>,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let mut tasks = set.lock().expect("lock");
    // Ended tasks are let go of here: a controller that runs for months
    // holds the ones still running.
    while tasks.try_join_next().is_some() {}
    tasks.spawn(work);
}

/// Once the state database is lost to another controller (or, fencing,
/// out of reach), stops every build's supervisor at once: no launch, stop
/// or deadline of this controller's may touch builds that are the other's.
async fn fence(app: Arc<App>) {
    app.journal.lost().await;
    let mut supervisors = std::mem::take(&mut *app.supervisors.lock().expect("lock"));
    supervisors.abort_all();
    while supervisors.join_next().await.is_some() {}
}

/// Drops finished builds older than BUILD_RETENTION, hourly, with what
/// they left on the controller's disk: the local agents' own logs, and
/// contexts that no build still kept refers to.
async fn forget_old_builds(app: Arc<App>) {
    loop {
        forget_once(&app).await;
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}

/// One pass of [`forget_old_builds`].
pub async fn forget_once(app: &App) {
    let retention = app.config.build_retention;
    let cutoff = bakery_protocol::api::now_ms().saturating_sub(retention.as_millis() as u64);
    let gone = app.builds.finished_before(cutoff);
    if gone.is_empty() {
        return forget_contexts(app).await;
    }
    // A write transaction and file deletions: on the blocking pool, not a
    // runtime worker that requests are waiting for. The registry lets go
    // of the builds as soon as their rows are gone.
    let (journal, builds, work, ids) = (
        Arc::clone(&app.journal),
        Arc::clone(&app.builds),
        app.config.data_dir.join("work"),
        gone.clone(),
    );
    let writing = Arc::clone(&app.retention).lock_owned().await;
    let forgotten = tokio::task::spawn_blocking(move || {
        let _writing = writing;
        journal.forget(&ids)?;
        for id in &ids {
            builds.remove(id);
        }
        platform::local::delete_agent_logs(&work, &ids);
        Ok::<_, journal::JournalError>(())
    })
    .await;
    match forgotten {
        Ok(Ok(())) => {
            tracing::info!(removed = gone.len(), "forgot builds past BUILD_RETENTION");
        }
        Ok(Err(e)) => tracing::warn!("cleaning up old builds: {e}"),
        Err(e) => tracing::warn!("cleaning up old builds: {e}"),
    }
    forget_contexts(app).await;
}

/// Deletes the contexts on the controller's disk that no kept build uses
/// (with S3, the bucket's lifecycle rule does).
async fn forget_contexts(app: &App) {
    let retention = app.config.build_retention;
    if app.config.s3_bucket.is_none() {
        let used: HashSet<bakery_protocol::ContextKey> = app
            .builds
            .all()
            .iter()
            .flat_map(|b| {
                b.read()
                    .requests()
                    .map(|t| t.context_key.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        match app.disk.sweep(used, retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "deleted contexts no kept build uses"),
            Err(e) => tracing::warn!("cleaning up old contexts: {e}"),
        }
    }
}

/// Binds `config.listen_addr` and serves until [`Running::shutdown`].
pub async fn start(config: Config) -> Result<Running, StartError> {
    // kube and the AWS SDK both use rustls: pick its crypto provider once,
    // or the first TLS client panics on the ambiguity.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let listen_error = |source| StartError::Listen {
        addr: config.listen_addr.clone(),
        source,
    };
    let listener = serve::listen(&config.listen_addr)
        .await
        .map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    // Configuration mistakes first: they need no journal or platform to report.
    let edge = Edge::from_config(&config, addr)?;
    // Builds an earlier run left behind: their agents may still be running,
    // and must be neither deleted as orphans nor started twice.
    // A standby answers as one until the database is free (standby.rs).
    let forwarder = startup::forwarder(&config)?;
    let (listener, standby) = standby::start_if(
        config.standby,
        listener,
        edge.certificates.as_ref(),
        forwarder,
    )
    .map_err(listen_error)?;
    let journal = Arc::new(startup::open_journal(&config).await?);
    if let Some(standby) = standby {
        standby.take_over().await;
    }
    journal.set_flush_timeout(config.journal_timeout);
    let restored = {
        let journal = Arc::clone(&journal);
        tokio::task::spawn_blocking(move || journal.load(state::log::TAIL_LINES))
            .await
            .map_err(|e| journal::JournalError::Db(redb::Error::Io(std::io::Error::other(e))))??
    };
    let keep: HashSet<String> = restored
        .iter()
        .filter(|r| !r.record.status.state.is_terminal())
        .flat_map(|r| r.record.tasks.iter().filter_map(|t| t.handle.clone()))
        .collect();
    let (exit_tx, exit_rx) = tokio::sync::mpsc::unbounded_channel();
    let metrics = Arc::new(metrics::Metrics::new());
    let platforms = startup::start_platforms(&config, exit_tx, &keep, &metrics).await?;
    startup::check_local_trust(&config, &platforms, edge.oidc.is_some())?;
    let s3 = connect_s3(&config).await;
    let slots = startup::agent_slots(&config, &platforms);
    let app = Arc::new(App {
        client_token: edge.client_token,
        oidc: edge.oidc,
        refusals: auth::Refusals::default(),
        slots,
        disk: store::DiskStore::new(&config.data_dir, MAX_CONTEXT_BYTES),
        s3,
        metrics,
        config,
        agent_url: edge.agent_url,
        agent_ca: edge.agent_ca,
        builds: Arc::new(state::Registry::default()),
        journal: Arc::clone(&journal),
        platforms,
        stopping: tokio_util::sync::CancellationToken::new(),
        background: Default::default(),
        supervisors: Default::default(),
        retention: Default::default(),
    });
    app.spawn(Arc::clone(&journal).run_writer(Arc::clone(&app.builds) as Arc<dyn journal::Builds>));
    app.spawn(Arc::clone(&journal).watch_storage());
    app.spawn(fence(Arc::clone(&app)));
    app.spawn(supervisor::watch_exits(Arc::clone(&app), exit_rx));
    startup::resume_builds(&app, restored);
    app.spawn(forget_old_builds(Arc::clone(&app)));
    Ok(serve_app(app, listener, addr, edge.certificates))
}

/// What the controller shows the network, from its configuration: checked
/// before anything else starts.
struct Edge {
    certificates: Option<Arc<tls::Certificates>>,
    agent_ca: Option<String>,
    agent_url: String,
    client_token: Option<bakery_protocol::spec::Secret>,
    oidc: Option<auth::oidc::Oidc>,
}

impl Edge {
    fn from_config(config: &Config, addr: SocketAddr) -> Result<Edge, StartError> {
        let certificates = tls::from_config(
            config.tls_cert_file.as_deref(),
            config.tls_key_file.as_deref(),
        )?;
        let agent_ca = config
            .agent_ca_file
            .as_deref()
            .map(tls::agent_ca)
            .transpose()?;
        let scheme = if certificates.is_some() {
            "https"
        } else {
            "http"
        };
        let agent_url = config
            .controller_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{addr}"));
        let client_token = config.client_token()?;
        serve::warn_if_exposed(config, addr, certificates.is_some(), client_token.is_some());
        let oidc = auth::oidc::Oidc::from_config(
            &config.oidc_issuers,
            &config.oidc_audience,
            &config.oidc_allow,
        )
        .map_err(|e| StartError::Config(config::ConfigError::new(e)))?;
        Ok(Edge {
            certificates,
            agent_ca,
            agent_url,
            client_token,
            oidc,
        })
    }
}

/// The contexts bucket, when S3 is configured.
async fn connect_s3(config: &Config) -> Option<bakery_store::S3Store> {
    let location = config.s3()?;
    let store =
        bakery_store::S3Store::connect(bakery_store::S3Settings::from_location(&location)).await;
    tracing::info!(bucket = %location.bucket, region = ?store.location().region, "build contexts in S3");
    Some(store)
}

/// Serves `app`'s routes on `listener` (over TLS with `certificates`).
fn serve_app(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    certificates: Option<Arc<tls::Certificates>>,
) -> Running {
    let limits = serve::Limits {
        max_connections: app
            .config
            .max_connections
            .unwrap_or_else(|| serve::default_max_connections(serve::raise_file_limit())),
    };
    let acceptor = certificates.as_ref().map(tls::Certificates::acceptor);
    if let Some(certificates) = certificates {
        app.spawn(certificates.watch());
    }
    let tls = acceptor.is_some();
    let (shutdown, server) =
        serve::serve(listener, routes::router(Arc::clone(&app)), acceptor, limits);
    let names: Vec<&str> = app.platforms.values().map(|p| p.name()).collect();
    tracing::info!(%addr, tls, max_connections = limits.max_connections, platforms = ?names, default = %app.config.default_platform, "controller listening");
    Running {
        app,
        addr,
        server,
        shutdown,
        tls,
    }
}
