//! Opening the journal whatever ended the previous run, and salvaging a damaged one.
//!
//! What SQLite guarantees and what is ours:
//!
//! - **A crash of the process** (SIGKILL, panic, OOM) at any instant: every commit that
//!   returned is in the WAL and is replayed at the next open; a half-written transaction is
//!   ignored. SQLite's own business, nothing to do here.
//! - **A power loss**: with `sync = "full"` the WAL is fsynced at every group commit, so what was
//!   acknowledged survives; with `normal` only checkpoints are fsynced and the last commits may
//!   be lost (never half of one). A torn tail of the WAL (a frame cut short, garbage after it)
//!   fails the frame checksums and SQLite stops reading there: the commits before it are intact.
//! - **A damaged file** (a disk or SD card that lied about a write, bit rot, a copy taken
//!   mid-write): SQLite reports `SQLITE_CORRUPT` or `SQLITE_NOTADB` when a query meets the bad
//!   page. That is ours: [`open`] finds it (a check at start, a few reads of every small table),
//!   keeps the damaged file as `journal.db.corrupt-<unix ms>` (with its `-wal`), copies what is
//!   still readable into a fresh file and starts on it. It is reported (log, a
//!   `.corrupt-<ms>.txt` report beside the kept file, counters on `/metrics`, and the
//!   supervision flag `journal_recovered` that raises rule S6). A damaged journal is never a
//!   reason not to start.
//!
//! **When the file is checked.** `PRAGMA quick_check` reads every page: about 15 s per GB on a
//! cold disk cache here (1.6 s warm), so a 4 GB journal would hold the start for a minute.
//! Damage comes from torn writes, which need the previous run to have ended abruptly. A marker
//! file (`journal.db.running`) is created, fsynced, at open and removed when the journal writer
//! ends cleanly; with `integrity_check = "after_crash"` (the default) the check runs only when
//! the marker is still there. The check is bounded by `integrity_check_max_s`: past it the check
//! is abandoned (logged) and the start goes on. When the writer meets corruption at run time it
//! leaves a `journal.db.damaged` flag and exits the process (the service manager restarts it):
//! the next open salvages without checking first.
//!
//! **How rows are salvaged** (the SQLite CLI's `.recover` is not in the bundled library): every
//! table of the damaged file is created again from its stored `CREATE` statement and copied in
//! rowid order, chunk by chunk. When a read fails, the bad rowid range is skipped by probing
//! forward (exponential steps, then bisection back to the first readable rowid) and copying
//! resumes there. A row whose `metrics` or `json` column is not valid JSON is left out (the
//! loaders would choke on it). Indexes are rebuilt. Id counters continue: `sqlite_sequence` is
//! carried over and raised to the InfluxDB cursor, so new readings never reuse an id the
//! forwarder has passed; the alert `seq` is raised to every delivery cursor and salvaged alert
//! (a lost last event is re-created from the alert's row), so new alerts are never hidden behind
//! a cursor or a consumer's dedup.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tracing::{error, info, warn};

use super::config::{IntegrityCheck, SyncPolicy};
use super::store::{Store, StoreError};

/// Rows read per statement while salvaging.
const SALVAGE_CHUNK: i64 = 10_000;

/// Exit code of the process when the writer meets a damaged journal (EX_SOFTWARE would hide
/// it among bugs; 75 is EX_TEMPFAIL: restart and it will be repaired).
pub const EXIT_JOURNAL_DAMAGED: i32 = 75;

#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    pub sync: SyncPolicy,
    pub check: IntegrityCheck,
    /// Longest time the start-up check may take.
    pub check_max: Duration,
}

/// What the start-up check found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CheckOutcome {
    /// Not run (clean shutdown before, `never`, or a new file).
    #[default]
    Skipped,
    Ok,
    /// Abandoned at `integrity_check_max_s`.
    Incomplete,
    /// The first problems SQLite listed.
    Damaged(Vec<String>),
}

/// How the journal was opened.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// The previous run did not shut down cleanly (its marker file was still there).
    pub unclean: bool,
    pub check: CheckOutcome,
    pub check_ms: u64,
    /// Set when the file was damaged and a fresh one was made.
    pub recovery: Option<Recovery>,
}

/// A salvage of a damaged journal.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Why the file was judged damaged.
    pub cause: String,
    /// Where the damaged file (and its `-wal`) were kept.
    pub kept_as: PathBuf,
    pub tables: Vec<TableSalvage>,
    pub took_ms: u64,
}

impl Recovery {
    pub fn rows_salvaged(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }

    /// Rows known or estimated lost, every table (see [`TableSalvage::lost`]).
    pub fn rows_lost(&self) -> u64 {
        self.tables.iter().map(|t| t.lost).sum()
    }

    /// The salvage of one table, if the damaged file listed it.
    pub fn table(&self, name: &str) -> Option<&TableSalvage> {
        self.tables.iter().find(|t| t.table == name)
    }
}

/// What was copied of one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSalvage {
    pub table: String,
    /// Rows copied into the fresh file.
    pub rows: u64,
    /// Rowid ranges `(after, up_to]` skipped because they could not be read.
    pub skipped: Vec<(i64, i64)>,
    /// Rows left out: unreadable or invalid rows, plus the ids in skipped ranges (an upper bound
    /// for `readings`, whose ids are dense apart from retention; ranges past the last known id
    /// count up to the table's `sqlite_sequence` when it is readable).
    pub lost: u64,
    /// Nothing could be read past some point and the end of the table is unknown.
    pub tail_unreadable: bool,
}

/// The marker that exists while a journal writer runs on `path`.
pub fn marker_path(path: &Path) -> PathBuf {
    sibling(path, ".running")
}

