//! CPU and memory requests, with one meaning for every platform.
//!
//! The original tool read a bare CPU number as vCPUs in one place and as
//! 1/1024-vCPU units in another. Here a quantity is parsed once, into
//! millicores and MiB, and every backend converts from those.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// CPU in thousandths of a vCPU. Written as vCPUs (`0.5`, `2`) or millicores (`500m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpu {
    millis: u32,
}

/// The most vCPUs any platform bakery targets offers a single task or pod.
const MAX_VCPU: f64 = 192.0;

impl Cpu {
    /// A CPU request of `millis` thousandths of a vCPU (`1000` is one vCPU).
    pub fn from_millis(millis: u32) -> Cpu {
        Cpu { millis }
    }
    /// The request in thousandths of a vCPU, as Kubernetes' `m` suffix counts them.
    pub fn millis(self) -> u32 {
        self.millis
    }
    /// ECS CPU units: 1024 per vCPU.
    pub fn ecs_units(self) -> u32 {
        (u64::from(self.millis) * 1024).div_ceil(1000) as u32
    }
}

impl FromStr for Cpu {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (number, scale) = match t.strip_suffix('m') {
            Some(n) => (n, 1.0),
            None => (t, 1000.0),
        };
        let value: f64 = number.parse().map_err(|_| {
            format!("cpu `{s}` is not a number of vCPUs (`0.5`, `2`) or millicores (`500m`)")
        })?;
        let millis = (value * scale).round();
        if millis.is_nan() || millis < 1.0 {
            return Err(format!("cpu `{s}` must be more than zero"));
        }
        if millis > MAX_VCPU * 1000.0 {
            return Err(format!(
                "cpu `{s}` is {} vCPUs; a bare number means vCPUs (ECS's 1024 units are 1 vCPU, so write `1` for 1024 units)",
                millis / 1000.0
            ));
        }
        Ok(Cpu {
            millis: millis as u32,
        })
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.millis.is_multiple_of(1000) {
            write!(f, "{}", self.millis / 1000)
        } else if self.millis.is_multiple_of(100) || self.millis.is_multiple_of(250) {
            write!(f, "{}", f64::from(self.millis) / 1000.0)
        } else {
            write!(f, "{}m", self.millis)
        }
    }
}

/// Memory in MiB. Written with a unit: `512Mi`, `512M`, `2Gi`, `2G`.
///
/// `G`/`M` are read as binary units, as ECS and the original README mean
/// them (`2G` is 2048 MiB). A bare number is refused: ECS reads it as MiB and
/// Kubernetes as bytes, and guessing wrong is a 1000x difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Memory {
    mib: u32,
}

impl Memory {
    /// A memory request of `mib` MiB.
    pub fn from_mib(mib: u32) -> Memory {
        Memory { mib }
    }
    /// The request in MiB, as ECS counts it.
    pub fn mib(self) -> u32 {
        self.mib
    }
}

impl FromStr for Memory {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("memory `{s}` is not a size such as `512Mi` or `2G`"))?;
        let mib = match unit {
            "Mi" | "M" | "MB" | "MiB" => value,
            "Gi" | "G" | "GB" | "GiB" => value * 1024.0,
            "Ti" | "T" => value * 1024.0 * 1024.0,
            "" => {
                return Err(format!(
                    "memory `{s}` has no unit; write `{s}Mi` for MiB or `{s}G` for GiB"
                ))
            }
            other => {
                return Err(format!(
                    "memory `{s}` has unknown unit `{other}`; use Mi/M or Gi/G"
                ))
            }
        };
        let mib = mib.ceil();
        if !(1.0..=(4.0 * 1024.0 * 1024.0)).contains(&mib) {
            return Err(format!("memory `{s}` is out of range"));
        }
        Ok(Memory { mib: mib as u32 })
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mib.is_multiple_of(1024) {
            write!(f, "{}Gi", self.mib / 1024)
        } else {
            write!(f, "{}Mi", self.mib)
        }
    }
}

/// Scratch disk for one build (the builder unpacks base images and writes
/// layers there), in GiB: written `30G`, `30Gi`, `1T`. Fargate gives 20 GiB
/// unless asked (21 to 200), GKE Autopilot 1 GiB: large builds need more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Disk {
    gib: u32,
}

