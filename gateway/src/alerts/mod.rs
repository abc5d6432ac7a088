//! Alerts: the lifecycle of what the rules engine raises (docs/rules.md: R19 escalation, R20
//! correlation and dedup), persisted in the journal's SQLite file.
//!
//! - [`model`]: the alert JSON of docs/contracts.md, its states and resolutions, the audit entry.
//! - [`store`]: the tables (`alerts`, `alert_audit`, `alert_events` = the delivery log,
//!   `engine_state`) and their queries.
//! - [`lifecycle`]: raise, dedup, correlation, upgrade, clear, acknowledge, resolve, escalation;
//!   pure logic on passed-in time over the store.
//! - [`task`]: the one stateful task owning the rules engine and the lifecycle; the API's handle.
//! - [`delivery`]: MQTT outbox, webhooks and SSE, each reading `alert_events` from its cursor.
//!
//! Delivery (MQTT outbox, webhooks, SSE) watches [`task::AlertsTask::events`] (the last committed
//! seq) and reads [`store::AlertStore::events_after`] from its own cursor.

pub mod delivery;
pub mod lifecycle;
pub mod model;
pub mod store;
pub mod task;

pub use lifecycle::{AlertError, Lifecycle, Policy};
pub use model::{Alert, AlertEvent, AlertState, AuditEntry, Member, Resolution, SYSTEM_ACTOR};
pub use store::{AlertStore, AlertStoreError, AuditLogEntry, Change, StateFilter};
pub use task::{
    command_channel, execute, policy_from_rules, AlertsHandle, AlertsTask, Command, RulesEngine, ENGINE_STATE,
};
