//! Normalization: one raw message in, journal records out. Decodes with the subscription's
//! decoder, attaches the registry (class and location), applies the unknown-device policy,
//! checks the device time and holds each device to a flood limit ([`FloodLimit`]) that never
//! applies to life-safety readings ([`crate::safety::exempt_from_flood_limit`]). Every rejection is counted by reason and
//! logged with a rate limit.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tracing::warn;

use crate::buttons::ButtonTable;
use crate::clock::Clock;
pub mod config;

use crate::decode::{Decoder, Limits};
use crate::reading::{DeviceKey, Record, Value};
use crate::registry::UnknownDevicePolicy;
use crate::registry::{Registry, UNREGISTERED_CLASS};
use crate::safety;
use crate::telemetry::Telemetry;
pub use config::DecodeConfig;

/// Log lines per rejection reason per minute; the counters see every one.
const LOGS_PER_MINUTE: u32 = 10;

/// 100 readings/s sustained per device. Real devices report far below it (an MR60FDA1 radar at
/// 1 Hz, a wearable a few per second, a Modbus detector at its poll rate of 1-2 Hz), and the load
/// generators stay below it too: `nh-bench` runs 1000 devices at up to 40,000 msg/s (40/s each)
/// and docs/simulator.md's `nh-sim load --rate 5000` spreads over 100 devices (50/s each). At this rate
/// one runaway device takes at most ~0.5 % of the gateway's ~20,000 readings/s.
pub const DEFAULT_MAX_DEVICE_RATE_PER_S: f64 = 100.0;
/// 200 readings at once: two seconds at the full rate, room for a device that flushes a small
/// buffer after a radio dropout. Longer backlogs carry device times, which refill the bucket
/// (see [`FloodLimit`]).
pub const DEFAULT_DEVICE_BURST: u32 = 200;
/// Buckets kept for devices missing from the registry (registered devices always have one:
/// the registry bounds them). ~100 bytes each; beyond this, buckets that have refilled are
/// evicted, and while none has, new unregistered devices share one bucket.
const MAX_UNREGISTERED_BUCKETS: usize = 4096;
/// Least time between two sweeps of a full table, so a spray of new device ids costs one scan
/// per second rather than one per message.
const SWEEP_EVERY_MS: i64 = 1000;

/// The per-device flood limit on MQTT messages: a token bucket per device, `rate_per_s`
/// readings per second sustained with bursts of `burst`. A reading over it is dropped and
/// counted as `flood`, unless [`safety::exempt_from_flood_limit`] says it is life-safety, which passes always
/// (taking a token if one is left).
///
/// The bucket refills with whichever advanced more since the device's last reading: the
/// receive time, or the reading's time (its device time when the gateway accepted it as sane,
/// else the receive time). So a backlog that a persistent broker delivers after an outage, or
/// a store-and-forward device replaying its history, passes at the pace it was measured at,
/// while a device looping on the same or no timestamp is held to the rate. Device time counts
/// only forwards and only within `decode.max_past_s`, which bounds what a device forging times
/// could gain; keeping forgers off the broker is the broker's ACL's job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloodLimit {
    /// Readings per second sustained per device; 0 turns the limit off.
    pub rate_per_s: f64,
    /// Readings a device may send at once above the rate (the bucket's size).
    pub burst: u32,
}

impl Default for FloodLimit {
    fn default() -> Self {
        FloodLimit {
            rate_per_s: DEFAULT_MAX_DEVICE_RATE_PER_S,
            burst: DEFAULT_DEVICE_BURST,
        }
    }
}

impl From<&DecodeConfig> for FloodLimit {
    fn from(c: &DecodeConfig) -> Self {
        FloodLimit {
            rate_per_s: c.max_device_rate_per_s,
            burst: c.device_burst,
        }
    }
}

impl FloodLimit {
    fn enabled(&self) -> bool {
        self.rate_per_s > 0.0 && self.rate_per_s.is_finite()
    }

    fn per_ms(&self) -> f64 {
        self.rate_per_s / 1000.0
    }

    fn size(&self) -> f64 {
        f64::from(self.burst.max(1))
    }
}

/// One device's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// Latest receive time and latest reading time seen (both only move forwards).
    recv_ms: i64,
    reading_ms: i64,
}

