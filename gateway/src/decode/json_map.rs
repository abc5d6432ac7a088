//! The generic JSON mapping: a [`Profile`], written by the integrator per device model, says where
//! a vendor's JSON keeps the device id, the time, the sequence number and each metric (RFC 6901
//! JSON pointers), and how a source value becomes a canonical one (scale and offset, boolean
//! polarity, enum tables). It owns the profile's configuration shape, its validation, and decoding
//! with it; it knows no vendor itself.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value as Json;

use crate::decode::canonical::{is_valid_id, json_kind, ms_from_json, number_to_f64, parse_object, seq_from_json};
use crate::decode::zigbee2mqtt::parse_rfc3339_ms;
use crate::decode::{DecodeError, Limits};
use crate::reading::{DeviceKey, Reading, Value};
use crate::vocabulary::{self, Kind, VocabularyError};

/// How one vendor's JSON maps to canonical readings. One profile per device model (and firmware,
/// when a firmware changes the layout).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Name of the profile, used in logs and by subscriptions that choose it (e.g. `"acme-gas-v2"`).
    pub name: String,
    /// JSON pointer (RFC 6901, e.g. `"/devEUI"`) to the device id in the payload: a string or a
    /// non-negative integer. Set exactly one of `device_pointer` and `device_topic_level`.
    #[serde(default)]
    pub device_pointer: Option<String>,
    /// Level of the MQTT topic (0-based, split on `/`) that holds the device id, e.g. `2` for
    /// `acme/up/{id}`. Set exactly one of `device_pointer` and `device_topic_level`.
    #[serde(default)]
    pub device_topic_level: Option<usize>,
    /// Text put before the id found, to keep vendors' id spaces apart (e.g. `"lorawan:"`,
    /// `"imei:"`). Default: none. The result must match `[A-Za-z0-9._:-]+`.
    #[serde(default)]
    pub device_prefix: String,
    /// JSON pointer to the device's timestamp. Default: none, the message carries no device time.
    #[serde(default)]
    pub ts_pointer: Option<String>,
    /// How the value at `ts_pointer` is written: `"ms"` (integer ms since the epoch, the default),
    /// `"s"` (seconds since the epoch, fraction allowed) or `"rfc3339"` (a string such as
    /// `"2026-05-01T12:00:00.123Z"`).
    #[serde(default)]
    pub ts_format: Option<TsFormat>,
    /// JSON pointer to a per-device sequence number (non-negative integer), e.g. LoRaWAN `"/fCnt"`.
    /// Default: none.
    #[serde(default)]
    pub seq_pointer: Option<String>,
    /// The metrics to read, each from one place in the payload. Several fields may read the same
    /// pointer (a vendor status code that means smoke, tamper or test).
    pub fields: Vec<FieldMapping>,
}

/// How a timestamp is written in the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TsFormat {
    /// Integer milliseconds since the epoch (CTWing `timestamp`).
    Ms,
    /// Seconds since the epoch, fraction allowed (NB-IoT `eventdate`).
    S,
    /// An RFC 3339 date-time string with `Z` or a `±HH:MM` offset.
    Rfc3339,
}

/// One metric read from one place in the payload.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    /// JSON pointer to the source value, e.g. `"/payload/serviceData/Battery_Level"`. When the
    /// payload does not have it (or has `null` there) the field is skipped: vendors send partial
    /// updates. When it is there with a type the metric cannot take, the whole message is rejected.
    pub pointer: String,
    /// Canonical metric name (the vocabulary of docs/contracts.md), e.g. `"gas_lel"`.
    pub metric: String,
    /// Number metrics only: the value stored is `source * scale + offset`. Default 1.
    #[serde(default)]
    pub scale: Option<f64>,
    /// Number metrics only: added after `scale`. Default 0.
    #[serde(default)]
    pub offset: Option<f64>,
    /// The unit the scaled value is in. Optional; when given it must be the metric's canonical unit
    /// (e.g. `"%LEL"` for `gas_lel`), which makes the profile document and check itself.
    #[serde(default)]
    pub unit: Option<String>,
    /// Boolean metrics only: source values (numbers, strings or booleans, compared with their
    /// type) that mean true, e.g. `[0]` for a Tuya alarm where 0 is the alarm. Without
    /// `false_values`, every other value means false. Default: JSON `true` or `1`.
    #[serde(default)]
    pub true_values: Option<Vec<Value>>,
    /// Boolean metrics only: source values that mean false. When given, a value in neither list
    /// rejects the message as `bad_enum`. Default: JSON `false` or `0` when `true_values` is not
    /// given either, otherwise every value not in `true_values`.
    #[serde(default)]
    pub false_values: Option<Vec<Value>>,
    /// Enum and text metrics: source value written as text (`"1"`, `"alarm"`, `"true"`) -> canonical
    /// value, e.g. `{ "0" = "none", "1" = "suspected", "2" = "fall" }`. For an enum metric a source
    /// value missing from the table rejects the message as `bad_enum`; for a text metric it is kept
    /// as its text. Default: the source string is taken as the canonical value.
    #[serde(default)]
    pub enum_map: Option<BTreeMap<String, String>>,
}

