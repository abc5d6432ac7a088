//! The alert lifecycle (R19 escalation, R20 correlation and dedup): pure logic over the alert
//! store. Time is always passed in; nothing here reads a clock.
//!
//! Every operation prepares the new versions of the alerts it touches, commits them in one
//! transaction (row, audit, delivery log) and only then adopts them, so a failed commit leaves
//! memory and database agreeing.

use std::collections::BTreeMap;

use serde_json::json;

use super::model::{Alert, AlertState, AuditEntry, Member, Resolution, SYSTEM_ACTOR};
use super::store::{AlertStore, AlertStoreError, Change};
use crate::rules::catalog::{default_escalation_s, DEFAULT_CORRELATION_WINDOW_S, DEFAULT_RENOTIFY_SUPPRESS_S};
use crate::rules::output::{Priority, RuleOutput, Trigger};

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("no alert {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Store(#[from] AlertStoreError),
    #[error("the alerts task is not running")]
    Unavailable,
}

/// The numbers of R19 and R20, taken from the rules file (`RuleSet`) by the task.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Escalation tiers per priority (P1..P4), seconds after the raise without acknowledgement.
    pub escalation_s: [Vec<u64>; 4],
    /// Alerts of one room and hazard (fall: one resident) raised within this window are one incident.
    pub correlation_window_ms: i64,
    /// An unchanged repeat of an open alert within this time is not published again.
    pub renotify_suppress_ms: i64,
}

impl Default for Policy {
    /// The defaults of R19 and R20 (docs/rules.md).
    fn default() -> Self {
        Policy {
            escalation_s: default_escalation_s(),
            correlation_window_ms: DEFAULT_CORRELATION_WINDOW_S as i64 * 1000,
            renotify_suppress_ms: DEFAULT_RENOTIFY_SUPPRESS_S as i64 * 1000,
        }
    }
}

impl Policy {
    pub fn tiers(&self, p: Priority) -> &[u64] {
        &self.escalation_s[p.index()]
    }
}

/// Hazard families that form one incident: smoke, heat and CO in one room are one fire
/// (R20, docs/rules.md); a fall and an SOS of one resident are one fall. Device maintenance
/// (offline, fault, low battery) never merges: each device is its own work order.
fn correlation_group(hazard: &str) -> Option<&str> {
    match hazard {
        "device" => None,
        "fire" | "smoke" | "heat" | "co" => Some("fire"),
        "fall" | "sos" => Some("fall"),
        other => Some(other),
    }
}

/// Groups about a person correlate by resident when both sides know it, else by room.
fn person_group(group: &str) -> bool {
    matches!(group, "fall" | "vitals" | "wander")
}

/// Owns the open alerts and the seq counter; the single writer of the alert tables.
#[derive(Debug)]
pub struct Lifecycle {
    store: AlertStore,
    policy: Policy,
    site: String,
    /// Open alerts by id (resolved ones live only in the store).
    open: BTreeMap<String, Alert>,
    last_seq: u64,
}

impl Lifecycle {
    /// Takes over the store: the open alerts and the last seq are read back, so escalation
    /// deadlines, dedup and correlation continue across a restart (they are derived from the
    /// alert rows, written in the same transaction as every change).
    pub fn open(store: AlertStore, policy: Policy, site: impl Into<String>) -> Result<Lifecycle, AlertError> {
        let last_seq = store.last_seq()?;
        let open = store.open_alerts()?.into_iter().map(|a| (a.id.clone(), a)).collect();
        Ok(Lifecycle {
            store,
            policy,
            site: site.into(),
            open,
            last_seq,
        })
    }

