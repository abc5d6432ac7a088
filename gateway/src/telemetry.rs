//! The gateway's own counters and gauges, rendered as Prometheus text on `/metrics`.
//! Metric names are constants here so dashboards and tests can rely on them.
//!
//! The counters every stage shares (ingest, journal, InfluxDB, MQTT) live in [`Telemetry`].
//! A stage with counters of its own (the serial links, the embedded broker) keeps them and
//! implements [`MetricsSource`]; the wiring registers it, and `/metrics` renders the shared
//! families first, then each registered source in the order it was registered. This module
//! knows nothing of the stages: the dependencies point from them to it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub const MESSAGES_RECEIVED: &str = "nh_messages_received_total";
pub const READINGS_ACCEPTED: &str = "nh_readings_accepted_total";
pub const READINGS_REJECTED: &str = "nh_readings_rejected_total";
pub const UNREGISTERED: &str = "nh_readings_unregistered_total";
pub const TS_REPLACED: &str = "nh_readings_time_replaced_total";
pub const SEQ_DUPLICATES: &str = "nh_seq_duplicates_total";
pub const SEQ_GAPS: &str = "nh_seq_gaps_total";
pub const SEQ_RESETS: &str = "nh_seq_resets_total";
pub const JOURNAL_COMMITS: &str = "nh_journal_commits_total";
pub const JOURNAL_ROWS: &str = "nh_journal_rows_total";
pub const JOURNAL_LAST_ID: &str = "nh_journal_last_id";
pub const JOURNAL_COMMIT_ERRORS: &str = "nh_journal_commit_errors_total";
pub const JOURNAL_DELETED: &str = "nh_journal_deleted_rows_total";
pub const JOURNAL_BYTES: &str = "nh_journal_bytes";
pub const JOURNAL_BUDGET_BYTES: &str = "nh_journal_budget_bytes";
pub const JOURNAL_DROPPED_UNFORWARDED: &str = "nh_journal_dropped_unforwarded_total";
pub const JOURNAL_OVER_BUDGET: &str = "nh_journal_over_budget_total";
pub const JOURNAL_PRIORITY_COMMITS: &str = "nh_journal_priority_commits_total";
pub const JOURNAL_RECOVERIES: &str = "nh_journal_recoveries_total";
pub const UNCLEAN_STARTS: &str = "nh_unclean_starts_total";
pub const JOURNAL_SALVAGED_ROWS: &str = "nh_journal_salvaged_rows_total";
pub const JOURNAL_LOST_ROWS: &str = "nh_journal_lost_rows_total";
pub const CLOCK_JUMPS: &str = "nh_clock_jumps_total";
pub const INFLUX_CURSOR: &str = "nh_influx_cursor";
pub const INFLUX_LAG: &str = "nh_influx_lag_rows";
pub const INFLUX_BATCHES: &str = "nh_influx_batches_total";
pub const INFLUX_LINES: &str = "nh_influx_lines_total";
pub const INFLUX_FAILURES: &str = "nh_influx_failures_total";
pub const INFLUX_QUARANTINED: &str = "nh_influx_quarantined_lines_total";
pub const MQTT_CONNECTED: &str = "nh_mqtt_connected";
pub const MQTT_CONNECTS: &str = "nh_mqtt_connects_total";

/// A stage that owns counters and renders their families itself.
pub trait MetricsSource: Send + Sync {
    /// Appends this stage's families (Prometheus text: `# HELP`, `# TYPE`, samples).
    fn render(&self, out: &mut String);

    /// Whether the links this stage watches are up, for [`Telemetry::status`] (`/healthz`);
    /// a stage without links of its own is always up.
    fn up(&self) -> bool {
        true
    }
}

/// The registered [`MetricsSource`]s, in registration order.
#[derive(Default)]
struct Registered(RwLock<Vec<Arc<dyn MetricsSource>>>);

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registered({} sources)", self.list().len())
    }
}

