//! The end of a build that pushed: each image checked to be its arch, then
//! the multi-arch index written over the checked images.

use bakery_protocol::api::agent_env::BuilderKind;
use bakery_protocol::reference::registry_of;
use bakery_protocol::registry::is_insecure;

use crate::index::{self, IndexError};
use crate::state::{Build, Pushed};
use crate::App;

type ClientMaking = tokio::task::JoinHandle<oci_client::Client>;

/// A pushed image that is its arch, and its bases as resolved.
type Checked = (crate::verify::Checked, Vec<crate::verify::ResolvedBase>);

/// Starts making the registry client for the build's check and index on a
/// blocking thread, so that it is ready by the time the agents have pushed
/// (see [`crate::index::registry_client`]). `None` when nothing is pushed.
pub(super) fn prepare_client(app: &App, build: &Build) -> Option<ClientMaking> {
    let (destination, pushes) = {
        let read = build.read();
        let pushes: Vec<String> = read
            .requests()
            .filter_map(|t| t.push.clone())
            .chain(read.tags().iter().cloned())
            .collect();
        (read.destination().map(str::to_string), pushes)
    };
    let destination = destination.or_else(|| pushes.first().cloned())?;
    // Every loopback registry an arch pushed to, or a tag names, is plain
    // HTTP too.
    let mut insecure = app.config.insecure_registries();
    for push in &pushes {
        let host = registry_of(push).to_string();
        if is_insecure(&host, &insecure) && !insecure.contains(&host) {
            insecure.push(host);
        }
    }
    let timeout = app.config.registry_timeout;
    Some(tokio::task::spawn_blocking(move || {
        index::registry_client(&destination, &insecure, timeout)
    }))
}

