//! Self-supervision: the gateway watches its own links, stores and clock, and journals what it
//! finds as readings of gateway-internal devices (class `gateway`), on change only. The rules of
//! the shipped catalog turn them into alerts like any reading (S1, the serial links, is the
//! serial source's own).
//!
//! | device | metric | means | rule |
//! |---|---|---|---|
//! | `gateway:mqtt` | `mqtt_receiving` | false: no MQTT message for [`MQTT_SILENCE_MS`] (10 min) | S2, P2 |
//! | `gateway:influx` | `db_writes_ok` | false: rows waiting and the InfluxDB cursor stuck for [`DB_STALL_MS`] (5 min) | S3, P3 |
//! | `gateway:journal` | `journal_budget_high` | true: at or above [`BUDGET_HIGH_PCT`] % of the disk budget (false under [`BUDGET_LOW_PCT`] %) | S4, P3 |
//! | `gateway:journal` | `journal_dropping` | true: the budget dropped readings not yet in InfluxDB within [`DROP_QUIET_MS`] (5 min) | S5, P2, latching |
//! | `gateway:journal` | `journal_recovered` | true: a damaged journal was salvaged at this start (false at the next check) | S6, P2, latching |
//! | `gateway:mqtt` | `broker_log_overrun` | true: a subscriber of the embedded broker lost messages its filter's log had dropped, within [`DROP_QUIET_MS`] (5 min) | S10, P2, latching |
//! | `gateway:clock` | `clock_jumped` | true: the clock stepped more than [`CLOCK_JUMP_MS`] (2 min) against the monotonic clock between two checks (false at the next) | S7, P3, latching |
//!
//! Durations are on the gateway clock (the monotonic clock times the test clock's scale), so a
//! time-scaled run sees 10 minutes pass as fast as its rules do. The MQTT silence is supervised
//! only when the registry has a device outside the serial links that should report more often
//! than every 10 minutes (a site of slow battery devices is legitimately quiet; their own
//! silence is R17's). At start each flag resumes the value last journaled, and a flag that was
//! bad clears only on evidence (a message, the cursor moving), never because the gateway
//! restarted.
//!
//! The thresholds are constants: they describe the gateway, not the site. The records go to the
//! journal's priority input (a full bulk queue is one of the things being reported).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::journal::{Ingest, Store};
use crate::reading::{Record, Value};
use crate::telemetry::Telemetry;

/// No MQTT message for this long (gateway time) while devices should be talking: S2.
pub const MQTT_SILENCE_MS: i64 = 10 * 60_000;
/// Rows waiting and the InfluxDB cursor not moving for this long: S3.
pub const DB_STALL_MS: i64 = 5 * 60_000;
/// The journal at or above this share of its disk budget: S4 ...
pub const BUDGET_HIGH_PCT: u64 = 80;
/// ... until it is back under this one (hysteresis: housekeeping runs every 30 s).
pub const BUDGET_LOW_PCT: u64 = 75;
/// The drop flag stays up this long after the last drop (housekeeping runs every 30 s).
pub const DROP_QUIET_MS: i64 = 5 * 60_000;
/// A step of the clock larger than this (real time) between two checks is a jump: S7. Below
/// it are NTP slews and scheduling noise; above it, night windows and hold times are off.
pub const CLOCK_JUMP_MS: i64 = 2 * 60_000;
/// Real time between checks (divided by the test clock's scale, not under 100 ms).
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

pub const MQTT: &str = "gateway:mqtt";
pub const INFLUX: &str = "gateway:influx";
pub const JOURNAL: &str = "gateway:journal";
pub const CLOCK: &str = "gateway:clock";
/// The class of the gateway's own devices.
pub const CLASS: &str = crate::reading::GATEWAY_CLASS;

