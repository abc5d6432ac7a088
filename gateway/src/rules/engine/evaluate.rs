//! One entry's condition for one device: trigger and clear of each kind of condition (with the
//! rate of rise and whether the resident is at rest), and the trigger an entry raises, its
//! messages filled in. Pure functions of the device's state and the time passed in.

use super::{Context, DeviceState};
use crate::reading::Value;
use crate::rules::catalog::{Condition, Rule};
use crate::rules::output::Trigger;

/// A rate of rise is not computed over less than this span: two samples a second apart with
/// sensor noise would read as a fire.
const MIN_RATE_SPAN_MS: i64 = 20_000;
/// "At rest" (R8): steps counted over this span...
pub(super) const AT_REST_WINDOW_MS: i64 = 600_000;
/// ... below this many. Walking is about 100 steps a minute; a resident shuffling to the
/// bathroom and back stays under it, one walking for a minute does not (project default, after
/// the 10 minutes of inactivity consumer watches wait before a heart-rate notification).
const AT_REST_MAX_STEPS: f64 = 100.0;

/// Whether the device's resident is at rest: not reported moving, and fewer than
/// [`AT_REST_MAX_STEPS`] steps over the last [`AT_REST_WINDOW_MS`] (scaled down when the oldest
/// sample kept is older). A device that reports neither counts as at rest: no data is no reason
/// to hold an alarm back.
pub(super) fn resting(ds: &DeviceState) -> bool {
    if ds.values.get("motion_state") == Some(&Value::Text("moving".to_owned())) {
        return false;
    }
    let Some((t0, v0, t1, v1)) = ds
        .samples
        .get("steps")
        .and_then(|s| Some((s.front()?, s.back()?)))
        .map(|(a, b)| (a.0, a.1, b.0, b.1))
    else {
        return true;
    };
    let span = (t1 - t0).max(1);
    let steps = (v1 - v0) * (AT_REST_WINDOW_MS as f64 / span.max(AT_REST_WINDOW_MS) as f64);
    steps < AT_REST_MAX_STEPS
}

/// (trigger, clear) of one condition for one device at `now`, before windows and suppression.
/// `active`: the entry has fired and not cleared.
pub(super) fn evaluate(c: &Condition, ds: &DeviceState, ctx: &Context<'_>, active: bool, now: i64) -> (bool, bool) {
    let num = |m: &str| ds.values.get(m).and_then(Value::as_f64);
    match c {
        Condition::Threshold {
            metric,
            above,
            below,
            clear_below,
            clear_above,
        } => {
            let Some(v) = num(metric) else {
                return (false, false);
            };
            let trigger = above.is_some_and(|a| v >= a) || below.is_some_and(|b| v <= b);
            let clear = if clear_below.is_none() && clear_above.is_none() {
                !trigger
            } else {
                clear_below.is_none_or(|c| v < c) && clear_above.is_none_or(|c| v > c)
            };
            (trigger, clear)
        }
        Condition::State {
            metric,
            values,
            clear_values,
        } => {
            let Some(v) = ds.values.get(metric) else {
                return (false, false);
            };
            let trigger = values.contains(v);
            let clear = match clear_values {
                Some(cv) => cv.contains(v),
                None => !trigger,
            };
            (trigger, clear)
        }
        Condition::Rate {
            metric,
            rise_per_min,
            floor,
            window_ms: _,
            clear_below,
        } => {
            let Some(v) = num(metric) else {
                return (false, false);
            };
            let rate = ds.samples.get(metric).and_then(|s| {
                let (t0, v0) = *s.front()?;
                let (t1, v1) = *s.back()?;
                (t1 - t0 >= MIN_RATE_SPAN_MS).then(|| (v1 - v0) * 60_000.0 / (t1 - t0) as f64)
            });
            let trigger = rate.is_some_and(|r| r >= *rise_per_min) && floor.is_none_or(|f| v >= f);
            let clear = match clear_below {
                Some(c) => v < *c,
                None => !trigger,
            };
            (trigger, clear)
        }
        Condition::Absence { multiple } => {
            // A device already offline stays so until it is heard itself: a serial link that
            // went down and came back meanwhile neither clears nor renews its alert. Otherwise,
            // while its link is down the link's alert speaks for it (no trigger, no clear).
            let from = if active {
                Some(ds.last_seen_ms)
            } else {
                ctx.silence_from
            };
            match (ctx.interval_ms, from) {
                (Some(i), Some(from)) => {
                    let offline = now - from > i * *multiple as i64;
                    (offline, !offline)
                }
                _ => (false, false),
            }
        }
        Condition::Missing {
            metric,
            after_ms,
            offline_multiple,
        } => {
            // Only a device that reported the metric before: one that never does does not
            // measure it.
            let Some(seen) = ds.metric_seen.get(metric) else {
                return (false, false);
            };
            let missing = now - seen >= *after_ms;
            let online = ctx
                .interval_ms
                .is_some_and(|i| now - ds.last_seen_ms <= i * i64::from(*offline_multiple));
            (missing && online, !missing)
        }
        Condition::LowBattery {
            below_pct,
            clear_above_pct,
        } => {
            let low_flag = ds.values.get("battery_low") == Some(&Value::Bool(true));
            let pct = num("battery_pct");
            let trigger = low_flag || pct.is_some_and(|p| p <= *below_pct);
            let clear = !low_flag && pct.is_none_or(|p| p > *clear_above_pct);
            (trigger, clear)
        }
    }
}

