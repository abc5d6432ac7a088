//! HTTP side of [`Auth`]: the middleware in front of `/api/v1`, login, logout and `me`.
//!
//! Reads (GET, HEAD) need `viewer`, every other method `operator`; handlers that need more
//! (the audit log: `admin`) check the [`Principal`] the middleware puts in the request. Writes
//! must be JSON, which a cross-site form cannot send; with the `SameSite=Strict` cookie that
//! keeps other sites from acting with a nurse's session.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{Auth, LoginOutcome, Principal, Role, COOKIE};
use crate::alerts::AlertStore;
use crate::clock::{system_now_ms, Clock};

/// Shared by the middleware and the login routes.
#[derive(Clone)]
pub struct AuthState {
    pub auth: Arc<Auth>,
    /// Audit timestamps are on the gateway clock, like the alert transitions beside them.
    pub clock: Clock,
    pub site: SiteInfo,
    audit: AuditWriter,
}

/// What `/api/v1/me` tells the page about the site.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SiteInfo {
    pub id: String,
    pub name: String,
    /// IANA zone the page formats times in.
    pub timezone: String,
}

impl AuthState {
    pub fn new(auth: Arc<Auth>, clock: Clock, site: SiteInfo, db_path: PathBuf) -> Self {
        AuthState {
            auth,
            clock,
            site,
            audit: AuditWriter {
                path: db_path,
                conn: Arc::new(Mutex::new(None)),
            },
        }
    }
}

/// Writes access entries (logins, failures, logouts) to the audit log, off the runtime.
#[derive(Clone)]
struct AuditWriter {
    path: PathBuf,
    conn: Arc<Mutex<Option<AlertStore>>>,
}

impl AuditWriter {
    async fn record(&self, at: i64, actor: String, action: &'static str, detail: serde_json::Value) {
        let conn = self.conn.clone();
        let path = self.path.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                *guard = Some(AlertStore::open(&path)?);
            }
            match guard.as_ref() {
                Some(store) => store.record_access(at, &actor, action, Some(&detail)),
                None => Ok(()),
            }
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, action, "audit entry not written"),
            Err(e) => tracing::error!(error = %e, action, "audit entry not written"),
        }
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// The credentials of a request: a bearer token first, else the session cookie.
pub fn principal_of(auth: &Auth, headers: &HeaderMap) -> Option<Principal> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let token = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))?;
        return auth.token(token.trim());
    }
    session_id(headers).and_then(|id| auth.session(&id, system_now_ms()))
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Middleware for `/api/v1`: 401 without valid credentials, 403 when the role is too low,
/// 415 for a write that is not JSON; the principal goes into the request's extensions.
pub async fn require(State(s): State<AuthState>, mut req: Request, next: Next) -> Response {
    let Some(p) = principal_of(&s.auth, req.headers()) else {
        s.auth.stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
        return refuse(
            StatusCode::UNAUTHORIZED,
            "log in, or send Authorization: Bearer <token>",
        );
    };
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let needed = if read { Role::Viewer } else { Role::Operator };
    if p.role < needed {
        s.auth.stats.forbidden.fetch_add(1, Ordering::Relaxed);
        return refuse(
            StatusCode::FORBIDDEN,
            &format!("`{}` is a {}; this needs {}", p.user, p.role.as_str(), needed.as_str()),
        );
    }
    if !read && p.via_session && !is_json(req.headers()) {
        return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "writes take application/json");
    }
    req.extensions_mut().insert(p);
    next.run(req).await
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

/// Login and logout (outside the middleware: login is how one gets credentials).
pub fn routes(state: AuthState) -> Router {
    Router::new()
        .route("/api/v1/login", post(login))
        .route("/api/v1/logout", post(logout))
        .with_state(state)
}

/// `me`: behind the middleware.
pub fn protected_routes(state: AuthState) -> Router {
    Router::new().route("/api/v1/me", get(me)).with_state(state)
}

#[derive(Deserialize)]
struct LoginBody {
    user: String,
    password: String,
}

/// Longest user name or password looked at: argon2 over a megabyte is a denial of service.
const MAX_CREDENTIAL_BYTES: usize = 1024;

async fn login(State(s): State<AuthState>, ConnectInfo(peer): ConnectInfo<SocketAddr>, bytes: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<LoginBody>(&bytes) else {
        return refuse(StatusCode::BAD_REQUEST, "body must be JSON {\"user\", \"password\"}");
    };
    let user = body.user.trim().to_owned();
    if user.is_empty() || user.len() > MAX_CREDENTIAL_BYTES || body.password.len() > MAX_CREDENTIAL_BYTES {
        return refuse(
            StatusCode::BAD_REQUEST,
            "user and password are required (at most 1 KiB)",
        );
    }
    let auth = s.auth.clone();
    let who = user.clone();
    let ip = peer.ip();
    let outcome =
        tokio::task::spawn_blocking(move || auth.login(&who, &body.password, Some(ip), system_now_ms())).await;
    let at = s.clock.now_ms();
    let actor: String = user.chars().take(64).collect();
    match outcome {
        Ok(LoginOutcome::Ok(id, p)) => {
            s.audit
                .record(
                    at,
                    p.user.clone(),
                    "login",
                    json!({ "address": ip.to_string(), "role": p.role }),
                )
                .await;
            let cookie = format!(
                "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                s.auth.session_max_age_s()
            );
            let mut resp = Json(json!({ "user": p.user, "name": p.name, "role": p.role })).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Ok(LoginOutcome::Wrong) => {
            s.audit
                .record(at, actor, "login_failed", json!({ "address": ip.to_string() }))
                .await;
            refuse(StatusCode::UNAUTHORIZED, "wrong user name or password")
        }
        Ok(LoginOutcome::Limited(wait_s)) => {
            s.audit
                .record(
                    at,
                    actor,
                    "login_rate_limited",
                    json!({ "address": ip.to_string(), "retry_after_s": wait_s }),
                )
                .await;
            let mut resp = (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({ "error": "too many failed logins; wait", "retry_after_s": wait_s })),
            )
                .into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait_s));
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "login check failed");
            refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

async fn logout(State(s): State<AuthState>, headers: HeaderMap) -> Response {
    if let Some(p) = session_id(&headers).and_then(|id| s.auth.logout(&id)) {
        s.audit.record(s.clock.now_ms(), p.user, "logout", json!({})).await;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("nh_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    resp
}

async fn me(State(s): State<AuthState>, Extension(p): Extension<Principal>) -> Response {
    Json(json!({ "user": p.user, "name": p.name, "role": p.role, "site": s.site })).into_response()
}
