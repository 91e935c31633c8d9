//! Contexts packed once each and uploaded where the controller reads them
//! (its own store or S3), and the build requests that name them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use bakery_pack::{fingerprint, pack_to_dir, Codec, PackOptions, Packed};
use bakery_plan::{Plan, ServicePlan};
use bakery_protocol::api::{ContextStore, CreateBuild, TaskRequest};
use bakery_protocol::BuildSpec;

use super::asks::Asks;
use super::pack_cache::PackCache;
use crate::client::Controller;

/// Where each (context directory, Dockerfile, named context directories)
/// was uploaded.
pub(super) type Contexts = HashMap<(PathBuf, PathBuf, Vec<PathBuf>), Uploaded>;

/// A packed context as the build request names it.
#[derive(Clone)]
pub(super) struct Uploaded {
    key: bakery_protocol::ContextKey,
    /// Bytes of file content it unpacks to.
    content_bytes: u64,
}

/// Packs each distinct context once and uploads what the store lacks.
/// The build secrets' files and the runner's login files that lie inside
/// `context`, relative to it: they must not be uploaded with it (the
/// context is kept, on the controller or in S3, long after the build).
pub(super) fn secret_files_in(protected: &[PathBuf], context: &std::path::Path) -> Vec<String> {
    let Ok(context) = std::fs::canonicalize(context) else {
        return Vec::new();
    };
    protected
        .iter()
        .filter_map(|f| {
            f.strip_prefix(&context)
                .ok()
                .and_then(|r| r.to_str())
                .map(|r| r.replace('\\', "/"))
        })
        .collect()
}

/// The build secrets' files and the runner's login files, resolved.
fn protected_files(plan: &Plan) -> Vec<PathBuf> {
    let env: HashMap<String, String> = crate::env::ClientEnv::current().text_vars();
    plan.builds()
        .flat_map(|(_, b)| b.secret_files.iter().cloned())
        .chain(crate::logins::login_files(&env))
        .filter_map(|f| std::fs::canonicalize(f).ok())
        .collect()
}

pub(super) async fn upload_contexts(
    plan: &Plan,
    controller: &Controller,
    store: &ContextStore,
    codec: Codec,
    asks: &Asks,
) -> Result<Contexts> {
    let tmp = tempfile::tempdir().context("creating a temporary directory for context archives")?;
    let s3 = match store {
        ContextStore::S3(location) => {
            Some(bakery_store::S3Store::connect(s3_settings(location)).await)
        }
        ContextStore::Controller => None,
    };
    let mut keys = HashMap::new();
    let cache = PackCache::from_env();
    let mut protected = protected_files(plan);
    protected.extend(
        asks.key_files()
            .iter()
            .filter_map(|f| std::fs::canonicalize(f).ok()),
    );
    for (_, build) in plan.builds() {
        if let Some(file) = build
            .dockerfile_outside
            .as_ref()
            .filter(|f| protected.contains(f))
        {
            anyhow::bail!(
                "{}: the Dockerfile is a file that holds a build secret or a registry login; it is never sent",
                file.display()
            );
        }
        let named = asks.contexts.over(&build.named_contexts);
        let id = (
            build.context_dir.clone(),
            build.dockerfile_path(),
            named.dirs(),
        );
        if keys.contains_key(&id) {
            continue;
        }
        let opts = PackOptions {
            codec,
            exclude: secret_files_in(&protected, &id.0),
            dockerfile_beside: build.dockerfile_outside.clone(),
            named: named.pack(&protected),
            ..PackOptions::default()
        };
        let target = Target {
            dir: &id.0,
            dockerfile: &build.spec.dockerfile,
            store: (store, s3.as_ref()),
        };
        let uploaded = one_context(&target, opts, controller, &cache, tmp.path(), &keys).await?;
        keys.insert(id, uploaded);
    }
    Ok(keys)
}

/// A context to send: its directory, its Dockerfile (as the archive
/// names it), and the store it goes to.
struct Target<'a> {
    dir: &'a std::path::Path,
    dockerfile: &'a str,
    store: (&'a ContextStore, Option<&'a bakery_store::S3Store>),
}

