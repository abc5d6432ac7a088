//! The HTTP API (axum): `/healthz`, `/metrics` and the `/api/v1/` read endpoints, answered from
//! the journal and the registry.

pub mod alerts;
pub mod config;
pub mod control;
pub mod stream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::journal::{DeviceRow, Store, StoreError};
use crate::registry::{Registry, UNREGISTERED_CLASS};
use crate::telemetry::Telemetry;

/// `limit` when the client gives none (the HTTP API contract, docs/contracts.md).
const DEFAULT_LIMIT: usize = 1000;
/// Largest `limit` honoured, so one request cannot hold the journal for long.
const MAX_LIMIT: usize = 100_000;

#[derive(Clone)]
pub struct ApiState {
    pub site: String,
    pub registry: Arc<Registry>,
    pub telemetry: Arc<Telemetry>,
    pub journal_path: PathBuf,
    /// Login counters for `/metrics`.
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// The gateway clock, for device states (offline after `offline_multiple` intervals).
    pub clock: crate::clock::Clock,
    /// Intervals of silence after which a device counts as offline (the catalog's, R17).
    pub offline_multiple: u32,
    /// The embedded broker's front door: connections and refusals per identity.
    pub mqtt_access: Option<Arc<crate::access::events::AccessEvents>>,
    /// One reader connection, opened on first use.
    reader: Arc<Mutex<Option<Store>>>,
}

impl ApiState {
    pub fn new(site: String, registry: Arc<Registry>, telemetry: Arc<Telemetry>, journal_path: PathBuf) -> Self {
        ApiState {
            site,
            registry,
            telemetry,
            journal_path,
            auth: None,
            clock: crate::clock::Clock::system(),
            offline_multiple: 3,
            mqtt_access: None,
            reader: Arc::new(Mutex::new(None)),
        }
    }

    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let reader = self.reader.clone();
        let path = self.journal_path.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = reader.lock().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                *guard = Some(Store::open_secondary(&path)?);
            }
            match guard.as_ref() {
                Some(store) => f(store),
                None => unreachable_store(),
            }
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))
    }

    fn status(&self) -> &'static str {
        self.telemetry.status()
    }
}

fn unreachable_store<T>() -> Result<T, StoreError> {
    Err(StoreError::Sql(rusqlite::Error::InvalidQuery))
}

/// Errors as JSON, without internals beyond a short message.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "API request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_owned())
            }
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

/// The page's policy: everything from this gateway, nothing from elsewhere, never framed.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Middleware: the security headers on every response (a handler's own win).
pub async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        if !h.contains_key(&name) {
            h.insert(name, header::HeaderValue::from_static(value));
        }
    }
    resp
}

/// `/healthz` and `/metrics`: open on the listen address.
pub fn open_routes(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Devices and readings: behind the login middleware.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/readings", get(readings))
        .route("/api/v1/mqtt/identities", get(mqtt_identities))
        .with_state(state)
}

async fn healthz(State(s): State<ApiState>) -> Response {
    let status = s.status();
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({ "status": status }))).into_response()
}

async fn metrics(State(s): State<ApiState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], {
        let mut text = s.telemetry.render();
        if let Some(auth) = &s.auth {
            auth.render(&mut text);
        }
        text
    })
        .into_response()
}

/// The MQTT identities that connected or were refused since start: open connections and
/// refusals by reason, per registered identity (`unknown` and `anonymous` aggregate the rest).
/// Empty with an external broker, which does not tell the gateway. Admins only, like the audit.
async fn mqtt_identities(State(s): State<ApiState>, who: Option<axum::Extension<crate::auth::Principal>>) -> Response {
    match &who {
        Some(axum::Extension(who)) if who.role >= crate::auth::Role::Admin => {}
        Some(axum::Extension(who)) => {
            let message = format!("`{}` is a {}; MQTT identities need admin", who.user, who.role.as_str());
            return (StatusCode::FORBIDDEN, Json(json!({ "error": message }))).into_response();
        }
        None => {
            return (
                StatusCode::FORBIDDEN,
                Json(json!({ "error": "MQTT identities need admin" })),
            )
                .into_response()
        }
    }
    match &s.mqtt_access {
        Some(events) => {
            let refused: serde_json::Map<String, serde_json::Value> = crate::access::Reason::ALL
                .iter()
                .map(|r| (r.as_str().to_owned(), json!(events.refused_total(*r))))
                .collect();
            Json(json!({ "embedded": true, "refused": refused, "identities": events.per_identity() })).into_response()
        }
        None => Json(json!({ "embedded": false, "refused": {}, "identities": {} })).into_response(),
    }
}

/// One device as `/api/v1/devices` shows it.
#[derive(Debug, Serialize)]
pub struct DeviceView {
    pub id: String,
    pub site: String,
    pub class: String,
    pub registered: bool,
    pub building: String,
    pub floor: String,
    pub room: String,
    pub zone: String,
    pub bed: String,
    /// Pseudonymous resident id.
    pub resident: Option<String>,
    pub care_flags: Vec<String>,
    pub interval_s: Option<u64>,
    /// Last receive time, ms since the epoch; null when never heard.
    pub last_seen: Option<i64>,
    /// Last value of every metric the device reported.
    pub last_values: serde_json::Value,
    pub battery_pct: Option<f64>,
    pub readings: u64,
    pub seq_duplicates: u64,
    pub seq_gaps: u64,
    pub seq_resets: u64,
    /// Heard within `offline_multiple` intervals (false when never heard).
    pub online: bool,
    /// Battery below R18's 20 %.
    pub low_battery: bool,
    /// The device's last reading reported a fault.
    pub fault: bool,
    /// One word for the facility view: `offline`, `fault`, `low_battery`, `ok` or `never_seen`
    /// (the first that applies; `in alarm` comes from the open alerts).
    pub status: &'static str,
}

