//! The checks of what a bus plays: its outages, its Modbus units with their gas scripts, and a
//! radar's script. Each problem is collected with its bus, unit, step and key; a part with a
//! problem is left out.

use std::collections::HashSet;

use toml::Spanned;

use super::{
    Errors, GasStep, GasUnitSpec, Outage, RadarStep, RawGasStep, RawRadarStep, RawUnit, DEFAULT_GARBAGE_CHUNK,
    DEFAULT_HIGH_ALARM_LEL, DEFAULT_LOW_ALARM_LEL, MAX_DELAY_MS, MAX_GARBAGE_BYTES, MAX_GARBAGE_CHUNK,
};

/// A time in seconds: finite, not negative.
fn check_time(v: f64) -> Result<f64, String> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a number of seconds >= 0, got {v}"))
    }
}

fn check_lel(v: f64) -> Result<f64, String> {
    if v.is_finite() {
        Ok(v.clamp(0.0, 100.0))
    } else {
        Err(format!("must be a finite %LEL, got {v}"))
    }
}

pub(super) fn check_outages(errs: &mut Errors<'_>, place: &str, raw: &[Spanned<Outage>]) -> Vec<Outage> {
    let mut out: Vec<Outage> = Vec::with_capacity(raw.len());
    for (i, o) in raw.iter().enumerate() {
        let v = *o.get_ref();
        let mut ok = true;
        if let Err(e) = check_time(v.at_s) {
            errs.push(o, format!("{place}: outages[{i}]: key `at_s`: {e}"));
            ok = false;
        }
        if !(v.for_s.is_finite() && v.for_s > 0.0) {
            errs.push(
                o,
                format!("{place}: outages[{i}]: key `for_s`: must be > 0, got {}", v.for_s),
            );
            ok = false;
        }
        if let Some(prev) = out.last() {
            if ok && v.at_s < prev.at_s + prev.for_s {
                errs.push(
                    o,
                    format!(
                        "{place}: outages[{i}]: key `at_s`: starts at {} s, before the previous outage ends ({} s)",
                        v.at_s,
                        prev.at_s + prev.for_s
                    ),
                );
                ok = false;
            }
        }
        if ok {
            out.push(v);
        }
    }
    out
}

pub(super) fn check_units(errs: &mut Errors<'_>, place: &str, raw: &[Spanned<RawUnit>]) -> Vec<GasUnitSpec> {
    let mut seen = HashSet::new();
    let mut units = Vec::with_capacity(raw.len());
    for (i, spanned) in raw.iter().enumerate() {
        let u = spanned.get_ref();
        let unit_place = format!("{place} unit {}", u.unit);
        let mut ok = true;
        let mut bad = |errs: &mut Errors<'_>, message: String| {
            errs.push(spanned, message);
            ok = false;
        };
        if !(1..=247).contains(&u.unit) {
            bad(
                errs,
                format!(
                    "{place} units[{i}]: key `unit`: must be 1-247 (0 is broadcast), got {}",
                    u.unit
                ),
            );
        } else if !seen.insert(u.unit) {
            bad(errs, format!("{unit_place}: key `unit`: duplicate unit on this bus"));
        }
        let preheat_s = match check_time(u.preheat_s.unwrap_or(0.0)) {
            Ok(v) => v,
            Err(e) => {
                bad(errs, format!("{unit_place}: key `preheat_s`: {e}"));
                0.0
            }
        };
        let low_alarm = u.low_alarm.unwrap_or(DEFAULT_LOW_ALARM_LEL);
        let high_alarm = u.high_alarm.unwrap_or(DEFAULT_HIGH_ALARM_LEL);
        for (key, v) in [("low_alarm", low_alarm), ("high_alarm", high_alarm)] {
            if !(v.is_finite() && v > 0.0 && v <= 100.0) {
                bad(
                    errs,
                    format!("{unit_place}: key `{key}`: must be in (0, 100] %LEL, got {v}"),
                );
            }
        }
        if low_alarm >= high_alarm {
            bad(
                errs,
                format!("{unit_place}: key `high_alarm`: must be above low_alarm ({low_alarm}), got {high_alarm}"),
            );
        }
        let delay_ms = u.delay_ms.unwrap_or(0);
        if !(0..=MAX_DELAY_MS as i64).contains(&delay_ms) {
            bad(
                errs,
                format!("{unit_place}: key `delay_ms`: must be 0-{MAX_DELAY_MS}, got {delay_ms}"),
            );
        }
        let crc_error_every = u.crc_error_every.unwrap_or(0);
        if !(0..=i64::from(u32::MAX)).contains(&crc_error_every) {
            bad(
                errs,
                format!("{unit_place}: key `crc_error_every`: must be >= 0 (0: never), got {crc_error_every}"),
            );
        }
        let script = check_gas_script(errs, &unit_place, &u.script, &mut ok);
        if ok {
            units.push(GasUnitSpec {
                unit: u.unit as u8,
                model: u.model,
                preheat_s,
                low_alarm,
                high_alarm,
                delay_ms: delay_ms as u64,
                crc_error_every: crc_error_every as u32,
                script,
            });
        }
    }
    units
}

