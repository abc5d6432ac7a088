//! Configuration: one TOML file per site, plus the device registry file it names.
//!
//! - [`diagnostics`]: TOML reading that reports every error with file, line and key.
//! - [`secret`]: the redacting type for tokens and passwords.
//!
//! Every field has a `///` doc: this file is the operator's manual, and `print-default-config`
//! prints `default.toml`, the commented version of the defaults below.

pub mod diagnostics;
pub mod secret;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use diagnostics::{ConfigError, ConfigErrors};
pub use secret::{Secret, SecretSource};

use crate::decode::json_map::Profile;
use crate::decode::register_map::{CompiledMap, RegisterMap};
use crate::registry::{is_valid_id, Registry};

/// The commented default configuration, printed by `nh-gateway print-default-config`.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// The whole gateway configuration of one site.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The facility this gateway serves.
    pub site: SiteConfig,
    /// The HTTP API.
    #[serde(default)]
    pub http: HttpConfig,
    /// MQTT ingest: embedded broker or external broker, and the subscriptions.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// Limits applied to every message before decoding.
    #[serde(default)]
    pub decode: DecodeConfig,
    /// The device registry.
    pub registry: RegistryConfig,
    /// The durable local journal (embedded store).
    #[serde(default)]
    pub journal: JournalConfig,
    /// InfluxDB v2 forwarding; absent = the embedded store alone.
    #[serde(default)]
    pub influx: Option<InfluxConfig>,
    /// Generic JSON mappings per device model, used by `json_map` subscriptions.
    #[serde(default)]
    pub profiles: Vec<Profile>,
    /// The rule catalog; absent = the shipped default catalog (`config/rules.toml`, compiled in).
    #[serde(default)]
    pub rules: Option<RulesConfig>,
    /// Alert delivery beyond MQTT and the API: webhooks.
    #[serde(default)]
    pub alerts: crate::alerts::delivery::AlertsConfig,
    /// Serial ports: RS-485 Modbus RTU buses and radar UARTs.
    #[serde(default)]
    pub serial: Vec<SerialPortConfig>,
    /// Modbus register maps besides the shipped ones (`config/modbus-maps.toml`).
    #[serde(default)]
    pub modbus_maps: Vec<RegisterMap>,
    /// Operator accounts, API tokens and the login limits. Without any, every `/api/v1`
    /// request is refused (`/healthz`, `/metrics` and the page itself stay open).
    #[serde(default)]
    pub auth: crate::auth::AuthConfig,
    /// Residents' display names (shown to logged-in staff only; alerts, the time series and the
    /// logs carry the registry's pseudonymous ids).
    #[serde(default)]
    pub residents: Option<ResidentsConfig>,
    /// Shift changes, for the shift summary.
    #[serde(default)]
    pub shifts: ShiftsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidentsConfig {
    /// File of `[[residents]]` entries (`id`, `name`), relative to this configuration file.
    pub file: PathBuf,
}

