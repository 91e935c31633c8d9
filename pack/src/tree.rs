//! Which entries a context sends, in archive order: one walk for the
//! archive itself and for its [`crate::fingerprint`], so that the two can
//! never disagree on what the context is.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::{
    io_err, ContextError, IgnoreRules, PackOptions, Packed, CONTEXTS_BESIDE, DOCKERFILE_BESIDE,
    LARGEST_SHOWN,
};

/// What a walk hands its entries to: the tar builder, or the fingerprint.
/// `name` is the entry's name in the archive, `path` where it is on disk.
pub(crate) trait Entries {
    /// A directory.
    fn dir(&mut self, name: &Path, path: &Path) -> io::Result<()>;
    /// A regular file, with the metadata the walk read.
    fn file(&mut self, name: &Path, path: &Path, meta: &Metadata) -> io::Result<()>;
    /// A symlink, stored as a link, never followed.
    fn symlink(&mut self, name: &Path, path: &Path) -> io::Result<()>;
}

impl<W: Write> Entries for tar::Builder<W> {
    fn dir(&mut self, name: &Path, path: &Path) -> io::Result<()> {
        self.append_dir(name, path)
    }
    fn file(&mut self, name: &Path, path: &Path, _meta: &Metadata) -> io::Result<()> {
        self.append_path_with_name(path, name)
    }
    fn symlink(&mut self, name: &Path, path: &Path) -> io::Result<()> {
        self.append_path_with_name(path, name)
    }
}

/// A context, its Dockerfile and its options, checked and ready to walk.
pub(crate) struct Walk<'a> {
    context: &'a Path,
    dockerfile: &'a str,
    opts: &'a PackOptions,
    rules: IgnoreRules,
    /// The ignore file the rules came from, if any.
    pub(crate) rules_file: Option<PathBuf>,
    /// Sent whatever the rules say: the Dockerfile and `.dockerignore`, as
    /// the Docker CLI sends them (Kaniko reads the Dockerfile from the context).
    always: [String; 2],
}

impl<'a> Walk<'a> {
    /// The walk of `context` for `dockerfile` (relative to the context, or
    /// in [`DOCKERFILE_BESIDE`] with `opts.dockerfile_beside`).
    pub(crate) fn new(
        context: &'a Path,
        dockerfile: &'a str,
        opts: &'a PackOptions,
    ) -> Result<Walk<'a>, ContextError> {
        let (rules, rules_file) = match &opts.dockerfile_beside {
            Some(outside) => {
                let named = dockerfile
                    .strip_prefix(DOCKERFILE_BESIDE)
                    .and_then(|n| n.strip_prefix('/'))
                    .is_some_and(|n| !n.is_empty() && !n.contains('/'));
                if !named {
                    return Err(ContextError::BesideName(dockerfile.into()));
                }
                if context.join(DOCKERFILE_BESIDE).symlink_metadata().is_ok() {
                    return Err(ContextError::BesideTaken {
                        context: context.to_path_buf(),
                    });
                }
                IgnoreRules::for_outside(context, outside)?
            }
            None => IgnoreRules::for_build(context, dockerfile)?,
        };
        let always = [
            dockerfile.trim_start_matches("./").to_string(),
            ".dockerignore".to_string(),
        ];
        Ok(Walk {
            context,
            dockerfile,
            opts,
            rules,
            rules_file,
            always,
        })
    }

    /// Hands every entry to `out` in archive order, counting into `packed`.
    pub(crate) fn run(
        &self,
        out: &mut impl Entries,
        packed: &mut Packed,
    ) -> Result<(), ContextError> {
        let mut sizes = HashMap::new();
        append_tree(
            out,
            self.context,
            Path::new(""),
            (&self.rules, &self.always),
            (&self.opts.exclude, &mut sizes),
            packed,
        )?;
        let mut sizes: Vec<(String, u64)> = sizes.into_iter().collect();
        sizes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        sizes.truncate(LARGEST_SHOWN);
        packed.largest = sizes;
        if let Some(outside) = &self.opts.dockerfile_beside {
            append_beside(out, self.context, outside, self.dockerfile, packed)?;
        }
        append_named(out, self.context, self.opts, packed)
    }
}

