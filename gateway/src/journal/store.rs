//! The SQLite schema and the queries on it. Each `Store` is one connection; the writer thread
//! owns one, the API and the InfluxDB forwarder each open their own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::config::SyncPolicy;
use super::{HistoryReading, Record, RowId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("journal {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("journal: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("journal: stored metrics are not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("journal {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl StoreError {
    /// Whether SQLite found the file damaged (a page that is not what it should be, or not a
    /// database at all), as opposed to a busy lock, a full disk or a permission.
    pub fn is_corruption(&self) -> bool {
        let e = match self {
            StoreError::Open { source, .. } | StoreError::Sql(source) => source,
            StoreError::Json(_) | StoreError::Io { .. } => return false,
        };
        matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
        )
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS readings (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    device      TEXT    NOT NULL,
    class       TEXT    NOT NULL,
    building    TEXT    NOT NULL,
    floor       TEXT    NOT NULL,
    room        TEXT    NOT NULL,
    zone        TEXT    NOT NULL,
    ts          INTEGER NOT NULL,
    ts_recv     INTEGER NOT NULL,
    ts_replaced INTEGER NOT NULL,
    seq         INTEGER,
    metrics     TEXT    NOT NULL,
    life_safety INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS readings_device_ts ON readings (device, ts);
CREATE TABLE IF NOT EXISTS devices (
    id          TEXT PRIMARY KEY,
    class       TEXT    NOT NULL,
    room        TEXT    NOT NULL,
    last_seen   INTEGER NOT NULL,
    last_ts     INTEGER NOT NULL,
    last_seq    INTEGER,
    metrics     TEXT    NOT NULL,
    readings    INTEGER NOT NULL,
    seq_duplicates INTEGER NOT NULL DEFAULT 0,
    seq_gaps    INTEGER NOT NULL DEFAULT 0,
    seq_resets  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS cursors (
    name        TEXT PRIMARY KEY,
    position    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    reading_id  INTEGER NOT NULL,
    line        TEXT    NOT NULL,
    error       TEXT    NOT NULL
);
";

/// How long a connection waits for another's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between two tries of a connection waiting for the write lock.
const BUSY_RETRY: Duration = Duration::from_micros(500);

/// Makes `conn` wait for another connection's write lock by retrying every [`BUSY_RETRY`], for
/// up to [`BUSY_TIMEOUT`] in all.
///
/// SQLite's own busy timeout backs off up to 100 ms between tries. Every connection to the
/// journal file shares one write lock with the journal writer, which under load holds it for
/// most of the time in back-to-back commits: the alert store and the delivery log (life-safety
/// alerts) then found it free only by luck at those sparse tries, and alerts waited hundreds
/// of ms behind bulk telemetry (measured with `nh-bench`: p99 0.8 s at 20,000 readings/s).
/// Retrying every 0.5 ms takes the lock within one commit's time.
pub fn wait_for_lock_briefly(conn: &mut Connection) -> rusqlite::Result<()> {
    fn retry(tries: i32) -> bool {
        let limit = (BUSY_TIMEOUT.as_micros() / BUSY_RETRY.as_micros()) as i32;
        if tries >= limit {
            return false;
        }
        std::thread::sleep(BUSY_RETRY);
        true
    }
    conn.busy_handler(Some(retry))
}

/// The longest the journal writer holds back its next transaction for the small writers.
const YIELD_MAX: Duration = Duration::from_millis(50);

/// How often the journal writer looks whether the small writers are done.
const YIELD_POLL: Duration = Duration::from_micros(100);

/// Turns at the write lock of one database file, for the small writers that share it with the
/// journal writer: alert changes, the rules engine's saved state, delivery cursors, logins.
///
/// SQLite has one write lock per file and no queue: a waiting connection retries (every
/// [`BUSY_RETRY`]) and takes the lock only if it is free at that moment. Under load the journal
/// writer's group commits run back to back, with microseconds between them, so an alert
/// commit could miss the gap for many commits in a row: `nh-bench` measured alert p99 of
/// 0.5-1.2 s at 20,000-30,000 readings/s, most of it there. A small writer now takes a turn
/// ([`WriteTurns::ask`]) before it writes, and the journal writer lets every waiting turn go
/// before it starts its next transaction ([`WriteTurns::let_others_go_first`], at most
/// [`YIELD_MAX`]): an alert waits for the one commit already running, not for luck.
#[derive(Debug, Clone)]
pub struct WriteTurns(Arc<AtomicUsize>);

/// A small writer's turn; dropping it ends the turn.
#[derive(Debug)]
pub struct Turn(Arc<AtomicUsize>);

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl WriteTurns {
    /// The turns of the database file at `path` (one counter per file in this process).
    pub fn of(path: &Path) -> WriteTurns {
        static FILES: OnceLock<Mutex<HashMap<PathBuf, Arc<AtomicUsize>>>> = OnceLock::new();
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut files = FILES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        WriteTurns(files.entry(key).or_default().clone())
    }

    /// Takes a turn for a write that is about to start.
    pub fn ask(&self) -> Turn {
        self.0.fetch_add(1, Ordering::AcqRel);
        Turn(self.0.clone())
    }

    /// The journal writer, before a transaction: waits while small writers have a turn, at
    /// most [`YIELD_MAX`]. Returns how long it waited.
    pub fn let_others_go_first(&self) -> Duration {
        let started = Instant::now();
        while self.0.load(Ordering::Acquire) > 0 && started.elapsed() < YIELD_MAX {
            std::thread::sleep(YIELD_POLL);
        }
        started.elapsed()
    }
}

/// Sets a cursor on `conn` (a connection or a transaction of the journal).
pub(crate) fn write_cursor(conn: &Connection, name: &str, position: RowId) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO cursors (name, position) VALUES (?1, ?2)
         ON CONFLICT(name) DO UPDATE SET position = excluded.position",
        params![name, position],
    )?;
    Ok(())
}

/// A journal row as the InfluxDB forwarder reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingRow {
    pub id: RowId,
    pub record: Record,
}

/// A device's last known state.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRow {
    pub id: String,
    pub class: String,
    pub room: String,
    pub last_seen: i64,
    pub last_ts: i64,
    pub last_seq: Option<u64>,
    pub metrics: serde_json::Value,
    pub readings: u64,
    pub seq_duplicates: u64,
    pub seq_gaps: u64,
    pub seq_resets: u64,
}

pub struct Store {
    conn: Connection,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.conn.path()).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the journal for writing.
    pub fn open(path: &Path, sync: SyncPolicy) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        wait_for_lock_briefly(&mut conn)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match sync {
            SyncPolicy::Full => "FULL",
            SyncPolicy::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(Store { conn })
    }

    /// Opens another connection to an existing journal (readers, the forwarder).
    pub fn open_secondary(path: &Path) -> Result<Store, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        wait_for_lock_briefly(&mut conn)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(Store { conn })
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The database file (None for an in-memory database).
    pub fn path(&self) -> Option<std::path::PathBuf> {
        self.conn.path().filter(|p| !p.is_empty()).map(std::path::PathBuf::from)
    }

    /// The highest row id ever committed (0 for an empty journal).
    pub fn last_id(&self) -> Result<RowId, StoreError> {
        let seq: Option<i64> = self
            .conn
            .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'readings'", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(seq.unwrap_or(0))
    }

    /// A persisted cursor position (0 when never set).
    pub fn cursor(&self, name: &str) -> Result<RowId, StoreError> {
        Ok(self.cursor_if_set(name)?.unwrap_or(0))
    }

    /// A cursor's position, or `None` when it was never set.
    pub fn cursor_if_set(&self, name: &str) -> Result<Option<RowId>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT position FROM cursors WHERE name = ?1", [name], |r| r.get(0))
            .optional()?)
    }

    pub fn set_cursor(&self, name: &str, position: RowId) -> Result<(), StoreError> {
        write_cursor(&self.conn, name, position)
    }

    /// Rows after `after`, in id order, at most `limit`.
    pub fn rows_after(&self, after: RowId, limit: usize) -> Result<Vec<ReadingRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, device, class, building, floor, room, zone, ts, ts_recv, ts_replaced, seq, metrics
             FROM readings WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                Record {
                    device: r.get(1)?,
                    class: r.get(2)?,
                    building: r.get(3)?,
                    floor: r.get(4)?,
                    room: r.get(5)?,
                    zone: r.get(6)?,
                    ts: r.get(7)?,
                    ts_recv: r.get(8)?,
                    ts_replaced: r.get::<_, i64>(9)? != 0,
                    seq: r.get::<_, Option<i64>>(10)?.map(|s| s as u64),
                    metrics: Default::default(),
                },
                r.get::<_, String>(11)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, mut record, metrics) = row?;
            record.metrics = serde_json::from_str(&metrics)?;
            out.push(ReadingRow { id, record });
        }
        Ok(out)
    }

    /// A device's readings with `ts >= since`, ascending by `ts`, at most `limit`.
    pub fn history(&self, device: &str, since: i64, limit: usize) -> Result<Vec<HistoryReading>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT ts, ts_recv, seq, metrics FROM readings
             WHERE device = ?1 AND ts >= ?2 ORDER BY ts, id LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![device, since, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (ts, ts_recv, seq, metrics) = row?;
            out.push(HistoryReading {
                ts,
                ts_recv,
                seq: seq.map(|s| s as u64),
                metrics: serde_json::from_str(&metrics)?,
            });
        }
        Ok(out)
    }

    /// Every device the journal has seen, with its last state.
    pub fn devices(&self) -> Result<Vec<DeviceRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, class, room, last_seen, last_ts, last_seq, metrics, readings, seq_duplicates, seq_gaps, seq_resets
             FROM devices ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DeviceRow {
                id: r.get(0)?,
                class: r.get(1)?,
                room: r.get(2)?,
                last_seen: r.get(3)?,
                last_ts: r.get(4)?,
                last_seq: r.get::<_, Option<i64>>(5)?.map(|s| s as u64),
                metrics: serde_json::Value::Null,
                readings: r.get::<_, i64>(7)? as u64,
                seq_duplicates: r.get::<_, i64>(8)? as u64,
                seq_gaps: r.get::<_, i64>(9)? as u64,
                seq_resets: r.get::<_, i64>(10)? as u64,
            })
            .and_then(|d| Ok((d, r.get::<_, String>(6)?)))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (mut d, metrics) = row?;
            d.metrics = serde_json::from_str(&metrics)?;
            out.push(d);
        }
        Ok(out)
    }

    /// Sets a line InfluxDB refused aside, with the reason.
    pub fn quarantine(&self, at: i64, reading_id: RowId, line: &str, error: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO quarantine (at, reading_id, line, error) VALUES (?1, ?2, ?3, ?4)",
            params![at, reading_id, line, error],
        )?;
        Ok(())
    }

    pub fn quarantined(&self) -> Result<Vec<(RowId, String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT reading_id, line, error FROM quarantine ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Size of the database in bytes (pages in use, WAL excluded).
    pub fn size_bytes(&self) -> Result<u64, StoreError> {
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = self.conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(((pages - free).max(0) * size) as u64)
    }

    /// Deletes rows received before `before_ms` whose id is at most `max_id`. Returns the count.
    pub fn delete_older(&self, before_ms: i64, max_id: RowId) -> Result<u64, StoreError> {
        let n = self.conn.execute(
            "DELETE FROM readings WHERE ts_recv < ?1 AND id <= ?2",
            params![before_ms, max_id],
        )?;
        Ok(n as u64)
    }

    /// Deletes the `count` oldest rows after `after_id` (not yet forwarded) that are not
    /// life-safety (see [`super::budget`]). Returns the count.
    pub fn delete_oldest_unprotected(&self, count: usize, after_id: RowId) -> Result<u64, StoreError> {
        let n = self.conn.execute(
            "DELETE FROM readings WHERE id IN
               (SELECT id FROM readings WHERE id > ?1 AND life_safety = 0 ORDER BY id LIMIT ?2)",
            params![after_id, count as i64],
        )?;
        Ok(n as u64)
    }

    /// Deletes the `count` oldest rows whose id is at most `max_id`. Returns the count.
    pub fn delete_oldest(&self, count: usize, max_id: RowId) -> Result<u64, StoreError> {
        let n = self.conn.execute(
            "DELETE FROM readings WHERE id IN (SELECT id FROM readings WHERE id <= ?1 ORDER BY id LIMIT ?2)",
            params![max_id, count as i64],
        )?;
        Ok(n as u64)
    }
}

