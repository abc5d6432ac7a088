//! What the control room reads besides alerts and devices: residents' names, the audit log
//! (admin) and the shift summary.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::config::Resident;
use crate::alerts::{Alert, AlertStore, AlertStoreError, AuditLogEntry, SYSTEM_ACTOR};
use crate::auth::{Principal, Role};
use crate::clock::Clock;
use crate::registry::Registry;
use crate::rules::output::Priority;
use crate::site_time::SiteTime;

/// Audit entries one request returns when the client gives no `limit`, and at most.
const AUDIT_DEFAULT_LIMIT: usize = 500;
const AUDIT_MAX_LIMIT: usize = 10_000;

#[derive(Clone)]
pub struct ControlState {
    pub registry: Arc<Registry>,
    pub residents: Arc<Vec<Resident>>,
    pub clock: Clock,
    /// Shift starts in minutes of the local day, sorted.
    pub shift_starts: Vec<i64>,
    /// The site's local time, in which the shifts change.
    pub site_time: SiteTime,
    db_path: PathBuf,
    reader: Arc<Mutex<Option<AlertStore>>>,
}

impl ControlState {
    pub fn new(
        registry: Arc<Registry>,
        residents: Vec<Resident>,
        clock: Clock,
        shift_starts: Vec<i64>,
        site_time: SiteTime,
        db_path: PathBuf,
    ) -> Self {
        ControlState {
            registry,
            residents: Arc::new(residents),
            clock,
            shift_starts,
            site_time,
            db_path,
            reader: Arc::new(Mutex::new(None)),
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&AlertStore) -> Result<T, AlertStoreError> + Send + 'static,
    ) -> Result<T, Response> {
        let reader = self.reader.clone();
        let path = self.db_path.clone();
        let out = tokio::task::spawn_blocking(move || {
            let mut guard = reader.lock().unwrap_or_else(|p| p.into_inner());
            let store = match guard.take() {
                Some(s) => s,
                None => AlertStore::open(&path)?,
            };
            let out = f(&store);
            *guard = Some(store);
            out
        })
        .await;
        match out {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(internal(&e.to_string())),
            Err(e) => Err(internal(&e.to_string())),
        }
    }
}

fn internal(e: &str) -> Response {
    tracing::error!(error = %e, "control API request failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": "internal error" })),
    )
        .into_response()
}

/// Behind the login middleware.
pub fn routes(state: ControlState) -> Router {
    Router::new()
        .route("/api/v1/residents", get(residents))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/shifts", get(shifts))
        .with_state(state)
}

#[derive(Debug, Serialize)]
pub struct ResidentView {
    pub id: String,
    pub name: String,
    pub room: String,
    pub bed: String,
}

async fn residents(State(s): State<ControlState>) -> Json<Vec<ResidentView>> {
    let out = s
        .residents
        .iter()
        .map(|r| {
            // The room and bed of the resident's devices; a device with a bed wins.
            let devices = s
                .registry
                .devices()
                .iter()
                .filter(|d| d.resident.as_deref() == Some(&r.id));
            let best = devices.max_by_key(|d| !d.bed.is_empty());
            ResidentView {
                id: r.id.clone(),
                name: r.name.clone(),
                room: best.map(|d| d.room.clone()).unwrap_or_default(),
                bed: best.map(|d| d.bed.clone()).unwrap_or_default(),
            }
        })
        .collect();
    Json(out)
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    limit: Option<usize>,
    /// Entries before this time (ms), for paging back.
    before: Option<i64>,
}

async fn audit(
    State(s): State<ControlState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditLogEntry>>, Response> {
    if who.role < Role::Admin {
        return Err((
            StatusCode::FORBIDDEN,
            Json(json!({ "error": format!("`{}` is a {}; the audit log needs admin", who.user, who.role.as_str()) })),
        )
            .into_response());
    }
    let limit = q.limit.unwrap_or(AUDIT_DEFAULT_LIMIT).min(AUDIT_MAX_LIMIT);
    Ok(Json(s.read(move |st| st.audit_log(limit, q.before)).await?))
}

/// One shift in the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShiftSummary {
    /// `current` or `previous`.
    pub label: &'static str,
    pub start: i64,
    pub end: i64,
    /// Alerts raised during the shift, by (current) priority.
    pub raised: std::collections::BTreeMap<&'static str, u64>,
    /// Of those, how many a person acknowledged (or resolved without acknowledging).
    pub acknowledged: u64,
    /// Time from raise to the first response by a person, seconds.
    pub ack_median_s: Option<f64>,
    pub ack_worst_s: Option<f64>,
    /// Raised during the shift and still without a response at its end (or now).
    pub unacknowledged: u64,
    /// Alerts open at the shift's end (or now, for the current one): what was handed over.
    pub open_at_end: u64,
    /// Their ids, oldest first.
    pub open_at_end_ids: Vec<String>,
}

/// The first response of a person to an alert: its acknowledgement, else a resolution by a
/// person (a fall resolved on site without acknowledging first).
fn responded_at(a: &Alert) -> Option<i64> {
    a.acknowledged_at
        .or_else(|| match (a.resolved_at, a.resolved_by.as_deref()) {
            (Some(t), Some(by)) if by != SYSTEM_ACTOR => Some(t),
            _ => None,
        })
}

