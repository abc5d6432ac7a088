//! The InfluxDB forwarder: reads the journal from a persisted cursor, writes batches of line
//! protocol, and advances the cursor only after the database accepted a batch. Transient
//! failures (timeouts, refused connections, 5xx, 429) are retried with backoff and never skip
//! data; a batch refused as malformed (4xx) is split to isolate the bad lines, which are
//! quarantined in the journal and counted, so one bad line never stalls the cursor.
//!
//! - [`line_protocol`]: the record -> line formatting.
//! - [`client`]: the one place that talks to the `influxdb2` crate.

pub mod client;
pub mod config;
pub mod line_protocol;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::clock::Clock;
use crate::journal::{ReadingRow, RowId, Store, StoreError};
use crate::telemetry::Telemetry;
use client::{InfluxClient, WriteError};
use config::InfluxConfig;

/// The cursor's name in the journal.
pub const CURSOR: &str = "influx";
/// Last row of the batch being written, stored before the write: after a crash, rows between
/// the cursor and it may already be in the database and are written again.
pub const INFLIGHT: &str = "influx_inflight";
/// Lines written again after crashes, over the journal's life (kept as a cursor row).
pub const REPLAYED: &str = "influx_replayed_lines";

/// First retry delay; doubles up to `backoff_max_ms`.
const BACKOFF_START: Duration = Duration::from_millis(200);

pub struct Forwarder {
    pub cfg: InfluxConfig,
    pub client: InfluxClient,
    pub site: String,
    pub journal_path: PathBuf,
    pub committed: watch::Receiver<RowId>,
    pub telemetry: Arc<Telemetry>,
    pub clock: Clock,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("journal task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl Forwarder {
    /// Runs until cancelled. Store errors are retried; they never end the task.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_START;
        loop {
            match self.run_inner(&shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    error!(error = %e, "influx forwarder: journal error; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_millis(self.cfg.backoff_max_ms));
                }
            }
        }
    }

    async fn run_inner(&mut self, shutdown: &CancellationToken) -> Result<(), ForwarderError> {
        let path = self.journal_path.clone();
        let store = tokio::task::spawn_blocking(move || Store::open_secondary(&path)).await??;
        let store = Arc::new(std::sync::Mutex::new(store));
        let (mut cursor, inflight, mut replayed) = blocking(&store, |s| {
            Ok((s.cursor(CURSOR)?, s.cursor(INFLIGHT)?, s.cursor(REPLAYED)?))
        })
        .await?;
        if inflight > cursor {
            // A batch was on its way when the gateway stopped: the database may hold it already.
            // InfluxDB overwrites such points; stores that keep both (VictoriaMetrics) hold up to
            // this many duplicates, counted here.
            replayed += inflight - cursor;
            warn!(
                cursor,
                inflight,
                lines = inflight - cursor,
                "a batch in flight at the last stop is written again"
            );
            blocking(&store, move |s| {
                s.set_cursor(REPLAYED, replayed)?;
                s.set_cursor(INFLIGHT, cursor)
            })
            .await?;
        }
        self.telemetry
            .influx_replayed
            .store(replayed.max(0) as u64, Ordering::Relaxed);
        self.telemetry.influx_cursor.store(cursor, Ordering::Relaxed);
        info!(cursor, "influx forwarder started");
        let batch_max = self.cfg.batch_max_lines;
        let linger = Duration::from_millis(self.cfg.linger_ms);
        loop {
            // Wait for rows past the cursor: a full batch at once, a partial one after `linger`.
            let mut first_seen: Option<Instant> = None;
            loop {
                let available = *self.committed.borrow_and_update() - cursor;
                if available >= batch_max as i64 {
                    break;
                }
                if available > 0 {
                    let since = *first_seen.get_or_insert_with(Instant::now);
                    if since.elapsed() >= linger {
                        break;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(linger.saturating_sub(since.elapsed())) => {}
                        _ = self.committed.changed() => {}
                    }
                } else {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        changed = self.committed.changed() => {
                            if changed.is_err() {
                                // The writer is gone (shutdown): forward what is left, then stop.
                                if *self.committed.borrow() <= cursor { return Ok(()); }
                            }
                        }
                    }
                }
            }
            let after = cursor;
            let rows = blocking(&store, move |s| s.rows_after(after, batch_max)).await?;
            let Some(last) = rows.last().map(|r| r.id) else {
                // Rows deleted by retention before they were forwarded: jump over the hole.
                cursor = *self.committed.borrow();
                continue;
            };
            blocking(&store, move |s| s.set_cursor(INFLIGHT, last)).await?;
            if !self.write_rows(&store, &rows, shutdown).await? {
                return Ok(());
            }
            blocking(&store, move |s| s.set_cursor(CURSOR, last)).await?;
            cursor = last;
            self.telemetry.influx_cursor.store(cursor, Ordering::Relaxed);
        }
    }

    /// Writes rows until the database has taken every line but the quarantined ones. Returns
    /// false when cancelled first.
    async fn write_rows(
        &self,
        store: &Arc<std::sync::Mutex<Store>>,
        rows: &[ReadingRow],
        shutdown: &CancellationToken,
    ) -> Result<bool, ForwarderError> {
        // Ranges of `rows` still to write; a refused range is split in halves. Lines are
        // formatted straight into the request body: no String per line.
        let mut pending = vec![(0usize, rows.len())];
        let mut backoff = BACKOFF_START;
        while let Some((start, end)) = pending.pop() {
            let mut body = String::with_capacity((end - start) * 200);
            for r in &rows[start..end] {
                line_protocol::write_line(&mut body, &self.site, &r.record);
            }
            match self.client.write(body).await {
                Ok(()) => {
                    backoff = BACKOFF_START;
                    self.telemetry.influx_batches.fetch_add(1, Ordering::Relaxed);
                    self.telemetry
                        .influx_lines
                        .fetch_add((end - start) as u64, Ordering::Relaxed);
                }
                Err(WriteError::Malformed { status, message }) => {
                    self.telemetry.influx_failure("malformed");
                    if end - start > 1 {
                        let mid = start + (end - start) / 2;
                        pending.push((mid, end));
                        pending.push((start, mid));
                    } else {
                        let (id, line) = (rows[start].id, line_protocol::line(&self.site, &rows[start].record));
                        let error = format!("HTTP {status}: {message}");
                        warn!(reading_id = id, %error, "line refused by the database; quarantined");
                        let at = self.clock.now_ms();
                        blocking(store, move |s| s.quarantine(at, id, &line, &error)).await?;
                        self.telemetry.influx_quarantined.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(WriteError::Transient { kind, message }) => {
                    self.telemetry.influx_failure(kind);
                    warn!(kind, error = %message, retry_in_ms = backoff.as_millis() as u64, "database write failed; will retry");
                    pending.push((start, end));
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_millis(self.cfg.backoff_max_ms));
                }
            }
        }
        Ok(true)
    }
}

/// Runs a journal call on the blocking pool.
async fn blocking<T: Send + 'static>(
    store: &Arc<std::sync::Mutex<Store>>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ForwarderError> {
    let store = store.clone();
    let result = tokio::task::spawn_blocking(move || {
        let guard = store.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&guard)
    })
    .await?;
    Ok(result?)
}
