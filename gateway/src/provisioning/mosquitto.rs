//! The same rights for an external Mosquitto broker: a password file, an ACL file and a
//! `mosquitto.conf` snippet, written by `nh-gateway mosquitto-config` from the site's
//! [`Policy`] and credentials file.
//!
//! - `passwords`: `user:$6$salt$hash` per identity with credentials (the `mosquitto` hash the
//!   credentials file keeps beside its own), and per user of the gateway itself (the hash of
//!   `[mqtt] password`, salted afresh).
//! - `acl`: per user, `topic write` for what it may publish and `topic read` for what it may
//!   subscribe to. Mosquitto's `+` and `#` mean what they mean in the [`Policy`]'s patterns.
//!   Nobody but the gateway's alert publisher writes `nh/{site}/alerts`: an ACL only grants,
//!   so a pattern that would cover that topic (a bridge's own `publish` filter such as
//!   `nh/{site}/#`) is left out, with a warning.
//! - `mosquitto.conf`: no anonymous clients, the user name as the client id (a device cannot
//!   take over another's session), persistent sessions for the gateway's QoS 1 subscriptions.
//!
//! With `use_username_as_clientid` the gateway's three connections need user names of their own:
//! `[mqtt] username = "{client_id}"` makes each one's user name its client id.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context as _};

use crate::access::credentials::mosquitto_hash;
use crate::access::files::{write_private, CredentialEntry, CredentialsFile};
use crate::access::{Identity, Policy};
use crate::config::Config;
use crate::sources::config::CLIENT_ID_PLACEHOLDER;

/// The gateway's own Mosquitto users.
#[derive(Clone)]
pub struct GatewayUsers {
    /// The subscribers' user names (the bulk lane, the priority lane): they read `filters`.
    pub subscribers: Vec<String>,
    /// The alert publisher's user name: the only user that writes `nh/{site}/alerts`.
    pub publisher: String,
    /// The `$6$` hash of `[mqtt] password`, shared by all of them.
    pub hash: String,
    /// The subscription filters of `[mqtt]`.
    pub filters: Vec<String>,
}

impl std::fmt::Debug for GatewayUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayUsers")
            .field("subscribers", &self.subscribers)
            .field("publisher", &self.publisher)
            .field("filters", &self.filters)
            .finish_non_exhaustive()
    }
}

impl GatewayUsers {
    fn names(&self) -> impl Iterator<Item = &str> {
        self.subscribers
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(self.publisher.as_str()))
    }
}

/// What the snippet says beyond the users and their rights.
#[derive(Debug, Clone)]
pub struct MosquittoSettings {
    /// Where `passwords` and `acl` are (absolute: Mosquitto reads them from its own directory).
    pub out_dir: PathBuf,
    /// Mosquitto's `persistence_location`: where it keeps sessions and queued QoS 1 messages.
    pub persistence_location: PathBuf,
    /// Mosquitto's `max_inflight_messages` (`[mqtt] inflight`).
    pub max_inflight_messages: u16,
    /// The listener's port (`[mqtt] port`).
    pub port: u16,
}

/// The three files' text, and what was left out of them.
#[derive(Debug, Clone, Default)]
pub struct MosquittoFiles {
    /// Mosquitto's password file: `user:$6$...` lines.
    pub passwords: String,
    /// Mosquitto's ACL file.
    pub acl: String,
    /// The `mosquitto.conf` snippet.
    pub conf: String,
    /// Identities left out, and rights that could not be granted; for stderr.
    pub warnings: Vec<String>,
}

