//! The `devices` table: each device's last state and counters, a summary of the journal's rows.
//!
//! The writer brings it up to date at most every [`DEVICES_EVERY`] inside a bulk commit, or by
//! itself when it has nothing else to do; with it a mark (`cursors.devices`) names the last row
//! it reflects. Written per commit, its upserts were about half of the WAL pages of a commit at
//! 2,000 devices. A crash loses none of it: at start the rows after the mark are counted again
//! ([`catch_up_devices`]). The seq checks (duplicates, gaps, resets) are counted here too.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rusqlite::params;
use tracing::{info, warn};

use super::store::{Store, StoreError};
use super::writer::Writer;
use super::{Record, RowId};

/// How often at most the `devices` table is brought up to date while commits come (the
/// device list of the API is at most this much behind the journal; idle, at most this much
/// after the last commit).
pub const DEVICES_EVERY: Duration = Duration::from_secs(1);

/// The cursor naming the last row the `devices` table reflects.
const DEVICES_MARK: &str = "devices";

/// Rows read per query when the rows after the mark are counted again at start.
const DEVICES_REPLAY_CHUNK: usize = 10_000;

/// The last seq of every device, as the `devices` table has it: the seq checks of the next
/// rows start from there.
pub(super) fn load_seq_state(store: &Store) -> Result<HashMap<String, u64>, StoreError> {
    Ok(store
        .devices()?
        .into_iter()
        .filter_map(|d| Some((d.id, d.last_seq?)))
        .collect())
}

/// What committed rows changed of one device, not yet in the `devices` table.
#[derive(Default, Clone)]
pub(super) struct DeviceDelta {
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

    /// Its seq anomalies: (duplicates, gaps, resets).
    pub(super) fn seq_anomalies(&self) -> (u64, u64, u64) {
        (self.duplicates, self.gaps, self.resets)
    }
}

/// Adds a device's delta to the pending ones.
pub(super) fn merge_into(pending: &mut HashMap<String, DeviceDelta>, id: &str, d: DeviceDelta) {
    match pending.get_mut(id) {
        Some(p) => p.merge(d),
        None => {
            pending.insert(id.to_owned(), d);
        }
    }
}

/// One committed row's share of its device's delta, with the seq checks against the batch's
/// own seqs, then the last known ones.
pub(super) fn account<'a>(
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
pub(super) fn remember_seqs(known: &mut HashMap<String, u64>, seqs: HashMap<&str, u64>) {
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
pub(super) fn upsert_devices<'a>(
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
pub(super) fn catch_up_devices(
    store: &mut Store,
    seqs: &mut HashMap<String, u64>,
    last: RowId,
) -> Result<(), StoreError> {
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

impl Writer {
    /// Writes the pending device changes into the `devices` table in a transaction of their
    /// own (the writer is idle, or stopping). A failure keeps them pending for the next try.
    pub(super) fn update_devices(&mut self) {
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
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::journal::test_support::{config, manual, record, temp_db, SyncPolicy};
    use crate::journal::writer::{Ingest, Lane};
    use crate::reading::Value;
    use crate::telemetry::Telemetry;

    #[test]
    fn the_devices_table_follows_at_most_every_second_and_a_crash_loses_none_of_it() {
        let (_dir, path) = temp_db("devices-mark");
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
}
