//! The canonical telemetry format (docs/contracts.md): topic `nh/{site}/{device_id}/telemetry`, payload
//! `{"ts": <ms>, "seq": <u64>, "metrics": {...}}`.
//!
//! It also owns the payload conventions the other decoders normalize to, as `pub(crate)` items:
//! the checks made before any JSON is parsed ([`parse_object`]), the identifier charset
//! ([`is_valid_id`]), and what a millisecond timestamp or a sequence number may be.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value as Json};

use crate::decode::{DecodeError, Limits};
use crate::reading::{DeviceKey, Reading, Value};
use crate::vocabulary;

/// Decodes one canonical telemetry message of `site`.
pub fn decode(site: &str, topic: &str, payload: &[u8], limits: &Limits) -> Result<Vec<Reading>, DecodeError> {
    let device_id = device_from_topic(site, topic)?;
    let doc = parse_object(payload, limits)?;

    // The canonical format is ours: a key we do not know is a firmware bug to surface, not a
    // vendor extension to tolerate.
    if let Some(key) = doc.keys().find(|k| !matches!(k.as_str(), "ts" | "seq" | "metrics")) {
        return Err(DecodeError::Schema(format!("unknown top-level key `{key}`")));
    }
    let ts_ms = doc.get("ts").map(ms_from_json).transpose()?;
    let seq = doc.get("seq").map(|v| seq_from_json("seq", v)).transpose()?;
    let metrics = match doc.get("metrics") {
        Some(Json::Object(m)) => m,
        Some(other) => {
            return Err(DecodeError::Schema(format!(
                "`metrics` must be an object, got {}",
                json_kind(other)
            )))
        }
        None => return Err(DecodeError::Schema("`metrics` is missing".to_owned())),
    };
    if metrics.is_empty() {
        return Err(DecodeError::NoMetrics);
    }

    let mut out = BTreeMap::new();
    for (name, json) in metrics {
        let value = match json {
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Num(number_to_f64(n)),
            Json::String(s) => Value::Text(s.clone()),
            Json::Null | Json::Array(_) | Json::Object(_) => {
                return Err(DecodeError::Schema(format!(
                    "metric `{name}` must be a number, boolean or string, got {}",
                    json_kind(json)
                )))
            }
        };
        vocabulary::check(name, &value)?;
        out.insert(name.clone(), value);
    }
    Ok(vec![Reading {
        device: DeviceKey::Id(device_id.to_owned()),
        ts_ms,
        seq,
        metrics: out,
    }])
}

/// Splits `nh/{site}/{device_id}/telemetry` and returns the device id.
fn device_from_topic<'t>(site: &str, topic: &'t str) -> Result<&'t str, DecodeError> {
    let bad = || DecodeError::BadTopic(topic.to_owned());
    let mut levels = topic.split('/');
    let (Some("nh"), Some(found_site), Some(device_id), Some("telemetry"), None) = (
        levels.next(),
        levels.next(),
        levels.next(),
        levels.next(),
        levels.next(),
    ) else {
        return Err(bad());
    };
    if !is_valid_id(found_site) || !is_valid_id(device_id) {
        return Err(bad());
    }
    if found_site != site {
        return Err(DecodeError::WrongSite {
            found: found_site.to_owned(),
            expected: site.to_owned(),
        });
    }
    Ok(device_id)
}

/// Whether `s` is a site or device id (docs/contracts.md: `[A-Za-z0-9._:-]+`), so it can stand as
/// one MQTT topic level and one InfluxDB tag value without escaping.
pub(crate) fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Every check made before serde_json sees the payload, then the parse itself: the payload must be
/// UTF-8 JSON whose top level is an object, nested at most `limits.max_json_depth` deep.
pub(crate) fn parse_object(payload: &[u8], limits: &Limits) -> Result<Map<String, Json>, DecodeError> {
    // `Decoder::decode` checks this already; repeated here because each decoder is public on its own.
    if payload.len() > limits.max_payload_bytes {
        return Err(DecodeError::Oversized {
            size: payload.len(),
            limit: limits.max_payload_bytes,
        });
    }
    let text = std::str::from_utf8(payload).map_err(|_| DecodeError::InvalidUtf8)?;
    check_depth(text, limits.max_json_depth)?;
    match serde_json::from_str::<Json>(text) {
        Ok(Json::Object(map)) => Ok(map),
        Ok(other) => Err(DecodeError::Schema(format!(
            "top level must be an object, got {}",
            json_kind(&other)
        ))),
        Err(e) => Err(DecodeError::InvalidJson(e.to_string())),
    }
}