impl Registered {
    fn list(&self) -> Vec<Arc<dyn MetricsSource>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Counters and gauges shared by every stage.
#[derive(Debug, Default)]
pub struct Telemetry {
    pub messages_received: AtomicU64,
    pub readings_accepted: AtomicU64,
    pub unregistered: AtomicU64,
    pub ts_replaced: AtomicU64,
    pub seq_duplicates: AtomicU64,
    pub seq_gaps: AtomicU64,
    pub seq_resets: AtomicU64,
    pub journal_commits: AtomicU64,
    pub journal_rows: AtomicU64,
    pub journal_last_id: AtomicI64,
    pub journal_commit_errors: AtomicU64,
    pub journal_deleted: AtomicU64,
    pub journal_bytes: AtomicU64,
    /// The disk budget in bytes (set by the journal writer).
    pub journal_budget_bytes: AtomicU64,
    /// Rows not yet forwarded that the disk budget dropped (non-life-safety only).
    pub journal_dropped_unforwarded: AtomicU64,
    /// Housekeeping passes that ended over the budget with only protected rows left.
    pub journal_over_budget: AtomicU64,
    pub journal_priority_commits: AtomicU64,
    /// Starts that found the previous run had not stopped cleanly (killed, crashed, power lost).
    pub unclean_starts: AtomicU64,
    /// Damaged journals salvaged at start, with the rows copied and lost.
    pub journal_recoveries: AtomicU64,
    pub journal_salvaged_rows: AtomicU64,
    pub journal_lost_rows: AtomicU64,
    /// Steps of the system clock against the monotonic clock (see `supervise`).
    pub clock_jumps: AtomicU64,
    pub influx_cursor: AtomicI64,
    pub influx_batches: AtomicU64,
    pub influx_lines: AtomicU64,
    pub influx_quarantined: AtomicU64,
    /// Lines written to InfluxDB a second time after crashes (the batch in flight), over the
    /// journal's life.
    pub influx_replayed: AtomicU64,
    pub mqtt_connected: AtomicU64,
    pub mqtt_connects: AtomicU64,
    /// 1 when the priority lane is configured (then its connection counts for `status`).
    pub mqtt_priority_lane: AtomicU64,
    pub mqtt_priority_connected: AtomicU64,
    /// Bulk-lane copies of priority-lane messages, acknowledged unprocessed.
    pub priority_skipped: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    influx_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Stages rendering families of their own, after the shared ones.
    registered: Registered,
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key).or_insert(0) += 1;
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// One unlabelled counter family.
pub fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
}

