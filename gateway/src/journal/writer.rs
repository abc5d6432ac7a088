//! The journal writer: one thread owns the write connection. Whatever arrives while a commit is
//! running becomes the next transaction (group commit), so throughput grows with load. A small
//! bulk batch lingers a few ms for company ([`BULK_LINGER`]: fewer, larger commits at moderate
//! rates); a life-safety reading is committed at once. Only after the commit are the messages acknowledged
//! to their source, in arrival order per input.
//!
//! Two inputs, both bounded, both lossless (a full queue makes its senders wait, which holds
//! back the broker's acknowledgements and so the devices or the broker's own queue; nothing is
//! dropped on the way in):
//!
//! | queue | capacity | who sends | when full |
//! |---|---|---|---|
//! | [`WriterHandle::tx_priority`] | [`PRIORITY_QUEUE_CAPACITY`] messages | life-safety sources, the supervisor | senders wait |
//! | [`WriterHandle::tx`] (bulk) | [`QUEUE_CAPACITY`] messages | every other source | senders wait |
//! | observer (to the rules engine) | set by the caller | the writer, after each commit | the writer waits |
//!
//! Before every bulk transaction the writer takes everything waiting on the priority input and
//! commits it in a transaction of its own, and hands it to the rules engine first: a fire
//! waits at most for the one bulk commit already running (a few ms for 5000 messages), never
//! behind the bulk backlog. Acknowledgements keep the arrival order of each input.
//!
//! Durability: with `sync = "full"` each group commit fsyncs the WAL before the acks go out;
//! with `normal` only checkpoints are fsynced (see [`super::recovery`]).
//!
//! The `devices` table (each device's last state and counters) is a summary of the rows, brought
//! up to date at most every [`DEVICES_EVERY`] inside a bulk commit, or by itself when the writer
//! has nothing else to do; with it a mark (`cursors.devices`) names the last row it reflects.
//! Written per commit, its upserts were about half of the WAL pages of a commit at 2,000
//! devices. A crash loses none of it: at start the rows after the mark are counted again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::params;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::store::{Store, StoreError, WriteTurns};
use super::{budget, recovery, Record, RowId};
use crate::clock::Clock;
use crate::telemetry::Telemetry;

/// Acknowledges one source message once its readings are durable.
pub struct Ack(Box<dyn FnOnce() + Send>);

impl Ack {
    pub fn new(f: impl FnOnce() + Send + 'static) -> Self {
        Ack(Box::new(f))
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ack")
    }
}

/// One source message's worth of work: its readings (possibly none, for a rejected message that
/// still has to be acknowledged in order) and its acknowledgement.
#[derive(Debug)]
pub struct Ingest {
    pub records: Vec<Record>,
    pub ack: Option<Ack>,
}

#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most messages in one transaction.
    pub commit_max_messages: usize,
    /// Rows received longer ago than this are deleted.
    pub retention_ms: i64,
    /// Above this size rows go as [`super::budget`] says.
    pub disk_budget_bytes: u64,
    /// When set, only rows at or below this cursor (already forwarded) may be deleted by
    /// retention; the budget may also drop non-life-safety rows past it.
    pub guard_cursor: Option<&'static str>,
    pub clock: Clock,
    /// Receives every committed batch of records (the rules engine). Sent with back-pressure:
    /// a slow engine slows the writer, it never loses a reading.
    pub observer: Option<mpsc::Sender<super::Observed>>,
    /// Receives the priority input's transactions instead, when set: the rules engine judges
    /// life-safety readings before bulk batches already waiting for it.
    pub observer_priority: Option<mpsc::Sender<super::Observed>>,
    /// On a damaged file: flag it and end the process (the service manager restarts the gateway
    /// and the journal is salvaged at open). Off in tests; otherwise the commit is retried.
    pub exit_on_corruption: bool,
    /// How long a small bulk batch waits for company before it is committed ([`BULK_LINGER`] in
    /// the gateway, zero = commit at once). The priority input never waits.
    pub bulk_linger: Duration,
    /// While lingering, a pause this long in the arrivals ends the wait ([`BULK_LINGER_GAP`]).
    pub bulk_linger_gap: Duration,
    /// A bulk batch this large is committed without lingering. Keep it well under the MQTT
    /// inflight window (acks wait for the commit, so a window never fills a larger batch).
    pub bulk_linger_messages: usize,
}

/// The gateway's bulk linger. Each commit costs about the same whatever its size (an fsync,
/// plus one WAL page per device row and index leaf it touches), so at moderate rates many tiny
/// commits cost more CPU and disk than the readings in them: at 10,000 readings/s they averaged
/// 11 rows, 900 commits and fsyncs a second, and the journal writer held the database's write
/// lock almost without a break, which the alert store (same file) then waited for. 5 ms turns
/// that into at most 200 larger commits a second; bulk acknowledgements come up to 5 ms later.
pub const BULK_LINGER: Duration = Duration::from_millis(5);

/// While lingering, a pause this long in the arrivals ends the wait (the timer's resolution).
pub const BULK_LINGER_GAP: Duration = Duration::from_millis(1);

/// Capacity of the bulk queue into the writer, in messages: four full group commits. Full = the
/// sources wait (back-pressure to the broker), never drop.
pub const QUEUE_CAPACITY: usize = 20_000;

/// Capacity of the priority queue, in messages: life-safety traffic is a small share of the
/// whole, and each of its transactions is committed ahead of the bulk. Full = senders wait.
pub const PRIORITY_QUEUE_CAPACITY: usize = 2_000;

/// How often the checkpoint thread copies committed WAL pages into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// WAL size (pages of 4 KiB) at which the writer checkpoints itself, should the checkpoint
/// thread fall behind: 64 MiB.
const CHECKPOINT_BACKSTOP_PAGES: i64 = 16_384;

/// How often retention and the disk budget are enforced.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(30);

/// How often at most the `devices` table is brought up to date while commits come (the
/// device list of the API is at most this much behind the journal; idle, at most this much
/// after the last commit).
pub const DEVICES_EVERY: Duration = Duration::from_secs(1);

/// The cursor naming the last row the `devices` table reflects.
const DEVICES_MARK: &str = "devices";

/// Rows read per query when the rows after the mark are counted again at start.
const DEVICES_REPLAY_CHUNK: usize = 10_000;

/// Rows deleted per statement when over budget, so a delete never holds the lock for long.
const BUDGET_DELETE_CHUNK: usize = 10_000;

/// Unforwarded rows dropped per statement: small, so the budget drops little more than needed.
const UNFORWARDED_DROP_CHUNK: usize = 1_000;

pub struct WriterHandle {
    /// Bulk telemetry.
    pub tx: mpsc::Sender<Ingest>,
    /// Life-safety messages: committed before any bulk transaction.
    pub tx_priority: mpsc::Sender<Ingest>,
    /// The last committed row id.
    pub committed: watch::Receiver<RowId>,
    pub thread: std::thread::JoinHandle<()>,
}

