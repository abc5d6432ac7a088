//! The simulator's MQTT link: one rumqttc client, its event loop polled in a task of its own,
//! reconnect with backoff, re-publishing what a lost connection dropped, and the mapping of every
//! PubAck back to the message it acknowledges.
//!
//! Why so much care for a simulator: tests compare the database with what the simulator says the
//! broker acknowledged, so an acknowledgement must name the very message. rumqttc has traps here
//! (version 0.25): it never backs off between reconnects; awaiting a client call from the task that
//! polls the event loop deadlocks once the request channel is full; after a reconnect without a
//! session it silently drops every QoS 1 publish still in flight or queued; and its events name a
//! publish only by packet id, which it reuses (ids run 1..=[`INFLIGHT`] and start over).
//!
//! So:
//! - The event loop task never awaits a client call and sleeps its own backoff.
//! - One feeder task is the only one that queues publishes into rumqttc, and notes each in an
//!   order queue just before. rumqttc takes requests in channel order and reports each one as
//!   `Outgoing::Publish(pkid)` when it writes it, or as `Outgoing::AwaitAck(pkid)` when it holds it
//!   back because that id is still in flight (out-of-order PubAcks do that) and writes it on that
//!   id's PubAck. The event loop task pops the order queue on each of these and keeps
//!   `pkid -> message` until the PubAck, which frees the id for its next use.
//! - On every connection error it first applies the events rumqttc had buffered (PubAcks read and
//!   publishes written before the error), then takes everything rumqttc kept (in-flight
//!   publishes, the one held back, the requests still queued) out of rumqttc, matches each with its
//!   entry (by packet id, or by queue position; topic and payload must agree) and hands them to the
//!   feeder to be published again with new packet ids, session or not. rumqttc therefore never
//!   re-sends with an old packet id: a broker keeps no state for an incoming QoS 1 id, so this is
//!   the same to it, and it avoids rumqttc overwriting its single held-back slot when it replays a
//!   session whose ids collide with new ones. A re-published message may reach the broker twice
//!   (at-least-once), which the gateway counts as a duplicate `seq`.
//!
//! A message leaves rumqttc's state only with its PubAck, so each message is counted (and its tag
//! reported) at most once. Anything that does not line up is counted in
//! [`LinkStats::mapping_errors`] (never seen; tests assert zero).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, Context};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS, Request};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Publishes in flight before waiting for PubAcks: high enough that a loopback broker is never
/// waited on per message (rumqttc's default of 100 caps throughput at one round trip per 100).
pub const INFLIGHT: u16 = 500;

/// Requests queued between the feeder and the event loop.
pub const REQUEST_CHANNEL_CAPACITY: usize = 1_000;

/// Publishes queued between [`Link::publish`] and the feeder; a full queue is backpressure on the
/// publisher (so while the broker is away at most this plus the request channel waits in memory,
/// and an open-loop publisher sees the outage as schedule lag).
pub const FEED_CAPACITY: usize = 1_000;

/// Largest packet either way: telemetry is a few hundred bytes; anything near this is a bug.
pub const MAX_PACKET_BYTES: usize = 64 * 1024;

/// Keep-alive: short enough to notice a dead broker within a test's patience.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Reconnect backoff bounds (rumqttc retries immediately otherwise, spinning on a dead broker).
/// The cap bounds how long after a broker restart the link is still away: a restart takes
/// seconds, and one attempt every 2 s against a dead broker costs nothing.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How long `connect` waits for the first CONNACK by default before giving up with the last error.
pub const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `close` lets queued requests and the DISCONNECT go out before stopping the event loop.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Keep-alive of the plain clients (see [`client_options`]): they only listen, so a dead broker
/// shows as a connection error on its own; no need to probe as often as the link does.
pub const CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// `HOST:PORT`.
    pub broker: String,
    pub client_id: String,
    /// How long to wait for the first CONNACK.
    pub connect_timeout: Duration,
    /// MQTT username and password, if the broker wants them.
    pub credentials: Option<Credentials>,
    /// MQTT clean session. `false` asks the broker to keep the session (across reconnects, and
    /// across its own restarts when it persists sessions); use a fixed client id with it.
    pub clean_session: bool,
}

impl LinkOptions {
    pub fn new(broker: impl Into<String>, client_id: impl Into<String>) -> LinkOptions {
        LinkOptions {
            broker: broker.into(),
            client_id: client_id.into(),
            connect_timeout: FIRST_CONNECT_TIMEOUT,
            credentials: None,
            clean_session: true,
        }
    }
}

/// MQTT login; `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The client id of a connection: the one given, else the username when logging in (a gateway
/// admits an identity only under its own name as client id), else `fallback()`.
pub fn client_id_or(
    given: Option<&str>,
    credentials: Option<&Credentials>,
    fallback: impl FnOnce() -> String,
) -> String {
    match (given, credentials) {
        (Some(id), _) => id.to_owned(),
        (None, Some(c)) => c.username.clone(),
        (None, None) => fallback(),
    }
}

