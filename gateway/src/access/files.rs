//! The files of MQTT access: `[mqtt.access]` in the site configuration, the identities file
//! (bridges and consumers and their rights: written by the integrator, kept with the
//! configuration), the credentials file (salted hashes, written by `nh-gateway
//! device-credentials`) and the provisioning file (the secrets themselves, mode 0600, read by
//! whoever provisions the devices and by `nh-sim --provisioning-file`). docs/security.md is
//! their reference.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::diagnostics::{parse_all, ConfigError, ConfigErrors};

/// Whether a client without credentials may connect to the embedded broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anonymous {
    /// Never (the default).
    #[default]
    Refuse,
    /// From this machine only (127.0.0.1, ::1), with the rights of a bridge for every device;
    /// never on the gateway's own topics, never under a client id an identity owns. For tests and
    /// for tools running on the gateway box itself.
    Loopback,
}

/// `[mqtt.access]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// Bridges and consumers, relative to the configuration file. Devices are the registry's.
    #[serde(default)]
    pub identities: Option<PathBuf>,
    /// The salted hashes of the secrets, relative to the configuration file. Default
    /// `mqtt-credentials.toml` beside it.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// `refuse` (default) or `loopback`.
    #[serde(default)]
    pub anonymous: Anonymous,
}

/// The credentials file's name when `[mqtt.access] credentials` is not set.
pub const DEFAULT_CREDENTIALS_FILE: &str = "mqtt-credentials.toml";

impl AccessConfig {
    pub fn credentials_path(&self, config_dir: &Path) -> PathBuf {
        config_dir.join(
            self.credentials
                .as_deref()
                .unwrap_or(Path::new(DEFAULT_CREDENTIALS_FILE)),
        )
    }

    pub fn identities_path(&self, config_dir: &Path) -> Option<PathBuf> {
        self.identities.as_deref().map(|p| config_dir.join(p))
    }
}

/// A bridge: one connection publishing for several devices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeEntry {
    pub name: String,
    /// Registry ids it speaks for; `"*"` is every device of the registry.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Further topic patterns it may publish on (`{site}` is replaced).
    #[serde(default)]
    pub publish: Vec<String>,
    /// Filters it may subscribe to (default: what it may publish on).
    #[serde(default)]
    pub subscribe: Option<Vec<String>>,
}

/// A consumer: subscribes, never publishes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerEntry {
    pub name: String,
    /// Filters it may subscribe to (default `nh/{site}/alerts`; `{site}` is replaced).
    #[serde(default)]
    pub subscribe: Option<Vec<String>>,
}

/// The identities file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitiesFile {
    #[serde(skip)]
    pub path: PathBuf,
    #[serde(default)]
    pub bridges: Vec<BridgeEntry>,
    #[serde(default)]
    pub consumers: Vec<ConsumerEntry>,
}

impl IdentitiesFile {
    /// Reads and checks the identities file; every problem at once.
    pub fn load(path: &Path) -> Result<IdentitiesFile, ConfigErrors> {
        let text = read(path, "the MQTT identities file")?;
        let (parsed, mut diags) = parse_all::<IdentitiesFile>(path, &text);
        if let Some(f) = &parsed {
            let mut seen = std::collections::HashSet::new();
            let names = f
                .bridges
                .iter()
                .map(|b| (format!("bridges.{}", b.name), &b.name))
                .chain(f.consumers.iter().map(|c| (format!("consumers.{}", c.name), &c.name)));
            for (key, name) in names {
                if !crate::registry::is_valid_id(name) {
                    diags.at_key(&key, format!("`{name}` is not a valid name: use [A-Za-z0-9._:-]+"));
                }
                if !seen.insert(name.clone()) {
                    diags.at_key(&key, format!("`{name}` is named twice"));
                }
            }
            for b in &f.bridges {
                for filter in b.publish.iter().chain(b.subscribe.iter().flatten()) {
                    if !super::valid_filter(filter) {
                        diags.at_key(
                            &format!("bridges.{}", b.name),
                            format!("`{filter}` is not a valid topic filter"),
                        );
                    }
                }
            }
            for c in &f.consumers {
                for filter in c.subscribe.iter().flatten() {
                    if !super::valid_filter(filter) {
                        diags.at_key(
                            &format!("consumers.{}", c.name),
                            format!("`{filter}` is not a valid topic filter"),
                        );
                    }
                }
            }
        }
        let mut f = diags.into_result(parsed)?.unwrap_or_default();
        f.path = path.to_owned();
        Ok(f)
    }
}

