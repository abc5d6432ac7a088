//! What the load devices say: their classes ([`LoadClass`], mixed by weight in a [`Mix`]), the
//! size of a reading ([`PayloadSize`]) and the readings themselves, written with `format!` so the
//! generator never limits a run.

use crate::wire::Format;

/// A device class the load generator can play, with readings of a quiet night (nothing any rule
/// of the catalog raises an alert on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadClass {
    PresenceRadar,
    Wearable,
    BedSensor,
    DoorContact,
    SmokeAlarm,
}

impl LoadClass {
    pub const ALL: [LoadClass; 5] = [
        LoadClass::PresenceRadar,
        LoadClass::Wearable,
        LoadClass::BedSensor,
        LoadClass::DoorContact,
        LoadClass::SmokeAlarm,
    ];

    /// The registry's class name.
    pub fn name(self) -> &'static str {
        match self {
            LoadClass::PresenceRadar => "presence_radar",
            LoadClass::Wearable => "wearable",
            LoadClass::BedSensor => "bed_sensor",
            LoadClass::DoorContact => "door_contact",
            LoadClass::SmokeAlarm => "smoke_alarm",
        }
    }

    fn parse(s: &str) -> Option<LoadClass> {
        LoadClass::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// Which classes the load devices have, by weight: `presence_radar=6,wearable=2,smoke_alarm=1`
/// makes 6 of every 9 devices presence radars, 2 wearables, 1 a smoke alarm (interleaved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// One entry per weight unit, in the order devices take them.
    slots: Vec<LoadClass>,
}

impl Default for Mix {
    /// Presence radars only.
    fn default() -> Self {
        Mix {
            slots: vec![LoadClass::PresenceRadar],
        }
    }
}

impl Mix {
    pub fn parse(spec: &str) -> Result<Mix, String> {
        let mut weights = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, w) = part.split_once('=').unwrap_or((part, "1"));
            let class = LoadClass::parse(name.trim()).ok_or_else(|| {
                let names: Vec<&str> = LoadClass::ALL.iter().map(|c| c.name()).collect();
                format!("unknown class `{name}`: one of {}", names.join(", "))
            })?;
            let w: u32 = w
                .trim()
                .parse()
                .ok()
                .filter(|w| (1..=1000).contains(w))
                .ok_or_else(|| format!("weight of `{name}` must be 1..=1000"))?;
            weights.push((class, w));
        }
        if weights.is_empty() {
            return Err("the mix names no class".into());
        }
        // Interleave: each round takes one unit of every class that still has some.
        let mut slots = Vec::new();
        let mut left: Vec<(LoadClass, u32)> = weights;
        while left.iter().any(|(_, w)| *w > 0) {
            for (c, w) in left.iter_mut().filter(|(_, w)| *w > 0) {
                slots.push(*c);
                *w -= 1;
            }
        }
        Ok(Mix { slots })
    }

    /// The class of load device `n`.
    pub fn class_of(&self, n: usize) -> LoadClass {
        self.slots[n % self.slots.len()]
    }
}

/// How much each load reading says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadSize {
    /// Two metrics (about 90 bytes canonical).
    Small,
    /// A radar's usual report, seven metrics (about 150 bytes canonical, the size of the
    /// issue's reference figures).
    Typical,
}

impl PayloadSize {
    pub fn parse(s: &str) -> Option<PayloadSize> {
        match s {
            "small" => Some(PayloadSize::Small),
            "typical" => Some(PayloadSize::Typical),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PayloadSize::Small => "small",
            PayloadSize::Typical => "typical",
        }
    }
}

