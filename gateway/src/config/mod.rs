//! The site's configuration: one TOML file per site, plus the files it names (device registry,
//! rules, residents).
//!
//! Each component owns its section's type and defaults, next to its code (`journal/config.rs`,
//! `influx/config.rs`, `sources/config.rs` for MQTT, `sources/serial/config.rs`,
//! `normalize/config.rs` for `[decode]`, `api/config.rs` for `[http]`, and the sections of the
//! registry, rules, alerts and auth in their modules). This module only assembles them into
//! [`Config`], reads secrets ([`crate::secret`]), resolves paths, and reports every error of a
//! file at once ([`crate::diagnostics`]); [`check`] validates any of the gateway's files by kind.
//!
//! Every field has a `///` doc: the sections are the operator's manual, and
//! `print-default-config` prints `default.toml`, the commented version of the defaults.

pub mod check;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::api::config::{HttpConfig, Resident, ResidentsConfig, ResidentsFile, ShiftsConfig};
pub use crate::diagnostics::{self, ConfigError, ConfigErrors};
pub use crate::influx::config::InfluxConfig;
pub use crate::journal::config::{IntegrityCheck, JournalConfig, SyncPolicy};
pub use crate::normalize::config::DecodeConfig;
pub use crate::registry::{RegistryConfig, UnknownDevicePolicy};
pub use crate::secret::{self, Secret, SecretSource};
pub use crate::sources::config::{DecoderKind, MqttConfig, MqttMode, Subscription, DEFAULT_BROKER_LOG_MB};
pub use crate::sources::serial::config::{ModbusUnitConfig, Parity, SerialPortConfig, SerialProtocol};
pub use check::validate_file;

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
    /// The MQTT identities and their rights (`[mqtt.access]`, the registry).
    pub access: std::sync::Arc<crate::access::Policy>,
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
    let text = read_file(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    load_text(path, &text, base, env, None, SecretCheck::Resolve)
}

/// A configuration file's text, or the error that says it cannot be read.
pub(crate) fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_owned(),
            line: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        }])
    })
}

/// How a load treats the secrets a configuration names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SecretCheck {
    /// Read every secret; one that cannot be read is an error (the gateway starting).
    Resolve,
    /// `nh-gateway validate`: an environment variable that is unset is not an error (it is read
    /// at run time, maybe under another environment); secret files must still be readable.
    ShapeOnly,
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
    load_text(path, text, base, env, registry_text, SecretCheck::Resolve)
}

pub(crate) fn load_text(
    path: &Path,
    text: &str,
    base: &Path,
    env: &Env,
    registry_text: Option<&str>,
    secrets: SecretCheck,
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
                        secrets,
                        &mut diags,
                    ),
                    None => None,
                };
                let mqtt_password = resolve_secret(
                    config.mqtt.password.as_ref(),
                    None,
                    "mqtt.password",
                    base,
                    secrets,
                    &mut diags,
                );
                let modbus_maps = crate::sources::serial::config::check_ports(
                    &config.serial,
                    &config.modbus_maps,
                    &registry,
                    &mut diags,
                );
                let residents = match &config.residents {
                    Some(r) => load_residents(&base.join(&r.file), &registry, &mut diags),
                    None => Vec::new(),
                };
                let zigbee = crate::access::zigbee_bases(
                    config
                        .mqtt
                        .subscriptions
                        .iter()
                        .filter(|s| s.decoder == DecoderKind::Zigbee2mqtt)
                        .map(|s| s.filter.as_str()),
                );
                let access = match crate::access::load(&registry, &config.mqtt.access, base, &zigbee) {
                    Ok(p) => p,
                    Err(e) => {
                        errors.extend(e.0);
                        crate::access::Policy::empty(&config.site.id)
                    }
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
                            access: std::sync::Arc::new(access),
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
    secrets: SecretCheck,
    diags: &mut diagnostics::Diagnostics<'_>,
) -> Option<Secret> {
    if override_value.is_some() {
        return override_value;
    }
    let source = source?;
    match source.resolve(base) {
        Ok(s) => Some(s),
        Err(_) if secrets == SecretCheck::ShapeOnly && matches!(source, SecretSource::Env(_)) => None,
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
    config
        .mqtt
        .check(|name| config.profiles.iter().any(|x| x.name == name), d);
    let m = &config.mqtt;
    if m.max_packet_bytes <= config.decode.max_payload_bytes {
        d.at_key(
            "mqtt.max_packet_bytes",
            format!(
                "must exceed decode.max_payload_bytes ({}), or an oversized payload breaks the connection and is redelivered forever",
                config.decode.max_payload_bytes
            ),
        );
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
    config.decode.check(d);
    config.journal.check(d);
    for (key, problem) in config.auth.problems() {
        d.at_key(&key, problem);
    }
    if config.shifts.start_minutes().is_none() {
        d.at_key("shifts.starts", "must be one or more local times `HH:MM`");
    }
    if let Some(i) = &config.influx {
        i.check(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
