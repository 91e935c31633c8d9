//! OCI annotations as docker buildx and build-push-action take them
//! (`[level:]key=value`, docker/metadata-action's `annotations` output), and
//! where each level ends up:
//!
//! * `manifest` (the default): on each per-arch image manifest. buildah
//!   writes them; Kaniko cannot, so for Kaniko-built images the controller
//!   puts them on the image's entry in the index instead (the
//!   `manifest-descriptor` level) and says so in the build's log.
//! * `index`: on the multi-arch index.
//! * `manifest-descriptor`: on each image's entry in the index.
//!
//! `index-descriptor` has no place (nothing lists the index) and a
//! platform filter (`manifest[linux/amd64]:`) is not supported: both are
//! refused by name rather than dropped.

use std::collections::BTreeMap;
use std::str::FromStr;

/// Keys reserved for attestations (`vnd.docker.reference.type` and
/// `.digest`): an image annotated with them would be taken for one.
pub const RESERVED_PREFIX: &str = "vnd.docker.reference.";

/// Where an annotation goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Each per-arch image manifest.
    Manifest,
    /// The multi-arch index.
    Index,
    /// Each image's entry in the index.
    ManifestDescriptor,
}

/// One `[level:]key=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// Where it goes.
    pub level: Level,
    /// The key (`org.opencontainers.image.description`).
    pub key: String,
    /// The value.
    pub value: String,
}

impl FromStr for Annotation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}` is not an annotation: write [level:]key=value"))?;
        // A key has no `:` of its own in practice only after the level;
        // `org.opencontainers.image.source` has none at all.
        let (level, key) = match key.split_once(':') {
            Some((levels, _)) if levels.contains(',') => {
                return Err(format!(
                    "`{levels}`: give one level per annotation (one line each for {levels})"
                ))
            }
            Some((level, key)) => (level_of(level)?, key),
            None => (Level::Manifest, key),
        };
        if key.is_empty() || key.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!("`{key}` is not an annotation key"));
        }
        if key.starts_with(RESERVED_PREFIX) {
            return Err(format!(
                "`{key}`: `{RESERVED_PREFIX}*` annotations are the attestations' own"
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(format!(
                "the value of annotation `{key}` has control characters"
            ));
        }
        Ok(Annotation {
            level,
            key: key.to_string(),
            value: value.to_string(),
        })
    }
}

fn level_of(text: &str) -> Result<Level, String> {
    // buildx allows several levels at once: `index,manifest:key=value`.
    match text {
        "manifest" => Ok(Level::Manifest),
        "index" => Ok(Level::Index),
        "manifest-descriptor" => Ok(Level::ManifestDescriptor),
        "index-descriptor" => Err(
            "annotation level `index-descriptor` is not supported: nothing lists a multi-arch index; use index:"
                .into(),
        ),
        other if other.contains('[') => Err(format!(
            "annotation level `{other}`: a platform filter is not supported; the annotation goes on every arch"
        )),
        other => Err(format!(
            "`{other}` is not an annotation level: use manifest, index or manifest-descriptor"
        )),
    }
}

/// Annotations sorted by level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotations {
    /// On each per-arch manifest.
    pub manifest: BTreeMap<String, String>,
    /// On the index.
    pub index: BTreeMap<String, String>,
    /// On each image's entry in the index.
    pub manifest_descriptor: BTreeMap<String, String>,
}

impl Annotations {
    /// Parses every `[level:]key=value` (blank lines skipped), saying which is wrong.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Annotations, String> {
        let mut out = Annotations::default();
        for line in lines {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let a: Annotation = line.parse()?;
            let map = match a.level {
                Level::Manifest => &mut out.manifest,
                Level::Index => &mut out.index,
                Level::ManifestDescriptor => &mut out.manifest_descriptor,
            };
            map.insert(a.key, a.value);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_actions_annotations_parse_by_level() {
        let a = Annotations::parse([
            "manifest:org.opencontainers.image.title=app",
            "index:org.opencontainers.image.description=An app: with colons=and equals",
            "org.opencontainers.image.vendor=acme",
            "manifest-descriptor:team=a",
            "",
        ])
        .unwrap();
        assert_eq!(a.manifest["org.opencontainers.image.title"], "app");
        assert_eq!(a.manifest["org.opencontainers.image.vendor"], "acme");
        assert_eq!(
            a.index["org.opencontainers.image.description"],
            "An app: with colons=and equals"
        );
        assert_eq!(a.manifest_descriptor["team"], "a");
        for bad in [
            "index-descriptor:k=v",
            "manifest[linux/amd64]:k=v",
            "layer:k=v",
            "no-equals",
            "=v",
            "manifest-descriptor:vnd.docker.reference.type=attestation-manifest",
        ] {
            assert!(Annotations::parse([bad]).is_err(), "{bad}");
        }
    }
}
