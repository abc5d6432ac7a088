//! Scratch journals for the tests: temporary files, readings, hand-driven writers, damaged
//! pages, and tables that stand in for another module's in the journal's file. Shared by the
//! journal's tests and by those of the modules that keep tables in its file.

use std::collections::HashMap;
use std::io::{Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tempfile::TempDir;
use tokio::sync::{mpsc, watch};

pub(crate) use crate::journal::config::{IntegrityCheck, SyncPolicy};

use super::recovery::{HostedTables, OpenOptions};
use super::store::{Store, WriteTurns};
use super::writer::{Writer, WriterConfig};
use super::{Observed, Record};
use crate::clock::Clock;
use crate::reading::Value;
use crate::telemetry::Telemetry;

/// A fresh directory, removed when the returned guard drops, and a journal path inside it.
pub(crate) fn temp_db(label: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("nh-journal-{label}-"))
        .tempdir()
        .expect("temp dir");
    let path = dir.path().join("journal.db");
    (dir, path)
}

/// Polls `done` until it holds; panics with `what` after `limit`.
pub(crate) async fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A wearable reading of room A-101.
pub(crate) fn record(device: &str, ts: i64, seq: Option<u64>, metrics: &[(&str, Value)]) -> Record {
    Record {
        device: device.into(),
        class: "wearable".into(),
        building: "A".into(),
        floor: "1".into(),
        room: "A-101".into(),
        zone: String::new(),
        ts,
        ts_recv: ts,
        ts_replaced: false,
        seq,
        metrics: metrics.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
    }
}

/// A writer configuration for tests: commits at once, retention of an hour on a test clock
/// that reads 10,000,000 ms, no budget, guarded by the `influx` cursor.
pub(crate) fn config(observer: Option<mpsc::Sender<Observed>>) -> WriterConfig {
    WriterConfig {
        commit_max_messages: 100,
        retention_ms: 3_600_000,
        disk_budget_bytes: u64::MAX,
        guard_cursor: Some("influx"),
        clock: Clock::test(0, 10_000_000, 1.0),
        observer,
        observer_priority: None,
        exit_on_corruption: false,
        bulk_linger: Duration::ZERO,
        bulk_linger_gap: Duration::ZERO,
        bulk_linger_messages: 1,
    }
}

/// A writer driven by hand (no thread): for housekeeping and timing.
pub(super) fn manual(path: &Path, sync: SyncPolicy, cfg: WriterConfig, telemetry: Arc<Telemetry>) -> Writer {
    Writer {
        store: Store::open(path, sync).expect("open"),
        cfg,
        telemetry,
        committed: watch::channel(0).0,
        seqs: HashMap::new(),
        pending: HashMap::new(),
        devices_at: Instant::now(),
        turns: Some(WriteTurns::of(path)),
        rx: mpsc::channel(1).1,
        rx_priority: mpsc::channel(1).1,
        rt: tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt")
            .handle()
            .clone(),
    }
}

/// Open options with `sync = "full"` and no tables of other modules.
pub(crate) fn opts(check: IntegrityCheck) -> OpenOptions {
    OpenOptions {
        sync: SyncPolicy::Full,
        check,
        check_max: Duration::from_secs(30),
        hosted: &[],
    }
}

/// Open options as after a crash, for a file that also holds `hosted`.
pub(crate) fn opts_hosting(hosted: &'static [HostedTables]) -> OpenOptions {
    OpenOptions {
        hosted,
        ..opts(IntegrityCheck::AfterCrash)
    }
}

const INSERT: &str = "INSERT INTO readings (device, class, building, floor, room, zone, ts, ts_recv, ts_replaced, seq, metrics, life_safety)
     VALUES ('d-' || (?1 % 7), 'wearable', 'A', '1', 'A-101', '', ?1, ?1, 0, ?1, json_object('heart_rate', ?1 % 90, 'note', 'padding padding padding padding'), 0)";

/// Inserts readings with seq = ts = their index, in one transaction.
pub(crate) fn fill(store: &mut Store, from: i64, to: i64) {
    let tx = store.conn_mut().transaction().expect("tx");
    {
        let mut stmt = tx.prepare(INSERT).expect("prepare");
        for i in from..=to {
            stmt.execute([i]).expect("insert");
        }
    }
    tx.commit().expect("commit");
}

