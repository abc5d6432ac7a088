//! The simulator's MQTT link: one rumqttc client, its event loop polled in a task of its own,
//! reconnect with backoff, PubAck counting, and re-publishing what a lost session dropped.
//!
//! Why so much care for a simulator: tests compare the database with what the simulator says it
//! sent, so "published" must mean "acknowledged by the broker". rumqttc has three traps here
//! (crates.md): it never backs off between reconnects; awaiting a client call from the task that
//! polls the event loop deadlocks once the request channel is full; and after a reconnect without
//! a session it silently drops every QoS 1 publish still in flight or queued. So the event loop task
//! never awaits a client call, sleeps its own backoff, and on every connection error takes the
//! publishes rumqttc moved to its pending queue and hands them to a resend task once connected
//! again. Each of them was never acknowledged (an acknowledged publish leaves rumqttc's state), so
//! counting PubAcks still counts each message at most once; the broker may see one twice
//! (at-least-once), which the gateway counts as a duplicate `seq`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS, Request};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Publishes in flight before waiting for PubAcks: high enough that a loopback broker is never
/// waited on per message (rumqttc's default of 100 caps throughput at one round trip per 100).
pub const INFLIGHT: u16 = 500;

/// Requests queued between the publisher and the event loop; a full queue is backpressure.
pub const REQUEST_CHANNEL_CAPACITY: usize = 1_000;

/// Largest packet either way: telemetry is a few hundred bytes; anything near this is a bug.
pub const MAX_PACKET_BYTES: usize = 64 * 1024;

/// Keep-alive: short enough to notice a dead broker within a test's patience.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Reconnect backoff bounds (rumqttc retries immediately otherwise, spinning on a dead broker).
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long `connect` waits for the first CONNACK by default before giving up with the last error.
pub const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
}

impl LinkOptions {
    pub fn new(broker: impl Into<String>, client_id: impl Into<String>) -> LinkOptions {
        LinkOptions {
            broker: broker.into(),
            client_id: client_id.into(),
            connect_timeout: FIRST_CONNECT_TIMEOUT,
            credentials: None,
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

/// Counters of a link, readable while it runs.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub connects: AtomicU64,
    pub connection_errors: AtomicU64,
    /// Publishes handed back for sending again after a lost connection.
    pub republished: AtomicU64,
}

/// A connected MQTT link.
pub struct Link {
    client: AsyncClient,
    acked: watch::Receiver<u64>,
    stats: Arc<LinkStats>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
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

impl Link {
    /// Connects and waits for the first CONNACK (or fails after `connect_timeout` naming the last
    /// error, instead of retrying forever against a wrong address).
    pub async fn connect(opts: &LinkOptions) -> anyhow::Result<Link> {
        let (host, port) = parse_broker(&opts.broker)?;
        let mut mqtt = MqttOptions::new(opts.client_id.clone(), host, port);
        mqtt.set_keep_alive(KEEP_ALIVE)
            .set_inflight(INFLIGHT)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
            .set_clean_session(true);
        if let Some(c) = &opts.credentials {
            mqtt.set_credentials(c.username.clone(), c.password.clone());
        }
        let (client, eventloop) = AsyncClient::new(mqtt, REQUEST_CHANNEL_CAPACITY);
        let (acked_tx, acked) = watch::channel(0u64);
        let (connected_tx, mut connected) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(LinkStats::default());
        let last_error = Arc::new(Mutex::new(None::<String>));
        let task = tokio::spawn(drive(
            eventloop,
            client.clone(),
            acked_tx,
            connected_tx,
            stop_rx,
            stats.clone(),
            last_error.clone(),
        ));
        let link = Link {
            client,
            acked,
            stats,
            stop,
            task,
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

    /// Queues one publish; waits while the request queue is full (backpressure).
    pub async fn publish(&self, topic: &str, qos: QoS, payload: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .publish(topic, qos, false, payload)
            .await
            .map_err(|e| anyhow!("publish to {topic}: {e}"))
    }

    /// PubAcks received so far.
    pub fn acked(&self) -> u64 {
        *self.acked.borrow()
    }

    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// Waits until `n` PubAcks have arrived or `timeout` passed; returns the count reached.
    pub async fn wait_acked(&mut self, n: u64, timeout: Duration) -> u64 {
        let _ = tokio::time::timeout(timeout, self.acked.wait_for(|a| *a >= n)).await;
        self.acked()
    }

    /// Sends DISCONNECT and stops the event loop (within a short grace period).
    pub async fn close(self) {
        let _ = self.client.try_disconnect();
        let Link { stop, mut task, .. } = self;
        if tokio::time::timeout(Duration::from_secs(2), &mut task).await.is_err() {
            let _ = stop.send(true);
            let _ = task.await;
        }
    }

    fn abort(self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

/// The event loop task: polls, counts, reconnects. Never awaits a client call.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    acked: watch::Sender<u64>,
    connected: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<LinkStats>,
    last_error: Arc<Mutex<Option<String>>>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut rescued: Vec<Publish> = Vec::new();
    loop {
        let event = tokio::select! {
            biased;
            _ = stop.changed() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                stats.connects.fetch_add(1, Ordering::Relaxed);
                backoff = BACKOFF_MIN;
                connected.send_replace(true);
                if !rescued.is_empty() {
                    // Send them again from another task: it may await the request queue, which
                    // this task must never do.
                    let again = std::mem::take(&mut rescued);
                    stats.republished.fetch_add(again.len() as u64, Ordering::Relaxed);
                    tracing::info!(count = again.len(), "re-publishing messages a lost connection dropped");
                    let client = client.clone();
                    tokio::spawn(async move {
                        for p in again {
                            if client.publish_bytes(p.topic, p.qos, p.retain, p.payload).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acked.send_modify(|n| *n += 1);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(ConnectionError::RequestsDone) => break,
            Err(e) => {
                stats.connection_errors.fetch_add(1, Ordering::Relaxed);
                connected.send_replace(false);
                if let Ok(mut last) = last_error.lock() {
                    *last = Some(e.to_string());
                }
                // rumqttc moved unacknowledged and queued requests into `pending` and would clear
                // them on a CONNACK without session: keep the publishes, drop the rest.
                let mut disconnecting = false;
                for request in eventloop.pending.drain(..) {
                    match request {
                        Request::Publish(mut p) => {
                            p.pkid = 0;
                            p.dup = false;
                            rescued.push(p);
                        }
                        Request::Disconnect(_) => disconnecting = true,
                        _ => {}
                    }
                }
                if disconnecting {
                    break;
                }
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, unacked = rescued.len(), "MQTT connection lost");
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
    use crate::test_broker::TestBroker;

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
