//! Matching the alerts a gateway published (`nh/{site}/alerts`, docs/contracts.md) against a
//! scenario's expectations.
//!
//! Time of an alert message: its `updated_at` (the gateway's clock when this change happened: the
//! raise, or a priority upgrade), else `raised_at`, else the virtual time it arrived at the
//! simulator. Deadlines are checked on that gateway time, in virtual time: it does not depend on
//! how fast the machine delivered the message, only on when the gateway decided. The arrival
//! latency is reported beside it, and an alert must also have arrived before the runner stops.
//!
//! Matching: each expectation, in file order, takes the earliest `active` message that fits (rule,
//! priority, device in `device` or `devices`, room, time window) among alerts no other expectation
//! took (`same_alert_as` instead demands the id its named expectation took). With `nothing_else`,
//! every other alert id that was ever `active` is unexpected unless an `[[allow]]` entry fits it;
//! later updates of a matched alert (same id) are fine.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::Value as Json;

use super::{Allow, Expectation, Scenario, DEFAULT_EARLY_TOLERANCE_MS};

/// One message received on the alerts topic.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedAlert {
    /// Virtual time (simulator clock) at arrival.
    pub arrival_ms: i64,
    pub json: Json,
}

/// The fields of an alert message the matching uses.
#[derive(Debug, Clone, PartialEq)]
struct Fields {
    id: String,
    rule: String,
    priority: String,
    state: String,
    device: Option<String>,
    devices: Vec<String>,
    room: Option<String>,
    /// Gateway time of this change.
    time_ms: i64,
    arrival_ms: i64,
}

fn text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn fields(a: &ReceivedAlert) -> Option<Fields> {
    let j = &a.json;
    let id = text(&j["id"])?;
    let time_ms = j["updated_at"]
        .as_i64()
        .or_else(|| j["raised_at"].as_i64())
        .unwrap_or(a.arrival_ms);
    Some(Fields {
        id,
        rule: text(&j["rule"]).unwrap_or_default(),
        priority: text(&j["priority"]).unwrap_or_default(),
        state: text(&j["state"]).unwrap_or_default(),
        device: text(&j["device"]),
        devices: j["devices"]
            .as_array()
            .map(|a| a.iter().filter_map(text).collect())
            .unwrap_or_default(),
        room: text(&j["room"]),
        time_ms,
        arrival_ms: a.arrival_ms,
    })
}

impl Fields {
    fn has_device(&self, d: &str) -> bool {
        self.device.as_deref() == Some(d) || self.devices.iter().any(|x| x == d)
    }

    fn fits(&self, rule: Option<&str>, device: Option<&str>, room: Option<&str>) -> bool {
        rule.is_none_or(|r| self.rule == r)
            && device.is_none_or(|d| self.has_device(d))
            && room.is_none_or(|r| self.room.as_deref() == Some(r))
    }
}

/// The outcome of one expectation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExpectationResult {
    pub name: String,
    pub rule: String,
    pub priority: Option<String>,
    pub device: Option<String>,
    pub room: Option<String>,
    /// The event the deadline counts from (`start` when none).
    pub after: String,
    pub within_s: f64,
    pub met: bool,
    /// The matched alert's id.
    pub alert_id: Option<String>,
    /// Virtual seconds from the anchor to the alert's gateway time.
    pub latency_s: Option<f64>,
    /// Virtual seconds from the anchor to its arrival at the simulator.
    pub arrival_latency_s: Option<f64>,
    /// Why it is not met (or a note when it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The outcome of a scenario's expectations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Every expectation met and (with `nothing_else`) nothing unexpected. Not serialized: the
    /// report carries it at its top.
    #[serde(skip)]
    pub pass: bool,
    pub expectations: Vec<ExpectationResult>,
    /// First message of every unexpected alert (with `nothing_else`).
    pub unexpected: Vec<Json>,
    /// Alerts tolerated by an `[[allow]]` entry (their ids).
    pub allowed: Vec<String>,
    /// The latest virtual instant an unmet expectation could still be met at (ms), if any.
    pub pending_until_ms: Option<i64>,
}

fn secs(ms: i64) -> f64 {
    (ms as f64) / 1000.0
}

fn allowed(allow: &[Allow], f: &Fields) -> bool {
    allow
        .iter()
        .any(|a| f.fits(a.rule.as_deref(), a.device.as_deref(), a.room.as_deref()))
}