fn check_gas_script(errs: &mut Errors<'_>, place: &str, raw: &[Spanned<RawGasStep>], ok: &mut bool) -> Vec<GasStep> {
    let mut steps = Vec::with_capacity(raw.len());
    let mut last_at = 0.0;
    for (i, spanned) in raw.iter().enumerate() {
        let s = spanned.get_ref();
        let here = format!("{place}: script[{i}]");
        let mut push = |errs: &mut Errors<'_>, message: String| {
            errs.push(spanned, message);
            *ok = false;
        };
        let at_s = match check_time(s.at_s) {
            Ok(v) => v,
            Err(e) => {
                push(errs, format!("{here}: key `at_s`: {e}"));
                0.0
            }
        };
        if at_s < last_at {
            push(
                errs,
                format!("{here}: key `at_s`: {at_s} s comes before the previous step ({last_at} s): keep steps in time order"),
            );
        }
        last_at = last_at.max(at_s);
        let lel = s.lel.map(check_lel).transpose().unwrap_or_else(|e| {
            push(errs, format!("{here}: key `lel`: {e}"));
            None
        });
        let ramp = match (s.ramp_to, s.over_s) {
            (Some(to), Some(over_s)) => {
                let to = check_lel(to).unwrap_or_else(|e| {
                    push(errs, format!("{here}: key `ramp_to`: {e}"));
                    0.0
                });
                if !(over_s.is_finite() && over_s > 0.0) {
                    push(errs, format!("{here}: key `over_s`: must be > 0, got {over_s}"));
                }
                Some((to, over_s))
            }
            (Some(_), None) => {
                push(errs, format!("{here}: key `over_s`: missing (ramp_to needs over_s)"));
                None
            }
            (None, Some(_)) => {
                push(errs, format!("{here}: key `ramp_to`: missing (over_s needs ramp_to)"));
                None
            }
            (None, None) => None,
        };
        if s.lel.is_some() && s.ramp_to.is_some() {
            push(
                errs,
                format!("{here}: key `ramp_to`: a step sets `lel` or ramps, not both"),
            );
        }
        if s.power_cycle == Some(false) {
            push(
                errs,
                format!("{here}: key `power_cycle`: only `true` means something (the unit restarts)"),
            );
        }
        let step = GasStep {
            at_s,
            lel,
            ramp,
            fault: s.fault,
            silent: s.silent,
            power_cycle: s.power_cycle == Some(true),
        };
        if step.lel.is_none()
            && s.ramp_to.is_none()
            && s.over_s.is_none()
            && step.fault.is_none()
            && step.silent.is_none()
            && s.power_cycle.is_none()
        {
            push(
                errs,
                format!("{here}: the step changes nothing (give lel, ramp_to + over_s, fault, silent or power_cycle)"),
            );
        }
        steps.push(step);
    }
    steps
}

pub(super) fn check_radar_script(errs: &mut Errors<'_>, place: &str, raw: &[Spanned<RawRadarStep>]) -> Vec<RadarStep> {
    let mut steps = Vec::with_capacity(raw.len());
    let mut last_at = 0.0;
    for (i, spanned) in raw.iter().enumerate() {
        let s = spanned.get_ref();
        let here = format!("{place}: script[{i}]");
        let at_s = check_time(s.at_s).unwrap_or_else(|e| {
            errs.push(spanned, format!("{here}: key `at_s`: {e}"));
            0.0
        });
        if at_s < last_at {
            errs.push(
                spanned,
                format!("{here}: key `at_s`: {at_s} s comes before the previous step ({last_at} s): keep steps in time order"),
            );
        }
        last_at = last_at.max(at_s);
        let body_movement = match s.body_movement {
            Some(v) if (0..=100).contains(&v) => Some(v as u8),
            Some(v) => {
                errs.push(spanned, format!("{here}: key `body_movement`: must be 0-100, got {v}"));
                None
            }
            None => None,
        };
        let garbage = match (s.garbage_bytes, s.garbage_chunk) {
            (Some(bytes), chunk) => {
                let chunk = chunk.unwrap_or(DEFAULT_GARBAGE_CHUNK as i64);
                if !(1..=MAX_GARBAGE_BYTES as i64).contains(&bytes) {
                    errs.push(
                        spanned,
                        format!("{here}: key `garbage_bytes`: must be 1-{MAX_GARBAGE_BYTES}, got {bytes}"),
                    );
                }
                if !(1..=MAX_GARBAGE_CHUNK as i64).contains(&chunk) {
                    errs.push(
                        spanned,
                        format!("{here}: key `garbage_chunk`: must be 1-{MAX_GARBAGE_CHUNK}, got {chunk}"),
                    );
                }
                Some((bytes.max(0) as u64, chunk.max(1) as usize))
            }
            (None, Some(_)) => {
                errs.push(spanned, format!("{here}: key `garbage_chunk`: only with garbage_bytes"));
                None
            }
            (None, None) => None,
        };
        let step = RadarStep {
            at_s,
            presence: s.presence,
            motion: s.motion,
            fall: s.fall,
            dwell: s.dwell,
            body_movement,
            silent: s.silent,
            garbage,
        };
        if step.presence.is_none()
            && step.motion.is_none()
            && step.fall.is_none()
            && step.dwell.is_none()
            && s.body_movement.is_none()
            && step.silent.is_none()
            && s.garbage_bytes.is_none()
            && s.garbage_chunk.is_none()
        {
            errs.push(
                spanned,
                format!(
                    "{here}: the step changes nothing (give presence, motion, fall, dwell, body_movement, silent or \
                     garbage_bytes)"
                ),
            );
        }
        steps.push(step);
    }
    steps
}
