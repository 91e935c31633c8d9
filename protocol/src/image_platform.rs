//! An image's platform (`os/architecture[/variant]`), as an image config or
//! an index entry states it, and whether it is the one a build asked for.

use serde::Deserialize;

use crate::Arch;

/// `{os, architecture, variant}` as image configs and index entries spell them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ImagePlatform {
    /// The operating system, `linux` for every image
    /// bakery builds; empty when the document has none.
    #[serde(default)]
    pub os: String,
    /// The CPU architecture as OCI spells it (`amd64`, `arm64`); empty when the document has none.
    #[serde(default)]
    pub architecture: String,
    /// The CPU variant (`v8` for arm64), when the document names one.
    #[serde(default)]
    pub variant: Option<String>,
}

impl ImagePlatform {
    /// Parses `linux/arm64`, `linux/arm64/v8`.
    pub fn parse(text: &str) -> ImagePlatform {
        let mut parts = text.splitn(3, '/');
        ImagePlatform {
            os: parts.next().unwrap_or_default().to_string(),
            architecture: parts.next().unwrap_or_default().to_string(),
            variant: parts.next().map(String::from),
        }
    }

    /// Whether this platform serves a build for `wanted`: same os and
    /// architecture, and the same variant where both name one (arm64's
    /// `v8` is its only one, so a missing variant is `v8`).
    pub fn satisfies(&self, wanted: &ImagePlatform) -> bool {
        let variant = |p: &ImagePlatform| {
            p.variant
                .clone()
                .filter(|v| !v.is_empty())
                .or_else(|| (p.architecture == "arm64").then(|| "v8".to_string()))
        };
        let variants_fit = match (variant(self), variant(wanted)) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        self.os == wanted.os && self.architecture == wanted.architecture && variants_fit
    }

    /// Whether this is what a build for `arch` must produce.
    pub fn is(&self, arch: Arch) -> bool {
        self.satisfies(&ImagePlatform::parse(arch.platform()))
    }

    /// The `platform` object of an index entry.
    pub fn to_json(&self) -> serde_json::Value {
        let mut p = serde_json::json!({"architecture": self.architecture, "os": self.os});
        if let Some(v) = self.variant.as_deref().filter(|v| !v.is_empty()) {
            p["variant"] = serde_json::json!(v);
        }
        p
    }
}

impl std::fmt::Display for ImagePlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match self.variant.as_deref() {
            Some(v) if !v.is_empty() => write!(f, "/{v}"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(os: &str, arch: &str, variant: Option<&str>) -> ImagePlatform {
        ImagePlatform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(String::from),
        }
    }

    #[test]
    fn the_platform_must_be_the_arch_asked_for() {
        assert!(p("linux", "amd64", None).is(Arch::Amd64));
        assert!(p("linux", "arm64", Some("v8")).is(Arch::Arm64));
        assert!(p("linux", "arm64", None).is(Arch::Arm64));
        assert!(!p("linux", "amd64", None).is(Arch::Arm64));
        assert!(!p("linux", "arm64", Some("v7")).is(Arch::Arm64));
        assert!(!p("windows", "amd64", None).is(Arch::Amd64));
        assert!(
            !p("", "", None).is(Arch::Amd64),
            "a config without a platform"
        );
        assert!(p("linux", "arm", Some("v7")).satisfies(&ImagePlatform::parse("linux/arm/v7")));
        assert!(!p("linux", "arm", Some("v6")).satisfies(&ImagePlatform::parse("linux/arm/v7")));
        assert_eq!(
            p("linux", "arm64", Some("v8")).to_string(),
            "linux/arm64/v8"
        );
        assert_eq!(
            p("linux", "arm64", None).to_json(),
            serde_json::json!({"os": "linux", "architecture": "arm64"}),
            "what the config says, nothing assumed"
        );
    }
}
