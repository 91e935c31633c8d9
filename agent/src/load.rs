//! Load mode, for the controller benchmark (`bench/`): after checking in,
//! the agent streams numbered, timestamped lines at a fixed rate instead of
//! building, then reports success. Everything between it and the followers
//! (log shipping, the controller's journal and fan-out) is the real path.
//!
//! Enabled by `BAKERY_AGENT_LOAD=<lines>@<lines per second>`; never set by
//! a platform.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::logs::{self, LogSink};

/// The variable that turns the mode on.
pub const ENV: &str = "BAKERY_AGENT_LOAD";

/// How many lines, how fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub lines: u64,
    pub per_second: u64,
}

impl std::str::FromStr for Load {
    type Err = String;

    fn from_str(s: &str) -> Result<Load, String> {
        let bad = || format!("{ENV}={s}: expected <lines>@<lines per second>, e.g. 2000@200");
        let (lines, rate) = s.split_once('@').ok_or_else(bad)?;
        let load = Load {
            lines: lines.trim().parse().map_err(|_| bad())?,
            per_second: rate.trim().parse().map_err(|_| bad())?,
        };
        if load.per_second == 0 {
            return Err(bad());
        }
        Ok(load)
    }
}

/// Emits `load <n> <unix micros>` lines in bursts, as builders write: the
/// timestamp lets a follower measure delivery latency on the same clock.
/// A burst per shipping interval ([`logs::LINGER`]): a shorter tick would
/// only wake a thousand simulated agents more often to queue lines that
/// wait for the next batch anyway.
pub async fn run(load: Load, log: &LogSink) {
    let tick = logs::LINGER;
    let start = tokio::time::Instant::now();
    let mut sent = 0u64;
    while sent < load.lines {
        let due =
            ((start.elapsed().as_secs_f64() * load.per_second as f64) as u64 + 1).min(load.lines);
        while sent < due {
            sent += 1;
            log.line(format!("load {sent} {}", unix_micros()));
        }
        // Line n+1 is due n/rate seconds in; a slow rate sleeps until then
        // rather than waking every tick for nothing.
        let next = start + Duration::from_secs_f64(sent as f64 / load.per_second as f64);
        tokio::time::sleep_until(next.max(tokio::time::Instant::now() + tick)).await;
    }
}

pub fn unix_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_at_rate() {
        assert_eq!(
            "2000@200".parse::<Load>(),
            Ok(Load {
                lines: 2000,
                per_second: 200
            })
        );
        assert!("2000".parse::<Load>().unwrap_err().contains("expected"));
        assert!("10@0".parse::<Load>().is_err());
    }
}
