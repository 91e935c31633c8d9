//! The HTTP API: the router, authentication, and the client's endpoints.
//! Log following is in [`crate::follow`], the agent's endpoints in
//! [`crate::agent_api`].
//!
//! Every failure answers 4xx/5xx with `{"error": "..."}` that says what to
//! do, unknown paths and methods included; no handler panics on input.
//! Each route reads at most what it needs: small JSON bodies everywhere,
//! the context cap only where contexts are uploaded.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use bakery_protocol::api::{ApiError, BuildStatus, ContextStore, CreateBuild, Created, Info};
use bakery_protocol::object::Object;
use bakery_protocol::validate;
use bakery_protocol::ContextKey;

use crate::agent_api::{self, require_task_token};
use crate::auth::Caller;
use crate::state::Build;
use crate::App;

/// Body limit of routes that take small JSON (status, cancel, results).
const SMALL_BODY: usize = 64 << 10;

/// An agent's log batch: up to 1,000 lines of up to 64 KiB each.
const AGENT_BATCH_BODY: usize = 72 << 20;

/// An agent's result: its error text is cut to 4 KiB once here, but an
/// agent is not refused for a long one.
const AGENT_RESULT_BODY: usize = 1 << 20;

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The controller's HTTP API: client endpoints (behind the client token or OIDC), agent endpoints
/// (behind their task tokens), and the unauthenticated probes, metrics and OpenAPI document.
pub fn router(app: Arc<App>) -> Router {
    // Client endpoints need the controller token when one is configured;
    // agent endpoints authenticate with their own per-task token. Both
    // checks run before any body is read.
    let client = Router::new()
        .route("/v1/info", get(info))
        .route(
            "/v1/builds",
            post(create_build).layer(DefaultBodyLimit::max(validate::MAX_CREATE_BYTES)),
        )
        .route("/v1/builds/{id}", get(build_status))
        .route("/v1/builds/{id}/logs", get(crate::follow::follow_logs))
        .route("/v1/builds/{id}/cancel", post(cancel_build))
        .route("/v1/contexts/{*key}", put(put_context).head(head_context))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            crate::auth::require_client,
        ));
    let agent = Router::new()
        .route(
            "/v1/agent/tasks/{task}/spec",
            get(agent_api::agent_spec).head(agent_api::agent_spec_head),
        )
        .route(
            "/v1/agent/tasks/{task}/context",
            get(agent_api::agent_context),
        )
        .route(
            "/v1/agent/tasks/{task}/logs",
            post(agent_api::agent_logs).layer(DefaultBodyLimit::max(AGENT_BATCH_BODY)),
        )
        .route(
            "/v1/agent/tasks/{task}/log-stream",
            post(agent_api::agent_log_stream),
        )
        .route(
            "/v1/agent/tasks/{task}/result",
            post(agent_api::agent_result).layer(DefaultBodyLimit::max(AGENT_RESULT_BODY)),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            require_task_token,
        ));
    Router::new()
        .merge(client)
        .merge(agent)
        // Probes and scrapes carry no secrets and need no token, as a
        // kubelet or Prometheus expects.
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.yaml", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(SMALL_BODY))
        .with_state(app)
}

async fn not_found() -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; the API is described at /openapi.yaml",
    )
}

async fn method_not_allowed() -> Failure {
    Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint does not take that method; see /openapi.yaml",
    )
}

/// Liveness: the process serves HTTP.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the journal accepts writes, so a build submitted now can be
/// acknowledged (a full or read-only disk, or a database that does not
/// answer, makes this fail, and a load balancer stops sending builds here).
async fn readyz(State(app): State<Arc<App>>) -> Response {
    match tokio::time::timeout(std::time::Duration::from_secs(5), app.journal.ready()).await {
        Ok(Ok(())) => "ready\n".into_response(),
        Ok(Err(e)) => {
            Failure::new(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}")).into_response()
        }
        Err(_) => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the build journal did not commit within 5 s (builds.redb: is DATA_DIR's \
             disk full or slow? DATABASE_URL: is the database reachable?)",
        )
        .into_response(),
    }
}

