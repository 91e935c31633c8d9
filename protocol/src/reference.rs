//! Image references: enough of the distribution grammar to check a
//! destination early and to derive the per-arch tags.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::arch::Arch;

static COMPONENT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$").unwrap());
/// A registry host as the distribution grammar allows it: a DNS name or
/// an IPv4 address, or a bracketed IPv6 address, and an optional port.
static HOST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?$").unwrap()
});
/// Longest repository name registries accept (Docker's limit).
const MAX_NAME: usize = 255;
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").unwrap());

/// A tagged image reference: `registry/repository:tag`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageRef {
    /// The registry host, with its port if any; `docker.io` when the reference names none.
    pub registry: String,
    /// The repository path within the registry (`library/alpine` for a bare Docker Hub name).
    pub repository: String,
    /// The tag; `latest` when the reference names none.
    pub tag: String,
}

impl ImageRef {
    /// Parses a destination. Digests are refused: a build produces a new
    /// digest, so only a tag can be pushed to.
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        let s = s.trim();
        if s.contains('@') {
            return Err(format!(
                "`{s}` is pinned to a digest; a destination must be a tag"
            ));
        }
        let (registry, rest) = match s.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest)
            }
            _ => ("docker.io".to_string(), s),
        };
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, tag),
            _ => (rest, "latest"),
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        if repository.is_empty() || !repository.split('/').all(|c| COMPONENT.is_match(c)) {
            return Err(format!(
                "`{s}` is not a valid image name (lowercase letters, digits and . _ - separators)"
            ));
        }
        if !TAG.is_match(tag) {
            return Err(format!("`{s}` has an invalid tag `{tag}`"));
        }
        check_host(s, &registry)?;
        if registry.len() + 1 + repository.len() > MAX_NAME {
            return Err(format!(
                "`{s}` is too long: registries accept names up to {MAX_NAME} characters"
            ));
        }
        Ok(ImageRef {
            registry,
            repository,
            tag: tag.to_string(),
        })
    }

    /// The per-arch tag the original tool pushed to: `app:1.0` → `app:1.0_amd64`.
    pub fn with_arch_suffix(&self, arch: Arch) -> Result<ImageRef, String> {
        let tag = format!("{}_{}", self.tag, arch);
        if tag.len() > 128 {
            return Err(format!("tag `{tag}` would exceed 128 characters"));
        }
        Ok(ImageRef {
            tag,
            ..self.clone()
        })
    }

    /// The last path component, a natural short name for a service.
    pub fn short_name(&self) -> &str {
        self.repository
            .rsplit('/')
            .next()
            .unwrap_or(&self.repository)
    }
}

fn check_host(s: &str, host: &str) -> Result<(), String> {
    let port = HOST
        .captures(host)
        .ok_or_else(|| format!("`{s}` has an invalid registry host `{host}`"))?
        .get(1);
    match port.map(|p| p.as_str().parse::<u32>()) {
        Some(Ok(1..=65535)) | None => Ok(()),
        Some(_) => Err(format!(
            "`{s}` has an invalid port in `{host}`: ports are 1 to 65535"
        )),
    }
}

/// The registry host of any image reference (tag, digest, or none), as
/// Docker reads it: the first path component when it looks like a host
/// (has a `.` or a `:`, or is `localhost`), Docker Hub otherwise.
pub fn registry_of(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let r = ImageRef::parse("registry.example.com/myapp:1.0.0").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("registry.example.com", "myapp", "1.0.0")
        );
        let r = ImageRef::parse("localhost:5000/team/app").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("localhost:5000", "team/app", "latest")
        );
        assert_eq!(
            ImageRef::parse("alpine").unwrap().to_string(),
            "docker.io/library/alpine:latest"
        );
    }

    #[test]
    fn hosts_ports_and_lengths_are_checked() {
        for bad in [
            "localhost:99999/app:1",
            "localhost:0/app:1",
            "reg_istry.example.com/app:1",
            "-bad.example.com/app:1",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad} was accepted");
        }
        let long = format!("ghcr.io/{}:1", "a".repeat(250));
        assert!(ImageRef::parse(&long).unwrap_err().contains("too long"));
        for good in ["[::1]:5000/app:1", "127.0.0.1:5000/a/b:c", "ghcr.io/o/a"] {
            ImageRef::parse(good).unwrap();
        }
    }

    #[test]
    fn registry_hosts_as_docker_reads_them() {
        assert_eq!(
            registry_of("127.0.0.1:5000/base@sha256:ab"),
            "127.0.0.1:5000"
        );
        assert_eq!(registry_of("localhost/app"), "localhost");
        assert_eq!(registry_of("ghcr.io/org/app:1"), "ghcr.io");
        assert_eq!(registry_of("library/alpine"), "docker.io");
        assert_eq!(registry_of("alpine:3"), "docker.io");
    }

    #[test]
    fn arch_suffix_matches_the_original_naming() {
        let r = ImageRef::parse("r.io/app:1.0").unwrap();
        assert_eq!(
            r.with_arch_suffix(Arch::Amd64).unwrap().to_string(),
            "r.io/app:1.0_amd64"
        );
        let long = ImageRef::parse(&format!("r.io/app:{}", "x".repeat(125))).unwrap();
        assert!(long.with_arch_suffix(Arch::Arm64).is_err());
    }

    #[test]
    fn refuses_bad_destinations() {
        assert!(ImageRef::parse("r.io/app@sha256:abc")
            .unwrap_err()
            .contains("digest"));
        assert!(ImageRef::parse("r.io/App:1").is_err());
        assert!(ImageRef::parse("r.io/app:-bad").is_err());
    }
}
