//! The kinds of rule entry (`threshold`, `state`, `rate`, `co_curve`, `absence`, `low_battery`,
//! `missing`): the keys each takes, the metric it reads with the type it needs, and the
//! conditions it builds, with the checks of each kind (hysteresis, stages, rate window).

use super::file::{toml_to_value, KindFile, RuleFile};
use super::{Condition, DEFAULT_RATE_WINDOW_S};
use crate::diagnostics::Diagnostics;
use crate::reading::Value;
use crate::rules::output::Priority;
use crate::vocabulary::{self, Kind as MetricKind, MetricSpec};

/// The key of field `k` of the `i`th `[[rules]]` entry, as errors name it.
pub(super) fn rule_key(i: usize, k: &str) -> String {
    format!("rules.{i}.{k}")
}

/// One condition an entry builds, before it becomes a rule: a `co_curve` entry builds one per
/// stage, every other kind one.
pub(super) struct Part {
    /// Appended to the entry's key: `.0`, `.1`, ... per stage, empty otherwise.
    pub(super) suffix: String,
    pub(super) condition: Condition,
    pub(super) priority: Priority,
    /// The hold, ms.
    pub(super) for_ms: i64,
}

impl Part {
    /// The one condition of an entry without stages.
    fn single(condition: Condition, priority: Priority, for_ms: i64) -> Part {
        Part {
            suffix: String::new(),
            condition,
            priority,
            for_ms,
        }
    }
}

/// What an entry's condition reads: its metric, and the values a state entry compares it with.
pub(super) struct Reads {
    /// Empty for the kinds without a metric (absence, low_battery).
    metric: String,
    values: Option<Vec<Value>>,
    clear_values: Option<Vec<Value>>,
}

/// Only the optional keys the entry's kind takes are given.
pub(super) fn check_keys(i: usize, r: &RuleFile, d: &mut Diagnostics<'_>) {
    let given: [(&str, bool); 13] = [
        ("metric", r.metric.is_some()),
        ("above", r.above.is_some()),
        ("below", r.below.is_some()),
        ("clear_below", r.clear_below.is_some()),
        ("clear_above", r.clear_above.is_some()),
        ("values", r.values.is_some()),
        ("clear_values", r.clear_values.is_some()),
        ("for_s", r.for_s.is_some()),
        ("clear_for_s", r.clear_for_s.is_some()),
        ("rise_per_min", r.rise_per_min.is_some()),
        ("rate_window_s", r.rate_window_s.is_some()),
        ("stages", r.stages.is_some()),
        ("offline_multiple", r.offline_multiple.is_some()),
    ];
    let allowed: &[&str] = match r.kind {
        KindFile::Threshold => &[
            "metric",
            "above",
            "below",
            "clear_below",
            "clear_above",
            "for_s",
            "clear_for_s",
        ],
        KindFile::State => &["metric", "values", "clear_values", "for_s", "clear_for_s"],
        KindFile::Rate => &[
            "metric",
            "above",
            "clear_below",
            "for_s",
            "clear_for_s",
            "rise_per_min",
            "rate_window_s",
        ],
        KindFile::CoCurve => &["metric", "clear_below", "clear_for_s", "stages"],
        KindFile::Absence => &["offline_multiple"],
        KindFile::LowBattery => &["below", "clear_above", "for_s", "clear_for_s"],
        KindFile::Missing => &["metric", "for_s"],
    };
    for (k, present) in given {
        if present && !allowed.contains(&k) {
            d.at_key(&rule_key(i, k), format!("`{k}` does not apply to this kind of rule"));
        }
    }
}

/// The entry's metric, checked against the vocabulary, and its state values, checked against
/// the metric.
pub(super) fn reads(i: usize, r: &RuleFile, d: &mut Diagnostics<'_>) -> Reads {
    let (metric, spec) = entry_metric(i, r, d);
    let values = state_values(i, "values", &r.values, spec, d);
    let clear_values = state_values(i, "clear_values", &r.clear_values, spec, d);
    Reads {
        metric,
        values,
        clear_values,
    }
}