/// Renders the password file, the ACL file and the configuration snippet for `policy`'s
/// identities with an entry in `credentials`, and the `gateway`'s own users.
pub fn render(
    policy: &Policy,
    credentials: &CredentialsFile,
    gateway: &GatewayUsers,
    settings: &MosquittoSettings,
) -> MosquittoFiles {
    let site = policy.site();
    let alerts = format!("nh/{site}/alerts");
    let mut warnings = Vec::new();
    let mut passwords = String::new();
    let mut acl = format!(
        "# Mosquitto ACL of site {site}, written by `nh-gateway mosquitto-config` from the registry, the\n\
         # identities file and the credentials file. Write it again rather than edit it.\n"
    );

    // The gateway's own users.
    for user in &gateway.subscribers {
        let _ = writeln!(passwords, "{user}:{}", gateway.hash);
        let _ = write!(acl, "\n# the gateway's subscriber\nuser {user}\n");
        for f in &gateway.filters {
            let _ = writeln!(acl, "topic read {f}");
        }
    }
    let _ = writeln!(passwords, "{}:{}", gateway.publisher, gateway.hash);
    let _ = write!(
        acl,
        "\n# the gateway's alert publisher\nuser {}\ntopic write {alerts}\n",
        gateway.publisher
    );

    // The identities, by name.
    let by_name: HashMap<&str, &CredentialEntry> = credentials
        .credentials
        .iter()
        .map(|c| (c.identity.as_str(), c))
        .collect();
    let mut identities: Vec<&Arc<Identity>> = policy.identities().collect();
    identities.sort_by(|a, b| a.name.cmp(&b.name));
    for id in identities {
        let what = format!("{} `{}`", id.kind.as_str(), id.name);
        let Some(entry) = by_name.get(id.name.as_str()) else {
            warnings.push(format!(
                "{what} has no credentials: left out (nh-gateway device-credentials --identity {})",
                id.name
            ));
            continue;
        };
        if gateway.names().any(|g| g == id.name) {
            warnings.push(format!("{what}: the name is one of the gateway's own users: left out"));
            continue;
        }
        if id.name.contains(':') {
            warnings.push(format!(
                "{what}: Mosquitto's password file cannot hold a user name with `:`: left out"
            ));
            continue;
        }
        if !valid_hash(&entry.mosquitto) {
            warnings.push(format!(
                "{what}: its Mosquitto hash in the credentials file is not `$6$salt$hash`: left out \
                 (make a new secret with nh-gateway device-credentials --identity {})",
                id.name
            ));
            continue;
        }
        let _ = writeln!(passwords, "{}:{}", id.name, entry.mosquitto);
        let _ = write!(acl, "\n# {}\nuser {}\n", id.kind.as_str(), id.name);
        for p in &id.publish {
            if p.matches(&alerts) {
                warnings.push(format!(
                    "{what}: `topic write {}` left out: it covers {alerts}, which only the gateway publishes \
                     on (an ACL cannot grant a pattern but one topic: give the identity narrower publish filters)",
                    p.as_str()
                ));
                continue;
            }
            let _ = writeln!(acl, "topic write {}", p.as_str());
        }
        for p in &id.subscribe {
            let _ = writeln!(acl, "topic read {}", p.as_str());
        }
    }
    let mut stale: Vec<&str> = by_name
        .keys()
        .copied()
        .filter(|n| policy.identity(n).is_none())
        .collect();
    stale.sort_unstable();
    for name in stale {
        warnings.push(format!(
            "credentials of `{name}`, which is no identity of this site (not in the registry nor the \
             identities file): ignored"
        ));
    }

    let mut persistence = settings.persistence_location.display().to_string();
    if !persistence.ends_with('/') {
        // Mosquitto appends its file name to the location as it is.
        persistence.push('/');
    }
    let out = settings.out_dir.display();
    let conf = format!(
        "# Mosquitto settings of site {site}, written by `nh-gateway mosquitto-config`.\n\
         # Include this file near the top of mosquitto.conf (`include_dir {out}`), or copy its\n\
         # lines there. Mosquitto applies use_username_as_clientid to the listener defined before\n\
         # it in the same file: keep the listener line first (replace the one in mosquitto.conf\n\
         # for port {port}, and add the device network's address if it should not listen on all).\n\
         listener {port}\n\
         per_listener_settings false\n\
         # Every client logs in: devices with their registry id, bridges and consumers with their\n\
         # names, the gateway with its client ids.\n\
         allow_anonymous false\n\
         password_file {out}/passwords\n\
         acl_file {out}/acl\n\
         # The user name is the client id: an identity cannot take over another's session.\n\
         use_username_as_clientid true\n\
         # Sessions and unacknowledged QoS 1 messages survive a broker restart.\n\
         persistence true\n\
         # Mosquitto refuses a second persistence_location; Debian's mosquitto.conf sets one already.\n\
         # Uncomment this line where the main configuration does not.\n\
         # persistence_location {persistence}\n\
         max_inflight_messages {inflight}\n",
        inflight = settings.max_inflight_messages,
        port = settings.port,
    );
    MosquittoFiles {
        passwords,
        acl,
        conf,
        warnings,
    }
}

