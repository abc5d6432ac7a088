//! The device registry file (the same TOML file the gateway reads): parsing and validation.
//!
//! The simulator reads the keys it needs, checks the types of every key the format defines and
//! ignores keys it does not know. Validation collects every problem with its line, device and key,
//! and fails once with the whole list, so an integrator fixes a file in one pass.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::wire::Format;

/// The class of a device (the registry's `class`; docs/devices.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceClass {
    FallRadar,
    PresenceRadar,
    VitalRadar,
    Wearable,
    SosButton,
    SmokeAlarm,
    HeatDetector,
    GasDetector,
    CoDetector,
    MultiGas,
    DoorContact,
    BedSensor,
    Gateway,
}

impl DeviceClass {
    pub const ALL: [DeviceClass; 13] = [
        DeviceClass::FallRadar,
        DeviceClass::PresenceRadar,
        DeviceClass::VitalRadar,
        DeviceClass::Wearable,
        DeviceClass::SosButton,
        DeviceClass::SmokeAlarm,
        DeviceClass::HeatDetector,
        DeviceClass::GasDetector,
        DeviceClass::CoDetector,
        DeviceClass::MultiGas,
        DeviceClass::DoorContact,
        DeviceClass::BedSensor,
        DeviceClass::Gateway,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::FallRadar => "fall_radar",
            DeviceClass::PresenceRadar => "presence_radar",
            DeviceClass::VitalRadar => "vital_radar",
            DeviceClass::Wearable => "wearable",
            DeviceClass::SosButton => "sos_button",
            DeviceClass::SmokeAlarm => "smoke_alarm",
            DeviceClass::HeatDetector => "heat_detector",
            DeviceClass::GasDetector => "gas_detector",
            DeviceClass::CoDetector => "co_detector",
            DeviceClass::MultiGas => "multi_gas",
            DeviceClass::DoorContact => "door_contact",
            DeviceClass::BedSensor => "bed_sensor",
            DeviceClass::Gateway => "gateway",
        }
    }

    pub fn parse(s: &str) -> Option<DeviceClass> {
        DeviceClass::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for DeviceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resident's care flag (drives rule thresholds in the gateway; the simulator only carries it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CareFlag {
    HighFallRisk,
    WanderRisk,
    Copd,
}

impl CareFlag {
    pub const ALL: [CareFlag; 3] = [CareFlag::HighFallRisk, CareFlag::WanderRisk, CareFlag::Copd];

    pub fn as_str(self) -> &'static str {
        match self {
            CareFlag::HighFallRisk => "high_fall_risk",
            CareFlag::WanderRisk => "wander_risk",
            CareFlag::Copd => "copd",
        }
    }

    pub fn parse(s: &str) -> Option<CareFlag> {
        CareFlag::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// One device of the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub id: String,
    pub class: DeviceClass,
    /// Zigbee2MQTT friendly name: such a device publishes on `zigbee2mqtt/<name>` in Z2M format.
    pub zigbee_name: Option<String>,
    pub building: String,
    pub floor: String,
    pub room: String,
    pub zone: Option<String>,
    pub bed: Option<String>,
    pub resident: Option<String>,
    pub care_flags: Vec<CareFlag>,
    /// Expected reporting interval.
    pub interval_s: u64,
    pub model: Option<String>,
}

impl Device {
    /// The wire format this device speaks.
    pub fn format(&self) -> Format {
        if self.zigbee_name.is_some() {
            Format::Zigbee2mqtt
        } else {
            Format::Canonical
        }
    }

    /// The MQTT topic this device publishes its telemetry on.
    pub fn topic(&self, site: &str) -> String {
        match &self.zigbee_name {
            Some(name) => crate::wire::zigbee2mqtt::topic(name),
            None => crate::wire::canonical::topic(site, &self.id),
        }
    }
}

/// A parsed, valid registry.
#[derive(Debug, Clone, PartialEq)]
pub struct Registry {
    pub site: String,
    pub devices: Vec<Device>,
}

