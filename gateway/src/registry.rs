//! The device registry: who each device is and where it hangs. Normalization attaches it to every
//! reading (class, building, floor, room, zone, bed, pseudonymous resident) and maps Zigbee2MQTT
//! friendly names to device ids.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::diagnostics::{parse_all, ConfigError, ConfigErrors};
use crate::reading::DeviceKey;

/// Device classes (docs/devices.md): the measurement name in the time series.
pub const CLASSES: &[&str] = &[
    "fall_radar",
    "presence_radar",
    "vital_radar",
    "wearable",
    "sos_button",
    "smoke_alarm",
    "heat_detector",
    "gas_detector",
    "co_detector",
    "multi_gas",
    "door_contact",
    "bed_sensor",
    "gateway",
];

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

/// The class given to readings of devices missing from the registry under the `accept` policy.
pub const UNREGISTERED_CLASS: &str = "unregistered";

/// Resident care flags the rules use.
pub const CARE_FLAGS: &[&str] = &["high_fall_risk", "wander_risk", "copd"];

/// Whether `id` is a valid site or device id (one MQTT topic level, one tag value).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    /// The site these devices belong to.
    site: String,
    /// The devices.
    #[serde(default)]
    devices: Vec<Device>,
}

/// One registered device.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Device id, `[A-Za-z0-9._:-]+`, unique in the site.
    pub id: String,
    /// Device class, one of [`CLASSES`] (docs/devices.md).
    pub class: String,
    /// Zigbee2MQTT friendly name, when the device reports through Zigbee2MQTT.
    #[serde(default)]
    pub zigbee_name: Option<String>,
    #[serde(default)]
    pub building: String,
    #[serde(default)]
    pub floor: String,
    #[serde(default)]
    pub room: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub bed: String,
    /// Pseudonymous resident id (never a name).
    #[serde(default)]
    pub resident: Option<String>,
    /// Care flags of that resident.
    #[serde(default)]
    pub care_flags: Vec<String>,
    /// Expected reporting interval in seconds (offline supervision derives from it).
    pub interval_s: u64,
    /// Vendor and model, free text. Some models' button presses are looked up by it (see
    /// `normalize::buttons`).
    #[serde(default)]
    pub model: String,
    /// Warm-up time of a gas or CO detector after power-on, seconds, when its model differs from
    /// the rules' default (rule entries with `hold_from_warmup`).
    #[serde(default)]
    pub warmup_s: Option<u64>,
    /// Button presses (`single`, `double`, `long`, `emergency`) that mean a call for help on this
    /// device, overriding its model's entry in the button table.
    #[serde(default)]
    pub help_presses: Option<Vec<String>>,
}

/// The registry, indexed.
#[derive(Debug, Clone)]
pub struct Registry {
    site: String,
    devices: Vec<Arc<Device>>,
    by_id: HashMap<String, Arc<Device>>,
    by_zigbee: HashMap<String, Arc<Device>>,
}