    pub fn store(&self) -> &AlertStore {
        &self.store
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The open alerts, by id.
    pub fn open_alerts(&self) -> impl Iterator<Item = &Alert> {
        self.open.values()
    }

    /// Applies one engine output; returns the alerts that changed (each with its new seq).
    pub fn apply(&mut self, output: RuleOutput, now: i64) -> Result<Vec<Alert>, AlertError> {
        let mut batch = Batch::new(self.last_seq);
        match output {
            RuleOutput::Raise(t) => self.raise(&mut batch, t, now),
            RuleOutput::Clear { rule, subject, at: _ } => self.clear(&mut batch, &rule, &subject, now),
        }
        self.commit(batch)
    }

    /// Acknowledges an open alert: stops its escalation.
    pub fn ack(&mut self, id: &str, by: &str, note: Option<String>, now: i64) -> Result<Alert, AlertError> {
        let by = actor(by)?;
        let mut a = self.open_alert(id)?;
        if a.state == AlertState::Acknowledged {
            return Err(AlertError::Conflict(format!("alert {id} is already acknowledged")));
        }
        a.state = AlertState::Acknowledged;
        a.acknowledged_by = Some(by.to_owned());
        a.acknowledged_at = Some(now);
        if note.is_some() {
            a.note = note.clone();
        }
        let mut batch = Batch::new(self.last_seq);
        batch.push(a, now, by, "acknowledged", note, None);
        Ok(self.commit(batch)?.remove(0))
    }

    /// Resolves an open alert by a person. A hazard alert (not person-centred) whose condition
    /// still `holds(rule, subject)` is refused: gas still above its clear level must not vanish
    /// from the control room. Fall and SOS may be resolved by staff on site.
    pub fn resolve(
        &mut self,
        id: &str,
        by: &str,
        note: Option<String>,
        resolution: Resolution,
        now: i64,
        holds: impl Fn(&str, &str) -> bool,
    ) -> Result<Alert, AlertError> {
        let by = actor(by)?;
        if resolution == Resolution::Cleared {
            return Err(AlertError::BadInput(
                "resolution must be handled, false_alarm or test (cleared is the rule's)".into(),
            ));
        }
        let mut a = self.open_alert(id)?;
        if let Some(m) = a
            .members
            .iter()
            .find(|m| !m.person_centred && holds(&m.rule, &m.subject))
        {
            return Err(AlertError::Conflict(format!(
                "alert {id}: the condition of rule {} for {} still holds",
                m.rule, m.subject
            )));
        }
        a.state = AlertState::Resolved;
        a.resolution = Some(resolution);
        a.resolved_by = Some(by.to_owned());
        a.resolved_at = Some(now);
        if note.is_some() {
            a.note = note.clone();
        }
        let mut batch = Batch::new(self.last_seq);
        let detail = json!({ "resolution": resolution.as_str() });
        batch.push(a, now, by, "resolved", note, Some(detail));
        Ok(self.commit(batch)?.remove(0))
    }

    /// Escalates unacknowledged alerts whose next tier is due (one change per tier reached).
    pub fn tick(&mut self, now: i64) -> Result<Vec<Alert>, AlertError> {
        let mut batch = Batch::new(self.last_seq);
        for a in self.open.values() {
            if a.state != AlertState::Active {
                continue;
            }
            let tiers = self.policy.tiers(a.priority);
            let due = tiers
                .iter()
                .filter(|s| now - a.escalation_from >= (**s as i64).saturating_mul(1000))
                .count();
            let mut a = a.clone();
            while usize::from(a.escalation_level) < due {
                a.escalation_level += 1;
                let detail =
                    json!({ "level": a.escalation_level, "after_s": tiers[usize::from(a.escalation_level) - 1] });
                batch.push(a.clone(), now, SYSTEM_ACTOR, "escalated", None, Some(detail));
            }
        }
        self.commit(batch)
    }

    fn open_alert(&self, id: &str) -> Result<Alert, AlertError> {
        if let Some(a) = self.open.get(id) {
            return Ok(a.clone());
        }
        match self.store.get(id)? {
            Some(_) => Err(AlertError::Conflict(format!("alert {id} is already resolved"))),
            None => Err(AlertError::NotFound(id.to_owned())),
        }
    }

    /// The open alert holding this (rule, subject) condition.
    fn find_member(&self, batch: &Batch, rule: &str, subject: &str) -> Option<Alert> {
        self.current(batch).find(|a| a.has_member(rule, subject))
    }

    /// Open alerts as the batch left them.
    fn current<'a>(&'a self, batch: &'a Batch) -> impl Iterator<Item = Alert> + 'a {
        let pending = batch.latest();
        let fresh = pending
            .clone()
            .into_iter()
            .filter(|(id, _)| !self.open.contains_key(id));
        self.open
            .iter()
            .map(move |(id, a)| pending.get(id).cloned().unwrap_or_else(|| a.clone()))
            .chain(fresh.map(|(_, a)| a))
            .filter(|a| a.is_open())
    }

    fn raise(&mut self, batch: &mut Batch, t: Trigger, now: i64) {
        if let Some(from) = &t.upgrades {
            if let Some(a) = self.find_member(batch, from, &t.subject) {
                return upgrade(batch, a, from.clone(), t, now);
            }
        }
        if let Some(a) = self.find_member(batch, &t.rule, &t.subject) {
            return self.repeat(batch, a, t, now);
        }
        if let Some(a) = self.incident_for(batch, &t) {
            return correlate(batch, a, t, now);
        }
        let seq = batch.next_seq();
        let a = Alert {
            id: format!("a-{seq}"),
            seq,
            site: self.site.clone(),
            rule: t.rule.clone(),
            priority: t.priority,
            state: AlertState::Active,
            resolution: None,
            device: t.device.clone(),
            devices: vec![t.device.clone()],
            incident_id: None,
            room: t.room.clone(),
            resident: t.resident.clone(),
            hazard: t.hazard.clone(),
            metric: t.metric.clone(),
            value: t.value.clone(),
            raised_at: t.at,
            updated_at: now,
            escalation_level: 0,
            message: t.message.clone(),
            message_en: t.message_en.clone(),
            latching: t.latching,
            person_centred: t.person_centred,
            condition_cleared: false,
            acknowledged_by: None,
            acknowledged_at: None,
            resolved_by: None,
            resolved_at: None,
            note: None,
            members: vec![member_of(&t)],
            escalation_from: now,
            notified_at: now,
            lead_text: None,
        };
        let detail = json!({ "rule": t.rule, "subject": t.subject, "device": t.device });
        batch.push_with_seq(a, now, SYSTEM_ACTOR, "raised", None, Some(detail));
    }

    /// A Raise for a condition the alert already holds (dedup, R20).
    fn repeat(&self, batch: &mut Batch, mut a: Alert, t: Trigger, now: i64) {
        let mut changed = false;
        if let Some(m) = a
            .members
            .iter_mut()
            .find(|m| m.rule == t.rule && m.subject == t.subject)
        {
            if m.cleared {
                m.cleared = false;
                changed = true;
            }
            if t.priority < m.priority {
                m.priority = t.priority;
                changed = true;
            }
        }
        if a.condition_cleared {
            a.condition_cleared = false;
            changed = true;
        }
        if t.priority < a.priority {
            take_lead(&mut a, &t, now);
            changed = true;
        }
        let primary = a.rule == t.rule && a.device == t.device;
        let renotify = a.state == AlertState::Active && now - a.notified_at >= self.policy.renotify_suppress_ms;
        if !changed && !renotify {
            // Within the suppression window, or already acknowledged: nothing new for anyone.
            return;
        }
        if primary {
            a.value = t.value.clone();
            a.metric = t.metric.clone();
        }
        let action = if changed { "repeated" } else { "renotified" };
        let detail = json!({ "rule": t.rule, "subject": t.subject, "device": t.device, "priority": t.priority });
        batch.push(a, now, SYSTEM_ACTOR, action, None, Some(detail));
    }

    /// The open alert a new condition joins as one incident (R20), if any.
    fn incident_for(&self, batch: &Batch, t: &Trigger) -> Option<Alert> {
        let group = correlation_group(&t.hazard)?;
        let window = self.policy.correlation_window_ms;
        self.current(batch)
            .filter(|a| correlation_group(&a.hazard) == Some(group) && (t.at - a.raised_at).abs() <= window)
            .filter(|a| match (&a.resident, &t.resident) {
                (Some(x), Some(y)) if person_group(group) => x == y,
                _ => !t.room.is_empty() && a.room == t.room,
            })
            .min_by_key(|a| (a.raised_at, a.seq))
    }

    fn clear(&self, batch: &mut Batch, rule: &str, subject: &str, now: i64) {
        let Some(mut a) = self.find_member(batch, rule, subject) else {
            return;
        };
        for m in a.members.iter_mut().filter(|m| m.rule == rule && m.subject == subject) {
            m.cleared = true;
        }
        let all_cleared = a.members.iter().all(|m| m.cleared);
        let detail = json!({ "rule": rule, "subject": subject });
        if all_cleared && !a.latching {
            a.state = AlertState::Resolved;
            a.resolution = Some(Resolution::Cleared);
            a.resolved_by = Some(SYSTEM_ACTOR.to_owned());
            a.resolved_at = Some(now);
            a.condition_cleared = true;
            batch.push(a, now, SYSTEM_ACTOR, "cleared", None, Some(detail));
        } else {
            // A latching alert (or an incident with conditions left) stays for a person; the
            // device-side clear is recorded apart from the human resolution (docs/rules.md).
            a.condition_cleared = all_cleared;
            batch.push(a, now, SYSTEM_ACTOR, "condition_cleared", None, Some(detail));
        }
    }

    fn commit(&mut self, batch: Batch) -> Result<Vec<Alert>, AlertError> {
        if batch.changes.is_empty() {
            return Ok(Vec::new());
        }
        self.store.commit(&batch.changes)?;
        self.last_seq = batch.last_seq;
        for c in &batch.changes {
            if c.alert.is_open() {
                self.open.insert(c.alert.id.clone(), c.alert.clone());
            } else {
                self.open.remove(&c.alert.id);
            }
        }
        Ok(batch.changes.into_iter().map(|c| c.alert).collect())
    }
}

/// R2 -> R1 at 60 s: the same alert takes the new rule and priority.
fn upgrade(batch: &mut Batch, mut a: Alert, from: String, t: Trigger, now: i64) {
    let was_primary = a.rule == from;
    let old_priority = a.priority;
    if let Some(m) = a.members.iter_mut().find(|m| m.rule == from && m.subject == t.subject) {
        m.rule = t.rule.clone();
        m.priority = m.priority.min(t.priority);
        m.device = t.device.clone();
        m.latching = t.latching;
        m.person_centred = t.person_centred;
        m.cleared = false;
    }
    if was_primary || t.priority < a.priority {
        take_lead(&mut a, &t, now);
    }
    a.latching = a.members.iter().any(|m| m.latching);
    a.person_centred = a.members.iter().all(|m| m.person_centred);
    a.condition_cleared = false;
    let detail =
        json!({ "from_rule": from, "to_rule": t.rule, "from_priority": old_priority, "to_priority": a.priority });
    batch.push(a, now, SYSTEM_ACTOR, "upgraded", None, Some(detail));
}

/// A new condition joins an open alert of the same room and hazard: one incident.
fn correlate(batch: &mut Batch, mut a: Alert, t: Trigger, now: i64) {
    if a.incident_id.is_none() {
        a.incident_id = Some(format!("inc-{}", a.id.trim_start_matches("a-")));
    }
    if !a.devices.contains(&t.device) {
        a.devices.push(t.device.clone());
    }
    if a.resident.is_none() {
        a.resident = t.resident.clone();
    }
    a.members.push(member_of(&t));
    if t.priority < a.priority {
        take_lead(&mut a, &t, now);
    } else {
        name_incident(&mut a);
    }
    a.latching |= t.latching;
    a.person_centred &= t.person_centred;
    a.condition_cleared = false;
    let detail = json!({ "rule": t.rule, "subject": t.subject, "device": t.device, "priority": t.priority });
    batch.push(a, now, SYSTEM_ACTOR, "correlated", None, Some(detail));
}

/// The trigger becomes the alert's leading condition (higher priority, or an upgrade of it).
/// Escalation restarts its count from now at the new priority, keeping tiers already reached.
fn take_lead(a: &mut Alert, t: &Trigger, now: i64) {
    if t.priority < a.priority {
        a.escalation_from = now;
    }
    a.priority = a.priority.min(t.priority);
    a.rule = t.rule.clone();
    a.device = t.device.clone();
    a.metric = t.metric.clone();
    a.value = t.value.clone();
    a.message = t.message.clone();
    a.message_en = t.message_en.clone();
    a.lead_text = None;
    if a.incident_id.is_some() {
        name_incident(a);
    }
}

/// What an incident of a correlation group is called, in Chinese and English.
fn incident_name(group: &str) -> (&'static str, &'static str) {
    match group {
        "fire" => ("火情", "Fire"),
        "fall" => ("跌倒事件", "Fall"),
        "gas" => ("燃气泄漏", "Gas leak"),
        "vitals" => ("生命体征异常", "Abnormal vital signs"),
        "wander" => ("走失风险", "Wandering"),
        _ => ("多设备报警", "Incident"),
    }
}

/// Names what an incident became (smoke and heat in A-203: a fire in A-203) in front of the
/// leading condition's own text, which says what to do.
fn name_incident(a: &mut Alert) {
    let (lead, lead_en) = a
        .lead_text
        .take()
        .unwrap_or_else(|| (a.message.clone(), a.message_en.clone()));
    let (zh, en) = incident_name(correlation_group(&a.hazard).unwrap_or(&a.hazard));
    let n = a.devices.len();
    let (place, place_en) = if a.room.is_empty() {
        (String::new(), String::new())
    } else {
        (format!("{}，", a.room), format!(" in {}", a.room))
    };
    a.message = format!("{zh}（{place}{n} 个设备报警）：{lead}");
    a.message_en = format!("{en}{place_en} ({n} devices in alarm): {lead_en}");
    a.lead_text = Some((lead, lead_en));
}

fn member_of(t: &Trigger) -> Member {
    Member {
        rule: t.rule.clone(),
        subject: t.subject.clone(),
        device: t.device.clone(),
        priority: t.priority,
        latching: t.latching,
        person_centred: t.person_centred,
        cleared: false,
    }
}

fn actor(by: &str) -> Result<&str, AlertError> {
    let by = by.trim();
    if by.is_empty() {
        return Err(AlertError::BadInput("`by` (who acts) is required".into()));
    }
    Ok(by)
}

/// The changes of one operation, with seqs assigned in order.
struct Batch {
    changes: Vec<Change>,
    last_seq: u64,
}

impl Batch {
    fn new(last_seq: u64) -> Batch {
        Batch {
            changes: Vec::new(),
            last_seq,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// Records a new version of `a` with the next seq.
    fn push(
        &mut self,
        mut a: Alert,
        now: i64,
        actor: &str,
        action: &str,
        note: Option<String>,
        detail: Option<serde_json::Value>,
    ) {
        a.seq = self.next_seq();
        self.push_with_seq(a, now, actor, action, note, detail);
    }

    /// Records `a`, whose seq is already taken from this batch.
    fn push_with_seq(
        &mut self,
        mut a: Alert,
        now: i64,
        actor: &str,
        action: &str,
        note: Option<String>,
        detail: Option<serde_json::Value>,
    ) {
        a.updated_at = now;
        a.notified_at = now;
        self.changes.push(Change {
            audit: AuditEntry {
                at: now,
                actor: actor.to_owned(),
                action: action.to_owned(),
                note,
                detail,
            },
            alert: a,
        });
    }

    /// The latest version of each alert this batch touched.
    fn latest(&self) -> BTreeMap<String, Alert> {
        self.changes
            .iter()
            .map(|c| (c.alert.id.clone(), c.alert.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use tempfile::TempDir;

    use super::*;
    use crate::alerts::store::StateFilter;
    use crate::reading::Value;

    const T0: i64 = 1_700_000_000_000;

    /// A database file in a temporary directory of its own, removed (with its WAL files) when
    /// dropped.
    struct TempDb {
        _dir: TempDir,
        path: PathBuf,
    }

    impl std::ops::Deref for TempDb {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.path
        }
    }

    fn temp_db(name: &str) -> TempDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(format!("nh-alerts-{name}.db"));
        TempDb { _dir: dir, path }
    }

    fn open(path: &std::path::Path) -> Lifecycle {
        Lifecycle::open(AlertStore::open(path).expect("store"), Policy::default(), "site-1").expect("lifecycle")
    }

    fn trig(rule: &str, device: &str, room: &str, hazard: &str, priority: Priority, at: i64) -> Trigger {
        Trigger {
            rule: rule.into(),
            subject: device.into(),
            priority,
            upgrades: None,
            device: device.into(),
            room: room.into(),
            resident: None,
            hazard: hazard.into(),
            metric: None,
            value: None,
            latching: false,
            person_centred: false,
            message: format!("{rule} 告警"),
            message_en: format!("{rule} alarm"),
            at,
        }
    }

    fn gas(at: i64) -> Trigger {
        Trigger {
            latching: true,
            metric: Some("gas_lel".into()),
            value: Some(Value::Num(12.0)),
            ..trig("R14", "gas-1", "kitchen", "gas", Priority::P1, at)
        }
    }

    fn fall(rule: &str, device: &str, resident: &str, at: i64) -> Trigger {
        Trigger {
            latching: true,
            person_centred: true,
            resident: Some(resident.into()),
            ..trig(rule, device, "3-12", "fall", Priority::P1, at)
        }
    }

    fn raise(l: &mut Lifecycle, t: Trigger) -> Vec<Alert> {
        let at = t.at;
        l.apply(RuleOutput::Raise(t), at).expect("apply")
    }

    fn clear(l: &mut Lifecycle, rule: &str, subject: &str, at: i64) -> Vec<Alert> {
        let out = RuleOutput::Clear {
            rule: rule.into(),
            subject: subject.into(),
            at,
        };
        l.apply(out, at).expect("clear")
    }

    fn actions(l: &Lifecycle, id: &str) -> Vec<String> {
        l.store()
            .audit(id)
            .expect("audit")
            .into_iter()
            .map(|e| e.action)
            .collect()
    }

    #[test]
    fn raise_creates_an_active_alert_with_its_event_and_audit() {
        let db = temp_db("raise");
        let mut l = open(&db);
        let a = raise(&mut l, gas(T0)).remove(0);
        assert_eq!((a.id.as_str(), a.seq, a.state), ("a-1", 1, AlertState::Active));
        assert_eq!(
            (a.rule.as_str(), a.priority, a.room.as_str()),
            ("R14", Priority::P1, "kitchen")
        );
        assert_eq!(a.devices, vec!["gas-1".to_owned()]);
        assert_eq!(a.incident_id, None);
        assert_eq!(a.escalation_level, 0);
        let json: serde_json::Value = serde_json::to_value(&a).expect("json");
        assert_eq!(json["priority"], "P1");
        assert_eq!(json["state"], "active");
        assert_eq!(json["value"], 12.0);
        assert_eq!(json["site"], "site-1");
        assert_eq!(l.store().get("a-1").expect("get"), Some(a.clone()));
        assert_eq!(actions(&l, "a-1"), ["raised"]);
        let ev = l.store().events_after(0, 10).expect("events");
        assert_eq!(ev.len(), 1);
        assert_eq!(serde_json::from_str::<Alert>(&ev[0].json).expect("event json"), a);
    }

    #[test]
    fn repeats_update_one_alert_and_renotify_only_after_the_suppression_window() {
        let db = temp_db("dedup");
        let mut l = open(&db);
        raise(&mut l, gas(T0));
        // Same (rule, subject), nothing material changed, within 60 s: no publish.
        assert!(raise(&mut l, gas(T0 + 10_000)).is_empty());
        assert!(raise(&mut l, gas(T0 + 59_000)).is_empty());
        // After the window, an unacknowledged alert is notified again: same id, new seq.
        let again = raise(&mut l, gas(T0 + 61_000));
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].id.as_str(), again[0].seq), ("a-1", 2));
        assert_eq!(l.open_alerts().count(), 1);
        assert_eq!(actions(&l, "a-1"), ["raised", "renotified"]);
        // A higher priority is a change even within the window.
        let mut worse = trig("R13", "gas-2", "boiler", "gas", Priority::P3, T0 + 62_000);
        raise(&mut l, worse.clone());
        worse.priority = Priority::P1;
        worse.at += 1_000;
        let up = raise(&mut l, worse);
        assert_eq!(up[0].priority, Priority::P1);
        assert_eq!(l.open_alerts().count(), 2);
        // Acknowledged alerts are not re-notified.
        l.ack("a-1", "nurse-li", None, T0 + 70_000).expect("ack");
        assert!(raise(&mut l, gas(T0 + 200_000)).is_empty());
    }

