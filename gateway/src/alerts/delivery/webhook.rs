//! Webhooks: one task per configured URL POSTs each alert change (the same JSON as on MQTT,
//! `Content-Type: application/json`) whose priority passes the URL's `min_priority`, in seq
//! order, retrying each with doubling backoff until the receiver answers 2xx.
//!
//! Each URL has its own persisted cursor (`webhook:<url>`), so a receiver that is down for a
//! while gets every alert, in order, once it is back, even across a gateway restart; and since
//! each task reads the log on its own, a slow or dead receiver never delays MQTT, SSE or the
//! other webhooks. A receiver that took an event but whose answer was lost gets it again:
//! receivers dedup by `seq` (also sent as the `X-NH-Alert-Seq` header).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::log::{AlertEvent, SharedLog};
use super::{Backoff, DeliveryStats, NewEvents, WebhookConfig};

/// Events read from the log at a time.
const BATCH: usize = 100;
/// First wait after a failed attempt; doubles up to the webhook's `backoff_max_ms`.
const BACKOFF_START: Duration = Duration::from_millis(250);
/// Header carrying the event's seq, so a receiver can dedup without parsing the body.
pub const SEQ_HEADER: &str = "x-nh-alert-seq";

/// The cursor name of a webhook in `delivery_cursors`.
pub fn channel(url: &str) -> String {
    format!("webhook:{url}")
}

/// One webhook's delivery task; `run` it once.
pub struct WebhookTask {
    pub cfg: WebhookConfig,
    pub log: SharedLog,
    pub events: NewEvents,
    pub stats: Arc<DeliveryStats>,
}

/// What ended an attempt.
#[derive(Debug)]
enum Outcome {
    Delivered,
    Shutdown,
}

impl WebhookTask {
    pub fn new(cfg: WebhookConfig, log: SharedLog, events: NewEvents, stats: Arc<DeliveryStats>) -> Self {
        WebhookTask {
            cfg,
            log,
            events,
            stats,
        }
    }

    /// One task per configured webhook, each with its own log connection.
    pub fn for_config(
        cfg: &super::AlertsConfig,
        journal_path: &std::path::Path,
        last_seq: &tokio::sync::watch::Receiver<u64>,
        stats: &Arc<DeliveryStats>,
    ) -> Vec<WebhookTask> {
        cfg.webhooks
            .iter()
            .map(|w| {
                WebhookTask::new(
                    w.clone(),
                    SharedLog::new(journal_path),
                    NewEvents::new(last_seq.clone()),
                    stats.clone(),
                )
            })
            .collect()
    }