/// One problem found in a registry file.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryError {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The device concerned (its id, or `devices[N]` when it has none).
    pub device: Option<String>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(device) = &self.device {
            write!(f, "device `{device}`: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one registry file.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryErrors {
    /// The file name, when the text came from a file.
    pub source: Option<String>,
    pub errors: Vec<RegistryError>,
}

impl fmt::Display for RegistryErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        match &self.source {
            Some(s) => write!(f, "{n} error(s) in device registry {s}")?,
            None => write!(f, "{n} error(s) in device registry")?,
        }
        for e in &self.errors {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RegistryErrors {}

/// Longest id accepted: ids are topic levels and tag values, not documents.
pub const MAX_ID_LEN: usize = 128;

/// True if `s` can stand as one MQTT topic level and as a tag value: `[A-Za-z0-9._:-]+`, at most
/// `MAX_ID_LEN` bytes.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Why a Zigbee2MQTT friendly name cannot be used, if it cannot.
fn zigbee_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("must not be empty");
    }
    if name.contains(['+', '#']) {
        return Some("must not contain MQTT wildcards `+` or `#`");
    }
    if name.chars().any(char::is_control) || name.trim() != name {
        return Some("must not contain control characters or leading/trailing spaces");
    }
    if name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        return Some("must not start or end with `/` or contain an empty level");
    }
    // Zigbee2MQTT uses these topics itself: a device named so would be read as a bridge message
    // or a command topic.
    if name == "bridge" || name.starts_with("bridge/") {
        return Some("`bridge` is reserved by Zigbee2MQTT");
    }
    for suffix in ["/set", "/get", "/availability"] {
        if name.ends_with(suffix) {
            return Some("must not end with a Zigbee2MQTT command or availability suffix");
        }
    }
    None
}

#[derive(Deserialize)]
struct RawRegistry {
    site: Option<Spanned<toml::Value>>,
    devices: Option<Vec<Spanned<RawDevice>>>,
}

/// Every key the format defines, as raw values: types are checked here, with spans, so that every
/// problem is reported rather than the first one serde trips on. Unknown keys are ignored.
#[derive(Deserialize)]
struct RawDevice {
    id: Option<Spanned<toml::Value>>,
    class: Option<Spanned<toml::Value>>,
    zigbee_name: Option<Spanned<toml::Value>>,
    building: Option<Spanned<toml::Value>>,
    floor: Option<Spanned<toml::Value>>,
    room: Option<Spanned<toml::Value>>,
    zone: Option<Spanned<toml::Value>>,
    bed: Option<Spanned<toml::Value>>,
    resident: Option<Spanned<toml::Value>>,
    care_flags: Option<Spanned<toml::Value>>,
    interval_s: Option<Spanned<toml::Value>>,
    model: Option<Spanned<toml::Value>>,
}

/// Collects errors for one device.
struct Checker<'a> {
    text: &'a str,
    device: String,
    errors: &'a mut Vec<RegistryError>,
    device_line: usize,
}

impl Checker<'_> {
    fn push(&mut self, line: Option<usize>, key: &str, message: impl Into<String>) {
        self.errors.push(RegistryError {
            line: line.or(Some(self.device_line)),
            device: Some(self.device.clone()),
            key: Some(key.to_owned()),
            message: message.into(),
        });
    }

    fn line_of<T>(&self, v: &Spanned<T>) -> usize {
        line_at(self.text, v.span().start)
    }

    fn string(&mut self, key: &str, v: &Option<Spanned<toml::Value>>, required: bool) -> Option<String> {
        match v {
            None if required => {
                self.push(None, key, "missing (required)");
                None
            }
            None => None,
            Some(s) => match s.get_ref() {
                toml::Value::String(text) if !text.is_empty() => Some(text.clone()),
                toml::Value::String(_) => {
                    self.push(Some(self.line_of(s)), key, "must not be empty");
                    None
                }
                other => {
                    self.push(
                        Some(self.line_of(s)),
                        key,
                        format!("must be a string, found {}", other.type_str()),
                    );
                    None
                }
            },
        }
    }
}

fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Parses and validates a registry.
pub fn parse(text: &str) -> Result<Registry, RegistryErrors> {
    let fail = |errors| Err(RegistryErrors { source: None, errors });
    let raw: RawRegistry = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let line = e.span().map(|s| line_at(text, s.start));
            return fail(vec![RegistryError {
                line,
                device: None,
                key: None,
                message: e.message().to_owned(),
            }]);
        }
    };
    let mut errors = Vec::new();
    let site = parse_site(text, raw.site.as_ref(), &mut errors);
    let raw_devices = raw.devices.unwrap_or_default();
    if raw_devices.is_empty() {
        errors.push(RegistryError {
            line: None,
            device: None,
            key: Some("devices".into()),
            message: "no [[devices]]: a registry lists at least one device".into(),
        });
    }
    let mut devices = Vec::with_capacity(raw_devices.len());
    let mut seen = Seen::default();
    for (index, spanned) in raw_devices.iter().enumerate() {
        if let Some(device) = parse_device(text, index, spanned, &mut seen, &mut errors) {
            devices.push(device);
        }
    }
    match (errors.is_empty(), site) {
        (true, Some(site)) => Ok(Registry { site, devices }),
        _ => fail(errors),
    }
}