    #[test]
    fn device_maintenance_alerts_of_one_room_stay_separate() {
        let db = temp_db("maintenance");
        let mut l = open(&db);
        let a = raise(&mut l, trig("R18", "sos-1", "3-12", "device", Priority::P3, T0)).remove(0);
        let b = raise(
            &mut l,
            trig("R18", "door-1", "3-12", "device", Priority::P4, T0 + 5_000),
        )
        .remove(0);
        assert_ne!(a.id, b.id);
        assert_eq!((a.incident_id, b.incident_id), (None, None));
        assert_eq!(b.devices, vec!["door-1".to_owned()]);
    }

    #[test]
    fn smoke_heat_and_co_in_one_room_within_120s_are_one_fire_incident() {
        let db = temp_db("fire");
        let mut l = open(&db);
        let heat = trig("R12", "heat-1", "3-12", "fire", Priority::P2, T0);
        let smoke = Trigger {
            latching: true,
            ..trig("R11", "smoke-1", "3-12", "fire", Priority::P1, T0 + 30_000)
        };
        let co = Trigger {
            latching: true,
            ..trig("R15", "co-1", "3-12", "co", Priority::P1, T0 + 100_000)
        };
        let first = raise(&mut l, heat).remove(0);
        let joined = raise(&mut l, smoke).remove(0);
        assert_eq!(joined.id, first.id);
        assert_eq!(joined.incident_id.as_deref(), Some("inc-1"));
        assert_eq!(joined.priority, Priority::P1);
        assert_eq!(joined.rule, "R11");
        assert!(joined.latching);
        // The text names what it became, then the leading condition's own text.
        assert_eq!(first.message_en, "R12 alarm");
        assert_eq!(joined.message, "火情（3-12，2 个设备报警）：R11 告警");
        assert_eq!(joined.message_en, "Fire in 3-12 (2 devices in alarm): R11 alarm");
        let all = raise(&mut l, co).remove(0);
        assert_eq!(all.id, first.id);
        assert_eq!(all.devices, ["heat-1", "smoke-1", "co-1"]);
        assert_eq!(
            all.message_en, "Fire in 3-12 (3 devices in alarm): R11 alarm",
            "named once, not twice"
        );
        assert_eq!(all.seq, 3);
        assert_eq!(actions(&l, &first.id), ["raised", "correlated", "correlated"]);
        // Another room, or the same room after the window: separate alerts.
        let other = raise(
            &mut l,
            trig("R11", "smoke-9", "3-14", "fire", Priority::P1, T0 + 101_000),
        )
        .remove(0);
        assert_ne!(other.id, first.id);
        let late = raise(
            &mut l,
            trig("R11", "smoke-2", "3-12", "fire", Priority::P1, T0 + 121_000),
        )
        .remove(0);
        assert_ne!(late.id, first.id);
        assert_eq!(late.incident_id, None);
        assert_eq!(l.open_alerts().count(), 3);
        // One condition of the incident clearing does not resolve it.
        clear(&mut l, "R12", "heat-1", T0 + 200_000);
        let a = l.store().get(&first.id).expect("get").expect("alert");
        assert_eq!(a.state, AlertState::Active);
        assert!(!a.condition_cleared);
    }