    /// Runs until cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let url = self.cfg.url.clone();
        let channel = channel(&url);
        let client = match reqwest011::Client::builder()
            .timeout(Duration::from_millis(self.cfg.timeout_ms.max(1)))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                error!(%url, error = %e, "webhook client cannot be built; this webhook gets nothing");
                // Not a stage failure: the other channels and the intake go on until shutdown.
                shutdown.cancelled().await;
                return;
            }
        };
        let max = Duration::from_millis(self.cfg.backoff_max_ms.max(1));
        let mut backoff = Backoff::new(BACKOFF_START, max);
        let mut cursor = loop {
            match self.log.cursor(&channel).await {
                Ok(c) => break c,
                Err(e) => {
                    let wait = backoff.next_delay();
                    error!(%url, error = %e, retry_in_ms = wait.as_millis() as u64, "webhook cannot read its cursor");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        };
        backoff.reset();
        info!(%url, cursor, min_priority = ?self.cfg.min_priority, "webhook delivery starting");
        loop {
            self.events.mark_seen();
            let batch = match self.log.after(cursor, BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    let wait = backoff.next_delay();
                    warn!(%url, error = %e, retry_in_ms = wait.as_millis() as u64, "webhook cannot read the event log");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.events.wait() => {}
                }
                continue;
            }
            let mut unsaved = false;
            for event in batch {
                if !self.wanted(&event) {
                    self.stats.webhook_filtered.fetch_add(1, Ordering::Relaxed);
                    cursor = event.seq;
                    unsaved = true;
                    continue;
                }
                match self.deliver(&client, &event, &mut backoff, &shutdown).await {
                    Outcome::Delivered => {}
                    Outcome::Shutdown => {
                        self.save(&channel, cursor).await;
                        return;
                    }
                }
                cursor = event.seq;
                self.save(&channel, cursor).await;
                unsaved = false;
            }
            if unsaved {
                self.save(&channel, cursor).await;
            }
        }
    }

    /// Priority at or above `min_priority` (P1 is the highest). An event without a readable
    /// priority is sent: better one alert too many than one missing.
    fn wanted(&self, event: &AlertEvent) -> bool {
        match event.priority() {
            Some(p) => p <= self.cfg.min_priority,
            None => {
                debug!(
                    seq = event.seq,
                    "alert without a readable priority; sent to every webhook"
                );
                true
            }
        }
    }

    /// POSTs one event until a 2xx, or until shutdown.
    async fn deliver(
        &self,
        client: &reqwest011::Client,
        event: &AlertEvent,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let url = &self.cfg.url;
        let mut failures = 0u64;
        loop {
            let attempt = client
                .post(url)
                .header("content-type", "application/json")
                .header(SEQ_HEADER, event.seq.to_string())
                .body(event.json.clone())
                .send();
            let result = tokio::select! {
                _ = shutdown.cancelled() => return Outcome::Shutdown,
                r = attempt => r,
            };
            let problem = match result {
                Ok(resp) if resp.status().is_success() => {
                    self.stats.webhook_delivered.fetch_add(1, Ordering::Relaxed);
                    if failures > 0 {
                        info!(%url, seq = event.seq, failures, "webhook receiver accepted the alert after retries");
                    }
                    backoff.reset();
                    return Outcome::Delivered;
                }
                Ok(resp) => format!("HTTP {}", resp.status()),
                Err(e) => e.to_string(),
            };
            failures += 1;
            self.stats.webhook_failures.fetch_add(1, Ordering::Relaxed);
            let wait = backoff.next_delay();
            warn!(%url, seq = event.seq, error = %problem, failures, retry_in_ms = wait.as_millis() as u64, "webhook delivery failed");
            tokio::select! {
                _ = shutdown.cancelled() => return Outcome::Shutdown,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// A failed cursor write means a few events are sent again after a restart; receivers dedup.
    async fn save(&self, channel: &str, cursor: u64) {
        if let Err(e) = self.log.set_cursor(channel, cursor).await {
            warn!(channel, cursor, error = %e, "webhook cursor not persisted");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::sync::Mutex;

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use axum::Router;
    use tokio::sync::{mpsc, watch};

    use super::super::test_support::{append, TempDir};
    use super::*;
    use crate::rules::output::Priority;

    /// A real HTTP receiver: refuses with 503 until told to accept, then records each seq.
    #[derive(Clone)]
    struct Receiver {
        accepting: Arc<AtomicBool>,
        refused: Arc<AtomicU64>,
        got: Arc<Mutex<Vec<u64>>>,
        refused_tx: mpsc::UnboundedSender<()>,
        got_tx: mpsc::UnboundedSender<u64>,
    }

    async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
        if !r.accepting.load(Ordering::SeqCst) {
            r.refused.fetch_add(1, Ordering::SeqCst);
            let _ = r.refused_tx.send(());
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        let v: serde_json::Value = match serde_json::from_str(&body) {
            Ok(v) => v,
            Err(_) => return StatusCode::BAD_REQUEST,
        };
        if headers.get("content-type").and_then(|h| h.to_str().ok()) != Some("application/json") {
            return StatusCode::UNSUPPORTED_MEDIA_TYPE;
        }
        let seq = v["seq"].as_u64().unwrap_or(0);
        assert_eq!(
            headers.get(SEQ_HEADER).and_then(|h| h.to_str().ok()),
            Some(seq.to_string().as_str())
        );
        r.got.lock().unwrap_or_else(|p| p.into_inner()).push(seq);
        let _ = r.got_tx.send(seq);
        StatusCode::NO_CONTENT
    }

    async fn start_receiver(
        accepting: bool,
    ) -> std::io::Result<(
        String,
        Receiver,
        mpsc::UnboundedReceiver<()>,
        mpsc::UnboundedReceiver<u64>,
    )> {
        let (refused_tx, refused_rx) = mpsc::unbounded_channel();
        let (got_tx, got_rx) = mpsc::unbounded_channel();
        let r = Receiver {
            accepting: Arc::new(AtomicBool::new(accepting)),
            refused: Arc::default(),
            got: Arc::default(),
            refused_tx,
            got_tx,
        };
        let app = Router::new().route("/hook", post(hook)).with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((url, r, refused_rx, got_rx))
    }

    fn webhook(url: &str, min_priority: Priority) -> WebhookConfig {
        WebhookConfig {
            url: url.to_owned(),
            min_priority,
            timeout_ms: 2_000,
            backoff_max_ms: 200,
        }
    }

    async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(v)) => v,
            _ => panic!("timed out waiting for {what}"),
        }
    }

    #[tokio::test]
    async fn a_receiver_down_for_a_while_gets_every_wanted_alert_once_in_order(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = TempDir::new("webhook");
        let db = dir.path().join("journal.db");
        let (url, receiver, mut refused_rx, mut got_rx) = start_receiver(false).await?;
        // Mixed priorities: P3 is below this webhook's P2 threshold.
        append(&db, 1..=4, "P1");
        append(&db, 5..=6, "P3");
        let last = append(&db, 7..=8, "P2");
        let (seq_tx, seq_rx) = watch::channel(last);
        let stats = Arc::new(DeliveryStats::default());
        let shutdown = CancellationToken::new();
        let task = WebhookTask::new(
            webhook(&url, Priority::P2),
            SharedLog::new(&db),
            NewEvents::new(seq_rx),
            stats.clone(),
        );
        let handle = tokio::spawn(task.run(shutdown.clone()));

        // Refused three times (the task keeps retrying the first event), and more alerts come.
        for _ in 0..3 {
            recv(&mut refused_rx, "a refused attempt").await;
        }
        append(&db, 9..=10, "P3");
        append(&db, 11..=12, "P1");
        let _ = seq_tx.send(12);
        receiver.accepting.store(true, Ordering::SeqCst);

        let want = vec![1, 2, 3, 4, 7, 8, 11, 12];
        let mut got = Vec::new();
        while got.len() < want.len() {
            got.push(recv(&mut got_rx, "a delivered alert").await);
        }
        assert_eq!(got, want);
        // Live after the backlog.
        append(&db, [13], "P4");
        append(&db, [14], "P2");
        let _ = seq_tx.send(14);
        assert_eq!(recv(&mut got_rx, "a live alert").await, 14);

        // The cursor is persisted past the delivered (and filtered) events.
        let log = SharedLog::new(&db);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while log.cursor(&channel(&url)).await? != 14 {
            assert!(tokio::time::Instant::now() < deadline, "cursor not persisted");
            tokio::task::yield_now().await;
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), handle).await??;
        assert_eq!(
            *receiver.got.lock().unwrap_or_else(|p| p.into_inner()),
            vec![1, 2, 3, 4, 7, 8, 11, 12, 14]
        );
        assert!(receiver.refused.load(Ordering::SeqCst) >= 3);
        assert!(stats.webhook_failures.load(Ordering::Relaxed) >= 3);
        assert_eq!(stats.webhook_delivered.load(Ordering::Relaxed), 9);
        assert_eq!(stats.webhook_filtered.load(Ordering::Relaxed), 5);

        // A restart resumes after the cursor: nothing is sent twice.
        append(&db, [15], "P1");
        let (_seq_tx2, seq_rx2) = watch::channel(15);
        let shutdown = CancellationToken::new();
        let task = WebhookTask::new(
            webhook(&url, Priority::P2),
            SharedLog::new(&db),
            NewEvents::new(seq_rx2),
            stats,
        );
        let handle = tokio::spawn(task.run(shutdown.clone()));
        assert_eq!(recv(&mut got_rx, "the alert after a restart").await, 15);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), handle).await??;
        Ok(())
    }

    #[tokio::test]
    async fn a_dead_webhook_does_not_delay_another() -> Result<(), Box<dyn std::error::Error>> {
        let dir = TempDir::new("webhook-dead");
        let db = dir.path().join("journal.db");
        let (url, _receiver, _refused_rx, mut got_rx) = start_receiver(true).await?;
        // Nothing listens on this port (bound, then closed).
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            format!("http://{}/hook", l.local_addr()?)
        };
        let last = append(&db, 1..=20, "P1");
        let (_seq_tx, seq_rx) = watch::channel(last);
        let stats = Arc::new(DeliveryStats::default());
        let shutdown = CancellationToken::new();
        let cfg = super::super::AlertsConfig {
            webhooks: vec![webhook(&dead, Priority::P4), webhook(&url, Priority::P4)],
        };
        let mut handles = Vec::new();
        for task in WebhookTask::for_config(&cfg, &db, &seq_rx, &stats) {
            handles.push(tokio::spawn(task.run(shutdown.clone())));
        }
        for want in 1..=20 {
            assert_eq!(recv(&mut got_rx, "an alert at the live webhook").await, want);
        }
        shutdown.cancel();
        for h in handles {
            tokio::time::timeout(Duration::from_secs(5), h).await??;
        }
        assert_eq!(SharedLog::new(&db).cursor(&channel(&dead)).await?, 0);
        Ok(())
    }
}
