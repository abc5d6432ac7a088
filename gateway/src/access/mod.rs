//! Who may do what on MQTT: the identities of the embedded broker (devices, bridges, consumers),
//! their rights as topic patterns, and the checks made on every CONNECT, PUBLISH, SUBSCRIBE and
//! will ([`Policy`]). The session layer in front of the broker (`sources::gatekeeper`) asks; the
//! external-broker mode writes the same rights as Mosquitto files (`provisioning::mosquitto`),
//! and `provisioning::provision` gives identities their secrets.
//!
//! | identity | username = client id | may publish | may subscribe |
//! |---|---|---|---|
//! | device | its registry id | `nh/{site}/{id}/#`, and `{zigbee base}/{zigbee_name}/#` when it has one | the same |
//! | bridge | its name in the identities file | the topics of the devices listed for it, plus its own `publish` filters | its `subscribe` filters (default: what it may publish) |
//! | consumer | its name in the identities file | nothing | its `subscribe` filters (default `nh/{site}/alerts`) |
//!
//! Nobody but the gateway publishes on the gateway's own topics (`nh/{site}/alerts`), whatever
//! its patterns say.

pub mod credentials;
pub mod events;
pub mod files;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::diagnostics::{ConfigError, ConfigErrors};
use crate::registry::Registry;

pub use credentials::{CredentialStore, Verdict};
pub use files::{AccessConfig, Anonymous, IdentitiesFile};

/// The kind of an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Device,
    Bridge,
    Consumer,
    /// A client without credentials, admitted from this machine under `anonymous = "loopback"`.
    Anonymous,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Device => "device",
            Kind::Bridge => "bridge",
            Kind::Consumer => "consumer",
            Kind::Anonymous => "anonymous",
        }
    }
}

/// An MQTT topic pattern split in levels (`+` one level, `#` the rest, including the parent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    levels: Vec<String>,
}

impl Pattern {
    pub fn new(text: &str) -> Pattern {
        Pattern {
            text: text.to_owned(),
            levels: text.split('/').map(str::to_owned).collect(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the concrete `topic` matches this pattern.
    pub fn matches(&self, topic: &str) -> bool {
        let mut levels = topic.split('/');
        for p in &self.levels {
            match p.as_str() {
                "#" => return true,
                "+" => {
                    if levels.next().is_none() {
                        return false;
                    }
                }
                lit => {
                    if levels.next() != Some(lit) {
                        return false;
                    }
                }
            }
        }
        levels.next().is_none()
    }

    /// Whether every topic the subscription `filter` can match also matches this pattern.
    pub fn covers(&self, filter: &str) -> bool {
        let f: Vec<&str> = filter.split('/').collect();
        let mut i = 0;
        for p in &self.levels {
            match p.as_str() {
                "#" => return true,
                "+" => match f.get(i) {
                    Some(&"#") | None => return false,
                    Some(_) => {}
                },
                lit => match f.get(i) {
                    Some(l) if *l == lit => {}
                    _ => return false,
                },
            }
            i += 1;
        }
        i == f.len()
    }
}

/// One identity and its rights.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub kind: Kind,
    pub publish: Vec<Pattern>,
    pub subscribe: Vec<Pattern>,
    /// The publish patterns of the form `a/b/#` (all of a device's), by their literal prefix
    /// `a/b`: a bridge for hundreds of devices is checked with a few hash lookups.
    publish_prefixes: HashSet<String>,
    /// The other publish patterns, checked one by one.
    publish_other: Vec<Pattern>,
}

impl Identity {
    pub fn new(name: String, kind: Kind, publish: Vec<Pattern>, subscribe: Vec<Pattern>) -> Identity {
        let mut publish_prefixes = HashSet::new();
        let mut publish_other = Vec::new();
        for p in &publish {
            match p.as_str().strip_suffix("/#") {
                Some(prefix) if !prefix.contains(['+', '#']) => {
                    publish_prefixes.insert(prefix.to_owned());
                }
                _ => publish_other.push(p.clone()),
            }
        }
        Identity {
            name,
            kind,
            publish,
            subscribe,
            publish_prefixes,
            publish_other,
        }
    }

    /// Whether one of the identity's publish patterns matches `topic`.
    fn publishes_on(&self, topic: &str) -> bool {
        if !self.publish_prefixes.is_empty() {
            // `a/b/#` matches `a/b` and everything below it: try each level boundary.
            if self.publish_prefixes.contains(topic) {
                return true;
            }
            for (i, _) in topic.match_indices('/') {
                if self.publish_prefixes.contains(&topic[..i]) {
                    return true;
                }
            }
        }
        self.publish_other.iter().any(|p| p.matches(topic))
    }
}

/// What a refused act was; the label of `nh_mqtt_refused_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// CONNECT without credentials where they are required.
    NoCredentials,
    /// A username no identity has.
    UnknownUser,
    /// A known username with the wrong secret.
    BadSecret,
    /// A client id that is not the identity's own name.
    ClientId,
    /// A will on a topic the identity may not publish on.
    Will,
    /// A PUBLISH on a topic the identity may not publish on.
    Publish,
    /// A SUBSCRIBE to a filter the identity may not read.
    Subscribe,
    /// An MQTT version other than 3.1.1, or a malformed CONNECT.
    Protocol,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::NoCredentials,
        Reason::UnknownUser,
        Reason::BadSecret,
        Reason::ClientId,
        Reason::Will,
        Reason::Publish,
        Reason::Subscribe,
        Reason::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoCredentials => "no_credentials",
            Reason::UnknownUser => "unknown_user",
            Reason::BadSecret => "bad_secret",
            Reason::ClientId => "client_id",
            Reason::Will => "will",
            Reason::Publish => "publish",
            Reason::Subscribe => "subscribe",
            Reason::Protocol => "protocol",
        }
    }
}