/// The flags, with the device they belong to and their healthy value.
const FLAGS: &[(&str, &str, bool)] = &[
    (MQTT, "mqtt_receiving", true),
    (MQTT, "broker_log_overrun", false),
    (INFLUX, "db_writes_ok", true),
    (JOURNAL, "journal_budget_high", false),
    (JOURNAL, "journal_dropping", false),
    (JOURNAL, "journal_recovered", false),
    (CLOCK, "clock_jumped", false),
];

/// One look at the counters and the clocks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Monotonic time, real ms from any origin.
    pub real_ms: i64,
    /// The gateway clock (ms since the epoch, possibly a test clock).
    pub wall_ms: i64,
    /// How many times faster than real time the gateway clock runs.
    pub scale: f64,
    pub messages_received: u64,
    pub mqtt_connected: bool,
    pub influx_cursor: i64,
    pub journal_last_id: i64,
    pub influx_failures: u64,
    pub journal_bytes: u64,
    pub journal_budget_bytes: u64,
    pub dropped_unforwarded: u64,
    pub recoveries: u64,
    pub broker_log_overruns: u64,
}

impl Sample {
    /// Reads the gateway's counters now.
    pub fn take(telemetry: &Telemetry, clock: &Clock, origin: Instant) -> Sample {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Sample {
            real_ms: origin.elapsed().as_millis() as i64,
            wall_ms: clock.now_ms(),
            scale: clock.scale(),
            messages_received: load(&telemetry.messages_received),
            mqtt_connected: load(&telemetry.mqtt_connected) == 1,
            influx_cursor: telemetry.influx_cursor.load(Ordering::Relaxed),
            journal_last_id: telemetry.journal_last_id.load(Ordering::Relaxed),
            influx_failures: telemetry.influx_failures_total(),
            journal_bytes: load(&telemetry.journal_bytes),
            journal_budget_bytes: load(&telemetry.journal_budget_bytes),
            dropped_unforwarded: load(&telemetry.journal_dropped_unforwarded),
            recoveries: load(&telemetry.journal_recoveries),
            broker_log_overruns: crate::sources::broker::log_overruns(),
        }
    }
}

/// A flag whose value changed: journal it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub device: &'static str,
    pub metric: &'static str,
    pub value: bool,
    /// What the detection saw, for the log line.
    pub detail: String,
}

/// The detection logic, fed with samples; pure (no clock, no I/O), so every condition is tested
/// with injected numbers.
#[derive(Debug)]
pub struct Detector {
    influx: bool,
    expect_mqtt: bool,
    /// Last journaled value of every flag.
    flags: BTreeMap<&'static str, bool>,
    prev: Option<Sample>,
    /// Gateway time since the first sample (monotonic x scale).
    t: i64,
    /// When an MQTT message was last seen to arrive; None: not since a silence that was
    /// already reported before this start.
    mqtt_progress_at: Option<i64>,
    /// When the InfluxDB cursor last moved or had nothing to do.
    db_progress_at: i64,
    budget_high: bool,
    last_drop_at: Option<i64>,
    last_overrun_at: Option<i64>,
    recoveries_seen: u64,
}

impl Detector {
    /// `prior`: the flags' last journaled values (metric, value), from the journal.
    pub fn new(influx: bool, expect_mqtt: bool, prior: &[(String, bool)]) -> Detector {
        let mut flags = BTreeMap::new();
        for (_, metric, healthy) in FLAGS {
            let last = prior.iter().find(|(m, _)| m == metric).map_or(*healthy, |(_, v)| *v);
            flags.insert(*metric, last);
        }
        Detector {
            influx,
            expect_mqtt,
            mqtt_progress_at: if flags.get("mqtt_receiving") == Some(&false) {
                None
            } else {
                Some(0)
            },
            db_progress_at: if flags.get("db_writes_ok") == Some(&false) {
                -DB_STALL_MS
            } else {
                0
            },
            budget_high: flags.get("journal_budget_high") == Some(&true),
            flags,
            prev: None,
            t: 0,
            last_drop_at: None,
            last_overrun_at: None,
            recoveries_seen: 0,
        }
    }

