//! Reading a scenario file: the raw TOML, every key checked, every problem collected with its
//! line ([`ScenarioErrors`]), and the [`Scenario`] when there is none.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{
    capture_span_ms, time, Action, Allow, Expectation, Scenario, ScenarioErrors, Step, DEFAULT_GRACE_S,
    DEFAULT_OFFSET_MIN,
};
use crate::metrics::{round2, Kind, Value, KNOWN};
use crate::model::registry::{self, Registry};
use crate::mqtt::capture::Capture;
use crate::wire::{zigbee2mqtt, Format};

/// Problems found so far: (line, message).
type Errors = Vec<(Option<usize>, String)>;

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
    let mut errors: Errors = Vec::new();
    let header_line = line_at(text, raw.scenario.span().start);
    let h = raw.scenario.into_inner();
    let files = read_files(&h, base, header_line, &mut errors);
    if h.capture.is_some() {
        check_capture_only(&h, &raw.timeline, text, header_line, &mut errors);
    }
    let times = check_times(&h, text, header_line, files.capture.as_ref(), &mut errors);
    let devices = Devices::of(files.registry.as_ref());
    let mut event_names: BTreeMap<String, usize> = BTreeMap::new();
    let mut timeline: Vec<Step> = raw
        .timeline
        .iter()
        .filter_map(|spanned| parse_step(text, spanned, &devices, &times, &mut event_names, &mut errors))
        .collect();
    timeline.sort_by_key(|s| s.at_ms);
    let mut expect: Vec<Expectation> = Vec::new();
    for spanned in &raw.expect {
        let e = parse_expectation(text, spanned, &devices, &event_names, &expect, &mut errors);
        expect.push(e);
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

    match (errors.is_empty(), files.registry) {
        (true, Some(registry)) => Ok(Scenario {
            name: h.name,
            description: h.description,
            path: None,
            registry_path: files.registry_path,
            gateway_registry_path: files.gateway_registry_path,
            registry,
            rules_path: files.rules_path,
            baseline: h.baseline.unwrap_or(files.capture.is_none()),
            capture: files.capture,
            start_ms: times.start_ms,
            utc_offset_min: times.utc_offset_min,
            duration_s: times.duration_s.ceil() as u64,
            time_scale: times.time_scale,
            seed: h.seed.unwrap_or(1),
            nothing_else: h.nothing_else.unwrap_or(true),
            grace_s: times.grace_s,
            timeline,
            expect,
            allow,
        }),
        _ => Err(fail(errors)),
    }
}

/// The files the header names, read (the rules file is the gateway's: only looked for).
struct Files {
    registry_path: PathBuf,
    registry: Option<Registry>,
    gateway_registry_path: Option<PathBuf>,
    rules_path: Option<PathBuf>,
    capture: Option<(PathBuf, Capture)>,
}

fn read_files(h: &RawHeader, base: &Path, header_line: usize, errors: &mut Errors) -> Files {
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
    Files {
        registry_path,
        registry,
        gateway_registry_path,
        rules_path,
        capture,
    }
}

/// A capture scenario replays the capture only: no baseline, no timeline.
fn check_capture_only(
    h: &RawHeader,
    timeline: &[Spanned<RawStep>],
    text: &str,
    header_line: usize,
    errors: &mut Errors,
) {
    if h.baseline == Some(true) {
        errors.push((
            Some(header_line),
            "scenario.baseline: a capture scenario replays the capture only; leave baseline out".into(),
        ));
    }
    if let Some(first) = timeline.first() {
        errors.push((
            Some(line_at(text, first.span().start)),
            "timeline: steps script simulated devices; a capture scenario replays the capture only \
             (count expectations from the start with not_before_s and within_s)"
                .into(),
        ));
    }
}

/// The header's times: start, duration, time scale and grace.
struct Times {
    start_ms: Option<i64>,
    utc_offset_min: i32,
    duration_s: f64,
    time_scale: f64,
    grace_s: f64,
}

fn check_times(
    h: &RawHeader,
    text: &str,
    header_line: usize,
    capture: Option<&(PathBuf, Capture)>,
    errors: &mut Errors,
) -> Times {
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
    if let Some((p, cap)) = capture {
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
    Times {
        start_ms,
        utc_offset_min,
        duration_s,
        time_scale,
        grace_s,
    }
}

/// The registry's devices and rooms, for the checks of steps and expectations (empty when the
/// registry could not be read: its error is reported already).
struct Devices<'a> {
    registry: Option<&'a Registry>,
    index: HashMap<&'a str, usize>,
    rooms: Vec<&'a str>,
}

