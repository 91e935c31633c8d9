//! The build context: streamed from the store into the safe extractor,
//! within limits the agent's disk can hold, and the Dockerfile checked to be
//! a file inside it.

use std::path::{Path, PathBuf};

use bakery_client::AgentApi;
use bakery_protocol::api::{AgentTask, ContextSource};
use bakery_protocol::spec::{NamedContext, CONTEXTS_BESIDE, DOCKERFILE_BESIDE};
use bakery_protocol::{BuildSpec, ContextKey};
use futures_util::TryStreamExt;

use crate::error::AgentError;
use crate::extract;

/// Streams the context from where the controller says it is into the
/// extractor: no temporary archive on disk. `received` counts the archive's
/// bytes as they arrive, for the progress lines of a big context.
pub(crate) async fn download(
    controller: &AgentApi,
    task: &AgentTask,
    dest: &Path,
    limits: extract::Limits,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Result<extract::Extracted, AgentError> {
    let (key, reader): (&ContextKey, Box<dyn tokio::io::AsyncRead + Send + Unpin>) =
        match &task.context {
            ContextSource::Controller { key } => {
                let stream = controller
                    .context()
                    .await?
                    .bytes_stream()
                    .map_err(std::io::Error::other);
                (key, Box::new(tokio_util::io::StreamReader::new(stream)))
            }
            ContextSource::S3 { location, key } => {
                let settings = bakery_store::S3Settings::from_location(location);
                let store = bakery_store::S3Store::connect(settings).await;
                (key, Box::new(store.download(key).await?))
            }
        };
    let codec = key.codec();
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let sync = Counted {
            inner: tokio_util::io::SyncIoBridge::new(reader),
            received,
        };
        extract::extract_compressed(sync, codec, &dest, limits)
    })
    .await
    .map_err(|e| AgentError::Io {
        what: "unpacking the context".into(),
        source: std::io::Error::other(e),
    })?
    .map_err(AgentError::from)
}

