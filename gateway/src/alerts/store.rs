//! The alert tables, in the journal's SQLite file through a connection of their own.
//!
//! Every change of an alert is one transaction: the current row (`alerts`), its audit entry
//! (`alert_audit`) and the delivery log entry (`alert_events`, keyed by the alert `seq`). The
//! delivery stages (MQTT outbox, webhooks, SSE replay) read `alert_events` after their cursor,
//! so nothing is published that is not durable and nothing durable is missed.
//!
//! This module owns the SQL of `alert_events`: the delivery log ([`super::delivery::log`]) reads
//! it through `read_events_after` and `last_event_seq`. It also tells the journal what to do
//! for the alert tables when it opens the file ([`HOSTED_IN_JOURNAL`]): read them at start, and
//! after a salvage of a damaged file, [`repair_after_salvage`].

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use tracing::{error, warn};

use super::model::{Alert, AlertEvent, AlertState, AuditEntry};
use crate::journal::recovery::{table_exists, HostedTables};
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

/// The delivery log, `alert_events`: every alert change keyed by its seq. `CREATE ... IF NOT
/// EXISTS`, run by the alert store and by the delivery log, so whoever opens the database first
/// creates it.
pub(crate) const EVENTS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alert_events (
    seq         INTEGER PRIMARY KEY,
    alert_id    TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    json        TEXT    NOT NULL
);
";