impl Target<'_> {
    /// Whether the store holds `key` already.
    async fn has(
        &self,
        controller: &Controller,
        key: &bakery_protocol::ContextKey,
    ) -> Result<bool> {
        Ok(match self.store {
            (ContextStore::Controller, _) => controller.has_context(key).await?,
            (ContextStore::S3(_), Some(s3)) => s3.exists(key).await?,
            (ContextStore::S3(_), None) => unreachable!("connected by the caller"),
        })
    }
}

/// Packs one context (unless its metadata says it is unchanged and the
/// store has its archive) and uploads what the store lacks.
async fn one_context(
    target: &Target<'_>,
    opts: PackOptions,
    controller: &Controller,
    cache: &PackCache,
    tmp: &std::path::Path,
    done: &Contexts,
) -> Result<Uploaded> {
    let started = Instant::now();
    let take_fingerprint = || {
        let (dir, df, opts) = (
            target.dir.to_path_buf(),
            target.dockerfile.to_string(),
            opts.clone(),
        );
        // An error here is the pack's to report, with its context.
        tokio::task::spawn_blocking(move || fingerprint(&dir, &df, &opts).ok())
    };
    let fp = take_fingerprint().await?;
    if let Some(packed) = fp.as_ref().and_then(|fp| cache.get(fp)) {
        if target.has(controller, &packed.key()).await? {
            warn(target.dir, &packed);
            report(
                target.dir,
                &packed,
                "unchanged by file metadata: neither packed nor uploaded",
                started,
            );
            return Ok(Uploaded {
                key: packed.key(),
                content_bytes: packed.content_bytes,
            });
        }
    }
    let (path, packed) = pack(target, opts.clone(), tmp).await?;
    // Recorded only when nothing changed while it was packed: a file made
    // and removed meanwhile (an editor's lock file) leaves the metadata as
    // it was but is in the archive.
    if let Some(fp) = &fp {
        if take_fingerprint().await?.as_ref() == Some(fp) {
            cache.put(fp, &packed);
        }
    }
    let key = packed.key();
    let uploaded = Uploaded {
        key: key.clone(),
        content_bytes: packed.content_bytes,
    };
    if done.values().any(|k: &Uploaded| k.key == key) {
        // Same bytes as a context already handled (another Dockerfile in
        // the same directory, say): nothing more to report.
        return Ok(uploaded);
    }
    let step = crate::progress::Step::start(
        format!("uploading {}", target.dir.display()),
        Some(packed.size),
    );
    let sent = match target.store {
        (ContextStore::Controller, _) => {
            controller
                .upload_context(&key, &path, Some(step.counter()))
                .await?
        }
        (ContextStore::S3(_), Some(s3)) => s3.upload_if_absent(&key, &path).await?,
        (ContextStore::S3(_), None) => unreachable!("connected by the caller"),
    };
    drop(step);
    let what = if sent {
        "uploaded"
    } else {
        "unchanged, not uploaded"
    };
    report(target.dir, &packed, what, started);
    Ok(uploaded)
}

/// Packs `target` into `tmp` with a progress display; prints the pack's
/// warnings and the large-context warning.
async fn pack(
    target: &Target<'_>,
    opts: PackOptions,
    tmp: &std::path::Path,
) -> Result<(PathBuf, Packed)> {
    let (dir, df, out) = (
        target.dir.to_path_buf(),
        target.dockerfile.to_string(),
        tmp.to_path_buf(),
    );
    let step = crate::progress::Step::start(format!("packing {}", dir.display()), None);
    let opts = PackOptions {
        progress: Some(step.counter()),
        ..opts
    };
    let (path, packed) = tokio::task::spawn_blocking(move || pack_to_dir(&dir, &df, &out, &opts))
        .await?
        .with_context(|| format!("packing {}", target.dir.display()))?;
    drop(step);
    warn(target.dir, &packed);
    Ok((path, packed))
}

