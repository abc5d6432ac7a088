//! The reading: what one message from one device said ([`Reading`]), and the normalized
//! record it becomes once the registry is attached ([`Record`]), as the journal stores it and the
//! rules and the forwarder read it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A metric value as devices send it: a number, a boolean, or an enum/text value.
///
/// Numbers are always `f64` so a field keeps one type forever in InfluxDB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Num(f64),
    Text(String),
}

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Num(n) => Some(*n),
            _ => None,
        }
    }
}

/// How the source named the device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceKey {
    /// A gateway device id (canonical topic level, generic JSON mapping, serial id).
    Id(String),
    /// A Zigbee2MQTT friendly name, mapped to an id by the registry's `zigbee_name`.
    Zigbee(String),
}

impl std::fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceKey::Id(id) => f.write_str(id),
            DeviceKey::Zigbee(name) => write!(f, "zigbee2mqtt/{name}"),
        }
    }
}

/// One decoded message: the metrics a device reported at one instant, in canonical vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device: DeviceKey,
    /// Device time in ms since the epoch, when the message carried one.
    pub ts_ms: Option<i64>,
    /// Per-device sequence number, when the message carried one.
    pub seq: Option<u64>,
    /// Metric name (the vocabulary of docs/contracts.md) to value; never empty.
    pub metrics: BTreeMap<String, Value>,
}

/// A normalized reading, as written to the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub device: String,
    /// Measurement: the device class, or `unregistered`.
    pub class: String,
    pub building: String,
    pub floor: String,
    pub room: String,
    pub zone: String,
    /// Time of the reading: the device's when sane, else the receive time.
    pub ts: i64,
    pub ts_recv: i64,
    /// True when the device time was out of bounds and replaced by the receive time.
    pub ts_replaced: bool,
    pub seq: Option<u64>,
    pub metrics: BTreeMap<String, Value>,
}

/// The class of the gateway's own devices (self-supervision, MQTT access): readings it makes
/// about itself, for the rules of the S series.
pub const GATEWAY_CLASS: &str = "gateway";

impl Record {
    /// One flag of a gateway-internal device (class [`GATEWAY_CLASS`]), taken at `now`.
    pub fn gateway_flag(device: &str, metric: &str, value: bool, now: i64) -> Record {
        Record {
            device: device.to_owned(),
            class: GATEWAY_CLASS.to_owned(),
            building: String::new(),
            floor: String::new(),
            room: String::new(),
            zone: String::new(),
            ts: now,
            ts_recv: now,
            ts_replaced: false,
            seq: None,
            metrics: BTreeMap::from([(metric.to_owned(), Value::Bool(value))]),
        }
    }
}
