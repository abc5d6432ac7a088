//! `nh-sim anonymize`: a capture with its identifiers replaced consistently (the same id becomes
//! the same pseudonym in every topic and payload), times shifted, and the mapping written apart
//! so that a registry can be rewritten to match.
//!
//! Identifiers are the registry's device ids and Zigbee friendly names when a registry is given,
//! the device level of canonical topics (`nh/{site}/{id}/...`), the friendly name of Zigbee2MQTT
//! topics (`zigbee2mqtt/{name}`), and the values of the JSON keys named by `fields` (IMEIs, vendor
//! device ids). They are replaced as whole tokens: `smoke-1` never rewrites part of `smoke-10`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use serde::Serialize;

use crate::mqtt::capture::{shift_times, Capture, Captured, TIME_KEYS};

/// JSON keys whose values identify a device unless told otherwise.
pub const DEFAULT_FIELDS: &[&str] = &[
    "imei",
    "IMEI",
    "deviceId",
    "device_id",
    "devEUI",
    "dev_eui",
    "devEui",
    "ieee_address",
    "ieeeAddr",
    "iccid",
    "imsi",
    "friendly_name",
];

#[derive(Debug, Clone)]
pub struct AnonymizeOptions {
    pub input: PathBuf,
    pub out: PathBuf,
    /// Where the mapping (original -> pseudonym) goes; keep it private.
    pub map_out: PathBuf,
    pub registry: Option<PathBuf>,
    pub registry_out: Option<PathBuf>,
    pub fields: Vec<String>,
    /// Added to every time (capture times and payload `ts`/`last_seen`/`timestamp`).
    pub shift_ms: i64,
    /// Put before every pseudonym (`dev-0001` becomes `{prefix}dev-0001`): a capture anonymized
    /// twice keeps the two sets apart.
    pub prefix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AnonymizeSummary {
    pub messages: usize,
    pub identifiers: usize,
    pub out: String,
}

/// Original -> pseudonym, in order of first sight.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Mapping {
    pub devices: BTreeMap<String, String>,
    pub zigbee_names: BTreeMap<String, String>,
    /// The registry's resident ids (the key to the site's residents file).
    pub residents: BTreeMap<String, String>,
    pub fields: BTreeMap<String, String>,
    /// Put before every pseudonym.
    #[serde(skip)]
    prefix: String,
}

impl Mapping {
    fn add(&mut self, which: Which, original: &str) {
        let prefix = &self.prefix;
        let (map, kind) = match which {
            Which::Device => (&mut self.devices, "dev-"),
            Which::Zigbee => (&mut self.zigbee_names, "zb-"),
            Which::Resident => (&mut self.residents, "res-"),
            Which::Field => (&mut self.fields, "id-"),
        };
        if original.is_empty() || map.contains_key(original) {
            return;
        }
        let pseudonym = if original.len() >= 6 && original.bytes().all(|b| b.is_ascii_digit()) {
            // Digits stay digits of the same length (an IMEI, a numeric devEUI): a vendor field
            // that is a JSON number must stay one. `9`, then a hash of prefix and original.
            let taken: std::collections::HashSet<&String> = map.values().collect();
            let modulus = 10u64.pow((original.len() as u32 - 1).min(18));
            let mut h = crate::rng::fnv1a(format!("{prefix}/{original}").as_bytes());
            loop {
                let p = format!("9{:0w$}", h % modulus, w = original.len() - 1);
                if p != original && !taken.contains(&p) {
                    break p;
                }
                h = h.wrapping_add(1);
            }
        } else {
            format!("{prefix}{kind}{:04}", map.len() + 1)
        };
        map.insert(original.to_owned(), pseudonym);
    }

    /// A registry id `head:tail` (a device prefix such as `imei:` before a vendor id): the tail
    /// is a field value with its own pseudonym, and the id keeps the head, so that the id the
    /// gateway builds from the payload (`head` + the field) matches the rewritten registry.
    fn add_device(&mut self, id: &str) {
        if self.devices.contains_key(id) {
            return;
        }
        match id.rsplit_once(':') {
            Some((head, tail)) if !tail.is_empty() => {
                self.add(Which::Field, tail);
                let p = format!("{head}:{}", self.fields[tail]);
                self.devices.insert(id.to_owned(), p);
            }
            _ => self.add(Which::Device, id),
        }
    }