impl Bucket {
    fn full(limit: &FloodLimit, recv_ms: i64, reading_ms: i64) -> Self {
        Bucket {
            tokens: limit.size(),
            recv_ms,
            reading_ms,
        }
    }

    fn refill(&mut self, limit: &FloodLimit, recv_ms: i64, reading_ms: i64) {
        let elapsed = (recv_ms - self.recv_ms).max(reading_ms - self.reading_ms).max(0);
        self.tokens = (self.tokens + elapsed as f64 * limit.per_ms()).min(limit.size());
        self.recv_ms = self.recv_ms.max(recv_ms);
        self.reading_ms = self.reading_ms.max(reading_ms);
    }

    /// Takes a token; `exempt` readings pass without one.
    fn take(&mut self, exempt: bool) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            exempt
        }
    }

    /// Whether the bucket would be full again at `now_ms`: forgetting it then loses nothing.
    fn refilled(&self, limit: &FloodLimit, now_ms: i64) -> bool {
        self.tokens + (now_ms - self.recv_ms).max(0) as f64 * limit.per_ms() >= limit.size()
    }
}

/// Counters of the bucket table (see [`Normalizer::flood_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FloodStats {
    /// Buckets held now (registered and unregistered devices).
    pub buckets: usize,
    /// Buckets of unregistered devices forgotten after they refilled, to make room.
    pub evicted: u64,
    /// Readings of unregistered devices that found the table full and used the shared bucket.
    pub shared: u64,
}

/// The buckets: registered devices each have one (the registry bounds them); unregistered ids,
/// which anyone on the broker can invent, share a table of at most [`MAX_UNREGISTERED_BUCKETS`]
/// and, when it is full of devices still limited, one shared bucket.
#[derive(Debug)]
struct FloodTable {
    limit: FloodLimit,
    registered: HashMap<String, Bucket>,
    unregistered: HashMap<String, Bucket>,
    max_unregistered: usize,
    shared: Option<Bucket>,
    next_sweep_ms: i64,
    stats: FloodStats,
}

/// What the table made of one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    Pass,
    Drop,
    /// Passed or dropped on the shared bucket of untracked unregistered devices.
    Shared(bool),
}

impl FloodTable {
    fn new(limit: FloodLimit, max_unregistered: usize) -> Self {
        FloodTable {
            limit,
            registered: HashMap::new(),
            unregistered: HashMap::new(),
            max_unregistered,
            shared: None,
            next_sweep_ms: i64::MIN,
            stats: FloodStats::default(),
        }
    }

    fn admit(&mut self, device: &str, registered: bool, exempt: bool, recv_ms: i64, reading_ms: i64) -> Admit {
        let limit = self.limit;
        if !limit.enabled() {
            return Admit::Pass;
        }
        let pass = |b: &mut Bucket| {
            b.refill(&limit, recv_ms, reading_ms);
            if b.take(exempt) {
                Admit::Pass
            } else {
                Admit::Drop
            }
        };
        let map = if registered {
            &mut self.registered
        } else {
            &mut self.unregistered
        };
        if let Some(b) = map.get_mut(device) {
            return pass(b);
        }
        if !registered && self.unregistered.len() >= self.max_unregistered {
            if recv_ms >= self.next_sweep_ms {
                self.next_sweep_ms = recv_ms.saturating_add(SWEEP_EVERY_MS);
                let before = self.unregistered.len();
                self.unregistered.retain(|_, b| !b.refilled(&limit, recv_ms));
                self.stats.evicted += (before - self.unregistered.len()) as u64;
            }
            if self.unregistered.len() >= self.max_unregistered {
                self.stats.shared += 1;
                let shared = self
                    .shared
                    .get_or_insert_with(|| Bucket::full(&limit, recv_ms, reading_ms));
                return Admit::Shared(pass(shared) == Admit::Pass);
            }
        }
        let map = if registered {
            &mut self.registered
        } else {
            &mut self.unregistered
        };
        let b = map
            .entry(device.to_owned())
            .or_insert_with(|| Bucket::full(&limit, recv_ms, reading_ms));
        pass(b)
    }

    fn stats(&self) -> FloodStats {
        FloodStats {
            buckets: self.registered.len() + self.unregistered.len(),
            ..self.stats
        }
    }
}

