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
//! The link reconnects on its own (see [`crate::mqtt::link`]): while the broker is away,
//! publishes queue up to the link's limits, then the sender waits and the schedule's lag shows as
//! `late` and `max_lag_ms`; the offered rate never changes. With `record_acked`, every message
//! the broker acknowledged gets a line `<device> <seq> <ts>` in that file (see [`AckRecord`]).
//!
//! This module holds the options, the schedule and the run; the readings the devices send are in
//! `readings.rs`, the acknowledged-messages file in `ack_record.rs`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use rumqttc::QoS;
use serde::Serialize;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::latency::Percentiles;
use crate::mqtt::fleet::{qos_of, DEFAULT_ACK_TIMEOUT};
use crate::mqtt::link::{client_id_or, Credentials, Link, LinkOptions, LinkStats, FIRST_CONNECT_TIMEOUT};
use crate::wire::{canonical, zigbee2mqtt, Format};

mod ack_record;
mod readings;

pub use ack_record::{ack_line, AckRecord, ACK_RECORD_FLUSH};
pub use readings::{LoadClass, Mix, PayloadSize};

use readings::{class_payload, speaks};

/// A send later than this after its slot counts as late: below it is timer and scheduler noise.
pub const LATE_AFTER: Duration = Duration::from_millis(10);

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

pub use crate::model::facility::load_device_id as device_id;

/// Device index and `seq` of message `i` (devices take turns; `seq` starts at 1).
pub fn assignment(i: u64, devices: usize) -> (usize, u64) {
    let d = devices.max(1) as u64;
    ((i % d) as usize, i / d + 1)
}