/// The residents file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidentsFile {
    #[serde(default)]
    pub residents: Vec<Resident>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resident {
    /// The pseudonymous id the registry's devices carry (`resident = "r-4c64"`).
    pub id: String,
    /// Display name.
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShiftsConfig {
    /// Local times (`HH:MM`, in the rule catalog's UTC offset) at which a shift begins.
    #[serde(default = "default_shift_starts")]
    pub starts: Vec<String>,
}

impl Default for ShiftsConfig {
    fn default() -> Self {
        ShiftsConfig {
            starts: default_shift_starts(),
        }
    }
}

fn default_shift_starts() -> Vec<String> {
    vec!["07:00".into(), "15:00".into(), "23:00".into()]
}

impl ShiftsConfig {
    /// The starts as minutes of the local day, sorted; `None` if one is not `HH:MM`.
    pub fn start_minutes(&self) -> Option<Vec<i64>> {
        let mut out = Vec::with_capacity(self.starts.len());
        for s in &self.starts {
            let (h, m) = s.trim().split_once(':')?;
            let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
            if !(0..24).contains(&h) || !(0..60).contains(&m) {
                return None;
            }
            out.push(h * 60 + m);
        }
        out.sort_unstable();
        out.dedup();
        (!out.is_empty()).then_some(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialProtocol {
    /// Modbus RTU master polling the `units` of an RS-485 bus.
    ModbusRtu,
    /// Seeed MR60FDA1 fall radar frames (`53 59 ... 54 43`), one radar per port.
    Mr60fda1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

/// One serial port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialPortConfig {
    /// Bus name, `[A-Za-z0-9._-]+`: part of the device ids (`modbus:<bus>:<unit>`), of the link's
    /// own id (`serial:<bus>`) and of the `/metrics` labels.
    pub bus: String,
    /// Device path. Prefer the stable `/dev/serial/by-id/...` name of a USB adapter over
    /// `/dev/ttyUSB0`, which changes with the plugging order.
    pub path: PathBuf,
    /// `modbus_rtu` or `mr60fda1`.
    pub protocol: SerialProtocol,
    /// Baud rate (Modbus gas detectors: 9600; MR60FDA1: 115200).
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// `none`, `even` or `odd`.
    #[serde(default)]
    pub parity: Parity,
    /// 5..=8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Room of the link (where the adapter or panel is): the location of its link-down alert.
    #[serde(default)]
    pub room: String,
    /// Longest wait between attempts to reopen a port that is gone or failing.
    #[serde(default = "default_reopen_max_ms")]
    pub reopen_max_ms: u64,
    /// mr60fda1: the radar's device id in the registry (default `uart:<bus>`).
    #[serde(default)]
    pub device: Option<String>,
    /// modbus_rtu: the units polled on this bus.
    #[serde(default)]
    pub units: Vec<ModbusUnitConfig>,
}

fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
/// 10 s: a USB adapter re-enumerates in about a second; a cable fault should not spin.
fn default_reopen_max_ms() -> u64 {
    10_000
}

impl SerialPortConfig {
    /// The id the link's own readings (`link_up`) are journaled under.
    pub fn link_id(&self) -> String {
        format!("serial:{}", self.bus)
    }

    /// The radar's device id (mr60fda1).
    pub fn radar_id(&self) -> String {
        self.device.clone().unwrap_or_else(|| format!("uart:{}", self.bus))
    }
}

/// One Modbus unit (slave) on a bus.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusUnitConfig {
    /// Unit address, 1..=247. Its device id is `modbus:<bus>:<unit>`.
    pub unit: u8,
    /// Register map name (`[[modbus_maps]]` or a shipped one: `generic_gas_lel`, `honeywell_midas_lel`).
    pub map: String,
    /// Poll interval. The registry's `interval_s` of the unit should match it: the offline rule
    /// fires after 3 intervals without an answer (R17, docs/rules.md: 3 failed polls in a row).
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// How long one request waits for the answer.
    #[serde(default = "default_unit_timeout_ms")]
    pub timeout_ms: u64,
    /// Further attempts after a timeout or a corrupted answer, within one poll.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

impl ModbusUnitConfig {
    pub fn device_id(&self, bus: &str) -> String {
        format!("modbus:{bus}:{}", self.unit)
    }
}

fn default_poll_ms() -> u64 {
    1000
}
/// 250 ms: a detector answers in tens of ms at 9600 Bd; a dead one costs at most this per try.
fn default_unit_timeout_ms() -> u64 {
    250
}
fn default_retries() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Rules file, relative to this configuration file.
    pub file: PathBuf,
}

/// The shipped default rule catalog R1-R18 (docs/rules.md).
pub const DEFAULT_RULES: &str = include_str!("../../../config/rules.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Site id, `[A-Za-z0-9._:-]+`; one MQTT topic level, and the `site` tag of every point.
    pub id: String,
    /// Display name of the facility.
    #[serde(default)]
    pub name: String,
    /// IANA time zone of the facility (`Europe/Berlin`), daylight saving included: night and
    /// maintenance windows, shift changes and the page's clock follow it.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// RAM of the edge box in MB, when known: `validate` then checks that the embedded broker's
    /// log cap and the gateway's own working set fit in half of it.
    #[serde(default)]
    pub memory_mb: Option<u64>,
}

/// The gateway's own working set without the broker's logs, MB (docs/memory.md).
pub const GATEWAY_BASE_MB: u64 = 64;

fn default_timezone() -> String {
    crate::site_time::DEFAULT_TIMEZONE.to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address of the HTTP API (`--http` overrides it; port 0 picks a free port).
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_http_listen(),
        }
    }
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

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
    /// External mode: user name.
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
}

/// See [`crate::sources::broker::DEFAULT_LOG_MB`].
pub const DEFAULT_BROKER_LOG_MB: u64 = crate::sources::broker::DEFAULT_LOG_MB;

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    /// Largest payload a decoder accepts; larger ones are counted as `oversized` and dropped.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Deepest JSON nesting accepted.
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
    /// A device time further ahead of the gateway clock than this is replaced by the receive time.
    #[serde(default = "default_max_future_s")]
    pub max_future_s: u64,
    /// A device time older than this is replaced by the receive time (a device with a reset clock).
    #[serde(default = "default_max_past_s")]
    pub max_past_s: u64,
    /// Flood limit: readings per second one device may sustain over MQTT; readings above it are
    /// dropped and counted as `flood`, except life-safety ones (alarm states, and gas, CO and
    /// temperature from fire, gas and CO detectors), which are never dropped. Serial links are not
    /// limited (their baud or poll rate is). 0 turns the limit off.
    #[serde(default = "default_max_device_rate_per_s")]
    pub max_device_rate_per_s: f64,
    /// Flood limit: readings one device may send at once above `max_device_rate_per_s`.
    #[serde(default = "default_device_burst")]
    pub device_burst: u32,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            max_payload_bytes: default_max_payload_bytes(),
            max_json_depth: default_max_json_depth(),
            max_future_s: default_max_future_s(),
            max_past_s: default_max_past_s(),
            max_device_rate_per_s: default_max_device_rate_per_s(),
            device_burst: default_device_burst(),
        }
    }
}

impl DecodeConfig {
    /// Problems with the flood limit, as `(key, problem)`.
    pub fn flood_problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut p = Vec::new();
        if !(self.max_device_rate_per_s.is_finite() && self.max_device_rate_per_s >= 0.0) {
            p.push((
                "decode.max_device_rate_per_s",
                "must be a non-negative number (0 turns the flood limit off)",
            ));
        }
        if self.device_burst == 0 {
            p.push(("decode.device_burst", "must be at least 1"));
        }
        p
    }
}