/// Prometheus text exposition; names in [`crate::metrics::NAMES`].
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let states: Vec<_> = app.builds.all().iter().map(|b| b.status().state).collect();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(states),
    )
        .into_response()
}

/// The OpenAPI 3.1 description of this API, kept beside the code and
/// checked against the router by a test.
pub const OPENAPI: &str = include_str!("../openapi.yaml");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI).into_response()
}

/// An API error: a status and a message for the caller.
pub struct Failure(StatusCode, String);

impl Failure {
    /// A failure answered with `status` and `message` (as `{"error": message}`).
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Failure(status, message.into())
    }
    /// The message the caller is sent.
    pub fn message(&self) -> &str {
        &self.1
    }
    /// The same answer, its message followed by `more` (what it meant here).
    pub fn adding(self, more: &str) -> Self {
        Failure(self.0, format!("{}; {more}", self.1))
    }
    fn not_found(what: &str, id: &str) -> Self {
        let shown: String = id.chars().take(80).flat_map(char::escape_default).collect();
        Failure::new(
            StatusCode::NOT_FOUND,
            format!("no {what} `{shown}` on this controller"),
        )
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

// axum's own refusals (a body that is not JSON, too large, a bad query)
// keep their status and message, in the API's error body.
macro_rules! rejections_are_failures {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(e: $t) -> Self {
                Failure::new(e.status(), e.body_text())
            }
        }
    )*};
}
rejections_are_failures!(JsonRejection, PathRejection, QueryRejection);

/// What a handler returns: its answer, or a [`Failure`].
pub type Result<T> = std::result::Result<T, Failure>;

/// Waits until the changes made so far are in the journal: what a handler
/// acknowledges must survive a controller crash. 503 otherwise, which
/// agents and clients retry.
pub async fn durable(app: &App) -> Result<()> {
    app.journal.flush().await.map_err(unavailable)
}

/// A journal that cannot save: 503, which agents and clients retry.
pub fn unavailable(e: crate::journal::JournalError) -> Failure {
    Failure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

async fn info(State(app): State<Arc<App>>) -> Json<Info> {
    Json(Info {
        version: env!("CARGO_PKG_VERSION").to_string(),
        context_store: match app.s3() {
            Some(store) => ContextStore::S3(store.location()),
            None => ContextStore::Controller,
        },
        default_platform: app.config.default_platform,
    })
}

/// `POST /v1/builds`: the request checked, then [`crate::create`].
async fn create_build(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    request: std::result::Result<Json<Object<CreateBuild>>, JsonRejection>,
) -> Result<(StatusCode, Json<Created>)> {
    let Json(Object(request)) = request?;
    validate::check_create(&request)
        .map_err(|e| Failure::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    check_platforms_and_contexts(&app, &request).await?;
    let key = idempotency_key(&headers)?.map(|k| caller.scoped_key(&k));
    let id = crate::create::create(&app, &caller, key.as_deref(), request).await?;
    Ok((StatusCode::CREATED, Json(Created { id })))
}

/// The `Idempotency-Key` header, if sent: printable, at most 255 characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let printable = |v: &str| v.bytes().all(|b| (0x21..=0x7e).contains(&b));
    match value.to_str() {
        Ok(v) if !v.is_empty() && v.len() <= MAX_IDEMPOTENCY_KEY && printable(v) => {
            Ok(Some(v.to_string()))
        }
        _ => Err(Failure::new(
            StatusCode::BAD_REQUEST,
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
            ),
        )),
    }
}

