//! HTTP handlers. Client endpoints first, then the agent's.
//!
//! Every failure answers 4xx/5xx with `{"error": "..."}` that says what to
//! do; no handler panics on input.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bakery_core::api::{
    self, AgentLogs, AgentResult, AgentTask, ApiError, BuildStatus, ContextSource, ContextStore,
    CreateBuild, Created, Info, TaskState,
};
use futures_util::stream::{self, Stream};
use serde::Deserialize;

use crate::state::{new_build_id, token_matches, Build};
use crate::App;

pub fn router(app: Arc<App>) -> Router {
    // Client endpoints need the controller token when one is configured;
    // agent endpoints authenticate with their own per-task token.
    let client = Router::new()
        .route("/v1/info", get(info))
        .route("/v1/builds", post(create_build))
        .route("/v1/builds/{id}", get(build_status))
        .route("/v1/builds/{id}/logs", get(follow_logs))
        .route("/v1/builds/{id}/cancel", post(cancel_build))
        .route("/v1/contexts/{*key}", put(put_context).head(head_context))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            require_client_token,
        ));
    Router::new()
        .merge(client)
        // Probes and scrapes carry no secrets and need no token, as a
        // kubelet or Prometheus expects.
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.yaml", get(openapi))
        .route("/v1/agent/tasks/{task}/spec", get(agent_spec))
        .route("/v1/agent/tasks/{task}/context", get(agent_context))
        .route("/v1/agent/tasks/{task}/logs", post(agent_logs))
        .route("/v1/agent/tasks/{task}/log-stream", post(agent_log_stream))
        .route("/v1/agent/tasks/{task}/result", post(agent_result))
        .layer(axum::extract::DefaultBodyLimit::max(app.body_limit))
        .with_state(app)
}