/// Counters of a link, readable while it runs.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub connects: AtomicU64,
    pub connection_errors: AtomicU64,
    /// Publishes handed back for sending again after a lost connection.
    pub republished: AtomicU64,
    /// Publishes rumqttc held back because their packet id was still in flight.
    pub held_back: AtomicU64,
    /// PubAcks for no message in flight (rumqttc drops the connection on them).
    pub unknown_acks: AtomicU64,
    /// Events that did not line up with the messages queued (see the module docs).
    pub mapping_errors: AtomicU64,
    /// Microseconds from each acknowledged message's start (its schedule slot, see
    /// [`Link::publish_scheduled`], else its hand-over to the link) to its PubAck, in PubAck
    /// order. Four bytes a message: a million acknowledged messages hold 4 MB.
    pub ack_latency_us: Mutex<Vec<u32>>,
}

impl LinkStats {
    /// Takes the acknowledgement latencies gathered so far.
    pub fn take_ack_latencies(&self) -> Vec<u32> {
        std::mem::take(&mut *self.ack_latency_us.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A publish on its way, with the tag its publisher gave it.
#[derive(Debug, Clone)]
struct Outbound {
    publish: Publish,
    tag: Option<u64>,
    /// Where its acknowledgement latency counts from.
    since: Instant,
}

/// Publishes queued into rumqttc's request channel, in channel order.
type Queued = Arc<Mutex<VecDeque<Outbound>>>;

fn lock(queued: &Queued) -> MutexGuard<'_, VecDeque<Outbound>> {
    // Nothing panics while holding it; if something did, the queue itself is still consistent.
    queued.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connected MQTT link.
pub struct Link {
    client: AsyncClient,
    feed: mpsc::Sender<Outbound>,
    acked: watch::Receiver<u64>,
    acked_tags: Option<mpsc::UnboundedReceiver<u64>>,
    stats: Arc<LinkStats>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    feeder: JoinHandle<()>,
}

/// Splits `HOST:PORT` (IPv6 as `[::1]:1883`).
pub fn parse_broker(broker: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = broker
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("broker `{broker}` is not HOST:PORT"))?;
    let port: u16 = port.parse().with_context(|| format!("broker `{broker}`: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        anyhow::bail!("broker `{broker}` has no host");
    }
    Ok((host.to_owned(), port))
}

/// Connection options of a plain rumqttc client (no [`Link`]: the subscribers of `sink`, `record`
/// and `alert-probe`): keep-alive [`CLIENT_KEEP_ALIVE`], clean session, packets up to
/// [`MAX_PACKET_BYTES`], the login if given.
pub fn client_options(
    broker: &str,
    client_id: String,
    credentials: Option<&Credentials>,
) -> anyhow::Result<MqttOptions> {
    let (host, port) = parse_broker(broker)?;
    let mut mqtt = MqttOptions::new(client_id, host, port);
    mqtt.set_keep_alive(CLIENT_KEEP_ALIVE)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    if let Some(c) = credentials {
        mqtt.set_credentials(c.username.clone(), c.password.clone());
    }
    Ok(mqtt)
}

impl Link {
    /// Connects and waits for the first CONNACK (or fails after `connect_timeout` naming the last
    /// error, instead of retrying forever against a wrong address).
    pub async fn connect(opts: &LinkOptions) -> anyhow::Result<Link> {
        let (host, port) = parse_broker(&opts.broker)?;
        let mut mqtt = MqttOptions::new(opts.client_id.clone(), host, port);
        mqtt.set_keep_alive(KEEP_ALIVE)
            .set_inflight(INFLIGHT)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
            .set_clean_session(opts.clean_session);
        if let Some(c) = &opts.credentials {
            mqtt.set_credentials(c.username.clone(), c.password.clone());
        }
        let (client, eventloop) = AsyncClient::new(mqtt, REQUEST_CHANNEL_CAPACITY);
        let (feed, fresh) = mpsc::channel(FEED_CAPACITY);
        // Unbounded, and never awaited by the event loop task: it holds at most what one lost
        // connection handed back (in flight plus the request channel).
        let (again_tx, again_rx) = mpsc::unbounded_channel();
        // Unbounded: one entry per acknowledged tagged publish, read as they come by the
        // publisher; the event loop task must not wait on a slow reader.
        let (tags_tx, acked_tags) = mpsc::unbounded_channel();
        let queued: Queued = Arc::default();
        let feeder = tokio::spawn(feed_requests(client.clone(), fresh, again_rx, queued.clone()));
        let (acked_tx, acked) = watch::channel(0u64);
        let (connected_tx, mut connected) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(LinkStats::default());
        let last_error = Arc::new(Mutex::new(None::<String>));
        let driver = Driver {
            tracker: Tracker::new(queued),
            stats: stats.clone(),
            acked: acked_tx,
            tags: tags_tx,
            again: again_tx,
        };
        let task = tokio::spawn(drive(eventloop, driver, connected_tx, stop_rx, last_error.clone()));
        let link = Link {
            client,
            feed,
            acked,
            acked_tags: Some(acked_tags),
            stats,
            stop,
            task,
            feeder,
        };
        let waited = tokio::time::timeout(opts.connect_timeout, connected.wait_for(|c| *c)).await;
        if !matches!(waited, Ok(Ok(_))) {
            let error = last_error.lock().map(|e| e.clone()).unwrap_or(None);
            link.abort();
            return Err(anyhow!(
                "cannot connect to MQTT broker {} within {:?}: {}",
                opts.broker,
                opts.connect_timeout,
                error.unwrap_or_else(|| "no CONNACK".into())
            ));
        }
        Ok(link)
    }

    /// Queues one publish; waits while the queue is full (backpressure). Cancel-safe: a cancelled
    /// call queued nothing.
    pub async fn publish(&self, topic: &str, qos: QoS, payload: Vec<u8>) -> anyhow::Result<()> {
        self.queue(topic, qos, payload, None, Instant::now(), false).await
    }

    /// Like [`Link::publish`], with the retain flag as given (a replayed capture keeps it).
    pub async fn publish_retained(&self, topic: &str, qos: QoS, payload: Vec<u8>, retain: bool) -> anyhow::Result<()> {
        self.queue(topic, qos, payload, None, Instant::now(), retain).await
    }

    /// Like [`Link::publish`], and once the broker acknowledges the message (QoS 1) `tag` comes
    /// out of [`Link::take_acked_tags`].
    pub async fn publish_tagged(&self, topic: &str, qos: QoS, payload: Vec<u8>, tag: u64) -> anyhow::Result<()> {
        self.queue(topic, qos, payload, Some(tag), Instant::now(), false).await
    }

    /// Like [`Link::publish_tagged`], with the acknowledgement latency counted from `due` (the
    /// message's slot in an open-loop schedule) rather than from the hand-over: time the sender
    /// ran late counts too, so a stalled broker cannot hide behind a stalled sender.
    pub async fn publish_scheduled(
        &self,
        topic: &str,
        qos: QoS,
        payload: Vec<u8>,
        tag: u64,
        due: Instant,
    ) -> anyhow::Result<()> {
        self.queue(topic, qos, payload, Some(tag), due, false).await
    }

    async fn queue(
        &self,
        topic: &str,
        qos: QoS,
        payload: Vec<u8>,
        tag: Option<u64>,
        since: Instant,
        retain: bool,
    ) -> anyhow::Result<()> {
        if qos == QoS::ExactlyOnce {
            anyhow::bail!("publish to {topic}: QoS 2 is not supported");
        }
        if !rumqttc::valid_topic(topic) {
            anyhow::bail!("publish to {topic}: not a valid topic name");
        }
        let mut publish = Publish::new(topic, qos, payload);
        publish.retain = retain;
        self.feed
            .send(Outbound { publish, tag, since })
            .await
            .map_err(|_| anyhow!("publish to {topic}: the link is closed"))
    }

    /// The tags of acknowledged [`Link::publish_tagged`] messages, in the order of their PubAcks
    /// (once; the stream ends when the link is closed).
    pub fn take_acked_tags(&mut self) -> Option<mpsc::UnboundedReceiver<u64>> {
        self.acked_tags.take()
    }

    /// PubAcks received so far, each for a different message.
    pub fn acked(&self) -> u64 {
        *self.acked.borrow()
    }

    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// The counters, readable after [`Link::close`].
    pub fn stats_handle(&self) -> Arc<LinkStats> {
        self.stats.clone()
    }

    /// Waits until `n` PubAcks have arrived or `timeout` passed; returns the count reached.
    pub async fn wait_acked(&mut self, n: u64, timeout: Duration) -> u64 {
        let _ = tokio::time::timeout(timeout, self.acked.wait_for(|a| *a >= n)).await;
        self.acked()
    }

    /// Hands what is still queued to rumqttc, sends DISCONNECT behind it and stops the event loop,
    /// all within a short grace period (what is left then is abandoned). Returns the final PubAck
    /// count.
    pub async fn close(self) -> u64 {
        let Link {
            client,
            feed,
            stop,
            mut task,
            mut feeder,
            acked,
            ..
        } = self;
        let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
        // The feeder ends once it has handed over what is queued; nothing may follow the
        // DISCONNECT.
        drop(feed);
        if tokio::time::timeout_at(deadline, &mut feeder).await.is_err() {
            feeder.abort();
        }
        let _ = client.try_disconnect();
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            let _ = stop.send(true);
            let _ = task.await;
        }
        let n = *acked.borrow();
        n
    }

    fn abort(self) {
        let _ = self.stop.send(true);
        self.task.abort();
        self.feeder.abort();
    }
}

/// The feeder: the only task that queues publishes into rumqttc, so the order queue matches the
/// request channel. Publishes handed back after a lost connection go first.
async fn feed_requests(
    client: AsyncClient,
    mut fresh: mpsc::Receiver<Outbound>,
    mut again: mpsc::UnboundedReceiver<Outbound>,
    queued: Queued,
) {
    loop {
        let next = tokio::select! {
            biased;
            Some(o) = again.recv() => o,
            o = fresh.recv() => match o {
                Some(o) => o,
                None => break,
            },
        };
        let Publish {
            topic,
            qos,
            retain,
            payload,
            ..
        } = next.publish.clone();
        // Noted before it can be in the channel: the event loop pops this queue as it takes
        // requests, and an entry queued here but not yet sent only ever sits at the back.
        lock(&queued).push_back(next);
        if client.publish_bytes(topic, qos, retain, payload).await.is_err() {
            break;
        }
    }
}

/// What a PubAck acknowledged.
#[derive(Debug, PartialEq, Eq)]
enum Acked {
    Tagged(u64),
    Untagged,
    /// No message in flight with that packet id.
    Unknown,
}

/// Follows each publish from the order queue to its packet id and on to its PubAck, or back out
/// of rumqttc after a lost connection. Pure bookkeeping over rumqttc's events, in their order.
struct Tracker {
    queued: Queued,
    /// Written (QoS 1) and waiting for the PubAck, by packet id.
    inflight: HashMap<u16, Outbound>,
    /// Taken by rumqttc but held back: its packet id was still in flight.
    held_back: Option<(u16, Outbound)>,
    /// rumqttc writes the held-back publish right after that id's PubAck and reports it as
    /// `Outgoing::Publish(id)`: that report is not a new request.
    written_on_ack: Option<u16>,
    mismatches: u64,
    /// Start time of the message the last PubAck acknowledged (for its latency).
    acked_since: Option<Instant>,
}

fn same_message(a: &Publish, b: &Publish) -> bool {
    a.topic == b.topic && a.payload == b.payload && a.qos == b.qos
}

/// A publish to send again: rumqttc gives it a new packet id.
fn fresh(mut p: Publish) -> Publish {
    p.pkid = 0;
    p.dup = false;
    p
}

impl Tracker {
    fn new(queued: Queued) -> Tracker {
        Tracker {
            queued,
            inflight: HashMap::new(),
            held_back: None,
            written_on_ack: None,
            mismatches: 0,
            acked_since: None,
        }
    }

    fn mismatch(&mut self, what: &str, pkid: u16) {
        self.mismatches += 1;
        tracing::error!(pkid, what, "MQTT link: acknowledgement mapping out of step");
    }

    fn next_queued(&mut self) -> Option<Outbound> {
        lock(&self.queued).pop_front()
    }

    /// `Outgoing::Publish(pkid)`: rumqttc wrote a publish (packet id 0 for QoS 0).
    fn written(&mut self, pkid: u16) {
        if pkid != 0 && self.written_on_ack == Some(pkid) {
            self.written_on_ack = None;
            return;
        }
        let Some(o) = self.next_queued() else {
            return self.mismatch("publish written with nothing queued", pkid);
        };
        if (pkid == 0) != (o.publish.qos == QoS::AtMostOnce) {
            self.mismatch("packet id does not fit the queued publish's QoS", pkid);
        }
        if pkid != 0 && self.inflight.insert(pkid, o).is_some() {
            self.mismatch("packet id reused before its PubAck", pkid);
        }
    }

    /// `Outgoing::AwaitAck(pkid)`: rumqttc took a publish and holds it until `pkid` is acknowledged.
    fn held_back(&mut self, pkid: u16) {
        let Some(o) = self.next_queued() else {
            return self.mismatch("publish held back with nothing queued", pkid);
        };
        if self.held_back.replace((pkid, o)).is_some() {
            self.mismatch("a second publish held back", pkid);
        }
    }

    /// `Incoming::PubAck(pkid)`.
    fn acked(&mut self, pkid: u16) -> Acked {
        let Some(o) = self.inflight.remove(&pkid) else {
            return Acked::Unknown;
        };
        if matches!(self.held_back, Some((id, _)) if id == pkid) {
            if let Some((_, h)) = self.held_back.take() {
                self.inflight.insert(pkid, h);
                self.written_on_ack = Some(pkid);
            }
        }
        self.acked_since = Some(o.since);
        match o.tag {
            Some(tag) => Acked::Tagged(tag),
            None => Acked::Untagged,
        }
    }

    /// The connection is gone and rumqttc gave back `pending` (in-flight publishes with their
    /// packet ids, then the queued requests with id 0) and `held_back`: the publishes to send
    /// again, each with its tag.
    fn connection_lost(&mut self, pending: Vec<Publish>, held_back: Option<Publish>) -> Vec<Outbound> {
        let mut again = Vec::with_capacity(pending.len() + 1);
        for p in pending {
            let ours = if p.pkid == 0 {
                self.next_queued()
            } else {
                self.inflight.remove(&p.pkid)
            };
            let (tag, since) = match ours {
                Some(o) if same_message(&o.publish, &p) => (o.tag, o.since),
                _ => {
                    self.mismatch("publish handed back does not match its entry", p.pkid);
                    (None, Instant::now())
                }
            };
            again.push(Outbound {
                publish: fresh(p),
                tag,
                since,
            });
        }
        match (held_back, self.held_back.take()) {
            (Some(p), Some((id, o))) if id == p.pkid && same_message(&o.publish, &p) => again.push(Outbound {
                publish: fresh(p),
                tag: o.tag,
                since: o.since,
            }),
            (None, None) => {}
            (p, _) => {
                self.mismatch("held-back publish does not match", 0);
                if let Some(p) = p {
                    again.push(Outbound {
                        publish: fresh(p),
                        tag: None,
                        since: Instant::now(),
                    });
                }
            }
        }
        if !self.inflight.is_empty() {
            let ids: Vec<u16> = self.inflight.keys().copied().collect();
            for id in ids {
                self.mismatch("in flight but not handed back", id);
            }
            self.inflight.clear();
        }
        self.written_on_ack = None;
        again
    }
}

/// The event loop task's state: the tracker and where its results go.
struct Driver {
    tracker: Tracker,
    stats: Arc<LinkStats>,
    acked: watch::Sender<u64>,
    tags: mpsc::UnboundedSender<u64>,
    again: mpsc::UnboundedSender<Outbound>,
}

impl Driver {
    /// Applies one event; false once the link is disconnecting.
    fn on_event(&mut self, event: &Event) -> bool {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => self.tracker.written(*pkid),
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                self.stats.held_back.fetch_add(1, Ordering::Relaxed);
                self.tracker.held_back(*pkid);
            }
            Event::Incoming(Packet::PubAck(ack)) => match self.tracker.acked(ack.pkid) {
                acked @ (Acked::Tagged(_) | Acked::Untagged) => {
                    if let Some(since) = self.tracker.acked_since.take() {
                        let us = since.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                        self.stats
                            .ack_latency_us
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(us);
                    }
                    self.count_ack(acked);
                }
                Acked::Unknown => {
                    self.stats.unknown_acks.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(pkid = ack.pkid, "PubAck for no publish in flight");
                }
            },
            Event::Outgoing(Outgoing::Disconnect) => return false,
            _ => {}
        }
        self.stats
            .mapping_errors
            .store(self.tracker.mismatches, Ordering::Relaxed);
        true
    }