    #[test]
    fn radar_fall_and_watch_sos_of_one_resident_are_one_fall_incident() {
        let db = temp_db("fall");
        let mut l = open(&db);
        let radar = raise(&mut l, fall("R1", "radar-1", "res-7", T0)).remove(0);
        let watch = Trigger {
            room: "corridor-3".into(),
            hazard: "sos".into(),
            ..fall("R4", "watch-7", "res-7", T0 + 20_000)
        };
        let joined = raise(&mut l, watch).remove(0);
        assert_eq!(joined.id, radar.id);
        assert_eq!(joined.devices, ["radar-1", "watch-7"]);
        assert!(joined.person_centred);
        // Another resident in the same room is another alert.
        let other = raise(&mut l, fall("R1", "radar-2", "res-8", T0 + 30_000)).remove(0);
        assert_ne!(other.id, radar.id);
    }

    #[test]
    fn suspected_fall_upgraded_to_confirmed_keeps_the_id() {
        let db = temp_db("upgrade");
        let mut l = open(&db);
        let r2 = Trigger {
            priority: Priority::P2,
            latching: false,
            ..fall("R2", "radar-1", "res-7", T0)
        };
        let first = raise(&mut l, r2).remove(0);
        assert_eq!((first.rule.as_str(), first.priority), ("R2", Priority::P2));
        let r1 = Trigger {
            upgrades: Some("R2".into()),
            ..fall("R1", "radar-1", "res-7", T0 + 60_000)
        };
        let up = raise(&mut l, r1).remove(0);
        assert_eq!(up.id, first.id);
        assert_eq!((up.rule.as_str(), up.priority), ("R1", Priority::P1));
        assert!(up.latching);
        assert!(up.seq > first.seq);
        assert_eq!(l.open_alerts().count(), 1);
        assert_eq!(actions(&l, &up.id), ["raised", "upgraded"]);
        // The R2 clear no longer matches; an R1 repeat is deduplicated into it.
        assert!(clear(&mut l, "R2", "radar-1", T0 + 61_000).is_empty());
        assert!(raise(&mut l, fall("R1", "radar-1", "res-7", T0 + 62_000)).is_empty());
    }

