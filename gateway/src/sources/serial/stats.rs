//! Counters of the serial links, per bus and per Modbus unit, rendered on `/metrics` by the
//! serial stage itself (a [`MetricsSource`] the wiring registers).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::clock::system_now_ms;
use crate::telemetry::{family_header, MetricsSource};

/// Every bus's counters.
#[derive(Debug, Default)]
pub struct SerialStats {
    buses: Mutex<BTreeMap<String, Arc<BusStats>>>,
}

/// One bus (one serial port).
#[derive(Debug, Default)]
pub struct BusStats {
    pub protocol: &'static str,
    /// 1 while the port is open and working.
    pub link_up: AtomicU64,
    /// Successful opens of the port.
    pub opens: AtomicU64,
    /// Times the link went down (open failure at start, or a working link lost).
    pub outages: AtomicU64,
    /// Milliseconds the link was down, outages ended so far.
    pub down_ms: AtomicU64,
    /// Start of the current outage (ms since the epoch), 0 while up.
    pub down_since_ms: AtomicI64,
    /// Bytes found waiting before a request and discarded (late answers, line noise).
    pub stray_bytes: AtomicU64,
    /// Radar frames decoded.
    pub frames: AtomicU64,
    frame_errors: Mutex<BTreeMap<&'static str, u64>>,
    units: Mutex<BTreeMap<u8, Arc<UnitStats>>>,
}

/// One Modbus unit.
#[derive(Debug, Default)]
pub struct UnitStats {
    pub requests: AtomicU64,
    pub answers: AtomicU64,
    pub timeouts: AtomicU64,
    pub crc_errors: AtomicU64,
    /// Well-formed frames of another unit read while waiting for this one.
    pub foreign_frames: AtomicU64,
    /// Answers the register map refused (check failed, unknown status, out of range).
    pub decode_errors: AtomicU64,
    /// 1 while the unit answers; 0 after 3 polls in a row without an answer.
    pub online: AtomicU64,
    exceptions: Mutex<BTreeMap<u8, u64>>,
}

impl UnitStats {
    pub fn exception(&self, code: u8) {
        if let Ok(mut m) = self.exceptions.lock() {
            *m.entry(code).or_insert(0) += 1;
        }
    }
}

impl BusStats {
    pub fn frame_error(&self, reason: &'static str) {
        if let Ok(mut m) = self.frame_errors.lock() {
            *m.entry(reason).or_insert(0) += 1;
        }
    }