/// Whether `hash` is a `$6$salt$hash` a password file line can carry.
fn valid_hash(hash: &str) -> bool {
    let Some(rest) = hash.strip_prefix("$6$") else {
        return false;
    };
    let Some((salt, digest)) = rest.split_once('$') else {
        return false;
    };
    let b64 = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    b64(salt) && b64(digest)
}

/// The gateway's own users for the site configuration `config` (its files relative to
/// `config_dir`): the bulk subscriber (`[mqtt] client_id`, default `nh-gateway-{site}`), the
/// priority lane (`-ls`, with `priority_lane`) and the alert publisher
/// (`nh-gateway-{site}-alerts`), each with the user name `[mqtt] username` gives it, and the
/// hash of `[mqtt] password`. Errors when the user names would not be distinct or there is no
/// password.
pub fn gateway_users(config: &Config, config_dir: &Path) -> anyhow::Result<GatewayUsers> {
    let mqtt = &config.mqtt;
    let site = &config.site.id;
    let username = mqtt.username.as_deref().unwrap_or_default();
    anyhow::ensure!(
        username.contains(CLIENT_ID_PLACEHOLDER),
        "[mqtt] username must contain `{CLIENT_ID_PLACEHOLDER}` (username = \"{CLIENT_ID_PLACEHOLDER}\"): \
         Mosquitto then takes each user name as the client id, so each of the gateway's connections \
         (subscriber, priority lane, alert publisher) needs a user name of its own"
    );
    let source = mqtt.password.as_ref().ok_or_else(|| {
        anyhow!(
            "[mqtt] password is not set: the gateway's Mosquitto users need one \
             (password = {{ env = \"NH_MQTT_PASSWORD\" }} or {{ file = \"...\" }})"
        )
    })?;
    let password = source
        .resolve(config_dir)
        .map_err(|e| anyhow!("[mqtt] password: {e}"))?;
    anyhow::ensure!(!password.expose().is_empty(), "[mqtt] password is empty");
    let base = mqtt.base_client_id(site);
    let mut client_ids = vec![base.clone()];
    if mqtt.priority_lane {
        client_ids.push(format!("{base}-ls"));
    }
    let user = |client_id: &str| mqtt.username_for(client_id).unwrap_or_default();
    let subscribers: Vec<String> = client_ids.iter().map(|c| user(c.as_str())).collect();
    let publisher = user(
        crate::alerts::delivery::MqttAlertsConfig::new(site.clone(), "", 0)
            .client_id()
            .as_str(),
    );
    let mut salt = [0u8; 12];
    getrandom::getrandom(&mut salt).map_err(|e| anyhow!("no randomness: {e}"))?;
    Ok(GatewayUsers {
        subscribers,
        publisher,
        hash: mosquitto_hash(password.expose(), &salt),
        filters: mqtt.subscriptions.iter().map(|s| s.filter.clone()).collect(),
    })
}

