//! Captures of real MQTT traffic: `nh-sim record` subscribes to any broker and writes every
//! message raw; `nh-sim replay` publishes a capture again with its original spacing.
//!
//! File format (JSON lines): a header `{"format":"nh-capture/1","broker","filters","start_ms"}`,
//! then one line per message `{"t_ms","topic","qos","retain","payload"}` where `payload` is the
//! payload as text when it is UTF-8, else `payload_b64` holds it in base64 (standard alphabet).
//! `t_ms` is the receive time on the recording machine's clock, ms since the epoch.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::clock::Clock;
use crate::link::{parse_broker, Credentials, Link, LinkOptions, MAX_PACKET_BYTES};

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

/// What `record` subscribes to and when it stops.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub broker: String,
    pub filters: Vec<String>,
    /// Subscription QoS (what the broker delivers is at most this).
    pub qos: u8,
    pub out: PathBuf,
    /// Stop after this long (default: on the stop signal only).
    pub duration: Option<Duration>,
    /// Stop once this many messages were written.
    pub count: Option<u64>,
    pub client_id: Option<String>,
    pub credentials: Option<Credentials>,
    /// The clock of `t_ms` (a test clock: captures of a time-scaled run carry virtual times).
    pub clock: Clock,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordSummary {
    pub recorded: u64,
    pub binary: u64,
    /// Connections lost and made again (each followed by a new subscription).
    pub reconnects: u64,
    pub out: String,
}

/// Records until the duration, the count or `stop` ends it; calls `subscribed` once the broker
/// acknowledged the subscriptions.
pub async fn run_record(
    opts: RecordOptions,
    subscribed: impl FnOnce(),
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<RecordSummary> {
    if opts.filters.is_empty() {
        bail!("record needs at least one --filter");
    }
    let qos = qos_of(opts.qos)?;
    let (host, port) = parse_broker(&opts.broker)?;
    let id = opts
        .client_id
        .clone()
        .unwrap_or_else(|| format!("nh-sim-record-{}", std::process::id()));
    let mut mqtt = MqttOptions::new(id, host, port);
    mqtt.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    if let Some(c) = &opts.credentials {
        mqtt.set_credentials(c.username.clone(), c.password.clone());
    }
    let (client, mut eventloop) = AsyncClient::new(mqtt, 100);
    client
        .try_subscribe_many(opts.filters.iter().map(|f| SubscribeFilter::new(f.clone(), qos)))
        .map_err(|e| anyhow!("subscribe: {e}"))?;
    let file =
        std::fs::File::create(&opts.out).with_context(|| format!("cannot create capture {}", opts.out.display()))?;
    let mut out = BufWriter::new(file);
    let header = Header {
        format: FORMAT.to_owned(),
        broker: opts.broker.clone(),
        filters: opts.filters.clone(),
        start_ms: opts.clock.now(),
    };
    writeln!(out, "{}", serde_json::to_string(&header)?)?;
    let deadline = opts.duration.map(|d| Instant::now() + d);
    let mut subscribed = Some(subscribed);
    let (mut recorded, mut binary, mut reconnects) = (0u64, 0u64, 0u64);
    let mut connected_once = false;
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = &mut stop => break,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => break,
        };
        let event = match event {
            Ok(e) => e,
            // A recording of hours outlives a broker restart: reconnect (rumqttc does on the
            // next poll) and subscribe again. A broker never reached is an error at once.
            Err(e) if connected_once => {
                tracing::warn!(error = %e, broker = %opts.broker, "record: connection lost; reconnecting");
                reconnects += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = &mut stop => break,
                }
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("MQTT connection to {}", opts.broker)),
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                if connected_once {
                    client
                        .try_subscribe_many(opts.filters.iter().map(|f| SubscribeFilter::new(f.clone(), qos)))
                        .map_err(|e| anyhow!("subscribe again: {e}"))?;
                }
                connected_once = true;
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                let refused: Vec<&String> = ack
                    .return_codes
                    .iter()
                    .zip(&opts.filters)
                    .filter(|(c, _)| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    .map(|(_, f)| f)
                    .collect();
                if !refused.is_empty() {
                    bail!("{} refused the subscription to {refused:?}", opts.broker);
                }
                if let Some(f) = subscribed.take() {
                    out.flush()?;
                    f();
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                let line = Captured::new(opts.clock.now(), p.topic.clone(), p.qos as u8, p.retain, &p.payload);
                binary += u64::from(line.payload_b64.is_some());
                writeln!(out, "{}", serde_json::to_string(&line)?)?;
                // Line by line: a capture cut short (killed, disk full) keeps what came before.
                out.flush()?;
                recorded += 1;
                if opts.count.is_some_and(|c| recorded >= c) {
                    break;
                }
            }
            _ => {}
        }
    }
    out.flush()?;
    let _ = client.try_disconnect();
    Ok(RecordSummary {
        recorded,
        binary,
        reconnects,
        out: opts.out.display().to_string(),
    })
}

