//! Metric values as the simulated devices produce them: canonical names from docs/contracts.md (the
//! gateway's `vocabulary.rs`, copied by hand on purpose, never imported) and their JSON form.

use serde_json::{Number, Value as Json};

/// One metric value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A number; kept to at most 2 decimals so it round-trips exactly through JSON and line protocol.
    Num(f64),
    Bool(bool),
    /// An enum value (`fall_state`, `motion_state`, ...).
    Text(&'static str),
}

/// The metrics of one reading, in the order the device emits them.
pub type Metrics = Vec<(&'static str, Value)>;

/// Rounds to 2 decimals: what a real device's fixed-point register or firmware printf would give,
/// and what parses back to the same f64 on the gateway side.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The JSON form: integral numbers as JSON integers (as firmware prints them), others with at most
/// 2 decimals.
pub fn to_json(value: &Value) -> Json {
    match value {
        Value::Num(n) => number_json(*n),
        Value::Bool(b) => Json::Bool(*b),
        Value::Text(s) => Json::String((*s).to_owned()),
    }
}

/// A number as JSON: an integer when it has no fraction, otherwise rounded to 2 decimals.
pub fn number_json(n: f64) -> Json {
    let r = round2(n);
    if r.fract() == 0.0 && r.abs() < 9.0e15 {
        Json::Number(Number::from(r as i64))
    } else {
        Number::from_f64(r).map(Json::Number).unwrap_or(Json::Null)
    }
}

/// The metrics as a JSON object.
pub fn to_json_object(metrics: &Metrics) -> serde_json::Map<String, Json> {
    metrics
        .iter()
        .map(|(name, v)| ((*name).to_owned(), to_json(v)))
        .collect()
}

/// Canonical metric names the simulator may emit, with their JSON type, mirrored from docs/contracts.md.
/// Tests check every generated metric against this list so a typo cannot reach the wire.
pub const KNOWN: &[(&str, Kind)] = &[
    ("battery_low", Kind::Bool),
    ("battery_pct", Kind::Num(0.0, 100.0)),
    ("battery_v", Kind::Num(0.0, 60.0)),
    ("bed_occupied", Kind::Bool),
    ("body_movement", Kind::Num(0.0, 100.0)),
    ("button", Kind::Enum(&["none", "single", "double", "long", "emergency"])),
    ("co_alarm", Kind::Bool),
    ("co_ppm", Kind::Num(0.0, 10_000.0)),
    ("contact_open", Kind::Bool),
    ("dwell_s", Kind::Num(0.0, 31_536_000.0)),
    (
        "fall_state",
        Kind::Enum(&["none", "suspected", "fall", "confirmed", "exit"]),
    ),
    ("fault", Kind::Bool),
    ("gas_alarm", Kind::Bool),
    ("gas_lel", Kind::Num(0.0, 100.0)),
    ("heart_rate", Kind::Num(0.0, 300.0)),
    ("heartbeat", Kind::Bool),
    ("heat_alarm", Kind::Bool),
    ("lqi", Kind::Num(0.0, 255.0)),
    ("motion_state", Kind::Enum(&["none", "stationary", "moving"])),
    ("motionless_s", Kind::Num(0.0, 31_536_000.0)),
    ("out_of_bed_s", Kind::Num(0.0, 31_536_000.0)),
    ("preheat", Kind::Bool),
    ("presence", Kind::Bool),
    ("resp_rate", Kind::Num(0.0, 120.0)),
    ("silenced", Kind::Bool),
    ("skin_temp", Kind::Num(0.0, 50.0)),
    ("smoke", Kind::Bool),
    ("sos", Kind::Bool),
    ("spo2", Kind::Num(0.0, 100.0)),
    ("steps", Kind::Num(0.0, 10_000_000.0)),
    ("tamper", Kind::Bool),
    ("temperature", Kind::Num(-60.0, 300.0)),
    ("test", Kind::Bool),
    ("worn", Kind::Bool),
];

/// The type of a known metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Num(f64, f64),
    Bool,
    Enum(&'static [&'static str]),
}

/// Whether `(name, value)` fits the vocabulary (used by tests and debug assertions).
pub fn fits_vocabulary(name: &str, value: &Value) -> bool {
    let Some((_, kind)) = KNOWN.iter().find(|(n, _)| *n == name) else {
        return false;
    };
    match (kind, value) {
        (Kind::Num(lo, hi), Value::Num(x)) => x.is_finite() && *x >= *lo && *x <= *hi && round2(*x) == *x,
        (Kind::Bool, Value::Bool(_)) => true,
        (Kind::Enum(values), Value::Text(s)) => values.contains(s),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_firmware_would() {
        assert_eq!(number_json(72.0).to_string(), "72");
        assert_eq!(number_json(36.57).to_string(), "36.57");
        assert_eq!(number_json(2.949_999_9).to_string(), "2.95");
        assert_eq!(number_json(-3.5).to_string(), "-3.5");
    }

    #[test]
    fn two_decimal_values_round_trip_through_json_text() {
        for i in 0..10_000 {
            let x = round2(i as f64 * 0.37 - 500.0);
            let text = number_json(x).to_string();
            let back: f64 = text.parse().expect("number");
            assert_eq!(back, x, "{text}");
        }
    }

    #[test]
    fn vocabulary_table_is_sorted_and_checks_types() {
        assert!(KNOWN.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(fits_vocabulary("spo2", &Value::Num(97.0)));
        assert!(!fits_vocabulary("spo2", &Value::Num(97.123)));
        assert!(!fits_vocabulary("smoke", &Value::Num(1.0)));
        assert!(!fits_vocabulary("fall_state", &Value::Text("falling")));
        assert!(!fits_vocabulary("colour", &Value::Bool(true)));
    }
}
