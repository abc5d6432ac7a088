//! MQTT ingest's configuration (`[mqtt]`): embedded or external broker, the subscriptions and
//! the decoder each one feeds, with their defaults.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::diagnostics::Diagnostics;

use crate::secret::SecretSource;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MqttMode {
    /// Start the rumqttd broker inside the gateway and subscribe to it.
    Embedded,
    /// Connect to an MQTT 3.1.1 broker run elsewhere (Mosquitto, EMQX...).
    External,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `embedded` or `external`.
    #[serde(default = "default_mqtt_mode")]
    pub mode: MqttMode,
    /// Embedded mode: the broker's listen address (`--mqtt` overrides it; port 0 picks one).
    #[serde(default = "default_mqtt_listen")]
    pub listen: SocketAddr,
    /// External mode: broker host.
    #[serde(default)]
    pub host: Option<String>,
    /// External mode: broker port.
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Client id of the gateway's subscriber; with `clean_session = false` the broker keeps its
    /// subscriptions and unacknowledged QoS 1 messages across a gateway restart.
    #[serde(default)]
    pub client_id: Option<String>,
    /// External mode: user name. `{client_id}` stands for each connection's own client id
    /// (`username = "{client_id}"`: the bulk lane, the priority lane and the alert publisher each
    /// log in under their client id, as a broker with `use_username_as_clientid` needs).
    #[serde(default)]
    pub username: Option<String>,
    /// External mode: password, from the environment or a file (`{ env = "VAR" }` / `{ file = "path" }`).
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// Start a clean session at every connect: the broker then drops our subscriptions and
    /// every QoS 1 message published while the gateway is away. Refused in external mode with
    /// QoS 1 subscriptions unless `accept_message_loss_while_down` says so.
    #[serde(default)]
    pub clean_session: bool,
    /// External mode: accept that, with `clean_session = true`, what devices publish while the
    /// gateway is down or reconnecting is lost.
    #[serde(default)]
    pub accept_message_loss_while_down: bool,
    /// Keep-alive interval in seconds (at least 5).
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// Largest MQTT packet the transport accepts. Kept above `decode.max_payload_bytes` so an
    /// oversized payload is received, rejected, counted and acknowledged instead of breaking the
    /// connection and coming back forever as a redelivery.
    #[serde(default = "default_max_packet_bytes")]
    pub max_packet_bytes: usize,
    /// QoS 1 messages in flight between the broker and the gateway (not yet acknowledged).
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// Topic filters and the decoder each one feeds.
    #[serde(default = "default_subscriptions")]
    pub subscriptions: Vec<Subscription>,
    /// A second MQTT connection (client id `<client_id>-ls`) that takes the topics of the
    /// registry's life-safety devices (smoke, heat, gas, CO, fall, SOS) into the journal's
    /// priority queue: a fire never waits behind bulk telemetry. The bulk connection skips
    /// (acknowledges unprocessed) its copies of those messages. Embedded mode: it subscribes to
    /// the same wildcard filters (one broker log each, shared); external: to the exact topics.
    #[serde(default = "default_true")]
    pub priority_lane: bool,
    /// Embedded mode: RAM in MB the broker may use for its logs of the messages the gateway
    /// subscribes to (shared by the subscriptions' filters, one log each). A
    /// subscriber that falls further behind than this loses messages inside the broker (counted,
    /// alert S10); more buys a longer stall at a higher memory bound (docs/memory.md).
    #[serde(default = "default_broker_log_mb")]
    pub broker_log_mb: u64,
    /// Embedded mode: who may connect and what each identity may do (docs/security.md).
    #[serde(default)]
    pub access: crate::access::AccessConfig,
}

/// In `[mqtt] username`: each connection's own client id.
pub const CLIENT_ID_PLACEHOLDER: &str = "{client_id}";

/// See [`super::broker::DEFAULT_LOG_MB`].
pub const DEFAULT_BROKER_LOG_MB: u64 = super::broker::DEFAULT_LOG_MB;

fn default_broker_log_mb() -> u64 {
    DEFAULT_BROKER_LOG_MB
}

fn default_true() -> bool {
    true
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            mode: default_mqtt_mode(),
            listen: default_mqtt_listen(),
            host: None,
            port: default_mqtt_port(),
            client_id: None,
            username: None,
            password: None,
            clean_session: false,
            accept_message_loss_while_down: false,
            keep_alive_s: default_keep_alive_s(),
            max_packet_bytes: default_max_packet_bytes(),
            inflight: default_inflight(),
            subscriptions: default_subscriptions(),
            priority_lane: true,
            broker_log_mb: DEFAULT_BROKER_LOG_MB,
            access: Default::default(),
        }
    }
}

