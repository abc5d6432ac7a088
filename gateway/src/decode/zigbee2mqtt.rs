//! Zigbee2MQTT device state messages (`zigbee2mqtt/{friendly_name}`, one flattened JSON object per
//! device) mapped to the canonical vocabulary, following the converters of
//! `Koenkk/zigbee-herdsman-converters` (docs/devices.md has the table).
//!
//! Keys that are not in the mapping are ignored (Z2M sends many we do not use: illuminance,
//! supervision_reports, update, ...). A mapped key with the wrong JSON type rejects the whole
//! message: a broken smoke value must show up as a rejection, never vanish. It also owns the small
//! RFC 3339 parser ([`parse_rfc3339_ms`]) that `last_seen` needs, shared with `json_map`.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json};

use crate::decode::canonical::{json_kind, ms_from_json, number_to_f64, parse_object};
use crate::decode::{DecodeError, Limits};
use crate::reading::{DeviceKey, Reading, Value};
use crate::vocabulary::{self, VocabularyError};

const BASE_TOPIC: &str = "zigbee2mqtt/";

/// Z2M boolean keys copied unchanged, in the order applied: a later key overrides an earlier one
/// for the same metric (`presence` wins over `occupancy`, as the brief says).
const FLAGS: &[(&str, &str)] = &[
    ("smoke", "smoke"),
    ("gas", "gas_alarm"),
    ("carbon_monoxide", "co_alarm"),
    ("occupancy", "presence"),
    ("presence", "presence"),
    ("sos", "sos"),
    ("battery_low", "battery_low"),
    ("tamper", "tamper"),
    ("test", "test"),
    ("preheat", "preheat"),
    ("silence", "silenced"),
];

/// Z2M number keys: (key, metric, divisor). Z2M has already applied each model's scaling
/// (`gas_value` ÷10 or ÷1000 to %LEL, `co` ÷100), so only unit changes remain here.
const NUMBERS: &[(&str, &str, f64)] = &[
    ("smoke_density", "smoke_density", 1.0),
    ("gas_density", "gas_lel", 1.0),
    ("gas_value", "gas_lel", 1.0),
    ("co", "co_ppm", 1.0),
    ("breathing_rate", "resp_rate", 1.0),
    ("battery", "battery_pct", 1.0),
    // Z2M reports battery voltage in mV.
    ("voltage", "battery_v", 1000.0),
    ("temperature", "temperature", 1.0),
    ("linkquality", "lqi", 1.0),
];

/// Decodes one Zigbee2MQTT state message.
pub fn decode(topic: &str, payload: &[u8], limits: &Limits) -> Result<Vec<Reading>, DecodeError> {
    let name = friendly_name(topic)?;
    let doc = parse_object(payload, limits)?;
    let mut metrics = BTreeMap::new();

    // First, so that an explicit `occupancy`/`presence` from the same message overrides it.
    if let Some(status) = text(&doc, "status")? {
        owon_status(status, &mut metrics)?;
    }
    for (key, metric) in FLAGS {
        if let Some(b) = flag(&doc, key)? {
            metrics.insert((*metric).to_owned(), Value::Bool(b));
        }
    }
    for (key, metric, divisor) in NUMBERS {
        if let Some(n) = number(&doc, key)? {
            metrics.insert((*metric).to_owned(), Value::Num(n / divisor));
        }
    }
    // Polarity: Z2M `contact: true` means the magnet is near, i.e. the door is closed.
    if let Some(closed) = flag(&doc, "contact")? {
        metrics.insert("contact_open".to_owned(), Value::Bool(!closed));
    }
    if let Some(status) = text(&doc, "fall_down_status")? {
        let state = match status {
            "none" => "none",
            "maybe_fall" => "suspected",
            "fall" => "fall",
            other => return Err(bad_enum("fall_state", other)),
        };
        metrics.insert("fall_state".to_owned(), Value::Text(state.to_owned()));
    }
    // `action` is shared by every kind of remote and switch: only the button presses we know are
    // kept, whatever else it carries (`""`, `arm_away`, a number) is ignored. Which presses call
    // for help depends on the model: normalization decides (`buttons`).
    if let Some(Json::String(action)) = doc.get("action") {
        let button = match action.as_str() {
            "single" => Some("single"),
            "double" => Some("double"),
            "hold" | "long" => Some("long"),
            "emergency" | "sos" => Some("emergency"),
            _ => None,
        };
        if let Some(button) = button {
            metrics.insert("button".to_owned(), Value::Text(button.to_owned()));
        }
    }
    fault(&doc, &mut metrics)?;

    let ts_ms = match doc.get("last_seen") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(
            parse_rfc3339_ms(s)
                .ok_or_else(|| DecodeError::BadTimestamp(format!("`last_seen` {s:?} is not an RFC 3339 time")))?,
        ),
        Some(v) => Some(ms_from_json(v)?),
    };

    if metrics.is_empty() {
        return Err(DecodeError::NoMetrics);
    }
    for (name, value) in &metrics {
        vocabulary::check(name, value)?;
    }
    Ok(vec![Reading {
        device: DeviceKey::Zigbee(name.to_owned()),
        ts_ms,
        seq: None,
        metrics,
    }])
}