/// Rejects nesting deeper than `max` with one linear pass, before serde_json recurses into it
/// (serde_json's own limit is 128 levels, deeper than we accept). It only counts brackets outside
/// strings; malformed JSON is left for the parser to report.
fn check_depth(text: &str, max: usize) -> Result<(), DecodeError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    // Bytes, not chars: in UTF-8 no byte of a multi-byte character is ASCII, so `"`, `\` and the
    // brackets are never misread inside one.
    for b in text.bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(DecodeError::TooDeep(max));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A JSON number as `f64`. A number that has no finite `f64` becomes NaN, so `vocabulary::check`
/// rejects it as `non_finite` under its metric name. (With serde_json's default features a literal
/// such as `1e400` is already refused by the parser, as `invalid_json`; this covers builds where a
/// feature such as `arbitrary_precision` lets it through.)
pub(crate) fn number_to_f64(n: &Number) -> f64 {
    n.as_f64().filter(|f| f.is_finite()).unwrap_or(f64::NAN)
}

/// Largest integer an `f64` holds exactly: a float sequence number above it has lost its low digits.
const MAX_EXACT_F64_INT: f64 = 9_007_199_254_740_992.0;

/// A device timestamp in ms since the epoch: a non-negative integer that fits `i64`. A float with
/// no fraction is accepted because JavaScript firmware prints large numbers as `1.7e12`.
pub(crate) fn ms_from_json(v: &Json) -> Result<i64, DecodeError> {
    let bad = || DecodeError::BadTimestamp(format!("expected non-negative integer ms since the epoch, got {v}"));
    let Json::Number(n) = v else {
        return Err(bad());
    };
    if let Some(i) = n.as_i64() {
        return if i >= 0 { Ok(i) } else { Err(bad()) };
    }
    if n.is_u64() {
        // A u64 that `as_i64` refused is above i64::MAX.
        return Err(bad());
    }
    match n.as_f64() {
        // `i64::MAX as f64` rounds up to 2^63, which itself does not fit: hence `<`.
        Some(f) if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < i64::MAX as f64 => Ok(f as i64),
        _ => Err(bad()),
    }
}

/// A per-device sequence number: a non-negative integer (a float with no fraction within the
/// range an `f64` holds exactly is accepted, as for timestamps). `what` names the field in errors.
pub(crate) fn seq_from_json(what: &str, v: &Json) -> Result<u64, DecodeError> {
    let bad = || DecodeError::Schema(format!("`{what}` must be a non-negative integer, got {v}"));
    let Json::Number(n) = v else {
        return Err(bad());
    };
    if let Some(u) = n.as_u64() {
        return Ok(u);
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= MAX_EXACT_F64_INT => Ok(f as u64),
        _ => Err(bad()),
    }
}

