//! `gen-registry`: the device registry of a demo facility, written as TOML.
//!
//! Per room: a fall radar over the bed, the resident's wearable and bed sensor (canonical), a door
//! contact and a smoke alarm. Per floor: a gas detector, a CO detector and a heat detector in the
//! kitchen, and an SOS pull cord in the bathroom. Per building: the facility gateway's heartbeat.
//! Zigbee-capable devices go through Zigbee2MQTT with probability `zigbee_share` (the rest are
//! NB-IoT / LoRaWAN models speaking canonical through their platform). Residents get
//! pseudonymous ids and some care flags. Deterministic for a given seed.

use std::collections::HashSet;
use std::fmt::Write as _;

use crate::model::registry::{CareFlag, DeviceClass};
use crate::rng::Rng;
use crate::wire::Format;

/// Report intervals (s). Real smoke alarms check in every 1-4 h; a demo wants to see every device
/// within minutes, so nothing reports less often than every 300 s.
const RADAR_S: u64 = 10;
const WEARABLE_S: u64 = 30;
const BED_S: u64 = 30;
const DOOR_S: u64 = 300;
const SMOKE_S: u64 = 300;
const GAS_S: u64 = 60;
const CO_S: u64 = 300;
const HEAT_S: u64 = 300;
const SOS_S: u64 = 300;
const GATEWAY_S: u64 = 60;
/// Load devices report as fast as the load generator sends; their interval is the shortest there is.
const LOAD_S: u64 = 1;

/// What to generate.
#[derive(Debug, Clone)]
pub struct FacilityOptions {
    pub site: String,
    pub buildings: u32,
    pub floors: u32,
    pub rooms_per_floor: u32,
    /// Share (0..=1) of Zigbee-capable devices that go through Zigbee2MQTT.
    pub zigbee_share: f64,
    pub seed: u64,
    /// Extra `load-NNNN` devices for `nh-sim load` (0 = none).
    pub load_devices: u32,
    pub load_format: Format,
}

impl FacilityOptions {
    /// The demo facility of `config/demo/devices.toml`: site `nh-demo`, 1 building, 3 floors of 20
    /// rooms, half of the Zigbee-capable devices on Zigbee2MQTT, seed 1.
    pub fn demo() -> FacilityOptions {
        FacilityOptions {
            site: "nh-demo".into(),
            buildings: 1,
            floors: 3,
            rooms_per_floor: 20,
            zigbee_share: 0.5,
            seed: 1,
            load_devices: 0,
            load_format: Format::Canonical,
        }
    }

    /// The `nh-sim gen-registry` command line that produces this facility.
    pub fn command_line(&self) -> String {
        let mut c = format!(
            "nh-sim gen-registry --site {} --buildings {} --floors {} --rooms-per-floor {} --zigbee-share {} --seed {}",
            self.site, self.buildings, self.floors, self.rooms_per_floor, self.zigbee_share, self.seed
        );
        if self.load_devices > 0 {
            c.push_str(&format!(
                " --load-devices {} --load-format {}",
                self.load_devices, self.load_format
            ));
        }
        c
    }
}

/// The demo facility's registry text, byte for byte the checked-in `config/demo/devices.toml`
/// (a test keeps them equal), so `nh-gateway demo` needs no file.
pub fn demo_registry_toml() -> String {
    let opts = FacilityOptions::demo();
    // The demo options are valid by construction.
    generate(&opts, &opts.command_line()).unwrap_or_default()
}

