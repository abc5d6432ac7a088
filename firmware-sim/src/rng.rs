//! A small deterministic PRNG (SplitMix64) and stable seed derivation.
//!
//! Hand-written instead of pulling `rand`: the simulator needs reproducible streams per device
//! (same seed, same registry, same messages) far more than statistical finesse, and the
//! algorithm is ten lines whose output can never change under us with a dependency upgrade.

/// SplitMix64 (Steele, Lea, Flood 2014): passes BigCrush, one u64 of state, trivially seedable.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// A stream for one purpose of one device: independent of every other device, so adding a
    /// device to the registry does not change the messages of the others.
    pub fn for_device(seed: u64, device_id: &str, stream: u64) -> Rng {
        let mut mix = Rng::new(seed ^ fnv1a(device_id.as_bytes()));
        let a = mix.next_u64();
        Rng::new(a ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn range_f64(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform integer in `[lo, hi]` (inclusive).
    pub fn range_i64(&mut self, lo: i64, hi: i64) -> i64 {
        debug_assert!(lo <= hi);
        let span = (hi - lo) as u64 + 1;
        lo + (self.next_u64() % span) as i64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }
}

/// FNV-1a 64: a stable string hash (std's `DefaultHasher` may change between Rust releases).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_reference_values() {
        // Reference output of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn device_streams_are_stable_and_distinct() {
        let a1 = Rng::for_device(7, "radar-a-1-01", 1).next_u64();
        let a2 = Rng::for_device(7, "radar-a-1-01", 1).next_u64();
        let b = Rng::for_device(7, "radar-a-1-02", 1).next_u64();
        let c = Rng::for_device(7, "radar-a-1-01", 2).next_u64();
        let d = Rng::for_device(8, "radar-a-1-01", 1).next_u64();
        assert_eq!(a1, a2);
        assert!(a1 != b && a1 != c && a1 != d);
    }

    #[test]
    fn ranges_stay_in_bounds() {
        let mut r = Rng::new(3);
        for _ in 0..10_000 {
            let x = r.range_i64(-2, 5);
            assert!((-2..=5).contains(&x));
            let f = r.range_f64(1.5, 2.5);
            assert!((1.5..2.5).contains(&f));
        }
    }
}