/// (id, seq) of every reading.
pub(crate) fn readings(store: &mut Store) -> Vec<(i64, i64)> {
    let conn = store.conn_mut();
    let mut stmt = conn
        .prepare("SELECT id, seq FROM readings ORDER BY id")
        .expect("prepare");
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).expect("query");
    rows.collect::<Result<_, _>>().expect("rows")
}

/// The id the next reading gets (one is inserted to find out).
pub(crate) fn next_id(store: &mut Store) -> i64 {
    store.conn_mut().execute(INSERT, [0]).expect("insert");
    store.last_id().expect("last")
}

/// Rows in `table`.
pub(crate) fn count(store: &mut Store, table: &str) -> i64 {
    store
        .conn_mut()
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .expect("count")
}

/// Overwrites page `pageno` (1-based) of the file with garbage.
pub(crate) fn smash_page(path: &Path, pageno: i64) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).expect("db");
    f.seek(std::io::SeekFrom::Start(((pageno - 1) * 4096) as u64))
        .expect("seek");
    f.write_all(&[0x5A; 4096]).expect("smash");
    f.sync_all().expect("sync");
}

/// The root page of `table`.
pub(crate) fn root_page(path: &Path, table: &str) -> i64 {
    let conn = Connection::open(path).expect("open");
    conn.query_row("SELECT rootpage FROM sqlite_master WHERE name = ?1", [table], |r| {
        r.get(0)
    })
    .expect("root")
}

/// Leaf pages of the readings table, in key order.
pub(crate) fn readings_leaves(path: &Path) -> Vec<i64> {
    let conn = Connection::open(path).expect("open");
    let mut stmt = conn
        .prepare("SELECT pageno FROM dbstat WHERE name = 'readings' AND pagetype = 'leaf' ORDER BY path")
        .expect("dbstat");
    let rows = stmt.query_map([], |r| r.get(0)).expect("query");
    rows.collect::<Result<_, _>>().expect("pages")
}

/// Tables another module could keep in the journal's file, as the journal's tests stand them
/// in: a log keyed by seq, a state row per name, an audit trail with its own id counter.
pub(crate) const HOSTED_SCHEMA: &str = "
CREATE TABLE hosted_log (seq INTEGER PRIMARY KEY, owner TEXT NOT NULL, at INTEGER NOT NULL, json TEXT NOT NULL);
CREATE TABLE hosted_state (name TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE hosted_audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, note TEXT);
INSERT INTO hosted_log VALUES (1, 'a-1', 10, '{\"seq\":1}');
INSERT INTO hosted_log VALUES (2, 'a-1', 20, '{\"seq\":2}');
INSERT INTO hosted_log VALUES (3, 'a-3', 30, '{\"seq\":3}');
INSERT INTO hosted_state VALUES ('rules', '{\"v\":1}');
INSERT INTO hosted_audit (at, note) VALUES (10, 'raised');
";

/// The stand-in tables, each with its row count in [`HOSTED_SCHEMA`].
pub(crate) const HOSTED_ROWS: [(&str, i64); 3] = [("hosted_log", 3), ("hosted_state", 1), ("hosted_audit", 1)];

/// Rows in every stand-in table, in the order of [`HOSTED_ROWS`].
pub(crate) fn hosted_counts(store: &mut Store) -> Vec<i64> {
    HOSTED_ROWS.iter().map(|(t, _)| count(store, t)).collect()
}

/// A journal of `n` readings, the stand-in tables of another module, and an InfluxDB cursor,
/// checkpointed into the main file and closed.
pub(crate) fn journal_with_hosted_tables(path: &Path, n: i64, cursor: i64) {
    let mut store = Store::open(path, SyncPolicy::Full).expect("open");
    fill(&mut store, 1, n);
    store.set_cursor("influx", cursor).expect("cursor");
    store.conn_mut().execute_batch(HOSTED_SCHEMA).expect("hosted tables");
    store
        .conn_mut()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
}
