//! The alert as its contract (docs/contracts.md) publishes it on `nh/{site}/alerts`, stored as this JSON in
//! the `alerts` table and appended at every change to the `alert_events` delivery log.

use serde::{Deserialize, Serialize};

use crate::reading::Value;
use crate::rules::output::Priority;

/// Where an alert is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Active,
    Acknowledged,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Active => "active",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn is_open(self) -> bool {
        self != AlertState::Resolved
    }
}

/// How an alert ended: by a person (`handled`, `false_alarm`, `test`) or by its rule (`cleared`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Handled,
    FalseAlarm,
    Test,
    Cleared,
}

impl Resolution {
    /// A resolution a person may give (`cleared` is the rule's alone).
    pub fn parse_by_person(s: &str) -> Option<Resolution> {
        match s {
            "handled" => Some(Resolution::Handled),
            "false_alarm" => Some(Resolution::FalseAlarm),
            "test" => Some(Resolution::Test),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Handled => "handled",
            Resolution::FalseAlarm => "false_alarm",
            Resolution::Test => "test",
            Resolution::Cleared => "cleared",
        }
    }
}

/// One (rule, subject) condition that is part of an alert. A plain alert has one; a correlated
/// incident (R20) has one per triggering rule and device. Dedup and clears find alerts by member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub rule: String,
    pub subject: String,
    pub device: String,
    pub priority: Priority,
    pub latching: bool,
    pub person_centred: bool,
    /// The rule reported its clear condition for this subject.
    #[serde(default)]
    pub cleared: bool,
}

/// An alert: the public fields of docs/contracts.md first, then the lifecycle bookkeeping that travels
/// with it (extra fields are harmless to consumers and make the row self-contained on restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `a-<seq at creation>`: stable, deterministic, never reused.
    pub id: String,
    /// Seq of this version; increases per gateway over every change of every alert.
    pub seq: u64,
    pub site: String,
    /// Rule id of the highest-priority condition (an upgrade R2 -> R1 changes it, same `id`).
    pub rule: String,
    pub priority: Priority,
    pub state: AlertState,
    #[serde(default)]
    pub resolution: Option<Resolution>,
    /// The triggering device (of the highest-priority condition).
    pub device: String,
    /// Every device of the alert (one unless correlated).
    #[serde(default)]
    pub devices: Vec<String>,
    /// Set once a second condition joined: the alert is an incident (R20).
    #[serde(default)]
    pub incident_id: Option<String>,
    pub room: String,
    /// Pseudonymous resident id, never a name.
    #[serde(default)]
    pub resident: Option<String>,
    pub hazard: String,
    #[serde(default)]
    pub metric: Option<String>,
    #[serde(default)]
    pub value: Option<Value>,
    pub raised_at: i64,
    pub updated_at: i64,
    /// 0 = none, 1 = tier 2 notified, 2 = tier 3 notified.
    pub escalation_level: u8,
    pub message: String,
    pub message_en: String,
    /// Needs a person to resolve: a clear of its condition does not end it.
    pub latching: bool,
    /// Fall, SOS: staff may resolve it while the device still reports the condition.
    pub person_centred: bool,
    /// Every condition of the alert has cleared (a latching alert waits for a person).
    #[serde(default)]
    pub condition_cleared: bool,
    #[serde(default)]
    pub acknowledged_by: Option<String>,
    #[serde(default)]
    pub acknowledged_at: Option<i64>,
    #[serde(default)]
    pub resolved_by: Option<String>,
    #[serde(default)]
    pub resolved_at: Option<i64>,
    /// Last note given with an acknowledgement or resolution.
    #[serde(default)]
    pub note: Option<String>,
    /// The (rule, subject) conditions of this alert.
    #[serde(default)]
    pub members: Vec<Member>,
    /// Escalation tiers count from here: the raise, or the last priority increase.
    pub escalation_from: i64,
    /// Last time this alert was published (renotification suppression, R20).
    pub notified_at: i64,
    /// Once the alert is an incident, its `message` and `message_en` name what it became (fire
    /// in A-203, 2 devices in alarm) before the leading condition's own texts, kept here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_text: Option<(String, String)>,
}

impl Alert {
    pub fn is_open(&self) -> bool {
        self.state.is_open()
    }

    pub fn has_member(&self, rule: &str, subject: &str) -> bool {
        self.members.iter().any(|m| m.rule == rule && m.subject == subject)
    }
}

/// One line of an alert's audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: i64,
    /// `system` for rule-driven transitions, else the person.
    pub actor: String,
    /// `raised`, `repeated`, `renotified`, `upgraded`, `correlated`, `condition_cleared`,
    /// `cleared`, `acknowledged`, `resolved`, `escalated`.
    pub action: String,
    pub note: Option<String>,
    pub detail: Option<serde_json::Value>,
}

/// One entry of the delivery log (`alert_events`): one alert change, the alert JSON at `seq`.
/// The alert store writes it; every delivery channel reads it from its own cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertEvent {
    pub seq: u64,
    pub alert_id: String,
    /// Gateway clock time (ms) of the change.
    pub at: i64,
    /// The alert JSON exactly as published (the contract of docs/contracts.md).
    pub json: String,
}

impl AlertEvent {
    /// The `priority` field of the JSON (`"P1"`..`"P4"`), if present and well formed.
    pub fn priority(&self) -> Option<Priority> {
        #[derive(Deserialize)]
        struct Head {
            priority: Priority,
        }
        serde_json::from_str::<Head>(&self.json).ok().map(|h| h.priority)
    }
}

/// The actor of rule-driven transitions.
pub const SYSTEM_ACTOR: &str = "system";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_is_none_for_malformed_json() {
        let e = AlertEvent {
            seq: 1,
            alert_id: "a".into(),
            at: 0,
            json: "{\"priority\":\"urgent\"}".into(),
        };
        assert_eq!(e.priority(), None);
    }
}
