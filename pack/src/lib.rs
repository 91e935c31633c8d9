//! bakery-pack: build contexts as deterministic, content-addressed archives.
//!
//! The same tree always gives the same bytes (entries sorted, owners and
//! times normalised), so the archive's SHA-256 names it in object storage and
//! an unchanged context is never uploaded twice. The tree is streamed file by
//! file through the compressor and never held in memory.
//!
//! Modules: `ignore` is `.dockerignore` with Docker's semantics; `tree`
//! walks a context once into the entries it sends, in archive order;
//! `fingerprint` recognises an unchanged context from file metadata alone.

mod fingerprint;
mod ignore;
mod tree;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gzp::deflate::Gzip;
use gzp::par::compress::{ParCompress, ParCompressBuilder};
use gzp::ZWriter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use bakery_protocol::spec::{CONTEXTS_BESIDE, DOCKERFILE_BESIDE};
pub use bakery_protocol::{Codec, ContextKey};
pub use fingerprint::{fingerprint, Fingerprint, SETTLE};
pub use ignore::{IgnoreError, IgnoreRules};

/// How to pack.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// How to compress the archive: gzip (what Kaniko reads
    /// itself) or zstd (faster; bakery's agent reads it).
    pub codec: Codec,
    /// Compression level; `None` picks a fast default for the codec.
    pub level: Option<i32>,
    /// Compression threads; 0 means one per core.
    pub threads: usize,
    /// Files (relative to the context, `/`-separated) never packed, whatever
    /// `.dockerignore` says: build secrets' and registry logins' files.
    pub exclude: Vec<String>,
    /// A Dockerfile from outside the context, stored in the archive under
    /// the `dockerfile` name given to [`pack`] (which then lies in
    /// [`DOCKERFILE_BESIDE`]): compose and buildx allow such a Dockerfile,
    /// and the agent receives only the archive.
    pub dockerfile_beside: Option<PathBuf>,
    /// Named build contexts that are directories, stored under
    /// [`CONTEXTS_BESIDE`]`/<n>/`, each honouring its own `.dockerignore`.
    pub named: Vec<NamedDir>,
    /// Bytes of the archive packed so far, before compression (file
    /// content and tar headers), counted as they are written: what a
    /// progress display reads while a big context is packed.
    pub progress: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

/// A directory sent as a named build context (`--build-context name=dir`),
/// stored as [`CONTEXTS_BESIDE`]`/<its position in PackOptions::named>`:
/// the name is the user's text, so it never becomes a path.
#[derive(Debug, Clone)]
pub struct NamedDir {
    /// The directory.
    pub dir: PathBuf,
    /// Files in it (relative, `/`-separated) never packed: secrets and logins.
    pub exclude: Vec<String>,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            codec: Codec::Gzip,
            level: None,
            threads: 0,
            exclude: Vec::new(),
            dockerfile_beside: None,
            named: Vec::new(),
            progress: None,
        }
    }
}

/// What a pack produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packed {
    /// Lowercase hex SHA-256 of the archive bytes.
    pub sha256: String,
    /// How the archive is compressed; with `sha256`, it makes the [`ContextKey`].
    pub codec: Codec,
    /// Size of the compressed archive.
    pub size: u64,
    /// Entries in the archive (files, directories, symlinks).
    pub entries: u64,
    /// Bytes of file content before compression.
    pub content_bytes: u64,
    /// Entries the `.dockerignore` left out (a directory counts once).
    pub excluded: u64,
    /// Files that could not be archived and were skipped, with why.
    pub warnings: Vec<String>,
    /// The context's biggest top-level paths by content bytes (a directory
    /// counts what it holds), largest first, at most [`LARGEST_SHOWN`]:
    /// what a big context's warning names, for `.dockerignore`.
    #[serde(default)]
    pub largest: Vec<(String, u64)>,
}

/// How many of the biggest paths [`Packed::largest`] keeps.
pub const LARGEST_SHOWN: usize = 5;

impl Packed {
    /// Nothing packed yet, with `codec`.
    pub(crate) fn empty(codec: Codec) -> Packed {
        Packed {
            sha256: String::new(),
            codec,
            size: 0,
            entries: 0,
            content_bytes: 0,
            excluded: 0,
            warnings: Vec::new(),
            largest: Vec::new(),
        }
    }

    /// The object key this archive is stored under.
    pub fn key(&self) -> ContextKey {
        ContextKey::new(&self.sha256, self.codec).expect("a SHA-256 in lowercase hex")
    }
}

