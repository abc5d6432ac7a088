//! What each device class reports and how its values move (docs/devices.md): random walks
//! clamped to normal bands, slow battery drain, day/night habits, all from one seeded stream per
//! device.
//!
//! The baseline fleet is quiet on purpose: nothing here crosses a threshold of the rule catalog
//! (docs/rules.md): vitals stay in NEWS2's 0-score bands, batteries stay above 20 %, night bed
//! exits end within 8 minutes, doors stay closed at night. With `incidents` on, rare realistic
//! events are mixed in (a radar's suspected fall, a wearable's SOS press) for a lively demo.

use serde_json::{json, Value as Json};

use crate::metrics::{round2, Metrics, Value};
use crate::model::registry::{Device, DeviceClass};
use crate::rng::Rng;
use crate::wire::{zigbee2mqtt, Format};

/// The facility's local time offset from UTC in hours, for day/night habits (sites are in China).
pub const SITE_UTC_OFFSET_H: i64 = 8;

/// Night window (local hours), as in rule R5's example: residents sleep, doors stay shut.
const NIGHT_FROM_H: i64 = 22;
const NIGHT_UNTIL_H: i64 = 7;

/// Longest bed exit at night: below R5's 15 minutes so the baseline raises no alert.
const MAX_NIGHT_EXIT_MS: i64 = 8 * 60 * 1000;

/// Battery percent at which the device raises its own `battery_low` flag.
const BATTERY_LOW_PCT: f64 = 15.0;

/// A wearable is put on its charger at this level (residents' watches are charged by staff).
const WEARABLE_RECHARGE_AT_PCT: f64 = 25.0;

/// Chance per radar report of a suspected fall (incidents on): one every few minutes across a
/// demo facility's 60 radars at 10 s.
const SUSPECTED_FALL_P: f64 = 0.000_5;

/// Chance per wearable report of an SOS press (incidents on).
const SOS_PRESS_P: f64 = 0.000_2;

/// Local hour of day at `ts_ms`.
pub fn local_hour(ts_ms: i64) -> i64 {
    (ts_ms.div_euclid(1000) + SITE_UTC_OFFSET_H * 3600)
        .div_euclid(3600)
        .rem_euclid(24)
}

/// Local day number at `ts_ms` (for daily counters such as steps).
fn local_day(ts_ms: i64) -> i64 {
    (ts_ms.div_euclid(1000) + SITE_UTC_OFFSET_H * 3600).div_euclid(86_400)
}

pub fn is_night(ts_ms: i64) -> bool {
    let h = local_hour(ts_ms);
    !(NIGHT_UNTIL_H..NIGHT_FROM_H).contains(&h)
}

/// One report of a device: canonical metrics (what the gateway must derive) and, for Zigbee2MQTT
/// devices, extra keys real devices send that carry no canonical metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub metrics: Metrics,
    pub extras: Vec<(&'static str, Json)>,
}

/// The moving state of one simulated device.
#[derive(Debug, Clone)]
pub struct Behaviour {
    class: DeviceClass,
    format: Format,
    interval_ms: i64,
    incidents: bool,
    /// A bathroom, toilet or corridor: people pass through moving, nobody stays (rule R3 watches
    /// stillness there).
    transit: bool,
    rng: Rng,
    battery: f64,
    drain_per_report: f64,
    lqi: f64,
    presence: bool,
    moving: bool,
    fall_reported: bool,
    base_hr: f64,
    heart_rate: f64,
    resp_rate: f64,
    spo2: f64,
    skin_temp: f64,
    steps: f64,
    steps_day: i64,
    sos_reported: bool,
    bed_occupied: bool,
    left_bed_at: i64,
    contact_open: bool,
    temperature: f64,
    gas_lel: f64,
    co_ppm: f64,
    device_temp: f64,
    outages: i64,
    illuminance: f64,
}