/// Liveness: the process serves HTTP.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the journal accepts writes, so a build submitted now can be
/// acknowledged (a full or read-only disk makes this fail, and a load
/// balancer stops sending builds here).
async fn readyz(State(app): State<Arc<App>>) -> Response {
    match tokio::time::timeout(std::time::Duration::from_secs(5), app.journal.flush()).await {
        Ok(Ok(())) => "ready\n".into_response(),
        Ok(Err(e)) => Failure::new(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}"))
            .into_response(),
        Err(_) => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the build journal did not commit within 5 s (is DATA_DIR's disk full or slow?)",
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

/// Checks `Authorization: Bearer <CONTROLLER_TOKEN>` in constant time.
async fn require_client_token(
    State(app): State<Arc<App>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if app.client_token.is_none() && app.oidc.is_none() {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let Some(token) = given else {
        return Failure::new(
            StatusCode::UNAUTHORIZED,
            "this controller needs a token: set CONTROLLER_TOKEN (or CONTROLLER_TOKEN_FILE) for the client, or send a CI ID token",
        )
        .into_response();
    };
    if let Some(expected) = &app.client_token {
        if token_matches(&token, expected.expose()) {
            return next.run(request).await;
        }
    }
    // Three dot-separated parts: an ID token, checked against the issuers.
    if let (Some(oidc), 3) = (&app.oidc, token.split('.').count()) {
        return match oidc.verify(&token).await {
            Ok(_) => next.run(request).await,
            Err(why) => Failure::new(StatusCode::UNAUTHORIZED, format!("ID token refused: {why}"))
                .into_response(),
        };
    }
    Failure::new(
        StatusCode::UNAUTHORIZED,
        "wrong controller token; check CONTROLLER_TOKEN",
    )
    .into_response()
}

/// An API error: a status and a message for the caller.
pub struct Failure(StatusCode, String);

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Failure(status, message.into())
    }
    fn not_found(what: &str, id: &str) -> Self {
        Failure::new(
            StatusCode::NOT_FOUND,
            format!("no {what} `{id}` on this controller"),
        )
    }
}

/// Waits until the changes made so far are in the journal: what a handler
/// acknowledges must survive a controller crash. 503 otherwise, which
/// agents and clients retry.
async fn durable(app: &App) -> Result<()> {
    app.journal.flush().await.map_err(unavailable)
}

fn unavailable(e: crate::journal::JournalError) -> Failure {
    Failure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

type Result<T> = std::result::Result<T, Failure>;

async fn info(State(app): State<Arc<App>>) -> Json<Info> {
    Json(Info {
        version: env!("CARGO_PKG_VERSION").to_string(),
        context_store: match app.config.s3() {
            Some(location) => ContextStore::S3(location),
            None => ContextStore::Controller,
        },
        default_platform: app.config.default_platform,
    })
}

async fn create_build(
    State(app): State<Arc<App>>,
    request: std::result::Result<Json<CreateBuild>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Created>)> {
    let Json(request) = request.map_err(|e| Failure::new(e.status(), e.body_text()))?;
    if request.tasks.is_empty() {
        return Err(Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a build needs at least one task",
        ));
    }
    for (i, t) in request.tasks.iter().enumerate() {
        if request.tasks[..i].iter().any(|o| o.arch == t.arch) {
            return Err(Failure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("arch {} appears twice", t.arch),
            ));
        }
        if t.push.is_none() && !t.spec.no_push {
            return Err(Failure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the {} task has no push destination", t.arch),
            ));
        }
        app.disk
            .path(&t.context_key)
            .map_err(|e| Failure::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    }
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
    }
    if app.config.s3_bucket.is_none() {
        for t in &request.tasks {
            if !app.disk.exists(&t.context_key).await.unwrap_or(false) {
                return Err(Failure::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "context {} was not uploaded; PUT it to /v1/contexts/{} first",
                        t.context_key, t.context_key
                    ),
                ));
            }
        }
    }
    let id = new_build_id();
    let build = Arc::new(Build::new(
        id.clone(),
        request,
        app.config.default_platform,
        Some(app.journal.signal()),
    ));
    app.builds.insert(Arc::clone(&build));
    // The id goes out only once the build would survive a restart.
    if let Err(e) = durable(&app).await {
        app.builds.remove(&id);
        return Err(e);
    }
    tracing::info!(build = %id, service = %build.status().service, "build created");
    app.spawn_supervisor(crate::supervisor::run(Arc::clone(&app), build));
    Ok((StatusCode::CREATED, Json(Created { id })))
}

fn find(app: &App, id: &str) -> Result<Arc<Build>> {
    app.builds
        .get(id)
        .ok_or_else(|| Failure::not_found("build", id))
}