/// Why a context could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The `.dockerignore` cannot be read or has a pattern that does not compile.
    #[error(transparent)]
    Ignore(#[from] IgnoreError),
    /// The cause is part of the message, not a chained source: binaries
    /// print chains, and a chained cause would be printed twice.
    #[error("{}: {cause}", path.display())]
    Io {
        /// What failed: a context entry, the outside Dockerfile, or the context
        /// itself (when the archive could not be finished).
        path: PathBuf,
        /// The I/O error.
        cause: io::Error,
    },
    /// The compressor failed (its message); the archive is unusable.
    #[error("compression failed: {0}")]
    Compress(String),
    /// The context has an entry where a Dockerfile from outside it goes.
    #[error("{}: the context has an entry named `{DOCKERFILE_BESIDE}`, where bakery puts a Dockerfile from outside the context; rename it, or move the Dockerfile into the context", context.display())]
    BesideTaken {
        /// The context directory.
        context: PathBuf,
    },
    /// The context has an entry where named build contexts go.
    #[error("{}: the context has an entry named `{CONTEXTS_BESIDE}`, where bakery puts named build contexts; rename it", context.display())]
    ContextsTaken {
        /// The context directory.
        context: PathBuf,
    },
    /// `dockerfile_beside` is set but `dockerfile` is not an entry in
    /// [`DOCKERFILE_BESIDE`].
    #[error("a Dockerfile from outside the context is stored as `{DOCKERFILE_BESIDE}/<name>`, not `{0}`")]
    BesideName(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |source| ContextError::Io {
        path: path.to_path_buf(),
        cause: source,
    }
}

/// Hashes and counts what passes through, for the content address.
struct HashingWriter<W> {
    inner: W,
    state: Arc<Mutex<(Sha256, u64)>>,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let mut state = self
            .state
            .lock()
            .map_err(|_| io::Error::other("hash state poisoned"))?;
        state.0.update(&buf[..n]);
        state.1 += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The compressor, whichever codec it is.
enum Compressor<W: Write + Send + 'static> {
    Gzip(ParCompress<'static, Gzip, W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write + Send + 'static> Compressor<W> {
    fn new(out: W, opts: &PackOptions) -> Result<Self, ContextError> {
        let threads = match opts.threads {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        };
        match opts.codec {
            Codec::Gzip => {
                let level = opts.level.unwrap_or(1).clamp(0, 9) as u32;
                let writer = ParCompressBuilder::<Gzip>::new()
                    .num_threads(threads)
                    .map_err(|e| ContextError::Compress(e.to_string()))?
                    .compression_level(gzp::Compression::new(level))
                    .from_writer(out);
                Ok(Compressor::Gzip(writer))
            }
            Codec::Zstd => {
                let level = opts.level.unwrap_or(3);
                let mut enc = zstd::stream::write::Encoder::new(out, level)
                    .map_err(|e| ContextError::Compress(e.to_string()))?;
                enc.multithread(threads as u32)
                    .map_err(|e| ContextError::Compress(e.to_string()))?;
                Ok(Compressor::Zstd(enc))
            }
        }
    }

    fn finish(self) -> Result<W, ContextError> {
        match self {
            Compressor::Gzip(mut w) => w
                .finish()
                .map_err(|e| ContextError::Compress(e.to_string())),
            Compressor::Zstd(w) => w
                .finish()
                .map_err(|e| ContextError::Compress(e.to_string())),
        }
    }
}

impl<W: Write + Send + 'static> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(w) => w.write(buf),
            Compressor::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Gzip(w) => w.flush(),
            Compressor::Zstd(w) => w.flush(),
        }
    }
}

/// Packs `context` into `out`, honouring the `.dockerignore` that applies to
/// `dockerfile` (relative to the context). The Dockerfile and `.dockerignore`
/// are always included, as the Docker CLI sends them even when ignored:
/// Kaniko reads the Dockerfile from the context.
pub fn pack<W: Write + Send + 'static>(
    context: &Path,
    dockerfile: &str,
    out: W,
    opts: &PackOptions,
) -> Result<Packed, ContextError> {
    let walk = tree::Walk::new(context, dockerfile, opts)?;
    let state = Arc::new(Mutex::new((Sha256::new(), 0u64)));
    let hashing = HashingWriter {
        inner: out,
        state: Arc::clone(&state),
    };
    let mut tar = tar::Builder::new(Counted {
        inner: Compressor::new(hashing, opts)?,
        progress: opts.progress.clone(),
    });
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);

    let mut packed = Packed::empty(opts.codec);
    walk.run(&mut tar, &mut packed)?;
    let compressor = tar.into_inner().map_err(io_err(context))?.inner;
    let mut hashing = compressor.finish()?;
    hashing.flush().map_err(io_err(context))?;
    let (hasher, size) = {
        let state = state
            .lock()
            .map_err(|_| ContextError::Compress("hash state poisoned".into()))?;
        (state.0.clone(), state.1)
    };
    packed.sha256 = hex::encode(hasher.finalize());
    packed.size = size;
    Ok(packed)
}

/// Packs into `dir`, naming the archive after its hash. The archive is
/// written to a temporary file first and renamed only when complete, so an
/// interrupted pack never leaves a truncated archive under a valid name.
pub fn pack_to_dir(
    context: &Path,
    dockerfile: &str,
    dir: &Path,
    opts: &PackOptions,
) -> Result<(PathBuf, Packed), ContextError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    let file = tmp.reopen().map_err(io_err(tmp.path()))?;
    let packed = pack(
        context,
        dockerfile,
        BufWriter::with_capacity(1 << 20, file),
        opts,
    )?;
    let name = format!("sha256-{}.{}", packed.sha256, packed.codec.extension());
    let dest = dir.join(name);
    tmp.persist(&dest).map_err(|e| io_err(&dest)(e.error))?;
    Ok((dest, packed))
}

/// Opens an archive for reading as a tar stream, whichever codec wrote it.
pub fn open_archive(path: &Path) -> Result<tar::Archive<Box<dyn io::Read>>, ContextError> {
    let file = File::open(path).map_err(io_err(path))?;
    let reader: Box<dyn io::Read> = if path.to_string_lossy().ends_with(".zst") {
        Box::new(zstd::stream::read::Decoder::new(file).map_err(io_err(path))?)
    } else {
        Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(file)))
    };
    Ok(tar::Archive::new(reader))
}

/// The tar stream on its way to the compressor, counted for
/// [`PackOptions::progress`].
struct Counted<W> {
    inner: W,
    progress: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(progress) = &self.progress {
            progress.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