/// The outcome of a CONNECT.
#[derive(Debug, Clone)]
pub enum Admission {
    Admitted(Arc<Identity>),
    /// Refused, with the identity it claimed (`None`: no or an unknown username) and why.
    Refused {
        claimed: Option<Arc<Identity>>,
        reason: Reason,
    },
}

/// The identities of a site and their rights.
#[derive(Debug)]
pub struct Policy {
    site: String,
    identities: HashMap<String, Arc<Identity>>,
    /// Topics only the gateway publishes on.
    reserved: Vec<Pattern>,
    credentials: CredentialStore,
    anonymous: Anonymous,
    anonymous_identity: Arc<Identity>,
}

/// The base topic of Zigbee2MQTT when no subscription says otherwise.
pub const DEFAULT_ZIGBEE_BASE: &str = "zigbee2mqtt";

/// Loads a site's identities: the registry's devices, the identities file of `config` (paths
/// relative to `base`) and the stored credentials. `zigbee_bases`: the base topics of the site's
/// Zigbee2MQTT subscriptions.
pub fn load(
    registry: &Registry,
    config: &AccessConfig,
    base: &std::path::Path,
    zigbee_bases: &[String],
) -> Result<Policy, ConfigErrors> {
    let identities = match config.identities_path(base) {
        Some(p) => IdentitiesFile::load(&p)?,
        None => IdentitiesFile::default(),
    };
    let credentials_path = config.credentials_path(base);
    let file = files::CredentialsFile::load(&credentials_path)?;
    let credentials = CredentialStore::from_file(&file).map_err(|message| {
        ConfigErrors(vec![ConfigError {
            file: credentials_path.clone(),
            line: 0,
            key: String::new(),
            message,
        }])
    })?;
    Policy::build(registry, &identities, credentials, config.anonymous, zigbee_bases)
}

/// The base topics of Zigbee2MQTT subscription filters (`zigbee2mqtt/+` -> `zigbee2mqtt`), or
/// [`DEFAULT_ZIGBEE_BASE`] when there are none.
pub fn zigbee_bases<'a>(filters: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = filters
        .map(|f| f.trim_end_matches("/#").trim_end_matches("/+").to_owned())
        .filter(|b| !b.is_empty() && !b.contains(['+', '#']))
        .collect();
    out.dedup();
    if out.is_empty() {
        out.push(DEFAULT_ZIGBEE_BASE.to_owned());
    }
    out
}

impl Policy {
    /// An empty policy: nobody is admitted (the stand-in while a configuration has errors).
    pub fn empty(site: &str) -> Policy {
        Policy {
            site: site.to_owned(),
            identities: HashMap::new(),
            reserved: vec![Pattern::new(&format!("nh/{site}/alerts"))],
            credentials: CredentialStore::default(),
            anonymous: Anonymous::Refuse,
            anonymous_identity: Arc::new(Identity::new(
                "anonymous".into(),
                Kind::Anonymous,
                Vec::new(),
                Vec::new(),
            )),
        }
    }

