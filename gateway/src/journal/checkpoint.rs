//! The checkpoint thread: WAL checkpoints run beside the journal writer instead of inside its
//! commits, with the writer's own automatic checkpoint kept only as a backstop.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

use super::store::{Store, StoreError};
use super::RowId;

/// How often the checkpoint thread copies committed WAL pages into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// WAL size (pages of 4 KiB) at which the writer checkpoints itself, should the checkpoint
/// thread fall behind: 64 MiB.
const CHECKPOINT_BACKSTOP_PAGES: i64 = 16_384;

/// Moves checkpoints off the writer's connection (`store`) to a thread of their own (see
/// [`spawn_checkpointer`]); the writer's automatic checkpoint stays only as a backstop should
/// that thread fall behind.
pub(super) fn take_over_checkpoints(
    store: &Store,
    path: PathBuf,
    committed: watch::Receiver<RowId>,
) -> Result<(), StoreError> {
    store
        .conn()
        .pragma_update(None, "wal_autocheckpoint", CHECKPOINT_BACKSTOP_PAGES)?;
    spawn_checkpointer(path, committed);
    Ok(())
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
fn spawn_checkpointer(path: PathBuf, mut committed: watch::Receiver<RowId>) {
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