impl Registry {
    pub fn load(path: &Path) -> Result<Registry, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_owned(),
                line: 0,
                key: String::new(),
                message: format!("cannot read the device registry: {e}"),
            }])
        })?;
        Registry::parse(path, &text)
    }

    /// Parses and validates registry text; every error at once.
    pub fn parse(path: &Path, text: &str) -> Result<Registry, ConfigErrors> {
        let (file, mut d) = parse_all::<RegistryFile>(path, text);
        let Some(file) = file else {
            return Err(ConfigErrors(d.errors));
        };
        if !is_valid_id(&file.site) {
            d.at_key("site", "must match [A-Za-z0-9._:-]+");
        }
        let mut by_id: HashMap<String, Arc<Device>> = HashMap::new();
        let mut by_zigbee: HashMap<String, Arc<Device>> = HashMap::new();
        let mut devices = Vec::with_capacity(file.devices.len());
        for (i, dev) in file.devices.into_iter().enumerate() {
            let key = |k: &str| format!("devices.{i}.{k}");
            if !is_valid_id(&dev.id) {
                d.at_key(
                    &key("id"),
                    format!("`{}` must match [A-Za-z0-9._:-]+ (no / + # or space)", dev.id),
                );
            }
            if !CLASSES.contains(&dev.class.as_str()) {
                d.at_key(
                    &key("class"),
                    format!("unknown class `{}`; one of {}", dev.class, CLASSES.join(", ")),
                );
            }
            for (k, v) in [
                ("building", &dev.building),
                ("floor", &dev.floor),
                ("room", &dev.room),
                ("zone", &dev.zone),
                ("bed", &dev.bed),
            ] {
                if v.contains('\\') || v.chars().any(char::is_control) || v.len() > 64 {
                    d.at_key(
                        &key(k),
                        "at most 64 characters, no backslash or control characters (it becomes a time-series tag)",
                    );
                }
            }
            if dev.interval_s == 0 {
                d.at_key(&key("interval_s"), "must be at least 1");
            }
            for flag in &dev.care_flags {
                if !CARE_FLAGS.contains(&flag.as_str()) {
                    d.at_key(
                        &key("care_flags"),
                        format!("unknown care flag `{flag}`; one of {}", CARE_FLAGS.join(", ")),
                    );
                }
            }
            if let Some(r) = &dev.resident {
                if !is_valid_id(r) {
                    d.at_key(&key("resident"), "a pseudonymous id matching [A-Za-z0-9._:-]+");
                }
            }
            let dev = Arc::new(dev);
            if by_id.insert(dev.id.clone(), dev.clone()).is_some() {
                d.at_key(&key("id"), format!("duplicate device id `{}`", dev.id));
            }
            if let Some(z) = &dev.zigbee_name {
                if z.is_empty() || z.contains(['+', '#']) {
                    d.at_key(&key("zigbee_name"), "must be a non-empty name without + or #");
                }
                if by_zigbee.insert(z.clone(), dev.clone()).is_some() {
                    d.at_key(&key("zigbee_name"), format!("duplicate zigbee_name `{z}`"));
                }
            }
            devices.push(dev);
        }
        d.into_result(Registry {
            site: file.site,
            devices,
            by_id,
            by_zigbee,
        })
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    pub fn devices(&self) -> &[Arc<Device>] {
        &self.devices
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Device>> {
        self.by_id.get(id)
    }

    /// Resolves how a source named a device to the registered device.
    pub fn resolve(&self, key: &DeviceKey) -> Option<&Arc<Device>> {
        match key {
            DeviceKey::Id(id) => self.by_id.get(id),
            DeviceKey::Zigbee(name) => self.by_zigbee.get(name),
        }
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
site = "nh-t"
[[devices]]
id = "radar-1"
class = "fall_radar"
room = "A-101"
interval_s = 10
[[devices]]
id = "smoke-1"
class = "smoke_alarm"
zigbee_name = "smoke_101"
interval_s = 3600
"#;

    #[test]
    fn resolves_ids_and_zigbee_names() {
        let r = Registry::parse(Path::new("d.toml"), GOOD).expect("valid");
        assert_eq!(
            r.resolve(&DeviceKey::Id("radar-1".into())).map(|d| d.room.as_str()),
            Some("A-101")
        );
        assert_eq!(
            r.resolve(&DeviceKey::Zigbee("smoke_101".into())).map(|d| d.id.as_str()),
            Some("smoke-1")
        );
        assert!(r.resolve(&DeviceKey::Id("smoke_101".into())).is_none());
    }

    #[test]
    fn reports_every_problem_with_its_line() {
        let bad = "site = \"nh-t\"\n[[devices]]\nid = \"a/b\"\nclass = \"toaster\"\ninterval_s = 0\n[[devices]]\nid = \"x\"\nclass = \"wearable\"\ninterval_s = 5\ncare_flags = [\"grumpy\"]\n[[devices]]\nid = \"x\"\nclass = \"wearable\"\ninterval_s = 5\n";
        let errs = Registry::parse(Path::new("d.toml"), bad).expect_err("invalid").0;
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 10, 12], "{errs:?}");
    }
}
