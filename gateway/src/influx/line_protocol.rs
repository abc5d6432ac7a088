//! InfluxDB line protocol for journal records (docs/contracts.md, "Time series"): measurement = device
//! class; tags = site, building, floor, room, zone, device (never a resident); fields = metrics,
//! numbers always as floats, booleans as booleans, an enum as its string plus `<metric>_code`;
//! timestamp in ms.

use std::fmt::Write as _;

use crate::reading::{Record, Value};
use crate::vocabulary;

/// Appends one line (with its trailing newline) for `record` to `out`.
pub fn write_line(out: &mut String, site: &str, record: &Record) {
    escape_into(out, &record.class, Escape::Measurement);
    // Tags in key order: InfluxDB sorts them anyway and sorted input is cheaper for it.
    let tags = [
        ("building", record.building.as_str()),
        ("device", record.device.as_str()),
        ("floor", record.floor.as_str()),
        ("room", record.room.as_str()),
        ("site", site),
        ("zone", record.zone.as_str()),
    ];
    for (k, v) in tags {
        // An empty tag value is not allowed in line protocol: the tag is left out.
        if !v.is_empty() {
            out.push(',');
            out.push_str(k);
            out.push('=');
            escape_into(out, v, Escape::Tag);
        }
    }
    let mut first = true;
    for (name, value) in &record.metrics {
        out.push(if first { ' ' } else { ',' });
        first = false;
        escape_into(out, name, Escape::Tag);
        out.push('=');
        match value {
            Value::Num(n) => write_float(out, *n),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Text(s) => {
                out.push('"');
                escape_into(out, s, Escape::StringField);
                out.push('"');
                if let Some(code) = vocabulary::enum_code(name, s) {
                    out.push(',');
                    escape_into(out, name, Escape::Tag);
                    out.push_str("_code=");
                    let _ = write!(out, "{code}");
                }
            }
        }
    }
    let _ = writeln!(out, " {}", record.ts);
}

/// Formats one record as a line without the newline (for quarantine and tests).
pub fn line(site: &str, record: &Record) -> String {
    let mut s = String::new();
    write_line(&mut s, site, record);
    s.pop();
    s
}

/// A float field: Rust's shortest round-trip form, which never uses an exponent and never
/// carries an `i` suffix, so the field stays a float even for whole numbers.
fn write_float(out: &mut String, n: f64) {
    if n.is_finite() {
        let _ = write!(out, "{n}");
    } else {
        // Not reachable for vocabulary-checked readings; a 0 keeps the line valid.
        out.push('0');
    }
}

#[derive(Clone, Copy)]
enum Escape {
    Measurement,
    Tag,
    StringField,
}

fn escape_into(out: &mut String, s: &str, kind: Escape) {
    for c in s.chars() {
        let escape = match kind {
            Escape::Measurement => matches!(c, ',' | ' '),
            Escape::Tag => matches!(c, ',' | '=' | ' '),
            Escape::StringField => matches!(c, '"' | '\\'),
        };
        match c {
            // Line breaks would end the line: they are never legal inside one.
            '\n' => out.push_str(if matches!(kind, Escape::StringField) {
                "\\n"
            } else {
                "\\ "
            }),
            '\r' => {}
            // A backslash before a separator would escape it; the registry refuses backslashes in
            // names, this keeps a line valid whatever reaches it.
            '\\' if !matches!(kind, Escape::StringField) => out.push('/'),
            _ => {
                if escape {
                    out.push('\\');
                }
                out.push(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn record(metrics: &[(&str, Value)]) -> Record {
        Record {
            device: "gas-1".into(),
            class: "gas_detector".into(),
            building: "A".into(),
            floor: "1".into(),
            room: "A 101,k".into(),
            zone: String::new(),
            ts: 1_700_000_000_123,
            ts_recv: 1_700_000_000_200,
            ts_replaced: false,
            seq: Some(4),
            metrics: metrics
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn formats_floats_bools_enums_and_escapes_tags() {
        let r = record(&[
            ("gas_lel", Value::Num(12.0)),
            ("preheat", Value::Bool(false)),
            ("alarm_level_dev", Value::Text("low".into())),
        ]);
        assert_eq!(
            line("nh-1", &r),
            "gas_detector,building=A,device=gas-1,floor=1,room=A\\ 101\\,k,site=nh-1 alarm_level_dev=\"low\",alarm_level_dev_code=1,gas_lel=12,preheat=false 1700000000123"
        );
    }

    #[test]
    fn string_fields_escape_quotes_and_backslashes() {
        let r = record(&[("fault_code", Value::Text("a\"b\\c\nd".into()))]);
        assert!(line("s", &r).contains("fault_code=\"a\\\"b\\\\c\\nd\" "));
    }

    #[test]
    fn every_line_has_measurement_fields_and_timestamp() {
        // A cheap property check over awkward strings: one line, three space-separated
        // sections outside escapes and quotes.
        let nasty = ["a b", "x,y", "k=v", "q\"", "back\\", "new\nline", "ünï", ""];
        for room in nasty {
            for text in nasty {
                let mut r = record(&[("fault_code", Value::Text(text.into())), ("gas_lel", Value::Num(0.5))]);
                r.room = room.into();
                let l = line("s", &r);
                assert!(!l.contains('\n'), "{l:?}");
                let mut sections = 1;
                let (mut escaped, mut quoted) = (false, false);
                for c in l.chars() {
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        // Quotes delimit strings only in the field set; in tags they are literal.
                        '"' if sections == 2 => quoted = !quoted,
                        ' ' if !quoted => sections += 1,
                        _ => {}
                    }
                }
                assert_eq!(sections, 3, "{l:?}");
            }
        }
    }
}
