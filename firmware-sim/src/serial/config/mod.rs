//! The serial bench file (`config/serial/*.toml`, `nh-sim serial FILE`): the buses to put on ptys
//! and the devices each one plays.
//!
//! ```toml
//! seed = 7                                   # garbage bytes come from this seed (default 1)
//!
//! [[buses]]
//! name = "kitchen"                           # the link DIR/kitchen points at the bus's pty
//! protocol = "modbus_rtu"                    # or "mr60fda1"
//! outages = [{ at_s = 30, for_s = 3 }]       # the pty disappears, then a new one takes the link
//!
//! [[buses.units]]                            # modbus_rtu buses: one table per slave
//! unit = 3
//! model = "generic_gas"                      # or "midas"
//! preheat_s = 0
//! script = [{ at_s = 0, lel = 0.0 }, { at_s = 15, ramp_to = 35.0, over_s = 10 }]
//!
//! [[buses]]
//! name = "radar-a101"
//! protocol = "mr60fda1"
//! script = [{ at_s = 0, presence = true, motion = "moving" }, { at_s = 8, fall = true }]
//! ```
//!
//! Parsing is serde with `deny_unknown_fields`; the checks after it collect every problem with its
//! line, bus, unit and key, and fail once with the whole list. The checks of what a bus plays
//! (outages, units, scripts) are in `scripts.rs`.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

mod scripts;

use scripts::{check_outages, check_radar_script, check_units};

/// Seed of the garbage bytes when the file sets none.
pub const DEFAULT_SEED: u64 = 1;

/// Low alarm setpoint (%LEL) when a unit sets none: the household-detector end of the 10-20 %LEL
/// range and the utility-tunnel alarm level of GB 50838 (docs/rules.md).
pub const DEFAULT_LOW_ALARM_LEL: f64 = 20.0;

/// High alarm setpoint (%LEL) when a unit sets none: the second (explosion-risk) level of
/// GB/T 50493.
pub const DEFAULT_HIGH_ALARM_LEL: f64 = 50.0;

/// Garbage is written in chunks of this many bytes when a step sets no `garbage_chunk`: the size
/// of a typical UART driver buffer, so a reader sees full buffers of noise.
pub const DEFAULT_GARBAGE_CHUNK: usize = 4096;

/// Largest garbage burst of one step: enough to overflow any reader's buffer many times over,
/// small enough that a typo cannot fill a disk through a recording reader.
pub const MAX_GARBAGE_BYTES: u64 = 256 * 1024 * 1024;

/// Largest garbage chunk.
pub const MAX_GARBAGE_CHUNK: usize = 1024 * 1024;

/// Longest answer delay: far beyond any master's timeout, which is all a test needs.
pub const MAX_DELAY_MS: u64 = 60_000;

/// Longest bus name (it becomes a file name).
pub const MAX_BUS_NAME_LEN: usize = 64;

/// A validated serial bench.
#[derive(Debug, Clone, PartialEq)]
pub struct Bench {
    pub seed: u64,
    pub buses: Vec<BusSpec>,
}

/// One bus: one pty, one link.
#[derive(Debug, Clone, PartialEq)]
pub struct BusSpec {
    pub name: String,
    /// In time order, not overlapping.
    pub outages: Vec<Outage>,
    pub devices: BusDevices,
}

impl BusSpec {
    pub fn protocol(&self) -> Protocol {
        match self.devices {
            BusDevices::Modbus(_) => Protocol::ModbusRtu,
            BusDevices::Radar(_) => Protocol::Mr60fda1,
        }
    }
}

/// What plays on a bus.
#[derive(Debug, Clone, PartialEq)]
pub enum BusDevices {
    /// Modbus RTU slaves, by unit id.
    Modbus(Vec<GasUnitSpec>),
    /// One MR60FDA1 radar and its script (time order).
    Radar(Vec<RadarStep>),
}