/// The flag a writer leaves when it met a damaged file at run time.
pub fn damaged_flag_path(path: &Path) -> PathBuf {
    sibling(path, ".damaged")
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Opens the journal for writing: checks it when the policy says so, salvages it when damaged,
/// and marks it as in use until [`mark_clean`].
pub fn open(path: &Path, opts: OpenOptions, now_ms: i64) -> Result<(Store, OpenReport), StoreError> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let existed = std::fs::metadata(path).map(|m| m.len() > 0).unwrap_or(false);
    let mut report = OpenReport {
        unclean: existed && marker_path(path).exists(),
        ..OpenReport::default()
    };
    let flagged = std::fs::read_to_string(damaged_flag_path(path)).ok();
    if flagged.is_some() && !existed {
        let _ = std::fs::remove_file(damaged_flag_path(path));
    }
    let check = existed
        && match opts.check {
            IntegrityCheck::Always => true,
            IntegrityCheck::AfterCrash => report.unclean,
            IntegrityCheck::Never => false,
        };
    let damage = match flagged {
        Some(why) if existed => Some(format!("flagged at run time: {}", why.trim())),
        _ => match open_and_probe(path, opts, check, &mut report) {
            Ok(store) => {
                write_marker(path);
                return Ok((store, report));
            }
            Err(Probe::Damaged(why)) => Some(why),
            Err(Probe::Failed(e)) if e.is_corruption() => Some(e.to_string()),
            Err(Probe::Failed(e)) => return Err(e),
        },
    };
    let cause = damage.unwrap_or_default();
    error!(path = %path.display(), %cause, "journal damaged: keeping it aside and salvaging what is readable");
    let recovery = salvage(path, opts.sync, now_ms, &cause)?;
    let _ = std::fs::remove_file(damaged_flag_path(path));
    let store = Store::open(path, opts.sync)?;
    error!(
        kept_as = %recovery.kept_as.display(),
        rows_salvaged = recovery.rows_salvaged(),
        rows_lost = recovery.rows_lost(),
        took_ms = recovery.took_ms,
        "journal recovered onto a fresh file"
    );
    for t in &recovery.tables {
        if t.lost > 0 || t.tail_unreadable || !t.skipped.is_empty() {
            warn!(table = %t.table, rows = t.rows, lost = t.lost, skipped = ?t.skipped, tail_unreadable = t.tail_unreadable, "table salvaged with losses");
        }
    }
    report.recovery = Some(recovery);
    write_marker(path);
    Ok((store, report))
}

/// Counts a salvage on `/metrics` (the supervision task turns it into rule S6).
pub fn count(report: &OpenReport, telemetry: &crate::telemetry::Telemetry) {
    use std::sync::atomic::Ordering;
    if report.unclean {
        telemetry.unclean_starts.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(r) = &report.recovery {
        telemetry.journal_recoveries.fetch_add(1, Ordering::Relaxed);
        telemetry
            .journal_salvaged_rows
            .fetch_add(r.rows_salvaged(), Ordering::Relaxed);
        telemetry.journal_lost_rows.fetch_add(r.rows_lost(), Ordering::Relaxed);
    }
}

/// Removes the running marker: the next start knows this run ended cleanly.
pub fn mark_clean(path: &Path) {
    match std::fs::remove_file(marker_path(path)) {
        Ok(()) => sync_dir(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(path = %path.display(), error = %e, "journal: cannot remove the running marker"),
    }
}

/// Leaves the flag that makes the next start salvage the file.
pub fn flag_damaged(path: &Path, why: &str) {
    let flag = damaged_flag_path(path);
    let written = std::fs::File::create(&flag).and_then(|mut f| {
        f.write_all(why.as_bytes())?;
        f.sync_all()
    });
    match written {
        Ok(()) => sync_dir(path),
        Err(e) => warn!(path = %flag.display(), error = %e, "journal: cannot write the damaged flag"),
    }
}

fn write_marker(path: &Path) {
    let marker = marker_path(path);
    let written = std::fs::File::create(&marker).and_then(|mut f| {
        writeln!(f, "pid {}", std::process::id())?;
        f.sync_all()
    });
    match written {
        Ok(()) => sync_dir(path),
        Err(e) => warn!(path = %marker.display(), error = %e, "journal: cannot write the running marker"),
    }
}

/// Makes a create, rename or remove in the journal's folder durable.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

enum Probe {
    Damaged(String),
    Failed(StoreError),
}

impl From<StoreError> for Probe {
    fn from(e: StoreError) -> Self {
        Probe::Failed(e)
    }
}

impl From<rusqlite::Error> for Probe {
    fn from(e: rusqlite::Error) -> Self {
        Probe::Failed(e.into())
    }
}

/// Opens the file, runs the check if asked, and reads what the writer and the alert manager
/// read at start, so damage there is found now rather than as a failed start.
fn open_and_probe(path: &Path, opts: OpenOptions, check: bool, report: &mut OpenReport) -> Result<Store, Probe> {
    let mut store = Store::open(path, opts.sync)?;
    if check {
        let started = Instant::now();
        report.check = quick_check(store.conn_mut(), opts.check_max)?;
        report.check_ms = started.elapsed().as_millis() as u64;
        match &report.check {
            CheckOutcome::Damaged(problems) => return Err(Probe::Damaged(problems.join("; "))),
            CheckOutcome::Incomplete => {
                warn!(
                    after_ms = report.check_ms,
                    "journal check abandoned at integrity_check_max_s; starting unchecked"
                )
            }
            CheckOutcome::Ok => info!(took_ms = report.check_ms, "journal checked after an unclean shutdown"),
            CheckOutcome::Skipped => {}
        }
    }
    store.last_id()?;
    // Devices and alert state are parsed at start: a damaged row there would stop it.
    store.devices().map_err(|e| match e {
        StoreError::Json(j) => Probe::Damaged(format!("devices: {j}")),
        other => Probe::Failed(other),
    })?;
    let conn = store.conn_mut();
    for table in ["cursors", "alerts", "alert_events", "engine_state", "delivery_cursors"] {
        if table_exists(conn, table)? {
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get::<_, i64>(0))?;
        }
    }
    Ok(store)
}

/// `PRAGMA quick_check`, interrupted after `max`.
fn quick_check(conn: &mut Connection, max: Duration) -> Result<CheckOutcome, rusqlite::Error> {
    let interrupt = conn.get_interrupt_handle();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let timer = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(max) {
            interrupt.interrupt();
        }
    });
    let result = (|| {
        let mut stmt = conn.prepare("PRAGMA quick_check(20)")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<Result<Vec<String>, _>>()
    })();
    drop(done_tx);
    let _ = timer.join();
    match result {
        Ok(lines) if lines.len() == 1 && lines[0] == "ok" => Ok(CheckOutcome::Ok),
        Ok(lines) => Ok(CheckOutcome::Damaged(lines)),
        Err(e) => match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::OperationInterrupted) => Ok(CheckOutcome::Incomplete),
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                Ok(CheckOutcome::Damaged(vec![e.to_string()]))
            }
            _ => Err(e),
        },
    }
}

