//! Decoders: pure functions from one MQTT message (topic + payload bytes) to readings in the
//! canonical vocabulary. They never panic and never look at time, the registry or a link; every
//! rejection is a [`DecodeError`] whose [`DecodeError::reason`] is the counter label.
//!
//! - [`canonical`]: our own format on `nh/{site}/{device_id}/telemetry` (docs/contracts.md).
//! - [`zigbee2mqtt`]: Zigbee2MQTT state messages on `zigbee2mqtt/{friendly_name}`.
//! - [`json_map`]: a generic JSON mapping per device model (JSON pointer -> metric).
//! - [`mr60fda1`]: the Seeed MR60FDA1 radar's UART frames (a byte-stream reader with resync).
//! - [`modbus`]: Modbus RTU read requests, CRC and a response scanner (master side).
//! - [`register_map`]: register maps as data (per device model), registers to metrics.

pub mod canonical;
pub mod json_map;
pub mod modbus;
pub mod mr60fda1;
pub mod register_map;
pub mod zigbee2mqtt;

use std::sync::Arc;

use crate::reading::Reading;
use crate::vocabulary::VocabularyError;

/// Limits every decoder applies before it looks at the content.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Largest payload accepted; larger ones are rejected as `oversized` (the transport's own
    /// packet limit is set above this, so the message is still received and acknowledged).
    pub max_payload_bytes: usize,
    /// Deepest JSON nesting accepted.
    pub max_json_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
        }
    }
}

/// 64 KiB: the largest real device payload we know (Zigbee2MQTT with all attributes) is under 2 KiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Vendor payloads nest 3-4 levels (CTWing: payload.serviceData.x); 16 leaves room without
/// letting a hostile payload recurse.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 16;

/// Why a message was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload of {size} bytes exceeds the limit of {limit}")]
    Oversized { size: usize, limit: usize },
    #[error("payload is not valid UTF-8")]
    InvalidUtf8,
    #[error("payload is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("JSON nesting deeper than {0}")]
    TooDeep(usize),
    #[error("topic `{0}` does not fit this decoder")]
    BadTopic(String),
    #[error("topic site `{found}` is not this gateway's site `{expected}`")]
    WrongSite { found: String, expected: String },
    #[error("payload structure: {0}")]
    Schema(String),
    #[error("timestamp: {0}")]
    BadTimestamp(String),
    #[error(transparent)]
    Vocabulary(#[from] VocabularyError),
    #[error("message carries no metric")]
    NoMetrics,
}

impl DecodeError {
    /// The reason label counted on `/metrics` (`nh_rejected_total{reason=...}`).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::InvalidUtf8 => "invalid_utf8",
            DecodeError::InvalidJson(_) => "invalid_json",
            DecodeError::TooDeep(_) => "too_deep",
            DecodeError::BadTopic(_) => "bad_topic",
            DecodeError::WrongSite { .. } => "wrong_site",
            DecodeError::Schema(_) => "wrong_type",
            DecodeError::BadTimestamp(_) => "bad_timestamp",
            DecodeError::Vocabulary(e) => e.reason(),
            DecodeError::NoMetrics => "no_metrics",
        }
    }
}

/// The decoder chosen for a subscription.
#[derive(Debug, Clone)]
pub enum Decoder {
    /// Canonical telemetry of this gateway's `site`.
    Canonical {
        site: String,
    },
    Zigbee2Mqtt,
    JsonMap(Arc<json_map::Profile>),
}

impl Decoder {
    /// Decodes one message.
    pub fn decode(&self, topic: &str, payload: &[u8], limits: &Limits) -> Result<Vec<Reading>, DecodeError> {
        if payload.len() > limits.max_payload_bytes {
            return Err(DecodeError::Oversized {
                size: payload.len(),
                limit: limits.max_payload_bytes,
            });
        }
        match self {
            Decoder::Canonical { site } => canonical::decode(site, topic, payload, limits),
            Decoder::Zigbee2Mqtt => zigbee2mqtt::decode(topic, payload, limits),
            Decoder::JsonMap(profile) => json_map::decode(profile, topic, payload, limits),
        }
    }
}
