//! The rules file: one `[defaults]` table, optional `[[maintenance]]` windows and the
//! `[[rules]]` entries. Validated like the rest of the configuration: unknown keys, unknown
//! metrics, a metric of the wrong type for the kind, unknown classes or care flags and bad
//! priorities are all reported at once, each with its line and key.
//!
//! A rule that needs more than one condition (R14: %LEL threshold **or** the device's own alarm
//! flag; R12: device alarm, 58 degC, rate of rise, 50 degC pre-alarm) is written as several
//! entries with the same `id`. The engine treats the entries of one id as one rule: one episode
//! per (id, device), raised by whichever entry fires first, raised again only with a higher
//! priority (or by an entry marked `reraise`), cleared when every entry that fired has cleared.
//! Entries sharing an id must agree on `name` and `hazard`.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::output::Priority;
use crate::diagnostics::{parse_all, ConfigError, ConfigErrors, Diagnostics};
use crate::reading::Value;
use crate::registry::{is_valid_id, CARE_FLAGS, CLASSES, UNREGISTERED_CLASS};
use crate::site_time::SiteTime;
use crate::vocabulary::{self, Kind as MetricKind};

/// Escalation tiers (s after raising, while unacknowledged) per priority: R19 (docs/rules.md).
pub const DEFAULT_ESCALATION_P1_S: &[u64] = &[60, 180];
pub const DEFAULT_ESCALATION_P2_S: &[u64] = &[180, 600];
pub const DEFAULT_ESCALATION_P3_S: &[u64] = &[1800];
pub const DEFAULT_ESCALATION_P4_S: &[u64] = &[];
/// Alerts of one room and hazard within this window become one incident (R20).
pub const DEFAULT_CORRELATION_WINDOW_S: u64 = 120;
/// A repeat of the same (device, rule) within this time is not notified again (R20).
pub const DEFAULT_RENOTIFY_SUPPRESS_S: u64 = 60;
/// Offline = silent longer than this many expected intervals (R17, docs/rules.md).
pub const DEFAULT_OFFLINE_MULTIPLE: u32 = 3;
/// The night window of R5/R6, in the site's local time.
pub const DEFAULT_NIGHT_START: &str = "22:00";
pub const DEFAULT_NIGHT_END: &str = "06:00";
/// Boolean metrics that, while true, suppress threshold, rate and CO-curve rules (R20, docs/rules.md).
pub const DEFAULT_SUPPRESS_FLAGS: &[&str] = &["preheat", "test"];
/// Readings that must show a condition before its hold completes: the condition seen when its
/// window starts and confirmed by at least one later reading. One reading followed by silence is
/// not a condition that held; a silent device is the absence rule's business.
pub const DEFAULT_MIN_READINGS: u32 = 2;
/// Span over which a rate of rise is measured when the rule does not say.
pub const DEFAULT_RATE_WINDOW_S: u64 = 60;
/// Placeholders a message may use.
pub const PLACEHOLDERS: &[&str] = &["room", "device", "value", "resident", "metric"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    /// Engine-wide settings and the numbers the alert manager uses (escalation, correlation).
    #[serde(default)]
    defaults: DefaultsFile,
    /// Maintenance windows: threshold, rate, CO-curve and absence rules are suppressed for the
    /// devices or rooms listed while a window is open.
    #[serde(default)]
    maintenance: Vec<MaintenanceFile>,
    /// The rule entries; entries sharing an `id` form one rule (any of them raises it).
    #[serde(default)]
    rules: Vec<RuleFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsFile {
    /// Escalation tiers per priority, seconds after raising while unacknowledged (R19).
    #[serde(default)]
    escalation_s: EscalationFile,
    /// Alerts of one room and hazard within this many seconds become one incident (R20).
    #[serde(default)]
    correlation_window_s: Option<u64>,
    /// A repeat of the same (device, rule) within this many seconds is not notified again (R20).
    #[serde(default)]
    renotify_suppress_s: Option<u64>,
    /// A device is offline when silent longer than this many times its registry `interval_s`.
    #[serde(default)]
    offline_multiple: Option<u32>,
    /// Start of the night window, local time `HH:MM`.
    #[serde(default)]
    night_start: Option<String>,
    /// End of the night window, local time `HH:MM` (before the start: the window spans midnight).
    #[serde(default)]
    night_end: Option<String>,
    /// Pins the local time of night and maintenance windows to a fixed offset from UTC in
    /// minutes (480 = China Standard Time), without daylight saving. Unset (the default), they
    /// follow the site's `[site] timezone`.
    #[serde(default)]
    utc_offset_min: Option<i32>,
    /// Boolean metrics that, while a device reports them true, suppress its threshold, rate and
    /// CO-curve rules: the suppressed reading neither starts nor continues a window.
    #[serde(default)]
    suppress_flags: Option<Vec<String>>,
    /// Readings that must show a condition before its hold (`for_s`) completes, for entries
    /// with a hold that do not say (default 2).
    #[serde(default)]
    min_readings: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EscalationFile {
    /// P1 tiers, seconds.
    #[serde(default, rename = "P1")]
    p1: Option<Vec<u64>>,
    /// P2 tiers, seconds.
    #[serde(default, rename = "P2")]
    p2: Option<Vec<u64>>,
    /// P3 tiers, seconds.
    #[serde(default, rename = "P3")]
    p3: Option<Vec<u64>>,
    /// P4 tiers, seconds.
    #[serde(default, rename = "P4")]
    p4: Option<Vec<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceFile {
    /// Device ids under maintenance.
    #[serde(default)]
    devices: Vec<String>,
    /// Rooms under maintenance (every device in them).
    #[serde(default)]
    rooms: Vec<String>,
    /// One-off window start, ms since the epoch (inclusive).
    #[serde(default)]
    start_ms: Option<i64>,
    /// One-off window end, ms since the epoch (exclusive).
    #[serde(default)]
    end_ms: Option<i64>,
    /// Daily window start, local time `HH:MM`.
    #[serde(default)]
    daily_start: Option<String>,
    /// Daily window end, local time `HH:MM`.
    #[serde(default)]
    daily_end: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum KindFile {
    Threshold,
    State,
    Rate,
    CoCurve,
    Absence,
    LowBattery,
    Missing,
}

/// Whose care flags a rule's `care_flags` selector looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The device's own resident (a wearable, a bed sensor).
    #[default]
    Device,
    /// Any resident of the device's room (a room door has no resident of its own).
    Room,
}

/// When a rule may fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    #[default]
    Always,
    /// Only inside the night window of `[defaults]`.
    Night,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageFile {
    /// The level, in the metric's unit (inclusive).
    at_least: f64,
    /// How long the level must hold, seconds.
    #[serde(default)]
    for_s: u64,
    /// Priority of this stage (default: the rule's).
    #[serde(default)]
    priority: Option<Priority>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    /// Rule id (`R1`..`R18` in the shipped catalog): the alert's `rule`.
    id: String,
    /// Short upper-case name (`GAS_ALARM`).
    name: String,
    /// `threshold`, `state`, `rate`, `co_curve`, `absence`, `low_battery` or `missing`.
    kind: KindFile,
    /// `P1`..`P4`.
    priority: Priority,
    /// Hazard family for correlation: `fire`, `gas`, `co`, `fall`, `sos`, `wander`, `vitals`, `device`, ...
    hazard: String,
    /// The alert needs a person to resolve it (the clear condition only makes it resolvable).
    #[serde(default)]
    latching: bool,
    /// Staff on site may resolve it while the device still reports the condition (fall, SOS).
    #[serde(default)]
    person_centred: bool,
    /// Raise again when this entry fires while the rule's alert is already open at the same
    /// priority (a further step, such as R14's evacuate at 25 %LEL).
    #[serde(default)]
    reraise: bool,
    /// Chinese text; placeholders `{room}`, `{device}`, `{value}`, `{resident}`, `{metric}`.
    message: String,
    /// English text; same placeholders.
    message_en: String,
    /// Device classes this entry applies to (empty: every class).
    #[serde(default)]
    classes: Vec<String>,
    /// Device classes excluded.
    #[serde(default)]
    except_classes: Vec<String>,
    /// Registry zones this entry applies to (empty: every zone).
    #[serde(default)]
    zones: Vec<String>,
    /// Care flags that must all be present (see `care_flags_scope`).
    #[serde(default)]
    care_flags: Vec<String>,
    /// Care flags that exclude the device (R9 scale 1 is not for `copd` residents).
    #[serde(default)]
    except_care_flags: Vec<String>,
    /// `device` (default): the device's own resident; `room`: any resident of its room.
    #[serde(default)]
    care_flags_scope: Scope,
    /// `always` (default) or `night`.
    #[serde(default)]
    window: Window,
    /// The metric (threshold, state, rate, co_curve).
    #[serde(default)]
    metric: Option<String>,
    /// threshold: trigger at or above this level; rate: the floor the value must also reach.
    #[serde(default)]
    above: Option<f64>,
    /// threshold, low_battery: trigger at or below this level.
    #[serde(default)]
    below: Option<f64>,
    /// Clear when the value is strictly below this level (hysteresis under `above`).
    #[serde(default)]
    clear_below: Option<f64>,
    /// Clear when the value is strictly above this level (hysteresis over `below`).
    #[serde(default)]
    clear_above: Option<f64>,
    /// state: the values that trigger (booleans or enum strings).
    #[serde(default)]
    values: Option<Vec<toml::Value>>,
    /// state: the values that clear (default: any value not in `values`).
    #[serde(default)]
    clear_values: Option<Vec<toml::Value>>,
    /// How long the trigger condition must hold before raising, seconds (0: at once).
    #[serde(default)]
    for_s: Option<u64>,
    /// How long the clear condition must hold before clearing, seconds (0: at once).
    #[serde(default)]
    clear_for_s: Option<u64>,
    /// rate: the rise that triggers, metric units per minute.
    #[serde(default)]
    rise_per_min: Option<f64>,
    /// rate: the span the rise is measured over, seconds (default 60).
    #[serde(default)]
    rate_window_s: Option<u64>,
    /// co_curve: the stages, each `{ at_least, for_s, priority }`.
    #[serde(default)]
    stages: Option<Vec<StageFile>>,
    /// absence: overrides `defaults.offline_multiple`.
    #[serde(default)]
    offline_multiple: Option<u32>,
    /// Upgrade the open alert to rule `upgrade_to` after this many seconds if not cleared (R2 -> R1).
    #[serde(default)]
    upgrade_after_s: Option<u64>,
    /// The rule this one upgrades into: at `upgrade_after_s`, or when that rule fires for the
    /// same device while this one is open (the alert keeps its id).
    #[serde(default)]
    upgrade_to: Option<String>,
    /// Boolean metrics that hold this entry back while the device reports them true. Default:
    /// `defaults.suppress_flags` for threshold, rate and co_curve entries, none for the others.
    #[serde(default)]
    suppressed_by: Option<Vec<String>>,
    /// A flag of `suppressed_by` holds the entry back for at most this many seconds after it
    /// turned true; then the entry is judged as if the flag were not there (a detector left in
    /// test mode is not silenced for ever). Default: as long as the flag lasts.
    #[serde(default)]
    suppress_max_s: Option<u64>,
    /// Boolean metrics the device must report true for this entry to apply (a level while the
    /// detector preheats, a smoke alarm during a self-test). They never suppress the entry; once
    /// one of them ends, the entry clears.
    #[serde(default)]
    while_flags: Vec<String>,
    /// Readings that must show the condition before the hold completes (numeric kinds count
    /// readings carrying the metric; state kinds any reading of the device, since states are
    /// reported on change). Default: `defaults.min_readings` with a hold, 1 without one.
    #[serde(default)]
    min_readings: Option<u32>,
    /// The hold is the device's registry `warmup_s` when it sets one (a detector's warm-up time
    /// differs per model), else `for_s`.
    #[serde(default)]
    hold_from_warmup: bool,
    /// The entry applies only while the resident is at rest: the device does not report
    /// `motion_state = moving` and counted fewer than 100 steps over the last 10 minutes.
    #[serde(default)]
    at_rest: bool,
}

/// Which devices an entry applies to.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Selector {
    pub classes: Vec<String>,
    pub except_classes: Vec<String>,
    pub zones: Vec<String>,
    pub care_flags: Vec<String>,
    pub except_care_flags: Vec<String>,
    pub care_flags_scope: Scope,
}

impl Selector {
    /// Whether a device of `class` in `zone`, with the care flags of its resident and of its
    /// room, is selected.
    /// A device missing from the registry (class `unregistered`) is selected only by entries
    /// that name that class: it has no room, resident or expected interval a rule could use.
    pub fn matches(&self, class: &str, zone: &str, own_flags: &[String], room_flags: &[String]) -> bool {
        if class == UNREGISTERED_CLASS && !self.classes.iter().any(|c| c == class) {
            return false;
        }
        let flags = match self.care_flags_scope {
            Scope::Device => own_flags,
            Scope::Room => room_flags,
        };
        (self.classes.is_empty() || self.classes.iter().any(|c| c == class))
            && !self.except_classes.iter().any(|c| c == class)
            && (self.zones.is_empty() || self.zones.iter().any(|z| z == zone))
            && self.care_flags.iter().all(|f| flags.contains(f))
            && !self.except_care_flags.iter().any(|f| flags.contains(f))
    }
}

/// The condition of one entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Trigger: value >= `above` or value <= `below`. Clear: every given clear bound holds
    /// (value < `clear_below`, value > `clear_above`); without clear bounds, the trigger is false.
    Threshold {
        metric: String,
        above: Option<f64>,
        below: Option<f64>,
        clear_below: Option<f64>,
        clear_above: Option<f64>,
    },
    /// Trigger: value in `values`. Clear: value in `clear_values`, or not in `values`.
    State {
        metric: String,
        values: Vec<Value>,
        clear_values: Option<Vec<Value>>,
    },
    /// Trigger: rise over the last `window_ms` >= `rise_per_min` per minute and value >= `floor`.
    /// Clear: value < `clear_below` (or the trigger false).
    Rate {
        metric: String,
        rise_per_min: f64,
        floor: Option<f64>,
        window_ms: i64,
        clear_below: Option<f64>,
    },
    /// Trigger: silent longer than `multiple` x the registry interval. Clear: heard again.
    Absence { multiple: u32 },
    /// Trigger: `battery_low` true or `battery_pct` <= `below_pct`. Clear: `battery_low` not
    /// true and `battery_pct` > `clear_above_pct` (or not reported).
    LowBattery { below_pct: f64, clear_above_pct: f64 },
    /// Trigger: a device that reported `metric` before has not for `after_ms`, while it is
    /// otherwise heard (not offline by `offline_multiple` x its interval): a wearable online
    /// without heart rate is not on a wrist. Clear: the metric is reported again.
    Missing {
        metric: String,
        after_ms: i64,
        offline_multiple: u32,
    },
}

impl Condition {
    /// Whether device flags such as `preheat` and maintenance windows suppress it.
    pub fn suppressible(&self) -> bool {
        matches!(self, Condition::Threshold { .. } | Condition::Rate { .. })
    }

    /// The metric reported in triggers.
    pub fn metric(&self) -> Option<&str> {
        match self {
            Condition::Threshold { metric, .. } | Condition::State { metric, .. } | Condition::Rate { metric, .. } => {
                Some(metric)
            }
            Condition::Missing { metric, .. } => Some(metric),
            Condition::Absence { .. } => None,
            Condition::LowBattery { .. } => Some("battery_pct"),
        }
    }
}

/// One validated entry (a `co_curve` entry becomes one entry per stage).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub id: String,
    /// Unique per entry, stable across restarts while the file is unchanged: `R12#2`, `R15#0.1`.
    pub key: String,
    pub name: String,
    pub priority: Priority,
    pub hazard: String,
    pub latching: bool,
    pub person_centred: bool,
    pub reraise: bool,
    pub message: String,
    pub message_en: String,
    pub select: Selector,
    pub window: Window,
    pub condition: Condition,
    pub for_ms: i64,
    pub clear_for_ms: i64,
    pub upgrade_to: Option<String>,
    pub upgrade_after_ms: Option<i64>,
    /// Flags that hold the entry back while true (see `suppress_max_ms`).
    pub suppressed_by: Vec<String>,
    /// How long after a flag of `suppressed_by` turned true it stops holding the entry back.
    pub suppress_max_ms: Option<i64>,
    /// Flags that must all be true for the entry to apply.
    pub while_flags: Vec<String>,
    /// Readings that must show the condition before the hold completes.
    pub min_readings: u32,
    /// The hold is the device's registry `warmup_s` when it sets one.
    pub hold_from_warmup: bool,
    /// Applies only while the resident is at rest (no movement, few steps).
    pub at_rest: bool,
}