/// The registry's `site`: present, a string, a valid id.
fn parse_site(text: &str, raw: Option<&Spanned<toml::Value>>, errors: &mut Vec<RegistryError>) -> Option<String> {
    let site_error = |line, message| RegistryError {
        line,
        device: None,
        key: Some("site".into()),
        message,
    };
    let Some(s) = raw else {
        errors.push(site_error(None, "missing (required)".into()));
        return None;
    };
    let line = Some(line_at(text, s.span().start));
    match s.get_ref() {
        toml::Value::String(site) if is_valid_id(site) => Some(site.clone()),
        toml::Value::String(site) => {
            errors.push(site_error(
                line,
                format!("`{site}` is not a valid id: use [A-Za-z0-9._:-]+"),
            ));
            None
        }
        other => {
            errors.push(site_error(
                line,
                format!("must be a string, found {}", other.type_str()),
            ));
            None
        }
    }
}

/// First line where each id / zigbee name was seen, to name both places of a duplicate.
#[derive(Default)]
struct Seen {
    ids: HashMap<String, usize>,
    /// Name -> (line, device).
    names: HashMap<String, (usize, String)>,
}

/// One `[[devices]]` entry: every key checked (errors collected), the device when all is well.
fn parse_device(
    text: &str,
    index: usize,
    spanned: &Spanned<RawDevice>,
    seen: &mut Seen,
    errors: &mut Vec<RegistryError>,
) -> Option<Device> {
    let device_line = line_at(text, spanned.span().start);
    let d = spanned.get_ref();
    let id_text = match d.id.as_ref().map(|v| v.get_ref()) {
        Some(toml::Value::String(s)) if !s.is_empty() => s.clone(),
        _ => format!("devices[{index}]"),
    };
    let mut c = Checker {
        text,
        device: id_text,
        errors,
        device_line,
    };
    let id = c.id(d, &mut seen.ids);
    let class = c.class(d);
    let zigbee_name = c.zigbee_name(d, &mut seen.names);
    let building = c.string("building", &d.building, true);
    let floor = c.string("floor", &d.floor, true);
    let room = c.string("room", &d.room, true);
    let zone = c.string("zone", &d.zone, false);
    let bed = c.string("bed", &d.bed, false);
    let model = c.string("model", &d.model, false);
    let resident = c.resident(d);
    let care_flags = c.care_flags(d);
    let interval_s = c.interval_s(d);
    let (id, class, building, floor, room, interval_s) = (id?, class?, building?, floor?, room?, interval_s?);
    Some(Device {
        id,
        class,
        zigbee_name,
        building,
        floor,
        room,
        zone,
        bed,
        resident,
        care_flags,
        interval_s,
        model,
    })
}

