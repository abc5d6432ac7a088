//! A Modbus gas detector: its script played over time (concentration, ramps, faults, silence,
//! power cycles), the alarm status it computes itself, and its registers in the layout of its
//! model. Time is script time in seconds (0 = the start).

use super::config::{GasModel, GasStep, GasUnitSpec};
use super::DeviceEvent;

/// Registers of the `generic_gas` model.
pub const GENERIC_REGISTERS: usize = 7;
/// Registers of the `midas` model (40001-40016).
pub const MIDAS_REGISTERS: usize = 16;

/// `generic_gas` decimal places of the concentration register.
const GENERIC_DECIMALS: u32 = 1;
/// `generic_gas` unit code: %LEL (0 ppm, 1 %LEL, 2 %VOL, 3 mg/m3).
const GENERIC_UNIT_LEL: u16 = 1;
/// `generic_gas` gas type code: methane.
const GENERIC_GAS_METHANE: u16 = 1;

/// `generic_gas` status codes, in the device's priority order.
pub const STATUS_NORMAL: u16 = 0;
pub const STATUS_LOW_ALARM: u16 = 1;
pub const STATUS_HIGH_ALARM: u16 = 2;
pub const STATUS_FAULT: u16 = 3;
pub const STATUS_PREHEAT: u16 = 4;

/// Midas gas id / cartridge register value.
const MIDAS_GAS_ID: u16 = 0x0101;
/// Midas "instrument fault" in status bits 4-5.
const MIDAS_INSTRUMENT_FAULT: u16 = 2;
/// The fault number a faulted Midas reports (F >= 30 are instrument faults).
pub const MIDAS_FAULT_NUMBER: u16 = 34;
/// Midas unit register: bit 3 of the high byte is %LEL.
pub const MIDAS_UNIT_LEL: u16 = 0x0800;
const MIDAS_TEMPERATURE_C: i16 = 25;
const MIDAS_CELL_LIFE_H: u16 = 8760;
const MIDAS_FLOW_CC_MIN: u16 = 500;
/// The Midas heartbeat bit toggles (and its counter steps) this often.
pub const MIDAS_HEARTBEAT_S: f64 = 2.0;

/// The alarm a detector raises from its own concentration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Alarm {
    None,
    Low,
    High,
}

/// The concentration: constant, or a linear ramp from `t0` to `t1`, then constant.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Level {
    from: f64,
    to: f64,
    t0: f64,
    t1: f64,
}

impl Level {
    fn constant(v: f64, t: f64) -> Level {
        Level {
            from: v,
            to: v,
            t0: t,
            t1: t,
        }
    }

    fn at(&self, t: f64) -> f64 {
        if t >= self.t1 || self.t1 <= self.t0 {
            self.to
        } else if t <= self.t0 {
            self.from
        } else {
            self.from + (self.to - self.from) * (t - self.t0) / (self.t1 - self.t0)
        }
    }
}

/// One simulated detector.
#[derive(Debug, Clone)]
pub struct GasUnit {
    spec: GasUnitSpec,
    next_step: usize,
    level: Level,
    fault: bool,
    silent: bool,
    /// Warm-up lasts until this script time.
    preheat_until: f64,
    in_preheat: bool,
    alarm: Alarm,
    answers: u64,
}

impl GasUnit {
    /// The unit before its script starts: 0 %LEL, warming up if it has a preheat time.
    pub fn new(spec: GasUnitSpec) -> GasUnit {
        GasUnit {
            next_step: 0,
            level: Level::constant(0.0, 0.0),
            fault: false,
            silent: false,
            preheat_until: spec.preheat_s,
            in_preheat: spec.preheat_s > 0.0,
            alarm: Alarm::None,
            answers: 0,
            spec,
        }
    }

    pub fn unit(&self) -> u8 {
        self.spec.unit
    }

    pub fn model(&self) -> GasModel {
        self.spec.model
    }

    /// Answer delay.
    pub fn delay_ms(&self) -> u64 {
        self.spec.delay_ms
    }

    /// The concentration at script time `t`, %LEL.
    pub fn lel(&self, t: f64) -> f64 {
        self.level.at(t).clamp(0.0, 100.0)
    }

    pub fn is_silent(&self) -> bool {
        self.silent
    }

    pub fn is_fault(&self) -> bool {
        self.fault
    }

    /// In warm-up at script time `t`.
    pub fn in_preheat(&self, t: f64) -> bool {
        t < self.preheat_until
    }

    /// The alarm the concentration at `t` calls for.
    pub fn alarm_at(&self, t: f64) -> Alarm {
        let lel = self.lel(t);
        if lel >= self.spec.high_alarm {
            Alarm::High
        } else if lel >= self.spec.low_alarm {
            Alarm::Low
        } else {
            Alarm::None
        }
    }

