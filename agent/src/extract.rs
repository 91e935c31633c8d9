//! Unpacking a context archive without trusting it.
//!
//! The archive comes from a client the agent does not control. Nothing may
//! land outside the work dir: absolute paths, `..`, writes through a symlink
//! the archive itself planted, hard links pointing out, and device files are
//! refused, and size and entry limits stop decompression bombs. The first
//! refusal stops the extraction with an error naming the entry.

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

/// Why a context archive was not (fully) unpacked; the first refusal stops the extraction.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// An entry that would escape the destination or is of a refused kind.
    #[error("context archive entry `{entry}` refused: {why}")]
    Refused {
        /// The entry's path as the archive names it.
        entry: String,
        /// Why it is refused.
        why: String,
    },
    /// The content passed [`Limits::max_bytes`] (this many bytes).
    #[error("context archive is larger than the {0}-byte limit once unpacked")]
    TooLarge(u64),
    /// The content passed the size the client declared
    /// (this many bytes): not the archive that was packed.
    #[error("context archive unpacks to more than the {0} bytes the client packed: it is corrupt or was tampered with")]
    LargerThanPacked(u64),
    /// The archive has more entries than [`Limits::max_entries`] (this many).
    #[error("context archive has more than {0} entries")]
    TooManyEntries(u64),
    /// The compressed stream or the tar inside it does not read (the decoder's message).
    #[error("context archive is corrupt or truncated: {0}")]
    Corrupt(String),
    /// Writing an entry under the destination failed.
    #[error("writing {}: {source}", path.display())]
    Io {
        /// The path being written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Bounds on what one context may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most bytes of file content to unpack: 16 GiB by default,
    /// less where the client declared less or the disk has less room.
    pub max_bytes: u64,
    /// The most entries (files, directories, links) to unpack: a million by default.
    pub max_entries: u64,
    /// `max_bytes` is what the client said it packed (not a size cap), so
    /// passing it means the archive is not what was packed.
    pub declared: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 16 << 30,
            max_entries: 1_000_000,
            declared: false,
        }
    }
}

/// What was unpacked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Extracted {
    /// Entries unpacked (files, directories, links).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Decompresses by codec and unpacks into `dest`.
pub fn extract_compressed(
    reader: impl Read,
    codec: bakery_protocol::Codec,
    dest: &Path,
    limits: Limits,
) -> Result<Extracted, ExtractError> {
    if codec == bakery_protocol::Codec::Zstd {
        let decoder = zstd::stream::read::Decoder::new(reader)
            .map_err(|e| ExtractError::Corrupt(e.to_string()))?;
        extract(decoder, dest, limits)
    } else {
        extract(
            flate2::read::MultiGzDecoder::new(io::BufReader::new(reader)),
            dest,
            limits,
        )
    }
}

/// Unpacks a tar stream into `dest`, which must exist.
pub fn extract(reader: impl Read, dest: &Path, limits: Limits) -> Result<Extracted, ExtractError> {
    let mut archive = tar::Archive::new(reader);
    let mut done = Extracted::default();
    let entries = archive
        .entries()
        .map_err(|e| ExtractError::Corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ExtractError::Corrupt(e.to_string()))?;
        done.entries += 1;
        if done.entries > limits.max_entries {
            return Err(ExtractError::TooManyEntries(limits.max_entries));
        }
        let raw = entry
            .path()
            .map_err(|e| ExtractError::Corrupt(e.to_string()))?
            .into_owned();
        let at = At {
            dest,
            name: raw.display().to_string(),
        };
        let rel =
            safe_relative(&raw).ok_or_else(|| at.refuse("absolute path or `..` component"))?;
        if rel.as_os_str().is_empty() {
            continue; // "./" itself
        }
        let target = dest.join(&rel);
        // Every parent must be a real directory inside dest, never a symlink
        // an earlier entry planted.
        ensure_real_parents(dest, &rel).map_err(|why| at.refuse(&why))?;
        let kind = entry.header().entry_type();
        if kind.is_file() || kind == tar::EntryType::Continuous {
            let size = entry.header().size().unwrap_or(0);
            done.bytes += size;
            if done.bytes > limits.max_bytes {
                return Err(if limits.declared {
                    ExtractError::LargerThanPacked(limits.max_bytes)
                } else {
                    ExtractError::TooLarge(limits.max_bytes)
                });
            }
            let mode = entry.header().mode().unwrap_or(0o644);
            write_file(&mut entry, size, &target, &at)?;
            set_mode(&target, if mode & 0o111 != 0 { 0o755 } else { 0o644 })?;
        } else if kind.is_dir() {
            make_dir(&target, &at)?;
        } else if kind.is_symlink() {
            let link = link_name(&entry, &at, "symlink without a target")?;
            // A link may point anywhere (it is data to the build), but nothing
            // is ever written through one: see ensure_real_parents.
            remove_existing(&target)?;
            symlink(&link, &target)?;
        } else if kind.is_hard_link() {
            let link = link_name(&entry, &at, "hard link without a target")?;
            make_hard_link(&link, &target, &at)?;
        } else if !matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            return Err(at.refuse("device files, FIFOs and other special entries are not allowed"));
        }
    }
    Ok(done)
}