/// The JSON type of a value, for error messages (the value itself may be large).
pub(crate) fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Decoder;
    use crate::vocabulary::VocabularyError;

    const SITE: &str = "nh-hz-01";
    const TOPIC: &str = "nh/nh-hz-01/gas-k1/telemetry";

    fn run(topic: &str, payload: &str) -> Result<Vec<Reading>, DecodeError> {
        decode(SITE, topic, payload.as_bytes(), &Limits::default())
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

    #[test]
    fn gas_detector_message_with_ts_and_seq_maps_to_one_reading() {
        let payload = r#"{"ts":1777636800123,"seq":48213,"metrics":{"gas_lel":12.5,"gas_alarm":false,"preheat":false,"gas_type":"methane"}}"#;
        assert_eq!(
            run(TOPIC, payload),
            Ok(vec![reading(
                "gas-k1",
                Some(1_777_636_800_123),
                Some(48213),
                &[
                    ("gas_alarm", Value::Bool(false)),
                    ("gas_lel", Value::Num(12.5)),
                    ("gas_type", Value::Text("methane".into())),
                    ("preheat", Value::Bool(false)),
                ],
            )])
        );
    }

    #[test]
    fn ts_and_seq_are_optional() {
        let payload = r#"{"metrics":{"fall_state":"suspected","presence":true}}"#;
        assert_eq!(
            run("nh/nh-hz-01/radar:A-305.bath_1/telemetry", payload),
            Ok(vec![reading(
                "radar:A-305.bath_1",
                None,
                None,
                &[
                    ("fall_state", Value::Text("suspected".into())),
                    ("presence", Value::Bool(true))
                ],
            )])
        );
    }

    #[test]
    fn ts_in_exponent_notation_without_fraction_is_accepted() {
        let r = run(TOPIC, r#"{"ts":1.7e12,"metrics":{"sos":true}}"#);
        assert_eq!(r.map(|v| v[0].ts_ms), Ok(Some(1_700_000_000_000)));
    }

    #[test]
    fn integer_metric_becomes_a_float_value() {
        let r = run(TOPIC, r#"{"metrics":{"heart_rate":72}}"#);
        assert_eq!(
            r,
            Ok(vec![reading("gas-k1", None, None, &[("heart_rate", Value::Num(72.0))])])
        );
    }

    #[test]
    fn oversized_payload_is_rejected_before_parsing() {
        let limits = Limits {
            max_payload_bytes: 32,
            ..Limits::default()
        };
        let decoder = Decoder::Canonical { site: SITE.into() };
        let payload = r#"{"metrics":{"gas_lel":1.0,"co_ppm":3.0}}"#;
        let err = decoder.decode(TOPIC, payload.as_bytes(), &limits);
        assert_eq!(
            err,
            Err(DecodeError::Oversized {
                size: payload.len(),
                limit: 32
            })
        );
        assert_eq!(reason(decode(SITE, TOPIC, payload.as_bytes(), &limits)), "oversized");
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let payload = b"{\"metrics\":{\"fault_code\":\"\xff\xfe\"}}";
        assert_eq!(
            decode(SITE, TOPIC, payload, &Limits::default()),
            Err(DecodeError::InvalidUtf8)
        );
    }

    #[test]
    fn invalid_json_is_rejected() {
        assert_eq!(reason(run(TOPIC, r#"{"metrics":{"smoke":tru}}"#)), "invalid_json");
        assert_eq!(reason(run(TOPIC, "")), "invalid_json");
        assert_eq!(
            reason(run(TOPIC, r#"{"metrics":{"smoke":true}} trailing"#)),
            "invalid_json"
        );
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_rejected_without_recursing() {
        // Far above the size limit too, to show the scan is linear and not recursive.
        let limits = Limits {
            max_payload_bytes: usize::MAX,
            ..Limits::default()
        };
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            decode(SITE, TOPIC, deep.as_bytes(), &limits),
            Err(DecodeError::TooDeep(limits.max_json_depth))
        );
        // Brackets inside strings (with escaped quotes) do not count.
        let in_string = format!(r#"{{"metrics":{{"fault_code":"\"{}"}}}}"#, "[".repeat(100));
        assert!(run(TOPIC, &in_string).is_ok());
    }

    #[test]
    fn nesting_exactly_at_the_limit_is_accepted() {
        let limits = Limits {
            max_json_depth: 2,
            ..Limits::default()
        };
        let ok = decode(SITE, TOPIC, br#"{"metrics":{"sos":true}}"#, &limits);
        assert!(ok.is_ok(), "{ok:?}");
        let deep = decode(SITE, TOPIC, br#"{"metrics":{"sos":[true]}}"#, &limits);
        assert_eq!(deep, Err(DecodeError::TooDeep(2)));
    }

    #[test]
    fn other_site_is_rejected_as_wrong_site() {
        assert_eq!(
            run("nh/nh-sh-02/gas-k1/telemetry", r#"{"metrics":{"sos":true}}"#),
            Err(DecodeError::WrongSite {
                found: "nh-sh-02".into(),
                expected: SITE.into()
            })
        );
    }

    #[test]
    fn malformed_topics_are_rejected_as_bad_topic() {
        for topic in [
            "nh/nh-hz-01/gas-k1",
            "nh/nh-hz-01/gas-k1/telemetry/extra",
            "nh/nh-hz-01//telemetry",
            "nh/nh-hz-01/gas k1/telemetry",
            "nh/nh-hz-01/gas+/telemetry",
            "nh/nh-hz-01/gas-k1/alerts",
            "xx/nh-hz-01/gas-k1/telemetry",
            "/nh/nh-hz-01/gas-k1/telemetry",
            "",
        ] {
            assert_eq!(
                reason(run(topic, r#"{"metrics":{"sos":true}}"#)),
                "bad_topic",
                "{topic}"
            );
        }
    }

    #[test]
    fn top_level_not_an_object_is_a_schema_error() {
        assert_eq!(reason(run(TOPIC, "[1,2]")), "wrong_type");
        assert_eq!(reason(run(TOPIC, "42")), "wrong_type");
    }

    #[test]
    fn unknown_top_level_key_is_a_schema_error() {
        let r = run(TOPIC, r#"{"metrics":{"sos":true},"device":"x"}"#);
        assert_eq!(r, Err(DecodeError::Schema("unknown top-level key `device`".into())));
    }

    #[test]
    fn bad_timestamps_are_rejected() {
        for ts in [
            "-1",
            "1.5",
            "\"2026-05-01T12:00:00Z\"",
            "null",
            "true",
            "9223372036854775808",
            "1e19",
        ] {
            let payload = format!(r#"{{"ts":{ts},"metrics":{{"sos":true}}}}"#);
            assert_eq!(reason(run(TOPIC, &payload)), "bad_timestamp", "ts = {ts}");
        }
    }

    #[test]
    fn bad_sequence_numbers_are_schema_errors() {
        for seq in ["-1", "2.5", "\"7\"", "null", "18446744073709551616"] {
            let payload = format!(r#"{{"seq":{seq},"metrics":{{"sos":true}}}}"#);
            assert_eq!(reason(run(TOPIC, &payload)), "wrong_type", "seq = {seq}");
        }
        let max = run(TOPIC, r#"{"seq":18446744073709551615,"metrics":{"sos":true}}"#);
        assert_eq!(max.map(|v| v[0].seq), Ok(Some(u64::MAX)));
    }

    #[test]
    fn empty_metrics_is_no_metrics_and_missing_metrics_is_a_schema_error() {
        assert_eq!(run(TOPIC, r#"{"ts":1,"metrics":{}}"#), Err(DecodeError::NoMetrics));
        assert_eq!(reason(run(TOPIC, r#"{"ts":1}"#)), "wrong_type");
        assert_eq!(reason(run(TOPIC, r#"{"metrics":[]}"#)), "wrong_type");
    }

    #[test]
    fn metric_value_of_wrong_json_type_is_rejected() {
        for v in ["null", "[1]", "{\"v\":1}"] {
            let payload = format!(r#"{{"metrics":{{"gas_lel":{v}}}}}"#);
            assert_eq!(reason(run(TOPIC, &payload)), "wrong_type", "value {v}");
        }
        assert_eq!(
            run(TOPIC, r#"{"metrics":{"smoke":"yes"}}"#),
            Err(DecodeError::Vocabulary(VocabularyError::WrongType {
                metric: "smoke".into(),
                expected: "a boolean"
            }))
        );
    }

    #[test]
    fn unknown_metric_rejects_the_whole_message() {
        let r = run(TOPIC, r#"{"metrics":{"smoke":true,"colour":"red"}}"#);
        assert_eq!(
            r,
            Err(DecodeError::Vocabulary(VocabularyError::UnknownMetric("colour".into())))
        );
    }

    #[test]
    fn enum_value_outside_the_vocabulary_is_bad_enum() {
        assert_eq!(
            reason(run(TOPIC, r#"{"metrics":{"fall_state":"falling"}}"#)),
            "bad_enum"
        );
    }

    #[test]
    fn out_of_range_and_unrepresentable_numbers_are_rejected() {
        assert_eq!(reason(run(TOPIC, r#"{"metrics":{"gas_lel":1e300}}"#)), "out_of_range");
        assert_eq!(reason(run(TOPIC, r#"{"metrics":{"spo2":-3}}"#)), "out_of_range");
        // serde_json refuses a literal beyond f64 while parsing: never an infinite reading.
        let huge = run(TOPIC, r#"{"metrics":{"gas_lel":1e400}}"#);
        assert!(
            matches!(&huge, Err(DecodeError::InvalidJson(m)) if m.contains("number out of range")),
            "{huge:?}"
        );
    }

    #[test]
    fn overlong_text_is_rejected() {
        let payload = format!(
            r#"{{"metrics":{{"fault_code":"{}"}}}}"#,
            "x".repeat(vocabulary::MAX_TEXT_LEN + 1)
        );
        assert_eq!(reason(run(TOPIC, &payload)), "wrong_type");
    }

    #[test]
    fn id_charset_is_the_designed_one() {
        assert!(is_valid_id("zigbee:0x00158d0001a2b3c4"));
        assert!(is_valid_id("modbus:rs485-1:17"));
        assert!(!is_valid_id(""));
        for bad in ["a/b", "a+b", "a#b", "a b", "é", "a\u{0}"] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }
}
