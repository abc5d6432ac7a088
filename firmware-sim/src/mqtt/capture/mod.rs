//! Captures of real MQTT traffic: `nh-sim record` subscribes to any broker and writes every
//! message raw; `nh-sim replay` publishes a capture again with its original spacing.
//!
//! File format (JSON lines): a header `{"format":"nh-capture/1","broker","filters","start_ms"}`,
//! then one line per message `{"t_ms","topic","qos","retain","payload"}` where `payload` is the
//! payload as text when it is UTF-8, else `payload_b64` holds it in base64 (standard alphabet).
//! `t_ms` is the receive time on the recording machine's clock, ms since the epoch.
//!
//! This module holds the format and reading it back; [`run_record`] (`record.rs`) and
//! [`run_replay`] (`replay.rs`) are the two MQTT runners over it.

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use rumqttc::QoS;
use serde::{Deserialize, Serialize};

mod record;
mod replay;

pub use record::{run_record, RecordOptions, RecordSummary};
pub use replay::{run_replay, ReplayOptions, ReplaySummary};

/// Times beyond this (ms since the epoch, the year 5138) are refused: arithmetic on them stays far
/// from overflow.
const MAX_TIME_MS: i64 = 100_000_000_000_000;

/// The header's format tag; a reader refuses any other.
pub const FORMAT: &str = "nh-capture/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub broker: String,
    pub filters: Vec<String>,
    pub start_ms: i64,
}

/// One captured message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Captured {
    pub t_ms: i64,
    pub topic: String,
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_b64: Option<String>,
}

impl Captured {
    pub fn new(t_ms: i64, topic: String, qos: u8, retain: bool, bytes: &[u8]) -> Captured {
        let (payload, payload_b64) = match std::str::from_utf8(bytes) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(bytes))),
        };
        Captured {
            t_ms,
            topic,
            qos,
            retain,
            payload,
            payload_b64,
        }
    }

    /// The payload bytes exactly as received.
    pub fn bytes(&self) -> anyhow::Result<Vec<u8>> {
        match (&self.payload, &self.payload_b64) {
            (Some(s), None) => Ok(s.as_bytes().to_vec()),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| anyhow!("payload_b64 of a message on {}: {e}", self.topic)),
            (None, None) => Ok(Vec::new()),
            (Some(_), Some(_)) => bail!("a message on {} has both payload and payload_b64", self.topic),
        }
    }
}

/// A capture read back: its header and messages in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Capture {
    pub header: Header,
    pub messages: Vec<Captured>,
}

impl Capture {
    pub fn read(path: &Path) -> anyhow::Result<Capture> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open capture {}", path.display()))?;
        let mut lines = BufReader::new(file).lines();
        let first = lines
            .next()
            .ok_or_else(|| anyhow!("{}: empty, no header line", path.display()))??;
        let header: Header =
            serde_json::from_str(&first).with_context(|| format!("{}:1: not a capture header", path.display()))?;
        if !(0..=MAX_TIME_MS).contains(&header.start_ms) {
            bail!("{}:1: start_ms {} is not a time", path.display(), header.start_ms);
        }
        if header.format != FORMAT {
            bail!(
                "{}:1: format `{}`, this nh-sim reads `{FORMAT}`",
                path.display(),
                header.format
            );
        }
        let mut messages = Vec::new();
        for (i, line) in lines.enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let m: Captured = serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not a captured message", path.display(), i + 2))?;
            m.bytes().with_context(|| format!("{}:{}", path.display(), i + 2))?;
            if !(0..=MAX_TIME_MS).contains(&m.t_ms) {
                bail!("{}:{}: t_ms {} is not a time", path.display(), i + 2, m.t_ms);
            }
            messages.push(m);
        }
        Ok(Capture { header, messages })
    }
}

fn qos_of(q: u8) -> anyhow::Result<QoS> {
    match q {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        _ => bail!("QoS {q} is not supported (0 or 1)"),
    }
}

/// JSON keys holding a time in ms since the epoch, shifted with the capture.
pub(crate) const TIME_KEYS: &[&str] = &["ts", "last_seen", "timestamp"];

/// `text` with the number after each `"<time key>":` moved by `shift_ms` (only values that look
/// like ms since the epoch: 12 digits or more).
pub fn shift_times(text: &[u8], shift_ms: i64) -> Vec<u8> {
    if shift_ms == 0 {
        return text.to_vec();
    }
    let mut out = Vec::with_capacity(text.len() + 8);
    let mut i = 0;
    'scan: while i < text.len() {
        for key in TIME_KEYS {
            let pat = format!("\"{key}\":");
            let p = pat.as_bytes();
            if text[i..].starts_with(p) {
                let mut j = i + p.len();
                while j < text.len() && text[j] == b' ' {
                    j += 1;
                }
                let digits = text[j..].iter().take_while(|b| b.is_ascii_digit()).count();
                if digits >= 12 {
                    if let Some(v) = std::str::from_utf8(&text[j..j + digits])
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                    {
                        if let Some(moved) = v.checked_add(shift_ms) {
                            out.extend_from_slice(&text[i..j]);
                            out.extend_from_slice(moved.to_string().as_bytes());
                            i = j + digits;
                            continue 'scan;
                        }
                    }
                }
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_stays_text_and_binary_goes_base64_both_ways() {
        let text = Captured::new(1, "a/b".into(), 1, false, br#"{"metrics":{"smoke":true}}"#);
        assert!(text.payload.is_some() && text.payload_b64.is_none());
        let raw = [0u8, 159, 146, 150, 255, b'\n'];
        let bin = Captured::new(2, "a/c".into(), 0, true, &raw);
        assert!(bin.payload.is_none());
        let line = serde_json::to_string(&bin).expect("json");
        let back: Captured = serde_json::from_str(&line).expect("parse");
        assert_eq!(back.bytes().expect("bytes"), raw);
        assert!(back.retain);
    }

    #[test]
    fn a_capture_of_another_format_or_a_bad_line_is_refused_with_its_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let f = dir.path().join("c.jsonl");
        std::fs::write(
            &f,
            "{\"format\":\"other/9\",\"broker\":\"b\",\"filters\":[],\"start_ms\":0}\n",
        )
        .expect("write");
        assert!(Capture::read(&f)
            .expect_err("format")
            .to_string()
            .contains("format `other/9`"));
        std::fs::write(
            &f,
            format!(
                "{{\"format\":\"{FORMAT}\",\"broker\":\"b\",\"filters\":[\"#\"],\"start_ms\":0}}\n{{\"t_ms\":1}}\n"
            ),
        )
        .expect("write");
        let e = format!("{:#}", Capture::read(&f).expect_err("bad line"));
        assert!(e.contains("c.jsonl:2"), "{e}");
    }
}
