//! The disk budget's rule on what may go when the journal outgrows `disk_budget_mb`.
//!
//! In order, oldest first within each step:
//!
//! 1. readings already forwarded to InfluxDB (at or below its cursor), or any reading when no
//!    InfluxDB is configured (the journal is then the only store and rotates);
//! 2. with InfluxDB configured but behind: readings not yet forwarded that are **not**
//!    life-safety, each counted in `nh_journal_dropped_unforwarded_total{reason="budget"}`,
//!    logged, and turned into the `journal_dropping` supervision flag (rule S5);
//! 3. nothing else: when only life-safety readings are left over the budget the journal stays
//!    over it (counted in `nh_journal_over_budget_total`, warned, alerted by S4 at 80 %).
//!
//! The budget deletes from `readings` only: the alert tables (`alerts`, `alert_audit`,
//! `alert_events`, `engine_state`, `delivery_cursors`), `devices`, `cursors` and `quarantine`
//! are never touched.
//!
//! A reading is **life-safety** ([`is_life_safety`]), decided once when it is committed and
//! stored in the row (`readings.life_safety`), when:
//!
//! - its class is a fire, gas, CO, fall or SOS device ([`PROTECTED_CLASSES`]): its whole
//!   history is kept, normal readings included, because the readings before an alarm are the
//!   evidence of how it developed; or the gateway's own supervision (`gateway`);
//! - or, from any class, it carries an active alarm ([`ALARM_METRICS`]): `sos`, `smoke`,
//!   `gas_alarm` or `co_alarm` true, `fall_state` other than `none`, `alarm_level_dev` other
//!   than `none`. Wearables are not a protected class: their vitals are most of the volume, and
//!   their SOS presses and falls are protected by this clause.
//!
//! Rows written before this column existed count as life-safety (kept): the safe default.

use crate::reading::Value;

use super::Record;

/// Device classes whose every reading is kept: fire, gas, CO, fall and SOS devices, and the
/// gateway's self-supervision (`serial:<bus>`, `gateway:*`).
pub const PROTECTED_CLASSES: &[&str] = &[
    "co_detector",
    "fall_radar",
    "gas_detector",
    "gateway",
    "heat_detector",
    "multi_gas",
    "smoke_alarm",
    "sos_button",
];

/// Metrics that make a reading life-safety from any class when active (true, or an enum value
/// other than `none`).
pub const ALARM_METRICS: &[&str] = &[
    "alarm_level_dev",
    "co_alarm",
    "fall_state",
    "gas_alarm",
    "heat_alarm",
    "smoke",
    "sos",
];

/// Whether a reading is never deleted for the disk budget (see the module documentation).
pub fn is_life_safety(record: &Record) -> bool {
    if PROTECTED_CLASSES.contains(&record.class.as_str()) {
        return true;
    }
    ALARM_METRICS.iter().any(|m| match record.metrics.get(*m) {
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
    use std::collections::BTreeMap;

    fn record(class: &str, metrics: &[(&str, Value)]) -> Record {
        Record {
            device: "d".into(),
            class: class.into(),
            building: String::new(),
            floor: String::new(),
            room: String::new(),
            zone: String::new(),
            ts: 0,
            ts_recv: 0,
            ts_replaced: false,
            seq: None,
            metrics: metrics
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn life_safety_classes_keep_every_reading_and_others_only_their_active_alarms() {
        let t = |s: &str| Value::Text(s.into());
        assert!(is_life_safety(&record(
            "smoke_alarm",
            &[("battery_pct", Value::Num(90.0))]
        )));
        assert!(is_life_safety(&record("gas_detector", &[("gas_lel", Value::Num(0.0))])));
        assert!(is_life_safety(&record("gateway", &[("link_up", Value::Bool(true))])));
        assert!(!is_life_safety(&record(
            "wearable",
            &[("heart_rate", Value::Num(70.0))]
        )));
        assert!(!is_life_safety(&record("wearable", &[("sos", Value::Bool(false))])));
        assert!(is_life_safety(&record("wearable", &[("sos", Value::Bool(true))])));
        assert!(!is_life_safety(&record("wearable", &[("fall_state", t("none"))])));
        assert!(is_life_safety(&record("wearable", &[("fall_state", t("fall"))])));
        assert!(is_life_safety(&record("unregistered", &[("smoke", Value::Bool(true))])));
        assert!(is_life_safety(&record(
            "presence_radar",
            &[("alarm_level_dev", t("low"))]
        )));
        assert!(!is_life_safety(&record(
            "door_contact",
            &[("contact_open", Value::Bool(true))]
        )));
    }

    #[test]
    fn the_class_list_is_sorted_and_within_the_registry_classes() {
        assert!(PROTECTED_CLASSES.windows(2).all(|w| w[0] < w[1]));
        for c in PROTECTED_CLASSES {
            assert!(crate::registry::CLASSES.contains(c), "{c}");
        }
        for m in ALARM_METRICS {
            assert!(crate::vocabulary::metric(m).is_some(), "{m}");
        }
    }
}