    #[test]
    fn unacknowledged_p1_escalates_at_60_and_180_s_and_p2_at_3_and_10_min() {
        let db = temp_db("escalate");
        let mut l = open(&db);
        let p1 = raise(&mut l, gas(T0)).remove(0);
        let p2 = raise(&mut l, trig("R3", "radar-5", "bath-2", "dwell", Priority::P2, T0)).remove(0);
        let mut levels = Vec::new();
        for s in 0..=700 {
            for a in l.tick(T0 + s * 1000).expect("tick") {
                levels.push((s, a.id.clone(), a.escalation_level));
            }
        }
        assert_eq!(
            levels,
            [
                (60, p1.id.clone(), 1),
                (180, p1.id.clone(), 2),
                (180, p2.id.clone(), 1),
                (600, p2.id.clone(), 2)
            ]
        );
        assert_eq!(actions(&l, &p1.id), ["raised", "escalated", "escalated"]);
        // A tick far later after a restart reaches every tier due, one change per tier.
        let db2 = temp_db("escalate-late");
        let mut l2 = open(&db2);
        raise(&mut l2, gas(T0));
        let late = l2.tick(T0 + 3_600_000).expect("tick");
        assert_eq!(late.iter().map(|a| a.escalation_level).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn acknowledging_stops_escalation() {
        let db = temp_db("ack");
        let mut l = open(&db);
        let a = raise(&mut l, gas(T0)).remove(0);
        assert_eq!(l.tick(T0 + 60_000).expect("tick").len(), 1);
        let acked = l
            .ack(&a.id, "nurse-li", Some("on my way".into()), T0 + 90_000)
            .expect("ack");
        assert_eq!(acked.state, AlertState::Acknowledged);
        assert_eq!(acked.acknowledged_by.as_deref(), Some("nurse-li"));
        assert_eq!(acked.acknowledged_at, Some(T0 + 90_000));
        assert_eq!(acked.escalation_level, 1);
        assert!(l.tick(T0 + 600_000).expect("tick").is_empty());
        assert!(matches!(
            l.ack(&a.id, "nurse-li", None, T0 + 1),
            Err(AlertError::Conflict(_))
        ));
        assert!(matches!(
            l.ack("a-99", "nurse-li", None, T0),
            Err(AlertError::NotFound(_))
        ));
        assert!(matches!(l.ack(&a.id, " ", None, T0), Err(AlertError::BadInput(_))));
        let trail = l.store().audit(&a.id).expect("audit");
        assert_eq!(trail[2].actor, "nurse-li");
        assert_eq!(trail[2].note.as_deref(), Some("on my way"));
    }

    #[test]
    fn resolving_a_gas_alert_is_refused_while_its_condition_holds() {
        let db = temp_db("resolve-gas");
        let mut l = open(&db);
        let a = raise(&mut l, gas(T0)).remove(0);
        let holds = |rule: &str, subject: &str| rule == "R14" && subject == "gas-1";
        let refused = l.resolve(&a.id, "nurse-li", None, Resolution::Handled, T0 + 5_000, holds);
        assert!(matches!(refused, Err(AlertError::Conflict(_))), "{refused:?}");
        assert_eq!(
            l.store().get(&a.id).expect("get").expect("alert").state,
            AlertState::Active
        );
        // The rule clears: a latching alert records it and stays for a person.
        let c = clear(&mut l, "R14", "gas-1", T0 + 300_000).remove(0);
        assert_eq!(c.state, AlertState::Active);
        assert!(c.condition_cleared);
        let bad = l.resolve(
            &a.id,
            "nurse-li",
            None,
            Resolution::Cleared,
            T0 + 301_000,
            |_: &str, _: &str| false,
        );
        assert!(matches!(bad, Err(AlertError::BadInput(_))));
        let done = l
            .resolve(
                &a.id,
                "nurse-li",
                Some("valve closed".into()),
                Resolution::Handled,
                T0 + 302_000,
                |_: &str, _: &str| false,
            )
            .expect("resolve");
        assert_eq!(
            (done.state, done.resolution),
            (AlertState::Resolved, Some(Resolution::Handled))
        );
        assert_eq!(done.resolved_by.as_deref(), Some("nurse-li"));
        let again = l.resolve(
            &a.id,
            "nurse-li",
            None,
            Resolution::Handled,
            T0 + 303_000,
            |_: &str, _: &str| false,
        );
        assert!(matches!(again, Err(AlertError::Conflict(_))));
        let unknown = l.resolve("a-42", "nurse-li", None, Resolution::Test, T0, |_: &str, _: &str| false);
        assert!(matches!(unknown, Err(AlertError::NotFound(_))));
        assert_eq!(actions(&l, &a.id), ["raised", "condition_cleared", "resolved"]);
        // Resolved: a new raise of the same condition is a new alert.
        let next = raise(&mut l, gas(T0 + 400_000)).remove(0);
        assert_ne!(next.id, a.id);
    }

    #[test]
    fn staff_may_resolve_a_fall_while_the_device_still_reports_it() {
        let db = temp_db("resolve-fall");
        let mut l = open(&db);
        let a = raise(&mut l, fall("R1", "radar-1", "res-7", T0)).remove(0);
        let done = l
            .resolve(
                &a.id,
                "nurse-wang",
                None,
                Resolution::FalseAlarm,
                T0 + 30_000,
                |_: &str, _: &str| true,
            )
            .expect("person-centred alerts resolve on site");
        assert_eq!(done.resolution, Some(Resolution::FalseAlarm));
    }

    #[test]
    fn clear_resolves_non_latching_alerts_only() {
        let db = temp_db("clear");
        let mut l = open(&db);
        let hr = raise(&mut l, trig("R8", "watch-7", "3-12", "vitals", Priority::P2, T0)).remove(0);
        let smoke = Trigger {
            latching: true,
            ..trig("R11", "smoke-1", "2-01", "fire", Priority::P1, T0)
        };
        let sm = raise(&mut l, smoke).remove(0);
        let c = clear(&mut l, "R8", "watch-7", T0 + 10_000).remove(0);
        assert_eq!((c.id.as_str(), c.state), (hr.id.as_str(), AlertState::Resolved));
        assert_eq!(c.resolution, Some(Resolution::Cleared));
        assert_eq!(c.resolved_by.as_deref(), Some(SYSTEM_ACTOR));
        let c = clear(&mut l, "R11", "smoke-1", T0 + 10_000).remove(0);
        assert_eq!((c.id.as_str(), c.state), (sm.id.as_str(), AlertState::Active));
        assert!(c.condition_cleared);
        // A clear of nothing open changes nothing.
        assert!(clear(&mut l, "R8", "watch-7", T0 + 20_000).is_empty());
        assert_eq!(l.store().list(StateFilter::Open, 100).expect("list").len(), 1);
        assert_eq!(
            l.store()
                .list(StateFilter::Only(AlertState::Resolved), 100)
                .expect("list")
                .len(),
            1
        );
    }

    #[test]
    fn seq_increases_strictly_and_the_event_log_holds_every_change() {
        let db = temp_db("seq");
        let mut l = open(&db);
        let mut published = Vec::new();
        published.extend(raise(&mut l, gas(T0)));
        published.extend(raise(&mut l, trig("R12", "heat-1", "3-12", "fire", Priority::P2, T0)));
        published.extend(raise(
            &mut l,
            trig("R11", "smoke-1", "3-12", "fire", Priority::P1, T0 + 5_000),
        ));
        published.extend(l.tick(T0 + 200_000).expect("tick"));
        published.push(l.ack("a-1", "nurse-li", None, T0 + 201_000).expect("ack"));
        published.extend(clear(&mut l, "R12", "heat-1", T0 + 202_000));
        published.extend(clear(&mut l, "R11", "smoke-1", T0 + 203_000));
        let seqs: Vec<u64> = published.iter().map(|a| a.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        let events = l.store().events_after(0, 1000).expect("events");
        assert_eq!(events.len(), published.len());
        for (e, a) in events.iter().zip(&published) {
            assert_eq!((e.seq, e.alert_id.as_str()), (a.seq, a.id.as_str()));
            assert_eq!(&serde_json::from_str::<Alert>(&e.json).expect("json"), a);
        }
        assert_eq!(
            l.store()
                .events_after(3, 2)
                .expect("events")
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            [4, 5]
        );
        assert_eq!(l.store().last_seq().expect("last"), seqs.len() as u64);
        // Every row is the last event of its alert.
        for a in l.store().list(StateFilter::All, 100).expect("list") {
            let last = published.iter().rev().find(|p| p.id == a.id).expect("published");
            assert_eq!(&a, last);
        }
    }

    #[test]
    fn alerts_survive_reopening_the_store() {
        let path = temp_db("restart");
        {
            let mut l = open(&path);
            raise(&mut l, gas(T0));
            raise(&mut l, trig("R3", "radar-5", "bath-2", "dwell", Priority::P2, T0));
            l.tick(T0 + 60_000).expect("tick");
            l.ack("a-2", "nurse-li", Some("checking".into()), T0 + 61_000)
                .expect("ack");
        }
        let mut l = open(&path);
        assert_eq!(l.last_seq(), 4);
        assert_eq!(l.open_alerts().count(), 2);
        // Dedup continues: the gas condition repeating is not a new alert.
        assert!(raise(&mut l, gas(T0 + 62_000)).is_empty());
        // Escalation continues from the stored level and time.
        let esc = l.tick(T0 + 180_000).expect("tick");
        assert_eq!(esc.len(), 1);
        assert_eq!((esc[0].id.as_str(), esc[0].escalation_level, esc[0].seq), ("a-1", 2, 5));
        assert_eq!(actions(&l, "a-2"), ["raised", "acknowledged"]);
        // Correlation continues too.
        let heat = raise(
            &mut l,
            trig("R12", "heat-3", "kitchen", "fire", Priority::P2, T0 + 100_000),
        )
        .remove(0);
        assert_eq!(heat.id, "a-6");
        let state = AlertStore::open(&path).expect("reader");
        state.save_state("rules_engine", "{\"x\":1}").expect("save");
        assert_eq!(
            state.load_state("rules_engine").expect("load").as_deref(),
            Some("{\"x\":1}")
        );
        assert_eq!(state.load_state("other").expect("load"), None);
    }

    #[test]
    fn lists_are_ordered_by_priority_then_raise_time() {
        let db = temp_db("order");
        let mut l = open(&db);
        raise(&mut l, trig("R18", "bat-1", "1-01", "battery", Priority::P4, T0));
        raise(
            &mut l,
            trig("R3", "radar-5", "bath-2", "dwell", Priority::P2, T0 + 1_000),
        );
        raise(&mut l, gas(T0 + 2_000));
        raise(&mut l, trig("R16", "smoke-4", "1-02", "device", Priority::P2, T0 + 500));
        let ids: Vec<String> = l
            .store()
            .list(StateFilter::Open, 10)
            .expect("list")
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(ids, ["a-3", "a-4", "a-2", "a-1"]);
        assert_eq!(l.store().list(StateFilter::Open, 2).expect("list").len(), 2);
    }
}