/// Battery drain in percent per day, by class (the wearable is the only one that visibly moves).
fn drain_per_day(class: DeviceClass) -> f64 {
    match class {
        DeviceClass::Wearable => 35.0,
        DeviceClass::BedSensor => 0.2,
        DeviceClass::DoorContact => 0.08,
        DeviceClass::SosButton | DeviceClass::CoDetector => 0.05,
        DeviceClass::SmokeAlarm | DeviceClass::HeatDetector => 0.03,
        _ => 0.0,
    }
}

impl Behaviour {
    pub fn new(device: &Device, mut rng: Rng, incidents: bool) -> Behaviour {
        let interval_ms = device.interval_s as i64 * 1000;
        // Draw every initial value in one fixed order whatever the class, so a class's start
        // values do not depend on which fields it uses.
        let battery = if device.class == DeviceClass::Wearable {
            rng.range_f64(45.0, 100.0)
        } else {
            rng.range_f64(60.0, 100.0)
        };
        let lqi = rng.range_f64(60.0, 200.0).round();
        let presence = rng.chance(0.7);
        let moving = rng.chance(0.3);
        let base_hr = rng.range_f64(62.0, 80.0).round();
        let resp_rate = rng.range_i64(13, 18) as f64;
        let spo2 = rng.range_i64(96, 98) as f64;
        let skin_temp = round2(rng.range_f64(33.8, 35.2));
        let temperature = (rng.range_f64(21.0, 26.0) * 10.0).round() / 10.0;
        let gas_lel = (rng.range_f64(0.0, 1.5) * 10.0).round() / 10.0;
        let co_ppm = rng.range_i64(0, 4) as f64;
        let device_temp = rng.range_i64(19, 25) as f64;
        let outages = rng.range_i64(0, 6);
        let illuminance = rng.range_f64(20.0, 400.0).round();
        Behaviour {
            class: device.class,
            format: device.format(),
            interval_ms,
            incidents,
            transit: matches!(
                device.zone.as_deref(),
                Some("bathroom" | "toilet" | "wc" | "corridor" | "exit")
            ),
            rng,
            battery,
            drain_per_report: drain_per_day(device.class) * device.interval_s as f64 / 86_400.0,
            lqi,
            presence,
            moving,
            fall_reported: false,
            base_hr,
            heart_rate: base_hr,
            resp_rate,
            spo2,
            skin_temp,
            steps: 0.0,
            steps_day: i64::MIN,
            sos_reported: false,
            bed_occupied: true,
            left_bed_at: 0,
            contact_open: false,
            temperature,
            gas_lel,
            co_ppm,
            device_temp,
            outages,
            illuminance,
        }
    }

    /// Advances the device to `ts_ms` and returns what it reports.
    pub fn report(&mut self, ts_ms: i64) -> Report {
        let mut r = Report {
            metrics: Vec::with_capacity(8),
            extras: Vec::new(),
        };
        self.drain_battery();
        match self.class {
            DeviceClass::FallRadar | DeviceClass::PresenceRadar | DeviceClass::VitalRadar => self.radar(ts_ms, &mut r),
            DeviceClass::Wearable => self.wearable(ts_ms, &mut r),
            DeviceClass::SosButton | DeviceClass::SmokeAlarm | DeviceClass::HeatDetector => self.alarm(&mut r),
            DeviceClass::GasDetector | DeviceClass::CoDetector | DeviceClass::MultiGas => self.gas(&mut r),
            DeviceClass::DoorContact => self.door(ts_ms, &mut r),
            DeviceClass::BedSensor => self.bed(ts_ms, &mut r),
            DeviceClass::Gateway => r.metrics.push(("heartbeat", Value::Bool(true))),
        }
        match self.format {
            Format::Canonical => r.extras.clear(),
            Format::Zigbee2mqtt => {
                // A Zigbee device can only say what its Z2M converter exposes; everything else
                // (vitals, motion enum) never reaches the gateway, so it is not in the record either.
                r.metrics.retain(|(name, value)| zigbee2mqtt::can_express(name, value));
                self.lqi = self.walk(self.lqi, 6.0, 30.0, 255.0).round();
                r.metrics.push(("lqi", Value::Num(self.lqi)));
            }
        }
        r
    }