    /// Every (original, pseudonym), longest original first.
    fn pairs(&self) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = self
            .devices
            .iter()
            .chain(&self.zigbee_names)
            .chain(&self.residents)
            .chain(&self.fields)
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect();
        all.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        all
    }
}

#[derive(Clone, Copy)]
enum Which {
    Device,
    Zigbee,
    Resident,
    Field,
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

/// `text` with every whole-token occurrence of each original replaced.
fn replace_tokens(text: &[u8], pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    'scan: while i < text.len() {
        if i == 0 || !is_id_byte(text[i - 1]) {
            for (from, to) in pairs {
                let f = from.as_bytes();
                let end = i + f.len();
                if end <= text.len() && &text[i..end] == f && (end == text.len() || !is_id_byte(text[end])) {
                    out.extend_from_slice(to.as_bytes());
                    i = end;
                    continue 'scan;
                }
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

/// Values of `fields` keys anywhere in a JSON payload.
fn field_values(v: &serde_json::Value, fields: &[String], out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if fields.iter().any(|f| f == k) {
                    match x {
                        serde_json::Value::String(s) => out.push(s.clone()),
                        serde_json::Value::Number(n) => out.push(n.to_string()),
                        _ => {}
                    }
                }
                field_values(x, fields, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| field_values(x, fields, out)),
        _ => {}
    }
}

/// The mapping for a capture (and registry).
pub fn mapping(
    capture: &Capture,
    registry: Option<&toml::Value>,
    fields: &[String],
    prefix: &str,
) -> anyhow::Result<Mapping> {
    let mut m = Mapping {
        prefix: prefix.to_owned(),
        ..Mapping::default()
    };
    if let Some(devices) = registry.and_then(|r| r.get("devices")).and_then(|d| d.as_array()) {
        for d in devices {
            if let Some(v) = d.get("id").and_then(|v| v.as_str()) {
                m.add_device(v);
            }
            for (key, which) in [("zigbee_name", Which::Zigbee), ("resident", Which::Resident)] {
                if let Some(v) = d.get(key).and_then(|v| v.as_str()) {
                    m.add(which, v);
                }
            }
        }
    }
    for msg in &capture.messages {
        let levels: Vec<&str> = msg.topic.split('/').collect();
        match levels.as_slice() {
            ["nh", _site, id, ..] if *id != "alerts" => m.add_device(id),
            ["zigbee2mqtt", name, ..] if *name != "bridge" => m.add(Which::Zigbee, name),
            _ => {}
        }
        let bytes = msg.bytes()?;
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            let mut found = Vec::new();
            field_values(&v, fields, &mut found);
            for f in found {
                if !m.devices.contains_key(&f) && !m.zigbee_names.contains_key(&f) {
                    m.add(Which::Field, &f);
                }
            }
        }
    }
    Ok(m)
}

/// What [`anonymize_json`] replaces and moves.
struct Rewrite<'a> {
    pairs: &'a [(String, String)],
    fields: &'a [String],
    m: &'a Mapping,
    shift_ms: i64,
}

/// A JSON value anonymized in place: string values have their identifiers replaced (keys are
/// never touched, so a friendly name such as `smoke` cannot rename the `smoke` key); a number
/// under an identifying key becomes its digit pseudonym; a number under a time key moves (ms
/// since the epoch, or seconds when it has 10 digits).
fn anonymize_json(v: &mut serde_json::Value, key: Option<&str>, r: &Rewrite<'_>) {
    use serde_json::Value as J;
    match v {
        J::Object(map) => {
            for (k, x) in map.iter_mut() {
                anonymize_json(x, Some(k.as_str()), r);
            }
        }
        J::Array(items) => items.iter_mut().for_each(|x| anonymize_json(x, key, r)),
        J::String(s) => {
            let out = replace_tokens(s.as_bytes(), r.pairs);
            if let Ok(t) = String::from_utf8(out) {
                *s = t;
            }
        }
        J::Number(n) => {
            let Some(key) = key else { return };
            if TIME_KEYS.contains(&key) {
                if let Some(t) = n.as_i64() {
                    let moved = if t >= 100_000_000_000 {
                        t.checked_add(r.shift_ms)
                    } else if t >= 1_000_000_000 {
                        t.checked_add(r.shift_ms / 1000)
                    } else {
                        None
                    };
                    if let Some(m) = moved {
                        *v = J::from(m);
                    }
                }
            } else if r.fields.iter().any(|f| f == key) {
                let text = n.to_string();
                let new = r.m.fields.get(&text).or_else(|| r.m.devices.get(&text));
                if let Some(num) = new.and_then(|p| p.parse::<u64>().ok()) {
                    *v = J::from(num);
                }
            }
        }
        J::Bool(_) | J::Null => {}
    }
}

/// One message anonymized: a JSON payload value by value, any other payload token by token.
fn anonymize_message(msg: &Captured, r: &Rewrite<'_>) -> anyhow::Result<Captured> {
    let topic = String::from_utf8(replace_tokens(msg.topic.as_bytes(), r.pairs))
        .map_err(|e| anyhow!("topic {}: {e}", msg.topic))?;
    let bytes = msg.bytes()?;
    let payload = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(mut v) if v.is_object() || v.is_array() => {
            anonymize_json(&mut v, None, r);
            serde_json::to_vec(&v)?
        }
        _ => replace_tokens(&shift_times(&bytes, r.shift_ms), r.pairs),
    };
    let t_ms = msg
        .t_ms
        .checked_add(r.shift_ms)
        .ok_or_else(|| anyhow!("t_ms {} cannot move by {} ms", msg.t_ms, r.shift_ms))?;
    Ok(Captured::new(t_ms, topic, msg.qos, msg.retain, &payload))
}

