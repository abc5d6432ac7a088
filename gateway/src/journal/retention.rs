//! Retention and the disk budget: what the journal writer deletes, every
//! [`HOUSEKEEPING_EVERY`]. Rows older than the retention go once forwarded; over the budget the
//! oldest forwarded rows go next, then, while InfluxDB is behind, the oldest rows that are not
//! life-safety (as [`super::budget`] says). Life-safety readings not yet forwarded and the
//! tables of other modules (the alerts) are never deleted here.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{info, warn};

use super::store::{Store, StoreError};
use super::writer::WriterConfig;
use super::RowId;
use crate::telemetry::Telemetry;

/// How often retention and the disk budget are enforced.
pub(super) const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(30);

/// Rows deleted per statement when over budget, so a delete never holds the lock for long.
const BUDGET_DELETE_CHUNK: usize = 10_000;

/// Unforwarded rows dropped per statement: small, so the budget drops little more than needed.
const UNFORWARDED_DROP_CHUNK: usize = 1_000;

/// Retention by age, then the disk budget as [`super::budget`] says. Retention deletes only
/// rows already forwarded (when a forwarder exists). A failure is logged; the next round tries
/// again.
pub(super) fn housekeeping(store: &Store, cfg: &WriterConfig, telemetry: &Telemetry) {
    if let Err(e) = enforce(store, cfg, telemetry) {
        warn!(error = %e, "journal housekeeping failed");
    }
}

fn enforce(store: &Store, cfg: &WriterConfig, telemetry: &Telemetry) -> Result<(), StoreError> {
    let forwarded_up_to = match cfg.guard_cursor {
        Some(name) => store.cursor(name)?,
        None => i64::MAX,
    };
    let budget = cfg.disk_budget_bytes;
    let mut size = delete_forwarded(store, cfg, forwarded_up_to, telemetry)?;
    if cfg.guard_cursor.is_some() {
        size = drop_unforwarded(store, budget, forwarded_up_to, size, telemetry)?;
    }
    if size > budget {
        warn!(
            size_bytes = size,
            budget_bytes = budget,
            "journal over its disk budget with only life-safety readings and alerts left: keeping them"
        );
        telemetry.journal_over_budget.fetch_add(1, Ordering::Relaxed);
    }
    telemetry.journal_bytes.store(size, Ordering::Relaxed);
    Ok(())
}

/// Deletes the forwarded rows older than the retention, then, while over the budget, the oldest
/// forwarded rows of any kind. Returns the size left.
fn delete_forwarded(
    store: &Store,
    cfg: &WriterConfig,
    forwarded_up_to: RowId,
    telemetry: &Telemetry,
) -> Result<u64, StoreError> {
    let now = cfg.clock.now_ms();
    let mut deleted = store.delete_older(now - cfg.retention_ms, forwarded_up_to)?;
    let budget = cfg.disk_budget_bytes;
    let mut size = store.size_bytes()?;
    while size > budget {
        let n = store.delete_oldest(BUDGET_DELETE_CHUNK, forwarded_up_to)?;
        if n == 0 {
            break;
        }
        deleted += n;
        // Deleted pages go to the free list; size_bytes() counts pages in use.
        size = store.size_bytes()?;
    }
    if deleted > 0 {
        info!(deleted, "journal retention");
        telemetry.journal_deleted.fetch_add(deleted, Ordering::Relaxed);
    }
    Ok(size)
}

/// While still over the budget with InfluxDB behind: drops the oldest rows not yet forwarded
/// that are not life-safety. Returns the size left.
fn drop_unforwarded(
    store: &Store,
    budget: u64,
    forwarded_up_to: RowId,
    mut size: u64,
    telemetry: &Telemetry,
) -> Result<u64, StoreError> {
    let mut dropped = 0;
    while size > budget {
        let n = store.delete_oldest_unprotected(UNFORWARDED_DROP_CHUNK, forwarded_up_to)?;
        if n == 0 {
            break;
        }
        dropped += n;
        size = store.size_bytes()?;
    }
    if dropped > 0 {
        warn!(
            dropped,
            forwarded_up_to,
            budget_bytes = budget,
            "journal over its disk budget while InfluxDB is behind: dropped the oldest non-life-safety readings not yet forwarded"
        );
        telemetry
            .journal_dropped_unforwarded
            .fetch_add(dropped, Ordering::Relaxed);
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::journal::test_support::{config, hosted_counts, manual, record, temp_db, SyncPolicy, HOSTED_SCHEMA};
    use crate::journal::writer::{Ingest, Lane, Writer};
    use crate::reading::Value;

    #[test]
    fn retention_deletes_only_what_was_forwarded() {
        let (_dir, path) = temp_db("retention");
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

    #[test]
    fn over_budget_with_influx_behind_drops_forwarded_then_the_oldest_non_life_safety_rows_only() {
        let (_dir, path) = temp_db("budget");
        let telemetry = Arc::new(Telemetry::default());
        let mut cfg = config(None);
        cfg.retention_ms = i64::MAX / 4; // the budget alone at work
        let mut w = manual(&path, SyncPolicy::Normal, cfg, telemetry.clone());
        // Other modules' tables (the alerts) live in the same file; the budget must never touch them.
        w.store.conn_mut().execute_batch(HOSTED_SCHEMA).expect("hosted tables");
        let hosted_before = hosted_counts(&mut w.store);
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
        assert_eq!(hosted_counts(&mut w.store), hosted_before);
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
        assert_eq!(hosted_counts(&mut w.store), hosted_before);
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
        let (_dir, path) = temp_db("budget-no-influx");
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
}
