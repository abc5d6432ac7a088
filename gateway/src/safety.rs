//! What "life-safety" means, policy by policy.
//!
//! Three parts of the gateway protect readings that can mean a life in danger, and each needs a
//! slightly different set, for its own reason. They are stated here side by side, under distinct
//! names, so that a change to one is made knowingly and the differences stay visible:
//!
//! | policy | who applies it | members |
//! |---|---|---|
//! | [`takes_priority_lane`] | the MQTT source's second connection (`[mqtt] priority_lane`) | device classes of [`PRIORITY_LANE_CLASSES`]: fire, gas, CO, fall and SOS devices **and wearables** (they carry SOS and fall detection) |
//! | [`exempt_from_flood_limit`] | the per-device flood limit (normalize) | a reading with an alarm state of [`ALARM_METRICS`], from any class, or a hazard measurement ([`HAZARD_MEASUREMENTS`]) from a hazard detector ([`HAZARD_CLASSES`]) |
//! | [`kept_under_disk_budget`] | the journal's disk budget | every reading of [`RETAINED_CLASSES`] (fire, gas, CO, fall and SOS devices **and the gateway's own supervision**, not wearables: their vitals are most of the volume), and from any class a reading whose alarm state of [`ALARM_METRICS`] is active |
//!
//! [`ALARM_METRICS`] is the one list of alarm states: each is an edge a device reports once
//! (smoke on, an SOS press, a fall, a gas or CO alarm, a heat detector's own alarm level), so a
//! lost message can be a lost alarm.

use std::collections::BTreeMap;

use crate::reading::Value;

/// Device classes whose topics the priority lane subscribes to: a fire, a gas leak, a fall or an
/// SOS call never waits behind bulk telemetry. Wearables carry SOS and fall detection.
pub const PRIORITY_LANE_CLASSES: &[&str] = &[
    "smoke_alarm",
    "heat_detector",
    "gas_detector",
    "co_detector",
    "multi_gas",
    "fall_radar",
    "sos_button",
    "wearable",
];

/// Whether a device of `class` takes the priority lane (see [`PRIORITY_LANE_CLASSES`]).
pub fn takes_priority_lane(class: &str) -> bool {
    PRIORITY_LANE_CLASSES.contains(&class)
}

/// Alarm states, from any device class: true, or an enum value other than `none`, is an alarm.
pub const ALARM_METRICS: &[&str] = &[
    "alarm_level_dev",
    "co_alarm",
    "fall_state",
    "gas_alarm",
    "heat_alarm",
    "smoke",
    "sos",
];

/// The measurements the fire, gas and CO rules (R12-R15 of `config/rules.toml`) read: a rising
/// temperature or concentration is how a fire or a leak shows before the device's own alarm.
pub const HAZARD_MEASUREMENTS: &[&str] = &["co_ppm", "gas_lel", "temperature"];

/// The detectors whose [`HAZARD_MEASUREMENTS`] are exempt from the flood limit.
pub const HAZARD_CLASSES: &[&str] = &[
    "co_detector",
    "gas_detector",
    "heat_detector",
    "multi_gas",
    "smoke_alarm",
];

/// Whether a reading is never dropped by the per-device flood limit: it carries an alarm state
/// (whatever its value: the edge back to normal matters too), or it is a hazard measurement from
/// a hazard detector.
pub fn exempt_from_flood_limit(class: &str, metrics: &BTreeMap<String, Value>) -> bool {
    metrics.keys().any(|m| {
        ALARM_METRICS.contains(&m.as_str())
            || (HAZARD_MEASUREMENTS.contains(&m.as_str()) && HAZARD_CLASSES.contains(&class))
    })
}

/// Device classes whose every reading survives the journal's disk budget: fire, gas, CO, fall
/// and SOS devices, because the readings before an alarm are the evidence of how it developed,
/// and the gateway's self-supervision (`serial:<bus>`, `gateway:*`).
pub const RETAINED_CLASSES: &[&str] = &[
    "co_detector",
    "fall_radar",
    "gas_detector",
    "gateway",
    "heat_detector",
    "multi_gas",
    "smoke_alarm",
    "sos_button",
];

/// Whether a reading is never deleted for the disk budget: its class is retained, or it carries
/// an active alarm state.
pub fn kept_under_disk_budget(class: &str, metrics: &BTreeMap<String, Value>) -> bool {
    if RETAINED_CLASSES.contains(&class) {
        return true;
    }
    ALARM_METRICS.iter().any(|m| match metrics.get(*m) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Text(t)) => t != "none",
        // A number on a flag metric is not canonical; keep it rather than guess.
        Some(Value::Num(_)) => true,
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_is_a_known_class_or_metric() {
        for c in PRIORITY_LANE_CLASSES
            .iter()
            .chain(HAZARD_CLASSES)
            .chain(RETAINED_CLASSES)
        {
            assert!(crate::registry::CLASSES.contains(c), "{c}");
        }
        for m in ALARM_METRICS.iter().chain(HAZARD_MEASUREMENTS) {
            assert!(crate::vocabulary::metric(m).is_some(), "{m}");
        }
        assert!(RETAINED_CLASSES.windows(2).all(|w| w[0] < w[1]));
        assert!(ALARM_METRICS.windows(2).all(|w| w[0] < w[1]));
    }

    /// The policies differ on purpose; this pins today's differences so a change is deliberate.
    #[test]
    fn the_policies_differ_only_where_stated() {
        let lane: Vec<&str> = PRIORITY_LANE_CLASSES.to_vec();
        let retained: Vec<&str> = RETAINED_CLASSES.to_vec();
        let lane_only: Vec<&&str> = lane.iter().filter(|c| !retained.contains(c)).collect();
        let retained_only: Vec<&&str> = retained.iter().filter(|c| !lane.contains(c)).collect();
        assert_eq!(lane_only, [&"wearable"]);
        assert_eq!(retained_only, [&"gateway"]);
        for c in HAZARD_CLASSES {
            assert!(takes_priority_lane(c) && RETAINED_CLASSES.contains(c), "{c}");
        }
        for c in ["door_contact", "bed_sensor", "presence_radar", "unregistered"] {
            assert!(!takes_priority_lane(c) && !RETAINED_CLASSES.contains(&c), "{c}");
        }
    }

    #[test]
    fn flood_exemption_and_budget_retention_read_alarm_states_differently() {
        let m = |pairs: &[(&str, Value)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        let calm = m(&[("sos", Value::Bool(false))]);
        // The flood limit passes the edge back to normal; the budget keeps only the alarm.
        assert!(exempt_from_flood_limit("wearable", &calm));
        assert!(!kept_under_disk_budget("wearable", &calm));
        assert!(kept_under_disk_budget("wearable", &m(&[("sos", Value::Bool(true))])));
        // A hazard measurement is exempt from a detector only; a retained class keeps everything.
        assert!(exempt_from_flood_limit(
            "multi_gas",
            &m(&[("co_ppm", Value::Num(40.0))])
        ));
        assert!(!exempt_from_flood_limit(
            "unregistered",
            &m(&[("co_ppm", Value::Num(40.0))])
        ));
        assert!(!exempt_from_flood_limit(
            "smoke_alarm",
            &m(&[("battery_pct", Value::Num(70.0))])
        ));
        assert!(kept_under_disk_budget(
            "smoke_alarm",
            &m(&[("battery_pct", Value::Num(70.0))])
        ));
        assert!(kept_under_disk_budget("gateway", &m(&[("link_up", Value::Bool(true))])));
    }
}
