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
//! Beside group commit, the writer keeps the `devices` summary up to date ([`super::devices`]),
//! hands WAL checkpoints to a thread of their own ([`super::checkpoint`]) and enforces
//! retention and the disk budget ([`super::retention`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::params;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error};

use super::devices::{self, DeviceDelta};
use super::store::{Store, StoreError, WriteTurns};
use super::{budget, checkpoint, recovery, retention, Record, RowId};
use crate::clock::Clock;
use crate::telemetry::Telemetry;

pub use super::devices::DEVICES_EVERY;

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
pub(super) enum Lane {
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
    let mut seqs = devices::load_seq_state(&store)?;
    let mut store = store;
    devices::catch_up_devices(&mut store, &mut seqs, last)?;
    if let Some(path) = store.path() {
        checkpoint::take_over_checkpoints(&store, path, committed.clone())?;
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

/// The writer thread's state: the write connection, the inputs and the device bookkeeping.
pub(super) struct Writer {
    pub(super) store: Store,
    pub(super) cfg: WriterConfig,
    pub(super) telemetry: Arc<Telemetry>,
    pub(super) committed: watch::Sender<RowId>,
    /// Last seq per device, to count duplicates, gaps and resets.
    pub(super) seqs: HashMap<String, u64>,
    /// Committed device changes not yet in the `devices` table.
    pub(super) pending: HashMap<String, DeviceDelta>,
    /// When the `devices` table was last brought up to date.
    pub(super) devices_at: Instant,
    /// The small writers of the same file (alerts) go first at each transaction.
    pub(super) turns: Option<WriteTurns>,
    pub(super) rx: mpsc::Receiver<Ingest>,
    pub(super) rx_priority: mpsc::Receiver<Ingest>,
    pub(super) rt: tokio::runtime::Handle,
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
        let mut next_housekeeping = Instant::now() + retention::HOUSEKEEPING_EVERY;
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
                next_housekeeping = Instant::now() + retention::HOUSEKEEPING_EVERY;
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

    /// Commits one transaction of `batch` and accounts its rows to their devices: the `devices`
    /// table comes along when it is due (bulk only), else the changes wait in `pending`.
    pub(super) fn commit(&mut self, batch: &[Ingest], lane: Lane) -> Result<RowId, StoreError> {
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
                devices::account(&mut deltas, &mut seqs, &self.seqs, r);
            }
        }
        let last = tx.last_insert_rowid();
        if update_devices && rows > 0 {
            // Pending and this batch's changes together; the pending ones are kept until the
            // commit holds (a failed commit is retried with the same batch).
            let mut all = self.pending.clone();
            for (id, d) in &deltas {
                devices::merge_into(&mut all, id, d.clone());
            }
            devices::upsert_devices(&tx, all.iter().map(|(k, v)| (k.as_str(), v)), last)?;
        }
        tx.commit()?;
        let (dups, gaps, resets) = deltas.values().fold((0, 0, 0), |a, d| {
            let (dup, gap, reset) = d.seq_anomalies();
            (a.0 + dup, a.1 + gap, a.2 + reset)
        });
        if update_devices && rows > 0 {
            self.pending.clear();
            self.devices_at = Instant::now();
        } else {
            for (id, d) in deltas {
                devices::merge_into(&mut self.pending, id, d);
            }
        }
        devices::remember_seqs(&mut self.seqs, seqs);
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
    pub(super) fn let_others_go_first(&self) {
        if let Some(turns) = &self.turns {
            turns.let_others_go_first();
        }
    }

    /// Retention by age, then the disk budget (see [`super::retention`]).
    pub(super) fn housekeeping(&mut self) {
        retention::housekeeping(&self.store, &self.cfg, &self.telemetry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::test_support::{config, opts, record, temp_db, wait_until, IntegrityCheck, SyncPolicy};
    use crate::reading::Value;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_acknowledge_after_durability_and_count_seq_anomalies() {
        let (_dir, path) = temp_db("seq");
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
        let (_dir, path) = temp_db("priority");
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
            wait_until(Duration::from_secs(30), "the bulk message acknowledged", || {
                log.lock().expect("log").len() >= seq as usize
            })
            .await;
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

    /// Measures what a life-safety reading waits for: one running bulk commit at most, never
    /// the backlog.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_priority_reading_waits_at_most_one_bulk_commit_not_the_backlog() {
        // Through the writer: a priority reading sent every 20 ms while 40,000 bulk messages stream in.
        let (_dir, path) = temp_db("priority-latency");
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_bulk_batch_lingers_but_a_priority_reading_does_not_wait_for_it() {
        let (_dir, path) = temp_db("linger");
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
        // The writer takes both off the queue, then lingers: no commit reaches the observer
        // within the linger window.
        wait_until(Duration::from_secs(30), "the writer takes the bulk messages", || {
            w.tx.capacity() == QUEUE_CAPACITY
        })
        .await;
        assert!(
            tokio::time::timeout(Duration::from_millis(200), obs_rx.recv())
                .await
                .is_err(),
            "lingering, nothing committed yet"
        );
        assert!(
            log.lock().expect("log").is_empty(),
            "lingering, nothing acknowledged yet"
        );
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
        let (_dir, path) = temp_db("marker");
        let options = opts(IntegrityCheck::AfterCrash);
        let (store, report) = recovery::open(&path, options, 1).expect("open");
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
        let (_store, report) = recovery::open(&path, options, 2).expect("reopen");
        assert!(!report.unclean);
        assert_eq!(report.check, recovery::CheckOutcome::Skipped);
    }
}
