//! The MQTT alert publisher: every alert change of the event log, in seq order, to
//! `nh/{site}/alerts` at QoS 1, through our own outbox.
//!
//! rumqttc silently drops in-flight QoS 1 publishes when the broker lost the session (seen with
//! 0.25 on a broker kill), so the outbox is the event log itself: the persisted cursor (`mqtt`)
//! advances only over the contiguous prefix of PubAck'd seqs, and every connection starts from a
//! fresh rumqttc event loop that publishes everything after the cursor again. Consumers dedup by
//! `seq`. At most [`MqttAlertsConfig::window`] publishes are unacknowledged at a time.
//!
//! Two tasks per connection: one only polls the event loop and forwards what it sees (rumqttc
//! deadlocks when the polling task awaits a client call), the other reads the log, publishes
//! and keeps the books. The publisher has its own connection and its own cursor: it never
//! waits for the ingest subscriber, the webhooks or the SSE clients, nor they for it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::log::SharedLog;
use super::{Backoff, DeliveryStats, NewEvents};

/// The cursor's name in `delivery_cursors`.
pub const CHANNEL: &str = "mqtt";

/// Unacknowledged publishes at a time: rumqttc's default window, and plenty for alert rates.
pub const DEFAULT_WINDOW: u16 = 100;
/// Largest alert JSON published; a larger one would make the broker drop the connection on
/// every attempt and hold every later alert behind it, so it is skipped with an error.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 256 * 1024;
const KEEP_ALIVE: Duration = Duration::from_secs(30);
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// How long shutdown lets the DISCONNECT go out.
const DISCONNECT_GRACE: Duration = Duration::from_millis(500);

/// Where and how the alert publisher connects.
#[derive(Debug, Clone)]
pub struct MqttAlertsConfig {
    pub site: String,
    /// The broker the gateway uses (the embedded one's address, or the external broker).
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<crate::secret::Secret>,
    pub window: u16,
    pub max_payload_bytes: usize,
}

impl MqttAlertsConfig {
    pub fn new(site: impl Into<String>, host: impl Into<String>, port: u16) -> MqttAlertsConfig {
        MqttAlertsConfig {
            site: site.into(),
            host: host.into(),
            port,
            username: None,
            password: None,
            window: DEFAULT_WINDOW,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }

    pub fn topic(&self) -> String {
        format!("nh/{}/alerts", self.site)
    }

    pub fn client_id(&self) -> String {
        format!("nh-gateway-{}-alerts", self.site)
    }

    fn options(&self) -> MqttOptions {
        let mut options = MqttOptions::new(self.client_id(), self.host.clone(), self.port);
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(false)
            .set_inflight(self.window.max(1))
            .set_request_channel_capacity(usize::from(self.window.max(1)) * 2)
            // Incoming: acks only. Outgoing: the largest alert we send, plus the topic.
            .set_max_packet_size(64 * 1024, self.max_payload_bytes + 1024);
        if let Some(user) = &self.username {
            let pass = self
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default();
            options.set_credentials(user.clone(), pass);
        }
        options
    }
}

/// The publisher task; `run` it once.
pub struct MqttAlertPublisher {
    pub cfg: MqttAlertsConfig,
    pub log: SharedLog,
    pub events: NewEvents,
    pub stats: Arc<DeliveryStats>,
}

/// What the polling task tells the publishing task.
enum LinkEvent {
    ConnAck { session_present: bool },
    Sent { pkid: u16 },
    Acked { pkid: u16 },
    Lost(ConnectionError),
}

/// The books of one connection: what was published, in order, and what the broker confirmed.
#[derive(Debug, Default)]
struct Outbox {
    /// Seqs published on this connection and not yet part of the acknowledged prefix, in seq
    /// order, each with whether its PubAck arrived.
    in_flight: VecDeque<(u64, bool)>,
    /// Published seqs whose packet id rumqttc has not reported yet (it reports them in order).
    awaiting_pkid: VecDeque<u64>,
    by_pkid: HashMap<u16, u64>,
    /// The last seq handed to the client on this connection.
    last_sent: u64,
}

impl Outbox {
    fn new(cursor: u64) -> Outbox {
        Outbox {
            last_sent: cursor,
            ..Outbox::default()
        }
    }

    fn sent(&mut self, seq: u64) {
        self.in_flight.push_back((seq, false));
        self.awaiting_pkid.push_back(seq);
        self.last_sent = seq;
    }

    fn pkid_assigned(&mut self, pkid: u16) {
        if let Some(seq) = self.awaiting_pkid.pop_front() {
            self.by_pkid.insert(pkid, seq);
        }
    }

