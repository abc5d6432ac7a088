//! Open-loop load: a fixed offered rate, message `i` due at `start + i / rate`, whatever the broker
//! or gateway does. A send never waits for an acknowledgement; when the sender falls behind it
//! sends the overdue messages at once (never one before its slot, so it catches up without a burst
//! beyond the schedule) and counts each as late. Measuring at a closed loop's pace would hide the
//! very slowdowns a load test is for (coordinated omission).
//!
//! Devices `load-0000`.. take messages in turn; each canonical reading carries `seq` and, as `ts`,
//! its send time (so the gateway side can measure latency), kept strictly increasing per device so
//! no two readings of a device share a timestamp.
//!
//! The link reconnects on its own (see [`crate::link`]): while the broker is away, publishes queue
//! up to the link's limits, then the sender waits and the schedule's lag shows as `late` and
//! `max_lag_ms`; the offered rate never changes. With `record_acked`, every message the broker
//! acknowledged gets a line `<device> <seq> <ts>` in that file (see [`AckRecord`]).

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use rumqttc::QoS;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::fleet::{qos_of, DEFAULT_ACK_TIMEOUT};
use crate::latency::Percentiles;
use crate::link::{Credentials, Link, LinkOptions, FIRST_CONNECT_TIMEOUT};
use crate::wire::{canonical, zigbee2mqtt, Format};

/// A send later than this after its slot counts as late: below it is timer and scheduler noise.
pub const LATE_AFTER: Duration = Duration::from_millis(10);

/// The acknowledged-messages file is flushed at least this often, so a test can follow it while
/// the load runs (and loses at most this much of it if the process is killed).
pub const ACK_RECORD_FLUSH: Duration = Duration::from_secs(1);

/// Options of a load run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub broker: String,
    pub client_id: Option<String>,
    /// Offered messages per second.
    pub rate: f64,
    /// Length of the send phase in (real) seconds.
    pub seconds: f64,
    pub qos: u8,
    pub devices: usize,
    pub site: String,
    pub format: Format,
    /// Clock for the `ts` stamps (the system clock unless a test clock is given).
    pub clock: Clock,
    pub ack_timeout: Duration,
    pub connect_timeout: Duration,
    /// MQTT login, if the broker wants one.
    pub credentials: Option<Credentials>,
    /// MQTT clean session; `false` keeps the session on the broker (give a fixed `client_id`).
    pub clean_session: bool,
    /// Write one line `<device> <seq> <ts>` per acknowledged message to this file (QoS 1 only).
    pub record_acked: Option<PathBuf>,
    /// Size of each reading.
    pub payload: PayloadSize,
    /// Device classes of the load devices (device `n` has class [`Mix::class_of`]`(n)`).
    pub mix: Mix,
}

/// A device class the load generator can play, with readings of a quiet night (nothing any rule
/// of the catalog raises an alert on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadClass {
    PresenceRadar,
    Wearable,
    BedSensor,
    DoorContact,
    SmokeAlarm,
}

impl LoadClass {
    pub const ALL: [LoadClass; 5] = [
        LoadClass::PresenceRadar,
        LoadClass::Wearable,
        LoadClass::BedSensor,
        LoadClass::DoorContact,
        LoadClass::SmokeAlarm,
    ];

    /// The registry's class name.
    pub fn name(self) -> &'static str {
        match self {
            LoadClass::PresenceRadar => "presence_radar",
            LoadClass::Wearable => "wearable",
            LoadClass::BedSensor => "bed_sensor",
            LoadClass::DoorContact => "door_contact",
            LoadClass::SmokeAlarm => "smoke_alarm",
        }
    }

    fn parse(s: &str) -> Option<LoadClass> {
        LoadClass::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// Which classes the load devices have, by weight: `presence_radar=6,wearable=2,smoke_alarm=1`
/// makes 6 of every 9 devices presence radars, 2 wearables, 1 a smoke alarm (interleaved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// One entry per weight unit, in the order devices take them.
    slots: Vec<LoadClass>,
}

impl Default for Mix {
    /// Presence radars only.
    fn default() -> Self {
        Mix {
            slots: vec![LoadClass::PresenceRadar],
        }
    }
}

