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
        let dir = match std::env::var_os(ENV) {
            Some(v) if v == "off" || v == "0" || v == "false" => None,
            Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
            _ => std::env::var_os("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
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

/// Removes records not written or read for [`KEEP`].
fn prune(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > KEEP);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
