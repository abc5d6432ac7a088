//! Episodes: the entries sharing a rule id form one episode per device. It is raised once, by
//! whichever entry fires first, raised again only with a higher priority (or by a `reraise`
//! entry), upgraded into another rule's alert (R2 -> R1 after `upgrade_after_s`, R13 under an
//! open R14), and cleared when every entry that fired has cleared.

use serde::{Deserialize, Serialize};

use super::evaluate::trigger;
use super::{Context, DeviceState, Engine};
use crate::rules::catalog::Rule;
use crate::rules::output::{Priority, RuleOutput, Trigger};

/// One open episode of a rule for a device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Episode {
    /// The priority last raised.
    pub(super) priority: Option<Priority>,
    pub(super) raised_at_ms: i64,
    /// `reraise` entries already announced in this episode.
    pub(super) reraised: Vec<String>,
    /// This episode was upgraded into that rule's (the alert now carries the other rule).
    pub(super) upgraded_into: Option<String>,
    /// Rules whose open episodes were upgraded into this one; it clears only once they have.
    pub(super) absorbed: Vec<String>,
}

impl Episode {
    /// The `reraise` entries of rule `id` among `fired` not yet announced in this episode,
    /// marked announced: each raises again at the episode's priority `p` (R14's evacuate step).
    fn reraising(&mut self, rules: &[Rule], id: &str, p: Priority, fired: &[usize]) -> Vec<usize> {
        let mut out = Vec::new();
        for &i in fired {
            let r = &rules[i];
            if r.id == id && r.reraise && r.priority <= p && !self.reraised.contains(&r.key) {
                self.reraised.push(r.key.clone());
                out.push(i);
            }
        }
        out
    }
}

impl Engine {
    /// Moves the device's episodes on after its entries were evaluated at `now`; `fired` are the
    /// entries that fired in this step.
    pub(super) fn episodes(
        &self,
        ds: &mut DeviceState,
        ctx: &Context<'_>,
        fired: &[usize],
        now: i64,
        out: &mut Vec<RuleOutput>,
    ) {
        let rules = self.rules.rules();
        self.end_upgraded(ds);
        for (id, idx) in &self.groups {
            let mut ep = ds.episodes.remove(id).unwrap_or_default();
            if ep.upgraded_into.is_some() {
                ds.episodes.insert(id.clone(), ep);
                continue;
            }
            let active = self.active(ds, idx);
            ep.reraised.retain(|k| active.iter().any(|i| rules[*i].key == *k));
            // The most urgent active entry; among equals, one that just fired (its message is news).
            let best = active
                .iter()
                .copied()
                .min_by_key(|i| (rules[*i].priority, !fired.contains(i)));
            match (best, ep.priority) {
                (Some(b), None) if self.superseded(ds, &rules[b]) => {
                    wait_in_upgrade(ds, id, &mut ep, &rules[b], now);
                    ds.episodes.insert(id.clone(), ep);
                    continue;
                }
                (Some(b), None) => {
                    let t = self.raise(ds, ctx, id, &mut ep, &rules[b], now);
                    ep.reraised = active
                        .iter()
                        .filter(|i| rules[**i].reraise)
                        .map(|i| rules[*i].key.clone())
                        .collect();
                    out.push(RuleOutput::Raise(t));
                }
                (Some(b), Some(p)) if rules[b].priority < p => {
                    ep.priority = Some(rules[b].priority);
                    out.push(RuleOutput::Raise(trigger(&rules[b], ds, ctx, now)));
                }
                (Some(_), Some(p)) => {
                    for i in ep.reraising(rules, id, p, fired) {
                        let mut t = trigger(&rules[i], ds, ctx, now);
                        t.priority = p;
                        out.push(RuleOutput::Raise(t));
                    }
                }
                // Absorbed rules (R2 upgraded to R1, R13 under R14) keep the alert while their
                // trigger holds; once it ends they end with it and start afresh.
                (None, Some(_)) if !ep.absorbed.iter().any(|a| self.triggered(ds, a)) => {
                    self.end_absorbed(ds, &ep);
                    out.push(RuleOutput::Clear {
                        rule: id.clone(),
                        subject: ctx.device.to_owned(),
                        at: now,
                    });
                    continue;
                }
                _ => {}
            }
            if ep.priority.is_some() {
                if let Some(t) = self.upgrade_when_due(ds, ctx, id, &mut ep, &active, now) {
                    out.push(RuleOutput::Raise(t));
                }
            }
            if ep != Episode::default() {
                ds.episodes.insert(id.clone(), ep);
            }
        }
    }

