//! The rules engine: the rule catalog as configuration and a pure, stateful evaluator on the
//! gateway clock (virtual under the test clock).
//!
//! - [`catalog`]: the rules file (`config/rules.toml`): format, defaults, validation with every
//!   error at once (file, line, key).
//! - [`engine`]: the evaluator: readings and clock ticks in, [`RuleOutput`]s out; `for` windows,
//!   hysteresis, suppression, night windows, care flags, absence, upgrades; its whole state is
//!   serializable so a restarted gateway keeps its running windows.
//! - [`output`]: what the engine tells the alert manager (the contract with `alerts/`).
//!
//! The engine knows no I/O and no system clock: every call passes `now_ms`. Alert lifecycle,
//! escalation timers, correlation into incidents and re-notification suppression (R19, R20) are
//! the alert manager's; the rules file carries their numbers ([`RuleSet::escalation_s`],
//! [`RuleSet::correlation_window_ms`], [`RuleSet::renotify_suppress_ms`]).

pub mod catalog;
pub mod engine;
pub mod output;

pub use catalog::{Condition, Rule, RuleSet, Selector};
pub use engine::{Engine, EngineState};
pub use output::{Priority, RuleOutput, Trigger};

#[cfg(test)]
mod tests;
