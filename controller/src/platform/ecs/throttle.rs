//! A client-side token bucket for RunTask. ECS throttles RunTask per
//! account and region (about 20 calls/s sustained); a burst of builds could
//! otherwise fire 100 calls at once and have most of them refused. At
//! [`RUN_TASK_RATE`] calls per second, bursts up to as many, the calls
//! queue here instead, and the SDK's adaptive retry mode handles what ECS
//! still throttles.

use std::time::{Duration, Instant};

/// RunTask calls per second (and the burst allowed), under ECS's 20.
pub const RUN_TASK_RATE: f64 = 15.0;

/// A token bucket: `rate` tokens a second, at most `rate` held.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: f64, now: Instant) -> Bucket {
        Bucket {
            rate,
            tokens: rate,
            last: now,
        }
    }

    /// Takes a token at `now`: `None` when one was there, else how long to
    /// wait before asking again.
    pub fn take(&mut self, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
        // A hair short of a token is a token: rounding must not make a
        // waiter sleep for nanoseconds over and over.
        if self.tokens >= 1.0 - 1e-6 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            None
        } else {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
            Some(wait.max(Duration::from_millis(1)))
        }
    }
}

/// The bucket shared by every launch of one platform.
#[derive(Debug)]
pub struct Throttle(std::sync::Mutex<Bucket>);

impl Default for Throttle {
    fn default() -> Self {
        Throttle(std::sync::Mutex::new(Bucket::new(
            RUN_TASK_RATE,
            Instant::now(),
        )))
    }
}

impl Throttle {
    /// Waits for a token.
    pub async fn acquire(&self) {
        loop {
            let wait = super::watch::lock(&self.0).take(Instant::now());
            match wait {
                None => return,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_100_is_spread_at_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(RUN_TASK_RATE, start);
        // 15 at once, then one every 1/15 s: 100 calls take about 5.7 s.
        let mut now = start;
        let mut granted = 0;
        while granted < 100 {
            match bucket.take(now) {
                None => granted += 1,
                Some(wait) => now += wait,
            }
        }
        let took = now.duration_since(start).as_secs_f64();
        assert!((5.6..5.8).contains(&took), "{took}");
        // Idle time refills, up to the burst.
        let later = now + Duration::from_secs(60);
        let burst = (0..100)
            .take_while(|_| bucket.take(later).is_none())
            .count();
        assert_eq!(burst, 15);
    }
}