#[derive(Debug)]
pub struct Normalizer {
    pub registry: Arc<Registry>,
    pub unknown_devices: UnknownDevicePolicy,
    pub limits: Limits,
    pub max_future_ms: i64,
    pub max_past_ms: i64,
    pub clock: Clock,
    pub telemetry: Arc<Telemetry>,
    log_budget: Mutex<HashMap<&'static str, (i64, u32)>>,
    flood: Mutex<FloodTable>,
    buttons: ButtonTable,
}

impl Normalizer {
    pub fn new(
        registry: Arc<Registry>,
        unknown_devices: UnknownDevicePolicy,
        limits: Limits,
        max_future_ms: i64,
        max_past_ms: i64,
        clock: Clock,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Normalizer {
            registry,
            unknown_devices,
            limits,
            max_future_ms,
            max_past_ms,
            clock,
            telemetry,
            log_budget: Mutex::default(),
            flood: Mutex::new(FloodTable::new(FloodLimit::default(), MAX_UNREGISTERED_BUCKETS)),
            // The shipped table is checked by `buttons::tests`; the defaults by class still hold
            // without it.
            buttons: ButtonTable::shipped().unwrap_or_default(),
        }
    }

    /// Sets the per-device flood limit (the default is [`FloodLimit::default`]).
    pub fn with_flood_limit(self, limit: FloodLimit) -> Self {
        self.with_flood_table(limit, MAX_UNREGISTERED_BUCKETS)
    }

    fn with_flood_table(mut self, limit: FloodLimit, max_unregistered: usize) -> Self {
        self.flood = Mutex::new(FloodTable::new(limit, max_unregistered));
        self
    }

    /// The flood limit in force.
    pub fn flood_limit(&self) -> FloodLimit {
        self.flood.lock().map(|t| t.limit).unwrap_or_default()
    }

    /// Counters of the flood limit's bucket table.
    pub fn flood_stats(&self) -> FloodStats {
        self.flood.lock().map(|t| t.stats()).unwrap_or_default()
    }

    /// Turns one message into records. A rejected message yields none (and is counted).
    pub fn process(&self, decoder: &Decoder, topic: &str, payload: &[u8], recv_ms: i64) -> Vec<Record> {
        self.telemetry.messages_received.fetch_add(1, Ordering::Relaxed);
        let readings = match decoder.decode(topic, payload, &self.limits) {
            Ok(r) => r,
            Err(e) => {
                self.reject(e.reason(), topic, &e.to_string());
                return Vec::new();
            }
        };
        self.records(readings, topic, recv_ms, true)
    }

    /// Turns readings decoded from a serial link into records: registry attached, unknown-device
    /// policy applied, device time checked. `source` names the bus in rejection logs.
    ///
    /// No flood limit here: a serial device cannot flood the gateway. A UART radar is one device
    /// on its own port, bounded by its baud rate (and read faster than it in tests over ptys, which
    /// must not turn into drops), and a Modbus unit answers at the poll rate the gateway sets.
    pub fn attach(&self, readings: Vec<crate::reading::Reading>, source: &str, recv_ms: i64) -> Vec<Record> {
        self.records(readings, source, recv_ms, false)
    }

    /// Readings to records; `flood_limited` applies the per-device flood limit.
    fn records(
        &self,
        readings: Vec<crate::reading::Reading>,
        source: &str,
        recv_ms: i64,
        flood_limited: bool,
    ) -> Vec<Record> {
        let topic = source;
        let mut out = Vec::with_capacity(readings.len());
        for reading in readings {
            let device = self.registry.resolve(&reading.device);
            let registered = device.is_some();
            let mut record = match device {
                Some(d) => Record {
                    device: d.id.clone(),
                    class: d.class.clone(),
                    building: d.building.clone(),
                    floor: d.floor.clone(),
                    room: d.room.clone(),
                    zone: d.zone.clone(),
                    ts: 0,
                    ts_recv: recv_ms,
                    ts_replaced: false,
                    seq: reading.seq,
                    metrics: reading.metrics,
                },
                None if self.unknown_devices == UnknownDevicePolicy::Reject => {
                    self.reject(
                        "unknown_device",
                        topic,
                        &format!("device `{}` is not in the registry", reading.device),
                    );
                    continue;
                }
                None => Record {
                    device: unregistered_id(&reading.device),
                    class: UNREGISTERED_CLASS.to_owned(),
                    building: String::new(),
                    floor: String::new(),
                    room: String::new(),
                    zone: String::new(),
                    ts: 0,
                    ts_recv: recv_ms,
                    ts_replaced: false,
                    seq: reading.seq,
                    metrics: reading.metrics,
                },
            };
            self.mark_help_press(device.map(|d| &**d), &mut record);
            (record.ts, record.ts_replaced) = match reading.ts_ms {
                Some(ts) if ts <= recv_ms + self.max_future_ms && ts >= recv_ms - self.max_past_ms => (ts, false),
                Some(_) => (recv_ms, true),
                None => (recv_ms, false),
            };
            if flood_limited && !self.admit(&record, registered, topic, recv_ms) {
                continue;
            }
            // Counted only for readings kept, like the journal's own counters.
            if !registered {
                self.telemetry.unregistered.fetch_add(1, Ordering::Relaxed);
            }
            if record.ts_replaced {
                self.telemetry.ts_replaced.fetch_add(1, Ordering::Relaxed);
            }
            out.push(record);
        }
        out
    }

