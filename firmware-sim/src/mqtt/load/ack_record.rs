//! The acknowledged-messages file of a load run (`--record-acked`): one line per message the
//! broker acknowledged, written as the acknowledgements come.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{assignment, device_id};

/// The acknowledged-messages file is flushed at least this often, so a test can follow it while
/// the load runs (and loses at most this much of it if the process is killed).
pub const ACK_RECORD_FLUSH: Duration = Duration::from_secs(1);

/// The acknowledged-messages file: `<device> <seq> <ts>` per line, in PubAck order, written by a
/// task of its own as the acknowledgements come. A message acknowledged again after being
/// re-published would get a second line; a message never acknowledged gets none.
pub struct AckRecord {
    /// `ts` of each message sent and not acknowledged yet, by message index.
    sent: Arc<Mutex<HashMap<u64, i64>>>,
    task: JoinHandle<anyhow::Result<u64>>,
}

/// One line of the acknowledged-messages file (without the newline).
pub fn ack_line(device: usize, seq: u64, ts: i64) -> String {
    format!("{} {seq} {ts}", device_id(device))
}

impl AckRecord {
    /// Creates (truncates) the file at `path`.
    pub fn create(path: &Path) -> anyhow::Result<File> {
        File::create(path).with_context(|| format!("cannot create {}", path.display()))
    }

    /// Starts writing the tags coming out of `acked` to `file` (made by [`AckRecord::create`]).
    pub fn start(file: File, path: &Path, devices: usize, mut acked: mpsc::UnboundedReceiver<u64>) -> AckRecord {
        let sent: Arc<Mutex<HashMap<u64, i64>>> = Arc::default();
        let pending = sent.clone();
        let path = path.to_owned();
        let task = tokio::spawn(async move {
            let mut out = BufWriter::new(file);
            let mut lines = 0u64;
            let mut flush = tokio::time::interval(ACK_RECORD_FLUSH);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let context = || format!("writing {}", path.display());
            loop {
                tokio::select! {
                    tag = acked.recv() => {
                        let Some(i) = tag else { break };
                        let ts = pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&i);
                        let Some(ts) = ts else {
                            anyhow::bail!("acknowledgement for message {i}, which was not sent");
                        };
                        let (device, seq) = assignment(i, devices);
                        writeln!(out, "{}", ack_line(device, seq, ts)).with_context(context)?;
                        lines += 1;
                    }
                    _ = flush.tick() => out.flush().with_context(context)?,
                }
            }
            out.flush().with_context(context)?;
            Ok(lines)
        });
        AckRecord { sent, task }
    }

    /// Notes the `ts` of message `i` before it is published.
    pub fn sending(&self, i: u64, ts: i64) {
        self.sent.lock().unwrap_or_else(PoisonError::into_inner).insert(i, ts);
    }

    /// Waits for the acknowledgement stream to end (the link closed) and returns the lines written.
    pub async fn finish(self) -> anyhow::Result<u64> {
        self.task.await.context("the acknowledgement writer failed")?
    }
}
