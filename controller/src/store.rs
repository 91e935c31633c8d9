//! Build contexts kept on the controller's disk, for set-ups without S3
//! (the local embedded default). Keys are content addresses
//! ([`ContextKey`], parsed before they get here) and are checked on upload,
//! so a corrupt or mislabelled upload never lands.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bakery_protocol::ContextKey;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Why an upload to the controller's context store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The uploaded bytes do not hash to the key they were uploaded under; nothing is kept.
    #[error("upload does not match its key: expected sha256 {expected}, got {actual}")]
    DigestMismatch {
        /// The SHA-256 the key names.
        expected: String,
        /// The SHA-256 of what arrived.
        actual: String,
    },
    /// The upload went past the largest context accepted (this many bytes).
    #[error("upload exceeds the {0}-byte limit")]
    TooLarge(u64),
    /// The upload's body broke off (the transport's message).
    #[error("upload interrupted: {0}")]
    Body(String),
    /// The cause is part of the message, not a chained source: binaries
    /// print chains, and a chained cause would be printed twice.
    #[error("context store at {}: {cause}", path.display())]
    Io {
        /// The file or directory it concerns.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
}

/// Contexts under `<data_dir>/contexts/`.
#[derive(Debug, Clone)]
pub struct DiskStore {
    root: PathBuf,
    max_bytes: u64,
}

impl DiskStore {
    /// A store of contexts under `<data_dir>/contexts/`, refusing uploads larger than `max_bytes`.
    pub fn new(data_dir: &Path, max_bytes: u64) -> Self {
        DiskStore {
            root: data_dir.to_path_buf(),
            max_bytes,
        }
    }

    /// The file of a key.
    pub fn path(&self, key: &ContextKey) -> PathBuf {
        self.root.join(key.to_string())
    }

    /// Whether the context `key` is here.
    pub async fn exists(&self, key: &ContextKey) -> bool {
        tokio::fs::try_exists(self.path(key)).await.unwrap_or(false)
    }

    /// Whether the context is here, and if so marks it as just used: a
    /// client that finds it skips the upload and submits a build next, so
    /// [`DiskStore::sweep`] must not take it meanwhile.
    pub async fn exists_and_touch(&self, key: &ContextKey) -> bool {
        let path = self.path(key);
        let touched = tokio::task::spawn_blocking(move || {
            std::fs::File::options()
                .append(true)
                .open(&path)
                .and_then(|f| f.set_modified(SystemTime::now()))
        })
        .await;
        matches!(touched, Ok(Ok(())))
    }

    /// Deletes contexts that no build in `used` refers to and that nobody
    /// uploaded or asked for within `unused_for`. Returns how many went.
    pub async fn sweep(
        &self,
        used: HashSet<ContextKey>,
        unused_for: Duration,
    ) -> Result<usize, StoreError> {
        let dir = self.root.join("contexts");
        tokio::task::spawn_blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(source) => {
                    return Err(StoreError::Io {
                        path: dir,
                        cause: source,
                    })
                }
            };
            let cutoff = SystemTime::now()
                .checked_sub(unused_for)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let mut removed = 0;
            for entry in entries.flatten() {
                let name = format!("contexts/{}", entry.file_name().to_string_lossy());
                let Ok(key) = name.parse::<ContextKey>() else {
                    continue; // an upload in progress, or not ours
                };
                if used.contains(&key) {
                    continue;
                }
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t < cutoff);
                if old && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
        .unwrap_or(Ok(0))
    }

    /// Streams an upload to a temporary file, checks its SHA-256 against the
    /// key, and only then moves it into place.
    pub async fn put<S, E>(&self, key: &ContextKey, mut body: S) -> Result<u64, StoreError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = self.path(key);
        let dir = path.parent().expect("keys have a directory").to_path_buf();
        let io = |source| StoreError::Io {
            path: dir.clone(),
            cause: source,
        };
        tokio::fs::create_dir_all(&dir).await.map_err(io)?;
        let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
        let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(io)?);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StoreError::Body(e.to_string()))?;
            size += chunk.len() as u64;
            if size > self.max_bytes {
                return Err(StoreError::TooLarge(self.max_bytes));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        let actual = hex::encode(hasher.finalize());
        if actual != key.sha256() {
            return Err(StoreError::DigestMismatch {
                expected: key.sha256().to_string(),
                actual,
            });
        }
        tmp.persist(&path).map_err(|e| io(e.error))?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bakery_protocol::Codec;

    fn body(data: &[u8]) -> impl Stream<Item = Result<bytes::Bytes, String>> + Unpin {
        futures_util::stream::iter(vec![Ok(bytes::Bytes::copy_from_slice(data))])
    }

    fn key_of(data: &[u8]) -> ContextKey {
        ContextKey::new(&hex::encode(Sha256::digest(data)), Codec::Gzip).unwrap()
    }

    #[tokio::test]
    async fn content_must_match_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::new(dir.path(), 1 << 20);
        let key = key_of(b"hello");
        assert!(!store.exists(&key).await);
        assert_eq!(store.put(&key, body(b"hello")).await.unwrap(), 5);
        assert!(store.exists(&key).await);

        let wrong = ContextKey::new(&"0".repeat(64), Codec::Gzip).unwrap();
        assert!(matches!(
            store.put(&wrong, body(b"hello")).await,
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(!store.exists(&wrong).await, "nothing lands on a mismatch");
    }

    #[tokio::test]
    async fn unused_old_contexts_are_swept_and_used_or_recent_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::new(dir.path(), 1 << 20);
        let mut keys = Vec::new();
        for data in [&b"one"[..], b"two", b"three"] {
            let key = key_of(data);
            store.put(&key, body(data)).await.unwrap();
            keys.push(key);
        }
        let used = || HashSet::from([keys[0].clone()]);
        let hour = Duration::from_secs(3600);
        assert_eq!(
            store.sweep(used(), hour).await.unwrap(),
            0,
            "nothing is old yet"
        );
        let past = SystemTime::now() - Duration::from_secs(7200);
        for key in &keys {
            let f = std::fs::File::options()
                .append(true)
                .open(store.path(key))
                .unwrap();
            f.set_modified(past).unwrap();
        }
        // A client asking for the third marks it as in use.
        assert!(store.exists_and_touch(&keys[2]).await);
        assert_eq!(store.sweep(used(), hour).await.unwrap(), 1);
        assert!(store.exists(&keys[0]).await, "used by a kept build");
        assert!(!store.exists(&keys[1]).await, "old and unused");
        assert!(store.exists(&keys[2]).await, "asked for just now");
    }

    #[tokio::test]
    async fn size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::new(dir.path(), 3);
        assert!(matches!(
            store.put(&key_of(b"hello"), body(b"hello")).await,
            Err(StoreError::TooLarge(3))
        ));
    }
}
