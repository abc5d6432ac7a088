//! The alert tables, in the journal's SQLite file through a connection of their own.
//!
//! Every change of an alert is one transaction: the current row (`alerts`), its audit entry
//! (`alert_audit`) and the delivery log entry (`alert_events`, keyed by the alert `seq`). The
//! delivery stages (MQTT outbox, webhooks, SSE replay) read `alert_events` after their cursor,
//! so nothing is published that is not durable and nothing durable is missed.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::model::{Alert, AlertEvent, AlertState, AuditEntry};
use crate::journal::store::WriteTurns;

#[derive(Debug, thiserror::Error)]
pub enum AlertStoreError {
    #[error("alert store {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("alert store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("alert store: stored alert is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    id          TEXT PRIMARY KEY,
    state       TEXT    NOT NULL,
    json        TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_state ON alerts (state);
CREATE TABLE IF NOT EXISTS alert_audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id    TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    note        TEXT,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS alert_audit_alert ON alert_audit (alert_id, id);
CREATE TABLE IF NOT EXISTS alert_events (
    seq         INTEGER PRIMARY KEY,
    alert_id    TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    json        TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS access_audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS alert_audit_at ON alert_audit (at);
CREATE TABLE IF NOT EXISTS engine_state (
    name        TEXT PRIMARY KEY,
    json        TEXT    NOT NULL
);
";

/// One entry of the whole audit log.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditLogEntry {
    pub at: i64,
    /// `system` for rule-driven transitions, else the person or token.
    pub actor: String,
    pub action: String,
    /// The alert, for alert transitions.
    pub alert_id: Option<String>,
    pub note: Option<String>,
    pub detail: Option<serde_json::Value>,
}

/// Same wait as the journal's: the writer thread's group commits are short.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Which alerts a list returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    All,
    /// Not resolved.
    Open,
    Only(AlertState),
}

impl StateFilter {
    /// `active`, `acknowledged`, `resolved`, `open` or `all`.
    pub fn parse(s: &str) -> Option<StateFilter> {
        match s {
            "all" => Some(StateFilter::All),
            "open" => Some(StateFilter::Open),
            "active" => Some(StateFilter::Only(AlertState::Active)),
            "acknowledged" => Some(StateFilter::Only(AlertState::Acknowledged)),
            "resolved" => Some(StateFilter::Only(AlertState::Resolved)),
            _ => None,
        }
    }
}

/// One change to commit: the alert's new version and the audit entry that explains it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub alert: Alert,
    pub audit: AuditEntry,
}

pub struct AlertStore {
    conn: Connection,
    /// Writes take a turn: the journal writer lets them go before its next transaction.
    turns: WriteTurns,
}

impl std::fmt::Debug for AlertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertStore").field("path", &self.conn.path()).finish()
    }
}