    /// Upgraded episodes end silently once their own condition is gone: the alert carries the
    /// other rule now, whose episode then no longer waits for them.
    fn end_upgraded(&self, ds: &mut DeviceState) {
        for (id, idx) in &self.groups {
            let Some(into) = ds.episodes.get(id).and_then(|e| e.upgraded_into.clone()) else {
                continue;
            };
            if self.active(ds, idx).is_empty() {
                ds.episodes.remove(id);
                if let Some(target) = ds.episodes.get_mut(&into) {
                    target.absorbed.retain(|a| a != id);
                }
            }
        }
    }

    /// Raises the episode of rule `id` with its entry `r`. An open episode of a rule that
    /// upgrades into this one becomes part of it: same alert.
    fn raise(
        &self,
        ds: &mut DeviceState,
        ctx: &Context<'_>,
        id: &str,
        ep: &mut Episode,
        r: &Rule,
        now: i64,
    ) -> Trigger {
        let rules = self.rules.rules();
        let mut t = trigger(r, ds, ctx, now);
        for (other, _) in &self.groups {
            let upgrades_here = rules
                .iter()
                .any(|r| r.id == *other && r.upgrade_to.as_deref() == Some(id));
            if !upgrades_here {
                continue;
            }
            if let Some(src) = ds.episodes.get_mut(other) {
                if src.priority.is_some() && src.upgraded_into.is_none() {
                    src.upgraded_into = Some(id.to_owned());
                    ep.absorbed.push(other.clone());
                    t.upgrades.get_or_insert_with(|| other.clone());
                }
            }
        }
        ep.priority = Some(t.priority);
        ep.raised_at_ms = now;
        t
    }

    /// The episode ends with the rules absorbed into it: their episodes and entry states go.
    fn end_absorbed(&self, ds: &mut DeviceState, ep: &Episode) {
        for a in &ep.absorbed {
            ds.episodes.remove(a);
            for r in self.rules.rules().iter().filter(|r| r.id == *a) {
                ds.parts.remove(&r.key);
            }
        }
    }

    /// Not cleared within `upgrade_after_s`: the alert becomes the other rule's (R2 -> R1).
    /// Returns the trigger of the rule upgraded into.
    fn upgrade_when_due(
        &self,
        ds: &mut DeviceState,
        ctx: &Context<'_>,
        id: &str,
        ep: &mut Episode,
        active: &[usize],
        now: i64,
    ) -> Option<Trigger> {
        let rules = self.rules.rules();
        let (from, to) = active.iter().find_map(|i| {
            let r = &rules[*i];
            match (&r.upgrade_to, r.upgrade_after_ms) {
                (Some(to), Some(after)) if now - ep.raised_at_ms >= after => Some((r, to.clone())),
                _ => None,
            }
        })?;
        let target = rules.iter().find(|r| r.id == to)?;
        let mut t = trigger(target, ds, ctx, now);
        t.upgrades = Some(id.to_owned());
        t.metric = from.condition.metric().map(str::to_owned);
        t.value = t.metric.as_ref().and_then(|m| ds.values.get(m).cloned());
        let tep = ds.episodes.entry(to.clone()).or_default();
        if tep.priority.is_none() {
            tep.priority = Some(t.priority);
            tep.raised_at_ms = now;
        }
        tep.absorbed.push(id.to_owned());
        ep.upgraded_into = Some(to);
        Some(t)
    }

    /// Entries of `idx` that have fired and not cleared for the device.
    fn active(&self, ds: &DeviceState, idx: &[usize]) -> Vec<usize> {
        idx.iter()
            .copied()
            .filter(|i| ds.parts.get(&self.rules.rules()[*i].key).is_some_and(|p| p.active))
            .collect()
    }

    /// Whether an entry of rule `id` has its trigger condition true for the device.
    fn triggered(&self, ds: &DeviceState, id: &str) -> bool {
        self.rules
            .rules()
            .iter()
            .filter(|r| r.id == id)
            .any(|r| ds.parts.get(&r.key).is_some_and(|p| p.triggered))
    }

    /// Whether the rule `r` upgrades into is open for the device already.
    fn superseded(&self, ds: &DeviceState, r: &Rule) -> bool {
        r.upgrade_to
            .as_ref()
            .and_then(|to| ds.episodes.get(to))
            .is_some_and(|e| e.priority.is_some() && e.upgraded_into.is_none())
    }
}

/// The rule `r` upgrades into is already open for the device (R13 pre-alarm while R14 is on):
/// no second alert; the open one waits for this condition to clear too.
fn wait_in_upgrade(ds: &mut DeviceState, id: &str, ep: &mut Episode, r: &Rule, now: i64) {
    let to = r.upgrade_to.clone().unwrap_or_default();
    if let Some(target) = ds.episodes.get_mut(&to) {
        target.absorbed.push(id.to_owned());
    }
    ep.priority = Some(r.priority);
    ep.raised_at_ms = now;
    ep.upgraded_into = Some(to);
}
