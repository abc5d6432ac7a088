//! The fleet's message stream: when each device reports (its interval, a per-device phase, a small
//! jitter) and what it says, merged into one sequence ordered by device time.
//!
//! Pure and deterministic: the same registry, seed, start and duration give the same messages, byte
//! for byte. Each device draws from its own seeded streams, so adding a device does not change the
//! others' messages.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use serde_json::Value as Json;

use crate::metrics::Metrics;
use crate::model::behaviour::{Behaviour, Report};
use crate::model::registry::Registry;
use crate::rng::Rng;
use crate::wire::{canonical, zigbee2mqtt, Format};

/// Largest jitter around the nominal report time: a tenth of the interval, at most 2 s (real
/// firmware timers drift and radio retries delay a report by about that much).
const MAX_JITTER_MS: i64 = 2_000;

/// Seed streams per device (see `Rng::for_device`).
const STREAM_SCHEDULE: u64 = 1;
const STREAM_VALUES: u64 = 2;

/// One message as a device publishes it, plus what the gateway is expected to derive from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Index of the device in the registry.
    pub device_index: usize,
    pub device_id: Arc<str>,
    pub topic: Arc<str>,
    pub format: Format,
    /// Device time (virtual ms since epoch): the canonical `ts`, the Z2M `last_seen`.
    pub ts: i64,
    /// The canonical `seq` (Z2M has none).
    pub seq: Option<u64>,
    /// Canonical metrics before any wire encoding (what the record file holds).
    pub metrics: Metrics,
    /// Z2M keys without a canonical metric, which the gateway must ignore.
    pub extras: Vec<(&'static str, Json)>,
    pub payload: Vec<u8>,
}

struct Slot {
    id: Arc<str>,
    topic: Arc<str>,
    format: Format,
    interval_ms: i64,
    phase_ms: i64,
    jitter_ms: i64,
    schedule: Rng,
    behaviour: Behaviour,
    /// Index of the next report (k in `start + phase + k * interval + jitter`).
    k: i64,
    next_ts: i64,
    last_ts: Option<i64>,
    seq: u64,
}

impl Slot {
    /// Time of report `k`: nominal time plus jitter, never before the start and always at least
    /// 1 ms after the previous report (no two messages of a device share a `ts`).
    fn time_of_next(&mut self, start_ms: i64) -> i64 {
        let jitter = if self.jitter_ms > 0 {
            self.schedule.range_i64(-self.jitter_ms, self.jitter_ms)
        } else {
            0
        };
        let nominal = start_ms + self.phase_ms + self.k * self.interval_ms;
        let t = (nominal + jitter).max(start_ms);
        match self.last_ts {
            Some(last) => t.max(last + 1),
            None => t,
        }
    }
}

/// Scripted changes laid over the baseline (scenarios): sees every report before it is encoded.
pub trait Overlay: Send {
    /// Edits the report of device `device_index` at `ts`; returns false to drop it (a silent device).
    fn apply(&mut self, device_index: usize, ts: i64, report: &mut Report) -> bool;
}

/// The merged, time-ordered message stream of a fleet.
pub struct Stream {
    slots: Vec<Slot>,
    /// (next ts, device index): ties go to the device listed first in the registry.
    heap: BinaryHeap<Reverse<(i64, usize)>>,
    /// Extra reports out of the regular schedule (a device reporting a change at once).
    extra: BinaryHeap<Reverse<(i64, usize)>>,
    overlay: Option<Box<dyn Overlay>>,
    start_ms: i64,
    end_ms: Option<i64>,
}

impl Stream {
    /// Messages from `start_ms` (inclusive) for `seconds` of device time (exclusive end), or forever.
    pub fn new(registry: &Registry, seed: u64, start_ms: i64, seconds: Option<u64>, incidents: bool) -> Stream {
        let mut slots = Vec::with_capacity(registry.devices.len());
        let mut heap = BinaryHeap::with_capacity(registry.devices.len());
        for (index, device) in registry.devices.iter().enumerate() {
            let interval_ms = device.interval_s as i64 * 1000;
            let mut schedule = Rng::for_device(seed, &device.id, STREAM_SCHEDULE);
            // Devices were not all switched on at the same instant: spread them over one interval.
            let phase_ms = schedule.range_i64(0, interval_ms - 1);
            let mut slot = Slot {
                id: Arc::from(device.id.as_str()),
                topic: Arc::from(device.topic(&registry.site).as_str()),
                format: device.format(),
                interval_ms,
                phase_ms,
                jitter_ms: (interval_ms / 10).min(MAX_JITTER_MS),
                schedule,
                behaviour: Behaviour::new(device, Rng::for_device(seed, &device.id, STREAM_VALUES), incidents),
                k: 0,
                next_ts: 0,
                last_ts: None,
                seq: 0,
            };
            slot.next_ts = slot.time_of_next(start_ms);
            heap.push(Reverse((slot.next_ts, index)));
            slots.push(slot);
        }
        let end_ms = seconds.map(|s| start_ms.saturating_add((s as i64).saturating_mul(1000)));
        Stream {
            slots,
            heap,
            extra: BinaryHeap::new(),
            overlay: None,
            start_ms,
            end_ms,
        }
    }

