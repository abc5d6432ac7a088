//! Scenarios with expectations (`config/scenarios/*.toml`, `nh-sim scenario`): scripted device
//! behaviour over the baseline fleet, and the alerts the gateway must (and must not) raise.
//!
//! A scenario file:
//!
//! ```toml
//! [scenario]
//! name = "R1 fall confirmed by the bedroom radar"
//! registry = "../test/devices.toml"   # relative to this file
//! gateway_registry = "gw.toml"        # optional: the gateway's registry, when it lacks devices
//!                                     # of the fleet (a device nobody registered)
//! rules = "../rules.toml"             # the gateway's rules file (informational; the runner never reads it)
//! start = "2026-05-01T21:30:00+08:00" # virtual start: --test-clock-start (night rules apply)
//! duration_s = 90                     # virtual seconds observed at least
//! time_scale = 3                      # virtual ms per real ms when run under the test clock
//! baseline = true                     # every registered device behaves normally (default true)
//! nothing_else = true                 # any other active alert fails the scenario (default true)
//! # capture = "shift.jsonl"           # instead of simulated devices: replay a capture (`nh-sim
//! #                                   # record`) from the start, payload times moved with it; no
//! #                                   # baseline and no timeline then
//!
//! [[timeline]]                        # scripted behaviour, overriding the baseline
//! name = "fall"                       # an event name expectations can count from
//! at_s = 30                           # or at = "02:00" (local time of day, next occurrence)
//! device = "radar-t-101"
//! set = { fall_state = "fall" }       # or pulse = {..} (one report), ramp = {..}, silent = true
//! for_s = 20                          # optional: then back to the baseline
//!
//! [[expect]]
//! rule = "R1"
//! priority = "P1"
//! device = "radar-t-101"              # optional; also matches an incident's `devices`
//! after = "fall"                      # optional: deadline counted from this event, else from start
//! within_s = 15                       # deadline in virtual seconds
//! ```
//!
//! Modules: [`time`] (RFC 3339 and times of day), [`expect`] (matching alerts against
//! expectations), [`run`] (the plan, the runner against a broker and the dry run).

pub mod expect;
pub mod run;
pub mod time;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::capture::Capture;
use crate::metrics::{round2, Kind, Value, KNOWN};
use crate::registry::{self, Registry};
use crate::wire::{zigbee2mqtt, Format};

pub use expect::{evaluate, Evaluation, ExpectationResult, ReceivedAlert};
pub use run::{dry_run, plan, run_scenario, Plan, ScenarioOptions, ScenarioReport};

/// Default site offset when a scenario has no `start` (sites are in China).
const DEFAULT_OFFSET_MIN: i32 = 8 * 60;

/// Real seconds waited after the last virtual instant that matters, for alerts still in flight.
pub const DEFAULT_GRACE_S: f64 = 3.0;

/// Tolerance before an anchor (virtual ms): device and gateway timestamps may differ a little.
pub const DEFAULT_EARLY_TOLERANCE_MS: i64 = 2_000;

/// A validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: Option<String>,
    /// The file, when loaded from one.
    pub path: Option<PathBuf>,
    pub registry_path: PathBuf,
    pub registry: Registry,
    /// The registry the gateway runs with, when it differs from the fleet's (a scenario with a
    /// device the gateway does not know).
    pub gateway_registry_path: Option<PathBuf>,
    pub rules_path: Option<PathBuf>,
    /// A recorded capture (`nh-sim record`) the scenario replays instead of simulating devices:
    /// its file and its messages.
    pub capture: Option<(PathBuf, Capture)>,
    /// Virtual start (ms since epoch), if the file sets one.
    pub start_ms: Option<i64>,
    /// The site's offset from UTC in minutes (from `start`; default +08:00), for `at = "HH:MM"`.
    pub utc_offset_min: i32,
    pub duration_s: u64,
    pub time_scale: f64,
    pub baseline: bool,
    pub seed: u64,
    pub nothing_else: bool,
    pub grace_s: f64,
    pub timeline: Vec<Step>,
    pub expect: Vec<Expectation>,
    pub allow: Vec<Allow>,
}

