//! The rules file as written: the TOML tables `serde` reads (`[defaults]`, `[[maintenance]]`,
//! `[[rules]]`), unknown keys refused, and the conversions of its text values (local times
//! `HH:MM`, state values). What the tables mean is checked in `validate.rs`.

use serde::Deserialize;

use super::{Scope, Window};
use crate::reading::Value;
use crate::rules::output::Priority;

/// The whole rules file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RulesFile {
    /// Engine-wide settings and the numbers the alert manager uses (escalation, correlation).
    #[serde(default)]
    pub(super) defaults: DefaultsFile,
    /// Maintenance windows: threshold, rate, CO-curve and absence rules are suppressed for the
    /// devices or rooms listed while a window is open.
    #[serde(default)]
    pub(super) maintenance: Vec<MaintenanceFile>,
    /// The rule entries; entries sharing an `id` form one rule (any of them raises it).
    #[serde(default)]
    pub(super) rules: Vec<RuleFile>,
}

/// `[defaults]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DefaultsFile {
    /// Escalation tiers per priority, seconds after raising while unacknowledged (R19).
    #[serde(default)]
    pub(super) escalation_s: EscalationFile,
    /// Alerts of one room and hazard within this many seconds become one incident (R20).
    #[serde(default)]
    pub(super) correlation_window_s: Option<u64>,
    /// A repeat of the same (device, rule) within this many seconds is not notified again (R20).
    #[serde(default)]
    pub(super) renotify_suppress_s: Option<u64>,
    /// A device is offline when silent longer than this many times its registry `interval_s`.
    #[serde(default)]
    pub(super) offline_multiple: Option<u32>,
    /// Start of the night window, local time `HH:MM`.
    #[serde(default)]
    pub(super) night_start: Option<String>,
    /// End of the night window, local time `HH:MM` (before the start: the window spans midnight).
    #[serde(default)]
    pub(super) night_end: Option<String>,
    /// Pins the local time of night and maintenance windows to a fixed offset from UTC in
    /// minutes (480 = China Standard Time), without daylight saving. Unset (the default), they
    /// follow the site's `[site] timezone`.
    #[serde(default)]
    pub(super) utc_offset_min: Option<i32>,
    /// Boolean metrics that, while a device reports them true, suppress its threshold, rate and
    /// CO-curve rules: the suppressed reading neither starts nor continues a window.
    #[serde(default)]
    pub(super) suppress_flags: Option<Vec<String>>,
    /// Readings that must show a condition before its hold (`for_s`) completes, for entries
    /// with a hold that do not say (default 2).
    #[serde(default)]
    pub(super) min_readings: Option<u32>,
}

/// `[defaults.escalation_s]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EscalationFile {
    /// P1 tiers, seconds.
    #[serde(default, rename = "P1")]
    pub(super) p1: Option<Vec<u64>>,
    /// P2 tiers, seconds.
    #[serde(default, rename = "P2")]
    pub(super) p2: Option<Vec<u64>>,
    /// P3 tiers, seconds.
    #[serde(default, rename = "P3")]
    pub(super) p3: Option<Vec<u64>>,
    /// P4 tiers, seconds.
    #[serde(default, rename = "P4")]
    pub(super) p4: Option<Vec<u64>>,
}

/// One `[[maintenance]]` window.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MaintenanceFile {
    /// Device ids under maintenance.
    #[serde(default)]
    pub(super) devices: Vec<String>,
    /// Rooms under maintenance (every device in them).
    #[serde(default)]
    pub(super) rooms: Vec<String>,
    /// One-off window start, ms since the epoch (inclusive).
    #[serde(default)]
    pub(super) start_ms: Option<i64>,
    /// One-off window end, ms since the epoch (exclusive).
    #[serde(default)]
    pub(super) end_ms: Option<i64>,
    /// Daily window start, local time `HH:MM`.
    #[serde(default)]
    pub(super) daily_start: Option<String>,
    /// Daily window end, local time `HH:MM`.
    #[serde(default)]
    pub(super) daily_end: Option<String>,
}

/// An entry's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum KindFile {
    Threshold,
    State,
    Rate,
    CoCurve,
    Absence,
    LowBattery,
    Missing,
}

/// One stage of a `co_curve` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StageFile {
    /// The level, in the metric's unit (inclusive).
    pub(super) at_least: f64,
    /// How long the level must hold, seconds.
    #[serde(default)]
    pub(super) for_s: u64,
    /// Priority of this stage (default: the rule's).
    #[serde(default)]
    pub(super) priority: Option<Priority>,
}

