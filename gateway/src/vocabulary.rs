//! The canonical metric vocabulary (docs/contracts.md): names, types, units, physical ranges and enum
//! code tables. Every decoder checks what it emits against this table, and the InfluxDB writer
//! takes enum codes from it, so one table decides what a valid reading is.

use crate::reading::Value;

/// The type of a metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// A number in `unit`, valid within `[min, max]` (physical range, not an alarm threshold).
    Number {
        unit: &'static str,
        min: f64,
        max: f64,
    },
    Bool,
    /// One of the listed strings; its index is the `<metric>_code` written to the time series.
    Enum(&'static [&'static str]),
    /// Free text (fault codes, zone names), bounded in length.
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricSpec {
    pub name: &'static str,
    pub kind: Kind,
}

/// Longest text value accepted.
pub const MAX_TEXT_LEN: usize = 128;

pub const FALL_STATES: &[&str] = &["none", "suspected", "fall", "confirmed", "exit"];
pub const MOTION_STATES: &[&str] = &["none", "stationary", "moving"];
pub const POSTURES: &[&str] = &["standing", "sitting", "lying", "on_bed", "low_posture"];
/// Button presses; `emergency` is a press the device itself reports as a call for help. Which
/// presses mean help on a given model is the button table's (`normalize::buttons`).
pub const BUTTONS: &[&str] = &["none", "single", "double", "long", "emergency"];
pub const GAS_TYPES: &[&str] = &["unknown", "methane", "propane", "lpg", "town_gas", "co", "h2"];
pub const ALARM_LEVELS: &[&str] = &["none", "low", "high", "test"];

const fn num(name: &'static str, unit: &'static str, min: f64, max: f64) -> MetricSpec {
    MetricSpec {
        name,
        kind: Kind::Number { unit, min, max },
    }
}
const fn flag(name: &'static str) -> MetricSpec {
    MetricSpec { name, kind: Kind::Bool }
}
const fn choice(name: &'static str, values: &'static [&'static str]) -> MetricSpec {
    MetricSpec {
        name,
        kind: Kind::Enum(values),
    }
}
const fn text(name: &'static str) -> MetricSpec {
    MetricSpec { name, kind: Kind::Text }
}

/// The whole vocabulary, sorted by name (looked up by binary search).
pub const METRICS: &[MetricSpec] = &[
    flag("access_refused"),
    choice("alarm_level_dev", ALARM_LEVELS),
    flag("battery_low"),
    num("battery_pct", "%EL", 0.0, 100.0),
    num("battery_v", "V", 0.0, 60.0),
    flag("bed_occupied"),
    num("body_movement", "count", 0.0, 100.0),
    num("bp_dia", "mmHg", 0.0, 300.0),
    num("bp_sys", "mmHg", 0.0, 300.0),
    flag("broker_log_overrun"),
    choice("button", BUTTONS),
    flag("clock_jumped"),
    flag("co_alarm"),
    num("co_ppm", "ppm", 0.0, 10_000.0),
    flag("contact_open"),
    flag("db_writes_ok"),
    num("dwell_s", "s", 0.0, 31_536_000.0),
    flag("end_of_life"),
    choice("fall_state", FALL_STATES),
    flag("fault"),
    text("fault_code"),
    flag("gas_alarm"),
    num("gas_lel", "%LEL", 0.0, 100.0),
    num("gas_ppm", "ppm", 0.0, 1_000_000.0),
    choice("gas_type", GAS_TYPES),
    num("heart_rate", "beat/min", 0.0, 300.0),
    flag("heartbeat"),
    flag("heat_alarm"),
    text("indoor_zone"),
    flag("journal_budget_high"),
    flag("journal_dropping"),
    flag("journal_recovered"),
    num("lat", "lat", -90.0, 90.0),
    flag("link_up"),
    flag("login_lockout"),
    num("lon", "lon", -180.0, 180.0),
    num("lqi", "count", 0.0, 255.0),
    choice("motion_state", MOTION_STATES),
    num("motionless_s", "s", 0.0, 31_536_000.0),
    flag("mqtt_receiving"),
    num("out_of_bed_s", "s", 0.0, 31_536_000.0),
    choice("posture", POSTURES),
    flag("preheat"),
    flag("presence"),
    num("resp_rate", "1/min", 0.0, 120.0),
    num("rsrp", "dBm", -200.0, 0.0),
    num("rssi", "dBm", -200.0, 50.0),
    flag("silenced"),
    num("skin_temp", "Cel", 0.0, 50.0),
    flag("smoke"),
    num("smoke_density", "dB/m", 0.0, 100_000.0),
    num("snr", "dB", -50.0, 60.0),
    flag("sos"),
    num("spo2", "%", 0.0, 100.0),
    num("steps", "count", 0.0, 10_000_000.0),
    flag("tamper"),
    num("temperature", "Cel", -60.0, 300.0),
    flag("test"),
    flag("worn"),
];

/// Looks a metric up by name.
pub fn metric(name: &str) -> Option<&'static MetricSpec> {
    METRICS.binary_search_by(|m| m.name.cmp(name)).ok().map(|i| &METRICS[i])
}