    /// Looks at one sample; returns the flags that changed.
    pub fn check(&mut self, s: &Sample) -> Vec<Change> {
        let scale = if s.scale > 0.0 { s.scale } else { 1.0 };
        let prev = self.prev.take();
        if let Some(p) = &prev {
            self.t += ((s.real_ms - p.real_ms) as f64 * scale) as i64;
        }
        let t = self.t;
        let p = prev.as_ref();
        let now = [
            self.mqtt_receiving(s, p, t),
            self.db_writes_ok(s, p, t),
            self.journal_budget_high(s),
            self.journal_dropping(s, p, t),
            self.broker_log_overrun(s, p, t),
            self.journal_recovered(s),
            clock_jumped(s, p, scale),
        ];
        self.prev = Some(s.clone());
        self.changed(now)
    }

    /// MQTT: silence while devices should be talking.
    fn mqtt_receiving(&mut self, s: &Sample, prev: Option<&Sample>, t: i64) -> Flag {
        let progressed = match prev {
            Some(p) => s.messages_received != p.messages_received,
            None => s.messages_received > 0,
        };
        if progressed {
            self.mqtt_progress_at = Some(t);
        }
        let armed = self.expect_mqtt || s.messages_received > 0;
        let silent_ms = self.mqtt_progress_at.map(|p| t - p);
        let receiving = !armed || silent_ms.is_some_and(|ms| ms < MQTT_SILENCE_MS);
        (
            "mqtt_receiving",
            receiving,
            format!(
                "silent_ms={} connected={} messages={}",
                silent_ms.map_or("since before start".to_owned(), |ms| ms.to_string()),
                s.mqtt_connected,
                s.messages_received
            ),
        )
    }

    /// InfluxDB: rows waiting and the cursor not moving.
    fn db_writes_ok(&mut self, s: &Sample, prev: Option<&Sample>, t: i64) -> Flag {
        let lag = s.journal_last_id - s.influx_cursor;
        let moved = prev.is_some_and(|p| p.influx_cursor != s.influx_cursor);
        if lag <= 0 || moved {
            self.db_progress_at = t;
        }
        let failures = prev.map_or(0, |p| s.influx_failures.saturating_sub(p.influx_failures));
        (
            "db_writes_ok",
            !self.influx || t - self.db_progress_at < DB_STALL_MS,
            format!(
                "lag_rows={lag} stalled_ms={} failures_since_last_check={failures} total_failures={}",
                t - self.db_progress_at,
                s.influx_failures
            ),
        )
    }

    /// Journal: share of the disk budget, with hysteresis.
    fn journal_budget_high(&mut self, s: &Sample) -> Flag {
        if s.journal_budget_bytes > 0 {
            let pct = (u128::from(s.journal_bytes) * 100 / u128::from(s.journal_budget_bytes)) as u64;
            if pct >= BUDGET_HIGH_PCT {
                self.budget_high = true;
            } else if pct < BUDGET_LOW_PCT {
                self.budget_high = false;
            }
        }
        (
            "journal_budget_high",
            self.budget_high,
            format!("bytes={} budget_bytes={}", s.journal_bytes, s.journal_budget_bytes),
        )
    }

    /// Journal: unforwarded rows dropped for the budget.
    fn journal_dropping(&mut self, s: &Sample, prev: Option<&Sample>, t: i64) -> Flag {
        let dropped_before = prev.map_or(0, |p| p.dropped_unforwarded);
        if s.dropped_unforwarded > dropped_before {
            self.last_drop_at = Some(t);
        }
        (
            "journal_dropping",
            self.last_drop_at.is_some_and(|d| t - d < DROP_QUIET_MS),
            format!("dropped_total={}", s.dropped_unforwarded),
        )
    }

    /// The embedded broker: a subscriber lost messages its log had dropped.
    fn broker_log_overrun(&mut self, s: &Sample, prev: Option<&Sample>, t: i64) -> Flag {
        let overruns_before = prev.map_or(0, |p| p.broker_log_overruns);
        if s.broker_log_overruns > overruns_before {
            self.last_overrun_at = Some(t);
        }
        (
            "broker_log_overrun",
            self.last_overrun_at.is_some_and(|o| t - o < DROP_QUIET_MS),
            format!("overruns_total={}", s.broker_log_overruns),
        )
    }

