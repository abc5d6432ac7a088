//! The delivery channels' view of the journal's SQLite database: the alert event log
//! (`alert_events`, written by the alert manager; its SQL is the alert store's, in
//! [`crate::alerts::store`]) and the delivery cursors (`delivery_cursors`, one row per channel,
//! owned here).
//!
//! Each delivery task opens its own connection: SQLite in WAL mode lets them read while the
//! journal writer and the alert manager write. Every call blocks; async callers go through
//! [`SharedLog::call`], which runs it on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use crate::alerts::store::{append_event, last_event_seq, read_events_after, EVENTS_SCHEMA};

/// One entry of the event log: the same type the alert store reads and writes.
pub use crate::alerts::model::AlertEvent;

/// The cursors of the delivery channels. `CREATE ... IF NOT EXISTS`: whoever opens the
/// database first creates it (the event log's own table is the alert store's `EVENTS_SCHEMA`).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS delivery_cursors (channel TEXT PRIMARY KEY, seq INTEGER NOT NULL);
";

/// How long a connection waits for another's write lock before failing (as the journal does).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("alert event log {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("alert event log: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("alert event log: the blocking task failed: {0}")]
    Task(String),
}

/// One connection to the event log.
pub struct EventLog {
    conn: Connection,
    /// Cursor writes take a turn at the write lock (see `journal::store::WriteTurns`).
    turns: crate::journal::store::WriteTurns,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog").field("path", &self.conn.path()).finish()
    }
}

impl EventLog {
    /// Opens the journal database (creating the file and both tables if needed).
    pub fn open(path: &Path) -> Result<EventLog, LogError> {
        let open_err = |source| LogError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Short retries for the write lock the journal writer holds most of the time under load.
        crate::journal::store::wait_for_lock_briefly(&mut conn).map_err(open_err)?;
        // WAL is a property of the file; setting it again is a no-op when the journal did.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        conn.execute_batch(EVENTS_SCHEMA).map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        Ok(EventLog {
            conn,
            turns: crate::journal::store::WriteTurns::of(path),
        })
    }

    /// Up to `limit` events with `seq > after`, in seq order.
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<AlertEvent>, LogError> {
        Ok(read_events_after(&self.conn, after, limit)?)
    }

    /// The highest seq in the log (0 when empty).
    pub fn last_seq(&self) -> Result<u64, LogError> {
        Ok(last_event_seq(&self.conn)?)
    }

    /// A channel's persisted cursor: the last seq it delivered (0 when never set).
    pub fn cursor(&self, channel: &str) -> Result<u64, LogError> {
        let seq: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM delivery_cursors WHERE channel = ?1",
                params![channel],
                |r| r.get(0),
            )
            .optional()?;
        Ok(seq.unwrap_or(0).max(0) as u64)
    }

    /// Persists a channel's cursor (durable when this returns).
    pub fn set_cursor(&self, channel: &str, seq: u64) -> Result<(), LogError> {
        let _turn = self.turns.ask();
        self.conn.execute(
            "INSERT INTO delivery_cursors (channel, seq) VALUES (?1, ?2)
             ON CONFLICT (channel) DO UPDATE SET seq = excluded.seq",
            params![channel, to_sql(seq)],
        )?;
        Ok(())
    }

    /// Appends an event (tests and tools; the alert manager has its own writer).
    pub fn append(&self, seq: u64, alert_id: &str, at: i64, json: &str) -> Result<(), LogError> {
        Ok(append_event(&self.conn, seq, alert_id, at, json)?)
    }
}

fn to_sql(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// One [`EventLog`] connection shared by async callers, opened on first use (so a task can
/// start before the database exists, and retry after an error by calling again).
#[derive(Clone, Debug)]
pub struct SharedLog {
    path: PathBuf,
    conn: Arc<Mutex<Option<EventLog>>>,
}

impl SharedLog {
    pub fn new(path: impl Into<PathBuf>) -> SharedLog {
        SharedLog {
            path: path.into(),
            conn: Arc::new(Mutex::new(None)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the blocking pool with the connection. After an error the connection is
    /// dropped and reopened on the next call.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&EventLog) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let conn = self.conn.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            let log = match guard.take() {
                Some(log) => log,
                None => EventLog::open(&path)?,
            };
            let result = f(&log);
            if result.is_ok() {
                *guard = Some(log);
            }
            result
        })
        .await
        .map_err(|e| LogError::Task(e.to_string()))?
    }

    pub async fn after(&self, after: u64, limit: usize) -> Result<Vec<AlertEvent>, LogError> {
        self.call(move |log| log.after(after, limit)).await
    }

    pub async fn cursor(&self, channel: &str) -> Result<u64, LogError> {
        let channel = channel.to_owned();
        self.call(move |log| log.cursor(&channel)).await
    }

    pub async fn set_cursor(&self, channel: &str, seq: u64) -> Result<(), LogError> {
        let channel = channel.to_owned();
        self.call(move |log| log.set_cursor(&channel, seq)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    fn event_json(seq: u64, priority: &str) -> String {
        format!(r#"{{"id":"a{seq}","seq":{seq},"priority":"{priority}","state":"active"}}"#)
    }

    #[test]
    fn reads_events_after_a_seq_in_order_with_a_limit() -> Result<(), LogError> {
        let dir = TempDir::new().expect("temp dir");
        let log = EventLog::open(&dir.path().join("journal.db"))?;
        assert_eq!(log.last_seq()?, 0);
        assert!(log.after(0, 10)?.is_empty());
        for seq in [3u64, 1, 2, 5, 4] {
            log.append(seq, &format!("a{seq}"), 1000 + seq as i64, &event_json(seq, "P2"))?;
        }
        let seqs: Vec<u64> = log.after(0, 10)?.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        let page: Vec<u64> = log.after(2, 2)?.iter().map(|e| e.seq).collect();
        assert_eq!(page, vec![3, 4]);
        assert_eq!(log.last_seq()?, 5);
        let e = &log.after(4, 1)?[0];
        assert_eq!((e.alert_id.as_str(), e.at), ("a5", 1005));
        assert_eq!(e.priority(), Some(crate::rules::output::Priority::P2));
        Ok(())
    }

    #[test]
    fn cursors_persist_across_connections() -> Result<(), LogError> {
        let dir = TempDir::new().expect("temp dir");
        let path = dir.path().join("journal.db");
        {
            let log = EventLog::open(&path)?;
            assert_eq!(log.cursor("mqtt")?, 0);
            log.set_cursor("mqtt", 7)?;
            log.set_cursor("mqtt", 9)?;
            log.set_cursor("webhook:http://x/y", 3)?;
        }
        let log = EventLog::open(&path)?;
        assert_eq!(log.cursor("mqtt")?, 9);
        assert_eq!(log.cursor("webhook:http://x/y")?, 3);
        assert_eq!(log.cursor("other")?, 0);
        Ok(())
    }

    #[tokio::test]
    async fn shared_log_reopens_lazily() -> Result<(), LogError> {
        let dir = TempDir::new().expect("temp dir");
        let shared = SharedLog::new(dir.path().join("sub").join("journal.db"));
        assert_eq!(shared.cursor("mqtt").await?, 0);
        shared.set_cursor("mqtt", 4).await?;
        assert_eq!(shared.cursor("mqtt").await?, 4);
        Ok(())
    }
}