    fn count_ack(&mut self, acked: Acked) {
        match acked {
            Acked::Tagged(tag) => {
                self.acked.send_modify(|n| *n += 1);
                // The reader may be gone (not interested): nothing to do then.
                let _ = self.tags.send(tag);
            }
            Acked::Untagged => self.acked.send_modify(|n| *n += 1),
            Acked::Unknown => {}
        }
    }

    /// After a connection error: applies what rumqttc buffered before it, takes back what it kept
    /// and hands it to the feeder. True if a DISCONNECT was among it (the link is closing).
    fn connection_lost(&mut self, eventloop: &mut EventLoop) -> bool {
        let buffered: Vec<Event> = eventloop.state.events.drain(..).collect();
        let mut disconnecting = false;
        for event in &buffered {
            disconnecting |= !self.on_event(event);
        }
        // rumqttc moved unacknowledged and queued requests into `pending` and would clear them on
        // a CONNACK without session; the held-back publish it keeps aside for good.
        let mut publishes = Vec::new();
        for request in eventloop.pending.drain(..) {
            match request {
                Request::Publish(p) => publishes.push(p),
                Request::Disconnect(_) => disconnecting = true,
                _ => {}
            }
        }
        let held_back = eventloop.state.collision.take();
        let again = self.tracker.connection_lost(publishes, held_back);
        self.stats
            .mapping_errors
            .store(self.tracker.mismatches, Ordering::Relaxed);
        if !again.is_empty() {
            self.stats.republished.fetch_add(again.len() as u64, Ordering::Relaxed);
            tracing::info!(count = again.len(), "re-publishing messages a lost connection dropped");
            for o in again {
                // The feeder is gone only when the link is closing.
                let _ = self.again.send(o);
            }
        }
        disconnecting
    }
}