/// Why a value does not fit the vocabulary.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VocabularyError {
    #[error("unknown metric `{0}`")]
    UnknownMetric(String),
    #[error("metric `{metric}` expects {expected}")]
    WrongType { metric: String, expected: &'static str },
    #[error("metric `{metric}` is not a finite number")]
    NonFinite { metric: String },
    #[error("metric `{metric}` = {value} is outside its physical range [{min}, {max}]")]
    OutOfRange {
        metric: String,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("metric `{metric}` has no value `{value}`")]
    BadEnum { metric: String, value: String },
}

impl VocabularyError {
    /// The reason label counted on `/metrics`.
    pub fn reason(&self) -> &'static str {
        match self {
            VocabularyError::UnknownMetric(_) => "unknown_metric",
            VocabularyError::WrongType { .. } => "wrong_type",
            VocabularyError::NonFinite { .. } => "non_finite",
            VocabularyError::OutOfRange { .. } => "out_of_range",
            VocabularyError::BadEnum { .. } => "bad_enum",
        }
    }
}

/// Checks one metric value against the vocabulary.
pub fn check(name: &str, value: &Value) -> Result<(), VocabularyError> {
    let spec = metric(name).ok_or_else(|| VocabularyError::UnknownMetric(name.to_owned()))?;
    let wrong = |expected| VocabularyError::WrongType {
        metric: name.to_owned(),
        expected,
    };
    match (spec.kind, value) {
        (Kind::Number { min, max, .. }, Value::Num(n)) => {
            if !n.is_finite() {
                Err(VocabularyError::NonFinite {
                    metric: name.to_owned(),
                })
            } else if *n < min || *n > max {
                Err(VocabularyError::OutOfRange {
                    metric: name.to_owned(),
                    value: *n,
                    min,
                    max,
                })
            } else {
                Ok(())
            }
        }
        (Kind::Number { .. }, _) => Err(wrong("a number")),
        (Kind::Bool, Value::Bool(_)) => Ok(()),
        (Kind::Bool, _) => Err(wrong("a boolean")),
        (Kind::Enum(values), Value::Text(s)) => {
            if values.contains(&s.as_str()) {
                Ok(())
            } else {
                Err(VocabularyError::BadEnum {
                    metric: name.to_owned(),
                    value: s.clone(),
                })
            }
        }
        (Kind::Enum(_), _) => Err(wrong("one of its enum strings")),
        (Kind::Text, Value::Text(s)) if s.len() <= MAX_TEXT_LEN => Ok(()),
        (Kind::Text, _) => Err(wrong("a short string")),
    }
}

/// The integer code of an enum value (`<metric>_code` in the time series), if `name` is an enum.
pub fn enum_code(name: &str, value: &str) -> Option<u32> {
    match metric(name)?.kind {
        Kind::Enum(values) => values.iter().position(|v| *v == value).map(|i| i as u32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_for_binary_search() {
        assert!(METRICS.windows(2).all(|w| w[0].name < w[1].name));
    }

    #[test]
    fn checks_type_range_and_enum() {
        assert!(check("gas_lel", &Value::Num(12.5)).is_ok());
        assert_eq!(
            check("gas_lel", &Value::Num(f64::NAN)).unwrap_err().reason(),
            "non_finite"
        );
        assert_eq!(
            check("gas_lel", &Value::Num(140.0)).unwrap_err().reason(),
            "out_of_range"
        );
        assert_eq!(check("smoke", &Value::Num(1.0)).unwrap_err().reason(), "wrong_type");
        assert_eq!(
            check("fall_state", &Value::Text("falling".into()))
                .unwrap_err()
                .reason(),
            "bad_enum"
        );
        assert_eq!(
            check("colour", &Value::Bool(true)).unwrap_err().reason(),
            "unknown_metric"
        );
        assert_eq!(enum_code("fall_state", "confirmed"), Some(3));
        assert_eq!(enum_code("gas_lel", "x"), None);
    }
}
