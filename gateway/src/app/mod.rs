//! Wiring: starts the journal writer, the rules and alerts, the InfluxDB forwarder, the broker,
//! the MQTT and serial sources, self-supervision and the HTTP API for one loaded configuration,
//! and stops them in order.
//!
//! [`start`] reads as the list of stages in the order they start; each stage's builder lives
//! with its kind:
//!
//! - `journal`: the journal (salvaged if damaged), its writer thread, the InfluxDB forwarder.
//! - `alerts`: the rules engine and alert lifecycle task (rows judged again after a restart),
//!   the webhooks and the MQTT alert publisher.
//! - `mqtt`: subscription routes, the embedded broker, the MQTT lanes, the broker's metrics.
//! - `sources`: the normalizer the sources share, the serial sources, self-supervision.
//! - `http`: the HTTP API, the login and the control-room page.

mod alerts;
mod http;
mod journal;
mod mqtt;
mod sources;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::access::events::AccessEvents;
use crate::alerts::delivery::DeliveryStats;
use crate::clock::Clock;
use crate::config::{Config, Loaded};
use crate::influx;
use crate::journal::lock::JournalLock;
use crate::registry::Registry;
use crate::sources::broker;
use crate::sources::serial::SerialStats;
use crate::stages::{StageFailure, StageFailures, Stages};
use crate::telemetry::Telemetry;

