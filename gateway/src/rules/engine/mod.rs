//! The evaluator: committed readings and clock ticks in, [`RuleOutput`]s out.
//!
//! Per device it keeps the last value of every metric a rule reads, rate samples, and per rule
//! entry a small state machine:
//!
//! ```text
//! idle --trigger true--> pending(since) --held for_s--> active --clear true--> clearing(since) --held clear_for_s--> idle
//!   ^------trigger false------'                           ^-------clear false------'
//! ```
//!
//! The trigger includes the entry's time window (night) and suppression (device flags such as
//! `preheat`, maintenance windows): a suppressed or out-of-window evaluation resets a pending
//! window, so it restarts from zero. Entries sharing an id form one episode per device: raised
//! once, raised again only with a higher priority (or by a `reraise` entry), cleared when every
//! entry that fired has cleared. Time is only ever the `now_ms` passed in.
//!
//! This module holds the engine, its serializable state and the evaluation loop over a
//! device's entries ([`Engine::observe`], [`Engine::tick`]); `evaluate.rs` the conditions and
//! the triggers they raise, `episodes.rs` the episodes the entries of one id form.

mod episodes;
mod evaluate;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::catalog::{Condition, RuleSet, Window};
use super::output::RuleOutput;
use crate::reading::{Record, Value};
use crate::registry::Registry;
use episodes::Episode;
use evaluate::{evaluate, resting, AT_REST_WINDOW_MS};

/// Rate samples kept per device and metric, at most (a 1 Hz device over a 60 s window, twice).
const MAX_RATE_SAMPLES: usize = 128;

/// The engine's whole state: serializable, so a restarted gateway continues its windows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    /// The last gateway time the engine saw (observe or tick): on restore, the gap to the new
    /// `now_ms` is the gateway's own outage, which does not count as device silence.
    now_ms: i64,
    devices: BTreeMap<String, DeviceState>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct DeviceState {
    /// Gateway time of the last reading (or of supervision start).
    last_seen_ms: i64,
    /// Location from the last record, for devices missing from the registry.
    class: String,
    building: String,
    room: String,
    zone: String,
    /// Last value of each metric some rule or suppression flag reads.
    values: BTreeMap<String, Value>,
    /// (device ts, value) samples of rate metrics, oldest first.
    samples: BTreeMap<String, VecDeque<(i64, f64)>>,
    /// Per rule entry (its key), only while not idle.
    parts: BTreeMap<String, PartState>,
    /// Per rule id, only while open.
    episodes: BTreeMap<String, Episode>,
    /// Gateway time each flag a rule reads (`preheat`, `test`, ...) turned true, while true.
    #[serde(default)]
    flags_since: BTreeMap<String, i64>,
    /// Gateway time each metric of a `missing` rule was last reported.
    #[serde(default)]
    metric_seen: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct PartState {
    /// The trigger condition has been true since (pending window or fired).
    since_ms: Option<i64>,
    active: bool,
    /// The clear condition has been true since (while active).
    clear_since_ms: Option<i64>,
    /// The condition still holds (trigger true, or active and not yet at its clear level).
    holds: bool,
    /// The trigger condition (with window and suppression) is true now.
    triggered: bool,
    /// Readings that showed the trigger condition since `since_ms` (see `Rule::min_readings`).
    #[serde(default)]
    readings: u32,
}

/// What the engine knows about one device while evaluating it.
/// Borrowed from the registry for registered devices (no allocation per device and tick), owned
/// for the rare unregistered one.
struct Context<'a> {
    device: &'a str,
    class: Cow<'a, str>,
    zone: Cow<'a, str>,
    room: Cow<'a, str>,
    resident: Option<&'a str>,
    own_flags: &'a [String],
    room_flags: &'a [String],
    interval_ms: Option<i64>,
    /// The device's own warm-up time (registry `warmup_s`).
    warmup_ms: Option<i64>,
    /// Where the device's silence counts from: its last reading, or the return of the serial
    /// link it hangs on if that came later; `None` while that link is down (the link-down alert
    /// speaks for every device on it).
    silence_from: Option<i64>,
}

