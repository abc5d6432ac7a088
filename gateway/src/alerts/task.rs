//! The one stateful task of rules and alerts: it owns the rules engine and the alert lifecycle,
//! is fed committed readings, a 1 s ticker on the gateway clock, and commands from the API, and
//! is the only writer of the alert tables.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::lifecycle::{AlertError, Lifecycle, Policy};
use super::model::{Alert, Resolution};
use crate::clock::Clock;
use crate::journal::{Observed, RowId};
use crate::reading::Record;
use crate::rules::output::{Priority, RuleOutput};
use crate::rules::{Engine, EngineState, RuleSet};

/// Name of the rules engine snapshot in `engine_state`.
pub const ENGINE_STATE: &str = "rules_engine";
/// The last journal row the saved engine state has judged.
pub const OBSERVED_ROW: &str = "rules_observed_row";

/// Real-time period of the clock tick: escalation and absence rules need no message to fire.
pub const TICK: Duration = Duration::from_secs(1);

/// The engine state is saved every this many ticks (and at a stop): serializing it takes
/// milliseconds with thousands of devices, and a life-safety reading arriving meanwhile waits.
/// A crash loses nothing by it: the rows after the saved watermark are judged again at start.
pub const TICKS_PER_SAVE: u32 = 5;

/// Commands waiting for the task. The API awaits room (back-pressure), never drops: a nurse's
/// acknowledgement is not something to lose.
pub const COMMAND_CAPACITY: usize = 256;

/// Engine outputs kept for a retry when the store refused a commit; beyond this the oldest are
/// logged and dropped (the database is then gone for longer than any retry helps).
const MAX_PENDING: usize = 10_000;

/// A request from the API to the task, answered on `reply`.
#[derive(Debug)]
pub enum Command {
    Ack {
        id: String,
        by: String,
        note: Option<String>,
        reply: oneshot::Sender<Result<Alert, AlertError>>,
    },
    Resolve {
        id: String,
        by: String,
        note: Option<String>,
        resolution: Resolution,
        reply: oneshot::Sender<Result<Alert, AlertError>>,
    },
}

/// What the API holds to change alerts: a cloneable sender of commands.
#[derive(Debug, Clone)]
pub struct AlertsHandle {
    tx: mpsc::Sender<Command>,
}

impl AlertsHandle {
    pub async fn ack(&self, id: String, by: String, note: Option<String>) -> Result<Alert, AlertError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Ack { id, by, note, reply }, rx).await
    }

    pub async fn resolve(
        &self,
        id: String,
        by: String,
        note: Option<String>,
        resolution: Resolution,
    ) -> Result<Alert, AlertError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Resolve {
            id,
            by,
            note,
            resolution,
            reply,
        };
        self.send(cmd, rx).await
    }

    async fn send(&self, cmd: Command, rx: oneshot::Receiver<Result<Alert, AlertError>>) -> Result<Alert, AlertError> {
        self.tx.send(cmd).await.map_err(|_| AlertError::Unavailable)?;
        rx.await.map_err(|_| AlertError::Unavailable)?
    }
}

/// The command channel: the handle for the API, the receiver for [`AlertsTask::run`].
pub fn command_channel() -> (AlertsHandle, mpsc::Receiver<Command>) {
    let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
    (AlertsHandle { tx }, rx)
}

/// R19/R20 numbers from the rules file.
pub fn policy_from_rules(rules: &RuleSet) -> Policy {
    let tiers = |p| rules.escalation_s(p).to_vec();
    Policy {
        escalation_s: [
            tiers(Priority::P1),
            tiers(Priority::P2),
            tiers(Priority::P3),
            tiers(Priority::P4),
        ],
        correlation_window_ms: rules.correlation_window_ms(),
        renotify_suppress_ms: rules.renotify_suppress_ms(),
    }
}

/// What the task needs of the rules engine; implemented by [`rules::Engine`](Engine), and by
/// scripted engines in tests.
pub trait RulesEngine: Send {
    type State: Serialize + DeserializeOwned;
    fn observe(&mut self, record: &Record, now_ms: i64) -> Vec<RuleOutput>;
    fn tick(&mut self, now_ms: i64) -> Vec<RuleOutput>;
    /// Whether the condition of `rule` still holds for `subject` (resolve refuses hazards that do).
    fn holds(&self, rule: &str, subject: &str) -> bool;
    fn snapshot(&self) -> Self::State;
    fn restore(&mut self, state: Self::State);
}

