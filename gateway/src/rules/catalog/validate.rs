//! Validation of the rules file: what `serde` cannot check. The defaults, each maintenance
//! window and each entry are checked one concern at a time, every error reported at once with
//! its key (`rules.3.name`); an entry without error becomes its [`Rule`]s. What each kind of
//! entry takes and builds is in `kinds.rs`.

use std::collections::HashMap;

use super::file::{parse_hhmm, DefaultsFile, KindFile, MaintenanceFile, RuleFile};
use super::kinds::{self, rule_key, Part};
use super::{Maintenance, Rule, RuleSet, Selector, PLACEHOLDERS};
use crate::diagnostics::Diagnostics;
use crate::registry::{is_valid_id, CARE_FLAGS, CLASSES, UNREGISTERED_CLASS};
use crate::site_time::SiteTime;
use crate::vocabulary::{self, Kind as MetricKind};

impl RuleSet {
    /// Applies `[defaults]` over the built-in numbers.
    pub(super) fn apply_defaults(&mut self, f: DefaultsFile, d: &mut Diagnostics<'_>) {
        for (i, (name, tiers)) in [
            ("P1", f.escalation_s.p1),
            ("P2", f.escalation_s.p2),
            ("P3", f.escalation_s.p3),
            ("P4", f.escalation_s.p4),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(t) = tiers {
                if t.windows(2).any(|w| w[0] >= w[1]) || t.first() == Some(&0) {
                    d.at_key(
                        &format!("defaults.escalation_s.{name}"),
                        "tiers must be positive and strictly increasing",
                    );
                }
                self.escalation_s[i] = t;
            }
        }
        if let Some(v) = f.correlation_window_s {
            self.correlation_window_s = v;
        }
        if let Some(v) = f.renotify_suppress_s {
            self.renotify_suppress_s = v;
        }
        if let Some(v) = f.offline_multiple {
            if v == 0 {
                d.at_key("defaults.offline_multiple", "must be at least 1");
            }
            self.offline_multiple = v.max(1);
        }
        for (k, v, slot) in [
            ("night_start", f.night_start, &mut self.night_start_min),
            ("night_end", f.night_end, &mut self.night_end_min),
        ] {
            if let Some(v) = v {
                match parse_hhmm(&v) {
                    Some(m) => *slot = m,
                    None => d.at_key(&format!("defaults.{k}"), format!("`{v}` is not a local time HH:MM")),
                }
            }
        }
        if let Some(v) = f.utc_offset_min {
            if !(-720..=840).contains(&v) {
                d.at_key("defaults.utc_offset_min", "must be within -720..=840 minutes");
            }
            self.site_time = SiteTime::fixed(v);
            self.offset_pinned = true;
        }
        if let Some(flags) = f.suppress_flags {
            for flag in &flags {
                if vocabulary::metric(flag).map(|m| m.kind) != Some(MetricKind::Bool) {
                    d.at_key(
                        "defaults.suppress_flags",
                        format!("`{flag}` is not a boolean metric of the vocabulary"),
                    );
                }
            }
            self.suppress_flags = flags;
        }
        if let Some(n) = f.min_readings {
            if n == 0 {
                d.at_key("defaults.min_readings", "must be at least 1");
            }
            self.min_readings = n.max(1);
        }
    }