fn default_max_payload_bytes() -> usize {
    crate::decode::DEFAULT_MAX_PAYLOAD_BYTES
}
fn default_max_json_depth() -> usize {
    crate::decode::DEFAULT_MAX_JSON_DEPTH
}
/// 5 minutes: NTP-less devices drift by seconds, not minutes.
fn default_max_future_s() -> u64 {
    300
}
/// 7 days: store-and-forward devices (VS373 history fetch) replay up to days later.
fn default_max_past_s() -> u64 {
    7 * 24 * 3600
}
/// See `normalize::DEFAULT_MAX_DEVICE_RATE_PER_S` for why.
fn default_max_device_rate_per_s() -> f64 {
    crate::normalize::DEFAULT_MAX_DEVICE_RATE_PER_S
}
fn default_device_burst() -> u32 {
    crate::normalize::DEFAULT_DEVICE_BURST
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownDevicePolicy {
    /// Keep the reading, tagged as unregistered (class `unregistered`), and count it.
    Accept,
    /// Drop the reading and count it as `unknown_device`.
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Device registry file, relative to this configuration file.
    pub file: PathBuf,
    /// What to do with readings from devices not in the registry: `accept` or `reject`.
    #[serde(default = "default_unknown_devices")]
    pub unknown_devices: UnknownDevicePolicy,
}

fn default_unknown_devices() -> UnknownDevicePolicy {
    UnknownDevicePolicy::Accept
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncPolicy {
    /// fsync the WAL at every group commit: a committed reading survives power loss.
    Full,
    /// fsync at checkpoints only: survives a crash of the gateway, not a power loss.
    Normal,
}

/// When the journal's file is checked (`PRAGMA quick_check`) at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntegrityCheck {
    /// Only when the previous run did not shut down cleanly (killed, crashed, power loss).
    AfterCrash,
    /// At every start.
    Always,
    /// Never (corruption is then found only when a query meets it).
    Never,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// SQLite database file, relative to this configuration file.
    #[serde(default = "default_journal_path")]
    pub path: PathBuf,
    /// Readings older than this are deleted (once forwarded, when InfluxDB is configured).
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Disk budget of the journal in MiB. Above it go, in order: the oldest readings already
    /// forwarded to InfluxDB, then (InfluxDB configured but behind) the oldest non-life-safety
    /// readings not yet forwarded, counted and alerted. Life-safety readings and the alert tables
    /// are never deleted for the budget, even if that means staying over it.
    #[serde(default = "default_disk_budget_mb")]
    pub disk_budget_mb: u64,
    /// Most messages in one group commit.
    #[serde(default = "default_commit_max")]
    pub commit_max_messages: usize,
    /// `full` (fsync the WAL at every group commit: durable on power loss) or `normal` (fsync at
    /// checkpoints only: durable when the gateway crashes, not when the power fails).
    #[serde(default = "default_sync")]
    pub sync: SyncPolicy,
    /// When to check the file at start: `after_crash` (the previous run did not shut down
    /// cleanly), `always` or `never`. A damaged file is kept aside and its readable rows are
    /// salvaged into a fresh one; it never stops the gateway from starting.
    #[serde(default = "default_integrity_check")]
    pub integrity_check: IntegrityCheck,
    /// Longest time the start-up check may take, in seconds; past it the check is abandoned
    /// (logged) and the gateway starts. The check reads the whole file: about 15 s per GB on a
    /// cold cache, under 2 s per GB on a warm one.
    #[serde(default = "default_integrity_check_max_s")]
    pub integrity_check_max_s: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            path: default_journal_path(),
            retention_days: default_retention_days(),
            disk_budget_mb: default_disk_budget_mb(),
            commit_max_messages: default_commit_max(),
            sync: default_sync(),
            integrity_check: default_integrity_check(),
            integrity_check_max_s: default_integrity_check_max_s(),
        }
    }
}

fn default_journal_path() -> PathBuf {
    PathBuf::from("data/journal.db")
}
fn default_retention_days() -> u32 {
    30
}
fn default_disk_budget_mb() -> u64 {
    4096
}
/// 5000 messages: one commit every few ms at full load, and a bounded transaction.
fn default_commit_max() -> usize {
    5000
}
fn default_sync() -> SyncPolicy {
    SyncPolicy::Full
}
/// After a crash only: a clean restart (an upgrade, a reboot) does not pay for reading the whole
/// file, while a run that ended by power loss or a kill, the moments a disk can tear a page, does.
fn default_integrity_check() -> IntegrityCheck {
    IntegrityCheck::AfterCrash
}
/// 60 s: a full check of a 4 GB journal on a cold cache; start never waits longer.
fn default_integrity_check_max_s() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// Base URL of the InfluxDB v2 API (`NH_INFLUX_URL` overrides it).
    pub url: String,
    /// Organization (`NH_INFLUX_ORG`).
    pub org: String,
    /// Bucket (`NH_INFLUX_BUCKET`).
    pub bucket: String,
    /// API token, from the environment or a file: `{ env = "NH_INFLUX_TOKEN" }` or
    /// `{ file = "/etc/nh/influx.token" }` (`NH_INFLUX_TOKEN` overrides it).
    #[serde(default)]
    pub token: Option<SecretSource>,
    /// Most lines in one write.
    #[serde(default = "default_batch_lines")]
    pub batch_max_lines: usize,
    /// How long a partial batch waits for more readings before it is written.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Timeout of one write request.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Longest wait between retries of a failing write.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

/// 5000 lines: VictoriaMetrics and InfluxDB both take this in one request comfortably.
fn default_batch_lines() -> usize {
    5000
}
fn default_linger_ms() -> u64 {
    500
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_backoff_max_ms() -> u64 {
    30_000
}

impl InfluxConfig {
    fn from_env_only(url: String) -> Self {
        InfluxConfig {
            url,
            org: "nh".into(),
            bucket: "nh".into(),
            token: None,
            batch_max_lines: default_batch_lines(),
            linger_ms: default_linger_ms(),
            timeout_ms: default_timeout_ms(),
            backoff_max_ms: default_backoff_max_ms(),
        }
    }
}

/// A loaded, validated configuration with its registry and resolved paths.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub registry: Registry,
    /// The journal path resolved against the config file's folder.
    pub journal_path: PathBuf,
    /// The InfluxDB token, resolved from its source or `NH_INFLUX_TOKEN`.
    pub influx_token: Option<Secret>,
    /// The MQTT password, resolved.
    pub mqtt_password: Option<Secret>,
    /// The validated rule catalog.
    pub rules: std::sync::Arc<crate::rules::RuleSet>,
    /// Register maps by name: the shipped ones, replaced or extended by `[[modbus_maps]]`.
    pub modbus_maps: std::collections::BTreeMap<String, std::sync::Arc<CompiledMap>>,
    /// Residents' display names from `[residents] file`.
    pub residents: Vec<Resident>,
    /// The site's local time (`[site] timezone`): shift changes, and the rules' windows unless
    /// the rules file pins an offset.
    pub site_time: crate::site_time::SiteTime,
}