    /// Radars: presence and motion; the fall radar adds its fall state, the vital radar heart
    /// and breathing rates while someone is there.
    fn radar(&mut self, ts_ms: i64, r: &mut Report) {
        match self.class {
            DeviceClass::FallRadar => {
                self.walk_presence(ts_ms);
                r.metrics.push(("presence", Value::Bool(self.presence)));
                r.metrics.push(("motion_state", Value::Text(self.motion_state())));
                r.metrics.push(("body_movement", Value::Num(self.body_movement())));
                r.metrics.push(("fall_state", Value::Text(self.fall_state())));
                r.extras.push(("illuminance", json!(self.walk_illuminance(ts_ms))));
            }
            DeviceClass::PresenceRadar => {
                self.walk_presence(ts_ms);
                r.metrics.push(("presence", Value::Bool(self.presence)));
                r.metrics.push(("motion_state", Value::Text(self.motion_state())));
                r.metrics.push(("body_movement", Value::Num(self.body_movement())));
                r.extras.push(("illuminance", json!(self.walk_illuminance(ts_ms))));
            }
            // The vital radar.
            _ => {
                self.walk_presence(ts_ms);
                r.metrics.push(("presence", Value::Bool(self.presence)));
                r.metrics.push(("body_movement", Value::Num(self.body_movement())));
                if self.presence {
                    self.walk_heart_rate(ts_ms);
                    self.resp_rate = self.walk(self.resp_rate, 1.0, 12.0, 20.0).round();
                    r.metrics.push(("heart_rate", Value::Num(self.heart_rate)));
                    r.metrics.push(("resp_rate", Value::Num(self.resp_rate)));
                }
            }
        }
    }

    /// The wearable: vitals, steps, battery and an occasional SOS press.
    fn wearable(&mut self, ts_ms: i64, r: &mut Report) {
        self.walk_heart_rate(ts_ms);
        if self.rng.chance(0.2) {
            self.spo2 = self.walk(self.spo2, 1.0, 95.0, 99.0).round();
        }
        self.skin_temp = round2(self.walk(self.skin_temp, 0.08, 33.0, 36.0));
        self.count_steps(ts_ms);
        r.metrics.push(("heart_rate", Value::Num(self.heart_rate)));
        r.metrics.push(("spo2", Value::Num(self.spo2)));
        r.metrics.push(("skin_temp", Value::Num(self.skin_temp)));
        r.metrics.push(("steps", Value::Num(self.steps)));
        r.metrics.push(("worn", Value::Bool(true)));
        r.metrics.push(("battery_pct", Value::Num(self.battery_pct())));
        r.metrics.push(("sos", Value::Bool(self.sos_pulse())));
    }

    /// Life-safety alarms that stay quiet: the SOS button, the smoke alarm, the heat detector.
    fn alarm(&mut self, r: &mut Report) {
        match self.class {
            DeviceClass::SosButton => {
                r.metrics.push(("sos", Value::Bool(false)));
                self.push_battery(&mut r.metrics, true);
                r.metrics.push(("tamper", Value::Bool(false)));
                r.extras.push(("supervision_reports", json!(true)));
            }
            DeviceClass::SmokeAlarm => {
                r.metrics.push(("smoke", Value::Bool(false)));
                self.push_battery(&mut r.metrics, true);
                r.metrics.push(("tamper", Value::Bool(false)));
                r.metrics.push(("test", Value::Bool(false)));
                r.metrics.push(("fault", Value::Bool(false)));
                r.extras.push(("supervision_reports", json!(true)));
                r.extras.push(("restore_reports", json!(true)));
                r.extras.push(("ac_status", json!(false)));
            }
            // The heat detector.
            _ => {
                self.temperature = (self.walk(self.temperature, 0.2, 20.0, 28.0) * 10.0).round() / 10.0;
                r.metrics.push(("temperature", Value::Num(self.temperature)));
                self.push_battery(&mut r.metrics, true);
                r.metrics.push(("tamper", Value::Bool(false)));
                r.extras.push(("supervision_reports", json!(true)));
            }
        }
    }

