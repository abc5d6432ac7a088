//! Latency percentiles, as the `load`, `sink` and `alert-probe` reports give them.

use serde::Serialize;

/// Percentiles of a set of latencies, in milliseconds rounded to the microsecond (nearest rank:
/// p99 of 100 samples is the 99th smallest, of fewer than 100 it is the largest).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// From latencies in milliseconds; `None` when there are none.
    pub fn from_ms(mut ms: Vec<f64>) -> Option<Percentiles> {
        ms.retain(|v| v.is_finite());
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        let at = |p: f64| {
            let rank = (p * ms.len() as f64).ceil() as usize;
            let v = ms[rank.clamp(1, ms.len()) - 1];
            (v * 1000.0).round() / 1000.0
        };
        Some(Percentiles {
            count: ms.len() as u64,
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: at(1.0),
        })
    }

    /// From latencies in microseconds.
    pub fn from_us(us: &[u32]) -> Option<Percentiles> {
        Percentiles::from_ms(us.iter().map(|&u| f64::from(u) / 1000.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = Percentiles::from_ms((1..=1000).map(f64::from).collect()).expect("some");
        assert_eq!(
            (p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms),
            (1000, 500.0, 900.0, 990.0, 999.0, 1000.0)
        );
        let p = Percentiles::from_ms(vec![3.0, 1.0, 2.0]).expect("some");
        assert_eq!((p.p50_ms, p.p99_ms, p.max_ms), (2.0, 3.0, 3.0));
        assert!(Percentiles::from_ms(Vec::new()).is_none());
        assert_eq!(Percentiles::from_us(&[1500]).map(|p| p.max_ms), Some(1.5));
    }
}