    /// Plays the script up to script time `t`: applies the steps due, then notes the end of a
    /// warm-up and alarm changes. Events go to `events`.
    pub fn advance(&mut self, t: f64, events: &mut Vec<DeviceEvent>) {
        while let Some(step) = self.spec.script.get(self.next_step) {
            if step.at_s > t {
                break;
            }
            let step = step.clone();
            self.next_step += 1;
            self.apply(&step, events);
        }
        if self.in_preheat && !self.in_preheat(t) {
            self.in_preheat = false;
            self.event(events, "preheat_end".to_owned());
        }
        let alarm = self.alarm_at(t);
        if alarm != self.alarm {
            self.alarm = alarm;
            let what = match alarm {
                Alarm::None => "alarm_clear",
                Alarm::Low => "alarm_low",
                Alarm::High => "alarm_high",
            };
            self.event(events, format!("{what} lel={:.1}", self.lel(t)));
        }
    }

    fn apply(&mut self, step: &GasStep, events: &mut Vec<DeviceEvent>) {
        let at = step.at_s;
        if let Some(lel) = step.lel {
            self.level = Level::constant(lel, at);
            self.event(events, format!("lel lel={lel:.1}"));
        }
        if let Some((to, over_s)) = step.ramp {
            let from = self.lel(at);
            self.level = Level {
                from,
                to,
                t0: at,
                t1: at + over_s,
            };
            self.event(events, format!("ramp from={from:.1} to={to:.1} over_s={over_s}"));
        }
        if let Some(fault) = step.fault {
            if fault != self.fault {
                self.fault = fault;
                self.event(events, if fault { "fault" } else { "fault_clear" }.to_owned());
            }
        }
        if let Some(silent) = step.silent {
            if silent != self.silent {
                self.silent = silent;
                self.event(events, if silent { "silent" } else { "silent_end" }.to_owned());
            }
        }
        if step.power_cycle {
            self.preheat_until = at + self.spec.preheat_s;
            self.in_preheat = self.spec.preheat_s > 0.0;
            self.event(events, format!("power_cycle preheat_s={}", self.spec.preheat_s));
        }
    }

    fn event(&self, events: &mut Vec<DeviceEvent>, what: String) {
        events.push(DeviceEvent {
            unit: Some(self.spec.unit),
            what,
        });
    }

    /// True if the next answer's CRC is to be spoiled (`crc_error_every`); counts the answer.
    pub fn next_answer_corrupt(&mut self) -> bool {
        self.answers += 1;
        // `checked_rem` is `None` for 0: never.
        self.answers.checked_rem(u64::from(self.spec.crc_error_every)) == Some(0)
    }

    /// The registers at script time `t`, offset 0 first.
    pub fn registers(&self, t: f64) -> Vec<u16> {
        match self.spec.model {
            GasModel::GenericGas => self.generic_registers(t),
            GasModel::Midas => self.midas_registers(t),
        }
    }

    fn generic_registers(&self, t: f64) -> Vec<u16> {
        let scale = 10f64.powi(GENERIC_DECIMALS as i32);
        let concentration = if self.fault {
            0
        } else {
            (self.lel(t) * scale).round() as u16
        };
        let status = if self.in_preheat(t) {
            STATUS_PREHEAT
        } else if self.fault {
            STATUS_FAULT
        } else {
            match self.alarm_at(t) {
                Alarm::High => STATUS_HIGH_ALARM,
                Alarm::Low => STATUS_LOW_ALARM,
                Alarm::None => STATUS_NORMAL,
            }
        };
        vec![
            concentration,
            GENERIC_DECIMALS as u16,
            GENERIC_UNIT_LEL,
            status,
            (self.spec.low_alarm * 10.0).round() as u16,
            (self.spec.high_alarm * 10.0).round() as u16,
            GENERIC_GAS_METHANE,
        ]
    }

    fn midas_registers(&self, t: f64) -> Vec<u16> {
        let lel = self.lel(t);
        let beats = midas_heartbeats(t);
        let monitor_state: u16 = if self.in_preheat(t) { 0 } else { 1 };
        let fault_status = if self.fault { MIDAS_INSTRUMENT_FAULT } else { 0 };
        let alarm = self.alarm_at(t);
        let mut status = monitor_state | (fault_status << 4);
        if alarm >= Alarm::Low {
            status |= 1 << 6;
        }
        if alarm == Alarm::High {
            status |= 1 << 7;
        }
        status |= (beats & 1) << 11;
        let [c_lo, c_hi] = f32_words_swapped(lel as f32);
        let [l_lo, l_hi] = f32_words_swapped(self.spec.low_alarm as f32);
        let [h_lo, h_hi] = f32_words_swapped(self.spec.high_alarm as f32);
        vec![
            status,
            MIDAS_GAS_ID,
            c_lo,
            c_hi,
            lel.round() as u16,
            if self.fault { MIDAS_FAULT_NUMBER } else { 0 },
            MIDAS_UNIT_LEL,
            MIDAS_TEMPERATURE_C as u16,
            MIDAS_CELL_LIFE_H,
            beats,
            MIDAS_FLOW_CC_MIN,
            0,
            l_lo,
            l_hi,
            h_lo,
            h_hi,
        ]
    }
}