    /// One `[[maintenance]]` window, or `None` when it has an error.
    fn validate_maintenance(&self, i: usize, m: MaintenanceFile, d: &mut Diagnostics<'_>) -> Option<Maintenance> {
        let key = |k: &str| format!("maintenance.{i}.{k}");
        let mut ok = true;
        if m.devices.is_empty() && m.rooms.is_empty() {
            d.at_key(&key("devices"), "name at least one device or room");
            ok = false;
        }
        let daily = match (&m.daily_start, &m.daily_end) {
            (None, None) => None,
            (Some(s), Some(e)) => match (parse_hhmm(s), parse_hhmm(e)) {
                (Some(s), Some(e)) => Some((s, e)),
                _ => {
                    d.at_key(&key("daily_start"), "daily_start and daily_end are local times HH:MM");
                    ok = false;
                    None
                }
            },
            _ => {
                d.at_key(&key("daily_start"), "give both daily_start and daily_end");
                ok = false;
                None
            }
        };
        if let (Some(s), Some(e)) = (m.start_ms, m.end_ms) {
            if e <= s {
                d.at_key(&key("end_ms"), "must be after start_ms");
                ok = false;
            }
        }
        if daily.is_none() && m.start_ms.is_none() && m.end_ms.is_none() {
            d.at_key(&key("start_ms"), "give start_ms/end_ms, daily_start/daily_end, or both");
            ok = false;
        }
        ok.then_some(Maintenance {
            devices: m.devices,
            rooms: m.rooms,
            start_ms: m.start_ms,
            end_ms: m.end_ms,
            daily,
        })
    }

    /// Validates the `[[maintenance]]` windows; the valid ones apply.
    pub(super) fn apply_maintenance(&mut self, windows: Vec<MaintenanceFile>, d: &mut Diagnostics<'_>) {
        for (i, m) in windows.into_iter().enumerate() {
            if let Some(m) = self.validate_maintenance(i, m, d) {
                self.maintenance.push(m);
            }
        }
    }

    /// Validates the `[[rules]]` entries in file order, then what ties entries together:
    /// `upgrade_to` names another rule.
    pub(super) fn apply_rules(&mut self, entries: Vec<RuleFile>, d: &mut Diagnostics<'_>) {
        // Name and hazard of the first entry of each id.
        let mut first_of_id: HashMap<String, (String, String)> = HashMap::new();
        let mut count_of_id: HashMap<String, usize> = HashMap::new();
        let mut upgrades: Vec<(usize, String, String)> = Vec::new();
        for (i, r) in entries.into_iter().enumerate() {
            check_id(i, &r, &mut first_of_id, d);
            let n = count_of_id.entry(r.id.clone()).or_insert(0);
            let part = *n;
            *n += 1;
            if let Some(to) = &r.upgrade_to {
                upgrades.push((i, r.id.clone(), to.clone()));
            }
            self.validate_rule(i, part, r, d);
        }
        for (i, id, to) in upgrades {
            if !first_of_id.contains_key(&to) {
                d.at_key(&format!("rules.{i}.upgrade_to"), format!("no rule has id `{to}`"));
            } else if id == to {
                d.at_key(&format!("rules.{i}.upgrade_to"), "a rule cannot upgrade into itself");
            }
        }
    }

    /// Validates entry `i`, one concern at a time, and adds its rules when it has no error (one
    /// per stage for `co_curve`). `part` numbers the entries sharing its id (the key `R12#2`).
    fn validate_rule(&mut self, i: usize, part: usize, r: RuleFile, d: &mut Diagnostics<'_>) {
        let before = d.errors.len();
        check_texts(i, &r, d);
        check_selector(i, &r, d);
        check_upgrade(i, &r, d);
        check_flags(i, &r, d);
        check_readings(i, &r, d);
        kinds::check_keys(i, &r, d);
        let reads = kinds::reads(i, &r, d);
        kinds::check_finite(i, &r, d);
        let parts = kinds::conditions(i, &r, reads, self.offline_multiple, d);
        if d.errors.len() > before {
            return;
        }
        self.push_rules(part, r, parts);
    }