impl Profile {
    /// Every configuration problem of this profile, each as `key: problem` (keys relative to the
    /// profile, e.g. `fields[2].unit`). Empty when the profile is usable.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.name.trim().is_empty() {
            problems.push("name: must not be empty".to_owned());
        }
        match (&self.device_pointer, self.device_topic_level) {
            (Some(_), Some(_)) => problems.push("device_pointer, device_topic_level: set only one of them".to_owned()),
            (None, None) => problems.push("device_pointer, device_topic_level: set one of them".to_owned()),
            _ => {}
        }
        check_pointer(&mut problems, "device_pointer", self.device_pointer.as_deref());
        check_pointer(&mut problems, "ts_pointer", self.ts_pointer.as_deref());
        check_pointer(&mut problems, "seq_pointer", self.seq_pointer.as_deref());
        if !self.device_prefix.is_empty() && !is_valid_id(&self.device_prefix) {
            problems.push(format!(
                "device_prefix: `{}` must match [A-Za-z0-9._:-]+",
                self.device_prefix
            ));
        }
        if self.ts_format.is_some() && self.ts_pointer.is_none() {
            problems.push("ts_format: given without ts_pointer".to_owned());
        }
        if self.fields.is_empty() {
            problems.push("fields: at least one field is needed".to_owned());
        }
        let mut seen = BTreeMap::new();
        for (i, field) in self.fields.iter().enumerate() {
            let at = format!("fields[{i}]");
            if let Some(first) = seen.insert(field.metric.as_str(), i) {
                problems.push(format!(
                    "{at}.metric: `{}` is already read by fields[{first}]; one source per metric",
                    field.metric
                ));
            }
            field.validate(&at, &mut problems);
        }
        problems
    }
}

impl FieldMapping {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        check_pointer(problems, &format!("{at}.pointer"), Some(&self.pointer));
        let Some(spec) = vocabulary::metric(&self.metric) else {
            problems.push(format!(
                "{at}.metric: unknown metric `{}` (see the metric vocabulary in docs/contracts.md)",
                self.metric
            ));
            return;
        };
        let is_number = matches!(spec.kind, Kind::Number { .. });
        let is_bool = matches!(spec.kind, Kind::Bool);
        for (key, value) in [("scale", self.scale), ("offset", self.offset)] {
            match value {
                Some(_) if !is_number => problems.push(format!("{at}.{key}: `{}` is not a number metric", self.metric)),
                Some(v) if !v.is_finite() => problems.push(format!("{at}.{key}: must be a finite number")),
                _ => {}
            }
        }
        if self.scale == Some(0.0) {
            problems.push(format!("{at}.scale: 0 would make every value the offset"));
        }
        match (&self.unit, spec.kind) {
            (Some(unit), Kind::Number { unit: canonical, .. }) if unit != canonical => problems.push(format!(
                "{at}.unit: `{}` is in `{canonical}`, not `{unit}`; convert with scale/offset",
                self.metric
            )),
            (Some(_), Kind::Number { .. }) | (None, _) => {}
            (Some(_), _) => problems.push(format!("{at}.unit: `{}` has no unit", self.metric)),
        }
        for (key, list) in [("true_values", &self.true_values), ("false_values", &self.false_values)] {
            match list {
                Some(_) if !is_bool => problems.push(format!("{at}.{key}: `{}` is not a boolean metric", self.metric)),
                Some(l) if l.is_empty() => problems.push(format!("{at}.{key}: must not be empty")),
                _ => {}
            }
        }
        if let (Some(t), Some(f)) = (&self.true_values, &self.false_values) {
            if let Some(both) = t.iter().find(|v| f.contains(v)) {
                problems.push(format!("{at}.false_values: {} is also in true_values", show(both)));
            }
        }
        if let Some(map) = &self.enum_map {
            if map.is_empty() {
                problems.push(format!("{at}.enum_map: must not be empty"));
            }
            match spec.kind {
                Kind::Enum(allowed) => {
                    for (from, to) in map {
                        if !allowed.contains(&to.as_str()) {
                            problems.push(format!(
                                "{at}.enum_map.{from}: `{to}` is not a value of `{}` ({})",
                                self.metric,
                                allowed.join(", ")
                            ));
                        }
                    }
                }
                Kind::Text => {
                    for (from, to) in map {
                        if to.len() > vocabulary::MAX_TEXT_LEN {
                            problems.push(format!(
                                "{at}.enum_map.{from}: longer than {} bytes",
                                vocabulary::MAX_TEXT_LEN
                            ));
                        }
                    }
                }
                Kind::Number { .. } | Kind::Bool => problems.push(format!(
                    "{at}.enum_map: `{}` is not an enum or text metric{}",
                    self.metric,
                    if is_bool { "; use true_values" } else { "" }
                )),
            }
        }
    }
}

/// A configured value as the operator wrote it in TOML.
fn show(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Num(n) => n.to_string(),
        Value::Text(s) => format!("{s:?}"),
    }
}

/// Adds a problem when `pointer` is not RFC 6901 syntax naming a value inside the payload.
fn check_pointer(problems: &mut Vec<String>, key: &str, pointer: Option<&str>) {
    let Some(p) = pointer else { return };
    if !p.starts_with('/') {
        problems.push(format!("{key}: JSON pointer `{p}` must start with `/`"));
        return;
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            problems.push(format!("{key}: JSON pointer `{p}` has `~` not followed by 0 or 1"));
            return;
        }
    }
}

/// Decodes one message with `profile`. A profile that failed [`Profile::validate`] still never
/// panics here; its mistakes come out as rejections.
pub fn decode(profile: &Profile, topic: &str, payload: &[u8], limits: &Limits) -> Result<Vec<Reading>, DecodeError> {
    let doc = Json::Object(parse_object(payload, limits)?);
    let device = device_id(profile, topic, &doc)?;
    let ts_ms = match profile.ts_pointer.as_deref().and_then(|p| present(&doc, p)) {
        None => None,
        Some(v) => Some(timestamp(v, profile.ts_format.unwrap_or(TsFormat::Ms))?),
    };
    let seq = match profile.seq_pointer.as_deref() {
        Some(p) => present(&doc, p).map(|v| seq_from_json(p, v)).transpose()?,
        None => None,
    };

    let mut metrics = BTreeMap::new();
    for field in &profile.fields {
        let Some(source) = present(&doc, &field.pointer) else {
            continue;
        };
        let value = field_value(field, source)?;
        vocabulary::check(&field.metric, &value)?;
        metrics.insert(field.metric.clone(), value);
    }
    if metrics.is_empty() {
        return Err(DecodeError::NoMetrics);
    }
    Ok(vec![Reading {
        device: DeviceKey::Id(device),
        ts_ms,
        seq,
        metrics,
    }])
}