/// Environment a configuration is loaded under (the `NH_INFLUX_*` overrides).
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub influx_url: Option<String>,
    pub influx_org: Option<String>,
    pub influx_bucket: Option<String>,
    pub influx_token: Option<Secret>,
}

impl Env {
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            influx_url: var("NH_INFLUX_URL"),
            influx_org: var("NH_INFLUX_ORG"),
            influx_bucket: var("NH_INFLUX_BUCKET"),
            influx_token: var("NH_INFLUX_TOKEN").map(Secret::new),
        }
    }
}

/// Loads and validates a configuration file and its registry; every error of both files at once.
pub fn load(path: &Path, env: &Env) -> Result<Loaded, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_owned(),
            line: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        }])
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    load_str(path, &text, base, env, None)
}

/// Loads a configuration from text. `registry_text` supplies the registry instead of reading
/// the file it names (the demo embeds both).
pub fn load_str(
    path: &Path,
    text: &str,
    base: &Path,
    env: &Env,
    registry_text: Option<&str>,
) -> Result<Loaded, ConfigErrors> {
    let (config, mut diags) = diagnostics::parse_all::<Config>(path, text);
    let mut errors = Vec::new();
    let mut loaded = None;
    if let Some(mut config) = config {
        apply_env(&mut config, env);
        validate(&config, &mut diags);
        let registry_path = base.join(&config.registry.file);
        let registry = match registry_text {
            Some(t) => Registry::parse(&registry_path, t),
            None => Registry::load(&registry_path),
        };
        match registry {
            Ok(registry) => {
                if registry.site() != config.site.id {
                    diags.at_key(
                        "registry.file",
                        format!(
                            "registry is for site `{}`, this configuration for `{}`",
                            registry.site(),
                            config.site.id
                        ),
                    );
                }
                let influx_token = match config.influx.as_ref() {
                    Some(i) => resolve_secret(
                        i.token.as_ref(),
                        env.influx_token.clone(),
                        "influx.token",
                        base,
                        &mut diags,
                    ),
                    None => None,
                };
                let mqtt_password =
                    resolve_secret(config.mqtt.password.as_ref(), None, "mqtt.password", base, &mut diags);
                let modbus_maps = validate_serial(&config, &registry, &mut diags);
                let residents = match &config.residents {
                    Some(r) => load_residents(&base.join(&r.file), &registry, &mut diags),
                    None => Vec::new(),
                };
                let journal_path = base.join(&config.journal.path);
                let rules = match &config.rules {
                    Some(r) => crate::rules::RuleSet::load(&base.join(&r.file)),
                    None => crate::rules::RuleSet::parse(Path::new("config/rules.toml (built in)"), DEFAULT_RULES),
                };
                let site_time = crate::site_time::SiteTime::zone(&config.site.timezone).unwrap_or_default();
                match rules {
                    Ok(rules) => {
                        let rules = std::sync::Arc::new(rules.on_site_time(site_time.clone()));
                        loaded = Some(Loaded {
                            config,
                            registry,
                            journal_path,
                            influx_token,
                            mqtt_password,
                            rules,
                            modbus_maps,
                            residents,
                            site_time,
                        });
                    }
                    Err(e) => errors.extend(e.0),
                }
            }
            Err(e) => errors.extend(e.0),
        }
    }
    errors.splice(0..0, diags.errors);
    match loaded {
        Some(l) if errors.is_empty() => Ok(l),
        _ => Err(ConfigErrors(errors)),
    }
}

fn resolve_secret(
    source: Option<&SecretSource>,
    override_value: Option<Secret>,
    key: &str,
    base: &Path,
    diags: &mut diagnostics::Diagnostics<'_>,
) -> Option<Secret> {
    if override_value.is_some() {
        return override_value;
    }
    match source?.resolve(base) {
        Ok(s) => Some(s),
        Err(e) => {
            diags.at_key(key, e);
            None
        }
    }
}

fn apply_env(config: &mut Config, env: &Env) {
    if let Some(url) = &env.influx_url {
        match config.influx.as_mut() {
            Some(i) => i.url = url.clone(),
            None => config.influx = Some(InfluxConfig::from_env_only(url.clone())),
        }
    }
    if let Some(i) = config.influx.as_mut() {
        if let Some(org) = &env.influx_org {
            i.org = org.clone();
        }
        if let Some(bucket) = &env.influx_bucket {
            i.bucket = bucket.clone();
        }
    }
}

/// Reads the residents file; a bad file is an error of `residents.file`, and a resident the
/// registry does not know is reported (a typo would leave a bed nameless on the page).
fn load_residents(path: &Path, registry: &Registry, d: &mut diagnostics::Diagnostics<'_>) -> Vec<Resident> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            d.at_key("residents.file", format!("cannot read {}: {e}", path.display()));
            return Vec::new();
        }
    };
    let (file, own) = diagnostics::parse_all::<ResidentsFile>(path, &text);
    d.errors.extend(own.errors);
    let Some(file) = file else {
        return Vec::new();
    };
    let known: std::collections::HashSet<&str> = registry
        .devices()
        .iter()
        .filter_map(|dev| dev.resident.as_deref())
        .collect();
    for (i, r) in file.residents.iter().enumerate() {
        if file.residents[..i].iter().any(|q| q.id == r.id) {
            d.at_key(
                "residents.file",
                format!("{}: resident `{}` listed twice", path.display(), r.id),
            );
        }
        if !known.contains(r.id.as_str()) {
            d.at_key(
                "residents.file",
                format!(
                    "{}: resident `{}` is on no device of the registry",
                    path.display(),
                    r.id
                ),
            );
        }
    }
    file.residents
}

