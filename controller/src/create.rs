//! Creating a build: what `POST /v1/builds` does once the request is
//! checked. Creation is atomic from the client's view: the id goes out
//! only once the build is saved, and a build whose creation was answered
//! with an error never runs (it is saved as not acknowledged, and a
//! controller that restarts fails such builds instead of starting them).
//! A client that retries with the same `Idempotency-Key` gets the same
//! build.

use std::sync::Arc;

use axum::http::StatusCode;
use bakery_protocol::api::CreateBuild;

use crate::auth::Caller;
use crate::routes::{durable, Failure, Result};
use crate::state::{new_build_id, Build, Reserved};
use crate::App;

/// Registers, saves and starts the build of `request`, or finds the one
/// `key` (already scoped to the caller) made; returns its id.
pub async fn create(
    app: &Arc<App>,
    caller: &Caller,
    key: Option<&str>,
    request: CreateBuild,
) -> Result<String> {
    // A key is taken, and its build registered, in one step: two requests
    // with the same key at once get one build.
    let build = loop {
        match reserve(app, key, &request, caller) {
            Reserved::New(build) => break build,
            Reserved::Existing(build) => {
                if let Some(id) = same_build(app, &build, &request).await? {
                    return Ok(id);
                }
                // Its creation failed (the key is free again): ours is new.
            }
        }
    };
    let id = build.id.clone();
    // The id goes out only once the build would survive a restart. Should
    // the client give up meanwhile (this request is dropped mid-wait), the
    // build is withdrawn as if the wait had failed: never left registered,
    // unacknowledged and unsupervised.
    let mut unsettled = Unsettled {
        app,
        build: &build,
        key,
        settled: false,
    };
    if let Err(e) = durable(app).await {
        drop(unsettled);
        return Err(e.adding("the build was not started, submit it again"));
    }
    unsettled.settled = true;
    drop(unsettled);
    build.update(|b| b.acknowledge());
    tracing::info!(build = %id, service = %build.status().service, by = %caller.creator(), "build created");
    app.spawn_supervisor(crate::supervisor::run(Arc::clone(app), build));
    Ok(id)
}

/// A build between its registration and its acknowledgement, withdrawn
/// when dropped unless settled.
struct Unsettled<'a> {
    app: &'a App,
    build: &'a Build,
    key: Option<&'a str>,
    settled: bool,
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if !self.settled {
            withdraw(self.app, self.build, self.key);
        }
    }
}

/// A build whose creation failed: it ends as failed (saved so, in time)
/// and is never started; its idempotency key is free for the retry.
fn withdraw(app: &App, build: &Build, key: Option<&str>) {
    build.update(|b| {
        b.withdraw("the controller could not save this build in time, so it was never started");
    });
    if let Some(key) = key {
        app.builds.release_key(key, &build.id);
    }
}

/// Takes the key for a new build of `request`, unless a build has it.
fn reserve(app: &App, key: Option<&str>, request: &CreateBuild, caller: &Caller) -> Reserved {
    // Defence in depth: scoped keys of two tenants never meet, but a build
    // the caller may not see is never handed to it.
    let usable = |b: &Build| caller.may_access(b.read().created_by());
    app.builds.reserve(key, usable, || {
        let build = Arc::new(Build::new(
            new_build_id(),
            request.clone(),
            app.config.default_platform,
            Some(app.journal.signal()),
            app.config.build_log_limit,
        ));
        build.update(|b| b.set_origin(caller.creator().clone(), key.map(String::from)));
        build
    })
}

/// The earlier build's id once its creation has settled: `None` when it
/// failed (withdrawn), an error when the key came with another request.
async fn same_build(app: &App, build: &Build, request: &CreateBuild) -> Result<Option<String>> {
    if !same_request(&build.read().request(), request) {
        return Err(Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this Idempotency-Key was used for a different build request; use a new key",
        ));
    }
    // The first request may still be saving: wait for its outcome.
    let mut changed = build.subscribe_state();
    let deadline = tokio::time::Instant::now() + app.journal.flush_timeout() * 2;
    loop {
        {
            let read = build.read();
            if read.acknowledged() {
                return Ok(Some(build.id.clone()));
            }
            if read.state().is_terminal() {
                return Ok(None);
            }
        }
        if tokio::time::timeout_at(deadline, changed.changed())
            .await
            .is_err()
        {
            return Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "an earlier request with this Idempotency-Key is still being saved; retry",
            ));
        }
    }
}

/// Two requests are the same build when they differ at most in registry
/// passwords and secret values (a finished build forgets those).
fn same_request(a: &CreateBuild, b: &CreateBuild) -> bool {
    let strip = |r: &CreateBuild| {
        let mut r = r.clone();
        for t in &mut r.tasks {
            t.spec.forget_secrets();
        }
        r
    };
    strip(a) == strip(b)
}
