//! The simulator's clock: the system clock, or the shared test clock of docs/contracts.md
//! (`virtual = start + scale x (real - origin)`), so the simulator and a gateway started with the
//! same three values live on one timeline.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch on the system clock.
pub fn system_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A possibly scaled, possibly shifted clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock {
    /// Real time (ms since epoch) at which the virtual clock read `start_virtual_ms`.
    pub origin_real_ms: i64,
    /// Virtual time (ms since epoch) at `origin_real_ms`.
    pub start_virtual_ms: i64,
    /// Virtual milliseconds per real millisecond (> 0).
    pub scale: f64,
}

impl Clock {
    /// The system clock: scale 1, no shift.
    pub fn system() -> Clock {
        let now = system_now_ms();
        Clock {
            origin_real_ms: now,
            start_virtual_ms: now,
            scale: 1.0,
        }
    }

    /// Builds the clock from the three test-clock flags; missing ones default to "now" and 1.
    pub fn from_flags(
        origin_real_ms: Option<i64>,
        start_virtual_ms: Option<i64>,
        scale: Option<f64>,
    ) -> anyhow::Result<Clock> {
        let now = system_now_ms();
        let scale = scale.unwrap_or(1.0);
        if !(scale.is_finite() && scale > 0.0) {
            anyhow::bail!("--time-scale must be a positive number, got {scale}");
        }
        let origin = origin_real_ms.unwrap_or(now);
        let start = start_virtual_ms.unwrap_or(origin);
        Ok(Clock {
            origin_real_ms: origin,
            start_virtual_ms: start,
            scale,
        })
    }

    /// Virtual time at real time `real_ms`.
    pub fn virtual_at(&self, real_ms: i64) -> i64 {
        self.start_virtual_ms + (self.scale * (real_ms - self.origin_real_ms) as f64).round() as i64
    }

    /// Real time at which the virtual clock reads `virtual_ms`.
    pub fn real_at(&self, virtual_ms: i64) -> i64 {
        self.origin_real_ms + ((virtual_ms - self.start_virtual_ms) as f64 / self.scale).ceil() as i64
    }

    /// Virtual now.
    pub fn now(&self) -> i64 {
        self.virtual_at(system_now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_clock_maps_both_ways() {
        let c = Clock {
            origin_real_ms: 1_000_000,
            start_virtual_ms: 5_000_000,
            scale: 60.0,
        };
        assert_eq!(c.virtual_at(1_000_000), 5_000_000);
        assert_eq!(c.virtual_at(1_001_000), 5_060_000);
        assert_eq!(c.real_at(5_060_000), 1_001_000);
        // A virtual instant between two real milliseconds is reached at the later one, never early.
        assert_eq!(c.real_at(5_000_001), 1_000_001);
        assert!(c.virtual_at(c.real_at(5_123_457)) >= 5_123_457);
    }

    #[test]
    fn flags_default_to_the_system_clock() {
        let c = Clock::from_flags(None, None, None).expect("defaults");
        assert_eq!(c.origin_real_ms, c.start_virtual_ms);
        assert_eq!(c.scale, 1.0);
        assert!(Clock::from_flags(None, None, Some(0.0)).is_err());
        let c = Clock::from_flags(Some(10), None, Some(2.0)).expect("flags");
        assert_eq!(c.start_virtual_ms, 10);
    }
}