async fn build_status(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<BuildStatus>> {
    Ok(Json(find(&app, &id)?.status()))
}

async fn cancel_build(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<BuildStatus>)> {
    let build = find(&app, &id)?;
    {
        let mut inner = build.lock();
        if !inner.status.state.is_terminal() {
            inner.cancel_requested = true;
        }
    }
    build.touch();
    durable(&app).await?;
    Ok((StatusCode::ACCEPTED, Json(build.status())))
}

#[derive(Deserialize)]
struct FollowQuery {
    /// Resume after this seq (same as the `Last-Event-ID` header).
    after: Option<u64>,
}

/// Server-sent events: `log` lines (id = seq), `status` changes, and a final
/// `end`. A reconnecting client sends `Last-Event-ID` and gets every line
/// after it exactly once.
async fn follow_logs(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(query): Query<FollowQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    let build = find(&app, &id)?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or(query.after)
        .unwrap_or(0);
    // Produced as the connection reads: no task or channel between the
    // build and the socket, and a batch of lines is written in one go.
    let follower = Follower {
        changed: build.subscribe(),
        build,
        cursor: after,
        last_status: None,
        queued: VecDeque::new(),
        finished: false,
    };
    let events = stream::unfold(follower, |mut f| async move {
        f.next().await.map(|e| (Ok::<_, Infallible>(e), f))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Most lines a follower takes from its build at a time: what a follower
/// that falls behind holds in memory (a thousand lagging followers of 256
/// lines each held ~75 MB).
const FOLLOW_STEP: usize = 64;

/// One client following one build's log.
struct Follower {
    build: Arc<Build>,
    changed: tokio::sync::watch::Receiver<u64>,
    /// The seq of the last line sent.
    cursor: u64,
    last_status: Option<BuildStatus>,
    /// Events made and not yet taken by the connection.
    queued: VecDeque<Event>,
    /// The `end` event is queued: nothing follows it.
    finished: bool,
}

impl Follower {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Some(event);
            }
            if self.finished {
                return None;
            }
            let (cursor, queued) = (&mut self.cursor, &mut self.queued);
            let (status, caught_up) = self.build.snapshot_after(*cursor, FOLLOW_STEP, |line| {
                *cursor = line.seq;
                queued.push_back(
                    Event::default()
                        .event(api::event::LOG)
                        .id(line.seq.to_string())
                        .json_data(line)
                        .expect("log events serialise"),
                );
            });
            let terminal = status.state.is_terminal();
            // The end waits for the last lines to be saved (and sent).
            let hold = terminal && !caught_up;
            if !hold && self.last_status.as_ref() != Some(&status) {
                let name = if terminal {
                    api::event::END
                } else {
                    api::event::STATUS
                };
                self.queued.push_back(
                    Event::default()
                        .event(name)
                        .json_data(&status)
                        .expect("status serialises"),
                );
                self.last_status = Some(status);
            }
            if terminal && !hold {
                self.finished = true;
                continue;
            }
            // Nothing new: wait for saved lines or a status change. (After a
            // full step the next one is taken as soon as this is sent.)
            if self.queued.is_empty() && self.changed.changed().await.is_err() {
                return None;
            }
        }
    }
}

async fn head_context(State(app): State<Arc<App>>, Path(key): Path<String>) -> Result<StatusCode> {
    match app.disk.exists(&key).await {
        Ok(true) => Ok(StatusCode::OK),
        Ok(false) => Ok(StatusCode::NOT_FOUND),
        Err(e) => Err(Failure::new(StatusCode::BAD_REQUEST, e.to_string())),
    }
}

async fn put_context(
    State(app): State<Arc<App>>,
    Path(key): Path<String>,
    body: Body,
) -> Result<StatusCode> {
    if app.config.s3_bucket.is_some() {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            "this controller stores contexts in S3; upload there (S3_BUCKET)",
        ));
    }
    if app.disk.exists(&key).await.unwrap_or(false) {
        return Ok(StatusCode::OK);
    }
    use crate::store::StoreError;
    match app.disk.put(&key, body.into_data_stream()).await {
        Ok(_) => Ok(StatusCode::CREATED),
        Err(
            e @ (StoreError::BadKey(_) | StoreError::DigestMismatch { .. } | StoreError::Body(_)),
        ) => Err(Failure::new(StatusCode::BAD_REQUEST, e.to_string())),
        Err(e @ StoreError::TooLarge(_)) => {
            Err(Failure::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()))
        }
        Err(e) => Err(Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

/// Resolves an agent's bearer token to its task. Tokens of finished tasks
/// are no longer accepted.
fn agent_task(app: &App, task: &str, headers: &HeaderMap) -> Result<(Arc<Build>, usize)> {
    let unauthorized = || Failure::new(StatusCode::UNAUTHORIZED, "missing or wrong task token");
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    let (build, index) = app.builds.task(task).ok_or_else(unauthorized)?;
    let valid = {
        let inner = build.lock();
        token_matches(given, &inner.runtime[index].token)
            && !inner.status.tasks[index].state.is_terminal()
    };
    if !valid {
        return Err(unauthorized());
    }
    Ok((build, index))
}

async fn agent_spec(
    State(app): State<Arc<App>>,
    Path(task): Path<String>,
    headers: HeaderMap,
) -> Result<Json<AgentTask>> {
    let (build, index) = agent_task(&app, &task, &headers)?;
    let spec = {
        let mut inner = build.lock();
        if inner.status.tasks[index].state != TaskState::Starting {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                "this task has already checked in",
            ));
        }
        inner.status.tasks[index].state = TaskState::Running;
        inner.runtime[index].checked_in_at = Some(Instant::now());
        if let Some(launched) = inner.runtime[index].launched_at {
            let platform = app.platform(inner.status.tasks[index].platform).name();
            app.metrics
                .agent_started(platform, inner.status.tasks[index].arch, launched.elapsed());
        }
        let req = &inner.request.tasks[index];
        AgentTask {
            build_id: build.id.clone(),
            task_id: task.clone(),
            arch: req.arch,
            push: req.push.clone(),
            context: match app.config.s3() {
                Some(location) => ContextSource::S3 {
                    location,
                    key: req.context_key.clone(),
                },
                None => ContextSource::Controller {
                    key: req.context_key.clone(),
                },
            },
            spec: req.spec.clone(),
        }
    };
    build.log(index, "agent started");
    // Checked in is recorded before the agent gets its spec: resumed after
    // a crash, the task must not wait for a check-in that already happened.
    durable(&app).await?;
    Ok(Json(spec))
}