impl RulesEngine for Engine {
    type State = EngineState;

    fn observe(&mut self, record: &Record, now_ms: i64) -> Vec<RuleOutput> {
        Engine::observe(self, record, now_ms)
    }

    fn tick(&mut self, now_ms: i64) -> Vec<RuleOutput> {
        Engine::tick(self, now_ms)
    }

    fn holds(&self, rule: &str, subject: &str) -> bool {
        Engine::holds(self, rule, subject)
    }

    fn snapshot(&self) -> EngineState {
        Engine::snapshot(self)
    }

    fn restore(&mut self, state: EngineState) {
        self.load_state(state)
    }
}

pub struct AlertsTask<E: RulesEngine = Engine> {
    engine: E,
    lifecycle: Lifecycle,
    last_seq: watch::Sender<u64>,
    /// The engine snapshot last written, so an unchanged one is not written again.
    saved_engine: Option<String>,
    /// Engine outputs a failed commit left to apply.
    pending: Vec<RuleOutput>,
    /// Every journal row up to this one is judged (`None`: never saved, e.g. a journal older
    /// than this field). Priority transactions can be judged before older bulk ones, so this
    /// moves only over a gap-free run of judged transactions.
    observed_row: Option<RowId>,
    /// Judged transactions above `observed_row` that a gap still separates from it: after -> last.
    judged_ahead: BTreeMap<RowId, RowId>,
    /// The value of `observed_row` last written.
    saved_row: Option<RowId>,
    /// Ticks since the engine state was last saved.
    ticks_unsaved: u32,
}

impl<E: RulesEngine> AlertsTask<E> {
    /// Restores the engine from its saved snapshot (the lifecycle restored itself from the
    /// alert rows when opened).
    pub fn new(mut engine: E, lifecycle: Lifecycle) -> AlertsTask<E> {
        let saved_engine = match lifecycle.store().load_state(ENGINE_STATE) {
            Ok(saved) => saved,
            Err(e) => {
                error!(error = %e, "rules engine state unreadable; starting fresh");
                None
            }
        };
        if let Some(json) = &saved_engine {
            match serde_json::from_str(json) {
                Ok(state) => {
                    engine.restore(state);
                    info!("rules engine state restored");
                }
                Err(e) => error!(error = %e, "rules engine state not understood; starting fresh"),
            }
        }
        let observed_row = match lifecycle.store().load_state(OBSERVED_ROW) {
            Ok(v) => v.and_then(|v| v.parse::<RowId>().ok()),
            Err(e) => {
                error!(error = %e, "last judged journal row unreadable");
                None
            }
        };
        let (last_seq, _) = watch::channel(lifecycle.last_seq());
        info!(
            open_alerts = lifecycle.open_alerts().count(),
            last_seq = lifecycle.last_seq(),
            "alerts open"
        );
        AlertsTask {
            engine,
            lifecycle,
            last_seq,
            saved_engine,
            pending: Vec::new(),
            observed_row,
            judged_ahead: BTreeMap::new(),
            saved_row: observed_row,
            ticks_unsaved: 0,
        }
    }

    /// The last journal row the restored engine state has judged; `None` when never recorded.
    pub fn observed_row(&self) -> Option<RowId> {
        self.observed_row
    }

    /// Records that every row up to `row` counts as judged (where judging starts on a journal
    /// that never recorded it).
    pub fn mark_judged(&mut self, row: RowId) {
        self.observed_row = Some(row);
    }

    /// Judges rows committed before this start that the saved state had not seen yet (the
    /// gateway stopped between their commit and the next save), oldest first. Alerts they raise
    /// that are already open are deduplicated by the lifecycle.
    pub fn replay(&mut self, rows: &[(RowId, Record)], now: i64) {
        let Some(last) = rows.last().map(|r| r.0) else { return };
        let records: Vec<Record> = rows.iter().map(|(_, r)| r.clone()).collect();
        self.observe(&records, now);
        self.observed_row = Some(last);
        self.save_engine();
    }

    /// The last committed alert seq. Delivery stages wait on it, then read `alert_events` after
    /// their own cursor: a watch coalesces, the log keeps every event.
    pub fn events(&self) -> watch::Receiver<u64> {
        self.last_seq.subscribe()
    }

