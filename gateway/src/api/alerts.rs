//! `/api/v1/alerts`: list, one alert with its audit trail, acknowledge, resolve.
//!
//! Reads use their own store connection; writes go to the alerts task as commands, so one owner
//! mutates alerts. The actor is the logged-in operator or the token's name (the login
//! middleware puts it in the request); a `by` in the body is ignored.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::alerts::{
    Alert, AlertError, AlertStore, AlertStoreError, AlertsHandle, AuditEntry, Resolution, StateFilter,
};
use crate::auth::Principal;

/// Most alerts one list returns when the client gives no `limit`.
const DEFAULT_LIMIT: usize = 1000;
/// Largest `limit` honoured.
const MAX_LIMIT: usize = 10_000;

#[derive(Clone)]
pub struct AlertsApiState {
    pub handle: AlertsHandle,
    pub db_path: PathBuf,
    /// One reader connection, opened on first use.
    reader: Arc<Mutex<Option<AlertStore>>>,
}

impl AlertsApiState {
    pub fn new(handle: AlertsHandle, db_path: PathBuf) -> Self {
        AlertsApiState {
            handle,
            db_path,
            reader: Arc::new(Mutex::new(None)),
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&AlertStore) -> Result<T, AlertStoreError> + Send + 'static,
    ) -> Result<T, AlertsApiError> {
        let reader = self.reader.clone();
        let path = self.db_path.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = reader.lock().unwrap_or_else(|p| p.into_inner());
            let store = match guard.take() {
                Some(s) => s,
                None => AlertStore::open(&path)?,
            };
            let out = f(&store);
            *guard = Some(store);
            out
        })
        .await
        .map_err(|e| AlertsApiError::Internal(e.to_string()))?
        .map_err(|e| AlertsApiError::Internal(e.to_string()))
    }
}

/// Errors as `{"error": "..."}`, without internals.
#[derive(Debug)]
pub enum AlertsApiError {
    BadRequest(String),
    NotFound(String),
    Conflict(String),
    Unavailable,
    Internal(String),
}