    /// Adds the rules of a valid entry, one per condition it built.
    fn push_rules(&mut self, part: usize, r: RuleFile, parts: Vec<Part>) {
        let clear_for_ms = r.clear_for_s.unwrap_or(0) as i64 * 1000;
        let suppressed_by = self.suppressed_by(&r);
        let select = Selector {
            classes: r.classes,
            except_classes: r.except_classes,
            zones: r.zones,
            care_flags: r.care_flags,
            except_care_flags: r.except_care_flags,
            care_flags_scope: r.care_flags_scope,
        };
        for Part {
            suffix,
            condition,
            priority,
            for_ms,
        } in parts
        {
            let min_readings = r
                .min_readings
                .unwrap_or(if for_ms > 0 || r.hold_from_warmup {
                    self.min_readings
                } else {
                    1
                })
                .max(1);
            self.rules.push(Rule {
                id: r.id.clone(),
                key: format!("{}#{part}{suffix}", r.id),
                name: r.name.clone(),
                priority,
                hazard: r.hazard.clone(),
                latching: r.latching,
                person_centred: r.person_centred,
                reraise: r.reraise,
                message: r.message.clone(),
                message_en: r.message_en.clone(),
                select: select.clone(),
                window: r.window,
                condition,
                for_ms,
                clear_for_ms,
                upgrade_to: r.upgrade_to.clone(),
                upgrade_after_ms: r.upgrade_after_s.map(|s| s as i64 * 1000),
                suppressed_by: suppressed_by.clone(),
                suppress_max_ms: r.suppress_max_s.map(|s| s as i64 * 1000),
                while_flags: r.while_flags.clone(),
                min_readings,
                hold_from_warmup: r.hold_from_warmup,
                at_rest: r.at_rest,
            });
        }
    }

    /// The flags that hold the entry back: its own `suppressed_by`, else `defaults.suppress_flags`
    /// for threshold, rate and co_curve entries; never a flag the entry is about.
    fn suppressed_by(&self, r: &RuleFile) -> Vec<String> {
        let suppressible = matches!(r.kind, KindFile::Threshold | KindFile::Rate | KindFile::CoCurve);
        let mut suppressed_by = r.suppressed_by.clone().unwrap_or_else(|| {
            if suppressible {
                self.suppress_flags.clone()
            } else {
                Vec::new()
            }
        });
        // A flag the entry is about never holds it back.
        suppressed_by.retain(|f| !r.while_flags.contains(f));
        suppressed_by
    }
}

/// The entry's id is valid, and the entries sharing it agree on `name` and `hazard`.
fn check_id(i: usize, r: &RuleFile, first_of_id: &mut HashMap<String, (String, String)>, d: &mut Diagnostics<'_>) {
    let key = |k: &str| rule_key(i, k);
    if !is_valid_id(&r.id) {
        d.at_key(&key("id"), format!("`{}` must match [A-Za-z0-9._:-]+", r.id));
    }
    match first_of_id.get(&r.id) {
        Some((name, hazard)) => {
            if *name != r.name || *hazard != r.hazard {
                d.at_key(
                    &key("id"),
                    format!(
                        "duplicate id `{}` with a different name or hazard: entries sharing an id are one rule \
                         (any of them raises it) and must agree on `name` and `hazard`",
                        r.id
                    ),
                );
            }
        }
        None => {
            first_of_id.insert(r.id.clone(), (r.name.clone(), r.hazard.clone()));
        }
    }
}

/// Name, hazard and both messages are given; the messages use known placeholders only.
fn check_texts(i: usize, r: &RuleFile, d: &mut Diagnostics<'_>) {
    let key = |k: &str| rule_key(i, k);
    if r.name.trim().is_empty() {
        d.at_key(&key("name"), "must not be empty");
    }
    if r.hazard.trim().is_empty() {
        d.at_key(&key("hazard"), "must not be empty");
    }
    for (k, m) in [("message", &r.message), ("message_en", &r.message_en)] {
        if m.trim().is_empty() {
            d.at_key(&key(k), "must not be empty");
        }
        for p in unknown_placeholders(m) {
            d.at_key(
                &key(k),
                format!("unknown placeholder `{{{p}}}`; one of {}", PLACEHOLDERS.join(", ")),
            );
        }
    }
}

