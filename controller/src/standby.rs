//! A standby controller (STANDBY=true, with DATABASE_URL): it waits for
//! the controller that holds the state database to stop, then takes over
//! its builds (it loads them, adopts their agents, enforces their
//! deadlines) and serves.
//!
//! While it waits it answers on its address: `/healthz` 200 (alive).
//! Where the active controller published its REPLICA_URL, the standby
//! forwards every other request there ([`crate::forward`]) and `/readyz`
//! answers 200, so any replica serves any request; where it did not,
//! everything else (`/readyz` included) is 503 with a `Retry-After`, so a
//! load balancer routes to the active controller and an agent or client
//! that reaches the standby retries.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use bakery_protocol::api::ApiError;
use tokio::net::TcpListener;

use crate::forward::{self, Forwarder};
use crate::{serve, tls};

/// What a standby answers to anything but `/healthz`.
const WAITING: &str = "this controller is a standby: another controller holds the state \
     database (DATABASE_URL); it takes over when that one stops. Retry";

/// Longest the standby's own server takes to stop once it takes over.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The standby's server, until [`Standby::take_over`].
pub(crate) struct Standby {
    server: serve::Server,
}

/// When `standby`, starts answering on `listener` as a standby. Returns
/// the listener the controller serves on once it takes over: the same
/// socket, so nothing a client sent meanwhile meets a closed port.
pub(crate) fn start_if(
    standby: bool,
    listener: TcpListener,
    certificates: Option<&Arc<tls::Certificates>>,
    forwarder: Option<Arc<Forwarder>>,
) -> std::io::Result<(TcpListener, Option<Standby>)> {
    if !standby {
        return Ok((listener, None));
    }
    let socket = listener.into_std()?;
    let later = TcpListener::from_std(socket.try_clone()?)?;
    let now = TcpListener::from_std(socket)?;
    let router: Router = match forwarder {
        Some(forwarder) => Router::new()
            .route("/healthz", get(alive))
            .route("/readyz", get(ready))
            .fallback(forward::forward)
            .with_state(forwarder),
        None => Router::new()
            .route("/healthz", get(alive))
            .fallback(waiting),
    };
    let acceptor = certificates.map(tls::Certificates::acceptor);
    let limits = serve::Limits {
        max_connections: 256,
    };
    tracing::info!("standby: waiting for the controller that holds the state database to stop");
    Ok((
        later,
        Some(Standby {
            server: serve::serve(now, router, acceptor, limits),
        }),
    ))
}

impl Standby {
    /// Stops answering as a standby: the controller is taking over.
    pub(crate) async fn take_over(self) {
        let (shutdown, mut server) = self.server;
        let _ = shutdown.send(true);
        if tokio::time::timeout(STOP_GRACE, &mut server).await.is_err() {
            server.abort();
        }
        tracing::info!("standby: the state database is free; taking over its builds");
    }
}

async fn alive() -> &'static str {
    "ok\n"
}

/// Ready while there is an active controller to forward to.
async fn ready(
    axum::extract::State(to): axum::extract::State<Arc<Forwarder>>,
) -> axum::response::Response {
    if to.ready() {
        "ready (a standby, forwarding to the active controller)\n".into_response()
    } else {
        waiting().await.into_response()
    }
}

async fn waiting() -> impl IntoResponse {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "5")],
        Json(ApiError {
            error: WAITING.into(),
        }),
    )
}