/// Which input a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Priority,
    Bulk,
}

impl Lane {
    fn as_str(self) -> &'static str {
        match self {
            Lane::Priority => "priority",
            Lane::Bulk => "bulk",
        }
    }
}

/// Starts the writer thread. It ends once every sender of both inputs is dropped and both
/// queues are drained, and then marks the journal as cleanly closed.
pub fn spawn_writer(store: Store, cfg: WriterConfig, telemetry: Arc<Telemetry>) -> Result<WriterHandle, StoreError> {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let (tx_priority, rx_priority) = mpsc::channel(PRIORITY_QUEUE_CAPACITY);
    let last = store.last_id()?;
    telemetry.journal_last_id.store(last, Ordering::Relaxed);
    telemetry
        .journal_budget_bytes
        .store(cfg.disk_budget_bytes, Ordering::Relaxed);
    let (committed_tx, committed) = watch::channel(last);
    let mut seqs = load_seq_state(&store)?;
    let mut store = store;
    catch_up_devices(&mut store, &mut seqs, last)?;
    if let Some(path) = store.path() {
        // Checkpoints move to a thread of their own (see `checkpoints`); the writer's automatic
        // checkpoint stays only as a backstop should that thread fall behind.
        store
            .conn()
            .pragma_update(None, "wal_autocheckpoint", CHECKPOINT_BACKSTOP_PAGES)?;
        spawn_checkpointer(path, committed.clone());
    }
    let turns = store.path().map(|p| WriteTurns::of(&p));
    let rt = tokio::runtime::Handle::current();
    let thread = std::thread::Builder::new()
        .name("journal-writer".into())
        .spawn(move || {
            let mut w = Writer {
                store,
                cfg,
                telemetry,
                committed: committed_tx,
                seqs,
                pending: HashMap::new(),
                devices_at: Instant::now(),
                turns,
                rx,
                rx_priority,
                rt,
            };
            w.run();
        })
        .map_err(|e| StoreError::Open {
            path: "journal-writer thread".into(),
            source: rusqlite::Error::InvalidPath(e.to_string().into()),
        })?;
    Ok(WriterHandle {
        tx,
        tx_priority,
        committed,
        thread,
    })
}

/// Runs WAL checkpoints off the writer thread, every [`CHECKPOINT_EVERY`] while commits come.
///
/// SQLite checkpoints in the committing connection by default, once the WAL passes 1000 pages:
/// that commit then also copies thousands of pages into the database file and fsyncs it, tens
/// of ms during which a life-safety reading on the priority input waits (`perf` at 20,000
/// readings/s: 8 % of the gateway's CPU in `walCheckpoint` inside the writer's commits). A
/// passive checkpoint from another connection runs beside the writer and never blocks it.
/// Durability is unchanged: with `sync = "full"` a commit is durable in the WAL; with
/// `normal` the WAL is fsynced at each checkpoint, now at least every 250 ms under load.
fn spawn_checkpointer(path: std::path::PathBuf, mut committed: watch::Receiver<RowId>) {
    let spawned = std::thread::Builder::new()
        .name("journal-checkpoint".into())
        .spawn(move || {
            let store = match Store::open_secondary(&path) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "journal checkpoint thread cannot open the journal; the writer checkpoints itself");
                    return;
                }
            };
            loop {
                std::thread::sleep(CHECKPOINT_EVERY);
                match committed.has_changed() {
                    // The writer is gone: one last checkpoint is its own (clean close).
                    Err(_) => return,
                    Ok(false) => continue,
                    Ok(true) => {
                        committed.borrow_and_update();
                    }
                }
                if let Err(e) = store.conn().execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                    debug!(error = %e, "journal checkpoint skipped");
                }
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "journal checkpoint thread not started; the writer checkpoints itself");
    }
}

fn load_seq_state(store: &Store) -> Result<HashMap<String, u64>, StoreError> {
    Ok(store
        .devices()?
        .into_iter()
        .filter_map(|d| Some((d.id, d.last_seq?)))
        .collect())
}

struct Writer {
    store: Store,
    cfg: WriterConfig,
    telemetry: Arc<Telemetry>,
    committed: watch::Sender<RowId>,
    /// Last seq per device, to count duplicates, gaps and resets.
    seqs: HashMap<String, u64>,
    /// Committed device changes not yet in the `devices` table.
    pending: HashMap<String, DeviceDelta>,
    /// When the `devices` table was last brought up to date.
    devices_at: Instant,
    /// The small writers of the same file (alerts) go first at each transaction.
    turns: Option<WriteTurns>,
    rx: mpsc::Receiver<Ingest>,
    rx_priority: mpsc::Receiver<Ingest>,
    rt: tokio::runtime::Handle,
}

#[derive(Default, Clone)]
struct DeviceDelta {
    class: String,
    room: String,
    last_seen: i64,
    last_ts: i64,
    last_seq: Option<u64>,
    metrics: BTreeMap<String, crate::reading::Value>,
    readings: u64,
    duplicates: u64,
    gaps: u64,
    resets: u64,
}

impl DeviceDelta {
    /// Adds a later delta of the same device.
    fn merge(&mut self, later: DeviceDelta) {
        self.class = later.class;
        self.room = later.room;
        self.last_seen = self.last_seen.max(later.last_seen);
        self.last_ts = self.last_ts.max(later.last_ts);
        self.last_seq = later.last_seq.or(self.last_seq);
        self.metrics.extend(later.metrics);
        self.readings += later.readings;
        self.duplicates += later.duplicates;
        self.gaps += later.gaps;
        self.resets += later.resets;
    }
}

/// Adds a device's delta to the pending ones.
fn merge_into(pending: &mut HashMap<String, DeviceDelta>, id: &str, d: DeviceDelta) {
    match pending.get_mut(id) {
        Some(p) => p.merge(d),
        None => {
            pending.insert(id.to_owned(), d);
        }
    }
}

