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

/// The in-RAM log the router keeps per topic filter. A subscriber that falls further behind
/// than this loses messages (crates.md), so the gateway's subscriber must keep up; 32 MiB x 4
/// holds several hundred thousand typical readings while bounding memory.
const SEGMENT_BYTES: usize = 32 * 1024 * 1024;
const SEGMENT_COUNT: usize = 4;
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

/// Starts the broker on `listen` (port 0: a free port) with the given largest packet and
/// QoS 1 window per connection.
pub async fn start(
    listen: SocketAddr,
    max_packet_bytes: usize,
    max_inflight: usize,
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
        max_segment_size: SEGMENT_BYTES,
        max_segment_count: SEGMENT_COUNT,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let router_tx = Router::new(0, router_cfg).spawn();
    let settings = ServerSettings {
        name: "v4".to_owned(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: CONNECT_TIMEOUT_MS,
            max_payload_size: max_packet_bytes,
            max_inflight_count: max_inflight,
            auth: None::<HashMap<String, String>>,
            external_auth: None,
            dynamic_filters: true,
        },
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
