//! The journal: the durable local store every reading is committed to before it is acknowledged.
//!
//! SQLite (bundled, WAL mode): a single file that survives a crash of the process (and, with
//! `sync = "full"`, a power loss) at every commit, can be inspected with the `sqlite3` CLI on the
//! box, and answers history queries with an index instead of a home-made one. One writer thread
//! owns the write connection and groups whatever arrived during the previous commit into the
//! next transaction (group commit); readers use their own connections.
//!
//! - [`writer`]: the writer thread, its priority and bulk inputs, group commit and
//!   acknowledgements.
//! - [`devices`]: the `devices` summary table, brought up to date behind the commits.
//! - [`checkpoint`]: the thread that checkpoints the WAL beside the writer.
//! - [`retention`]: retention by age and the disk budget, enforced by the writer.
//! - [`store`]: the schema and every query (history, devices, cursors, quarantine).
//! - [`recovery`]: opening after a crash: the start-up check, the tables of other modules
//!   ([`recovery::HostedTables`]).
//! - [`salvage`]: rebuilding a damaged file: what is readable copied onto a fresh one.
//! - [`budget`]: what the disk budget may delete, and what is life-safety and never is.
//! - [`lock`]: one gateway per journal (an OS file lock held for the process's life).

pub mod budget;
pub mod checkpoint;
pub mod config;
pub mod devices;
pub mod lock;
pub mod recovery;
pub mod retention;
pub mod salvage;
pub mod store;
#[cfg(test)]
pub(crate) mod test_support;
pub mod writer;

use serde::Serialize;

pub use crate::reading::Record;
pub use store::{DeviceRow, ReadingRow, Store, StoreError};
pub use writer::{spawn_writer, Ack, Ingest, WriterHandle};

/// Journal row id of a record; increases with every commit and is never reused.
pub type RowId = i64;

/// One committed transaction, as the rules engine receives it: its records and the id of its
/// last row, which the engine persists with its state so that a restart judges again whatever
/// was committed after the last save (a crash between commit and alert loses no alert).
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The last row id before this transaction: it holds the rows `(after, last_id]`.
    pub after: RowId,
    pub last_id: RowId,
    pub records: Vec<Record>,
}

/// A reading as the API returns it.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryReading {
    pub ts: i64,
    pub ts_recv: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub metrics: serde_json::Value,
}
