//! The MQTT source: subscribes with rumqttc, decodes and normalizes each message, and queues it
//! for the journal. On an external broker QoS 1 messages are acknowledged (manual acks) only
//! after the journal commit, from a separate task: rumqttc deadlocks when the task that polls the
//! event loop awaits a client call. On the embedded broker they are acknowledged on receipt (see
//! [`AckPolicy`]). rumqttc neither backs off nor resubscribes on reconnect: both are done here.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::decode::Decoder;
use crate::journal::{Ack, Ingest};
use crate::normalize::Normalizer;
use crate::telemetry::Telemetry;

/// One subscription: the filter, its QoS and the decoder for what it delivers.
#[derive(Debug, Clone)]
pub struct Route {
    pub filter: String,
    pub qos: QoS,
    pub decoder: Decoder,
}

/// Which lane a connection serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Everything the subscriptions match, except the priority lane's topics.
    Bulk,
    /// The exact topics of life-safety devices, into the journal's priority queue.
    Priority,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Bulk => "bulk",
            Lane::Priority => "priority",
        }
    }
}

/// When a QoS 1 message is acknowledged to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckPolicy {
    /// After its readings are committed to the journal: a persistent broker keeps what the
    /// gateway had not committed when it crashed and delivers it again (external mode).
    AfterCommit,
    /// As soon as it is read from the connection (embedded mode). The embedded broker lives
    /// in the gateway's process and keeps nothing across a crash, so a later acknowledgement
    /// protects nothing a crash does not take anyway: the broker's RAM log dies with the
    /// journal queue. It only cost throughput, since rumqttd 0.20 sends a subscriber at most
    /// 100 unacknowledged publishes (a constant of its router): acknowledging after each
    /// commit capped ingest at 100 readings per commit round trip. Back-pressure is unchanged:
    /// a full journal queue stops the subscriber reading, and the broker holds the rest.
    OnReceipt,
}

#[derive(Debug, Clone)]
pub struct MqttSourceConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<crate::secret::Secret>,
    pub clean_session: bool,
    pub keep_alive: Duration,
    pub max_packet_bytes: usize,
    pub inflight: u16,
    pub ack: AckPolicy,
    pub routes: Vec<Route>,
    pub lane: Lane,
    /// Which of the topics the subscriptions deliver this connection processes; the others
    /// are acknowledged unprocessed.
    pub select: Select,
}

/// Which delivered topics a connection processes.
#[derive(Debug, Clone, Default)]
pub enum Select {
    /// Every topic its subscriptions match.
    #[default]
    All,
    /// All but these (the bulk lane, beside a priority lane that takes them).
    Except(Arc<HashSet<String>>),
    /// Only these (the priority lane on the embedded broker: it subscribes to the same wildcard
    /// filters as the bulk lane and so shares their logs, instead of one log per device).
    Only(Arc<HashSet<String>>),
}

impl Select {
    fn takes(&self, topic: &str) -> bool {
        match self {
            Select::All => true,
            Select::Except(set) => !set.contains(topic),
            Select::Only(set) => set.contains(topic),
        }
    }
}

/// Capacity of rumqttc's request channel (acks and subscribes to send).
const REQUEST_CAPACITY: usize = 10_000;
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

pub struct MqttSource {
    pub cfg: MqttSourceConfig,
    /// Routes without wildcards by topic (the priority lane has one per device).
    exact: HashMap<String, usize>,
    /// Told once every subscription is acknowledged by the broker (or the broker kept our
    /// session): from then on nothing published is missed.
    pub subscribed: Option<tokio::sync::oneshot::Sender<()>>,
    pub normalizer: Arc<Normalizer>,
    pub journal: mpsc::Sender<Ingest>,
    pub telemetry: Arc<Telemetry>,
}