/// One unlabelled gauge family.
pub fn gauge(out: &mut String, name: &str, help: &str, v: i64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

/// The `# HELP` and `# TYPE` lines of a family (`kind`: `counter`, `gauge`) whose labelled
/// samples the caller writes next.
pub fn family_header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

impl Telemetry {
    /// Counts one rejected message by reason.
    pub fn rejected(&self, reason: &'static str) {
        bump(&self.rejected, reason);
    }

    /// Counts one failed InfluxDB write by kind (timeout, connect, http_5xx, http_4xx...).
    pub fn influx_failure(&self, kind: &'static str) {
        bump(&self.influx_failures, kind);
    }

    /// Adds a stage's own families to `/metrics`, after the shared families and the stages
    /// registered before it, and its links to [`Telemetry::status`].
    pub fn register(&self, source: Arc<dyn MetricsSource>) {
        self.registered
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(source);
    }

    /// `ok` while the MQTT subscriber is connected and every registered stage's links are up
    /// (the serial links), else `degraded`.
    pub fn status(&self) -> &'static str {
        let priority_ok = self.mqtt_priority_lane.load(Ordering::Relaxed) == 0
            || self.mqtt_priority_connected.load(Ordering::Relaxed) == 1;
        if self.mqtt_connected.load(Ordering::Relaxed) == 1 && priority_ok && self.registered_up() {
            "ok"
        } else {
            "degraded"
        }
    }

    fn registered_up(&self) -> bool {
        self.registered.list().iter().all(|s| s.up())
    }

    /// Failed InfluxDB writes, all kinds.
    pub fn influx_failures_total(&self) -> u64 {
        self.influx_failures.lock().map(|m| m.values().sum()).unwrap_or(0)
    }

    /// Rejected messages, all reasons.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.lock().map(|m| m.values().sum()).unwrap_or(0)
    }

    pub fn rejected_count(&self, reason: &str) -> u64 {
        self.rejected
            .lock()
            .map(|m| m.get(reason).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Prometheus text exposition format: the shared families, then the registered stages'.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.render_ingest(&mut out);
        self.render_journal(&mut out);
        self.render_clock(&mut out);
        self.render_influx(&mut out);
        self.render_mqtt(&mut out);
        for source in self.registered.list() {
            source.render(&mut out);
        }
        out
    }

    /// Messages in, readings accepted and rejected, device times and sequence numbers.
    fn render_ingest(&self, out: &mut String) {
        counter(
            out,
            MESSAGES_RECEIVED,
            "MQTT messages received.",
            load(&self.messages_received),
        );
        counter(
            out,
            READINGS_ACCEPTED,
            "Readings committed to the journal.",
            load(&self.readings_accepted),
        );
        family_header(out, READINGS_REJECTED, "Messages rejected, by reason.", "counter");
        if let Ok(m) = self.rejected.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(out, "{READINGS_REJECTED}{{reason=\"{reason}\"}} {n}");
            }
        }
        counter(
            out,
            UNREGISTERED,
            "Readings accepted from devices missing from the registry.",
            load(&self.unregistered),
        );
        counter(
            out,
            TS_REPLACED,
            "Readings whose device time was replaced by the receive time.",
            load(&self.ts_replaced),
        );
        counter(
            out,
            SEQ_DUPLICATES,
            "Readings repeating a device's previous seq.",
            load(&self.seq_duplicates),
        );
        counter(out, SEQ_GAPS, "Missing seq numbers detected.", load(&self.seq_gaps));
        counter(
            out,
            SEQ_RESETS,
            "Device seq decreases (device reset).",
            load(&self.seq_resets),
        );
    }

    /// Commits, size and disk budget, retention, start-up recovery.
    fn render_journal(&self, out: &mut String) {
        counter(
            out,
            JOURNAL_COMMITS,
            "Group commits of the journal.",
            load(&self.journal_commits),
        );
        counter(
            out,
            JOURNAL_ROWS,
            "Rows written to the journal.",
            load(&self.journal_rows),
        );
        gauge(
            out,
            JOURNAL_LAST_ID,
            "Id of the last committed journal row.",
            self.journal_last_id.load(Ordering::Relaxed),
        );
        counter(
            out,
            JOURNAL_COMMIT_ERRORS,
            "Failed journal commits.",
            load(&self.journal_commit_errors),
        );
        counter(
            out,
            JOURNAL_DELETED,
            "Rows deleted by retention or the disk budget (already forwarded, or no InfluxDB).",
            load(&self.journal_deleted),
        );
        gauge(
            out,
            JOURNAL_BYTES,
            "Size of the journal's pages in use.",
            load(&self.journal_bytes) as i64,
        );
        gauge(
            out,
            JOURNAL_BUDGET_BYTES,
            "Disk budget of the journal.",
            load(&self.journal_budget_bytes) as i64,
        );
        family_header(
            out,
            JOURNAL_DROPPED_UNFORWARDED,
            "Rows not yet in InfluxDB dropped from the journal, by reason.",
            "counter",
        );
        let _ = writeln!(
            out,
            "{JOURNAL_DROPPED_UNFORWARDED}{{reason=\"budget\"}} {}",
            load(&self.journal_dropped_unforwarded)
        );
        counter(
            out,
            JOURNAL_OVER_BUDGET,
            "Housekeeping passes that left the journal over budget (only life-safety rows and alerts left).",
            load(&self.journal_over_budget),
        );
        counter(
            out,
            JOURNAL_PRIORITY_COMMITS,
            "Journal transactions of the priority (life-safety) input.",
            load(&self.journal_priority_commits),
        );
        counter(
            out,
            UNCLEAN_STARTS,
            "Starts after an unclean stop of the previous run (killed, crashed, power lost): 1 in the process that found it.",
            load(&self.unclean_starts),
        );
        counter(
            out,
            JOURNAL_RECOVERIES,
            "Damaged journal files kept aside and salvaged at start.",
            load(&self.journal_recoveries),
        );
        counter(
            out,
            JOURNAL_SALVAGED_ROWS,
            "Rows copied out of damaged journal files.",
            load(&self.journal_salvaged_rows),
        );
        counter(
            out,
            JOURNAL_LOST_ROWS,
            "Rows of damaged journal files that could not be read (estimate).",
            load(&self.journal_lost_rows),
        );
    }

    /// Steps of the system clock seen by self-supervision.
    fn render_clock(&self, out: &mut String) {
        counter(
            out,
            CLOCK_JUMPS,
            "Steps of the system clock against the monotonic clock.",
            load(&self.clock_jumps),
        );
    }

    /// The forwarder's cursor and lag, batches, failures by kind, replays, quarantine.
    fn render_influx(&self, out: &mut String) {
        let cursor = self.influx_cursor.load(Ordering::Relaxed);
        gauge(out, INFLUX_CURSOR, "Last journal row accepted by InfluxDB.", cursor);
        let lag = (self.journal_last_id.load(Ordering::Relaxed) - cursor).max(0);
        gauge(out, INFLUX_LAG, "Journal rows not yet accepted by InfluxDB.", lag);
        counter(
            out,
            INFLUX_BATCHES,
            "Batches accepted by InfluxDB.",
            load(&self.influx_batches),
        );
        counter(
            out,
            INFLUX_LINES,
            "Lines accepted by InfluxDB.",
            load(&self.influx_lines),
        );
        family_header(out, INFLUX_FAILURES, "Failed InfluxDB writes, by kind.", "counter");
        if let Ok(m) = self.influx_failures.lock() {
            for (kind, n) in m.iter() {
                let _ = writeln!(out, "{INFLUX_FAILURES}{{kind=\"{kind}\"}} {n}");
            }
        }
        counter(
            out,
            "nh_influx_replayed_lines_total",
            "Lines written again after a crash (the batch in flight), over the journal's life.",
            load(&self.influx_replayed),
        );
        counter(
            out,
            INFLUX_QUARANTINED,
            "Lines InfluxDB refused as malformed, set aside.",
            load(&self.influx_quarantined),
        );
    }

    /// The MQTT subscriber's connection, and the priority lane's when it is configured.
    fn render_mqtt(&self, out: &mut String) {
        gauge(
            out,
            MQTT_CONNECTED,
            "1 while the MQTT subscriber is connected.",
            load(&self.mqtt_connected) as i64,
        );
        counter(
            out,
            MQTT_CONNECTS,
            "MQTT connections made by the subscriber.",
            load(&self.mqtt_connects),
        );
        if load(&self.mqtt_priority_lane) == 1 {
            gauge(
                out,
                "nh_mqtt_priority_connected",
                "1 while the priority-lane (life-safety) subscriber is connected.",
                load(&self.mqtt_priority_connected) as i64,
            );
            counter(
                out,
                "nh_mqtt_priority_skipped_total",
                "Bulk-lane copies of life-safety messages left to the priority lane.",
                load(&self.priority_skipped),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stage with one family and a link that is up or down.
    struct Stage {
        name: &'static str,
        up: bool,
    }

    impl MetricsSource for Stage {
        fn render(&self, out: &mut String) {
            counter(out, self.name, "A stage's own counter.", 7);
        }

        fn up(&self) -> bool {
            self.up
        }
    }

    #[test]
    fn families_are_rendered_as_prometheus_text() {
        let t = Telemetry::default();
        t.rejected("bad_json");
        t.rejected("bad_json");
        t.journal_dropped_unforwarded.store(3, Ordering::Relaxed);
        let text = t.render();
        assert!(text.starts_with(
            "# HELP nh_messages_received_total MQTT messages received.\n\
             # TYPE nh_messages_received_total counter\n\
             nh_messages_received_total 0\n"
        ));
        assert!(text.contains(
            "# HELP nh_readings_rejected_total Messages rejected, by reason.\n\
             # TYPE nh_readings_rejected_total counter\n\
             nh_readings_rejected_total{reason=\"bad_json\"} 2\n"
        ));
        assert!(text.contains("nh_journal_dropped_unforwarded_total{reason=\"budget\"} 3\n"));
        assert!(
            !text.contains("nh_mqtt_priority_connected"),
            "no priority lane configured"
        );
        assert!(text.ends_with("nh_mqtt_connects_total 0\n"), "{text}");
    }

    #[test]
    fn registered_stages_render_after_the_shared_families_in_order_and_count_for_status() {
        let t = Telemetry::default();
        t.mqtt_connected.store(1, Ordering::Relaxed);
        assert_eq!(t.status(), "ok");
        t.register(Arc::new(Stage {
            name: "nh_first_total",
            up: true,
        }));
        t.register(Arc::new(Stage {
            name: "nh_second_total",
            up: true,
        }));
        let text = t.render();
        let first = text.find("# HELP nh_first_total").unwrap_or(usize::MAX);
        let second = text.find("# HELP nh_second_total").unwrap_or(usize::MAX);
        let shared = text.find("# HELP nh_mqtt_connects_total").unwrap_or(usize::MAX);
        assert!(shared < first && first < second && second < usize::MAX, "{text}");
        assert_eq!(t.status(), "ok");
        t.register(Arc::new(Stage {
            name: "nh_third_total",
            up: false,
        }));
        assert_eq!(t.status(), "degraded");
    }
}