/// Overrides from the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--http ADDR`.
    pub http: Option<SocketAddr>,
    /// `--mqtt ADDR` (embedded broker listen address).
    pub mqtt: Option<SocketAddr>,
    pub clock: Option<Clock>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Journal(#[from] crate::journal::StoreError),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error(transparent)]
    Influx(#[from] influx::client::BuildError),
    #[error(transparent)]
    AlertStore(#[from] crate::alerts::store::AlertStoreError),
    #[error(transparent)]
    Alerts(#[from] crate::alerts::lifecycle::AlertError),
    #[error(transparent)]
    JournalLock(#[from] crate::journal::lock::LockError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("HTTP API cannot listen on {addr}: {source}")]
    HttpBind { addr: SocketAddr, source: std::io::Error },
}

/// Where the MQTT side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttEndpoint {
    Embedded(SocketAddr),
    External,
}

/// A running gateway.
pub struct Running {
    pub http_addr: SocketAddr,
    pub mqtt: MqttEndpoint,
    pub telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
    sources: TaskTracker,
    others: TaskTracker,
    /// Told when the journal writer's thread has ended.
    writer_done: tokio::sync::oneshot::Receiver<()>,
    failures: StageFailures,
    _journal_lock: JournalLock,
}

/// How long shutdown waits for each stage before naming it stuck.
const STAGE_DEADLINE: Duration = Duration::from_secs(10);

impl Running {
    /// The `ready` line of the process conventions (docs/contracts.md).
    pub fn ready_line(&self) -> String {
        match self.mqtt {
            MqttEndpoint::Embedded(a) => format!("ready http={} mqtt={}", self.http_addr, a),
            MqttEndpoint::External => format!("ready http={} mqtt=external", self.http_addr),
        }
    }

    /// The first stage that panics or ends while the gateway runs; pending while none does.
    pub async fn stage_failed(&mut self) -> StageFailure {
        self.failures.next().await
    }

    /// Stops sources first, lets the journal commit what they queued, then the rest.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.sources.close();
        if tokio::time::timeout(STAGE_DEADLINE, self.sources.wait()).await.is_err() {
            warn!("MQTT source did not stop in time");
        }
        // The sources held the journal senders; once they are gone the writer drains and ends.
        let writer_finished = tokio::time::timeout(STAGE_DEADLINE, self.writer_done).await.is_ok();
        if !writer_finished {
            warn!("journal writer did not finish in time");
        }
        self.others.close();
        if tokio::time::timeout(STAGE_DEADLINE, self.others.wait()).await.is_err() {
            warn!("HTTP API or InfluxDB forwarder did not stop in time");
        }
        // The embedded broker's thread ends with the process: rumqttd has no shutdown call.
        if writer_finished {
            drop(self._journal_lock);
        } else {
            // The writer may still be writing: the lock stays held until the process ends (the
            // kernel frees it then), so no other gateway opens the journal under it.
            std::mem::forget(self._journal_lock);
        }
        info!("gateway stopped");
    }
}

/// What the stage builders share: the site's configuration and registry, the journal's path,
/// the clock, the counters, and the watch every stage runs under.
struct Wiring {
    config: Config,
    registry: Arc<Registry>,
    journal_path: PathBuf,
    clock: Clock,
    telemetry: Arc<Telemetry>,
    stages: Stages,
    shutdown: CancellationToken,
    /// Stages holding a journal sender: stopped first, so that the writer can drain and end.
    sources: TaskTracker,
    /// Every other stage, stopped once the writer has ended.
    others: TaskTracker,
}

impl Wiring {
    fn new(config: Config, registry: Registry, journal_path: PathBuf, clock: Clock) -> (Wiring, StageFailures) {
        let shutdown = CancellationToken::new();
        let (stages, failures) = Stages::new(shutdown.clone());
        let wiring = Wiring {
            config,
            registry: Arc::new(registry),
            journal_path,
            clock,
            telemetry: Arc::new(Telemetry::default()),
            stages,
            shutdown,
            sources: TaskTracker::new(),
            others: TaskTracker::new(),
        };
        (wiring, failures)
    }

    /// Runs a stage that feeds the journal, watched; it stops with the sources.
    fn spawn_source<F>(&self, stage: impl Into<String>, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.stages.spawn(&self.sources, stage, fut);
    }

    /// Runs any other stage, watched; it stops after the journal writer.
    fn spawn_other<F>(&self, stage: impl Into<String>, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.stages.spawn(&self.others, stage, fut);
    }

    /// The stages' own families on `/metrics`, in their order there: the embedded broker's
    /// overruns, then the serial links (whose counters the serial sources get).
    fn register_metrics(&self) -> Arc<SerialStats> {
        self.telemetry.register(Arc::new(mqtt::BrokerOverruns));
        let serial = Arc::new(SerialStats::default());
        self.telemetry.register(serial.clone());
        serial
    }
}

/// Starts every stage of a loaded configuration, in this order: the journal first (nothing is
/// accepted before it can be committed), the rules and alerts, the forwarder, the broker and
/// the sources, and HTTP last (`ready` means every stage is up).
pub async fn start(loaded: Loaded, opts: RunOptions) -> Result<Running, StartError> {
    let Loaded {
        config,
        registry,
        journal_path,
        influx_token,
        mqtt_password,
        rules,
        modbus_maps,
        residents,
        site_time,
        access,
    } = loaded;
    // One gateway per journal: a second one refuses to start before it touches the file.
    let journal_lock = JournalLock::acquire(&journal_path)?;
    let (w, failures) = Wiring::new(config, registry, journal_path, opts.clock.unwrap_or_else(Clock::system));
    let serial_stats = w.register_metrics();

    let (writer, observers) = w.start_journal()?;
    let alerts = w.start_alerts(&rules, &writer.committed, observers)?;
    let delivery_stats = Arc::new(DeliveryStats::default());
    w.start_webhooks(&alerts.events, &delivery_stats);
    w.start_influx(influx_token.as_ref(), &writer)?;

    let routes = w.routes();
    let normalizer = w.normalizer();
    let (access_events, refusals) = AccessEvents::new();
    w.start_access_watch(refusals, &writer);
    let broker = w.start_broker(opts.mqtt, routes.len(), access, &access_events).await?;
    let subscribed = w.start_mqtt_lanes(routes, &broker, mqtt_password.clone(), &normalizer, &writer);
    w.start_serial(&modbus_maps, &serial_stats, &normalizer, &writer);
    w.start_supervisor(&writer);
    w.start_alert_publisher(&broker, mqtt_password, &alerts.events, &delivery_stats);
    mqtt::wait_for_subscriptions(subscribed).await;
    let writer_done = w.watch_writer(writer)?;

    let http_addr = w
        .start_http(
            http::Listen {
                http: opts.http,
                mqtt: broker.endpoint,
                mqtt_access: broker.access.clone(),
                access_events,
            },
            &rules,
            residents,
            site_time,
            alerts,
            delivery_stats,
        )
        .await?;
    let Wiring {
        telemetry,
        shutdown,
        sources,
        others,
        ..
    } = w;
    Ok(Running {
        http_addr,
        mqtt: broker.endpoint,
        telemetry,
        shutdown,
        sources,
        others,
        writer_done,
        failures,
        _journal_lock: journal_lock,
    })
}

/// Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