/// The trigger of `rule` for the device at `now`: its value and its messages filled in.
pub(super) fn trigger(rule: &Rule, ds: &DeviceState, ctx: &Context<'_>, now: i64) -> Trigger {
    let metric = rule.condition.metric().map(str::to_owned);
    let value = match &rule.condition {
        Condition::Absence { .. } => Some(Value::Num(((now - ds.last_seen_ms) / 1000) as f64)),
        Condition::Missing { metric, .. } => ds
            .metric_seen
            .get(metric)
            .map(|seen| Value::Num(((now - seen) / 60_000) as f64)),
        Condition::LowBattery { .. } => ds
            .values
            .get("battery_pct")
            .or_else(|| ds.values.get("battery_low"))
            .cloned(),
        _ => metric.as_ref().and_then(|m| ds.values.get(m).cloned()),
    };
    let shown = value.as_ref().map(display).unwrap_or_default();
    // A battery level is a percentage, or only the device's own low-battery flag: the unit (or
    // the word for the flag) comes with the value, since the template cannot know which.
    let (shown_zh, shown_en) = match (&rule.condition, &value) {
        (Condition::LowBattery { .. }, Some(Value::Num(_))) => (format!("{shown}%"), format!("{shown} %")),
        (Condition::LowBattery { .. }, _) => ("低电量告警".to_owned(), "low-battery warning".to_owned()),
        _ => (shown.clone(), shown),
    };
    let fill = |template: &str, shown: &str| {
        template
            .replace("{room}", &ctx.room)
            .replace("{device}", ctx.device)
            .replace("{value}", shown)
            .replace("{resident}", ctx.resident.unwrap_or(""))
            .replace("{metric}", metric.as_deref().unwrap_or(""))
    };
    Trigger {
        rule: rule.id.clone(),
        subject: ctx.device.to_owned(),
        priority: rule.priority,
        upgrades: None,
        device: ctx.device.to_owned(),
        room: ctx.room.to_string(),
        resident: ctx.resident.map(str::to_owned),
        hazard: rule.hazard.clone(),
        metric: metric.clone(),
        value,
        latching: rule.latching,
        person_centred: rule.person_centred,
        message: fill(&rule.message, &shown_zh),
        message_en: fill(&rule.message_en, &shown_en),
        at: now,
    }
}

/// A value as the messages show it: whole numbers without decimals, others to one.
fn display(v: &Value) -> String {
    match v {
        Value::Num(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", *n as i64),
        Value::Num(n) => format!("{n:.1}"),
        Value::Bool(b) => b.to_string(),
        Value::Text(s) => s.clone(),
    }
}
