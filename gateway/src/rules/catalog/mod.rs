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
//!
//! This module holds the validated model ([`RuleSet`], [`Rule`], [`Condition`], [`Selector`])
//! and its defaults; `file.rs` the file's TOML tables, `validate.rs` the checks of the defaults,
//! windows and entries, `kinds.rs` what each kind of entry takes and builds.

mod file;
mod kinds;
mod validate;

use std::path::Path;

use serde::Deserialize;

use super::output::Priority;
use crate::diagnostics::{parse_all, ConfigError, ConfigErrors};
use crate::reading::Value;
use crate::registry::UNREGISTERED_CLASS;
use crate::site_time::SiteTime;
use file::RulesFile;

/// Escalation tiers (s after raising, while unacknowledged) per priority: R19 (docs/rules.md).
pub const DEFAULT_ESCALATION_P1_S: &[u64] = &[60, 180];
pub const DEFAULT_ESCALATION_P2_S: &[u64] = &[180, 600];
pub const DEFAULT_ESCALATION_P3_S: &[u64] = &[1800];
pub const DEFAULT_ESCALATION_P4_S: &[u64] = &[];
/// The tiers above, indexed by [`Priority::index`].
pub const DEFAULT_ESCALATION_S: [&[u64]; 4] = [
    DEFAULT_ESCALATION_P1_S,
    DEFAULT_ESCALATION_P2_S,
    DEFAULT_ESCALATION_P3_S,
    DEFAULT_ESCALATION_P4_S,
];
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
            escalation_s: default_escalation_s(),
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

/// The default escalation tiers (R19) per priority, indexed by [`Priority::index`].
pub fn default_escalation_s() -> [Vec<u64>; 4] {
    DEFAULT_ESCALATION_S.map(|tiers| tiers.to_vec())
}

/// Whether minute-of-day `t` lies in `[start, end)`, the window spanning midnight when end < start.
fn in_daily(t: i64, start: i64, end: i64) -> bool {
    if start <= end {
        start <= t && t < end
    } else {
        t >= start || t < end
    }
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
        set.apply_maintenance(file.maintenance, &mut d);
        set.apply_rules(file.rules, &mut d);
        d.into_result(set)
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
        &self.escalation_s[p.index()]
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
                && m.start_ms.is_none_or(|s| now_ms >= s)
                && m.end_ms.is_none_or(|e| now_ms < e)
                && m.daily.is_none_or(|(s, e)| in_daily(self.local_minute(now_ms), s, e))
        })
    }
}
