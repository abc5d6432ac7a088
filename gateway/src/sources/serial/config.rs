//! The serial ports' configuration (`[[serial]]`): one entry per RS-485 bus or radar UART,
//! with its defaults.

use std::path::PathBuf;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::decode::register_map::{self, CompiledMap, RegisterMap};
use crate::diagnostics::Diagnostics;
use crate::registry::{is_valid_id, Registry};

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

/// Whether `bus` is a valid bus name (a device id part without `:`).
fn is_valid_bus(bus: &str) -> bool {
    !bus.is_empty() && bus.len() <= 64 && bus.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Checks the serial ports (`serial.*`) against the register maps and the registry, and returns
/// the register maps by name: the shipped ones, replaced or extended by `[[modbus_maps]]`.
pub(crate) fn check_ports(
    ports: &[SerialPortConfig],
    site_maps: &[RegisterMap],
    registry: &Registry,
    d: &mut Diagnostics<'_>,
) -> BTreeMap<String, Arc<CompiledMap>> {
    let maps = compile_maps(site_maps, d);
    for (i, p) in ports.iter().enumerate() {
        check_port(i, p, &ports[..i], d);
        match p.protocol {
            SerialProtocol::Mr60fda1 => check_radar_port(i, p, registry, d),
            SerialProtocol::ModbusRtu => check_modbus_bus(i, p, &maps, registry, d),
        }
    }
    maps
}

/// The shipped register maps with the site's (`modbus_maps.*`) compiled over them.
fn compile_maps(site_maps: &[RegisterMap], d: &mut Diagnostics<'_>) -> BTreeMap<String, Arc<CompiledMap>> {
    let mut maps: BTreeMap<String, Arc<CompiledMap>> = BTreeMap::new();
    for m in register_map::builtin() {
        if let Ok(c) = m.compile() {
            maps.insert(m.name.clone(), Arc::new(c));
        }
    }
    for (i, m) in site_maps.iter().enumerate() {
        if site_maps[..i].iter().any(|o| o.name == m.name) {
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
    maps
}

fn check_registered(registry: &Registry, id: &str, key: &str, d: &mut Diagnostics<'_>) {
    if registry.get(id).is_none() {
        d.at_key(
            key,
            format!("device `{id}` is not in the registry: add it with its class, room and interval_s"),
        );
    }
}

/// The settings every port has, against the ports before it (`earlier`).
fn check_port(i: usize, p: &SerialPortConfig, earlier: &[SerialPortConfig], d: &mut Diagnostics<'_>) {
    let key = |k: &str| format!("serial.{i}.{k}");
    if !is_valid_bus(&p.bus) {
        d.at_key(&key("bus"), "must match [A-Za-z0-9._-]+ (it is part of device ids)");
    }
    if earlier.iter().any(|o| o.bus == p.bus) {
        d.at_key(&key("bus"), format!("duplicate bus `{}`", p.bus));
    }
    if p.path.as_os_str().is_empty() {
        d.at_key(&key("path"), "must not be empty");
    } else if earlier.iter().any(|o| o.path == p.path) {
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
}

fn check_radar_port(i: usize, p: &SerialPortConfig, registry: &Registry, d: &mut Diagnostics<'_>) {
    let key = |k: &str| format!("serial.{i}.{k}");
    if !p.units.is_empty() {
        d.at_key(&key("units"), "only modbus_rtu ports have units");
    }
    let id = p.radar_id();
    if !is_valid_id(&id) {
        d.at_key(&key("device"), "must match [A-Za-z0-9._:-]+");
    } else {
        check_registered(registry, &id, &key("device"), d);
    }
}

fn check_modbus_bus(
    i: usize,
    p: &SerialPortConfig,
    maps: &BTreeMap<String, Arc<CompiledMap>>,
    registry: &Registry,
    d: &mut Diagnostics<'_>,
) {
    let key = |k: &str| format!("serial.{i}.{k}");
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
        check_modbus_unit(i, j, p, u, maps, registry, d);
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

fn check_modbus_unit(
    i: usize,
    j: usize,
    p: &SerialPortConfig,
    u: &ModbusUnitConfig,
    maps: &BTreeMap<String, Arc<CompiledMap>>,
    registry: &Registry,
    d: &mut Diagnostics<'_>,
) {
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
        check_registered(registry, &id, &ukey("unit"), d);
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
