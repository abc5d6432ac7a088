//! Open-loop load: a fixed offered rate, message `i` due at `start + i / rate`, whatever the broker
//! or gateway does. A send never waits for an acknowledgement; when the sender falls behind it
//! sends the overdue messages at once (never one before its slot, so it catches up without a burst
//! beyond the schedule) and counts each as late. Measuring at a closed loop's pace would hide the
//! very slowdowns a load test is for (coordinated omission).
//!
//! Devices `load-0000`.. take messages in turn; each canonical reading carries `seq` and, as `ts`,
//! its send time (so the gateway side can measure latency), kept strictly increasing per device so
//! no two readings of a device share a timestamp.

use std::future::Future;
use std::time::Duration;

use rumqttc::QoS;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::fleet::{qos_of, DEFAULT_ACK_TIMEOUT};
use crate::link::{Credentials, Link, LinkOptions, FIRST_CONNECT_TIMEOUT};
use crate::wire::{canonical, zigbee2mqtt, Format};

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
    pub connects: u64,
    pub republished: u64,
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

fn payload(format: Format, ts: i64, seq: u64) -> Vec<u8> {
    match format {
        Format::Canonical => json!({"ts": ts, "seq": seq, "metrics": {"presence": true, "body_movement": seq % 101}})
            .to_string()
            .into_bytes(),
        Format::Zigbee2mqtt => json!({"occupancy": true, "linkquality": 30 + seq % 200, "last_seen": ts})
            .to_string()
            .into_bytes(),
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
    let client_id = opts
        .client_id
        .clone()
        .unwrap_or_else(|| format!("nh-sim-load-{}", std::process::id()));
    let mut link = Link::connect(&LinkOptions {
        connect_timeout: opts.connect_timeout,
        credentials: opts.credentials.clone(),
        ..LinkOptions::new(opts.broker.clone(), client_id)
    })
    .await?;
    let topics: Vec<String> = (0..opts.devices)
        .map(|n| match opts.format {
            Format::Canonical => canonical::topic(&opts.site, &device_id(n)),
            Format::Zigbee2mqtt => zigbee2mqtt::topic(&device_id(n)),
        })
        .collect();
    let mut last_ts = vec![i64::MIN; opts.devices];
    let total = offered(opts.rate, opts.seconds);
    tracing::info!(broker = %opts.broker, rate = opts.rate, seconds = opts.seconds, offered = total, "load running");

    let mut shutdown = std::pin::pin!(shutdown);
    let start = Instant::now();
    let (mut sent, mut late, mut max_lag) = (0u64, 0u64, Duration::ZERO);
    let mut last_send = start;
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
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = link.publish(&topics[device], qos, payload(opts.format, ts, seq)) => r?,
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
    let acked = match qos {
        QoS::AtMostOnce => 0,
        _ => link.wait_acked(sent, opts.ack_timeout).await,
    };
    let ack_wait = ack_started.elapsed();
    let connects = link.stats().connects.load(std::sync::atomic::Ordering::Relaxed);
    let republished = link.stats().republished.load(std::sync::atomic::Ordering::Relaxed);
    link.close().await;
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
        republished,
    };
    tracing::info!(sent, acked, late, achieved_rate = summary.achieved_rate, "load done");
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_broker::TestBroker;

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
}
