//! Modbus register maps as data: which registers one poll reads, and how their words become
//! canonical metrics. One map per device model; the shipped ones are in `config/modbus-maps.toml`
//! (compiled in), a site adds its own under `[[modbus_maps]]`.
//!
//! - `values`: a number from one or two registers (`u16`, `s16`, `u32`, `s32`, `f32`), word
//!   order `big` (high word first) or `little` (Midas), times `scale` plus `offset`, optionally
//!   divided by `10^` a decimal-places register.
//! - `status`: `(register >> shift) & mask` looked up in a table of codes, each code setting
//!   metrics (`3 = { fault = true }`); alarm, fault, preheat and heartbeat bits or enums alike.
//! - `checks`: registers that must hold a value (the unit code is %LEL), or the poll is refused.
//!
//! Pure code, validated once at load, so decoding a poll cannot meet an unknown metric.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::decode::modbus::{Function, MAX_READ_COUNT};
use crate::reading::Value;
use crate::vocabulary::{self, Kind};

/// The shipped register maps.
pub const BUILTIN_MAPS: &str = include_str!("../../../config/modbus-maps.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapsFile {
    #[serde(default)]
    pub modbus_maps: Vec<RegisterMap>,
}

/// How one device model's registers read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterMap {
    /// Name the `[[serial.units]]` entries refer to.
    pub name: String,
    /// Vendor and model, and the document the map comes from.
    #[serde(default)]
    pub model: String,
    /// 3 (holding registers) or 4 (input registers).
    #[serde(default = "default_function")]
    pub function: u8,
    /// First register of the block one poll reads (protocol address, from 0).
    #[serde(default)]
    pub start: u16,
    /// Registers in the block.
    pub count: u16,
    #[serde(default)]
    pub values: Vec<ValueField>,
    #[serde(default)]
    pub status: Vec<StatusField>,
    #[serde(default)]
    pub checks: Vec<Check>,
}

fn default_function() -> u8 {
    3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegType {
    U16,
    S16,
    U32,
    S32,
    F32,
}

impl RegType {
    fn words(self) -> u16 {
        match self {
            RegType::U16 | RegType::S16 => 1,
            RegType::U32 | RegType::S32 | RegType::F32 => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    /// High word in the lower register (the Modbus convention).
    #[default]
    Big,
    /// Low word in the lower register ("word-swapped"; Honeywell Midas).
    Little,
}

/// A number.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueField {
    /// Canonical metric (numeric).
    pub metric: String,
    /// Register address (within the block).
    pub address: u16,
    #[serde(rename = "type", default = "default_type")]
    pub kind: RegType,
    #[serde(default)]
    pub word_order: WordOrder,
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// Register holding the number of decimal places (the raw value is divided by 10^it).
    #[serde(default)]
    pub decimals_address: Option<u16>,
}

fn default_type() -> RegType {
    RegType::U16
}
fn default_scale() -> f64 {
    1.0
}

/// A status word or bit field and what its codes mean.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusField {
    pub address: u16,
    /// Right shift applied before the mask.
    #[serde(default)]
    pub shift: u8,
    #[serde(default = "default_mask")]
    pub mask: u16,
    /// Code (decimal, as a string key) to the metrics it sets: `"1" = { gas_alarm = true }`.
    pub codes: BTreeMap<String, BTreeMap<String, toml::Value>>,
    /// Metrics set by a code missing from `codes`; absent = such a poll is refused and counted
    /// (an unknown state of a life-safety device is not silently read as normal).
    #[serde(default)]
    pub otherwise: Option<BTreeMap<String, toml::Value>>,
}

fn default_mask() -> u16 {
    0xFFFF
}

/// A register that must hold a known value for the rest to mean what the map says.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub address: u16,
    #[serde(default = "default_mask")]
    pub mask: u16,
    pub equals: u16,
    /// What the check guards, for the error message (`unit is %LEL`).
    #[serde(default)]
    pub what: String,
}