struct Entry {
    id: String,
    class: DeviceClass,
    zigbee_name: Option<String>,
    building: String,
    floor: String,
    room: String,
    zone: Option<&'static str>,
    bed: Option<&'static str>,
    resident: Option<String>,
    care_flags: Vec<CareFlag>,
    interval_s: u64,
    model: &'static str,
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

impl Entry {
    fn write(&self, out: &mut String) {
        out.push_str("\n[[devices]]\n");
        let _ = writeln!(out, "id = {}", quote(&self.id));
        let _ = writeln!(out, "class = {}", quote(self.class.as_str()));
        if let Some(name) = &self.zigbee_name {
            let _ = writeln!(out, "zigbee_name = {}", quote(name));
        }
        let _ = writeln!(out, "building = {}", quote(&self.building));
        let _ = writeln!(out, "floor = {}", quote(&self.floor));
        let _ = writeln!(out, "room = {}", quote(&self.room));
        if let Some(zone) = self.zone {
            let _ = writeln!(out, "zone = {}", quote(zone));
        }
        if let Some(bed) = self.bed {
            let _ = writeln!(out, "bed = {}", quote(bed));
        }
        if let Some(resident) = &self.resident {
            let _ = writeln!(out, "resident = {}", quote(resident));
        }
        if !self.care_flags.is_empty() {
            let flags: Vec<String> = self.care_flags.iter().map(|f| quote(f.as_str())).collect();
            let _ = writeln!(out, "care_flags = [{}]", flags.join(", "));
        }
        let _ = writeln!(out, "interval_s = {}", self.interval_s);
        let _ = writeln!(out, "model = {}", quote(self.model));
    }
}

fn building_letter(b: u32) -> String {
    // A..Z, then AA, AB, ... for the rare campus with more than 26 buildings.
    let mut n = b;
    let mut s = String::new();
    loop {
        s.insert(0, (b'A' + (n % 26) as u8) as char);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    s
}

/// Generates the registry TOML. The text starts with a comment naming the command that made it.
/// Errors: an invalid site id, a share outside 0..=1, or nothing to generate.
pub fn generate(opts: &FacilityOptions, command_line: &str) -> anyhow::Result<String> {
    if !crate::model::registry::is_valid_id(&opts.site) {
        anyhow::bail!("site `{}` is not a valid id: use [A-Za-z0-9._:-]+", opts.site);
    }
    if !(0.0..=1.0).contains(&opts.zigbee_share) {
        anyhow::bail!("--zigbee-share must be between 0 and 1");
    }
    let mut rng = Rng::new(opts.seed ^ crate::rng::fnv1a(opts.site.as_bytes()));
    let mut residents: HashSet<String> = HashSet::new();
    let mut entries: Vec<Entry> = Vec::new();
    let room_width = if opts.rooms_per_floor > 99 { 3 } else { 2 };

    // The random draws happen in this order (building, floor, room), so a seed keeps its facility.
    for b in 0..opts.buildings {
        let letter = building_letter(b);
        let lower = letter.to_lowercase();
        entries.push(gateway(&letter, &lower));
        for f in 1..=opts.floors {
            let floor = Floor {
                letter: &letter,
                lower: &lower,
                f,
            };
            for r in 1..=opts.rooms_per_floor {
                let num = format!("{f}{r:0room_width$}");
                let suffix = format!("{lower}-{f}-{r:0room_width$}");
                let resident = new_resident(&mut rng, &mut residents);
                let flags = care_flags(&mut rng);
                entries.extend(room_devices(&floor, &num, &suffix, &resident, &flags));
                entries.extend(room_alarms(&mut rng, opts.zigbee_share, &floor, &num, &suffix));
            }
            entries.extend(floor_devices(&mut rng, opts.zigbee_share, &floor));
        }
    }
    entries.extend(load_entries(opts));
    if entries.is_empty() {
        anyhow::bail!("nothing to generate: no buildings/floors/rooms and no load devices");
    }
    Ok(render(opts, command_line, &entries))
}

/// Where a floor's devices are: building letter (and in lower case, for ids) and floor number.
struct Floor<'a> {
    letter: &'a str,
    lower: &'a str,
    f: u32,
}

/// The building's gateway heartbeat.
fn gateway(letter: &str, lower: &str) -> Entry {
    Entry {
        id: format!("gw-{lower}"),
        class: DeviceClass::Gateway,
        zigbee_name: None,
        building: letter.to_owned(),
        floor: "1".into(),
        room: format!("{letter}-office"),
        zone: Some("office"),
        bed: None,
        resident: None,
        care_flags: vec![],
        interval_s: GATEWAY_S,
        model: "edge gateway heartbeat",
    }
}

/// A pseudonymous resident id no other resident has.
fn new_resident(rng: &mut Rng, residents: &mut HashSet<String>) -> String {
    loop {
        let candidate = format!("r-{:04x}", rng.next_u64() & 0xFFFF);
        if residents.insert(candidate.clone()) {
            return candidate;
        }
    }
}

/// A resident's care flags, each drawn with its own share.
fn care_flags(rng: &mut Rng) -> Vec<CareFlag> {
    let mut flags = Vec::new();
    if rng.chance(0.25) {
        flags.push(CareFlag::HighFallRisk);
    }
    if rng.chance(0.10) {
        flags.push(CareFlag::WanderRisk);
    }
    if rng.chance(0.10) {
        flags.push(CareFlag::Copd);
    }
    flags
}

/// The resident's own devices (canonical): the fall radar over the bed, the wearable, the bed
/// sensor.
fn room_devices(floor: &Floor<'_>, num: &str, suffix: &str, resident: &str, flags: &[CareFlag]) -> [Entry; 3] {
    let personal = |id: String, class, zone: Option<&'static str>, interval_s, model| Entry {
        id,
        class,
        zigbee_name: None,
        building: floor.letter.to_owned(),
        floor: floor.f.to_string(),
        room: format!("{}-{num}", floor.letter),
        zone,
        bed: Some("1"),
        resident: Some(resident.to_owned()),
        care_flags: flags.to_vec(),
        interval_s,
        model,
    };
    let radar = personal(
        format!("radar-{suffix}"),
        DeviceClass::FallRadar,
        Some("bedroom"),
        RADAR_S,
        "Seeed MR60FDA1",
    );
    let mut watch = personal(
        format!("wearable-{suffix}"),
        DeviceClass::Wearable,
        None,
        WEARABLE_S,
        "4G elderly watch",
    );
    watch.bed = None;
    let bed = personal(
        format!("bed-{suffix}"),
        DeviceClass::BedSensor,
        Some("bedroom"),
        BED_S,
        "bed pressure pad",
    );
    [radar, watch, bed]
}

