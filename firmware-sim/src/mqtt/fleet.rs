//! Running a fleet against a broker: the library entry point behind `nh-sim run` and the gateway's
//! `demo` command.
//!
//! Messages are published when their virtual time comes (`ts` = scheduled virtual time), or as
//! fast as the broker takes them with `fast` (timestamps still on the virtual schedule, from the
//! clock's virtual start). At the end the run waits until every QoS 1 publish is acknowledged.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rumqttc::QoS;
use serde::Serialize;

use crate::clock::{system_now_ms, Clock};
use crate::model::registry::{self, Registry, RegistryErrors};
use crate::model::schedule::Stream;
use crate::mqtt::link::{client_id_or, Credentials, Link, LinkOptions, FIRST_CONNECT_TIMEOUT};
use crate::mqtt::record::Recorder;
use crate::wire::Format;

/// How long a run waits for outstanding PubAcks by default before reporting an incomplete run.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// A simulated fleet: the devices of one registry.
#[derive(Debug, Clone)]
pub struct Fleet {
    registry: Registry,
}

impl Fleet {
    pub fn new(registry: Registry) -> Fleet {
        Fleet { registry }
    }

    /// Builds a fleet from registry text (the TOML file's content).
    pub fn from_toml(text: &str) -> Result<Fleet, RegistryErrors> {
        registry::parse(text).map(Fleet::new)
    }

    /// Builds a fleet from a registry file.
    pub fn load(path: &Path) -> Result<Fleet, RegistryErrors> {
        registry::load(path).map(Fleet::new)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn len(&self) -> usize {
        self.registry.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.registry.devices.is_empty()
    }

    /// The deterministic message stream from `start_ms` for `seconds` of device time (or forever).
    pub fn messages(&self, seed: u64, start_ms: i64, seconds: Option<u64>, incidents: bool) -> Stream {
        Stream::new(&self.registry, seed, start_ms, seconds, incidents)
    }
}

/// How to run a fleet.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Broker address, `HOST:PORT`.
    pub broker: String,
    /// MQTT client id; default the username with `credentials`, else `nh-sim-<site>-<pid>`.
    pub client_id: Option<String>,
    /// 0 or 1.
    pub qos: u8,
    pub seed: u64,
    /// Virtual seconds of simulated time; `None` runs until shutdown (not allowed with `fast`).
    pub seconds: Option<u64>,
    pub clock: Clock,
    /// Publish without pacing; timestamps start at the clock's virtual start.
    pub fast: bool,
    /// Write one record line per published message to this file.
    pub record: Option<PathBuf>,
    /// How long to wait for outstanding PubAcks at the end.
    pub ack_timeout: Duration,
    /// How long to wait for the first CONNACK.
    pub connect_timeout: Duration,
    /// Mix rare realistic incidents (suspected falls, SOS presses) into the baseline.
    pub incidents: bool,
    /// MQTT login, if the broker wants one.
    pub credentials: Option<Credentials>,
}

impl RunOptions {
    /// Defaults: QoS 1, seed 1, forever, system clock, paced, no record, no incidents.
    pub fn new(broker: impl Into<String>) -> RunOptions {
        RunOptions {
            broker: broker.into(),
            client_id: None,
            qos: 1,
            seed: 1,
            seconds: None,
            clock: Clock::system(),
            fast: false,
            record: None,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            connect_timeout: FIRST_CONNECT_TIMEOUT,
            incidents: false,
            credentials: None,
        }
    }
}

/// What a run did (printed as one JSON line by `nh-sim run`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub published: u64,
    pub acked: u64,
    pub devices: usize,
    pub qos: u8,
    /// True when every publish was acknowledged (always true at QoS 0).
    pub complete: bool,
    pub canonical: u64,
    pub zigbee2mqtt: u64,
    pub seed: u64,
    /// Device time of the first and last published message.
    pub first_ts: Option<i64>,
    pub last_ts: Option<i64>,
    /// Virtual start of the schedule and its length.
    pub start_ms: i64,
    pub virtual_seconds: Option<u64>,
    /// True when the run ended because of the shutdown signal.
    pub interrupted: bool,
    pub elapsed_s: f64,
    pub connects: u64,
    pub republished: u64,
}