impl Disk {
    /// `gib` GiB.
    pub fn from_gib(gib: u32) -> Disk {
        Disk { gib }
    }
    /// The size in GiB, as Fargate's `ephemeralStorage.sizeInGiB` takes it.
    pub fn gib(self) -> u32 {
        self.gib
    }
}

impl FromStr for Disk {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let value: u32 = number
            .parse()
            .map_err(|_| format!("disk `{s}` is not a size such as `30G` or `1T`"))?;
        let gib = match unit {
            "Gi" | "G" | "GB" | "GiB" => Some(value),
            "Ti" | "T" | "TB" | "TiB" => value.checked_mul(1024),
            "" => return Err(format!("disk `{s}` has no unit; write `{s}G` for GiB")),
            other => {
                return Err(format!(
                    "disk `{s}` has unknown unit `{other}`; use G (GiB) or T (TiB)"
                ))
            }
        };
        match gib {
            Some(gib) if (1..=10_240).contains(&gib) => Ok(Disk { gib }),
            _ => Err(format!("disk `{s}` is out of range (1G to 10T)")),
        }
    }
}

impl fmt::Display for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}Gi", self.gib)
    }
}

/// Both quantities are written either as YAML strings or numbers, and
/// serialised back in their canonical spelling.
macro_rules! quantity_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = d.deserialize_any(TextVisitor)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
quantity_serde!(Cpu);
quantity_serde!(Memory);
quantity_serde!(Disk);

/// A string or a number, as text (`cpu: 2` and `cpu: "2"` mean the same).
struct TextVisitor;

impl serde::de::Visitor<'_> for TextVisitor {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or a number")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_is_gib_with_a_unit() {
        assert_eq!("30G".parse::<Disk>().unwrap().gib(), 30);
        assert_eq!("30Gi".parse::<Disk>().unwrap().to_string(), "30Gi");
        assert_eq!("1T".parse::<Disk>().unwrap().gib(), 1024);
        assert!("30".parse::<Disk>().unwrap_err().contains("no unit"));
        assert!("30M".parse::<Disk>().unwrap_err().contains("unknown unit"));
        assert!("0G".parse::<Disk>().unwrap_err().contains("out of range"));
    }

    #[test]
    fn cpu_has_one_meaning() {
        for (text, millis) in [
            ("0.5", 500),
            ("500m", 500),
            ("2", 2000),
            ("0.25", 250),
            ("16", 16000),
        ] {
            assert_eq!(text.parse::<Cpu>().unwrap().millis(), millis, "{text}");
        }
        assert_eq!("1".parse::<Cpu>().unwrap().ecs_units(), 1024);
        assert_eq!("0.25".parse::<Cpu>().unwrap().ecs_units(), 256);
        let err = "1024".parse::<Cpu>().unwrap_err();
        assert!(err.contains("write `1` for 1024 units"), "{err}");
        assert!("0".parse::<Cpu>().is_err());
        assert!("-1".parse::<Cpu>().is_err());
        assert!("lots".parse::<Cpu>().is_err());
    }

    #[test]
    fn memory_needs_a_unit() {
        for (text, mib) in [
            ("2G", 2048),
            ("2Gi", 2048),
            ("2048Mi", 2048),
            ("512M", 512),
            ("0.5G", 512),
        ] {
            assert_eq!(text.parse::<Memory>().unwrap().mib(), mib, "{text}");
        }
        assert!("2048".parse::<Memory>().unwrap_err().contains("no unit"));
        assert!("2Q".parse::<Memory>().unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn canonical_spelling_round_trips() {
        for text in ["0.5", "2", "250m", "1.5"] {
            let cpu: Cpu = text.parse().unwrap();
            assert_eq!(cpu.to_string().parse::<Cpu>().unwrap(), cpu);
        }
        assert_eq!("2G".parse::<Memory>().unwrap().to_string(), "2Gi");
        assert_eq!("1536Mi".parse::<Memory>().unwrap().to_string(), "1536Mi");
    }
}