/// Checks the pushed images and writes the index, unless the build is
/// cancelled first: a cancel is heard in every state, this one included
/// (the registry may be slow).
pub(super) async fn write_index_unless_cancelled(
    app: &App,
    build: &Build,
    client: Option<ClientMaking>,
) {
    let cancelled = async {
        let mut changed = build.subscribe_state();
        while !build.read().cancel_requested() {
            if changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = finish_pushed(app, build, client) => {}
        () = cancelled => build.update(|b| b.cancelled_while_indexing()),
    }
}

/// Every arch has pushed: checks each image is of its arch (an arch whose
/// image is not fails, naming the base responsible, and no index is
/// written), then writes the index over what was checked.
async fn finish_pushed(app: &App, build: &Build, client: Option<ClientMaking>) {
    build.log(0, "checking that each pushed image is its architecture");
    let (destination, tags, pushed, credentials) = {
        let read = build.read();
        (
            read.destination().map(str::to_string),
            read.tags().to_vec(),
            read.pushed(),
            read.credentials(),
        )
    };
    let client = match client {
        Some(made) => made.await,
        None => {
            prepare_client(app, build)
                .expect("pushed images have a registry")
                .await
        }
    };
    let client = match client {
        Ok(client) => client,
        Err(e) => {
            return build.update(|b| b.index_failed(IndexError::Client(e.to_string()).to_string()))
        }
    };
    let policy = index::RetryPolicy::default();
    let bases_client = bases_client(app, &client, &pushed).await;
    let auth = |host: &str| index::auth_for(&credentials, host);
    let mut checked = Vec::new();
    let mut resolved = Vec::new();
    let mut wrong = Vec::new();
    for p in &pushed {
        match check_one(&client, &bases_client, p, &auth, policy).await {
            Ok(Ok((config, bases))) => {
                checked.push(config);
                resolved.push(bases);
            }
            Ok(Err(why)) => wrong.push((p.index, why)),
            Err(e) => return build.update(|b| b.index_failed(e.to_string())),
        }
    }
    if !wrong.is_empty() {
        return build.update(|b| b.wrong_platform(&wrong));
    }
    let Some(destination) = destination else {
        return build.update(|b| b.finish_build(bakery_protocol::api::BuildState::Succeeded, None));
    };
    build.log(0, &format!("writing the multi-arch index {destination}"));
    for other in other_repositories(&destination, &tags) {
        build.log(
            0,
            &format!("and in {other}, with the per-arch images copied there"),
        );
    }
    let extras = extras(build, &destination, &pushed, &checked, &resolved);
    if !extras.attestations.is_empty() {
        let n = extras.attestations.len();
        let s = if n == 1 { "" } else { "s" };
        build.log(0, &format!("attaching {n} SLSA provenance attestation{s}"));
    }
    let result = index::write_checked(
        &client,
        &destination,
        &tags,
        &checked,
        &extras,
        &credentials,
        policy,
    )
    .await;
    match result {
        Ok(digest) => build.update(|b| b.index_written(&digest)),
        Err(e) => build.update(|b| b.index_failed(e.to_string())),
    }
}

/// The index's annotations and attestations, as the build asked. A
/// Kaniko-built image's manifest annotations (Kaniko cannot write them) go
/// on its index entry, and the log says so.
fn extras(
    build: &Build,
    destination: &str,
    pushed: &[Pushed],
    checked: &[crate::verify::Checked],
    resolved: &[Vec<crate::verify::ResolvedBase>],
) -> index::Extras {
    let (asks, descriptor_annotations, moved) = {
        let read = build.read();
        let asks = read.index_asks().clone();
        let mut moved = false;
        let descriptors = pushed
            .iter()
            .map(|p| {
                let task = read.task(p.index);
                let mut own = asks.descriptor_annotations.clone();
                let manifest = &task.request().spec.annotations;
                if !manifest.is_empty()
                    && crate::platform::builder_of(task.platform()) == BuilderKind::Kaniko
                {
                    own.extend(manifest.clone());
                    moved = true;
                }
                own
            })
            .collect::<Vec<_>>();
        (asks, descriptors, moved)
    };
    if moved {
        build.log(
            0,
            "Kaniko cannot annotate image manifests: the manifest annotations are on each image's entry in the index",
        );
    }
    index::Extras {
        attestations: attestations(build, destination, pushed, checked, resolved),
        index_annotations: asks.index_annotations,
        descriptor_annotations,
    }
}

/// One provenance attestation per checked image, when the build asked for
/// them (see [`crate::provenance`]).
fn attestations(
    build: &Build,
    destination: &str,
    pushed: &[Pushed],
    checked: &[crate::verify::Checked],
    resolved: &[Vec<crate::verify::ResolvedBase>],
) -> Vec<crate::provenance::Attestation> {
    let read = build.read();
    let Some(provenance) = read.index_asks().provenance.as_ref() else {
        return Vec::new();
    };
    let repository = index::parse_reference(destination).map_or_else(
        |_| destination.to_string(),
        |r| crate::replicate::repository(&r),
    );
    let status = read.status();
    let finished_ms = bakery_protocol::api::now_ms();
    pushed
        .iter()
        .zip(checked)
        .zip(resolved)
        .map(|((p, c), bases)| {
            let task = read.task(p.index);
            let platform = c.platform.to_string();
            let facts = crate::provenance::Facts {
                build_id: &status.id,
                provenance,
                repository: &repository,
                digest: &c.digest,
                platform: &platform,
                spec: &task.request().spec,
                context: &task.request().context_key,
                agent_platform: task.platform(),
                bases,
                started_ms: status.created_ms,
                finished_ms,
            };
            crate::provenance::Attestation::new(&crate::provenance::statement(&facts), &c.digest)
        })
        .collect()
}

/// The repositories of `tags` other than the destination's, once each.
fn other_repositories(destination: &str, tags: &[String]) -> Vec<String> {
    let repo = |r: &str| {
        index::parse_reference(r)
            .map(|r| crate::replicate::repository(&r))
            .ok()
    };
    let own = repo(destination);
    let mut out: Vec<String> = Vec::new();
    for r in tags.iter().filter_map(|t| repo(t)) {
        if Some(&r) != own.as_ref() && !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// One pushed image: `Ok(Ok(config))` when it is its arch, `Ok(Err(why))`
/// when it is another (naming the base responsible), `Err` when the
/// registry could not say.
async fn check_one(
    client: &oci_client::Client,
    bases_client: &oci_client::Client,
    p: &Pushed,
    auth: &(impl Fn(&str) -> oci_client::secrets::RegistryAuth + Sync),
    policy: index::RetryPolicy,
) -> Result<Result<Checked, String>, IndexError> {
    let config = async {
        let repo = index::parse_reference(&p.push)?;
        crate::verify::check(
            client,
            &repo,
            p.arch,
            &p.digest,
            &auth(repo.registry()),
            policy,
        )
        .await
    };
    let bases = crate::verify::check_bases(bases_client, &p.bases, p.arch, auth);
    match (config.await, bases.await) {
        (Ok(c), Ok(bases)) => Ok(Ok((c, bases))),
        (Ok(_) | Err(IndexError::WrongPlatform { .. }), Err((found, why))) => {
            Ok(Err(format!("the image is {found}: {why}")))
        }
        (Err(IndexError::WrongPlatform { found, .. }), Ok(_)) => {
            let why = match p.bases.first() {
                Some(base) => format!(
                    "it was built FROM {base}; check that it has a linux/{} variant, and `--platform` on the FROM lines",
                    p.arch
                ),
                None => "check `--platform` on the Dockerfile's FROM lines and `custom-platform`".into(),
            };
            Ok(Err(format!("the image is {found}: {why}")))
        }
        (Err(e), _) => Err(e),
    }
}

/// A registry client for the base images: the index's client, unless a base
/// is on a loopback registry that client would speak HTTPS to.
async fn bases_client(
    app: &App,
    client: &oci_client::Client,
    pushed: &[Pushed],
) -> oci_client::Client {
    let configured = app.config.insecure_registries();
    let hosts: Vec<String> = pushed
        .iter()
        .flat_map(|p| p.bases.iter().chain(std::iter::once(&p.push)))
        .map(|r| registry_of(r).to_string())
        .filter(|h| is_insecure(h, &configured))
        .collect();
    let pushes_cover = hosts
        .iter()
        .all(|h| configured.contains(h) || pushed.iter().any(|p| registry_of(&p.push) == h));
    if hosts.is_empty() || pushes_cover {
        return client.clone();
    }
    let timeout = app.config.registry_timeout;
    let mut insecure = configured;
    insecure.extend(hosts);
    tokio::task::spawn_blocking(move || index::registry_client("", &insecure, timeout))
        .await
        .unwrap_or_else(|_| client.clone())
}