/// Semantic checks that serde cannot express.
fn validate(config: &Config, d: &mut diagnostics::Diagnostics<'_>) {
    if !is_valid_id(&config.site.id) {
        d.at_key("site.id", "must match [A-Za-z0-9._:-]+ (it is one MQTT topic level)");
    }
    if let Err(e) = crate::site_time::SiteTime::zone(&config.site.timezone) {
        d.at_key("site.timezone", e);
    }
    let m = &config.mqtt;
    if m.mode == MqttMode::External
        && m.clean_session
        && !m.accept_message_loss_while_down
        && m.subscriptions.iter().any(|s| s.qos >= 1)
    {
        d.at_key(
            "mqtt.clean_session",
            "with QoS 1 subscriptions on an external broker, a clean session loses every message published \
             while the gateway is down or reconnecting: set clean_session = false, or \
             accept_message_loss_while_down = true to accept that loss",
        );
    }
    if m.mode == MqttMode::External && m.host.as_deref().unwrap_or("").is_empty() {
        d.at_key("mqtt.host", "external mode needs the broker host");
    }
    if m.keep_alive_s < 5 {
        d.at_key("mqtt.keep_alive_s", "must be at least 5 seconds");
    }
    if m.max_packet_bytes <= config.decode.max_payload_bytes {
        d.at_key(
            "mqtt.max_packet_bytes",
            format!(
                "must exceed decode.max_payload_bytes ({}), or an oversized payload breaks the connection and is redelivered forever",
                config.decode.max_payload_bytes
            ),
        );
    }
    if m.inflight == 0 {
        d.at_key("mqtt.inflight", "must be at least 1");
    }
    if m.broker_log_mb < 4 {
        d.at_key("mqtt.broker_log_mb", "must be at least 4 MB");
    }
    if let (MqttMode::Embedded, Some(box_mb)) = (m.mode, config.site.memory_mb) {
        let need = m.broker_log_mb + GATEWAY_BASE_MB;
        if need > box_mb / 2 {
            d.at_key(
                "mqtt.broker_log_mb",
                format!(
                    "the broker's log cap ({} MB) and the gateway's own {GATEWAY_BASE_MB} MB need {need} MB, more than \
                     half of the box's site.memory_mb ({box_mb} MB): lower broker_log_mb",
                    m.broker_log_mb
                ),
            );
        }
    }
    if m.subscriptions.is_empty() {
        d.at_key("mqtt.subscriptions", "at least one subscription is needed");
    }
    for (i, s) in m.subscriptions.iter().enumerate() {
        let key = |k: &str| format!("mqtt.subscriptions.{i}.{k}");
        if !valid_filter(&s.filter) {
            d.at_key(
                &key("filter"),
                format!("`{}` is not a valid MQTT topic filter", s.filter),
            );
        }
        if s.qos > 1 {
            d.at_key(&key("qos"), "must be 0 or 1");
        }
        match (s.decoder, &s.profile) {
            (DecoderKind::JsonMap, None) => d.at_key(&key("profile"), "json_map needs a profile name"),
            (DecoderKind::JsonMap, Some(p)) if !config.profiles.iter().any(|x| &x.name == p) => {
                d.at_key(&key("profile"), format!("no [[profiles]] entry named `{p}`"))
            }
            (DecoderKind::Canonical | DecoderKind::Zigbee2mqtt, Some(_)) => {
                d.at_key(&key("profile"), "only json_map subscriptions take a profile")
            }
            _ => {}
        }
    }
    for (i, p) in config.profiles.iter().enumerate() {
        if config.profiles[..i].iter().any(|q| q.name == p.name) {
            d.at_key(
                &format!("profiles.{i}.name"),
                format!("duplicate profile name `{}`", p.name),
            );
        }
        for problem in p.validate() {
            d.at_key(&format!("profiles.{i}"), problem);
        }
    }
    for problem in config.alerts.validate() {
        d.at_key("alerts", problem);
    }
    if config.decode.max_payload_bytes == 0 {
        d.at_key("decode.max_payload_bytes", "must be positive");
    }
    if config.decode.max_json_depth == 0 {
        d.at_key("decode.max_json_depth", "must be positive");
    }
    for (key, problem) in config.decode.flood_problems() {
        d.at_key(key, problem);
    }
    if config.journal.retention_days == 0 {
        d.at_key("journal.retention_days", "must be at least 1");
    }
    if config.journal.commit_max_messages == 0 {
        d.at_key("journal.commit_max_messages", "must be at least 1");
    }
    for (key, problem) in config.auth.problems() {
        d.at_key(&key, problem);
    }
    if config.shifts.start_minutes().is_none() {
        d.at_key("shifts.starts", "must be one or more local times `HH:MM`");
    }
    if let Some(i) = &config.influx {
        if !(i.url.starts_with("http://") || i.url.starts_with("https://")) {
            d.at_key("influx.url", "must start with http:// or https://");
        }
        if i.org.is_empty() {
            d.at_key("influx.org", "must not be empty");
        }
        if i.bucket.is_empty() {
            d.at_key("influx.bucket", "must not be empty");
        }
        if i.batch_max_lines == 0 {
            d.at_key("influx.batch_max_lines", "must be at least 1");
        }
        if i.timeout_ms == 0 {
            d.at_key("influx.timeout_ms", "must be positive");
        }
    }
}