fn table_exists(conn: &Connection, name: &str) -> Result<bool, rusqlite::Error> {
    conn.prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
        .exists([name])
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Keeps the damaged file aside and copies what is readable into a fresh one at `path`.
fn salvage(path: &Path, sync: SyncPolicy, now_ms: i64, cause: &str) -> Result<Recovery, StoreError> {
    let started = Instant::now();
    let kept = sibling(path, &format!(".corrupt-{now_ms}"));
    // The -wal travels with the file under the matching name, so opening the kept copy still
    // sees the commits it holds.
    for suffix in ["", "-wal", "-shm"] {
        let from = sibling(path, suffix);
        if from.exists() {
            std::fs::rename(&from, sibling(&kept, suffix)).map_err(io_err(&from))?;
        }
    }
    sync_dir(path);
    let fresh = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
    })?;
    fresh.pragma_update(None, "journal_mode", "WAL")?;
    fresh.pragma_update(
        None,
        "synchronous",
        if sync == SyncPolicy::Full { "FULL" } else { "NORMAL" },
    )?;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let tables = match Connection::open_with_flags(&kept, flags) {
        Ok(old) => {
            // Attached too, read-only, so that sound ranges are copied by SQLite itself.
            let attached = fresh
                .execute("ATTACH DATABASE ?1 AS damaged", [file_uri(&kept)])
                .is_ok();
            let tables = copy_all(&old, &fresh, attached);
            if attached {
                let _ = fresh.execute_batch("DETACH DATABASE damaged");
            }
            tables
        }
        Err(e) => {
            warn!(error = %e, "damaged journal cannot be opened at all: nothing to salvage");
            Vec::new()
        }
    };
    let recovery = Recovery {
        cause: cause.to_owned(),
        kept_as: kept.clone(),
        tables,
        took_ms: started.elapsed().as_millis() as u64,
    };
    let mut text = format!(
        "journal recovered at {now_ms} (unix ms)\ncause: {cause}\nfresh file: {}\nrows salvaged: {}\nrows lost (estimate): {}\n",
        path.display(),
        recovery.rows_salvaged(),
        recovery.rows_lost()
    );
    for t in &recovery.tables {
        text.push_str(&format!(
            "table {}: {} rows copied, {} lost, skipped rowid ranges {:?}{}\n",
            t.table,
            t.rows,
            t.lost,
            t.skipped,
            if t.tail_unreadable {
                ", end of table unreadable"
            } else {
                ""
            }
        ));
    }
    if let Err(e) = std::fs::write(sibling(&kept, ".txt"), text) {
        warn!(error = %e, "cannot write the recovery report");
    }
    Ok(recovery)
}

/// A read-only `file:` URI for ATTACH.
fn file_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?mode=ro");
    uri
}

