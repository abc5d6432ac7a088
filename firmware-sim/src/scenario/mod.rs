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
//! Modules: `parser` (the file read and checked: [`parse`]), [`time`] (RFC 3339 and times of
//! day), [`expect`] (matching alerts against expectations), [`run`] (the plan, the runner against
//! a broker and the dry run).

pub mod expect;
mod parser;
pub mod run;
pub mod time;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::metrics::Value;
use crate::model::registry::Registry;
use crate::mqtt::capture::Capture;

pub use expect::{evaluate, Evaluation, ExpectationResult, ReceivedAlert};
pub use parser::parse;
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
