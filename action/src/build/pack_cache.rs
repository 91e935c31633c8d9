//! The client's record of what each context packed to, by its metadata
//! fingerprint ([`bakery_pack::fingerprint`]): an unchanged context is
//! neither packed nor uploaded, and says so at once, when the store
//! already holds the archive it packed to last time.
//!
//! Kept in `BAKERY_PACK_CACHE` (a directory; `off` turns the record off),
//! by default `$XDG_CACHE_HOME/bakery/packed` or `~/.cache/bakery/packed`:
//! one small JSON file per fingerprint; a record unused for 30 days is
//! removed. Only a settled fingerprint is recorded (no entry changed in the
//! last seconds before the walk), and a record is used only once the store
//! confirms it holds the archive: a wrong or stale record costs a pack.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bakery_pack::{Fingerprint, Packed};

/// The variable that moves or turns off the record.
pub const ENV: &str = "BAKERY_PACK_CACHE";

/// Records older than this are removed when a new one is written.
const KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// The record's directory, if there is one.
pub(super) struct PackCache {
    dir: Option<PathBuf>,
}

impl PackCache {
    /// The record `BAKERY_PACK_CACHE` (or the user's cache directory) names.
    pub(super) fn from_env() -> PackCache {
        let env = crate::env::ClientEnv::current();
        let dir = match env.var_os(ENV) {
            Some(v) if v == "off" || v == "0" || v == "false" => None,
            // A relative directory would land in a context and change it
            // on every build: records only where an absolute path says.
            Some(v) => Some(PathBuf::from(v)).filter(|p| p.is_absolute()),
            None => env
                .var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| env.var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .filter(|c| c.is_absolute())
                .map(|c| c.join("bakery").join("packed")),
        };
        PackCache { dir }
    }

    fn file(&self, fp: &Fingerprint) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(format!("{}.json", fp.digest)))
    }

    /// What the context with fingerprint `fp` packed to, if recorded (a
    /// record that does not parse, or names no valid archive, is none).
    pub(super) fn get(&self, fp: &Fingerprint) -> Option<Packed> {
        let file = self.file(fp)?;
        // A regular file of a sane size only (not a FIFO, not /dev/zero).
        let meta = std::fs::symlink_metadata(&file).ok()?;
        if !meta.is_file() || meta.len() > 1 << 20 {
            return None;
        }
        let text = std::fs::read(&file).ok()?;
        let packed = serde_json::from_slice::<Packed>(&text)
            .ok()
            .filter(|p| bakery_pack::ContextKey::new(&p.sha256, p.codec).is_ok())?;
        // Used: kept another 30 days.
        if let Ok(f) = std::fs::File::options().write(true).open(&file) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(packed)
    }

    /// Records `packed` for `fp` when `fp` is settled. Best effort: a
    /// record that cannot be written is a pack next time, not an error.
    pub(super) fn put(&self, fp: &Fingerprint, packed: &Packed) {
        let (Some(dir), Some(file), true) = (&self.dir, self.file(fp), fp.settled) else {
            return;
        };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let Ok(json) = serde_json::to_vec(packed) else {
            return;
        };
        if let Ok(tmp) = tempfile::NamedTempFile::new_in(dir) {
            if std::fs::write(tmp.path(), json).is_ok() {
                let _ = tmp.persist(file);
            }
        }
        prune(dir);
    }
}

/// A record's file name: 64 lowercase hex digits and `.json`.
fn is_record_name(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .and_then(|n| n.strip_suffix(".json"))
        .is_some_and(|d| d.len() == 64 && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Removes records not written or read for [`KEEP`].
fn prune(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        // Only what this module writes: a directory set by mistake to one
        // that holds other files loses none of them.
        if !is_record_name(&entry.file_name()) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > KEEP);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache directory set by mistake to one with other files: pruning
    /// touches records only.
    #[test]
    fn pruning_removes_old_records_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join(format!("{}.json", "a".repeat(64)));
        let other = dir.path().join(".bashrc");
        for f in [&record, &other] {
            std::fs::write(f, "{}").unwrap();
            let old = SystemTime::now() - KEEP - Duration::from_secs(60);
            std::fs::File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        prune(dir.path());
        assert!(!record.exists(), "an old record is removed");
        assert!(other.exists(), "a file that is not a record is kept");
    }
}