    /// Judges committed transactions, the priority input's first, until cancelled.
    pub async fn run(
        mut self,
        mut priority: mpsc::Receiver<Observed>,
        mut readings: mpsc::Receiver<Observed>,
        mut commands: mpsc::Receiver<Command>,
        clock: Clock,
        shutdown: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut readings_open, mut priority_open, mut commands_open) = (true, true, true);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                cmd = commands.recv(), if commands_open => match cmd {
                    Some(cmd) => self.command(cmd, clock.now_ms()),
                    None => commands_open = false,
                },
                batch = priority.recv(), if priority_open => match batch {
                    Some(batch) => self.judge(batch, clock.now_ms()),
                    None => priority_open = false,
                },
                batch = readings.recv(), if readings_open => match batch {
                    Some(batch) => self.judge(batch, clock.now_ms()),
                    None => {
                        debug!("journal observer closed");
                        readings_open = false;
                    }
                },
                _ = ticker.tick() => self.tick(clock.now_ms()),
            }
        }
        // Readings the journal committed before the stop are still judged.
        while let Ok(batch) = priority.try_recv() {
            self.judge(batch, clock.now_ms());
        }
        while let Ok(batch) = readings.try_recv() {
            self.judge(batch, clock.now_ms());
        }
        self.save_engine();
        info!(last_seq = self.lifecycle.last_seq(), "alerts task stopped");
    }

    /// Judges one committed transaction and moves the judged watermark.
    fn judge(&mut self, batch: Observed, now: i64) {
        self.observe(&batch.records, now);
        match self.observed_row {
            // The first transaction of this run: rows before it were judged or replayed at start.
            None => self.observed_row = Some(batch.last_id),
            Some(w) if batch.after <= w => self.observed_row = Some(w.max(batch.last_id)),
            Some(_) => {
                self.judged_ahead.insert(batch.after, batch.last_id);
            }
        }
        while let Some(w) = self.observed_row {
            match self.judged_ahead.remove(&w) {
                Some(last) => self.observed_row = Some(last),
                None => break,
            }
        }
    }

    fn observe(&mut self, records: &[Record], now: i64) {
        let mut outputs = Vec::new();
        for r in records {
            outputs.extend(self.engine.observe(r, now));
        }
        self.apply(outputs, now);
    }

    fn tick(&mut self, now: i64) {
        let outputs = self.engine.tick(now);
        self.apply(outputs, now);
        match blocking(|| self.lifecycle.tick(now)) {
            Ok(changed) => self.published(&changed),
            Err(e) => error!(error = %e, "escalation not recorded; retried next tick"),
        }
        self.ticks_unsaved += 1;
        if self.ticks_unsaved >= TICKS_PER_SAVE {
            self.ticks_unsaved = 0;
            self.save_engine();
        }
    }

    /// Applies engine outputs in order, the ones a failed commit left first.
    fn apply(&mut self, outputs: Vec<RuleOutput>, now: i64) {
        self.pending.extend(outputs);
        while !self.pending.is_empty() {
            let output = self.pending[0].clone();
            match blocking(|| self.lifecycle.apply(output, now)) {
                Ok(changed) => {
                    self.pending.remove(0);
                    self.published(&changed);
                }
                Err(e) => {
                    error!(error = %e, pending = self.pending.len(), "alert change not committed; retried next tick");
                    if self.pending.len() > MAX_PENDING {
                        let dropped = self.pending.remove(0);
                        error!(output = ?dropped, "alert change dropped: store unavailable too long");
                    }
                    return;
                }
            }
        }
    }

    fn command(&mut self, cmd: Command, now: i64) {
        let engine = &self.engine;
        let changed = blocking(|| execute(&mut self.lifecycle, cmd, now, |r, s| engine.holds(r, s)));
        if let Some(a) = changed {
            self.published(std::slice::from_ref(&a));
        }
    }

    fn published(&self, changed: &[Alert]) {
        for a in changed {
            info!(
                id = %a.id, seq = a.seq, rule = %a.rule, priority = ?a.priority, state = a.state.as_str(),
                level = a.escalation_level, device = %a.device, "alert changed"
            );
        }
        if !changed.is_empty() {
            self.last_seq.send_replace(self.lifecycle.last_seq());
        }
    }

    fn save_engine(&mut self) {
        let json = match serde_json::to_string(&self.engine.snapshot()) {
            Ok(j) => j,
            Err(e) => {
                warn!(error = %e, "rules engine state not serializable");
                return;
            }
        };
        if self.saved_engine.as_deref() != Some(json.as_str()) {
            match blocking(|| self.lifecycle.store().save_state(ENGINE_STATE, &json)) {
                Ok(()) => self.saved_engine = Some(json),
                Err(e) => {
                    warn!(error = %e, "rules engine state not saved; retried next tick");
                    return;
                }
            }
        }
        // After the state it goes with: a crash in between replays more, never less.
        if let Some(row) = self.observed_row.filter(|r| Some(*r) != self.saved_row) {
            match blocking(|| self.lifecycle.store().save_state(OBSERVED_ROW, &row.to_string())) {
                Ok(()) => self.saved_row = Some(row),
                Err(e) => warn!(error = %e, "last judged row not saved; retried next tick"),
            }
        }
    }
}