/// A maintenance window.
#[derive(Debug, Clone, PartialEq)]
pub struct Maintenance {
    pub devices: Vec<String>,
    pub rooms: Vec<String>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    /// Daily window in local minutes of the day.
    pub daily: Option<(i64, i64)>,
}

/// The validated rules file.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSet {
    rules: Vec<Rule>,
    maintenance: Vec<Maintenance>,
    escalation_s: [Vec<u64>; 4],
    correlation_window_s: u64,
    renotify_suppress_s: u64,
    offline_multiple: u32,
    night_start_min: i64,
    night_end_min: i64,
    /// Local time of the night and daily maintenance windows.
    site_time: SiteTime,
    /// Whether the rules file pinned a fixed offset (the site's zone then does not apply).
    offset_pinned: bool,
    suppress_flags: Vec<String>,
    min_readings: u32,
}

impl Default for RuleSet {
    /// No rules, default numbers.
    fn default() -> Self {
        RuleSet {
            rules: Vec::new(),
            maintenance: Vec::new(),
            escalation_s: [
                DEFAULT_ESCALATION_P1_S.to_vec(),
                DEFAULT_ESCALATION_P2_S.to_vec(),
                DEFAULT_ESCALATION_P3_S.to_vec(),
                DEFAULT_ESCALATION_P4_S.to_vec(),
            ],
            correlation_window_s: DEFAULT_CORRELATION_WINDOW_S,
            renotify_suppress_s: DEFAULT_RENOTIFY_SUPPRESS_S,
            offline_multiple: DEFAULT_OFFLINE_MULTIPLE,
            night_start_min: 22 * 60,
            night_end_min: 6 * 60,
            site_time: SiteTime::default(),
            offset_pinned: false,
            suppress_flags: DEFAULT_SUPPRESS_FLAGS.iter().map(|s| (*s).to_owned()).collect(),
            min_readings: DEFAULT_MIN_READINGS,
        }
    }
}