/// The rules engine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    rules: Arc<RuleSet>,
    registry: Arc<Registry>,
    /// (id, entry indexes), in file order.
    groups: Vec<(String, Vec<usize>)>,
    /// Care flags of every resident of a (building, room).
    /// Care flags of each room's devices: building -> room -> flags.
    room_flags: HashMap<String, HashMap<String, Vec<String>>>,
    /// Metrics worth remembering: read by a rule or a suppression flag.
    used_metrics: Vec<String>,
    /// Longest rate window per rate metric.
    rate_windows: BTreeMap<String, i64>,
    /// Metrics of `missing` rules, whose last report time is kept per device.
    missing_metrics: Vec<String>,
    /// Device id to the id of the serial link it hangs on (`serial:<bus>`).
    links: Arc<HashMap<String, String>>,
    state: EngineState,
}

impl Engine {
    pub fn new(rules: Arc<RuleSet>, registry: Arc<Registry>, now_ms: i64) -> Engine {
        Engine::restore(rules, registry, EngineState::default(), now_ms)
    }

    /// Continues from a snapshot: running windows keep their start times (a condition true for
    /// 8 of its 10 minutes raises 2 minutes after the restart); device silence excludes the
    /// gateway's own outage; devices new in the registry start supervision now.
    pub fn restore(rules: Arc<RuleSet>, registry: Arc<Registry>, mut state: EngineState, now_ms: i64) -> Engine {
        let mut order: Vec<String> = Vec::new();
        let mut by_id: HashMap<String, Vec<usize>> = HashMap::new();
        let mut used_metrics: Vec<String> = rules.suppress_flags().to_vec();
        // Serial links' state, for the absence of the devices on them.
        used_metrics.push("link_up".to_owned());
        let mut rate_windows: BTreeMap<String, i64> = BTreeMap::new();
        let mut missing_metrics: Vec<String> = Vec::new();
        for (i, r) in rules.rules().iter().enumerate() {
            if r.at_rest {
                used_metrics.push("motion_state".to_owned());
                let w = rate_windows.entry("steps".to_owned()).or_insert(0);
                *w = (*w).max(AT_REST_WINDOW_MS);
            }
            if let Condition::Missing { metric, .. } = &r.condition {
                missing_metrics.push(metric.clone());
            }
            if !by_id.contains_key(&r.id) {
                order.push(r.id.clone());
            }
            used_metrics.extend(r.suppressed_by.iter().chain(&r.while_flags).cloned());
            by_id.entry(r.id.clone()).or_default().push(i);
            match &r.condition {
                Condition::LowBattery { .. } => {
                    used_metrics.push("battery_pct".to_owned());
                    used_metrics.push("battery_low".to_owned());
                }
                Condition::Rate { metric, window_ms, .. } => {
                    used_metrics.push(metric.clone());
                    let w = rate_windows.entry(metric.clone()).or_insert(0);
                    *w = (*w).max(*window_ms);
                }
                c => used_metrics.extend(c.metric().map(str::to_owned)),
            }
        }
        used_metrics.sort();
        used_metrics.dedup();
        let groups = order
            .into_iter()
            .map(|id| {
                let idx = by_id.remove(&id).unwrap_or_default();
                (id, idx)
            })
            .collect();
        let room_flags = room_flags(&registry);

        let outage = if state.devices.is_empty() {
            0
        } else {
            (now_ms - state.now_ms).max(0)
        };
        let keys: Vec<&str> = rules.rules().iter().map(|r| r.key.as_str()).collect();
        let ids = rules.ids();
        for ds in state.devices.values_mut() {
            ds.last_seen_ms += outage;
            for seen in ds.metric_seen.values_mut() {
                *seen += outage;
            }
            // Entries the rules file no longer has cannot be evaluated.
            ds.parts.retain(|k, _| keys.contains(&k.as_str()));
            ds.episodes.retain(|k, _| ids.contains(&k.as_str()));
        }
        for d in registry.devices() {
            state.devices.entry(d.id.clone()).or_insert_with(|| DeviceState {
                last_seen_ms: now_ms,
                class: d.class.clone(),
                building: d.building.clone(),
                room: d.room.clone(),
                zone: d.zone.clone(),
                ..DeviceState::default()
            });
        }
        state.now_ms = state.now_ms.max(now_ms);
        Engine {
            rules,
            registry,
            groups,
            room_flags,
            used_metrics,
            rate_windows,
            missing_metrics,
            links: Arc::default(),
            state,
        }
    }