/// The room's door contact and smoke alarm, each on Zigbee2MQTT with probability `zigbee_share`.
fn room_alarms(rng: &mut Rng, zigbee_share: f64, floor: &Floor<'_>, num: &str, suffix: &str) -> [Entry; 2] {
    let Floor { letter, lower, f } = *floor;
    let room = format!("{letter}-{num}");
    let z2m = rng.chance(zigbee_share);
    let door = Entry {
        id: format!("door-{suffix}"),
        class: DeviceClass::DoorContact,
        zigbee_name: z2m.then(|| format!("door_{lower}{num}")),
        building: letter.to_owned(),
        floor: f.to_string(),
        room: room.clone(),
        zone: Some("entrance"),
        bed: None,
        resident: None,
        care_flags: vec![],
        interval_s: DOOR_S,
        model: if z2m { "Aqara MCCGQ11LM" } else { "Milesight WS301" },
    };
    let z2m = rng.chance(zigbee_share);
    let smoke = Entry {
        id: format!("smoke-{suffix}"),
        class: DeviceClass::SmokeAlarm,
        zigbee_name: z2m.then(|| format!("smoke_{lower}{num}")),
        building: letter.to_owned(),
        floor: f.to_string(),
        room,
        zone: Some("bedroom"),
        bed: None,
        resident: None,
        care_flags: vec![],
        interval_s: SMOKE_S,
        model: if z2m {
            "Heiman HS1SA"
        } else {
            "NB-IoT smoke alarm (CTWing)"
        },
    };
    [door, smoke]
}

/// The floor's shared devices: gas, CO and heat detectors in the kitchen, the SOS pull cord in
/// the bathroom.
fn floor_devices(rng: &mut Rng, zigbee_share: f64, floor: &Floor<'_>) -> Vec<Entry> {
    let Floor { letter, lower, f } = *floor;
    let shared = [
        (
            "gas",
            DeviceClass::GasDetector,
            "kitchen",
            GAS_S,
            "Tuya TS0601 gas sensor",
            "Milesight GS101",
        ),
        (
            "co",
            DeviceClass::CoDetector,
            "kitchen",
            CO_S,
            "Tuya DCR-RQJ",
            "NB-IoT CO alarm",
        ),
        (
            "heat",
            DeviceClass::HeatDetector,
            "kitchen",
            HEAT_S,
            "Heiman HM-5HA-E",
            "LoRaWAN heat detector",
        ),
        (
            "sos",
            DeviceClass::SosButton,
            "bathroom",
            SOS_S,
            "Feibit SEB01ZB pull cord",
            "Milesight WS101-SOS",
        ),
    ];
    let mut entries = Vec::with_capacity(shared.len());
    for (kind, class, zone, interval_s, z2m_model, other_model) in shared {
        let z2m = rng.chance(zigbee_share);
        let room = if zone == "kitchen" {
            format!("{letter}-{f}-kitchen")
        } else {
            format!("{letter}-{f}-bath")
        };
        entries.push(Entry {
            id: format!("{kind}-{lower}-{f}"),
            class,
            zigbee_name: z2m.then(|| format!("{kind}_{lower}{f}")),
            building: letter.to_owned(),
            floor: f.to_string(),
            room,
            zone: Some(zone),
            bed: None,
            resident: None,
            care_flags: vec![],
            interval_s,
            model: if z2m { z2m_model } else { other_model },
        });
    }
    entries
}

