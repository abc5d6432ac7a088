//! The wire formats a simulated device speaks, written from docs/contracts.md and docs/devices.md on
//! their own (never shared with the gateway, so an encoding bug on one side cannot hide behind the
//! other).
//!
//! - `canonical`: `nh/{site}/{device}/telemetry`, `{"ts", "seq", "metrics"}`.
//! - `zigbee2mqtt`: `zigbee2mqtt/{friendly_name}`, a flat Z2M state object.

pub mod canonical;
pub mod zigbee2mqtt;

use std::fmt;

/// Which wire format a device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Canonical,
    Zigbee2mqtt,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Canonical => "canonical",
            Format::Zigbee2mqtt => "zigbee2mqtt",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "canonical" => Some(Format::Canonical),
            "zigbee2mqtt" | "z2m" => Some(Format::Zigbee2mqtt),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