    /// [`Engine::restore`] in place, at the time this engine was created (or last saw): for a
    /// gateway that builds its engine first and loads the saved state afterwards.
    pub fn load_state(&mut self, state: EngineState) {
        let now_ms = self.state.now_ms;
        let links = self.links.clone();
        *self = Engine::restore(self.rules.clone(), self.registry.clone(), state, now_ms);
        self.links = links;
    }

    /// Tells which devices hang on which serial link (`serial:<bus>`): while a link is down its
    /// devices' silence is not their own, so the absence rule leaves them to the link-down
    /// alert, and once it is back their silence counts from its return.
    pub fn with_links(mut self, links: HashMap<String, String>) -> Self {
        self.links = Arc::new(links);
        self
    }

    /// A committed reading, at gateway-clock time `now_ms` (virtual under the test clock).
    pub fn observe(&mut self, record: &Record, now_ms: i64) -> Vec<RuleOutput> {
        self.state.now_ms = self.state.now_ms.max(now_ms);
        // No key allocated for a device already known (every reading but its first).
        if !self.state.devices.contains_key(&record.device) {
            self.state.devices.insert(record.device.clone(), DeviceState::default());
        }
        let Some(ds) = self.state.devices.get_mut(&record.device) else {
            return Vec::new();
        };
        ds.last_seen_ms = now_ms;
        ds.class.clone_from(&record.class);
        ds.building.clone_from(&record.building);
        ds.room.clone_from(&record.room);
        ds.zone.clone_from(&record.zone);
        for (name, value) in &record.metrics {
            if self.missing_metrics.contains(name) {
                ds.metric_seen.insert(name.clone(), now_ms);
            }
            if self.used_metrics.binary_search(name).is_ok() {
                if let Value::Bool(on) = value {
                    if *on {
                        ds.flags_since.entry(name.clone()).or_insert(now_ms);
                    } else {
                        ds.flags_since.remove(name);
                    }
                }
                ds.values.insert(name.clone(), value.clone());
            }
            if let (Some(window), Some(v)) = (self.rate_windows.get(name), value.as_f64()) {
                let samples = ds.samples.entry(name.clone()).or_default();
                // Out-of-order samples would make a rise out of a replay; keep time increasing.
                if samples.back().is_none_or(|(ts, _)| record.ts > *ts) {
                    samples.push_back((record.ts, v));
                }
                // Keep the newest sample at least a window old as the reference point.
                while samples.len() > 2 && samples.get(1).is_some_and(|(ts, _)| *ts <= record.ts - window) {
                    samples.pop_front();
                }
                while samples.len() > MAX_RATE_SAMPLES {
                    samples.pop_front();
                }
            }
        }
        let mut out = Vec::new();
        self.step(&record.device, now_ms, Some(&record.metrics), &mut out);
        out
    }

    /// The clock: `for` windows completing without a new reading, absence, night windows,
    /// upgrades (R2 -> R1 at 60 s).
    pub fn tick(&mut self, now_ms: i64) -> Vec<RuleOutput> {
        self.state.now_ms = self.state.now_ms.max(now_ms);
        let devices: Vec<String> = self.state.devices.keys().cloned().collect();
        let mut out = Vec::new();
        for d in devices {
            self.step(&d, now_ms, None, &mut out);
        }
        out
    }