impl AlertStore {
    /// Opens the journal database file (creating it and the alert tables if missing). Used by the
    /// alerts task (the only writer) and by readers (API, delivery).
    pub fn open(path: &Path) -> Result<AlertStore, AlertStoreError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut conn = Connection::open(path).map_err(|source| AlertStoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Short retries for the write lock the journal writer holds most of the time under load.
        crate::journal::store::wait_for_lock_briefly(&mut conn)?;
        // WAL is a property of the file (the journal sets it too); alerts are life-safety
        // records, so their commits are synced fully.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(AlertStore {
            conn,
            turns: WriteTurns::of(path),
        })
    }

    /// The highest alert seq ever written (0 when none).
    pub fn last_seq(&self) -> Result<u64, AlertStoreError> {
        let seq: Option<i64> = self
            .conn
            .query_row("SELECT MAX(seq) FROM alert_events", [], |r| r.get(0))?;
        Ok(seq.unwrap_or(0) as u64)
    }

    /// Writes the changes in one transaction: alert rows, audit entries, delivery log.
    pub fn commit(&mut self, changes: &[Change]) -> Result<(), AlertStoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let _turn = self.turns.ask();
        let tx = self.conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO alerts (id, state, json, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(id) DO UPDATE SET state = excluded.state, json = excluded.json,
                 updated_at = excluded.updated_at",
            )?;
            let mut audit = tx.prepare_cached(
                "INSERT INTO alert_audit (alert_id, at, actor, action, note, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut event =
                tx.prepare_cached("INSERT INTO alert_events (seq, alert_id, at, json) VALUES (?1, ?2, ?3, ?4)")?;
            for c in changes {
                let a = &c.alert;
                let json = serde_json::to_string(a)?;
                upsert.execute(params![a.id, a.state.as_str(), json, a.updated_at])?;
                let detail = c.audit.detail.as_ref().map(serde_json::to_string).transpose()?;
                audit.execute(params![
                    a.id,
                    c.audit.at,
                    c.audit.actor,
                    c.audit.action,
                    c.audit.note,
                    detail
                ])?;
                event.execute(params![a.seq as i64, a.id, a.updated_at, json])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Alert>, AlertStoreError> {
        let json: Option<String> = self
            .conn
            .query_row("SELECT json FROM alerts WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
    }

    /// Alerts in `filter`, ordered by priority (P1 first), then `raised_at`, then id; at most `limit`.
    pub fn list(&self, filter: StateFilter, limit: usize) -> Result<Vec<Alert>, AlertStoreError> {
        let (sql, arg) = match filter {
            StateFilter::All => ("SELECT json FROM alerts WHERE ?1 IS NULL", None),
            StateFilter::Open => ("SELECT json FROM alerts WHERE state != 'resolved' AND ?1 IS NULL", None),
            StateFilter::Only(s) => ("SELECT json FROM alerts WHERE state = ?1", Some(s.as_str())),
        };
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map([arg], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str::<Alert>(&row?)?);
        }
        out.sort_by(|a, b| {
            (a.priority, a.raised_at, alert_number(&a.id)).cmp(&(b.priority, b.raised_at, alert_number(&b.id)))
        });
        out.truncate(limit);
        Ok(out)
    }

    /// Every open (not resolved) alert, for the manager on start.
    pub fn open_alerts(&self) -> Result<Vec<Alert>, AlertStoreError> {
        self.list(StateFilter::Open, usize::MAX)
    }

    /// Records a login, a failed login or a logout in the audit log (`detail` is JSON).
    pub fn record_access(
        &self,
        at: i64,
        actor: &str,
        action: &str,
        detail: Option<&serde_json::Value>,
    ) -> Result<(), AlertStoreError> {
        let detail = detail.map(serde_json::to_string).transpose()?;
        let _turn = self.turns.ask();
        self.conn.execute(
            "INSERT INTO access_audit (at, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
            params![at, actor, action, detail],
        )?;
        Ok(())
    }

    /// The whole audit log, newest first: every alert transition and every login, failed login
    /// and logout; at most `limit` entries, and only those before `before` (ms) when given.
    pub fn audit_log(&self, limit: usize, before: Option<i64>) -> Result<Vec<AuditLogEntry>, AlertStoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at, actor, action, alert_id, note, detail FROM (
                 SELECT at, actor, action, alert_id, note, detail, id AS k, 0 AS src FROM alert_audit
                 WHERE at < ?2
                 UNION ALL
                 SELECT at, actor, action, NULL, NULL, detail, id AS k, 1 AS src FROM access_audit
                 WHERE at < ?2)
             ORDER BY at DESC, src DESC, k DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64, before.unwrap_or(i64::MAX)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (at, actor, action, alert_id, note, detail) = row?;
            out.push(AuditLogEntry {
                at,
                actor,
                action,
                alert_id,
                note,
                detail: detail.map(|d| serde_json::from_str(&d)).transpose()?,
            });
        }
        Ok(out)
    }

    /// Alerts open now or changed at or after `since` (ms): what a shift summary looks at.
    pub fn alerts_touched_since(&self, since: i64) -> Result<Vec<Alert>, AlertStoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT json FROM alerts WHERE state != 'resolved' OR updated_at >= ?1")?;
        let rows = stmt.query_map([since], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str::<Alert>(&row?)?);
        }
        Ok(out)
    }

    /// An alert's audit trail, oldest first.
    pub fn audit(&self, id: &str) -> Result<Vec<AuditEntry>, AlertStoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at, actor, action, note, detail FROM alert_audit WHERE alert_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (at, actor, action, note, detail) = row?;
            out.push(AuditEntry {
                at,
                actor,
                action,
                note,
                detail: detail.map(|d| serde_json::from_str(&d)).transpose()?,
            });
        }
        Ok(out)
    }

    /// Delivery log entries with `seq > after`, in seq order, at most `limit`.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<AlertEvent>, AlertStoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, alert_id, at, json FROM alert_events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let rows = stmt.query_map(params![after as i64, limit.min(i64::MAX as usize) as i64], |r| {
            Ok(AlertEvent {
                seq: r.get::<_, i64>(0)? as u64,
                alert_id: r.get(1)?,
                at: r.get(2)?,
                json: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// A saved state (the rules engine snapshot), when there is one.
    pub fn load_state(&self, name: &str) -> Result<Option<String>, AlertStoreError> {
        Ok(self
            .conn
            .query_row("SELECT json FROM engine_state WHERE name = ?1", [name], |r| r.get(0))
            .optional()?)
    }

    pub fn save_state(&self, name: &str, json: &str) -> Result<(), AlertStoreError> {
        let _turn = self.turns.ask();
        self.conn.execute(
            "INSERT INTO engine_state (name, json) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET json = excluded.json",
            params![name, json],
        )?;
        Ok(())
    }
}

/// The creation seq in an `a-<seq>` id, so ties sort in creation order.
fn alert_number(id: &str) -> u64 {
    id.strip_prefix("a-").and_then(|n| n.parse().ok()).unwrap_or(u64::MAX)
}
