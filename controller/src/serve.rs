//! The controller's listener: plain HTTP, or HTTPS with [`crate::tls`],
//! with the limits a server facing the network needs and `axum::serve`
//! does not set:
//!
//! * a header-read timeout ([`HEADER_TIMEOUT`]), which is also how long a
//!   kept-alive connection may sit idle: a client that sends half its
//!   headers and stops (slowloris) is dropped;
//! * a TLS handshake timeout, the same;
//! * a cap on connections ([`Limits::max_connections`]), of which only
//!   half may be waiting for their first request's headers, and at most
//!   [`WAITING_PER_PEER`] from one address; a new connection takes the
//!   place of the oldest waiting one when they are full ([`Waiting`]), so
//!   connections that never send a request, from however many addresses,
//!   cannot keep out agents, clients and followers.
//!
//! Stopping: no new connections, each connection finishes its request in
//! flight ([`hyper`]'s graceful shutdown; streams end on
//! [`crate::App::stopping`]), and the server task ends when all have.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

/// Longest a client may take to send a request's headers (from the
/// connection's start, or from the end of its previous request), or to
/// finish a TLS handshake.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections one address may have open that have not sent their
/// first request's headers for [`PEER_GRACE`] or longer, once the pool of
/// such connections is half full. A client sends them at once; a proxy in
/// front (all connections from its address) too.
pub const WAITING_PER_PEER: usize = 64;

/// How long a connection may wait for its headers before it counts against
/// [`WAITING_PER_PEER`]. A burst of real clients from one address (a
/// thousand agents starting behind one load balancer, or on loopback)
/// connects faster than the controller reads their headers: counting those
/// young connections closed working agents' connections and failed their
/// builds. Half-open connections are old by the time they matter.
pub const PEER_GRACE: Duration = Duration::from_secs(1);

/// What the listener allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once; past it new ones are closed at once.
    pub max_connections: usize,
}

/// The listener's shutdown switch and its task.
pub type Server = (
    watch::Sender<bool>,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

/// Serves `router` on `listener` (with TLS when `tls` is given) until the
/// returned sender says stop.
pub fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
) -> Server {
    let (shutdown, stop) = watch::channel(false);
    let server = tokio::spawn(accept_loop(listener, router, tls, limits, stop));
    (shutdown, server)
}

