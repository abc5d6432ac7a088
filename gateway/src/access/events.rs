//! Refused MQTT acts: counted (`nh_mqtt_refused_total{reason}`, and per identity for the API),
//! written to the access audit, and turned into readings for rule S8; and login lockouts, turned
//! into S8's P3 flag `login_lockout` of `gateway:login:{operator}` (`gateway:login-unknown` for
//! names that are no operator's).
//!
//! Per identity means per registered identity: refusals of unknown usernames are counted together
//! as `unknown`, those without credentials as `anonymous`, so an attacker inventing names cannot
//! grow a label set or a map.
//!
//! S8 reads the flag `access_refused` of the gateway-internal device `gateway:access:{identity}`
//! (`gateway:access-unknown`, `gateway:access-anonymous` for the two aggregates): true at the first
//! refusal, false after [`QUIET_MS`] (gateway time) without one. One alert per identity per
//! episode, however many refusals a misconfigured device piles up. The audit gets the first
//! refusal of a key and then at most one entry per [`AUDIT_EVERY_MS`], carrying the count since
//! the last entry.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Identity, Kind, Reason};
use crate::clock::Clock;
use crate::journal::{Ingest, Store};
use crate::reading::Record;
use crate::telemetry::{self, MetricsSource};

/// A key's flag clears after this long without a refusal (gateway time).
pub const QUIET_MS: i64 = 10 * 60_000;
/// At most one audit entry per key per minute after the first (gateway time).
pub const AUDIT_EVERY_MS: i64 = 60_000;
/// The flag's metric.
pub const METRIC: &str = "access_refused";
/// Refusals waiting to be journaled and audited; beyond, they are counted only.
const QUEUE: usize = 1024;
/// Longest topic kept in an audit entry.
const MAX_TOPIC_CHARS: usize = 200;

/// One refused act, as the watcher sees it.
#[derive(Debug)]
pub struct Refusal {
    /// The identity (or aggregate) for MQTT; the operator's name (or `unknown`) for a lockout.
    pub key: String,
    pub what: What,
    pub peer: IpAddr,
}

/// What was refused.
#[derive(Debug)]
pub enum What {
    /// An MQTT act, audited here (at a limited rate).
    Mqtt { reason: Reason, topic: Option<String> },
    /// A login lockout (audited by the login route itself).
    LoginLockout,
}

/// The flag of rule S8's login entry (P3): a lockout started for this operator's name.
pub const LOGIN_METRIC: &str = "login_lockout";

/// The gateway-internal device of `user`'s login lockouts (`gateway:login-unknown` for names
/// that are not operators', so that guessed names cannot grow the set of devices).
pub fn login_device_for(user: Option<&str>) -> String {
    match user {
        Some(name) => format!("gateway:login:{name}"),
        None => format!("gateway:login-{UNKNOWN}"),
    }
}

/// The flag metric of a gateway-internal access device.
fn metric_of(device: &str) -> &'static str {
    if device.starts_with("gateway:login") {
        LOGIN_METRIC
    } else {
        METRIC
    }
}

/// The counts of one identity (or aggregate), for the API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdentityCounts {
    pub kind: &'static str,
    /// Connections open now.
    pub connected: u64,
    pub refused: BTreeMap<&'static str, u64>,
}

/// Counters and the watcher's queue.
pub struct AccessEvents {
    by_reason: [AtomicU64; Reason::ALL.len()],
    per_identity: Mutex<HashMap<String, IdentityCounts>>,
    sessions: AtomicU64,
    unrecorded: AtomicU64,
    anonymous_ids: AtomicU64,
    tx: mpsc::Sender<Refusal>,
}

/// The aggregate key of refusals without credentials.
pub const ANONYMOUS: &str = "anonymous";
/// The aggregate key of refusals naming no known identity.
pub const UNKNOWN: &str = "unknown";

/// The gateway-internal device S8 reads for `key`.
pub fn device_for(key: &str) -> String {
    match key {
        ANONYMOUS | UNKNOWN => format!("gateway:access-{key}"),
        name => format!("gateway:access:{name}"),
    }
}

