//! `GET /api/v1/alerts/stream`: alert changes as server-sent events, resumable with
//! `Last-Event-ID` (the alert `seq`), with a heartbeat every 5 s. The stream itself is
//! `alerts::delivery::sse`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::alerts::delivery::sse;
pub use crate::alerts::delivery::sse::StreamState;
use crate::auth::Auth;

pub const PATH: &str = "/api/v1/alerts/stream";

#[derive(Clone)]
struct Ctx {
    stream: StreamState,
    /// With logins: a stream opened with a session cookie ends when the session does (logout
    /// or expiry), so a page left open after logging out stops receiving alerts.
    auth: Option<Arc<Auth>>,
}

/// The stream route, with its state applied: merge it into the API router.
pub fn routes(state: StreamState, auth: Option<Arc<Auth>>) -> Router {
    Router::new()
        .route(PATH, get(stream))
        .with_state(Ctx { stream: state, auth })
}

/// A child of the stream's shutdown token, cancelled when the request's session ends.
fn bound_to_session(state: &mut StreamState, auth: &Auth, headers: &HeaderMap) {
    let Some((ended, expires_ms)) = crate::auth::http::session_id(headers).and_then(|id| auth.session_end(&id)) else {
        return;
    };
    let child = state.shutdown.child_token();
    let stream_over = CancellationToken::new();
    state.shutdown = child.clone();
    state.on_end = Some(stream_over.clone());
    let wait = Duration::from_millis((expires_ms - crate::clock::system_now_ms()).max(0) as u64);
    tokio::spawn(async move {
        tokio::select! {
            _ = ended.cancelled() => child.cancel(),
            _ = tokio::time::sleep(wait) => child.cancel(),
            _ = stream_over.cancelled() => {}
        }
    });
}