/// The pack's warnings (entries skipped or left out) and the large-context
/// warning: the same whether the context was packed now or recorded.
fn warn(dir: &std::path::Path, packed: &Packed) {
    for w in &packed.warnings {
        tracing::warn!("{w}");
    }
    if let Some(w) = large_context_warning(dir, packed) {
        eprintln!("warning: {w}");
    }
}

/// The line that says what became of a context.
fn report(dir: &std::path::Path, packed: &Packed, what: &str, started: Instant) {
    eprintln!(
        "context {}: {} {}, {} → {} ({what}) in {:.2}s",
        dir.display(),
        packed.entries,
        if packed.entries == 1 { "file" } else { "files" },
        crate::render::bytes(packed.content_bytes),
        crate::render::bytes(packed.size),
        started.elapsed().as_secs_f64()
    );
}

/// The controller's bucket, with the client's own `S3_*` variables winning:
/// the client may reach S3 through another endpoint than the controller.
fn s3_settings(location: &bakery_protocol::api::S3Location) -> bakery_store::S3Settings {
    let mut settings = bakery_store::S3Settings::from_location(location);
    if let Some(own) = bakery_store::S3Settings::from_env() {
        if own.bucket != settings.bucket {
            tracing::warn!(
                "S3_BUCKET is `{}` but the controller uses `{}`; uploading to the controller's",
                own.bucket,
                settings.bucket
            );
        }
        settings.endpoint = own.endpoint.or(settings.endpoint);
        settings.region = own.region.or(settings.region);
        settings.ssl = own.ssl;
        settings.path_style = own.path_style.or(settings.path_style);
    }
    settings
}

/// The build request for one service, naming each arch's uploaded context.
pub(super) fn request(service: &ServicePlan, keys: &Contexts, asks: &Asks) -> Result<CreateBuild> {
    let tasks = service
        .builds
        .iter()
        .map(|b| {
            let named = asks.contexts.over(&b.named_contexts);
            let uploaded = keys
                .get(&(b.context_dir.clone(), b.dockerfile_path(), named.dirs()))
                .context("context was not packed")?
                .clone();
            Ok(TaskRequest {
                arch: b.arch,
                push: b.push.clone(),
                context_key: uploaded.key,
                context_bytes: Some(uploaded.content_bytes),
                spec: BuildSpec {
                    annotations: asks.annotations.manifest.clone(),
                    build_contexts: named.spec(),
                    ssh: asks.ssh.clone(),
                    ..b.spec.clone()
                },
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(CreateBuild {
        service: service.name.clone(),
        destination: service.destination.clone(),
        tags: service.tags.clone(),
        tasks,
        // Only what is pushed gets an attestation.
        provenance: asks
            .provenance
            .clone()
            .filter(|_| service.destination.is_some()),
        index_annotations: asks.annotations.index.clone(),
        descriptor_annotations: asks.annotations.manifest_descriptor.clone(),
    })
}

/// Contexts above this many bytes of content get a warning that names
/// what makes them big: most are a `node_modules`, `target` or `.git` that
/// `.dockerignore` should leave out.
pub const LARGE_CONTEXT: u64 = 100 * 1024 * 1024;

/// The warning for a context over [`LARGE_CONTEXT`], naming its biggest paths.
pub fn large_context_warning(
    dir: &std::path::Path,
    packed: &bakery_pack::Packed,
) -> Option<String> {
    if packed.content_bytes <= LARGE_CONTEXT {
        return None;
    }
    let biggest: Vec<String> = packed
        .largest
        .iter()
        .map(|(path, bytes)| format!("{path} ({})", crate::render::bytes(*bytes)))
        .collect();
    Some(format!(
        "{}: the context is {} (over {}): every build uploads and unpacks it; the biggest paths: {}. Leave out what the Dockerfile does not COPY in {}",
        dir.display(),
        crate::render::bytes(packed.content_bytes),
        crate::render::bytes(LARGE_CONTEXT),
        biggest.join(", "),
        dir.join(".dockerignore").display()
    ))
}
