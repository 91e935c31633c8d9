//! A standby's forwarding (STANDBY with REPLICA_URL): a request that
//! reaches a standby is sent on to the controller that holds the state
//! database, at the URL it published, and its answer streamed back as it
//! comes (an SSE log, an agent's log stream). Authentication is the active
//! controller's: headers go through as they came.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bakery_protocol::api::ApiError;

/// Marks a request a standby forwarded: one that reaches another standby
/// is answered 503, never forwarded again (no loop between two standbys
/// that each think the other active).
pub(crate) const FORWARDED: &str = "x-bakery-forwarded";

/// How long connecting to the active controller may take.
// Without PostgreSQL there is no standby to forward (startup::forwarder).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Headers of one hop, not passed on (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// Where requests go, and the client that sends them.
pub(crate) struct Forwarder {
    http: reqwest::Client,
    active: Box<dyn Fn() -> Option<String> + Send + Sync>,
}

impl Forwarder {
    /// Forwards to whatever `active` says the active controller's URL is.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn new(
        active: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> Result<Forwarder, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Forwarder {
            http,
            active: Box::new(active),
        })
    }

    /// Whether there is an active controller to forward to.
    pub(crate) fn ready(&self) -> bool {
        (self.active)().is_some()
    }
}

/// Sends `request` on to the active controller and streams its answer back.
pub(crate) async fn forward(State(to): State<Arc<Forwarder>>, request: Request) -> Response {
    if request.headers().contains_key(FORWARDED) {
        return unavailable("a standby forwarded this request to another standby");
    }
    let Some(active) = (to.active)() else {
        return unavailable(
            "no controller that holds the state database published a REPLICA_URL to forward to",
        );
    };
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", active.trim_end_matches('/'));
    let mut headers = passed_on(&parts.headers);
    headers.remove(header::HOST);
    headers.insert(FORWARDED, "1".parse().expect("a valid header value"));
    let sent = to
        .http
        .request(parts.method, url)
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await;
    match sent {
        Ok(answer) => {
            let mut response = Response::builder().status(answer.status());
            if let Some(h) = response.headers_mut() {
                *h = passed_on(answer.headers());
            }
            response
                .body(Body::from_stream(answer.bytes_stream()))
                .unwrap_or_else(|_| unavailable("the active controller's answer was malformed"))
        }
        Err(e) => {
            tracing::debug!("forwarding to the active controller: {e}");
            unavailable("the active controller did not answer")
        }
    }
}

fn passed_on(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    for name in &HOP_BY_HOP {
        out.remove(name);
    }
    out.remove("keep-alive");
    out
}

fn unavailable(why: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(ApiError {
            error: format!("this controller is a standby and {why}; retry"),
        }),
    )
        .into_response()
}
