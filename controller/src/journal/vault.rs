//! Registry passwords and build secrets of unfinished builds, kept beside
//! the journal rather than in it.
//!
//! A resumed build needs its registry logins to write its index, so they
//! must outlive the process; but the journal is a copy-on-write database
//! whose freed pages keep old bytes until it is compacted, so a password
//! once written there stays in the file after its build forgot it. Each
//! build's secrets therefore live in their own file (`secrets/<id>.json`,
//! 0600 in a 0700 directory), written before the record that needs them
//! and deleted as soon as the build forgets them (when it ends) or is
//! forgotten. The journal's records carry every secret blanked.
//!
//! With DATABASE_URL and STATE_KEY they go to the database instead, sealed
//! ([`super::sealing`]) and written in the commit that writes the record,
//! so that a controller without a volume, or another one with the key,
//! can resume the build.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::sealing::StateKey;
use super::Record;
use bakery_protocol::spec::Secret;

/// One build's secrets, task by task, in the order the spec holds them.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Sealed {
    tasks: Vec<TaskSecrets>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct TaskSecrets {
    passwords: Vec<String>,
    secrets: Vec<String>,
    /// SSH keys (`--ssh`); absent in files written before they existed.
    #[serde(default)]
    ssh: Vec<String>,
}

/// Where the secrets go: files in a directory, sealed blobs for the
/// database, or nowhere (they stay in the records: a journal opened on a
/// test's storage backend).
#[derive(Debug, Clone)]
pub(super) struct Vault {
    dir: Option<PathBuf>,
    key: Option<std::sync::Arc<StateKey>>,
}

impl Vault {
    pub(super) fn beside(journal: &Path) -> Vault {
        Vault {
            dir: journal.parent().map(|d| d.join("secrets")),
            key: None,
        }
    }

    pub(super) fn none() -> Vault {
        Vault {
            dir: None,
            key: None,
        }
    }

    /// Sealed with `key`, into the commit that writes the record.
    #[cfg(feature = "postgres")]
    pub(super) fn sealed(key: StateKey) -> Vault {
        Vault {
            dir: None,
            key: Some(std::sync::Arc::new(key)),
        }
    }

    /// The file of build `id`; `None` for an id that is not a plain file
    /// name (the controller's ids always are).
    fn file(&self, id: &str) -> Option<PathBuf> {
        let plain = !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        self.dir
            .as_ref()
            .filter(|_| plain)
            .map(|d| d.join(format!("{id}.json")))
    }

    /// Moves `record`'s secrets to its file (or deletes the file when it
    /// has none left), leaving them blank in the record. Sealed for the
    /// database, it returns them as a blob for the commit (empty: delete
    /// the build's blob).
    pub(super) fn seal(&self, id: &str, record: &mut Record) -> std::io::Result<Option<Vec<u8>>> {
        let sealed = Sealed::of(record);
        if let Some(key) = &self.key {
            let blob = match sealed {
                Some(secrets) => key.seal(id, &serde_json::to_vec(&secrets)?)?,
                None => Vec::new(),
            };
            forget_secrets(record);
            return Ok(Some(blob));
        }
        let Some(path) = self.file(id) else {
            return Ok(None);
        };
        let Some(sealed) = sealed else {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(None),
            };
        };
        let body = serde_json::to_vec(&sealed).expect("secrets serialise");
        if std::fs::read(&path).ok().as_deref() != Some(body.as_slice()) {
            write_private(&path, &body)?;
        }
        forget_secrets(record);
        Ok(None)
    }

    /// Puts build `id`'s secrets back into its record, from the blob the
    /// database held (`sealed`) when the vault seals, else from its file.
    pub(super) fn unseal_from(
        &self,
        id: &str,
        record: &mut Record,
        sealed: Option<&[u8]>,
    ) -> Result<(), String> {
        let sealed = sealed.filter(|b| !b.is_empty());
        let Some(key) = &self.key else {
            if sealed.is_some() {
                return Err(format!(
                    "build {id}'s secrets are sealed in the database and STATE_KEY is not \
                     set: give the controller the STATE_KEY that sealed them"
                ));
            }
            return self.unseal(id, record).map_err(|e| e.to_string());
        };
        let Some(blob) = sealed else {
            return Ok(());
        };
        let body = key.open(id, blob)?;
        let saved: Sealed = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        saved.put_back(record);
        Ok(())
    }

    /// Puts build `id`'s secrets back into its record from its file.
    fn unseal(&self, id: &str, record: &mut Record) -> std::io::Result<()> {
        let Some(path) = self.file(id) else {
            return Ok(());
        };
        let body = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let sealed: Sealed = serde_json::from_slice(&body).map_err(std::io::Error::other)?;
        sealed.put_back(record);
        Ok(())
    }

    /// Deletes build `id`'s file, if any.
    pub(super) fn remove(&self, id: &str) {
        if let Some(path) = self.file(id) {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Sealed {
    /// `record`'s secrets, task by task; `None` when it has none left.
    fn of(record: &Record) -> Option<Sealed> {
        let sealed = Sealed {
            tasks: record
                .request
                .tasks
                .iter()
                .map(|t| TaskSecrets {
                    passwords: t
                        .spec
                        .credentials
                        .iter()
                        .map(|c| c.password.expose().to_string())
                        .collect(),
                    secrets: t
                        .spec
                        .secrets
                        .iter()
                        .map(|s| s.value.expose().to_string())
                        .collect(),
                    ssh: t
                        .spec
                        .ssh
                        .iter()
                        .map(|s| s.value.expose().to_string())
                        .collect(),
                })
                .collect(),
        };
        let empty = sealed.tasks.iter().all(|t| {
            t.passwords
                .iter()
                .chain(&t.secrets)
                .chain(&t.ssh)
                .all(String::is_empty)
        });
        (!empty).then_some(sealed)
    }

    /// Puts these secrets back into `record`, in the order they were taken.
    fn put_back(self, record: &mut Record) {
        for (task, saved) in record.request.tasks.iter_mut().zip(self.tasks) {
            for (c, p) in task.spec.credentials.iter_mut().zip(saved.passwords) {
                c.password = Secret::new(p);
            }
            for (s, v) in task.spec.secrets.iter_mut().zip(saved.secrets) {
                s.value = Secret::new(v);
            }
            for (s, v) in task.spec.ssh.iter_mut().zip(saved.ssh) {
                s.value = Secret::new(v);
            }
        }
    }
}

fn forget_secrets(record: &mut Record) {
    for task in &mut record.request.tasks {
        task.spec.forget_secrets();
    }
}

/// Writes `path` through a temporary file (0600 from its first byte) and a
/// rename, in a 0700 directory: never half a file, never readable by others.
fn write_private(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
