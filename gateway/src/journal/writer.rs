//! The journal writer: one thread owns the write connection. Whatever arrives while a commit is
//! running becomes the next transaction (group commit), so throughput grows with load while a
//! lone reading is still committed at once. Only after the commit are the messages acknowledged
//! to their source, in arrival order.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::params;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::store::{Store, StoreError};
use super::{Record, RowId};
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
    /// Above this size the oldest deletable rows go.
    pub disk_budget_bytes: u64,
    /// When set, only rows at or below this cursor (already forwarded) may be deleted.
    pub guard_cursor: Option<&'static str>,
    pub clock: Clock,
    /// Receives every committed batch of records (the rules engine). Sent with back-pressure:
    /// a slow engine slows the writer, it never loses a reading.
    pub observer: Option<mpsc::Sender<Vec<Record>>>,
}

/// Capacity of the queue into the writer, in messages. Full = the sources wait (back-pressure
/// to the broker), never drop.
pub const QUEUE_CAPACITY: usize = 20_000;

/// How often retention and the disk budget are enforced.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(30);

/// Rows deleted per statement when over budget, so a delete never holds the lock for long.
const BUDGET_DELETE_CHUNK: usize = 10_000;

pub struct WriterHandle {
    pub tx: mpsc::Sender<Ingest>,
    /// The last committed row id.
    pub committed: watch::Receiver<RowId>,
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts the writer thread. It ends once every sender is dropped and the queue is drained.
pub fn spawn_writer(store: Store, cfg: WriterConfig, telemetry: Arc<Telemetry>) -> Result<WriterHandle, StoreError> {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let last = store.last_id()?;
    telemetry.journal_last_id.store(last, Ordering::Relaxed);
    let (committed_tx, committed) = watch::channel(last);
    let seqs = load_seq_state(&store)?;
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
                rx,
                rt,
            };
            w.run();
        })
        .map_err(|e| StoreError::Open {
            path: "journal-writer thread".into(),
            source: rusqlite::Error::InvalidPath(e.to_string().into()),
        })?;
    Ok(WriterHandle { tx, committed, thread })
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
    rx: mpsc::Receiver<Ingest>,
    rt: tokio::runtime::Handle,
}

#[derive(Default)]
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