    /// Gas detectors: LEL and CO readings that wander well below any alarm.
    fn gas(&mut self, r: &mut Report) {
        match self.class {
            DeviceClass::GasDetector => {
                self.gas_lel = (self.walk(self.gas_lel, 0.2, 0.0, 3.0) * 10.0).round() / 10.0;
                r.metrics.push(("gas_alarm", Value::Bool(false)));
                r.metrics.push(("gas_lel", Value::Num(self.gas_lel)));
                r.metrics.push(("preheat", Value::Bool(false)));
                r.extras.push(("alarm_time", json!(15)));
                r.extras.push(("self_test_result", json!("success")));
            }
            DeviceClass::CoDetector => {
                self.co_ppm = self.walk(self.co_ppm, 1.0, 0.0, 10.0).round();
                r.metrics.push(("co_alarm", Value::Bool(false)));
                r.metrics.push(("co_ppm", Value::Num(self.co_ppm)));
                self.push_battery(&mut r.metrics, true);
                r.metrics.push(("silenced", Value::Bool(false)));
            }
            // The multi-gas detector.
            _ => {
                self.gas_lel = (self.walk(self.gas_lel, 0.2, 0.0, 3.0) * 10.0).round() / 10.0;
                self.co_ppm = self.walk(self.co_ppm, 1.0, 0.0, 10.0).round();
                r.metrics.push(("gas_alarm", Value::Bool(false)));
                r.metrics.push(("gas_lel", Value::Num(self.gas_lel)));
                r.metrics.push(("co_alarm", Value::Bool(false)));
                r.metrics.push(("co_ppm", Value::Num(self.co_ppm)));
                r.metrics.push(("preheat", Value::Bool(false)));
                r.metrics.push(("fault", Value::Bool(false)));
                r.extras.push(("alarm_time", json!(15)));
            }
        }
    }

    /// The door contact: open or shut, its cell, its temperature.
    fn door(&mut self, ts_ms: i64, r: &mut Report) {
        self.walk_door(ts_ms);
        r.metrics.push(("contact_open", Value::Bool(self.contact_open)));
        r.metrics.push(("battery_pct", Value::Num(self.battery_pct())));
        // A CR2032-style cell: 2.6 V empty .. 3.0 V full, in 10 mV steps (so V has 2 decimals).
        let volts = round2(2.6 + 0.4 * self.battery / 100.0);
        r.metrics.push(("battery_v", Value::Num(volts)));
        r.metrics.push(("tamper", Value::Bool(false)));
        self.device_temp = self.walk(self.device_temp, 0.5, 16.0, 28.0);
        r.extras
            .push(("device_temperature", json!(self.device_temp.round() as i64)));
        r.extras.push(("power_outage_count", json!(self.outages)));
    }

    /// The bed sensor: occupied, or for how long not.
    fn bed(&mut self, ts_ms: i64, r: &mut Report) {
        self.walk_bed(ts_ms);
        r.metrics.push(("bed_occupied", Value::Bool(self.bed_occupied)));
        let out_s = if self.bed_occupied {
            0
        } else {
            (ts_ms - self.left_bed_at).max(0) / 1000
        };
        r.metrics.push(("out_of_bed_s", Value::Num(out_s as f64)));
        r.metrics.push(("battery_pct", Value::Num(self.battery_pct())));
    }

    /// A random step of at most `step`, clamped to `[lo, hi]`.
    fn walk(&mut self, x: f64, step: f64, lo: f64, hi: f64) -> f64 {
        (x + self.rng.range_f64(-step, step)).clamp(lo, hi)
    }

