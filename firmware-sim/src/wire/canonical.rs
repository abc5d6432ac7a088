//! The canonical telemetry format (docs/contracts.md): topic `nh/{site}/{device_id}/telemetry`,
//! payload `{"ts": <ms>, "seq": <u64>, "metrics": {"<name>": number|bool|string}}`.

use serde_json::{json, Value as Json};

use crate::metrics::{to_json_object, Metrics};

pub fn topic(site: &str, device_id: &str) -> String {
    format!("nh/{site}/{device_id}/telemetry")
}

/// The JSON payload of one reading.
pub fn payload(ts_ms: i64, seq: u64, metrics: &Metrics) -> Json {
    json!({ "ts": ts_ms, "seq": seq, "metrics": to_json_object(metrics) })
}

pub fn encode(ts_ms: i64, seq: u64, metrics: &Metrics) -> Vec<u8> {
    payload(ts_ms, seq, metrics).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Value;

    #[test]
    fn golden_payload() {
        let metrics: Metrics = vec![
            ("presence", Value::Bool(true)),
            ("motion_state", Value::Text("moving")),
            ("body_movement", Value::Num(42.0)),
            ("skin_temp", Value::Num(34.25)),
        ];
        let text = String::from_utf8(encode(1_767_225_600_123, 7, &metrics)).expect("utf8");
        let back: Json = serde_json::from_str(&text).expect("json");
        assert_eq!(
            back,
            json!({"ts": 1_767_225_600_123_i64, "seq": 7, "metrics": {
                "presence": true, "motion_state": "moving", "body_movement": 42, "skin_temp": 34.25}})
        );
        assert!(text.contains("\"body_movement\":42"), "integers stay integers: {text}");
        assert_eq!(topic("nh-demo", "radar-a-1-01"), "nh/nh-demo/radar-a-1-01/telemetry");
    }
}
