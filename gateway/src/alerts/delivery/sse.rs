//! The server-sent event stream of alert changes (`GET /api/v1/alerts/stream`, routed in
//! `api/stream.rs`).
//!
//! Each event is `id: <seq>`, `event: alert`, `data: <alert JSON>`. A client that sends
//! `Last-Event-ID: N` first gets every event with seq > N from the log, then live ones; without
//! it, live ones only. Replay and live are one loop over the log from one cursor, woken by the
//! `last_seq` watch, so there is neither a gap nor a duplicate between them. Every
//! [`HEARTBEAT`] the stream sends `event: heartbeat` with `{"status":"ok"|"degraded"}`; the
//! first one at once, so a client learns the gateway status on connect.
//!
//! The body is written by one task per client into an in-memory pipe: a slow client fills
//! the pipe and holds only its own task (backpressure, nothing dropped); a gone client makes the
//! next write fail, which ends the task, at the latest at the next heartbeat.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::log::{AlertEvent, SharedLog};
use super::{DeliveryStats, NewEvents};

/// The SSE contract (docs/contracts.md): a heartbeat every 5 s.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// Events read from the log at a time during a replay.
const BATCH: usize = 500;
/// Bytes buffered per client between its writer task and the HTTP connection.
const PIPE_BYTES: usize = 64 * 1024;

/// The gateway status for heartbeats: `"ok"` or `"degraded"`.
pub type StatusFn = Arc<dyn Fn() -> &'static str + Send + Sync>;

/// What the stream route needs.
#[derive(Clone)]
pub struct StreamState {
    /// One connection to the journal database, shared by the clients.
    pub log: SharedLog,
    /// The last seq the alert manager wrote.
    pub last_seq: watch::Receiver<u64>,
    pub status: StatusFn,
    pub heartbeat: Duration,
    pub stats: Arc<DeliveryStats>,
    /// Ends every stream (so a graceful HTTP shutdown is not held by open streams); one
    /// client's stream may get a child of it that its session's end cancels.
    pub shutdown: CancellationToken,
    /// Cancelled when this client's stream ends, for whoever watches on its behalf.
    pub on_end: Option<CancellationToken>,
}

impl std::fmt::Debug for StreamState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamState")
            .field("journal", &self.log.path())
            .field("last_seq", &*self.last_seq.borrow())
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

impl StreamState {
    pub fn new(
        journal_path: impl Into<PathBuf>,
        last_seq: watch::Receiver<u64>,
        status: impl Fn() -> &'static str + Send + Sync + 'static,
        stats: Arc<DeliveryStats>,
        shutdown: CancellationToken,
    ) -> StreamState {
        StreamState {
            log: SharedLog::new(journal_path),
            last_seq,
            status: Arc::new(status),
            heartbeat: HEARTBEAT,
            stats,
            shutdown,
            on_end: None,
        }
    }
}

/// One alert event in SSE framing.
pub fn format_alert(out: &mut String, event: &AlertEvent) {
    let _ = write!(out, "id: {}\nevent: alert\n", event.seq);
    // Compact JSON has no line breaks; any other line becomes its own `data:` line.
    for line in event.json.lines() {
        let _ = writeln!(out, "data: {line}");
    }
    out.push('\n');
}

/// A heartbeat in SSE framing (no `id`: it must not move the client's Last-Event-ID).
pub fn format_heartbeat(status: &str) -> String {
    format!(
        "event: heartbeat\ndata: {}\n\n",
        serde_json::json!({ "status": status })
    )
}

/// The response body of one client: replay after `after` (or live only when `None`), then live,
/// with heartbeats.
pub fn body(state: StreamState, after: Option<u64>) -> Body {
    let (reader, writer) = tokio::io::duplex(PIPE_BYTES);
    tokio::spawn(async move {
        if let Err(e) = pump(state, after, writer).await {
            debug!(error = %e, "SSE client gone");
        }
    });
    Body::from_stream(tokio_util::io::ReaderStream::new(reader))
}

/// Counts a client while its stream runs.
struct ClientGuard(Arc<DeliveryStats>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.sse_clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Writes the stream into `out` until the client is gone (a write fails) or shutdown.
pub async fn pump<W: AsyncWrite + Unpin>(state: StreamState, after: Option<u64>, mut out: W) -> std::io::Result<()> {
    state.stats.sse_clients.fetch_add(1, Ordering::Relaxed);
    let _guard = ClientGuard(state.stats.clone());
    let _ended = state.on_end.clone().map(CancellationToken::drop_guard);
    let mut events = NewEvents::new(state.last_seq.clone());
    let announced = events.mark_seen();
    let mut cursor = match after {
        Some(n) => n,
        // Live only: start at the end of the log. Whatever is written after this read is sent.
        None => {
            let logged = state.log.call(|log| log.last_seq()).await.unwrap_or_else(|e| {
                warn!(error = %e, "SSE: cannot read the event log; starting from the announced seq");
                0
            });
            logged.max(announced)
        }
    };
    let mut heartbeat = tokio::time::interval(state.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut text = String::new();
    loop {
        events.mark_seen();
        let mut more = false;
        match state.log.after(cursor, BATCH).await {
            Ok(batch) => {
                more = batch.len() == BATCH;
                text.clear();
                for event in &batch {
                    format_alert(&mut text, event);
                }
                if let Some(last) = batch.last() {
                    tokio::select! {
                        _ = state.shutdown.cancelled() => return Ok(()),
                        r = write(&mut out, &text) => r?,
                    }
                    state.stats.sse_events.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    cursor = last.seq;
                }
            }
            Err(e) => warn!(error = %e, "SSE: cannot read the event log; retrying"),
        }
        if more {
            continue;
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return Ok(()),
            _ = heartbeat.tick() => {
                let beat = format_heartbeat((state.status)());
                tokio::select! {
                    _ = state.shutdown.cancelled() => return Ok(()),
                    r = write(&mut out, &beat) => r?,
                }
            }
            _ = events.wait() => {}
        }
    }
}

async fn write<W: AsyncWrite + Unpin>(out: &mut W, text: &str) -> std::io::Result<()> {
    out.write_all(text.as_bytes()).await?;
    out.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_events_are_framed_with_id_event_and_data() {
        let mut out = String::new();
        let e = AlertEvent {
            seq: 42,
            alert_id: "a1".into(),
            at: 0,
            json: "{\"seq\":42}".into(),
        };
        format_alert(&mut out, &e);
        assert_eq!(out, "id: 42\nevent: alert\ndata: {\"seq\":42}\n\n");
        out.clear();
        let multi = AlertEvent {
            json: "{\n\"seq\":42\n}".into(),
            ..e
        };
        format_alert(&mut out, &multi);
        assert_eq!(out, "id: 42\nevent: alert\ndata: {\ndata: \"seq\":42\ndata: }\n\n");
        assert_eq!(
            format_heartbeat("ok"),
            "event: heartbeat\ndata: {\"status\":\"ok\"}\n\n"
        );
    }
}
