//! Wiring: starts the journal writer, the InfluxDB forwarder, the broker, the MQTT source and
//! the HTTP API for one loaded configuration, and stops them in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::QoS;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::stages::{StageFailure, StageFailures, Stages};

use crate::alerts::delivery::{MqttAlertPublisher, MqttAlertsConfig, NewEvents, SharedLog, StreamState, WebhookTask};
use crate::alerts::lifecycle::Lifecycle;
use crate::alerts::store::AlertStore;
use crate::alerts::task::{command_channel, policy_from_rules, AlertsTask};
use crate::api::alerts::AlertsApiState;
use crate::api::control::ControlState;
use crate::api::{self, ApiState};
use crate::auth::http::{AuthState, SiteInfo};
use crate::auth::Auth;
use crate::clock::Clock;
use crate::config::{DecoderKind, Loaded, MqttMode};
use crate::decode::{Decoder, Limits};
use crate::influx::client::InfluxClient;
use crate::influx::{self, Forwarder};
use crate::journal::writer::WriterConfig;
use crate::journal::{spawn_writer, Store, WriterHandle};
use crate::normalize::Normalizer;
use crate::rules::Engine;
use crate::sources::broker;
use crate::sources::mqtt::{topic_matches, AckPolicy, Lane, MqttSource, MqttSourceConfig, Route, Select};
use crate::sources::serial::SerialSource;
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
    _journal_lock: crate::journal::lock::JournalLock,
}

/// Committed batches waiting for the rules engine; full = the journal writer waits.
const OBSERVER_CAPACITY: usize = 1024;

/// When the gateway's subscribers acknowledge QoS 1 messages: on receipt with the embedded
/// broker, which keeps nothing across a crash and whose window of 100 unacknowledged publishes
/// (a constant of rumqttd 0.20's router) capped ingest when acknowledgements waited for commits;
/// after the commit with an external, persistent broker, which delivers again what a crash left
/// uncommitted.
fn ack_policy(mode: MqttMode) -> AckPolicy {
    match mode {
        MqttMode::Embedded => AckPolicy::OnReceipt,
        MqttMode::External => AckPolicy::AfterCommit,
    }
}

/// How long start waits for the broker to confirm the subscriptions.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(30);

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

/// The exact topics life-safety devices of the registry publish on, each with the decoder and
/// QoS of the subscription that matches it: canonical `nh/{site}/{id}/telemetry`, and
/// Zigbee2MQTT `<base>/{friendly name}` for a subscription `<base>/+`. Devices reporting through
/// generic JSON mappings stay in the bulk lane (their topics are not derivable).
fn priority_routes(routes: &[Route], registry: &crate::registry::Registry, site: &str) -> Vec<Route> {
    let mut out: Vec<Route> = Vec::new();
    for d in registry.devices() {
        if !crate::safety::takes_priority_lane(&d.class) {
            continue;
        }
        for r in routes {
            let candidate = match &r.decoder {
                Decoder::Canonical { .. } => Some(format!("nh/{site}/{}/telemetry", d.id)),
                Decoder::Zigbee2Mqtt => match (&d.zigbee_name, r.filter.strip_suffix("/+")) {
                    (Some(name), Some(base)) => Some(format!("{base}/{name}")),
                    _ => None,
                },
                Decoder::JsonMap(_) => None,
            };
            if let Some(topic) = candidate {
                if topic_matches(&r.filter, &topic) && !out.iter().any(|o| o.filter == topic) {
                    out.push(Route {
                        filter: topic,
                        qos: r.qos,
                        decoder: r.decoder.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Most rows judged again at start; more means the engine was far behind, and the oldest of
/// them are too old to raise anything useful.
const REPLAY_MAX_ROWS: usize = 1_000_000;

/// Judges the rows committed before this start that the saved engine state had not judged: a
/// crash between a commit (the message acknowledged) and its alert must not lose the alert.
fn replay_unjudged(task: &mut AlertsTask, journal_path: &std::path::Path, last_id: i64, now: i64) {
    let Some(from) = task.observed_row() else {
        // Never recorded (a fresh journal, or one from before this was kept): judge from now on.
        task.mark_judged(last_id);
        return;
    };
    if from >= last_id {
        return;
    }
    let store = match Store::open_secondary(journal_path) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot read the journal to judge rows committed before the restart");
            return;
        }
    };
    let mut after = from.max(last_id - REPLAY_MAX_ROWS as i64);
    let mut judged = 0usize;
    while after < last_id {
        let rows = match store.rows_after(after, 10_000) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "reading rows to judge again failed");
                return;
            }
        };
        let batch: Vec<(i64, crate::journal::Record)> = rows
            .into_iter()
            .filter(|r| r.id <= last_id)
            .map(|r| (r.id, r.record))
            .collect();
        let Some(last) = batch.last().map(|r| r.0) else { break };
        judged += batch.len();
        task.replay(&batch, now);
        after = last;
    }
    info!(
        from,
        to = last_id,
        rows = judged,
        "rows committed before the restart judged by the rules engine"
    );
}

/// Device id -> id of the serial link it hangs on.
fn serial_links(ports: &[crate::config::SerialPortConfig]) -> std::collections::HashMap<String, String> {
    let mut links = std::collections::HashMap::new();
    for p in ports {
        match p.protocol {
            crate::config::SerialProtocol::ModbusRtu => {
                for u in &p.units {
                    links.insert(u.device_id(&p.bus), p.link_id());
                }
            }
            crate::config::SerialProtocol::Mr60fda1 => {
                links.insert(p.radar_id(), p.link_id());
            }
        }
    }
    links
}

/// The HTTP routes: `/healthz`, `/metrics`, the page and login open; the rest of `/api/v1`
/// behind the login middleware. Every response carries the page's security headers.
fn http_app(
    api: ApiState,
    alerts: AlertsApiState,
    stream: StreamState,
    control: ControlState,
    auth: AuthState,
) -> axum::Router {
    let protected = api::router(api.clone())
        .merge(api::alerts::routes(alerts))
        .merge(api::stream::routes(stream, api.auth.clone()))
        .merge(api::control::routes(control))
        .merge(crate::auth::http::protected_routes(auth.clone()))
        .layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            crate::auth::http::require,
        ));
    api::open_routes(api)
        .merge(crate::auth::http::routes(auth))
        .merge(crate::web::routes())
        .merge(protected)
        .layer(axum::middleware::from_fn(api::security_headers))
}

