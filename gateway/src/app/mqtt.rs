//! The MQTT stages: the subscription routes of `[mqtt]`, the embedded broker (or the external
//! one's address), the subscriber lanes (bulk, and the priority lane for life-safety devices),
//! the wait for their subscriptions, and the embedded broker's lost-message counter on
//! `/metrics`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::QoS;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{MqttEndpoint, StartError, Wiring};
use crate::access::events::{AccessEvents, Refusal, Watcher};
use crate::access::Policy;
use crate::auth::http::AuditWriter;
use crate::config::{DecoderKind, MqttMode, Secret};
use crate::decode::Decoder;
use crate::journal::{Ingest, WriterHandle};
use crate::normalize::Normalizer;
use crate::registry::Registry;
use crate::sources::broker;
use crate::sources::gatekeeper::{Gatekeeper, INTERNAL_USER};
use crate::sources::mqtt::{topic_matches, AckPolicy, Lane, MqttSource, MqttSourceConfig, Route, Select};
use crate::telemetry::{self, MetricsSource};

/// How long start waits for the broker to confirm the subscriptions.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(30);

/// Where the gateway's MQTT clients (the lanes, the alert publisher) connect.
pub(super) struct Broker {
    pub(super) endpoint: MqttEndpoint,
    pub(super) host: String,
    pub(super) port: u16,
    /// Embedded mode: the login of the gateway's own clients on the internal listener.
    pub(super) own_login: Option<(String, Secret)>,
    /// Embedded mode: the front door's counts.
    pub(super) access: Option<Arc<AccessEvents>>,
}

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

impl Wiring {
    /// The subscriptions of `[mqtt]`, each with its decoder and QoS.
    pub(super) fn routes(&self) -> Vec<Route> {
        let config = &self.config;
        config
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
            .collect()
    }