/// One scripted change of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: Option<String>,
    /// Offset from the scenario start (virtual ms).
    pub at_ms: i64,
    pub device: String,
    pub device_index: usize,
    pub action: Action,
    /// How long the change holds (ms); `None`: to the end.
    pub for_ms: Option<i64>,
    /// While the change holds, the device also reports every `every_ms`.
    pub every_ms: Option<i64>,
    pub line: usize,
}

/// What a step does to its device's reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// These metric values in every report while the step holds (the device reports at once).
    Set(Vec<(&'static str, Value)>),
    /// These values in one report, at once (a button press).
    Pulse(Vec<(&'static str, Value)>),
    /// `metric` moves linearly from `from` to `to` over `over_ms`, then stays at `to`.
    Ramp {
        metric: &'static str,
        from: f64,
        to: f64,
        over_ms: i64,
    },
    /// The device sends nothing while the step holds.
    Silent,
}

/// An alert that must appear.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    /// `name` from the file, or `rule@device`.
    pub name: String,
    pub rule: String,
    pub priority: Option<String>,
    pub device: Option<String>,
    pub room: Option<String>,
    /// Event the deadline counts from; `None`: the scenario start.
    pub after: Option<String>,
    pub within_ms: i64,
    /// Earliest acceptable time after the anchor (ms); default a small tolerance before it.
    pub not_before_ms: Option<i64>,
    /// Must be the same alert (same `id`) as this earlier expectation (a priority upgrade).
    pub same_alert_as: Option<String>,
    pub line: usize,
}

/// Alerts tolerated but not required under `nothing_else` (every given field must match).
#[derive(Debug, Clone, PartialEq)]
pub struct Allow {
    pub rule: Option<String>,
    pub device: Option<String>,
    pub room: Option<String>,
}

/// Every problem found in one scenario file.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioErrors {
    pub source: Option<String>,
    pub errors: Vec<(Option<usize>, String)>,
}

impl fmt::Display for ScenarioErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        match &self.source {
            Some(s) => write!(f, "{n} error(s) in scenario {s}")?,
            None => write!(f, "{n} error(s) in scenario")?,
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

impl std::error::Error for ScenarioErrors {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    scenario: Spanned<RawHeader>,
    #[serde(default)]
    timeline: Vec<Spanned<RawStep>>,
    #[serde(default)]
    expect: Vec<Spanned<RawExpect>>,
    #[serde(default)]
    allow: Vec<Spanned<RawAllow>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    description: Option<String>,
    registry: String,
    gateway_registry: Option<String>,
    rules: Option<String>,
    capture: Option<String>,
    start: Option<Spanned<String>>,
    duration_s: Spanned<f64>,
    time_scale: Option<Spanned<f64>>,
    baseline: Option<bool>,
    seed: Option<u64>,
    nothing_else: Option<bool>,
    grace_s: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: Option<String>,
    at_s: Option<f64>,
    at: Option<String>,
    device: String,
    set: Option<toml::Table>,
    pulse: Option<toml::Table>,
    ramp: Option<RawRamp>,
    silent: Option<bool>,
    for_s: Option<f64>,
    every_s: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRamp {
    metric: String,
    from: f64,
    to: f64,
    over_s: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    name: Option<String>,
    rule: String,
    priority: Option<String>,
    device: Option<String>,
    room: Option<String>,
    after: Option<String>,
    within_s: f64,
    not_before_s: Option<f64>,
    same_alert_as: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    rule: Option<String>,
    device: Option<String>,
    room: Option<String>,
}

fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn ms(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}

/// A metric value from the file, checked against the vocabulary (docs/contracts.md).
fn metric_value(name: &str, v: &toml::Value) -> Result<(&'static str, Value), String> {
    let Some((known, kind)) = KNOWN.iter().find(|(n, _)| *n == name) else {
        return Err(format!(
            "unknown metric `{name}` (see the metric vocabulary in docs/contracts.md)"
        ));
    };
    let value = match (kind, v) {
        (Kind::Bool, toml::Value::Boolean(b)) => Value::Bool(*b),
        (Kind::Num(lo, hi), toml::Value::Integer(i)) if (*i as f64) >= *lo && (*i as f64) <= *hi => {
            Value::Num(*i as f64)
        }
        (Kind::Num(lo, hi), toml::Value::Float(x)) if x >= lo && x <= hi => Value::Num(round2(*x)),
        (Kind::Num(lo, hi), _) => return Err(format!("`{name}` must be a number in {lo}..={hi}, got {v}")),
        (Kind::Enum(values), toml::Value::String(s)) => match values.iter().find(|e| **e == s.as_str()) {
            Some(e) => Value::Text(e),
            None => return Err(format!("`{name}` must be one of {}, got `{s}`", values.join("|"))),
        },
        (Kind::Enum(values), _) => return Err(format!("`{name}` must be one of {}", values.join("|"))),
        (Kind::Bool, _) => return Err(format!("`{name}` must be true or false, got {v}")),
    };
    Ok((known, value))
}

/// Parses and validates a scenario; `base` is the folder relative paths start from.
pub fn parse(text: &str, base: &Path) -> Result<Scenario, ScenarioErrors> {
    let fail = |errors| ScenarioErrors { source: None, errors };
    let raw: RawFile = toml::from_str(text)
        .map_err(|e| fail(vec![(e.span().map(|s| line_at(text, s.start)), e.message().to_owned())]))?;
    let mut errors: Vec<(Option<usize>, String)> = Vec::new();
    let header_line = line_at(text, raw.scenario.span().start);
    let h = raw.scenario.into_inner();

    let registry_path = base.join(&h.registry);
    let registry = match registry::load(&registry_path) {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push((Some(header_line), format!("scenario.registry: {e}")));
            None
        }
    };
    let gateway_registry_path = h.gateway_registry.as_ref().map(|r| base.join(r));
    if let Some(p) = &gateway_registry_path {
        if let Err(e) = registry::load(p) {
            errors.push((Some(header_line), format!("scenario.gateway_registry: {e}")));
        }
    }
    let rules_path = h.rules.as_ref().map(|r| base.join(r));
    if let Some(p) = &rules_path {
        if !p.is_file() {
            // The rules file is the gateway's: only its existence is checked here.
            tracing::debug!(path = %p.display(), "scenario.rules does not exist (yet)");
        }
    }
    let capture = match &h.capture {
        Some(c) => {
            let p = base.join(c);
            match Capture::read(&p) {
                Ok(cap) => Some((p, cap)),
                Err(e) => {
                    errors.push((Some(header_line), format!("scenario.capture: {e:#}")));
                    None
                }
            }
        }
        None => None,
    };
    if h.capture.is_some() {
        if h.baseline == Some(true) {
            errors.push((
                Some(header_line),
                "scenario.baseline: a capture scenario replays the capture only; leave baseline out".into(),
            ));
        }
        if let Some(first) = raw.timeline.first() {
            errors.push((
                Some(line_at(text, first.span().start)),
                "timeline: steps script simulated devices; a capture scenario replays the capture only \
                 (count expectations from the start with not_before_s and within_s)"
                    .into(),
            ));
        }
    }
    let (start_ms, utc_offset_min) = match &h.start {
        Some(s) => match time::parse_rfc3339(s.get_ref()) {
            Ok((ms, off)) => (Some(ms), off),
            Err(e) => {
                errors.push((Some(line_at(text, s.span().start)), format!("scenario.start: {e}")));
                (None, DEFAULT_OFFSET_MIN)
            }
        },
        None => (None, DEFAULT_OFFSET_MIN),
    };
    let duration_s = *h.duration_s.get_ref();
    if !(duration_s.is_finite() && duration_s > 0.0) {
        errors.push((
            Some(line_at(text, h.duration_s.span().start)),
            "scenario.duration_s must be > 0".into(),
        ));
    }
    if let Some((p, cap)) = &capture {
        let span_s = (capture_span_ms(cap) as f64) / 1000.0;
        if span_s > duration_s {
            errors.push((
                Some(line_at(text, h.duration_s.span().start)),
                format!(
                    "scenario.duration_s = {duration_s} is shorter than the capture {} ({span_s:.1} s)",
                    p.display()
                ),
            ));
        }
    }
    let time_scale = h.time_scale.as_ref().map(|s| *s.get_ref()).unwrap_or(1.0);
    if let Some(s) = &h.time_scale {
        if !(time_scale.is_finite() && time_scale > 0.0) {
            errors.push((
                Some(line_at(text, s.span().start)),
                "scenario.time_scale must be > 0".into(),
            ));
        }
    }
    let grace_s = h.grace_s.as_ref().map(|s| *s.get_ref()).unwrap_or(DEFAULT_GRACE_S);
    if !(grace_s.is_finite() && grace_s >= 0.0) {
        errors.push((Some(header_line), "scenario.grace_s must be >= 0".into()));
    }

    let device_index: HashMap<&str, usize> = registry
        .as_ref()
        .map(|r| r.devices.iter().enumerate().map(|(i, d)| (d.id.as_str(), i)).collect())
        .unwrap_or_default();
    let mut event_names: BTreeMap<String, usize> = BTreeMap::new();
    let mut timeline = Vec::new();
    for spanned in &raw.timeline {
        let line = line_at(text, spanned.span().start);
        let s = spanned.get_ref();
        let mut err = |m: String| errors.push((Some(line), format!("timeline: {m}")));
        let at_ms = match (&s.at_s, &s.at) {
            (Some(at), None) if *at >= 0.0 => Some(ms(*at)),
            (Some(_), None) => {
                err("at_s must be >= 0".into());
                None
            }
            (None, Some(tod)) => match (time::parse_time_of_day(tod), start_ms) {
                (Ok(t), Some(start)) => Some(time::next_time_of_day(start, utc_offset_min, t) - start),
                (Ok(_), None) => {
                    err(format!("at = \"{tod}\" needs scenario.start"));
                    None
                }
                (Err(e), _) => {
                    err(format!("at: {e}"));
                    None
                }
            },
            _ => {
                err("give exactly one of at_s (seconds after start) or at (\"HH:MM\" local)".into());
                None
            }
        };
        let index = device_index.get(s.device.as_str()).copied();
        if index.is_none() && registry.is_some() {
            err(format!("device `{}` is not in the registry", s.device));
        }
        let format = index
            .and_then(|i| registry.as_ref().map(|r| r.devices[i].format()))
            .unwrap_or(Format::Canonical);
        let values = |t: &toml::Table, what: &str, err: &mut dyn FnMut(String)| {
            let mut out = Vec::new();
            for (k, v) in t {
                match metric_value(k, v) {
                    Ok((name, value)) => {
                        if format == Format::Zigbee2mqtt && !zigbee2mqtt::can_express(name, &value) {
                            err(format!(
                                "{what}: device `{}` speaks Zigbee2MQTT, which cannot carry {name} = {v}",
                                s.device
                            ));
                        }
                        out.push((name, value));
                    }
                    Err(e) => err(format!("{what}: {e}")),
                }
            }
            if out.is_empty() {
                err(format!("{what}: needs at least one metric"));
            }
            out
        };
        let mut actions = Vec::new();
        if let Some(t) = &s.set {
            actions.push(Action::Set(values(t, "set", &mut err)));
        }
        if let Some(t) = &s.pulse {
            actions.push(Action::Pulse(values(t, "pulse", &mut err)));
        }
        if let Some(r) = &s.ramp {
            match metric_value(&r.metric, &toml::Value::Float(r.to))
                .and(metric_value(&r.metric, &toml::Value::Float(r.from)))
            {
                Ok((metric, _)) if r.over_s > 0.0 => {
                    if format == Format::Zigbee2mqtt && !zigbee2mqtt::can_express(metric, &Value::Num(r.to)) {
                        err(format!("ramp: Zigbee2MQTT cannot carry `{metric}`"));
                    }
                    actions.push(Action::Ramp {
                        metric,
                        from: r.from,
                        to: r.to,
                        over_ms: ms(r.over_s),
                    })
                }
                Ok(_) => err("ramp: over_s must be > 0".into()),
                Err(e) => err(format!("ramp: {e}")),
            }
        }
        match s.silent {
            Some(true) => actions.push(Action::Silent),
            Some(false) => err("silent = false means nothing: leave it out".into()),
            None => {}
        }
        if actions.len() != 1 {
            err("give exactly one of set, pulse, ramp or silent = true".into());
        }
        let for_ms = match s.for_s {
            Some(f) if f > 0.0 => Some(ms(f)),
            Some(_) => {
                err("for_s must be > 0".into());
                None
            }
            None => None,
        };
        let every_ms = match s.every_s {
            Some(e) if e >= 0.5 => Some(ms(e)),
            Some(_) => {
                err("every_s must be >= 0.5".into());
                None
            }
            None => None,
        };
        if let Some(name) = &s.name {
            if let Some(first) = event_names.insert(name.clone(), line) {
                err(format!("event name `{name}` already used on line {first}"));
            }
        }
        if let (Some(at_ms), Some(device_index), Some(action)) = (at_ms, index, actions.pop()) {
            if actions.is_empty() {
                timeline.push(Step {
                    name: s.name.clone(),
                    at_ms,
                    device: s.device.clone(),
                    device_index,
                    action,
                    for_ms,
                    every_ms,
                    line,
                });
            }
        }
    }
    timeline.sort_by_key(|s| s.at_ms);

    let rooms: Vec<&str> = registry
        .as_ref()
        .map(|r| r.devices.iter().map(|d| d.room.as_str()).collect())
        .unwrap_or_default();
    let mut expect: Vec<Expectation> = Vec::new();
    for spanned in &raw.expect {
        let line = line_at(text, spanned.span().start);
        let e = spanned.get_ref();
        let mut err = |m: String| errors.push((Some(line), format!("expect: {m}")));
        if let Some(p) = &e.priority {
            if !matches!(p.as_str(), "P1" | "P2" | "P3" | "P4") {
                err(format!("priority `{p}` is not one of P1..P4"));
            }
        }
        if let Some(d) = &e.device {
            if registry.is_some() && !device_index.contains_key(d.as_str()) {
                err(format!("device `{d}` is not in the registry"));
            }
        }
        if let Some(r) = &e.room {
            if registry.is_some() && !rooms.contains(&r.as_str()) {
                err(format!("room `{r}` is not in the registry"));
            }
        }
        if let Some(a) = &e.after {
            if !event_names.contains_key(a) {
                err(format!("after = `{a}`: no timeline step has this name"));
            }
        }
        if !(e.within_s.is_finite() && e.within_s > 0.0) {
            err("within_s must be > 0".into());
        }
        if let Some(nb) = e.not_before_s {
            if nb >= e.within_s {
                err("not_before_s must be below within_s".into());
            }
        }
        let name = e.name.clone().unwrap_or_else(|| {
            format!(
                "{}@{}",
                e.rule,
                e.device.as_deref().or(e.room.as_deref()).unwrap_or("*")
            )
        });
        if expect.iter().any(|x| x.name == name) {
            err(format!(
                "two expectations are named `{name}`: give them distinct `name`s"
            ));
        }
        if let Some(other) = &e.same_alert_as {
            if !expect.iter().any(|x| &x.name == other) {
                err(format!(
                    "same_alert_as = `{other}`: no earlier expectation has this name"
                ));
            }
        }
        expect.push(Expectation {
            name,
            rule: e.rule.clone(),
            priority: e.priority.clone(),
            device: e.device.clone(),
            room: e.room.clone(),
            after: e.after.clone(),
            within_ms: ms(e.within_s),
            not_before_ms: e.not_before_s.map(ms),
            same_alert_as: e.same_alert_as.clone(),
            line,
        });
    }
    let allow = raw
        .allow
        .iter()
        .map(|a| {
            let a = a.get_ref();
            Allow {
                rule: a.rule.clone(),
                device: a.device.clone(),
                room: a.room.clone(),
            }
        })
        .collect();

    match (errors.is_empty(), registry) {
        (true, Some(registry)) => Ok(Scenario {
            name: h.name,
            description: h.description,
            path: None,
            registry_path,
            gateway_registry_path,
            registry,
            rules_path,
            baseline: h.baseline.unwrap_or(capture.is_none()),
            capture,
            start_ms,
            utc_offset_min,
            duration_s: duration_s.ceil() as u64,
            time_scale,
            seed: h.seed.unwrap_or(1),
            nothing_else: h.nothing_else.unwrap_or(true),
            grace_s,
            timeline,
            expect,
            allow,
        }),
        _ => Err(fail(errors)),
    }
}

/// Virtual ms from a capture's start (its header) to its last message.
pub fn capture_span_ms(c: &Capture) -> i64 {
    c.messages
        .iter()
        .map(|m| m.t_ms - c.header.start_ms)
        .max()
        .unwrap_or(0)
        .max(0)
}

/// Whether a TOML text is a scenario (has a `[scenario]` table).
pub fn is_scenario(text: &str) -> bool {
    text.parse::<toml::Table>()
        .map(|t| t.contains_key("scenario"))
        .unwrap_or_else(|_| text.lines().any(|l| l.trim() == "[scenario]"))
}

/// Reads and validates a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioErrors> {
    let source = Some(path.display().to_string());
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioErrors {
        source: source.clone(),
        errors: vec![(None, format!("cannot read: {e}"))],
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut s = parse(&text, base).map_err(|mut e| {
        e.source = source.clone();
        e
    })?;
    s.path = Some(path.to_path_buf());
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn test_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/scenarios")
    }

    #[test]
    fn parses_a_scenario_against_the_test_registry() {
        let text = r#"
[scenario]
name = "fall"
registry = "../test/devices.toml"
start = "2026-05-01T21:30:00+08:00"
duration_s = 90
time_scale = 3

[[timeline]]
name = "fall"
at_s = 30
device = "radar-t-101"
set = { fall_state = "fall" }
for_s = 20

[[timeline]]
at = "02:00"
device = "bed-t-101"
set = { bed_occupied = false }

[[expect]]
rule = "R1"
priority = "P1"
device = "radar-t-101"
after = "fall"
within_s = 15
"#;
        let s = parse(text, &test_dir()).expect("valid");
        assert_eq!(s.timeline.len(), 2);
        assert_eq!(s.timeline[0].at_ms, 30_000);
        assert_eq!(
            s.timeline[0].action,
            Action::Set(vec![("fall_state", Value::Text("fall"))])
        );
        assert_eq!(s.timeline[1].at_ms, (4 * 60 + 30) * 60_000);
        assert_eq!(s.expect[0].name, "R1@radar-t-101");
        assert!(s.nothing_else && s.baseline);
    }

    #[test]
    fn reports_every_error_with_its_line() {
        let text = r#"
[scenario]
name = "bad"
registry = "../test/devices.toml"
duration_s = 60

[[timeline]]
at_s = 10
device = "nope"
set = { fall_state = "falling" }

[[timeline]]
at = "02:00"
device = "smoke-t-101"
set = { smoke = 1 }

[[timeline]]
at_s = 5
device = "radar-t-102"
set = { fall_state = "confirmed" }

[[expect]]
rule = "R1"
priority = "P0"
after = "nothing"
within_s = 10
"#;
        let e = parse(text, &test_dir()).expect_err("invalid");
        let all = e.to_string();
        for needle in [
            "line 7: timeline: device `nope` is not in the registry",
            "line 7: timeline: set: `fall_state` must be one of",
            "line 12: timeline: at = \"02:00\" needs scenario.start",
            "line 12: timeline: set: `smoke` must be true or false",
            "line 17: timeline: set: device `radar-t-102` speaks Zigbee2MQTT",
            "line 22: expect: priority `P0`",
            "line 22: expect: after = `nothing`",
        ] {
            assert!(all.contains(needle), "missing `{needle}` in:\n{all}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let text = "[scenario]\nname = \"x\"\nregistry = \"../test/devices.toml\"\nduration_s = 1\ncolour = 2\n";
        let e = parse(text, &test_dir()).expect_err("invalid");
        assert_eq!(e.errors.len(), 1);
        assert_eq!(e.errors[0].0, Some(5), "{e}");
    }

    #[test]
    fn every_checked_in_scenario_is_valid() {
        let mut n = 0;
        for entry in std::fs::read_dir(test_dir()).expect("config/scenarios").flatten() {
            let p = entry.path();
            let text = std::fs::read_to_string(&p).expect("read");
            if p.extension().is_some_and(|e| e == "toml") && is_scenario(&text) {
                load(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 19, "{n} scenarios");
    }
}