/// Matches `alerts` (in arrival order) against the scenario. `start_ms` is the virtual start,
/// `anchors` the virtual time each named event happened (absent: not yet).
pub fn evaluate(sc: &Scenario, start_ms: i64, anchors: &HashMap<String, i64>, alerts: &[ReceivedAlert]) -> Evaluation {
    let parsed: Vec<Fields> = alerts.iter().filter_map(fields).collect();
    let mut taken: HashMap<String, String> = HashMap::new(); // alert id -> expectation name
    let mut by_name: HashMap<&str, String> = HashMap::new(); // expectation name -> alert id
    let mut results = Vec::new();
    let mut pending_until: Option<i64> = None;
    for e in &sc.expect {
        let r = match_one(e, start_ms, anchors, &parsed, &taken, &by_name);
        if let Some(id) = &r.0.alert_id {
            taken.entry(id.clone()).or_insert_with(|| e.name.clone());
            by_name.insert(&e.name, id.clone());
        } else if let Some(deadline) = r.1 {
            pending_until = Some(pending_until.map_or(deadline, |p: i64| p.max(deadline)));
        }
        results.push(r.0);
    }
    let mut unexpected = Vec::new();
    let mut tolerated = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut first: BTreeMap<usize, &Fields> = BTreeMap::new();
    for (i, f) in parsed.iter().enumerate() {
        if f.state == "active" && !taken.contains_key(&f.id) && seen.insert(&f.id) {
            first.insert(i, f);
        }
    }
    for (i, f) in first {
        if allowed(&sc.allow, f) {
            tolerated.push(f.id.clone());
        } else {
            // The raw message, as received.
            if let Some(raw) = alerts
                .iter()
                .filter(|a| fields(a).as_ref() == Some(f))
                .map(|a| &a.json)
                .next()
            {
                unexpected.push(raw.clone());
            } else if let Some(a) = alerts.get(i) {
                unexpected.push(a.json.clone());
            }
        }
    }
    let pass = results.iter().all(|r| r.met) && (!sc.nothing_else || unexpected.is_empty());
    Evaluation {
        pass,
        expectations: results,
        unexpected,
        allowed: tolerated,
        pending_until_ms: pending_until,
    }
}