/// Starts every stage of a loaded configuration.
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
    } = loaded;
    // One gateway per journal: a second one refuses to start before it touches the file.
    let journal_lock = crate::journal::lock::JournalLock::acquire(&journal_path)?;
    let clock = opts.clock.unwrap_or_else(Clock::system);
    let telemetry = Arc::new(Telemetry::default());
    let registry = Arc::new(registry);
    let shutdown = CancellationToken::new();
    let sources = TaskTracker::new();
    let others = TaskTracker::new();
    let (stages, failures) = Stages::new(shutdown.clone());

    // The journal first: nothing is accepted before it can be committed. A damaged file is
    // salvaged onto a fresh one here, never a reason not to start.
    let open_options = crate::journal::recovery::OpenOptions {
        sync: config.journal.sync,
        check: config.journal.integrity_check,
        check_max: Duration::from_secs(config.journal.integrity_check_max_s),
    };
    let (store, opened) = crate::journal::recovery::open(&journal_path, open_options, crate::clock::system_now_ms())?;
    crate::journal::recovery::count(&opened, &telemetry);
    // Committed readings go on to the rules engine, with back-pressure.
    let (observer_tx, observer_rx) = tokio::sync::mpsc::channel(OBSERVER_CAPACITY);
    let (priority_observer_tx, priority_observer_rx) = tokio::sync::mpsc::channel(OBSERVER_CAPACITY);
    let writer_cfg = WriterConfig {
        commit_max_messages: config.journal.commit_max_messages,
        retention_ms: i64::from(config.journal.retention_days) * 24 * 3600 * 1000,
        disk_budget_bytes: config.journal.disk_budget_mb * 1024 * 1024,
        guard_cursor: config.influx.as_ref().map(|_| influx::CURSOR),
        clock,
        observer: Some(observer_tx),
        observer_priority: Some(priority_observer_tx),
        exit_on_corruption: true,
        bulk_linger: crate::journal::writer::BULK_LINGER,
        bulk_linger_gap: crate::journal::writer::BULK_LINGER_GAP,
        // Half the MQTT window: where acknowledgements wait for the commit (external mode), a
        // batch never grows past the window and must not wait for one that cannot. The embedded
        // broker's subscribers acknowledge on receipt, so its window (100) does not stop the flow.
        bulk_linger_messages: usize::from(config.mqtt.inflight / 2).max(1),
    };
    let writer = spawn_writer(store, writer_cfg, telemetry.clone())?;
    info!(
        path = %journal_path.display(),
        last_id = *writer.committed.borrow(),
        unclean_shutdown = opened.unclean,
        check = ?opened.check,
        check_ms = opened.check_ms,
        recovered = opened.recovery.is_some(),
        "journal open"
    );
    if opened.unclean {
        warn!(
            path = %journal_path.display(),
            check = ?opened.check,
            recovered = opened.recovery.is_some(),
            "the previous run did not stop cleanly (killed, crashed or power lost)"
        );
    }

    // The rules engine and the alert lifecycle: one task, its state restored from the journal.
    let alert_store = AlertStore::open(&journal_path)?;
    let lifecycle = Lifecycle::open(alert_store, policy_from_rules(&rules), config.site.id.clone())?;
    let engine = Engine::new(rules.clone(), registry.clone(), clock.now_ms()).with_links(serial_links(&config.serial));
    let mut alerts_task = AlertsTask::new(engine, lifecycle);
    replay_unjudged(
        &mut alerts_task,
        &journal_path,
        *writer.committed.borrow(),
        clock.now_ms(),
    );
    let alert_seq = alerts_task.events();
    let (alerts_handle, alert_commands) = command_channel();
    info!(rules = rules.len(), "rules engine on");
    stages.spawn(
        &others,
        "alerts",
        alerts_task.run(
            priority_observer_rx,
            observer_rx,
            alert_commands,
            clock,
            shutdown.clone(),
        ),
    );
    let delivery_stats = telemetry.delivery.clone();
    for (i, hook) in WebhookTask::for_config(&config.alerts, &journal_path, &alert_seq, &delivery_stats)
        .into_iter()
        .enumerate()
    {
        stages.spawn(&others, format!("webhook:{i}"), hook.run(shutdown.clone()));
    }

    if let Some(icfg) = &config.influx {
        let client = InfluxClient::new(icfg, influx_token.as_ref())?;
        let fwd = Forwarder {
            cfg: icfg.clone(),
            client,
            site: config.site.id.clone(),
            journal_path: journal_path.clone(),
            committed: writer.committed.clone(),
            telemetry: telemetry.clone(),
            clock,
        };
        info!(url = %icfg.url, org = %icfg.org, bucket = %icfg.bucket, "InfluxDB forwarding on");
        stages.spawn(&others, "influx-forwarder", fwd.run(shutdown.clone()));
    } else {
        info!("no [influx] section: the embedded journal is the only store");
    }

    let limits = Limits {
        max_payload_bytes: config.decode.max_payload_bytes,
        max_json_depth: config.decode.max_json_depth,
    };
    let routes: Vec<Route> = config
        .mqtt
        .subscriptions
        .iter()
        .filter_map(|s| {
            let decoder = match s.decoder {
                DecoderKind::Canonical => Decoder::Canonical {
                    site: config.site.id.clone(),
                },
                DecoderKind::Zigbee2mqtt => Decoder::Zigbee2Mqtt,
                // Validation guarantees the profile exists.
                DecoderKind::JsonMap => {
                    let profile = config.profiles.iter().find(|p| Some(&p.name) == s.profile.as_ref())?;
                    Decoder::JsonMap(Arc::new(profile.clone()))
                }
            };
            let qos = if s.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
            Some(Route {
                filter: s.filter.clone(),
                qos,
                decoder,
            })
        })
        .collect();
    let normalizer = Arc::new(
        Normalizer::new(
            registry.clone(),
            config.registry.unknown_devices,
            limits,
            (config.decode.max_future_s * 1000) as i64,
            (config.decode.max_past_s * 1000) as i64,
            clock,
            telemetry.clone(),
        )
        .with_flood_limit(crate::normalize::FloodLimit::from(&config.decode)),
    );
    let source_password = mqtt_password.clone();
    let client_id = config
        .mqtt
        .client_id
        .clone()
        .unwrap_or_else(|| format!("nh-gateway-{}", config.site.id));
    // The priority lane: exact topics of life-safety devices on a connection of their own.
    let priority_routes = if config.mqtt.priority_lane {
        priority_routes(&routes, &registry, &config.site.id)
    } else {
        Vec::new()
    };
    // MQTT: the embedded broker, or an external one.
    let (mqtt, host, port) = match config.mqtt.mode {
        MqttMode::Embedded => {
            let listen = opts.mqtt.unwrap_or(config.mqtt.listen);
            // Each subscription filter keeps a log of its own; the priority lane shares the bulk
            // lane's filters (below), so the cap is split between the subscriptions only.
            let limits = broker::BrokerLimits::split(config.mqtt.broker_log_mb, routes.len());
            let b = broker::start(
                listen,
                config.mqtt.max_packet_bytes,
                usize::from(config.mqtt.inflight),
                &limits,
            )
            .await?;
            let addr = b.addr;
            info!(%addr, "embedded MQTT broker listening");
            // rumqttd has no shutdown call: its thread ends only on a failure, or with the process.
            stages
                .watch_thread("mqtt-broker", b.thread, None)
                .map_err(StartError::Thread)?;
            let host = if addr.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                addr.ip().to_string()
            };
            (MqttEndpoint::Embedded(addr), host, addr.port())
        }
        MqttMode::External => (
            MqttEndpoint::External,
            config.mqtt.host.clone().unwrap_or_default(),
            config.mqtt.port,
        ),
    };
    let base_cfg = MqttSourceConfig {
        host: host.clone(),
        port,
        client_id: client_id.clone(),
        username: config.mqtt.username.clone(),
        password: mqtt_password.clone(),
        clean_session: config.mqtt.clean_session,
        keep_alive: Duration::from_secs(config.mqtt.keep_alive_s),
        max_packet_bytes: config.mqtt.max_packet_bytes,
        inflight: config.mqtt.inflight,
        ack: ack_policy(config.mqtt.mode),
        routes: Vec::new(),
        lane: Lane::Bulk,
        select: Select::All,
    };
    let mut subscribed = Vec::new();
    if !priority_routes.is_empty() {
        telemetry
            .mqtt_priority_lane
            .store(1, std::sync::atomic::Ordering::Relaxed);
        info!(
            topics = priority_routes.len(),
            "MQTT priority lane for life-safety devices"
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        subscribed.push(rx);
        let topics: Arc<std::collections::HashSet<String>> =
            Arc::new(priority_routes.iter().map(|r| r.filter.clone()).collect());
        // On the embedded broker every subscription filter keeps a log of its own, so one exact
        // filter per device would cost a log per device: there the priority lane subscribes to
        // the bulk lane's wildcard filters (sharing their logs) and takes only its topics. An
        // external broker queues per client, not per filter: exact topics, nothing extra sent.
        let (lane_routes, select) = match config.mqtt.mode {
            MqttMode::Embedded => (
                routes
                    .iter()
                    .filter(|r| priority_routes.iter().any(|p| topic_matches(&r.filter, &p.filter)))
                    .cloned()
                    .collect(),
                Select::Only(topics.clone()),
            ),
            MqttMode::External => (priority_routes, Select::All),
        };
        let priority = MqttSource::new(
            MqttSourceConfig {
                client_id: format!("{client_id}-ls"),
                routes: lane_routes,
                lane: Lane::Priority,
                select,
                ..base_cfg.clone()
            },
            Some(tx),
            normalizer.clone(),
            writer.tx_priority.clone(),
            telemetry.clone(),
        );
        stages.spawn(&sources, "mqtt-priority", priority.run(shutdown.clone()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        subscribed.push(rx);
        let bulk = MqttSource::new(
            MqttSourceConfig {
                routes,
                select: Select::Except(topics),
                ..base_cfg
            },
            Some(tx),
            normalizer.clone(),
            writer.tx.clone(),
            telemetry.clone(),
        );
        stages.spawn(&sources, "mqtt-bulk", bulk.run(shutdown.clone()));
    } else {
        let (tx, rx) = tokio::sync::oneshot::channel();
        subscribed.push(rx);
        let bulk = MqttSource::new(
            MqttSourceConfig { routes, ..base_cfg },
            Some(tx),
            normalizer.clone(),
            writer.tx.clone(),
            telemetry.clone(),
        );
        stages.spawn(&sources, "mqtt-bulk", bulk.run(shutdown.clone()));
    }
    for port in &config.serial {
        let protocol = SerialSource::protocol_label(port.protocol);
        let serial = SerialSource {
            stats: telemetry.serial.bus(&port.bus, protocol),
            port: port.clone(),
            maps: modbus_maps.clone(),
            normalizer: normalizer.clone(),
            // Gas and fire panels, fall radars: life-safety links take the priority input.
            journal: writer.tx_priority.clone(),
            clock,
        };
        info!(bus = %port.bus, path = %port.path.display(), protocol, "serial source on");
        stages.spawn(&sources, format!("serial:{}", port.bus), serial.run(shutdown.clone()));
    }
    // Self-supervision (rules S2-S7) journals through the priority input: it stops with the
    // sources so that the writer can drain and end.
    let links = serial_links(&config.serial);
    let supervisor = crate::supervise::Supervisor {
        telemetry: telemetry.clone(),
        clock,
        journal: writer.tx_priority.clone(),
        journal_path: journal_path.clone(),
        influx: config.influx.is_some(),
        expect_mqtt: registry.devices().iter().any(|d| {
            !links.contains_key(&d.id) && d.interval_s.saturating_mul(1000) < crate::supervise::MQTT_SILENCE_MS as u64
        }),
    };
    stages.spawn(&sources, "supervisor", supervisor.run(shutdown.clone()));
    // Alerts are published on the same broker, through their own connection and outbox.
    let mut alerts_mqtt = MqttAlertsConfig::new(config.site.id.clone(), host.clone(), port);
    if config.mqtt.mode == MqttMode::External {
        alerts_mqtt.username = config.mqtt.username.clone();
        alerts_mqtt.password = source_password.clone();
    }
    let publisher = MqttAlertPublisher::new(
        alerts_mqtt,
        SharedLog::new(&journal_path),
        NewEvents::new(alert_seq.clone()),
        delivery_stats.clone(),
    );
    stages.spawn(&others, "alert-publisher", publisher.run(shutdown.clone()));
    // `ready` promises that published readings are taken in: wait for the subscriptions. An
    // external broker that is down does not keep the rest of the gateway from starting.
    let all_subscribed = async {
        for rx in subscribed {
            rx.await?;
        }
        Ok::<(), tokio::sync::oneshot::error::RecvError>(())
    };
    match tokio::time::timeout(SUBSCRIBE_WAIT, all_subscribed).await {
        Ok(Ok(())) => info!("MQTT subscriptions in place"),
        _ => warn!(
            waited_s = SUBSCRIBE_WAIT.as_secs(),
            "MQTT subscriptions not confirmed yet; starting anyway (health reports degraded until connected)"
        ),
    }
    // The writer ends when the last sender is gone: only the sources hold one.
    let WriterHandle {
        tx: _,
        tx_priority: _,
        committed: _,
        thread: writer_thread,
    } = writer;
    let (writer_done_tx, writer_done) = tokio::sync::oneshot::channel();
    stages
        .watch_thread("journal-writer", writer_thread, Some(writer_done_tx))
        .map_err(StartError::Thread)?;

    // HTTP last: `ready` means every stage is up.
    let http_listen = opts.http.unwrap_or(config.http.listen);
    let listener = tokio::net::TcpListener::bind(http_listen)
        .await
        .map_err(|source| StartError::HttpBind {
            addr: http_listen,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| StartError::HttpBind {
        addr: http_listen,
        source,
    })?;
    let auth = Arc::new(Auth::new(config.auth.clone()));
    if auth.is_empty() {
        warn!("no [[auth.operators]] or [[auth.tokens]] configured: every /api/v1 request is refused");
    }
    let mut state = ApiState::new(
        config.site.id.clone(),
        registry.clone(),
        telemetry.clone(),
        journal_path.clone(),
    );
    state.auth = Some(auth.clone());
    state.clock = clock;
    state.offline_multiple = rules.offline_multiple();
    let status_telemetry = telemetry.clone();
    let stream = StreamState::new(
        journal_path.clone(),
        alert_seq,
        move || status_telemetry.status(),
        delivery_stats,
        shutdown.clone(),
    );
    let auth_state = AuthState::new(
        auth,
        clock,
        SiteInfo {
            id: config.site.id.clone(),
            name: config.site.name.clone(),
            timezone: config.site.timezone.clone(),
        },
        journal_path.clone(),
    );
    let control = ControlState::new(
        registry.clone(),
        residents,
        clock,
        config
            .shifts
            .start_minutes()
            .unwrap_or_else(|| vec![7 * 60, 15 * 60, 23 * 60]),
        site_time,
        journal_path.clone(),
    );
    let app = http_app(
        state,
        AlertsApiState::new(alerts_handle, journal_path),
        stream,
        control,
        auth_state,
    );
    let http_shutdown = shutdown.clone();
    stages.spawn(&others, "http-api", async move {
        let serve = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move { http_shutdown.cancelled().await });
        if let Err(e) = serve.await {
            warn!(error = %e, "HTTP server ended");
        }
    });
    info!(%http_addr, "HTTP API listening");

    Ok(Running {
        http_addr,
        mqtt,
        telemetry,
        shutdown,
        sources,
        others,
        writer_done,
        failures,
        _journal_lock: journal_lock,
    })
}