impl<'a> Devices<'a> {
    fn of(registry: Option<&'a Registry>) -> Devices<'a> {
        Devices {
            registry,
            index: registry
                .map(|r| r.devices.iter().enumerate().map(|(i, d)| (d.id.as_str(), i)).collect())
                .unwrap_or_default(),
            rooms: registry
                .map(|r| r.devices.iter().map(|d| d.room.as_str()).collect())
                .unwrap_or_default(),
        }
    }
}

/// One `[[timeline]]` step: every problem reported, the step when it is whole.
fn parse_step(
    text: &str,
    spanned: &Spanned<RawStep>,
    devices: &Devices<'_>,
    times: &Times,
    event_names: &mut BTreeMap<String, usize>,
    errors: &mut Errors,
) -> Option<Step> {
    let line = line_at(text, spanned.span().start);
    let s = spanned.get_ref();
    let mut err = |m: String| errors.push((Some(line), format!("timeline: {m}")));
    let at_ms = step_at_ms(s, times, &mut err);
    let index = devices.index.get(s.device.as_str()).copied();
    if index.is_none() && devices.registry.is_some() {
        err(format!("device `{}` is not in the registry", s.device));
    }
    let format = index
        .and_then(|i| devices.registry.map(|r| r.devices[i].format()))
        .unwrap_or(Format::Canonical);
    let mut actions = step_actions(s, format, &mut err);
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
    let (at_ms, device_index, action) = (at_ms?, index?, actions.pop()?);
    actions.is_empty().then(|| Step {
        name: s.name.clone(),
        at_ms,
        device: s.device.clone(),
        device_index,
        action,
        for_ms,
        every_ms,
        line,
    })
}

/// When a step happens: `at_s` after the start, or `at`, the next such local time of day.
fn step_at_ms(s: &RawStep, times: &Times, err: &mut dyn FnMut(String)) -> Option<i64> {
    match (&s.at_s, &s.at) {
        (Some(at), None) if *at >= 0.0 => Some(ms(*at)),
        (Some(_), None) => {
            err("at_s must be >= 0".into());
            None
        }
        (None, Some(tod)) => match (time::parse_time_of_day(tod), times.start_ms) {
            (Ok(t), Some(start)) => Some(time::next_time_of_day(start, times.utc_offset_min, t) - start),
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
    }
}

/// Every action the step gives (exactly one is right), checked against what the device's wire
/// format can carry.
fn step_actions(s: &RawStep, format: Format, err: &mut dyn FnMut(String)) -> Vec<Action> {
    let mut actions = Vec::new();
    if let Some(t) = &s.set {
        actions.push(Action::Set(step_values(s, t, "set", format, err)));
    }
    if let Some(t) = &s.pulse {
        actions.push(Action::Pulse(step_values(s, t, "pulse", format, err)));
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
    actions
}

/// The metrics of a `set` or `pulse` table.
fn step_values(
    s: &RawStep,
    t: &toml::Table,
    what: &str,
    format: Format,
    err: &mut dyn FnMut(String),
) -> Vec<(&'static str, Value)> {
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
}

/// One `[[expect]]` entry, checked against the registry, the timeline's event names and the
/// expectations before it.
fn parse_expectation(
    text: &str,
    spanned: &Spanned<RawExpect>,
    devices: &Devices<'_>,
    event_names: &BTreeMap<String, usize>,
    earlier: &[Expectation],
    errors: &mut Errors,
) -> Expectation {
    let line = line_at(text, spanned.span().start);
    let e = spanned.get_ref();
    let mut err = |m: String| errors.push((Some(line), format!("expect: {m}")));
    if let Some(p) = &e.priority {
        if !matches!(p.as_str(), "P1" | "P2" | "P3" | "P4") {
            err(format!("priority `{p}` is not one of P1..P4"));
        }
    }
    if let Some(d) = &e.device {
        if devices.registry.is_some() && !devices.index.contains_key(d.as_str()) {
            err(format!("device `{d}` is not in the registry"));
        }
    }
    if let Some(r) = &e.room {
        if devices.registry.is_some() && !devices.rooms.contains(&r.as_str()) {
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
    if earlier.iter().any(|x| x.name == name) {
        err(format!(
            "two expectations are named `{name}`: give them distinct `name`s"
        ));
    }
    if let Some(other) = &e.same_alert_as {
        if !earlier.iter().any(|x| &x.name == other) {
            err(format!(
                "same_alert_as = `{other}`: no earlier expectation has this name"
            ));
        }
    }
    Expectation {
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
    }
}