/// Why a poll's registers were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MapError {
    #[error("expected {expected} registers, got {got}")]
    Length { expected: usize, got: usize },
    #[error("check failed at register {address}: {what} (read {read:#06x}, expected {expected:#06x})")]
    Check {
        address: u16,
        what: String,
        read: u16,
        expected: u16,
    },
    #[error("register {address}: status code {code} not in the map")]
    UnknownStatus { address: u16, code: u16 },
    #[error("register {address}: {source}")]
    Value {
        address: u16,
        source: vocabulary::VocabularyError,
    },
}

impl MapError {
    /// The reason label counted on `/metrics`.
    pub fn reason(&self) -> &'static str {
        match self {
            MapError::Length { .. } => "length",
            MapError::Check { .. } => "check_failed",
            MapError::UnknownStatus { .. } => "unknown_status",
            MapError::Value { source, .. } => source.reason(),
        }
    }
}

/// A status field with its code table resolved to values.
#[derive(Debug, Clone, PartialEq)]
struct CompiledStatus {
    field: StatusField,
    codes: BTreeMap<u16, Vec<(String, Value)>>,
    otherwise: Option<Vec<(String, Value)>>,
}

/// A map checked once: metrics known and typed, addresses inside the block.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledMap {
    pub name: String,
    pub function: Function,
    pub start: u16,
    pub count: u16,
    values: Vec<ValueField>,
    status: Vec<CompiledStatus>,
    checks: Vec<Check>,
}

fn to_value(v: &toml::Value) -> Option<Value> {
    match v {
        toml::Value::Boolean(b) => Some(Value::Bool(*b)),
        toml::Value::Integer(i) => Some(Value::Num(*i as f64)),
        toml::Value::Float(f) => Some(Value::Num(*f)),
        toml::Value::String(s) => Some(Value::Text(s.clone())),
        _ => None,
    }
}

fn metric_list(table: &BTreeMap<String, toml::Value>, at: &str, problems: &mut Vec<String>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (metric, raw) in table {
        match to_value(raw) {
            Some(v) => match vocabulary::check(metric, &v) {
                Ok(()) => out.push((metric.clone(), v)),
                Err(e) => problems.push(format!("{at}: {e}")),
            },
            None => problems.push(format!("{at}: `{metric}` must be a boolean, number or string")),
        }
    }
    out
}