/// Midas heartbeats since the start (the counter register; its low bit is status bit 11).
pub fn midas_heartbeats(t: f64) -> u16 {
    ((t.max(0.0) / MIDAS_HEARTBEAT_S).floor() as u64 % 65_536) as u16
}

/// An f32 as two registers, low word first (the Midas word order).
pub fn f32_words_swapped(v: f32) -> [u16; 2] {
    let bits = v.to_bits();
    [(bits & 0xFFFF) as u16, (bits >> 16) as u16]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(model: GasModel, preheat_s: f64, script: Vec<GasStep>) -> GasUnit {
        GasUnit::new(GasUnitSpec {
            unit: 3,
            model,
            preheat_s,
            low_alarm: 20.0,
            high_alarm: 50.0,
            delay_ms: 0,
            crc_error_every: 0,
            script,
        })
    }

    fn step(at_s: f64) -> GasStep {
        GasStep {
            at_s,
            ..GasStep::default()
        }
    }

    fn whats(events: &[DeviceEvent]) -> Vec<&str> {
        events
            .iter()
            .map(|e| e.what.split(' ').next().unwrap_or_default())
            .collect()
    }

    #[test]
    fn a_ramp_is_linear_from_the_current_value_and_raises_alarms_on_the_way() {
        let mut u = unit(
            GasModel::GenericGas,
            0.0,
            vec![
                GasStep {
                    lel: Some(10.0),
                    ..step(0.0)
                },
                GasStep {
                    ramp: Some((60.0, 10.0)),
                    ..step(15.0)
                },
            ],
        );
        let mut ev = Vec::new();
        u.advance(0.0, &mut ev);
        assert_eq!(whats(&ev), ["lel"]);
        u.advance(14.9, &mut ev);
        assert_eq!(u.lel(14.9), 10.0);
        u.advance(15.0, &mut ev);
        assert_eq!(whats(&ev), ["lel", "ramp"]);
        assert_eq!(ev[1].what, "ramp from=10.0 to=60.0 over_s=10");
        assert!((u.lel(17.5) - 22.5).abs() < 1e-9);
        ev.clear();
        u.advance(17.5, &mut ev);
        assert_eq!(whats(&ev), ["alarm_low"]);
        assert_eq!(u.registers(17.5)[0], 225);
        assert_eq!(u.registers(17.5)[3], STATUS_LOW_ALARM);
        ev.clear();
        u.advance(30.0, &mut ev);
        assert_eq!(whats(&ev), ["alarm_high"]);
        assert_eq!(u.lel(30.0), 60.0);
        assert_eq!(u.registers(30.0)[3], STATUS_HIGH_ALARM);
    }

    #[test]
    fn generic_layout_is_concentration_decimals_unit_status_setpoints_gas() {
        let mut u = unit(
            GasModel::GenericGas,
            0.0,
            vec![GasStep {
                lel: Some(12.34),
                ..step(0.0)
            }],
        );
        u.advance(0.0, &mut Vec::new());
        assert_eq!(u.registers(1.0), vec![123, 1, 1, STATUS_NORMAL, 200, 500, 1]);
    }

    #[test]
    fn preheat_outranks_fault_which_outranks_alarms() {
        let mut u = unit(
            GasModel::GenericGas,
            5.0,
            vec![
                GasStep {
                    lel: Some(55.0),
                    ..step(0.0)
                },
                GasStep {
                    fault: Some(true),
                    ..step(2.0)
                },
                GasStep {
                    fault: Some(false),
                    ..step(8.0)
                },
                GasStep {
                    power_cycle: true,
                    ..step(10.0)
                },
            ],
        );
        let mut ev = Vec::new();
        u.advance(0.0, &mut ev);
        assert_eq!(u.registers(0.0)[3], STATUS_PREHEAT);
        assert_eq!(u.registers(0.0)[0], 550);
        u.advance(3.0, &mut ev);
        assert_eq!(u.registers(3.0)[3], STATUS_PREHEAT, "preheat first");
        u.advance(6.0, &mut ev);
        assert_eq!(u.registers(6.0)[3], STATUS_FAULT);
        assert_eq!(u.registers(6.0)[0], 0, "no concentration during a fault");
        u.advance(9.0, &mut ev);
        assert_eq!(u.registers(9.0)[3], STATUS_HIGH_ALARM);
        u.advance(10.0, &mut ev);
        assert_eq!(u.registers(10.0)[3], STATUS_PREHEAT, "a power cycle warms up again");
        assert!(u.in_preheat(14.9) && !u.in_preheat(15.0));
        u.advance(15.0, &mut ev);
        assert_eq!(
            whats(&ev),
            [
                "lel",
                "alarm_high",
                "fault",
                "preheat_end",
                "fault_clear",
                "power_cycle",
                "preheat_end"
            ]
        );
    }

    #[test]
    fn a_silent_unit_says_so_and_comes_back() {
        let mut u = unit(
            GasModel::GenericGas,
            0.0,
            vec![
                GasStep {
                    silent: Some(true),
                    ..step(1.0)
                },
                GasStep {
                    silent: Some(false),
                    ..step(2.0)
                },
            ],
        );
        let mut ev = Vec::new();
        u.advance(0.5, &mut ev);
        assert!(!u.is_silent());
        u.advance(1.0, &mut ev);
        assert!(u.is_silent());
        u.advance(2.5, &mut ev);
        assert!(!u.is_silent());
        assert_eq!(whats(&ev), ["silent", "silent_end"]);
    }

    #[test]
    fn midas_floats_are_word_swapped_and_the_heartbeat_toggles_every_2_s() {
        let mut u = unit(
            GasModel::Midas,
            1.0,
            vec![GasStep {
                lel: Some(25.5),
                ..step(0.0)
            }],
        );
        u.advance(0.0, &mut Vec::new());
        let warm = u.registers(0.5);
        assert_eq!(warm.len(), MIDAS_REGISTERS);
        assert_eq!(warm[0] & 0x000F, 0, "warm-up");
        let r = u.registers(2.5);
        // 25.5f32 = 0x41CC0000: low word first.
        assert_eq!([r[2], r[3]], [0x0000, 0x41CC]);
        assert_eq!(f32::from_bits((u32::from(r[3]) << 16) | u32::from(r[2])), 25.5);
        assert_eq!(r[4], 26);
        assert_eq!(r[1], 0x0101);
        assert_eq!(r[6], 0x0800);
        assert_eq!([r[7], r[8], r[10], r[11]], [25, 8760, 500, 0]);
        // 20.0f32 = 0x41A00000, 50.0f32 = 0x42480000.
        assert_eq!(r[12..16], [0x0000, 0x41A0, 0x0000, 0x4248]);
        assert_eq!(r[0] & 0x000F, 1, "monitoring");
        assert_eq!(r[0] & (1 << 6), 1 << 6, "low alarm");
        assert_eq!(r[0] & (1 << 7), 0, "no high alarm");
        assert_eq!(r[0] & 0x0030, 0, "no fault");
        assert_eq!(r[9], 1);
        assert_eq!(r[0] & (1 << 11), 1 << 11, "heartbeat 1 at 2.5 s");
        let r = u.registers(4.1);
        assert_eq!(r[9], 2);
        assert_eq!(r[0] & (1 << 11), 0, "heartbeat 0 at 4.1 s");
        assert_eq!(u.registers(1.9)[0] & (1 << 11), 0);
    }

    #[test]
    fn midas_fault_and_high_alarm_bits() {
        let mut u = unit(
            GasModel::Midas,
            0.0,
            vec![GasStep {
                lel: Some(70.0),
                fault: Some(true),
                ..step(0.0)
            }],
        );
        u.advance(0.0, &mut Vec::new());
        let r = u.registers(0.0);
        assert_eq!((r[0] >> 4) & 0x3, 2, "instrument fault");
        assert_eq!(r[0] & 0xC0, 0xC0, "low and high alarm bits both set above high");
        assert_eq!(r[5], MIDAS_FAULT_NUMBER);
        assert_eq!(r[0] & 0xF700, 0, "relays and top bits clear");
    }

    #[test]
    fn every_nth_answer_is_corrupted() {
        let mut u = GasUnit::new(GasUnitSpec {
            unit: 1,
            model: GasModel::GenericGas,
            preheat_s: 0.0,
            low_alarm: 20.0,
            high_alarm: 50.0,
            delay_ms: 0,
            crc_error_every: 3,
            script: Vec::new(),
        });
        let pattern: Vec<bool> = (0..6).map(|_| u.next_answer_corrupt()).collect();
        assert_eq!(pattern, [false, false, true, false, false, true]);
    }
}