impl From<AlertError> for AlertsApiError {
    fn from(e: AlertError) -> Self {
        match e {
            AlertError::NotFound(id) => AlertsApiError::NotFound(format!("no alert {id}")),
            AlertError::Conflict(m) => AlertsApiError::Conflict(m),
            AlertError::BadInput(m) => AlertsApiError::BadRequest(m),
            AlertError::Unavailable => AlertsApiError::Unavailable,
            AlertError::Store(e) => AlertsApiError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for AlertsApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            AlertsApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            AlertsApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            AlertsApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            AlertsApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "alerts are not running".to_owned()),
            AlertsApiError::Internal(m) => {
                tracing::error!(error = %m, "alerts API request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_owned())
            }
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

/// The alert routes, with their state applied: merge into the API router.
pub fn routes(state: AlertsApiState) -> Router {
    Router::new()
        .route("/api/v1/alerts", get(list))
        .route("/api/v1/alerts/:id", get(one))
        .route("/api/v1/alerts/:id/ack", post(ack))
        .route("/api/v1/alerts/:id/resolve", post(resolve))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn list(State(s): State<AlertsApiState>, Query(q): Query<ListQuery>) -> Result<Json<Vec<Alert>>, AlertsApiError> {
    let filter = match q.state.as_deref() {
        None | Some("") => StateFilter::All,
        Some(v) => StateFilter::parse(v).ok_or_else(|| {
            AlertsApiError::BadRequest(format!(
                "unknown state {v:?}: use active, acknowledged, resolved, open or all"
            ))
        })?,
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    Ok(Json(s.read(move |st| st.list(filter, limit)).await?))
}

/// One alert with its audit trail.
#[derive(Debug, Serialize)]
pub struct AlertWithAudit {
    #[serde(flatten)]
    pub alert: Alert,
    pub audit: Vec<AuditEntry>,
}

async fn one(State(s): State<AlertsApiState>, Path(id): Path<String>) -> Result<Json<AlertWithAudit>, AlertsApiError> {
    let key = id.clone();
    let found = s
        .read(move |st| {
            let Some(alert) = st.get(&key)? else {
                return Ok(None);
            };
            Ok(Some(AlertWithAudit {
                audit: st.audit(&key)?,
                alert,
            }))
        })
        .await?;
    found
        .map(Json)
        .ok_or_else(|| AlertsApiError::NotFound(format!("no alert {id}")))
}

#[derive(Debug, Deserialize)]
struct ActBody {
    note: Option<String>,
    resolution: Option<String>,
}

/// Longest note kept.
const MAX_NOTE_CHARS: usize = 2000;

/// The body as JSON (an empty body is no note); anything malformed is a 400 (axum's extractor
/// would answer 422).
fn body(bytes: &Bytes) -> Result<(Option<String>, Option<String>), AlertsApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok((None, None));
    }
    let b: ActBody = serde_json::from_slice(bytes)
        .map_err(|e| AlertsApiError::BadRequest(format!("body must be JSON {{\"note\"}}: {e}")))?;
    let note = b.note.filter(|n| !n.trim().is_empty());
    if note.as_ref().is_some_and(|n| n.chars().count() > MAX_NOTE_CHARS) {
        return Err(AlertsApiError::BadRequest(format!(
            "`note` is longer than {MAX_NOTE_CHARS} characters"
        )));
    }
    Ok((note, b.resolution))
}

async fn ack(
    State(s): State<AlertsApiState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<Alert>, AlertsApiError> {
    let (note, _) = body(&bytes)?;
    Ok(Json(s.handle.ack(id, who.user, note).await?))
}

async fn resolve(
    State(s): State<AlertsApiState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<Alert>, AlertsApiError> {
    let (note, resolution) = body(&bytes)?;
    let by = who.user;
    let resolution = resolution
        .as_deref()
        .and_then(Resolution::parse_by_person)
        .ok_or_else(|| AlertsApiError::BadRequest("`resolution` must be handled, false_alarm or test".into()))?;
    Ok(Json(s.handle.resolve(id, by, note, resolution).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{command_channel, execute, Lifecycle, Policy};
    use crate::rules::output::{Priority, RuleOutput, Trigger};

    const T0: i64 = 1_700_000_000_000;

    fn trigger(rule: &str, device: &str, hazard: &str, person_centred: bool) -> Trigger {
        Trigger {
            rule: rule.into(),
            subject: device.into(),
            priority: Priority::P1,
            upgrades: None,
            device: device.into(),
            room: "3-12".into(),
            resident: None,
            hazard: hazard.into(),
            metric: None,
            value: None,
            latching: true,
            person_centred,
            message: "告警".into(),
            message_en: "alarm".into(),
            at: T0,
        }
    }

    /// Serves the routes on a free loopback port with a stand-in for the alerts task that runs
    /// the real lifecycle; the gas condition of `gas-1` always holds.
    async fn serve(db: PathBuf) -> String {
        let mut l = Lifecycle::open(AlertStore::open(&db).expect("store"), Policy::default(), "site-1").expect("open");
        l.apply(RuleOutput::Raise(trigger("R14", "gas-1", "gas", false)), T0)
            .expect("raise");
        l.apply(RuleOutput::Raise(trigger("R1", "radar-1", "fall", true)), T0 + 1)
            .expect("raise");
        let (handle, mut rx) = command_channel();
        tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                execute(&mut l, cmd, T0 + 10_000, |rule, subject| {
                    rule == "R14" && subject == "gas-1"
                });
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // The login middleware's part: the acting operator.
        let app = routes(AlertsApiState::new(handle, db)).layer(Extension(Principal {
            user: "nurse-li".into(),
            name: "李护士".into(),
            role: crate::auth::Role::Operator,
            via_session: true,
        }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    async fn call(method: &str, url: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let client = reqwest011::Client::new();
        let req = match method {
            "POST" => client.post(url).body(body.unwrap_or("").to_owned()),
            _ => client.get(url),
        };
        let resp = req
            .header("content-type", "application/json")
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    #[tokio::test]
    async fn alerts_api_lists_shows_acknowledges_and_resolves() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let base = serve(dir.path().join("alerts-api.db")).await;

        let (status, list) = call("GET", &format!("{base}/api/v1/alerts?state=open"), None).await;
        assert_eq!(status, 200);
        let ids: Vec<&str> = list
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|a| a["id"].as_str())
            .collect();
        assert_eq!(ids, ["a-1", "a-2"]);
        assert_eq!(
            call("GET", &format!("{base}/api/v1/alerts?state=bogus"), None).await.0,
            400
        );
        assert_eq!(call("GET", &format!("{base}/api/v1/alerts/a-9"), None).await.0, 404);

        let ack_url = format!("{base}/api/v1/alerts/a-1/ack");
        assert_eq!(call("POST", &ack_url, Some("not json")).await.0, 400);
        let long_note = format!(r#"{{"note":"{}"}}"#, "x".repeat(MAX_NOTE_CHARS + 1));
        assert_eq!(call("POST", &ack_url, Some(&long_note)).await.0, 400);
        // A `by` in the body does not name the actor: the logged-in operator does.
        let (status, acked) = call("POST", &ack_url, Some(r#"{"by":"someone-else","note":"on my way"}"#)).await;
        assert_eq!(status, 200, "{acked}");
        assert_eq!(acked["state"], "acknowledged");
        assert_eq!(acked["acknowledged_by"], "nurse-li");
        assert_eq!(call("POST", &ack_url, Some(r#"{"by":"nurse-li"}"#)).await.0, 409);
        assert_eq!(
            call("POST", &format!("{base}/api/v1/alerts/a-9/ack"), Some(r#"{"by":"x"}"#))
                .await
                .0,
            404
        );

        let resolve_gas = format!("{base}/api/v1/alerts/a-1/resolve");
        let bad = r#"{"by":"nurse-li","resolution":"cleared"}"#;
        assert_eq!(call("POST", &resolve_gas, Some(bad)).await.0, 400);
        let (status, err) = call(
            "POST",
            &resolve_gas,
            Some(r#"{"by":"nurse-li","resolution":"handled"}"#),
        )
        .await;
        assert_eq!(status, 409, "{err}");
        let resolve_fall = format!("{base}/api/v1/alerts/a-2/resolve");
        let body = r#"{"note":"helped up","resolution":"handled"}"#;
        let (status, done) = call("POST", &resolve_fall, Some(body)).await;
        assert_eq!(status, 200, "{done}");
        assert_eq!(
            (done["state"].as_str(), done["resolution"].as_str()),
            (Some("resolved"), Some("handled"))
        );
        assert_eq!(call("POST", &resolve_fall, Some(body)).await.0, 409);

        let (status, one) = call("GET", &format!("{base}/api/v1/alerts/a-2"), None).await;
        assert_eq!(status, 200);
        assert_eq!(one["id"], "a-2");
        let trail: Vec<&str> = one["audit"]
            .as_array()
            .expect("audit")
            .iter()
            .filter_map(|e| e["action"].as_str())
            .collect();
        assert_eq!(trail, ["raised", "resolved"]);
        assert_eq!(one["audit"][1]["actor"], "nurse-li");
        assert_eq!(one["audit"][1]["note"], "helped up");
        let (_, resolved) = call("GET", &format!("{base}/api/v1/alerts?state=resolved"), None).await;
        assert_eq!(resolved.as_array().map(Vec::len), Some(1));
    }
}