/// Whether `bus` is a valid bus name (a device id part without `:`).
fn is_valid_bus(bus: &str) -> bool {
    !bus.is_empty() && bus.len() <= 64 && bus.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Checks the serial ports against the register maps and the registry; returns the maps.
fn validate_serial(
    config: &Config,
    registry: &Registry,
    d: &mut diagnostics::Diagnostics<'_>,
) -> std::collections::BTreeMap<String, std::sync::Arc<CompiledMap>> {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    let mut maps: BTreeMap<String, Arc<CompiledMap>> = BTreeMap::new();
    for m in crate::decode::register_map::builtin() {
        if let Ok(c) = m.compile() {
            maps.insert(m.name.clone(), Arc::new(c));
        }
    }
    for (i, m) in config.modbus_maps.iter().enumerate() {
        if config.modbus_maps[..i].iter().any(|o| o.name == m.name) {
            d.at_key(
                &format!("modbus_maps.{i}.name"),
                format!("duplicate map name `{}`", m.name),
            );
        }
        match m.compile() {
            // A site map of a shipped map's name replaces it.
            Ok(c) => {
                maps.insert(m.name.clone(), Arc::new(c));
            }
            Err(problems) => {
                for p in problems {
                    d.at_key(&format!("modbus_maps.{i}"), format!("map `{}`: {p}", m.name));
                }
            }
        }
    }
    let registered = |id: &str, key: &str, d: &mut diagnostics::Diagnostics<'_>| {
        if registry.get(id).is_none() {
            d.at_key(
                key,
                format!("device `{id}` is not in the registry: add it with its class, room and interval_s"),
            );
        }
    };
    for (i, p) in config.serial.iter().enumerate() {
        let key = |k: &str| format!("serial.{i}.{k}");
        if !is_valid_bus(&p.bus) {
            d.at_key(&key("bus"), "must match [A-Za-z0-9._-]+ (it is part of device ids)");
        }
        if config.serial[..i].iter().any(|o| o.bus == p.bus) {
            d.at_key(&key("bus"), format!("duplicate bus `{}`", p.bus));
        }
        if p.path.as_os_str().is_empty() {
            d.at_key(&key("path"), "must not be empty");
        } else if config.serial[..i].iter().any(|o| o.path == p.path) {
            d.at_key(&key("path"), "another [[serial]] entry opens the same port");
        }
        if p.baud == 0 {
            d.at_key(&key("baud"), "must be positive");
        }
        if !(5..=8).contains(&p.data_bits) {
            d.at_key(&key("data_bits"), "must be 5, 6, 7 or 8");
        }
        if !(1..=2).contains(&p.stop_bits) {
            d.at_key(&key("stop_bits"), "must be 1 or 2");
        }
        if p.reopen_max_ms < 100 {
            d.at_key(&key("reopen_max_ms"), "must be at least 100");
        }
        if p.room.contains('\\') || p.room.chars().any(char::is_control) || p.room.len() > 64 {
            d.at_key(
                &key("room"),
                "at most 64 characters, no backslash or control characters",
            );
        }
        match p.protocol {
            SerialProtocol::Mr60fda1 => {
                if !p.units.is_empty() {
                    d.at_key(&key("units"), "only modbus_rtu ports have units");
                }
                let id = p.radar_id();
                if !is_valid_id(&id) {
                    d.at_key(&key("device"), "must match [A-Za-z0-9._:-]+");
                } else {
                    registered(&id, &key("device"), d);
                }
            }
            SerialProtocol::ModbusRtu => {
                if p.device.is_some() {
                    d.at_key(
                        &key("device"),
                        "a Modbus bus names its devices by unit: modbus:<bus>:<unit>",
                    );
                }
                if p.units.is_empty() {
                    d.at_key(
                        &key("units"),
                        "a modbus_rtu bus needs at least one [[serial.units]] entry",
                    );
                }
                for (j, u) in p.units.iter().enumerate() {
                    let ukey = |k: &str| format!("serial.{i}.units.{j}.{k}");
                    if !(1..=247).contains(&u.unit) {
                        d.at_key(&ukey("unit"), "must be 1..=247 (0 is broadcast)");
                    }
                    if p.units[..j].iter().any(|o| o.unit == u.unit) {
                        d.at_key(&ukey("unit"), format!("unit {} twice on bus `{}`", u.unit, p.bus));
                    }
                    if !maps.contains_key(&u.map) {
                        let known: Vec<&str> = maps.keys().map(String::as_str).collect();
                        d.at_key(
                            &ukey("map"),
                            format!("no register map `{}`; one of {}", u.map, known.join(", ")),
                        );
                    }
                    if u.poll_ms < 100 {
                        d.at_key(&ukey("poll_ms"), "must be at least 100");
                    }
                    if u.timeout_ms < 10 {
                        d.at_key(&ukey("timeout_ms"), "must be at least 10");
                    }
                    if u.timeout_ms.saturating_mul(u64::from(u.retries) + 1) > u.poll_ms {
                        d.at_key(
                            &ukey("timeout_ms"),
                            format!(
                                "timeout_ms x (retries + 1) = {} ms exceeds poll_ms {}: a dead unit would hold the bus longer than its own interval",
                                u.timeout_ms.saturating_mul(u64::from(u.retries) + 1),
                                u.poll_ms
                            ),
                        );
                    }
                    if is_valid_bus(&p.bus) {
                        let id = u.device_id(&p.bus);
                        registered(&id, &ukey("unit"), d);
                        // Offline supervision counts from the registry's interval: a unit polled
                        // less often than that looks offline while it answers every poll.
                        if let Some(dev) = registry.get(&id) {
                            if u.poll_ms > dev.interval_s.saturating_mul(1000) {
                                d.at_key(
                                    &ukey("poll_ms"),
                                    format!(
                                        "poll_ms {} is longer than the registry's interval_s {} for `{id}`: the unit \
                                         would be reported offline while it answers every poll; poll at least \
                                         every interval_s, or raise interval_s",
                                        u.poll_ms, dev.interval_s
                                    ),
                                );
                            }
                        }
                    }
                }
                // Every unit timing out with all its retries in one cycle must still fit in the
                // fastest unit's interval, or that unit's polls fall behind while others are dead.
                let worst: u64 = p
                    .units
                    .iter()
                    .map(|u| u.timeout_ms.saturating_mul(u64::from(u.retries) + 1))
                    .sum();
                if let Some(fastest) = p.units.iter().map(|u| u.poll_ms).min() {
                    if p.units.len() > 1 && worst > fastest {
                        d.at_key(
                            &key("units"),
                            format!(
                                "worst-case bus cycle {worst} ms (every unit timing out with its retries) exceeds the \
                                 fastest poll_ms {fastest}: lower timeout_ms or retries, or poll less often"
                            ),
                        );
                    }
                }
            }
        }
    }
    maps
}