pub fn summarize(label: &'static str, start: i64, end: i64, alerts: &[Alert]) -> ShiftSummary {
    let mut raised: std::collections::BTreeMap<&'static str, u64> =
        [Priority::P1, Priority::P2, Priority::P3, Priority::P4]
            .iter()
            .map(|p| (p.as_str(), 0))
            .collect();
    let mut waits = Vec::new();
    let mut unacknowledged = 0;
    for a in alerts.iter().filter(|a| a.raised_at >= start && a.raised_at < end) {
        *raised.entry(a.priority.as_str()).or_default() += 1;
        match responded_at(a) {
            Some(t) if t < end => waits.push((t - a.raised_at).max(0) as f64 / 1000.0),
            _ => {
                // Cleared by its rule before anyone answered: nothing was waiting.
                let cleared_first = a.resolved_at.is_some_and(|t| t < end) && responded_at(a).is_none();
                if !cleared_first {
                    unacknowledged += 1;
                }
            }
        }
    }
    waits.sort_by(f64::total_cmp);
    let median = match waits.len() {
        0 => None,
        n if n % 2 == 1 => Some(waits[n / 2]),
        n => Some((waits[n / 2 - 1] + waits[n / 2]) / 2.0),
    };
    let mut open: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.raised_at < end && a.resolved_at.is_none_or(|t| t >= end))
        .collect();
    open.sort_by_key(|a| (a.raised_at, a.id.clone()));
    ShiftSummary {
        label,
        start,
        end,
        raised,
        acknowledged: waits.len() as u64,
        ack_median_s: median,
        ack_worst_s: waits.last().copied(),
        unacknowledged,
        open_at_end: open.len() as u64,
        open_at_end_ids: open.iter().map(|a| a.id.clone()).collect(),
    }
}

async fn shifts(State(s): State<ControlState>) -> Result<Response, Response> {
    let now = s.clock.now_ms();
    let (current, previous) = s.site_time.shift_bounds(now, &s.shift_starts);
    let alerts = s.read(move |st| st.alerts_touched_since(previous)).await?;
    let out = [
        summarize("current", current, now, &alerts),
        summarize("previous", previous, current, &alerts),
    ];
    Ok(Json(json!({
        "now": now,
        "timezone": s.site_time.name(),
        "utc_offset_min": s.site_time.offset_min(now),
        "shifts": out,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::AlertState;

    /// 2026-11-23 00:00 China time = 2026-11-22 16:00 UTC.
    const MIDNIGHT_CST: i64 = 1_795_363_200_000;
    const MIN: i64 = 60_000;

    #[test]
    fn shift_bounds_follow_local_time() {
        let starts = [7 * 60, 15 * 60, 23 * 60];
        let china = SiteTime::zone("Asia/Shanghai").expect("zone");
        let shift_bounds = |now, starts: &[i64]| china.shift_bounds(now, starts);
        // 03:00 local: the night shift began at 23:00 yesterday; the one before at 15:00.
        let (cur, prev) = shift_bounds(MIDNIGHT_CST + 180 * MIN, &starts);
        assert_eq!(cur, MIDNIGHT_CST - 60 * MIN);
        assert_eq!(prev, MIDNIGHT_CST - 540 * MIN);
        // 07:00 exactly: the day shift has begun.
        let (cur, prev) = shift_bounds(MIDNIGHT_CST + 420 * MIN, &starts);
        assert_eq!((cur, prev), (MIDNIGHT_CST + 420 * MIN, MIDNIGHT_CST - 60 * MIN));
        // One start a day: shifts of 24 h.
        let (cur, prev) = shift_bounds(MIDNIGHT_CST + 60 * MIN, &[8 * 60]);
        assert_eq!((cur, prev), (MIDNIGHT_CST - 960 * MIN, MIDNIGHT_CST - 2400 * MIN));
    }

    fn alert(id: &str, p: Priority, raised: i64) -> Alert {
        serde_json::from_value(json!({
            "id": id, "seq": 1, "site": "s", "rule": "R1", "priority": p, "state": "active",
            "device": "d", "room": "r", "hazard": "fall", "raised_at": raised, "updated_at": raised,
            "escalation_level": 0, "message": "", "message_en": "", "latching": true,
            "person_centred": true, "escalation_from": raised, "notified_at": raised
        }))
        .expect("alert")
    }

    #[test]
    fn summary_counts_waits_and_handover() {
        let start = 1_000_000;
        let end = start + 8 * 3_600_000;
        let mut acked = alert("a-1", Priority::P1, start + 1000);
        acked.state = AlertState::Acknowledged;
        acked.acknowledged_at = Some(start + 31_000);
        let mut on_site = alert("a-2", Priority::P1, start + 2000);
        on_site.state = AlertState::Resolved;
        on_site.resolved_at = Some(start + 92_000);
        on_site.resolved_by = Some("nurse1".into());
        let mut cleared = alert("a-3", Priority::P3, start + 3000);
        cleared.state = AlertState::Resolved;
        cleared.resolved_at = Some(start + 5000);
        cleared.resolved_by = Some(SYSTEM_ACTOR.into());
        let waiting = alert("a-4", Priority::P2, start + 4000);
        let earlier = alert("a-0", Priority::P2, start - 10_000);
        let later = alert("a-9", Priority::P1, end + 1);
        let all = [acked, on_site, cleared, waiting, earlier, later];
        let s = summarize("previous", start, end, &all);
        assert_eq!(s.raised.get("P1"), Some(&2));
        assert_eq!(s.raised.get("P2"), Some(&1));
        assert_eq!(s.raised.get("P3"), Some(&1));
        assert_eq!(s.acknowledged, 2);
        assert_eq!(s.ack_median_s, Some(60.0));
        assert_eq!(s.ack_worst_s, Some(90.0));
        assert_eq!(s.unacknowledged, 1);
        assert_eq!(s.open_at_end_ids, ["a-0", "a-1", "a-4"]);
        assert_eq!(s.open_at_end, 3);
    }
}
