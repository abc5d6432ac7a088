//! The Zigbee2MQTT format: topic `zigbee2mqtt/{friendly_name}`, one flat JSON state object per
//! device, as Z2M publishes it with `advanced.last_seen: epoch` (`last_seen` = device time in ms).
//!
//! Z2M keys differ from canonical names and some differ in polarity or unit: `contact` is true
//! when the door is CLOSED, `voltage` is in mV, `fall_down_status` says `maybe_fall` for a
//! suspected fall. Keys the gateway does not map (`supervision_reports`, `illuminance`, ...) are
//! added by the behaviours as extras, as real devices send them.

use serde_json::{Map, Value as Json};

use crate::metrics::{number_json, to_json, Metrics, Value};

pub fn topic(friendly_name: &str) -> String {
    format!("zigbee2mqtt/{friendly_name}")
}

/// The Z2M key carrying a canonical metric, if Z2M can express it.
pub fn key_for(metric: &str) -> Option<&'static str> {
    Some(match metric {
        "smoke" => "smoke",
        "gas_alarm" => "gas",
        "gas_lel" => "gas_value",
        "co_alarm" => "carbon_monoxide",
        "co_ppm" => "co",
        "contact_open" => "contact",
        "presence" => "occupancy",
        "fall_state" => "fall_down_status",
        "sos" => "sos",
        "button" => "action",
        "battery_pct" => "battery",
        "battery_low" => "battery_low",
        "battery_v" => "voltage",
        "tamper" => "tamper",
        "test" => "test",
        "fault" => "trouble",
        "preheat" => "preheat",
        "silenced" => "silence",
        "temperature" => "temperature",
        "lqi" => "linkquality",
        _ => return None,
    })
}

/// Whether Z2M can carry this metric with this value (`fall_state` confirmed/exit cannot be said).
pub fn can_express(metric: &str, value: &Value) -> bool {
    key_for(metric).is_some() && encode_value(metric, value).is_some()
}

/// The Z2M value for a canonical metric value.
fn encode_value(metric: &str, value: &Value) -> Option<Json> {
    match (metric, value) {
        // Z2M's contact sensors report `contact: true` for a closed door.
        ("contact_open", Value::Bool(open)) => Some(Json::Bool(!open)),
        ("fall_state", Value::Text(state)) => {
            let z2m = match *state {
                "none" => "none",
                "suspected" => "maybe_fall",
                "fall" => "fall",
                _ => return None,
            };
            Some(Json::String(z2m.to_owned()))
        }
        // A press is Z2M's `action`; a held button says `hold`; "no press" is no action at all.
        ("button", Value::Text(press)) => match *press {
            "none" => None,
            "long" => Some(Json::String("hold".to_owned())),
            p => Some(Json::String(p.to_owned())),
        },
        // Z2M reports battery voltage in millivolts, as an integer.
        ("battery_v", Value::Num(volts)) => Some(number_json((volts * 1000.0).round())),
        (_, v) => Some(to_json(v)),
    }
}

/// Why a reading could not be put in Z2M form.
#[derive(Debug, Clone, PartialEq)]
pub struct Inexpressible(pub String);

impl std::fmt::Display for Inexpressible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Zigbee2MQTT has no key for metric value {}", self.0)
    }
}