/// One expectation: its result, and when unmet the deadline (virtual ms) it can still be met by.
fn match_one(
    e: &Expectation,
    start_ms: i64,
    anchors: &HashMap<String, i64>,
    alerts: &[Fields],
    taken: &HashMap<String, String>,
    by_name: &HashMap<&str, String>,
) -> (ExpectationResult, Option<i64>) {
    let mut r = ExpectationResult {
        name: e.name.clone(),
        rule: e.rule.clone(),
        priority: e.priority.clone(),
        device: e.device.clone(),
        room: e.room.clone(),
        after: e.after.clone().unwrap_or_else(|| "start".into()),
        within_s: secs(e.within_ms),
        met: false,
        alert_id: None,
        latency_s: None,
        arrival_latency_s: None,
        reason: None,
    };
    let anchor = match &e.after {
        None => start_ms,
        Some(name) => match anchors.get(name) {
            Some(t) => *t,
            None => {
                r.reason = Some(format!("event `{name}` did not happen (yet)"));
                return (r, None);
            }
        },
    };
    let required_id = match &e.same_alert_as {
        Some(other) => match by_name.get(other.as_str()) {
            Some(id) => Some(id.clone()),
            None => {
                r.reason = Some(format!("expectation `{other}` (same_alert_as) is not met"));
                return (r, Some(anchor + e.within_ms));
            }
        },
        None => None,
    };
    let lo = anchor + e.not_before_ms.unwrap_or(-DEFAULT_EARLY_TOLERANCE_MS);
    let hi = anchor + e.within_ms;
    let fits = |f: &&Fields| {
        f.state == "active"
            && f.fits(Some(&e.rule), e.device.as_deref(), e.room.as_deref())
            && e.priority.as_deref().is_none_or(|p| f.priority == p)
            && match &required_id {
                Some(id) => &f.id == id,
                None => !taken.contains_key(&f.id),
            }
    };
    let candidates: Vec<&Fields> = alerts.iter().filter(fits).collect();
    let best = candidates
        .iter()
        .filter(|f| f.time_ms >= lo && f.time_ms <= hi)
        .min_by_key(|f| f.time_ms);
    match best {
        Some(f) => {
            r.met = true;
            r.alert_id = Some(f.id.clone());
            r.latency_s = Some(secs(f.time_ms - anchor));
            r.arrival_latency_s = Some(secs(f.arrival_ms - anchor));
            (r, None)
        }
        None => {
            r.reason = Some(match candidates.first() {
                Some(f) if f.time_ms < lo => format!(
                    "alert {} came too early: {:+.1} s from `{}`",
                    f.id,
                    secs(f.time_ms - anchor),
                    r.after
                ),
                Some(f) => format!(
                    "alert {} came too late: {:+.1} s from `{}` (deadline {} s)",
                    f.id,
                    secs(f.time_ms - anchor),
                    r.after,
                    r.within_s
                ),
                None => {
                    let near: Vec<String> = alerts
                        .iter()
                        .filter(|f| f.rule == e.rule)
                        .map(|f| format!("{} {} {} device={:?}", f.id, f.rule, f.priority, f.device))
                        .collect();
                    if near.is_empty() {
                        "no such alert".into()
                    } else {
                        format!("no fitting alert; same rule: {}", near.join("; "))
                    }
                }
            });
            (r, Some(hi))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse;
    use serde_json::json;

    const T0: i64 = 1_777_642_200_000;

    fn scenario(expect: &str, nothing_else: bool) -> Scenario {
        let text = format!(
            r#"
[scenario]
name = "t"
registry = "../test/devices.toml"
duration_s = 120
nothing_else = {nothing_else}

[[timeline]]
name = "suspected"
at_s = 30
device = "radar-t-101"
set = {{ fall_state = "suspected" }}

{expect}
"#
        );
        parse(&text, &crate::scenario::tests::test_dir()).expect("valid")
    }

    fn alert(arrival: i64, j: Json) -> ReceivedAlert {
        ReceivedAlert {
            arrival_ms: arrival,
            json: j,
        }
    }

    fn msg(id: &str, rule: &str, prio: &str, device: &str, at: i64) -> Json {
        json!({"id": id, "seq": 1, "rule": rule, "priority": prio, "state": "active", "device": device,
               "devices": [device], "room": "T-101", "raised_at": at, "updated_at": at})
    }

    const UPGRADE: &str = r#"
[[expect]]
name = "suspected"
rule = "R2"
priority = "P2"
device = "radar-t-101"
after = "suspected"
within_s = 10

[[expect]]
name = "upgraded"
rule = "R1"
priority = "P1"
device = "radar-t-101"
after = "suspected"
within_s = 75
not_before_s = 50
same_alert_as = "suspected"
"#;

    #[test]
    fn an_upgrade_keeps_the_id_and_meets_both_expectations() {
        let sc = scenario(UPGRADE, true);
        let anchors = HashMap::from([("suspected".to_owned(), T0 + 30_000)]);
        let alerts = vec![
            alert(T0 + 33_000, msg("a-1", "R2", "P2", "radar-t-101", T0 + 31_000)),
            alert(T0 + 92_000, msg("a-1", "R1", "P1", "radar-t-101", T0 + 90_500)),
        ];
        let ev = evaluate(&sc, T0, &anchors, &alerts);
        assert!(ev.pass, "{ev:#?}");
        assert_eq!(ev.expectations[0].latency_s, Some(1.0));
        assert_eq!(ev.expectations[0].arrival_latency_s, Some(3.0));
        assert_eq!(ev.expectations[1].alert_id.as_deref(), Some("a-1"));
        assert_eq!(ev.expectations[1].latency_s, Some(60.5));

        // An upgrade under a new id does not count, and that new alert is unexpected.
        let alerts = vec![
            alert(T0 + 33_000, msg("a-1", "R2", "P2", "radar-t-101", T0 + 31_000)),
            alert(T0 + 92_000, msg("a-2", "R1", "P1", "radar-t-101", T0 + 90_500)),
        ];
        let ev = evaluate(&sc, T0, &anchors, &alerts);
        assert!(!ev.pass && !ev.expectations[1].met);
        assert_eq!(ev.unexpected.len(), 1);
        assert_eq!(ev.pending_until_ms, Some(T0 + 30_000 + 75_000));
    }

    #[test]
    fn deadlines_priorities_and_early_alerts() {
        let sc = scenario(UPGRADE, true);
        let anchors = HashMap::from([("suspected".to_owned(), T0 + 30_000)]);
        // Too late.
        let ev = evaluate(
            &sc,
            T0,
            &anchors,
            &[alert(T0 + 45_000, msg("a-1", "R2", "P2", "radar-t-101", T0 + 41_000))],
        );
        assert!(!ev.expectations[0].met);
        assert!(
            ev.expectations[0].reason.as_deref().unwrap_or("").contains("too late"),
            "{ev:#?}"
        );
        // Wrong priority.
        let ev = evaluate(
            &sc,
            T0,
            &anchors,
            &[alert(T0 + 33_000, msg("a-1", "R2", "P3", "radar-t-101", T0 + 31_000))],
        );
        assert!(!ev.expectations[0].met);
        // An upgrade before not_before_s is too early.
        let ev = evaluate(
            &sc,
            T0,
            &anchors,
            &[
                alert(T0 + 33_000, msg("a-1", "R2", "P2", "radar-t-101", T0 + 31_000)),
                alert(T0 + 36_000, msg("a-1", "R1", "P1", "radar-t-101", T0 + 35_000)),
            ],
        );
        assert!(ev.expectations[0].met && !ev.expectations[1].met);
        assert!(ev.expectations[1].reason.as_deref().unwrap_or("").contains("too early"));
        // The event never happened.
        let ev = evaluate(&sc, T0, &HashMap::new(), &[]);
        assert!(ev.expectations[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("did not happen"));
    }

    #[test]
    fn nothing_else_flags_other_active_alerts_but_not_updates_or_allowed_ones() {
        let allow = "[[allow]]\nrule = \"R18\"\ndevice = \"watch-r-0001\"\n";
        let sc = scenario(&format!("{UPGRADE}\n{allow}"), true);
        let anchors = HashMap::from([("suspected".to_owned(), T0 + 30_000)]);
        let mut ack = msg("a-1", "R2", "P2", "radar-t-101", T0 + 31_000);
        ack["state"] = json!("acknowledged");
        let alerts = vec![
            alert(T0 + 33_000, msg("a-1", "R2", "P2", "radar-t-101", T0 + 31_000)),
            alert(T0 + 34_000, ack),
            alert(T0 + 92_000, msg("a-1", "R1", "P1", "radar-t-101", T0 + 90_500)),
            alert(T0 + 50_000, msg("b-1", "R18", "P4", "watch-r-0001", T0 + 49_000)),
            alert(T0 + 60_000, msg("c-1", "R17", "P2", "smoke-t-101", T0 + 59_000)),
            alert(T0 + 61_000, msg("c-1", "R17", "P2", "smoke-t-101", T0 + 59_000)),
        ];
        let ev = evaluate(&sc, T0, &anchors, &alerts);
        assert!(!ev.pass);
        assert_eq!(ev.unexpected.len(), 1, "{ev:#?}");
        assert_eq!(ev.unexpected[0]["id"], json!("c-1"));
        assert_eq!(ev.allowed, vec!["b-1".to_owned()]);
        let relaxed = scenario(UPGRADE, false);
        assert!(evaluate(&relaxed, T0, &anchors, &alerts).pass);
    }

    #[test]
    fn incident_devices_and_numeric_ids_match() {
        let sc = scenario(
            "[[expect]]\nrule = \"R1\"\ndevice = \"watch-r-0001\"\nwithin_s = 60\n",
            true,
        );
        let j = json!({"id": 17, "rule": "R1", "priority": "P1", "state": "active", "device": "radar-t-101",
                       "devices": ["radar-t-101", "watch-r-0001"], "room": "T-101", "raised_at": T0 + 5_000});
        let ev = evaluate(&sc, T0, &HashMap::new(), &[alert(T0 + 6_000, j)]);
        assert!(ev.pass, "{ev:#?}");
        assert_eq!(ev.expectations[0].alert_id.as_deref(), Some("17"));
        // A message without gateway times is timed by its arrival.
        let j = json!({"id": "x", "rule": "R1", "state": "active", "device": "watch-r-0001"});
        let ev = evaluate(&sc, T0, &HashMap::new(), &[alert(T0 + 7_000, j)]);
        assert_eq!(ev.expectations[0].latency_s, Some(7.0));
    }
}