/// Every task's platform runs here, and every context is where the agent
/// will look for it.
async fn check_platforms_and_contexts(app: &App, request: &CreateBuild) -> Result<()> {
    for t in &request.tasks {
        let platform = t.spec.platform.unwrap_or(app.config.default_platform);
        if !app.platforms.contains_key(&platform) {
            let mut have: Vec<String> = app.platforms.keys().map(|p| p.to_string()).collect();
            have.sort();
            return Err(Failure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "the {} build asks for platform `{platform}`, which this controller does not run (it runs: {}); remove `platform` from the config to use the default, `{}`",
                    t.arch,
                    have.join(", "),
                    app.config.default_platform
                ),
            ));
        }
        let builder = crate::platform::builder_of(platform);
        if let Some(what) = crate::platform::unsupported(builder, &t.spec) {
            return Err(Failure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "the {} build uses {what}, which {builder}, the builder of platform `{platform}`, does not have; COPY from the context or a stage instead, pass keys as build secrets, or build on the local platform (buildah)",
                    t.arch
                ),
            ));
        }
        if app.config.s3_bucket.is_none() && !app.disk.exists(&t.context_key).await {
            return Err(Failure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "context {} was not uploaded; PUT it to /v1/contexts/{} first",
                    t.context_key, t.context_key
                ),
            ));
        }
    }
    Ok(())
}

/// The build `id`, or 404 (also when it is another tenant's: the caller
/// learns nothing of builds it may not see).
pub fn find(app: &App, id: &str, caller: &Caller) -> Result<Arc<Build>> {
    app.builds
        .get(id)
        .filter(|b| caller.may_access(b.read().created_by()))
        .ok_or_else(|| Failure::not_found("build", id))
}

async fn build_status(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    id: std::result::Result<Path<String>, PathRejection>,
) -> Result<Json<BuildStatus>> {
    let Path(id) = id?;
    Ok(Json(find(&app, &id, &caller)?.status()))
}

/// Saved before it is acted on: a cancel answered 503 stopped nothing.
async fn cancel_build(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    id: std::result::Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<BuildStatus>)> {
    let Path(id) = id?;
    let build = find(&app, &id, &caller)?;
    tracing::info!(build = %id, by = %caller.creator(), "cancel asked for");
    if !build.update(|b| b.request_cancel()) {
        return Ok((StatusCode::ACCEPTED, Json(build.status())));
    }
    let saved = durable(&app).await;
    build.update(|b| b.cancel_saved(saved.is_ok()));
    saved?;
    Ok((StatusCode::ACCEPTED, Json(build.status())))
}

/// The context key of `/v1/contexts/{*key}`.
fn context_key(key: std::result::Result<Path<String>, PathRejection>) -> Result<ContextKey> {
    let Path(key) = key?;
    key.parse()
        .map_err(|e: String| Failure::new(StatusCode::BAD_REQUEST, e))
}

async fn head_context(
    State(app): State<Arc<App>>,
    key: std::result::Result<Path<String>, PathRejection>,
) -> Result<StatusCode> {
    let key = context_key(key)?;
    if app.disk.exists_and_touch(&key).await {
        Ok(StatusCode::OK)
    } else {
        Ok(StatusCode::NOT_FOUND)
    }
}

async fn put_context(
    State(app): State<Arc<App>>,
    key: std::result::Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<StatusCode> {
    let key = context_key(key)?;
    if app.config.s3_bucket.is_some() {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            "this controller stores contexts in S3; upload there (S3_BUCKET)",
        ));
    }
    if app.disk.exists_and_touch(&key).await {
        return Ok(StatusCode::OK);
    }
    use crate::store::StoreError;
    match app.disk.put(&key, body.into_data_stream()).await {
        Ok(_) => Ok(StatusCode::CREATED),
        Err(e @ (StoreError::DigestMismatch { .. } | StoreError::Body(_))) => {
            Err(Failure::new(StatusCode::BAD_REQUEST, e.to_string()))
        }
        Err(e @ StoreError::TooLarge(_)) => {
            Err(Failure::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()))
        }
        Err(e) => Err(Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}
