//! Who is calling a client endpoint, and which builds they may touch.
//!
//! A caller presents the static `CONTROLLER_TOKEN` (an administrator: every
//! build), or a CI job's OpenID Connect ID token ([`oidc`]): a tenant that
//! sees, follows and cancels only the builds its own repository or project
//! created. With neither configured every caller is [`Creator::Anonymous`]
//! and sees everything (the loopback default). Refusals are logged with
//! their reason, at a bounded rate ([`Refusals`]); tokens never are.

pub mod oidc;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
pub use bakery_protocol::api::Creator;

use crate::routes::Failure;
use crate::state::token_matches;
use crate::App;

/// The authenticated caller of a client endpoint, in the request's
/// extensions once [`require_client`] let it through.
#[derive(Debug, Clone)]
pub struct Caller(Creator);

impl Caller {
    /// Who the caller is, as a build records it.
    pub fn creator(&self) -> &Creator {
        &self.0
    }

    /// Whether the caller may read, follow or cancel a build created by
    /// `created_by`: an administrator (or, without authentication, anyone)
    /// any build; a CI identity only its own tenant's.
    pub fn may_access(&self, created_by: Option<&Creator>) -> bool {
        match &self.0 {
            Creator::Anonymous | Creator::ControllerToken => true,
            Creator::Oidc(me) => matches!(
                created_by,
                Some(Creator::Oidc(them)) if them.tenant() == me.tenant()
            ),
        }
    }

    /// The caller's `Idempotency-Key` under its own namespace: a key
    /// another tenant chose must not return this tenant's build. The
    /// namespace is JSON (self-delimiting), so no tenant name and key can
    /// be mistaken for another pair (`org/a` + `b-1` vs `org/ab` + `-1`).
    pub fn scoped_key(&self, key: &str) -> String {
        let scope = match &self.0 {
            Creator::Oidc(id) => serde_json::json!(id.tenant()),
            Creator::ControllerToken | Creator::Anonymous => serde_json::json!("all"),
        };
        format!("{scope}{key}")
    }
}

/// The token of an `Authorization` header, whatever the case of its
/// `Bearer` scheme (RFC 9110 makes schemes case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Authenticates a client request before its body is read, and puts the
/// [`Caller`] in its extensions.
pub async fn require_client(
    State(app): State<Arc<App>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match authenticate(&app, request.headers()).await {
        Ok(creator) => {
            request.extensions_mut().insert(Caller(creator));
            next.run(request).await
        }
        Err(refusal) => {
            let peer = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(a)| *a);
            app.refusals
                .note(peer, request.uri().path(), refusal.message());
            refusal.into_response()
        }
    }
}

async fn authenticate(app: &App, headers: &HeaderMap) -> Result<Creator, Failure> {
    if app.client_token.is_none() && app.oidc.is_none() {
        return Ok(Creator::Anonymous);
    }
    let Some(token) = bearer(headers) else {
        return Err(Failure::new(
            StatusCode::UNAUTHORIZED,
            "this controller needs a token: set CONTROLLER_TOKEN (or CONTROLLER_TOKEN_FILE) for the client (the GitHub Action's `controller-token` input; a masked CONTROLLER_TOKEN variable for the GitLab component), or send a CI ID token (the action's `oidc-audience`, the component's `oidc: true`)",
        ));
    };
    if let Some(expected) = &app.client_token {
        if token_matches(token, expected.expose()) {
            return Ok(Creator::ControllerToken);
        }
    }
    // Three dot-separated parts: an ID token, checked against the issuers.
    if let (Some(oidc), 3) = (&app.oidc, token.split('.').count()) {
        return match oidc.verify(token).await {
            Ok(identity) => Ok(Creator::Oidc(identity)),
            Err(oidc::OidcError::Refused(why)) => Err(Failure::new(
                StatusCode::UNAUTHORIZED,
                format!("ID token refused: {why}"),
            )),
            Err(oidc::OidcError::Unavailable(why)) => Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("ID token not checked: {why}"),
            )),
        };
    }
    Err(Failure::new(
        StatusCode::UNAUTHORIZED,
        "wrong controller token; check CONTROLLER_TOKEN",
    ))
}

/// Logs refused authentications with their reason: the first
/// [`Refusals::PER_MINUTE`] of each minute, then how many more there were,
/// so a flood of bad tokens cannot flood the log.
#[derive(Debug)]
pub struct Refusals {
    window: Mutex<(Instant, u32)>,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            window: Mutex::new((Instant::now(), 0)),
        }
    }
}

impl Refusals {
    /// Refusals logged one by one per minute.
    pub const PER_MINUTE: u32 = 20;

    /// Notes one refusal of a request to `path` from `peer`.
    pub fn note(&self, peer: Option<SocketAddr>, path: &str, why: &str) {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if window.0.elapsed() >= Duration::from_secs(60) {
            let unlogged = window.1.saturating_sub(Self::PER_MINUTE);
            if unlogged > 0 {
                tracing::warn!(
                    unlogged,
                    "more authentications were refused in the last minute than were logged"
                );
            }
            *window = (Instant::now(), 0);
        }
        window.1 += 1;
        if window.1 <= Self::PER_MINUTE {
            let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.ip().to_string());
            let path: String = path.chars().take(120).collect();
            tracing::warn!(%peer, path, "authentication refused: {why}");
        }
    }
}
