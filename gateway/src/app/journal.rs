//! The journal stages: the journal opened (a damaged file salvaged onto a fresh one, never a
//! reason not to start), its writer thread and the watch over it, and the InfluxDB forwarder
//! that reads committed rows out of it.

use std::path::Path;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{StartError, Wiring};
use crate::clock::system_now_ms;
use crate::config::Secret;
use crate::influx::client::InfluxClient;
use crate::influx::{self, Forwarder};
use crate::journal::recovery::{self, OpenOptions, OpenReport};
use crate::journal::writer::WriterConfig;
use crate::journal::{spawn_writer, Observed, WriterHandle};

/// Committed batches waiting for the rules engine; full = the journal writer waits.
const OBSERVER_CAPACITY: usize = 1024;

/// Committed batches on their way to the rules engine, one queue per journal input.
pub(super) struct Observers {
    pub(super) bulk: mpsc::Receiver<Observed>,
    pub(super) priority: mpsc::Receiver<Observed>,
}

impl Wiring {
    /// Opens the journal (salvaging a damaged file) and starts its writer thread; committed
    /// readings go on to the rules engine through the returned queues, with back-pressure.
    pub(super) fn start_journal(&self) -> Result<(WriterHandle, Observers), StartError> {
        let journal = &self.config.journal;
        let open_options = OpenOptions {
            sync: journal.sync,
            check: journal.integrity_check,
            check_max: Duration::from_secs(journal.integrity_check_max_s),
            hosted: &[crate::alerts::store::HOSTED_IN_JOURNAL],
        };
        let (store, opened) = recovery::open(&self.journal_path, open_options, system_now_ms())?;
        recovery::count(&opened, &self.telemetry);
        let (observer_tx, bulk) = mpsc::channel(OBSERVER_CAPACITY);
        let (priority_observer_tx, priority) = mpsc::channel(OBSERVER_CAPACITY);
        let writer_cfg = self.writer_config(observer_tx, priority_observer_tx);
        let writer = spawn_writer(store, writer_cfg, self.telemetry.clone())?;
        log_opened(&self.journal_path, &writer, &opened);
        Ok((writer, Observers { bulk, priority }))
    }

    fn writer_config(
        &self,
        observer: mpsc::Sender<Observed>,
        observer_priority: mpsc::Sender<Observed>,
    ) -> WriterConfig {
        let config = &self.config;
        WriterConfig {
            commit_max_messages: config.journal.commit_max_messages,
            retention_ms: i64::from(config.journal.retention_days) * 24 * 3600 * 1000,
            disk_budget_bytes: config.journal.disk_budget_mb * 1024 * 1024,
            guard_cursor: config.influx.as_ref().map(|_| influx::CURSOR),
            clock: self.clock,
            observer: Some(observer),
            observer_priority: Some(observer_priority),
            exit_on_corruption: true,
            bulk_linger: crate::journal::writer::BULK_LINGER,
            bulk_linger_gap: crate::journal::writer::BULK_LINGER_GAP,
            // Half the MQTT window: where acknowledgements wait for the commit (external mode), a
            // batch never grows past the window and must not wait for one that cannot. The embedded
            // broker's subscribers acknowledge on receipt, so its window (100) does not stop the flow.
            bulk_linger_messages: usize::from(config.mqtt.inflight / 2).max(1),
        }
    }

    /// The InfluxDB forwarder, when an `[influx]` section is configured.
    pub(super) fn start_influx(&self, token: Option<&Secret>, writer: &WriterHandle) -> Result<(), StartError> {
        let Some(icfg) = &self.config.influx else {
            info!("no [influx] section: the embedded journal is the only store");
            return Ok(());
        };
        let client = InfluxClient::new(icfg, token)?;
        let fwd = Forwarder {
            cfg: icfg.clone(),
            client,
            site: self.config.site.id.clone(),
            journal_path: self.journal_path.clone(),
            committed: writer.committed.clone(),
            telemetry: self.telemetry.clone(),
            clock: self.clock,
        };
        info!(url = %icfg.url, org = %icfg.org, bucket = %icfg.bucket, "InfluxDB forwarding on");
        self.spawn_other("influx-forwarder", fwd.run(self.shutdown.clone()));
        Ok(())
    }

    /// Watches the writer's thread; the receiver is told when it has ended. The writer ends
    /// when the last sender is gone: only the sources hold one, so the handle's are dropped here.
    pub(super) fn watch_writer(&self, writer: WriterHandle) -> Result<oneshot::Receiver<()>, StartError> {
        let WriterHandle {
            tx: _,
            tx_priority: _,
            committed: _,
            thread: writer_thread,
        } = writer;
        let (writer_done_tx, writer_done) = oneshot::channel();
        self.stages
            .watch_thread("journal-writer", writer_thread, Some(writer_done_tx))
            .map_err(StartError::Thread)?;
        Ok(writer_done)
    }
}

/// How the journal was opened, and a warning when the previous run did not stop cleanly.
fn log_opened(path: &Path, writer: &WriterHandle, opened: &OpenReport) {
    info!(
        path = %path.display(),
        last_id = *writer.committed.borrow(),
        unclean_shutdown = opened.unclean,
        check = ?opened.check,
        check_ms = opened.check_ms,
        recovered = opened.recovery.is_some(),
        "journal open"
    );
    if opened.unclean {
        warn!(
            path = %path.display(),
            check = ?opened.check,
            recovered = opened.recovery.is_some(),
            "the previous run did not stop cleanly (killed, crashed or power lost)"
        );
    }
}
