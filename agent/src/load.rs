//! Load mode, for the controller benchmark (`bench/`): after checking in,
//! the agent streams numbered, timestamped lines at a fixed rate instead of
//! building, then reports success. Everything between it and the followers
//! (log shipping, the controller's journal and fan-out) is the real path.
//!
//! Enabled by `BAKERY_AGENT_LOAD=<lines>@<lines per second>`; never set by
//! a platform.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

use crate::logs::{self, LogSink};

/// The variable that turns the mode on.
pub const ENV: &str = "BAKERY_AGENT_LOAD";

/// How many lines, how fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Lines to send in all.
    pub lines: u64,
    /// Lines to send per second (at least 1).
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
///
/// Each burst costs the agent one wake-up, as a read from a builder's pipe
/// does: the emitter is a task of its own (a timer that wakes the runtime's
/// main future also writes the runtime's eventfd) and sleeps on a timerfd
/// (a tokio timer that crosses one of its wheel's 64 ms slots wakes the
/// runtime once more on the way). A tokio timer in the main future had
/// cost three wake-ups per line (bench/RESULTS.md, row 4).
pub async fn run(load: Load, log: &LogSink) {
    let sink = log.clone();
    let emitted = tokio::spawn(async move { emit(load, &sink).await })
        .await
        .map_err(std::io::Error::other)
        .and_then(|emitted| emitted);
    if let Err(e) = emitted {
        log.line(format!("load mode stopped: {e}"));
    }
}

/// A burst per shipping interval ([`logs::LINGER`]) at most: a shorter tick
/// would only wake a thousand simulated agents more often to queue lines
/// that wait for the next batch anyway.
async fn emit(load: Load, log: &LogSink) -> std::io::Result<()> {
    let fd = Timer(TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
    )?);
    // SAFETY: the TimerFd owns its descriptor, which stays open and the
    // same until the AsyncFd (which owns the TimerFd) is dropped.
    #[allow(unsafe_code)]
    let timer = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
    const FILLER: &str = "compiling src/module.c -O2 -Wall: warnings 0, objects 1, time 0.01s";
    let tick = logs::LINGER;
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < load.lines {
        let due =
            ((start.elapsed().as_secs_f64() * load.per_second as f64) as u64 + 1).min(load.lines);
        while sent < due {
            sent += 1;
            // ~100 bytes, as a build's lines are (the load generator reads
            // the first two fields).
            log.line(format!("load {sent} {} {FILLER}", unix_micros()));
        }
        // Line n+1 is due n/rate seconds in; a slow rate sleeps until then
        // rather than waking every tick for nothing. Never zero, which
        // would disarm the timer.
        let next = start + Duration::from_secs_f64(sent as f64 / load.per_second as f64);
        let now = Instant::now();
        let wait = next.max(now + tick) - now;
        timer.get_ref().0.set(
            Expiration::OneShot(TimeSpec::from_duration(wait)),
            TimerSetTimeFlags::empty(),
        )?;
        loop {
            let mut ready = timer.readable().await?;
            // Reads the expiry count; EAGAIN (not expired) waits again.
            match ready.try_io(|t| t.get_ref().0.wait().map_err(std::io::Error::from)) {
                Ok(read) => {
                    read?;
                    // Read, so not readable until it next expires: without
                    // this, the next wait would first try a read in vain.
                    ready.clear_ready();
                    break;
                }
                Err(_would_block) => {}
            }
        }
    }
    Ok(())
}

/// What tokio's reactor takes: a descriptor it can poll.
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Microseconds since the Unix epoch: the timestamp each load
/// line carries, for the benchmark to measure delivery latency.
pub fn unix_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
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