impl MqttSource {
    pub fn new(
        cfg: MqttSourceConfig,
        subscribed: Option<tokio::sync::oneshot::Sender<()>>,
        normalizer: Arc<Normalizer>,
        journal: mpsc::Sender<Ingest>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let exact = cfg
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.filter.contains(['+', '#']))
            .map(|(i, r)| (r.filter.clone(), i))
            .collect();
        MqttSource {
            cfg,
            exact,
            subscribed,
            normalizer,
            journal,
            telemetry,
        }
    }

    /// Runs until cancelled; reconnects with backoff on any link error.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut subscribed = self.subscribed.take();
        let mut pending_subacks = 0usize;
        let cfg = &self.cfg;
        let mut options = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
        options
            .set_keep_alive(cfg.keep_alive)
            .set_clean_session(cfg.clean_session)
            .set_manual_acks(cfg.ack == AckPolicy::AfterCommit)
            .set_inflight(cfg.inflight)
            .set_request_channel_capacity(REQUEST_CAPACITY)
            .set_max_packet_size(cfg.max_packet_bytes, cfg.max_packet_bytes);
        if let Some(user) = &cfg.username {
            let pass = cfg.password.as_ref().map(|p| p.expose().to_owned()).unwrap_or_default();
            options.set_credentials(user.clone(), pass);
        }
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        // Small packets (acks, alerts) must not wait for Nagle's algorithm and delayed ACKs (40 ms).
        let mut net = eventloop.network_options();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);

        // Acknowledgements travel from the journal writer to this task, in commit order.
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Publish>();
        let acker_client = client.clone();
        let acker = tokio::spawn(async move {
            while let Some(p) = ack_rx.recv().await {
                if let Err(e) = acker_client.ack(&p).await {
                    debug!(error = %e, "ack not sent (connection closing)");
                }
            }
        });

        let mut backoff = BACKOFF_START;
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                e = eventloop.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    self.handle(p, &ack_tx).await;
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = BACKOFF_START;
                    self.connected_gauge().store(1, Ordering::Relaxed);
                    self.telemetry.mqtt_connects.fetch_add(1, Ordering::Relaxed);
                    info!(host = %cfg.host, port = cfg.port, lane = cfg.lane.as_str(), session_present = ack.session_present, "MQTT connected");
                    if ack.session_present {
                        if let Some(tx) = subscribed.take() {
                            let _ = tx.send(());
                        }
                    } else {
                        pending_subacks = cfg.routes.len();
                        // Subscribing from another task: this one must keep polling.
                        let client = client.clone();
                        let routes: Vec<(String, QoS)> = cfg.routes.iter().map(|r| (r.filter.clone(), r.qos)).collect();
                        tokio::spawn(async move {
                            for (filter, qos) in routes {
                                if let Err(e) = client.subscribe(filter.clone(), qos).await {
                                    warn!(%filter, error = %e, "subscribe failed");
                                }
                            }
                        });
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    if s.return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    {
                        error!(
                            pkid = s.pkid,
                            "the broker refused a subscription: its messages will not arrive"
                        );
                    }
                    debug!(pkid = s.pkid, codes = ?s.return_codes, "subscribed");
                    pending_subacks = pending_subacks.saturating_sub(1);
                    if pending_subacks == 0 {
                        if let Some(tx) = subscribed.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.connected_gauge().store(0, Ordering::Relaxed);
                    warn!(host = %cfg.host, port = cfg.port, error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection lost");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        self.connected_gauge().store(0, Ordering::Relaxed);
        let _ = client.try_disconnect();
        // Let the disconnect go out; unacknowledged QoS 1 messages stay with the broker.
        let _ = tokio::time::timeout(Duration::from_millis(500), drain(&mut eventloop)).await;
        acker.abort();
    }

    /// `nh_mqtt_connected` for the bulk lane, `nh_mqtt_priority_connected` for the priority lane.
    fn connected_gauge(&self) -> &AtomicU64 {
        match self.cfg.lane {
            Lane::Bulk => &self.telemetry.mqtt_connected,
            Lane::Priority => &self.telemetry.mqtt_priority_connected,
        }
    }

    async fn handle(&self, p: Publish, ack_tx: &mpsc::UnboundedSender<Publish>) {
        let recv_ms = self.normalizer.clock.now_ms();
        let records = if !self.cfg.select.takes(&p.topic) {
            // The other lane's connection has its own copy of this message.
            if self.cfg.lane == Lane::Bulk {
                self.telemetry.priority_skipped.fetch_add(1, Ordering::Relaxed);
            }
            Vec::new()
        } else {
            let route = match self.exact.get(p.topic.as_str()) {
                Some(&i) => self.cfg.routes.get(i),
                None => self.cfg.routes.iter().find(|r| topic_matches(&r.filter, &p.topic)),
            };
            match route {
                Some(route) => self.normalizer.process(&route.decoder, &p.topic, &p.payload, recv_ms),
                None => {
                    self.telemetry.messages_received.fetch_add(1, Ordering::Relaxed);
                    self.telemetry.rejected("no_route");
                    Vec::new()
                }
            }
        };
        // On receipt, rumqttc's event loop has acknowledged the message already.
        let ack = (p.qos != QoS::AtMostOnce && self.cfg.ack == AckPolicy::AfterCommit).then(|| {
            let tx = ack_tx.clone();
            Ack::new(move || {
                let _ = tx.send(p);
            })
        });
        if records.is_empty() && ack.is_none() {
            return;
        }
        // A full queue waits here: the event loop is not polled, so the broker holds the rest.
        if self.journal.send(Ingest { records, ack }).await.is_err() {
            debug!("journal closed; message left unacknowledged for redelivery");
        }
    }
}

async fn drain(eventloop: &mut EventLoop) {
    while eventloop.poll().await.is_ok() {}
}

/// MQTT topic filter matching (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn filters_match_like_mqtt() {
        assert!(topic_matches("nh/+/+/telemetry", "nh/s1/dev-1/telemetry"));
        assert!(!topic_matches("nh/+/+/telemetry", "nh/s1/dev-1/telemetry/x"));
        assert!(topic_matches("zigbee2mqtt/+", "zigbee2mqtt/smoke_1"));
        assert!(!topic_matches("zigbee2mqtt/+", "zigbee2mqtt/smoke_1/availability"));
        assert!(topic_matches("vendor/#", "vendor/a/b/c"));
        assert!(topic_matches("#", "anything/at/all"));
    }
}