/// Brings a journal written by an older version up to the current schema.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let has_life_safety: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('readings') WHERE name = 'life_safety'")?
        .exists([])?;
    if !has_life_safety {
        // O(1) in SQLite (no rewrite). Older rows count as life-safety: the budget keeps them.
        conn.execute_batch("ALTER TABLE readings ADD COLUMN life_safety INTEGER NOT NULL DEFAULT 1")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_writer_lets_a_waiting_small_writer_go_first_but_not_forever() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
        let writer = WriteTurns::of(&a);
        // One counter per file, whichever handle asks.
        let turn = WriteTurns::of(&a).ask();
        assert!(
            WriteTurns::of(&b).let_others_go_first() < YIELD_MAX,
            "another file's turn holds nobody back"
        );
        // A turn held past the limit: the writer waits the limit, then goes on.
        assert!(writer.let_others_go_first() >= YIELD_MAX);
        // A turn that ends: the writer goes on right after it.
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            started_tx.send(()).expect("started");
            std::thread::sleep(Duration::from_millis(5));
            drop(turn);
        });
        started_rx.recv().expect("holder started");
        let waited = writer.let_others_go_first();
        holder.join().expect("holder");
        assert!(waited < YIELD_MAX, "waited {waited:?} for a turn of 5 ms");
        assert_eq!(writer.0.load(Ordering::Acquire), 0);
    }
}
