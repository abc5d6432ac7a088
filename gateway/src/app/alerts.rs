//! The alert stages: the rules engine and the alert lifecycle in one task (its state restored
//! from the journal, the rows committed since its last save judged again), the webhooks, and
//! the MQTT alert publisher with its outbox.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};

use super::journal::Observers;
use super::mqtt::Broker;
use super::sources::serial_links;
use super::{StartError, Wiring};
use crate::alerts::delivery::{DeliveryStats, MqttAlertPublisher, MqttAlertsConfig, NewEvents, SharedLog, WebhookTask};
use crate::alerts::lifecycle::Lifecycle;
use crate::alerts::store::AlertStore;
use crate::alerts::task::{command_channel, policy_from_rules, AlertsHandle, AlertsTask};
use crate::config::{MqttMode, Secret};
use crate::journal::{RowId, Store};
use crate::rules::{Engine, RuleSet};

/// Most rows judged again at start; more means the engine was far behind, and the oldest of
/// them are too old to raise anything useful.
const REPLAY_MAX_ROWS: usize = 1_000_000;

/// What the later stages hold of the alerts task.
pub(super) struct Alerts {
    /// The last committed alert seq: the deliveries wait on it.
    pub(super) events: watch::Receiver<u64>,
    /// Commands to the alerts task, for the HTTP API.
    pub(super) handle: AlertsHandle,
}

impl Wiring {
    /// The rules engine and the alert lifecycle: one task, its state restored from the journal.
    pub(super) fn start_alerts(
        &self,
        rules: &Arc<RuleSet>,
        committed: &watch::Receiver<RowId>,
        observers: Observers,
    ) -> Result<Alerts, StartError> {
        let alert_store = AlertStore::open(&self.journal_path)?;
        let lifecycle = Lifecycle::open(alert_store, policy_from_rules(rules), self.config.site.id.clone())?;
        let engine = Engine::new(rules.clone(), self.registry.clone(), self.clock.now_ms())
            .with_links(serial_links(&self.config.serial));
        let mut alerts_task = AlertsTask::new(engine, lifecycle);
        replay_unjudged(
            &mut alerts_task,
            &self.journal_path,
            *committed.borrow(),
            self.clock.now_ms(),
        );
        let events = alerts_task.events();
        let (handle, alert_commands) = command_channel();
        info!(rules = rules.len(), "rules engine on");
        self.spawn_other(
            "alerts",
            alerts_task.run(
                observers.priority,
                observers.bulk,
                alert_commands,
                self.clock,
                self.shutdown.clone(),
            ),
        );
        Ok(Alerts { events, handle })
    }

    /// One delivery task per configured webhook, each from its own cursor.
    pub(super) fn start_webhooks(&self, events: &watch::Receiver<u64>, stats: &Arc<DeliveryStats>) {
        for (i, hook) in WebhookTask::for_config(&self.config.alerts, &self.journal_path, events, stats)
            .into_iter()
            .enumerate()
        {
            self.spawn_other(format!("webhook:{i}"), hook.run(self.shutdown.clone()));
        }
    }

    /// Alerts are published on the same broker, through their own connection and outbox.
    pub(super) fn start_alert_publisher(
        &self,
        broker: &Broker,
        password: Option<Secret>,
        events: &watch::Receiver<u64>,
        stats: &Arc<DeliveryStats>,
    ) {
        let mut alerts_mqtt = MqttAlertsConfig::new(self.config.site.id.clone(), broker.host.clone(), broker.port);
        if let Some((user, secret)) = &broker.own_login {
            alerts_mqtt.username = Some(user.clone());
            alerts_mqtt.password = Some(secret.clone());
        } else if self.config.mqtt.mode == MqttMode::External {
            alerts_mqtt.username = self.config.mqtt.username_for(&alerts_mqtt.client_id());
            alerts_mqtt.password = password;
        }
        let publisher = MqttAlertPublisher::new(
            alerts_mqtt,
            SharedLog::new(&self.journal_path),
            NewEvents::new(events.clone()),
            stats.clone(),
        );
        self.spawn_other("alert-publisher", publisher.run(self.shutdown.clone()));
    }
}

/// Judges the rows committed before this start that the saved engine state had not judged: a
/// crash between a commit (the message acknowledged) and its alert must not lose the alert.
fn replay_unjudged(task: &mut AlertsTask, journal_path: &std::path::Path, last_id: i64, now: i64) {
    let Some(from) = task.observed_row() else {
        // Never recorded (a fresh journal, or one from before this was kept): judge from now on.
        task.mark_judged(last_id);
        return;
    };
    if from >= last_id {
        return;
    }
    let store = match Store::open_secondary(journal_path) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot read the journal to judge rows committed before the restart");
            return;
        }
    };
    let mut after = from.max(last_id - REPLAY_MAX_ROWS as i64);
    let mut judged = 0usize;
    while after < last_id {
        let rows = match store.rows_after(after, 10_000) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "reading rows to judge again failed");
                return;
            }
        };
        let batch: Vec<(i64, crate::reading::Record)> = rows
            .into_iter()
            .filter(|r| r.id <= last_id)
            .map(|r| (r.id, r.record))
            .collect();
        let Some(last) = batch.last().map(|r| r.0) else { break };
        judged += batch.len();
        task.replay(&batch, now);
        after = last;
    }
    info!(
        from,
        to = last_id,
        rows = judged,
        "rows committed before the restart judged by the rules engine"
    );
}
