//! The journal's configuration (`[journal]`): file, retention, disk budget, group commit,
//! durability and the start-up integrity check, with their defaults.

use std::path::PathBuf;

use serde::Deserialize;

use crate::diagnostics::Diagnostics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncPolicy {
    /// fsync the WAL at every group commit: a committed reading survives power loss.
    Full,
    /// fsync at checkpoints only: survives a crash of the gateway, not a power loss.
    Normal,
}

/// When the journal's file is checked (`PRAGMA quick_check`) at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntegrityCheck {
    /// Only when the previous run did not shut down cleanly (killed, crashed, power loss).
    AfterCrash,
    /// At every start.
    Always,
    /// Never (corruption is then found only when a query meets it).
    Never,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// SQLite database file, relative to this configuration file.
    #[serde(default = "default_journal_path")]
    pub path: PathBuf,
    /// Readings older than this are deleted (once forwarded, when InfluxDB is configured).
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Disk budget of the journal in MiB. Above it go, in order: the oldest readings already
    /// forwarded to InfluxDB, then (InfluxDB configured but behind) the oldest non-life-safety
    /// readings not yet forwarded, counted and alerted. Life-safety readings and the alert tables
    /// are never deleted for the budget, even if that means staying over it.
    #[serde(default = "default_disk_budget_mb")]
    pub disk_budget_mb: u64,
    /// Most messages in one group commit.
    #[serde(default = "default_commit_max")]
    pub commit_max_messages: usize,
    /// `full` (fsync the WAL at every group commit: durable on power loss) or `normal` (fsync at
    /// checkpoints only: durable when the gateway crashes, not when the power fails).
    #[serde(default = "default_sync")]
    pub sync: SyncPolicy,
    /// When to check the file at start: `after_crash` (the previous run did not shut down
    /// cleanly), `always` or `never`. A damaged file is kept aside and its readable rows are
    /// salvaged into a fresh one; it never stops the gateway from starting.
    #[serde(default = "default_integrity_check")]
    pub integrity_check: IntegrityCheck,
    /// Longest time the start-up check may take, in seconds; past it the check is abandoned
    /// (logged) and the gateway starts. The check reads the whole file: about 15 s per GB on a
    /// cold cache, under 2 s per GB on a warm one.
    #[serde(default = "default_integrity_check_max_s")]
    pub integrity_check_max_s: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            path: default_journal_path(),
            retention_days: default_retention_days(),
            disk_budget_mb: default_disk_budget_mb(),
            commit_max_messages: default_commit_max(),
            sync: default_sync(),
            integrity_check: default_integrity_check(),
            integrity_check_max_s: default_integrity_check_max_s(),
        }
    }
}

fn default_journal_path() -> PathBuf {
    PathBuf::from("data/journal.db")
}
fn default_retention_days() -> u32 {
    30
}
fn default_disk_budget_mb() -> u64 {
    4096
}
/// 5000 messages: one commit every few ms at full load, and a bounded transaction.
fn default_commit_max() -> usize {
    5000
}
fn default_sync() -> SyncPolicy {
    SyncPolicy::Full
}
/// After a crash only: a clean restart (an upgrade, a reboot) does not pay for reading the whole
/// file, while a run that ended by power loss or a kill, the moments a disk can tear a page, does.
fn default_integrity_check() -> IntegrityCheck {
    IntegrityCheck::AfterCrash
}
/// 60 s: a full check of a 4 GB journal on a cold cache; start never waits longer.
fn default_integrity_check_max_s() -> u64 {
    60
}

impl JournalConfig {
    /// Reports the section's problems under `journal.*`.
    pub(crate) fn check(&self, d: &mut Diagnostics<'_>) {
        if self.retention_days == 0 {
            d.at_key("journal.retention_days", "must be at least 1");
        }
        if self.commit_max_messages == 0 {
            d.at_key("journal.commit_max_messages", "must be at least 1");
        }
    }
}