/// The value at `pointer`, unless absent or `null` (vendors write `null` for "not measured").
fn present<'d>(doc: &'d Json, pointer: &str) -> Option<&'d Json> {
    doc.pointer(pointer).filter(|v| !v.is_null())
}

fn device_id(profile: &Profile, topic: &str, doc: &Json) -> Result<String, DecodeError> {
    let raw = if let Some(p) = &profile.device_pointer {
        match present(doc, p) {
            Some(Json::String(s)) => s.clone(),
            Some(Json::Number(n)) if n.is_u64() => n.to_string(),
            Some(other) => {
                return Err(DecodeError::Schema(format!(
                    "device id at `{p}` must be a string or a non-negative integer, got {}",
                    json_kind(other)
                )))
            }
            None => return Err(DecodeError::Schema(format!("device id at `{p}` is missing"))),
        }
    } else if let Some(level) = profile.device_topic_level {
        topic
            .split('/')
            .nth(level)
            .ok_or_else(|| DecodeError::BadTopic(topic.to_owned()))?
            .to_owned()
    } else {
        return Err(DecodeError::Schema(format!(
            "profile `{}` names no device id source",
            profile.name
        )));
    };
    let id = format!("{}{raw}", profile.device_prefix);
    if is_valid_id(&id) {
        Ok(id)
    } else {
        Err(DecodeError::Schema(format!(
            "device id `{id}` does not match [A-Za-z0-9._:-]+"
        )))
    }
}

fn timestamp(v: &Json, format: TsFormat) -> Result<i64, DecodeError> {
    match format {
        TsFormat::Ms => ms_from_json(v),
        TsFormat::S => {
            let bad = || DecodeError::BadTimestamp(format!("expected non-negative seconds since the epoch, got {v}"));
            let secs = v.as_f64().ok_or_else(bad)?;
            let ms = (secs * 1000.0).round();
            // `i64::MAX as f64` rounds up to 2^63, which itself does not fit: hence `<`.
            if ms.is_finite() && ms >= 0.0 && ms < i64::MAX as f64 {
                Ok(ms as i64)
            } else {
                Err(bad())
            }
        }
        TsFormat::Rfc3339 => match v {
            Json::String(s) => {
                parse_rfc3339_ms(s).ok_or_else(|| DecodeError::BadTimestamp(format!("{s:?} is not an RFC 3339 time")))
            }
            other => Err(DecodeError::BadTimestamp(format!(
                "expected an RFC 3339 string, got {}",
                json_kind(other)
            ))),
        },
    }
}

/// The canonical value of one field, before the vocabulary check.
fn field_value(field: &FieldMapping, source: &Json) -> Result<Value, DecodeError> {
    let wrong = |expected: &str| {
        DecodeError::Schema(format!(
            "`{}` for `{}` must be {expected}, got {}",
            field.pointer,
            field.metric,
            json_kind(source)
        ))
    };
    // An unknown metric is the profile's mistake; report it as such rather than as a type error.
    let kind = vocabulary::metric(&field.metric)
        .ok_or_else(|| VocabularyError::UnknownMetric(field.metric.clone()))?
        .kind;
    match kind {
        Kind::Number { .. } => match source {
            // A plain multiply and add (not `mul_add`), so the result is what the operator computes by hand.
            Json::Number(n) => Ok(Value::Num(
                number_to_f64(n) * field.scale.unwrap_or(1.0) + field.offset.unwrap_or(0.0),
            )),
            _ => Err(wrong("a number")),
        },
        Kind::Bool => {
            if matches!(source, Json::Array(_) | Json::Object(_)) {
                return Err(wrong("a number, string or boolean"));
            }
            let in_list = |list: &[Value]| list.iter().any(|v| same_value(v, source));
            let is_true = match &field.true_values {
                Some(list) => in_list(list),
                None => source == &Json::Bool(true) || source.as_f64() == Some(1.0),
            };
            let is_false = match (&field.true_values, &field.false_values) {
                (_, Some(list)) => in_list(list),
                (Some(_), None) => !is_true,
                (None, None) => source == &Json::Bool(false) || source.as_f64() == Some(0.0),
            };
            match (is_true, is_false) {
                (true, _) => Ok(Value::Bool(true)),
                (false, true) => Ok(Value::Bool(false)),
                (false, false) => Err(bad_enum(field, source)),
            }
        }
        Kind::Enum(_) | Kind::Text => {
            let Some(text) = source_text(source) else {
                return Err(wrong("a string, number or boolean"));
            };
            match &field.enum_map {
                Some(map) => match map.get(&text) {
                    Some(to) => Ok(Value::Text(to.clone())),
                    None if kind == Kind::Text => Ok(Value::Text(text)),
                    None => Err(bad_enum(field, source)),
                },
                // Without a table only a string can already be the canonical value.
                None if source.is_string() || kind == Kind::Text => Ok(Value::Text(text)),
                None => Err(wrong("a string (or give enum_map)")),
            }
        }
    }
}