/// The `load-NNNN` devices of `nh-sim load`, if asked for.
fn load_entries(opts: &FacilityOptions) -> Vec<Entry> {
    (0..opts.load_devices)
        .map(|n| {
            let id = load_device_id(n as usize);
            Entry {
                zigbee_name: (opts.load_format == Format::Zigbee2mqtt).then(|| id.clone()),
                id,
                class: DeviceClass::PresenceRadar,
                building: "L".into(),
                floor: "0".into(),
                room: "load-lab".into(),
                zone: None,
                bed: None,
                resident: None,
                care_flags: vec![],
                interval_s: LOAD_S,
                model: "nh-sim load generator",
            }
        })
        .collect()
}

/// The registry text: the header comments, the site, then every entry.
fn render(opts: &FacilityOptions, command_line: &str, entries: &[Entry]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Device registry of site {}: {} devices.",
        opts.site,
        entries.len()
    );
    let _ = writeln!(out, "# Generated by `{command_line}`; regenerate rather than edit.");
    let _ = writeln!(out, "site = {}", quote(&opts.site));
    for e in entries {
        e.write(&mut out);
    }
    out
}

/// Device name of `nh-sim load` device `n` (the load's registry is generated here).
pub fn load_device_id(n: usize) -> String {
    format!("load-{n:04}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> FacilityOptions {
        FacilityOptions::demo()
    }

    #[test]
    fn demo_registry_toml_is_generated_in_process() {
        let text = demo_registry_toml();
        assert!(
            text.contains("--site nh-demo --buildings 1 --floors 3 --rooms-per-floor 20 --zigbee-share 0.5 --seed 1")
        );
        assert_eq!(crate::model::registry::parse(&text).expect("valid").devices.len(), 313);
    }

    #[test]
    fn generated_registry_is_valid_and_complete() {
        let text = generate(&demo(), "nh-sim gen-registry").expect("generate");
        let r = crate::model::registry::parse(&text).expect("generated registry must validate");
        assert_eq!(r.site, "nh-demo");
        // 60 rooms x 5 + 3 floors x 4 + 1 gateway.
        assert_eq!(r.devices.len(), 60 * 5 + 3 * 4 + 1);
        let count = |c: DeviceClass| r.devices.iter().filter(|d| d.class == c).count();
        assert_eq!(count(DeviceClass::FallRadar), 60);
        assert_eq!(count(DeviceClass::SosButton), 3);
        let z2m = r.devices.iter().filter(|d| d.zigbee_name.is_some()).count();
        assert!(
            (40..=110).contains(&z2m),
            "about half of 138 zigbee-capable devices: {z2m}"
        );
        assert!(r.devices.iter().all(|d| d.interval_s <= 300));
        let flagged = r
            .devices
            .iter()
            .filter(|d| d.care_flags.contains(&CareFlag::HighFallRisk))
            .count();
        assert!(flagged > 0);
        let radar = r.devices.iter().find(|d| d.id == "radar-a-1-01").expect("radar");
        assert_eq!(radar.room, "A-101");
        assert!(radar
            .resident
            .as_deref()
            .is_some_and(|s| s.starts_with("r-") && s.len() == 6));
    }

    #[test]
    fn generation_is_deterministic_and_share_is_honoured() {
        let a = generate(&demo(), "x").expect("generate");
        assert_eq!(a, generate(&demo(), "x").expect("generate"));
        let all = generate(
            &FacilityOptions {
                zigbee_share: 1.0,
                ..demo()
            },
            "x",
        )
        .expect("generate");
        let r = crate::model::registry::parse(&all).expect("valid");
        assert_eq!(
            r.devices.iter().filter(|d| d.zigbee_name.is_some()).count(),
            60 * 2 + 3 * 4
        );
        let none = generate(
            &FacilityOptions {
                zigbee_share: 0.0,
                ..demo()
            },
            "x",
        )
        .expect("generate");
        assert!(!none.contains("zigbee_name"));
    }

    #[test]
    fn load_devices_can_be_added() {
        let opts = FacilityOptions {
            buildings: 0,
            load_devices: 3,
            load_format: Format::Zigbee2mqtt,
            ..demo()
        };
        let r = crate::model::registry::parse(&generate(&opts, "x").expect("generate")).expect("valid");
        assert_eq!(r.devices.len(), 3);
        assert_eq!(r.devices[2].id, "load-0002");
        assert_eq!(r.devices[2].zigbee_name.as_deref(), Some("load-0002"));
        assert!(generate(&FacilityOptions { buildings: 0, ..demo() }, "x").is_err());
    }

    #[test]
    fn building_letters() {
        assert_eq!(building_letter(0), "A");
        assert_eq!(building_letter(25), "Z");
        assert_eq!(building_letter(26), "AA");
        assert_eq!(building_letter(27), "AB");
    }
}