/// A registry with its ids, friendly names and resident ids replaced (comments are not kept).
pub fn rewrite_registry(registry: &toml::Value, m: &Mapping) -> toml::Value {
    let mut r = registry.clone();
    if let Some(devices) = r.get_mut("devices").and_then(|d| d.as_array_mut()) {
        for d in devices {
            let Some(t) = d.as_table_mut() else { continue };
            for (key, map) in [
                ("id", &m.devices),
                ("zigbee_name", &m.zigbee_names),
                ("resident", &m.residents),
            ] {
                if let Some(new) = t.get(key).and_then(|v| v.as_str()).and_then(|v| map.get(v)).cloned() {
                    t.insert(key.to_owned(), toml::Value::String(new));
                }
            }
        }
    }
    r
}

pub fn run_anonymize(opts: &AnonymizeOptions) -> anyhow::Result<AnonymizeSummary> {
    let capture = Capture::read(&opts.input)?;
    let registry: Option<toml::Value> = match &opts.registry {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            Some(toml::from_str(&text).with_context(|| format!("{} is not TOML", p.display()))?)
        }
        None => None,
    };
    let m = mapping(&capture, registry.as_ref(), &opts.fields, &opts.prefix)?;
    let pairs = m.pairs();
    let mut header = capture.header.clone();
    header.start_ms += opts.shift_ms;
    header.broker = "anonymized".to_owned();
    let mut text = serde_json::to_string(&header)?;
    text.push('\n');
    let rewrite = Rewrite {
        pairs: &pairs,
        fields: &opts.fields,
        m: &m,
        shift_ms: opts.shift_ms,
    };
    for msg in &capture.messages {
        text.push_str(&serde_json::to_string(&anonymize_message(msg, &rewrite)?)?);
        text.push('\n');
    }
    std::fs::write(&opts.out, text).with_context(|| format!("cannot write {}", opts.out.display()))?;
    std::fs::write(&opts.map_out, serde_json::to_string_pretty(&m)?)
        .with_context(|| format!("cannot write {}", opts.map_out.display()))?;
    if let (Some(r), Some(out)) = (&registry, &opts.registry_out) {
        let rewritten = rewrite_registry(r, &m);
        std::fs::write(out, toml::to_string(&rewritten)?).with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(AnonymizeSummary {
        messages: capture.messages.len(),
        identifiers: pairs.len(),
        out: opts.out.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_replaced_whole_and_longest_first() {
        let pairs = vec![
            ("smoke-10".to_owned(), "dev-0002".to_owned()),
            ("smoke-1".to_owned(), "dev-0001".to_owned()),
        ];
        let out = replace_tokens(b"nh/s/smoke-1/telemetry smoke-10 xsmoke-1 smoke-1x", &pairs);
        assert_eq!(out, b"nh/s/dev-0001/telemetry dev-0002 xsmoke-1 smoke-1x");
    }

    fn capture_of(payloads: &[(&str, &str)]) -> Capture {
        Capture {
            header: crate::mqtt::capture::Header {
                format: crate::mqtt::capture::FORMAT.into(),
                broker: "b".into(),
                filters: vec!["#".into()],
                start_ms: 1_700_000_000_000,
            },
            messages: payloads
                .iter()
                .map(|(t, p)| Captured::new(1_700_000_000_000, (*t).into(), 1, false, p.as_bytes()))
                .collect(),
        }
    }

    fn fields() -> Vec<String> {
        DEFAULT_FIELDS.iter().map(|f| (*f).to_owned()).collect()
    }

    #[test]
    fn json_payloads_keep_their_keys_and_types() {
        // A friendly name equal to a metric key, and a numeric devEUI.
        let c = capture_of(&[
            (
                "zigbee2mqtt/smoke",
                r#"{"smoke":true,"last_seen":1700000000500,"friendly_name":"smoke"}"#,
            ),
            (
                "vendor/up",
                r#"{"devEUI":860374051096202,"ts":1700000001,"seq":7,"note":"from smoke"}"#,
            ),
        ]);
        let m = mapping(&c, None, &fields(), "").expect("mapping");
        let pairs = m.pairs();
        let r = Rewrite {
            pairs: &pairs,
            fields: &fields(),
            m: &m,
            shift_ms: -1000,
        };
        let z = anonymize_message(&c.messages[0], &r).expect("z2m");
        assert_eq!(z.topic, "zigbee2mqtt/zb-0001");
        let zj: serde_json::Value = serde_json::from_slice(&z.bytes().expect("bytes")).expect("still JSON");
        assert_eq!(zj["smoke"], true, "the key survives: {zj}");
        assert_eq!(zj["friendly_name"], "zb-0001");
        assert_eq!(zj["last_seen"], 1_699_999_999_500i64);
        let v = anonymize_message(&c.messages[1], &r).expect("vendor");
        let vj: serde_json::Value = serde_json::from_slice(&v.bytes().expect("bytes")).expect("still JSON");
        let eui = vj["devEUI"].as_u64().expect("a number still");
        assert_ne!(eui, 860374051096202);
        assert_eq!(eui.to_string().len(), 15);
        assert_eq!(vj["ts"], 1_700_000_000i64, "seconds move by seconds");
        assert_eq!(vj["seq"], 7);
        assert_eq!(vj["note"], "from zb-0001");
    }

    #[test]
    fn a_prefixed_registry_id_keeps_its_prefix_and_matches_the_payload_field() {
        let c = capture_of(&[("ctwing/up", r#"{"IMEI":"860374051096202","metrics":{}}"#)]);
        let reg: toml::Value =
            toml::from_str("site = \"s\"\n[[devices]]\nid = \"imei:860374051096202\"\nclass = \"smoke_alarm\"\n")
                .expect("toml");
        let m = mapping(&c, Some(&reg), &fields(), "").expect("mapping");
        let field = m.fields["860374051096202"].clone();
        assert_eq!(m.devices["imei:860374051096202"], format!("imei:{field}"));
        let again = mapping(&c, Some(&reg), &fields(), "x").expect("mapping");
        assert_ne!(again.fields["860374051096202"], field, "another prefix, other digits");
    }

    #[test]
    fn epoch_times_move_and_small_numbers_do_not() {
        let out = shift_times(
            br#"{"ts":1700000000000,"seq":5,"last_seen": 1700000000500,"x":{"ts":12}}"#,
            1000,
        );
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            r#"{"ts":1700000001000,"seq":5,"last_seen": 1700000001500,"x":{"ts":12}}"#
        );
    }
}