fn default_mqtt_mode() -> MqttMode {
    MqttMode::Embedded
}
fn default_mqtt_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}
fn default_mqtt_port() -> u16 {
    1883
}
fn default_keep_alive_s() -> u64 {
    30
}
/// 1 MiB: well above the 64 KiB decoder limit.
fn default_max_packet_bytes() -> usize {
    1024 * 1024
}
/// 1000 in flight: enough to keep throughput up while each message waits for a group commit.
fn default_inflight() -> u16 {
    1000
}
fn default_subscriptions() -> Vec<Subscription> {
    vec![
        Subscription {
            filter: "nh/+/+/telemetry".into(),
            decoder: DecoderKind::Canonical,
            profile: None,
            qos: 1,
        },
        Subscription {
            filter: "zigbee2mqtt/+".into(),
            decoder: DecoderKind::Zigbee2mqtt,
            profile: None,
            qos: 1,
        },
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecoderKind {
    /// `nh/{site}/{device_id}/telemetry` with the canonical JSON.
    Canonical,
    /// Zigbee2MQTT state messages on `zigbee2mqtt/{friendly_name}`.
    Zigbee2mqtt,
    /// A `[[profiles]]` JSON mapping named by `profile`.
    JsonMap,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// MQTT topic filter (`+` and `#` wildcards).
    pub filter: String,
    /// `canonical`, `zigbee2mqtt` or `json_map`.
    pub decoder: DecoderKind,
    /// With `json_map`: the name of the `[[profiles]]` entry.
    #[serde(default)]
    pub profile: Option<String>,
    /// 0 or 1. With 1, a message is acknowledged only after its readings are in the journal.
    #[serde(default = "default_qos")]
    pub qos: u8,
}

fn default_qos() -> u8 {
    1
}

impl MqttConfig {
    /// The client id of the gateway's bulk subscriber: `client_id`, or `nh-gateway-{site}`. The
    /// priority lane's is this with `-ls`.
    pub fn base_client_id(&self, site: &str) -> String {
        self.client_id.clone().unwrap_or_else(|| format!("nh-gateway-{site}"))
    }

    /// The user name the connection with `client_id` logs in with: `username`, with
    /// [`CLIENT_ID_PLACEHOLDER`] replaced by that client id.
    pub fn username_for(&self, client_id: &str) -> Option<String> {
        self.username
            .as_deref()
            .map(|u| u.replace(CLIENT_ID_PLACEHOLDER, client_id))
    }

    /// Reports the section's own problems under `mqtt.*`; `profile_exists` says whether a
    /// `json_map` subscription's profile is defined.
    pub(crate) fn check(&self, profile_exists: impl Fn(&str) -> bool, d: &mut Diagnostics<'_>) {
        if self.mode == MqttMode::External
            && self.clean_session
            && !self.accept_message_loss_while_down
            && self.subscriptions.iter().any(|s| s.qos >= 1)
        {
            d.at_key(
                "mqtt.clean_session",
                "with QoS 1 subscriptions on an external broker, a clean session loses every message published \
                 while the gateway is down or reconnecting: set clean_session = false, or \
                 accept_message_loss_while_down = true to accept that loss",
            );
        }
        if self.mode == MqttMode::External && self.host.as_deref().unwrap_or("").is_empty() {
            d.at_key("mqtt.host", "external mode needs the broker host");
        }
        if self.keep_alive_s < 5 {
            d.at_key("mqtt.keep_alive_s", "must be at least 5 seconds");
        }
        if self.inflight == 0 {
            d.at_key("mqtt.inflight", "must be at least 1");
        }
        if self.broker_log_mb < 4 {
            d.at_key("mqtt.broker_log_mb", "must be at least 4 MB");
        }
        if self.subscriptions.is_empty() {
            d.at_key("mqtt.subscriptions", "at least one subscription is needed");
        }
        for (i, s) in self.subscriptions.iter().enumerate() {
            s.check(&format!("mqtt.subscriptions.{i}"), &profile_exists, d);
        }
    }
}

impl Subscription {
    fn check(&self, at: &str, profile_exists: &impl Fn(&str) -> bool, d: &mut Diagnostics<'_>) {
        let key = |k: &str| format!("{at}.{k}");
        if !valid_filter(&self.filter) {
            d.at_key(
                &key("filter"),
                format!("`{}` is not a valid MQTT topic filter", self.filter),
            );
        }
        if self.qos > 1 {
            d.at_key(&key("qos"), "must be 0 or 1");
        }
        match (self.decoder, &self.profile) {
            (DecoderKind::JsonMap, None) => d.at_key(&key("profile"), "json_map needs a profile name"),
            (DecoderKind::JsonMap, Some(p)) if !profile_exists(p) => {
                d.at_key(&key("profile"), format!("no [[profiles]] entry named `{p}`"))
            }
            (DecoderKind::Canonical | DecoderKind::Zigbee2mqtt, Some(_)) => {
                d.at_key(&key("profile"), "only json_map subscriptions take a profile")
            }
            _ => {}
        }
    }
}

pub use crate::access::valid_filter;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters() {
        assert!(valid_filter("nh/+/+/telemetry"));
        assert!(valid_filter("zigbee2mqtt/#"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a/b+/c"));
        assert!(!valid_filter(""));
    }

    #[test]
    fn a_client_id_placeholder_in_the_username_is_each_connections_client_id() {
        let mut c = MqttConfig::default();
        assert_eq!(c.username_for("nh-gateway-s"), None);
        assert_eq!(c.base_client_id("s"), "nh-gateway-s");
        c.username = Some(CLIENT_ID_PLACEHOLDER.to_owned());
        assert_eq!(c.username_for("nh-gateway-s-ls").as_deref(), Some("nh-gateway-s-ls"));
        c.username = Some("gateway".to_owned());
        assert_eq!(c.username_for("nh-gateway-s-ls").as_deref(), Some("gateway"));
        c.client_id = Some("gw".to_owned());
        assert_eq!(c.base_client_id("s"), "gw");
    }
}