pub(crate) fn qos_of(qos: u8) -> anyhow::Result<QoS> {
    match qos {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        other => anyhow::bail!("QoS {other} is not supported (use 0 or 1)"),
    }
}

/// Publishes the fleet until `seconds` of virtual time are done or `shutdown` completes, then
/// waits for the broker's acknowledgements and reports.
pub async fn run_fleet(fleet: Fleet, opts: RunOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<Summary> {
    let qos = qos_of(opts.qos)?;
    if opts.fast && opts.seconds.is_none() {
        anyhow::bail!("a fast run needs a duration (--seconds)");
    }
    let started = Instant::now();
    let clock = opts.clock;
    // Paced: the schedule starts now on the virtual clock. Fast: at the clock's virtual start, so
    // a fixed --test-clock-start gives the very same messages, timestamps included.
    let start_ms = if opts.fast { clock.start_virtual_ms } else { clock.now() };
    let site = fleet.registry.site.clone();
    let client_id = client_id_or(opts.client_id.as_deref(), opts.credentials.as_ref(), || {
        format!("nh-sim-{site}-{}", std::process::id())
    });
    let mut link = Link::connect(&LinkOptions {
        connect_timeout: opts.connect_timeout,
        credentials: opts.credentials.clone(),
        ..LinkOptions::new(opts.broker.clone(), client_id)
    })
    .await?;
    let mut recorder = opts.record.as_deref().map(Recorder::create).transpose()?;
    tracing::info!(
        broker = %opts.broker, site = %site, devices = fleet.len(), seed = opts.seed, start_ms,
        seconds = ?opts.seconds, fast = opts.fast, scale = clock.scale, "fleet running"
    );

    let mut summary = Summary {
        published: 0,
        acked: 0,
        devices: fleet.len(),
        qos: opts.qos,
        complete: false,
        canonical: 0,
        zigbee2mqtt: 0,
        seed: opts.seed,
        first_ts: None,
        last_ts: None,
        start_ms,
        virtual_seconds: opts.seconds,
        interrupted: false,
        elapsed_s: 0.0,
        connects: 0,
        republished: 0,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let stream = fleet.messages(opts.seed, start_ms, opts.seconds, opts.incidents);
    for mut msg in stream {
        if !opts.fast {
            let wait_ms = clock.real_at(msg.ts) - system_now_ms();
            if wait_ms > 0 {
                tokio::select! {
                    biased;
                    _ = &mut shutdown => { summary.interrupted = true; break; }
                    _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
                }
            }
        }
        let payload = std::mem::take(&mut msg.payload);
        tokio::select! {
            biased;
            _ = &mut shutdown => { summary.interrupted = true; break; }
            sent = link.publish(&msg.topic, qos, payload) => sent?,
        }
        summary.published += 1;
        match msg.format {
            Format::Canonical => summary.canonical += 1,
            Format::Zigbee2mqtt => summary.zigbee2mqtt += 1,
        }
        summary.first_ts.get_or_insert(msg.ts);
        summary.last_ts = Some(msg.ts);
        if let Some(r) = recorder.as_mut() {
            r.write(&msg)?;
        }
    }
    if let Some(r) = recorder {
        r.finish()?;
    }

    summary.acked = match qos {
        QoS::AtMostOnce => 0,
        _ => link.wait_acked(summary.published, opts.ack_timeout).await,
    };
    summary.complete = qos == QoS::AtMostOnce || summary.acked >= summary.published;
    summary.connects = link.stats().connects.load(std::sync::atomic::Ordering::Relaxed);
    summary.republished = link.stats().republished.load(std::sync::atomic::Ordering::Relaxed);
    link.close().await;
    summary.elapsed_s = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    if !summary.complete {
        tracing::error!(
            published = summary.published,
            acked = summary.acked,
            "not every publish was acknowledged"
        );
    }
    tracing::info!(
        published = summary.published,
        acked = summary.acked,
        elapsed_s = summary.elapsed_s,
        "fleet done"
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_broker::{wait_until, TestBroker};

    const REGISTRY: &str = r#"
site = "t"
[[devices]]
id = "radar-1"
class = "fall_radar"
building = "A"
floor = "1"
room = "A-101"
interval_s = 10
[[devices]]
id = "smoke-1"
class = "smoke_alarm"
zigbee_name = "smoke_1"
building = "A"
floor = "1"
room = "A-101"
interval_s = 60
"#;

    fn opts(broker: String, record: Option<PathBuf>) -> RunOptions {
        RunOptions {
            seconds: Some(3_600),
            fast: true,
            seed: 11,
            record,
            clock: Clock {
                origin_real_ms: 0,
                start_virtual_ms: 1_767_225_600_000,
                scale: 1.0,
            },
            ..RunOptions::new(broker)
        }
    }

    #[tokio::test]
    async fn fast_run_publishes_the_schedule_records_it_and_gets_every_ack() {
        let broker = TestBroker::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let record = dir.path().join("record.jsonl");
        let fleet = Fleet::from_toml(REGISTRY).expect("registry");
        let summary = run_fleet(
            fleet.clone(),
            opts(broker.addr(), Some(record.clone())),
            std::future::pending(),
        )
        .await
        .expect("run");
        let expected: Vec<_> = fleet.messages(11, 1_767_225_600_000, Some(3_600), false).collect();
        assert_eq!(summary.published, expected.len() as u64);
        assert_eq!(summary.acked, summary.published);
        assert!(summary.complete && !summary.interrupted);
        assert_eq!(summary.zigbee2mqtt, 60);
        assert_eq!(summary.first_ts, expected.first().map(|m| m.ts));

        let received = broker.received();
        assert_eq!(received.len(), expected.len());
        for (got, want) in received.iter().zip(&expected) {
            assert_eq!(got.0, want.topic.as_ref());
            assert_eq!(got.1, want.payload);
        }
        let lines = std::fs::read_to_string(&record).expect("record");
        assert_eq!(lines.lines().count(), expected.len());
        let first: serde_json::Value = serde_json::from_str(lines.lines().next().expect("line")).expect("json");
        assert_eq!(first["ts"], serde_json::json!(expected[0].ts));
    }

    #[tokio::test]
    async fn shutdown_ends_an_endless_paced_run() {
        let broker = TestBroker::start().await;
        let fleet = Fleet::from_toml(REGISTRY).expect("registry");
        // 1000x: the radar's 10 s interval passes in 10 ms of real time.
        let clock = Clock {
            scale: 1000.0,
            ..Clock::system()
        };
        let run = RunOptions {
            clock,
            ..RunOptions::new(broker.addr())
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(run_fleet(fleet, run, async move {
            let _ = rx.await;
        }));
        // Wait for traffic to flow, by what the broker saw rather than by a fixed sleep.
        wait_until("5 readings at the broker", Duration::from_secs(10), || {
            broker.received().len() >= 5
        })
        .await;
        tx.send(()).expect("send shutdown");
        let summary = handle.await.expect("join").expect("run");
        assert!(summary.interrupted && summary.complete);
        assert!(summary.published >= 5);
        assert_eq!(summary.acked, summary.published);
    }

    #[tokio::test]
    async fn rejects_fast_forever_and_bad_qos() {
        let fleet = Fleet::from_toml(REGISTRY).expect("registry");
        let forever = RunOptions {
            fast: true,
            ..RunOptions::new("127.0.0.1:1")
        };
        assert!(run_fleet(fleet.clone(), forever, std::future::pending()).await.is_err());
        let qos2 = RunOptions {
            qos: 2,
            ..RunOptions::new("127.0.0.1:1")
        };
        assert!(run_fleet(fleet, qos2, std::future::pending()).await.is_err());
    }
}
