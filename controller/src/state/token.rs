//! A task's agent token: 256 random bits the agent presents on every call.
//!
//! Only its SHA-256 is compared, and only the hash is saved in the
//! journal: a copy of `builds.redb` (or a process that reads it) yields
//! nothing an agent endpoint accepts. The token itself is kept in memory
//! only until the task ends, for the launch and for masking it in logs; a
//! task that must be launched after a restart gets a new one.

use sha2::{Digest, Sha256};

/// A task's token: its hash, and while the task runs in this process, the
/// token itself.
#[derive(Debug, Clone, Default)]
pub struct TaskToken {
    /// Hex SHA-256 of the token; empty once the task ended (nothing matches).
    sha256: String,
    plain: Option<String>,
}

impl TaskToken {
    /// A token known in full (minted here).
    pub(super) fn new(plain: String) -> TaskToken {
        TaskToken {
            sha256: hash(&plain),
            plain: Some(plain),
        }
    }

    /// A token known by its hash only (read back from the journal).
    pub fn from_sha256(sha256: String) -> TaskToken {
        TaskToken {
            sha256,
            plain: None,
        }
    }

    /// A token given in full (for reading an old journal).
    pub fn from_plain(plain: &str) -> TaskToken {
        TaskToken::new(plain.to_string())
    }

    /// Keeps only the hash.
    pub fn forget_plain(&mut self) {
        self.plain = None;
    }

    /// The hash, as saved.
    pub(super) fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The token, if this process minted it and the task has not ended.
    pub(super) fn plain(&self) -> Option<&str> {
        self.plain.as_deref()
    }

    /// Whether `given` is this token, compared as hashes in constant time.
    pub(super) fn matches(&self, given: &str) -> bool {
        super::token_matches(&hash(given), &self.sha256)
    }

    /// The task ended: no token matches any more, and none is kept.
    pub(super) fn clear(&mut self) {
        *self = TaskToken::default();
    }
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_hash_is_compared_and_kept() {
        let t = TaskToken::new("secret-token".into());
        assert!(t.matches("secret-token"));
        assert!(!t.matches("secret-tokeN"));
        let restored = TaskToken::from_sha256(t.sha256().to_string());
        assert!(restored.matches("secret-token"));
        assert!(restored.plain().is_none());
        assert!(!restored.sha256().contains("secret"));
        let mut gone = t;
        gone.clear();
        assert!(!gone.matches("secret-token") && !gone.matches(""));
    }
}