/// Writes `passwords` and `acl` (mode 0600) and `mosquitto.conf` into `out_dir`, which must
/// exist.
pub fn write(out_dir: &Path, files: &MosquittoFiles) -> anyhow::Result<()> {
    for (name, text) in [("passwords", &files.passwords), ("acl", &files.acl)] {
        let path = out_dir.join(name);
        write_private(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let path = out_dir.join("mosquitto.conf");
    std::fs::write(&path, &files.conf).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::credentials::{entry_for, generate_secret, CredentialStore};
    use crate::access::files::{BridgeEntry, ConsumerEntry, IdentitiesFile};
    use crate::access::{Anonymous, DEFAULT_ZIGBEE_BASE};
    use crate::registry::Registry;

    const SITE: &str = "nh-s";

    fn registry() -> Registry {
        Registry::parse(
            Path::new("devices.toml"),
            "site = \"nh-s\"\n\
             [[devices]]\nid = \"bed-1\"\nclass = \"smoke_alarm\"\ninterval_s = 60\n\
             [[devices]]\nid = \"lamp-1\"\nclass = \"smoke_alarm\"\ninterval_s = 60\nzigbee_name = \"lamp\"\n\
             [[devices]]\nid = \"bed-2\"\nclass = \"smoke_alarm\"\ninterval_s = 60\n",
        )
        .expect("registry")
    }

    fn identities() -> IdentitiesFile {
        IdentitiesFile {
            bridges: vec![
                BridgeEntry {
                    name: "nh-sim".into(),
                    devices: vec!["*".into()],
                    publish: Vec::new(),
                    subscribe: None,
                },
                BridgeEntry {
                    name: "wide".into(),
                    devices: vec!["bed-1".into()],
                    publish: vec!["nh/{site}/#".into(), "extra/{site}/x".into()],
                    subscribe: Some(vec!["nh/{site}/#".into()]),
                },
            ],
            consumers: vec![ConsumerEntry {
                name: "control-room".into(),
                subscribe: None,
            }],
            ..IdentitiesFile::default()
        }
    }

    fn gateway() -> GatewayUsers {
        GatewayUsers {
            subscribers: vec!["nh-gateway-nh-s".into(), "nh-gateway-nh-s-ls".into()],
            publisher: "nh-gateway-nh-s-alerts".into(),
            hash: mosquitto_hash("gateway-password", b"twelve bytes"),
            filters: vec!["nh/+/+/telemetry".into(), "zigbee2mqtt/+".into()],
        }
    }

    fn settings() -> MosquittoSettings {
        MosquittoSettings {
            out_dir: PathBuf::from("/etc/mosquitto/nh"),
            persistence_location: PathBuf::from("/var/lib/mosquitto"),
            max_inflight_messages: 1000,
            port: 1883,
        }
    }

    /// Renders for credentials of `names` (bed-2 has none).
    fn rendered() -> MosquittoFiles {
        let names = ["bed-1", "lamp-1", "nh-sim", "wide", "control-room", "gone"];
        let file = CredentialsFile {
            credentials: names
                .iter()
                .map(|n| entry_for(n, &generate_secret().expect("secret")).expect("entry"))
                .collect(),
        };
        let policy = Policy::build(
            &registry(),
            &identities(),
            CredentialStore::from_file(&file).expect("store"),
            Anonymous::Refuse,
            &[DEFAULT_ZIGBEE_BASE.to_owned()],
        )
        .expect("policy");
        assert_eq!(policy.site(), SITE);
        render(&policy, &file, &gateway(), &settings())
    }

    /// The ACL lines of `user`'s block.
    fn block<'a>(acl: &'a str, user: &str) -> Vec<&'a str> {
        let header = format!("user {user}");
        let mut lines = acl.lines().skip_while(|l| *l != header);
        assert_eq!(lines.next(), Some(header.as_str()), "no block for {user}:\n{acl}");
        lines.take_while(|l| l.starts_with("topic ")).collect()
    }

    #[test]
    fn a_device_writes_and_reads_its_own_topics() {
        let f = rendered();
        assert_eq!(
            block(&f.acl, "bed-1"),
            ["topic write nh/nh-s/bed-1/#", "topic read nh/nh-s/bed-1/#"]
        );
        assert_eq!(
            block(&f.acl, "lamp-1"),
            [
                "topic write nh/nh-s/lamp-1/#",
                "topic write zigbee2mqtt/lamp/#",
                "topic read nh/nh-s/lamp-1/#",
                "topic read zigbee2mqtt/lamp/#",
            ]
        );
    }

    #[test]
    fn a_bridge_gets_its_devices_topics_and_its_own_filters() {
        let f = rendered();
        let sim = block(&f.acl, "nh-sim");
        for line in [
            "topic write nh/nh-s/bed-1/#",
            "topic write nh/nh-s/bed-2/#",
            "topic write nh/nh-s/lamp-1/#",
            "topic write zigbee2mqtt/lamp/#",
            "topic write zigbee2mqtt/bridge/#",
            "topic read nh/nh-s/bed-2/#",
        ] {
            assert!(sim.contains(&line), "{line} not in {sim:?}");
        }
        let wide = block(&f.acl, "wide");
        assert!(wide.contains(&"topic write extra/nh-s/x"), "{wide:?}");
        assert!(wide.contains(&"topic read nh/nh-s/#"), "{wide:?}");
        assert!(!wide.contains(&"topic write nh/nh-s/#"), "{wide:?}");
        assert!(f
            .warnings
            .iter()
            .any(|w| w.contains("bridge `wide`") && w.contains("topic write nh/nh-s/#")));
        let room = block(&f.acl, "control-room");
        assert_eq!(room, ["topic read nh/nh-s/alerts"]);
    }

    #[test]
    fn only_the_alert_publisher_writes_the_alerts_topic() {
        let f = rendered();
        let mut user = "";
        for line in f.acl.lines() {
            if let Some(u) = line.strip_prefix("user ") {
                user = u;
            }
            if let Some(t) = line.strip_prefix("topic write ") {
                let covers = crate::access::Pattern::new(t).matches("nh/nh-s/alerts");
                assert!(!covers || user == "nh-gateway-nh-s-alerts", "{user} may write {t}");
            }
        }
        assert_eq!(block(&f.acl, "nh-gateway-nh-s-alerts"), ["topic write nh/nh-s/alerts"]);
        assert_eq!(
            block(&f.acl, "nh-gateway-nh-s-ls"),
            ["topic read nh/+/+/telemetry", "topic read zigbee2mqtt/+"]
        );
    }

    #[test]
    fn password_lines_are_user_and_sha512_hash_and_the_left_out_are_named() {
        let f = rendered();
        let users: Vec<&str> = f
            .passwords
            .lines()
            .map(|l| {
                let (user, hash) = l.split_once(':').expect("user:hash");
                assert!(valid_hash(hash), "{l}");
                assert_eq!(hash.split('$').count(), 4, "{l}");
                user
            })
            .collect();
        assert_eq!(
            users,
            [
                "nh-gateway-nh-s",
                "nh-gateway-nh-s-ls",
                "nh-gateway-nh-s-alerts",
                "bed-1",
                "control-room",
                "lamp-1",
                "nh-sim",
                "wide",
            ]
        );
        assert!(f
            .warnings
            .iter()
            .any(|w| w.contains("device `bed-2` has no credentials")));
        assert!(f.warnings.iter().any(|w| w.contains("`gone`")));
        assert!(!f.acl.contains("user bed-2"));
        assert!(f.conf.contains("password_file /etc/mosquitto/nh/passwords\n"));
        assert!(f.conf.contains("acl_file /etc/mosquitto/nh/acl\n"));
        assert!(f.conf.contains("persistence_location /var/lib/mosquitto/\n"));
        assert!(f.conf.contains("max_inflight_messages 1000\n"));
        assert!(f.conf.contains("allow_anonymous false\n"));
        assert!(f.conf.contains("use_username_as_clientid true\n"));
    }

    #[test]
    fn the_gateway_users_follow_the_client_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pw"), "s3cret\n").expect("write");
        let text = |mqtt: &str| {
            format!(
                "[site]\nid = \"nh-s\"\n[registry]\nfile = \"d.toml\"\n\
                 [mqtt]\nmode = \"external\"\nhost = \"h\"\n{mqtt}"
            )
        };
        let parse = |t: &str| -> Config { toml::from_str(t).expect("config") };
        let c = parse(&text("username = \"{client_id}\"\npassword = { file = \"pw\" }\n"));
        let g = gateway_users(&c, dir.path()).expect("users");
        assert_eq!(g.subscribers, ["nh-gateway-nh-s", "nh-gateway-nh-s-ls"]);
        assert_eq!(g.publisher, "nh-gateway-nh-s-alerts");
        assert!(valid_hash(&g.hash));
        assert_eq!(c.mqtt.username_for("x-ls").as_deref(), Some("x-ls"));

        let e = gateway_users(
            &parse(&text("username = \"gw\"\npassword = { file = \"pw\" }\n")),
            dir.path(),
        )
        .expect_err("one user for three connections")
        .to_string();
        assert!(e.contains("{client_id}"), "{e}");
        let e = gateway_users(&parse(&text("username = \"{client_id}\"\n")), dir.path())
            .expect_err("no password")
            .to_string();
        assert!(e.contains("[mqtt] password"), "{e}");
    }
}
