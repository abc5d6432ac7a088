//! Salvaging a damaged journal: the damaged file is kept aside and what is still readable is
//! copied into a fresh file at the same path.
//!
//! **How rows are salvaged** (the SQLite CLI's `.recover` is not in the bundled library): every
//! table of the damaged file is created again from its stored `CREATE` statement and copied in
//! rowid order, chunk by chunk. When a read fails, the bad rowid range is skipped by probing
//! forward (exponential steps, then bisection back to the first readable rowid) and copying
//! resumes there. A row whose `metrics` or `json` column is not valid JSON is left out (the
//! loaders would choke on it). Indexes are rebuilt. Id counters continue: `sqlite_sequence` is
//! carried over and raised to the InfluxDB cursor, so new readings never reuse an id the
//! forwarder has passed. Then the owner of every hosted table repairs what must hold between
//! its tables ([`super::recovery::HostedTables::repair`]): the alert store raises the alert
//! `seq` to every delivery cursor and salvaged alert (a lost last event is re-created from the
//! alert's row), so new alerts are never hidden behind a cursor or a consumer's dedup.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Statement};
use tracing::{info, warn};

use super::config::SyncPolicy;
use super::recovery::{sibling, sync_dir, table_exists, HostedTables};
use super::store::StoreError;

/// Rows read per statement while salvaging.
const SALVAGE_CHUNK: i64 = 10_000;

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

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Keeps the damaged file aside and copies what is readable into a fresh one at `path`; the
/// hosted tables' repairs run on the fresh file.
pub(super) fn salvage(
    path: &Path,
    sync: SyncPolicy,
    now_ms: i64,
    cause: &str,
    hosted: &[HostedTables],
) -> Result<Recovery, StoreError> {
    let started = Instant::now();
    let kept = sibling(path, &format!(".corrupt-{now_ms}"));
    keep_aside(path, &kept)?;
    let fresh = open_fresh(path, sync)?;
    let tables = copy_readable(&kept, &fresh, hosted);
    let recovery = Recovery {
        cause: cause.to_owned(),
        kept_as: kept.clone(),
        tables,
        took_ms: started.elapsed().as_millis() as u64,
    };
    write_report(path, &kept, now_ms, &recovery);
    Ok(recovery)
}

/// Moves the damaged file to `kept`. The -wal travels with the file under the matching name,
/// so opening the kept copy still sees the commits it holds.
fn keep_aside(path: &Path, kept: &Path) -> Result<(), StoreError> {
    for suffix in ["", "-wal", "-shm"] {
        let from = sibling(path, suffix);
        if from.exists() {
            std::fs::rename(&from, sibling(kept, suffix)).map_err(io_err(&from))?;
        }
    }
    sync_dir(path);
    Ok(())
}

/// A new, empty database at `path`, in WAL mode with the journal's sync policy.
fn open_fresh(path: &Path, sync: SyncPolicy) -> Result<Connection, StoreError> {
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
    Ok(fresh)
}

/// Copies what can be read of the damaged file at `kept` into `fresh` (nothing when it cannot
/// be opened at all).
fn copy_readable(kept: &Path, fresh: &Connection, hosted: &[HostedTables]) -> Vec<TableSalvage> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    match Connection::open_with_flags(kept, flags) {
        Ok(old) => {
            // Attached too, read-only, so that sound ranges are copied by SQLite itself.
            let attached = fresh.execute("ATTACH DATABASE ?1 AS damaged", [file_uri(kept)]).is_ok();
            let tables = copy_all(&old, fresh, attached, hosted);
            if attached {
                let _ = fresh.execute_batch("DETACH DATABASE damaged");
            }
            tables
        }
        Err(e) => {
            warn!(error = %e, "damaged journal cannot be opened at all: nothing to salvage");
            Vec::new()
        }
    }
}

