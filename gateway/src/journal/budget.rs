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
//! A reading is **life-safety** ([`kept_under_budget`], the policy [`safety::kept_under_disk_budget`]), decided once when it is committed and
//! stored in the row (`readings.life_safety`), when:
//!
//! - its class is a fire, gas, CO, fall or SOS device ([`safety::RETAINED_CLASSES`]): its whole
//!   history is kept, normal readings included, because the readings before an alarm are the
//!   evidence of how it developed; or the gateway's own supervision (`gateway`);
//! - or, from any class, it carries an active alarm ([`safety::ALARM_METRICS`]): `sos`, `smoke`,
//!   `gas_alarm` or `co_alarm` true, `fall_state` other than `none`, `alarm_level_dev` other
//!   than `none`. Wearables are not a protected class: their vitals are most of the volume, and
//!   their SOS presses and falls are protected by this clause.
//!
//! Rows written before this column existed count as life-safety (kept): the safe default.

use crate::safety;

use super::Record;

/// Whether a reading is never deleted for the disk budget: the journal's use of
/// [`safety::kept_under_disk_budget`] (see the module documentation).
pub fn kept_under_budget(record: &Record) -> bool {
    safety::kept_under_disk_budget(&record.class, &record.metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Value;
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
        assert!(kept_under_budget(&record(
            "smoke_alarm",
            &[("battery_pct", Value::Num(90.0))]
        )));
        assert!(kept_under_budget(&record(
            "gas_detector",
            &[("gas_lel", Value::Num(0.0))]
        )));
        assert!(kept_under_budget(&record("gateway", &[("link_up", Value::Bool(true))])));
        assert!(!kept_under_budget(&record(
            "wearable",
            &[("heart_rate", Value::Num(70.0))]
        )));
        assert!(!kept_under_budget(&record("wearable", &[("sos", Value::Bool(false))])));
        assert!(kept_under_budget(&record("wearable", &[("sos", Value::Bool(true))])));
        assert!(!kept_under_budget(&record("wearable", &[("fall_state", t("none"))])));
        assert!(kept_under_budget(&record("wearable", &[("fall_state", t("fall"))])));
        assert!(kept_under_budget(&record(
            "unregistered",
            &[("smoke", Value::Bool(true))]
        )));
        assert!(kept_under_budget(&record(
            "presence_radar",
            &[("alarm_level_dev", t("low"))]
        )));
        assert!(!kept_under_budget(&record(
            "door_contact",
            &[("contact_open", Value::Bool(true))]
        )));
    }
}