/// An MQTT topic filter: non-empty, `#` only as the whole last level, `+` only as a whole level.
fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == levels.len() - 1,
        "+" => true,
        other => !other.contains('#') && !other.contains('+'),
    })
}

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
    fn serial_ports_are_checked_against_maps_and_registry() {
        let registry = "site = \"nh-s\"\n[[devices]]\nid = \"modbus:k:1\"\nclass = \"gas_detector\"\ninterval_s = 1\n";
        let good = "[site]\nid = \"nh-s\"\n[registry]\nfile = \"d.toml\"\n[[serial]]\nbus = \"k\"\npath = \"/dev/ttyUSB0\"\nprotocol = \"modbus_rtu\"\n[[serial.units]]\nunit = 1\nmap = \"generic_gas_lel\"\n";
        let l = load_str(
            Path::new("s.toml"),
            good,
            Path::new("."),
            &Env::default(),
            Some(registry),
        )
        .expect("valid");
        assert!(l.modbus_maps.contains_key("honeywell_midas_lel"));
        assert_eq!(l.config.serial[0].units[0].timeout_ms, 250);

        let bad = "[site]\nid = \"nh-s\"\n[registry]\nfile = \"d.toml\"\n[[serial]]\nbus = \"k:x\"\npath = \"/dev/ttyUSB0\"\nprotocol = \"modbus_rtu\"\nstop_bits = 3\n[[serial.units]]\nunit = 0\nmap = \"nope\"\npoll_ms = 500\ntimeout_ms = 400\n[[serial]]\nbus = \"r\"\npath = \"/dev/ttyUSB0\"\nprotocol = \"mr60fda1\"\n";
        let e = load_str(
            Path::new("s.toml"),
            bad,
            Path::new("."),
            &Env::default(),
            Some(registry),
        )
        .expect_err("invalid")
        .to_string();
        for expected in [
            "serial.0.bus",
            "serial.0.stop_bits",
            "serial.0.units.0.unit",
            "no register map `nope`",
            "exceeds poll_ms",
            "opens the same port",
            "device `uart:r` is not in the registry",
        ] {
            assert!(e.contains(expected), "missing {expected} in:\n{e}");
        }
    }

    #[test]
    fn a_unit_polled_slower_than_its_interval_and_a_bus_too_slow_for_its_dead_units_are_refused() {
        let registry = "site = \"nh-s\"\n[[devices]]\nid = \"modbus:k:1\"\nclass = \"gas_detector\"\ninterval_s = 1\n\
                        [[devices]]\nid = \"modbus:k:2\"\nclass = \"gas_detector\"\ninterval_s = 5\n\
                        [[devices]]\nid = \"modbus:k:3\"\nclass = \"gas_detector\"\ninterval_s = 5\n";
        let site = |units: &str| {
            format!(
                "[site]\nid = \"nh-s\"\n[registry]\nfile = \"d.toml\"\n[[serial]]\nbus = \"k\"\npath = \"/dev/ttyUSB0\"\n\
                 protocol = \"modbus_rtu\"\n{units}"
            )
        };
        let unit = |n: u32, poll: u64, timeout: u64, retries: u32| {
            format!(
                "[[serial.units]]\nunit = {n}\nmap = \"generic_gas_lel\"\npoll_ms = {poll}\ntimeout_ms = {timeout}\nretries = {retries}\n"
            )
        };
        let load = |text: &str| {
            load_str(
                Path::new("s.toml"),
                text,
                Path::new("."),
                &Env::default(),
                Some(registry),
            )
        };
        // Unit 1 is expected every second but polled every 2 s.
        let e = load(&site(&(unit(1, 2000, 200, 1) + &unit(2, 5000, 200, 1))))
            .expect_err("slow poll")
            .to_string();
        assert!(
            e.contains("serial.0.units.0.poll_ms") && e.contains("interval_s 1") && !e.contains("units.1.poll_ms"),
            "{e}"
        );
        // Three units timing out with one retry each: 3 x 2 x 200 = 1200 ms > the fastest 1000 ms.
        let e = load(&site(
            &(unit(1, 1000, 200, 1) + &unit(2, 5000, 200, 1) + &unit(3, 5000, 200, 1)),
        ))
        .expect_err("slow bus")
        .to_string();
        assert!(
            e.contains("serial.0.units") && e.contains("worst-case bus cycle 1200 ms"),
            "{e}"
        );
        // The same bus without retries fits (600 ms): valid.
        load(&site(
            &(unit(1, 1000, 200, 0) + &unit(2, 5000, 200, 0) + &unit(3, 5000, 200, 0)),
        ))
        .expect("valid bus");
    }

    /// Loads `text` as `s.toml` with a one-device registry of site `nh-s`.
    fn load_site(text: &str) -> Result<Loaded, ConfigErrors> {
        let registry = "site = \"nh-s\"\n[[devices]]\nid = \"d-1\"\nclass = \"smoke_alarm\"\ninterval_s = 60\n";
        load_str(
            Path::new("s.toml"),
            text,
            Path::new("."),
            &Env::default(),
            Some(registry),
        )
    }

    #[test]
    fn an_unknown_time_zone_is_refused_with_its_line_and_a_known_one_reaches_the_rules() {
        let e = load_site("[site]\nid = \"nh-s\"\ntimezone = \"Europe/Berln\"\n[registry]\nfile = \"d.toml\"\n")
            .expect_err("misspelt zone")
            .to_string();
        assert!(
            e.contains("s.toml:3: `site.timezone`: `Europe/Berln` is not a time zone of the IANA database"),
            "{e}"
        );
        let l = load_site("[site]\nid = \"nh-s\"\ntimezone = \"Europe/Berlin\"\n[registry]\nfile = \"d.toml\"\n")
            .expect("valid");
        assert_eq!(l.site_time.name(), "Europe/Berlin");
        assert_eq!(l.rules.site_time().name(), "Europe/Berlin");
    }

    #[test]
    fn a_clean_session_with_qos_1_on_an_external_broker_needs_the_loss_accepted() {
        let site = |extra: &str| {
            format!(
                "[site]\nid = \"nh-s\"\n[registry]\nfile = \"d.toml\"\n[mqtt]\nmode = \"external\"\nhost = \"127.0.0.1\"\n\
                 clean_session = true\n{extra}"
            )
        };
        let e = load_site(&site("")).expect_err("silent loss").to_string();
        assert!(
            e.contains("s.toml:8: `mqtt.clean_session`: with QoS 1 subscriptions on an external broker"),
            "{e}"
        );
        load_site(&site("accept_message_loss_while_down = true\n")).expect("loss accepted");
        // QoS 0 only: nothing is kept for the gateway anyway.
        load_site(&site(
            "[[mqtt.subscriptions]]\nfilter = \"nh/+/+/telemetry\"\nqos = 0\ndecoder = \"canonical\"\n",
        ))
        .expect("qos 0");
        // The embedded broker keeps nothing across a gateway restart either way.
        load_site("[site]\nid = \"nh-s\"\n[registry]\nfile = \"d.toml\"\n[mqtt]\nclean_session = true\n")
            .expect("embedded");
    }

    #[test]
    fn default_config_parses_and_matches_the_code_defaults() {
        let (config, diags) = diagnostics::parse_all::<Config>(Path::new("default.toml"), DEFAULT_CONFIG);
        assert!(diags.errors.is_empty(), "{:?}", diags.errors);
        let config = config.expect("default config");
        let code = MqttConfig::default();
        assert_eq!(config.mqtt.listen, code.listen);
        assert_eq!(config.mqtt.max_packet_bytes, code.max_packet_bytes);
        assert_eq!(config.mqtt.subscriptions.len(), code.subscriptions.len());
        assert_eq!(
            config.decode.max_payload_bytes,
            DecodeConfig::default().max_payload_bytes
        );
        let decode = DecodeConfig::default();
        assert_eq!(
            (
                config.decode.max_json_depth,
                config.decode.max_future_s,
                config.decode.max_past_s,
                config.decode.max_device_rate_per_s,
                config.decode.device_burst
            ),
            (
                decode.max_json_depth,
                decode.max_future_s,
                decode.max_past_s,
                decode.max_device_rate_per_s,
                decode.device_burst
            )
        );
        assert_eq!(config.journal.path, JournalConfig::default().path);
        assert!(config.influx.is_none());
    }
}

