//! What the rules engine tells the alert manager: the contract between `rules/` and `alerts/`.

use serde::{Deserialize, Serialize};

use crate::reading::Value;

/// Alert priority (after IEC 60601-1-8): P1 immediate (red), P2 prompt (yellow), P3 awareness, P4 info.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Priority {
    P1,
    P2,
    P3,
    P4,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::P1 => "P1",
            Priority::P2 => "P2",
            Priority::P3 => "P3",
            Priority::P4 => "P4",
        }
    }

    /// Position in P1..P4 (P1 = 0): the index of tables kept per priority, such as the
    /// escalation tiers.
    pub fn index(self) -> usize {
        match self {
            Priority::P1 => 0,
            Priority::P2 => 1,
            Priority::P3 => 2,
            Priority::P4 => 3,
        }
    }
}

/// A rule's condition became true (after its `for` window), or got worse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// The rule id from the rules file (`R1`..`R18` in the shipped catalog): the alert's `rule`.
    pub rule: String,
    /// What the condition is about, for dedup: the device id, or the room for room rules.
    pub subject: String,
    pub priority: Priority,
    /// When set, this trigger upgrades the open alert of that rule for the same subject (R2
    /// suspected fall -> R1 at 60 s): same alert id, new rule and priority.
    pub upgrades: Option<String>,
    /// The device whose reading (or silence) triggered it.
    pub device: String,
    pub room: String,
    /// Pseudonymous resident id, when the device belongs to one.
    pub resident: Option<String>,
    /// Hazard family for correlation into incidents: `fire`, `gas`, `co`, `fall`, `sos`,
    /// `wander`, `vitals`, `device`, ...; alerts of one room (fall: one resident) and hazard
    /// within the correlation window become one incident.
    pub hazard: String,
    pub metric: Option<String>,
    pub value: Option<Value>,
    /// Needs a person to resolve (falls, SOS, smoke, gas, CO); otherwise the clear condition resolves it.
    pub latching: bool,
    /// Fall and SOS: staff on site may resolve it even while the device still reports the condition.
    pub person_centred: bool,
    /// Chinese (default) and English text for the control room.
    pub message: String,
    pub message_en: String,
    /// Gateway clock time (ms) the condition was met.
    pub at: i64,
}

/// One output of the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RuleOutput {
    Raise(Trigger),
    /// The clear condition (with its hysteresis and hold time) is met: a non-latching alert is
    /// resolved as `cleared`; a latching one may now be resolved by a person.
    Clear {
        rule: String,
        subject: String,
        at: i64,
    },
}