/// The friendly name of a device state topic. Z2M names may contain `/` (`kitchen/smoke`), so it
/// is the rest of the topic; bridge, availability and command topics are not device state.
fn friendly_name(topic: &str) -> Result<&str, DecodeError> {
    let bad = || DecodeError::BadTopic(topic.to_owned());
    let name = topic.strip_prefix(BASE_TOPIC).ok_or_else(bad)?;
    let mut levels = name.split('/');
    let not_state = name == "bridge"
        || name.starts_with("bridge/")
        || name.ends_with("/availability")
        // `/set` and `/get` may carry an attribute after them (`lamp/set/state`).
        || levels.any(|l| l.is_empty() || l == "set" || l == "get" || l.contains(['+', '#']));
    if not_state {
        return Err(bad());
    }
    Ok(name)
}

/// The OWON FDS315 `status`: one value that says presence, posture and fall together.
fn owon_status(status: &str, metrics: &mut BTreeMap<String, Value>) -> Result<(), DecodeError> {
    let (presence, posture, fall) = match status {
        "unoccupied" => (false, None, None),
        "occupied" => (true, None, None),
        "sitting" => (true, Some("sitting"), None),
        "on_the_bed" => (true, Some("on_bed"), None),
        "low_posture" => (true, Some("low_posture"), None),
        "falling" => (true, None, Some("fall")),
        other => return Err(bad_enum("presence", other)),
    };
    metrics.insert("presence".to_owned(), Value::Bool(presence));
    if let Some(posture) = posture {
        metrics.insert("posture".to_owned(), Value::Text(posture.to_owned()));
    }
    if let Some(fall) = fall {
        metrics.insert("fall_state".to_owned(), Value::Text(fall.to_owned()));
    }
    Ok(())
}

/// `trouble` (IAS zone bit 6) and `fault` (Tuya: a boolean, or an enum whose non-`none` values name
/// the fault) both mean `fault`. They are OR-ed rather than overridden: a fault reported by either
/// must not be hidden by the other saying false.
fn fault(doc: &Map<String, Json>, metrics: &mut BTreeMap<String, Value>) -> Result<(), DecodeError> {
    let trouble = flag(doc, "trouble")?;
    let fault = match doc.get("fault") {
        None | Some(Json::Null) => None,
        Some(Json::Bool(b)) => Some(*b),
        Some(Json::String(s)) if s == "none" => Some(false),
        Some(Json::String(code)) => {
            metrics.insert("fault_code".to_owned(), Value::Text(code.clone()));
            Some(true)
        }
        Some(v) => return Err(wrong_type("fault", "a boolean or a string", v)),
    };
    match (trouble, fault) {
        (None, None) => {}
        (a, b) => {
            metrics.insert(
                "fault".to_owned(),
                Value::Bool(a.unwrap_or(false) || b.unwrap_or(false)),
            );
        }
    }
    Ok(())
}

// Z2M publishes `null` for attributes a device has not reported since pairing or restart: that is
// "no value", the same as an absent key, not a broken one.

fn flag(doc: &Map<String, Json>, key: &str) -> Result<Option<bool>, DecodeError> {
    match doc.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(wrong_type(key, "a boolean", v)),
    }
}

