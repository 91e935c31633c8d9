//! Build contexts kept on the controller's disk, for set-ups without S3
//! (the local embedded default). Keys are content addresses and are checked
//! on upload, so a corrupt or mislabelled upload never lands.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use futures_util::{Stream, StreamExt};
use regex::Regex;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

static KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^contexts/sha256-([0-9a-f]{64})\.tar\.(gz|zst)$").expect("valid regex")
});

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("`{0}` is not a context key (contexts/sha256-<64 hex>.tar.gz or .tar.zst)")]
    BadKey(String),
    #[error("upload does not match its key: expected sha256 {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("upload exceeds the {0}-byte limit")]
    TooLarge(u64),
    #[error("upload interrupted: {0}")]
    Body(String),
    #[error("context store at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Contexts under `<data_dir>/contexts/`.
#[derive(Debug, Clone)]
pub struct DiskStore {
    root: PathBuf,
    max_bytes: u64,
}

impl DiskStore {
    pub fn new(data_dir: &Path, max_bytes: u64) -> Self {
        DiskStore {
            root: data_dir.to_path_buf(),
            max_bytes,
        }
    }

    /// The file of a valid key.
    pub fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        if !KEY.is_match(key) {
            return Err(StoreError::BadKey(key.to_string()));
        }
        Ok(self.root.join(key))
    }

    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(tokio::fs::try_exists(self.path(key)?)
            .await
            .unwrap_or(false))
    }

    /// Streams an upload to a temporary file, checks its SHA-256 against the
    /// key, and only then moves it into place.
    pub async fn put<S, E>(&self, key: &str, mut body: S) -> Result<u64, StoreError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = self.path(key)?;
        let expected = KEY
            .captures(key)
            .map(|c| c[1].to_string())
            .unwrap_or_default();
        let dir = path.parent().expect("keys have a directory").to_path_buf();
        let io = |source| StoreError::Io {
            path: dir.clone(),
            source,
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
        if actual != expected {
            return Err(StoreError::DigestMismatch { expected, actual });
        }
        tmp.persist(&path).map_err(|e| io(e.error))?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(data: &'static [u8]) -> impl Stream<Item = Result<bytes::Bytes, String>> + Unpin {
        futures_util::stream::iter(vec![Ok(bytes::Bytes::from_static(data))])
    }

    #[tokio::test]
    async fn keys_are_checked_and_content_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::new(dir.path(), 1 << 20);
        assert!(matches!(
            store.path("../etc/passwd"),
            Err(StoreError::BadKey(_))
        ));
        assert!(matches!(
            store.path("contexts/sha256-abc.tar.gz"),
            Err(StoreError::BadKey(_))
        ));

        let digest = hex::encode(Sha256::digest(b"hello"));
        let key = format!("contexts/sha256-{digest}.tar.gz");
        assert!(!store.exists(&key).await.unwrap());
        assert_eq!(store.put(&key, body(b"hello")).await.unwrap(), 5);
        assert!(store.exists(&key).await.unwrap());

        let wrong = format!("contexts/sha256-{}.tar.gz", "0".repeat(64));
        assert!(matches!(
            store.put(&wrong, body(b"hello")).await,
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(
            !store.exists(&wrong).await.unwrap(),
            "nothing lands on a mismatch"
        );
    }

    #[tokio::test]
    async fn size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::new(dir.path(), 3);
        let key = format!(
            "contexts/sha256-{}.tar.gz",
            hex::encode(Sha256::digest(b"hello"))
        );
        assert!(matches!(
            store.put(&key, body(b"hello")).await,
            Err(StoreError::TooLarge(3))
        ));
    }
}