/// Whether a configured value and a payload value are the same, type included (`1` is not `"1"`).
fn same_value(configured: &Value, source: &Json) -> bool {
    match (configured, source) {
        (Value::Bool(a), Json::Bool(b)) => a == b,
        (Value::Num(a), Json::Number(b)) => b.as_f64() == Some(*a),
        (Value::Text(a), Json::String(b)) => a == b,
        _ => false,
    }
}

/// A scalar source value as `enum_map` keys write it: strings as they are, integers without a
/// fraction (`1`, also for `1.0`), booleans as `true`/`false`.
fn source_text(source: &Json) -> Option<String> {
    match source {
        Json::String(s) => Some(s.clone()),
        Json::Bool(b) => Some(b.to_string()),
        Json::Number(n) => Some(match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(u)) => u.to_string(),
            (None, None) => number_to_f64(n).to_string(),
        }),
        Json::Null | Json::Array(_) | Json::Object(_) => None,
    }
}

fn bad_enum(field: &FieldMapping, source: &Json) -> DecodeError {
    let value = source_text(source).unwrap_or_else(|| json_kind(source).to_owned());
    DecodeError::Vocabulary(VocabularyError::BadEnum {
        metric: field.metric.clone(),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Decoder;
    use std::sync::Arc;

    fn profile(toml_text: &str) -> Profile {
        let p: Profile = toml::from_str(toml_text).expect("test profile parses");
        assert_eq!(p.validate(), Vec::<String>::new(), "test profile is valid");
        p
    }

    fn reading(device: &str, ts_ms: Option<i64>, seq: Option<u64>, metrics: &[(&str, Value)]) -> Reading {
        Reading {
            device: DeviceKey::Id(device.to_owned()),
            ts_ms,
            seq,
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

    /// The example of the operator's manual: a LoRaWAN gas detector (the one shared test profile).
    const ACME_GAS: &str = include_str!("../../../tests/fixtures/acme-profile.toml");

    /// A CTWing NB-IoT smoke alarm (LiAn; docs/devices.md). `Alarm_Status` is one code for the whole
    /// device state, read by several boolean fields; RSRP is sent without its sign.
    const CTWING_SMOKE: &str = r#"
        name = "ctwing-lian-smoke"
        device_pointer = "/IMEI"
        device_prefix = "imei:"
        ts_pointer = "/timestamp"
        ts_format = "ms"

        [[fields]]
        pointer = "/payload/serviceData/Alarm_Status"
        metric = "smoke"
        true_values = [1]
        [[fields]]
        pointer = "/payload/serviceData/Alarm_Status"
        metric = "silenced"
        true_values = [2, 8, 9]
        [[fields]]
        pointer = "/payload/serviceData/Alarm_Status"
        metric = "battery_low"
        true_values = [4]
        [[fields]]
        pointer = "/payload/serviceData/Alarm_Status"
        metric = "fault"
        true_values = [5, 6, 13]
        [[fields]]
        pointer = "/payload/serviceData/Alarm_Status"
        metric = "tamper"
        true_values = [10]
        [[fields]]
        pointer = "/payload/serviceData/Alarm_Status"
        metric = "test"
        true_values = [14]
        [[fields]]
        pointer = "/payload/serviceData/Battery_Level"
        metric = "battery_pct"
        unit = "%EL"
        [[fields]]
        pointer = "/payload/serviceData/RSRP"
        metric = "rsrp"
        scale = -1.0
        unit = "dBm"
        [[fields]]
        pointer = "/payload/serviceData/SNR"
        metric = "snr"
    "#;

    const CTWING_SMOKE_SILENCED: &str = r#"{"topic":"v1/up/ad19prof","timestamp":1606982320277,"protocol":"lwm2m","productId":"15014772","messageType":"dataReport","IMEI":"860374051096202","payload":{"serviceId":"notification","serviceData":{"TData":30,"SNR":1,"RSRP":114,"CSQ":5,"Battery_Level":100,"Alarm_Status":2,"AlarmLevel":100}}}"#;

    fn run(p: &Profile, payload: &str) -> Result<Vec<Reading>, DecodeError> {
        decode(p, "ctwing/up", payload.as_bytes(), &Limits::default())
    }

    #[test]
    fn ctwing_smoke_silenced_maps_every_status_flag() {
        let p = profile(CTWING_SMOKE);
        assert_eq!(
            run(&p, CTWING_SMOKE_SILENCED),
            Ok(vec![reading(
                "imei:860374051096202",
                Some(1_606_982_320_277),
                None,
                &[
                    ("battery_low", Value::Bool(false)),
                    ("battery_pct", Value::Num(100.0)),
                    ("fault", Value::Bool(false)),
                    ("rsrp", Value::Num(-114.0)),
                    ("silenced", Value::Bool(true)),
                    ("smoke", Value::Bool(false)),
                    ("snr", Value::Num(1.0)),
                    ("tamper", Value::Bool(false)),
                    ("test", Value::Bool(false)),
                ],
            )])
        );
    }

    #[test]
    fn ctwing_smoke_alarm_status_1_maps_to_smoke_true() {
        let p = profile(CTWING_SMOKE);
        let payload = CTWING_SMOKE_SILENCED.replace(r#""Alarm_Status":2"#, r#""Alarm_Status":1"#);
        let r = run(&p, &payload).map(|v| v[0].metrics.clone());
        let metrics = r.expect("decodes");
        assert_eq!(metrics.get("smoke"), Some(&Value::Bool(true)));
        assert_eq!(metrics.get("silenced"), Some(&Value::Bool(false)));
    }

    /// A CTWing NB-IoT gas alarm (LiAn; docs/devices.md), time in seconds (`eventdate`).
    #[test]
    fn ctwing_gas_alarm_with_seconds_timestamp() {
        let p = profile(
            r#"
            name = "ctwing-lian-gas"
            device_pointer = "/IMEI"
            device_prefix = "imei:"
            ts_pointer = "/eventdate"
            ts_format = "s"
            [[fields]]
            pointer = "/payload/gas_value"
            metric = "gas_lel"
            [[fields]]
            pointer = "/payload/battery_value"
            metric = "battery_pct"
            [[fields]]
            pointer = "/payload/temperature"
            metric = "temperature"
            unit = "Cel"
            "#,
        );
        let payload = r#"{"protocol":"LWM2M","payload":{"valve_state":2,"temperature":0,"gas_value":0,"gas_sensor_state":0,"fan_state":2,"battery_value":100},"IMEI":"869162052818257","event":"1","state":1,"content":"报警","eventdate":1589352628}"#;
        assert_eq!(
            run(&p, payload),
            Ok(vec![reading(
                "imei:869162052818257",
                Some(1_589_352_628_000),
                None,
                &[
                    ("battery_pct", Value::Num(100.0)),
                    ("gas_lel", Value::Num(0.0)),
                    ("temperature", Value::Num(0.0)),
                ],
            )])
        );
    }

    #[test]
    fn acme_gas_applies_scale_polarity_enum_and_array_pointer() {
        let p = profile(ACME_GAS);
        let payload = r#"{"devEUI":"24e124538b223213","time":"2026-05-01T20:00:00.250+08:00","fCnt":517,"object":{"gas":125,"alarm":0,"fall":1,"battery_mv":3600},"rxInfo":[{"rssi":-97,"snr":7.5}]}"#;
        assert_eq!(
            run(&p, payload),
            Ok(vec![reading(
                "lorawan:24e124538b223213",
                Some(1_777_636_800_250),
                Some(517),
                &[
                    ("battery_v", Value::Num(3600.0 * 0.001)),
                    ("fall_state", t("suspected")),
                    ("gas_alarm", Value::Bool(true)),
                    ("gas_lel", Value::Num(125.0 * 0.1)),
                    ("rssi", Value::Num(-97.0)),
                ],
            )])
        );
    }

    #[test]
    fn absent_and_null_fields_are_skipped_as_partial_updates() {
        let p = profile(ACME_GAS);
        let payload = r#"{"devEUI":"24e124538b223213","object":{"alarm":1,"fall":null}}"#;
        assert_eq!(
            run(&p, payload),
            Ok(vec![reading(
                "lorawan:24e124538b223213",
                None,
                None,
                &[("gas_alarm", Value::Bool(false))]
            )])
        );
    }

    #[test]
    fn default_polarity_is_true_or_1_and_false_or_0() {
        let p = profile(
            r#"
            name = "plain"
            device_topic_level = 1
            [[fields]]
            pointer = "/sos"
            metric = "sos"
            "#,
        );
        let topic = "acme/pendant-7/up";
        let run = |payload: &str| decode(&p, topic, payload.as_bytes(), &Limits::default());
        let sos = |b| Ok(vec![reading("pendant-7", None, None, &[("sos", Value::Bool(b))])]);
        assert_eq!(run(r#"{"sos":true}"#), sos(true));
        assert_eq!(run(r#"{"sos":1}"#), sos(true));
        assert_eq!(run(r#"{"sos":false}"#), sos(false));
        assert_eq!(run(r#"{"sos":0}"#), sos(false));
        assert_eq!(reason(run(r#"{"sos":2}"#)), "bad_enum");
        assert_eq!(reason(run(r#"{"sos":"1"}"#)), "bad_enum");
        assert_eq!(reason(run(r#"{"sos":[true]}"#)), "wrong_type");
    }

    #[test]
    fn tuya_style_inverted_alarm_with_false_values_rejects_unknown_codes() {
        let p = profile(
            r#"
            name = "tuya-rqbj"
            device_pointer = "/id"
            [[fields]]
            pointer = "/gas_sensor_status"
            metric = "gas_alarm"
            true_values = ["alarm", 0]
            false_values = ["normal", 1]
            "#,
        );
        let gas = |b| Ok(vec![reading("t1", None, None, &[("gas_alarm", Value::Bool(b))])]);
        assert_eq!(run(&p, r#"{"id":"t1","gas_sensor_status":"alarm"}"#), gas(true));
        assert_eq!(run(&p, r#"{"id":"t1","gas_sensor_status":0}"#), gas(true));
        assert_eq!(run(&p, r#"{"id":"t1","gas_sensor_status":1}"#), gas(false));
        assert_eq!(
            run(&p, r#"{"id":"t1","gas_sensor_status":"mute"}"#),
            Err(DecodeError::Vocabulary(VocabularyError::BadEnum {
                metric: "gas_alarm".into(),
                value: "mute".into()
            }))
        );
    }

    #[test]
    fn enum_value_missing_from_enum_map_is_bad_enum() {
        let p = profile(ACME_GAS);
        let r = run(&p, r#"{"devEUI":"a1","object":{"fall":7}}"#);
        assert_eq!(
            r,
            Err(DecodeError::Vocabulary(VocabularyError::BadEnum {
                metric: "fall_state".into(),
                value: "7".into()
            }))
        );
    }

    #[test]
    fn enum_without_map_takes_canonical_strings_only() {
        let p = profile(
            r#"
            name = "canonical-ish"
            device_pointer = "/id"
            [[fields]]
            pointer = "/fall"
            metric = "fall_state"
            [[fields]]
            pointer = "/code"
            metric = "fault_code"
            enum_map = { "5" = "sensor" }
            "#,
        );
        let ok = run(&p, r#"{"id":"r1","fall":"confirmed","code":5}"#);
        assert_eq!(
            ok,
            Ok(vec![reading(
                "r1",
                None,
                None,
                &[("fall_state", t("confirmed")), ("fault_code", t("sensor"))]
            )])
        );
        let kept = run(&p, r#"{"id":"r1","code":31}"#);
        assert_eq!(kept, Ok(vec![reading("r1", None, None, &[("fault_code", t("31"))])]));
        assert_eq!(reason(run(&p, r#"{"id":"r1","fall":"falling"}"#)), "bad_enum");
        assert_eq!(reason(run(&p, r#"{"id":"r1","fall":2}"#)), "wrong_type");
    }

    #[test]
    fn number_field_with_wrong_type_rejects_the_message() {
        let p = profile(ACME_GAS);
        let r = run(&p, r#"{"devEUI":"a1","object":{"gas":"12","alarm":1}}"#);
        assert_eq!(
            r,
            Err(DecodeError::Schema(
                "`/object/gas` for `gas_lel` must be a number, got a string".into()
            ))
        );
    }

    #[test]
    fn scaled_value_out_of_range_or_infinite_is_rejected() {
        let p = profile(ACME_GAS);
        assert_eq!(
            reason(run(&p, r#"{"devEUI":"a1","object":{"gas":1200}}"#)),
            "out_of_range"
        );
        let huge = profile(
            r#"
            name = "huge"
            device_pointer = "/id"
            [[fields]]
            pointer = "/v"
            metric = "gas_ppm"
            scale = 1e10
            "#,
        );
        let r = run(&huge, r#"{"id":"a1","v":1e300}"#);
        assert_eq!(
            r,
            Err(DecodeError::Vocabulary(VocabularyError::NonFinite {
                metric: "gas_ppm".into()
            }))
        );
    }

    #[test]
    fn device_id_problems_are_rejected() {
        let p = profile(ACME_GAS);
        assert_eq!(reason(run(&p, r#"{"object":{"gas":1}}"#)), "wrong_type");
        assert_eq!(
            reason(run(&p, r#"{"devEUI":"24e1 2453","object":{"gas":1}}"#)),
            "wrong_type"
        );
        assert_eq!(reason(run(&p, r#"{"devEUI":true,"object":{"gas":1}}"#)), "wrong_type");
        assert_eq!(reason(run(&p, r#"{"devEUI":-4,"object":{"gas":1}}"#)), "wrong_type");
        let numeric = run(&p, r#"{"devEUI":860374051096202,"object":{"gas":10}}"#);
        assert_eq!(
            numeric.map(|v| v[0].device.clone()),
            Ok(DeviceKey::Id("lorawan:860374051096202".into()))
        );
    }

    #[test]
    fn topic_level_device_id_must_exist_and_be_valid() {
        let p = profile(
            r#"
            name = "by-topic"
            device_topic_level = 2
            [[fields]]
            pointer = "/t"
            metric = "temperature"
            "#,
        );
        let ok = decode(&p, "acme/up/hs-9", br#"{"t":21.5}"#, &Limits::default());
        assert_eq!(
            ok,
            Ok(vec![reading("hs-9", None, None, &[("temperature", Value::Num(21.5))])])
        );
        assert_eq!(
            reason(decode(&p, "acme/up", br#"{"t":21.5}"#, &Limits::default())),
            "bad_topic"
        );
        assert_eq!(
            reason(decode(&p, "acme/up/", br#"{"t":21.5}"#, &Limits::default())),
            "wrong_type"
        );
    }

    #[test]
    fn bad_timestamps_are_rejected_per_format() {
        let p = profile(ACME_GAS);
        for time in [r#""2026-05-01""#, "1777636800000", r#""2026-05-01T12:00:00+08""#] {
            let payload = format!(r#"{{"devEUI":"a1","time":{time},"object":{{"gas":1}}}}"#);
            assert_eq!(reason(run(&p, &payload)), "bad_timestamp", "{time}");
        }
        let mut secs = profile(CTWING_SMOKE);
        secs.ts_format = Some(TsFormat::S);
        let ok = run(
            &secs,
            r#"{"IMEI":"1","timestamp":1589352628.5,"payload":{"serviceData":{"SNR":1}}}"#,
        );
        assert_eq!(ok.map(|v| v[0].ts_ms), Ok(Some(1_589_352_628_500)));
        for ts in ["-1", "\"1589352628\"", "1e300"] {
            let payload = format!(r#"{{"IMEI":"1","timestamp":{ts},"payload":{{"serviceData":{{"SNR":1}}}}}}"#);
            assert_eq!(reason(run(&secs, &payload)), "bad_timestamp", "{ts}");
        }
    }

    #[test]
    fn bad_sequence_number_is_a_schema_error() {
        let p = profile(ACME_GAS);
        assert_eq!(
            reason(run(&p, r#"{"devEUI":"a1","fCnt":-1,"object":{"gas":1}}"#)),
            "wrong_type"
        );
    }

    #[test]
    fn message_with_no_mapped_field_is_no_metrics() {
        let p = profile(ACME_GAS);
        assert_eq!(run(&p, r#"{"devEUI":"a1","object":{}}"#), Err(DecodeError::NoMetrics));
    }

    #[test]
    fn payload_rejections_share_the_canonical_checks() {
        let p = profile(ACME_GAS);
        let decoder = Decoder::JsonMap(Arc::new(p.clone()));
        let small = Limits {
            max_payload_bytes: 10,
            max_json_depth: 3,
        };
        assert_eq!(
            reason(decoder.decode("t", br#"{"devEUI":"a1","object":{"gas":1}}"#, &small)),
            "oversized"
        );
        assert_eq!(
            decode(&p, "t", b"\xc0\x80", &Limits::default()),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(reason(run(&p, "{devEUI:1}")), "invalid_json");
        assert_eq!(reason(run(&p, r#"[{"devEUI":"a1"}]"#)), "wrong_type");
        let deep = Limits {
            max_json_depth: 2,
            ..Limits::default()
        };
        let r = decode(&p, "t", br#"{"devEUI":"a1","rxInfo":[{"rssi":-97}]}"#, &deep);
        assert_eq!(r, Err(DecodeError::TooDeep(2)));
    }

    #[test]
    fn unvalidated_profile_with_unknown_metric_rejects_instead_of_panicking() {
        let p = Profile {
            name: "broken".into(),
            device_pointer: None,
            device_topic_level: None,
            device_prefix: String::new(),
            ts_pointer: None,
            ts_format: None,
            seq_pointer: None,
            fields: vec![FieldMapping {
                pointer: "/c".into(),
                metric: "colour".into(),
                scale: None,
                offset: None,
                unit: None,
                true_values: None,
                false_values: None,
                enum_map: None,
            }],
        };
        assert_eq!(reason(run(&p, r#"{"c":1}"#)), "wrong_type");
        let p = Profile {
            device_topic_level: Some(0),
            ..p
        };
        assert_eq!(reason(run(&p, r#"{"c":1}"#)), "unknown_metric");
    }

    #[test]
    fn validate_reports_every_problem_at_once() {
        let p: Profile = toml::from_str(
            r#"
            name = ""
            device_pointer = "devEUI"
            device_topic_level = 1
            device_prefix = "lora wan/"
            ts_format = "s"
            seq_pointer = "/a~2b"
            [[fields]]
            pointer = "/a"
            metric = "colour"
            [[fields]]
            pointer = "/b"
            metric = "gas_lel"
            unit = "ppm"
            scale = 0.0
            true_values = [1]
            [[fields]]
            pointer = "/c"
            metric = "fall_state"
            enum_map = { "3" = "falling" }
            scale = 2.0
            unit = "s"
            [[fields]]
            pointer = "/d"
            metric = "smoke"
            true_values = [1, "alarm"]
            false_values = ["alarm"]
            enum_map = { "1" = "x" }
            [[fields]]
            pointer = "/e"
            metric = "gas_lel"
            false_values = []
            "#,
        )
        .expect("parses");
        let problems = p.validate();
        let expected = [
            "name: must not be empty",
            "device_pointer, device_topic_level: set only one of them",
            "device_pointer: JSON pointer `devEUI` must start with `/`",
            "seq_pointer: JSON pointer `/a~2b` has `~` not followed by 0 or 1",
            "device_prefix: `lora wan/` must match [A-Za-z0-9._:-]+",
            "ts_format: given without ts_pointer",
            "fields[0].metric: unknown metric `colour` (see the metric vocabulary in docs/contracts.md)",
            "fields[1].scale: 0 would make every value the offset",
            "fields[1].unit: `gas_lel` is in `%LEL`, not `ppm`; convert with scale/offset",
            "fields[1].true_values: `gas_lel` is not a boolean metric",
            "fields[2].scale: `fall_state` is not a number metric",
            "fields[2].unit: `fall_state` has no unit",
            "fields[2].enum_map.3: `falling` is not a value of `fall_state` (none, suspected, fall, confirmed, exit)",
            "fields[3].false_values: \"alarm\" is also in true_values",
            "fields[3].enum_map: `smoke` is not an enum or text metric; use true_values",
            "fields[4].metric: `gas_lel` is already read by fields[1]; one source per metric",
            "fields[4].false_values: `gas_lel` is not a boolean metric",
        ];
        assert_eq!(problems, expected);
    }

    #[test]
    fn profile_rejects_unknown_keys_and_bad_ts_format() {
        let unknown =
            toml::from_str::<Profile>("name = \"x\"\ndevice_pointer = \"/id\"\ndevice_id = \"/x\"\nfields = []\n");
        assert!(unknown.is_err());
        let field = toml::from_str::<Profile>(
            "name = \"x\"\ndevice_pointer = \"/id\"\n[[fields]]\npointer = \"/a\"\nmetric = \"sos\"\nscal = 2\n",
        );
        assert!(field.is_err());
        let format = toml::from_str::<Profile>(
            "name = \"x\"\ndevice_pointer = \"/id\"\nts_pointer = \"/t\"\nts_format = \"iso\"\nfields = []\n",
        );
        assert!(format.is_err());
    }

    /// xorshift64*: a few lines of deterministic randomness, so a failure replays exactly.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    /// Fragments that tend to reach the interesting paths: nesting, strings and escapes, numbers
    /// at the edges of f64/i64/u64, wrong types, invalid UTF-8.
    const TOKENS: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b"\\",
        b":",
        b",",
        b"null",
        b"true",
        b"false",
        b"-",
        b"0",
        b"1",
        b"1e400",
        b"-1e400",
        b"1.5",
        b"9223372036854775808",
        b"18446744073709551616",
        b"-0",
        b"1e-400",
        b"\"\\u0000\"",
        b"\"\\ud800\"",
        b"\xff",
        b"\xc3",
        b"\xe2\x82",
        b" ",
        b"\"fall\"",
        b"\"none\"",
        b"\"2026-05-01T12:00:00Z\"",
        b"\"2026-02-30T25:61:61+99:99\"",
        b"[[[[[[[[[[[[[[[[[[[[",
        b"]]]]]]]]",
    ];

    const JSON_VALUES: &[&str] = &[
        "null",
        "true",
        "false",
        "0",
        "1",
        "-1",
        "2",
        "0.5",
        "1e300",
        "-1e300",
        "9223372036854775807",
        "18446744073709551615",
        "\"\"",
        "\"fall\"",
        "\"maybe_fall\"",
        "\"falling\"",
        "\"none\"",
        "\"hold\"",
        "\"sensor_fault\"",
        "\"2026-05-01T12:00:00.123+08:00\"",
        "\"x\"",
        "[]",
        "{}",
        "[1]",
        "{\"a\":[{}]}",
    ];

    fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
        let mut bytes = seed.to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len() + 1);
            match rng.below(5) {
                0 if !bytes.is_empty() => {
                    let i = at.min(bytes.len() - 1);
                    bytes[i] ^= 1 << rng.below(8);
                }
                1 => {
                    let token = rng.pick(TOKENS);
                    bytes.splice(at..at, token.iter().copied());
                }
                2 => {
                    let end = (at + rng.below(8)).min(bytes.len());
                    bytes.drain(at..end);
                }
                3 => bytes.truncate(at),
                _ => {
                    let end = (at + rng.below(16)).min(bytes.len());
                    let copy = bytes[at..end].to_vec();
                    bytes.splice(at..at, copy);
                }
            }
        }
        bytes
    }

    /// Replaces the value of one key (at a random depth) with another JSON value, so type and range
    /// checks are reached with well-formed JSON.
    fn swap_value(rng: &mut Rng, seed: &str) -> Vec<u8> {
        let Ok(mut doc) = serde_json::from_str::<Json>(seed) else {
            return seed.as_bytes().to_vec();
        };
        let mut node = &mut doc;
        while let Json::Object(map) = node {
            if map.is_empty() {
                break;
            }
            let key = map.keys().nth(rng.below(map.len())).cloned().unwrap_or_default();
            let Some(child) = map.get_mut(&key) else {
                break;
            };
            if child.is_object() && rng.below(2) == 0 {
                node = child;
                continue;
            }
            let replacement = *rng.pick(JSON_VALUES);
            *child = serde_json::from_str(replacement).unwrap_or(Json::Null);
            break;
        }
        doc.to_string().into_bytes()
    }

    #[test]
    fn no_input_makes_any_decoder_panic() {
        // Each decoder with the topic it is subscribed on, used most of the time.
        let decoders = [
            (
                Decoder::Canonical {
                    site: "nh-hz-01".into(),
                },
                "nh/nh-hz-01/gas-k1/telemetry",
            ),
            (Decoder::Zigbee2Mqtt, "zigbee2mqtt/A-305 smoke"),
            (Decoder::JsonMap(Arc::new(profile(ACME_GAS))), "acme/up/24e1"),
            (Decoder::JsonMap(Arc::new(profile(CTWING_SMOKE))), "ctwing/up"),
        ];
        let seeds: &[&str] = &[
            r#"{"ts":1777636800123,"seq":4,"metrics":{"gas_lel":12.5,"smoke":false,"fall_state":"none","fault_code":"x"}}"#,
            r#"{"smoke":false,"tamper":false,"battery_low":false,"supervision_reports":true,"trouble":false,"test":false,"battery":100,"linkquality":87}"#,
            r#"{"presence":true,"occupancy":true,"fall_down_status":"maybe_fall","static_dwell_alarm":"none","illuminance":120,"linkquality":96,"last_seen":"2026-05-01T12:00:00.123Z"}"#,
            r#"{"status":"on_the_bed","breathing_rate":14,"contact":true,"action":"hold","fault":"none","voltage":2995,"co":3}"#,
            CTWING_SMOKE_SILENCED,
            r#"{"devEUI":"24e124538b223213","time":"2026-05-01T20:00:00.250+08:00","fCnt":517,"object":{"gas":125,"alarm":0,"fall":1,"battery_mv":3600},"rxInfo":[{"rssi":-97}]}"#,
        ];
        let topics: &[&str] = &[
            "nh/nh-hz-01/gas-k1/telemetry",
            "zigbee2mqtt/A-305 smoke",
            "zigbee2mqtt/kitchen/smoke",
            "acme/up/24e1",
            "nh/nh-hz-01//telemetry",
            "zigbee2mqtt/bridge/state",
            "",
            "/",
        ];
        let limits = [
            Limits::default(),
            Limits {
                max_payload_bytes: 160,
                max_json_depth: 2,
            },
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut accepted = [0usize; 4];
        let mut rejected = 0usize;
        for round in 0..6000 {
            let seed = *rng.pick(seeds);
            let payload = match round % 3 {
                0 => (0..rng.below(96)).map(|_| rng.next() as u8).collect(),
                1 => mutate(&mut rng, seed.as_bytes()),
                _ => swap_value(&mut rng, seed),
            };
            let other_topic = *rng.pick(topics);
            let mutated_topic = String::from_utf8_lossy(&mutate(&mut rng, other_topic.as_bytes())).into_owned();
            for (d, (decoder, home_topic)) in decoders.iter().enumerate() {
                let topic = match rng.below(8) {
                    0 => other_topic,
                    1 => &mutated_topic,
                    _ => home_topic,
                };
                for limit in &limits {
                    match decoder.decode(topic, &payload, limit) {
                        Ok(readings) => {
                            accepted[d] += 1;
                            assert_eq!(readings.len(), 1);
                            let r = &readings[0];
                            assert!(!r.metrics.is_empty());
                            for (name, value) in &r.metrics {
                                assert_eq!(vocabulary::check(name, value), Ok(()), "{name} in {r:?}");
                            }
                        }
                        Err(e) => {
                            rejected += 1;
                            assert!(!e.reason().is_empty());
                        }
                    }
                }
            }
        }
        // Every decoder must accept some inputs, or the generator is not reaching past the first checks.
        assert!(
            accepted.iter().all(|&n| n > 20) && rejected > 1000,
            "accepted {accepted:?}, rejected {rejected}"
        );
    }
}