/// Appends one entry to the delivery log.
const INSERT_EVENT: &str = "INSERT INTO alert_events (seq, alert_id, at, json) VALUES (?1, ?2, ?3, ?4)";

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
        conn.execute_batch(EVENTS_SCHEMA)?;
        Ok(AlertStore {
            conn,
            turns: WriteTurns::of(path),
        })
    }

    /// The highest alert seq ever written (0 when none).
    pub fn last_seq(&self) -> Result<u64, AlertStoreError> {
        Ok(last_event_seq(&self.conn)?)
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
            let mut event = tx.prepare_cached(INSERT_EVENT)?;
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
        Ok(read_events_after(&self.conn, after, limit)?)
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

/// A seq as SQLite stores it (saturating: seqs never come near `i64::MAX`).
fn seq_to_sql(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// Delivery log entries with `seq > after`, in seq order, at most `limit`: on any connection to
/// the journal's file (the alert store's, or a delivery channel's).
pub(crate) fn read_events_after(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<AlertEvent>, rusqlite::Error> {
    let mut stmt =
        conn.prepare_cached("SELECT seq, alert_id, at, json FROM alert_events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
    let rows = stmt.query_map(
        params![seq_to_sql(after), i64::try_from(limit).unwrap_or(i64::MAX)],
        |r| {
            Ok(AlertEvent {
                seq: r.get::<_, i64>(0)?.max(0) as u64,
                alert_id: r.get(1)?,
                at: r.get(2)?,
                json: r.get(3)?,
            })
        },
    )?;
    rows.collect::<Result<Vec<_>, _>>()
}

/// The highest seq in the delivery log (0 when empty).
pub(crate) fn last_event_seq(conn: &Connection) -> Result<u64, rusqlite::Error> {
    let seq: Option<i64> = conn.query_row("SELECT MAX(seq) FROM alert_events", [], |r| r.get(0))?;
    Ok(seq.unwrap_or(0).max(0) as u64)
}

/// Appends one entry to the delivery log outside a change of the alert store (tests and tools).
pub(crate) fn append_event(
    conn: &Connection,
    seq: u64,
    alert_id: &str,
    at: i64,
    json: &str,
) -> Result<(), rusqlite::Error> {
    conn.execute(INSERT_EVENT, params![seq_to_sql(seq), alert_id, at, json])?;
    Ok(())
}

/// What the journal does for the alert tables when it opens its file: reads them at start (a
/// damaged page there is found then, not as a failed start of the alerts task) and, after a
/// salvage of a damaged file, [`repair_after_salvage`].
pub const HOSTED_IN_JOURNAL: HostedTables = HostedTables {
    read_at_start: &["alerts", "alert_events", "engine_state", "delivery_cursors"],
    repair: repair_after_salvage,
};

/// Makes the salvaged alert tables agree again (nothing to do without both `alerts` and
/// `alert_events`). The alert manager takes `MAX(alert_events.seq) + 1` as its next seq and
/// the delivery channels send only what is past their cursor: a lost tail of `alert_events`
/// would make new alerts reuse seqs (and `a-<seq>` ids) that were delivered or are still in
/// `alerts`.
pub fn repair_after_salvage(conn: &Connection) -> Result<(), rusqlite::Error> {
    if !(table_exists(conn, "alerts")? && table_exists(conn, "alert_events")?) {
        return Ok(());
    }
    recreate_from_each_other(conn)?;
    raise_seq_to_delivery_cursors(conn)
}

/// An alert's row is its latest version: its event is re-created when the event was lost, and
/// an alert whose row was lost gets it back from its latest event.
fn recreate_from_each_other(conn: &Connection) -> Result<(), rusqlite::Error> {
    let recreated = conn.execute(
        "INSERT OR IGNORE INTO alert_events (seq, alert_id, at, json)
         SELECT json_extract(json, '$.seq'), id, updated_at, json FROM alerts
         WHERE json_valid(json) AND json_extract(json, '$.seq') > (SELECT coalesce(max(seq), 0) FROM alert_events)",
        [],
    )?;
    let restored = conn.execute(
        "INSERT OR IGNORE INTO alerts (id, state, json, updated_at)
         SELECT e.alert_id, json_extract(e.json, '$.state'), e.json, e.at FROM alert_events e
         WHERE e.seq = (SELECT max(seq) FROM alert_events WHERE alert_id = e.alert_id)
           AND json_valid(e.json) AND json_extract(e.json, '$.state') IS NOT NULL",
        [],
    )?;
    if recreated + restored > 0 {
        warn!(
            recreated,
            restored, "salvage: alert events and rows re-created from each other"
        );
    }
    Ok(())
}

/// Every channel's cursor is a seq it delivered: when the log now ends below the highest
/// cursor, the latest alert is published again under that seq, so the next seq is above every
/// cursor and no new alert hides behind one.
fn raise_seq_to_delivery_cursors(conn: &Connection) -> Result<(), rusqlite::Error> {
    let floor: Option<i64> = if table_exists(conn, "delivery_cursors")? {
        conn.query_row("SELECT max(seq) FROM delivery_cursors", [], |r| r.get(0))?
    } else {
        None
    };
    let last: i64 = conn.query_row("SELECT coalesce(max(seq), 0) FROM alert_events", [], |r| r.get(0))?;
    let Some(floor) = floor.filter(|f| *f > last) else {
        return Ok(());
    };
    // Every channel already delivered up to `floor`: publish the most recent alert again under
    // that seq (a repeat of its current state, as any change is), so the next seq is above it.
    let latest: Option<(String, i64)> = conn
        .query_row(
            "SELECT id, updated_at FROM alerts WHERE json_valid(json)
             ORDER BY json_extract(json, '$.seq') DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match latest {
        Some((id, at)) => {
            conn.execute(
                "UPDATE alerts SET json = json_set(json, '$.seq', ?2) WHERE id = ?1",
                params![id, floor],
            )?;
            conn.execute(
                "INSERT INTO alert_events (seq, alert_id, at, json) SELECT ?2, id, ?3, json FROM alerts WHERE id = ?1",
                params![id, floor, at],
            )?;
            warn!(alert = %id, seq = floor, "salvage: alert seq raised to the delivery cursors");
        }
        None => error!(
            delivery_cursor = floor,
            last_seq = last,
            "salvage: every alert was lost and the delivery cursors are ahead; new alert seqs may repeat delivered ones"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::recovery::{open, CheckOutcome};
    use crate::journal::test_support::{count, fill, opts_hosting, root_page, smash_page, temp_db, SyncPolicy};
    use crate::journal::Store;

    /// A journal of `n` readings and the alert tables with a few rows (two alerts, three events,
    /// a delivery cursor at 3), checkpointed into the main file and closed.
    fn journal_with_alerts(path: &Path, n: i64) {
        let mut store = Store::open(path, SyncPolicy::Full).expect("open");
        fill(&mut store, 1, n);
        drop(AlertStore::open(path).expect("alert tables"));
        crate::alerts::delivery::EventLog::open(path).expect("delivery tables");
        store
            .conn_mut()
            .execute_batch(
                "INSERT INTO alerts VALUES ('a-1', 'resolved', '{\"id\":\"a-1\",\"seq\":2,\"state\":\"resolved\"}', 20);
                 INSERT INTO alerts VALUES ('a-3', 'active', '{\"id\":\"a-3\",\"seq\":3,\"state\":\"active\"}', 30);
                 INSERT INTO alert_audit (alert_id, at, actor, action) VALUES ('a-1', 10, 'system', 'raised');
                 INSERT INTO alert_events VALUES (1, 'a-1', 10, '{\"id\":\"a-1\",\"seq\":1,\"state\":\"active\"}');
                 INSERT INTO alert_events VALUES (2, 'a-1', 20, '{\"id\":\"a-1\",\"seq\":2,\"state\":\"resolved\"}');
                 INSERT INTO alert_events VALUES (3, 'a-3', 30, '{\"id\":\"a-3\",\"seq\":3,\"state\":\"active\"}');
                 INSERT INTO engine_state VALUES ('rules', '{\"v\":1}');
                 INSERT INTO delivery_cursors VALUES ('mqtt', 3);",
            )
            .expect("alerts");
        store
            .conn_mut()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .expect("checkpoint");
    }

    #[test]
    fn a_damaged_event_log_is_found_at_start_salvaged_and_its_lost_events_recreated() {
        let (_dir, path) = temp_db("smashed-alert-events");
        journal_with_alerts(&path, 2_000);
        // The event log's root page: read at every start.
        smash_page(&path, root_page(&path, "alert_events"));
        let (mut store, report) = open(&path, opts_hosting(&[HOSTED_IN_JOURNAL]), 5).expect("start");
        assert!(!report.unclean);
        assert_eq!(report.check, CheckOutcome::Skipped);
        let recovery = report.recovery.expect("recovered");
        assert_eq!(recovery.table("readings").map(|t| (t.rows, t.lost)), Some((2_000, 0)));
        assert_eq!(
            count(&mut store, "alert_events"),
            2,
            "events re-created from the alert rows"
        );
        for (table, n) in [
            ("alerts", 2),
            ("alert_audit", 1),
            ("engine_state", 1),
            ("delivery_cursors", 1),
        ] {
            assert_eq!(count(&mut store, table), n, "{table}");
        }
        let max_seq: i64 = store
            .conn_mut()
            .query_row("SELECT max(seq) FROM alert_events", [], |r| r.get(0))
            .expect("seq");
        assert_eq!(max_seq, 3, "the next alert seq is past the delivery cursor");
    }

    #[test]
    fn lost_alert_events_are_recreated_and_seqs_never_fall_behind_a_delivery_cursor() {
        let (_dir, path) = temp_db("alert-seq");
        journal_with_alerts(&path, 1);
        let conn = Connection::open(&path).expect("open");
        // The tail of the event log lost, and a channel that had delivered up to 7.
        conn.execute_batch(
            "DELETE FROM alert_events WHERE seq >= 2;
             INSERT INTO delivery_cursors VALUES ('webhook:0', 7);",
        )
        .expect("damage");
        repair_after_salvage(&conn).expect("repair");
        let events: Vec<(i64, String)> = conn
            .prepare("SELECT seq, alert_id FROM alert_events ORDER BY seq")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .expect("events");
        assert_eq!(
            events,
            vec![
                (1, "a-1".to_owned()),
                (2, "a-1".to_owned()),
                (3, "a-3".to_owned()),
                (7, "a-3".to_owned())
            ],
            "lost events re-created from the alert rows; the latest alert repeated at the cursor"
        );
        let json: String = conn
            .query_row("SELECT json FROM alerts WHERE id = 'a-3'", [], |r| r.get(0))
            .expect("alert");
        assert!(json.contains("\"seq\":7"), "{json}");
    }

    #[test]
    fn the_delivery_log_reads_what_the_store_commits_and_what_is_appended() {
        let (_dir, path) = temp_db("alert-events");
        let store = AlertStore::open(&path).expect("open");
        assert_eq!(store.last_seq().expect("last"), 0);
        append_event(&store.conn, 2, "a-2", 20, "{\"seq\":2}").expect("append");
        append_event(&store.conn, 1, "a-1", 10, "{\"seq\":1}").expect("append");
        let events = store.events_after(0, 10).expect("events");
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(
            events[1],
            AlertEvent {
                seq: 2,
                alert_id: "a-2".into(),
                at: 20,
                json: "{\"seq\":2}".into()
            }
        );
        assert_eq!(store.last_seq().expect("last"), 2);
        assert!(store.events_after(2, 10).expect("after").is_empty());
        assert_eq!(store.events_after(0, 1).expect("limit").len(), 1);
    }
}