/// Runs the load; `shutdown` ends the send phase early.
pub async fn run_load(opts: LoadOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<LoadSummary> {
    let qos = check(&opts)?;
    // Created before connecting: a bad path fails at once, and the file exists (empty) even if
    // nothing is ever acknowledged.
    let record_file = opts.record_acked.as_deref().map(AckRecord::create).transpose()?;
    let mut link = connect(&opts).await?;
    let record = match (record_file, &opts.record_acked) {
        (Some(file), Some(path)) => {
            let acked = link.take_acked_tags().context("acknowledgement stream already taken")?;
            Some(AckRecord::start(file, path, opts.devices, acked))
        }
        _ => None,
    };
    let total = offered(opts.rate, opts.seconds);
    tracing::info!(broker = %opts.broker, rate = opts.rate, seconds = opts.seconds, offered = total, "load running");
    let phase = send_phase(&opts, &link, record.as_ref(), qos, total, shutdown).await?;
    let ack_started = Instant::now();
    if qos != QoS::AtMostOnce {
        link.wait_acked(phase.sent, opts.ack_timeout).await;
    }
    let ack_wait = ack_started.elapsed();
    let stats = link.stats_handle();
    // Closing ends the acknowledgement stream; acks that came after the wait count too, so the
    // count and the record file agree.
    let acked = link.close().await;
    let recorded = match record {
        Some(r) => Some(r.finish().await?),
        None => None,
    };
    let summary = summarize(
        &opts,
        qos,
        total,
        &phase,
        Acks {
            acked,
            ack_wait,
            recorded,
            stats: &stats,
        },
    );
    tracing::info!(
        sent = phase.sent,
        acked,
        late = phase.late,
        achieved_rate = summary.achieved_rate,
        "load done"
    );
    Ok(summary)
}

/// Refuses options a run cannot honour; the QoS to publish at.
fn check(opts: &LoadOptions) -> anyhow::Result<QoS> {
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
    if !crate::model::registry::is_valid_id(&opts.site) {
        anyhow::bail!("site `{}` is not a valid id: use [A-Za-z0-9._:-]+", opts.site);
    }
    if opts.record_acked.is_some() && qos != QoS::AtLeastOnce {
        anyhow::bail!("--record-acked needs --qos 1 (QoS 0 has no acknowledgements)");
    }
    Ok(qos)
}

async fn connect(opts: &LoadOptions) -> anyhow::Result<Link> {
    let client_id = client_id_or(opts.client_id.as_deref(), opts.credentials.as_ref(), || {
        format!("nh-sim-load-{}", std::process::id())
    });
    Link::connect(&LinkOptions {
        connect_timeout: opts.connect_timeout,
        credentials: opts.credentials.clone(),
        clean_session: opts.clean_session,
        ..LinkOptions::new(opts.broker.clone(), client_id)
    })
    .await
}

/// Where each load device publishes, in which format, and its last `ts` (kept strictly
/// increasing).
struct Devices {
    formats: Vec<Format>,
    topics: Vec<String>,
    last_ts: Vec<i64>,
}

impl Devices {
    fn new(opts: &LoadOptions) -> Devices {
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
        Devices {
            formats,
            topics,
            last_ts: vec![i64::MIN; opts.devices],
        }
    }
}

/// What the send phase did.
struct SendPhase {
    sent: u64,
    late: u64,
    max_lag: Duration,
    /// First slot to last send, plus one slot.
    duration: Duration,
    payload_bytes: u64,
}

/// Hands message after message to the link at its slot, until the schedule ends, `shutdown`
/// completes, or the link took nothing up to the schedule's end plus the ack timeout.
async fn send_phase(
    opts: &LoadOptions,
    link: &Link,
    record: Option<&AckRecord>,
    qos: QoS,
    total: u64,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<SendPhase> {
    let mut devices = Devices::new(opts);
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
        let ts = opts.clock.now().max(devices.last_ts[device].saturating_add(1));
        devices.last_ts[device] = ts;
        let body = class_payload(
            opts.mix.class_of(device),
            devices.formats[device],
            opts.payload,
            ts,
            seq,
        );
        payload_bytes += body.len() as u64;
        if let Some(r) = record {
            r.sending(i, ts);
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = link.publish_scheduled(&devices.topics[device], qos, body, i, due) => r?,
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
    Ok(SendPhase {
        sent,
        late,
        max_lag,
        duration,
        payload_bytes,
    })
}

/// What came back after the send phase.
struct Acks<'a> {
    acked: u64,
    ack_wait: Duration,
    /// Lines of the acknowledged-messages file, if there is one.
    recorded: Option<u64>,
    stats: &'a LinkStats,
}

fn summarize(opts: &LoadOptions, qos: QoS, total: u64, phase: &SendPhase, acks: Acks<'_>) -> LoadSummary {
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let stats = acks.stats;
    let sent = phase.sent;
    LoadSummary {
        offered: total,
        sent,
        acked: acks.acked,
        achieved_rate: if phase.duration.is_zero() {
            0.0
        } else {
            round3(sent as f64 / phase.duration.as_secs_f64())
        },
        late: phase.late,
        max_lag_ms: round3(phase.max_lag.as_secs_f64() * 1000.0),
        duration_s: round3(phase.duration.as_secs_f64()),
        ack_wait_s: round3(acks.ack_wait.as_secs_f64()),
        rate: opts.rate,
        devices: opts.devices,
        qos: opts.qos,
        format: opts.format.as_str(),
        complete: qos == QoS::AtMostOnce || acks.acked >= sent,
        connects: stats.connects.load(Ordering::Relaxed),
        connection_errors: stats.connection_errors.load(Ordering::Relaxed),
        republished: stats.republished.load(Ordering::Relaxed),
        recorded: acks.recorded,
        ack_mapping_errors: stats.mapping_errors.load(Ordering::Relaxed),
        payload: opts.payload.as_str(),
        payload_bytes: if sent == 0 {
            0.0
        } else {
            (phase.payload_bytes as f64 / sent as f64).round()
        },
        ack_latency: Percentiles::from_us(&stats.take_ack_latencies()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use tempfile::TempDir;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::test_broker::{wait_until, Outage, Script, ScriptedBroker, TestBroker};

    /// A temporary directory (removed on drop) and the acknowledged-messages file in it.
    fn ack_file() -> (TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("acked");
        (dir, file)
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
        let (_dir, file) = ack_file();
        let mut opts = LoadOptions::new(broker.addr(), 2_000.0, 1.0);
        opts.devices = 13;
        opts.record_acked = Some(file.clone());
        let s = run_load(opts, std::future::pending()).await.expect("load");
        assert!(s.complete, "{s:?}");
        assert_eq!((s.sent, s.acked, s.recorded), (2_000, 2_000, Some(2_000)));
        assert_eq!(s.ack_mapping_errors, 0);
        let lines = record_lines(&file);
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
        let (_dir, file) = ack_file();
        let mut opts = LoadOptions::new(broker.addr(), 5_000.0, 0.2);
        opts.devices = 7;
        opts.ack_timeout = Duration::from_millis(1_000);
        opts.record_acked = Some(file.clone());
        let s = run_load(opts, std::future::pending()).await.expect("load");
        assert_eq!(
            (s.sent, s.acked, s.recorded, s.complete),
            (1_000, 700, Some(700), false)
        );
        let lines = record_lines(&file);
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
        let (_dir, file) = ack_file();
        let mut opts = LoadOptions::new(outage.addr(), 2_000.0, 3.0);
        opts.devices = 50;
        opts.client_id = Some("outage-load".into());
        opts.record_acked = Some(file.clone());
        let run = tokio::spawn(run_load(opts, std::future::pending()));
        // Mid-run: 1,600 readings are 0.8 s of the schedule.
        wait_until("1,600 readings at the broker", Duration::from_secs(10), || {
            broker.received().len() >= 1_600
        })
        .await;
        outage.down();
        // The outage itself: long enough to show as lag.
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
        let lines = record_lines(&file);
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
        let (_dir, file) = ack_file();
        let mut opts = LoadOptions::new(outage.addr(), 2_000.0, 2.0);
        opts.devices = 9;
        opts.ack_timeout = Duration::from_millis(500);
        opts.record_acked = Some(file.clone());
        let started = Instant::now();
        let run = tokio::spawn(run_load(opts, std::future::pending()));
        // 1,000 readings are 0.5 s of the schedule.
        wait_until("1,000 readings at the broker", Duration::from_secs(10), || {
            broker.received().len() >= 1_000
        })
        .await;
        outage.down();
        let s = run.await.expect("join").expect("load");
        // Schedule end, plus the ack timeout twice (send phase, ack wait), plus the close grace.
        assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
        assert!(!s.complete, "{s:?}");
        assert!(s.sent < s.offered && s.acked < s.sent, "{s:?}");
        assert_eq!(s.recorded, Some(s.acked));
        assert!(s.max_lag_ms >= 900.0, "the stall shows as lag: {s:?}");
        let lines = record_lines(&file);
        assert_well_formed(&lines, 9, s.sent);
        assert_eq!(lines.len() as u64, s.acked);
        let received: BTreeSet<String> = broker.received().iter().map(|(t, p)| line_of(t, p)).collect();
        assert!(lines.iter().all(|l| received.contains(l)), "only what the broker took");
    }

    const MOSQUITTO: &str = "/usr/sbin/mosquitto";

    /// A Mosquitto with persistence on a port of its own, restartable on that port.
    struct Mosquitto {
        dir: TempDir,
        port: u16,
        child: Option<std::process::Child>,
    }

    impl Mosquitto {
        async fn start(name: &str) -> Mosquitto {
            let dir = tempfile::Builder::new().prefix(name).tempdir().expect("temp dir");
            // Mosquitto started as root drops to its own user, which must be able to write its
            // persistence file here.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
            }
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let conf = format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
                 autosave_interval 0\nmax_queued_messages 0\nmax_inflight_messages 1000\nlog_dest stderr\n",
                dir.path().display()
            );
            std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("conf");
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
                .open(self.dir.path().join("mosquitto.log"))
                .expect("log");
            let child = std::process::Command::new(MOSQUITTO)
                .arg("-c")
                .arg(self.dir.path().join("mosquitto.conf"))
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
            std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
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
        let (host, port) = crate::mqtt::link::parse_broker(broker).expect("addr");
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
        let (_dir, file) = ack_file();
        let mut opts = LoadOptions::new(mosquitto.addr(), 2_000.0, 5.0);
        opts.devices = 40;
        opts.site = site.into();
        opts.client_id = Some(format!("nh-sim-test-load-{}", std::process::id()));
        opts.clean_session = false;
        opts.record_acked = Some(file.clone());
        let run = tokio::spawn(run_load(opts, std::future::pending()));
        // Mid-run: 3,000 readings are 1.5 s of the schedule.
        wait_until("3,000 readings at the subscriber", Duration::from_secs(15), || {
            got.lock().map(|g| g.len()).unwrap_or(0) >= 3_000
        })
        .await;
        mosquitto.stop().await;
        // The broker stays away this long before it restarts.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        mosquitto.restart().await;
        let s = run.await.expect("join").expect("load");
        assert!(s.complete, "{s:?}\n{}", mosquitto.log());
        assert_eq!((s.sent, s.acked, s.recorded), (10_000, 10_000, Some(10_000)), "{s:?}");
        assert!(s.connects >= 2, "{s:?}");
        assert_eq!(s.ack_mapping_errors, 0);
        let lines = record_lines(&file);
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
