//! Opening the journal whatever ended the previous run: the start-up check, and the hand-over
//! of a damaged file to [`super::salvage`].
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
//! **Tables of other modules.** The alert tables live in the same file. The journal knows
//! nothing of their meaning: their owner hands it, as [`HostedTables`] in [`OpenOptions`], the
//! tables to read at start and a repair to run on the fresh file after a salvage (see
//! [`super::salvage`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tracing::{error, info, warn};

use super::config::{IntegrityCheck, SyncPolicy};
use super::salvage::salvage;
use super::store::{Store, StoreError};

pub use super::salvage::{Recovery, TableSalvage};

/// Exit code of the process when the writer meets a damaged journal (EX_SOFTWARE would hide
/// it among bugs; 75 is EX_TEMPFAIL: restart and it will be repaired).
pub const EXIT_JOURNAL_DAMAGED: i32 = 75;

#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    pub sync: SyncPolicy,
    pub check: IntegrityCheck,
    /// Longest time the start-up check may take.
    pub check_max: Duration,
    /// Tables of other modules in the same file (the alert tables).
    pub hosted: &'static [HostedTables],
}

/// A repair of another module's tables, run on the fresh file after a salvage (the journal
/// copies every table it can read, but only their owner knows what must hold between them).
pub type TableRepair = fn(&Connection) -> Result<(), rusqlite::Error>;

/// Tables another module keeps in the journal's file, and what opening the journal does for them.
#[derive(Clone, Copy)]
pub struct HostedTables {
    /// Read (a count of each, when it exists) at every start: damage there is found when the
    /// journal opens, rather than as a failed start of their owner.
    pub read_at_start: &'static [&'static str],
    /// Run on the fresh file after a salvage, once every table is copied and the id counters
    /// are carried over.
    pub repair: TableRepair,
}

impl std::fmt::Debug for HostedTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostedTables")
            .field("read_at_start", &self.read_at_start)
            .finish_non_exhaustive()
    }
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

/// The marker that exists while a journal writer runs on `path`.
pub fn marker_path(path: &Path) -> PathBuf {
    sibling(path, ".running")
}

/// The flag a writer leaves when it met a damaged file at run time.
pub fn damaged_flag_path(path: &Path) -> PathBuf {
    sibling(path, ".damaged")
}

pub(super) fn sibling(path: &Path, suffix: &str) -> PathBuf {
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
    let recovery = salvage(path, opts.sync, now_ms, &cause, opts.hosted)?;
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
pub(super) fn sync_dir(path: &Path) {
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

/// Opens the file, runs the check if asked, and reads what the writer and the owners of the
/// hosted tables (the alert manager) read at start, so damage there is found now rather than
/// as a failed start.
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
    let hosted = opts.hosted.iter().flat_map(|h| h.read_at_start.iter().copied());
    for table in std::iter::once("cursors").chain(hosted) {
        if table_exists(conn, table)? {
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get::<_, i64>(0))?;
        }
    }
    Ok(store)
}

/// `PRAGMA quick_check`, interrupted after `max`.
pub(super) fn quick_check(conn: &mut Connection, max: Duration) -> Result<CheckOutcome, rusqlite::Error> {
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

/// Whether the main database of `conn` has a table `name`.
pub(crate) fn table_exists(conn: &Connection, name: &str) -> Result<bool, rusqlite::Error> {
    conn.prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
        .exists([name])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::test_support::{fill, journal_with_hosted_tables, next_id, opts, readings, temp_db};
    use std::io::{BufRead as _, Seek as _};

    #[test]
    fn a_torn_wal_tail_keeps_every_commit_before_the_damage() {
        let (_dir, path) = temp_db("torn-wal");
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
        let (_copy_dir, crashed) = temp_db("torn-wal-copy");
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

    #[test]
    fn a_damage_flag_left_at_run_time_salvages_at_the_next_start() {
        let (_dir, path) = temp_db("flagged");
        journal_with_hosted_tables(&path, 100, 0);
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
        let (_dir, path) = temp_db("policy");
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
        let (_dir, path) = temp_db("sigkill");
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