/// Carries out one API command on the lifecycle and answers it; returns the changed alert.
/// `holds(rule, subject)` tells whether a rule's condition still holds (the engine's view).
pub fn execute(lifecycle: &mut Lifecycle, cmd: Command, now: i64, holds: impl Fn(&str, &str) -> bool) -> Option<Alert> {
    let (result, reply) = match cmd {
        Command::Ack { id, by, note, reply } => (lifecycle.ack(&id, &by, note, now), reply),
        Command::Resolve {
            id,
            by,
            note,
            resolution,
            reply,
        } => (lifecycle.resolve(&id, &by, note, resolution, now, holds), reply),
    };
    let changed = result.as_ref().ok().cloned();
    // The requester may have gone (client hung up): the change stands all the same.
    let _ = reply.send(result);
    changed
}

/// SQLite calls are short but synchronous: on the multi-threaded runtime, tell tokio so other
/// tasks move off this worker meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;
    use crate::alerts::{AlertState, AlertStore};
    use crate::reading::Value;
    use crate::rules::output::Trigger;

    /// Raises R14 for a kitchen gas detector at 10 %LEL or more, clears below 3.
    #[derive(Debug, Default)]
    struct ScriptedEngine {
        state: ScriptedState,
    }

    #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
    struct ScriptedState {
        observed: u64,
        gas_holds: bool,
    }

    impl RulesEngine for ScriptedEngine {
        type State = ScriptedState;

        fn observe(&mut self, r: &Record, now_ms: i64) -> Vec<RuleOutput> {
            self.state.observed += 1;
            let lel = r.metrics.get("gas_lel").and_then(Value::as_f64).unwrap_or(0.0);
            if lel >= 10.0 {
                self.state.gas_holds = true;
                vec![RuleOutput::Raise(Trigger {
                    rule: "R14".into(),
                    subject: r.device.clone(),
                    priority: Priority::P1,
                    upgrades: None,
                    device: r.device.clone(),
                    room: r.room.clone(),
                    resident: None,
                    hazard: "gas".into(),
                    metric: Some("gas_lel".into()),
                    value: Some(Value::Num(lel)),
                    latching: true,
                    person_centred: false,
                    message: "燃气泄漏".into(),
                    message_en: "Gas leak".into(),
                    at: now_ms,
                })]
            } else if lel < 3.0 && self.state.gas_holds {
                self.state.gas_holds = false;
                vec![RuleOutput::Clear {
                    rule: "R14".into(),
                    subject: r.device.clone(),
                    at: now_ms,
                }]
            } else {
                Vec::new()
            }
        }

        fn tick(&mut self, _now_ms: i64) -> Vec<RuleOutput> {
            Vec::new()
        }

        fn holds(&self, rule: &str, _subject: &str) -> bool {
            rule == "R14" && self.state.gas_holds
        }

        fn snapshot(&self) -> ScriptedState {
            self.state.clone()
        }

        fn restore(&mut self, state: ScriptedState) {
            self.state = state;
        }
    }

    fn gas_reading(lel: f64) -> Record {
        Record {
            device: "gas-1".into(),
            class: "gas_detector".into(),
            building: "A".into(),
            floor: "1".into(),
            room: "kitchen".into(),
            zone: String::new(),
            ts: 0,
            ts_recv: 0,
            ts_replaced: false,
            seq: None,
            metrics: BTreeMap::from([("gas_lel".to_owned(), Value::Num(lel))]),
        }
    }

    fn lifecycle(db: &std::path::Path) -> Lifecycle {
        Lifecycle::open(AlertStore::open(db).expect("store"), Policy::default(), "site-1").expect("lifecycle")
    }

    #[test]
    fn the_judged_watermark_waits_for_bulk_transactions_a_priority_one_overtook() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let db = dir.path().join("alerts-watermark.db");
        let mut task = AlertsTask::new(ScriptedEngine::default(), lifecycle(&db));
        task.mark_judged(10);
        let batch = |after, last_id| Observed {
            after,
            last_id,
            records: vec![gas_reading(1.0)],
        };
        // Priority rows 16..=20 judged before the bulk rows 11..=15 committed before them.
        task.judge(batch(15, 20), 0);
        assert_eq!(task.observed_row(), Some(10), "rows 11-15 are not judged yet");
        task.judge(batch(20, 22), 0);
        assert_eq!(task.observed_row(), Some(10));
        task.judge(batch(10, 15), 0);
        assert_eq!(
            task.observed_row(),
            Some(22),
            "the gap closed: every row up to 22 judged"
        );
        assert!(task.judged_ahead.is_empty());
    }

    #[tokio::test]
    async fn task_raises_from_readings_answers_commands_and_keeps_engine_state() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let db = dir.path().join("alerts-task.db");
        let task = AlertsTask::new(ScriptedEngine::default(), lifecycle(&db));
        let mut events = task.events();
        let (handle, commands) = command_channel();
        let (readings, readings_rx) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let (_priority, priority_rx) = mpsc::channel(8);
        let running = tokio::spawn(task.run(priority_rx, readings_rx, commands, Clock::system(), shutdown.clone()));

        readings
            .send(Observed {
                after: 0,
                last_id: 1,
                records: vec![gas_reading(12.0)],
            })
            .await
            .expect("send");
        events.wait_for(|s| *s >= 1).await.expect("raised");
        let refused = handle
            .resolve("a-1".into(), "nurse-li".into(), None, Resolution::Handled)
            .await;
        assert!(matches!(refused, Err(AlertError::Conflict(_))), "{refused:?}");
        let acked = handle.ack("a-1".into(), "nurse-li".into(), None).await.expect("ack");
        assert_eq!((acked.seq, acked.state), (2, AlertState::Acknowledged));
        readings
            .send(Observed {
                after: 1,
                last_id: 2,
                records: vec![gas_reading(1.0)],
            })
            .await
            .expect("send");
        events.wait_for(|s| *s >= 3).await.expect("condition cleared");
        let done = handle
            .resolve(
                "a-1".into(),
                "nurse-li".into(),
                Some("ventilated".into()),
                Resolution::Handled,
            )
            .await
            .expect("resolve");
        assert_eq!((done.seq, done.state), (4, AlertState::Resolved));
        assert_eq!(*events.borrow_and_update(), 4);

        shutdown.cancel();
        running.await.expect("task ends");
        assert!(handle.ack("a-1".into(), "x".into(), None).await.is_err());
        let saved = AlertStore::open(&db)
            .expect("store")
            .load_state(ENGINE_STATE)
            .expect("load");
        assert_eq!(saved.as_deref(), Some(r#"{"observed":2,"gas_holds":false}"#));

        // A restarted task restores the engine and continues the seq.
        let mut again = AlertsTask::new(ScriptedEngine::default(), lifecycle(&db));
        assert_eq!(again.engine.state.observed, 2);
        assert_eq!(*again.events().borrow(), 4);
        assert_eq!(
            again.observed_row(),
            Some(2),
            "the last judged row is kept with the state"
        );

        // Row 3 was committed (its message acknowledged) but the gateway died before judging
        // it: the restart judges it, and the alert is raised, not lost.
        again.replay(&[(3, gas_reading(20.0))], 1_000);
        assert_eq!(again.engine.state.observed, 3);
        assert_eq!(*again.events().borrow(), 5, "a new alert from the replayed row");
        assert_eq!(again.observed_row(), Some(3));
        drop(again);
        let third = AlertsTask::new(ScriptedEngine::default(), lifecycle(&db));
        assert_eq!(third.observed_row(), Some(3), "saved after the replay");
    }
}