/// Appends each named directory as [`CONTEXTS_BESIDE`]`/<n>/`, each with
/// its own `.dockerignore`.
fn append_named(
    tar: &mut impl Entries,
    context: &Path,
    opts: &PackOptions,
    packed: &mut Packed,
) -> Result<(), ContextError> {
    let named = &opts.named;
    if named.is_empty() {
        return Ok(());
    }
    if context.join(CONTEXTS_BESIDE).symlink_metadata().is_ok() {
        return Err(ContextError::ContextsTaken {
            context: context.to_path_buf(),
        });
    }
    tar.dir(Path::new(CONTEXTS_BESIDE), context)
        .map_err(io_err(context))?;
    packed.entries += 1;
    for (n, named) in named.iter().enumerate() {
        let meta = std::fs::metadata(&named.dir).map_err(io_err(&named.dir))?;
        if !meta.is_dir() {
            return Err(io_err(&named.dir)(io::Error::other(
                "a named build context must be a directory",
            )));
        }
        let under = Path::new(CONTEXTS_BESIDE).join(n.to_string());
        tar.dir(&under, &named.dir).map_err(io_err(&named.dir))?;
        packed.entries += 1;
        let (rules, _) = IgnoreRules::for_build(&named.dir, "Dockerfile")?;
        append_tree(
            tar,
            &named.dir,
            &under,
            (&rules, &[]),
            // The warning about size names the main context's paths only.
            (&named.exclude, &mut HashMap::new()),
            packed,
        )?;
    }
    Ok(())
}

/// Appends every entry of `context` that `rules` keep (and the `always`
/// files) to `tar` under `under` (empty for the context itself), in name
/// order, counting into `packed`.
fn append_tree(
    tar: &mut impl Entries,
    context: &Path,
    under: &Path,
    (rules, always): (&IgnoreRules, &[String]),
    (secret, sizes): (&[String], &mut HashMap<String, u64>),
    packed: &mut Packed,
) -> Result<(), ContextError> {
    let prune = !rules.has_exceptions();
    let mut walker = walkdir::WalkDir::new(context)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter();
    while let Some(entry) = walker.next() {
        let entry = entry.map_err(|e| {
            let path = e
                .path()
                .map_or_else(|| context.to_path_buf(), Path::to_path_buf);
            ContextError::Io {
                path,
                cause: e.into(),
            }
        })?;
        let path = entry.path();
        let rel = path
            .strip_prefix(context)
            .expect("walkdir stays under its root");
        let Some(rel_str) = rel.to_str().map(|s| s.replace('\\', "/")) else {
            packed.warnings.push(format!(
                "{}: skipped: the name is not UTF-8",
                path.display()
            ));
            continue;
        };
        let ft = entry.file_type();
        if secret.contains(&rel_str) {
            packed.excluded += 1;
            packed.warnings.push(format!(
                "{rel_str}: left out of the context: it holds a build secret or a registry login, which reach the build only as such"
            ));
            continue;
        }
        if rules.excludes(&rel_str) && !always.contains(&rel_str) {
            packed.excluded += 1;
            if ft.is_dir() && prune {
                walker.skip_current_dir();
            }
            continue;
        }
        let name = under.join(rel);
        if ft.is_dir() {
            tar.dir(&name, path).map_err(io_err(path))?;
        } else if ft.is_file() {
            let meta = entry.metadata().map_err(|e| io_err(path)(e.into()))?;
            packed.content_bytes += meta.len();
            let top = rel_str.split('/').next().unwrap_or_default();
            *sizes.entry(top.to_string()).or_default() += meta.len();
            tar.file(&name, path, &meta).map_err(io_err(path))?;
        } else if ft.is_symlink() {
            // Stored as a link, never followed: the link itself is the content.
            tar.symlink(&name, path).map_err(io_err(path))?;
        } else {
            packed.warnings.push(format!(
                "{}: skipped: not a regular file, directory or symlink",
                path.display()
            ));
            continue;
        }
        packed.entries += 1;
    }
    Ok(())
}

/// Appends a Dockerfile from outside the context as `entry` (in
/// [`DOCKERFILE_BESIDE`]), after the tree so that names stay sorted within
/// it. The file's own bytes, with the same normalised header as the rest.
fn append_beside(
    tar: &mut impl Entries,
    context: &Path,
    outside: &Path,
    entry: &str,
    packed: &mut Packed,
) -> Result<(), ContextError> {
    let meta = std::fs::metadata(outside).map_err(io_err(outside))?;
    if !meta.is_file() {
        return Err(io_err(outside)(io::Error::other("not a regular file")));
    }
    tar.dir(Path::new(DOCKERFILE_BESIDE), context)
        .map_err(io_err(context))?;
    tar.file(Path::new(entry), outside, &meta)
        .map_err(io_err(outside))?;
    packed.entries += 2;
    packed.content_bytes += meta.len();
    Ok(())
}