/// Validates one file for `nh-gateway validate`: a site configuration with its registry, or a
/// registry alone. Returns a one-line summary.
pub fn validate_file(path: &Path, env: &Env) -> Result<String, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_owned(),
            line: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        }])
    })?;
    let is_registry = text.lines().any(|l| l.trim_start().starts_with("[[devices]]"))
        && !text.lines().any(|l| l.trim_start().starts_with("[site]"));
    if text.lines().any(|l| l.trim_start().starts_with("[[rules]]")) {
        let r = crate::rules::RuleSet::parse(path, &text)?;
        return Ok(format!("rule catalog, {} rules ({})", r.len(), r.ids().join(" ")));
    }
    let has_site = text.lines().any(|l| l.trim_start().starts_with("[site]"));
    if !has_site && text.lines().any(|l| l.trim_start().starts_with("[[modbus_maps]]")) {
        let (file, mut d) = diagnostics::parse_all::<crate::decode::register_map::MapsFile>(path, &text);
        let Some(file) = file else {
            return Err(ConfigErrors(d.errors));
        };
        for (i, m) in file.modbus_maps.iter().enumerate() {
            if let Err(problems) = m.compile() {
                for p in problems {
                    d.at_key(&format!("modbus_maps.{i}"), format!("map `{}`: {p}", m.name));
                }
            }
        }
        let names: Vec<&str> = file.modbus_maps.iter().map(|m| m.name.as_str()).collect();
        let summary = format!("{} Modbus register maps ({})", names.len(), names.join(" "));
        return d.into_result(summary);
    }
    if !has_site && text.lines().any(|l| l.trim_start().starts_with("[[models]]")) {
        return match crate::buttons::ButtonTable::parse(&text) {
            Ok(t) => Ok(format!("button table, {} models", t.len())),
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                file: path.to_owned(),
                line: 0,
                key: String::new(),
                message: e.to_string(),
            }])),
        };
    }
    if !has_site && text.lines().any(|l| l.trim_start().starts_with("[[residents]]")) {
        let (file, d) = diagnostics::parse_all::<ResidentsFile>(path, &text);
        let n = file.map_or(0, |f| f.residents.len());
        return d.into_result(format!("{n} residents"));
    }
    if is_registry {
        let r = Registry::parse(path, &text)?;
        return Ok(format!("registry of site {}, {} devices", r.site(), r.len()));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    // Secrets are resolved at run time; validation checks only the shape, so an absent
    // environment variable is not an error here.
    let l = load_str(path, &text, base, env, None).or_else(|e| {
        let rest: Vec<ConfigError> = e.0.into_iter().filter(|x| !x.message.contains("is not set")).collect();
        if rest.is_empty() {
            Err(ConfigErrors(Vec::new()))
        } else {
            Err(ConfigErrors(rest))
        }
    });
    match l {
        Ok(l) => Ok(format!(
            "site {}, {} devices, {} subscriptions, {} serial ports, influx {}",
            l.config.site.id,
            l.registry.len(),
            l.config.mqtt.subscriptions.len(),
            l.config.serial.len(),
            if l.config.influx.is_some() { "on" } else { "off" }
        )),
        Err(e) if e.0.is_empty() => Ok("valid (secrets come from the environment at run time)".to_owned()),
        Err(e) => Err(e),
    }
}