/// The metric, with the type the kind needs (co_curve defaults to `co_ppm`), and its
/// vocabulary entry when it has one.
fn entry_metric(i: usize, r: &RuleFile, d: &mut Diagnostics<'_>) -> (String, Option<&'static MetricSpec>) {
    let key = |k: &str| rule_key(i, k);
    let numeric_kind = matches!(r.kind, KindFile::Threshold | KindFile::Rate | KindFile::CoCurve);
    let metric = match (r.kind, &r.metric) {
        (KindFile::Absence | KindFile::LowBattery, _) => String::new(),
        (KindFile::CoCurve, None) => "co_ppm".to_owned(),
        (_, None) => {
            d.at_key(&key("kind"), "this kind of rule needs `metric`");
            String::new()
        }
        (_, Some(m)) => m.clone(),
    };
    let spec = if metric.is_empty() {
        None
    } else {
        match vocabulary::metric(&metric) {
            None => {
                d.at_key(&key("metric"), format!("unknown metric `{metric}` (see vocabulary.rs)"));
                None
            }
            Some(spec) => {
                let is_num = matches!(spec.kind, MetricKind::Number { .. });
                if numeric_kind && !is_num {
                    d.at_key(
                        &key("metric"),
                        format!("`{metric}` is not a number; this kind needs one"),
                    );
                }
                if r.kind == KindFile::State && is_num {
                    d.at_key(
                        &key("metric"),
                        format!("`{metric}` is a number: use a threshold rule; state rules match booleans and enums"),
                    );
                }
                Some(spec)
            }
        }
    };
    (metric, spec)
}

/// The values of `values` or `clear_values` (key `k`): at least one, each a boolean or a
/// string the metric can take.
fn state_values(
    i: usize,
    k: &str,
    list: &Option<Vec<toml::Value>>,
    spec: Option<&MetricSpec>,
    d: &mut Diagnostics<'_>,
) -> Option<Vec<Value>> {
    let key = |k: &str| rule_key(i, k);
    let list = list.as_ref()?;
    if list.is_empty() {
        d.at_key(&key(k), "must list at least one value");
    }
    let mut out = Vec::new();
    for v in list {
        let Some(value) = toml_to_value(v) else {
            d.at_key(&key(k), format!("`{v}` is not a boolean or a string"));
            continue;
        };
        if let Some(spec) = spec {
            if !matches!(spec.kind, MetricKind::Number { .. }) {
                if let Err(e) = vocabulary::check(spec.name, &value) {
                    d.at_key(&key(k), format!("{e}"));
                }
            }
        }
        out.push(value);
    }
    Some(out)
}

/// The levels given are finite numbers.
pub(super) fn check_finite(i: usize, r: &RuleFile, d: &mut Diagnostics<'_>) {
    for (k, v) in [
        ("above", r.above),
        ("below", r.below),
        ("clear_below", r.clear_below),
        ("clear_above", r.clear_above),
        ("rise_per_min", r.rise_per_min),
    ] {
        if v.is_some_and(|v| !v.is_finite()) {
            d.at_key(&rule_key(i, k), "must be a finite number");
        }
    }
}

/// The conditions the entry's kind builds; `offline_multiple` is `defaults.offline_multiple`.
pub(super) fn conditions(
    i: usize,
    r: &RuleFile,
    reads: Reads,
    offline_multiple: u32,
    d: &mut Diagnostics<'_>,
) -> Vec<Part> {
    let for_ms = r.for_s.unwrap_or(0) as i64 * 1000;
    let Reads {
        metric,
        values,
        clear_values,
    } = reads;
    match r.kind {
        KindFile::Threshold => vec![threshold(i, r, metric, for_ms, d)],
        KindFile::State => match values {
            None => {
                d.at_key(&rule_key(i, "kind"), "a state rule needs `values`");
                Vec::new()
            }
            Some(values) => vec![Part::single(
                Condition::State {
                    metric,
                    values,
                    clear_values,
                },
                r.priority,
                for_ms,
            )],
        },
        KindFile::Rate => rate(i, r, metric, for_ms, d).into_iter().collect(),
        KindFile::CoCurve => co_curve(i, r, &metric, d),
        KindFile::Missing => missing(i, r, metric, offline_multiple, d).into_iter().collect(),
        KindFile::Absence => vec![Part::single(
            Condition::Absence {
                multiple: r.offline_multiple.unwrap_or(offline_multiple).max(1),
            },
            r.priority,
            0,
        )],
        KindFile::LowBattery => vec![low_battery(i, r, for_ms, d)],
    }
}