    /// Journal: salvaged at start (an event: up at one check, down at the next).
    fn journal_recovered(&mut self, s: &Sample) -> Flag {
        let recovered = s.recoveries > self.recoveries_seen;
        self.recoveries_seen = s.recoveries;
        ("journal_recovered", recovered, format!("recoveries={}", s.recoveries))
    }

    /// Records the flags' values now; returns those that differ from the last journaled ones.
    fn changed(&mut self, now: [Flag; 7]) -> Vec<Change> {
        let mut changes = Vec::new();
        for (metric, value, detail) in now {
            let last = self.flags.insert(metric, value);
            if last != Some(value) {
                let device = FLAGS
                    .iter()
                    .find(|(_, m, _)| *m == metric)
                    .map_or(CLOCK, |(d, _, _)| *d);
                changes.push(Change {
                    device,
                    metric,
                    value,
                    detail,
                });
            }
        }
        changes
    }
}

/// One flag's value at a check, with what the detection saw (for the log line).
type Flag = (&'static str, bool, String);

/// Clock: a step against the monotonic clock, in real time.
fn clock_jumped(s: &Sample, prev: Option<&Sample>, scale: f64) -> Flag {
    let step_ms = prev.map_or(0, |p| {
        let expected = (s.real_ms - p.real_ms) as f64 * scale;
        (((s.wall_ms - p.wall_ms) as f64 - expected) / scale) as i64
    });
    (
        "clock_jumped",
        step_ms.abs() > CLOCK_JUMP_MS,
        format!("step_ms={step_ms}"),
    )
}

/// The supervision task.
pub struct Supervisor {
    pub telemetry: Arc<Telemetry>,
    pub clock: Clock,
    /// The journal writer's priority input.
    pub journal: mpsc::Sender<Ingest>,
    /// To read the flags' last journaled values at start.
    pub journal_path: PathBuf,
    /// An `[influx]` section is configured.
    pub influx: bool,
    /// Some MQTT device should report more often than every [`MQTT_SILENCE_MS`].
    pub expect_mqtt: bool,
}

impl Supervisor {
    /// Runs until cancelled (it holds a journal sender: it stops with the sources).
    pub async fn run(self, shutdown: CancellationToken) {
        let path = self.journal_path.clone();
        let prior = tokio::task::spawn_blocking(move || last_flags(&path))
            .await
            .unwrap_or_default();
        let mut detector = Detector::new(self.influx, self.expect_mqtt, &prior);
        let origin = Instant::now();
        let period = CHECK_EVERY
            .div_f64(self.clock.scale().max(1.0))
            .max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        info!(
            period_ms = period.as_millis() as u64,
            influx = self.influx,
            mqtt = self.expect_mqtt,
            "self-supervision on"
        );
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let sample = Sample::take(&self.telemetry, &self.clock, origin);
            let changes = detector.check(&sample);
            if changes.is_empty() {
                continue;
            }
            let now = self.clock.now_ms();
            let mut records: Vec<Record> = Vec::new();
            for c in changes {
                if c.metric == "clock_jumped" && c.value {
                    self.telemetry.clock_jumps.fetch_add(1, Ordering::Relaxed);
                }
                let healthy = FLAGS.iter().any(|(_, m, h)| *m == c.metric && *h == c.value);
                if healthy {
                    info!(device = c.device, metric = c.metric, value = c.value, detail = %c.detail, "self-supervision: back to normal");
                } else {
                    warn!(device = c.device, metric = c.metric, value = c.value, detail = %c.detail, "self-supervision: fault");
                }
                match records.iter_mut().find(|r| r.device == c.device) {
                    Some(r) => {
                        r.metrics.insert(c.metric.to_owned(), Value::Bool(c.value));
                    }
                    None => records.push(Record::gateway_flag(c.device, c.metric, c.value, now)),
                }
            }
            let send = self.journal.send(Ingest { records, ack: None });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                sent = send => if sent.is_err() { return },
            }
        }
    }
}