/// The checks of the keys that need more than [`Checker::string`], in the order their errors
/// are reported.
impl Checker<'_> {
    /// `id`: a valid id, not used before.
    fn id(&mut self, d: &RawDevice, seen_ids: &mut HashMap<String, usize>) -> Option<String> {
        let id = self.string("id", &d.id, true).and_then(|id| {
            if !is_valid_id(&id) {
                let line = d.id.as_ref().map(|v| self.line_of(v));
                self.push(
                    line,
                    "id",
                    format!("`{id}` is not a valid id: use [A-Za-z0-9._:-]+ (no `/`, `+`, `#` or spaces)"),
                );
                None
            } else {
                Some(id)
            }
        });
        if let Some(id) = &id {
            let line = d.id.as_ref().map(|v| self.line_of(v)).unwrap_or(self.device_line);
            if let Some(first) = seen_ids.get(id) {
                self.push(Some(line), "id", format!("duplicate id (first used on line {first})"));
            } else {
                seen_ids.insert(id.clone(), line);
            }
        }
        id
    }

    /// `class`: one of [`DeviceClass::ALL`].
    fn class(&mut self, d: &RawDevice) -> Option<DeviceClass> {
        self.string("class", &d.class, true)
            .and_then(|s| match DeviceClass::parse(&s) {
                Some(class) => Some(class),
                None => {
                    let line = d.class.as_ref().map(|v| self.line_of(v));
                    let known: Vec<&str> = DeviceClass::ALL.iter().map(|k| k.as_str()).collect();
                    self.push(
                        line,
                        "class",
                        format!("unknown class `{s}` (known: {})", known.join(", ")),
                    );
                    None
                }
            })
    }

    /// `zigbee_name`: usable as a Zigbee2MQTT friendly name, not taken by another device.
    fn zigbee_name(&mut self, d: &RawDevice, seen_names: &mut HashMap<String, (usize, String)>) -> Option<String> {
        self.string("zigbee_name", &d.zigbee_name, false).and_then(|name| {
            let line = d
                .zigbee_name
                .as_ref()
                .map(|v| self.line_of(v))
                .unwrap_or(self.device_line);
            if let Some(problem) = zigbee_name_problem(&name) {
                self.push(Some(line), "zigbee_name", format!("`{name}` {problem}"));
                return None;
            }
            if let Some((first, other)) = seen_names.get(&name) {
                self.push(
                    Some(line),
                    "zigbee_name",
                    format!("duplicate zigbee_name `{name}` (also device `{other}` on line {first})"),
                );
                return None;
            }
            seen_names.insert(name.clone(), (line, self.device.clone()));
            Some(name)
        })
    }

    /// `resident`: a pseudonymous id.
    fn resident(&mut self, d: &RawDevice) -> Option<String> {
        self.string("resident", &d.resident, false).and_then(|r| {
            if is_valid_id(&r) {
                Some(r)
            } else {
                let line = d.resident.as_ref().map(|v| self.line_of(v));
                self.push(
                    line,
                    "resident",
                    format!("`{r}` is not a valid pseudonymous id: use [A-Za-z0-9._:-]+"),
                );
                None
            }
        })
    }

    /// `care_flags`: an array of known flags (each kept once).
    fn care_flags(&mut self, d: &RawDevice) -> Vec<CareFlag> {
        let mut care_flags = Vec::new();
        let Some(flags) = &d.care_flags else {
            return care_flags;
        };
        let line = Some(self.line_of(flags));
        match flags.get_ref() {
            toml::Value::Array(items) => {
                for item in items {
                    match item.as_str().and_then(CareFlag::parse) {
                        Some(flag) if !care_flags.contains(&flag) => care_flags.push(flag),
                        Some(_) => {}
                        None => self.push(
                            line,
                            "care_flags",
                            format!("unknown care flag {item} (known: high_fall_risk, wander_risk, copd)"),
                        ),
                    }
                }
            }
            other => self.push(
                line,
                "care_flags",
                format!("must be an array of strings, found {}", other.type_str()),
            ),
        }
        care_flags
    }

    /// `interval_s`: required, a positive integer that fits 32 bits.
    fn interval_s(&mut self, d: &RawDevice) -> Option<u64> {
        let Some(v) = &d.interval_s else {
            self.push(None, "interval_s", "missing (required)");
            return None;
        };
        let line = Some(self.line_of(v));
        match v.get_ref() {
            toml::Value::Integer(n) if *n > 0 && *n <= i64::from(u32::MAX) => Some(*n as u64),
            toml::Value::Integer(n) if *n <= 0 => {
                self.push(line, "interval_s", format!("must be > 0, got {n}"));
                None
            }
            toml::Value::Integer(n) => {
                self.push(line, "interval_s", format!("{n} is too large"));
                None
            }
            other => {
                self.push(
                    line,
                    "interval_s",
                    format!("must be an integer number of seconds, found {}", other.type_str()),
                );
                None
            }
        }
    }
}