/// The protocol of a bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    ModbusRtu,
    Mr60fda1,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::ModbusRtu => "modbus_rtu",
            Protocol::Mr60fda1 => "mr60fda1",
        }
    }
}

/// The bus's pty disappears at `at_s` for `for_s` seconds of script time.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// Script time (s) at which the link is removed and the pty closed.
    pub at_s: f64,
    /// Seconds until a new pty takes the link.
    pub for_s: f64,
}

/// A gas detector's register layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GasModel {
    /// Chinese point-type combustible gas detector, 7 registers (the `generic_gas_lel` map of
    /// config/modbus-maps.toml).
    GenericGas,
    /// Honeywell Midas, holding registers 40001-40016.
    Midas,
}

impl GasModel {
    pub fn as_str(self) -> &'static str {
        match self {
            GasModel::GenericGas => "generic_gas",
            GasModel::Midas => "midas",
        }
    }
}

/// One Modbus gas detector.
#[derive(Debug, Clone, PartialEq)]
pub struct GasUnitSpec {
    pub unit: u8,
    pub model: GasModel,
    pub preheat_s: f64,
    pub low_alarm: f64,
    pub high_alarm: f64,
    pub delay_ms: u64,
    pub crc_error_every: u32,
    /// Time order.
    pub script: Vec<GasStep>,
}

/// One step of a gas detector's script; the fields given take effect together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GasStep {
    pub at_s: f64,
    pub lel: Option<f64>,
    /// `(target %LEL, over_s)`.
    pub ramp: Option<(f64, f64)>,
    pub fault: Option<bool>,
    pub silent: Option<bool>,
    pub power_cycle: bool,
}

/// The radar's motion report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Motion {
    None,
    Stationary,
    Moving,
}

impl Motion {
    /// The data byte of the 0x80 0x02 report.
    pub fn code(self) -> u8 {
        match self {
            Motion::None => 0,
            Motion::Stationary => 1,
            Motion::Moving => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Motion::None => "none",
            Motion::Stationary => "stationary",
            Motion::Moving => "moving",
        }
    }
}

/// One step of a radar's script; the fields given take effect together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RadarStep {
    pub at_s: f64,
    pub presence: Option<bool>,
    pub motion: Option<Motion>,
    pub fall: Option<bool>,
    pub dwell: Option<bool>,
    pub body_movement: Option<u8>,
    pub silent: Option<bool>,
    /// `(bytes, chunk)`.
    pub garbage: Option<(u64, usize)>,
}

/// Every problem found in one bench file.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchErrors {
    /// The file name, when the text came from a file.
    pub source: Option<String>,
    /// `(line, message)`; the message names the bus, unit and key.
    pub errors: Vec<(Option<usize>, String)>,
}