/// A threshold: `above`, `below` or both, each clear level on its side of its trigger.
fn threshold(i: usize, r: &RuleFile, metric: String, for_ms: i64, d: &mut Diagnostics<'_>) -> Part {
    let key = |k: &str| rule_key(i, k);
    if r.above.is_none() && r.below.is_none() {
        d.at_key(&key("kind"), "a threshold rule needs `above`, `below` or both");
    }
    if let (Some(a), Some(c)) = (r.above, r.clear_below) {
        if c > a {
            d.at_key(&key("clear_below"), "must not be above `above` (hysteresis)");
        }
    }
    if let (Some(b), Some(c)) = (r.below, r.clear_above) {
        if c < b {
            d.at_key(&key("clear_above"), "must not be below `below` (hysteresis)");
        }
    }
    Part::single(
        Condition::Threshold {
            metric,
            above: r.above,
            below: r.below,
            clear_below: r.clear_below,
            clear_above: r.clear_above,
        },
        r.priority,
        for_ms,
    )
}

/// A rate of rise: a positive `rise_per_min` over a window of at least a second.
fn rate(i: usize, r: &RuleFile, metric: String, for_ms: i64, d: &mut Diagnostics<'_>) -> Option<Part> {
    let key = |k: &str| rule_key(i, k);
    match r.rise_per_min {
        Some(rise) if rise > 0.0 => {
            let window_s = r.rate_window_s.unwrap_or(DEFAULT_RATE_WINDOW_S);
            if window_s == 0 {
                d.at_key(&key("rate_window_s"), "must be at least 1");
            }
            Some(Part::single(
                Condition::Rate {
                    metric,
                    rise_per_min: rise,
                    floor: r.above,
                    window_ms: window_s.max(1) as i64 * 1000,
                    clear_below: r.clear_below,
                },
                r.priority,
                for_ms,
            ))
        }
        _ => {
            d.at_key(&key("rise_per_min"), "a rate rule needs a positive `rise_per_min`");
            None
        }
    }
}

/// A CO curve: one threshold per stage, each with its own hold and priority, the clear level
/// under every stage.
fn co_curve(i: usize, r: &RuleFile, metric: &str, d: &mut Diagnostics<'_>) -> Vec<Part> {
    let key = |k: &str| rule_key(i, k);
    let Some(stages) = r.stages.as_ref().filter(|s| !s.is_empty()) else {
        d.at_key(&key("stages"), "a co_curve rule needs at least one stage");
        return Vec::new();
    };
    let mut parts = Vec::new();
    for (s, stage) in stages.iter().enumerate() {
        if !stage.at_least.is_finite() {
            d.at_key(&key("stages"), "stage levels must be finite numbers");
        }
        if let Some(c) = r.clear_below {
            if c > stage.at_least {
                d.at_key(&key("clear_below"), "must not be above any stage level (hysteresis)");
            }
        }
        parts.push(Part {
            suffix: format!(".{s}"),
            condition: Condition::Threshold {
                metric: metric.to_owned(),
                above: Some(stage.at_least),
                below: None,
                clear_below: r.clear_below,
                clear_above: None,
            },
            priority: stage.priority.unwrap_or(r.priority),
            for_ms: stage.for_s as i64 * 1000,
        });
    }
    parts
}

/// A missing metric: `for_s` says how long it is missing.
fn missing(i: usize, r: &RuleFile, metric: String, offline_multiple: u32, d: &mut Diagnostics<'_>) -> Option<Part> {
    match r.for_s {
        Some(after) if after > 0 => Some(Part::single(
            Condition::Missing {
                metric,
                after_ms: after as i64 * 1000,
                offline_multiple,
            },
            r.priority,
            // The silence is the condition; no hold and no readings on top of it.
            0,
        )),
        _ => {
            d.at_key(
                &rule_key(i, "for_s"),
                "a missing rule needs `for_s`, how long the metric is missing",
            );
            None
        }
    }
}

/// A low battery: 20 % and 30 % unless the entry says, the clear level not under the trigger.
fn low_battery(i: usize, r: &RuleFile, for_ms: i64, d: &mut Diagnostics<'_>) -> Part {
    let below_pct = r.below.unwrap_or(20.0);
    let clear_above_pct = r.clear_above.unwrap_or(30.0);
    if clear_above_pct < below_pct {
        d.at_key(&rule_key(i, "clear_above"), "must not be below `below` (hysteresis)");
    }
    Part::single(
        Condition::LowBattery {
            below_pct,
            clear_above_pct,
        },
        r.priority,
        for_ms,
    )
}
