//! What a context is, read from file metadata alone: the key of a local
//! record of what it packed to, so an unchanged context is not packed again
//! to learn its content address (a 1 GB context took 10.5 s to re-pack
//! before the store could say it already had it).
//!
//! The rule, as git's index and build tools apply it: an entry is unchanged
//! when its name, type, size, mode, modification time, status-change time
//! (ctime), inode and device are. ctime is the guard: it is set by the
//! kernel on every write, rename or `touch`, and no user call can set it
//! back, so an edit that keeps a file's size and puts its mtime back still
//! changes the fingerprint. An entry changed within [`SETTLE`] of the walk
//! could change again within the same clock tick, so such a fingerprint is
//! marked unsettled and must not be recorded.

use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::tree::{Entries, Walk};
use crate::{io_err, ContextError, PackOptions, Packed};

/// How long before the walk an entry's last change must be for its
/// metadata to be trusted (file systems with 1 or 2 s time stamps).
pub const SETTLE: Duration = Duration::from_secs(2);

/// A context's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Lowercase hex SHA-256 over the options and every entry's metadata.
    pub digest: String,
    /// No entry changed within [`SETTLE`] of the walk: the fingerprint may
    /// be recorded.
    pub settled: bool,
}

/// Hashes metadata instead of archiving content.
struct Hasher {
    sha: Sha256,
    /// Entries changed after this are too recent to trust.
    trust_before: i64,
    settled: bool,
}

impl Hasher {
    fn entry(&mut self, kind: &str, name: &Path, meta: &Metadata) {
        self.sha.update(kind.as_bytes());
        self.sha.update(name.as_os_str().as_encoded_bytes());
        self.sha.update([0]);
        for n in [
            meta.len(),
            u64::from(meta.mode()),
            meta.ino(),
            meta.dev(),
            meta.mtime() as u64,
            meta.mtime_nsec() as u64,
            meta.ctime() as u64,
            meta.ctime_nsec() as u64,
        ] {
            self.sha.update(n.to_le_bytes());
        }
        if meta.mtime().max(meta.ctime()) >= self.trust_before {
            self.settled = false;
        }
    }
}

impl Entries for Hasher {
    fn dir(&mut self, name: &Path, path: &Path) -> io::Result<()> {
        let meta = std::fs::symlink_metadata(path)?;
        self.entry("d", name, &meta);
        Ok(())
    }
    fn file(&mut self, name: &Path, _path: &Path, meta: &Metadata) -> io::Result<()> {
        self.entry("f", name, meta);
        Ok(())
    }
    fn symlink(&mut self, name: &Path, path: &Path) -> io::Result<()> {
        let meta = std::fs::symlink_metadata(path)?;
        self.entry("l", name, &meta);
        self.sha
            .update(std::fs::read_link(path)?.as_os_str().as_encoded_bytes());
        self.sha.update([0]);
        Ok(())
    }
}

/// The fingerprint of what [`crate::pack`] would pack from `context` for
/// `dockerfile` with `opts`, read from metadata only (no file is opened).
/// It covers the options that change the archive's bytes (codec, level,
/// threads, exclusions, the Dockerfile from outside, named contexts), the
/// ignore file the rules come from, and the version of this crate.
pub fn fingerprint(
    context: &Path,
    dockerfile: &str,
    opts: &PackOptions,
) -> Result<Fingerprint, ContextError> {
    let walk = Walk::new(context, dockerfile, opts)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut h = Hasher {
        sha: Sha256::new(),
        trust_before: now.saturating_sub(SETTLE).as_secs() as i64,
        settled: true,
    };
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    };
    let named: Vec<_> = opts.named.iter().map(|n| (&n.dir, &n.exclude)).collect();
    let options = format!(
        "bakery-pack {} {:?} {:?} {threads} {dockerfile:?} {:?} {:?} {named:?}",
        env!("CARGO_PKG_VERSION"),
        opts.codec,
        opts.level,
        opts.exclude,
        opts.dockerfile_beside,
    );
    h.sha.update(options.as_bytes());
    let canonical = std::fs::canonicalize(context).map_err(io_err(context))?;
    h.sha.update(canonical.as_os_str().as_encoded_bytes());
    if let Some(rules) = &walk.rules_file {
        if let Ok(meta) = std::fs::metadata(rules) {
            h.entry("r", rules, &meta);
        }
    }
    let mut counts = Packed::empty(opts.codec);
    walk.run(&mut h, &mut counts)?;
    h.sha.update(counts.warnings.join("\n").as_bytes());
    Ok(Fingerprint {
        digest: hex::encode(h.sha.finalize()),
        settled: h.settled,
    })
}