async fn stream(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    let mut state = ctx.stream;
    if let Some(auth) = &ctx.auth {
        bound_to_session(&mut state, auth, &headers);
    }
    let after = match headers.get("last-event-id") {
        None => None,
        Some(v) => match v.to_str().ok().map(str::trim).and_then(|s| s.parse::<u64>().ok()) {
            Some(seq) => Some(seq),
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID must be an alert seq (an unsigned integer)",
                )
                    .into_response()
            }
        },
    };
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // Reverse proxies (nginx) must not buffer the stream.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        sse::body(state, after),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::alerts::delivery::test_support::{append, TempDir};
    use crate::alerts::delivery::DeliveryStats;

    /// One parsed SSE event.
    #[derive(Debug, Clone, PartialEq)]
    struct SseEvent {
        id: Option<u64>,
        event: String,
        data: String,
    }

    /// Reads a streaming response and yields parsed events.
    struct SseReader {
        resp: reqwest011::Response,
        buf: String,
    }

    impl SseReader {
        async fn next(&mut self) -> SseEvent {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..end + 2).collect();
                    let mut ev = SseEvent {
                        id: None,
                        event: "message".into(),
                        data: String::new(),
                    };
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("id: ") {
                            ev.id = v.parse().ok();
                        } else if let Some(v) = line.strip_prefix("event: ") {
                            ev.event = v.to_owned();
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            ev.data.push_str(v);
                        }
                    }
                    return ev;
                }
                match tokio::time::timeout(Duration::from_secs(10), self.resp.chunk()).await {
                    Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                    other => panic!("stream ended or stalled: {other:?}"),
                }
            }
        }

        /// The next alert event, skipping heartbeats.
        async fn next_alert(&mut self) -> SseEvent {
            loop {
                let ev = self.next().await;
                if ev.event == "alert" {
                    return ev;
                }
            }
        }
    }

    struct Server {
        base: String,
        seq_tx: watch::Sender<u64>,
        degraded: Arc<AtomicBool>,
        db: std::path::PathBuf,
        shutdown: CancellationToken,
        _dir: TempDir,
    }

    async fn server(heartbeat: Duration) -> Result<Server, Box<dyn std::error::Error>> {
        let dir = TempDir::new("sse");
        let db = dir.path().join("journal.db");
        let last = append(&db, 1..=5, "P1");
        let (seq_tx, seq_rx) = watch::channel(last);
        let degraded = Arc::new(AtomicBool::new(false));
        let flag = degraded.clone();
        let shutdown = CancellationToken::new();
        let mut state = StreamState::new(
            &db,
            seq_rx,
            move || if flag.load(Ordering::SeqCst) { "degraded" } else { "ok" },
            Arc::new(DeliveryStats::default()),
            shutdown.clone(),
        );
        state.heartbeat = heartbeat;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let app = routes(state, None);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Server {
            base,
            seq_tx,
            degraded,
            db,
            shutdown,
            _dir: dir,
        })
    }

    async fn connect(base: &str, last_event_id: Option<&str>) -> Result<reqwest011::Response, reqwest011::Error> {
        let client = reqwest011::Client::new();
        let mut req = client.get(format!("{base}{PATH}"));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        req.send().await
    }

    #[tokio::test]
    async fn replays_after_last_event_id_then_streams_live_events() -> Result<(), Box<dyn std::error::Error>> {
        let s = server(sse::HEARTBEAT).await?;
        let resp = connect(&s.base, Some("2")).await?;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        let mut sse = SseReader {
            resp,
            buf: String::new(),
        };
        for want in 3..=5u64 {
            let ev = sse.next_alert().await;
            assert_eq!(ev.id, Some(want));
            let json: serde_json::Value = serde_json::from_str(&ev.data)?;
            assert_eq!(json["seq"].as_u64(), Some(want));
        }
        // Live: written to the log, then announced.
        append(&s.db, [6, 7], "P2");
        let _ = s.seq_tx.send(7);
        assert_eq!(sse.next_alert().await.id, Some(6));
        assert_eq!(sse.next_alert().await.id, Some(7));
        s.shutdown.cancel();
        Ok(())
    }

    #[tokio::test]
    async fn without_last_event_id_only_live_events_come_and_heartbeats_carry_the_status(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let s = server(Duration::from_millis(200)).await?;
        let mut sse = SseReader {
            resp: connect(&s.base, None).await?,
            buf: String::new(),
        };
        // The first heartbeat comes at once.
        let first = sse.next().await;
        assert_eq!((first.event.as_str(), first.id), ("heartbeat", None));
        assert_eq!(first.data, r#"{"status":"ok"}"#);
        append(&s.db, [6], "P1");
        let _ = s.seq_tx.send(6);
        assert_eq!(sse.next_alert().await.id, Some(6), "the backlog 1..=5 is not replayed");
        s.degraded.store(true, Ordering::SeqCst);
        loop {
            let ev = sse.next().await;
            assert_eq!(ev.event, "heartbeat");
            if ev.data == r#"{"status":"degraded"}"# {
                break;
            }
        }
        s.shutdown.cancel();
        Ok(())
    }

    #[tokio::test]
    async fn events_written_during_a_replay_come_once_in_order() -> Result<(), Box<dyn std::error::Error>> {
        let s = server(sse::HEARTBEAT).await?;
        // A backlog longer than one replay batch, with live events appended while it streams.
        append(&s.db, 6..=1200, "P3");
        let _ = s.seq_tx.send(1200);
        let mut sse = SseReader {
            resp: connect(&s.base, Some("0")).await?,
            buf: String::new(),
        };
        let mut got = Vec::new();
        for _ in 0..10 {
            got.push(sse.next_alert().await.id.unwrap_or(0));
        }
        append(&s.db, 1201..=1210, "P1");
        let _ = s.seq_tx.send(1210);
        while got.last() != Some(&1210) {
            got.push(sse.next_alert().await.id.unwrap_or(0));
        }
        assert_eq!(got, (1..=1210).collect::<Vec<u64>>());
        s.shutdown.cancel();
        Ok(())
    }

    #[tokio::test]
    async fn a_malformed_last_event_id_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let s = server(sse::HEARTBEAT).await?;
        let resp = connect(&s.base, Some("abc")).await?;
        assert_eq!(resp.status(), 400);
        s.shutdown.cancel();
        Ok(())
    }
}