/// One stored credential: the salted SHA-256 of a secret, and the same secret hashed for
/// Mosquitto's password file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialEntry {
    pub identity: String,
    /// 16 random bytes, hex.
    pub salt: String,
    /// SHA-256 of the salt's bytes followed by the secret, hex.
    pub sha256: String,
    /// The password-file line's hash for Mosquitto (`$6$salt$hash`, salted SHA-512).
    pub mosquitto: String,
}

/// The credentials file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsFile {
    #[serde(default)]
    pub credentials: Vec<CredentialEntry>,
}

pub const CREDENTIALS_HEADER: &str = "# MQTT credentials: salted hashes of each identity's secret, never the secret.\n\
# Written by `nh-gateway device-credentials`; regenerate an identity's secret rather than edit.\n\n";

impl CredentialsFile {
    /// Reads the credentials file; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<CredentialsFile, ConfigErrors> {
        load_or_empty(path, "the MQTT credentials file")
    }

    /// Writes the file (mode 0600: the hashes are not secrets, but nobody else needs them).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        save_private(self, CREDENTIALS_HEADER, path)
    }
}

/// One identity's secret in a provisioning file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionedSecret {
    /// The identity: MQTT username and client id.
    pub name: String,
    /// The secret: MQTT password.
    pub secret: String,
}

impl std::fmt::Debug for ProvisionedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionedSecret")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A provisioning file: `[[identities]]` with `name` and `secret`. The contract the simulator and
/// provisioning tools read (docs/security.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningFile {
    #[serde(default)]
    pub identities: Vec<ProvisionedSecret>,
}

pub const PROVISIONING_HEADER: &str =
    "# MQTT secrets for provisioning devices, written by `nh-gateway device-credentials`.\n\
# Readable by its owner only. Load each secret into its device, then delete this file: the\n\
# gateway keeps only salted hashes and cannot show a secret again.\n\n";

impl ProvisioningFile {
    pub fn load(path: &Path) -> Result<ProvisioningFile, ConfigErrors> {
        load_or_empty(path, "the provisioning file")
    }

    /// Writes the file with mode 0600, created that way (never readable by others, not even for
    /// a moment).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        save_private(self, PROVISIONING_HEADER, path)
    }

    /// Sets `name`'s secret, replacing an older one.
    pub fn set(&mut self, name: &str, secret: &str) {
        self.identities.retain(|i| i.name != name);
        self.identities.push(ProvisionedSecret {
            name: name.to_owned(),
            secret: secret.to_owned(),
        });
    }
}

/// A generated file (credentials, provisioning); a missing one is empty.
fn load_or_empty<T: serde::de::DeserializeOwned + Default>(path: &Path, what: &str) -> Result<T, ConfigErrors> {
    if !path.exists() {
        return Ok(T::default());
    }
    let text = read(path, what)?;
    let (parsed, diags) = parse_all::<T>(path, &text);
    Ok(diags.into_result(parsed)?.unwrap_or_default())
}

/// Writes a generated file, `header` first, readable by its owner only.
fn save_private<T: Serialize>(value: &T, header: &str, path: &Path) -> std::io::Result<()> {
    let body = toml::to_string(value).map_err(std::io::Error::other)?;
    write_private(path, &format!("{header}{body}"))
}

/// Writes `text` to `path` through a temporary file created with mode 0600, then renamed.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

fn read(path: &Path, what: &str) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_owned(),
            line: 0,
            key: String::new(),
            message: format!("cannot read {what}: {e}"),
        }])
    })
}