/// Reads and validates a registry file; errors name the file.
pub fn load(path: &Path) -> Result<Registry, RegistryErrors> {
    let source = Some(path.display().to_string());
    let text = std::fs::read_to_string(path).map_err(|e| RegistryErrors {
        source: source.clone(),
        errors: vec![RegistryError {
            line: None,
            device: None,
            key: None,
            message: format!("cannot read: {e}"),
        }],
    })?;
    parse(&text).map_err(|mut e| {
        e.source = source;
        e
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
site = "nh-demo"

[[devices]]
id = "radar-a-1-01"
class = "fall_radar"
building = "A"
floor = "1"
room = "A-101"
zone = "bedroom"
bed = "1"
resident = "r-8f3a"
care_flags = ["high_fall_risk"]
interval_s = 10
model = "Seeed MR60FDA1"
vendor_note = "unknown keys are ignored"

[[devices]]
id = "door-a-1-01"
class = "door_contact"
zigbee_name = "door_a101"
building = "A"
floor = "1"
room = "A-101"
interval_s = 300
"#;

    fn errors_of(text: &str) -> Vec<RegistryError> {
        parse(text).expect_err("registry should be rejected").errors
    }

    #[test]
    fn parses_a_valid_registry_and_ignores_unknown_keys() {
        let r = parse(GOOD).expect("valid");
        assert_eq!(r.site, "nh-demo");
        assert_eq!(r.devices.len(), 2);
        let radar = &r.devices[0];
        assert_eq!(radar.class, DeviceClass::FallRadar);
        assert_eq!(radar.care_flags, vec![CareFlag::HighFallRisk]);
        assert_eq!(radar.format(), Format::Canonical);
        assert_eq!(radar.topic("nh-demo"), "nh/nh-demo/radar-a-1-01/telemetry");
        let door = &r.devices[1];
        assert_eq!(door.format(), Format::Zigbee2mqtt);
        assert_eq!(door.topic("nh-demo"), "zigbee2mqtt/door_a101");
    }

    #[test]
    fn reports_every_error_with_device_key_and_line() {
        let text = r#"
site = "nh demo"

[[devices]]
id = "bad/id"
class = "toaster"
building = "A"
floor = "1"
room = "A-101"
interval_s = 0

[[devices]]
id = "ok-1"
class = "wearable"
building = "A"
room = "A-101"
interval_s = 30

[[devices]]
id = "ok-1"
class = "wearable"
zigbee_name = "z1"
building = "A"
floor = "1"
room = "A-101"
interval_s = 30

[[devices]]
id = "ok-2"
class = "smoke_alarm"
zigbee_name = "z1"
building = "A"
floor = 1
room = "A-101"
care_flags = ["sleepy"]
interval_s = "60"
"#;
        let errors = errors_of(text);
        let rendered: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let has = |needle: &str| rendered.iter().any(|e| e.contains(needle));
        assert!(has("line 2: key `site`: `nh demo` is not a valid id"), "{rendered:#?}");
        assert!(
            has("line 5: device `bad/id`: key `id`: `bad/id` is not a valid id"),
            "{rendered:#?}"
        );
        assert!(
            has("device `bad/id`: key `class`: unknown class `toaster`"),
            "{rendered:#?}"
        );
        assert!(
            has("line 10: device `bad/id`: key `interval_s`: must be > 0"),
            "{rendered:#?}"
        );
        assert!(
            has("line 12: device `ok-1`: key `floor`: missing (required)"),
            "{rendered:#?}"
        );
        assert!(
            has("line 20: device `ok-1`: key `id`: duplicate id (first used on line 13)"),
            "{rendered:#?}"
        );
        assert!(
            has("device `ok-2`: key `zigbee_name`: duplicate zigbee_name `z1` (also device `ok-1` on line 22)"),
            "{rendered:#?}"
        );
        assert!(
            has("device `ok-2`: key `floor`: must be a string, found integer"),
            "{rendered:#?}"
        );
        assert!(
            has("device `ok-2`: key `care_flags`: unknown care flag \"sleepy\""),
            "{rendered:#?}"
        );
        assert!(
            has("device `ok-2`: key `interval_s`: must be an integer number of seconds, found string"),
            "{rendered:#?}"
        );
        assert_eq!(errors.len(), 10, "{rendered:#?}");
    }

    #[test]
    fn rejects_missing_site_missing_devices_and_syntax_errors() {
        let errors = errors_of("# nothing\n");
        assert!(errors.iter().any(|e| e.key.as_deref() == Some("site")));
        assert!(errors.iter().any(|e| e.key.as_deref() == Some("devices")));
        let errors = errors_of("site = \"x\"\n[[devices]\n");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, Some(2));
    }

    #[test]
    fn rejects_bad_zigbee_names() {
        for name in ["a+b", "x/#", "/lead", "trail/", "bridge/state", "door/set", ""] {
            let text = format!(
                "site = \"s\"\n[[devices]]\nid = \"d\"\nclass = \"door_contact\"\nzigbee_name = \"{name}\"\nbuilding = \"A\"\nfloor = \"1\"\nroom = \"r\"\ninterval_s = 1\n"
            );
            let errors = errors_of(&text);
            assert!(
                errors.iter().any(|e| e.key.as_deref() == Some("zigbee_name")),
                "{name}: {errors:?}"
            );
        }
    }

    #[test]
    fn ids_follow_the_topic_level_rule() {
        assert!(is_valid_id("radar-a-1-01"));
        assert!(is_valid_id("zigbee:0x00158d0001a2b3c4"));
        assert!(is_valid_id(&"x".repeat(MAX_ID_LEN)));
        for bad in ["", "a b", "a/b", "a+b", "a#b", "é", &"x".repeat(MAX_ID_LEN + 1)] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }
}