/// The flat Z2M state object: mapped metrics, then the device's extra (ignored) keys, then
/// `last_seen`.
pub fn payload(
    ts_ms: i64,
    metrics: &Metrics,
    extras: &[(&'static str, Json)],
) -> Result<Map<String, Json>, Inexpressible> {
    let mut out = Map::new();
    for (name, value) in metrics {
        let key = key_for(name).ok_or_else(|| Inexpressible(format!("{name}={value:?}")))?;
        let v = encode_value(name, value).ok_or_else(|| Inexpressible(format!("{name}={value:?}")))?;
        out.insert(key.to_owned(), v);
    }
    for (key, v) in extras {
        out.insert((*key).to_owned(), v.clone());
    }
    out.insert("last_seen".to_owned(), Json::from(ts_ms));
    Ok(out)
}

pub fn encode(ts_ms: i64, metrics: &Metrics, extras: &[(&'static str, Json)]) -> Result<Vec<u8>, Inexpressible> {
    Ok(Json::Object(payload(ts_ms, metrics, extras)?).to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The inverse mapping, written separately from the encoder as the gateway's decoder would be.
    fn decode(payload: &Map<String, Json>) -> Vec<(String, Json)> {
        let mut out = Vec::new();
        for (k, v) in payload {
            let m = match k.as_str() {
                "contact" => ("contact_open", json!(!v.as_bool().expect("bool"))),
                "voltage" => ("battery_v", json!(v.as_f64().expect("num") / 1000.0)),
                "fall_down_status" => (
                    "fall_state",
                    json!(match v.as_str().expect("str") {
                        "maybe_fall" => "suspected",
                        other => other,
                    }),
                ),
                "gas" => ("gas_alarm", v.clone()),
                "gas_value" => ("gas_lel", v.clone()),
                "carbon_monoxide" => ("co_alarm", v.clone()),
                "co" => ("co_ppm", v.clone()),
                "occupancy" => ("presence", v.clone()),
                "battery" => ("battery_pct", v.clone()),
                "trouble" => ("fault", v.clone()),
                "action" => (
                    "button",
                    json!(match v.as_str().expect("str") {
                        "hold" => "long",
                        other => other,
                    }),
                ),
                "silence" => ("silenced", v.clone()),
                "linkquality" => ("lqi", v.clone()),
                "smoke" | "sos" | "battery_low" | "tamper" | "test" | "preheat" | "temperature" => {
                    (k.as_str(), v.clone())
                }
                _ => continue,
            };
            out.push((m.0.to_owned(), m.1));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn contact_true_means_closed() {
        let open = payload(1, &vec![("contact_open", Value::Bool(true))], &[]).expect("encodable");
        assert_eq!(open["contact"], json!(false));
        let closed = payload(1, &vec![("contact_open", Value::Bool(false))], &[]).expect("encodable");
        assert_eq!(closed["contact"], json!(true));
    }

    #[test]
    fn golden_door_contact_payload() {
        let metrics: Metrics = vec![
            ("contact_open", Value::Bool(false)),
            ("battery_pct", Value::Num(87.0)),
            ("battery_v", Value::Num(2.95)),
            ("tamper", Value::Bool(false)),
            ("lqi", Value::Num(112.0)),
        ];
        let text = String::from_utf8(
            encode(
                1_767_225_600_000,
                &metrics,
                &[("device_temperature", json!(22)), ("power_outage_count", json!(3))],
            )
            .expect("encodable"),
        )
        .expect("utf8");
        let v: Json = serde_json::from_str(&text).expect("json");
        assert_eq!(
            v,
            json!({"contact": true, "battery": 87, "voltage": 2950, "tamper": false, "linkquality": 112,
                   "device_temperature": 22, "power_outage_count": 3, "last_seen": 1_767_225_600_000_i64})
        );
        assert_eq!(topic("door_a101"), "zigbee2mqtt/door_a101");
    }

    #[test]
    fn every_mapped_metric_round_trips_through_an_independent_decoder() {
        let metrics: Metrics = vec![
            ("smoke", Value::Bool(false)),
            ("gas_alarm", Value::Bool(false)),
            ("gas_lel", Value::Num(1.3)),
            ("co_alarm", Value::Bool(false)),
            ("co_ppm", Value::Num(4.0)),
            ("contact_open", Value::Bool(true)),
            ("presence", Value::Bool(true)),
            ("fall_state", Value::Text("suspected")),
            ("sos", Value::Bool(false)),
            ("battery_pct", Value::Num(64.0)),
            ("battery_low", Value::Bool(false)),
            ("battery_v", Value::Num(2.87)),
            ("tamper", Value::Bool(false)),
            ("test", Value::Bool(false)),
            ("fault", Value::Bool(false)),
            ("preheat", Value::Bool(false)),
            ("temperature", Value::Num(23.45)),
            ("lqi", Value::Num(96.0)),
        ];
        let p = payload(
            5,
            &metrics,
            &[("supervision_reports", json!(true)), ("illuminance", json!(120))],
        )
        .expect("encodable");
        let mut expected: Vec<(String, Json)> = metrics
            .iter()
            .map(|(n, v)| ((*n).to_owned(), crate::metrics::to_json(v)))
            .collect();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        let decoded = decode(&p);
        // Compare numerically: 2950 mV / 1000 must give back exactly 2.87's neighbour-free value.
        assert_eq!(decoded.len(), expected.len());
        for ((dn, dv), (en, ev)) in decoded.iter().zip(&expected) {
            assert_eq!(dn, en);
            match (dv.as_f64(), ev.as_f64()) {
                (Some(a), Some(b)) => assert_eq!(a, b, "{dn}"),
                _ => assert_eq!(dv, ev, "{dn}"),
            }
        }
    }

    #[test]
    fn refuses_what_z2m_cannot_say() {
        assert!(payload(1, &vec![("heart_rate", Value::Num(70.0))], &[]).is_err());
        assert!(payload(1, &vec![("fall_state", Value::Text("confirmed"))], &[]).is_err());
        assert!(!can_express("fall_state", &Value::Text("exit")));
        assert!(can_express("fall_state", &Value::Text("fall")));
    }
}
