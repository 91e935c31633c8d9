//! The agent's endpoints: `/v1/agent/tasks/{task}/…`.
//!
//! Each is behind [`require_task_token`], which checks the task's own token
//! before anything reads the request body: an unauthenticated request
//! costs the controller a header's worth of memory, whatever it sends.
//! Every value an agent reports is checked again here
//! ([`bakery_protocol::validate`]): the build's own code can read its agent's
//! token and send anything.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bakery_protocol::api::{AgentLogs, AgentResult, AgentTask, ContextSource};
use bakery_protocol::object::Object;
use bakery_protocol::Platform;

use crate::auth::bearer;
use crate::routes::{durable, unavailable, Failure, Result};
use crate::state::Build;
use crate::App;

/// The task an authenticated agent request is for.
#[derive(Clone)]
pub struct AgentAuth {
    /// The build the task belongs to.
    pub build: Arc<Build>,
    /// The task's position in the build's tasks.
    pub index: usize,
}

/// Resolves the bearer token to its task, before any body is read. Tokens
/// of finished tasks are no longer accepted.
pub async fn require_task_token(
    State(app): State<Arc<App>>,
    task: std::result::Result<Path<String>, axum::extract::rejection::PathRejection>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let unauthorized = || Failure::new(StatusCode::UNAUTHORIZED, "missing or wrong task token");
    let Ok(Path(task)) = task else {
        return unauthorized().into_response();
    };
    let Some(given) = bearer(request.headers()).map(str::to_string) else {
        return unauthorized().into_response();
    };
    let Some((build, index)) = app.builds.task(&task) else {
        return unauthorized().into_response();
    };
    if !build.read().agent_may_speak(index, &given) {
        return unauthorized().into_response();
    }
    request.extensions_mut().insert(AgentAuth { build, index });
    next.run(request).await
}

/// `HEAD …/spec`: whether the token is good, without checking in.
pub async fn agent_spec_head(Extension(_): Extension<AgentAuth>) -> StatusCode {
    StatusCode::OK
}

/// The check-in: the task's spec, once. Recorded before it is answered,
/// and undone if it cannot be saved, so that the agent's retry (it retries
/// a 503) gets the spec instead of "already checked in".
pub async fn agent_spec(
    State(app): State<Arc<App>>,
    Extension(AgentAuth { build, index }): Extension<AgentAuth>,
) -> Result<Json<AgentTask>> {
    build
        .update(|b| b.check_in(index, Instant::now()))
        .map_err(|_| Failure::new(StatusCode::CONFLICT, "this task has already checked in"))?;
    let (spec, launched, platform, arch) = {
        let read = build.read();
        let task = read.task(index);
        let req = task.request();
        // Local agents get no cloud credentials: the controller reads S3
        // for them (see `agent_context`).
        let context = match app.s3().map(bakery_store::S3Store::location) {
            Some(location) if task.platform() != Platform::Local => ContextSource::S3 {
                location,
                key: req.context_key.clone(),
            },
            _ => ContextSource::Controller {
                key: req.context_key.clone(),
            },
        };
        let spec = AgentTask {
            build_id: build.id.clone(),
            service: read.service().to_string(),
            task_id: task.id().to_string(),
            arch: req.arch,
            push: req.push.clone(),
            context,
            context_bytes: req.context_bytes,
            spec: req.spec.clone(),
        };
        (spec, task.launched_at(), task.platform(), task.arch())
    };
    // Checked in is saved before the agent gets its spec: resumed after a
    // crash, the task must not wait for a check-in that already happened.
    if let Err(e) = durable(&app).await {
        build.update(|b| b.undo_check_in(index));
        return Err(e);
    }
    if let Some(launched) = launched {
        let name = app.platform(platform).name();
        app.metrics.agent_started(name, arch, launched.elapsed());
    }
    Ok(Json(spec))
}

/// The context archive: from the controller's disk, or from S3 on behalf
/// of a local agent.
pub async fn agent_context(
    State(app): State<Arc<App>>,
    Extension(AgentAuth { build, index }): Extension<AgentAuth>,
) -> Result<Response> {
    let key = build.read().task(index).request().context_key.clone();
    let headers = [(header::CONTENT_TYPE, "application/octet-stream")];
    if let Some(store) = app.s3() {
        let reader = store
            .download(&key)
            .await
            .map_err(|e| Failure::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
        let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(reader, 1 << 16));
        return Ok((headers, body).into_response());
    }
    let path = app.disk.path(&key);
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| Failure::new(StatusCode::NOT_FOUND, format!("context {key}: {e}")))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 16));
    Ok((headers, body).into_response())
}

/// `POST /v1/agent/tasks/{task}/logs`: a batch of log lines, answered
/// 204 once it is on disk; lines at or below the highest seq already
/// received are dropped, so a resent batch is not logged twice.
pub async fn agent_logs(
    State(app): State<Arc<App>>,
    Extension(AgentAuth { build, index }): Extension<AgentAuth>,
    batch: std::result::Result<Json<Object<AgentLogs>>, JsonRejection>,
) -> Result<StatusCode> {
    let Json(Object(batch)) = batch?;
    if batch.lines.iter().any(|l| l.seq == 0) {
        return Err(Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a line's seq counts from 1",
        ));
    }
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
pub async fn agent_log_stream(
    State(app): State<Arc<App>>,
    Extension(AgentAuth { build, index }): Extension<AgentAuth>,
    body: Body,
) -> Result<Response> {
    let acks = crate::log_stream::serve(app, build, index, body);
    Ok(([(header::CONTENT_TYPE, "text/plain")], acks).into_response())
}

/// The agent's outcome. Saved before it is acted on (the supervisor waits:
/// it would otherwise stop the agent, and move the build on, on a result
/// the journal may never hold), and undone if it cannot be saved, so that
/// the agent's retry is taken rather than refused as "task ended".
pub async fn agent_result(
    State(app): State<Arc<App>>,
    Extension(AgentAuth { build, index }): Extension<AgentAuth>,
    result: std::result::Result<Json<Object<AgentResult>>, JsonRejection>,
) -> Result<StatusCode> {
    let Json(Object(result)) = result?;
    let recorded = build.update(|b| b.record_result(index, result));
    if let Err(e) = durable(&app).await {
        build.update(|b| b.undo_result(index));
        return Err(e);
    }
    build.update(|b| b.result_saved(index));
    match recorded.refused {
        Some(why) => Err(Failure::new(StatusCode::UNPROCESSABLE_ENTITY, why)),
        None => Ok(StatusCode::NO_CONTENT),
    }
}