/// The event loop task: polls, maps acknowledgements, reconnects. Never awaits a client call.
async fn drive(
    mut eventloop: EventLoop,
    mut driver: Driver,
    connected: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
    last_error: Arc<Mutex<Option<String>>>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let event = tokio::select! {
            biased;
            _ = stop.changed() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                let n = driver.stats.connects.fetch_add(1, Ordering::Relaxed) + 1;
                if n > 1 {
                    tracing::info!(session_present = ack.session_present, "MQTT reconnected");
                }
                backoff = BACKOFF_MIN;
                connected.send_replace(true);
            }
            Ok(event) => {
                if !driver.on_event(&event) {
                    break;
                }
            }
            Err(ConnectionError::RequestsDone) => break,
            Err(e) => {
                driver.stats.connection_errors.fetch_add(1, Ordering::Relaxed);
                connected.send_replace(false);
                if let Ok(mut last) = last_error.lock() {
                    *last = Some(e.to_string());
                }
                if driver.connection_lost(&mut eventloop) {
                    break;
                }
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection lost");
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    connected.send_replace(false);
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_broker::{Script, ScriptedBroker, TestBroker};

    fn entry(tag: u64, qos: QoS) -> Outbound {
        Outbound {
            publish: Publish::new("nh/s/d/telemetry", qos, tag.to_string()),
            tag: Some(tag),
            since: Instant::now(),
        }
    }

    fn tracker_with(tags: std::ops::Range<u64>) -> Tracker {
        let queued: Queued = Arc::default();
        lock(&queued).extend(tags.map(|t| entry(t, QoS::AtLeastOnce)));
        Tracker::new(queued)
    }

    /// What rumqttc hands back for a message: its publish with the packet id it had.
    fn handed_back(tag: u64, pkid: u16) -> Publish {
        let mut p = Publish::new("nh/s/d/telemetry", QoS::AtLeastOnce, tag.to_string());
        p.pkid = pkid;
        p
    }

    fn tags_of(again: &[Outbound]) -> Vec<Option<u64>> {
        again.iter().map(|o| o.tag).collect()
    }

    /// Publishes `n` tagged messages (payload = tag), waits for their acks and closes; returns the
    /// tags reported, in order, and the link's final stats.
    async fn publish_tagged_and_collect(broker: String, n: u64, wait: Duration) -> (Vec<u64>, u64, Arc<LinkStats>) {
        let mut link = Link::connect(&LinkOptions::new(broker, "tagged"))
            .await
            .expect("connect");
        let mut tags = link.take_acked_tags().expect("tags");
        assert!(link.take_acked_tags().is_none(), "taken once");
        for i in 0..n {
            link.publish_tagged("nh/s/d/telemetry", QoS::AtLeastOnce, i.to_string().into_bytes(), i)
                .await
                .expect("publish");
        }
        link.wait_acked(n, wait).await;
        let stats = link.stats_handle();
        let acked = link.close().await;
        let mut got = Vec::new();
        while let Some(t) = tags.recv().await {
            got.push(t);
        }
        (got, acked, stats)
    }

    fn payload_tags(messages: &[(String, Vec<u8>)]) -> Vec<u64> {
        messages
            .iter()
            .map(|(_, p)| String::from_utf8_lossy(p).parse().expect("tag payload"))
            .collect()
    }

    #[test]
    fn acks_map_to_their_messages_through_packet_id_reuse() {
        let mut t = tracker_with(0..4);
        t.written(1);
        t.written(2);
        assert_eq!(t.acked(1), Acked::Tagged(0));
        t.written(1); // id 1 again, now for message 2
        assert_eq!(t.acked(2), Acked::Tagged(1));
        assert_eq!(t.acked(1), Acked::Tagged(2));
        assert_eq!(t.acked(1), Acked::Unknown, "an id is acknowledged once per use");
        t.written(1);
        assert_eq!(t.acked(1), Acked::Tagged(3));
        assert_eq!(t.mismatches, 0);
    }

    #[test]
    fn a_held_back_publish_takes_its_packet_id_on_the_ack() {
        let mut t = tracker_with(0..4);
        t.written(1); // message 0
        t.written(2); // message 1
        t.held_back(1); // message 2 waits for id 1
        assert_eq!(t.acked(2), Acked::Tagged(1));
        assert_eq!(t.acked(1), Acked::Tagged(0));
        t.written(1); // rumqttc writes message 2 right after that ack: not a new request
        t.written(2); // message 3
        assert_eq!(t.acked(1), Acked::Tagged(2));
        assert_eq!(t.acked(2), Acked::Tagged(3));
        assert_eq!(t.mismatches, 0);
    }

    #[test]
    fn a_lost_connection_gives_everything_back_with_its_tags() {
        let mut t = tracker_with(0..6);
        t.written(1); // message 0
        t.written(2); // message 1
        t.held_back(1); // message 2
                        // Messages 3 and 4 are still in the request channel, 5 is not taken yet.
        let pending = vec![
            handed_back(1, 2),
            handed_back(0, 1),
            handed_back(3, 0),
            handed_back(4, 0),
        ];
        let again = t.connection_lost(pending, Some(handed_back(2, 1)));
        assert_eq!(tags_of(&again), vec![Some(1), Some(0), Some(3), Some(4), Some(2)]);
        assert!(again.iter().all(|o| o.publish.pkid == 0 && !o.publish.dup), "new ids");
        assert_eq!(t.mismatches, 0);
        assert!(t.inflight.is_empty() && t.held_back.is_none());
        // What follows in the channel keeps its place, and ids start afresh.
        t.written(1);
        assert_eq!(t.acked(1), Acked::Tagged(5));
        assert_eq!(t.mismatches, 0);
    }

    #[test]
    fn qos0_publishes_keep_the_order_without_an_ack() {
        let queued: Queued = Arc::default();
        lock(&queued).extend([
            Outbound {
                publish: Publish::new("a", QoS::AtMostOnce, "x"),
                tag: None,
                since: Instant::now(),
            },
            entry(7, QoS::AtLeastOnce),
        ]);
        let mut t = Tracker::new(queued);
        t.written(0);
        t.written(1);
        assert_eq!(t.acked(1), Acked::Tagged(7));
        assert_eq!(t.mismatches, 0);
    }

    #[test]
    fn events_out_of_step_are_counted_not_trusted() {
        let mut t = tracker_with(0..1);
        t.written(1);
        t.written(2); // nothing queued
        assert_eq!(t.mismatches, 1);
        // Handed back with a payload that is not the one noted for id 1: republished untagged.
        let again = t.connection_lost(vec![handed_back(9, 1)], None);
        assert_eq!(tags_of(&again), vec![None]);
        assert_eq!(t.mismatches, 2);
    }

    #[test]
    fn events_buffered_before_an_error_are_applied_first() {
        // rumqttc read a PubAck and wrote a publish, then hit the error before yielding them.
        let (acked, acked_rx) = watch::channel(0u64);
        let (tags, mut tags_rx) = mpsc::unbounded_channel();
        let (again, mut again_rx) = mpsc::unbounded_channel();
        let mut driver = Driver {
            tracker: tracker_with(0..4),
            stats: Arc::default(),
            acked,
            tags,
            again,
        };
        assert!(driver.on_event(&Event::Outgoing(Outgoing::Publish(1))));
        assert!(driver.on_event(&Event::Outgoing(Outgoing::Publish(2))));
        let mut eventloop = EventLoop::new(MqttOptions::new("t", "127.0.0.1", 1), 10);
        eventloop.state.events.extend([
            Event::Incoming(Packet::PubAck(rumqttc::PubAck::new(1))),
            Event::Outgoing(Outgoing::Publish(3)),
        ]);
        eventloop.pending.extend([
            Request::Publish(handed_back(1, 2)),
            Request::Publish(handed_back(2, 3)),
            Request::Publish(handed_back(3, 0)),
        ]);
        assert!(!driver.connection_lost(&mut eventloop));
        assert_eq!(*acked_rx.borrow(), 1);
        assert_eq!(tags_rx.try_recv().ok(), Some(0));
        assert!(tags_rx.try_recv().is_err());
        let again: Vec<Option<u64>> = std::iter::from_fn(|| again_rx.try_recv().ok()).map(|o| o.tag).collect();
        assert_eq!(again, vec![Some(1), Some(2), Some(3)]);
        assert_eq!(driver.stats.republished.load(Ordering::Relaxed), 3);
        assert_eq!(driver.stats.mapping_errors.load(Ordering::Relaxed), 0);
        assert!(eventloop.state.events.is_empty() && eventloop.pending.is_empty());
    }

    #[test]
    fn the_client_id_is_the_username_unless_one_is_given() {
        let c = Credentials {
            username: "nh-sim".into(),
            password: "s".into(),
        };
        let fallback = || "nh-sim-site-1".to_owned();
        assert_eq!(client_id_or(None, Some(&c), fallback), "nh-sim");
        assert_eq!(client_id_or(Some("mine"), Some(&c), fallback), "mine");
        assert_eq!(client_id_or(None, None, fallback), "nh-sim-site-1");
        assert_eq!(client_id_or(Some("mine"), None, fallback), "mine");
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let c = Credentials {
            username: "sim".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn broker_addresses_parse() {
        assert_eq!(parse_broker("127.0.0.1:1883").expect("ok"), ("127.0.0.1".into(), 1883));
        assert_eq!(parse_broker("[::1]:18830").expect("ok"), ("::1".into(), 18830));
        assert!(parse_broker("localhost").is_err());
        assert!(parse_broker(":1883").is_err());
        assert!(parse_broker("h:99999").is_err());
    }

    #[tokio::test]
    async fn counts_pubacks() {
        let broker = TestBroker::start().await;
        let mut link = Link::connect(&LinkOptions::new(broker.addr(), "t1"))
            .await
            .expect("connect");
        for i in 0..2_000u32 {
            link.publish("nh/s/d/telemetry", QoS::AtLeastOnce, i.to_string().into_bytes())
                .await
                .expect("publish");
        }
        assert_eq!(link.wait_acked(2_000, Duration::from_secs(20)).await, 2_000);
        link.close().await;
        assert_eq!(broker.received().len(), 2_000);
    }

    #[tokio::test]
    async fn republishes_what_a_dropped_connection_lost() {
        // The broker cuts its first 3 connections after 300 publishes each without acknowledging
        // (or keeping) the last 50 it read: only re-publishing can get all of them acknowledged.
        let broker = TestBroker::start_dropping(3, 300, 50).await;
        let mut link = Link::connect(&LinkOptions::new(broker.addr(), "t2"))
            .await
            .expect("connect");
        for i in 0..1_000u32 {
            link.publish("nh/s/d/telemetry", QoS::AtLeastOnce, i.to_string().into_bytes())
                .await
                .expect("publish");
        }
        assert_eq!(link.wait_acked(1_000, Duration::from_secs(30)).await, 1_000);
        assert_eq!(link.stats().connects.load(Ordering::Relaxed), 4);
        assert!(link.stats().republished.load(Ordering::Relaxed) > 0);
        link.close().await;
        let mut got: Vec<u32> = broker
            .received()
            .iter()
            .map(|(_, p)| String::from_utf8_lossy(p).parse().expect("n"))
            .collect();
        got.sort_unstable();
        got.dedup();
        assert_eq!(got, (0..1_000).collect::<Vec<_>>(), "every message reached the broker");
    }

    #[tokio::test]
    async fn tagged_acks_name_their_messages_through_packet_id_reuse() {
        // 5,000 messages over 500 packet ids: each id is used ten times.
        let broker = TestBroker::start().await;
        let (tags, acked, stats) = publish_tagged_and_collect(broker.addr(), 5_000, Duration::from_secs(30)).await;
        assert_eq!(acked, 5_000);
        assert_eq!(tags.len(), 5_000, "one tag per PubAck");
        assert_eq!(
            tags,
            payload_tags(&broker.received()),
            "tags in the order the broker acknowledged"
        );
        assert_eq!(stats.mapping_errors.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn tags_survive_dropped_connections_and_republishing() {
        let broker = TestBroker::start_dropping(3, 300, 50).await;
        let (tags, acked, stats) = publish_tagged_and_collect(broker.addr(), 1_000, Duration::from_secs(30)).await;
        assert_eq!(acked, 1_000);
        assert_eq!(tags.len(), 1_000);
        let mut sorted = tags.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, (0..1_000).collect::<Vec<_>>(), "each message reported once");
        let received: std::collections::HashSet<u64> = payload_tags(&broker.received()).into_iter().collect();
        assert!(tags.iter().all(|t| received.contains(t)), "only what the broker took");
        assert!(stats.republished.load(Ordering::Relaxed) > 0);
        assert_eq!(stats.connects.load(Ordering::Relaxed), 4);
        assert_eq!(stats.mapping_errors.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn out_of_order_acks_still_name_their_messages() {
        // Acks in reverse batches: rumqttc meets ids still in flight and holds publishes back.
        let broker = ScriptedBroker::start(Script {
            reverse_batch: 7,
            ..Script::PROMPT
        })
        .await;
        let (tags, acked, stats) = publish_tagged_and_collect(broker.addr(), 3_000, Duration::from_secs(30)).await;
        assert_eq!(acked, 3_000);
        assert_eq!(
            tags,
            payload_tags(&broker.acked()),
            "exactly the broker's PubAcks, in order"
        );
        assert!(stats.held_back.load(Ordering::Relaxed) > 0, "the held-back path ran");
        assert_eq!(stats.mapping_errors.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn held_back_publishes_survive_dropped_connections() {
        // Out-of-order acks and connections cut with acks withheld: the held-back publish and
        // those in flight come back out of rumqttc, with their tags.
        let broker = ScriptedBroker::start(Script {
            reverse_batch: 7,
            cuts: 3,
            cut_after: 100,
            ..Script::PROMPT
        })
        .await;
        let (tags, acked, stats) = publish_tagged_and_collect(broker.addr(), 4_000, Duration::from_secs(30)).await;
        assert_eq!(acked, 4_000);
        assert_eq!(
            tags,
            payload_tags(&broker.acked()),
            "exactly the broker's PubAcks, in order"
        );
        assert_eq!(stats.connects.load(Ordering::Relaxed), 4);
        assert!(stats.held_back.load(Ordering::Relaxed) > 0);
        assert!(stats.republished.load(Ordering::Relaxed) > 0);
        assert_eq!(stats.mapping_errors.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn messages_never_acknowledged_are_never_reported() {
        let broker = ScriptedBroker::start(Script {
            reverse_batch: 5,
            ack_limit: 700,
            ..Script::PROMPT
        })
        .await;
        let (tags, acked, stats) = publish_tagged_and_collect(broker.addr(), 1_000, Duration::from_secs(1)).await;
        assert_eq!(acked, 700);
        assert_eq!(tags, payload_tags(&broker.acked()));
        assert_eq!(stats.mapping_errors.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn close_hands_over_what_is_still_queued() {
        // QoS 0 has nothing to wait for: the publisher closes at once after its last publish.
        let broker = TestBroker::start().await;
        let link = Link::connect(&LinkOptions::new(broker.addr(), "t4"))
            .await
            .expect("connect");
        for i in 0..3_000u32 {
            link.publish("nh/s/d/telemetry", QoS::AtMostOnce, i.to_string().into_bytes())
                .await
                .expect("publish");
        }
        link.close().await;
        for _ in 0..100 {
            if broker.received().len() == 3_000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(broker.received().len(), 3_000);
    }

    #[tokio::test]
    async fn a_wrong_address_fails_with_the_reason() {
        let broker = TestBroker::start().await;
        let addr = broker.addr();
        drop(broker);
        let opts = LinkOptions {
            connect_timeout: Duration::from_millis(500),
            ..LinkOptions::new(addr, "t3")
        };
        let err = match Link::connect(&opts).await {
            Ok(_) => panic!("connected to a closed port"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("cannot connect"), "{err}");
    }
}
