//! A fault-injecting HTTP proxy in front of a real VictoriaMetrics: requests pass through
//! unless a queued fault (a status, a delay) is pending, or the body contains a "poison"
//! string, which is refused with 400 as InfluxDB refuses a malformed line (VictoriaMetrics
//! itself skips bad lines with 204, so it cannot show that path).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// A fault applied to one request.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Answer with this status without forwarding.
    Status(u16),
    /// Wait this long, then forward (the client's timeout fires first).
    Delay(Duration),
}

#[derive(Debug, Default)]
pub struct ProxyState {
    pub upstream: String,
    /// Faults for the next requests, one each.
    pub faults: VecDeque<Fault>,
    /// Bodies containing this are refused with 400.
    pub poison: Option<String>,
    pub requests: u64,
    pub forwarded: u64,
    pub refused: u64,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<ProxyState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    pub async fn start(upstream: String) -> Result<Self> {
        let state = Arc::new(Mutex::new(ProxyState {
            upstream,
            ..Default::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().fallback(handle).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FaultProxy { addr, state, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut ProxyState) -> T) -> T {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
}

async fn handle(State(state): State<Arc<Mutex<ProxyState>>>, uri: Uri, body: Bytes) -> Response {
    let (fault, poisoned, upstream) = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.requests += 1;
        let fault = s.faults.pop_front();
        let poisoned = s
            .poison
            .as_ref()
            .is_some_and(|p| String::from_utf8_lossy(&body).contains(p.as_str()));
        (fault, poisoned, s.upstream.clone())
    };
    match fault {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return (status, format!("injected {code}")).into_response();
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    if poisoned {
        if let Ok(mut s) = state.lock() {
            s.refused += 1;
        }
        return (
            StatusCode::BAD_REQUEST,
            r#"{"code":"invalid","message":"unable to parse line"}"#,
        )
            .into_response();
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    match crate::http()
        .post(format!("{upstream}{path}"))
        .body(body.to_vec())
        .send()
        .await
    {
        Ok(r) => {
            if let Ok(mut s) = state.lock() {
                s.forwarded += 1;
            }
            let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, r.bytes().await.unwrap_or_default().to_vec()).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