impl AccessEvents {
    /// The counters, and the receiver the [`Watcher`] reads.
    pub fn new() -> (Arc<AccessEvents>, mpsc::Receiver<Refusal>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let events = AccessEvents {
            by_reason: Default::default(),
            per_identity: Mutex::new(HashMap::new()),
            sessions: AtomicU64::new(0),
            unrecorded: AtomicU64::new(0),
            anonymous_ids: AtomicU64::new(0),
            tx,
        };
        (Arc::new(events), rx)
    }

    /// Counts a refused act of `claimed` (the identity it named, if any) from `peer`.
    pub fn refused(&self, claimed: Option<&Identity>, reason: Reason, peer: IpAddr, topic: Option<String>) {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.by_reason[i].fetch_add(1, Ordering::Relaxed);
        let (key, kind) = match claimed {
            Some(id) if id.kind != Kind::Anonymous => (id.name.clone(), id.kind.as_str()),
            Some(_) => (ANONYMOUS.to_owned(), Kind::Anonymous.as_str()),
            None if reason == Reason::NoCredentials => (ANONYMOUS.to_owned(), Kind::Anonymous.as_str()),
            None => (UNKNOWN.to_owned(), "unknown"),
        };
        {
            let mut map = self.per_identity.lock().unwrap_or_else(|p| p.into_inner());
            let c = map.entry(key.clone()).or_insert_with(|| IdentityCounts {
                kind,
                ..Default::default()
            });
            *c.refused.entry(reason.as_str()).or_default() += 1;
        }
        warn!(identity = %key, reason = reason.as_str(), %peer, "MQTT act refused");
        let topic = topic.map(|t| t.chars().take(MAX_TOPIC_CHARS).collect());
        let refusal = Refusal {
            key,
            what: What::Mqtt { reason, topic },
            peer,
        };
        if self.tx.try_send(refusal).is_err() {
            self.unrecorded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A failed login started a lockout; `user` when the name is a configured operator's.
    pub fn login_lockout(&self, user: Option<&str>, peer: IpAddr) {
        // An empty key: not an operator's name (`gateway:login-unknown`).
        let refusal = Refusal {
            key: user.unwrap_or_default().to_owned(),
            what: What::LoginLockout,
            peer,
        };
        if self.tx.try_send(refusal).is_err() {
            self.unrecorded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A number for the client id of an anonymous client that sent none.
    pub fn next_anonymous_id(&self) -> u64 {
        self.anonymous_ids.fetch_add(1, Ordering::Relaxed)
    }

    pub fn connected(&self, who: &Identity) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        let mut map = self.per_identity.lock().unwrap_or_else(|p| p.into_inner());
        let key = if who.kind == Kind::Anonymous {
            ANONYMOUS
        } else {
            who.name.as_str()
        };
        map.entry(key.to_owned())
            .or_insert_with(|| IdentityCounts {
                kind: who.kind.as_str(),
                ..Default::default()
            })
            .connected += 1;
    }

    pub fn disconnected(&self, who: &Identity) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
        let mut map = self.per_identity.lock().unwrap_or_else(|p| p.into_inner());
        let key = if who.kind == Kind::Anonymous {
            ANONYMOUS
        } else {
            who.name.as_str()
        };
        if let Some(c) = map.get_mut(key) {
            c.connected = c.connected.saturating_sub(1);
        }
    }

    /// Refusals of one reason so far.
    pub fn refused_total(&self, reason: Reason) -> u64 {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.by_reason[i].load(Ordering::Relaxed)
    }

    /// Every identity that connected or was refused, with its counts.
    pub fn per_identity(&self) -> BTreeMap<String, IdentityCounts> {
        let map = self.per_identity.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl MetricsSource for AccessEvents {
    fn render(&self, out: &mut String) {
        use std::fmt::Write;
        telemetry::family_header(
            out,
            "nh_mqtt_refused_total",
            "MQTT acts the embedded broker's front door refused, by reason (docs/security.md).",
            "counter",
        );
        for (i, r) in Reason::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "nh_mqtt_refused_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.by_reason[i].load(Ordering::Relaxed)
            );
        }
        telemetry::gauge(
            out,
            "nh_mqtt_sessions",
            "MQTT connections admitted by the embedded broker's front door and open now.",
            self.sessions.load(Ordering::Relaxed) as i64,
        );
        telemetry::counter(
            out,
            "nh_mqtt_refusals_unrecorded_total",
            "Refused MQTT acts counted but neither audited nor journaled because their queue was full.",
            self.unrecorded.load(Ordering::Relaxed),
        );
    }
}

/// Writes refusals to the audit and raises and clears the S8 flags.
pub struct Watcher {
    pub clock: Clock,
    /// The journal writer's priority input.
    pub journal: mpsc::Sender<Ingest>,
    /// The journal (for the flags' last values at start).
    pub journal_path: PathBuf,
    pub audit: crate::auth::http::AuditWriter,
}

struct Flag {
    up: bool,
    last_ms: i64,
    audited_ms: i64,
    unaudited: u64,
}

impl Watcher {
    pub async fn run(self, mut rx: mpsc::Receiver<Refusal>, shutdown: CancellationToken) {
        let path = self.journal_path.clone();
        let prior = tokio::task::spawn_blocking(move || raised_flags(&path))
            .await
            .unwrap_or_default();
        let now = self.clock.now_ms();
        // A flag left up by the last run clears after a quiet period from now.
        let mut flags: HashMap<String, Flag> = prior
            .into_iter()
            .map(|device| {
                (
                    device,
                    Flag {
                        up: true,
                        last_ms: now,
                        audited_ms: i64::MIN / 2,
                        unaudited: 0,
                    },
                )
            })
            .collect();
        let period = Duration::from_secs(10)
            .div_f64(self.clock.scale().max(1.0))
            .max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = rx.recv() => {
                    let Some(r) = r else { return };
                    self.on_refusal(&mut flags, r).await;
                }
                _ = tick.tick() => {
                    let now = self.clock.now_ms();
                    let quiet: Vec<String> = flags
                        .iter()
                        .filter(|(_, f)| f.up && now - f.last_ms >= QUIET_MS)
                        .map(|(d, _)| d.clone())
                        .collect();
                    for device in quiet {
                        if let Some(f) = flags.get_mut(&device) {
                            f.up = false;
                        }
                        info!(%device, "refusals quiet: S8 flag cleared");
                        if !self.journal_flag(&device, false, now).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    async fn on_refusal(&self, flags: &mut HashMap<String, Flag>, r: Refusal) {
        let now = self.clock.now_ms();
        let device = match &r.what {
            What::Mqtt { .. } => device_for(&r.key),
            What::LoginLockout => login_device_for((!r.key.is_empty()).then_some(r.key.as_str())),
        };
        let f = flags.entry(device.clone()).or_insert(Flag {
            up: false,
            last_ms: now,
            audited_ms: i64::MIN / 2,
            unaudited: 0,
        });
        f.last_ms = now;
        if let What::Mqtt { reason, topic } = &r.what {
            f.unaudited += 1;
            if now - f.audited_ms >= AUDIT_EVERY_MS {
                let detail = serde_json::json!({
                    "reason": reason.as_str(),
                    "peer": r.peer.to_string(),
                    "topic": topic,
                    "refusals": f.unaudited,
                });
                f.audited_ms = now;
                f.unaudited = 0;
                self.audit
                    .record(now, format!("mqtt:{}", r.key), "mqtt_refused", detail)
                    .await;
            }
        }
        if !f.up {
            f.up = true;
            let _ = self.journal_flag(&device, true, now).await;
        }
    }

    /// Journals `device`'s flag; false when the journal has gone.
    async fn journal_flag(&self, device: &str, value: bool, now: i64) -> bool {
        let record = Record::gateway_flag(device, metric_of(device), value, now);
        self.journal
            .send(Ingest {
                records: vec![record],
                ack: None,
            })
            .await
            .is_ok()
    }
}

/// The access devices whose flag was last journaled up.
fn raised_flags(path: &std::path::Path) -> Vec<String> {
    match Store::open_secondary(path).and_then(|s| s.devices()) {
        Ok(devices) => devices
            .iter()
            .filter(|d| d.id.starts_with("gateway:access") || d.id.starts_with("gateway:login"))
            .filter(|d| d.metrics.get(metric_of(&d.id)).and_then(serde_json::Value::as_bool) == Some(true))
            .map(|d| d.id.clone())
            .collect(),
        Err(e) => {
            warn!(error = %e, "MQTT access: last S8 flags unreadable; assuming none raised");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Pattern;
    use crate::reading::Value;

    fn identity(name: &str, kind: Kind) -> Identity {
        Identity::new(name.to_owned(), kind, vec![Pattern::new("nh/s/x/#")], Vec::new())
    }

    /// The flag a journaled ingest carries: (device, value).
    fn flag(ingest: &Ingest) -> (String, bool) {
        let r = &ingest.records[0];
        let v = matches!(r.metrics.get(METRIC), Some(Value::Bool(true)));
        (r.device.clone(), v)
    }

    #[test]
    fn refusals_are_counted_per_reason_and_per_registered_identity_only() {
        let (events, _rx) = AccessEvents::new();
        let peer: IpAddr = [10, 0, 0, 9].into();
        let dev = identity("bed-1", Kind::Device);
        events.refused(Some(&dev), Reason::Publish, peer, Some("nh/s/bed-2/telemetry".into()));
        events.refused(Some(&dev), Reason::Publish, peer, None);
        for _ in 0..50 {
            // Invented user names never grow the map.
            events.refused(None, Reason::UnknownUser, peer, None);
        }
        events.refused(None, Reason::NoCredentials, peer, None);
        let per = events.per_identity();
        assert_eq!(per.keys().collect::<Vec<_>>(), ["anonymous", "bed-1", "unknown"]);
        assert_eq!(per["bed-1"].refused["publish"], 2);
        assert_eq!(per["unknown"].refused["unknown_user"], 50);
        assert_eq!(events.refused_total(Reason::UnknownUser), 50);
        let mut text = String::new();
        events.render(&mut text);
        assert!(text.contains("nh_mqtt_refused_total{reason=\"publish\"} 2"), "{text}");
        assert!(!text.contains("bed-1"), "no identity in a label: {text}");
        assert_eq!(device_for("unknown"), "gateway:access-unknown");
        assert_eq!(device_for("bed-1"), "gateway:access:bed-1");
    }

    /// On a clock 6,000 times faster than real time the quiet period (10 minutes) passes in
    /// 100 ms: the flag is raised once at the first refusal, not again for the next ones, and
    /// cleared after the quiet period.
    #[tokio::test]
    async fn the_s8_flag_rises_once_per_episode_and_clears_after_the_quiet_period() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = crate::clock::system_now_ms();
        let clock = Clock::test(now, now, 6_000.0);
        let (journal, mut journaled) = mpsc::channel(16);
        let (events, rx) = AccessEvents::new();
        let watcher = Watcher {
            clock,
            journal,
            journal_path: dir.path().join("journal.db"),
            audit: crate::auth::http::AuditWriter::new(dir.path().join("journal.db")),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(watcher.run(rx, stop.clone()));
        let dev = identity("bed-1", Kind::Device);
        let peer: IpAddr = [10, 0, 0, 9].into();
        for _ in 0..3 {
            events.refused(Some(&dev), Reason::Publish, peer, None);
        }
        let wait = Duration::from_secs(10);
        let first = tokio::time::timeout(wait, journaled.recv())
            .await
            .expect("raised")
            .expect("open");
        assert_eq!(flag(&first), ("gateway:access:bed-1".to_owned(), true));
        let second = tokio::time::timeout(wait, journaled.recv())
            .await
            .expect("cleared")
            .expect("open");
        assert_eq!(
            flag(&second),
            ("gateway:access:bed-1".to_owned(), false),
            "one raise for three refusals, then the clear"
        );
        stop.cancel();
        task.await.expect("watcher");
    }
}