impl Mix {
    pub fn parse(spec: &str) -> Result<Mix, String> {
        let mut weights = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, w) = part.split_once('=').unwrap_or((part, "1"));
            let class = LoadClass::parse(name.trim()).ok_or_else(|| {
                let names: Vec<&str> = LoadClass::ALL.iter().map(|c| c.name()).collect();
                format!("unknown class `{name}`: one of {}", names.join(", "))
            })?;
            let w: u32 = w
                .trim()
                .parse()
                .ok()
                .filter(|w| (1..=1000).contains(w))
                .ok_or_else(|| format!("weight of `{name}` must be 1..=1000"))?;
            weights.push((class, w));
        }
        if weights.is_empty() {
            return Err("the mix names no class".into());
        }
        // Interleave: each round takes one unit of every class that still has some.
        let mut slots = Vec::new();
        let mut left: Vec<(LoadClass, u32)> = weights;
        while left.iter().any(|(_, w)| *w > 0) {
            for (c, w) in left.iter_mut().filter(|(_, w)| *w > 0) {
                slots.push(*c);
                *w -= 1;
            }
        }
        Ok(Mix { slots })
    }

    /// The class of load device `n`.
    pub fn class_of(&self, n: usize) -> LoadClass {
        self.slots[n % self.slots.len()]
    }
}

/// How much each load reading says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadSize {
    /// Two metrics (about 90 bytes canonical).
    Small,
    /// A radar's usual report, seven metrics (about 150 bytes canonical, the size of the
    /// issue's reference figures).
    Typical,
}

impl PayloadSize {
    pub fn parse(s: &str) -> Option<PayloadSize> {
        match s {
            "small" => Some(PayloadSize::Small),
            "typical" => Some(PayloadSize::Typical),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PayloadSize::Small => "small",
            PayloadSize::Typical => "typical",
        }
    }
}

impl LoadOptions {
    pub fn new(broker: impl Into<String>, rate: f64, seconds: f64) -> LoadOptions {
        LoadOptions {
            broker: broker.into(),
            client_id: None,
            rate,
            seconds,
            qos: 1,
            devices: 100,
            site: "nh-demo".into(),
            format: Format::Canonical,
            clock: Clock::system(),
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            connect_timeout: FIRST_CONNECT_TIMEOUT,
            credentials: None,
            clean_session: true,
            record_acked: None,
            payload: PayloadSize::Small,
            mix: Mix::default(),
        }
    }
}

/// What a load run achieved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadSummary {
    /// Messages the schedule offered (`rate x seconds`).
    pub offered: u64,
    pub sent: u64,
    pub acked: u64,
    /// Sent messages per second over the send phase.
    pub achieved_rate: f64,
    /// Sends later than `LATE_AFTER` after their slot.
    pub late: u64,
    /// Largest delay between a message's slot and its hand-over to the link (or giving up on it,
    /// when the link took nothing until the schedule's end plus the ack timeout).
    pub max_lag_ms: f64,
    /// Length of the send phase (first slot to last send, plus one slot).
    pub duration_s: f64,
    /// Time spent waiting for the last acknowledgements after the send phase.
    pub ack_wait_s: f64,
    pub rate: f64,
    pub devices: usize,
    pub qos: u8,
    pub format: &'static str,
    pub complete: bool,
    /// CONNACKs received: 1 plus the reconnects.
    pub connects: u64,
    pub connection_errors: u64,
    /// Messages handed back by a lost connection and published again.
    pub republished: u64,
    /// Lines written to the `record_acked` file (equal to `acked`), if one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<u64>,
    /// Link events that did not line up with the messages sent (0 unless something is wrong; the
    /// record file is not to be trusted otherwise).
    pub ack_mapping_errors: u64,
    /// `small` or `typical` (see [`PayloadSize`]).
    pub payload: &'static str,
    /// Mean payload size in bytes.
    pub payload_bytes: f64,
    /// QoS 1: from each message's slot in the schedule to its PubAck (so time the sender ran
    /// late counts); absent at QoS 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_latency: Option<Percentiles>,
}

/// Messages a schedule offers.
pub fn offered(rate: f64, seconds: f64) -> u64 {
    (rate * seconds).floor().max(0.0) as u64
}