    /// Scripts the stream (scenarios): `overlay` edits or drops every report, `extra` adds reports
    /// out of schedule as (device time, device index), and only devices with `regular[i]` true
    /// report on their regular schedule.
    pub fn scripted(mut self, overlay: Box<dyn Overlay>, extra: Vec<(i64, usize)>, regular: &[bool]) -> Stream {
        self.heap
            .retain(|Reverse((_, i))| regular.get(*i).copied().unwrap_or(true));
        self.extra = extra
            .into_iter()
            .filter(|(ts, i)| *i < self.slots.len() && *ts >= self.start_ms)
            .map(Reverse)
            .collect();
        self.overlay = Some(overlay);
        self
    }

    /// (device time, device index, extra?) of the next report, if any.
    fn peek_next(&self) -> Option<(i64, usize, bool)> {
        let regular = self.heap.peek().map(|Reverse((ts, i))| (*ts, *i, false));
        let extra = self.extra.peek().map(|Reverse((ts, i))| (*ts, *i, true));
        let next = match (regular, extra) {
            (Some(r), Some(e)) => Some(if e.0 < r.0 { e } else { r }),
            (r, e) => r.or(e),
        }?;
        match self.end_ms {
            Some(end) if next.0 >= end => None,
            _ => Some(next),
        }
    }

    /// Device time of the next message, if any.
    pub fn peek_ts(&self) -> Option<i64> {
        self.peek_next().map(|(ts, _, _)| ts)
    }
}

impl Iterator for Stream {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        loop {
            let (ts, index, extra) = self.peek_next()?;
            let start_ms = self.start_ms;
            let slot = &mut self.slots[index];
            // An extra report may have taken this millisecond: device times stay strictly increasing.
            let ts = match slot.last_ts {
                Some(last) => ts.max(last + 1),
                None => ts,
            };
            if extra {
                self.extra.pop();
            } else {
                self.heap.pop();
                slot.k += 1;
            }
            slot.last_ts = Some(ts);
            if !extra {
                slot.next_ts = slot.time_of_next(start_ms);
                self.heap.push(Reverse((slot.next_ts, index)));
            }
            let mut report = slot.behaviour.report(ts);
            if let Some(overlay) = self.overlay.as_mut() {
                if !overlay.apply(index, ts, &mut report) {
                    continue;
                }
            }
            return Some(self.emit(index, ts, report));
        }
    }
}