/// The archive as it arrives, counted.
struct Counted<R> {
    inner: R,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.received
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// What the context may unpack to: what the client packed (its declared
/// size, when it sent one), never more than 16 GiB, and never more than
/// 90 % of the free space on the agent's disk, which other agents may
/// share. A context that cannot fit fails before a byte is written.
pub(crate) fn extraction_limits(
    work: &Path,
    declared: Option<u64>,
) -> Result<extract::Limits, AgentError> {
    let mut limits = extract::Limits::default();
    let free = nix::sys::statvfs::statvfs(work)
        .ok()
        .map(|s| s.blocks_available() * s.fragment_size());
    let room = free.map(|f| f / 10 * 9);
    if let (Some(declared), Some(room)) = (declared, room) {
        if declared > room {
            return Err(AgentError::Context(format!(
                "the context unpacks to {declared} bytes, but the agent's disk has only {room} bytes to spare; give the agent more disk or send a smaller context (.dockerignore)"
            )));
        }
    }
    limits.max_bytes = [Some(limits.max_bytes), declared, room]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(limits.max_bytes);
    limits.declared = declared.is_some_and(|d| d == limits.max_bytes);
    Ok(limits)
}

/// The Dockerfile must be a file inside the context: a Dockerfile that is
/// a symlink (or under one) leading out of the context would have the
/// builder read any file of the agent's machine.
pub fn check_dockerfile(context: &Path, dockerfile: &str) -> Result<(), AgentError> {
    let refuse = |why: String| AgentError::Context(format!("dockerfile `{dockerfile}`: {why}"));
    bakery_protocol::validate::check_relative_path("dockerfile", dockerfile)
        .map_err(|e| refuse(e.message))?;
    let root = context
        .canonicalize()
        .map_err(|e| refuse(format!("the context directory: {e}")))?;
    let path = context
        .join(dockerfile)
        .canonicalize()
        .map_err(|_| refuse("not found in the build context".into()))?;
    if !path.starts_with(&root) {
        return Err(refuse(
            "it is a symlink that leads out of the build context; the Dockerfile must be a file in the context".into(),
        ));
    }
    if !path.is_file() {
        return Err(refuse("not a file".into()));
    }
    Ok(())
}

/// A Dockerfile sent beside the context is moved out of it before
/// anything runs, so that `COPY . .` cannot copy it into the image.
pub fn take_beside(context: &Path, work: &Path, spec: &BuildSpec) -> Result<(), AgentError> {
    if !spec.dockerfile_beside {
        return Ok(());
    }
    let (from, to) = (
        context.join(DOCKERFILE_BESIDE),
        work.join(DOCKERFILE_BESIDE),
    );
    std::fs::rename(&from, &to).map_err(|e| {
        AgentError::Context(format!(
            "moving the Dockerfile sent beside the context out of it: {e}"
        ))
    })
}

/// Named build contexts sent in the archive are moved out of the context
/// before anything runs, as a Dockerfile sent beside it is, into
/// `<work>/contexts/<n>` ([`named_dir`]).
pub fn take_named(context: &Path, work: &Path, spec: &BuildSpec) -> Result<(), AgentError> {
    let sent = spec
        .build_contexts
        .values()
        .any(|c| matches!(c, NamedContext::Archive(_)));
    if !sent {
        return Ok(());
    }
    // Directories, as the client packs them: a hand-made archive's symlink
    // (`.bakery-contexts/0 -> /`) would hand the builder any path.
    let from = context.join(CONTEXTS_BESIDE);
    let real_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    let sent_dirs = spec.build_contexts.values().filter_map(|c| match c {
        NamedContext::Archive(n) => Some(from.join(n.to_string())),
        NamedContext::DockerImage(_) => None,
    });
    for dir in std::iter::once(from.clone()).chain(sent_dirs) {
        if !real_dir(&dir) {
            return Err(AgentError::Context(format!(
                "the context archive's {} is not a directory",
                dir.strip_prefix(context).unwrap_or(&dir).display()
            )));
        }
    }
    std::fs::rename(&from, work.join("contexts")).map_err(|e| {
        AgentError::Context(format!(
            "moving the named build contexts sent with the context out of it: {e}"
        ))
    })
}

/// Where the named build context stored as `n` lies once taken.
pub fn named_dir(work: &Path, n: u32) -> PathBuf {
    work.join("contexts").join(n.to_string())
}

/// Where the builder reads the Dockerfile: in the context, or in the work
/// directory for one sent beside the context.
pub fn dockerfile_path(context: &Path, work: &Path, spec: &BuildSpec) -> PathBuf {
    let base = if spec.dockerfile_beside {
        work
    } else {
        context
    };
    base.join(&spec.dockerfile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_context_that_is_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (context, work) = (dir.path().join("context"), dir.path().join("work"));
        std::fs::create_dir_all(context.join(CONTEXTS_BESIDE)).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        std::os::unix::fs::symlink("/", context.join(CONTEXTS_BESIDE).join("0")).unwrap();
        let mut spec = BuildSpec::new("Dockerfile", bakery_protocol::Arch::Amd64);
        spec.build_contexts
            .insert("shared".into(), NamedContext::Archive(0));
        let e = take_named(&context, &work, &spec).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        std::fs::remove_file(context.join(CONTEXTS_BESIDE).join("0")).unwrap();
        std::fs::create_dir(context.join(CONTEXTS_BESIDE).join("0")).unwrap();
        take_named(&context, &work, &spec).unwrap();
        assert!(named_dir(&work, 0).is_dir());
    }

    #[test]
    fn a_context_is_capped_at_what_was_packed_and_what_the_disk_holds() {
        let dir = tempfile::tempdir().unwrap();
        let packed = extraction_limits(dir.path(), Some(1000)).unwrap();
        assert_eq!(packed.max_bytes, 1000);
        assert!(
            packed.declared,
            "past it, the archive is not what was packed"
        );
        let undeclared = extraction_limits(dir.path(), None).unwrap();
        assert!(undeclared.max_bytes <= 16 << 30);
        assert!(!undeclared.declared);
        let e = extraction_limits(dir.path(), Some(u64::MAX / 2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("has only") && e.contains("to spare"), "{e}");
    }
}
