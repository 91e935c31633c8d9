//! What every build of a run asks for besides its plan, from the command
//! line: the provenance attestation, annotations, named build contexts and
//! SSH keys. Each is checked here, before anything is packed or uploaded,
//! and a wrong one names its flag.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bakery_pack::NamedDir;
use bakery_plan::NamedSource;
use bakery_protocol::annotations::Annotations;
use bakery_protocol::provenance::{Provenance, Source};
use bakery_protocol::spec::{BuildSecret, NamedContext};
use bakery_protocol::validate::MAX_SECRET_BYTES;
use bakery_protocol::Secret;

use crate::cli::Input;

/// What every build of the run asks for.
#[derive(Debug, Default)]
pub struct Asks {
    /// `--provenance`; `None` for none.
    pub provenance: Option<Provenance>,
    /// `--annotation`, by level.
    pub annotations: Annotations,
    /// `--build-context`.
    pub contexts: NamedContexts,
    /// `--ssh`: each key's content.
    pub ssh: Vec<BuildSecret>,
    /// The key files, never packed into a context.
    ssh_paths: Vec<PathBuf>,
}

impl Asks {
    /// Reads and checks the flags.
    pub fn from_input(input: &Input) -> Result<Asks> {
        let annotations = Annotations::parse(input.annotations.iter().map(String::as_str))
            .map_err(|e| anyhow::anyhow!("--annotation (BAKERY_ANNOTATIONS): {e}"))?;
        let keys: Vec<(BuildSecret, PathBuf)> = input
            .ssh
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| ssh_key(l))
            .collect::<Result<_>>()?;
        let (ssh, ssh_paths) = keys.into_iter().unzip();
        Ok(Asks {
            provenance: input.provenance.0.map(|mode| Provenance {
                mode,
                source: Source::from_env(|k| crate::env::ClientEnv::current().var(k)),
            }),
            annotations,
            contexts: NamedContexts::parse(&input.build_contexts)?,
            ssh,
            ssh_paths,
        })
    }

    /// Files that must never be packed: the SSH keys.
    pub fn key_files(&self) -> &[PathBuf] {
        &self.ssh_paths
    }
}

/// `--build-context name=value` as docker buildx takes it.
#[derive(Debug, Default, Clone)]
pub struct NamedContexts {
    /// Directories, in the order they are packed.
    dirs: Vec<(String, PathBuf)>,
    /// Images (`docker-image://`).
    images: BTreeMap<String, String>,
}

impl NamedContexts {
    fn parse(lines: &[String]) -> Result<NamedContexts> {
        let mut out = NamedContexts::default();
        for line in lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
            let Some((name, value)) = line.split_once('=') else {
                bail!("--build-context `{line}`: write name=path or name=docker-image://image");
            };
            if out.images.contains_key(name) || out.dirs.iter().any(|(n, _)| n == name) {
                bail!("--build-context `{name}` is given twice");
            }
            if let Some(image) = value.strip_prefix("docker-image://") {
                out.images.insert(name.into(), image.into());
                continue;
            }
            if let Some((scheme, _)) = value.split_once("://") {
                bail!("--build-context {name}: `{scheme}://` contexts are not supported: use a directory or docker-image://");
            }
            if value.starts_with("target:") || value.starts_with("git@") {
                bail!("--build-context {name}: `{value}` is not supported: use a directory or docker-image://");
            }
            let dir = PathBuf::from(value);
            let meta = std::fs::metadata(&dir)
                .with_context(|| format!("--build-context {name}: {value}"))?;
            if !meta.is_dir() {
                bail!("--build-context {name}: {value} is not a directory");
            }
            out.dirs.push((name.into(), dir));
        }
        out.dirs.sort();
        Ok(out)
    }

    /// These (the command line's) over a service's own named contexts
    /// (compose `additional_contexts`): the flag wins on a name both give,
    /// as `docker buildx bake --set` does.
    pub fn over(&self, service: &BTreeMap<String, NamedSource>) -> NamedContexts {
        let mut out = self.clone();
        for (name, source) in service {
            if out.images.contains_key(name) || out.dirs.iter().any(|(n, _)| n == name) {
                continue;
            }
            match source {
                NamedSource::Dir(dir) => out.dirs.push((name.clone(), dir.clone())),
                NamedSource::Image(image) => {
                    out.images.insert(name.clone(), image.clone());
                }
            }
        }
        out.dirs.sort();
        out
    }

    /// The directories in the order they are packed: with the context and
    /// the Dockerfile, what makes one archive differ from another.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    /// The spec's map: each directory by its position in [`Self::pack`].
    pub fn spec(&self) -> BTreeMap<String, NamedContext> {
        let mut out: BTreeMap<String, NamedContext> = self
            .images
            .iter()
            .map(|(n, i)| (n.clone(), NamedContext::DockerImage(i.clone())))
            .collect();
        for (i, (name, _)) in self.dirs.iter().enumerate() {
            out.insert(name.clone(), NamedContext::Archive(i as u32));
        }
        out
    }

    /// The directories to pack, each leaving out `protected` files.
    pub fn pack(&self, protected: &[PathBuf]) -> Vec<NamedDir> {
        self.dirs
            .iter()
            .map(|(_, dir)| NamedDir {
                dir: dir.clone(),
                exclude: super::upload::secret_files_in(protected, dir),
            })
            .collect()
    }
}

/// `--ssh id=keyfile` (buildx's `default=~/.ssh/id_ed25519`): the key's
/// content, sent as a build secret is. An agent cannot reach this
/// machine's ssh-agent, so `default` alone (the agent socket) is refused.
fn ssh_key(line: &str) -> Result<(BuildSecret, PathBuf)> {
    let line = line.trim();
    let Some((id, path)) = line.split_once('=') else {
        bail!("--ssh {line}: the build's agent cannot reach this machine's ssh-agent; give a key file: --ssh {line}=$HOME/.ssh/id_ed25519");
    };
    if path.contains(',') {
        bail!("--ssh {id}: one key file per id");
    }
    let path = PathBuf::from(path);
    let meta =
        std::fs::metadata(&path).with_context(|| format!("--ssh {id}: {}", path.display()))?;
    if !meta.is_file() {
        bail!("--ssh {id}: {} is not a key file (an agent socket cannot be sent to the build's agent)", path.display());
    }
    if meta.len() > MAX_SECRET_BYTES as u64 {
        bail!(
            "--ssh {id}: {} is over {MAX_SECRET_BYTES} bytes",
            path.display()
        );
    }
    let key = std::fs::read_to_string(&path)
        .with_context(|| format!("--ssh {id}: reading {}", path.display()))?;
    Ok((
        BuildSecret {
            id: id.to_string(),
            value: Secret::new(key),
        },
        path,
    ))
}