impl RegisterMap {
    /// Checks the map; every problem at once.
    pub fn compile(&self) -> Result<CompiledMap, Vec<String>> {
        let mut p = Vec::new();
        let function = match self.function {
            3 => Function::Holding,
            4 => Function::Input,
            f => {
                p.push(format!(
                    "function {f}: only 3 (holding) and 4 (input) registers are read"
                ));
                Function::Holding
            }
        };
        if self.count == 0 || self.count > MAX_READ_COUNT {
            p.push(format!("count {} must be 1..={MAX_READ_COUNT}", self.count));
        }
        let end = u32::from(self.start) + u32::from(self.count);
        let inside = |addr: u16, words: u16| {
            u32::from(addr) >= u32::from(self.start) && u32::from(addr) + u32::from(words) <= end
        };
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut claim = |metric: &str, at: &str, p: &mut Vec<String>| {
            if let Some(other) = seen.insert(metric.to_owned(), at.to_owned()) {
                if other != at {
                    p.push(format!("{at}: `{metric}` is already set by {other}"));
                }
            }
        };
        for v in &self.values {
            let at = format!("values `{}`", v.metric);
            match vocabulary::metric(&v.metric).map(|m| m.kind) {
                Some(Kind::Number { .. }) => {}
                Some(_) => p.push(format!("{at}: not a numeric metric")),
                None => p.push(format!("{at}: unknown metric")),
            }
            if !inside(v.address, v.kind.words()) {
                p.push(format!(
                    "{at}: register {} ({} words) is outside the block {}..{end}",
                    v.address,
                    v.kind.words(),
                    self.start
                ));
            }
            if let Some(d) = v.decimals_address {
                if !inside(d, 1) {
                    p.push(format!("{at}: decimals register {d} is outside the block"));
                }
            }
            if !v.scale.is_finite() || v.scale == 0.0 || !v.offset.is_finite() {
                p.push(format!("{at}: scale must be finite and non-zero, offset finite"));
            }
            claim(&v.metric, &at, &mut p);
        }
        let mut status = Vec::new();
        for s in &self.status {
            let at = format!("status at register {}", s.address);
            if !inside(s.address, 1) {
                p.push(format!("{at}: outside the block"));
            }
            if s.shift > 15 {
                p.push(format!("{at}: shift must be 0..=15"));
            }
            if s.codes.is_empty() {
                p.push(format!("{at}: no codes"));
            }
            let mut codes = BTreeMap::new();
            for (k, table) in &s.codes {
                let code = match k.parse::<u16>() {
                    Ok(c) if c & !s.mask == 0 => c,
                    _ => {
                        p.push(format!(
                            "{at}: code `{k}` is not a number within the mask {:#06x}",
                            s.mask
                        ));
                        continue;
                    }
                };
                let list = metric_list(table, &format!("{at} code {k}"), &mut p);
                for (m, _) in &list {
                    claim(m, &at, &mut p);
                }
                codes.insert(code, list);
            }
            let otherwise = s
                .otherwise
                .as_ref()
                .map(|t| metric_list(t, &format!("{at} otherwise"), &mut p));
            status.push(CompiledStatus {
                field: s.clone(),
                codes,
                otherwise,
            });
        }
        for c in &self.checks {
            if !inside(c.address, 1) {
                p.push(format!("check at register {}: outside the block", c.address));
            }
        }
        if self.values.is_empty() && self.status.is_empty() {
            p.push("reads nothing: no values and no status".to_owned());
        }
        if !p.is_empty() {
            return Err(p);
        }
        Ok(CompiledMap {
            name: self.name.clone(),
            function,
            start: self.start,
            count: self.count,
            values: self.values.clone(),
            status,
            checks: self.checks.clone(),
        })
    }
}

impl CompiledMap {
    /// The metrics one poll's registers say.
    pub fn decode(&self, regs: &[u16]) -> Result<BTreeMap<String, Value>, MapError> {
        if regs.len() != usize::from(self.count) {
            return Err(MapError::Length {
                expected: usize::from(self.count),
                got: regs.len(),
            });
        }
        // Validated: every address lies in the block.
        let reg = |addr: u16| regs.get(usize::from(addr - self.start)).copied().unwrap_or(0);
        for c in &self.checks {
            let read = reg(c.address);
            if read & c.mask != c.equals & c.mask {
                return Err(MapError::Check {
                    address: c.address,
                    what: c.what.clone(),
                    read,
                    expected: c.equals,
                });
            }
        }
        let mut out = BTreeMap::new();
        for v in &self.values {
            let (a, b) = (reg(v.address), reg(v.address.saturating_add(1)));
            let (hi, lo) = match v.word_order {
                WordOrder::Big => (a, b),
                WordOrder::Little => (b, a),
            };
            let both = (u32::from(hi) << 16) | u32::from(lo);
            let raw = match v.kind {
                RegType::U16 => f64::from(a),
                RegType::S16 => f64::from(a as i16),
                RegType::U32 => f64::from(both),
                RegType::S32 => f64::from(both as i32),
                RegType::F32 => f64::from(f32::from_bits(both)),
            };
            let divisor = match v.decimals_address {
                // More than 6 decimals is no real device: treat as garbage, not as a tiny value.
                Some(d) => match reg(d) {
                    n @ 0..=6 => 10f64.powi(i32::from(n)),
                    n => {
                        return Err(MapError::Value {
                            address: d,
                            source: vocabulary::VocabularyError::OutOfRange {
                                metric: format!("{} decimals", v.metric),
                                value: f64::from(n),
                                min: 0.0,
                                max: 6.0,
                            },
                        })
                    }
                },
                None => 1.0,
            };
            let value = Value::Num(raw * v.scale / divisor + v.offset);
            vocabulary::check(&v.metric, &value).map_err(|source| MapError::Value {
                address: v.address,
                source,
            })?;
            out.insert(v.metric.clone(), value);
        }
        for CompiledStatus {
            field: s,
            codes,
            otherwise,
        } in &self.status
        {
            let code = (reg(s.address) >> s.shift) & s.mask;
            let set = match (codes.get(&code), otherwise) {
                (Some(set), _) => set,
                (None, Some(set)) => set,
                (None, None) => {
                    return Err(MapError::UnknownStatus {
                        address: s.address,
                        code,
                    })
                }
            };
            for (m, v) in set {
                out.insert(m.clone(), v.clone());
            }
        }
        Ok(out)
    }
}

