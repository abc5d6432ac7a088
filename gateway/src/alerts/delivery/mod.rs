//! Delivery of alert changes to the control room and to integrations, from the alert event log.
//!
//! The alert manager appends every alert change to `alert_events` (seq increasing per gateway)
//! and announces the last written seq on a `watch`. Each channel reads that log from its own
//! cursor, so a slow or dead channel never holds up another, and a restart resumes where each
//! one stopped:
//!
//! - [`log`]: reading `alert_events` after a seq; the persisted cursors (`delivery_cursors`).
//! - [`mqtt`]: the MQTT publisher to `nh/{site}/alerts` (QoS 1) with its outbox: the cursor
//!   advances over PubAck'd seqs only, and everything after it is published again on reconnect.
//! - [`webhook`]: one task per configured URL, priority filter, retries with backoff until 2xx.
//! - [`sse`]: the server-sent event stream behind `GET /api/v1/alerts/stream` (replay after
//!   `Last-Event-ID`, then live, heartbeats with the gateway status).
//!
//! Delivery is at least once: consumers dedup by `seq`.

pub mod log;
pub mod mqtt;
pub mod sse;
pub mod webhook;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

use crate::rules::output::Priority;

pub use log::{AlertEvent, EventLog, LogError, SharedLog};
pub use mqtt::{MqttAlertPublisher, MqttAlertsConfig};
pub use sse::StreamState;
pub use webhook::WebhookTask;

/// Alert delivery settings of a site (`[alerts]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// HTTP endpoints that receive every alert change (POST, `application/json`, the alert JSON
    /// of the MQTT topic), each from its own persisted cursor.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

/// One webhook receiver (`[[alerts.webhooks]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` URL the alert JSON is POSTed to (no TLS stack is built in: use a LAN endpoint
    /// or a local TLS-terminating proxy).
    pub url: String,
    /// Lowest priority sent (`P1` highest .. `P4`): `P2` sends P1 and P2 changes only.
    #[serde(default = "default_min_priority")]
    pub min_priority: Priority,
    /// Timeout of one POST, connection included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Longest wait between two attempts; the wait doubles from 250 ms up to this.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

/// Every change is sent unless the operator narrows it.
fn default_min_priority() -> Priority {
    Priority::P4
}
/// Long enough for a receiver on a loaded LAN, short enough that a hung one is retried soon.
fn default_timeout_ms() -> u64 {
    5_000
}
/// A receiver back from an outage gets its backlog within a minute.
fn default_backoff_max_ms() -> u64 {
    60_000
}

impl AlertsConfig {
    /// Every problem of the section, each with its key (`alerts.webhooks[0].url`).
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let key = format!("alerts.webhooks[{i}]");
            if !w.url.starts_with("http://") {
                errors.push(format!(
                    "{key}.url: `{}` must be an http:// URL (no TLS stack is built in)",
                    w.url
                ));
            }
            if !seen.insert(w.url.as_str()) {
                errors.push(format!(
                    "{key}.url: `{}` is configured twice (one cursor per URL)",
                    w.url
                ));
            }
            if w.timeout_ms == 0 {
                errors.push(format!("{key}.timeout_ms: must be > 0"));
            }
            if w.backoff_max_ms == 0 {
                errors.push(format!("{key}.backoff_max_ms: must be > 0"));
            }
        }
        errors
    }
}

/// Counters of the delivery channels, owned by the delivery stages: the wiring makes one and
/// hands it to the MQTT publisher, the webhooks and the alert stream. They are not on `/metrics`
/// yet; publishing them means implementing `telemetry::MetricsSource` for this type and
/// registering it, under the names in the field docs.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// `nh_alerts_mqtt_connected` (gauge 0/1).
    pub mqtt_connected: AtomicU64,
    /// `nh_alerts_mqtt_published_total`: publishes handed to the client, re-publishes included.
    pub mqtt_published: AtomicU64,
    /// `nh_alerts_mqtt_acked_total`: PubAcks received.
    pub mqtt_acked: AtomicU64,
    /// `nh_alerts_mqtt_cursor` (gauge): last seq of the contiguous PubAck'd prefix.
    pub mqtt_cursor: AtomicU64,
    /// `nh_alerts_mqtt_connects_total`.
    pub mqtt_connects: AtomicU64,
    /// `nh_alerts_webhook_delivered_total`: events a webhook answered with 2xx.
    pub webhook_delivered: AtomicU64,
    /// `nh_alerts_webhook_failures_total`: failed attempts (error or non-2xx), retried.
    pub webhook_failures: AtomicU64,
    /// `nh_alerts_webhook_filtered_total`: events below a webhook's `min_priority`.
    pub webhook_filtered: AtomicU64,
    /// `nh_alerts_sse_clients` (gauge).
    pub sse_clients: AtomicU64,
    /// `nh_alerts_sse_events_total`: alert events written to SSE clients.
    pub sse_events: AtomicU64,
}