    /// MQTT: the embedded broker (its thread watched) on 127.0.0.1 behind the front door
    /// (`gatekeeper`) on the listen address, or an external one. `subscriptions`: how many
    /// filters share the broker's log cap. Refusals are journaled through `writer`'s priority
    /// input.
    pub(super) async fn start_broker(
        &self,
        listen: Option<SocketAddr>,
        subscriptions: usize,
        access: Arc<Policy>,
        events: &Arc<AccessEvents>,
    ) -> Result<Broker, StartError> {
        let mqtt = &self.config.mqtt;
        match mqtt.mode {
            MqttMode::Embedded => {
                let listen = listen.unwrap_or(mqtt.listen);
                // Each subscription filter keeps a log of its own; the priority lane shares the bulk
                // lane's filters (see `start_mqtt_lanes`), so the cap is split between the
                // subscriptions only.
                let limits = broker::BrokerLimits::split(mqtt.broker_log_mb, subscriptions);
                let secret = Secret::new(
                    crate::access::credentials::generate_secret()
                        .map_err(|e| StartError::Thread(std::io::Error::other(e)))?,
                );
                let b = broker::start(
                    ([127, 0, 0, 1], 0).into(),
                    mqtt.max_packet_bytes,
                    usize::from(mqtt.inflight),
                    &limits,
                    Some(&secret),
                )
                .await?;
                let internal = b.addr;
                // rumqttd has no shutdown call: its thread ends only on a failure, or with the process.
                self.stages
                    .watch_thread("mqtt-broker", b.thread, None)
                    .map_err(StartError::Thread)?;
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|source| broker::BrokerError::Bind { addr: listen, source })?;
                let addr = listener
                    .local_addr()
                    .map_err(|source| broker::BrokerError::Bind { addr: listen, source })?;
                if access.credentials().is_empty() && !access.admits_anonymous() {
                    warn!("no MQTT identity has credentials and anonymous clients are refused: every device will be refused (nh-gateway device-credentials, docs/security.md)");
                }
                self.telemetry.register(events.clone());
                let gatekeeper = Arc::new(Gatekeeper {
                    policy: access,
                    upstream: internal,
                    internal_secret: secret.clone(),
                    events: events.clone(),
                    max_packet_bytes: mqtt.max_packet_bytes,
                });
                self.spawn_source("mqtt-gatekeeper", gatekeeper.serve(listener, self.shutdown.clone()));
                info!(%addr, %internal, "embedded MQTT broker listening (identities checked at {addr}, broker on {internal})");
                Ok(Broker {
                    endpoint: MqttEndpoint::Embedded(addr),
                    host: internal.ip().to_string(),
                    port: internal.port(),
                    own_login: Some((INTERNAL_USER.to_owned(), secret)),
                    access: Some(events.clone()),
                })
            }
            MqttMode::External => Ok(Broker {
                endpoint: MqttEndpoint::External,
                host: mqtt.host.clone().unwrap_or_default(),
                port: mqtt.port,
                own_login: None,
                access: None,
            }),
        }
    }

    /// Refused MQTT acts and login lockouts to the audit and to rule S8's flags, through the
    /// journal's priority input (it holds a journal sender: it stops with the sources).
    pub(super) fn start_access_watch(&self, refusals: mpsc::Receiver<Refusal>, writer: &WriterHandle) {
        let watcher = Watcher {
            clock: self.clock,
            journal: writer.tx_priority.clone(),
            journal_path: self.journal_path.clone(),
            audit: AuditWriter::new(self.journal_path.clone()),
        };
        self.spawn_source("access-watch", watcher.run(refusals, self.shutdown.clone()));
    }

    /// The MQTT lanes: the bulk lane, and with `priority_lane` the exact topics of life-safety
    /// devices on a connection of their own. Returns one receiver per lane, told once it has
    /// subscribed.
    pub(super) fn start_mqtt_lanes(
        &self,
        routes: Vec<Route>,
        broker: &Broker,
        password: Option<Secret>,
        normalizer: &Arc<Normalizer>,
        writer: &WriterHandle,
    ) -> Vec<oneshot::Receiver<()>> {
        let config = &self.config;
        let priority_routes = if config.mqtt.priority_lane {
            priority_routes(&routes, &self.registry, &config.site.id)
        } else {
            Vec::new()
        };
        let base_cfg = self.lane_config(broker, password);
        if priority_routes.is_empty() {
            let bulk = MqttSourceConfig { routes, ..base_cfg };
            return vec![self.spawn_lane("mqtt-bulk", bulk, normalizer, writer.tx.clone())];
        }
        self.telemetry.mqtt_priority_lane.store(1, Ordering::Relaxed);
        info!(
            topics = priority_routes.len(),
            "MQTT priority lane for life-safety devices"
        );
        let topics: Arc<HashSet<String>> = Arc::new(priority_routes.iter().map(|r| r.filter.clone()).collect());
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
        let priority_id = format!("{}-ls", base_cfg.client_id);
        let priority = MqttSourceConfig {
            username: match &broker.own_login {
                Some((user, _)) => Some(user.clone()),
                None => config.mqtt.username_for(&priority_id),
            },
            client_id: priority_id,
            routes: lane_routes,
            lane: Lane::Priority,
            select,
            ..base_cfg.clone()
        };
        let priority = self.spawn_lane("mqtt-priority", priority, normalizer, writer.tx_priority.clone());
        let bulk = MqttSourceConfig {
            routes,
            select: Select::Except(topics),
            ..base_cfg
        };
        let bulk = self.spawn_lane("mqtt-bulk", bulk, normalizer, writer.tx.clone());
        vec![priority, bulk]
    }

    /// What every lane shares: the broker, the client id, the credentials (a `{client_id}` in
    /// `[mqtt] username` is each lane's own client id) and the session;
    /// the bulk lane's routes and selection, filled in per lane.
    fn lane_config(&self, broker: &Broker, password: Option<Secret>) -> MqttSourceConfig {
        let mqtt = &self.config.mqtt;
        let client_id = mqtt.base_client_id(&self.config.site.id);
        MqttSourceConfig {
            host: broker.host.clone(),
            port: broker.port,
            username: match &broker.own_login {
                Some((user, _)) => Some(user.clone()),
                None => mqtt.username_for(&client_id),
            },
            client_id,
            password: match &broker.own_login {
                Some((_, secret)) => Some(secret.clone()),
                None => password,
            },
            clean_session: mqtt.clean_session,
            keep_alive: Duration::from_secs(mqtt.keep_alive_s),
            max_packet_bytes: mqtt.max_packet_bytes,
            inflight: mqtt.inflight,
            ack: ack_policy(mqtt.mode),
            routes: Vec::new(),
            lane: Lane::Bulk,
            select: Select::All,
        }
    }

    /// Runs one MQTT lane as a source stage, committing to `journal`; the receiver is told
    /// once the lane has subscribed.
    fn spawn_lane(
        &self,
        stage: &'static str,
        cfg: MqttSourceConfig,
        normalizer: &Arc<Normalizer>,
        journal: mpsc::Sender<Ingest>,
    ) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let lane = MqttSource::new(cfg, Some(tx), normalizer.clone(), journal, self.telemetry.clone());
        self.spawn_source(stage, lane.run(self.shutdown.clone()));
        rx
    }
}

/// `ready` promises that published readings are taken in: waits for the subscriptions. An
/// external broker that is down does not keep the rest of the gateway from starting.
pub(super) async fn wait_for_subscriptions(subscribed: Vec<oneshot::Receiver<()>>) {
    let all_subscribed = async {
        for rx in subscribed {
            rx.await?;
        }
        Ok::<(), oneshot::error::RecvError>(())
    };
    match tokio::time::timeout(SUBSCRIBE_WAIT, all_subscribed).await {
        Ok(Ok(())) => info!("MQTT subscriptions in place"),
        _ => warn!(
            waited_s = SUBSCRIBE_WAIT.as_secs(),
            "MQTT subscriptions not confirmed yet; starting anyway (health reports degraded until connected)"
        ),
    }
}

/// The exact topics life-safety devices of the registry publish on, each with the decoder and
/// QoS of the subscription that matches it: canonical `nh/{site}/{id}/telemetry`, and
/// Zigbee2MQTT `<base>/{friendly name}` for a subscription `<base>/+`. Devices reporting through
/// generic JSON mappings stay in the bulk lane (their topics are not derivable).
fn priority_routes(routes: &[Route], registry: &Registry, site: &str) -> Vec<Route> {
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

/// The embedded broker's lost messages on `/metrics`. The count is kept for the whole process,
/// so the family is there whatever the MQTT mode.
pub(super) struct BrokerOverruns;

impl MetricsSource for BrokerOverruns {
    fn render(&self, out: &mut String) {
        telemetry::counter(
            out,
            "nh_mqtt_broker_log_overruns_total",
            "Times a subscriber of the embedded broker fell further behind than its filter's log and lost messages (mqtt.broker_log_mb).",
            broker::log_overruns(),
        );
    }
}