impl Writer {
    fn run(&mut self) {
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING_EVERY;
        self.housekeeping();
        loop {
            let wait = next_housekeeping.saturating_duration_since(Instant::now());
            let rx = &mut self.rx;
            let first = self.rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await });
            match first {
                Ok(Some(first)) => {
                    let mut batch = vec![first];
                    while batch.len() < self.cfg.commit_max_messages {
                        match self.rx.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    self.commit_until_done(batch);
                }
                Ok(None) => {
                    debug!("journal writer: all sources closed");
                    return;
                }
                Err(_elapsed) => {}
            }
            if Instant::now() >= next_housekeeping {
                self.housekeeping();
                next_housekeeping = Instant::now() + HOUSEKEEPING_EVERY;
            }
        }
    }

    /// Commits a batch, retrying with backoff while the disk refuses: readings are never
    /// dropped here; meanwhile the queue fills and the sources stop reading.
    fn commit_until_done(&mut self, batch: Vec<Ingest>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.commit(&batch) {
                Ok(last) => {
                    self.telemetry.journal_last_id.store(last, Ordering::Relaxed);
                    self.committed.send_replace(last);
                    let mut records = Vec::new();
                    for ingest in batch {
                        if let Some(Ack(f)) = ingest.ack {
                            f();
                        }
                        records.extend(ingest.records);
                    }
                    if let Some(observer) = &self.cfg.observer {
                        if !records.is_empty() && observer.blocking_send(records).is_err() {
                            debug!("rules engine gone; committed readings not observed");
                        }
                    }
                    return;
                }
                Err(e) => {
                    self.telemetry.journal_commit_errors.fetch_add(1, Ordering::Relaxed);
                    error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "journal commit failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    fn commit(&mut self, batch: &[Ingest]) -> Result<RowId, StoreError> {
        let mut seqs = self.seqs.clone();
        let mut deltas: HashMap<&str, DeviceDelta> = HashMap::new();
        let mut rows = 0u64;
        let conn = self.store.conn_mut();
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO readings (device, class, building, floor, room, zone, ts, ts_recv, ts_replaced, seq, metrics)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
                    metrics
                ])?;
                rows += 1;
                let d = deltas.entry(r.device.as_str()).or_default();
                d.class.clone_from(&r.class);
                d.room.clone_from(&r.room);
                d.last_seen = d.last_seen.max(r.ts_recv);
                d.last_ts = d.last_ts.max(r.ts);
                d.readings += 1;
                d.metrics.extend(r.metrics.iter().map(|(k, v)| (k.clone(), v.clone())));
                if let Some(seq) = r.seq {
                    match seqs.get(&r.device).copied() {
                        Some(prev) if seq == prev => d.duplicates += 1,
                        Some(prev) if seq > prev + 1 => d.gaps += seq - prev - 1,
                        Some(prev) if seq < prev => d.resets += 1,
                        _ => {}
                    }
                    seqs.insert(r.device.clone(), seq);
                    d.last_seq = Some(seq);
                }
            }
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
            for (id, d) in &deltas {
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
        }
        tx.commit()?;
        let (dups, gaps, resets) = deltas
            .values()
            .fold((0, 0, 0), |a, d| (a.0 + d.duplicates, a.1 + d.gaps, a.2 + d.resets));
        self.seqs = seqs;
        let t = &self.telemetry;
        t.journal_commits.fetch_add(1, Ordering::Relaxed);
        t.journal_rows.fetch_add(rows, Ordering::Relaxed);
        t.readings_accepted.fetch_add(rows, Ordering::Relaxed);
        t.seq_duplicates.fetch_add(dups, Ordering::Relaxed);
        t.seq_gaps.fetch_add(gaps, Ordering::Relaxed);
        t.seq_resets.fetch_add(resets, Ordering::Relaxed);
        self.store.last_id()
    }

    /// Retention by age and the disk budget. Only rows already forwarded (when a forwarder
    /// exists) are deleted.
    fn housekeeping(&mut self) {
        let result = (|| -> Result<(), StoreError> {
            let max_id = match self.cfg.guard_cursor {
                Some(name) => self.store.cursor(name)?,
                None => i64::MAX,
            };
            let now = self.cfg.clock.now_ms();
            let mut deleted = self.store.delete_older(now - self.cfg.retention_ms, max_id)?;
            let mut size = self.store.size_bytes()?;
            while size > self.cfg.disk_budget_bytes {
                let n = self.store.delete_oldest(BUDGET_DELETE_CHUNK, max_id)?;
                if n == 0 {
                    warn!(
                        size_bytes = size,
                        budget_bytes = self.cfg.disk_budget_bytes,
                        "journal over its disk budget and nothing forwarded is left to delete"
                    );
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
    use crate::config::SyncPolicy;
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

    fn config(observer: Option<mpsc::Sender<Vec<Record>>>) -> WriterConfig {
        WriterConfig {
            commit_max_messages: 100,
            retention_ms: 3_600_000,
            disk_budget_bytes: u64::MAX,
            guard_cursor: Some("influx"),
            clock: Clock::test(0, 10_000_000, 1.0),
            observer,
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
            observed += obs_rx.recv().await.expect("observer").len();
        }
        w.committed.wait_for(|id| *id >= 5).await.expect("committed");
        drop(w.tx);
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
    fn retention_deletes_only_what_was_forwarded() {
        let path = temp_db("retention");
        let store = Store::open(&path, SyncPolicy::Normal).expect("open");
        let mut w = Writer {
            store,
            cfg: config(None),
            telemetry: Arc::new(Telemetry::default()),
            committed: watch::channel(0).0,
            seqs: HashMap::new(),
            rx: mpsc::channel(1).1,
            rt: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("rt")
                .handle()
                .clone(),
        };
        // Clock reads 10,000,000 ms; retention 1 h: rows received at 1000..1009 are old.
        let batch: Vec<Ingest> = (0..10)
            .map(|i| Ingest {
                records: vec![record("d", 1000 + i, None, &[("spo2", Value::Num(97.0))])],
                ack: None,
            })
            .collect();
        w.commit(&batch).expect("commit");
        w.store.set_cursor("influx", 4).expect("cursor");
        w.housekeeping();
        let left: Vec<i64> = w.store.rows_after(0, 100).expect("rows").iter().map(|r| r.id).collect();
        assert_eq!(left, vec![5, 6, 7, 8, 9, 10], "rows not yet forwarded must stay");
        // Ids are never reused after deletes (the forwarder's cursor relies on it).
        w.commit(&[Ingest {
            records: vec![record("d", 2000, None, &[("spo2", Value::Num(96.0))])],
            ack: None,
        }])
        .expect("commit");
        assert_eq!(w.store.last_id().expect("last"), 11);
    }
}
