//! The record file: one JSON line per published message with the semantic content the gateway is
//! expected to derive (canonical metric names and values, before any Zigbee2MQTT encoding, without
//! the keys the gateway ignores). End-to-end tests compare the database against it.
//!
//! Line: `{"device","topic","format":"canonical"|"zigbee2mqtt","ts","seq":<n>|null,"metrics":{..}}`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::metrics::to_json_object;
use crate::model::schedule::Message;

#[derive(Serialize)]
struct RecordLine<'a> {
    device: &'a str,
    topic: &'a str,
    format: &'a str,
    ts: i64,
    seq: Option<u64>,
    metrics: serde_json::Map<String, serde_json::Value>,
}

/// The record line of one message (without the newline).
pub fn record_line(msg: &Message) -> String {
    let line = RecordLine {
        device: &msg.device_id,
        topic: &msg.topic,
        format: msg.format.as_str(),
        ts: msg.ts,
        seq: msg.seq,
        metrics: to_json_object(&msg.metrics),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// Writes record lines to a file.
pub struct Recorder {
    out: BufWriter<File>,
}

impl Recorder {
    pub fn create(path: &Path) -> anyhow::Result<Recorder> {
        let file = File::create(path).with_context(|| format!("cannot create record file {}", path.display()))?;
        Ok(Recorder {
            out: BufWriter::new(file),
        })
    }

    pub fn write(&mut self, msg: &Message) -> anyhow::Result<()> {
        let line = record_line(msg);
        self.out
            .write_all(line.as_bytes())
            .and_then(|_| self.out.write_all(b"\n"))
            .context("writing record file")
    }

    pub fn finish(mut self) -> anyhow::Result<()> {
        self.out.flush().context("flushing record file")?;
        self.out.get_ref().sync_all().context("syncing record file")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Value;
    use crate::wire::Format;
    use serde_json::json;
    use std::sync::Arc;

    #[test]
    fn z2m_record_holds_canonical_metrics_not_wire_keys() {
        let msg = Message {
            device_index: 0,
            device_id: Arc::from("door-a-1-01"),
            topic: Arc::from("zigbee2mqtt/door_a101"),
            format: Format::Zigbee2mqtt,
            ts: 1_767_225_600_000,
            seq: None,
            metrics: vec![
                ("contact_open", Value::Bool(true)),
                ("battery_v", Value::Num(2.95)),
                ("lqi", Value::Num(90.0)),
            ],
            extras: vec![("power_outage_count", json!(2))],
            payload: b"{}".to_vec(),
        };
        let v: serde_json::Value = serde_json::from_str(&record_line(&msg)).expect("json");
        assert_eq!(
            v,
            json!({"device": "door-a-1-01", "topic": "zigbee2mqtt/door_a101", "format": "zigbee2mqtt",
                   "ts": 1_767_225_600_000_i64, "seq": null,
                   "metrics": {"contact_open": true, "battery_v": 2.95, "lqi": 90}})
        );
    }
}