/// Battery level under which a device shows as low (R18's `below`).
pub const LOW_BATTERY_PCT: f64 = 20.0;

impl DeviceView {
    fn with_status(mut self, now_ms: i64, offline_multiple: u32) -> Self {
        self.online = match (self.last_seen, self.interval_s) {
            (Some(seen), Some(iv)) => now_ms - seen <= iv as i64 * 1000 * offline_multiple as i64,
            (Some(_), None) => true,
            (None, _) => false,
        };
        self.low_battery = self.battery_pct.is_some_and(|b| b < LOW_BATTERY_PCT);
        self.fault = self.last_values.get("fault").and_then(|v| v.as_bool()) == Some(true);
        self.status = if self.last_seen.is_none() {
            "never_seen"
        } else if !self.online {
            "offline"
        } else if self.fault {
            "fault"
        } else if self.low_battery {
            "low_battery"
        } else {
            "ok"
        };
        self
    }
}

async fn devices(State(s): State<ApiState>) -> Result<Json<Vec<DeviceView>>, ApiError> {
    let seen: HashMap<String, DeviceRow> = s
        .with_store(|st| st.devices())
        .await?
        .into_iter()
        .map(|d| (d.id.clone(), d))
        .collect();
    let mut out = Vec::with_capacity(s.registry.len() + 8);
    for d in s.registry.devices() {
        let row = seen.get(&d.id);
        out.push(DeviceView {
            id: d.id.clone(),
            site: s.site.clone(),
            class: d.class.clone(),
            registered: true,
            building: d.building.clone(),
            floor: d.floor.clone(),
            room: d.room.clone(),
            zone: d.zone.clone(),
            bed: d.bed.clone(),
            resident: d.resident.clone(),
            care_flags: d.care_flags.clone(),
            interval_s: Some(d.interval_s),
            ..view_of_row(row)
        });
    }
    for (id, row) in &seen {
        if s.registry.get(id).is_none() {
            out.push(DeviceView {
                id: id.clone(),
                site: s.site.clone(),
                class: UNREGISTERED_CLASS.to_owned(),
                registered: false,
                ..view_of_row(Some(row))
            });
        }
    }
    let now = s.clock.now_ms();
    let mut out: Vec<DeviceView> = out
        .into_iter()
        .map(|d| d.with_status(now, s.offline_multiple))
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(out))
}

fn view_of_row(row: Option<&DeviceRow>) -> DeviceView {
    DeviceView {
        id: String::new(),
        site: String::new(),
        class: String::new(),
        registered: false,
        building: String::new(),
        floor: String::new(),
        room: row.map(|r| r.room.clone()).unwrap_or_default(),
        zone: String::new(),
        bed: String::new(),
        resident: None,
        care_flags: Vec::new(),
        interval_s: None,
        last_seen: row.map(|r| r.last_seen),
        last_values: row.map(|r| r.metrics.clone()).unwrap_or_else(|| json!({})),
        battery_pct: row.and_then(|r| r.metrics.get("battery_pct")).and_then(|v| v.as_f64()),
        readings: row.map_or(0, |r| r.readings),
        seq_duplicates: row.map_or(0, |r| r.seq_duplicates),
        seq_gaps: row.map_or(0, |r| r.seq_gaps),
        seq_resets: row.map_or(0, |r| r.seq_resets),
        online: false,
        low_battery: false,
        fault: false,
        status: "never_seen",
    }
}

#[derive(Debug, Deserialize)]
pub struct ReadingsQuery {
    device: Option<String>,
    since: Option<i64>,
    limit: Option<usize>,
}

async fn readings(State(s): State<ApiState>, Query(q): Query<ReadingsQuery>) -> Result<Response, ApiError> {
    let device = q
        .device
        .filter(|d| !d.is_empty())
        .ok_or_else(|| ApiError::BadRequest("`device` is required".into()))?;
    let since = q.since.unwrap_or(0);
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let rows = s.with_store(move |st| st.history(&device, since, limit)).await?;
    Ok(Json(rows).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(last_seen: Option<i64>, interval_s: u64, values: serde_json::Value) -> DeviceView {
        DeviceView {
            interval_s: Some(interval_s),
            last_seen,
            battery_pct: values.get("battery_pct").and_then(|v| v.as_f64()),
            last_values: values,
            ..view_of_row(None)
        }
    }

    #[test]
    fn device_status_for_the_facility_view() {
        let now = 1_000_000;
        let status = |d: DeviceView| {
            let d = d.with_status(now, 3);
            (d.status, d.online, d.low_battery, d.fault)
        };
        assert_eq!(status(seen(None, 60, json!({}))), ("never_seen", false, false, false));
        // Offline after 3 intervals of silence (R17), whatever the last values said.
        assert_eq!(
            status(seen(Some(now - 180_001), 60, json!({"fault": true}))),
            ("offline", false, false, true)
        );
        assert_eq!(
            status(seen(Some(now - 180_000), 60, json!({}))),
            ("ok", true, false, false)
        );
        assert_eq!(
            status(seen(Some(now), 60, json!({"fault": true, "battery_pct": 5.0}))),
            ("fault", true, true, true)
        );
        assert_eq!(
            status(seen(Some(now), 60, json!({"battery_pct": 19.5}))),
            ("low_battery", true, true, false)
        );
        assert_eq!(
            status(seen(Some(now), 60, json!({"battery_pct": 20.0}))),
            ("ok", true, false, false)
        );
    }
}