impl fmt::Display for BenchErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        match &self.source {
            Some(s) => write!(f, "{n} error(s) in serial bench {s}")?,
            None => write!(f, "{n} error(s) in serial bench")?,
        }
        for (line, e) in &self.errors {
            match line {
                Some(l) => write!(f, "\n  - line {l}: {e}")?,
                None => write!(f, "\n  - {e}")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for BenchErrors {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBench {
    /// Seed of the garbage bytes (default 1): same seed, same bytes.
    seed: Option<u64>,
    /// The buses, one pty each.
    #[serde(default)]
    buses: Vec<Spanned<RawBus>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBus {
    /// The link's file name in `--dir`: `[A-Za-z0-9._-]`, not starting with `.`, unique.
    name: String,
    /// `modbus_rtu` (gas detectors as slaves) or `mr60fda1` (one fall radar).
    protocol: Protocol,
    /// Link outages in script time: `{ at_s, for_s }`, in time order, not overlapping.
    #[serde(default)]
    outages: Vec<Spanned<Outage>>,
    /// `modbus_rtu` only: the slaves.
    units: Option<Vec<Spanned<RawUnit>>>,
    /// `mr60fda1` only: the radar's script.
    script: Option<Vec<Spanned<RawRadarStep>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnit {
    /// Slave address, 1-247, unique on the bus.
    unit: i64,
    /// Register layout: `generic_gas` or `midas`.
    model: GasModel,
    /// Warm-up after t=0 and after each power cycle, seconds (default 0).
    preheat_s: Option<f64>,
    /// Low alarm setpoint, %LEL (default 20).
    low_alarm: Option<f64>,
    /// High alarm setpoint, %LEL (default 50); above `low_alarm`.
    high_alarm: Option<f64>,
    /// Answer delay, ms (default 0).
    delay_ms: Option<i64>,
    /// Corrupt the CRC of every Nth answer (default 0: never).
    crc_error_every: Option<i64>,
    /// Steps in time order.
    #[serde(default)]
    script: Vec<Spanned<RawGasStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGasStep {
    /// Script time, seconds (fractions allowed).
    at_s: f64,
    /// Set the concentration, %LEL (clamped to 0..100).
    lel: Option<f64>,
    /// Ramp linearly from the current concentration to this one (%LEL, clamped to 0..100)...
    ramp_to: Option<f64>,
    /// ...over this many seconds.
    over_s: Option<f64>,
    /// Sensor fault on or off.
    fault: Option<bool>,
    /// Stop (true) or resume (false) answering: a dead unit.
    silent: Option<bool>,
    /// `true`: the unit restarts and warms up for `preheat_s` again.
    power_cycle: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRadarStep {
    /// Script time, seconds (fractions allowed).
    at_s: f64,
    /// Someone in the room.
    presence: Option<bool>,
    /// `none`, `stationary` or `moving`.
    motion: Option<Motion>,
    /// Fall state.
    fall: Option<bool>,
    /// Stationary residency after a fall.
    dwell: Option<bool>,
    /// Body-movement parameter, 0-100, sent once per second.
    body_movement: Option<i64>,
    /// Stop (true) or resume (false) every frame.
    silent: Option<bool>,
    /// Write this many seeded random bytes, as fast as the pty accepts...
    garbage_bytes: Option<i64>,
    /// ...in chunks of this size (default 4096), one valid frame between chunks.
    garbage_chunk: Option<i64>,
}

/// True if the text is a serial bench (it has a `[[buses]]` table).
pub fn is_bench(text: &str) -> bool {
    text.parse::<toml::Table>()
        .map(|t| t.contains_key("buses"))
        .unwrap_or_else(|_| text.lines().any(|l| l.trim() == "[[buses]]"))
}

/// True if a bus name can be a file name of its own in any directory.
pub fn is_valid_bus_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_BUS_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Collects the errors of one file.
struct Errors<'a> {
    text: &'a str,
    list: Vec<(Option<usize>, String)>,
}

impl Errors<'_> {
    fn push<T>(&mut self, at: &Spanned<T>, message: String) {
        let line = line_at(self.text, at.span().start);
        self.list.push((Some(line), message));
    }
}

/// Parses and validates a bench.
pub fn parse(text: &str) -> Result<Bench, BenchErrors> {
    let raw: RawBench = toml::from_str(text).map_err(|e| BenchErrors {
        source: None,
        errors: vec![(e.span().map(|s| line_at(text, s.start)), e.message().trim().to_owned())],
    })?;
    let mut errs = Errors { text, list: Vec::new() };
    if raw.buses.is_empty() {
        errs.list
            .push((None, "no [[buses]]: a bench has at least one bus".to_owned()));
    }
    let mut names = HashSet::new();
    let mut buses = Vec::with_capacity(raw.buses.len());
    for (index, spanned) in raw.buses.iter().enumerate() {
        let b = spanned.get_ref();
        let place = if b.name.is_empty() {
            format!("buses[{index}]")
        } else {
            format!("bus `{}`", b.name)
        };
        if !is_valid_bus_name(&b.name) {
            errs.push(
                spanned,
                format!(
                    "{place}: key `name`: `{}` is not a usable file name: use [A-Za-z0-9._-], at most {MAX_BUS_NAME_LEN} \
                     characters, not starting with `.`",
                    b.name
                ),
            );
        } else if !names.insert(b.name.clone()) {
            errs.push(spanned, format!("{place}: key `name`: duplicate bus name"));
        }
        let outages = check_outages(&mut errs, &place, &b.outages);
        let devices = match b.protocol {
            Protocol::ModbusRtu => {
                if b.script.is_some() {
                    errs.push(
                        spanned,
                        format!("{place}: key `script`: a modbus_rtu bus has no script of its own (use each unit's)"),
                    );
                }
                let units = b.units.as_deref().unwrap_or_default();
                if units.is_empty() {
                    errs.push(
                        spanned,
                        format!("{place}: key `units`: a modbus_rtu bus needs at least one [[buses.units]]"),
                    );
                }
                BusDevices::Modbus(check_units(&mut errs, &place, units))
            }
            Protocol::Mr60fda1 => {
                if b.units.is_some() {
                    errs.push(
                        spanned,
                        format!("{place}: key `units`: an mr60fda1 bus is one radar (give it a `script`)"),
                    );
                }
                let steps = b.script.as_deref().unwrap_or_default();
                BusDevices::Radar(check_radar_script(&mut errs, &place, steps))
            }
        };
        buses.push(BusSpec {
            name: b.name.clone(),
            outages,
            devices,
        });
    }
    if errs.list.is_empty() {
        Ok(Bench {
            seed: raw.seed.unwrap_or(DEFAULT_SEED),
            buses,
        })
    } else {
        Err(BenchErrors {
            source: None,
            errors: errs.list,
        })
    }
}

/// Reads and validates a bench file; errors name the file.
pub fn load(path: &Path) -> Result<Bench, BenchErrors> {
    let source = Some(path.display().to_string());
    let text = std::fs::read_to_string(path).map_err(|e| BenchErrors {
        source: source.clone(),
        errors: vec![(None, format!("cannot read: {e}"))],
    })?;
    parse(&text).map_err(|mut e| {
        e.source = source;
        e
    })
}

/// A one-line summary of a valid bench (`--check`, `validate`).
pub fn summary(bench: &Bench) -> String {
    let buses: Vec<String> = bench
        .buses
        .iter()
        .map(|b| match &b.devices {
            BusDevices::Modbus(units) => format!("{} modbus_rtu {} units", b.name, units.len()),
            BusDevices::Radar(steps) => format!("{} mr60fda1 {} steps", b.name, steps.len()),
        })
        .collect();
    format!(
        "serial bench, seed {}, {} bus(es): {}",
        bench.seed,
        bench.buses.len(),
        buses.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
seed = 7
[[buses]]
name = "kitchen"
protocol = "modbus_rtu"
outages = [{ at_s = 30, for_s = 3 }]
[[buses.units]]
unit = 3
model = "generic_gas"
script = [{ at_s = 0, lel = 0.0 }, { at_s = 15, ramp_to = 35.0, over_s = 10 }]
[[buses.units]]
unit = 4
model = "midas"
preheat_s = 2.5
low_alarm = 10
high_alarm = 25
delay_ms = 40
crc_error_every = 3
script = [{ at_s = 1.5, fault = true, silent = true }, { at_s = 2, power_cycle = true }]

[[buses]]
name = "radar-a101"
protocol = "mr60fda1"
script = [
  { at_s = 0, presence = true, motion = "moving", body_movement = 40 },
  { at_s = 8, fall = true },
  { at_s = 12, garbage_bytes = 1048576 },
]
"#;

    #[test]
    fn example_bench_parses_with_defaults() {
        let b = parse(GOOD).expect("valid");
        assert_eq!(b.seed, 7);
        assert_eq!(b.buses.len(), 2);
        assert_eq!(b.buses[0].outages, vec![Outage { at_s: 30.0, for_s: 3.0 }]);
        let BusDevices::Modbus(units) = &b.buses[0].devices else {
            panic!("modbus bus expected")
        };
        assert_eq!(units[0].unit, 3);
        assert_eq!(units[0].low_alarm, DEFAULT_LOW_ALARM_LEL);
        assert_eq!(units[0].high_alarm, DEFAULT_HIGH_ALARM_LEL);
        assert_eq!(units[0].script[1].ramp, Some((35.0, 10.0)));
        assert_eq!(units[1].model, GasModel::Midas);
        assert_eq!(units[1].delay_ms, 40);
        assert!(units[1].script[1].power_cycle);
        let BusDevices::Radar(steps) = &b.buses[1].devices else {
            panic!("radar bus expected")
        };
        assert_eq!(steps[0].motion, Some(Motion::Moving));
        assert_eq!(steps[2].garbage, Some((1_048_576, DEFAULT_GARBAGE_CHUNK)));
        assert!(is_bench(GOOD));
        assert!(summary(&b).contains("kitchen modbus_rtu 2 units"));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let text = "[[buses]]\nname = \"a\"\nprotocol = \"mr60fda1\"\nscript = [{ at_s = 0, falls = true }]\n";
        let e = parse(text).expect_err("unknown key");
        assert_eq!(e.errors.len(), 1);
        assert_eq!(e.errors[0].0, Some(4), "{e}");
        assert!(e.errors[0].1.contains("falls"), "{e}");
    }

    #[test]
    fn every_problem_is_listed_with_bus_unit_and_key() {
        let text = r#"
[[buses]]
name = "k"
protocol = "modbus_rtu"
outages = [{ at_s = 5, for_s = 3 }, { at_s = 6, for_s = 0 }]
[[buses.units]]
unit = 0
model = "generic_gas"
[[buses.units]]
unit = 2
model = "midas"
low_alarm = 60
script = [{ at_s = 3, ramp_to = 10 }, { at_s = 1, lel = 5 }, { at_s = 4 }, { at_s = 5, power_cycle = false }]
[[buses]]
name = "k"
protocol = "mr60fda1"
script = [{ at_s = 1, body_movement = 101 }, { at_s = 2, garbage_chunk = 10 }]
[[buses]]
name = ".hidden/x"
protocol = "mr60fda1"
units = []
"#;
        let e = parse(text).expect_err("invalid");
        let all = e.to_string();
        for needle in [
            "bus `k`: outages[1]: key `for_s`",
            "bus `k` units[0]: key `unit`: must be 1-247",
            "bus `k` unit 2: key `high_alarm`: must be above low_alarm",
            "bus `k` unit 2: script[0]: key `over_s`: missing",
            "bus `k` unit 2: script[1]: key `at_s`",
            "bus `k` unit 2: script[2]: the step changes nothing",
            "bus `k` unit 2: script[3]: key `power_cycle`",
            "bus `k`: key `name`: duplicate bus name",
            "bus `k`: script[0]: key `body_movement`",
            "bus `k`: script[1]: key `garbage_chunk`: only with garbage_bytes",
            "bus `.hidden/x`: key `name`",
            "bus `.hidden/x`: key `units`",
        ] {
            assert!(all.contains(needle), "missing `{needle}` in:\n{all}");
        }
        assert_eq!(e.errors.len(), 12, "{all}");
        assert!(e.errors.iter().all(|(line, _)| line.is_some()), "{all}");
    }

    #[test]
    fn concentrations_are_clamped() {
        let text =
            "[[buses]]\nname = \"k\"\nprotocol = \"modbus_rtu\"\n[[buses.units]]\nunit = 1\nmodel = \"generic_gas\"\n\
                    script = [{ at_s = 0, lel = 140 }, { at_s = 1, ramp_to = -5, over_s = 1 }]\n";
        let b = parse(text).expect("valid");
        let BusDevices::Modbus(units) = &b.buses[0].devices else {
            panic!("modbus bus expected")
        };
        assert_eq!(units[0].script[0].lel, Some(100.0));
        assert_eq!(units[0].script[1].ramp, Some((0.0, 1.0)));
    }
}