    /// Whether the trigger condition of (rule, subject) still holds: the trigger is true, or
    /// the rule fired and the value has not reached its clear level (or the device is still
    /// silent, for absence).
    pub fn holds(&self, rule: &str, subject: &str) -> bool {
        let Some(ds) = self.state.devices.get(subject) else {
            return false;
        };
        let parts = |id: &str, f: fn(&PartState) -> bool| {
            self.rules
                .rules()
                .iter()
                .filter(|r| r.id == id)
                .any(|r| ds.parts.get(&r.key).is_some_and(f))
        };
        parts(rule, |p| p.holds)
            || ds
                .episodes
                .get(rule)
                .is_some_and(|e| e.absorbed.iter().any(|a| parts(a, |p| p.triggered)))
    }

    pub fn snapshot(&self) -> EngineState {
        self.state.clone()
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    fn context<'a>(&'a self, registry: &'a Registry, device: &'a str, ds: &DeviceState) -> Context<'a> {
        let silence_from = match self.links.get(device).and_then(|l| self.state.devices.get(l)) {
            Some(link) => match link.values.get("link_up") {
                Some(Value::Bool(false)) => None,
                _ => Some(ds.last_seen_ms.max(link.last_seen_ms)),
            },
            None => Some(ds.last_seen_ms),
        };
        match registry.get(device) {
            Some(d) => Context {
                device,
                class: Cow::Borrowed(&d.class),
                zone: Cow::Borrowed(&d.zone),
                room: Cow::Borrowed(&d.room),
                resident: d.resident.as_deref(),
                own_flags: &d.care_flags,
                room_flags: self
                    .room_flags
                    .get(&d.building)
                    .and_then(|rooms| rooms.get(&d.room))
                    .map_or(&[], Vec::as_slice),
                interval_ms: Some(d.interval_s as i64 * 1000),
                warmup_ms: d.warmup_s.map(|s| s as i64 * 1000),
                silence_from,
            },
            None => Context {
                device,
                class: Cow::Owned(ds.class.clone()),
                zone: Cow::Owned(ds.zone.clone()),
                room: Cow::Owned(ds.room.clone()),
                resident: None,
                own_flags: &[],
                room_flags: &[],
                interval_ms: None,
                warmup_ms: None,
                silence_from,
            },
        }
    }

    /// Evaluates every entry for one device at `now`, then its episodes. `reading` is the
    /// metrics of the reading being observed (`None` on a clock tick).
    fn step(&mut self, device: &str, now: i64, reading: Option<&BTreeMap<String, Value>>, out: &mut Vec<RuleOutput>) {
        // The key goes back in with the state: no allocation per reading.
        let Some((key, mut ds)) = self.state.devices.remove_entry(device) else {
            return;
        };
        // A handle of our own: the context borrows the registry, not `self`.
        let registry = Arc::clone(&self.registry);
        let ctx = self.context(&registry, device, &ds);
        let maintenance = self.rules.in_maintenance(device, &ctx.room, now);
        let night = self.rules.is_night(now);
        let mut fired: Vec<usize> = Vec::new();

        for (i, rule) in self.rules.rules().iter().enumerate() {
            let selected = rule
                .select
                .matches(&ctx.class, &ctx.zone, ctx.own_flags, ctx.room_flags)
                && !(matches!(rule.condition, Condition::Absence { .. }) && ctx.interval_ms.is_none());
            if !selected {
                ds.parts.remove(&rule.key);
                continue;
            }
            // Worked on a copy: most rules hold no state for most devices, and an entry made
            // and removed again for each reading would allocate its key every time.
            let mut state = ds.parts.get(&rule.key).copied().unwrap_or_default();
            let part = &mut state;
            let (trigger, clear) = evaluate(&rule.condition, &ds, &ctx, part.active, now);
            let flag_on = |f: &String| ds.values.get(f) == Some(&Value::Bool(true));
            // A flag holds the entry back while it lasts, or for at most `suppress_max_ms`.
            let flagged = rule.suppressed_by.iter().any(|f| {
                flag_on(f)
                    && rule
                        .suppress_max_ms
                        .is_none_or(|max| ds.flags_since.get(f).is_none_or(|since| now - since < max))
            });
            let suppressed = match rule.condition {
                Condition::Absence { .. } | Condition::Missing { .. } => maintenance,
                ref c if c.suppressible() => flagged || maintenance,
                _ => flagged,
            };
            // An entry about a flag (R23 during preheat, R24 during a test) ends with the flag.
            let applies = rule.while_flags.iter().all(flag_on);
            let clear = clear || !applies;
            // At rest (R8): a resident walking starts no window, but an alert already raised
            // stays until the value itself clears.
            let at_rest = !rule.at_rest || resting(&ds);
            let in_window = rule.window == Window::Always || night;
            let trigger_now = trigger && applies && at_rest && !suppressed && in_window;
            // Whether this step is a reading that shows the condition: a state is reported on
            // change, so any reading of the device confirms it; a measurement must be in it.
            let confirms = reading.is_some_and(|m| match &rule.condition {
                Condition::Threshold { metric, .. } | Condition::Rate { metric, .. } => m.contains_key(metric),
                _ => true,
            });
            let hold = match (rule.hold_from_warmup, ctx.warmup_ms) {
                (true, Some(w)) => w,
                _ => rule.for_ms,
            };
            if !part.active {
                if trigger_now {
                    if part.since_ms.is_none() {
                        part.since_ms = Some(now);
                        part.readings = 0;
                    }
                    if confirms {
                        part.readings = part.readings.saturating_add(1);
                    }
                    let since = part.since_ms.unwrap_or(now);
                    // Readings count only for a hold: a condition without one is met by the
                    // reading (or the clock) that made it true; silence has no readings.
                    let needed = match rule.condition {
                        Condition::Absence { .. } => 0,
                        _ if hold > 0 => rule.min_readings,
                        _ => 0,
                    };
                    if now - since >= hold && part.readings >= needed {
                        part.active = true;
                        part.clear_since_ms = None;
                        fired.push(i);
                    }
                } else {
                    part.since_ms = None;
                    part.readings = 0;
                }
            }
            // Checked right after firing too: a state rule whose clear is "any other value" never
            // clears on the reading that fired it, but a zero hold clears on the next one.
            if part.active && !fired.contains(&i) {
                if clear {
                    let since = *part.clear_since_ms.get_or_insert(now);
                    if now - since >= rule.clear_for_ms {
                        *part = PartState::default();
                    }
                } else {
                    part.clear_since_ms = None;
                }
            }
            part.holds = trigger_now || (part.active && !clear);
            part.triggered = trigger_now;
            if state == PartState::default() {
                ds.parts.remove(&rule.key);
            } else if let Some(p) = ds.parts.get_mut(&rule.key) {
                *p = state;
            } else {
                ds.parts.insert(rule.key.clone(), state);
            }
        }
        self.episodes(&mut ds, &ctx, &fired, now, out);
        self.state.devices.insert(key, ds);
    }
}

/// The care flags of each room's devices: building -> room -> flags.
fn room_flags(registry: &Registry) -> HashMap<String, HashMap<String, Vec<String>>> {
    let mut room_flags: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
    for d in registry.devices() {
        if d.room.is_empty() {
            continue;
        }
        let flags = room_flags
            .entry(d.building.clone())
            .or_default()
            .entry(d.room.clone())
            .or_default();
        for f in &d.care_flags {
            if !flags.contains(f) {
                flags.push(f.clone());
            }
        }
    }
    room_flags
}