    pub fn frame_errors(&self, reason: &str) -> u64 {
        self.frame_errors
            .lock()
            .map(|m| m.get(reason).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn unit(&self, unit: u8) -> Arc<UnitStats> {
        let mut m = self.units.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(unit).or_default().clone()
    }

    /// The link works: ends the current outage.
    pub fn up(&self, now_ms: i64) {
        self.opens.fetch_add(1, Ordering::Relaxed);
        self.link_up.store(1, Ordering::Relaxed);
        let since = self.down_since_ms.swap(0, Ordering::Relaxed);
        if since > 0 {
            self.down_ms
                .fetch_add((now_ms - since).max(0) as u64, Ordering::Relaxed);
        }
    }

    /// The link is down: starts an outage unless one is running.
    pub fn down(&self, now_ms: i64) {
        self.link_up.store(0, Ordering::Relaxed);
        if self
            .down_since_ms
            .compare_exchange(0, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.outages.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl SerialStats {
    /// The counters of `bus`, created on first use.
    pub fn bus(&self, bus: &str, protocol: &'static str) -> Arc<BusStats> {
        let mut m = self.buses.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(bus.to_owned())
            .or_insert_with(|| {
                Arc::new(BusStats {
                    protocol,
                    ..BusStats::default()
                })
            })
            .clone()
    }

    /// Whether every configured link is up (for `/healthz`).
    pub fn all_up(&self) -> bool {
        self.buses
            .lock()
            .map(|m| m.values().all(|b| b.link_up.load(Ordering::Relaxed) == 1))
            .unwrap_or(true)
    }

    /// Prometheus text for every bus and unit, the down time counted up to `now_ms`.
    pub fn render_at(&self, out: &mut String, now_ms: i64) {
        let buses: Vec<(String, Arc<BusStats>)> = match self.buses.lock() {
            Ok(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => return,
        };
        if buses.is_empty() {
            return;
        }
        render_bus_families(out, &buses, now_ms);
        render_frame_errors(out, &buses);
        let units: Vec<(String, u8, Arc<UnitStats>)> = buses
            .iter()
            .flat_map(|(bus, b)| {
                let m = b.units.lock().unwrap_or_else(|p| p.into_inner());
                m.iter().map(|(u, s)| (bus.clone(), *u, s.clone())).collect::<Vec<_>>()
            })
            .collect();
        if units.is_empty() {
            return;
        }
        render_unit_families(out, &units);
        render_exceptions(out, &units);
    }
}

/// The serial links on `/metrics` (rendered at the system time), and their state for `/healthz`.
impl MetricsSource for SerialStats {
    fn render(&self, out: &mut String) {
        self.render_at(out, system_now_ms());
    }

    fn up(&self) -> bool {
        self.all_up()
    }
}

/// One family per bus counter, a sample per bus.
fn render_bus_families(out: &mut String, buses: &[(String, Arc<BusStats>)], now_ms: i64) {
    type BusMetric = (&'static str, &'static str, &'static str, fn(&BusStats, i64) -> u64);
    let bus_metrics: [BusMetric; 7] = [
        (
            "nh_serial_link_up",
            "gauge",
            "1 while the serial port is open and working.",
            |b, _| b.link_up.load(Ordering::Relaxed),
        ),
        (
            "nh_serial_link_opens_total",
            "counter",
            "Successful opens of the serial port.",
            |b, _| b.opens.load(Ordering::Relaxed),
        ),
        (
            "nh_serial_link_outages_total",
            "counter",
            "Times the serial link went down.",
            |b, _| b.outages.load(Ordering::Relaxed),
        ),
        (
            "nh_serial_link_down_seconds_total",
            "counter",
            "Seconds the serial link was down, the current outage included.",
            |b, now| {
                let since = b.down_since_ms.load(Ordering::Relaxed);
                let current = if since > 0 { (now - since).max(0) as u64 } else { 0 };
                (b.down_ms.load(Ordering::Relaxed) + current) / 1000
            },
        ),
        (
            "nh_serial_link_down_since_seconds",
            "gauge",
            "Unix time the current outage began, 0 while up.",
            |b, _| (b.down_since_ms.load(Ordering::Relaxed) / 1000).max(0) as u64,
        ),
        (
            "nh_serial_stray_bytes_total",
            "counter",
            "Bytes found waiting before a request and discarded.",
            |b, _| b.stray_bytes.load(Ordering::Relaxed),
        ),
        ("nh_serial_frames_total", "counter", "Radar frames decoded.", |b, _| {
            b.frames.load(Ordering::Relaxed)
        }),
    ];
    for (name, kind, help, f) in bus_metrics {
        family_header(out, name, help, kind);
        for (bus, b) in buses {
            let _ = writeln!(
                out,
                "{name}{{bus=\"{bus}\",protocol=\"{}\"}} {}",
                b.protocol,
                f(b, now_ms)
            );
        }
    }
}

/// Radar frame errors, by bus and reason.
fn render_frame_errors(out: &mut String, buses: &[(String, Arc<BusStats>)]) {
    let name = "nh_serial_frame_errors_total";
    family_header(
        out,
        name,
        "Bytes or frames skipped while reading radar frames, by reason.",
        "counter",
    );
    for (bus, b) in buses {
        if let Ok(m) = b.frame_errors.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(out, "{name}{{bus=\"{bus}\",reason=\"{reason}\"}} {n}");
            }
        }
    }
}

/// One family per Modbus unit counter, a sample per unit.
fn render_unit_families(out: &mut String, units: &[(String, u8, Arc<UnitStats>)]) {
    type UnitMetric = (&'static str, &'static str, &'static str, fn(&UnitStats) -> &AtomicU64);
    let unit_metrics: [UnitMetric; 7] = [
        ("nh_modbus_requests_total", "counter", "Modbus requests sent.", |u| {
            &u.requests
        }),
        ("nh_modbus_answers_total", "counter", "Modbus answers received.", |u| {
            &u.answers
        }),
        (
            "nh_modbus_timeouts_total",
            "counter",
            "Modbus requests without an answer in time.",
            |u| &u.timeouts,
        ),
        (
            "nh_modbus_crc_errors_total",
            "counter",
            "Modbus attempts that failed with a CRC mismatch.",
            |u| &u.crc_errors,
        ),
        (
            "nh_modbus_foreign_frames_total",
            "counter",
            "Frames of another unit read while waiting for this one.",
            |u| &u.foreign_frames,
        ),
        (
            "nh_modbus_decode_errors_total",
            "counter",
            "Answers the register map refused.",
            |u| &u.decode_errors,
        ),
        (
            "nh_modbus_unit_online",
            "gauge",
            "1 while the unit answers its polls.",
            |u| &u.online,
        ),
    ];
    for (name, kind, help, f) in unit_metrics {
        family_header(out, name, help, kind);
        for (bus, unit, s) in units {
            let _ = writeln!(
                out,
                "{name}{{bus=\"{bus}\",unit=\"{unit}\"}} {}",
                f(s).load(Ordering::Relaxed)
            );
        }
    }
}

/// Modbus exception responses, by bus, unit and code.
fn render_exceptions(out: &mut String, units: &[(String, u8, Arc<UnitStats>)]) {
    let name = "nh_modbus_exceptions_total";
    family_header(out, name, "Modbus exception responses, by code.", "counter");
    for (bus, unit, s) in units {
        if let Ok(m) = s.exceptions.lock() {
            for (code, n) in m.iter() {
                let _ = writeln!(out, "{name}{{bus=\"{bus}\",unit=\"{unit}\",code=\"{code}\"}} {n}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buses_then_units_render_with_their_labels() {
        let stats = SerialStats::default();
        let bus = stats.bus("kitchen", "modbus_rtu");
        bus.up(1_000);
        bus.down(10_000);
        let unit = bus.unit(5);
        unit.requests.fetch_add(3, Ordering::Relaxed);
        unit.exception(2);
        let mut out = String::new();
        stats.render_at(&mut out, 12_500);
        assert!(out.starts_with(
            "# HELP nh_serial_link_up 1 while the serial port is open and working.\n\
             # TYPE nh_serial_link_up gauge\n\
             nh_serial_link_up{bus=\"kitchen\",protocol=\"modbus_rtu\"} 0\n"
        ));
        assert!(out.contains("nh_serial_link_down_seconds_total{bus=\"kitchen\",protocol=\"modbus_rtu\"} 2\n"));
        assert!(out.contains("nh_serial_link_down_since_seconds{bus=\"kitchen\",protocol=\"modbus_rtu\"} 10\n"));
        assert!(out.contains("nh_modbus_requests_total{bus=\"kitchen\",unit=\"5\"} 3\n"));
        assert!(out.ends_with("nh_modbus_exceptions_total{bus=\"kitchen\",unit=\"5\",code=\"2\"} 1\n"));
        assert!(!MetricsSource::up(&stats), "a link down degrades the status");
    }

    #[test]
    fn no_bus_no_families() {
        let mut out = String::new();
        SerialStats::default().render_at(&mut out, 0);
        assert!(out.is_empty());
        assert!(MetricsSource::up(&SerialStats::default()));
    }
}