async fn agent_context(
    State(app): State<Arc<App>>,
    Path(task): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let (build, index) = agent_task(&app, &task, &headers)?;
    let key = build.lock().request.tasks[index].context_key.clone();
    let path = app
        .disk
        .path(&key)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| Failure::new(StatusCode::NOT_FOUND, format!("context {key}: {e}")))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 16));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

async fn agent_logs(
    State(app): State<Arc<App>>,
    Path(task): Path<String>,
    headers: HeaderMap,
    batch: std::result::Result<Json<AgentLogs>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode> {
    let (build, index) = agent_task(&app, &task, &headers)?;
    let Json(batch) = batch.map_err(|e| Failure::new(e.status(), e.body_text()))?;
    let added = build
        .append_agent_lines(index, &batch.lines)
        .ok_or_else(|| Failure::new(StatusCode::UNAUTHORIZED, "this task has ended"))?;
    app.metrics.log_lines(added);
    // The agent forgets the batch once answered: it must be on disk first
    // (at the next paced commit, as lines on the log stream are).
    app.journal.flush_paced().await.map_err(unavailable)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The agent's whole log as one request; see [`crate::log_stream`].
async fn agent_log_stream(
    State(app): State<Arc<App>>,
    Path(task): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let (build, index) = agent_task(&app, &task, &headers)?;
    let acks = crate::log_stream::serve(app, build, index, body);
    Ok(([(header::CONTENT_TYPE, "text/plain")], acks).into_response())
}

async fn agent_result(
    State(app): State<Arc<App>>,
    Path(task): Path<String>,
    headers: HeaderMap,
    result: std::result::Result<Json<AgentResult>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode> {
    let (build, index) = agent_task(&app, &task, &headers)?;
    let Json(result) = result.map_err(|e| Failure::new(e.status(), e.body_text()))?;
    let message = {
        let mut inner = build.lock();
        let arch = inner.status.tasks[index].arch;
        match result {
            AgentResult::Succeeded { digest } => {
                let wants_push = inner.status.tasks[index].push.is_some();
                if wants_push && digest.is_none() {
                    inner.finish_task(
                        index,
                        TaskState::Failed,
                        Some("the agent reported success without a digest".into()),
                    );
                    format!("error: the {arch} agent reported success without a digest")
                } else {
                    inner.status.tasks[index].digest = digest.clone();
                    inner.finish_task(index, TaskState::Succeeded, None);
                    match digest {
                        Some(d) => format!(
                            "pushed {}@{d}",
                            inner.status.tasks[index].push.clone().unwrap_or_default()
                        ),
                        None => "built (not pushed)".to_string(),
                    }
                }
            }
            AgentResult::Failed { error } => {
                inner.finish_task(index, TaskState::Failed, Some(error.clone()));
                format!("error: {error}")
            }
        }
    };
    // The line goes in after the state change; the token is now spent, so log directly.
    build.log(index, &message);
    durable(&app).await?;
    Ok(StatusCode::NO_CONTENT)
}
