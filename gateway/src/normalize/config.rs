//! The limits applied to every message before and while it is decoded and normalized
//! (`[decode]`): payload size, JSON depth, device clock plausibility and the flood limit.

use serde::Deserialize;

use crate::diagnostics::Diagnostics;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    /// Largest payload a decoder accepts; larger ones are counted as `oversized` and dropped.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Deepest JSON nesting accepted.
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
    /// A device time further ahead of the gateway clock than this is replaced by the receive time.
    #[serde(default = "default_max_future_s")]
    pub max_future_s: u64,
    /// A device time older than this is replaced by the receive time (a device with a reset clock).
    #[serde(default = "default_max_past_s")]
    pub max_past_s: u64,
    /// Flood limit: readings per second one device may sustain over MQTT; readings above it are
    /// dropped and counted as `flood`, except life-safety ones (alarm states, and gas, CO and
    /// temperature from fire, gas and CO detectors), which are never dropped. Serial links are not
    /// limited (their baud or poll rate is). 0 turns the limit off.
    #[serde(default = "default_max_device_rate_per_s")]
    pub max_device_rate_per_s: f64,
    /// Flood limit: readings one device may send at once above `max_device_rate_per_s`.
    #[serde(default = "default_device_burst")]
    pub device_burst: u32,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            max_payload_bytes: default_max_payload_bytes(),
            max_json_depth: default_max_json_depth(),
            max_future_s: default_max_future_s(),
            max_past_s: default_max_past_s(),
            max_device_rate_per_s: default_max_device_rate_per_s(),
            device_burst: default_device_burst(),
        }
    }
}

impl DecodeConfig {
    /// Problems with the flood limit, as `(key, problem)`.
    pub fn flood_problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut p = Vec::new();
        if !(self.max_device_rate_per_s.is_finite() && self.max_device_rate_per_s >= 0.0) {
            p.push((
                "decode.max_device_rate_per_s",
                "must be a non-negative number (0 turns the flood limit off)",
            ));
        }
        if self.device_burst == 0 {
            p.push(("decode.device_burst", "must be at least 1"));
        }
        p
    }
}

fn default_max_payload_bytes() -> usize {
    crate::decode::DEFAULT_MAX_PAYLOAD_BYTES
}
fn default_max_json_depth() -> usize {
    crate::decode::DEFAULT_MAX_JSON_DEPTH
}
/// 5 minutes: NTP-less devices drift by seconds, not minutes.
fn default_max_future_s() -> u64 {
    300
}
/// 7 days: store-and-forward devices (VS373 history fetch) replay up to days later.
fn default_max_past_s() -> u64 {
    7 * 24 * 3600
}
/// See `normalize::DEFAULT_MAX_DEVICE_RATE_PER_S` for why.
fn default_max_device_rate_per_s() -> f64 {
    super::DEFAULT_MAX_DEVICE_RATE_PER_S
}
fn default_device_burst() -> u32 {
    super::DEFAULT_DEVICE_BURST
}

impl DecodeConfig {
    /// Reports the section's problems under `decode.*`.
    pub(crate) fn check(&self, d: &mut Diagnostics<'_>) {
        if self.max_payload_bytes == 0 {
            d.at_key("decode.max_payload_bytes", "must be positive");
        }
        if self.max_json_depth == 0 {
            d.at_key("decode.max_json_depth", "must be positive");
        }
        for (key, problem) in self.flood_problems() {
            d.at_key(key, problem);
        }
    }
}