impl Stream {
    fn emit(&mut self, index: usize, ts: i64, report: Report) -> Message {
        let slot = &mut self.slots[index];
        let (seq, payload) = match slot.format {
            Format::Canonical => {
                slot.seq += 1;
                (Some(slot.seq), canonical::encode(ts, slot.seq, &report.metrics))
            }
            // The behaviour only emits what Z2M can express, so this cannot fail; should it ever,
            // the metrics are dropped from the payload rather than the simulator panicking.
            Format::Zigbee2mqtt => (
                None,
                zigbee2mqtt::encode(ts, &report.metrics, &report.extras).unwrap_or_else(|e| {
                    tracing::error!(device = %slot.id, error = %e, "cannot encode reading");
                    zigbee2mqtt::encode(ts, &Vec::new(), &report.extras).unwrap_or_default()
                }),
            ),
        };
        Message {
            device_index: index,
            device_id: slot.id.clone(),
            topic: slot.topic.clone(),
            format: slot.format,
            ts,
            seq,
            metrics: report.metrics,
            extras: report.extras,
            payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

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
id = "watch-1"
class = "wearable"
building = "A"
floor = "1"
room = "A-101"
interval_s = 30
[[devices]]
id = "door-1"
class = "door_contact"
zigbee_name = "door_1"
building = "A"
floor = "1"
room = "A-101"
interval_s = 300
[[devices]]
id = "fast-1"
class = "gateway"
building = "A"
floor = "1"
room = "A-101"
interval_s = 1
"#;

    const T0: i64 = 1_767_225_600_000;

    fn registry() -> Registry {
        crate::model::registry::parse(REGISTRY).expect("valid")
    }

    #[test]
    fn same_seed_gives_the_same_messages_byte_for_byte() {
        let a: Vec<Message> = Stream::new(&registry(), 7, T0, Some(3600), false).collect();
        let b: Vec<Message> = Stream::new(&registry(), 7, T0, Some(3600), false).collect();
        assert_eq!(a, b);
        let c: Vec<Message> = Stream::new(&registry(), 8, T0, Some(3600), false).collect();
        assert_ne!(
            a.iter().map(|m| &m.payload).collect::<Vec<_>>(),
            c.iter().map(|m| &m.payload).collect::<Vec<_>>()
        );
    }

    #[test]
    fn messages_come_in_time_order_within_the_window_with_per_device_counts() {
        let msgs: Vec<Message> = Stream::new(&registry(), 1, T0, Some(600), false).collect();
        assert!(msgs.windows(2).all(|w| w[0].ts <= w[1].ts));
        assert!(msgs.iter().all(|m| m.ts >= T0 && m.ts < T0 + 600_000));
        let mut per_device: HashMap<&str, Vec<&Message>> = HashMap::new();
        for m in &msgs {
            per_device.entry(&m.device_id).or_default().push(m);
        }
        // One report per interval, give or take the edge of the window.
        let n = |id: &str| per_device[id].len() as i64;
        assert!((59..=61).contains(&n("radar-1")), "{}", n("radar-1"));
        assert!((19..=21).contains(&n("watch-1")));
        assert!((1..=3).contains(&n("door-1")));
        assert!((599..=601).contains(&n("fast-1")));
    }

    #[test]
    fn per_device_ts_strictly_increase_and_seq_counts_from_one() {
        let msgs: Vec<Message> = Stream::new(&registry(), 3, T0, Some(7200), false).collect();
        let mut last: HashMap<&str, (i64, Option<u64>)> = HashMap::new();
        for m in &msgs {
            if let Some((ts, seq)) = last.get(&*m.device_id) {
                assert!(m.ts > *ts, "{} repeats ts {}", m.device_id, m.ts);
                if let (Some(prev), Some(cur)) = (seq, m.seq) {
                    assert_eq!(cur, prev + 1);
                }
            } else if m.format == Format::Canonical {
                assert_eq!(m.seq, Some(1));
            }
            last.insert(&m.device_id, (m.ts, m.seq));
        }
    }

    #[test]
    fn payloads_carry_the_schedule_time() {
        for m in Stream::new(&registry(), 5, T0, Some(900), false) {
            let v: Json = serde_json::from_slice(&m.payload).expect("json");
            match m.format {
                Format::Canonical => {
                    assert_eq!(v["ts"], Json::from(m.ts));
                    assert_eq!(v["seq"], Json::from(m.seq.expect("seq")));
                    assert_eq!(m.topic.as_ref(), format!("nh/t/{}/telemetry", m.device_id));
                }
                Format::Zigbee2mqtt => {
                    assert_eq!(v["last_seen"], Json::from(m.ts));
                    assert_eq!(m.topic.as_ref(), "zigbee2mqtt/door_1");
                    assert!(v.get("linkquality").is_some() && v.get("power_outage_count").is_some());
                }
            }
        }
    }

    #[test]
    fn adding_a_device_does_not_change_the_others() {
        let base: Vec<Message> = Stream::new(&registry(), 9, T0, Some(600), false).collect();
        let mut bigger = registry();
        let mut extra = bigger.devices[0].clone();
        extra.id = "radar-2".into();
        bigger.devices.insert(0, extra);
        let more: Vec<Message> = Stream::new(&bigger, 9, T0, Some(600), false)
            .filter(|m| &*m.device_id != "radar-2")
            .collect();
        assert_eq!(
            base.iter()
                .map(|m| (&m.device_id, m.ts, &m.payload))
                .collect::<Vec<_>>(),
            more.iter()
                .map(|m| (&m.device_id, m.ts, &m.payload))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_endless_stream_keeps_going() {
        let mut s = Stream::new(&registry(), 1, T0, None, false);
        let last = s.by_ref().take(100_000).last().expect("messages");
        assert!(last.ts > T0 + 80_000_000);
        assert!(s.peek_ts().is_some());
    }
}
