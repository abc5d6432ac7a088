//! The embedded MQTT broker (rumqttd), on its own thread and runtime.
//!
//! Its own thread because rumqttd blocks the thread it runs on while a new connection waits for
//! the router's answer (a synchronous channel receive inside an async task): on the gateway's
//! runtime that would stall the subscriber, the journal and the API along with it.
//!
//! rumqttd's `Broker::start` only logs a failed bind and blocks forever, and it never reports
//! the port it bound. So the gateway picks the port itself (port 0 = probe a free one), checks
//! that it can bind it, and runs rumqttd's `Server` directly, whose bind error ends the task:
//! [`start`] waits until the listener accepts connections or has failed, and a failure is an
//! error, never a silent conversation with some other broker.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttd::protocol::v4::V4;
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};
use tracing::error;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded MQTT broker cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("embedded MQTT broker on {addr} stopped: {message}")]
    Stopped { addr: SocketAddr, message: String },
    #[error("embedded MQTT broker on {addr} did not start accepting within {waited_ms} ms")]
    NotReady { addr: SocketAddr, waited_ms: u64 },
}

/// rumqttd keeps an in-RAM log per topic filter, in segments; it frees the oldest segment only
/// when a new message arrives and the log is full, never when subscribers have read it. It
/// counts 4 bytes plus the topic and payload of each message against `max_segment_size`, while
/// a message costs about three times that in RAM (the `PublishData` it keeps and the wire bytes
/// it still references), so a log's RAM is about [`RAM_PER_COUNTED_BYTE`] x its counted size.
/// A subscriber that falls further behind than its filter's log loses messages (the broker has
/// already acknowledged them to the device): the gateway counts that ([`log_overruns`]).
pub const RAM_PER_COUNTED_BYTE: usize = 3;
/// Segments per filter log: the memory bound moves in steps of one segment.
const SEGMENT_COUNT: usize = 4;
/// rumqttd refuses segments below this size (it panics).
const MIN_SEGMENT_BYTES: usize = 1024;

/// Times the broker reported a subscriber's read cursor jumping over messages that its log had
/// already dropped: messages lost inside the broker.
static LOG_OVERRUNS: AtomicU64 = AtomicU64::new(0);

/// How often a subscriber of the embedded broker lost messages because it fell further behind
/// than its filter's log (see [`overrun_layer`]).
pub fn log_overruns() -> u64 {
    LOG_OVERRUNS.load(Ordering::Relaxed)
}

/// 160 MB. With the two default subscriptions each subscription's log holds about 180,000
/// typical readings: 18 s of lag at 10,000 readings/s, 3 minutes at 1,000/s (longer than a
/// journal stall lasts), and the whole broker stays within a sixth of a 1 GB edge box
/// (docs/memory.md).
pub const DEFAULT_LOG_MB: u64 = 160;

/// How much the embedded broker may keep in RAM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BrokerLimits {
    /// RAM for the log of each subscription filter, bytes.
    pub log_ram_bytes: usize,
}

impl Default for BrokerLimits {
    /// [`DEFAULT_LOG_MB`] for one subscription.
    fn default() -> Self {
        BrokerLimits::split(DEFAULT_LOG_MB, 1)
    }
}

impl BrokerLimits {
    /// `log_mb` shared by the logs of `filters` subscription filters (each filter keeps one).
    pub fn split(log_mb: u64, filters: usize) -> Self {
        BrokerLimits {
            log_ram_bytes: log_mb as usize * 1_000_000 / filters.max(1),
        }
    }

    /// The segment size rumqttd is given, in its own (counted) bytes.
    pub fn segment_bytes(&self) -> usize {
        (self.log_ram_bytes / RAM_PER_COUNTED_BYTE / SEGMENT_COUNT).max(MIN_SEGMENT_BYTES)
    }
}

/// A tracing layer that counts rumqttd's "Read cursor start jumped" warnings (a subscriber lost
/// messages its filter's log had dropped). rumqttd has no other way to tell: its alert log is
/// only read by its own metrics timer. The layer sees these events whatever the log filter says.
pub fn overrun_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    OverrunLayer.with_filter(tracing_subscriber::filter::Targets::new().with_target("rumqttd", tracing::Level::WARN))
}