fn priority_index(p: Priority) -> usize {
    match p {
        Priority::P1 => 0,
        Priority::P2 => 1,
        Priority::P3 => 2,
        Priority::P4 => 3,
    }
}

/// Parses `HH:MM` into minutes of the day.
fn parse_hhmm(s: &str) -> Option<i64> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: i64 = h.parse().ok()?;
    let m: i64 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// Whether minute-of-day `t` lies in `[start, end)`, the window spanning midnight when end < start.
fn in_daily(t: i64, start: i64, end: i64) -> bool {
    if start <= end {
        start <= t && t < end
    } else {
        t >= start || t < end
    }
}

fn toml_to_value(v: &toml::Value) -> Option<Value> {
    match v {
        toml::Value::Boolean(b) => Some(Value::Bool(*b)),
        toml::Value::String(s) => Some(Value::Text(s.clone())),
        toml::Value::Integer(i) => Some(Value::Num(*i as f64)),
        toml::Value::Float(f) => Some(Value::Num(*f)),
        _ => None,
    }
}

/// Unknown `{placeholder}`s in a message.
fn unknown_placeholders(message: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = message;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            out.push(name.to_owned());
        }
        rest = &after[close + 1..];
    }
    out
}

impl RuleSet {
    pub fn load(path: &Path) -> Result<RuleSet, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_owned(),
                line: 0,
                key: String::new(),
                message: format!("cannot read the rules file: {e}"),
            }])
        })?;
        RuleSet::parse(path, &text)
    }

    /// Parses and validates rules text; every error at once, each with its line and key.
    pub fn parse(path: &Path, text: &str) -> Result<RuleSet, ConfigErrors> {
        let (file, mut d) = parse_all::<RulesFile>(path, text);
        let Some(file) = file else {
            return Err(ConfigErrors(d.errors));
        };
        let mut set = RuleSet::default();
        set.apply_defaults(file.defaults, &mut d);
        for (i, m) in file.maintenance.into_iter().enumerate() {
            if let Some(m) = set.validate_maintenance(i, m, &mut d) {
                set.maintenance.push(m);
            }
        }
        let mut first_of_id: HashMap<String, (String, String)> = HashMap::new();
        let mut count_of_id: HashMap<String, usize> = HashMap::new();
        let mut upgrades: Vec<(usize, String, String)> = Vec::new();
        for (i, r) in file.rules.into_iter().enumerate() {
            let key = |k: &str| format!("rules.{i}.{k}");
            if !is_valid_id(&r.id) {
                d.at_key(&key("id"), format!("`{}` must match [A-Za-z0-9._:-]+", r.id));
            }
            match first_of_id.get(&r.id) {
                Some((name, hazard)) => {
                    if *name != r.name || *hazard != r.hazard {
                        d.at_key(
                            &key("id"),
                            format!(
                                "duplicate id `{}` with a different name or hazard: entries sharing an id are one rule \
                                 (any of them raises it) and must agree on `name` and `hazard`",
                                r.id
                            ),
                        );
                    }
                }
                None => {
                    first_of_id.insert(r.id.clone(), (r.name.clone(), r.hazard.clone()));
                }
            }
            let n = count_of_id.entry(r.id.clone()).or_insert(0);
            let part = *n;
            *n += 1;
            if let Some(to) = &r.upgrade_to {
                upgrades.push((i, r.id.clone(), to.clone()));
            }
            set.validate_rule(i, part, r, &mut d);
        }
        for (i, id, to) in upgrades {
            if !first_of_id.contains_key(&to) {
                d.at_key(&format!("rules.{i}.upgrade_to"), format!("no rule has id `{to}`"));
            } else if id == to {
                d.at_key(&format!("rules.{i}.upgrade_to"), "a rule cannot upgrade into itself");
            }
        }
        d.into_result(set)
    }

    fn apply_defaults(&mut self, f: DefaultsFile, d: &mut Diagnostics<'_>) {
        for (i, (name, tiers)) in [
            ("P1", f.escalation_s.p1),
            ("P2", f.escalation_s.p2),
            ("P3", f.escalation_s.p3),
            ("P4", f.escalation_s.p4),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(t) = tiers {
                if t.windows(2).any(|w| w[0] >= w[1]) || t.first() == Some(&0) {
                    d.at_key(
                        &format!("defaults.escalation_s.{name}"),
                        "tiers must be positive and strictly increasing",
                    );
                }
                self.escalation_s[i] = t;
            }
        }
        if let Some(v) = f.correlation_window_s {
            self.correlation_window_s = v;
        }
        if let Some(v) = f.renotify_suppress_s {
            self.renotify_suppress_s = v;
        }
        if let Some(v) = f.offline_multiple {
            if v == 0 {
                d.at_key("defaults.offline_multiple", "must be at least 1");
            }
            self.offline_multiple = v.max(1);
        }
        for (k, v, slot) in [
            ("night_start", f.night_start, &mut self.night_start_min),
            ("night_end", f.night_end, &mut self.night_end_min),
        ] {
            if let Some(v) = v {
                match parse_hhmm(&v) {
                    Some(m) => *slot = m,
                    None => d.at_key(&format!("defaults.{k}"), format!("`{v}` is not a local time HH:MM")),
                }
            }
        }
        if let Some(v) = f.utc_offset_min {
            if !(-720..=840).contains(&v) {
                d.at_key("defaults.utc_offset_min", "must be within -720..=840 minutes");
            }
            self.site_time = SiteTime::fixed(v);
            self.offset_pinned = true;
        }
        if let Some(flags) = f.suppress_flags {
            for flag in &flags {
                if vocabulary::metric(flag).map(|m| m.kind) != Some(MetricKind::Bool) {
                    d.at_key(
                        "defaults.suppress_flags",
                        format!("`{flag}` is not a boolean metric of the vocabulary"),
                    );
                }
            }
            self.suppress_flags = flags;
        }
        if let Some(n) = f.min_readings {
            if n == 0 {
                d.at_key("defaults.min_readings", "must be at least 1");
            }
            self.min_readings = n.max(1);
        }
    }

    fn validate_maintenance(&self, i: usize, m: MaintenanceFile, d: &mut Diagnostics<'_>) -> Option<Maintenance> {
        let key = |k: &str| format!("maintenance.{i}.{k}");
        let mut ok = true;
        if m.devices.is_empty() && m.rooms.is_empty() {
            d.at_key(&key("devices"), "name at least one device or room");
            ok = false;
        }
        let daily = match (&m.daily_start, &m.daily_end) {
            (None, None) => None,
            (Some(s), Some(e)) => match (parse_hhmm(s), parse_hhmm(e)) {
                (Some(s), Some(e)) => Some((s, e)),
                _ => {
                    d.at_key(&key("daily_start"), "daily_start and daily_end are local times HH:MM");
                    ok = false;
                    None
                }
            },
            _ => {
                d.at_key(&key("daily_start"), "give both daily_start and daily_end");
                ok = false;
                None
            }
        };
        if let (Some(s), Some(e)) = (m.start_ms, m.end_ms) {
            if e <= s {
                d.at_key(&key("end_ms"), "must be after start_ms");
                ok = false;
            }
        }
        if daily.is_none() && m.start_ms.is_none() && m.end_ms.is_none() {
            d.at_key(&key("start_ms"), "give start_ms/end_ms, daily_start/daily_end, or both");
            ok = false;
        }
        ok.then_some(Maintenance {
            devices: m.devices,
            rooms: m.rooms,
            start_ms: m.start_ms,
            end_ms: m.end_ms,
            daily,
        })
    }

    fn validate_rule(&mut self, i: usize, part: usize, r: RuleFile, d: &mut Diagnostics<'_>) {
        let key = |k: &str| format!("rules.{i}.{k}");
        let before = d.errors.len();
        if r.name.trim().is_empty() {
            d.at_key(&key("name"), "must not be empty");
        }
        if r.hazard.trim().is_empty() {
            d.at_key(&key("hazard"), "must not be empty");
        }
        for (k, m) in [("message", &r.message), ("message_en", &r.message_en)] {
            if m.trim().is_empty() {
                d.at_key(&key(k), "must not be empty");
            }
            for p in unknown_placeholders(m) {
                d.at_key(
                    &key(k),
                    format!("unknown placeholder `{{{p}}}`; one of {}", PLACEHOLDERS.join(", ")),
                );
            }
        }
        for (k, list) in [("classes", &r.classes), ("except_classes", &r.except_classes)] {
            for c in list {
                if !CLASSES.contains(&c.as_str()) && c != UNREGISTERED_CLASS {
                    d.at_key(
                        &key(k),
                        format!(
                            "unknown class `{c}`; one of {}, {UNREGISTERED_CLASS}",
                            CLASSES.join(", ")
                        ),
                    );
                }
            }
        }
        for (k, list) in [
            ("care_flags", &r.care_flags),
            ("except_care_flags", &r.except_care_flags),
        ] {
            for f in list {
                if !CARE_FLAGS.contains(&f.as_str()) {
                    d.at_key(
                        &key(k),
                        format!("unknown care flag `{f}`; one of {}", CARE_FLAGS.join(", ")),
                    );
                }
            }
        }
        if r.upgrade_after_s.is_some() && r.upgrade_to.is_none() {
            d.at_key(&key("upgrade_after_s"), "needs `upgrade_to`");
        }
        for (k, list) in [
            ("suppressed_by", r.suppressed_by.as_deref().unwrap_or_default()),
            ("while_flags", r.while_flags.as_slice()),
        ] {
            for flag in list {
                if vocabulary::metric(flag).map(|m| m.kind) != Some(MetricKind::Bool) {
                    d.at_key(&key(k), format!("`{flag}` is not a boolean metric of the vocabulary"));
                }
            }
        }
        let flag_kinds = matches!(
            r.kind,
            KindFile::Threshold | KindFile::State | KindFile::Rate | KindFile::CoCurve
        );
        for (k, given) in [
            ("suppressed_by", r.suppressed_by.is_some()),
            ("suppress_max_s", r.suppress_max_s.is_some()),
            ("while_flags", !r.while_flags.is_empty()),
        ] {
            if given && !flag_kinds {
                d.at_key(&key(k), format!("`{k}` does not apply to this kind of rule"));
            }
        }
        if r.suppress_max_s.is_some() && r.suppressed_by.as_ref().is_some_and(Vec::is_empty) {
            d.at_key(&key("suppress_max_s"), "needs a flag in `suppressed_by`");
        }
        if r.min_readings == Some(0) {
            d.at_key(&key("min_readings"), "must be at least 1");
        }
        if (r.min_readings.is_some() || r.hold_from_warmup) && matches!(r.kind, KindFile::Absence) {
            d.at_key(&key("min_readings"), "an absence rule counts silence, not readings");
        }
        if r.hold_from_warmup && r.for_s.is_none() {
            d.at_key(
                &key("hold_from_warmup"),
                "needs `for_s`, the hold of devices without `warmup_s`",
            );
        }

        // Which optional fields each kind takes; any other is an error.
        let given: [(&str, bool); 13] = [
            ("metric", r.metric.is_some()),
            ("above", r.above.is_some()),
            ("below", r.below.is_some()),
            ("clear_below", r.clear_below.is_some()),
            ("clear_above", r.clear_above.is_some()),
            ("values", r.values.is_some()),
            ("clear_values", r.clear_values.is_some()),
            ("for_s", r.for_s.is_some()),
            ("clear_for_s", r.clear_for_s.is_some()),
            ("rise_per_min", r.rise_per_min.is_some()),
            ("rate_window_s", r.rate_window_s.is_some()),
            ("stages", r.stages.is_some()),
            ("offline_multiple", r.offline_multiple.is_some()),
        ];
        let allowed: &[&str] = match r.kind {
            KindFile::Threshold => &[
                "metric",
                "above",
                "below",
                "clear_below",
                "clear_above",
                "for_s",
                "clear_for_s",
            ],
            KindFile::State => &["metric", "values", "clear_values", "for_s", "clear_for_s"],
            KindFile::Rate => &[
                "metric",
                "above",
                "clear_below",
                "for_s",
                "clear_for_s",
                "rise_per_min",
                "rate_window_s",
            ],
            KindFile::CoCurve => &["metric", "clear_below", "clear_for_s", "stages"],
            KindFile::Absence => &["offline_multiple"],
            KindFile::LowBattery => &["below", "clear_above", "for_s", "clear_for_s"],
            KindFile::Missing => &["metric", "for_s"],
        };
        for (k, present) in given {
            if present && !allowed.contains(&k) {
                d.at_key(&key(k), format!("`{k}` does not apply to this kind of rule"));
            }
        }

        // The metric, with the type the kind needs.
        let numeric_kind = matches!(r.kind, KindFile::Threshold | KindFile::Rate | KindFile::CoCurve);
        let metric = match (r.kind, &r.metric) {
            (KindFile::Absence | KindFile::LowBattery, _) => String::new(),
            (KindFile::CoCurve, None) => "co_ppm".to_owned(),
            (_, None) => {
                d.at_key(&key("kind"), "this kind of rule needs `metric`");
                String::new()
            }
            (_, Some(m)) => m.clone(),
        };
        let spec = if metric.is_empty() {
            None
        } else {
            match vocabulary::metric(&metric) {
                None => {
                    d.at_key(&key("metric"), format!("unknown metric `{metric}` (see vocabulary.rs)"));
                    None
                }
                Some(spec) => {
                    let is_num = matches!(spec.kind, MetricKind::Number { .. });
                    if numeric_kind && !is_num {
                        d.at_key(
                            &key("metric"),
                            format!("`{metric}` is not a number; this kind needs one"),
                        );
                    }
                    if r.kind == KindFile::State && is_num {
                        d.at_key(
                            &key("metric"),
                            format!(
                                "`{metric}` is a number: use a threshold rule; state rules match booleans and enums"
                            ),
                        );
                    }
                    Some(spec)
                }
            }
        };

        let mut convert_values = |k: &str, list: &Option<Vec<toml::Value>>| -> Option<Vec<Value>> {
            let list = list.as_ref()?;
            if list.is_empty() {
                d.at_key(&key(k), "must list at least one value");
            }
            let mut out = Vec::new();
            for v in list {
                let Some(value) = toml_to_value(v) else {
                    d.at_key(&key(k), format!("`{v}` is not a boolean or a string"));
                    continue;
                };
                if let Some(spec) = spec {
                    if !matches!(spec.kind, MetricKind::Number { .. }) {
                        if let Err(e) = vocabulary::check(spec.name, &value) {
                            d.at_key(&key(k), format!("{e}"));
                        }
                    }
                }
                out.push(value);
            }
            Some(out)
        };
        let values = convert_values("values", &r.values);
        let clear_values = convert_values("clear_values", &r.clear_values);

        let for_ms = r.for_s.unwrap_or(0) as i64 * 1000;
        let clear_for_ms = r.clear_for_s.unwrap_or(0) as i64 * 1000;
        let finite = |d: &mut Diagnostics<'_>, k: &str, v: Option<f64>| {
            if v.is_some_and(|v| !v.is_finite()) {
                d.at_key(&key(k), "must be a finite number");
            }
        };
        for (k, v) in [
            ("above", r.above),
            ("below", r.below),
            ("clear_below", r.clear_below),
            ("clear_above", r.clear_above),
            ("rise_per_min", r.rise_per_min),
        ] {
            finite(d, k, v);
        }

        let mut conditions: Vec<(String, Condition, Priority, i64)> = Vec::new();
        match r.kind {
            KindFile::Threshold => {
                if r.above.is_none() && r.below.is_none() {
                    d.at_key(&key("kind"), "a threshold rule needs `above`, `below` or both");
                }
                if let (Some(a), Some(c)) = (r.above, r.clear_below) {
                    if c > a {
                        d.at_key(&key("clear_below"), "must not be above `above` (hysteresis)");
                    }
                }
                if let (Some(b), Some(c)) = (r.below, r.clear_above) {
                    if c < b {
                        d.at_key(&key("clear_above"), "must not be below `below` (hysteresis)");
                    }
                }
                conditions.push((
                    String::new(),
                    Condition::Threshold {
                        metric: metric.clone(),
                        above: r.above,
                        below: r.below,
                        clear_below: r.clear_below,
                        clear_above: r.clear_above,
                    },
                    r.priority,
                    for_ms,
                ));
            }
            KindFile::State => match values {
                None => d.at_key(&key("kind"), "a state rule needs `values`"),
                Some(values) => conditions.push((
                    String::new(),
                    Condition::State {
                        metric: metric.clone(),
                        values,
                        clear_values,
                    },
                    r.priority,
                    for_ms,
                )),
            },
            KindFile::Rate => match r.rise_per_min {
                Some(rise) if rise > 0.0 => {
                    let window_s = r.rate_window_s.unwrap_or(DEFAULT_RATE_WINDOW_S);
                    if window_s == 0 {
                        d.at_key(&key("rate_window_s"), "must be at least 1");
                    }
                    conditions.push((
                        String::new(),
                        Condition::Rate {
                            metric: metric.clone(),
                            rise_per_min: rise,
                            floor: r.above,
                            window_ms: window_s.max(1) as i64 * 1000,
                            clear_below: r.clear_below,
                        },
                        r.priority,
                        for_ms,
                    ));
                }
                _ => d.at_key(&key("rise_per_min"), "a rate rule needs a positive `rise_per_min`"),
            },
            KindFile::CoCurve => match &r.stages {
                Some(stages) if !stages.is_empty() => {
                    for (s, stage) in stages.iter().enumerate() {
                        if !stage.at_least.is_finite() {
                            d.at_key(&key("stages"), "stage levels must be finite numbers");
                        }
                        if let Some(c) = r.clear_below {
                            if c > stage.at_least {
                                d.at_key(&key("clear_below"), "must not be above any stage level (hysteresis)");
                            }
                        }
                        conditions.push((
                            format!(".{s}"),
                            Condition::Threshold {
                                metric: metric.clone(),
                                above: Some(stage.at_least),
                                below: None,
                                clear_below: r.clear_below,
                                clear_above: None,
                            },
                            stage.priority.unwrap_or(r.priority),
                            stage.for_s as i64 * 1000,
                        ));
                    }
                }
                _ => d.at_key(&key("stages"), "a co_curve rule needs at least one stage"),
            },
            KindFile::Missing => match r.for_s {
                Some(after) if after > 0 => conditions.push((
                    String::new(),
                    Condition::Missing {
                        metric: metric.clone(),
                        after_ms: after as i64 * 1000,
                        offline_multiple: self.offline_multiple,
                    },
                    r.priority,
                    // The silence is the condition; no hold and no readings on top of it.
                    0,
                )),
                _ => d.at_key(
                    &key("for_s"),
                    "a missing rule needs `for_s`, how long the metric is missing",
                ),
            },
            KindFile::Absence => conditions.push((
                String::new(),
                Condition::Absence {
                    multiple: r.offline_multiple.unwrap_or(self.offline_multiple).max(1),
                },
                r.priority,
                0,
            )),
            KindFile::LowBattery => {
                let below_pct = r.below.unwrap_or(20.0);
                let clear_above_pct = r.clear_above.unwrap_or(30.0);
                if clear_above_pct < below_pct {
                    d.at_key(&key("clear_above"), "must not be below `below` (hysteresis)");
                }
                conditions.push((
                    String::new(),
                    Condition::LowBattery {
                        below_pct,
                        clear_above_pct,
                    },
                    r.priority,
                    for_ms,
                ));
            }
        }
        if d.errors.len() > before {
            return;
        }
        let select = Selector {
            classes: r.classes,
            except_classes: r.except_classes,
            zones: r.zones,
            care_flags: r.care_flags,
            except_care_flags: r.except_care_flags,
            care_flags_scope: r.care_flags_scope,
        };
        let suppressible = matches!(r.kind, KindFile::Threshold | KindFile::Rate | KindFile::CoCurve);
        let mut suppressed_by = r.suppressed_by.clone().unwrap_or_else(|| {
            if suppressible {
                self.suppress_flags.clone()
            } else {
                Vec::new()
            }
        });
        // A flag the entry is about never holds it back.
        suppressed_by.retain(|f| !r.while_flags.contains(f));
        for (suffix, condition, priority, for_ms) in conditions {
            let min_readings = r
                .min_readings
                .unwrap_or(if for_ms > 0 || r.hold_from_warmup {
                    self.min_readings
                } else {
                    1
                })
                .max(1);
            self.rules.push(Rule {
                id: r.id.clone(),
                key: format!("{}#{part}{suffix}", r.id),
                name: r.name.clone(),
                priority,
                hazard: r.hazard.clone(),
                latching: r.latching,
                person_centred: r.person_centred,
                reraise: r.reraise,
                message: r.message.clone(),
                message_en: r.message_en.clone(),
                select: select.clone(),
                window: r.window,
                condition,
                for_ms,
                clear_for_ms,
                upgrade_to: r.upgrade_to.clone(),
                upgrade_after_ms: r.upgrade_after_s.map(|s| s as i64 * 1000),
                suppressed_by: suppressed_by.clone(),
                suppress_max_ms: r.suppress_max_s.map(|s| s as i64 * 1000),
                while_flags: r.while_flags.clone(),
                min_readings,
                hold_from_warmup: r.hold_from_warmup,
                at_rest: r.at_rest,
            });
        }
    }

    /// Every entry, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// How many rules (distinct ids; an id may have several entries).
    pub fn len(&self) -> usize {
        self.ids().len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The distinct rule ids, in file order.
    pub fn ids(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in &self.rules {
            if !out.contains(&r.id.as_str()) {
                out.push(&r.id);
            }
        }
        out
    }

    pub fn maintenance(&self) -> &[Maintenance] {
        &self.maintenance
    }

    /// Escalation tiers (s after raising, while unacknowledged) for alerts of priority `p`.
    pub fn escalation_s(&self, p: Priority) -> &[u64] {
        &self.escalation_s[priority_index(p)]
    }

    /// Alerts of one room and hazard within this window become one incident (R20).
    pub fn correlation_window_ms(&self) -> i64 {
        self.correlation_window_s as i64 * 1000
    }

    /// A repeat of the same (device, rule) within this time is not notified again (R20).
    pub fn renotify_suppress_ms(&self) -> i64 {
        self.renotify_suppress_s as i64 * 1000
    }

    /// The site's local time (night and daily maintenance windows).
    pub fn site_time(&self) -> &SiteTime {
        &self.site_time
    }

    /// These rules on the site's time zone, unless the rules file pinned a fixed offset.
    pub fn on_site_time(mut self, site_time: SiteTime) -> Self {
        if !self.offset_pinned {
            self.site_time = site_time;
        }
        self
    }

    /// Whether the rules file pinned a fixed offset from UTC instead of the site's zone.
    pub fn offset_pinned(&self) -> bool {
        self.offset_pinned
    }

    pub fn offline_multiple(&self) -> u32 {
        self.offline_multiple
    }

    pub fn suppress_flags(&self) -> &[String] {
        &self.suppress_flags
    }

    /// Minute of the local day at gateway time `now_ms`.
    pub fn local_minute(&self, now_ms: i64) -> i64 {
        self.site_time.local_minute(now_ms)
    }

    /// Whether `now_ms` falls in the night window (site local time).
    pub fn is_night(&self, now_ms: i64) -> bool {
        in_daily(self.local_minute(now_ms), self.night_start_min, self.night_end_min)
    }

    /// Whether a maintenance window covers `device` (in `room`) at `now_ms`.
    pub fn in_maintenance(&self, device: &str, room: &str, now_ms: i64) -> bool {
        self.maintenance.iter().any(|m| {
            (m.devices.iter().any(|d| d == device) || (!room.is_empty() && m.rooms.iter().any(|r| r == room)))
                && m.start_ms.map_or(true, |s| now_ms >= s)
                && m.end_ms.map_or(true, |e| now_ms < e)
                && m.daily.map_or(true, |(s, e)| in_daily(self.local_minute(now_ms), s, e))
        })
    }
}
