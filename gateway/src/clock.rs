//! The gateway's clock: the system's, or the shared test clock of docs/contracts.md
//! (`VIRTUAL_MS + N x (now - REAL_MS)`) so that scenarios with hour-long windows run in minutes
//! and a gateway restarted with the same three values continues the same timeline.

use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock {
    test: Option<TestClock>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct TestClock {
    origin_real_ms: i64,
    start_virtual_ms: i64,
    scale: f64,
}

/// Milliseconds since the Unix epoch on the system clock.
pub fn system_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Clock {
    pub fn system() -> Self {
        Clock { test: None }
    }

    /// The test clock; `scale` must be positive.
    pub fn test(origin_real_ms: i64, start_virtual_ms: i64, scale: f64) -> Self {
        Clock {
            test: Some(TestClock {
                origin_real_ms,
                start_virtual_ms,
                scale,
            }),
        }
    }

    /// Now, in ms since the epoch on this clock's timeline.
    pub fn now_ms(&self) -> i64 {
        self.at(system_now_ms())
    }

    /// The time on this clock's timeline at system time `real_ms`.
    pub fn at(&self, real_ms: i64) -> i64 {
        match self.test {
            None => real_ms,
            Some(t) => t.start_virtual_ms + ((real_ms - t.origin_real_ms) as f64 * t.scale) as i64,
        }
    }

    /// How many times faster than real time this clock runs.
    pub fn scale(&self) -> f64 {
        self.test.map_or(1.0, |t| t.scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_clock_maps_real_to_virtual_time() {
        let c = Clock::test(1_000, 50_000, 60.0);
        assert_eq!(c.at(1_000), 50_000);
        assert_eq!(c.at(2_000), 110_000);
        assert_eq!(Clock::system().at(1234), 1234);
    }
}