    /// Builds the identities of `registry` and `identities`, with their stored `credentials`.
    /// `zigbee_bases`: the base topics of the site's Zigbee2MQTT subscriptions.
    pub fn build(
        registry: &Registry,
        identities: &IdentitiesFile,
        credentials: CredentialStore,
        anonymous: Anonymous,
        zigbee_bases: &[String],
    ) -> Result<Policy, ConfigErrors> {
        let site = registry.site().to_owned();
        let subst = |f: &str| f.replace("{site}", &site);
        let mut errors = Vec::new();
        let mut error = |message: String| {
            errors.push(ConfigError {
                file: identities.path.clone(),
                line: 0,
                key: String::new(),
                message,
            })
        };
        let mut map: HashMap<String, Arc<Identity>> = HashMap::new();
        let device_patterns = |id: &str| -> Vec<Pattern> {
            let mut p = vec![Pattern::new(&format!("nh/{site}/{id}/#"))];
            if let Some(d) = registry.get(id) {
                if let Some(z) = &d.zigbee_name {
                    for base in zigbee_bases {
                        p.push(Pattern::new(&format!("{base}/{z}/#")));
                    }
                }
            }
            p
        };
        for d in registry.devices() {
            if d.id == "alerts" {
                error("a device may not be called `alerts`: nh/{site}/alerts is the gateway's own topic".into());
            }
            let pats = device_patterns(&d.id);
            map.insert(
                d.id.clone(),
                Arc::new(Identity::new(d.id.clone(), Kind::Device, pats.clone(), pats)),
            );
        }
        for b in &identities.bridges {
            if map.contains_key(&b.name) {
                error(format!(
                    "bridge `{}`: the name is already a device or another identity",
                    b.name
                ));
                continue;
            }
            let mut publish = Vec::new();
            for id in &b.devices {
                if id == "*" {
                    for d in registry.devices() {
                        publish.extend(device_patterns(&d.id));
                    }
                } else if registry.get(id).is_none() {
                    error(format!("bridge `{}`: device `{id}` is not in the registry", b.name));
                } else {
                    publish.extend(device_patterns(id));
                }
            }
            if b.devices
                .iter()
                .any(|id| id != "*" && registry.get(id).and_then(|d| d.zigbee_name.as_ref()).is_some())
                || (b.devices.iter().any(|id| id == "*") && registry.devices().iter().any(|d| d.zigbee_name.is_some()))
            {
                // Zigbee2MQTT's own state, availability and will.
                for base in zigbee_bases {
                    publish.push(Pattern::new(&format!("{base}/bridge/#")));
                }
            }
            publish.extend(b.publish.iter().map(|f| Pattern::new(&subst(f))));
            let subscribe = match &b.subscribe {
                Some(s) => s.iter().map(|f| Pattern::new(&subst(f))).collect(),
                None => publish.clone(),
            };
            map.insert(
                b.name.clone(),
                Arc::new(Identity::new(b.name.clone(), Kind::Bridge, publish, subscribe)),
            );
        }
        for c in &identities.consumers {
            if map.contains_key(&c.name) {
                error(format!(
                    "consumer `{}`: the name is already a device or another identity",
                    c.name
                ));
                continue;
            }
            let subscribe = match &c.subscribe {
                Some(s) => s.iter().map(|f| Pattern::new(&subst(f))).collect(),
                None => vec![Pattern::new(&format!("nh/{site}/alerts"))],
            };
            map.insert(
                c.name.clone(),
                Arc::new(Identity::new(c.name.clone(), Kind::Consumer, Vec::new(), subscribe)),
            );
        }
        for name in credentials.names() {
            if !map.contains_key(name) {
                tracing::warn!(
                    identity = name,
                    "MQTT credentials for an identity that no longer exists: ignored"
                );
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let anonymous_identity = Arc::new(Identity::new(
            "anonymous".into(),
            Kind::Anonymous,
            vec![Pattern::new("#")],
            vec![Pattern::new("#")],
        ));
        Ok(Policy {
            reserved: vec![Pattern::new(&format!("nh/{site}/alerts"))],
            site,
            identities: map,
            credentials,
            anonymous,
            anonymous_identity,
        })
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    pub fn identity(&self, name: &str) -> Option<&Arc<Identity>> {
        self.identities.get(name)
    }

    /// Every identity, by name.
    pub fn identities(&self) -> impl Iterator<Item = &Arc<Identity>> {
        self.identities.values()
    }

    /// Whether clients without credentials may connect from this machine.
    pub fn admits_anonymous(&self) -> bool {
        self.anonymous == Anonymous::Loopback
    }

    pub fn credentials(&self) -> &CredentialStore {
        &self.credentials
    }

    /// Decides a CONNECT from `peer` with `client_id` and the login it carried. A will is
    /// checked separately ([`Policy::may_publish`]) once the identity is known.
    pub fn admit(&self, peer: IpAddr, client_id: &str, login: Option<(&str, &str)>) -> Admission {
        let Some((user, secret)) = login.filter(|(u, _)| !u.is_empty()) else {
            if self.anonymous == Anonymous::Loopback && peer.is_loopback() && !self.identities.contains_key(client_id) {
                return Admission::Admitted(self.anonymous_identity.clone());
            }
            let claimed = self.identities.get(client_id).cloned();
            let reason = if claimed.is_some() && self.anonymous == Anonymous::Loopback && peer.is_loopback() {
                Reason::ClientId
            } else {
                Reason::NoCredentials
            };
            return Admission::Refused { claimed, reason };
        };
        let Some(identity) = self.identities.get(user) else {
            return Admission::Refused {
                claimed: None,
                reason: Reason::UnknownUser,
            };
        };
        match self.credentials.verify(user, secret) {
            Verdict::Match => {}
            Verdict::Mismatch | Verdict::NoCredentials => {
                return Admission::Refused {
                    claimed: Some(identity.clone()),
                    reason: Reason::BadSecret,
                }
            }
        }
        if client_id != user {
            return Admission::Refused {
                claimed: Some(identity.clone()),
                reason: Reason::ClientId,
            };
        }
        Admission::Admitted(identity.clone())
    }

    /// Whether `who` may publish on `topic` (PUBLISH and will). The per-message check.
    pub fn may_publish(&self, who: &Identity, topic: &str) -> bool {
        if topic.is_empty() || topic.starts_with('$') || topic.contains(['+', '#', '\0']) {
            return false;
        }
        if self.reserved.iter().any(|r| r.matches(topic)) {
            return false;
        }
        who.publishes_on(topic)
    }

    /// Whether `who` may subscribe to `filter`.
    pub fn may_subscribe(&self, who: &Identity, filter: &str) -> bool {
        if !valid_filter(filter) {
            return false;
        }
        // `$share/{group}/{filter}`: judged on the filter.
        let filter = match filter.strip_prefix("$share/") {
            Some(rest) => match rest.split_once('/') {
                Some((_, f)) => f,
                None => return false,
            },
            None => filter,
        };
        if filter.starts_with('$') {
            return false;
        }
        who.subscribe.iter().any(|p| p.covers(filter))
    }
}

/// An MQTT topic filter: non-empty, `#` only as the whole last level, `+` only as a whole level.
pub fn valid_filter(filter: &str) -> bool {
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
    fn patterns_match_topics_like_mqtt() {
        let p = Pattern::new("nh/s/dev-1/#");
        assert!(p.matches("nh/s/dev-1/telemetry"));
        assert!(p.matches("nh/s/dev-1"));
        assert!(!p.matches("nh/s/dev-10/telemetry"));
        assert!(!p.matches("nh/s/dev-2/telemetry"));
        let p = Pattern::new("nh/+/alerts");
        assert!(p.matches("nh/s/alerts"));
        assert!(!p.matches("nh/s/alerts/x"));
        assert!(!p.matches("nh/alerts"));
    }

    #[test]
    fn a_pattern_covers_only_filters_inside_it() {
        let p = Pattern::new("nh/s/dev-1/#");
        assert!(p.covers("nh/s/dev-1/#"));
        assert!(p.covers("nh/s/dev-1/+"));
        assert!(p.covers("nh/s/dev-1/telemetry"));
        assert!(!p.covers("nh/s/+/telemetry"));
        assert!(!p.covers("nh/s/#"));
        assert!(!p.covers("#"));
        let p = Pattern::new("nh/s/alerts");
        assert!(p.covers("nh/s/alerts"));
        assert!(!p.covers("nh/s/+"));
        assert!(!p.covers("nh/s/alerts/#"));
        let p = Pattern::new("zigbee2mqtt/+");
        assert!(p.covers("zigbee2mqtt/lamp"));
        assert!(!p.covers("zigbee2mqtt/#"));
    }
}
