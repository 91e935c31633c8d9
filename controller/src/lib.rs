//! bakery-controller: the server between CI clients and build agents.
//!
//! Read top-down:
//!
//! * [`config`]: the environment variables it reads.
//! * [`routes`]: the HTTP API (clients: create, status, follow, cancel;
//!   agents: spec, context, logs, result).
//! * [`state`]: builds, tasks and their logs in memory.
//! * [`supervisor`]: one build from launch through timeouts to cleanup.
//! * [`platform`]: where agents run, behind one trait (`local` here).
//! * [`index`]: joining per-arch images into the multi-arch index.
//! * [`store`]: contexts on the controller's disk, when there is no S3.

pub mod config;
pub mod index;
pub mod oidc;
pub mod platform;
pub mod routes;
pub mod state;
pub mod store;
pub mod supervisor;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bakery_core::api::BuildState;
use bakery_core::Platform;
use tokio::net::TcpListener;

pub use config::Config;
use platform::local::LocalPlatform;
use platform::AgentPlatform;

/// Largest request body accepted: context uploads (when contexts are kept
/// on the controller) are streamed to disk under this cap.
const MAX_CONTEXT_BYTES: u64 = 8 << 30;

/// Everything the handlers and supervisors share.
pub struct App {
    pub config: Config,
    /// The URL agents are given to reach this controller.
    pub agent_url: String,
    pub builds: state::Registry,
    /// The platforms this controller can run agents on: DEFAULT_PLATFORM,
    /// plus ECS when ECS_CLUSTER is set (and k8s when configured).
    pub platforms: HashMap<Platform, Box<dyn AgentPlatform>>,
    pub disk: store::DiskStore,
    pub body_limit: usize,
    /// What clients must present, if anything.
    pub client_token: Option<bakery_core::settings::Secret>,
    /// OpenID Connect ID tokens accepted instead, if configured.
    pub oidc: Option<oidc::Oidc>,
    /// Agent slots per platform (MAX_CONCURRENT_AGENTS).
    pub slots: HashMap<Platform, Arc<tokio::sync::Semaphore>>,
}

/// A controller serving on a socket.
pub struct Running {
    pub app: Arc<App>,
    pub addr: SocketAddr,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    PlatformSetup(#[from] platform::PlatformError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

impl Running {
    /// The base URL clients use.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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
            build.lock().cancel_requested = true;
            build.touch();
        }
        for build in &unfinished {
            let mut changed = build.subscribe();
            while !build.status().state.is_terminal()
                || build.status().state == BuildState::Indexing
            {
                if tokio::time::timeout(std::time::Duration::from_secs(30), changed.changed())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        // The supervisor stops agents right after the build turns terminal.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
    }
}

impl App {
    /// The platform a task runs on.
    pub fn platform(&self, p: Platform) -> &dyn AgentPlatform {
        self.platforms
            .get(&p)
            .expect("tasks are only accepted for configured platforms")
            .as_ref()
    }
}

/// Binds `config.listen_addr` and serves until [`Running::shutdown`].
pub async fn start(config: Config) -> Result<Running, StartError> {
    // kube and the AWS SDK both use rustls: pick its crypto provider once,
    // or the first TLS client panics on the ambiguity.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let listener = TcpListener::bind(&config.listen_addr)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen_addr.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen_addr.clone(),
        source,
    })?;
    let agent_url = config
        .controller_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let (exit_tx, exit_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut wanted = vec![config.default_platform];
    if config.ecs_cluster.is_some() && !wanted.contains(&Platform::Ecs) {
        wanted.push(Platform::Ecs);
    }
    if config.k8s_namespace.is_some() && !wanted.contains(&Platform::K8s) {
        wanted.push(Platform::K8s);
    }
    let mut platforms: HashMap<Platform, Box<dyn AgentPlatform>> = HashMap::new();
    for p in wanted {
        let exits = exit_tx.clone();
        let platform: Box<dyn AgentPlatform> = match p {
            Platform::Local => Box::new(LocalPlatform::new(
                config
                    .agent_binary
                    .clone()
                    .unwrap_or_else(LocalPlatform::find_agent),
                config.data_dir.join("work"),
                exits,
            )),
            Platform::Ecs => Box::new(platform::ecs::EcsPlatform::start(&config, exits).await?),
            Platform::K8s => Box::new(platform::k8s::K8sPlatform::start(&config, exits).await?),
        };
        platforms.insert(p, platform);
    }
    let client_token = config.client_token()?;
    let oidc = oidc::Oidc::from_config(
        &config.oidc_issuers,
        &config.oidc_audience,
        &config.oidc_allow,
    )
    .map_err(|e| StartError::Config(config::ConfigError::new(e)))?;
    let slots = platforms
        .keys()
        .map(|p| {
            let n = config
                .max_concurrent_agents
                .unwrap_or(if *p == Platform::Local { 4 } else { 100 });
            (*p, Arc::new(tokio::sync::Semaphore::new(n.max(1))))
        })
        .collect();
    let app = Arc::new(App {
        client_token,
        oidc,
        slots,
        disk: store::DiskStore::new(&config.data_dir, MAX_CONTEXT_BYTES),
        config,
        agent_url,
        builds: state::Registry::default(),
        platforms,
        body_limit: MAX_CONTEXT_BYTES as usize,
    });
    tokio::spawn(supervisor::watch_exits(Arc::clone(&app), exit_rx));
    let (shutdown, mut stop) = tokio::sync::watch::channel(false);
    let router = routes::router(Arc::clone(&app));
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    });
    let names: Vec<&str> = app.platforms.values().map(|p| p.name()).collect();
    tracing::info!(%addr, platforms = ?names, default = %app.config.default_platform, "controller listening");
    Ok(Running {
        app,
        addr,
        server,
        shutdown,
    })
}