/// One load reading of a device of `class`; presence radars as [`payload_of`]. Zigbee2MQTT has
/// door contacts and smoke alarms besides; wearables and bed sensors speak canonical only (a
/// Zigbee2MQTT run sends them canonical readings on their canonical topic).
pub(super) fn class_payload(class: LoadClass, format: Format, size: PayloadSize, ts: i64, seq: u64) -> Vec<u8> {
    let battery = 60 + seq % 40;
    let typical = size == PayloadSize::Typical;
    let text = match (class, format) {
        (LoadClass::PresenceRadar, _) => return payload_of(format, size, ts, seq),
        (LoadClass::Wearable, _) if typical => format!(
            r#"{{"ts":{ts},"seq":{seq},"metrics":{{"heart_rate":{},"spo2":{},"skin_temp":{}.{},"steps":{},"worn":true,"battery_pct":{battery},"rssi":-{}}}}}"#,
            62 + seq % 20,
            95 + seq % 4,
            34 + seq % 2,
            seq % 10,
            seq % 9000,
            50 + seq % 40,
        ),
        (LoadClass::Wearable, _) => format!(
            r#"{{"ts":{ts},"seq":{seq},"metrics":{{"heart_rate":{},"battery_pct":{battery}}}}}"#,
            62 + seq % 20
        ),
        (LoadClass::BedSensor, _) => format!(
            r#"{{"ts":{ts},"seq":{seq},"metrics":{{"bed_occupied":true,"heart_rate":{},"resp_rate":{}}}}}"#,
            58 + seq % 20,
            12 + seq % 6
        ),
        (LoadClass::DoorContact, Format::Zigbee2mqtt) => format!(
            r#"{{"contact":true,"battery":{battery},"linkquality":{},"last_seen":{ts}}}"#,
            30 + seq % 200
        ),
        (LoadClass::DoorContact, Format::Canonical) => {
            format!(r#"{{"ts":{ts},"seq":{seq},"metrics":{{"contact_open":false,"battery_pct":{battery}}}}}"#)
        }
        (LoadClass::SmokeAlarm, Format::Zigbee2mqtt) => format!(
            r#"{{"smoke":false,"battery":{battery},"linkquality":{},"last_seen":{ts}}}"#,
            30 + seq % 200
        ),
        (LoadClass::SmokeAlarm, Format::Canonical) => {
            format!(r#"{{"ts":{ts},"seq":{seq},"metrics":{{"smoke":false,"fault":false,"battery_pct":{battery}}}}}"#)
        }
    };
    text.into_bytes()
}

/// Whether a device of `class` publishes Zigbee2MQTT readings in a Zigbee2MQTT run.
pub(super) fn speaks(class: LoadClass, format: Format) -> bool {
    format == Format::Canonical
        || matches!(
            class,
            LoadClass::PresenceRadar | LoadClass::DoorContact | LoadClass::SmokeAlarm
        )
}

/// One load reading. Written with `format!`, not `json!`: at a few hundred thousand messages per
/// second the generator must not be what limits the run. `ts` is the send time (the stamp a
/// subscriber measures end-to-end latency from).
fn payload_of(format: Format, size: PayloadSize, ts: i64, seq: u64) -> Vec<u8> {
    const MOTION: [&str; 3] = ["none", "stationary", "moving"];
    const POSTURE: [&str; 4] = ["standing", "sitting", "lying", "on_bed"];
    let movement = seq % 101;
    match (format, size) {
        (Format::Canonical, PayloadSize::Small) => {
            format!(r#"{{"ts":{ts},"seq":{seq},"metrics":{{"presence":true,"body_movement":{movement}}}}}"#)
        }
        (Format::Canonical, PayloadSize::Typical) => format!(
            r#"{{"ts":{ts},"seq":{seq},"metrics":{{"presence":true,"motion_state":"{}","posture":"{}","body_movement":{movement},"heart_rate":{},"resp_rate":{},"rssi":-{}}}}}"#,
            MOTION[(seq % 3) as usize],
            POSTURE[(seq % 4) as usize],
            60 + seq % 30,
            12 + seq % 8,
            40 + seq % 40,
        ),
        (Format::Zigbee2mqtt, PayloadSize::Small) => {
            format!(r#"{{"occupancy":true,"linkquality":{},"last_seen":{ts}}}"#, 30 + seq % 200)
        }
        (Format::Zigbee2mqtt, PayloadSize::Typical) => format!(
            r#"{{"occupancy":true,"illuminance":{},"illuminance_lux":{},"battery":{},"voltage":{},"linkquality":{},"last_seen":{ts}}}"#,
            seq % 500,
            seq % 500,
            50 + seq % 50,
            2900 + seq % 100,
            30 + seq % 200,
        ),
    }
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(format: Format, ts: i64, seq: u64) -> Vec<u8> {
        payload_of(format, PayloadSize::Small, ts, seq)
    }

    #[test]
    fn a_mix_interleaves_classes_by_weight() {
        let mix = Mix::parse("presence_radar=3, wearable=2,smoke_alarm").expect("mix");
        let classes: Vec<&str> = (0..12).map(|n| mix.class_of(n).name()).collect();
        assert_eq!(
            classes,
            [
                "presence_radar",
                "wearable",
                "smoke_alarm",
                "presence_radar",
                "wearable",
                "presence_radar",
                "presence_radar",
                "wearable",
                "smoke_alarm",
                "presence_radar",
                "wearable",
                "presence_radar"
            ]
        );
        assert!(Mix::parse("toaster=1").is_err());
        assert!(Mix::parse("wearable=0").is_err());
        assert!(Mix::parse("").is_err());
        assert_eq!(Mix::default().class_of(7), LoadClass::PresenceRadar);
    }

    #[test]
    fn every_class_payload_is_json_with_its_metrics() {
        for class in LoadClass::ALL {
            for size in [PayloadSize::Small, PayloadSize::Typical] {
                for format in [Format::Canonical, Format::Zigbee2mqtt] {
                    let f = if speaks(class, format) {
                        format
                    } else {
                        Format::Canonical
                    };
                    let body = class_payload(class, f, size, 1_700_000_000_000, 42);
                    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
                    match f {
                        Format::Canonical => {
                            assert_eq!(v["seq"], 42, "{class:?}");
                            assert!(v["metrics"].as_object().is_some_and(|m| !m.is_empty()), "{class:?}");
                        }
                        Format::Zigbee2mqtt => assert!(v["last_seen"].is_i64(), "{class:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn payloads_are_valid_wire_format() {
        let v: serde_json::Value = serde_json::from_slice(&payload(Format::Canonical, 5, 9)).expect("json");
        assert_eq!(v["seq"], 9);
        assert_eq!(v["ts"], 5);
        assert_eq!(v["metrics"]["presence"], true);
        let v: serde_json::Value = serde_json::from_slice(&payload(Format::Zigbee2mqtt, 5, 9)).expect("json");
        assert_eq!(v["last_seen"], 5);
        assert_eq!(v["occupancy"], true);
    }
}