    fn drain_battery(&mut self) {
        self.battery = (self.battery - self.drain_per_report).max(1.0);
        if self.class == DeviceClass::Wearable && self.battery < WEARABLE_RECHARGE_AT_PCT {
            self.battery = 100.0;
        }
    }

    fn battery_pct(&self) -> f64 {
        self.battery.round()
    }

    fn push_battery(&self, metrics: &mut Metrics, with_low_flag: bool) {
        metrics.push(("battery_pct", Value::Num(self.battery_pct())));
        if with_low_flag {
            metrics.push(("battery_low", Value::Bool(self.battery < BATTERY_LOW_PCT)));
        }
    }

    fn walk_presence(&mut self, ts_ms: i64) {
        let scale = (self.interval_ms as f64 / 10_000.0).clamp(0.1, 10.0);
        if self.transit {
            // A short visit, always moving, rarer at night: never a long still presence (R3).
            let enter = if is_night(ts_ms) { 0.01 } else { 0.05 };
            self.presence = !self.presence && self.rng.chance((enter * scale).min(0.5));
            self.moving = self.presence;
            return;
        }
        // Per 10 s report: residents come and go in daytime and stay in at night.
        let (leave, enter) = if is_night(ts_ms) { (0.002, 0.2) } else { (0.02, 0.05) };
        self.presence = if self.presence {
            !self.rng.chance(leave * scale)
        } else {
            self.rng.chance(enter * scale)
        };
        let p_moving = if is_night(ts_ms) { 0.05 } else { 0.35 };
        self.moving = self.presence && self.rng.chance(if self.moving { 0.6 } else { p_moving });
    }