/// One committed row's share of its device's delta, with the seq checks against the batch's
/// own seqs, then the last known ones.
fn account<'a>(
    deltas: &mut HashMap<&'a str, DeviceDelta>,
    seqs: &mut HashMap<&'a str, u64>,
    known: &HashMap<String, u64>,
    r: &'a Record,
) {
    let d = deltas.entry(r.device.as_str()).or_default();
    d.class.clone_from(&r.class);
    d.room.clone_from(&r.room);
    d.last_seen = d.last_seen.max(r.ts_recv);
    d.last_ts = d.last_ts.max(r.ts);
    d.readings += 1;
    d.metrics.extend(r.metrics.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(seq) = r.seq {
        let prev = seqs.get(r.device.as_str()).or_else(|| known.get(&r.device)).copied();
        match prev {
            Some(prev) if seq == prev => d.duplicates += 1,
            Some(prev) if seq > prev + 1 => d.gaps += seq - prev - 1,
            Some(prev) if seq < prev => d.resets += 1,
            _ => {}
        }
        seqs.insert(r.device.as_str(), seq);
        d.last_seq = Some(seq);
    }
}

/// Folds a committed batch's seqs into the last known ones.
fn remember_seqs(known: &mut HashMap<String, u64>, seqs: HashMap<&str, u64>) {
    for (device, seq) in seqs {
        match known.get_mut(device) {
            Some(s) => *s = seq,
            None => {
                known.insert(device.to_owned(), seq);
            }
        }
    }
}

/// Writes device deltas into the `devices` table and moves the mark to `through`, inside `tx`.
fn upsert_devices<'a>(
    tx: &rusqlite::Transaction<'_>,
    deltas: impl Iterator<Item = (&'a str, &'a DeviceDelta)>,
    through: RowId,
) -> Result<(), StoreError> {
    let mut upsert = tx.prepare_cached(
        "INSERT INTO devices (id, class, room, last_seen, last_ts, last_seq, metrics, readings, seq_duplicates, seq_gaps, seq_resets)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT(id) DO UPDATE SET
            class = excluded.class, room = excluded.room,
            last_seen = max(last_seen, excluded.last_seen), last_ts = max(last_ts, excluded.last_ts),
            last_seq = coalesce(excluded.last_seq, last_seq),
            metrics = json_patch(metrics, excluded.metrics),
            readings = readings + excluded.readings,
            seq_duplicates = seq_duplicates + excluded.seq_duplicates,
            seq_gaps = seq_gaps + excluded.seq_gaps,
            seq_resets = seq_resets + excluded.seq_resets",
    )?;
    for (id, d) in deltas {
        upsert.execute(params![
            id,
            d.class,
            d.room,
            d.last_seen,
            d.last_ts,
            d.last_seq.map(|s| s as i64),
            serde_json::to_string(&d.metrics)?,
            d.readings as i64,
            d.duplicates as i64,
            d.gaps as i64,
            d.resets as i64
        ])?;
    }
    super::store::write_cursor(tx, DEVICES_MARK, through)?;
    Ok(())
}

/// Brings the `devices` table up to the last row at start: the rows after its mark (committed
/// after the last update before a crash) are counted again, their seq checks included. A
/// journal without the mark (written before the mark existed, when every commit updated the
/// table) is current: the mark is set to its last row.
fn catch_up_devices(store: &mut Store, seqs: &mut HashMap<String, u64>, last: RowId) -> Result<(), StoreError> {
    let mark = store.cursor_if_set(DEVICES_MARK)?;
    let mut after = mark.unwrap_or(last);
    let mut replayed = 0u64;
    while after < last {
        let rows = store.rows_after(after, DEVICES_REPLAY_CHUNK)?;
        let Some(end) = rows.last().map(|r| r.id) else {
            break;
        };
        let mut deltas = HashMap::new();
        let mut batch_seqs = HashMap::new();
        for row in &rows {
            account(&mut deltas, &mut batch_seqs, seqs, &row.record);
        }
        let tx = store.conn_mut().transaction()?;
        upsert_devices(&tx, deltas.iter().map(|(k, v)| (*k, v)), end)?;
        tx.commit()?;
        remember_seqs(seqs, batch_seqs);
        replayed += rows.len() as u64;
        after = end;
    }
    if mark.is_none() || replayed > 0 || after < last {
        let tx = store.conn_mut().transaction()?;
        upsert_devices(&tx, std::iter::empty(), last)?;
        tx.commit()?;
    }
    if replayed > 0 {
        info!(
            rows = replayed,
            through = last,
            "devices table brought up to date after an unclean stop"
        );
    }
    Ok(())
}

/// What waiting for input brought.
enum Wake {
    Message(Lane, Ingest),
    Timeout,
    /// Every sender of both inputs is gone and both queues are empty.
    Closed,
}

/// Moves what is waiting on `rx` into `batch`, up to `max` messages in all.
fn drain(rx: &mut mpsc::Receiver<Ingest>, batch: &mut Vec<Ingest>, max: usize) {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(m) => batch.push(m),
            Err(_) => break,
        }
    }
}

impl Writer {
    fn run(&mut self) {
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING_EVERY;
        self.housekeeping();
        let max = self.cfg.commit_max_messages.max(1);
        let mut pending: Option<(Lane, Ingest)> = None;
        let (mut bulk_open, mut priority_open) = (true, true);
        loop {
            let (mut priority, mut bulk) = (Vec::new(), Vec::new());
            match pending.take() {
                Some((Lane::Priority, m)) => priority.push(m),
                Some((Lane::Bulk, m)) => bulk.push(m),
                None => {}
            }
            // Everything waiting on the priority input first, in a transaction of its own.
            drain(&mut self.rx_priority, &mut priority, max);
            let idle = priority.is_empty();
            if !priority.is_empty() {
                self.commit_until_done(priority, Lane::Priority);
            }
            drain(&mut self.rx, &mut bulk, max);
            let idle = idle && bulk.is_empty();
            if !bulk.is_empty() {
                self.linger(&mut bulk, &mut bulk_open, &mut priority_open);
            }
            if !bulk.is_empty() {
                self.commit_until_done(bulk, Lane::Bulk);
            }
            if Instant::now() >= next_housekeeping {
                self.housekeeping();
                next_housekeeping = Instant::now() + HOUSEKEEPING_EVERY;
            }
            if !idle {
                continue;
            }
            let devices_due = self.devices_at + DEVICES_EVERY;
            if !self.pending.is_empty() && Instant::now() >= devices_due {
                self.update_devices();
                continue;
            }
            let until = if self.pending.is_empty() {
                next_housekeeping
            } else {
                next_housekeeping.min(devices_due)
            };
            match self.wait(until, &mut bulk_open, &mut priority_open) {
                Wake::Message(lane, m) => pending = Some((lane, m)),
                Wake::Timeout => {}
                Wake::Closed => {
                    debug!("journal writer: all sources closed");
                    self.update_devices();
                    if let Some(path) = self.store.path() {
                        recovery::mark_clean(&path);
                    }
                    return;
                }
            }
        }
    }

    /// Lets a small bulk batch wait up to `bulk_linger` for more messages. A priority message
    /// ends the wait: it is committed at once, in its own transaction, and the bulk batch right
    /// after it.
    fn linger(&mut self, bulk: &mut Vec<Ingest>, bulk_open: &mut bool, priority_open: &mut bool) {
        let max = self.cfg.commit_max_messages.max(1);
        let enough = self.cfg.bulk_linger_messages.clamp(1, max);
        if self.cfg.bulk_linger.is_zero() || bulk.len() >= enough {
            return;
        }
        let until = Instant::now() + self.cfg.bulk_linger;
        while bulk.len() < enough && Instant::now() < until {
            // A pause in the arrivals ends the wait too: the sender's window (acknowledgements
            // wait for this commit) is then most likely used up, and more waiting gains nothing.
            let next = until.min(Instant::now() + self.cfg.bulk_linger_gap);
            match self.wait(next, bulk_open, priority_open) {
                Wake::Message(Lane::Bulk, m) => {
                    bulk.push(m);
                    drain(&mut self.rx, bulk, enough);
                }
                Wake::Message(Lane::Priority, m) => {
                    let mut priority = vec![m];
                    drain(&mut self.rx_priority, &mut priority, max);
                    self.commit_until_done(priority, Lane::Priority);
                    return;
                }
                Wake::Timeout | Wake::Closed => return,
            }
        }
    }