    /// A button press that means a call for help on this device's model adds `sos = true` (the
    /// press itself is kept: history shows what was pressed). A press wins over an `sos: false`
    /// state sent in the same message.
    fn mark_help_press(&self, device: Option<&crate::registry::Device>, record: &mut Record) {
        if let Some(Value::Text(press)) = record.metrics.get("button") {
            if self.buttons.is_help(device, press) {
                record.metrics.insert("sos".to_owned(), Value::Bool(true));
            }
        }
    }

    /// Applies the flood limit to one record; false when it is dropped (and counted).
    fn admit(&self, record: &Record, registered: bool, topic: &str, recv_ms: i64) -> bool {
        let exempt = safety::exempt_from_flood_limit(&record.class, &record.metrics);
        let (admit, limit) = match self.flood.lock() {
            Ok(mut t) => (t.admit(&record.device, registered, exempt, recv_ms, record.ts), t.limit),
            // A poisoned lock means a panic elsewhere mid-update: let readings through rather
            // than lose them.
            Err(_) => return true,
        };
        let passed = match admit {
            Admit::Pass => true,
            Admit::Drop => false,
            Admit::Shared(passed) => {
                self.log_limited(
                    "flood_table_full",
                    &format!(
                        "more than {MAX_UNREGISTERED_BUCKETS} unregistered devices are being rate-limited; new ones share one bucket"
                    ),
                    topic,
                );
                passed
            }
        };
        if !passed {
            self.reject(
                "flood",
                topic,
                &format!(
                    "device `{}` is over {}/s (burst {})",
                    record.device, limit.rate_per_s, limit.burst
                ),
            );
        }
        passed
    }

    fn reject(&self, reason: &'static str, topic: &str, detail: &str) {
        self.telemetry.rejected(reason);
        if self.log_allowed(reason) {
            warn!(reason, topic, detail, "message rejected");
        }
    }

    /// A warning other than a rejection, under the same per-key budget.
    fn log_limited(&self, key: &'static str, detail: &str, topic: &str) {
        if self.log_allowed(key) {
            warn!(topic, detail, "{key}");
        }
    }

    /// Whether a log line under `key` is within [`LOGS_PER_MINUTE`].
    fn log_allowed(&self, key: &'static str) -> bool {
        let now = self.clock.now_ms();
        match self.log_budget.lock() {
            Ok(mut budget) => {
                let entry = budget.entry(key).or_insert((now, 0));
                if now - entry.0 >= 60_000 {
                    *entry = (now, 0);
                }
                entry.1 += 1;
                entry.1 <= LOGS_PER_MINUTE
            }
            Err(_) => true,
        }
    }
}

