//! Behaviour of the shipped catalog on virtual time: every `now_ms` is passed in, nothing sleeps.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::reading::Record;
use crate::reading::Value;
use crate::registry::Registry;

const SHIPPED: &str = include_str!("../../../config/rules.toml");

/// 2024-01-01 00:00 UTC = 08:00 site local time (UTC+8).
const T0: i64 = 1_704_067_200_000;

const REGISTRY: &str = r#"
site = "nh-t"
[[devices]]
id = "gas-1"
class = "gas_detector"
room = "K-1"
zone = "kitchen"
interval_s = 3600
[[devices]]
id = "co-1"
class = "co_detector"
room = "B-1"
zone = "boiler_room"
interval_s = 3600
[[devices]]
id = "heat-1"
class = "heat_detector"
room = "K-1"
zone = "kitchen"
interval_s = 3600
[[devices]]
id = "smoke-1"
class = "smoke_alarm"
room = "A-101"
zone = "bedroom"
interval_s = 3600
[[devices]]
id = "radar-1"
class = "fall_radar"
room = "A-101"
zone = "bedroom"
interval_s = 3600
[[devices]]
id = "radar-fast"
class = "fall_radar"
room = "A-102"
zone = "bathroom"
interval_s = 10
[[devices]]
id = "door-fast"
class = "door_contact"
room = "A-102"
zone = "entrance"
interval_s = 10
[[devices]]
id = "bed-1"
class = "bed_sensor"
room = "A-101"
zone = "bedroom"
resident = "r-1"
care_flags = ["high_fall_risk"]
interval_s = 3600
[[devices]]
id = "bed-2"
class = "bed_sensor"
room = "A-102"
zone = "bedroom"
resident = "r-2"
interval_s = 3600
[[devices]]
id = "watch-1"
class = "wearable"
room = "A-101"
zone = "bedroom"
resident = "r-1"
care_flags = ["high_fall_risk", "wander_risk"]
interval_s = 3600
[[devices]]
id = "watch-copd"
class = "wearable"
room = "A-103"
zone = "bedroom"
resident = "r-3"
care_flags = ["copd"]
interval_s = 3600
[[devices]]
id = "door-1"
class = "door_contact"
room = "A-101"
zone = "entrance"
interval_s = 3600
[[devices]]
id = "door-2"
class = "door_contact"
room = "A-102"
zone = "entrance"
interval_s = 3600
[[devices]]
id = "exit-1"
class = "door_contact"
room = "Lobby"
zone = "exit"
interval_s = 3600
"#;

fn catalog() -> Arc<RuleSet> {
    match RuleSet::parse(Path::new("config/rules.toml"), SHIPPED) {
        Ok(r) => Arc::new(r),
        Err(e) => panic!("shipped catalog invalid:\n{e}"),
    }
}

fn registry() -> Arc<Registry> {
    Arc::new(Registry::parse(Path::new("devices.toml"), REGISTRY).expect("test registry"))
}

/// Gateway time `s` seconds after T0.
fn at(s: i64) -> i64 {
    T0 + s * 1000
}

/// Gateway time of local wall-clock `h:m` on the first local day (08:00 = T0; earlier hours
/// are the next morning).
fn local(h: i64, m: i64) -> i64 {
    let minutes = (h * 60 + m - 8 * 60).rem_euclid(24 * 60);
    T0 + minutes * 60_000
}

fn n(v: f64) -> Value {
    Value::Num(v)
}
fn flag(v: bool) -> Value {
    Value::Bool(v)
}
fn t(v: &str) -> Value {
    Value::Text(v.to_owned())
}

struct Bench {
    engine: Engine,
    registry: Arc<Registry>,
    /// With [`Bench::reporting`]: the last reading of each device seen, which `run` repeats
    /// every [`REPORT_EVERY_MS`] as a device reporting on its own cadence does.
    last: Option<BTreeMap<String, Vec<(String, Value)>>>,
}

/// How often a reporting device repeats its last reading in [`Bench::run`].
const REPORT_EVERY_MS: i64 = 5_000;

impl Bench {
    fn new() -> Bench {
        Bench::starting(T0)
    }
    fn starting(now: i64) -> Bench {
        Bench::with_rules(catalog(), now)
    }
    fn with_rules(rules: Arc<RuleSet>, now: i64) -> Bench {
        let registry = registry();
        Bench {
            engine: Engine::new(rules, registry.clone(), now),
            registry,
            last: None,
        }
    }
    /// Devices keep reporting their last reading while the clock runs (holds need readings;
    /// the tests of silence use a bench without it).
    fn reporting(mut self) -> Bench {
        self.last = Some(BTreeMap::new());
        self
    }
    fn see(&mut self, device: &str, now: i64, metrics: &[(&str, Value)]) -> Vec<RuleOutput> {
        if let Some(last) = &mut self.last {
            last.insert(
                device.to_owned(),
                metrics.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
            );
        }
        let d = self.registry.get(device).expect("registered test device");
        let record = Record {
            device: device.to_owned(),
            class: d.class.clone(),
            building: d.building.clone(),
            floor: d.floor.clone(),
            room: d.room.clone(),
            zone: d.zone.clone(),
            ts: now,
            ts_recv: now,
            ts_replaced: false,
            seq: None,
            metrics: metrics
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        };
        self.engine.observe(&record, now)
    }
    fn tick(&mut self, now: i64) -> Vec<RuleOutput> {
        self.engine.tick(now)
    }
    /// Ticks every second over `[from, to]`, returning what was raised or cleared and when.
    fn run(&mut self, from: i64, to: i64) -> Vec<RuleOutput> {
        let mut out = Vec::new();
        let mut now = from;
        while now <= to {
            if (now - T0).rem_euclid(REPORT_EVERY_MS) == 0 {
                let repeats: Vec<(String, Vec<(String, Value)>)> = self
                    .last
                    .iter()
                    .flatten()
                    .map(|(d, m)| (d.clone(), m.clone()))
                    .collect();
                for (device, metrics) in repeats {
                    let m: Vec<(&str, Value)> = metrics.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                    out.extend(self.see(&device, now, &m));
                }
            }
            out.extend(self.tick(now));
            now += 1000;
        }
        out
    }
}

/// (rule, priority, at) of every raise of `rule` (when empty: of every rule but R17, which the
/// two fast-reporting devices of the test registry raise whenever a test runs past 30 s).
fn raised(out: &[RuleOutput], rule: &str) -> Vec<(String, Priority, i64)> {
    out.iter()
        .filter_map(|o| match o {
            RuleOutput::Raise(t) if (rule.is_empty() && t.rule != "R17") || t.rule == rule => {
                Some((t.rule.clone(), t.priority, t.at))
            }
            _ => None,
        })
        .collect()
}

/// Every raise but R17's (see [`raised`]).
fn triggers(out: &[RuleOutput]) -> Vec<&Trigger> {
    out.iter()
        .filter_map(|o| match o {
            RuleOutput::Raise(t) if t.rule != "R17" => Some(t),
            _ => None,
        })
        .collect()
}

/// (rule, at) of every clear of `rule` (every rule when empty).
fn cleared(out: &[RuleOutput], rule: &str) -> Vec<(String, i64)> {
    out.iter()
        .filter_map(|o| match o {
            RuleOutput::Clear { rule: r, at, .. } if rule.is_empty() || r == rule => Some((r.clone(), *at)),
            _ => None,
        })
        .collect()
}

fn r(rule: &str, p: Priority, at: i64) -> (String, Priority, i64) {
    (rule.to_owned(), p, at)
}

// ---------------------------------------------------------------------------------------------
// The catalog file

#[test]
fn shipped_catalog_parses_and_contains_r1_to_r18_and_s1() {
    let set = catalog();
    let ids = set.ids();
    for i in 1..=18 {
        let id = format!("R{i}");
        assert!(ids.contains(&id.as_str()), "missing {id}: {ids:?}");
    }
    assert!(ids.contains(&"S1"), "missing S1 (serial link down): {ids:?}");
    for id in ["S2", "S3", "S4", "S5", "S6", "S7"] {
        assert!(ids.contains(&id), "missing {id} (self-supervision): {ids:?}");
    }
    assert!(ids.contains(&"S8"), "missing S8 (MQTT access refused): {ids:?}");
    for id in ["R21", "R22", "R23", "R24"] {
        assert!(ids.contains(&id), "missing {id}: {ids:?}");
    }
    assert!(ids.contains(&"S10"), "missing S10 (broker log overrun): {ids:?}");
    assert_eq!(set.len(), 31);
    assert_eq!(set.escalation_s(Priority::P1), &[60, 180]);
    assert_eq!(set.escalation_s(Priority::P2), &[180, 600]);
    assert_eq!(set.escalation_s(Priority::P3), &[1800]);
    assert!(set.escalation_s(Priority::P4).is_empty());
    assert_eq!(set.correlation_window_ms(), 120_000);
    assert_eq!(set.renotify_suppress_ms(), 60_000);
}

