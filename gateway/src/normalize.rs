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