/// Copies every readable table, rebuilds the indexes and carries the id counters over.
fn copy_all(old: &Connection, fresh: &Connection, attached: bool) -> Vec<TableSalvage> {
    let schema: Vec<(String, String, Option<String>)> = match (|| {
        let mut stmt = old.prepare("SELECT type, name, sql FROM sqlite_master")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<Vec<_>, rusqlite::Error>>()
    })() {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "damaged journal: its schema is unreadable; starting empty");
            return Vec::new();
        }
    };
    let old_seqs: Vec<(String, i64)> = old
        .prepare("SELECT name, seq FROM sqlite_sequence")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for (kind, name, sql) in &schema {
        let Some(sql) = sql else { continue };
        if kind != "table" || name.starts_with("sqlite_") {
            continue;
        }
        if let Err(e) = fresh.execute_batch(sql) {
            warn!(table = %name, error = %e, "cannot recreate table; skipped");
            continue;
        }
        let bound = old_seqs.iter().find(|(n, _)| n == name).map(|(_, s)| *s);
        let t = copy_table(old, fresh, attached, name, bound);
        info!(table = %name, rows = t.rows, lost = t.lost, "table salvaged");
        out.push(t);
    }
    for (kind, name, sql) in &schema {
        if let (true, Some(sql)) = (kind == "index", sql) {
            if let Err(e) = fresh.execute_batch(sql) {
                warn!(index = %name, error = %e, "cannot rebuild index");
            }
        }
    }
    if let Err(e) = carry_counters(fresh, &old_seqs) {
        warn!(error = %e, "salvage: id counters not carried over");
    }
    out
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Copies one table in rowid order, skipping what cannot be read: chunk by chunk inside SQLite
/// (the damaged file attached as `damaged`), and row by row in a chunk where that fails.
fn copy_table(
    old: &Connection,
    fresh: &Connection,
    attached: bool,
    table: &str,
    seq_bound: Option<i64>,
) -> TableSalvage {
    let mut t = TableSalvage {
        table: table.to_owned(),
        ..TableSalvage::default()
    };
    let q = quote(table);
    let columns: Vec<String> = match fresh
        .prepare(&format!("SELECT * FROM main.{q} LIMIT 0"))
        .map(|s| s.column_names().map(str::to_owned).collect())
    {
        Ok(c) => c,
        Err(_) => return t,
    };
    let json_cols: Vec<usize> = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| *c == "metrics" || *c == "json")
        .map(|(i, _)| i)
        .collect();
    let valid: String = json_cols
        .iter()
        .map(|&i| {
            let c = quote(&columns[i]);
            format!(" AND ({c} IS NULL OR json_valid({c}))")
        })
        .collect();
    let count_sql = format!(
        "SELECT max(rowid), count(*) FROM (SELECT rowid FROM damaged.{q} WHERE rowid > ?1 ORDER BY rowid LIMIT {SALVAGE_CHUNK})"
    );
    let copy_sql = format!("INSERT INTO main.{q} SELECT * FROM damaged.{q} WHERE rowid > ?1 AND rowid <= ?2{valid}");
    let placeholders = vec!["?"; columns.len()].join(", ");
    let insert_sql = format!("INSERT INTO main.{q} VALUES ({placeholders})");
    let select_sql = format!("SELECT rowid, * FROM {q} WHERE rowid > ?1 ORDER BY rowid LIMIT {SALVAGE_CHUNK}");
    let (Ok(_), Ok(mut select)) = (fresh.prepare_cached(&insert_sql), old.prepare(&select_sql)) else {
        // WITHOUT ROWID tables (none of ours) or an unreadable definition.
        t.tail_unreadable = true;
        return t;
    };
    let mut after = i64::MIN;
    loop {
        if attached {
            let fast = (|| -> Result<Option<(i64, u64, u64)>, rusqlite::Error> {
                let (last, scanned): (Option<i64>, i64) =
                    fresh.query_row(&count_sql, [after], |r| Ok((r.get(0)?, r.get(1)?)))?;
                let Some(last) = last else { return Ok(None) };
                // One transaction per chunk: an error reading the damaged file may roll back
                // the whole transaction it happens in, so nothing copied before rides on it.
                let copied = fresh.execute(&copy_sql, [after, last])?;
                Ok(Some((last, scanned as u64, copied as u64)))
            })();
            match fast {
                Ok(None) => break,
                Ok(Some((last, scanned, copied))) => {
                    t.rows += copied;
                    t.lost += scanned.saturating_sub(copied);
                    after = last;
                    continue;
                }
                // A failed statement undoes only itself: this chunk goes row by row.
                Err(_) => {}
            }
        }
        let mut read = 0i64;
        let mut failed = false;
        let (mut copied, mut left_out) = (0u64, 0u64);
        let Ok(tx) = fresh.unchecked_transaction() else { break };
        let Ok(mut insert) = tx.prepare_cached(&insert_sql) else {
            break;
        };
        match select.query([after]) {
            Ok(mut rows) => loop {
                match rows.next() {
                    Ok(Some(row)) => {
                        read += 1;
                        let Ok(rowid) = row.get::<_, i64>(0) else {
                            failed = true;
                            break;
                        };
                        after = rowid;
                        let values: Result<Vec<SqlValue>, _> =
                            (1..=columns.len()).map(|i| row.get::<_, SqlValue>(i)).collect();
                        let valid = values.as_ref().is_ok_and(|v| {
                            json_cols.iter().all(|&i| match &v[i] {
                                SqlValue::Text(s) => serde_json::from_str::<serde_json::Value>(s).is_ok(),
                                SqlValue::Null => true,
                                _ => false,
                            })
                        });
                        match values {
                            Ok(v) if valid && insert.execute(rusqlite::params_from_iter(&v)).is_ok() => copied += 1,
                            _ => left_out += 1,
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            },
            Err(_) => failed = true,
        }
        drop(insert);
        match tx.commit() {
            Ok(()) => {
                t.rows += copied;
                t.lost += left_out;
            }
            Err(e) => {
                warn!(table, error = %e, "salvage commit failed");
                t.lost += copied + left_out;
            }
        }
        if !failed {
            if read < SALVAGE_CHUNK {
                break;
            }
            continue;
        }
        match next_readable(old, &q, after) {
            Some(resume) => {
                t.skipped.push((after, resume));
                t.lost += (resume - after.max(0)).max(0) as u64;
                after = resume;
            }
            None => {
                let end = seq_bound.unwrap_or(after).max(after);
                t.skipped.push((after, end));
                t.lost += (end - after.max(0)).max(0) as u64;
                t.tail_unreadable = seq_bound.is_none();
                break;
            }
        }
    }
    t
}

/// The smallest rowid `x > after` from which `rowid > x` can be read again, if any.
fn next_readable(old: &Connection, q: &str, after: i64) -> Option<i64> {
    // The same read as the copy's, whole row included: a point the probe accepts is one the
    // copy gets past.
    let probe_sql = format!("SELECT rowid, * FROM {q} WHERE rowid > ?1 ORDER BY rowid LIMIT 1");
    let mut probe = old.prepare(&probe_sql).ok()?;
    let columns = probe.column_count();
    let mut readable = |x: i64| {
        probe
            .query_row([x], |r| {
                for i in 0..columns {
                    r.get::<_, SqlValue>(i)?;
                }
                Ok(())
            })
            .optional()
            .is_ok()
    };
    // Exponential steps find a readable point; bisection brings it back to the first one.
    let mut bad = after;
    let mut step: i128 = 1;
    let mut good = loop {
        let x = (i128::from(after) + step).min(i128::from(i64::MAX)) as i64;
        if readable(x) {
            break x;
        }
        if x == i64::MAX {
            return None;
        }
        bad = x;
        step *= 2;
    };
    // i128: `bad` may still be i64::MIN (nothing read yet).
    while i128::from(good) - i128::from(bad) > 1 {
        let mid = (i128::from(bad) + (i128::from(good) - i128::from(bad)) / 2) as i64;
        if readable(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Some(good)
}

/// Id counters: readings continue after the last id ever given and after the InfluxDB cursor;
/// alert seqs continue after every delivery cursor and every salvaged alert.
fn carry_counters(fresh: &Connection, old_seqs: &[(String, i64)]) -> Result<(), rusqlite::Error> {
    let raise = |name: &str, seq: i64| -> Result<(), rusqlite::Error> {
        if !table_exists(fresh, name)? {
            return Ok(());
        }
        let n = fresh.execute(
            "UPDATE sqlite_sequence SET seq = max(seq, ?2) WHERE name = ?1",
            params![name, seq],
        )?;
        if n == 0 {
            fresh.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES (?1, ?2)",
                params![name, seq],
            )?;
        }
        Ok(())
    };
    for (name, seq) in old_seqs {
        if let Err(e) = raise(name, *seq) {
            warn!(table = %name, error = %e, "cannot carry the id counter over");
        }
    }
    if table_exists(fresh, "cursors")? {
        let cursor: Option<i64> = fresh.query_row("SELECT max(position) FROM cursors", [], |r| r.get(0))?;
        if let Some(c) = cursor {
            raise("readings", c)?;
        }
    }
    if table_exists(fresh, "alerts")? && table_exists(fresh, "alert_events")? {
        restore_alert_seq(fresh)?;
    }
    Ok(())
}

/// The alert manager takes `MAX(alert_events.seq) + 1` as its next seq and the delivery
/// channels send only what is past their cursor: a lost tail of `alert_events` would make new
/// alerts reuse seqs (and `a-<seq>` ids) that were delivered or are still in `alerts`.
fn restore_alert_seq(fresh: &Connection) -> Result<(), rusqlite::Error> {
    // An alert's row is its latest version: its event is re-created when the event was lost,
    // and an alert whose row was lost gets it back from its latest event.
    let recreated = fresh.execute(
        "INSERT OR IGNORE INTO alert_events (seq, alert_id, at, json)
         SELECT json_extract(json, '$.seq'), id, updated_at, json FROM alerts
         WHERE json_valid(json) AND json_extract(json, '$.seq') > (SELECT coalesce(max(seq), 0) FROM alert_events)",
        [],
    )?;
    let restored = fresh.execute(
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
    let floor: Option<i64> = if table_exists(fresh, "delivery_cursors")? {
        fresh.query_row("SELECT max(seq) FROM delivery_cursors", [], |r| r.get(0))?
    } else {
        None
    };
    let last: i64 = fresh.query_row("SELECT coalesce(max(seq), 0) FROM alert_events", [], |r| r.get(0))?;
    let Some(floor) = floor.filter(|f| *f > last) else {
        return Ok(());
    };
    // Every channel already delivered up to `floor`: publish the most recent alert again under
    // that seq (a repeat of its current state, as any change is), so the next seq is above it.
    let latest: Option<(String, i64)> = fresh
        .query_row(
            "SELECT id, updated_at FROM alerts WHERE json_valid(json)
             ORDER BY json_extract(json, '$.seq') DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match latest {
        Some((id, at)) => {
            fresh.execute(
                "UPDATE alerts SET json = json_set(json, '$.seq', ?2) WHERE id = ?1",
                params![id, floor],
            )?;
            fresh.execute(
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
    use std::io::{BufRead as _, Seek as _};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn temp_db(label: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nh-recovery-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir.join("journal.db")
    }

    fn opts(check: IntegrityCheck) -> OpenOptions {
        OpenOptions {
            sync: SyncPolicy::Full,
            check,
            check_max: Duration::from_secs(30),
        }
    }

    const INSERT: &str = "INSERT INTO readings (device, class, building, floor, room, zone, ts, ts_recv, ts_replaced, seq, metrics, life_safety)
         VALUES ('d-' || (?1 % 7), 'wearable', 'A', '1', 'A-101', '', ?1, ?1, 0, ?1, json_object('heart_rate', ?1 % 90, 'note', 'padding padding padding padding'), 0)";

    /// Inserts readings with seq = ts = their index, in one transaction.
    fn fill(store: &mut Store, from: i64, to: i64) {
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
    fn readings(store: &mut Store) -> Vec<(i64, i64)> {
        let conn = store.conn_mut();
        let mut stmt = conn
            .prepare("SELECT id, seq FROM readings ORDER BY id")
            .expect("prepare");
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).expect("query");
        rows.collect::<Result<_, _>>().expect("rows")
    }

    fn next_id(store: &mut Store) -> i64 {
        fill_one(store);
        store.last_id().expect("last")
    }

    fn fill_one(store: &mut Store) {
        store.conn_mut().execute(INSERT, [0]).expect("insert");
    }

    #[test]
    fn a_torn_wal_tail_keeps_every_commit_before_the_damage() {
        let path = temp_db("torn-wal");
        let mut store = Store::open(&path, SyncPolicy::Full).expect("open");
        store
            .conn_mut()
            .pragma_update(None, "wal_autocheckpoint", 0)
            .expect("no checkpoint");
        let wal = sibling(&path, "-wal");
        // 40 transactions of one reading each; the WAL's length after each.
        let mut wal_len = Vec::new();
        for i in 1..=40 {
            fill(&mut store, i, i);
            wal_len.push(std::fs::metadata(&wal).expect("wal").len());
        }
        // The files as a crash leaves them: copied while the connection is open.
        let crashed = temp_db("torn-wal-copy");
        std::fs::copy(&path, &crashed).expect("copy db");
        let crashed_wal = sibling(&crashed, "-wal");
        std::fs::copy(&wal, &crashed_wal).expect("copy wal");
        drop(store);
        // Cut the WAL inside the first frame of transaction 26 and append garbage.
        let mut f = std::fs::OpenOptions::new().write(true).open(&crashed_wal).expect("wal");
        f.set_len(wal_len[24] + 100).expect("truncate");
        f.seek(std::io::SeekFrom::End(0)).expect("seek");
        f.write_all(&[0xA5; 3000]).expect("garbage");
        f.write_all(b"not a frame at all").expect("garbage");
        drop(f);

        let (mut store, report) = open(&crashed, opts(IntegrityCheck::Always), 1).expect("open");
        assert_eq!(report.check, CheckOutcome::Ok, "a torn WAL tail is not damage");
        assert!(report.recovery.is_none());
        let rows = readings(&mut store);
        assert_eq!(
            rows,
            (1..=25).map(|i| (i, i)).collect::<Vec<_>>(),
            "every commit before the cut"
        );
        assert_eq!(next_id(&mut store), 26, "ids continue after the last commit kept");
    }

    /// A journal of `n` readings, the alert tables with a few rows, and an InfluxDB cursor,
    /// checkpointed into the main file and closed.
    fn journal_with_alerts(path: &Path, n: i64, cursor: i64) {
        let mut store = Store::open(path, SyncPolicy::Full).expect("open");
        fill(&mut store, 1, n);
        store.set_cursor("influx", cursor).expect("cursor");
        drop(crate::alerts::store::AlertStore::open(path).expect("alert tables"));
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

    /// Overwrites page `pageno` (1-based) of the file with garbage.
    fn smash_page(path: &Path, pageno: i64) {
        let mut f = std::fs::OpenOptions::new().write(true).open(path).expect("db");
        f.seek(std::io::SeekFrom::Start(((pageno - 1) * 4096) as u64))
            .expect("seek");
        f.write_all(&[0x5A; 4096]).expect("smash");
        f.sync_all().expect("sync");
    }

    /// Leaf pages of the readings table, in key order.
    fn readings_leaves(path: &Path) -> Vec<i64> {
        let conn = Connection::open(path).expect("open");
        let mut stmt = conn
            .prepare("SELECT pageno FROM dbstat WHERE name = 'readings' AND pagetype = 'leaf' ORDER BY path")
            .expect("dbstat");
        let rows = stmt.query_map([], |r| r.get(0)).expect("query");
        rows.collect::<Result<_, _>>().expect("pages")
    }

    fn count(store: &mut Store, table: &str) -> i64 {
        store
            .conn_mut()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .expect("count")
    }

    #[test]
    fn a_damaged_page_after_a_crash_is_salvaged_reported_and_the_start_goes_on() {
        let path = temp_db("smashed");
        journal_with_alerts(&path, 20_000, 15_000);
        let leaves = readings_leaves(&path);
        assert!(leaves.len() > 100, "{} leaves", leaves.len());
        smash_page(&path, leaves[leaves.len() / 2]);
        // The previous run was killed: its marker is still there.
        std::fs::write(marker_path(&path), "pid 1").expect("marker");

        let (mut store, report) = open(&path, opts(IntegrityCheck::AfterCrash), 1_700_000_000_000).expect("start");
        assert!(report.unclean);
        assert!(matches!(report.check, CheckOutcome::Damaged(_)), "{:?}", report.check);
        let recovery = report.recovery.as_ref().expect("recovered");
        let readings_salvage = recovery.table("readings").expect("readings");
        let lost = readings_salvage.lost;
        assert!(
            lost > 0 && lost < 200,
            "one page of rows lost, not more: {readings_salvage:?}"
        );
        assert_eq!(readings_salvage.rows + lost, 20_000);
        assert_eq!(readings_salvage.skipped.len(), 1);
        let (after, up_to) = readings_salvage.skipped[0];
        let rows = readings(&mut store);
        assert_eq!(rows.len() as u64, readings_salvage.rows);
        let expected: Vec<(i64, i64)> = (1..=20_000)
            .filter(|i| *i <= after || *i > up_to)
            .map(|i| (i, i))
            .collect();
        assert_eq!(rows, expected, "every row outside the damaged range, intact");
        // Everything else came across.
        assert_eq!(store.cursor("influx").expect("cursor"), 15_000);
        for (table, n) in [
            ("alerts", 2),
            ("alert_audit", 1),
            ("alert_events", 3),
            ("engine_state", 1),
            ("delivery_cursors", 1),
            ("devices", 0),
        ] {
            assert_eq!(count(&mut store, table), n, "{table}");
        }
        assert_eq!(next_id(&mut store), 20_001, "ids continue after the last id ever given");
        // The damaged file is kept, with a report beside it; the fresh one is sound.
        assert_eq!(recovery.kept_as, sibling(&path, ".corrupt-1700000000000"));
        assert!(recovery.kept_as.exists());
        let text = std::fs::read_to_string(sibling(&recovery.kept_as, ".txt")).expect("report");
        assert!(text.contains("table readings"), "{text}");
        assert_eq!(
            quick_check(store.conn_mut(), Duration::from_secs(10)).expect("check"),
            CheckOutcome::Ok
        );
        let telemetry = crate::telemetry::Telemetry::default();
        count_report(&report, &telemetry);
        assert_eq!(telemetry.journal_recoveries.load(Ordering::Relaxed), 1);
        assert_eq!(
            telemetry.journal_lost_rows.load(Ordering::Relaxed),
            recovery.rows_lost()
        );
    }

    fn count_report(report: &OpenReport, telemetry: &crate::telemetry::Telemetry) {
        super::count(report, telemetry);
    }

    #[test]
    fn a_damaged_page_after_a_clean_shutdown_is_found_when_a_start_up_read_meets_it() {
        let path = temp_db("smashed-devices");
        journal_with_alerts(&path, 2_000, 0);
        // The alert table's root page: read at every start.
        let conn = Connection::open(&path).expect("open");
        let root: i64 = conn
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'alert_events'",
                [],
                |r| r.get(0),
            )
            .expect("root");
        drop(conn);
        smash_page(&path, root);
        let (mut store, report) = open(&path, opts(IntegrityCheck::AfterCrash), 5).expect("start");
        assert!(!report.unclean);
        assert_eq!(report.check, CheckOutcome::Skipped);
        let recovery = report.recovery.expect("recovered");
        assert_eq!(recovery.table("readings").map(|t| (t.rows, t.lost)), Some((2_000, 0)));
        assert_eq!(
            count(&mut store, "alert_events"),
            2,
            "events re-created from the alert rows"
        );
        let max_seq: i64 = store
            .conn_mut()
            .query_row("SELECT max(seq) FROM alert_events", [], |r| r.get(0))
            .expect("seq");
        assert_eq!(max_seq, 3, "the next alert seq is past the delivery cursor");
    }

    #[test]
    fn garbage_instead_of_a_database_starts_on_a_fresh_journal() {
        let path = temp_db("garbage");
        std::fs::write(&path, b"this is not a database ".repeat(500)).expect("garbage");
        let (mut store, report) = open(&path, opts(IntegrityCheck::Never), 7).expect("start");
        let recovery = report.recovery.expect("recovered");
        assert!(recovery.tables.is_empty());
        assert!(recovery.cause.contains("not a database"), "{}", recovery.cause);
        assert_eq!(next_id(&mut store), 1);
    }

    #[test]
    fn a_damage_flag_left_at_run_time_salvages_at_the_next_start() {
        let path = temp_db("flagged");
        journal_with_alerts(&path, 100, 0);
        flag_damaged(&path, "database disk image is malformed");
        let (mut store, report) = open(&path, opts(IntegrityCheck::Never), 9).expect("start");
        let recovery = report.recovery.expect("recovered");
        assert!(recovery.cause.contains("malformed"));
        assert_eq!(recovery.table("readings").map(|t| t.rows), Some(100));
        assert!(!damaged_flag_path(&path).exists());
        assert_eq!(next_id(&mut store), 101);
    }

    #[test]
    fn the_check_runs_after_an_unclean_shutdown_only_and_gives_up_at_its_limit() {
        let path = temp_db("policy");
        let (mut store, report) = open(&path, opts(IntegrityCheck::AfterCrash), 1).expect("new");
        assert_eq!((report.unclean, report.check), (false, CheckOutcome::Skipped));
        fill(&mut store, 1, 200_000);
        drop(store);
        // Still marked: as after a kill.
        let (store, report) = open(&path, opts(IntegrityCheck::AfterCrash), 2).expect("after crash");
        assert_eq!((report.unclean, report.check.clone()), (true, CheckOutcome::Ok));
        eprintln!(
            "quick_check of {} bytes: {} ms",
            store.size_bytes().expect("size"),
            report.check_ms
        );
        drop(store);
        mark_clean(&path);
        let (store, report) = open(&path, opts(IntegrityCheck::AfterCrash), 3).expect("after clean");
        assert_eq!((report.unclean, report.check), (false, CheckOutcome::Skipped));
        drop(store);
        let (store, report) = open(&path, opts(IntegrityCheck::Always), 4).expect("always");
        assert_eq!(report.check, CheckOutcome::Ok);
        drop(store);
        let mut hurried = opts(IntegrityCheck::Always);
        hurried.check_max = Duration::ZERO;
        let (_store, report) = open(&path, hurried, 5).expect("hurried");
        assert_eq!(
            report.check,
            CheckOutcome::Incomplete,
            "abandoned, and the start goes on"
        );
    }

    #[test]
    fn lost_alert_events_are_recreated_and_seqs_never_fall_behind_a_delivery_cursor() {
        let path = temp_db("alert-seq");
        journal_with_alerts(&path, 1, 0);
        let conn = Connection::open(&path).expect("open");
        // The tail of the event log lost, and a channel that had delivered up to 7.
        conn.execute_batch(
            "DELETE FROM alert_events WHERE seq >= 2;
             INSERT INTO delivery_cursors VALUES ('webhook:0', 7);",
        )
        .expect("damage");
        restore_alert_seq(&conn).expect("restore");
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

    /// Start-up costs on a large journal. Damages the file it is given: run it on a scratch copy.
    /// `NH_JOURNAL_MEASURE=/tmp/big.db cargo test -p nh-gateway --lib --release -- --ignored
    /// measure_open_check_and_salvage --nocapture`
    #[test]
    #[ignore = "needs a large scratch journal in NH_JOURNAL_MEASURE"]
    fn measure_open_check_and_salvage() {
        let Some(path) = std::env::var_os("NH_JOURNAL_MEASURE").map(PathBuf::from) else {
            return;
        };
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let t = Instant::now();
        let (store, report) = open(&path, opts(IntegrityCheck::Never), 1).expect("open");
        eprintln!(
            "{size} bytes: open without check {} ms (last id {})",
            t.elapsed().as_millis(),
            store.last_id().expect("last")
        );
        drop(store);
        assert!(report.recovery.is_none());
        let mut slow = opts(IntegrityCheck::Always);
        slow.check_max = Duration::from_secs(600);
        let t = Instant::now();
        let (store, report) = open(&path, slow, 2).expect("open");
        eprintln!(
            "open with quick_check {} ms ({:?})",
            t.elapsed().as_millis(),
            report.check
        );
        drop(store);
        let leaves = readings_leaves(&path);
        smash_page(&path, leaves[leaves.len() / 2]);
        let t = Instant::now();
        let (_store, report) = open(&path, slow, 3).expect("open");
        let r = report.recovery.expect("recovered");
        eprintln!(
            "open with quick_check finding a damaged page and salvaging: {} ms (salvage {} ms), {} rows salvaged, {} lost, {:?}",
            t.elapsed().as_millis(),
            r.took_ms,
            r.rows_salvaged(),
            r.rows_lost(),
            r.table("readings").map(|t| &t.skipped)
        );
    }

    const CHILD_ENV: &str = "NH_JOURNAL_SIGKILL_CHILD";

    /// Not a test of its own: the child process of
    /// `sigkill_mid_commit_loop_keeps_every_acknowledged_row` (returns at once otherwise).
    #[test]
    fn sigkill_child_commit_loop() {
        let Some(path) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let path = PathBuf::from(path);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            use crate::journal::{spawn_writer, writer::WriterConfig, Ack, Ingest, Record};
            let (store, _) = open(&path, opts(IntegrityCheck::AfterCrash), 1).expect("open");
            let cfg = WriterConfig {
                commit_max_messages: 500,
                retention_ms: i64::MAX / 2,
                disk_budget_bytes: u64::MAX,
                guard_cursor: None,
                clock: crate::clock::Clock::system(),
                observer: None,
                observer_priority: None,
                exit_on_corruption: false,
                bulk_linger: std::time::Duration::ZERO,
                bulk_linger_gap: std::time::Duration::ZERO,
                bulk_linger_messages: 1,
            };
            let w =
                spawn_writer(store, cfg, std::sync::Arc::new(crate::telemetry::Telemetry::default())).expect("writer");
            let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
            let (bulk, priority) = (w.tx.clone(), w.tx_priority.clone());
            tokio::spawn(async move {
                for seq in 1u64.. {
                    let record = Record {
                        device: "d".into(),
                        class: "wearable".into(),
                        building: String::new(),
                        floor: String::new(),
                        room: String::new(),
                        zone: String::new(),
                        ts: seq as i64,
                        ts_recv: seq as i64,
                        ts_replaced: false,
                        seq: Some(seq),
                        metrics: std::collections::BTreeMap::from([(
                            "heart_rate".to_owned(),
                            crate::reading::Value::Num((seq % 100) as f64),
                        )]),
                    };
                    let acked = acked_tx.clone();
                    let ingest = Ingest {
                        records: vec![record],
                        ack: Some(Ack::new(move || {
                            let _ = acked.send(seq);
                        })),
                    };
                    let lane = if seq % 100 == 0 { &priority } else { &bulk };
                    if lane.send(ingest).await.is_err() {
                        return;
                    }
                }
            });
            let mut out = std::io::stdout();
            while let Some(seq) = acked_rx.recv().await {
                let _ = writeln!(out, "acked {seq}");
                let _ = out.flush();
            }
        });
    }

    #[test]
    fn sigkill_mid_commit_loop_keeps_every_acknowledged_row() {
        let path = temp_db("sigkill");
        let exe = std::env::current_exe().expect("test binary");
        let mut child = std::process::Command::new(exe)
            .args([
                "--exact",
                "journal::recovery::tests::sigkill_child_commit_loop",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(seq) = line.strip_prefix("acked ").and_then(|s| s.parse().ok()) {
                    if tx.send(seq).is_err() {
                        break;
                    }
                }
            }
        });
        let mut acked = Vec::new();
        while acked.len() < 20_000 {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(seq) => acked.push(seq),
                Err(e) => {
                    let _ = child.kill();
                    panic!("child stopped acknowledging after {}: {e}", acked.len());
                }
            }
        }
        // SIGKILL in the middle of the commit loop.
        child.kill().expect("kill -9");
        let _ = child.wait();
        acked.extend(rx.try_iter());
        let _ = reader.join();

        let (mut store, report) = open(&path, opts(IntegrityCheck::AfterCrash), 2).expect("reopen");
        assert!(report.unclean, "killed: the marker stayed");
        assert_eq!(report.check, CheckOutcome::Ok);
        assert!(report.recovery.is_none());
        let rows = readings(&mut store);
        let last = rows.last().map_or(0, |r| r.0);
        assert_eq!(
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            (1..=last).collect::<Vec<_>>(),
            "ids dense: no half transaction"
        );
        let seqs: std::collections::HashSet<i64> = rows.iter().map(|r| r.1).collect();
        let missing: Vec<u64> = acked.iter().copied().filter(|s| !seqs.contains(&(*s as i64))).collect();
        assert!(missing.is_empty(), "acknowledged but not in the journal: {missing:?}");
        eprintln!(
            "SIGKILL after {} acks: {} rows in the journal ({} committed but not yet acknowledged)",
            acked.len(),
            rows.len(),
            rows.len() - acked.len()
        );
        assert_eq!(next_id(&mut store), last + 1, "ids continue");
    }
}