/// One `[[rules]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleFile {
    /// Rule id (`R1`..`R18` in the shipped catalog): the alert's `rule`.
    pub(super) id: String,
    /// Short upper-case name (`GAS_ALARM`).
    pub(super) name: String,
    /// `threshold`, `state`, `rate`, `co_curve`, `absence`, `low_battery` or `missing`.
    pub(super) kind: KindFile,
    /// `P1`..`P4`.
    pub(super) priority: Priority,
    /// Hazard family for correlation: `fire`, `gas`, `co`, `fall`, `sos`, `wander`, `vitals`, `device`, ...
    pub(super) hazard: String,
    /// The alert needs a person to resolve it (the clear condition only makes it resolvable).
    #[serde(default)]
    pub(super) latching: bool,
    /// Staff on site may resolve it while the device still reports the condition (fall, SOS).
    #[serde(default)]
    pub(super) person_centred: bool,
    /// Raise again when this entry fires while the rule's alert is already open at the same
    /// priority (a further step, such as R14's evacuate at 25 %LEL).
    #[serde(default)]
    pub(super) reraise: bool,
    /// Chinese text; placeholders `{room}`, `{device}`, `{value}`, `{resident}`, `{metric}`.
    pub(super) message: String,
    /// English text; same placeholders.
    pub(super) message_en: String,
    /// Device classes this entry applies to (empty: every class).
    #[serde(default)]
    pub(super) classes: Vec<String>,
    /// Device classes excluded.
    #[serde(default)]
    pub(super) except_classes: Vec<String>,
    /// Registry zones this entry applies to (empty: every zone).
    #[serde(default)]
    pub(super) zones: Vec<String>,
    /// Care flags that must all be present (see `care_flags_scope`).
    #[serde(default)]
    pub(super) care_flags: Vec<String>,
    /// Care flags that exclude the device (R9 scale 1 is not for `copd` residents).
    #[serde(default)]
    pub(super) except_care_flags: Vec<String>,
    /// `device` (default): the device's own resident; `room`: any resident of its room.
    #[serde(default)]
    pub(super) care_flags_scope: Scope,
    /// `always` (default) or `night`.
    #[serde(default)]
    pub(super) window: Window,
    /// The metric (threshold, state, rate, co_curve).
    #[serde(default)]
    pub(super) metric: Option<String>,
    /// threshold: trigger at or above this level; rate: the floor the value must also reach.
    #[serde(default)]
    pub(super) above: Option<f64>,
    /// threshold, low_battery: trigger at or below this level.
    #[serde(default)]
    pub(super) below: Option<f64>,
    /// Clear when the value is strictly below this level (hysteresis under `above`).
    #[serde(default)]
    pub(super) clear_below: Option<f64>,
    /// Clear when the value is strictly above this level (hysteresis over `below`).
    #[serde(default)]
    pub(super) clear_above: Option<f64>,
    /// state: the values that trigger (booleans or enum strings).
    #[serde(default)]
    pub(super) values: Option<Vec<toml::Value>>,
    /// state: the values that clear (default: any value not in `values`).
    #[serde(default)]
    pub(super) clear_values: Option<Vec<toml::Value>>,
    /// How long the trigger condition must hold before raising, seconds (0: at once).
    #[serde(default)]
    pub(super) for_s: Option<u64>,
    /// How long the clear condition must hold before clearing, seconds (0: at once).
    #[serde(default)]
    pub(super) clear_for_s: Option<u64>,
    /// rate: the rise that triggers, metric units per minute.
    #[serde(default)]
    pub(super) rise_per_min: Option<f64>,
    /// rate: the span the rise is measured over, seconds (default 60).
    #[serde(default)]
    pub(super) rate_window_s: Option<u64>,
    /// co_curve: the stages, each `{ at_least, for_s, priority }`.
    #[serde(default)]
    pub(super) stages: Option<Vec<StageFile>>,
    /// absence: overrides `defaults.offline_multiple`.
    #[serde(default)]
    pub(super) offline_multiple: Option<u32>,
    /// Upgrade the open alert to rule `upgrade_to` after this many seconds if not cleared (R2 -> R1).
    #[serde(default)]
    pub(super) upgrade_after_s: Option<u64>,
    /// The rule this one upgrades into: at `upgrade_after_s`, or when that rule fires for the
    /// same device while this one is open (the alert keeps its id).
    #[serde(default)]
    pub(super) upgrade_to: Option<String>,
    /// Boolean metrics that hold this entry back while the device reports them true. Default:
    /// `defaults.suppress_flags` for threshold, rate and co_curve entries, none for the others.
    #[serde(default)]
    pub(super) suppressed_by: Option<Vec<String>>,
    /// A flag of `suppressed_by` holds the entry back for at most this many seconds after it
    /// turned true; then the entry is judged as if the flag were not there (a detector left in
    /// test mode is not silenced for ever). Default: as long as the flag lasts.
    #[serde(default)]
    pub(super) suppress_max_s: Option<u64>,
    /// Boolean metrics the device must report true for this entry to apply (a level while the
    /// detector preheats, a smoke alarm during a self-test). They never suppress the entry; once
    /// one of them ends, the entry clears.
    #[serde(default)]
    pub(super) while_flags: Vec<String>,
    /// Readings that must show the condition before the hold completes (numeric kinds count
    /// readings carrying the metric; state kinds any reading of the device, since states are
    /// reported on change). Default: `defaults.min_readings` with a hold, 1 without one.
    #[serde(default)]
    pub(super) min_readings: Option<u32>,
    /// The hold is the device's registry `warmup_s` when it sets one (a detector's warm-up time
    /// differs per model), else `for_s`.
    #[serde(default)]
    pub(super) hold_from_warmup: bool,
    /// The entry applies only while the resident is at rest: the device does not report
    /// `motion_state = moving` and counted fewer than 100 steps over the last 10 minutes.
    #[serde(default)]
    pub(super) at_rest: bool,
}

/// Parses `HH:MM` into minutes of the day.
pub(super) fn parse_hhmm(s: &str) -> Option<i64> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: i64 = h.parse().ok()?;
    let m: i64 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// A state value of the file (`values`, `clear_values`) as a reading value; `None` for
/// arrays, tables and dates.
pub(super) fn toml_to_value(v: &toml::Value) -> Option<Value> {
    match v {
        toml::Value::Boolean(b) => Some(Value::Bool(*b)),
        toml::Value::String(s) => Some(Value::Text(s.clone())),
        toml::Value::Integer(i) => Some(Value::Num(*i as f64)),
        toml::Value::Float(f) => Some(Value::Num(*f)),
        _ => None,
    }
}