    /// Blocks until a message arrives (priority first), `until` passes, or both inputs close.
    fn wait(&mut self, until: Instant, bulk_open: &mut bool, priority_open: &mut bool) -> Wake {
        let (rx, rx_priority) = (&mut self.rx, &mut self.rx_priority);
        let wait = until.saturating_duration_since(Instant::now());
        let woke = self.rt.block_on(async {
            tokio::time::timeout(wait, async {
                loop {
                    tokio::select! {
                        biased;
                        m = rx_priority.recv(), if *priority_open => match m {
                            Some(m) => return Wake::Message(Lane::Priority, m),
                            None => *priority_open = false,
                        },
                        m = rx.recv(), if *bulk_open => match m {
                            Some(m) => return Wake::Message(Lane::Bulk, m),
                            None => *bulk_open = false,
                        },
                        else => return Wake::Closed,
                    }
                }
            })
            .await
        });
        woke.unwrap_or(Wake::Timeout)
    }

    /// Commits a batch, retrying with backoff while the disk refuses: readings are never
    /// dropped here; meanwhile the queue fills and the sources stop reading.
    fn commit_until_done(&mut self, batch: Vec<Ingest>, lane: Lane) {
        let mut backoff = Duration::from_millis(100);
        let after = *self.committed.borrow();
        loop {
            let started = Instant::now();
            match self.commit(&batch, lane) {
                Ok(last) => {
                    debug!(
                        lane = lane.as_str(),
                        messages = batch.len(),
                        took_us = started.elapsed().as_micros() as u64,
                        "journal commit"
                    );
                    if lane == Lane::Priority {
                        self.telemetry.journal_priority_commits.fetch_add(1, Ordering::Relaxed);
                    }
                    self.telemetry.journal_last_id.store(last, Ordering::Relaxed);
                    self.committed.send_replace(last);
                    let mut records = Vec::new();
                    for ingest in batch {
                        if let Some(Ack(f)) = ingest.ack {
                            f();
                        }
                        records.extend(ingest.records);
                    }
                    let observer = match (lane, &self.cfg.observer_priority) {
                        (Lane::Priority, Some(p)) => Some(p),
                        _ => self.cfg.observer.as_ref(),
                    };
                    if let Some(observer) = observer {
                        let observed = super::Observed {
                            after,
                            last_id: last,
                            records,
                        };
                        if !observed.records.is_empty() && observer.blocking_send(observed).is_err() {
                            debug!("rules engine gone; committed readings not observed");
                        }
                    }
                    return;
                }
                Err(e) => {
                    self.telemetry.journal_commit_errors.fetch_add(1, Ordering::Relaxed);
                    if e.is_corruption() && self.cfg.exit_on_corruption {
                        // Retrying cannot mend a damaged page. Unacknowledged messages stay with
                        // the broker; the restart salvages the file (see `recovery`).
                        error!(error = %e, "journal damaged at run time; flagging it and exiting for a salvage at restart");
                        if let Some(path) = self.store.path() {
                            recovery::flag_damaged(&path, &e.to_string());
                        }
                        std::process::exit(recovery::EXIT_JOURNAL_DAMAGED);
                    }
                    error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "journal commit failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    fn commit(&mut self, batch: &[Ingest], lane: Lane) -> Result<RowId, StoreError> {
        // The batch's own seq updates, applied to `self.seqs` only once the commit holds (a
        // failed commit is retried with the same batch). Not a clone of the whole map: that cost
        // one String per known device per commit, thousands of allocations per transaction.
        let mut seqs: HashMap<&str, u64> = HashMap::new();
        let mut deltas: HashMap<&str, DeviceDelta> = HashMap::new();
        let mut rows = 0u64;
        // A priority transaction stays as small as it can be: its devices wait for the next
        // update of the table.
        let update_devices = lane == Lane::Bulk && self.devices_at.elapsed() >= DEVICES_EVERY;
        self.let_others_go_first();
        let conn = self.store.conn_mut();
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO readings (device, class, building, floor, room, zone, ts, ts_recv, ts_replaced, seq, metrics, life_safety)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for r in batch.iter().flat_map(|i| &i.records) {
                let metrics = serde_json::to_string(&r.metrics)?;
                insert.execute(params![
                    r.device,
                    r.class,
                    r.building,
                    r.floor,
                    r.room,
                    r.zone,
                    r.ts,
                    r.ts_recv,
                    r.ts_replaced as i64,
                    r.seq.map(|s| s as i64),
                    metrics,
                    budget::kept_under_budget(r) as i64
                ])?;
                rows += 1;
                account(&mut deltas, &mut seqs, &self.seqs, r);
            }
        }
        let last = tx.last_insert_rowid();
        if update_devices && rows > 0 {
            // Pending and this batch's changes together; the pending ones are kept until the
            // commit holds (a failed commit is retried with the same batch).
            let mut all = self.pending.clone();
            for (id, d) in &deltas {
                merge_into(&mut all, id, d.clone());
            }
            upsert_devices(&tx, all.iter().map(|(k, v)| (k.as_str(), v)), last)?;
        }
        tx.commit()?;
        let (dups, gaps, resets) = deltas
            .values()
            .fold((0, 0, 0), |a, d| (a.0 + d.duplicates, a.1 + d.gaps, a.2 + d.resets));
        if update_devices && rows > 0 {
            self.pending.clear();
            self.devices_at = Instant::now();
        } else {
            for (id, d) in deltas {
                merge_into(&mut self.pending, id, d);
            }
        }
        remember_seqs(&mut self.seqs, seqs);
        let t = &self.telemetry;
        t.journal_commits.fetch_add(1, Ordering::Relaxed);
        t.journal_rows.fetch_add(rows, Ordering::Relaxed);
        t.readings_accepted.fetch_add(rows, Ordering::Relaxed);
        t.seq_duplicates.fetch_add(dups, Ordering::Relaxed);
        t.seq_gaps.fetch_add(gaps, Ordering::Relaxed);
        t.seq_resets.fetch_add(resets, Ordering::Relaxed);
        self.store.last_id()
    }

    /// Lets the alert store and the other small writers of the file take the write lock first.
    fn let_others_go_first(&self) {
        if let Some(turns) = &self.turns {
            turns.let_others_go_first();
        }
    }

    /// Writes the pending device changes into the `devices` table in a transaction of their
    /// own (the writer is idle, or stopping). A failure keeps them pending for the next try.
    fn update_devices(&mut self) {
        if self.pending.is_empty() {
            self.devices_at = Instant::now();
            return;
        }
        let through = *self.committed.borrow();
        self.let_others_go_first();
        let result = (|| -> Result<(), StoreError> {
            let tx = self.store.conn_mut().transaction()?;
            upsert_devices(&tx, self.pending.iter().map(|(k, v)| (k.as_str(), v)), through)?;
            tx.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => self.pending.clear(),
            Err(e) => {
                self.telemetry.journal_commit_errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, devices = self.pending.len(), "devices table not updated; trying again later");
            }
        }
        self.devices_at = Instant::now();
    }

    /// Retention by age, then the disk budget as [`super::budget`] says. Retention deletes only
    /// rows already forwarded (when a forwarder exists).
    fn housekeeping(&mut self) {
        let result = (|| -> Result<(), StoreError> {
            let forwarded_up_to = match self.cfg.guard_cursor {
                Some(name) => self.store.cursor(name)?,
                None => i64::MAX,
            };
            let now = self.cfg.clock.now_ms();
            let mut deleted = self.store.delete_older(now - self.cfg.retention_ms, forwarded_up_to)?;
            let budget = self.cfg.disk_budget_bytes;
            let mut size = self.store.size_bytes()?;
            while size > budget {
                let n = self.store.delete_oldest(BUDGET_DELETE_CHUNK, forwarded_up_to)?;
                if n == 0 {
                    break;
                }
                deleted += n;
                // Deleted pages go to the free list; size_bytes() counts pages in use.
                size = self.store.size_bytes()?;
            }
            if deleted > 0 {
                info!(deleted, "journal retention");
                self.telemetry.journal_deleted.fetch_add(deleted, Ordering::Relaxed);
            }
            let mut dropped = 0;
            if self.cfg.guard_cursor.is_some() {
                while size > budget {
                    let n = self
                        .store
                        .delete_oldest_unprotected(UNFORWARDED_DROP_CHUNK, forwarded_up_to)?;
                    if n == 0 {
                        break;
                    }
                    dropped += n;
                    size = self.store.size_bytes()?;
                }
            }
            if dropped > 0 {
                warn!(
                    dropped,
                    forwarded_up_to,
                    budget_bytes = budget,
                    "journal over its disk budget while InfluxDB is behind: dropped the oldest non-life-safety readings not yet forwarded"
                );
                self.telemetry
                    .journal_dropped_unforwarded
                    .fetch_add(dropped, Ordering::Relaxed);
            }
            if size > budget {
                warn!(
                    size_bytes = size,
                    budget_bytes = budget,
                    "journal over its disk budget with only life-safety readings and alerts left: keeping them"
                );
                self.telemetry.journal_over_budget.fetch_add(1, Ordering::Relaxed);
            }
            self.telemetry.journal_bytes.store(size, Ordering::Relaxed);
            Ok(())
        })();
        if let Err(e) = result {
            warn!(error = %e, "journal housekeeping failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::config::SyncPolicy;
    use crate::reading::Value;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicUsize;

    fn temp_db(label: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nh-journal-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("journal.db")
    }

    fn record(device: &str, ts: i64, seq: Option<u64>, metrics: &[(&str, Value)]) -> Record {
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

    fn config(observer: Option<mpsc::Sender<crate::journal::Observed>>) -> WriterConfig {
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
    fn manual(path: &std::path::Path, sync: SyncPolicy, cfg: WriterConfig, telemetry: Arc<Telemetry>) -> Writer {
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_acknowledge_after_durability_and_count_seq_anomalies() {
        let path = temp_db("seq");
        let telemetry = Arc::new(Telemetry::default());
        let (obs_tx, mut obs_rx) = mpsc::channel(16);
        let store = Store::open(&path, SyncPolicy::Full).expect("open");
        let mut w = spawn_writer(store, config(Some(obs_tx)), telemetry.clone()).expect("writer");
        let acked = Arc::new(AtomicUsize::new(0));
        // seq 1, 2, 2 (duplicate), 5 (gap of 2), 3 (reset)
        for (i, seq) in [1u64, 2, 2, 5, 3].into_iter().enumerate() {
            let a = acked.clone();
            let r = record(
                "w-1",
                1000 + i as i64,
                Some(seq),
                &[("heart_rate", Value::Num(60.0 + i as f64))],
            );
            let ack = Ack::new(move || {
                a.fetch_add(1, Ordering::SeqCst);
            });
            w.tx.send(Ingest {
                records: vec![r],
                ack: Some(ack),
            })
            .await
            .expect("send");
        }
        // A rejected message: no records, still acknowledged in order.
        let a = acked.clone();
        w.tx.send(Ingest {
            records: vec![],
            ack: Some(Ack::new(move || {
                a.fetch_add(1, Ordering::SeqCst);
            })),
        })
        .await
        .expect("send");
        let mut observed = 0;
        while observed < 5 {
            observed += obs_rx.recv().await.expect("observer").records.len();
        }
        w.committed.wait_for(|id| *id >= 5).await.expect("committed");
        drop(w.tx);
        drop(w.tx_priority);
        tokio::task::spawn_blocking(move || w.thread.join())
            .await
            .expect("join")
            .expect("writer thread");
        assert_eq!(acked.load(Ordering::SeqCst), 6);
        assert_eq!(telemetry.seq_duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(telemetry.seq_gaps.load(Ordering::Relaxed), 2);
        assert_eq!(telemetry.seq_resets.load(Ordering::Relaxed), 1);

        // Survives reopening: history, device state, and seq state for the next run.
        let store = Store::open(&path, SyncPolicy::Full).expect("reopen");
        let h = store.history("w-1", 1002, 10).expect("history");
        assert_eq!(h.iter().map(|r| r.ts).collect::<Vec<_>>(), vec![1002, 1003, 1004]);
        let d = store.devices().expect("devices");
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].readings, d[0].seq_duplicates, d[0].seq_gaps, d[0].seq_resets),
            (5, 1, 2, 1)
        );
        assert_eq!(d[0].last_seq, Some(3));
        assert_eq!(d[0].metrics["heart_rate"].as_f64(), Some(64.0));
    }

    #[test]
    fn the_devices_table_follows_at_most_every_second_and_a_crash_loses_none_of_it() {
        let path = temp_db("devices-mark");
        let mut w = manual(&path, SyncPolicy::Full, config(None), Arc::new(Telemetry::default()));
        let ingest = |rows: Vec<Record>| {
            vec![Ingest {
                records: rows,
                ack: None,
            }]
        };
        let hr = |v: f64| [("heart_rate", Value::Num(v))];
        let devices = |path: &std::path::Path| {
            let mut d = Store::open_secondary(path).expect("reader").devices().expect("devices");
            d.sort_by(|a, b| a.id.cmp(&b.id));
            d.into_iter()
                .map(|d| {
                    let hr = d.metrics["heart_rate"].as_f64();
                    (d.id, d.readings, d.seq_duplicates, d.seq_gaps, d.last_seq, hr)
                })
                .collect::<Vec<_>>()
        };

        // Within the second: committed, acknowledged, but not yet in the table.
        w.commit(
            &ingest(
                (1..=3)
                    .map(|s| record("a", 1000 + s as i64, Some(s), &hr(60.0)))
                    .collect(),
            ),
            Lane::Bulk,
        )
        .expect("commit");
        assert_eq!(devices(&path), vec![]);
        // A second later the next bulk commit brings everything pending along.
        w.devices_at -= DEVICES_EVERY;
        w.commit(
            &ingest(vec![
                record("a", 1004, Some(3), &hr(61.0)),
                record("b", 1004, Some(1), &hr(70.0)),
            ]),
            Lane::Bulk,
        )
        .expect("commit");
        let expected = vec![
            ("a".to_owned(), 4, 1, 0, Some(3), Some(61.0)),
            ("b".to_owned(), 1, 0, 0, Some(1), Some(70.0)),
        ];
        assert_eq!(devices(&path), expected);
        // A priority commit never carries the table, even when it is due.
        w.devices_at -= DEVICES_EVERY;
        w.commit(&ingest(vec![record("b", 1005, Some(1), &hr(71.0))]), Lane::Priority)
            .expect("commit");
        w.devices_at = Instant::now();
        w.commit(&ingest(vec![record("a", 1006, Some(7), &hr(62.0))]), Lane::Bulk)
            .expect("commit");
        assert_eq!(devices(&path), expected);

        // A crash: the pending changes are gone with the process; the rows are not.
        drop(w);
        let mut store = Store::open(&path, SyncPolicy::Full).expect("reopen");
        let mut seqs = load_seq_state(&store).expect("seqs");
        let last = store.last_id().expect("last");
        catch_up_devices(&mut store, &mut seqs, last).expect("catch up");
        assert_eq!(
            devices(&path),
            vec![
                ("a".to_owned(), 5, 1, 3, Some(7), Some(62.0)),
                ("b".to_owned(), 2, 1, 0, Some(1), Some(71.0)),
            ]
        );
        assert_eq!(seqs.get("a"), Some(&7));
        // Counted once: a second start has nothing after the mark.
        catch_up_devices(&mut store, &mut seqs, last).expect("again");
        assert_eq!(devices(&path)[0].1, 5);
    }

    #[test]
    fn retention_deletes_only_what_was_forwarded() {
        let path = temp_db("retention");
        let mut w = manual(&path, SyncPolicy::Normal, config(None), Arc::new(Telemetry::default()));
        // Clock reads 10,000,000 ms; retention 1 h: rows received at 1000..1009 are old.
        let batch: Vec<Ingest> = (0..10)
            .map(|i| Ingest {
                records: vec![record("d", 1000 + i, None, &[("spo2", Value::Num(97.0))])],
                ack: None,
            })
            .collect();
        w.commit(&batch, Lane::Bulk).expect("commit");
        w.store.set_cursor("influx", 4).expect("cursor");
        w.housekeeping();
        let left: Vec<i64> = w.store.rows_after(0, 100).expect("rows").iter().map(|r| r.id).collect();
        assert_eq!(left, vec![5, 6, 7, 8, 9, 10], "rows not yet forwarded must stay");
        // Ids are never reused after deletes (the forwarder's cursor relies on it).
        w.commit(
            &[Ingest {
                records: vec![record("d", 2000, None, &[("spo2", Value::Num(96.0))])],
                ack: None,
            }],
            Lane::Bulk,
        )
        .expect("commit");
        assert_eq!(w.store.last_id().expect("last"), 11);
    }

    fn ingest_counted(
        record: Record,
        lane: &'static str,
        log: &Arc<std::sync::Mutex<Vec<(&'static str, u64)>>>,
    ) -> Ingest {
        let log = log.clone();
        let seq = record.seq.unwrap_or(0);
        Ingest {
            records: vec![record],
            ack: Some(Ack::new(move || {
                if let Ok(mut l) = log.lock() {
                    l.push((lane, seq));
                }
            })),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn priority_messages_are_committed_before_the_bulk_backlog_in_their_own_transaction() {
        let path = temp_db("priority");
        let telemetry = Arc::new(Telemetry::default());
        // An observer nobody reads yet: the writer blocks after its second commit, so a backlog
        // builds up behind it deterministically.
        let (obs_tx, mut obs_rx) = mpsc::channel(1);
        let mut cfg = config(Some(obs_tx));
        cfg.commit_max_messages = 5000;
        let store = Store::open(&path, SyncPolicy::Normal).expect("open");
        let w = spawn_writer(store, cfg, telemetry.clone()).expect("writer");
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let bulk = |seq: u64| record("w-1", seq as i64, Some(seq), &[("heart_rate", Value::Num(70.0))]);
        for seq in [1, 2] {
            w.tx.send(ingest_counted(bulk(seq), "bulk", &log)).await.expect("send");
            while log.lock().expect("log").len() < seq as usize {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // The writer is now stuck handing commit 2 to the observer. Queue 12,000 bulk messages,
        // then one life-safety reading.
        for seq in 3..12_003 {
            w.tx.send(ingest_counted(bulk(seq), "bulk", &log)).await.expect("send");
        }
        let mut smoke = record("smoke-1", 99, Some(1), &[("smoke", Value::Bool(true))]);
        smoke.class = "smoke_alarm".into();
        w.tx_priority
            .send(ingest_counted(smoke, "priority", &log))
            .await
            .expect("send");
        // Release the writer and watch what the rules engine receives, in order.
        let mut batches: Vec<Vec<Record>> = Vec::new();
        while batches.iter().map(Vec::len).sum::<usize>() < 12_003 {
            batches.push(obs_rx.recv().await.expect("observer").records);
        }
        assert_eq!(batches[0].len(), 1);
        assert_eq!(batches[1].len(), 1);
        assert_eq!(
            batches[2].len(),
            1,
            "the priority reading alone, in its own transaction"
        );
        assert_eq!(batches[2][0].device, "smoke-1");
        assert!(batches[3..]
            .iter()
            .all(|b| b.len() <= 5000 && b.iter().all(|r| r.device == "w-1")));
        let log = log.lock().expect("log").clone();
        assert_eq!(log[2], ("priority", 1), "acknowledged before any of the bulk backlog");
        let bulk_acks: Vec<u64> = log.iter().filter(|(l, _)| *l == "bulk").map(|(_, s)| *s).collect();
        assert_eq!(
            bulk_acks,
            (1..12_003).collect::<Vec<u64>>(),
            "bulk acks in arrival order"
        );
        assert_eq!(telemetry.journal_priority_commits.load(Ordering::Relaxed), 1);
        drop(w.tx);
        drop(w.tx_priority);
        drop(obs_rx);
        tokio::task::spawn_blocking(move || w.thread.join())
            .await
            .expect("join")
            .expect("writer thread");
    }

    /// What a life-safety reading may wait for: the one bulk commit already running.
    #[test]
    fn commit_time_of_a_full_bulk_transaction_and_of_a_priority_one() {
        let path = temp_db("priority-timing");
        // Direct commits, sync = full: a 5000-message bulk transaction against a single reading.
        let mut w = manual(&path, SyncPolicy::Full, config(None), Arc::new(Telemetry::default()));
        let bulk: Vec<Ingest> = (0..5000)
            .map(|i| Ingest {
                records: vec![record("w-1", i, Some(i as u64), &[("heart_rate", Value::Num(70.0))])],
                ack: None,
            })
            .collect();
        let one = vec![Ingest {
            records: vec![record("smoke-1", 1, None, &[("smoke", Value::Bool(true))])],
            ack: None,
        }];
        let (mut bulk_us, mut one_us) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let t = Instant::now();
            w.commit(&bulk, Lane::Bulk).expect("bulk");
            bulk_us.push(t.elapsed().as_micros());
            let t = Instant::now();
            w.commit(&one, Lane::Priority).expect("one");
            one_us.push(t.elapsed().as_micros());
        }
        eprintln!("commit, sync=full: 5000-message bulk {bulk_us:?} us; 1 priority message {one_us:?} us");
        assert_eq!(w.store.last_id().expect("last"), 3 * 5001);
    }

    /// Measures what a life-safety reading waits for: one running bulk commit at most, never
    /// the backlog.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_priority_reading_waits_at_most_one_bulk_commit_not_the_backlog() {
        // Through the writer: a priority reading sent every 20 ms while 40,000 bulk messages stream in.
        let path = temp_db("priority-latency");
        let mut cfg = config(None);
        cfg.commit_max_messages = 5000;
        let store = Store::open(&path, SyncPolicy::Full).expect("open");
        let handle = spawn_writer(store, cfg, Arc::new(Telemetry::default())).expect("writer");
        let latencies = Arc::new(std::sync::Mutex::new((Vec::new(), Vec::new())));
        let bulk_tx = handle.tx.clone();
        let bulk_lat = latencies.clone();
        let feeder = tokio::spawn(async move {
            for i in 0..40_000i64 {
                let sent = Instant::now();
                let lat = bulk_lat.clone();
                let ack = Ack::new(move || {
                    if let Ok(mut l) = lat.lock() {
                        l.0.push(sent.elapsed().as_micros());
                    }
                });
                let r = record("w-1", i, Some(i as u64), &[("heart_rate", Value::Num(70.0))]);
                bulk_tx
                    .send(Ingest {
                        records: vec![r],
                        ack: Some(ack),
                    })
                    .await
                    .expect("send");
            }
        });
        let mut sent_priority = 0;
        while !feeder.is_finished() || sent_priority < 5 {
            let sent = Instant::now();
            let lat = latencies.clone();
            let ack = Ack::new(move || {
                if let Ok(mut l) = lat.lock() {
                    l.1.push(sent.elapsed().as_micros());
                }
            });
            let r = record("smoke-1", sent_priority, None, &[("smoke", Value::Bool(false))]);
            handle
                .tx_priority
                .send(Ingest {
                    records: vec![r],
                    ack: Some(ack),
                })
                .await
                .expect("send");
            sent_priority += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        feeder.await.expect("feeder");
        drop(handle.tx);
        drop(handle.tx_priority);
        tokio::task::spawn_blocking(move || handle.thread.join())
            .await
            .expect("join")
            .expect("writer thread");
        let (mut bulk, mut priority) = latencies.lock().expect("latencies").clone();
        bulk.sort_unstable();
        priority.sort_unstable();
        let pct = |v: &[u128], p: usize| v[(v.len() - 1) * p / 100];
        eprintln!(
            "ack latency under a 40,000-message bulk stream, sync=full: bulk p50 {} us, max {} us; priority ({} readings) p50 {} us, max {} us",
            pct(&bulk, 50),
            pct(&bulk, 100),
            priority.len(),
            pct(&priority, 50),
            pct(&priority, 100)
        );
        assert_eq!(bulk.len(), 40_000);
        assert!(
            pct(&priority, 50) < pct(&bulk, 50),
            "a priority reading does not wait for the bulk backlog"
        );
    }

    /// Commits `n` rows through a manual writer: every third a smoke alarm, the others wearable
    /// vitals, and every 50th wearable row an SOS press.
    fn fill_mixed(w: &mut Writer, n: i64) {
        let batch: Vec<Ingest> = (1..=n)
            .map(|i| {
                let mut r = match i % 3 {
                    0 => record("smoke-1", 10_000_000 + i, None, &[("smoke", Value::Bool(false))]),
                    _ if i % 50 == 1 => record("w-1", 10_000_000 + i, None, &[("sos", Value::Bool(true))]),
                    _ => record(
                        "w-1",
                        10_000_000 + i,
                        None,
                        &[("heart_rate", Value::Num(70.0)), ("spo2", Value::Num(97.0))],
                    ),
                };
                if i % 3 == 0 {
                    r.class = "smoke_alarm".into();
                }
                Ingest {
                    records: vec![r],
                    ack: None,
                }
            })
            .collect();
        w.commit(&batch, Lane::Bulk).expect("commit");
    }

    /// (id, life_safety) of every row left.
    fn rows(w: &mut Writer) -> Vec<(i64, bool)> {
        let conn = w.store.conn_mut();
        let mut stmt = conn
            .prepare("SELECT id, life_safety FROM readings ORDER BY id")
            .expect("prepare");
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? != 0)))
            .expect("query");
        rows.collect::<Result<_, _>>().expect("rows")
    }

    fn alert_table_counts(w: &mut Writer) -> Vec<i64> {
        let conn = w.store.conn_mut();
        [
            "alerts",
            "alert_audit",
            "alert_events",
            "engine_state",
            "delivery_cursors",
        ]
        .iter()
        .map(|t| {
            conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .expect("count")
        })
        .collect()
    }

    #[test]
    fn over_budget_with_influx_behind_drops_forwarded_then_the_oldest_non_life_safety_rows_only() {
        let path = temp_db("budget");
        let telemetry = Arc::new(Telemetry::default());
        let mut cfg = config(None);
        cfg.retention_ms = i64::MAX / 4; // the budget alone at work
        let mut w = manual(&path, SyncPolicy::Normal, cfg, telemetry.clone());
        // The alert tables live in the same file; the budget must never touch them.
        drop(crate::alerts::store::AlertStore::open(&path).expect("alert tables"));
        crate::alerts::delivery::EventLog::open(&path).expect("delivery tables");
        w.store
            .conn_mut()
            .execute_batch(
                "INSERT INTO alerts VALUES ('a-1', 'active', '{\"seq\":1}', 1);
                 INSERT INTO alert_audit (alert_id, at, actor, action) VALUES ('a-1', 1, 'system', 'raised');
                 INSERT INTO alert_events VALUES (1, 'a-1', 1, '{\"seq\":1}');
                 INSERT INTO engine_state VALUES ('rules', '{}');
                 INSERT INTO delivery_cursors VALUES ('mqtt', 1);",
            )
            .expect("alerts");
        let alerts_before = alert_table_counts(&mut w);
        fill_mixed(&mut w, 6000);
        let all = rows(&mut w);
        let protected_before: Vec<i64> = all.iter().filter(|r| r.1).map(|r| r.0).collect();
        assert_eq!(protected_before.len(), 2000 + 80, "smoke alarms and SOS presses");
        // InfluxDB took the first 1200 rows, then went down.
        w.store.set_cursor("influx", 1200).expect("cursor");
        let size = w.store.size_bytes().expect("size");
        w.cfg.disk_budget_bytes = size * 6 / 10;
        w.housekeeping();

        let left = rows(&mut w);
        assert!(left.iter().all(|r| r.0 > 1200), "forwarded rows went first");
        assert_eq!(telemetry.journal_deleted.load(Ordering::Relaxed), 1200);
        let protected_after: Vec<i64> = left.iter().filter(|r| r.1).map(|r| r.0).collect();
        assert_eq!(
            protected_after,
            protected_before
                .iter()
                .copied()
                .filter(|id| *id > 1200)
                .collect::<Vec<_>>(),
            "no unforwarded life-safety row dropped"
        );
        let dropped: Vec<i64> = all
            .iter()
            .filter(|r| r.0 > 1200 && !r.1 && !left.contains(r))
            .map(|r| r.0)
            .collect();
        let kept_plain: Vec<i64> = left.iter().filter(|r| !r.1).map(|r| r.0).collect();
        assert!(!dropped.is_empty() && !kept_plain.is_empty());
        assert!(dropped.iter().max() < kept_plain.iter().min(), "oldest first");
        assert_eq!(
            telemetry.journal_dropped_unforwarded.load(Ordering::Relaxed),
            dropped.len() as u64
        );
        assert!(w.store.size_bytes().expect("size") <= w.cfg.disk_budget_bytes);
        assert_eq!(telemetry.journal_over_budget.load(Ordering::Relaxed), 0);
        assert_eq!(alert_table_counts(&mut w), alerts_before);
        assert!(telemetry
            .render()
            .contains("nh_journal_dropped_unforwarded_total{reason=\"budget\"}"));

        // A budget nothing can meet: every plain row goes, every life-safety row stays.
        w.cfg.disk_budget_bytes = 1;
        w.housekeeping();
        let left = rows(&mut w);
        assert!(left.iter().all(|r| r.1));
        assert_eq!(left.len(), protected_after.len());
        assert_eq!(telemetry.journal_over_budget.load(Ordering::Relaxed), 1, "counted");
        assert_eq!(alert_table_counts(&mut w), alerts_before);
        // The forwarder reads past the gaps: rows after its cursor, in id order.
        let next: Vec<i64> = w
            .store
            .rows_after(1200, 5)
            .expect("rows")
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(next, left.iter().take(5).map(|r| r.0).collect::<Vec<_>>());
    }

    #[test]
    fn without_influx_the_budget_rotates_the_oldest_rows_of_any_kind() {
        let path = temp_db("budget-no-influx");
        let telemetry = Arc::new(Telemetry::default());
        let mut cfg = config(None);
        cfg.guard_cursor = None;
        cfg.retention_ms = i64::MAX / 4;
        let mut w = manual(&path, SyncPolicy::Normal, cfg, telemetry.clone());
        fill_mixed(&mut w, 30_000);
        w.cfg.disk_budget_bytes = w.store.size_bytes().expect("size") / 2;
        w.housekeeping();
        let left = rows(&mut w);
        assert!(left.first().map(|r| r.0) > Some(1), "oldest rows went");
        assert_eq!(left.last().map(|r| r.0), Some(30_000));
        assert!(left.iter().any(|r| !r.1) && left.iter().any(|r| r.1));
        assert_eq!(telemetry.journal_dropped_unforwarded.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_bulk_batch_lingers_but_a_priority_reading_does_not_wait_for_it() {
        let path = temp_db("linger");
        let telemetry = Arc::new(Telemetry::default());
        let (obs_tx, mut obs_rx) = mpsc::channel(16);
        let mut cfg = config(Some(obs_tx));
        cfg.bulk_linger = Duration::from_secs(5);
        cfg.bulk_linger_gap = Duration::from_secs(5);
        cfg.bulk_linger_messages = 3;
        let store = Store::open(&path, SyncPolicy::Normal).expect("open");
        let w = spawn_writer(store, cfg, telemetry.clone()).expect("writer");
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let bulk = |seq: u64| record("w-1", seq as i64, Some(seq), &[("heart_rate", Value::Num(70.0))]);
        // Two bulk messages: under the threshold, they wait.
        for seq in [1, 2] {
            w.tx.send(ingest_counted(bulk(seq), "bulk", &log)).await.expect("send");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(log.lock().expect("log").is_empty(), "lingering, nothing committed yet");
        // A life-safety reading ends the wait: committed first and alone, then the bulk batch.
        let started = std::time::Instant::now();
        let mut smoke = record("smoke-1", 99, Some(1), &[("smoke", Value::Bool(true))]);
        smoke.class = "smoke_alarm".into();
        w.tx_priority
            .send(ingest_counted(smoke, "priority", &log))
            .await
            .expect("send");
        let first = obs_rx.recv().await.expect("observer").records;
        let second = obs_rx.recv().await.expect("observer").records;
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].device, "smoke-1");
        assert_eq!(second.len(), 2, "the lingering bulk batch right after");
        // A batch that reaches the threshold goes at once.
        let started = std::time::Instant::now();
        for seq in [3, 4, 5] {
            w.tx.send(ingest_counted(bulk(seq), "bulk", &log)).await.expect("send");
        }
        let mut got = 0;
        while got < 3 {
            got += obs_rx.recv().await.expect("observer").records.len();
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(
            log.lock().expect("log").len(),
            6,
            "every message acknowledged after its commit"
        );
        drop(w.tx);
        drop(w.tx_priority);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clean_end_of_the_writer_removes_the_running_marker() {
        let path = temp_db("marker");
        let opts = recovery::OpenOptions {
            sync: SyncPolicy::Full,
            check: crate::journal::config::IntegrityCheck::AfterCrash,
            check_max: Duration::from_secs(5),
        };
        let (store, report) = recovery::open(&path, opts, 1).expect("open");
        assert!(!report.unclean);
        assert!(recovery::marker_path(&path).exists(), "marked while running");
        let w = spawn_writer(store, config(None), Arc::new(Telemetry::default())).expect("writer");
        drop(w.tx);
        drop(w.tx_priority);
        tokio::task::spawn_blocking(move || w.thread.join())
            .await
            .expect("join")
            .expect("writer thread");
        assert!(!recovery::marker_path(&path).exists(), "clean end");
        let (_store, report) = recovery::open(&path, opts, 2).expect("reopen");
        assert!(!report.unclean);
        assert_eq!(report.check, recovery::CheckOutcome::Skipped);
    }
}