/// When message `i` is due, after the start.
pub fn slot(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// Device name of load device `n`.
pub fn device_id(n: usize) -> String {
    format!("load-{n:04}")
}

/// Device index and `seq` of message `i` (devices take turns; `seq` starts at 1).
pub fn assignment(i: u64, devices: usize) -> (usize, u64) {
    let d = devices.max(1) as u64;
    ((i % d) as usize, i / d + 1)
}

#[cfg(test)]
fn payload(format: Format, ts: i64, seq: u64) -> Vec<u8> {
    payload_of(format, PayloadSize::Small, ts, seq)
}

/// One load reading of a device of `class`; presence radars as [`payload_of`]. Zigbee2MQTT has
/// door contacts and smoke alarms besides; wearables and bed sensors speak canonical only (a
/// Zigbee2MQTT run sends them canonical readings on their canonical topic).
fn class_payload(class: LoadClass, format: Format, size: PayloadSize, ts: i64, seq: u64) -> Vec<u8> {
    let battery = 60 + seq % 40;
    let typical = size == PayloadSize::Typical;
    let text = match (class, format) {
        (LoadClass::PresenceRadar, _) => return payload_of(format, size, ts, seq),
        (LoadClass::Wearable, _) if typical => format!(
            r#"{{"ts":{ts},"seq":{seq},"metrics":{{"heart_rate":{},"spo2":{},"skin_temp":{}.{},"steps":{},"worn":true,"battery_pct":{battery},"rssi":-{}}}}}"#,
            62 + seq % 20,
            95 + seq % 4,
            34 + seq % 2,
            seq % 10,
            seq % 9000,
            50 + seq % 40,
        ),
        (LoadClass::Wearable, _) => format!(
            r#"{{"ts":{ts},"seq":{seq},"metrics":{{"heart_rate":{},"battery_pct":{battery}}}}}"#,
            62 + seq % 20
        ),
        (LoadClass::BedSensor, _) => format!(
            r#"{{"ts":{ts},"seq":{seq},"metrics":{{"bed_occupied":true,"heart_rate":{},"resp_rate":{}}}}}"#,
            58 + seq % 20,
            12 + seq % 6
        ),
        (LoadClass::DoorContact, Format::Zigbee2mqtt) => format!(
            r#"{{"contact":true,"battery":{battery},"linkquality":{},"last_seen":{ts}}}"#,
            30 + seq % 200
        ),
        (LoadClass::DoorContact, Format::Canonical) => {
            format!(r#"{{"ts":{ts},"seq":{seq},"metrics":{{"contact_open":false,"battery_pct":{battery}}}}}"#)
        }
        (LoadClass::SmokeAlarm, Format::Zigbee2mqtt) => format!(
            r#"{{"smoke":false,"battery":{battery},"linkquality":{},"last_seen":{ts}}}"#,
            30 + seq % 200
        ),
        (LoadClass::SmokeAlarm, Format::Canonical) => {
            format!(r#"{{"ts":{ts},"seq":{seq},"metrics":{{"smoke":false,"fault":false,"battery_pct":{battery}}}}}"#)
        }
    };
    text.into_bytes()
}

/// Whether a device of `class` publishes Zigbee2MQTT readings in a Zigbee2MQTT run.
fn speaks(class: LoadClass, format: Format) -> bool {
    format == Format::Canonical
        || matches!(
            class,
            LoadClass::PresenceRadar | LoadClass::DoorContact | LoadClass::SmokeAlarm
        )
}

/// One load reading. Written with `format!`, not `json!`: at a few hundred thousand messages per
/// second the generator must not be what limits the run. `ts` is the send time (the stamp a
/// subscriber measures end-to-end latency from).
fn payload_of(format: Format, size: PayloadSize, ts: i64, seq: u64) -> Vec<u8> {
    const MOTION: [&str; 3] = ["none", "stationary", "moving"];
    const POSTURE: [&str; 4] = ["standing", "sitting", "lying", "on_bed"];
    let movement = seq % 101;
    match (format, size) {
        (Format::Canonical, PayloadSize::Small) => {
            format!(r#"{{"ts":{ts},"seq":{seq},"metrics":{{"presence":true,"body_movement":{movement}}}}}"#)
        }
        (Format::Canonical, PayloadSize::Typical) => format!(
            r#"{{"ts":{ts},"seq":{seq},"metrics":{{"presence":true,"motion_state":"{}","posture":"{}","body_movement":{movement},"heart_rate":{},"resp_rate":{},"rssi":-{}}}}}"#,
            MOTION[(seq % 3) as usize],
            POSTURE[(seq % 4) as usize],
            60 + seq % 30,
            12 + seq % 8,
            40 + seq % 40,
        ),
        (Format::Zigbee2mqtt, PayloadSize::Small) => {
            format!(r#"{{"occupancy":true,"linkquality":{},"last_seen":{ts}}}"#, 30 + seq % 200)
        }
        (Format::Zigbee2mqtt, PayloadSize::Typical) => format!(
            r#"{{"occupancy":true,"illuminance":{},"illuminance_lux":{},"battery":{},"voltage":{},"linkquality":{},"last_seen":{ts}}}"#,
            seq % 500,
            seq % 500,
            50 + seq % 50,
            2900 + seq % 100,
            30 + seq % 200,
        ),
    }
    .into_bytes()
}

/// The acknowledged-messages file: `<device> <seq> <ts>` per line, in PubAck order, written by a
/// task of its own as the acknowledgements come. A message acknowledged again after being
/// re-published would get a second line; a message never acknowledged gets none.
pub struct AckRecord {
    /// `ts` of each message sent and not acknowledged yet, by message index.
    sent: Arc<Mutex<HashMap<u64, i64>>>,
    task: JoinHandle<anyhow::Result<u64>>,
}

/// One line of the acknowledged-messages file (without the newline).
pub fn ack_line(device: usize, seq: u64, ts: i64) -> String {
    format!("{} {seq} {ts}", device_id(device))
}

impl AckRecord {
    /// Creates (truncates) the file at `path`.
    pub fn create(path: &Path) -> anyhow::Result<File> {
        File::create(path).with_context(|| format!("cannot create {}", path.display()))
    }

    /// Starts writing the tags coming out of `acked` to `file` (made by [`AckRecord::create`]).
    pub fn start(file: File, path: &Path, devices: usize, mut acked: mpsc::UnboundedReceiver<u64>) -> AckRecord {
        let sent: Arc<Mutex<HashMap<u64, i64>>> = Arc::default();
        let pending = sent.clone();
        let path = path.to_owned();
        let task = tokio::spawn(async move {
            let mut out = BufWriter::new(file);
            let mut lines = 0u64;
            let mut flush = tokio::time::interval(ACK_RECORD_FLUSH);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let context = || format!("writing {}", path.display());
            loop {
                tokio::select! {
                    tag = acked.recv() => {
                        let Some(i) = tag else { break };
                        let ts = pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&i);
                        let Some(ts) = ts else {
                            anyhow::bail!("acknowledgement for message {i}, which was not sent");
                        };
                        let (device, seq) = assignment(i, devices);
                        writeln!(out, "{}", ack_line(device, seq, ts)).with_context(context)?;
                        lines += 1;
                    }
                    _ = flush.tick() => out.flush().with_context(context)?,
                }
            }
            out.flush().with_context(context)?;
            Ok(lines)
        });
        AckRecord { sent, task }
    }

    /// Notes the `ts` of message `i` before it is published.
    pub fn sending(&self, i: u64, ts: i64) {
        self.sent.lock().unwrap_or_else(PoisonError::into_inner).insert(i, ts);
    }

    /// Waits for the acknowledgement stream to end (the link closed) and returns the lines written.
    pub async fn finish(self) -> anyhow::Result<u64> {
        self.task.await.context("the acknowledgement writer failed")?
    }
}

/// Runs the load; `shutdown` ends the send phase early.
pub async fn run_load(opts: LoadOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<LoadSummary> {
    let qos = qos_of(opts.qos)?;
    if !(opts.rate.is_finite() && opts.rate > 0.0) {
        anyhow::bail!("--rate must be a positive number of messages per second");
    }
    if !(opts.seconds.is_finite() && opts.seconds > 0.0) {
        anyhow::bail!("--seconds must be positive");
    }
    if opts.devices == 0 {
        anyhow::bail!("--devices must be at least 1");
    }
    if !crate::registry::is_valid_id(&opts.site) {
        anyhow::bail!("site `{}` is not a valid id: use [A-Za-z0-9._:-]+", opts.site);
    }
    if opts.record_acked.is_some() && qos != QoS::AtLeastOnce {
        anyhow::bail!("--record-acked needs --qos 1 (QoS 0 has no acknowledgements)");
    }
    // Created before connecting: a bad path fails at once, and the file exists (empty) even if
    // nothing is ever acknowledged.
    let record_file = opts.record_acked.as_deref().map(AckRecord::create).transpose()?;
    let client_id = opts
        .client_id
        .clone()
        .unwrap_or_else(|| format!("nh-sim-load-{}", std::process::id()));
    let mut link = Link::connect(&LinkOptions {
        connect_timeout: opts.connect_timeout,
        credentials: opts.credentials.clone(),
        clean_session: opts.clean_session,
        ..LinkOptions::new(opts.broker.clone(), client_id)
    })
    .await?;
    let record = match (record_file, &opts.record_acked) {
        (Some(file), Some(path)) => {
            let acked = link.take_acked_tags().context("acknowledgement stream already taken")?;
            Some(AckRecord::start(file, path, opts.devices, acked))
        }
        _ => None,
    };
    let formats: Vec<Format> = (0..opts.devices)
        .map(|n| {
            if speaks(opts.mix.class_of(n), opts.format) {
                opts.format
            } else {
                Format::Canonical
            }
        })
        .collect();
    let topics: Vec<String> = (0..opts.devices)
        .map(|n| match formats[n] {
            Format::Canonical => canonical::topic(&opts.site, &device_id(n)),
            Format::Zigbee2mqtt => zigbee2mqtt::topic(&device_id(n)),
        })
        .collect();
    let mut last_ts = vec![i64::MIN; opts.devices];
    let total = offered(opts.rate, opts.seconds);
    tracing::info!(broker = %opts.broker, rate = opts.rate, seconds = opts.seconds, offered = total, "load running");

    let mut shutdown = std::pin::pin!(shutdown);
    let start = Instant::now();
    // The sender may run late, but not for ever: with the broker gone for good the link's queues
    // fill and it takes nothing more, and the run must still end and report.
    let give_up = start + Duration::from_secs_f64(opts.seconds) + opts.ack_timeout;
    let (mut sent, mut late, mut max_lag) = (0u64, 0u64, Duration::ZERO);
    let mut last_send = start;
    let mut payload_bytes = 0u64;
    for i in 0..total {
        let due = start + slot(i, opts.rate);
        let now = Instant::now();
        if now < due {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = tokio::time::sleep_until(due) => {}
            }
        } else {
            let lag = now - due;
            max_lag = max_lag.max(lag);
            if lag > LATE_AFTER {
                late += 1;
            }
        }
        let (device, seq) = assignment(i, opts.devices);
        let ts = opts.clock.now().max(last_ts[device].saturating_add(1));
        last_ts[device] = ts;
        let body = class_payload(opts.mix.class_of(device), formats[device], opts.payload, ts, seq);
        payload_bytes += body.len() as u64;
        if let Some(r) = &record {
            r.sending(i, ts);
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = link.publish_scheduled(&topics[device], qos, body, i, due) => r?,
            _ = tokio::time::sleep_until(give_up) => {
                max_lag = max_lag.max(give_up - due);
                tracing::warn!(
                    unsent = total - sent,
                    "the link took nothing more up to the schedule's end plus the ack timeout: send phase over"
                );
                break;
            }
        }
        sent += 1;
        last_send = Instant::now();
    }
    let duration = if sent == 0 {
        Duration::ZERO
    } else {
        (last_send - start) + slot(1, opts.rate)
    };
    let ack_started = Instant::now();
    if qos != QoS::AtMostOnce {
        link.wait_acked(sent, opts.ack_timeout).await;
    }
    let ack_wait = ack_started.elapsed();
    let stats = link.stats_handle();
    // Closing ends the acknowledgement stream; acks that came after the wait count too, so the
    // count and the record file agree.
    let acked = link.close().await;
    let connects = stats.connects.load(Ordering::Relaxed);
    let connection_errors = stats.connection_errors.load(Ordering::Relaxed);
    let republished = stats.republished.load(Ordering::Relaxed);
    let ack_mapping_errors = stats.mapping_errors.load(Ordering::Relaxed);
    let ack_latency = Percentiles::from_us(&stats.take_ack_latencies());
    let recorded = match record {
        Some(r) => Some(r.finish().await?),
        None => None,
    };
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let summary = LoadSummary {
        offered: total,
        sent,
        acked,
        achieved_rate: if duration.is_zero() {
            0.0
        } else {
            round3(sent as f64 / duration.as_secs_f64())
        },
        late,
        max_lag_ms: round3(max_lag.as_secs_f64() * 1000.0),
        duration_s: round3(duration.as_secs_f64()),
        ack_wait_s: round3(ack_wait.as_secs_f64()),
        rate: opts.rate,
        devices: opts.devices,
        qos: opts.qos,
        format: opts.format.as_str(),
        complete: qos == QoS::AtMostOnce || acked >= sent,
        connects,
        connection_errors,
        republished,
        recorded,
        ack_mapping_errors,
        payload: opts.payload.as_str(),
        payload_bytes: if sent == 0 {
            0.0
        } else {
            (payload_bytes as f64 / sent as f64).round()
        },
        ack_latency,
    };
    tracing::info!(sent, acked, late, achieved_rate = summary.achieved_rate, "load done");
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::link::test_support::{Outage, Script, ScriptedBroker};
    use crate::test_broker::TestBroker;

    /// A file name of its own under the temp dir, removed on drop.
    struct TempPath(PathBuf);

    impl TempPath {
        fn new(name: &str) -> TempPath {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            TempPath(std::env::temp_dir().join(format!("nh-sim-{name}-{}-{nanos}", std::process::id())))
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The record line a received canonical message stands for.
    fn line_of(topic: &str, payload: &[u8]) -> String {
        let device = topic.split('/').nth(2).expect("canonical topic");
        let v: serde_json::Value = serde_json::from_slice(payload).expect("json");
        format!(
            "{device} {} {}",
            v["seq"].as_u64().expect("seq"),
            v["ts"].as_i64().expect("ts")
        )
    }

    fn record_lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("record file")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Every record line is well formed, names a message of the schedule (device and seq as
    /// assigned) and appears once.
    fn assert_well_formed(lines: &[String], devices: usize, sent: u64) {
        let mut seen = BTreeSet::new();
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 3, "{line}");
            let device: usize = f[0].strip_prefix("load-").expect("device").parse().expect("n");
            let seq: u64 = f[1].parse().expect("seq");
            let _ts: i64 = f[2].parse().expect("ts");
            assert!(device < devices && seq >= 1, "{line}");
            assert!(
                (seq - 1) * devices as u64 + (device as u64) < sent,
                "{line} was never sent"
            );
            assert!(seen.insert((device, seq)), "{line} twice");
        }
    }

    #[test]
    fn schedule_math() {
        assert_eq!(offered(1000.0, 2.5), 2500);
        assert_eq!(offered(3.0, 0.5), 1);
        assert_eq!(slot(0, 1000.0), Duration::ZERO);
        assert_eq!(slot(1500, 1000.0), Duration::from_millis(1500));
        assert_eq!(slot(1, 3.0), Duration::from_secs_f64(1.0 / 3.0));
        assert_eq!(assignment(0, 3), (0, 1));
        assert_eq!(assignment(2, 3), (2, 1));
        assert_eq!(assignment(3, 3), (0, 2));
        assert_eq!(assignment(7, 3), (1, 3));
        assert_eq!(device_id(7), "load-0007");
    }

    #[test]
    fn a_mix_interleaves_classes_by_weight() {
        let mix = Mix::parse("presence_radar=3, wearable=2,smoke_alarm").expect("mix");
        let classes: Vec<&str> = (0..12).map(|n| mix.class_of(n).name()).collect();
        assert_eq!(
            classes,
            [
                "presence_radar",
                "wearable",
                "smoke_alarm",
                "presence_radar",
                "wearable",
                "presence_radar",
                "presence_radar",
                "wearable",
                "smoke_alarm",
                "presence_radar",
                "wearable",
                "presence_radar"
            ]
        );
        assert!(Mix::parse("toaster=1").is_err());
        assert!(Mix::parse("wearable=0").is_err());
        assert!(Mix::parse("").is_err());
        assert_eq!(Mix::default().class_of(7), LoadClass::PresenceRadar);
    }

    #[test]
    fn every_class_payload_is_json_with_its_metrics() {
        for class in LoadClass::ALL {
            for size in [PayloadSize::Small, PayloadSize::Typical] {
                for format in [Format::Canonical, Format::Zigbee2mqtt] {
                    let f = if speaks(class, format) {
                        format
                    } else {
                        Format::Canonical
                    };
                    let body = class_payload(class, f, size, 1_700_000_000_000, 42);
                    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
                    match f {
                        Format::Canonical => {
                            assert_eq!(v["seq"], 42, "{class:?}");
                            assert!(v["metrics"].as_object().is_some_and(|m| !m.is_empty()), "{class:?}");
                        }
                        Format::Zigbee2mqtt => assert!(v["last_seen"].is_i64(), "{class:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn payloads_are_valid_wire_format() {
        let v: serde_json::Value = serde_json::from_slice(&payload(Format::Canonical, 5, 9)).expect("json");
        assert_eq!(v["seq"], 9);
        assert_eq!(v["ts"], 5);
        assert_eq!(v["metrics"]["presence"], true);
        let v: serde_json::Value = serde_json::from_slice(&payload(Format::Zigbee2mqtt, 5, 9)).expect("json");
        assert_eq!(v["last_seen"], 5);
        assert_eq!(v["occupancy"], true);
    }

    #[tokio::test]
    async fn offers_the_rate_and_counts_acks() {
        let broker = TestBroker::start().await;
        let mut opts = LoadOptions::new(broker.addr(), 2_000.0, 0.5);
        opts.devices = 7;
        let s = run_load(opts, std::future::pending()).await.expect("load");
        assert_eq!(s.offered, 1_000);
        assert_eq!(s.sent, 1_000);
        assert_eq!(s.acked, 1_000);
        assert!(s.complete);
        // Never ahead of the schedule: the send phase lasts at least the offered duration.
        assert!(s.duration_s >= 0.5, "{s:?}");
        assert!(s.achieved_rate <= 2_000.0 + 1e-6, "{s:?}");
        let received = broker.received();
        assert_eq!(received.len(), 1_000);
        // Per device: seq counts 1.., ts strictly increases.
        let mut last: std::collections::HashMap<String, (u64, i64)> = Default::default();
        for (topic, p) in &received {
            let v: serde_json::Value = serde_json::from_slice(p).expect("json");
            let (seq, ts) = (v["seq"].as_u64().expect("seq"), v["ts"].as_i64().expect("ts"));
            if let Some((s0, t0)) = last.get(topic) {
                assert_eq!(seq, s0 + 1);
                assert!(ts > *t0);
            } else {
                assert_eq!(seq, 1);
            }
            last.insert(topic.clone(), (seq, ts));
        }
        assert_eq!(last.len(), 7);
    }

    #[tokio::test]
    async fn record_lists_each_acknowledged_reading() {
        let broker = TestBroker::start().await;
        let file = TempPath::new("acked");
        let mut opts = LoadOptions::new(broker.addr(), 2_000.0, 1.0);
        opts.devices = 13;
        opts.record_acked = Some(file.0.clone());
        let s = run_load(opts, std::future::pending()).await.expect("load");
        assert!(s.complete, "{s:?}");
        assert_eq!((s.sent, s.acked, s.recorded), (2_000, 2_000, Some(2_000)));
        assert_eq!(s.ack_mapping_errors, 0);
        let lines = record_lines(&file.0);
        assert_well_formed(&lines, 13, s.sent);
        // The test broker keeps exactly what it acknowledged, in order: same lines, same order.
        let received: Vec<String> = broker.received().iter().map(|(t, p)| line_of(t, p)).collect();
        assert_eq!(lines, received);
    }

    #[tokio::test]
    async fn record_lists_only_what_was_acknowledged() {
        // Acks out of order, and none after the 700th: the run ends incomplete, and says so.
        let broker = ScriptedBroker::start(Script {
            reverse_batch: 5,
            ack_limit: 700,
            ..Script::PROMPT
        })
        .await;
        let file = TempPath::new("acked-partial");
        let mut opts = LoadOptions::new(broker.addr(), 5_000.0, 0.2);
        opts.devices = 7;
        opts.ack_timeout = Duration::from_millis(1_000);
        opts.record_acked = Some(file.0.clone());
        let s = run_load(opts, std::future::pending()).await.expect("load");
        assert_eq!(
            (s.sent, s.acked, s.recorded, s.complete),
            (1_000, 700, Some(700), false)
        );
        let lines = record_lines(&file.0);
        assert_well_formed(&lines, 7, s.sent);
        let acked: Vec<String> = broker.acked().iter().map(|(t, p)| line_of(t, p)).collect();
        assert_eq!(lines, acked, "exactly the acknowledged ones, in PubAck order");
    }

    #[tokio::test]
    async fn record_needs_qos_1() {
        let mut opts = LoadOptions::new("127.0.0.1:1", 10.0, 1.0);
        opts.qos = 0;
        opts.record_acked = Some(PathBuf::from("never-written"));
        let err = run_load(opts, std::future::pending()).await.expect_err("refused");
        assert!(err.to_string().contains("--qos 1"), "{err}");
    }

    #[tokio::test]
    async fn a_broker_outage_keeps_the_schedule_and_the_record_exact() {
        // The broker goes away for a second mid-run and comes back on the same port, without the
        // session: what was in flight or queued is published again.
        let broker = TestBroker::start().await;
        let mut outage = Outage::start(broker.addr()).await;
        let file = TempPath::new("acked-outage");
        let mut opts = LoadOptions::new(outage.addr(), 2_000.0, 3.0);
        opts.devices = 50;
        opts.client_id = Some("outage-load".into());
        opts.record_acked = Some(file.0.clone());
        let run = tokio::spawn(run_load(opts, std::future::pending()));
        tokio::time::sleep(Duration::from_millis(800)).await;
        outage.down();
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        outage.up().await;
        let s = run.await.expect("join").expect("load");
        assert!(s.complete, "{s:?}");
        assert_eq!(
            (s.offered, s.sent, s.acked, s.recorded),
            (6_000, 6_000, 6_000, Some(6_000))
        );
        assert!(s.connects >= 2 && s.connection_errors >= 1, "{s:?}");
        assert!(s.late > 0 && s.max_lag_ms >= 500.0, "the outage shows as lag: {s:?}");
        assert_eq!(s.ack_mapping_errors, 0);
        let lines = record_lines(&file.0);
        assert_well_formed(&lines, 50, s.sent);
        // The broker may hold a message twice (re-published after a lost ack); the record names
        // each acknowledged message once, and nothing the broker does not hold.
        let received: BTreeSet<String> = broker.received().iter().map(|(t, p)| line_of(t, p)).collect();
        let recorded: BTreeSet<String> = lines.iter().cloned().collect();
        assert_eq!(recorded, received);
    }

    #[tokio::test]
    async fn a_broker_gone_for_good_ends_the_run_with_an_honest_report() {
        let broker = TestBroker::start().await;
        let mut outage = Outage::start(broker.addr()).await;
        let file = TempPath::new("acked-gone");
        let mut opts = LoadOptions::new(outage.addr(), 2_000.0, 2.0);
        opts.devices = 9;
        opts.ack_timeout = Duration::from_millis(500);
        opts.record_acked = Some(file.0.clone());
        let started = Instant::now();
        let run = tokio::spawn(run_load(opts, std::future::pending()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        outage.down();
        let s = run.await.expect("join").expect("load");
        // Schedule end, plus the ack timeout twice (send phase, ack wait), plus the close grace.
        assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
        assert!(!s.complete, "{s:?}");
        assert!(s.sent < s.offered && s.acked < s.sent, "{s:?}");
        assert_eq!(s.recorded, Some(s.acked));
        assert!(s.max_lag_ms >= 900.0, "the stall shows as lag: {s:?}");
        let lines = record_lines(&file.0);
        assert_well_formed(&lines, 9, s.sent);
        assert_eq!(lines.len() as u64, s.acked);
        let received: BTreeSet<String> = broker.received().iter().map(|(t, p)| line_of(t, p)).collect();
        assert!(lines.iter().all(|l| received.contains(l)), "only what the broker took");
    }

    const MOSQUITTO: &str = "/usr/sbin/mosquitto";

    /// A Mosquitto with persistence on a port of its own, restartable on that port.
    struct Mosquitto {
        dir: TempPath,
        port: u16,
        child: Option<std::process::Child>,
    }

    impl Mosquitto {
        async fn start(name: &str) -> Mosquitto {
            let dir = TempPath::new(name);
            std::fs::create_dir_all(&dir.0).expect("dir");
            // Mosquitto started as root drops to its own user, which must be able to write its
            // persistence file here.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).expect("chmod");
            }
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let conf = format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
                 autosave_interval 0\nmax_queued_messages 0\nmax_inflight_messages 1000\nlog_dest stderr\n",
                dir.0.display()
            );
            std::fs::write(dir.0.join("mosquitto.conf"), conf).expect("conf");
            let mut m = Mosquitto { dir, port, child: None };
            m.restart().await;
            m
        }

        fn addr(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }

        async fn restart(&mut self) {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.0.join("mosquitto.log"))
                .expect("log");
            let child = std::process::Command::new(MOSQUITTO)
                .arg("-c")
                .arg(self.dir.0.join("mosquitto.conf"))
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start mosquitto");
            self.child = Some(child);
            for _ in 0..250 {
                if tokio::net::TcpStream::connect(self.addr()).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("mosquitto did not listen: {}", self.log());
        }

        /// SIGTERM (Mosquitto saves its persistence file) and wait for the exit.
        async fn stop(&mut self) {
            let Some(mut child) = self.child.take() else { return };
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            for _ in 0..500 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }

        fn log(&self) -> String {
            std::fs::read_to_string(self.dir.0.join("mosquitto.log")).unwrap_or_default()
        }
    }

    impl Drop for Mosquitto {
        fn drop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// (topic, payload) of the messages a subscriber got.
    type Inbox = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

    /// A persistent-session QoS 1 subscriber to the load's topics.
    async fn subscriber(broker: &str, site: &str) -> (Inbox, JoinHandle<()>) {
        let (host, port) = crate::link::parse_broker(broker).expect("addr");
        let mut o = rumqttc::MqttOptions::new(format!("nh-sim-test-sub-{}", std::process::id()), host, port);
        o.set_clean_session(false).set_inflight(1_000);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 100);
        let got: Inbox = Arc::default();
        let sink = got.clone();
        let filter = format!("nh/{site}/+/telemetry");
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) if !ack.session_present => {
                        let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        if let Ok(mut g) = sink.lock() {
                            g.push((p.topic.clone(), p.payload.to_vec()));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .expect("subscribed in time")
            .expect("subscribed");
        (got, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mosquitto_restart_mid_run_loses_no_acknowledged_reading() {
        if !Path::new(MOSQUITTO).exists() {
            eprintln!("skipped: {MOSQUITTO} is not installed");
            return;
        }
        let mut mosquitto = Mosquitto::start("mosquitto-restart").await;
        let site = "nh-restart";
        let (got, sub) = subscriber(&mosquitto.addr(), site).await;
        let file = TempPath::new("acked-mosquitto");
        let mut opts = LoadOptions::new(mosquitto.addr(), 2_000.0, 5.0);
        opts.devices = 40;
        opts.site = site.into();
        opts.client_id = Some(format!("nh-sim-test-load-{}", std::process::id()));
        opts.clean_session = false;
        opts.record_acked = Some(file.0.clone());
        let run = tokio::spawn(run_load(opts, std::future::pending()));
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        mosquitto.stop().await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        mosquitto.restart().await;
        let s = run.await.expect("join").expect("load");
        assert!(s.complete, "{s:?}\n{}", mosquitto.log());
        assert_eq!((s.sent, s.acked, s.recorded), (10_000, 10_000, Some(10_000)), "{s:?}");
        assert!(s.connects >= 2, "{s:?}");
        assert_eq!(s.ack_mapping_errors, 0);
        let lines = record_lines(&file.0);
        assert_well_formed(&lines, 40, s.sent);
        // Every acknowledged reading reaches the persistent subscriber, across the restart, with
        // the seq and ts recorded.
        let recorded: BTreeSet<String> = lines.into_iter().collect();
        let mut missing = recorded.len();
        for _ in 0..100 {
            let received: BTreeSet<String> = got
                .lock()
                .map(|g| g.iter().map(|(t, p)| line_of(t, p)).collect())
                .unwrap_or_default();
            missing = recorded.difference(&received).count();
            if missing == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sub.abort();
        assert_eq!(
            missing,
            0,
            "acknowledged readings the subscriber never got\n{}",
            mosquitto.log()
        );
    }
}