/// How long a channel waits for the watch before looking at the log anyway: a safety net in
/// case a writer commits without announcing it.
const FALLBACK_POLL: Duration = Duration::from_secs(2);

/// Waits for news of the alert event log. Call [`NewEvents::mark_seen`] *before* reading the
/// log, then [`NewEvents::wait`] when the read came back empty: a seq announced between the
/// two still wakes the wait, so nothing is missed and nothing spins.
#[derive(Debug, Clone)]
pub struct NewEvents {
    rx: watch::Receiver<u64>,
}

impl NewEvents {
    pub fn new(rx: watch::Receiver<u64>) -> NewEvents {
        NewEvents { rx }
    }

    /// The last announced seq, marking it seen.
    pub fn mark_seen(&mut self) -> u64 {
        *self.rx.borrow_and_update()
    }

    /// The last announced seq, without marking it.
    pub fn current(&self) -> u64 {
        *self.rx.borrow()
    }

    /// Returns when a new seq was announced or after [`FALLBACK_POLL`].
    pub async fn wait(&mut self) {
        tokio::select! {
            changed = self.rx.changed() => {
                if changed.is_err() {
                    // The writer is gone: nothing will be announced; look now and then.
                    tokio::time::sleep(FALLBACK_POLL).await;
                }
            }
            _ = tokio::time::sleep(FALLBACK_POLL) => {}
        }
    }
}

/// Doubling backoff between a start and a cap.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    start: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(start: Duration, max: Duration) -> Backoff {
        let start = start.min(max);
        Backoff {
            start,
            max,
            next: start,
        }
    }

    /// The wait before the next attempt (doubling each call).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.start;
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Temporary directories and event rows for the delivery tests.

    use std::path::Path;

    /// A directory under the system temp dir (`nh-delivery-<tag>-<random>`), removed on drop.
    pub struct TempDir(tempfile::TempDir);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            match tempfile::Builder::new()
                .prefix(&format!("nh-delivery-{tag}-"))
                .tempdir()
            {
                Ok(dir) => TempDir(dir),
                Err(e) => panic!("cannot create a temporary directory for {tag}: {e}"),
            }
        }

        pub fn path(&self) -> &Path {
            self.0.path()
        }
    }

    /// An alert JSON of the alert contract, docs/contracts.md (the fields delivery looks at, plus a few).
    pub fn alert_json(seq: u64, priority: &str) -> String {
        serde_json::json!({
            "id": format!("alert-{}", seq % 3),
            "seq": seq,
            "rule": "R1",
            "priority": priority,
            "state": "active",
            "device": "radar-3-12",
            "room": "3-12",
            "raised_at": 1_700_000_000_000u64,
            "updated_at": 1_700_000_000_000u64 + seq,
            "escalation_level": 0,
            "message": "跌倒",
            "message_en": "fall",
        })
        .to_string()
    }

    /// Appends events `seqs` with the given priority and returns the last seq.
    pub fn append(path: &Path, seqs: impl IntoIterator<Item = u64>, priority: &str) -> u64 {
        let log = match super::EventLog::open(path) {
            Ok(l) => l,
            Err(e) => panic!("open {}: {e}", path.display()),
        };
        let mut last = 0;
        for seq in seqs {
            if let Err(e) = log.append(
                seq,
                &format!("alert-{}", seq % 3),
                seq as i64,
                &alert_json(seq, priority),
            ) {
                panic!("append {seq}: {e}");
            }
            last = seq;
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let cfg: AlertsConfig = match toml_like(
            r#"{"webhooks":[{"url":"http://h/a"},{"url":"https://h/b","min_priority":"P2","timeout_ms":0}]}"#,
        ) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(cfg.webhooks[0].min_priority, Priority::P4);
        assert_eq!(cfg.webhooks[0].timeout_ms, 5_000);
        assert_eq!(cfg.webhooks[0].backoff_max_ms, 60_000);
        assert_eq!(cfg.webhooks[1].min_priority, Priority::P2);
        let errors = cfg.validate();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("alerts.webhooks[1].url"));
        assert!(errors[1].starts_with("alerts.webhooks[1].timeout_ms"));
        assert!(toml_like(r#"{"webhooks":[{"url":"http://h/a","bogus":1}]}"#).is_err());
    }

    fn toml_like(json: &str) -> Result<AlertsConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_millis(1000));
        let waits: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(waits, vec![250, 500, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(250));
    }
}
