//! The architectures and execution platforms bakery knows.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A CPU architecture an agent can build natively on.
///
/// Only the two that Fargate and common Kubernetes node pools offer: a build
/// for anything else would need emulation, which is what bakery exists to avoid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// x86-64 (`linux/amd64`).
    Amd64,
    /// 64-bit Arm (`linux/arm64`, variant `v8`).
    Arm64,
}

impl Arch {
    /// Every arch, in their sort order (amd64 first).
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// The name config.yaml, the API and per-arch tags use: `amd64` or `arm64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The OCI platform string, as `docker buildx --platform` spells it.
    pub fn platform(self) -> &'static str {
        match self {
            Arch::Amd64 => "linux/amd64",
            Arch::Arm64 => "linux/arm64",
        }
    }

    /// The architecture of the machine running this code, so that a compose
    /// service without platforms builds for the client's own arch (as the
    /// original tool did and as `docker compose build` does).
    pub fn host() -> Arch {
        match std::env::consts::ARCH {
            "aarch64" => Arch::Arm64,
            _ => Arch::Amd64,
        }
    }

    /// Whether the binfmt_misc directory `binfmt` (normally
    /// [`BINFMT_MISC`]) has qemu-user enabled for this arch's programs.
    pub fn emulated_in(self, binfmt: &std::path::Path) -> bool {
        let name = match self {
            Arch::Amd64 => "qemu-x86_64",
            Arch::Arm64 => "qemu-aarch64",
        };
        std::fs::read_to_string(binfmt.join(name))
            .is_ok_and(|s| s.lines().next() == Some("enabled"))
    }

    /// Parses an OCI platform (`linux/arm64`, `linux/arm64/v8`, `linux/amd64`).
    pub fn from_platform(s: &str) -> Result<Arch, String> {
        let lower = s.trim().to_ascii_lowercase();
        if lower != s.trim() && Arch::from_platform(&lower).is_ok() {
            return Err(format!(
                "unsupported platform `{s}`: did you mean {lower}? (platforms are lowercase)"
            ));
        }
        let parts: Vec<&str> = s.trim().split('/').collect();
        match parts.as_slice() {
            ["linux", "amd64"] => Ok(Arch::Amd64),
            ["linux", "arm64"] | ["linux", "arm64", "v8"] => Ok(Arch::Arm64),
            ["linux", "x86_64" | "x86-64" | "x64"] => Err(format!(
                "unsupported platform `{s}`: did you mean linux/amd64? (OCI platforms call x86_64 amd64)"
            )),
            ["linux", "aarch64" | "arm64v8"] => Err(format!(
                "unsupported platform `{s}`: did you mean linux/arm64? (OCI platforms call aarch64 arm64)"
            )),
            // A bare arch: what `--platform` means, without the OS.
            ["amd64" | "x86_64" | "x86-64" | "x64"] => Err(format!(
                "unsupported platform `{s}`: did you mean linux/amd64? (a platform is os/arch)"
            )),
            ["arm64" | "aarch64" | "arm64v8"] => Err(format!(
                "unsupported platform `{s}`: did you mean linux/arm64? (a platform is os/arch)"
            )),
            ["linux", "arm", ..] | ["arm" | "armhf" | "armv7"] => Err(format!(
                "unsupported platform `{s}`: 32-bit arm is not built; bakery builds natively on linux/amd64 and linux/arm64"
            )),
            _ => Err(format!(
                "unsupported platform `{s}`: bakery builds natively on linux/amd64 and linux/arm64"
            )),
        }
    }
}

/// Where binfmt_misc lists the interpreters the kernel runs other
/// architectures' programs with.
pub const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "amd64" => Ok(Arch::Amd64),
            "arm64" => Ok(Arch::Arm64),
            "x86_64" | "x86-64" => Err(format!("unsupported arch `{s}`; write `amd64`")),
            "aarch64" | "arm64/v8" => Err(format!("unsupported arch `{s}`; write `arm64`")),
            _ => Err(format!(
                "unsupported arch `{s}`; expected `amd64` or `arm64`"
            )),
        }
    }
}

/// Where the controller runs the agents of a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// AWS ECS on Fargate (or Fargate Spot).
    Ecs,
    /// Kubernetes pods on nodes of the build's arch.
    K8s,
    /// Child processes of the controller, on its own machine.
    Local,
}

impl Platform {
    /// The name config.yaml and the API use: `ecs`, `k8s` or `local`.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Ecs => "ecs",
            Platform::K8s => "k8s",
            Platform::Local => "local",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_as_buildx_writes_them() {
        assert_eq!(Arch::from_platform("linux/amd64"), Ok(Arch::Amd64));
        assert_eq!(Arch::from_platform("linux/arm64/v8"), Ok(Arch::Arm64));
        assert!(Arch::from_platform("linux/arm/v7")
            .unwrap_err()
            .contains("linux/arm/v7"));
        assert!(Arch::from_platform("windows/amd64").is_err());
    }

    #[test]
    fn common_aliases_get_a_pointed_error() {
        assert!("aarch64"
            .parse::<Arch>()
            .unwrap_err()
            .contains("write `arm64`"));
        assert!("x86_64"
            .parse::<Arch>()
            .unwrap_err()
            .contains("write `amd64`"));
    }

    #[test]
    fn a_bare_arch_as_a_platform_gets_did_you_mean() {
        for (given, meant) in [
            ("arm64", "linux/arm64"),
            ("aarch64", "linux/arm64"),
            ("amd64", "linux/amd64"),
            ("x86_64", "linux/amd64"),
        ] {
            let e = Arch::from_platform(given).unwrap_err();
            assert!(e.contains(&format!("did you mean {meant}?")), "{e}");
        }
        let e = Arch::from_platform("linux/arm/v7").unwrap_err();
        assert!(e.contains("32-bit arm"), "{e}");
        let e = Arch::from_platform("linux/AMD64").unwrap_err();
        assert!(e.contains("did you mean linux/amd64?"), "{e}");
    }
}