async fn accept_loop(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections.max(2)));
    let waiting = Waiting::new((limits.max_connections / 2).max(1));
    let mut connections = JoinSet::new();
    let mut refused = Throttled::default();
    loop {
        let (tcp, peer) = tokio::select! {
            () = stopped(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors (EMFILE) and the like: the
                    // connection stays in the backlog; try again shortly.
                    refused.warn(&format!("accepting a connection: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(open_permit) = Arc::clone(&open).try_acquire_owned() else {
            refused.warn(&format!(
                "closing a connection from {}: {} connections are open; raise MAX_CONNECTIONS if this is load",
                peer.ip(),
                limits.max_connections
            ));
            continue;
        };
        let (waiting_permit, evict, made_room) = waiting.enter(peer.ip());
        if made_room {
            refused.warn(&format!(
                "closed the oldest connection that had sent no request yet, to make room for one from {}: half of MAX_CONNECTIONS ({}), or {WAITING_PER_PEER} from one address, were waiting for headers (a slow or hostile client)",
                peer.ip(),
                limits.max_connections
            ));
        }
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        let (router, tls, stop) = (router.clone(), tls.clone(), stop.clone());
        connections.spawn(async move {
            let _open = open_permit;
            let waiting = Arc::new(Mutex::new(Some(waiting_permit)));
            let serve = async move {
                match tls {
                    None => connection(tcp, peer, router, waiting, stop).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => connection(stream, peer, router, waiting, stop).await,
                            Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake: {e}"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            };
            // Closed to make room while still waiting for its headers (once
            // they came, nothing cancels it).
            tokio::select! {
                () = serve => {}
                () = evict.cancelled() => tracing::debug!(%peer, "closed to make room"),
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serves one connection's requests until it closes or the server stops.
/// Its first request's headers free its place among the waiting.
async fn connection<I>(
    io: I,
    peer: SocketAddr,
    router: axum::Router,
    waiting: Arc<Mutex<Option<WaitingGuard>>>,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        waiting.lock().unwrap_or_else(|p| p.into_inner()).take();
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        async move { router.call(request.map(Body::new)).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, "connection: {e}");
            }
        }
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Connections that have not sent their first request's headers, oldest
/// first. When the pool (or one address's share of it) is full, the
/// oldest waiting connection is closed to make room: a client sends its
/// headers within milliseconds of connecting, so a pool full of half-open
/// connections (from any number of addresses) cannot keep it out.
#[derive(Clone)]
struct Waiting {
    cap: usize,
    /// [`PEER_GRACE`], shorter in tests.
    grace: Duration,
    state: Arc<Mutex<WaitState>>,
}

#[derive(Default)]
struct WaitState {
    next: u64,
    /// By arrival: the peer, when it came, and what closes its connection.
    entries: BTreeMap<u64, (IpAddr, std::time::Instant, CancellationToken)>,
    per_peer: HashMap<IpAddr, usize>,
}

/// One waiting connection's place, given back when dropped.
struct WaitingGuard {
    id: u64,
    state: Arc<Mutex<WaitState>>,
}

impl WaitState {
    fn remove(&mut self, id: u64) -> Option<CancellationToken> {
        let (peer, _, token) = self.entries.remove(&id)?;
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
        Some(token)
    }
}

impl Waiting {
    fn new(cap: usize) -> Waiting {
        Waiting {
            cap,
            grace: PEER_GRACE,
            state: Arc::default(),
        }
    }

    /// A place for a connection from `peer`, and what closes it if it is
    /// still waiting when the place is needed; whether an older connection
    /// was closed to make room.
    fn enter(&self, peer: IpAddr) -> (WaitingGuard, CancellationToken, bool) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // The peer's oldest waiting connection, if the pool is half full,
        // the peer has too many, and that one has waited past the grace;
        // else, when the pool is full, the oldest of the address that holds
        // the most. (With the pool
        // less than half full nobody is kept out: a thousand agents that
        // connect at once to a controller too busy to read them for a
        // second were cut as if half-open.)
        let pressed = state.entries.len() >= self.cap / 2;
        let over = state.per_peer.get(&peer).copied().unwrap_or(0) >= WAITING_PER_PEER;
        let peer_oldest = (pressed && over)
            .then(|| {
                state
                    .entries
                    .iter()
                    .find(|(_, (p, _, _))| *p == peer)
                    .filter(|(_, (_, since, _))| since.elapsed() >= self.grace)
                    .map(|(id, _)| *id)
            })
            .flatten();
        // A full pool makes room at the expense of the address holding the
        // most of it: one address cannot push out everybody else's.
        let oldest = peer_oldest.or_else(|| {
            (state.entries.len() >= self.cap)
                .then(|| {
                    let heaviest = state
                        .per_peer
                        .iter()
                        .max_by_key(|(_, n)| **n)
                        .map(|(p, _)| *p)?;
                    state
                        .entries
                        .iter()
                        .find(|(_, (p, _, _))| *p == heaviest)
                        .map(|(id, _)| *id)
                })
                .flatten()
        });
        let evicted = oldest.and_then(|id| state.remove(id)).is_some_and(|token| {
            token.cancel();
            true
        });
        let id = state.next;
        state.next += 1;
        let token = CancellationToken::new();
        state
            .entries
            .insert(id, (peer, std::time::Instant::now(), token.clone()));
        *state.per_peer.entry(peer).or_default() += 1;
        let guard = WaitingGuard {
            id,
            state: Arc::clone(&self.state),
        };
        (guard, token, evicted)
    }
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.remove(self.id);
    }
}

/// Resolves once the server is told to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A warning logged at most once every ten seconds, with how many like it
/// were not: a flood of refused connections must not flood the log.
#[derive(Default)]
struct Throttled {
    last: Option<std::time::Instant>,
    unlogged: u64,
}

impl Throttled {
    fn warn(&mut self, message: &str) {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(similar_not_logged = self.unlogged, "{message}");
        self.last = Some(std::time::Instant::now());
        self.unlogged = 0;
    }
}

/// Raises the soft limit on open files to the hard limit, so that the
/// connection cap, not `EMFILE`, decides, and returns the limit now in
/// force (`None` where it cannot be read).
pub fn raise_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// The default connection cap for a file limit: room kept for the
/// journal, agents' processes, registry and cloud connections.
pub fn default_max_connections(file_limit: Option<u64>) -> usize {
    let limit = file_limit.unwrap_or(1024).min(1 << 20) as usize;
    limit.saturating_sub(256).clamp(64, 16_384)
}

/// Connections the kernel queues for the controller before it accepts them
/// (capped by `net.core.somaxconn`). tokio's default of 1,024 overflowed
/// when a thousand builds started at once (each with an agent and a
/// follower connecting): the kernel dropped the extra SYNs and those
/// clients waited out TCP's one-second retransmission.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` the way `TcpListener::bind` does, with a deeper backlog.
pub async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for candidate in tokio::net::lookup_host(addr).await? {
        let socket = match candidate {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(candidate)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")
    }))
}

/// Warns of a controller that others on the network can reach without a
/// token, or that takes tokens and logins over plain HTTP.
pub fn warn_if_exposed(config: &crate::Config, addr: SocketAddr, tls: bool, token: bool) {
    if addr.ip().is_loopback() {
        return;
    }
    if !token && config.oidc_issuers.trim().is_empty() {
        tracing::warn!(
            %addr,
            "no CONTROLLER_TOKEN (or OIDC_ISSUERS) is set and the controller listens beyond loopback: anyone who can reach it can build, cancel and read logs; set CONTROLLER_TOKEN"
        );
    }
    if !tls {
        tracing::warn!(
            %addr,
            "serving plain HTTP beyond loopback: tokens and registry logins cross the network in clear unless a TLS-terminating proxy is in front; set TLS_CERT_FILE and TLS_KEY_FILE, or see docs/tls.md"
        );
    }
}

#[cfg(test)]
mod waiting_tests {
    use super::*;

    fn waiting(cap: usize, grace: Duration) -> Waiting {
        Waiting {
            cap,
            grace,
            state: Arc::default(),
        }
    }

    /// A thousand agents behind one address connect at once, to a
    /// controller too busy to read them within the grace: none of their
    /// connections is closed for another while the pool is not half full.
    #[test]
    fn a_burst_from_one_address_is_not_cut() {
        let w = waiting(8_192, Duration::ZERO);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..1_000).map(|_| w.enter(peer)).collect();
        assert!(held
            .iter()
            .all(|(_, token, evicted)| !evicted && !token.is_cancelled()));
    }

    /// Once they have waited past the grace, one address's half-open
    /// connections make room for its new ones, oldest first; the pool's
    /// own cap holds whatever their age.
    #[test]
    fn old_waiting_connections_of_one_address_make_room() {
        let w = waiting(2 * WAITING_PER_PEER, Duration::ZERO);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..WAITING_PER_PEER).map(|_| w.enter(peer)).collect();
        let (_g, _t, evicted) = w.enter(peer);
        assert!(evicted);
        assert!(held[0].1.is_cancelled() && !held[1].1.is_cancelled());

        // A full pool: the address holding most of it gives way, even when
        // another address's connection is older.
        let small = waiting(10, Duration::from_secs(60));
        let (other, third): (IpAddr, IpAddr) =
            ("10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let earliest = small.enter(third);
        let flood: Vec<_> = (0..9).map(|_| small.enter(peer)).collect();
        let (_g, _t, evicted) = small.enter(other);
        assert!(evicted && flood[0].1.is_cancelled());
        assert!(!earliest.1.is_cancelled(), "the lone older client stays");
    }
}
