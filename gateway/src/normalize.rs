//! Normalization: one raw message in, journal records out. Decodes with the subscription's
//! decoder, attaches the registry (class and location), applies the unknown-device policy and
//! checks the device time. Every rejection is counted by reason and logged with a rate limit.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tracing::warn;

use crate::clock::Clock;
use crate::config::UnknownDevicePolicy;
use crate::decode::{Decoder, Limits};
use crate::journal::Record;
use crate::reading::DeviceKey;
use crate::registry::{Registry, UNREGISTERED_CLASS};
use crate::telemetry::Telemetry;

/// Log lines per rejection reason per minute; the counters see every one.
const LOGS_PER_MINUTE: u32 = 10;

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
        }
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
        self.attach(readings, topic, recv_ms)
    }

    /// Turns decoded readings into records: registry attached, unknown-device policy applied,
    /// device time checked. `source` names where they came from in rejection logs (a topic, a
    /// serial bus).
    pub fn attach(&self, readings: Vec<crate::reading::Reading>, source: &str, recv_ms: i64) -> Vec<Record> {
        let topic = source;
        let mut out = Vec::with_capacity(readings.len());
        for reading in readings {
            let device = self.registry.resolve(&reading.device);
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
                None => {
                    self.telemetry.unregistered.fetch_add(1, Ordering::Relaxed);
                    Record {
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
                    }
                }
            };
            record.ts = match reading.ts_ms {
                Some(ts) if ts <= recv_ms + self.max_future_ms && ts >= recv_ms - self.max_past_ms => ts,
                Some(_) => {
                    record.ts_replaced = true;
                    self.telemetry.ts_replaced.fetch_add(1, Ordering::Relaxed);
                    recv_ms
                }
                None => recv_ms,
            };
            out.push(record);
        }
        out
    }

    fn reject(&self, reason: &'static str, topic: &str, detail: &str) {
        self.telemetry.rejected(reason);
        let now = self.clock.now_ms();
        let allowed = match self.log_budget.lock() {
            Ok(mut budget) => {
                let entry = budget.entry(reason).or_insert((now, 0));
                if now - entry.0 >= 60_000 {
                    *entry = (now, 0);
                }
                entry.1 += 1;
                entry.1 <= LOGS_PER_MINUTE
            }
            Err(_) => true,
        };
        if allowed {
            warn!(reason, topic, detail, "message rejected");
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
}