fn number(doc: &Map<String, Json>, key: &str) -> Result<Option<f64>, DecodeError> {
    match doc.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) => Ok(Some(number_to_f64(n))),
        Some(v) => Err(wrong_type(key, "a number", v)),
    }
}

fn text<'d>(doc: &'d Map<String, Json>, key: &str) -> Result<Option<&'d str>, DecodeError> {
    match doc.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(v) => Err(wrong_type(key, "a string", v)),
    }
}

fn wrong_type(key: &str, expected: &str, got: &Json) -> DecodeError {
    DecodeError::Schema(format!(
        "Zigbee2MQTT `{key}` must be {expected}, got {}",
        json_kind(got)
    ))
}

fn bad_enum(metric: &str, value: &str) -> DecodeError {
    DecodeError::Vocabulary(VocabularyError::BadEnum {
        metric: metric.to_owned(),
        value: value.to_owned(),
    })
}

/// Parses an RFC 3339 date-time (`2026-05-01T12:00:00.123Z`, `2026-05-01T20:00:00+08:00`) into ms
/// since the epoch. Fractions finer than a millisecond are truncated; times before 1970 and
/// anything malformed give `None`. Hand-written because it is all we need of a date library.
pub(crate) fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let mut c = Cursor {
        bytes: s.as_bytes(),
        pos: 0,
    };
    let year = c.digits(4)?;
    c.eat(b'-')?;
    let month = c.digits(2)?;
    c.eat(b'-')?;
    let day = c.digits(2)?;
    if !matches!(c.next()?, b'T' | b't' | b' ') {
        return None;
    }
    let hour = c.digits(2)?;
    c.eat(b':')?;
    let minute = c.digits(2)?;
    c.eat(b':')?;
    let second = c.digits(2)?;
    let mut millis = 0;
    if c.peek() == Some(b'.') {
        c.pos += 1;
        let mut n = 0;
        while let Some(d) = c.peek().filter(u8::is_ascii_digit) {
            if n < 3 {
                millis = millis * 10 + i64::from(d - b'0');
            }
            n += 1;
            c.pos += 1;
        }
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_s = match c.next()? {
        b'Z' | b'z' => 0,
        sign @ (b'+' | b'-') => {
            let h = c.digits(2)?;
            c.eat(b':')?;
            let m = c.digits(2)?;
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    if c.pos != c.bytes.len() {
        return None;
    }
    // Second 60 is RFC 3339's leap second; it lands on the next minute's :00, which is as close as
    // a ms timeline gets.
    let valid = (1..=12).contains(&month)
        && day >= 1
        && day <= days_in_month(year, month)
        && hour <= 23
        && minute <= 59
        && second <= 60;
    if !valid {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    let ms = secs * 1000 + millis;
    (ms >= 0).then_some(ms)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// Exactly `n` ASCII digits as a number (n <= 4, so it cannot overflow).
    fn digits(&mut self, n: usize) -> Option<i64> {
        let mut v = 0;
        for _ in 0..n {
            let d = self.next().filter(u8::is_ascii_digit)?;
            v = v * 10 + i64::from(d - b'0');
        }
        Some(v)
    }
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Decoder;

    fn run(topic: &str, payload: &str) -> Result<Vec<Reading>, DecodeError> {
        decode(topic, payload.as_bytes(), &Limits::default())
    }

    fn reading(name: &str, ts_ms: Option<i64>, metrics: &[(&str, Value)]) -> Reading {
        Reading {
            device: DeviceKey::Zigbee(name.to_owned()),
            ts_ms,
            seq: None,
            metrics: metrics.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
        }
    }

    fn reason(r: Result<Vec<Reading>, DecodeError>) -> &'static str {
        match r {
            Ok(readings) => panic!("expected a rejection, got {readings:?}"),
            Err(e) => e.reason(),
        }
    }

    fn t(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    /// IAS smoke alarm (herdsman converter `ias_smoke_alarm_1`).
    const IAS_SMOKE: &str = r#"{"smoke":false,"tamper":false,"battery_low":false,"supervision_reports":true,"trouble":false,"test":false,"battery":100,"linkquality":87}"#;

    #[test]
    fn ias_smoke_alarm_idle_maps_flags_battery_and_lqi() {
        assert_eq!(
            run("zigbee2mqtt/A-305 smoke", IAS_SMOKE),
            Ok(vec![reading(
                "A-305 smoke",
                None,
                &[
                    ("battery_low", Value::Bool(false)),
                    ("battery_pct", Value::Num(100.0)),
                    ("fault", Value::Bool(false)),
                    ("lqi", Value::Num(87.0)),
                    ("smoke", Value::Bool(false)),
                    ("tamper", Value::Bool(false)),
                    ("test", Value::Bool(false)),
                ],
            )])
        );
    }

    #[test]
    fn tuya_smoke_alarm_maps_to_smoke_true_with_fault_and_silence() {
        let payload = r#"{"smoke":true,"smoke_concentration":12,"fault":true,"battery_state":"high","battery":95,"silence":false,"self_test":false,"linkquality":120}"#;
        assert_eq!(
            run("zigbee2mqtt/kitchen/smoke", payload),
            Ok(vec![reading(
                "kitchen/smoke",
                None,
                &[
                    ("battery_pct", Value::Num(95.0)),
                    ("fault", Value::Bool(true)),
                    ("lqi", Value::Num(120.0)),
                    ("silenced", Value::Bool(false)),
                    ("smoke", Value::Bool(true)),
                ],
            )])
        );
    }

    #[test]
    fn aqara_smoke_density_and_voltage_in_volts() {
        let payload = r#"{"smoke":false,"smoke_density":0.5,"smoke_density_dbm":0.05,"test":false,"battery":98,"voltage":2995,"heartbeat_indicator":false}"#;
        assert_eq!(
            run("zigbee2mqtt/0x00158d0001a2b3c4", payload),
            Ok(vec![reading(
                "0x00158d0001a2b3c4",
                None,
                &[
                    ("battery_pct", Value::Num(98.0)),
                    ("battery_v", Value::Num(2.995)),
                    ("smoke", Value::Bool(false)),
                    ("smoke_density", Value::Num(0.5)),
                    ("test", Value::Bool(false)),
                ],
            )])
        );
    }

    /// Tuya MIR-HE200-TY radar; `presence` wins over `occupancy`.
    #[test]
    fn tuya_radar_maybe_fall_maps_to_suspected() {
        let payload = r#"{"presence":true,"occupancy":false,"fall_down_status":"maybe_fall","static_dwell_alarm":"none","illuminance":120,"linkquality":96}"#;
        assert_eq!(
            run("zigbee2mqtt/A-305 bath radar", payload),
            Ok(vec![reading(
                "A-305 bath radar",
                None,
                &[
                    ("fall_state", t("suspected")),
                    ("lqi", Value::Num(96.0)),
                    ("presence", Value::Bool(true))
                ],
            )])
        );
    }

    #[test]
    fn tuya_radar_fall_and_none_map_to_canonical_fall_states() {
        let fall = run("zigbee2mqtt/r", r#"{"fall_down_status":"fall"}"#);
        assert_eq!(fall, Ok(vec![reading("r", None, &[("fall_state", t("fall"))])]));
        let none = run("zigbee2mqtt/r", r#"{"fall_down_status":"none","occupancy":true}"#);
        assert_eq!(
            none,
            Ok(vec![reading(
                "r",
                None,
                &[("fall_state", t("none")), ("presence", Value::Bool(true))]
            )])
        );
    }

    #[test]
    fn owon_status_maps_to_presence_posture_and_fall() {
        let cases: &[(&str, &[(&str, Value)])] = &[
            ("unoccupied", &[("presence", Value::Bool(false))]),
            ("occupied", &[("presence", Value::Bool(true))]),
            ("sitting", &[("posture", t("sitting")), ("presence", Value::Bool(true))]),
            (
                "on_the_bed",
                &[("posture", t("on_bed")), ("presence", Value::Bool(true))],
            ),
            (
                "low_posture",
                &[("posture", t("low_posture")), ("presence", Value::Bool(true))],
            ),
            ("falling", &[("fall_state", t("fall")), ("presence", Value::Bool(true))]),
        ];
        for (status, metrics) in cases {
            let payload = format!(r#"{{"status":"{status}","location_x":120,"location_y":-40}}"#);
            assert_eq!(
                run("zigbee2mqtt/fds315", &payload),
                Ok(vec![reading("fds315", None, metrics)]),
                "{status}"
            );
        }
        let breathing = run("zigbee2mqtt/fds315", r#"{"status":"on_the_bed","breathing_rate":14}"#);
        assert_eq!(
            breathing,
            Ok(vec![reading(
                "fds315",
                None,
                &[
                    ("posture", t("on_bed")),
                    ("presence", Value::Bool(true)),
                    ("resp_rate", Value::Num(14.0))
                ],
            )])
        );
    }

    #[test]
    fn owon_unknown_status_is_bad_enum() {
        assert_eq!(
            reason(run("zigbee2mqtt/fds315", r#"{"status":"standing"}"#)),
            "bad_enum"
        );
    }

    /// Feibit SEB01ZB SOS button (an IAS zone).
    #[test]
    fn feibit_sos_button_maps_to_sos_true() {
        let payload = r#"{"sos":true,"battery_low":false,"tamper":false,"battery":87,"linkquality":60}"#;
        assert_eq!(
            run("zigbee2mqtt/pendant r-8f3a", payload),
            Ok(vec![reading(
                "pendant r-8f3a",
                None,
                &[
                    ("battery_low", Value::Bool(false)),
                    ("battery_pct", Value::Num(87.0)),
                    ("lqi", Value::Num(60.0)),
                    ("sos", Value::Bool(true)),
                    ("tamper", Value::Bool(false)),
                ],
            )])
        );
    }

    #[test]
    fn heiman_button_hold_maps_to_long_and_other_actions_are_ignored() {
        let hold = run("zigbee2mqtt/hs1eb", r#"{"action":"hold","battery":100}"#);
        assert_eq!(
            hold,
            Ok(vec![reading(
                "hs1eb",
                None,
                &[("battery_pct", Value::Num(100.0)), ("button", t("long"))]
            )])
        );
        let double = run("zigbee2mqtt/hs1eb", r#"{"action":"double"}"#);
        assert_eq!(double, Ok(vec![reading("hs1eb", None, &[("button", t("double"))])]));
        assert_eq!(
            run("zigbee2mqtt/hs1eb", r#"{"action":"arm_away"}"#),
            Err(DecodeError::NoMetrics)
        );
        assert_eq!(
            run("zigbee2mqtt/hs1eb", r#"{"action":""}"#),
            Err(DecodeError::NoMetrics)
        );
    }

    /// Z2M `contact: true` means closed (the magnet is near the reed switch).
    #[test]
    fn contact_true_means_door_closed() {
        let payload = r#"{"contact":true,"battery":91,"voltage":3000,"tamper":false,"linkquality":102}"#;
        assert_eq!(
            run("zigbee2mqtt/A-305 door", payload),
            Ok(vec![reading(
                "A-305 door",
                None,
                &[
                    ("battery_pct", Value::Num(91.0)),
                    ("battery_v", Value::Num(3.0)),
                    ("contact_open", Value::Bool(false)),
                    ("lqi", Value::Num(102.0)),
                    ("tamper", Value::Bool(false)),
                ],
            )])
        );
        let open = run("zigbee2mqtt/A-305 door", r#"{"contact":false}"#);
        assert_eq!(
            open,
            Ok(vec![reading(
                "A-305 door",
                None,
                &[("contact_open", Value::Bool(true))]
            )])
        );
    }

    /// Tuya TS0601 gas sensor while warming up.
    #[test]
    fn tuya_gas_sensor_in_preheat_maps_gas_lel_and_preheat() {
        let payload = r#"{"gas":false,"gas_value":2.5,"preheat":true,"fault_alarm":false,"silence":false,"self_test_result":"checking","linkquality":76}"#;
        assert_eq!(
            run("zigbee2mqtt/kitchen gas", payload),
            Ok(vec![reading(
                "kitchen gas",
                None,
                &[
                    ("gas_alarm", Value::Bool(false)),
                    ("gas_lel", Value::Num(2.5)),
                    ("lqi", Value::Num(76.0)),
                    ("preheat", Value::Bool(true)),
                    ("silenced", Value::Bool(false)),
                ],
            )])
        );
    }

    #[test]
    fn aqara_gas_density_maps_to_gas_lel() {
        let payload = r#"{"gas":true,"gas_density":11,"gas_sensitivity":"10%LEL","state":"work"}"#;
        assert_eq!(
            run("zigbee2mqtt/boiler gas", payload),
            Ok(vec![reading(
                "boiler gas",
                None,
                &[("gas_alarm", Value::Bool(true)), ("gas_lel", Value::Num(11.0))],
            )])
        );
    }

    /// Tuya JKD-816COM-Z (CO + gas) with a named fault.
    #[test]
    fn co_and_gas_sensor_fault_string_sets_fault_and_fault_code() {
        let payload = r#"{"carbon_monoxide":true,"co":180,"gas_value":0,"fault":"sensor_fault","linkquality":55}"#;
        assert_eq!(
            run("zigbee2mqtt/boiler co", payload),
            Ok(vec![reading(
                "boiler co",
                None,
                &[
                    ("co_alarm", Value::Bool(true)),
                    ("co_ppm", Value::Num(180.0)),
                    ("fault", Value::Bool(true)),
                    ("fault_code", t("sensor_fault")),
                    ("gas_lel", Value::Num(0.0)),
                    ("lqi", Value::Num(55.0)),
                ],
            )])
        );
        let no_fault = run("zigbee2mqtt/boiler co", r#"{"fault":"none"}"#);
        assert_eq!(
            no_fault,
            Ok(vec![reading("boiler co", None, &[("fault", Value::Bool(false))])])
        );
    }

    #[test]
    fn trouble_is_not_hidden_by_fault_false() {
        let r = run("zigbee2mqtt/s", r#"{"trouble":true,"fault":false}"#);
        assert_eq!(r, Ok(vec![reading("s", None, &[("fault", Value::Bool(true))])]));
    }

    #[test]
    fn last_seen_iso_and_epoch_become_device_time() {
        let iso = run(
            "zigbee2mqtt/s",
            r#"{"smoke":false,"last_seen":"2026-05-01T12:00:00.123Z"}"#,
        );
        assert_eq!(iso.map(|v| v[0].ts_ms), Ok(Some(1_777_636_800_123)));
        let local = run(
            "zigbee2mqtt/s",
            r#"{"smoke":false,"last_seen":"2026-05-01T20:00:00+08:00"}"#,
        );
        assert_eq!(local.map(|v| v[0].ts_ms), Ok(Some(1_777_636_800_000)));
        let epoch = run("zigbee2mqtt/s", r#"{"smoke":false,"last_seen":1777636800123}"#);
        assert_eq!(epoch.map(|v| v[0].ts_ms), Ok(Some(1_777_636_800_123)));
    }

    #[test]
    fn malformed_last_seen_is_bad_timestamp() {
        for last_seen in [
            r#""yesterday""#,
            r#""2026-02-30T00:00:00Z""#,
            "-5",
            "true",
            r#""2026-05-01T12:00:00""#,
        ] {
            let payload = format!(r#"{{"smoke":false,"last_seen":{last_seen}}}"#);
            assert_eq!(reason(run("zigbee2mqtt/s", &payload)), "bad_timestamp", "{last_seen}");
        }
    }

    #[test]
    fn null_attributes_count_as_absent() {
        let r = run("zigbee2mqtt/s", r#"{"smoke":null,"battery":null,"tamper":true}"#);
        assert_eq!(r, Ok(vec![reading("s", None, &[("tamper", Value::Bool(true))])]));
    }

    #[test]
    fn smoke_as_string_rejects_the_message() {
        let r = run("zigbee2mqtt/s", r#"{"smoke":"yes","battery":100}"#);
        assert_eq!(
            r,
            Err(DecodeError::Schema(
                "Zigbee2MQTT `smoke` must be a boolean, got a string".into()
            ))
        );
        assert_eq!(reason(run("zigbee2mqtt/s", r#"{"gas_value":"3"}"#)), "wrong_type");
        assert_eq!(reason(run("zigbee2mqtt/s", r#"{"fault":3}"#)), "wrong_type");
        assert_eq!(reason(run("zigbee2mqtt/s", r#"{"fall_down_status":2}"#)), "wrong_type");
    }

    #[test]
    fn unknown_fall_status_is_bad_enum() {
        assert_eq!(
            reason(run("zigbee2mqtt/r", r#"{"fall_down_status":"tumble"}"#)),
            "bad_enum"
        );
    }

    #[test]
    fn values_outside_the_physical_range_are_rejected() {
        assert_eq!(reason(run("zigbee2mqtt/s", r#"{"battery":250}"#)), "out_of_range");
        assert_eq!(reason(run("zigbee2mqtt/s", r#"{"gas_value":1e300}"#)), "out_of_range");
        assert_eq!(reason(run("zigbee2mqtt/s", r#"{"gas_value":1e400}"#)), "invalid_json");
    }

    #[test]
    fn message_without_mapped_keys_is_no_metrics() {
        let r = run(
            "zigbee2mqtt/lux",
            r#"{"illuminance":120,"update":{"state":"idle"},"last_seen":1}"#,
        );
        assert_eq!(r, Err(DecodeError::NoMetrics));
    }

    #[test]
    fn non_state_topics_are_bad_topic() {
        for topic in [
            "zigbee2mqtt/A-305 door/availability",
            "zigbee2mqtt/A-305 door/set",
            "zigbee2mqtt/A-305 door/set/state",
            "zigbee2mqtt/A-305 door/get",
            "zigbee2mqtt/bridge/state",
            "zigbee2mqtt/bridge/devices",
            "zigbee2mqtt/bridge",
            "zigbee2mqtt/",
            "zigbee2mqtt//x",
            "zigbee2mqtt/x/",
            "tele/x/SENSOR",
            "nh/site/dev/telemetry",
        ] {
            assert_eq!(reason(run(topic, r#"{"smoke":true}"#)), "bad_topic", "{topic}");
        }
    }

    #[test]
    fn payload_rejections_share_the_canonical_checks() {
        let small = Limits {
            max_payload_bytes: 8,
            ..Limits::default()
        };
        assert_eq!(
            reason(Decoder::Zigbee2Mqtt.decode("zigbee2mqtt/s", IAS_SMOKE.as_bytes(), &small)),
            "oversized"
        );
        assert_eq!(
            decode("zigbee2mqtt/s", b"{\"smoke\":\xc3}", &Limits::default()),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(reason(run("zigbee2mqtt/s", "online")), "invalid_json");
        assert_eq!(reason(run("zigbee2mqtt/s", "true")), "wrong_type");
        let shallow = Limits {
            max_json_depth: 2,
            ..Limits::default()
        };
        let deep = decode("zigbee2mqtt/s", br#"{"update":{"a":{"b":1}},"smoke":true}"#, &shallow);
        assert_eq!(deep, Err(DecodeError::TooDeep(2)));
    }

    #[test]
    fn rfc3339_parser_handles_offsets_fractions_and_calendar() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("2026-05-01T12:00:00.123Z"), Some(1_777_636_800_123));
        assert_eq!(parse_rfc3339_ms("2026-05-01t12:00:00.1z"), Some(1_777_636_800_100));
        assert_eq!(
            parse_rfc3339_ms("2026-05-01 12:00:00.123456789Z"),
            Some(1_777_636_800_123)
        );
        assert_eq!(parse_rfc3339_ms("2026-05-01T07:30:00-04:30"), Some(1_777_636_800_000));
        assert_eq!(parse_rfc3339_ms("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        assert_eq!(parse_rfc3339_ms("2000-03-01T00:00:00Z"), Some(951_868_800_000));
        assert_eq!(parse_rfc3339_ms("2016-12-31T23:59:60Z"), Some(1_483_228_800_000));
        for bad in [
            "",
            "2026-05-01",
            "2026-05-01T12:00:00",
            "2026-05-01T12:00:00.Z",
            "2026-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2026-05-01T24:00:00Z",
            "2026-05-01T12:60:00Z",
            "2026-05-01T12:00:00+0800",
            "2026-05-01T12:00:00+24:00",
            "2026-05-01T12:00:00Zjunk",
            "1969-12-31T23:59:59Z",
            "2026-05-01T12:00:00.12é",
            "+2026-05-01T12:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad:?}");
        }
    }
}