/// The classes and care flags the entry selects by exist.
fn check_selector(i: usize, r: &RuleFile, d: &mut Diagnostics<'_>) {
    let key = |k: &str| rule_key(i, k);
    for (k, list) in [("classes", &r.classes), ("except_classes", &r.except_classes)] {
        for c in list {
            if !CLASSES.contains(&c.as_str()) && c != UNREGISTERED_CLASS {
                d.at_key(
                    &key(k),
                    format!(
                        "unknown class `{c}`; one of {}, {UNREGISTERED_CLASS}",
                        CLASSES.join(", ")
                    ),
                );
            }
        }
    }
    for (k, list) in [
        ("care_flags", &r.care_flags),
        ("except_care_flags", &r.except_care_flags),
    ] {
        for f in list {
            if !CARE_FLAGS.contains(&f.as_str()) {
                d.at_key(
                    &key(k),
                    format!("unknown care flag `{f}`; one of {}", CARE_FLAGS.join(", ")),
                );
            }
        }
    }
}

/// An upgrade time comes with the rule to upgrade into (which must exist: checked once every
/// entry is read).
fn check_upgrade(i: usize, r: &RuleFile, d: &mut Diagnostics<'_>) {
    if r.upgrade_after_s.is_some() && r.upgrade_to.is_none() {
        d.at_key(&rule_key(i, "upgrade_after_s"), "needs `upgrade_to`");
    }
}

/// `suppressed_by` and `while_flags` name boolean metrics, on kinds that read a metric;
/// `suppress_max_s` limits a flag that is there.
fn check_flags(i: usize, r: &RuleFile, d: &mut Diagnostics<'_>) {
    let key = |k: &str| rule_key(i, k);
    for (k, list) in [
        ("suppressed_by", r.suppressed_by.as_deref().unwrap_or_default()),
        ("while_flags", r.while_flags.as_slice()),
    ] {
        for flag in list {
            if vocabulary::metric(flag).map(|m| m.kind) != Some(MetricKind::Bool) {
                d.at_key(&key(k), format!("`{flag}` is not a boolean metric of the vocabulary"));
            }
        }
    }
    let flag_kinds = matches!(
        r.kind,
        KindFile::Threshold | KindFile::State | KindFile::Rate | KindFile::CoCurve
    );
    for (k, given) in [
        ("suppressed_by", r.suppressed_by.is_some()),
        ("suppress_max_s", r.suppress_max_s.is_some()),
        ("while_flags", !r.while_flags.is_empty()),
    ] {
        if given && !flag_kinds {
            d.at_key(&key(k), format!("`{k}` does not apply to this kind of rule"));
        }
    }
    if r.suppress_max_s.is_some() && r.suppressed_by.as_ref().is_some_and(Vec::is_empty) {
        d.at_key(&key("suppress_max_s"), "needs a flag in `suppressed_by`");
    }
}

/// `min_readings` counts at least one reading, on kinds that have readings; a hold taken from
/// the device's warm-up has `for_s` for devices without one.
fn check_readings(i: usize, r: &RuleFile, d: &mut Diagnostics<'_>) {
    let key = |k: &str| rule_key(i, k);
    if r.min_readings == Some(0) {
        d.at_key(&key("min_readings"), "must be at least 1");
    }
    if (r.min_readings.is_some() || r.hold_from_warmup) && matches!(r.kind, KindFile::Absence) {
        d.at_key(&key("min_readings"), "an absence rule counts silence, not readings");
    }
    if r.hold_from_warmup && r.for_s.is_none() {
        d.at_key(
            &key("hold_from_warmup"),
            "needs `for_s`, the hold of devices without `warmup_s`",
        );
    }
}

/// Unknown `{placeholder}`s in a message.
fn unknown_placeholders(message: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = message;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            out.push(name.to_owned());
        }
        rest = &after[close + 1..];
    }
    out
}
