//! Stage supervision: every long-lived stage of the gateway (MQTT sources, serial links, the
//! journal writer, the rules and alerts task, deliveries, the forwarder, the HTTP API) runs
//! under a watch. One that panics or ends while the gateway is running is reported; the process
//! then logs which stage and why at ERROR and exits non-zero, so that the service manager starts
//! it again (the journal makes a restart safe). Failures a stage handles itself (a serial port
//! that errors, a broker that drops the connection) never end it: it retries in place with
//! backoff.

use std::future::Future;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::error;

/// A stage that ended while the gateway was running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageFailure {
    /// The stage's name (`mqtt-bulk`, `journal-writer`, `serial:bus-1`...).
    pub stage: String,
    /// `panicked: <message>` or `ended unexpectedly`.
    pub reason: String,
}

impl std::fmt::Display for StageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stage {} {}", self.stage, self.reason)
    }
}

/// Spawns stages and reports those that end before shutdown.
#[derive(Clone)]
pub struct Stages {
    failed: mpsc::UnboundedSender<StageFailure>,
    shutdown: CancellationToken,
}

/// The receiving side: the first failure of any stage.
pub struct StageFailures(mpsc::UnboundedReceiver<StageFailure>);

impl StageFailures {
    /// Waits for a stage to fail; pending forever while none does.
    pub async fn next(&mut self) -> StageFailure {
        match self.0.recv().await {
            Some(f) => f,
            None => std::future::pending().await,
        }
    }
}

impl Stages {
    pub fn new(shutdown: CancellationToken) -> (Stages, StageFailures) {
        let (failed, rx) = mpsc::unbounded_channel();
        (Stages { failed, shutdown }, StageFailures(rx))
    }

    /// Runs `stage` on `tracker`, watched.
    pub fn spawn<F>(&self, tracker: &TaskTracker, stage: impl Into<String>, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stage = stage.into();
        let fut = test_hook::wrap(&stage, fut);
        let this = self.clone();
        tracker.spawn(async move {
            let outcome = tokio::spawn(fut).await;
            let reason = match outcome {
                Ok(()) => "ended unexpectedly".to_owned(),
                Err(e) if e.is_panic() => format!("panicked: {}", panic_text(e.into_panic().as_ref())),
                Err(e) => format!("was cancelled: {e}"),
            };
            this.report(stage, reason);
        });
    }

    /// Watches a stage that runs on a thread of its own (the journal writer, the embedded
    /// broker); `done`, if given, is told when it has ended, whatever the reason.
    pub fn watch_thread(
        &self,
        stage: impl Into<String>,
        handle: std::thread::JoinHandle<()>,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> std::io::Result<()> {
        let stage = stage.into();
        let this = self.clone();
        std::thread::Builder::new()
            .name(format!("nh-watch-{stage}"))
            .spawn(move || {
                let reason = match handle.join() {
                    Ok(()) => "ended unexpectedly".to_owned(),
                    Err(p) => format!("panicked: {}", panic_text(p.as_ref())),
                };
                this.report(stage, reason);
                if let Some(done) = done {
                    let _ = done.send(());
                }
            })
            .map(|_| ())
    }

    /// An end during shutdown is the expected one, unless it was a panic.
    fn report(&self, stage: String, reason: String) {
        if self.shutdown.is_cancelled() {
            if reason.starts_with("panicked") {
                error!(%stage, %reason, "a stage panicked while the gateway was stopping");
            }
            return;
        }
        error!(%stage, %reason, "a stage of the gateway ended while running: exiting so that the service manager restarts it");
        let _ = self.failed.send(StageFailure { stage, reason });
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// With the `test-hooks` feature (the end-to-end tests' builds only), `NH_TEST_PANIC_STAGE=NAME`
/// makes the stage of that name panic `NH_TEST_PANIC_AFTER_MS` (default 1000) after it starts.
#[cfg(feature = "test-hooks")]
mod test_hook {
    use std::future::Future;
    use std::pin::Pin;

    pub fn wrap<F>(stage: &str, fut: F) -> Pin<Box<dyn Future<Output = ()> + Send>>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if std::env::var("NH_TEST_PANIC_STAGE").ok().as_deref() != Some(stage) {
            return Box::pin(fut);
        }
        let after_ms = std::env::var("NH_TEST_PANIC_AFTER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000u64);
        let stage = stage.to_owned();
        Box::pin(async move {
            tokio::select! {
                _ = fut => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(after_ms)) => {}
            }
            panic!("test hook: stage {stage} made to panic");
        })
    }
}

#[cfg(not(feature = "test-hooks"))]
mod test_hook {
    use std::future::Future;

    pub fn wrap<F>(_stage: &str, fut: F) -> F
    where
        F: Future<Output = ()> + Send + 'static,
    {
        fut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_stage_that_panics_or_ends_is_reported_and_one_that_stops_at_shutdown_is_not() {
        let shutdown = CancellationToken::new();
        let (stages, mut failures) = Stages::new(shutdown.clone());
        let tracker = TaskTracker::new();
        stages.spawn(&tracker, "boom", async { panic!("broken invariant") });
        let f = tokio::time::timeout(Duration::from_secs(5), failures.next())
            .await
            .expect("reported");
        assert_eq!(f.stage, "boom");
        assert_eq!(f.reason, "panicked: broken invariant");
        stages.spawn(&tracker, "quitter", async {});
        let f = tokio::time::timeout(Duration::from_secs(5), failures.next())
            .await
            .expect("reported");
        assert_eq!((f.stage.as_str(), f.reason.as_str()), ("quitter", "ended unexpectedly"));
        let token = shutdown.clone();
        stages.spawn(&tracker, "polite", async move { token.cancelled().await });
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
        assert!(tokio::time::timeout(Duration::from_millis(100), failures.next())
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_thread_stage_is_watched_too() {
        let (stages, mut failures) = Stages::new(CancellationToken::new());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let handle = std::thread::spawn(|| panic!("writer died"));
        stages
            .watch_thread("journal-writer", handle, Some(done_tx))
            .expect("thread");
        let f = tokio::time::timeout(Duration::from_secs(5), failures.next())
            .await
            .expect("reported");
        assert_eq!(f.to_string(), "stage journal-writer panicked: writer died");
        done_rx.await.expect("done");
    }
}