/// How `replay` paces a capture.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub broker: String,
    pub file: PathBuf,
    /// Original spacing divided by this; `None`: as fast as the broker takes them.
    pub speed: Option<f64>,
    /// Times through the capture (at least 1).
    pub loops: u32,
    pub client_id: Option<String>,
    pub credentials: Option<Credentials>,
    /// How long to wait for the last acknowledgements.
    pub ack_wait: Duration,
    /// A test clock: the capture's timeline is laid onto it from its current time on (paced at
    /// its scale, `ts`/`last_seen`/`timestamp` in payloads shifted by the same amount), so that
    /// a gateway on the same clock sees the capture's times.
    pub clock: Option<Clock>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplaySummary {
    pub sent: u64,
    /// QoS 1 messages the broker acknowledged.
    pub acked: u64,
    pub qos1: u64,
    /// Messages handed over more than 100 ms after their slot.
    pub late: u64,
    pub failed: u64,
    pub seconds: f64,
}

/// A message later than this after its slot counts as late.
const LATE_AFTER: Duration = Duration::from_millis(100);

/// Publishes the capture in file order (so each topic keeps its order) from one connection.
pub async fn run_replay(opts: ReplayOptions) -> anyhow::Result<ReplaySummary> {
    let capture = Capture::read(&opts.file)?;
    if let Some(s) = opts.speed {
        if !(s > 0.0 && s.is_finite()) {
            bail!("--speed must be a positive number");
        }
    }
    let mut link_opts = LinkOptions::new(
        opts.broker.clone(),
        opts.client_id
            .clone()
            .unwrap_or_else(|| format!("nh-sim-replay-{}", std::process::id())),
    );
    link_opts.credentials = opts.credentials.clone();
    let mut link = Link::connect(&link_opts).await?;
    let started = Instant::now();
    // The capture's timeline starts at its header's start (a quiet stretch before the first
    // message is kept), as in a scenario that replays it.
    let first_t = capture
        .messages
        .first()
        .map_or(capture.header.start_ms, |m| m.t_ms.min(capture.header.start_ms));
    let (speed, shift_ms) = match &opts.clock {
        Some(c) => (Some(c.scale), c.now() - first_t),
        None => (opts.speed, 0),
    };
    let span_ms = capture.messages.last().map_or(0, |m| m.t_ms) - first_t;
    let (mut sent, mut late, mut failed, mut qos1) = (0u64, 0u64, 0u64, 0u64);
    for round in 0..opts.loops.max(1) {
        for m in &capture.messages {
            if let Some(speed) = speed {
                let offset_ms = (i64::from(round)
                    .saturating_mul(span_ms.saturating_add(1))
                    .saturating_add(m.t_ms.saturating_sub(first_t)))
                .max(0) as f64
                    / speed;
                let due = started + Duration::from_secs_f64(offset_ms / 1000.0);
                let now = Instant::now();
                if now < due {
                    tokio::time::sleep_until(due).await;
                } else if now - due > LATE_AFTER {
                    late += 1;
                }
            }
            let qos = qos_of(m.qos.min(1))?;
            let mut payload = m.bytes()?;
            if shift_ms != 0 {
                let by = i64::from(round)
                    .saturating_mul(span_ms.saturating_add(1))
                    .saturating_add(shift_ms);
                payload = crate::anonymize::shift_times(&payload, by);
            }
            match link.publish_retained(&m.topic, qos, payload, m.retain).await {
                Ok(()) => {
                    sent += 1;
                    qos1 += u64::from(qos == QoS::AtLeastOnce);
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(topic = %m.topic, error = %e, "replay: publish failed");
                }
            }
        }
    }
    let acked = link.wait_acked(qos1, opts.ack_wait).await;
    let seconds = started.elapsed().as_secs_f64();
    link.close().await;
    Ok(ReplaySummary {
        sent,
        acked,
        qos1,
        late,
        failed,
        seconds,
    })
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
        let dir = std::env::temp_dir().join(format!("nh-capture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("c.jsonl");
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
        let _ = std::fs::remove_dir_all(&dir);
    }
}