#[test]
fn defaults_apply_when_the_file_omits_them() {
    let set = RuleSet::parse(Path::new("r.toml"), "").expect("empty file is valid");
    assert_eq!(set.escalation_s(Priority::P2), &[180, 600]);
    assert_eq!(set.correlation_window_ms(), 120_000);
    assert_eq!(set.offline_multiple(), 3);
    assert!(set.is_night(local(23, 0)) && set.is_night(local(5, 59)) && !set.is_night(local(6, 0)));
}

#[test]
fn reports_every_rule_error_with_its_line_and_key() {
    let bad = r#"[defaults]
colour = 1
[[rules]]
id = "X1"
name = "A"
kind = "threshold"
priority = "P1"
hazard = "gas"
message = "m"
message_en = "m"
metric = "gas_lell"
above = 1
[[rules]]
id = "X2"
name = "B"
kind = "state"
priority = "P2"
hazard = "gas"
message = "m {colour}"
message_en = "m"
classes = ["toaster"]
care_flags = ["grumpy"]
metric = "gas_lel"
values = [true]
[[rules]]
id = "X3"
name = "C"
kind = "state"
priority = "P9"
hazard = "gas"
message = "m"
message_en = "m"
metric = "sos"
values = [true]
[[rules]]
id = "X1"
name = "OTHER"
kind = "absence"
priority = "P3"
hazard = "device"
message = "m"
message_en = "m"
for_s = 3
"#;
    // Structural errors (unknown key, bad priority) come first and stop semantic checks.
    let errs = RuleSet::parse(Path::new("r.toml"), bad).expect_err("invalid").0;
    let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert!(got.contains(&(2, "defaults.colour")), "{got:?}");
    assert!(got.contains(&(29, "rules.priority")), "{got:?}");

    let semantic = bad.replace("colour = 1\n", "").replace("\"P9\"", "\"P1\"");
    let errs = RuleSet::parse(Path::new("r.toml"), &semantic).expect_err("invalid").0;
    let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.key.as_str())).collect();
    for want in [
        (10, "rules.0.metric"),     // unknown metric
        (18, "rules.1.message"),    // unknown placeholder
        (20, "rules.1.classes"),    // unknown class
        (21, "rules.1.care_flags"), // unknown care flag
        (22, "rules.1.metric"),     // a number in a state rule
        (35, "rules.3.id"),         // same id, another name
        (42, "rules.3.for_s"),      // field of another kind
    ] {
        assert!(got.contains(&want), "missing {want:?} in {got:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Threshold: gas (R13, R14)

#[test]
fn gas_above_10_lel_for_10s_raises_p1() {
    let mut b = Bench::new().reporting();
    assert!(raised(&b.see("gas-1", at(0), &[("gas_lel", n(12.0))]), "R14").is_empty());
    assert!(raised(&b.run(at(1), at(9)), "R14").is_empty());
    let out = b.tick(at(10));
    assert_eq!(raised(&out, "R14"), vec![r("R14", Priority::P1, at(10))]);
    let trig = triggers(&out)[0];
    assert_eq!(trig.subject, "gas-1");
    assert_eq!(trig.room, "K-1");
    assert_eq!(trig.hazard, "gas");
    assert!(trig.latching);
    assert_eq!(trig.value, Some(n(12.0)));
    assert!(
        trig.message.contains("K-1") && trig.message.contains("12"),
        "{}",
        trig.message
    );
    assert!(trig.message_en.contains("12 %LEL"), "{}", trig.message_en);
    // Raised once: no repeat while it holds.
    assert!(raised(&b.run(at(11), at(120)), "R14").is_empty());
}

#[test]
fn gas_window_interrupted_restarts_from_zero() {
    let mut b = Bench::new().reporting();
    b.see("gas-1", at(0), &[("gas_lel", n(12.0))]);
    b.run(at(1), at(8));
    b.see("gas-1", at(8), &[("gas_lel", n(9.9))]);
    b.see("gas-1", at(9), &[("gas_lel", n(12.0))]);
    assert!(raised(&b.run(at(10), at(18)), "R14").is_empty());
    assert_eq!(raised(&b.tick(at(19)), "R14"), vec![r("R14", Priority::P1, at(19))]);
}

#[test]
fn gas_just_at_the_level_raises_just_below_does_not() {
    let mut b = Bench::new().reporting();
    b.see("gas-1", at(0), &[("gas_lel", n(10.0))]);
    assert_eq!(raised(&b.run(at(1), at(10)), "R14").len(), 1);
    let mut b = Bench::new().reporting();
    b.see("gas-1", at(0), &[("gas_lel", n(9.99))]);
    assert!(raised(&b.run(at(1), at(60)), "R14").is_empty());
}

#[test]
fn gas_clears_only_below_5_lel_held_5_min() {
    let mut b = Bench::new().reporting();
    b.see("gas-1", at(0), &[("gas_lel", n(12.0))]);
    b.run(at(1), at(10));
    // Exactly at the clear level is not below it: no clear, however long.
    b.see("gas-1", at(20), &[("gas_lel", n(5.0))]);
    assert!(cleared(&b.run(at(21), at(700)), "R14").is_empty());
    assert!(b.engine.holds("R14", "gas-1"), "5 %LEL is not below the clear level");
    // Just below: the hold starts.
    b.see("gas-1", at(1000), &[("gas_lel", n(4.9))]);
    assert!(!b.engine.holds("R14", "gas-1"));
    assert!(cleared(&b.run(at(1001), at(1299)), "R14").is_empty());
    assert_eq!(cleared(&b.tick(at(1300)), "R14"), vec![("R14".to_owned(), at(1300))]);
}

#[test]
fn gas_clear_hold_interrupted_restarts() {
    let mut b = Bench::new().reporting();
    b.see("gas-1", at(0), &[("gas_lel", n(12.0))]);
    b.run(at(1), at(10));
    b.see("gas-1", at(100), &[("gas_lel", n(4.0))]);
    b.run(at(101), at(300));
    // Back up between the clear and the trigger levels: the clear hold is lost.
    b.see("gas-1", at(300), &[("gas_lel", n(6.0))]);
    b.see("gas-1", at(310), &[("gas_lel", n(4.0))]);
    let out = b.run(at(311), at(700));
    assert_eq!(cleared(&out, "R14"), vec![("R14".to_owned(), at(610))]);
    assert!(raised(&out, "").is_empty(), "no new raise while it re-cleared: {out:?}");
}

#[test]
fn gas_at_25_lel_raises_again_with_the_evacuate_message() {
    let mut b = Bench::new().reporting();
    b.see("gas-1", at(0), &[("gas_lel", n(12.0))]);
    b.run(at(1), at(10));
    let out = b.see("gas-1", at(20), &[("gas_lel", n(26.0))]);
    let t = triggers(&out);
    assert_eq!(t.len(), 1, "{out:?}");
    assert_eq!((t[0].rule.as_str(), t[0].priority), ("R14", Priority::P1));
    assert!(t[0].message_en.contains("evacuate"), "{}", t[0].message_en);
    // Once per episode.
    assert!(raised(&b.see("gas-1", at(30), &[("gas_lel", n(30.0))]), "").is_empty());
}

#[test]
fn gas_device_alarm_flag_raises_p1_at_once() {
    let mut b = Bench::new();
    let out = b.see("gas-1", at(0), &[("gas_alarm", flag(true)), ("gas_lel", n(0.0))]);
    assert_eq!(raised(&out, "R14"), vec![r("R14", Priority::P1, at(0))]);
    assert!(b.engine.holds("R14", "gas-1"));
}

#[test]
fn gas_prealarm_is_upgraded_into_the_gas_alarm() {
    let mut b = Bench::new().reporting();
    b.see("gas-1", at(0), &[("gas_lel", n(6.0))]);
    assert_eq!(raised(&b.run(at(1), at(30)), ""), vec![r("R13", Priority::P3, at(30))]);
    b.see("gas-1", at(40), &[("gas_lel", n(12.0))]);
    let out = b.run(at(41), at(50));
    let t = triggers(&out);
    assert_eq!(t.len(), 1, "{out:?}");
    assert_eq!((t[0].rule.as_str(), t[0].upgrades.as_deref()), ("R14", Some("R13")));
    b.see("gas-1", at(60), &[("gas_lel", n(2.0))]);
    let out = b.run(at(61), at(400));
    assert_eq!(
        cleared(&out, ""),
        vec![("R14".to_owned(), at(360))],
        "one clear, for the upgraded alert"
    );
}

#[test]
fn gas_prealarm_does_not_open_a_second_alert_under_the_gas_alarm() {
    let mut b = Bench::new().reporting();
    b.see("gas-1", at(0), &[("gas_lel", n(15.0))]);
    let out = b.run(at(1), at(120));
    assert_eq!(raised(&out, ""), vec![r("R14", Priority::P1, at(10))]);
}

#[test]
fn gas_suppressed_during_preheat() {
    let mut b = Bench::new().reporting();
    b.see("gas-1", at(0), &[("gas_lel", n(15.0)), ("preheat", flag(true))]);
    // The flag stays in force for readings that do not repeat it.
    b.see("gas-1", at(30), &[("gas_lel", n(15.0))]);
    assert!(raised(&b.run(at(1), at(120)), "").is_empty());
    // The preheat reading did not start the window: it starts when preheat ends.
    b.see("gas-1", at(120), &[("gas_lel", n(15.0)), ("preheat", flag(false))]);
    assert!(raised(&b.run(at(121), at(129)), "R14").is_empty());
    assert_eq!(raised(&b.tick(at(130)), "R14").len(), 1);
}

#[test]
fn gas_suppression_in_the_middle_of_a_window_resets_it() {
    let mut b = Bench::new().reporting();
    b.see("gas-1", at(0), &[("gas_lel", n(12.0))]);
    b.see("gas-1", at(5), &[("gas_lel", n(12.0)), ("test", flag(true))]);
    b.see("gas-1", at(6), &[("gas_lel", n(12.0)), ("test", flag(false))]);
    assert!(raised(&b.run(at(7), at(15)), "R14").is_empty());
    assert_eq!(raised(&b.tick(at(16)), "R14").len(), 1);
}

#[test]
fn maintenance_window_suppresses_thresholds_of_the_device() {
    let text = format!(
        "{SHIPPED}\n[[maintenance]]\ndevices = [\"gas-1\"]\nstart_ms = {}\nend_ms = {}\n",
        at(0),
        at(600)
    );
    let rules = Arc::new(RuleSet::parse(Path::new("r.toml"), &text).expect("valid"));
    let mut b = Bench::new().reporting();
    b.engine = Engine::new(rules, b.registry.clone(), T0);
    b.see("gas-1", at(0), &[("gas_lel", n(15.0))]);
    assert!(raised(&b.run(at(1), at(599)), "").is_empty());
    assert_eq!(
        raised(&b.run(at(600), at(610)), "R14"),
        vec![r("R14", Priority::P1, at(610))]
    );
}

// ---------------------------------------------------------------------------------------------
// Absence (R17)

#[test]
fn absence_raises_after_3_intervals_and_clears_on_the_next_reading() {
    let mut b = Bench::new();
    b.see("radar-fast", at(0), &[("presence", flag(true))]);
    b.see("door-fast", at(0), &[("contact_open", flag(false))]);
    assert!(
        raised(&b.run(at(1), at(30)), "R17").is_empty(),
        "30 s is not longer than 3 x 10 s"
    );
    let out = b.tick(at(31));
    assert_eq!(
        raised(&out, "R17"),
        vec![r("R17", Priority::P3, at(31)), r("R17", Priority::P2, at(31))],
        "door (P3) and radar (P2)"
    );
    assert!(b.engine.holds("R17", "radar-fast"));
    assert!(raised(&b.run(at(32), at(100)), "R17").is_empty(), "raised once");
    let out = b.see("radar-fast", at(101), &[("presence", flag(true))]);
    assert_eq!(cleared(&out, "R17"), vec![("R17".to_owned(), at(101))]);
    assert!(!b.engine.holds("R17", "radar-fast"));
}

/// A record of `device` (class, room) at `now`, built the way the journal hands it to the
/// engine; the other location tags are empty.
fn record_of(device: &str, class: &str, room: &str, now: i64, metrics: &[(&str, Value)]) -> Record {
    Record {
        device: device.into(),
        class: class.into(),
        building: String::new(),
        floor: String::new(),
        room: room.into(),
        zone: String::new(),
        ts: now,
        ts_recv: now,
        ts_replaced: false,
        seq: None,
        metrics: metrics.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
    }
}

/// The journal record of a serial link's state, as the serial source writes it.
fn link(b: &mut Bench, up: bool, now: i64) -> Vec<RuleOutput> {
    let record = record_of("serial:kitchen", "gateway", "K-1", now, &[("link_up", flag(up))]);
    b.engine.observe(&record, now)
}

#[test]
fn a_serial_link_down_speaks_for_its_devices_and_raises_s1_after_its_hold() {
    let mut b = Bench::new();
    b.engine = Engine::new(catalog(), b.registry.clone(), T0)
        .with_links(HashMap::from([("radar-fast".to_owned(), "serial:kitchen".to_owned())]));
    link(&mut b, true, at(0));
    b.see("radar-fast", at(0), &[("presence", flag(true))]);
    b.see("door-fast", at(0), &[("contact_open", flag(false))]);
    // The link goes down at 5 s: the radar on it goes silent, the door (MQTT) too.
    assert!(link(&mut b, false, at(5)).is_empty(), "S1 holds 10 s before it raises");
    let out = b.run(at(6), at(60));
    assert_eq!(
        raised(&out, "S1"),
        vec![r("S1", Priority::P2, at(15))],
        "one link-down alert"
    );
    let r17: Vec<String> = out
        .iter()
        .filter_map(|o| match o {
            RuleOutput::Raise(t) if t.rule == "R17" => Some(t.subject.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        r17,
        vec!["door-fast".to_owned()],
        "the radar's silence is the link's, not its own"
    );
    // The link returns at 61 s: the radar's silence counts from then, 3 x 10 s.
    let out = link(&mut b, true, at(61));
    assert_eq!(cleared(&out, "S1"), vec![("S1".to_owned(), at(61))]);
    assert!(raised(&b.run(at(62), at(91)), "R17").is_empty());
    let out = b.tick(at(92));
    assert_eq!(
        raised(&out, "R17"),
        vec![r("R17", Priority::P2, at(92))],
        "still silent after the link returned"
    );
}

/// A self-supervision flag as `supervise.rs` journals it.
fn gateway_flag(b: &mut Bench, device: &str, metric: &str, value: bool, now: i64) -> Vec<RuleOutput> {
    let record = record_of(device, "gateway", "", now, &[(metric, flag(value))]);
    b.engine.observe(&record, now)
}

#[test]
fn self_supervision_flags_raise_s2_to_s7_at_once_and_event_flags_latch() {
    // (device, metric, faulty value, rule, priority, latching)
    let cases = [
        ("gateway:mqtt", "mqtt_receiving", false, "S2", Priority::P2, false),
        ("gateway:influx", "db_writes_ok", false, "S3", Priority::P3, false),
        (
            "gateway:journal",
            "journal_budget_high",
            true,
            "S4",
            Priority::P3,
            false,
        ),
        ("gateway:journal", "journal_dropping", true, "S5", Priority::P2, true),
        ("gateway:journal", "journal_recovered", true, "S6", Priority::P2, true),
        ("gateway:clock", "clock_jumped", true, "S7", Priority::P3, true),
        (
            "gateway:access:smoke-1",
            "access_refused",
            true,
            "S8",
            Priority::P2,
            false,
        ),
    ];
    for (device, metric, bad, rule, priority, latching) in cases {
        let mut b = Bench::new();
        assert!(
            gateway_flag(&mut b, device, metric, !bad, at(0)).is_empty(),
            "{rule}: healthy value"
        );
        let out = gateway_flag(&mut b, device, metric, bad, at(1));
        assert_eq!(raised(&out, rule), vec![r(rule, priority, at(1))], "{rule}");
        let t = triggers(&out);
        assert_eq!(t.len(), 1, "{rule}: nothing else raised: {out:?}");
        assert_eq!((t[0].device.as_str(), t[0].hazard.as_str()), (device, "device"));
        assert_eq!(t[0].latching, latching, "{rule}");
        assert!(t[0].message_en.contains(device), "{rule}: {}", t[0].message_en);
        assert!(
            !t[0].message.contains('{'),
            "{rule}: placeholders filled: {}",
            t[0].message
        );
        // On change only: the same value again raises nothing more.
        assert!(raised(&gateway_flag(&mut b, device, metric, bad, at(2)), rule).is_empty());
        // Back to healthy: cleared (a latching alert becomes resolvable by a person).
        let out = gateway_flag(&mut b, device, metric, !bad, at(3));
        assert_eq!(cleared(&out, rule), vec![(rule.to_owned(), at(3))], "{rule}");
    }
    // A serial link's own rule is untouched by the new flags, and theirs by `link_up`.
    let mut b = Bench::new();
    assert!(triggers(&gateway_flag(&mut b, "gateway:mqtt", "link_up", false, at(0))).is_empty());
    let out = b.run(at(1), at(20));
    assert_eq!(raised(&out, "S1").len(), 1, "S1 still holds for any gateway link_up");
}

#[test]
fn absence_of_a_non_life_safety_device_is_p3_and_never_heard_devices_count_from_start() {
    let mut b = Bench::new();
    let out = b.run(at(1), at(31));
    let door: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            RuleOutput::Raise(t) if t.device == "door-fast" => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(door.len(), 1);
    assert_eq!((door[0].rule.as_str(), door[0].priority), ("R17", Priority::P3));
    assert!(door[0].message_en.contains("silent 31 s"), "{}", door[0].message_en);
}

// ---------------------------------------------------------------------------------------------
// Heat: rate of rise and levels (R12)

#[test]
fn rate_of_rise_4_per_min_above_46_raises_p1() {
    let mut b = Bench::new();
    let mut out = Vec::new();
    for (s, v) in [(0, 38.0), (15, 40.0), (30, 42.0), (45, 44.5), (60, 46.5)] {
        out.extend(b.see("heat-1", at(s), &[("temperature", n(v))]));
    }
    assert_eq!(raised(&out, "R12"), vec![r("R12", Priority::P1, at(60))]);
    assert!(triggers(&out)[0].message_en.contains("rising fast"));
}

#[test]
fn slow_rise_below_the_static_level_raises_nothing_then_50_is_a_p2_prealarm() {
    let mut b = Bench::new();
    let mut out = Vec::new();
    for i in 0..=22 {
        // +0.5 degC per minute, 38 -> 49.
        out.extend(b.see("heat-1", at(i * 60), &[("temperature", n(38.0 + 0.5 * i as f64))]));
    }
    assert!(raised(&out, "R12").is_empty(), "{out:?}");
    let out = b.see("heat-1", at(23 * 60), &[("temperature", n(50.0))]);
    assert_eq!(raised(&out, "R12"), vec![r("R12", Priority::P2, at(23 * 60))]);
    let out = b.see("heat-1", at(24 * 60), &[("temperature", n(58.0))]);
    assert_eq!(raised(&out, "R12"), vec![r("R12", Priority::P1, at(24 * 60))]);
}

#[test]
fn fast_rise_below_the_floor_raises_nothing() {
    let mut b = Bench::new();
    let mut out = Vec::new();
    for (s, v) in [(0, 20.0), (30, 30.0), (60, 40.0), (90, 45.0)] {
        out.extend(b.see("heat-1", at(s), &[("temperature", n(v))]));
    }
    assert!(raised(&out, "R12").is_empty());
}

// ---------------------------------------------------------------------------------------------
// CO curve (R15)

#[test]
fn co_300_ppm_raises_p1_at_once() {
    let mut b = Bench::new();
    let out = b.see("co-1", at(0), &[("co_ppm", n(300.0))]);
    assert_eq!(raised(&out, "R15"), vec![r("R15", Priority::P1, at(0))]);
}

#[test]
fn co_100_ppm_sustained_10_min_raises_p1() {
    let mut b = Bench::new().reporting();
    b.see("co-1", at(0), &[("co_ppm", n(120.0))]);
    assert!(raised(&b.run(at(1), at(599)), "R15").is_empty());
    assert_eq!(raised(&b.tick(at(600)), "R15"), vec![r("R15", Priority::P1, at(600))]);
}

#[test]
fn co_50_ppm_sustained_60_min_raises_p1_and_99_ppm_does_not_take_the_10_min_branch() {
    let mut b = Bench::new().reporting();
    b.see("co-1", at(0), &[("co_ppm", n(99.0))]);
    assert!(raised(&b.run(at(1), at(3599)), "R15").is_empty());
    assert_eq!(raised(&b.tick(at(3600)), "R15"), vec![r("R15", Priority::P1, at(3600))]);
}

#[test]
fn co_30_ppm_sustained_120_min_is_a_p3_advisory_then_p1_at_50_for_60_min() {
    let mut b = Bench::new().reporting();
    b.see("co-1", at(0), &[("co_ppm", n(35.0))]);
    let out = b.run(at(60), at(7200));
    assert_eq!(raised(&out, "R15"), vec![r("R15", Priority::P3, at(7200))]);
    b.see("co-1", at(7300), &[("co_ppm", n(55.0))]);
    let out = b.run(at(7301), at(7300 + 3600));
    assert_eq!(raised(&out, "R15"), vec![r("R15", Priority::P1, at(7300 + 3600))]);
}

#[test]
fn co_clears_below_20_ppm_after_10_min() {
    let mut b = Bench::new();
    b.see("co-1", at(0), &[("co_ppm", n(400.0))]);
    b.see("co-1", at(60), &[("co_ppm", n(20.0))]);
    assert!(cleared(&b.run(at(61), at(1000)), "R15").is_empty());
    b.see("co-1", at(1000), &[("co_ppm", n(19.0))]);
    assert!(cleared(&b.run(at(1001), at(1599)), "R15").is_empty());
    assert_eq!(cleared(&b.tick(at(1600)), "R15"), vec![("R15".to_owned(), at(1600))]);
}

// ---------------------------------------------------------------------------------------------
// Falls (R1, R2)

#[test]
fn confirmed_fall_raises_p1_person_centred() {
    let mut b = Bench::new();
    let out = b.see("radar-1", at(0), &[("fall_state", t("confirmed"))]);
    let tr = triggers(&out);
    assert_eq!((tr[0].rule.as_str(), tr[0].priority), ("R1", Priority::P1));
    assert!(tr[0].latching && tr[0].person_centred);
    assert_eq!(tr[0].hazard, "fall");
}

#[test]
fn suspected_fall_not_cleared_within_60s_upgrades_to_r1() {
    let mut b = Bench::new();
    let out = b.see("radar-1", at(0), &[("fall_state", t("suspected"))]);
    assert_eq!(raised(&out, ""), vec![r("R2", Priority::P2, at(0))]);
    assert!(raised(&b.run(at(1), at(59)), "").is_empty());
    let out = b.tick(at(60));
    let tr = triggers(&out);
    assert_eq!(tr.len(), 1, "{out:?}");
    assert_eq!(
        (tr[0].rule.as_str(), tr[0].priority, tr[0].upgrades.as_deref()),
        ("R1", Priority::P1, Some("R2"))
    );
    assert_eq!(tr[0].value, Some(t("suspected")));
    assert!(b.engine.holds("R1", "radar-1"));
    assert!(raised(&b.run(at(61), at(200)), "").is_empty());
    // The device reports no fall: the (upgraded) alert's condition is gone.
    let out = b.see("radar-1", at(200), &[("fall_state", t("none"))]);
    assert_eq!(cleared(&out, ""), vec![("R1".to_owned(), at(200))]);
}

#[test]
fn suspected_fall_cleared_within_60s_does_not_upgrade() {
    let mut b = Bench::new();
    b.see("radar-1", at(0), &[("fall_state", t("suspected"))]);
    let out = b.see("radar-1", at(30), &[("fall_state", t("none"))]);
    assert_eq!(cleared(&out, ""), vec![("R2".to_owned(), at(30))]);
    assert!(raised(&b.run(at(31), at(120)), "").is_empty());
}

#[test]
fn suspected_then_real_fall_upgrades_the_same_alert() {
    let mut b = Bench::new();
    b.see("radar-1", at(0), &[("fall_state", t("suspected"))]);
    let out = b.see("radar-1", at(20), &[("fall_state", t("fall"))]);
    let tr = triggers(&out);
    assert_eq!(tr.len(), 1, "{out:?}");
    assert_eq!((tr[0].rule.as_str(), tr[0].upgrades.as_deref()), ("R1", Some("R2")));
    assert!(cleared(&out, "").is_empty(), "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// State rules with a window (R7), vitals bands (R8, R9)

#[test]
fn wearable_not_worn_for_10_min_raises_p3_and_a_wear_restarts_the_window() {
    let mut b = Bench::new().reporting();
    b.see("watch-1", at(0), &[("worn", flag(false))]);
    b.see("watch-1", at(300), &[("worn", flag(true))]);
    b.see("watch-1", at(310), &[("worn", flag(false))]);
    assert!(raised(&b.run(at(311), at(909)), "R7").is_empty());
    assert_eq!(raised(&b.tick(at(910)), "R7"), vec![r("R7", Priority::P3, at(910))]);
    assert_eq!(
        cleared(&b.see("watch-1", at(1000), &[("worn", flag(true))]), "R7").len(),
        1
    );
}

#[test]
fn very_low_heart_rate_raises_p2_at_5_min_and_the_p3_band_does_not_repeat_it() {
    let mut b = Bench::new().reporting();
    b.see("watch-1", at(0), &[("heart_rate", n(38.0))]);
    let out = b.run(at(1), at(900));
    assert_eq!(raised(&out, "R8"), vec![r("R8", Priority::P2, at(300))]);
    // 52 is inside 51..110 but not yet past the 5 bpm hysteresis: no clear.
    b.see("watch-1", at(900), &[("heart_rate", n(52.0))]);
    assert!(cleared(&b.run(at(901), at(1500)), "R8").is_empty());
    b.see("watch-1", at(1500), &[("heart_rate", n(70.0))]);
    assert_eq!(
        cleared(&b.run(at(1501), at(1800)), "R8"),
        vec![("R8".to_owned(), at(1800))]
    );
}

#[test]
fn spo2_scale_1_raises_p2_then_p1_while_copd_residents_use_scale_2() {
    let mut b = Bench::new().reporting();
    b.see("watch-1", at(0), &[("spo2", n(90.0))]);
    b.see("watch-copd", at(0), &[("spo2", n(86.0))]);
    let out = b.run(at(1), at(120));
    assert_eq!(raised(&out, "R9"), vec![r("R9", Priority::P2, at(120))]);
    assert_eq!(triggers(&out)[0].device, "watch-1");
    b.see("watch-1", at(130), &[("spo2", n(87.0))]);
    let out = b.run(at(131), at(250));
    assert_eq!(raised(&out, "R9"), vec![r("R9", Priority::P1, at(250))]);
    b.see("watch-copd", at(300), &[("spo2", n(83.0))]);
    let out = b.run(at(301), at(420));
    assert_eq!(raised(&out, "R9"), vec![r("R9", Priority::P2, at(420))]);
    assert_eq!(triggers(&out)[0].device, "watch-copd");
}

// ---------------------------------------------------------------------------------------------
// Night windows and care flags (R5, R6)

#[test]
fn bed_exit_at_night_for_high_fall_risk_raises_after_15_min_inside_the_night_window() {
    let mut b = Bench::starting(local(21, 0)).reporting();
    b.see("bed-1", local(21, 50), &[("bed_occupied", flag(false))]);
    b.see("bed-2", local(21, 50), &[("bed_occupied", flag(false))]);
    // The window starts at 22:00, not at the 21:50 reading.
    let out = b.run(local(21, 51), local(22, 14) + 59_000);
    assert!(raised(&out, "R5").is_empty(), "{out:?}");
    let out = b.tick(local(22, 15));
    assert_eq!(raised(&out, "R5"), vec![r("R5", Priority::P2, local(22, 15))]);
    assert_eq!(triggers(&out)[0].resident.as_deref(), Some("r-1"));
    assert!(
        raised(&b.run(local(22, 16), local(23, 0)), "R5").is_empty(),
        "bed-2 has no risk flag"
    );
    // Back in bed for 60 s clears it.
    b.see("bed-1", local(23, 0), &[("bed_occupied", flag(true))]);
    assert!(cleared(&b.tick(local(23, 0) + 59_000), "R5").is_empty());
    assert_eq!(cleared(&b.tick(local(23, 1)), "R5").len(), 1);
}

#[test]
fn bed_exit_in_the_daytime_raises_nothing() {
    let mut b = Bench::starting(local(10, 0));
    b.see("bed-1", local(10, 0), &[("bed_occupied", flag(false))]);
    assert!(raised(&b.run(local(10, 1), local(12, 0)), "R5").is_empty());
}

#[test]
fn night_window_ends_a_pending_bed_exit() {
    let mut b = Bench::starting(local(5, 0));
    b.see("bed-1", local(5, 50), &[("bed_occupied", flag(false))]);
    assert!(raised(&b.run(local(5, 51), local(7, 0)), "R5").is_empty());
}

#[test]
fn doors_at_night_exit_door_p2_wander_risk_room_p1_others_nothing() {
    let mut b = Bench::starting(local(22, 30));
    let exit = b.see("exit-1", local(23, 0), &[("contact_open", flag(true))]);
    assert_eq!(raised(&exit, "R6"), vec![r("R6", Priority::P2, local(23, 0))]);
    let wander = b.see("door-1", local(23, 0), &[("contact_open", flag(true))]);
    assert_eq!(raised(&wander, "R6"), vec![r("R6", Priority::P1, local(23, 0))]);
    let other = b.see("door-2", local(23, 0), &[("contact_open", flag(true))]);
    assert!(raised(&other, "R6").is_empty());
    assert_eq!(
        cleared(&b.see("door-1", local(23, 1), &[("contact_open", flag(false))]), "R6").len(),
        1
    );
    let mut day = Bench::starting(local(12, 0));
    assert!(raised(&day.see("exit-1", local(12, 0), &[("contact_open", flag(true))]), "R6").is_empty());
}

/// Whether the exit door opening at UTC `y-mo-d h:mi` raises R6 on a site in `zone`.
fn exit_door_raises_at(zone: &str, (y, mo, d, h, mi): (i16, i8, i8, i8, i8)) -> bool {
    let now = jiff::tz::TimeZone::UTC
        .to_timestamp(jiff::civil::date(y, mo, d).at(h, mi, 0, 0))
        .expect("valid")
        .as_millisecond();
    let site = crate::site_time::SiteTime::zone(zone).expect("zone");
    let rules = Arc::new(catalog().as_ref().clone().on_site_time(site));
    let mut b = Bench::with_rules(rules, now - 60_000);
    !raised(&b.see("exit-1", now, &[("contact_open", flag(true))]), "R6").is_empty()
}

#[test]
fn the_night_window_is_local_time_in_the_site_zone_across_daylight_saving() {
    // Shanghai (UTC+8, no daylight saving): 22:00 local is 14:00 UTC.
    assert!(!exit_door_raises_at("Asia/Shanghai", (2027, 3, 28, 13, 59)));
    assert!(exit_door_raises_at("Asia/Shanghai", (2027, 3, 28, 14, 0)));
    // Berlin the day before the March change (UTC+1): 22:00 local is 21:00 UTC.
    assert!(!exit_door_raises_at("Europe/Berlin", (2027, 3, 27, 20, 59)));
    assert!(exit_door_raises_at("Europe/Berlin", (2027, 3, 27, 21, 0)));
    // The evening after it (UTC+2): 22:00 local is 20:00 UTC; a fixed offset would be an hour late.
    assert!(!exit_door_raises_at("Europe/Berlin", (2027, 3, 28, 19, 59)));
    assert!(exit_door_raises_at("Europe/Berlin", (2027, 3, 28, 20, 0)));
    // The night window ends at 06:00 local: 04:00 UTC in Berlin's summer.
    assert!(exit_door_raises_at("Europe/Berlin", (2027, 3, 29, 3, 59)));
    assert!(!exit_door_raises_at("Europe/Berlin", (2027, 3, 29, 4, 0)));
}

#[test]
fn a_rules_file_may_pin_a_fixed_offset_over_the_site_zone() {
    let pinned = RuleSet::parse(Path::new("r.toml"), "[defaults]\nutc_offset_min = 60\n").expect("valid");
    assert!(pinned.offset_pinned());
    let berlin = crate::site_time::SiteTime::zone("Europe/Berlin").expect("zone");
    let pinned = pinned.on_site_time(berlin.clone());
    assert_eq!(pinned.site_time().name(), "UTC+01:00");
    let unpinned = RuleSet::parse(Path::new("r.toml"), "")
        .expect("valid")
        .on_site_time(berlin);
    assert_eq!(unpinned.site_time().name(), "Europe/Berlin");
    assert!(
        !catalog().offset_pinned(),
        "the shipped catalog follows the site's zone"
    );
}

// ---------------------------------------------------------------------------------------------
// Smoke, SOS, faults, battery

#[test]
fn smoke_and_sos_raise_p1_at_once() {
    let mut b = Bench::new();
    assert_eq!(
        raised(&b.see("smoke-1", at(0), &[("smoke", flag(true))]), ""),
        vec![r("R11", Priority::P1, at(0))]
    );
    assert!(b.engine.holds("R11", "smoke-1"));
    assert_eq!(
        cleared(&b.see("smoke-1", at(10), &[("smoke", flag(false))]), "R11").len(),
        1
    );
    assert!(!b.engine.holds("R11", "smoke-1"));
    assert_eq!(
        raised(&b.see("watch-1", at(0), &[("sos", flag(true))]), ""),
        vec![r("R4", Priority::P1, at(0))]
    );
}

#[test]
fn device_fault_raises_p2_and_clears_when_normal() {
    let mut b = Bench::new();
    assert_eq!(
        raised(&b.see("smoke-1", at(0), &[("fault", flag(true))]), ""),
        vec![r("R16", Priority::P2, at(0))]
    );
    assert_eq!(
        cleared(&b.see("smoke-1", at(5), &[("fault", flag(false))]), "R16").len(),
        1
    );
}

#[test]
fn low_battery_is_p4_generally_p3_for_smoke_and_clears_above_30() {
    let mut b = Bench::new();
    assert_eq!(
        raised(&b.see("watch-1", at(0), &[("battery_pct", n(15.0))]), ""),
        vec![r("R18", Priority::P4, at(0))]
    );
    assert_eq!(
        raised(&b.see("smoke-1", at(0), &[("battery_pct", n(9.0))]), ""),
        vec![r("R18", Priority::P3, at(0))]
    );
    assert!(cleared(&b.see("watch-1", at(10), &[("battery_pct", n(30.0))]), "").is_empty());
    assert_eq!(
        cleared(&b.see("watch-1", at(20), &[("battery_pct", n(31.0))]), "R18").len(),
        1
    );
    assert_eq!(
        raised(&b.see("door-1", at(0), &[("battery_low", flag(true))]), ""),
        vec![r("R18", Priority::P4, at(0))]
    );
}

// ---------------------------------------------------------------------------------------------
// Restart

#[test]
fn snapshot_restore_mid_window_raises_at_the_original_deadline() {
    let mut b = Bench::new().reporting();
    b.see("co-1", at(0), &[("co_ppm", n(120.0))]);
    b.run(at(1), at(480));
    let json = serde_json::to_string(&b.engine.snapshot()).expect("serializable");
    drop(b);
    // The gateway is down for a minute, then restarts with the saved state.
    let state: EngineState = serde_json::from_str(&json).expect("deserializable");
    let registry = registry();
    let mut b = Bench {
        engine: Engine::restore(catalog(), registry.clone(), state, at(540)),
        registry,
        last: None,
    };
    assert!(raised(&b.run(at(540), at(599)), "R15").is_empty());
    assert_eq!(raised(&b.tick(at(600)), "R15"), vec![r("R15", Priority::P1, at(600))]);
}

#[test]
fn restore_does_not_count_the_gateway_outage_as_device_silence() {
    let mut b = Bench::new();
    b.see("radar-fast", at(0), &[("presence", flag(true))]);
    b.see("door-fast", at(0), &[("contact_open", flag(false))]);
    b.tick(at(20));
    let state = b.engine.snapshot();
    let registry = registry();
    // Down for 5 minutes: the devices were talking, we were not listening.
    let mut b = Bench {
        engine: Engine::restore(catalog(), registry.clone(), state, at(320)),
        registry,
        last: None,
    };
    assert!(raised(&b.tick(at(330)), "R17").is_empty());
    assert_eq!(raised(&b.run(at(331), at(360)), "R17").len(), 2);
}

#[test]
fn restored_open_episode_does_not_raise_again() {
    let mut b = Bench::new();
    b.see("smoke-1", at(0), &[("smoke", flag(true))]);
    let state = b.engine.snapshot();
    let registry = registry();
    let mut b = Bench {
        engine: Engine::restore(catalog(), registry.clone(), state, at(10)),
        registry,
        last: None,
    };
    assert!(raised(&b.see("smoke-1", at(11), &[("smoke", flag(true))]), "R11").is_empty());
    assert!(b.engine.holds("R11", "smoke-1"));
}

#[test]
fn load_state_into_a_fresh_engine_continues_the_window() {
    let mut b = Bench::new().reporting();
    b.see("co-1", at(0), &[("co_ppm", n(120.0))]);
    b.run(at(1), at(480));
    let state = b.engine.snapshot();
    let registry = registry();
    let mut engine = Engine::new(catalog(), registry.clone(), at(540));
    engine.load_state(state);
    let mut b = Bench {
        engine,
        registry,
        last: None,
    };
    assert!(raised(&b.run(at(540), at(599)), "R15").is_empty());
    assert_eq!(raised(&b.tick(at(600)), "R15"), vec![r("R15", Priority::P1, at(600))]);
}

// ---------------------------------------------------------------------------------------------
// Alarms the catalog missed or invented (R21-R24, holds that need readings, serial outages)

/// A reading of a device missing from the registry, as normalization tags it.
fn unregistered(b: &mut Bench, device: &str, now: i64, metrics: &[(&str, Value)]) -> Vec<RuleOutput> {
    let record = record_of(device, crate::registry::UNREGISTERED_CLASS, "", now, metrics);
    b.engine.observe(&record, now)
}

#[test]
fn one_qualifying_reading_then_silence_raises_nothing_for_each_kind_with_a_hold() {
    // threshold (R14, 10 s): one reading of 12 %LEL, then nothing from the detector.
    let mut b = Bench::new();
    b.see("gas-1", at(0), &[("gas_lel", n(12.0))]);
    assert!(raised(&b.run(at(1), at(300)), "R14").is_empty(), "threshold");
    // ... but the reading repeated within the hold raises at the hold's end, as before.
    let mut b = Bench::new();
    b.see("gas-1", at(0), &[("gas_lel", n(12.0))]);
    b.see("gas-1", at(5), &[("gas_lel", n(12.5))]);
    assert!(raised(&b.run(at(6), at(9)), "R14").is_empty());
    assert_eq!(raised(&b.tick(at(10)), "R14"), vec![r("R14", Priority::P1, at(10))]);
    // A reading without the metric does not confirm a measurement.
    let mut b = Bench::new();
    b.see("gas-1", at(0), &[("gas_lel", n(12.0))]);
    b.see("gas-1", at(5), &[("battery_pct", n(80.0))]);
    assert!(
        raised(&b.run(at(6), at(60)), "R14").is_empty(),
        "a battery report is not a gas reading"
    );

    // co_curve (R15, 100 ppm for 10 min).
    let mut b = Bench::new();
    b.see("co-1", at(0), &[("co_ppm", n(120.0))]);
    assert!(raised(&b.run(at(60), at(1200)), "R15").is_empty(), "co_curve");
    let mut b = Bench::new();
    b.see("co-1", at(0), &[("co_ppm", n(120.0))]);
    b.see("co-1", at(300), &[("co_ppm", n(118.0))]);
    assert_eq!(
        raised(&b.run(at(301), at(600)), "R15"),
        vec![r("R15", Priority::P1, at(600))]
    );

    // state (R5, out of bed at night for 15 min): states are reported on change, so any later
    // reading of the device confirms it; none at all is silence.
    let night = local(23, 0);
    let mut b = Bench::starting(night);
    b.see("bed-1", night, &[("bed_occupied", flag(false))]);
    assert!(
        raised(&b.run(night + 1000, night + 1_800_000), "R5").is_empty(),
        "state"
    );
    let mut b = Bench::starting(night);
    b.see("bed-1", night, &[("bed_occupied", flag(false))]);
    b.see("bed-1", night + 600_000, &[("battery_pct", n(90.0))]);
    assert_eq!(
        raised(&b.run(night + 601_000, night + 900_000), "R5"),
        vec![r("R5", Priority::P2, night + 900_000)]
    );

    // rate with a hold (none in the catalog has one): a rule file of its own.
    let rules = r#"
[[rules]]
id = "X1"
name = "FAST_RISE"
kind = "rate"
priority = "P1"
hazard = "fire"
classes = ["heat_detector"]
metric = "temperature"
rise_per_min = 4
for_s = 30
message = "m"
message_en = "m"
"#;
    let set = Arc::new(RuleSet::parse(Path::new("x.toml"), rules).expect("rules"));
    assert_eq!(set.rules()[0].min_readings, 2);
    let registry = registry();
    let mut e = Engine::new(set.clone(), registry.clone(), T0);
    let heat = |e: &mut Engine, s: i64, v: f64| {
        let d = registry.get("heat-1").expect("heat-1");
        let rec = record_of("heat-1", &d.class, &d.room, at(s), &[("temperature", n(v))]);
        e.observe(&rec, at(s))
    };
    heat(&mut e, 0, 30.0);
    // The rise is measured (30 -> 40 over 20 s), then the detector falls silent.
    heat(&mut e, 20, 40.0);
    let mut out = Vec::new();
    for s in 21..=120 {
        out.extend(e.tick(at(s)));
    }
    assert!(
        raised(&out, "X1").is_empty(),
        "rate: one qualifying reading, then silence"
    );
    let mut e = Engine::new(set, registry.clone(), T0);
    heat(&mut e, 0, 30.0);
    heat(&mut e, 20, 40.0);
    heat(&mut e, 35, 45.0);
    let mut out = Vec::new();
    for s in 36..=60 {
        out.extend(e.tick(at(s)));
    }
    assert_eq!(
        raised(&out, "X1"),
        vec![r("X1", Priority::P1, at(50))],
        "rate: confirmed"
    );
}

#[test]
fn spo2_needs_three_readings_over_its_two_minutes() {
    // The case a nurse saw: one reading of 86 %, then silence. Nothing, however long.
    let mut b = Bench::new();
    b.see("watch-1", at(0), &[("spo2", n(86.0))]);
    assert!(raised(&b.run(at(1), at(600)), "R9").is_empty());
    // Two readings over the two minutes are not the three the rule asks for.
    let mut b = Bench::new();
    b.see("watch-1", at(0), &[("spo2", n(86.0))]);
    b.see("watch-1", at(60), &[("spo2", n(86.0))]);
    assert!(raised(&b.run(at(61), at(600)), "R9").is_empty());
    // Three: P1 (<= 88) at the end of the hold.
    let mut b = Bench::new();
    b.see("watch-1", at(0), &[("spo2", n(86.0))]);
    b.see("watch-1", at(60), &[("spo2", n(87.0))]);
    b.see("watch-1", at(90), &[("spo2", n(86.0))]);
    assert!(raised(&b.run(at(91), at(119)), "R9").is_empty());
    assert_eq!(raised(&b.tick(at(120)), "R9"), vec![r("R9", Priority::P1, at(120))]);
}

#[test]
fn an_unregistered_device_in_alarm_raises_r21_and_its_routine_readings_stay_quiet() {
    let mut b = Bench::new();
    // Routine readings, a low battery included: nothing (no room, no resident to page about).
    let out = unregistered(
        &mut b,
        "zigbee:hall_smoke",
        at(0),
        &[("battery_pct", n(5.0)), ("smoke", flag(false))],
    );
    assert!(out.is_empty(), "{out:?}");
    let quiet = b.run(at(1), at(7200));
    assert!(
        !quiet
            .iter()
            .any(|o| matches!(o, RuleOutput::Raise(t) if t.subject == "zigbee:hall_smoke")),
        "no offline supervision without an interval: {quiet:?}"
    );
    // Its alarm: R21 P2, latching, naming the device; no resident alert (R11 is for registered).
    let out = unregistered(&mut b, "zigbee:hall_smoke", at(7300), &[("smoke", flag(true))]);
    assert_eq!(raised(&out, ""), vec![r("R21", Priority::P2, at(7300))]);
    let trig = triggers(&out)[0];
    assert!(trig.latching);
    assert!(
        trig.message.contains("zigbee:hall_smoke") && trig.message_en.contains("register"),
        "{}",
        trig.message_en
    );
    // Each alarm kind of the issue raises it.
    for (i, (metric, value)) in [
        ("gas_alarm", flag(true)),
        ("co_alarm", flag(true)),
        ("sos", flag(true)),
        ("fall_state", t("fall")),
        ("heat_alarm", flag(true)),
        ("alarm_level_dev", t("high")),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("unknown-{i}");
        let out = unregistered(&mut b, &id, at(8000), &[(metric, value)]);
        assert_eq!(raised(&out, ""), vec![r("R21", Priority::P2, at(8000))], "{metric}");
    }
}

#[test]
fn a_detector_stuck_in_preheat_or_test_raises_r22() {
    let mut b = Bench::new();
    // Preheat for 5 min with readings every 30 s: R22 at 300 s, thresholds held back meanwhile.
    let mut out = Vec::new();
    for s in (0..=400).step_by(30) {
        out.extend(b.see("gas-1", at(s), &[("gas_lel", n(7.0)), ("preheat", flag(true))]));
        out.extend(b.run(at(s + 1), at(s + 29)));
    }
    assert_eq!(raised(&out, ""), vec![r("R22", Priority::P2, at(300))]);
    // Warm-up over: R22 clears, and the level is judged again (R13 pre-alarm after 30 s).
    let out = b.see("gas-1", at(450), &[("gas_lel", n(7.0)), ("preheat", flag(false))]);
    assert_eq!(cleared(&out, "R22"), vec![("R22".to_owned(), at(450))]);
    b.see("gas-1", at(470), &[("gas_lel", n(7.0))]);
    assert_eq!(
        raised(&b.run(at(471), at(480)), "R13"),
        vec![r("R13", Priority::P3, at(480))]
    );

    // A smoke alarm holding its test flag past 60 s.
    let mut b = Bench::new();
    let mut out = Vec::new();
    for s in (0..=90).step_by(10) {
        out.extend(b.see("smoke-1", at(s), &[("test", flag(true))]));
    }
    assert_eq!(raised(&out, ""), vec![r("R22", Priority::P2, at(60))]);
}

#[test]
fn a_device_warm_up_time_from_the_registry_replaces_the_default_hold() {
    let registry = Arc::new(
        Registry::parse(
            Path::new("d.toml"),
            "site = \"s\"\n[[devices]]\nid = \"gas-9\"\nclass = \"gas_detector\"\nroom = \"K\"\ninterval_s = 3600\nwarmup_s = 120\n",
        )
        .expect("registry"),
    );
    let mut e = Engine::new(catalog(), registry, T0);
    let mut out = Vec::new();
    for s in (0..=200).step_by(20) {
        let rec = record_of("gas-9", "gas_detector", "K", at(s), &[("preheat", flag(true))]);
        out.extend(e.observe(&rec, at(s)));
    }
    assert_eq!(raised(&out, "R22"), vec![r("R22", Priority::P2, at(120))]);
}

#[test]
fn a_high_level_while_preheating_raises_r23_at_once_and_a_low_one_does_not() {
    let mut b = Bench::new();
    let out = b.see("gas-1", at(0), &[("gas_lel", n(12.0)), ("preheat", flag(true))]);
    assert!(out.is_empty(), "below the high level: held back during preheat");
    let out = b.see("gas-1", at(10), &[("gas_lel", n(30.0)), ("preheat", flag(true))]);
    assert_eq!(raised(&out, ""), vec![r("R23", Priority::P2, at(10))]);
    assert!(triggers(&out)[0].message_en.contains("30 %LEL"));
    let out = b.see("co-1", at(20), &[("co_ppm", n(350.0)), ("preheat", flag(true))]);
    assert_eq!(raised(&out, ""), vec![r("R23", Priority::P2, at(20))]);
    // Preheat over at 30 %LEL: R23 clears, R14 takes over as a real gas alarm.
    let out = b.see("gas-1", at(30), &[("gas_lel", n(30.0)), ("preheat", flag(false))]);
    assert_eq!(cleared(&out, "R23"), vec![("R23".to_owned(), at(30))]);
    assert_eq!(raised(&out, "R14"), vec![r("R14", Priority::P1, at(30))]);
}

#[test]
fn a_self_test_is_an_r24_record_and_past_60_s_a_real_fire() {
    // Test button: smoke with the test flag for 10 s, then back to normal.
    let mut b = Bench::new();
    let out = b.see("smoke-1", at(0), &[("smoke", flag(true)), ("test", flag(true))]);
    assert_eq!(raised(&out, ""), vec![r("R24", Priority::P4, at(0))]);
    assert!(!triggers(&out)[0].latching);
    let mut out = b.see("smoke-1", at(5), &[("smoke", flag(true)), ("test", flag(true))]);
    out.extend(b.see("smoke-1", at(10), &[("smoke", flag(false)), ("test", flag(false))]));
    out.extend(b.run(at(11), at(200)));
    assert!(raised(&out, "").is_empty(), "no fire for a self-test: {out:?}");
    assert_eq!(cleared(&out, "R24"), vec![("R24".to_owned(), at(10))]);

    // Smoke still reported with the test flag after 60 s: a fire (R11 P1), and the stuck test.
    let mut b = Bench::new();
    let mut out = Vec::new();
    for s in (0..=70).step_by(5) {
        out.extend(b.see("smoke-1", at(s), &[("smoke", flag(true)), ("test", flag(true))]));
    }
    let mut got = raised(&out, "");
    got.sort();
    assert_eq!(
        got,
        vec![
            r("R11", Priority::P1, at(60)),
            r("R22", Priority::P2, at(60)),
            r("R24", Priority::P4, at(0))
        ]
    );
    // Smoke without the test flag is a fire at once, as before.
    let mut b = Bench::new();
    let out = b.see("smoke-1", at(0), &[("smoke", flag(true))]);
    assert_eq!(raised(&out, ""), vec![r("R11", Priority::P1, at(0))]);
    // A heat detector's own alarm during a test: a record, then a fire past 60 s.
    let mut b = Bench::new();
    let out = b.see("heat-1", at(0), &[("heat_alarm", flag(true)), ("test", flag(true))]);
    assert_eq!(raised(&out, ""), vec![r("R24", Priority::P4, at(0))]);
    let out = b.see("heat-1", at(61), &[("heat_alarm", flag(true)), ("test", flag(true))]);
    assert_eq!(raised(&out, "R12"), vec![r("R12", Priority::P1, at(61))]);
}

#[test]
fn a_unit_offline_before_a_bus_outage_stays_offline_through_it() {
    let mut b = Bench::new();
    b.engine = Engine::new(catalog(), b.registry.clone(), T0)
        .with_links(HashMap::from([("radar-fast".to_owned(), "serial:kitchen".to_owned())]));
    link(&mut b, true, at(0));
    b.see("radar-fast", at(0), &[("presence", flag(true))]);
    // The radar dies: offline after 3 x 10 s.
    let out = b.run(at(1), at(40));
    assert_eq!(raised(&out, "R17").len(), 2, "the radar and the MQTT door: {out:?}");
    // The bus goes down for 20 s and returns: the radar's alert neither clears nor is raised
    // again (a fresh alert would restart its escalation).
    let mut out = link(&mut b, false, at(50));
    out.extend(b.run(at(51), at(69)));
    out.extend(link(&mut b, true, at(70)));
    out.extend(b.run(at(71), at(200)));
    let about_radar: Vec<&RuleOutput> = out
        .iter()
        .filter(|o| match o {
            RuleOutput::Raise(t) => t.subject == "radar-fast",
            RuleOutput::Clear { subject, .. } => subject == "radar-fast",
        })
        .collect();
    assert!(about_radar.is_empty(), "{about_radar:?}");
    // Heard again: it clears.
    let out = b.see("radar-fast", at(201), &[("presence", flag(true))]);
    assert_eq!(cleared(&out, "R17"), vec![("R17".to_owned(), at(201))]);
}

#[test]
fn a_wearable_online_without_heart_rate_for_30_min_raises_r7_and_one_that_never_measured_it_does_not() {
    let mut b = Bench::new();
    b.see("watch-1", at(0), &[("heart_rate", n(72.0)), ("worn", flag(true))]);
    // Online (battery and step reports every 5 min), but no heart rate any more.
    let mut out = Vec::new();
    for m in 1..=40 {
        out.extend(b.run(at(m * 60 - 59), at(m * 60)));
        if m % 5 == 0 {
            out.extend(b.see("watch-1", at(m * 60), &[("battery_pct", n(80.0)), ("worn", flag(true))]));
        }
    }
    assert_eq!(raised(&out, "R7"), vec![r("R7", Priority::P3, at(1800))]);
    let t = out
        .iter()
        .find_map(|o| match o {
            RuleOutput::Raise(t) if t.rule == "R7" => Some(t),
            _ => None,
        })
        .expect("R7");
    assert!(t.message_en.contains("30 min"), "{}", t.message_en);
    // Heart rate back: cleared.
    let out = b.see("watch-1", at(2500), &[("heart_rate", n(70.0))]);
    assert_eq!(cleared(&out, "R7"), vec![("R7".to_owned(), at(2500))]);
    // A wearable that never reported a heart rate does not measure it: nothing.
    let mut b = Bench::new();
    let mut out = Vec::new();
    for m in (0..=60).step_by(5) {
        out.extend(b.see("watch-copd", at(m * 60), &[("battery_pct", n(80.0))]));
    }
    assert!(raised(&out, "R7").is_empty());
}

#[test]
fn heart_rate_bands_apply_at_rest_and_not_to_a_resident_walking() {
    // 135 beat/min while walking (steps climbing ~100 a minute) for 10 min: nothing.
    let mut b = Bench::new();
    let mut out = Vec::new();
    for s in (0..=600).step_by(30) {
        out.extend(b.see(
            "watch-1",
            at(s),
            &[("heart_rate", n(135.0)), ("steps", n(1000.0 + s as f64 * 1.7))],
        ));
        out.extend(b.run(at(s + 1), at(s + 29)));
    }
    assert!(raised(&out, "R8").is_empty(), "{:?}", raised(&out, "R8"));
    // Sitting down (steps stop) with the same heart rate: the 5 min hold counts from when the
    // last 10 min hold fewer than 100 steps, and P2 follows.
    let mut out = Vec::new();
    for s in (630..=1800).step_by(30) {
        out.extend(b.see("watch-1", at(s), &[("heart_rate", n(135.0)), ("steps", n(2020.0))]));
        out.extend(b.run(at(s + 1), at(s + 29)));
    }
    let got = raised(&out, "R8");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1, Priority::P2);
    // At rest from the start: P2 after 5 min, as before.
    let mut b = Bench::new();
    let mut out = Vec::new();
    for s in (0..=400).step_by(30) {
        out.extend(b.see("watch-1", at(s), &[("heart_rate", n(135.0)), ("steps", n(500.0))]));
        out.extend(b.run(at(s + 1), at(s + 29)));
    }
    assert_eq!(raised(&out, "R8"), vec![r("R8", Priority::P2, at(300))]);
    // Getting up and walking does not clear it while the heart rate stays abnormal.
    let mut out = Vec::new();
    for s in (430..=1200).step_by(30) {
        out.extend(b.see(
            "watch-1",
            at(s),
            &[("heart_rate", n(135.0)), ("steps", n(500.0 + (s - 400) as f64 * 1.7))],
        ));
        out.extend(b.run(at(s + 1), at(s + 29)));
    }
    assert!(cleared(&out, "R8").is_empty(), "{out:?}");
    assert!(b.engine.holds("R8", "watch-1"));
}

/// A sample value per metric a message shows, and the unit its text must carry after
/// `{value}` (Chinese, English).
fn sample(
    metric: Option<&str>,
    condition: &Condition,
) -> (Option<Value>, &'static [&'static str], &'static [&'static str]) {
    match (condition, metric) {
        (Condition::Absence { .. }, _) => (None, &["秒"], &[" s"]),
        (Condition::Missing { .. }, _) => (None, &["分钟"], &[" min"]),
        (Condition::LowBattery { .. }, _) => (Some(n(15.0)), &[], &[]),
        (_, Some("gas_lel")) => (Some(n(12.5)), &["%LEL"], &[" %LEL"]),
        (_, Some("co_ppm")) => (Some(n(120.0)), &[" ppm"], &[" ppm"]),
        (_, Some("temperature")) => (Some(n(59.0)), &["°C"], &[" degC"]),
        (_, Some("heart_rate")) => (Some(n(38.0)), &[" 次/分"], &[" beat/min"]),
        (_, Some("resp_rate")) => (Some(n(27.0)), &[" 次/分"], &["/min"]),
        (_, Some("spo2")) => (Some(n(86.0)), &["%"], &[" %"]),
        (_, Some("dwell_s" | "motionless_s")) => (Some(n(720.0)), &[" 秒"], &[" s"]),
        (_, Some("alarm_level_dev")) => (Some(t("high")), &[], &[]),
        (_, Some(m)) => match crate::vocabulary::metric(m).map(|s| s.kind) {
            Some(crate::vocabulary::Kind::Number { .. }) => panic!("no sample with a unit for number metric {m}"),
            _ => (None, &[], &[]),
        },
        (_, None) => (None, &[], &[]),
    }
}

/// The docs' table of every rule's texts, rendered with sample values (room A-203).
fn message_table() -> String {
    let set = catalog();
    let mut out = String::from(
        "# What the control room reads: every rule's texts\n\n\
         Generated from `config/rules.toml` by the test `rules::tests::every_message_carries_its_units_and_the_docs_table_is_current`\n\
         (`NH_UPDATE_DOCS=1 cargo test -p nh-gateway --lib rules::tests::every_message` rewrites it),\n\
         with sample values in room A-203. An incident (several alerts of one room and hazard within\n\
         the correlation window) is named before the leading text: `火情（A-203，2 个设备报警）：...` /\n\
         `Fire in A-203 (2 devices in alarm): ...`.\n\n\
         | rule | entry | priority | 中文 | English |\n|---|---|---|---|---|\n",
    );
    for rule in set.rules() {
        let (value, _, _) = sample(rule.condition.metric(), &rule.condition);
        let (zh, en) = render(rule, value.as_ref());
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            rule.id,
            rule.key,
            rule.priority.as_str(),
            zh.replace('|', "\\|"),
            en.replace('|', "\\|")
        ));
    }
    out
}

/// A rule's texts with `{value}` filled as the engine fills it.
fn render(rule: &crate::rules::Rule, value: Option<&Value>) -> (String, String) {
    let shown = match value {
        Some(Value::Num(v)) => format!("{v}"),
        Some(Value::Text(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        None => match rule.condition {
            Condition::Absence { .. } => "5400".to_owned(),
            Condition::Missing { .. } => "30".to_owned(),
            _ => String::new(),
        },
    };
    let (zh_v, en_v) = match rule.condition {
        Condition::LowBattery { .. } => (format!("{shown}%"), format!("{shown} %")),
        _ => (shown.clone(), shown),
    };
    let fill = |t: &str, v: &str| {
        t.replace("{room}", "A-203")
            .replace("{device}", "dev-a-203")
            .replace("{value}", v)
            .replace("{resident}", "r-0203")
            .replace("{metric}", rule.condition.metric().unwrap_or(""))
    };
    (fill(&rule.message, &zh_v), fill(&rule.message_en, &en_v))
}

#[test]
fn every_message_carries_its_units_and_the_docs_table_is_current() {
    let set = catalog();
    for rule in set.rules() {
        let (_, zh_units, en_units) = sample(rule.condition.metric(), &rule.condition);
        for (template, units) in [(&rule.message, zh_units), (&rule.message_en, en_units)] {
            if let Some(i) = template.find("{value}") {
                let after = &template[i + "{value}".len()..];
                assert!(
                    units.is_empty() || units.iter().any(|u| after.trim_start().starts_with(u.trim_start())),
                    "{}: `{template}` must follow {{value}} with one of {units:?}",
                    rule.key
                );
            }
        }
        // Every paging text says what to do (a verb after the facts).
        if rule.priority <= Priority::P2 && rule.id.starts_with('R') {
            assert!(
                rule.message.contains('请') || rule.message.contains("立即"),
                "{}: `{}` says what to do",
                rule.key,
                rule.message
            );
            assert!(
                rule.message_en.contains(':') || rule.message_en.contains(';'),
                "{}: `{}` says what to do",
                rule.key,
                rule.message_en
            );
        }
    }
    // A low battery shows its percentage with the unit, or the flag in words.
    let r18 = set.rules().iter().find(|r| r.id == "R18").expect("R18");
    assert!(render(r18, Some(&n(15.0))).1.contains("15 %"));
    let mut b = Bench::new();
    let out = b.see("watch-1", at(0), &[("battery_low", flag(true))]);
    let trig = triggers(&out).into_iter().find(|t| t.rule == "R18").expect("R18");
    assert!(trig.message_en.contains("low-battery warning") && trig.message.contains("低电量告警"));
    let out = b.see("smoke-1", at(1), &[("battery_pct", n(8.0))]);
    let trig = triggers(&out).into_iter().find(|t| t.rule == "R18").expect("R18");
    assert!(
        trig.message_en.contains("8 %") && trig.message.contains("8%"),
        "{}",
        trig.message_en
    );

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/rule-messages.md");
    let table = message_table();
    if std::env::var_os("NH_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &table).expect("write docs/rule-messages.md");
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == table,
        "docs/rule-messages.md is not current: rerun with NH_UPDATE_DOCS=1"
    );
}