/// The entry being unpacked, for refusals that name it.
struct At<'a> {
    dest: &'a Path,
    name: String,
}

impl At<'_> {
    fn refuse(&self, why: &str) -> ExtractError {
        ExtractError::Refused {
            entry: self.name.clone(),
            why: why.to_string(),
        }
    }
}

/// A regular file: at most the declared size is copied, so a lying header
/// cannot grow the file; the mode is reduced to 0644 or 0755.
fn write_file(
    entry: &mut impl Read,
    size: u64,
    target: &Path,
    at: &At,
) -> Result<(), ExtractError> {
    remove_existing(target)?;
    let mut file = fs::File::create(target).map_err(|source| ExtractError::Io {
        path: target.to_path_buf(),
        source,
    })?;
    let copied = io::copy(&mut entry.take(size), &mut file)
        .map_err(|e| ExtractError::Corrupt(format!("{}: {e}", at.name)))?;
    if copied != size {
        return Err(ExtractError::Corrupt(format!("{}: truncated", at.name)));
    }
    Ok(())
}

fn make_dir(target: &Path, at: &At) -> Result<(), ExtractError> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(at.refuse("a directory replaces an existing file or link")),
        Err(_) => fs::create_dir(target).map_err(|source| ExtractError::Io {
            path: target.to_path_buf(),
            source,
        }),
    }
}

fn link_name<R: Read>(
    entry: &tar::Entry<R>,
    at: &At,
    missing: &str,
) -> Result<PathBuf, ExtractError> {
    Ok(entry
        .link_name()
        .map_err(|e| ExtractError::Corrupt(e.to_string()))?
        .ok_or_else(|| at.refuse(missing))?
        .into_owned())
}

/// A hard link only to a regular file already unpacked inside the context.
fn make_hard_link(link: &Path, target: &Path, at: &At) -> Result<(), ExtractError> {
    let link_rel =
        safe_relative(link).ok_or_else(|| at.refuse("hard link points outside the context"))?;
    ensure_real_parents(at.dest, &link_rel).map_err(|why| at.refuse(&why))?;
    let source = at.dest.join(&link_rel);
    match fs::symlink_metadata(&source) {
        Ok(m) if m.is_file() => {}
        _ => return Err(at.refuse("hard link target is not a regular file of the context")),
    }
    remove_existing(target)?;
    fs::hard_link(&source, target).map_err(|source| ExtractError::Io {
        path: target.to_path_buf(),
        source,
    })
}

/// The path with `.` removed, or `None` if it is absolute or climbs with `..`.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Checks each existing ancestor of `rel` under `dest` is a directory, not a
/// symlink; creates the missing ones.
fn ensure_real_parents(dest: &Path, rel: &Path) -> Result<(), String> {
    let mut current = dest.to_path_buf();
    let parents: Vec<_> = rel
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    for c in parents {
        current.push(c);
        match fs::symlink_metadata(&current) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "its parent `{}` is a symlink",
                    current.strip_prefix(dest).unwrap_or(&current).display()
                ))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "its parent `{}` is a file",
                    current.strip_prefix(dest).unwrap_or(&current).display()
                ))
            }
            Err(_) => {
                fs::create_dir(&current).map_err(|e| format!("cannot create its parent: {e}"))?;
            }
        }
    }
    Ok(())
}

/// Removes a file or link at `path` so a later entry replaces it rather than
/// writing through it. Directories are left alone.
fn remove_existing(path: &Path) -> Result<(), ExtractError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(ExtractError::Refused {
            entry: path.display().to_string(),
            why: "a file replaces an existing directory".into(),
        }),
        Ok(_) => fs::remove_file(path).map_err(|source| ExtractError::Io {
            path: path.to_path_buf(),
            source,
        }),
        Err(_) => Ok(()),
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), ExtractError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| ExtractError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> Result<(), ExtractError> {
    std::os::unix::fs::symlink(target, link).map_err(|source| ExtractError::Io {
        path: link.to_path_buf(),
        source,
    })
}