/// The flags' last journaled values (none when the journal cannot tell).
fn last_flags(path: &std::path::Path) -> Vec<(String, bool)> {
    let devices = match Store::open_secondary(path).and_then(|s| s.devices()) {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "self-supervision: last flags unreadable; assuming healthy");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for d in devices.iter().filter(|d| FLAGS.iter().any(|(id, _, _)| *id == d.id)) {
        for (_, metric, _) in FLAGS.iter().filter(|(id, _, _)| *id == d.id) {
            if let Some(v) = d.metrics.get(*metric).and_then(serde_json::Value::as_bool) {
                out.push(((*metric).to_owned(), v));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    /// A healthy sample at real time `real_ms` (scale 1, wall clock in step).
    fn at(real_ms: i64) -> Sample {
        Sample {
            real_ms,
            wall_ms: 1_700_000_000_000 + real_ms,
            scale: 1.0,
            messages_received: real_ms as u64,
            mqtt_connected: true,
            influx_cursor: 100,
            journal_last_id: 100,
            influx_failures: 0,
            journal_bytes: 1_000,
            journal_budget_bytes: 10_000,
            dropped_unforwarded: 0,
            recoveries: 0,
            broker_log_overruns: 0,
        }
    }

    fn flags(changes: &[Change]) -> Vec<(&'static str, bool)> {
        changes.iter().map(|c| (c.metric, c.value)).collect()
    }

    fn healthy() -> Detector {
        Detector::new(true, true, &[])
    }

    #[test]
    fn a_healthy_gateway_journals_nothing() {
        let mut d = healthy();
        for i in 0..100 {
            assert!(d.check(&at(i * 10_000)).is_empty(), "check {i}");
        }
    }

    #[test]
    fn mqtt_silence_of_ten_minutes_lowers_mqtt_receiving_and_a_message_raises_it() {
        let mut d = healthy();
        let mut s = at(0);
        s.messages_received = 5;
        assert!(d.check(&s).is_empty());
        s.mqtt_connected = false;
        for m in 1..10 {
            s.real_ms = m * MIN;
            s.wall_ms += MIN;
            assert!(d.check(&s).is_empty(), "minute {m}");
        }
        s.real_ms = 10 * MIN;
        s.wall_ms += MIN;
        assert_eq!(flags(&d.check(&s)), vec![("mqtt_receiving", false)]);
        s.real_ms += MIN;
        s.wall_ms += MIN;
        assert!(d.check(&s).is_empty(), "on change only");
        s.messages_received += 1;
        s.real_ms += 10_000;
        s.wall_ms += 10_000;
        let c = d.check(&s);
        assert_eq!(flags(&c), vec![("mqtt_receiving", true)]);
        assert_eq!(c[0].device, MQTT);
    }

    #[test]
    fn mqtt_silence_is_not_supervised_when_no_device_should_talk_and_none_did() {
        let mut d = Detector::new(true, false, &[]);
        let mut s = at(0);
        s.messages_received = 0;
        for m in 0..30 {
            s.real_ms = m * MIN;
            s.wall_ms = 1_700_000_000_000 + m * MIN;
            assert!(d.check(&s).is_empty());
        }
    }

    #[test]
    fn a_silence_reported_before_a_restart_stays_until_a_message_arrives() {
        let mut d = Detector::new(true, true, &[("mqtt_receiving".to_owned(), false)]);
        let mut s = at(0);
        s.messages_received = 0;
        assert!(d.check(&s).is_empty(), "still silent: nothing to journal");
        s.real_ms = 5_000;
        s.wall_ms += 5_000;
        s.messages_received = 1;
        assert_eq!(flags(&d.check(&s)), vec![("mqtt_receiving", true)]);
    }

    #[test]
    fn mqtt_silence_counts_on_the_test_clock_scale() {
        let mut d = healthy();
        let mut s = at(0);
        s.scale = 60.0;
        assert!(d.check(&s).is_empty());
        // 10 s of real time = 10 min of gateway time at x60.
        s.real_ms = 10_000;
        s.wall_ms += 600_000;
        assert_eq!(flags(&d.check(&s)), vec![("mqtt_receiving", false)]);
    }

    #[test]
    fn influx_cursor_stuck_with_rows_waiting_for_five_minutes_lowers_db_writes_ok() {
        let mut d = healthy();
        let mut s = at(0);
        assert!(d.check(&s).is_empty());
        s.journal_last_id = 500; // rows waiting, the cursor stays at 100
        for m in 1..=4 {
            s.real_ms = m * MIN;
            s.wall_ms += MIN;
            s.messages_received += 1;
            s.influx_failures += 3;
            assert!(d.check(&s).is_empty(), "minute {m}");
        }
        s.real_ms = 5 * MIN;
        s.wall_ms += MIN;
        s.messages_received += 1;
        let c = d.check(&s);
        assert_eq!(flags(&c), vec![("db_writes_ok", false)]);
        assert!(c[0].detail.contains("failures_since_last_check=0"), "{}", c[0].detail);
        // The cursor moves: writes work again.
        s.influx_cursor = 200;
        s.real_ms += 10_000;
        s.wall_ms += 10_000;
        s.messages_received += 1;
        assert_eq!(flags(&d.check(&s)), vec![("db_writes_ok", true)]);
    }

    #[test]
    fn no_influx_section_never_reports_database_writes() {
        let mut d = Detector::new(false, true, &[]);
        let mut s = at(0);
        s.influx_cursor = 0;
        s.journal_last_id = 1_000_000;
        for m in 0..20 {
            s.real_ms = m * MIN;
            s.wall_ms = 1_700_000_000_000 + m * MIN;
            s.messages_received += 1;
            assert!(d.check(&s).is_empty());
        }
    }

    #[test]
    fn journal_budget_high_at_80_percent_with_hysteresis_to_75() {
        let mut d = healthy();
        let mut s = at(0);
        s.journal_bytes = 7_999;
        assert!(d.check(&s).is_empty());
        let mut step = |bytes: u64, d: &mut Detector| {
            s.journal_bytes = bytes;
            s.real_ms += 10_000;
            s.wall_ms += 10_000;
            s.messages_received += 1;
            flags(&d.check(&s))
        };
        assert_eq!(step(8_000, &mut d), vec![("journal_budget_high", true)]);
        assert!(step(7_600, &mut d).is_empty(), "between 75 and 80: unchanged");
        assert_eq!(step(7_499, &mut d), vec![("journal_budget_high", false)]);
    }

    #[test]
    fn unforwarded_drops_raise_journal_dropping_until_five_quiet_minutes() {
        let mut d = healthy();
        let mut s = at(0);
        assert!(d.check(&s).is_empty());
        s.dropped_unforwarded = 1_000;
        s.real_ms = 30_000;
        s.wall_ms += 30_000;
        s.messages_received += 1;
        assert_eq!(flags(&d.check(&s)), vec![("journal_dropping", true)]);
        s.real_ms = 30_000 + 5 * MIN - 1;
        s.wall_ms += 5 * MIN - 1;
        s.messages_received += 1;
        assert!(d.check(&s).is_empty());
        s.real_ms = 30_000 + 5 * MIN;
        s.wall_ms += 1;
        s.messages_received += 1;
        assert_eq!(flags(&d.check(&s)), vec![("journal_dropping", false)]);
    }

    #[test]
    fn broker_log_overruns_raise_broker_log_overrun_until_five_quiet_minutes() {
        let mut d = healthy();
        let mut s = at(0);
        assert!(d.check(&s).is_empty());
        s = Sample {
            broker_log_overruns: 2,
            ..at(10_000)
        };
        assert_eq!(flags(&d.check(&s)), vec![("broker_log_overrun", true)]);
        s = Sample {
            broker_log_overruns: 2,
            ..at(10_000 + DROP_QUIET_MS - 1_000)
        };
        assert!(d.check(&s).is_empty(), "still within the quiet time");
        s = Sample {
            broker_log_overruns: 2,
            ..at(10_000 + DROP_QUIET_MS)
        };
        assert_eq!(flags(&d.check(&s)), vec![("broker_log_overrun", false)]);
    }

    #[test]
    fn a_recovery_at_start_is_reported_once_then_lowered() {
        let mut d = healthy();
        let mut s = at(0);
        s.recoveries = 1;
        let c = d.check(&s);
        assert_eq!(flags(&c), vec![("journal_recovered", true)]);
        assert_eq!(c[0].device, JOURNAL);
        s.real_ms = 10_000;
        s.wall_ms += 10_000;
        s.messages_received += 1;
        assert_eq!(flags(&d.check(&s)), vec![("journal_recovered", false)]);
        s.real_ms = 20_000;
        s.wall_ms += 10_000;
        s.messages_received += 1;
        assert!(d.check(&s).is_empty());
    }

    #[test]
    fn a_clock_step_over_two_minutes_either_way_is_a_jump_and_slews_are_not() {
        let mut d = healthy();
        let mut s = at(0);
        assert!(d.check(&s).is_empty());
        // 10 s pass; the wall clock moves 10 s + 90 s (an NTP correction under the threshold).
        s.real_ms = 10_000;
        s.wall_ms += 100_000;
        s.messages_received += 1;
        assert!(d.check(&s).is_empty());
        // An RTC reset: the wall clock goes back an hour.
        s.real_ms = 20_000;
        s.wall_ms += 10_000 - 3_600_000;
        s.messages_received += 1;
        let c = d.check(&s);
        assert_eq!(flags(&c), vec![("clock_jumped", true)]);
        assert!(c[0].detail.contains("step_ms=-3600000"), "{}", c[0].detail);
        assert_eq!(c[0].device, CLOCK);
        s.real_ms = 30_000;
        s.wall_ms += 10_000;
        s.messages_received += 1;
        assert_eq!(flags(&d.check(&s)), vec![("clock_jumped", false)]);
        // Forward by 3 minutes.
        s.real_ms = 40_000;
        s.wall_ms += 10_000 + 180_000;
        s.messages_received += 1;
        assert_eq!(flags(&d.check(&s)), vec![("clock_jumped", true)]);
    }

    #[test]
    fn a_test_clock_running_fast_is_not_a_jump_but_a_system_step_under_it_is() {
        let mut d = healthy();
        let mut s = at(0);
        s.scale = 360.0;
        assert!(d.check(&s).is_empty());
        // 1 s real = 6 min of gateway time: the scale, not a jump.
        s.real_ms = 1_000;
        s.wall_ms += 360_000;
        s.messages_received += 1;
        assert!(d.check(&s).is_empty());
        // The system clock steps 3 min: the test clock moves 3 min x 360.
        s.real_ms = 2_000;
        s.wall_ms += 360_000 + 180_000 * 360;
        s.messages_received += 1;
        assert_eq!(flags(&d.check(&s)), vec![("clock_jumped", true)]);
    }

    #[test]
    fn records_are_gateway_class_readings_of_their_device() {
        let r = Record::gateway_flag(JOURNAL, "journal_recovered", true, 5);
        assert_eq!((r.class.as_str(), r.device.as_str(), r.ts), (CLASS, JOURNAL, 5));
        assert_eq!(r.metrics.get("journal_recovered"), Some(&Value::Bool(true)));
        for (_, metric, _) in FLAGS {
            let spec = crate::vocabulary::metric(metric).expect("flag in the vocabulary");
            assert_eq!(spec.kind, crate::vocabulary::Kind::Bool, "{metric}");
        }
    }
}