/// The shipped maps, compiled; a broken shipped file is a build defect caught by the tests.
pub fn builtin() -> Vec<RegisterMap> {
    toml::from_str::<MapsFile>(BUILTIN_MAPS)
        .map(|f| f.modbus_maps)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(name: &str) -> CompiledMap {
        let maps = toml::from_str::<MapsFile>(BUILTIN_MAPS).expect("shipped maps parse");
        let m = maps
            .modbus_maps
            .into_iter()
            .find(|m| m.name == name)
            .expect("map shipped");
        m.compile().expect("shipped map valid")
    }

    fn f32_words_little(v: f32) -> [u16; 2] {
        let b = v.to_bits();
        [(b & 0xFFFF) as u16, (b >> 16) as u16]
    }

    #[test]
    fn every_shipped_map_compiles() {
        let maps = builtin();
        assert!(maps.len() >= 2);
        for m in maps {
            if let Err(p) = m.compile() {
                panic!("map {}: {p:?}", m.name);
            }
        }
    }

    #[test]
    fn generic_point_type_detector() {
        let m = compiled("generic_gas_lel");
        // 12.5 %LEL with one decimal, %LEL unit, low alarm, setpoints 20.0/50.0, methane.
        let r = m.decode(&[125, 1, 1, 1, 200, 500, 1]).expect("decodes");
        assert_eq!(r.get("gas_lel"), Some(&Value::Num(12.5)));
        assert_eq!(r.get("gas_alarm"), Some(&Value::Bool(true)));
        assert_eq!(r.get("alarm_level_dev"), Some(&Value::Text("low".into())));
        assert_eq!(r.get("gas_type"), Some(&Value::Text("methane".into())));
        let pre = m.decode(&[400, 1, 1, 4, 200, 500, 1]).expect("decodes");
        assert_eq!(pre.get("preheat"), Some(&Value::Bool(true)));
        let fault = m.decode(&[0, 1, 1, 3, 200, 500, 1]).expect("decodes");
        assert_eq!(fault.get("fault"), Some(&Value::Bool(true)));
        // The unit register says ppm: refused, not read as %LEL.
        let e = m.decode(&[125, 1, 0, 0, 200, 500, 1]).expect_err("ppm is not %LEL");
        assert_eq!(e.reason(), "check_failed");
        // A status code the vendor never documented is refused, not taken as normal.
        assert_eq!(
            m.decode(&[0, 1, 1, 9, 200, 500, 1]).expect_err("unknown").reason(),
            "unknown_status"
        );
        // 150.0 %LEL is outside the physical range.
        assert_eq!(
            m.decode(&[1500, 1, 1, 2, 200, 500, 1]).expect_err("range").reason(),
            "out_of_range"
        );
    }

    #[test]
    fn honeywell_midas_word_swapped_float_and_bits() {
        let m = compiled("honeywell_midas_lel");
        let conc = f32_words_little(27.3);
        let low = f32_words_little(10.0);
        let high = f32_words_little(25.0);
        // monitoring (1), no fault, low+high alarm (b6, b7), heartbeat b11 set.
        let status = 1 | (1 << 6) | (1 << 7) | (1 << 11);
        let regs = [
            status, 0x0101, conc[0], conc[1], 28, 0, 0x0800, 25, 8760, 3, 500, 0, low[0], low[1], high[0], high[1],
        ];
        let r = m.decode(&regs).expect("decodes");
        assert_eq!(r.get("gas_lel"), Some(&Value::Num(f64::from(27.3f32))));
        assert_eq!(r.get("alarm_level_dev"), Some(&Value::Text("high".into())));
        assert_eq!(r.get("gas_alarm"), Some(&Value::Bool(true)));
        assert_eq!(r.get("heartbeat"), Some(&Value::Bool(true)));
        assert_eq!(r.get("preheat"), Some(&Value::Bool(false)));
        assert_eq!(r.get("fault"), Some(&Value::Bool(false)));
        assert_eq!(r.get("temperature"), Some(&Value::Num(25.0)));
        // Warm-up, instrument fault.
        let mut warm = regs;
        warm[0] = 2 << 4;
        let r = m.decode(&warm).expect("decodes");
        assert_eq!(r.get("preheat"), Some(&Value::Bool(true)));
        assert_eq!(r.get("fault"), Some(&Value::Bool(true)));
        assert_eq!(r.get("gas_alarm"), Some(&Value::Bool(false)));
        // Read in the wrong word order the same float is garbage far outside 0..100 %LEL.
        let mut swapped = regs;
        swapped.swap(2, 3);
        assert!(m.decode(&swapped).is_err());
    }

    #[test]
    fn word_orders_and_types() {
        let map = RegisterMap {
            name: "t".into(),
            model: String::new(),
            function: 4,
            start: 10,
            count: 4,
            values: vec![
                ValueField {
                    metric: "temperature".into(),
                    address: 10,
                    kind: RegType::S16,
                    word_order: WordOrder::Big,
                    scale: 0.1,
                    offset: 0.0,
                    decimals_address: None,
                },
                ValueField {
                    metric: "co_ppm".into(),
                    address: 11,
                    kind: RegType::U32,
                    word_order: WordOrder::Big,
                    scale: 1.0,
                    offset: 0.0,
                    decimals_address: None,
                },
            ],
            status: Vec::new(),
            checks: Vec::new(),
        };
        let m = map.compile().expect("valid");
        assert_eq!(m.function, Function::Input);
        let r = m.decode(&[(-55i16) as u16, 0x0000, 0x0120, 0]).expect("decodes");
        assert_eq!(r.get("temperature"), Some(&Value::Num(-5.5)));
        assert_eq!(r.get("co_ppm"), Some(&Value::Num(288.0)));
        assert_eq!(m.decode(&[0, 0]).expect_err("short").reason(), "length");
    }

    #[test]
    fn invalid_maps_list_every_problem() {
        let text = r#"
[[modbus_maps]]
name = "bad"
function = 6
count = 3
[[modbus_maps.values]]
metric = "gas_lel"
address = 2
type = "f32"
[[modbus_maps.values]]
metric = "colour"
address = 0
[[modbus_maps.status]]
address = 1
mask = 3
codes = { "0" = { fault = "no" }, "7" = { fault = true } }
"#;
        let maps: MapsFile = toml::from_str(text).expect("shape parses");
        let problems = maps.modbus_maps[0].compile().expect_err("invalid");
        assert!(problems.len() >= 4, "{problems:?}");
        let all = problems.join("\n");
        assert!(all.contains("function 6"), "{all}");
        assert!(all.contains("outside the block"), "{all}");
        assert!(all.contains("unknown metric"), "{all}");
        assert!(all.contains("code `7`"), "{all}");
    }

    #[test]
    fn any_registers_decode_without_panic() {
        let maps: Vec<CompiledMap> = builtin().iter().filter_map(|m| m.compile().ok()).collect();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..50_000 {
            for m in &maps {
                let regs: Vec<u16> = (0..m.count)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        // Bias towards small values so the status tables and checks are met often.
                        if x % 3 == 0 {
                            (x >> 20) as u16 % 8
                        } else {
                            (x >> 24) as u16
                        }
                    })
                    .collect();
                if let Ok(r) = m.decode(&regs) {
                    for (k, v) in &r {
                        assert!(vocabulary::check(k, v).is_ok(), "{k} = {v:?}");
                    }
                }
            }
        }
    }
}