/// The id an unregistered device is journaled under: its own id, or `zigbee:<name>` with the
/// characters a device id may not hold replaced.
fn unregistered_id(key: &DeviceKey) -> String {
    match key {
        DeviceKey::Id(id) => id.clone(),
        DeviceKey::Zigbee(name) => {
            let clean: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._:-".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("zigbee:{clean}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const REGISTRY: &str = r#"
site = "nh-t"
[[devices]]
id = "gas-1"
class = "gas_detector"
zigbee_name = "kitchen gas"
building = "A"
floor = "1"
room = "A-kitchen"
zone = "kitchen"
interval_s = 60
[[devices]]
id = "watch-1"
class = "wearable"
room = "A-101"
interval_s = 30
[[devices]]
id = "smoke-1"
class = "smoke_alarm"
room = "A-101"
interval_s = 60
"#;

    fn normalizer(policy: UnknownDevicePolicy) -> Normalizer {
        let registry = Arc::new(Registry::parse(Path::new("d.toml"), REGISTRY).expect("registry"));
        Normalizer::new(
            registry,
            policy,
            Limits::default(),
            300_000,
            3_600_000,
            Clock::system(),
            Arc::new(Telemetry::default()),
        )
    }

    const RECV: i64 = 1_700_000_000_000;

    /// Zigbee2MQTT button presses of each model of the button table (and the defaults by
    /// class) through the real decoder and normalization: `sos` is added exactly for the presses
    /// that call for help, and the press itself is kept.
    #[test]
    fn zigbee2mqtt_presses_call_for_help_per_model() {
        let registry = r#"
site = "nh-t"
[[devices]]
id = "hs1eb"
class = "sos_button"
zigbee_name = "hs1eb"
interval_s = 60
model = "Heiman HS1EB"
[[devices]]
id = "ws101"
class = "sos_button"
zigbee_name = "ws101"
interval_s = 60
model = "Milesight WS101"
[[devices]]
id = "pendant"
class = "wearable"
zigbee_name = "pendant"
interval_s = 60
model = "Climax pendant"
[[devices]]
id = "cord"
class = "sos_button"
zigbee_name = "cord"
interval_s = 60
model = "unknown pull cord"
[[devices]]
id = "remote"
class = "door_contact"
zigbee_name = "remote"
interval_s = 60
[[devices]]
id = "own"
class = "sos_button"
zigbee_name = "own"
interval_s = 60
model = "Heiman HS1EB"
help_presses = ["long"]
"#;
        let registry = Arc::new(Registry::parse(Path::new("d.toml"), registry).expect("registry"));
        let n = Normalizer::new(
            registry,
            UnknownDevicePolicy::Accept,
            Limits::default(),
            300_000,
            3_600_000,
            Clock::system(),
            Arc::new(Telemetry::default()),
        );
        let press = |name: &str, action: &str| {
            let payload = format!(r#"{{"action":"{action}","battery":90,"sos":false}}"#);
            let r = n.process(
                &Decoder::Zigbee2Mqtt,
                &format!("zigbee2mqtt/{name}"),
                payload.as_bytes(),
                RECV,
            );
            assert_eq!(r.len(), 1, "{name} {action}");
            assert!(r[0].metrics.contains_key("button"), "the press is kept");
            r[0].metrics.get("sos") == Some(&Value::Bool(true))
        };
        for (device, action, help) in [
            ("hs1eb", "single", true),
            ("hs1eb", "double", true),
            ("hs1eb", "hold", true),
            ("hs1eb", "emergency", true),
            ("ws101", "hold", true),
            ("ws101", "double", false),
            ("ws101", "single", false),
            ("pendant", "single", true),
            ("pendant", "hold", false),
            ("cord", "double", true),
            ("remote", "single", false),
            ("remote", "emergency", true),
            ("own", "single", false),
            ("own", "hold", true),
            ("never_registered", "single", false),
            ("never_registered", "emergency", true),
        ] {
            assert_eq!(press(device, action), help, "{device} {action}");
        }
    }

    #[test]
    fn attaches_registry_location_and_keeps_sane_device_time() {
        let n = normalizer(UnknownDevicePolicy::Reject);
        let payload = format!(r#"{{"ts":{},"metrics":{{"gas_lel":3.5}}}}"#, RECV - 1000);
        let d = Decoder::Canonical { site: "nh-t".into() };
        let r = n.process(&d, "nh/nh-t/gas-1/telemetry", payload.as_bytes(), RECV);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].class.as_str(), r[0].room.as_str(), r[0].zone.as_str()),
            ("gas_detector", "A-kitchen", "kitchen")
        );
        assert_eq!((r[0].ts, r[0].ts_replaced), (RECV - 1000, false));
    }

    #[test]
    fn device_time_too_far_ahead_or_behind_is_replaced_and_counted() {
        let n = normalizer(UnknownDevicePolicy::Reject);
        let d = Decoder::Canonical { site: "nh-t".into() };
        for ts in [RECV + 301_000, RECV - 3_601_000] {
            let payload = format!(r#"{{"ts":{ts},"metrics":{{"gas_lel":3.5}}}}"#);
            let r = n.process(&d, "nh/nh-t/gas-1/telemetry", payload.as_bytes(), RECV);
            assert_eq!((r[0].ts, r[0].ts_replaced), (RECV, true));
        }
        assert_eq!(n.telemetry.ts_replaced.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn unknown_devices_follow_the_policy() {
        let d = Decoder::Zigbee2Mqtt;
        let payload = br#"{"smoke":false,"battery":90}"#;
        let reject = normalizer(UnknownDevicePolicy::Reject);
        assert!(reject.process(&d, "zigbee2mqtt/hall smoke", payload, RECV).is_empty());
        assert_eq!(reject.telemetry.rejected_count("unknown_device"), 1);

        let accept = normalizer(UnknownDevicePolicy::Accept);
        let r = accept.process(&d, "zigbee2mqtt/hall smoke", payload, RECV);
        assert_eq!(
            (r[0].device.as_str(), r[0].class.as_str()),
            ("zigbee:hall_smoke", UNREGISTERED_CLASS)
        );
        assert_eq!(accept.telemetry.unregistered.load(Ordering::Relaxed), 1);

        // Zigbee friendly names resolve through the registry.
        let r = accept.process(&d, "zigbee2mqtt/kitchen gas", br#"{"gas":false,"gas_value":1.5}"#, RECV);
        assert_eq!(r[0].device, "gas-1");
    }
    // The flood limit.

    /// A normalizer with `rate`/s, burst `burst`, at most `max_unregistered` unregistered buckets.
    fn limited(policy: UnknownDevicePolicy, rate: f64, burst: u32, max_unregistered: usize) -> Normalizer {
        normalizer(policy).with_flood_table(
            FloodLimit {
                rate_per_s: rate,
                burst,
            },
            max_unregistered,
        )
    }

    /// Sends one canonical message of `device` with `metrics` (JSON) and optional device time;
    /// returns how many records it gave.
    fn send(n: &Normalizer, device: &str, metrics: &str, ts: Option<i64>, recv: i64) -> usize {
        let payload = match ts {
            Some(ts) => format!(r#"{{"ts":{ts},"metrics":{metrics}}}"#),
            None => format!(r#"{{"metrics":{metrics}}}"#),
        };
        let d = Decoder::Canonical { site: "nh-t".into() };
        n.process(&d, &format!("nh/nh-t/{device}/telemetry"), payload.as_bytes(), recv)
            .len()
    }

    #[test]
    fn defaults_sit_above_real_devices_and_the_load_generators() {
        let l = FloodLimit::default();
        // nh-bench: 40,000 msg/s over 1000 devices; docs/simulator.md's nh-sim load: 5000 msg/s over 100.
        assert!(l.rate_per_s > 50.0 && l.burst >= 100, "{l:?}");
        assert_eq!(normalizer(UnknownDevicePolicy::Accept).flood_limit(), l);
    }

    #[test]
    fn readings_over_the_burst_are_dropped_and_counted_as_flood() {
        let n = limited(UnknownDevicePolicy::Reject, 10.0, 5, 16);
        let kept: usize = (0..8)
            .map(|_| send(&n, "watch-1", r#"{"heart_rate":70}"#, None, RECV))
            .sum();
        assert_eq!(kept, 5);
        assert_eq!(n.telemetry.rejected_count("flood"), 3);
        // Another device has its own bucket.
        assert_eq!(send(&n, "gas-1", r#"{"gas_lel":1}"#, None, RECV), 1);
    }

    #[test]
    fn bucket_refills_at_the_rate_on_the_receive_clock() {
        let n = limited(UnknownDevicePolicy::Reject, 10.0, 5, 16);
        for _ in 0..5 {
            assert_eq!(send(&n, "watch-1", r#"{"heart_rate":70}"#, None, RECV), 1);
        }
        assert_eq!(send(&n, "watch-1", r#"{"heart_rate":70}"#, None, RECV), 0);
        // 300 ms at 10/s: three more.
        let kept: usize = (0..5)
            .map(|_| send(&n, "watch-1", r#"{"heart_rate":70}"#, None, RECV + 300))
            .sum();
        assert_eq!(kept, 3);
        // A long silence refills the bucket to its size, no more.
        let kept: usize = (0..10)
            .map(|_| send(&n, "watch-1", r#"{"heart_rate":70}"#, None, RECV + 3_600_000))
            .sum();
        assert_eq!(kept, 5);
    }

    #[test]
    fn life_safety_readings_pass_an_empty_bucket() {
        let n = limited(UnknownDevicePolicy::Accept, 1.0, 2, 16);
        // Exhaust both devices' buckets with bulk readings.
        for _ in 0..3 {
            send(&n, "watch-1", r#"{"heart_rate":70}"#, None, RECV);
            send(&n, "smoke-1", r#"{"battery_pct":90}"#, None, RECV);
            send(&n, "gas-1", r#"{"battery_pct":90}"#, None, RECV);
        }
        assert_eq!(n.telemetry.rejected_count("flood"), 3);
        for _ in 0..50 {
            assert_eq!(send(&n, "watch-1", r#"{"sos":true,"heart_rate":120}"#, None, RECV), 1);
            assert_eq!(send(&n, "watch-1", r#"{"fall_state":"fall"}"#, None, RECV), 1);
            assert_eq!(send(&n, "smoke-1", r#"{"smoke":false}"#, None, RECV), 1);
            assert_eq!(send(&n, "smoke-1", r#"{"temperature":58}"#, None, RECV), 1);
            assert_eq!(send(&n, "gas-1", r#"{"gas_lel":35}"#, None, RECV), 1);
            assert_eq!(send(&n, "gas-1", r#"{"gas_alarm":true}"#, None, RECV), 1);
            // Alarm states are exempt from any device, even an unregistered one.
            assert_eq!(send(&n, "mystery", r#"{"co_alarm":true}"#, None, RECV), 1);
        }
        // Bulk metrics stay limited, a temperature from a wearable too.
        assert_eq!(send(&n, "watch-1", r#"{"heart_rate":70}"#, None, RECV), 0);
        assert_eq!(send(&n, "watch-1", r#"{"temperature":36}"#, None, RECV), 0);
        assert_eq!(send(&n, "smoke-1", r#"{"battery_pct":90}"#, None, RECV), 0);
        // Zigbee2MQTT too: a smoke alarm through its friendly name.
        let z = Decoder::Zigbee2Mqtt;
        for _ in 0..20 {
            let r = n.process(&z, "zigbee2mqtt/kitchen gas", br#"{"gas":true,"linkquality":80}"#, RECV);
            assert_eq!(r.len(), 1);
        }
        assert_eq!(n.telemetry.rejected_count("flood"), 6);
    }

    #[test]
    fn a_backlog_with_device_times_passes_at_the_pace_it_was_measured() {
        let n = limited(UnknownDevicePolicy::Reject, 1.0, 3, 16);
        // Ten minutes of 1 Hz readings delivered at once after an outage: none dropped.
        let start = RECV - 600_000;
        let kept: usize = (0..600)
            .map(|i| send(&n, "watch-1", r#"{"heart_rate":70}"#, Some(start + i * 1000), RECV))
            .sum();
        assert_eq!(kept, 600);
        // The same device time over and over is a flood: what is left of the burst, then nothing.
        let kept: usize = (0..10)
            .map(|_| send(&n, "watch-1", r#"{"heart_rate":70}"#, Some(RECV - 1000), RECV))
            .sum();
        assert_eq!(kept, 2);
        assert_eq!(n.telemetry.rejected_count("flood"), 8);
    }

    #[test]
    fn device_time_counts_only_forwards_and_a_clock_jump_back_does_not_stall_the_device() {
        let n = limited(UnknownDevicePolicy::Reject, 1.0, 2, 16);
        assert_eq!(send(&n, "watch-1", r#"{"heart_rate":70}"#, Some(RECV), RECV), 1);
        assert_eq!(send(&n, "watch-1", r#"{"heart_rate":70}"#, Some(RECV), RECV), 1);
        // Alternating device times gain nothing from the steps back.
        let mut kept = 0;
        for i in 0..10 {
            let ts = if i % 2 == 0 { RECV - 3_000_000 } else { RECV };
            kept += send(&n, "watch-1", r#"{"heart_rate":70}"#, Some(ts), RECV);
        }
        assert_eq!(kept, 0);
        // The device clock jumped back an hour: the receive clock still refills its bucket.
        let kept: usize = (1..=3)
            .map(|i| {
                let recv = RECV + i * 1000;
                send(&n, "watch-1", r#"{"heart_rate":70}"#, Some(recv - 3_600_000), recv)
            })
            .sum();
        assert_eq!(kept, 3);
    }

    #[test]
    fn a_marked_far_future_time_does_not_refill_the_bucket() {
        let n = limited(UnknownDevicePolicy::Reject, 1.0, 2, 16);
        let kept: usize = (0..5)
            .map(|i| {
                send(
                    &n,
                    "watch-1",
                    r#"{"heart_rate":70}"#,
                    Some(RECV + 86_400_000 * (i + 1)),
                    RECV,
                )
            })
            .sum();
        assert_eq!(kept, 2);
        // Only the kept ones are counted as time-replaced.
        assert_eq!(n.telemetry.ts_replaced.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn unregistered_buckets_are_bounded_evicted_once_refilled_and_then_shared() {
        let n = limited(UnknownDevicePolicy::Accept, 1.0, 2, 4);
        // Four unknown devices, each with a bucket still refilling.
        for i in 0..4 {
            assert_eq!(send(&n, &format!("u-{i}"), r#"{"presence":true}"#, None, RECV), 1);
        }
        assert_eq!(n.flood_stats().buckets, 4);
        // A fifth finds the table full: it shares one bucket with every other newcomer.
        let kept: usize = (4..10)
            .map(|i| send(&n, &format!("u-{i}"), r#"{"presence":true}"#, None, RECV))
            .sum();
        assert_eq!(kept, 2);
        assert_eq!(n.telemetry.rejected_count("flood"), 4);
        assert_eq!(
            n.flood_stats(),
            FloodStats {
                buckets: 4,
                evicted: 0,
                shared: 6
            }
        );
        // Registered devices always get their own bucket.
        assert_eq!(send(&n, "watch-1", r#"{"heart_rate":70}"#, None, RECV), 1);
        assert_eq!(n.flood_stats().buckets, 5);
        // Once the old buckets have refilled they are forgotten and newcomers tracked again.
        assert_eq!(send(&n, "u-new", r#"{"presence":true}"#, None, RECV + 5000), 1);
        let s = n.flood_stats();
        assert_eq!((s.buckets, s.evicted), (2, 4));
        // A spray of new ids sweeps at most once a second.
        for i in 0..200 {
            send(&n, &format!("spray-{i}"), r#"{"presence":true}"#, None, RECV + 5000);
        }
        assert_eq!(n.flood_stats().evicted, 4);
        assert_eq!(n.flood_stats().buckets, 5);
    }

    #[test]
    fn serial_readings_are_not_flood_limited() {
        let n = limited(UnknownDevicePolicy::Reject, 1.0, 1, 16);
        let reading = crate::reading::Reading {
            device: DeviceKey::Id("watch-1".into()),
            ts_ms: None,
            seq: None,
            metrics: [("heart_rate".to_owned(), Value::Num(70.0))].into(),
        };
        let kept: usize = (0..50)
            .map(|_| n.attach(vec![reading.clone()], "serial:bus-1", RECV).len())
            .sum();
        assert_eq!(kept, 50);
        assert_eq!(n.telemetry.rejected_count("flood"), 0);
    }

    #[test]
    fn rate_zero_turns_the_limit_off() {
        let n = limited(UnknownDevicePolicy::Accept, 0.0, 1, 1);
        let kept: usize = (0..1000)
            .map(|i| send(&n, &format!("u-{}", i % 50), r#"{"presence":true}"#, None, RECV))
            .sum();
        assert_eq!(kept, 1000);
        assert_eq!(n.flood_stats().buckets, 0);
    }

    #[test]
    fn flood_limit_comes_from_the_decode_config() {
        let c = DecodeConfig {
            max_device_rate_per_s: 7.5,
            device_burst: 30,
            ..DecodeConfig::default()
        };
        let n = normalizer(UnknownDevicePolicy::Accept).with_flood_limit((&c).into());
        assert_eq!(
            n.flood_limit(),
            FloodLimit {
                rate_per_s: 7.5,
                burst: 30
            }
        );
        assert_eq!(FloodLimit::from(&DecodeConfig::default()), FloodLimit::default());
        assert!(DecodeConfig::default().flood_problems().is_empty());
        let bad = DecodeConfig {
            max_device_rate_per_s: f64::NAN,
            device_burst: 0,
            ..DecodeConfig::default()
        };
        let keys: Vec<&str> = bad.flood_problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["decode.max_device_rate_per_s", "decode.device_burst"]);
    }
}
