//! Fargate's task sizes: only fixed (CPU, memory) pairs are accepted, so a
//! build's request is rounded up to the nearest one before any API call.

use bakery_protocol::resources::{Cpu, Memory};

/// A Fargate task size: CPU units and MiB, one of the pairs Fargate accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FargateSize {
    /// ECS CPU units (1024 per vCPU).
    pub cpu_units: u32,
    /// Memory in MiB, one of the sizes Fargate pairs with `cpu_units`.
    pub memory_mib: u32,
}

/// Fargate's valid memory sizes (MiB) for each CPU size (units).
fn fargate_memory_options(cpu_units: u32) -> Vec<u32> {
    let range =
        |from: u32, to: u32, step: u32| (from..=to).step_by(step as usize).collect::<Vec<_>>();
    match cpu_units {
        256 => vec![512, 1024, 2048],
        512 => range(1024, 4096, 1024),
        1024 => range(2048, 8192, 1024),
        2048 => range(4096, 16384, 1024),
        4096 => range(8192, 30720, 1024),
        8192 => range(16384, 61440, 4096),
        16384 => range(32768, 122_880, 8192),
        _ => Vec::new(),
    }
}

const FARGATE_CPUS: [u32; 7] = [256, 512, 1024, 2048, 4096, 8192, 16384];

impl FargateSize {
    /// The smallest valid Fargate size that gives at least `cpu` and
    /// `memory`. Fargate accepts only fixed pairs, so a request is rounded up
    /// (and the caller says so in the log); a request beyond the largest
    /// size is an error.
    pub fn round_up(cpu: Cpu, memory: Memory) -> Result<FargateSize, String> {
        let units = cpu.ecs_units();
        for &c in FARGATE_CPUS.iter().filter(|&&c| c >= units) {
            if let Some(&m) = fargate_memory_options(c)
                .iter()
                .find(|&&m| m >= memory.mib())
            {
                return Ok(FargateSize {
                    cpu_units: c,
                    memory_mib: m,
                });
            }
        }
        Err(format!(
            "cpu {cpu} with memory {memory} is more than Fargate's largest task (16 vCPU, 120 GiB)"
        ))
    }

    /// Whether the request was already a valid pair.
    pub fn is_exact(self, cpu: Cpu, memory: Memory) -> bool {
        self.cpu_units == cpu.ecs_units() && self.memory_mib == memory.mib()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fargate_sizes_round_up_to_valid_pairs() {
        let rows = [
            ("0.25", "512Mi", 256, 512),
            ("0.5", "2G", 512, 2048),
            ("0.5", "5G", 1024, 5120),
            ("1", "1G", 1024, 2048),
            ("1", "8G", 1024, 8192),
            ("1.5", "3G", 2048, 4096),
            ("2", "17G", 4096, 17408),
            ("4", "31G", 8192, 32768),
            ("8", "60G", 8192, 61440),
            ("16", "120G", 16384, 122_880),
            ("0.1", "100Mi", 256, 512),
        ];
        for (cpu, mem, want_cpu, want_mem) in rows {
            let size = FargateSize::round_up(cpu.parse().unwrap(), mem.parse().unwrap()).unwrap();
            assert_eq!(
                (size.cpu_units, size.memory_mib),
                (want_cpu, want_mem),
                "{cpu} {mem}"
            );
        }
        assert!(
            FargateSize::round_up("0.5".parse().unwrap(), "2G".parse().unwrap())
                .unwrap()
                .is_exact("0.5".parse().unwrap(), "2G".parse().unwrap())
        );
        assert!(FargateSize::round_up("32".parse().unwrap(), "2G".parse().unwrap()).is_err());
        assert!(FargateSize::round_up("16".parse().unwrap(), "121G".parse().unwrap()).is_err());
    }
}