    fn motion_state(&self) -> &'static str {
        match (self.presence, self.moving) {
            (false, _) => "none",
            (true, false) => "stationary",
            (true, true) => "moving",
        }
    }

    fn body_movement(&mut self) -> f64 {
        match (self.presence, self.moving) {
            (false, _) => 0.0,
            (true, false) => self.rng.range_i64(1, 25) as f64,
            (true, true) => self.rng.range_i64(30, 100) as f64,
        }
    }

    fn fall_state(&mut self) -> &'static str {
        // A suspected fall lasts one report, then the radar sees the person move again.
        if self.fall_reported {
            self.fall_reported = false;
            return "none";
        }
        if self.incidents && self.presence && self.rng.chance(SUSPECTED_FALL_P) {
            self.fall_reported = true;
            return "suspected";
        }
        "none"
    }

    fn sos_pulse(&mut self) -> bool {
        if self.sos_reported {
            self.sos_reported = false;
            return false;
        }
        if self.incidents && self.rng.chance(SOS_PRESS_P) {
            self.sos_reported = true;
            return true;
        }
        false
    }

    fn walk_heart_rate(&mut self, ts_ms: i64) {
        // Mean-reverting walk around the person's resting rate, lower at night.
        let target = if is_night(ts_ms) {
            self.base_hr - 6.0
        } else {
            self.base_hr
        };
        let pull = (target - self.heart_rate) * 0.2;
        self.heart_rate = (self.heart_rate + pull + self.rng.range_f64(-2.5, 2.5))
            .clamp(55.0, 95.0)
            .round();
    }

    fn count_steps(&mut self, ts_ms: i64) {
        // Watches reset their step counter at local midnight.
        let day = local_day(ts_ms);
        if day != self.steps_day {
            self.steps_day = day;
            self.steps = 0.0;
        }
        let per_30s = if is_night(ts_ms) {
            if self.rng.chance(0.02) {
                self.rng.range_i64(1, 8)
            } else {
                0
            }
        } else if self.rng.chance(0.4) {
            self.rng.range_i64(5, 45)
        } else {
            0
        };
        let scale = self.interval_ms as f64 / 30_000.0;
        self.steps += (per_30s as f64 * scale).round();
    }

    fn walk_bed(&mut self, ts_ms: i64) {
        let scale = (self.interval_ms as f64 / 30_000.0).clamp(0.1, 10.0);
        // A sensor reporting this rarely would show any night exit as lasting a whole interval.
        let short_exits_visible = 2 * self.interval_ms <= MAX_NIGHT_EXIT_MS;
        if !is_night(ts_ms) && is_night(ts_ms + self.interval_ms) {
            // In bed before the night window opens (R5 counts from its start).
            self.bed_occupied = true;
        } else if is_night(ts_ms) {
            if self.bed_occupied {
                if short_exits_visible && self.rng.chance(0.01 * scale) {
                    self.bed_occupied = false;
                    self.left_bed_at = ts_ms;
                }
            } else if ts_ms - self.left_bed_at >= MAX_NIGHT_EXIT_MS - self.interval_ms || self.rng.chance(0.25 * scale)
            {
                self.bed_occupied = true;
            }
        } else if self.bed_occupied {
            if self.rng.chance(0.03 * scale) {
                self.bed_occupied = false;
                self.left_bed_at = ts_ms;
            }
        } else if self.rng.chance(0.01 * scale) {
            self.bed_occupied = true;
        }
    }

    fn walk_door(&mut self, ts_ms: i64) {
        // Doors are shut an hour before the night window: a door of a wander-risk resident
        // still open when the night starts is a real alert (R6), not baseline behaviour.
        if is_night(ts_ms) || is_night(ts_ms + 3_600_000) {
            // Doors are shut for the night; one left open is closed on the next round.
            self.contact_open = false;
        } else if self.rng.chance(0.2) {
            self.contact_open = !self.contact_open;
        }
    }

    fn walk_illuminance(&mut self, ts_ms: i64) -> i64 {
        let (lo, hi) = if is_night(ts_ms) { (0.0, 30.0) } else { (50.0, 600.0) };
        self.illuminance = self.walk(self.illuminance, 25.0, lo, hi);
        self.illuminance.round() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::fits_vocabulary;

    fn device(class: DeviceClass, zigbee: bool, interval_s: u64) -> Device {
        Device {
            id: format!("{}-1", class.as_str()),
            class,
            zigbee_name: zigbee.then(|| format!("z_{}", class.as_str())),
            building: "A".into(),
            floor: "1".into(),
            room: "A-101".into(),
            zone: None,
            bed: None,
            resident: None,
            care_flags: vec![],
            interval_s,
            model: None,
        }
    }

    fn run(d: &Device, reports: usize, incidents: bool) -> Vec<(i64, Report)> {
        let mut b = Behaviour::new(d, Rng::for_device(42, &d.id, 2), incidents);
        // 2026-01-01T00:00:00Z, then every interval: covers nights and days.
        let t0 = 1_767_225_600_000_i64;
        (0..reports)
            .map(|k| {
                let ts = t0 + k as i64 * d.interval_s as i64 * 1000;
                (ts, b.report(ts))
            })
            .collect()
    }

    fn num(r: &Report, name: &str) -> Option<f64> {
        r.metrics.iter().find(|(n, _)| *n == name).and_then(|(_, v)| match v {
            Value::Num(x) => Some(*x),
            _ => None,
        })
    }

    #[test]
    fn every_class_emits_only_vocabulary_metrics_in_both_formats() {
        for class in DeviceClass::ALL {
            for zigbee in [false, true] {
                let d = device(class, zigbee, 30);
                for (_, r) in run(&d, 3000, true) {
                    assert!(!r.metrics.is_empty(), "{class} z2m={zigbee}");
                    for (name, value) in &r.metrics {
                        assert!(fits_vocabulary(name, value), "{class} z2m={zigbee}: {name}={value:?}");
                        if zigbee {
                            assert!(zigbee2mqtt::can_express(name, value), "{class}: {name}");
                        }
                    }
                    if zigbee {
                        assert!(num(&r, "lqi").is_some(), "{class} reports linkquality");
                    } else {
                        assert!(r.extras.is_empty() && num(&r, "lqi").is_none(), "{class}");
                    }
                }
            }
        }
    }

    #[test]
    fn wearable_vitals_stay_in_normal_bands_and_steps_only_grow_within_a_day() {
        let d = device(DeviceClass::Wearable, false, 30);
        let reports = run(&d, 2 * 2880, false);
        let mut last_steps = 0.0;
        let mut last_day = None;
        for (ts, r) in &reports {
            let hr = num(r, "heart_rate").expect("hr");
            assert!((55.0..=95.0).contains(&hr), "{hr}");
            let spo2 = num(r, "spo2").expect("spo2");
            assert!((95.0..=99.0).contains(&spo2));
            let skin = num(r, "skin_temp").expect("skin");
            assert!((33.0..=36.0).contains(&skin));
            let steps = num(r, "steps").expect("steps");
            if last_day == Some(local_day(*ts)) {
                assert!(steps >= last_steps);
            }
            last_day = Some(local_day(*ts));
            last_steps = steps;
            assert!(num(r, "battery_pct").expect("battery") >= WEARABLE_RECHARGE_AT_PCT - 1.0);
        }
        let hrs: std::collections::BTreeSet<i64> = reports
            .iter()
            .map(|(_, r)| num(r, "heart_rate").expect("hr") as i64)
            .collect();
        assert!(hrs.len() > 5, "heart rate drifts: {hrs:?}");
    }

    #[test]
    fn baseline_is_quiet_for_the_rules() {
        // 2 days of every class without incidents: no alarm flag, no fall, no long night exit.
        for class in DeviceClass::ALL {
            let d = device(class, false, 30);
            for (ts, r) in run(&d, 5760, false) {
                for (name, value) in &r.metrics {
                    match (*name, value) {
                        (
                            "smoke" | "gas_alarm" | "co_alarm" | "sos" | "tamper" | "test" | "fault" | "battery_low",
                            v,
                        ) => {
                            assert_eq!(*v, Value::Bool(false), "{class} {name}")
                        }
                        ("fall_state", v) => assert_eq!(*v, Value::Text("none")),
                        ("worn", v) => assert_eq!(*v, Value::Bool(true)),
                        ("contact_open", Value::Bool(open)) => assert!(!(*open && is_night(ts))),
                        ("out_of_bed_s", Value::Num(s)) if is_night(ts) => {
                            assert!(*s < 10.0 * 60.0, "{s}")
                        }
                        ("battery_pct", Value::Num(b)) => assert!(*b > 20.0),
                        _ => {}
                    }
                }
            }
        }
    }

    #[test]
    fn incidents_produce_suspected_falls_that_clear() {
        let d = device(DeviceClass::FallRadar, false, 10);
        let reports = run(&d, 200_000, true);
        let states: Vec<&Value> = reports
            .iter()
            .flat_map(|(_, r)| r.metrics.iter().filter(|(n, _)| *n == "fall_state").map(|(_, v)| v))
            .collect();
        let suspected = states.iter().filter(|v| ***v == Value::Text("suspected")).count();
        assert!(suspected > 0);
        for w in states.windows(2) {
            if *w[0] == Value::Text("suspected") {
                assert_eq!(*w[1], Value::Text("none"));
            }
        }
    }

    #[test]
    fn door_contact_toggles_in_daytime() {
        let d = device(DeviceClass::DoorContact, true, 300);
        let reports = run(&d, 288, false);
        let opens = reports
            .iter()
            .filter(|(_, r)| r.metrics.contains(&("contact_open", Value::Bool(true))))
            .count();
        assert!(opens > 0 && opens < reports.len());
        assert!(reports
            .iter()
            .all(|(_, r)| r.extras.iter().any(|(k, _)| *k == "power_outage_count")));
    }

    #[test]
    fn local_time_is_utc_plus_8() {
        // 2026-01-01T00:00:00Z is 08:00 in Hangzhou.
        assert_eq!(local_hour(1_767_225_600_000), 8);
        assert!(!is_night(1_767_225_600_000));
        assert!(is_night(1_767_225_600_000 + 15 * 3_600_000));
    }
}