/// Writes the `.corrupt-<ms>.txt` report beside the kept file.
fn write_report(path: &Path, kept: &Path, now_ms: i64, recovery: &Recovery) {
    let mut text = format!(
        "journal recovered at {now_ms} (unix ms)\ncause: {}\nfresh file: {}\nrows salvaged: {}\nrows lost (estimate): {}\n",
        recovery.cause,
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
    if let Err(e) = std::fs::write(sibling(kept, ".txt"), text) {
        warn!(error = %e, "cannot write the recovery report");
    }
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

/// Copies every readable table, rebuilds the indexes, carries the id counters over and runs
/// the hosted tables' repairs.
fn copy_all(old: &Connection, fresh: &Connection, attached: bool, hosted: &[HostedTables]) -> Vec<TableSalvage> {
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
    if let Err(e) = carry_counters(fresh, &old_seqs).and_then(|()| repair_hosted(fresh, hosted)) {
        warn!(error = %e, "salvage: id counters not carried over");
    }
    out
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// How one table is copied: its statements, and which of its columns must hold JSON.
struct CopyPlan {
    /// The table's name, quoted for SQL.
    quoted: String,
    /// Number of columns, as the fresh file defines the table.
    width: usize,
    /// Positions of the `metrics` and `json` columns.
    json_cols: Vec<usize>,
    /// The last rowid and the number of rows of the next chunk in the damaged file.
    count_sql: String,
    /// Copies a rowid range inside SQLite, rows with invalid JSON left out.
    copy_sql: String,
    /// Inserts one row into the fresh file.
    insert_sql: String,
    /// Reads the next chunk from the damaged file, rowid first.
    select_sql: String,
}

impl CopyPlan {
    /// The plan for `table`, or None when its columns cannot be listed in the fresh file.
    fn of(fresh: &Connection, table: &str) -> Option<CopyPlan> {
        let q = quote(table);
        let columns: Vec<String> = fresh
            .prepare(&format!("SELECT * FROM main.{q} LIMIT 0"))
            .map(|s| s.column_names().map(str::to_owned).collect::<Vec<String>>())
            .ok()?;
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
        let placeholders = vec!["?"; columns.len()].join(", ");
        Some(CopyPlan {
            count_sql: format!(
                "SELECT max(rowid), count(*) FROM (SELECT rowid FROM damaged.{q} WHERE rowid > ?1 ORDER BY rowid LIMIT {SALVAGE_CHUNK})"
            ),
            copy_sql: format!("INSERT INTO main.{q} SELECT * FROM damaged.{q} WHERE rowid > ?1 AND rowid <= ?2{valid}"),
            insert_sql: format!("INSERT INTO main.{q} VALUES ({placeholders})"),
            select_sql: format!("SELECT rowid, * FROM {q} WHERE rowid > ?1 ORDER BY rowid LIMIT {SALVAGE_CHUNK}"),
            quoted: q,
            width: columns.len(),
            json_cols,
        })
    }

    /// The values of a row read with `select_sql`, when all are readable and every JSON column
    /// holds JSON (or NULL).
    fn valid_values(&self, row: &rusqlite::Row<'_>) -> Option<Vec<SqlValue>> {
        let values: Vec<SqlValue> = (1..=self.width)
            .map(|i| row.get::<_, SqlValue>(i))
            .collect::<Result<Vec<SqlValue>, _>>()
            .ok()?;
        let valid = self.json_cols.iter().all(|&i| match &values[i] {
            SqlValue::Text(s) => serde_json::from_str::<serde_json::Value>(s).is_ok(),
            SqlValue::Null => true,
            _ => false,
        });
        valid.then_some(values)
    }
}

/// A chunk copied inside SQLite: its last rowid, the rows it held and the rows copied.
struct FastChunk {
    last: i64,
    scanned: u64,
    copied: u64,
}

/// How a chunk copied row by row ended.
struct SlowChunk {
    /// Rows read, good or not.
    read: i64,
    /// A read failed: what follows `after` is damaged.
    failed: bool,
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
    let Some(plan) = CopyPlan::of(fresh, table) else {
        return t;
    };
    let (Ok(_), Ok(mut select)) = (fresh.prepare_cached(&plan.insert_sql), old.prepare(&plan.select_sql)) else {
        // WITHOUT ROWID tables (none of ours) or an unreadable definition.
        t.tail_unreadable = true;
        return t;
    };
    let mut after = i64::MIN;
    loop {
        if attached {
            match copy_chunk_in_sqlite(fresh, &plan, after) {
                Ok(None) => break,
                Ok(Some(chunk)) => {
                    t.rows += chunk.copied;
                    t.lost += chunk.scanned.saturating_sub(chunk.copied);
                    after = chunk.last;
                    continue;
                }
                // A failed statement undoes only itself: this chunk goes row by row.
                Err(_) => {}
            }
        }
        let Some(chunk) = copy_chunk_row_by_row(fresh, &mut select, &plan, &mut after, &mut t) else {
            break;
        };
        if !chunk.failed {
            if chunk.read < SALVAGE_CHUNK {
                break;
            }
            continue;
        }
        if !skip_unreadable(old, &plan.quoted, &mut after, seq_bound, &mut t) {
            break;
        }
    }
    t
}

/// Copies the chunk after `after` with one statement inside SQLite; None at the end of the table.
fn copy_chunk_in_sqlite(fresh: &Connection, plan: &CopyPlan, after: i64) -> Result<Option<FastChunk>, rusqlite::Error> {
    let (last, scanned): (Option<i64>, i64) =
        fresh.query_row(&plan.count_sql, [after], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let Some(last) = last else { return Ok(None) };
    // One transaction per chunk: an error reading the damaged file may roll back the whole
    // transaction it happens in, so nothing copied before rides on it.
    let copied = fresh.execute(&plan.copy_sql, [after, last])?;
    Ok(Some(FastChunk {
        last,
        scanned: scanned as u64,
        copied: copied as u64,
    }))
}

/// Copies the chunk after `*after` row by row in a transaction of its own, moving `*after` past
/// every row read and counting into `t` what was copied and what was left out. None when no
/// transaction could be started.
fn copy_chunk_row_by_row(
    fresh: &Connection,
    select: &mut Statement<'_>,
    plan: &CopyPlan,
    after: &mut i64,
    t: &mut TableSalvage,
) -> Option<SlowChunk> {
    let mut chunk = SlowChunk { read: 0, failed: false };
    let (mut copied, mut left_out) = (0u64, 0u64);
    let tx = fresh.unchecked_transaction().ok()?;
    let mut insert = tx.prepare_cached(&plan.insert_sql).ok()?;
    match select.query([*after]) {
        Ok(mut rows) => loop {
            match rows.next() {
                Ok(Some(row)) => {
                    chunk.read += 1;
                    let Ok(rowid) = row.get::<_, i64>(0) else {
                        chunk.failed = true;
                        break;
                    };
                    *after = rowid;
                    match plan.valid_values(row) {
                        Some(v) if insert.execute(rusqlite::params_from_iter(&v)).is_ok() => copied += 1,
                        _ => left_out += 1,
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    chunk.failed = true;
                    break;
                }
            }
        },
        Err(_) => chunk.failed = true,
    }
    drop(insert);
    match tx.commit() {
        Ok(()) => {
            t.rows += copied;
            t.lost += left_out;
        }
        Err(e) => {
            warn!(table = t.table.as_str(), error = %e, "salvage commit failed");
            t.lost += copied + left_out;
        }
    }
    Some(chunk)
}

/// Skips the unreadable range after `*after`: records it in `t` and moves `*after` to where
/// reading resumes. False when nothing past it can be read (the range then runs to the
/// table's id counter, when known).
fn skip_unreadable(old: &Connection, q: &str, after: &mut i64, seq_bound: Option<i64>, t: &mut TableSalvage) -> bool {
    let from = *after;
    match next_readable(old, q, from) {
        Some(resume) => {
            t.skipped.push((from, resume));
            t.lost += (resume - from.max(0)).max(0) as u64;
            *after = resume;
            true
        }
        None => {
            let end = seq_bound.unwrap_or(from).max(from);
            t.skipped.push((from, end));
            t.lost += (end - from.max(0)).max(0) as u64;
            t.tail_unreadable = seq_bound.is_none();
            false
        }
    }
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

/// Id counters: every table's continues after the last id it ever gave, and readings after the
/// InfluxDB cursor too (the alert seqs are the alert store's repair).
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
    Ok(())
}

/// Runs the repair of every hosted table set on the fresh file, in order.
fn repair_hosted(fresh: &Connection, hosted: &[HostedTables]) -> Result<(), rusqlite::Error> {
    for h in hosted {
        (h.repair)(fresh)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::journal::recovery::{count as count_on_metrics, marker_path, open, quick_check, CheckOutcome};
    use crate::journal::test_support::{
        count, journal_with_hosted_tables, next_id, opts, opts_hosting, readings, readings_leaves, root_page,
        smash_page, temp_db, IntegrityCheck, HOSTED_ROWS,
    };

    #[test]
    fn a_damaged_page_after_a_crash_is_salvaged_reported_and_the_start_goes_on() {
        let (_dir, path) = temp_db("smashed");
        journal_with_hosted_tables(&path, 20_000, 15_000);
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
        assert_eq!(count(&mut store, "devices"), 0);
        for (table, n) in HOSTED_ROWS {
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
        count_on_metrics(&report, &telemetry);
        assert_eq!(telemetry.journal_recoveries.load(Ordering::Relaxed), 1);
        assert_eq!(
            telemetry.journal_lost_rows.load(Ordering::Relaxed),
            recovery.rows_lost()
        );
    }

    /// Stands in for another module's repair: marks that it ran on the fresh file.
    fn mark_repaired(conn: &Connection) -> Result<(), rusqlite::Error> {
        conn.execute("INSERT INTO hosted_state VALUES ('repaired', '{}')", [])?;
        Ok(())
    }

    /// Another module's tables, as the journal's tests stand them in.
    const HOSTED: HostedTables = HostedTables {
        read_at_start: &["hosted_log", "hosted_state"],
        repair: mark_repaired,
    };

    #[test]
    fn a_damaged_page_after_a_clean_shutdown_is_found_when_a_start_up_read_meets_it() {
        let (_dir, path) = temp_db("smashed-hosted");
        journal_with_hosted_tables(&path, 2_000, 0);
        // A hosted table's root page: read at every start.
        smash_page(&path, root_page(&path, "hosted_log"));
        let (mut store, report) = open(&path, opts_hosting(&[HOSTED]), 5).expect("start");
        assert!(!report.unclean);
        assert_eq!(report.check, CheckOutcome::Skipped);
        let recovery = report.recovery.expect("recovered");
        assert_eq!(recovery.table("readings").map(|t| (t.rows, t.lost)), Some((2_000, 0)));
        let repaired: i64 = store
            .conn_mut()
            .query_row("SELECT count(*) FROM hosted_state WHERE name = 'repaired'", [], |r| {
                r.get(0)
            })
            .expect("repaired");
        assert_eq!(repaired, 1, "the owner's repair ran on the fresh file");
    }

    #[test]
    fn garbage_instead_of_a_database_starts_on_a_fresh_journal() {
        let (_dir, path) = temp_db("garbage");
        std::fs::write(&path, b"this is not a database ".repeat(500)).expect("garbage");
        let (mut store, report) = open(&path, opts(IntegrityCheck::Never), 7).expect("start");
        let recovery = report.recovery.expect("recovered");
        assert!(recovery.tables.is_empty());
        assert!(recovery.cause.contains("not a database"), "{}", recovery.cause);
        assert_eq!(next_id(&mut store), 1);
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
}