    /// Marks a seq acknowledged; returns the new end of the acknowledged prefix, if it moved.
    fn acked_seq(&mut self, seq: u64) -> Option<u64> {
        if let Ok(i) = self.in_flight.binary_search_by_key(&seq, |(s, _)| *s) {
            self.in_flight[i].1 = true;
        }
        let mut prefix = None;
        while let Some(&(s, true)) = self.in_flight.front() {
            self.in_flight.pop_front();
            prefix = Some(s);
        }
        prefix
    }

    fn acked_pkid(&mut self, pkid: u16) -> Option<u64> {
        let seq = self.by_pkid.remove(&pkid)?;
        self.acked_seq(seq)
    }
}

impl MqttAlertPublisher {
    pub fn new(cfg: MqttAlertsConfig, log: SharedLog, events: NewEvents, stats: Arc<DeliveryStats>) -> Self {
        MqttAlertPublisher {
            cfg,
            log,
            events,
            stats,
        }
    }

    /// Runs until cancelled: connects, publishes from the cursor, reconnects with backoff.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let topic = self.cfg.topic();
        let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX);
        let Some(mut cursor) = self.load_cursor(&shutdown, &mut backoff).await else {
            return;
        };
        self.stats.mqtt_cursor.store(cursor, Ordering::Relaxed);
        info!(topic = %topic, cursor, "MQTT alert publisher starting");
        while !shutdown.is_cancelled() {
            let (client, mut eventloop) = AsyncClient::new(self.cfg.options(), usize::from(self.cfg.window.max(1)) * 2);
            // An alert is one small packet: never hold it back for Nagle's algorithm.
            let mut net = eventloop.network_options();
            net.set_tcp_nodelay(true);
            eventloop.set_network_options(net);
            let (link_tx, mut link_rx) = mpsc::unbounded_channel::<LinkEvent>();
            // Unbounded, but bounded in practice: one message per packet of a window-limited link.
            let poller = tokio::spawn(async move {
                loop {
                    let msg = match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(a))) => LinkEvent::ConnAck {
                            session_present: a.session_present,
                        },
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => LinkEvent::Sent { pkid },
                        Ok(Event::Incoming(Packet::PubAck(a))) => LinkEvent::Acked { pkid: a.pkid },
                        Ok(_) => continue,
                        Err(e) => {
                            let _ = link_tx.send(LinkEvent::Lost(e));
                            return eventloop;
                        }
                    };
                    if link_tx.send(msg).is_err() {
                        return eventloop;
                    }
                }
            });

            let lost = self
                .connection(&client, &mut link_rx, &mut cursor, &topic, &mut backoff, &shutdown)
                .await;
            self.stats.mqtt_connected.store(0, Ordering::Relaxed);
            if let Some(e) = lost {
                poller.abort();
                let wait = backoff.next_delay();
                warn!(host = %self.cfg.host, port = self.cfg.port, error = %e, retry_in_ms = wait.as_millis() as u64, cursor, "MQTT alert link lost; everything after the cursor will be published again");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            } else {
                // Shutdown: say goodbye; what is unacknowledged stays after the cursor.
                let _ = client.try_disconnect();
                drop(link_rx);
                let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
                    if let Ok(mut eventloop) = poller.await {
                        while eventloop.poll().await.is_ok() {}
                    }
                })
                .await;
                break;
            }
        }
        info!(cursor, "MQTT alert publisher stopped");
    }

    async fn load_cursor(&self, shutdown: &CancellationToken, backoff: &mut Backoff) -> Option<u64> {
        loop {
            match self.log.cursor(CHANNEL).await {
                Ok(c) => return Some(c),
                Err(e) => {
                    let wait = backoff.next_delay();
                    error!(error = %e, retry_in_ms = wait.as_millis() as u64, "MQTT alert publisher cannot read its cursor");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// One connection, from a fresh event loop. Returns the error that ended it, or `None` on
    /// shutdown.
    async fn connection(
        &mut self,
        client: &AsyncClient,
        link_rx: &mut mpsc::UnboundedReceiver<LinkEvent>,
        cursor: &mut u64,
        topic: &str,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Option<ConnectionError> {
        let window = usize::from(self.cfg.window.max(1));
        let mut outbox = Outbox::new(*cursor);
        let mut connected = false;
        // True when the last read of the log returned everything there was.
        let mut caught_up = false;
        loop {
            if connected && !caught_up && outbox.in_flight.len() < window {
                self.events.mark_seen();
                let room = window - outbox.in_flight.len();
                match self.log.after(outbox.last_sent, room).await {
                    Ok(batch) => {
                        caught_up = batch.len() < room;
                        for event in batch {
                            if event.json.len() > self.cfg.max_payload_bytes {
                                error!(seq = event.seq, alert = %event.alert_id, bytes = event.json.len(), "alert JSON too large for MQTT; skipped");
                                outbox.sent(event.seq);
                                outbox.awaiting_pkid.pop_back();
                                if let Some(prefix) = outbox.acked_seq(event.seq) {
                                    self.advance(cursor, prefix).await;
                                }
                                continue;
                            }
                            // Awaiting the client here is safe: this task does not poll the event loop.
                            if let Err(e) = client.publish(topic, QoS::AtLeastOnce, false, event.json).await {
                                debug!(error = %e, "publish not queued (connection closing)");
                                caught_up = true;
                                break;
                            }
                            self.stats.mqtt_published.fetch_add(1, Ordering::Relaxed);
                            outbox.sent(event.seq);
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "MQTT alert publisher cannot read the event log; retrying");
                        caught_up = true;
                    }
                }
            }
            let can_take_more = connected && caught_up && outbox.in_flight.len() < window;
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                msg = link_rx.recv() => match msg {
                    Some(LinkEvent::ConnAck { session_present }) => {
                        connected = true;
                        caught_up = false;
                        backoff.reset();
                        self.stats.mqtt_connected.store(1, Ordering::Relaxed);
                        self.stats.mqtt_connects.fetch_add(1, Ordering::Relaxed);
                        info!(host = %self.cfg.host, port = self.cfg.port, session_present, cursor = *cursor, "MQTT alert publisher connected");
                    }
                    Some(LinkEvent::Sent { pkid }) => outbox.pkid_assigned(pkid),
                    Some(LinkEvent::Acked { pkid }) => {
                        self.stats.mqtt_acked.fetch_add(1, Ordering::Relaxed);
                        if let Some(prefix) = outbox.acked_pkid(pkid) {
                            self.advance(cursor, prefix).await;
                        }
                    }
                    Some(LinkEvent::Lost(e)) => return Some(e),
                    None => return Some(ConnectionError::RequestsDone),
                },
                _ = self.events.wait(), if can_take_more => caught_up = false,
            }
        }
    }

    /// Persists a new cursor. A failed write is retried with the next advance; until then a
    /// restart publishes a few alerts twice, which consumers dedup.
    async fn advance(&self, cursor: &mut u64, prefix: u64) {
        *cursor = prefix;
        self.stats.mqtt_cursor.store(prefix, Ordering::Relaxed);
        if let Err(e) = self.log.set_cursor(CHANNEL, prefix).await {
            warn!(error = %e, cursor = prefix, "MQTT alert cursor not persisted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{append, TempDir};
    use super::*;

    #[test]
    fn outbox_advances_over_the_contiguous_acked_prefix_only() {
        let mut o = Outbox::new(10);
        for seq in [11, 12, 14, 15] {
            o.sent(seq);
        }
        for pkid in 1..=4 {
            o.pkid_assigned(pkid);
        }
        assert_eq!(o.acked_pkid(2), None, "12 acked, 11 not yet");
        assert_eq!(o.acked_pkid(4), None);
        assert_eq!(o.acked_pkid(1), Some(12));
        assert_eq!(o.acked_pkid(3), Some(15), "seq gaps (13) do not hold the prefix");
        assert_eq!(o.acked_pkid(3), None, "an unknown pkid changes nothing");
        assert!(o.in_flight.is_empty());
    }

    async fn subscriber(addr: std::net::SocketAddr, topic: &str) -> mpsc::UnboundedReceiver<serde_json::Value> {
        let mut opts = MqttOptions::new("test-alert-consumer", addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let topic = topic.to_owned();
        tokio::spawn(async move {
            let _client = client.clone();
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(t) = subscribed_tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) {
                            let _ = tx.send(v);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(10), subscribed_rx).await;
        rx
    }

    async fn next_seq(rx: &mut mpsc::UnboundedReceiver<serde_json::Value>) -> u64 {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(v)) => v["seq"].as_u64().unwrap_or(0),
            other => panic!("no alert on MQTT: {other:?}"),
        }
    }

    /// An embedded broker on a free port with the default limits.
    async fn test_broker() -> Result<crate::sources::broker::EmbeddedBroker, crate::sources::broker::BrokerError> {
        let limits = crate::sources::broker::BrokerLimits::default();
        crate::sources::broker::start("127.0.0.1:0".parse().expect("address"), 1 << 20, 100, &limits, None).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_every_event_in_order_and_persists_the_cursor() -> Result<(), Box<dyn std::error::Error>> {
        let dir = TempDir::new("mqtt");
        let db = dir.path().join("journal.db");
        let broker = test_broker().await?;
        let cfg = MqttAlertsConfig::new("s1", broker.addr.ip().to_string(), broker.addr.port());
        let mut rx = subscriber(broker.addr, &cfg.topic()).await;

        // A backlog written before the publisher starts, more than one window.
        let mut cfg = cfg;
        cfg.window = 20;
        let last = append(&db, 1..=50, "P1");
        let (seq_tx, seq_rx) = tokio::sync::watch::channel(last);
        let stats = Arc::new(DeliveryStats::default());
        let shutdown = CancellationToken::new();
        let publisher = MqttAlertPublisher::new(cfg, SharedLog::new(&db), NewEvents::new(seq_rx), stats.clone());
        let task = tokio::spawn(publisher.run(shutdown.clone()));
        for want in 1..=50 {
            assert_eq!(next_seq(&mut rx).await, want);
        }
        // Live events, announced on the watch.
        for seq in 51..=60 {
            append(&db, [seq], "P3");
            let _ = seq_tx.send(seq);
        }
        for want in 51..=60 {
            assert_eq!(next_seq(&mut rx).await, want);
        }
        // The cursor follows the PubAcks; wait for it (bounded) rather than sleeping a guess.
        let log = SharedLog::new(&db);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while log.cursor(CHANNEL).await? != 60 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "cursor stuck at {}",
                log.cursor(CHANNEL).await?
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await??;
        assert_eq!(stats.mqtt_cursor.load(Ordering::Relaxed), 60);

        // A restarted publisher resumes after the cursor: only new events are published.
        append(&db, [61, 62], "P2");
        let (_seq_tx2, seq_rx2) = tokio::sync::watch::channel(62);
        let shutdown = CancellationToken::new();
        let cfg = MqttAlertsConfig::new("s1", broker.addr.ip().to_string(), broker.addr.port());
        let publisher = MqttAlertPublisher::new(cfg, SharedLog::new(&db), NewEvents::new(seq_rx2), stats.clone());
        let task = tokio::spawn(publisher.run(shutdown.clone()));
        assert_eq!(next_seq(&mut rx).await, 61);
        assert_eq!(next_seq(&mut rx).await, 62);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await??;
        Ok(())
    }

    /// A TCP relay between the publisher and the broker whose connections the test can cut,
    /// as a broker restart or a network drop would.
    struct Relay {
        addr: std::net::SocketAddr,
        conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    }

    impl Relay {
        async fn start(upstream: std::net::SocketAddr) -> std::io::Result<Relay> {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
            let registry = conns.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let handle = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    registry.lock().unwrap_or_else(|p| p.into_inner()).push(handle);
                }
            });
            Ok(Relay { addr, conns })
        }

        /// Drops every relayed connection (both sides see a reset).
        fn cut(&self) {
            for h in self.conns.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
                h.abort();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_link_loses_nothing_everything_after_the_cursor_is_sent_again(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = TempDir::new("mqtt-cut");
        let db = dir.path().join("journal.db");
        let broker = test_broker().await?;
        let relay = Relay::start(broker.addr).await?;
        let mut cfg = MqttAlertsConfig::new("s2", relay.addr.ip().to_string(), relay.addr.port());
        cfg.window = 10;
        let mut rx = subscriber(broker.addr, &cfg.topic()).await;
        let last = append(&db, 1..=300, "P1");
        let (_seq_tx, seq_rx) = tokio::sync::watch::channel(last);
        let stats = Arc::new(DeliveryStats::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(
            MqttAlertPublisher::new(cfg, SharedLog::new(&db), NewEvents::new(seq_rx), stats.clone())
                .run(shutdown.clone()),
        );
        let mut received = Vec::new();
        let mut cut = false;
        let cursor_log = SharedLog::new(&db);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let seen: std::collections::BTreeSet<u64> = received.iter().copied().collect();
            if seen.len() == 300 && cursor_log.cursor(CHANNEL).await? == 300 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stuck: {} distinct seen",
                seen.len()
            );
            if let Ok(Some(v)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                received.push(v["seq"].as_u64().unwrap_or(0));
                if !cut && received.len() == 100 {
                    relay.cut();
                    cut = true;
                }
            }
        }
        assert!(cut);
        assert!(
            stats.mqtt_connects.load(Ordering::Relaxed) >= 2,
            "the publisher reconnected"
        );
        // Duplicates are allowed; a seq first seen after a larger one is not (that is a gap
        // filled late, i.e. out of order).
        let mut first_seen = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for s in &received {
            if seen.insert(*s) {
                first_seen.push(*s);
            }
        }
        assert_eq!(first_seen, (1..=300).collect::<Vec<_>>());
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await??;
        Ok(())
    }
}