struct OverrunLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for OverrunLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        struct Jump(bool);
        impl tracing::field::Visit for Jump {
            fn record_str(&mut self, _field: &tracing::field::Field, value: &str) {
                self.0 |= value.contains("Read cursor start jumped");
            }
            fn record_debug(&mut self, _field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if !self.0 {
                    self.0 = format!("{value:?}").contains("Read cursor start jumped");
                }
            }
        }
        let mut jump = Jump(false);
        event.record(&mut jump);
        if jump.0 {
            LOG_OVERRUNS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Connections the broker accepts (devices plus the gateway's own clients).
const MAX_CONNECTIONS: usize = 10_000;
/// How long a new connection may take to send CONNECT.
const CONNECT_TIMEOUT_MS: u16 = 10_000;
/// How long [`start`] waits for the listener.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running embedded broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    pub addr: SocketAddr,
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts the broker on `listen` (port 0: a free port) with the given largest packet, QoS 1
/// window per connection and memory limits.
/// With `internal_secret`, every client must log in with it (any username): devices reach the
/// broker only through the front door (`gatekeeper`), which logs in for them. `None` (tests and
/// benches of the broker alone) admits anyone.
pub async fn start(
    listen: SocketAddr,
    max_packet_bytes: usize,
    max_inflight: usize,
    limits: &BrokerLimits,
    internal_secret: Option<&crate::secret::Secret>,
) -> Result<EmbeddedBroker, BrokerError> {
    // Bind once ourselves: a taken port fails here with the real error, and port 0 becomes a
    // concrete free port rumqttd can be given.
    let addr = {
        let probe = TcpListener::bind(listen).map_err(|source| BrokerError::Bind { addr: listen, source })?;
        probe
            .local_addr()
            .map_err(|source| BrokerError::Bind { addr: listen, source })?
    };
    let router_cfg = RouterConfig {
        max_connections: MAX_CONNECTIONS,
        max_outgoing_packet_count: max_inflight as u64,
        max_segment_size: limits.segment_bytes(),
        max_segment_count: SEGMENT_COUNT,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let router_tx = Router::new(0, router_cfg).spawn();
    let mut connections = ConnectionSettings {
        connection_timeout_ms: CONNECT_TIMEOUT_MS,
        max_payload_size: max_packet_bytes,
        max_inflight_count: max_inflight,
        auth: None::<HashMap<String, String>>,
        external_auth: None,
        dynamic_filters: true,
    };
    if let Some(secret) = internal_secret {
        let secret = secret.expose().as_bytes().to_vec();
        connections.set_auth_handler(move |_client_id, _user, password: String| {
            use subtle::ConstantTimeEq;
            let ok: bool = password.as_bytes().ct_eq(&secret).into();
            std::future::ready(ok)
        });
    }
    let settings = ServerSettings {
        name: "v4".to_owned(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let (failed_tx, mut failed_rx) = tokio::sync::oneshot::channel::<String>();
    let thread = std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    let _ = failed_tx.send(format!("cannot start its runtime: {e}"));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut server = Server::new(settings, router_tx, V4);
                // Only returns on failure (bind, accept loop error).
                let message = match server.start(LinkType::Remote).await {
                    Ok(()) => "listener ended".to_owned(),
                    Err(e) => e.to_string(),
                };
                error!(%addr, error = %message, "embedded MQTT broker stopped");
                let _ = failed_tx.send(message);
            });
        })
        .map_err(|source| BrokerError::Bind { addr, source })?;
    let started = std::time::Instant::now();
    loop {
        if let Ok(message) = failed_rx.try_recv() {
            return Err(BrokerError::Stopped { addr, message });
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            // The listener is ours unless it failed meanwhile (checked once more).
            if let Ok(message) = failed_rx.try_recv() {
                return Err(BrokerError::Stopped { addr, message });
            }
            return Ok(EmbeddedBroker { addr, thread });
        }
        if started.elapsed() > READY_TIMEOUT {
            return Err(BrokerError::NotReady {
                addr,
                waited_ms: READY_TIMEOUT.as_millis() as u64,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
