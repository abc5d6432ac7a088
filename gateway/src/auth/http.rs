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
    /// Told of every lockout a failed login starts, with the operator's name when the name is a
    /// configured operator's: the gateway turns it into rule S8's `login_lockout` flag.
    pub on_lockout: Option<LockoutHook>,
}

/// See [`AuthState::on_lockout`].
pub type LockoutHook = Arc<dyn Fn(Option<&str>, std::net::IpAddr) + Send + Sync>;

/// What `/api/v1/me` tells the page about the site.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SiteInfo {
    pub id: String,
    pub name: String,
    /// IANA zone the page formats times in.
    pub timezone: String,
    /// The embedded broker's address for devices (`HOST:PORT`; an unspecified host such as
    /// `0.0.0.0` means every interface), shown in the page's "connect a device" help; `None`
    /// with an external broker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<String>,
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
            on_lockout: None,
        }
    }
}

/// Writes access entries (logins, failures, logouts) to the audit log, off the runtime.
#[derive(Clone)]
pub struct AuditWriter {
    path: PathBuf,
    conn: Arc<Mutex<Option<AlertStore>>>,
}

impl AuditWriter {
    /// Writes to the audit log kept in the journal at `path` (opened at the first entry).
    pub fn new(path: PathBuf) -> AuditWriter {
        AuditWriter {
            path,
            conn: Arc::new(Mutex::new(None)),
        }
    }

    pub async fn record(&self, at: i64, actor: String, action: &'static str, detail: serde_json::Value) {
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

/// The session cookie's value.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
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
        Ok(LoginOutcome::Wrong(lockout)) => {
            s.audit
                .record(at, actor.clone(), "login_failed", json!({ "address": ip.to_string() }))
                .await;
            if let Some(l) = lockout {
                tracing::warn!(user = %actor, address = %ip, scope = l.scope, wait_s = l.wait_s, nth = l.nth, "login locked out");
                s.audit
                    .record(
                        at,
                        actor.clone(),
                        "login_lockout",
                        json!({ "address": ip.to_string(), "scope": l.scope, "wait_s": l.wait_s, "nth": l.nth }),
                    )
                    .await;
                if let Some(hook) = &s.on_lockout {
                    let known = s.auth.is_operator(&user).then_some(user.as_str());
                    hook(known, ip);
                }
            }
            refuse(StatusCode::UNAUTHORIZED, "wrong user name or password")
        }
        Ok(LoginOutcome::Limited { wait_s, first }) => {
            // One entry per lockout: the tries it refuses cost no hash and come as fast as a
            // client sends them.
            if first {
                s.audit
                    .record(
                        at,
                        actor,
                        "login_rate_limited",
                        json!({ "address": ip.to_string(), "retry_after_s": wait_s }),
                    )
                    .await;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{hash_password, token_digest_hex, AuthConfig, OperatorConfig, TokenConfig};

    /// The middleware and login routes on a free loopback port, in front of a protected read
    /// and write and the real audit log; returns the base URL.
    async fn serve(db: PathBuf) -> String {
        let op = |user: &str, role, password: &str| OperatorConfig {
            user: user.into(),
            name: String::new(),
            role,
            password_hash: hash_password(password).expect("hash"),
        };
        let auth = Arc::new(Auth::new(AuthConfig {
            operators: vec![
                op("nurse1", Role::Operator, "night-shift"),
                op("guest", Role::Viewer, "look-only"),
                op("head", Role::Admin, "head-nurse"),
            ],
            tokens: vec![TokenConfig {
                name: "city-platform".into(),
                role: Role::Viewer,
                token_sha256: token_digest_hex("platform-token-0123456789"),
            }],
            ..AuthConfig::default()
        }));
        let site = SiteInfo {
            id: "s1".into(),
            name: "Test home".into(),
            timezone: "Asia/Shanghai".into(),
            mqtt: Some("127.0.0.1:1883".into()),
        };
        let state = AuthState::new(auth.clone(), Clock::system(), site, db.clone());
        let (seq_tx, seq_rx) = tokio::sync::watch::channel(0u64);
        let stream = crate::api::stream::StreamState::new(
            db.clone(),
            seq_rx,
            || "ok",
            Arc::new(crate::alerts::delivery::DeliveryStats::default()),
            tokio_util::sync::CancellationToken::new(),
        );
        let control = crate::api::control::ControlState::new(
            Arc::new(
                crate::registry::Registry::parse(std::path::Path::new("r.toml"), "site = \"s1\"\n").expect("registry"),
            ),
            Vec::new(),
            Clock::system(),
            vec![420],
            crate::site_time::SiteTime::fixed(480),
            db,
        );
        let who = |Extension(p): Extension<Principal>| async move { p.user };
        let protected = Router::new()
            .route("/api/v1/thing", get(who).post(who))
            .merge(crate::api::control::routes(control))
            .merge(crate::api::stream::routes(stream, Some(auth)))
            .merge(protected_routes(state.clone()))
            .layer(axum::middleware::from_fn_with_state(state.clone(), require));
        let app = routes(state)
            .merge(protected)
            .layer(axum::middleware::from_fn(crate::api::security_headers));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            // The alert seq channel stays open while the server runs.
            let _seq = seq_tx;
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn roles_sessions_tokens_limits_and_audit() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let base = serve(dir.path().join("auth-http.db")).await;
        let c = reqwest011::Client::new();
        let url = |p: &str| format!("{base}{p}");
        let login = |user: &str, password: &str| {
            c.post(url("/api/v1/login"))
                .header("content-type", "application/json")
                .body(json!({ "user": user, "password": password }).to_string())
                .send()
        };
        let cookie_of = |r: &reqwest011::Response| {
            r.headers()
                .get("set-cookie")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .unwrap_or_default()
                .to_owned()
        };

        // No credentials: 401 for reads and writes, with the security headers.
        let r = c.get(url("/api/v1/thing")).send().await.expect("get");
        assert_eq!(r.status(), 401);
        let csp = r.headers().get("content-security-policy").and_then(|v| v.to_str().ok());
        assert!(csp.is_some_and(|v| v.starts_with("default-src 'self'")), "{csp:?}");
        assert_eq!(c.post(url("/api/v1/thing")).send().await.expect("post").status(), 401);

        // An operator logs in: an HttpOnly, SameSite cookie; reads and JSON writes pass.
        let r = login("nurse1", "night-shift").await.expect("login");
        assert_eq!(r.status(), 200);
        let set = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
        let nurse = cookie_of(&r);
        let me: serde_json::Value = c
            .get(url("/api/v1/me"))
            .header("cookie", &nurse)
            .send()
            .await
            .expect("me")
            .json()
            .await
            .expect("json");
        assert_eq!(
            (me["user"].as_str(), me["role"].as_str()),
            (Some("nurse1"), Some("operator"))
        );
        assert_eq!(me["site"]["timezone"], "Asia/Shanghai");
        // Where devices connect, for the page's help; never a secret.
        assert_eq!(me["site"]["mqtt"], "127.0.0.1:1883");
        let write = |cookie: String| {
            c.post(url("/api/v1/thing"))
                .header("cookie", cookie)
                .header("content-type", "application/json")
                .body("{}")
                .send()
        };
        let r = write(nurse.clone()).await.expect("write");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.expect("text"), "nurse1");
        // A form post with the cookie (what another site could make a browser send): refused.
        let r = c
            .post(url("/api/v1/thing"))
            .header("cookie", &nurse)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("a=1")
            .send()
            .await
            .expect("form");
        assert_eq!(r.status(), 415);
        // The audit log is the admin's.
        let r = c
            .get(url("/api/v1/audit"))
            .header("cookie", &nurse)
            .send()
            .await
            .expect("audit");
        assert_eq!(r.status(), 403);

        // A viewer reads but cannot write; so does a viewer token.
        let guest = cookie_of(&login("guest", "look-only").await.expect("login"));
        assert_eq!(
            c.get(url("/api/v1/thing"))
                .header("cookie", &guest)
                .send()
                .await
                .expect("get")
                .status(),
            200
        );
        assert_eq!(write(guest).await.expect("write").status(), 403);
        let bearer = "Bearer platform-token-0123456789";
        let r = c
            .get(url("/api/v1/thing"))
            .header("authorization", bearer)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.expect("text"), "city-platform");
        let r = c
            .post(url("/api/v1/thing"))
            .header("authorization", bearer)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 403);
        let r = c
            .get(url("/api/v1/thing"))
            .header("authorization", "Bearer wrong-token")
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 401);

        // Logout ends the session, and the alert stream opened with it.
        let mut sse = c
            .get(url("/api/v1/alerts/stream"))
            .header("cookie", &nurse)
            .send()
            .await
            .expect("stream");
        assert_eq!(sse.status(), 200);
        let first = sse.chunk().await.expect("chunk").unwrap_or_default();
        assert!(String::from_utf8_lossy(&first).contains("heartbeat"), "{first:?}");
        let r = c
            .post(url("/api/v1/logout"))
            .header("cookie", &nurse)
            .send()
            .await
            .expect("logout");
        assert_eq!(r.status(), 204);
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match sse.chunk().await {
                    Ok(Some(_)) => {}
                    other => return format!("{other:?}"),
                }
            }
        })
        .await;
        assert!(
            end.as_deref().is_ok_and(|e| e == "Ok(None)"),
            "the stream outlived its session: {end:?}"
        );
        assert_eq!(
            c.get(url("/api/v1/me"))
                .header("cookie", &nurse)
                .send()
                .await
                .expect("me")
                .status(),
            401
        );

        // Wrong passwords: 401 five times, then 429 with Retry-After, even for the right one.
        for _ in 0..5 {
            assert_eq!(login("nurse1", "guess").await.expect("login").status(), 401);
        }
        let r = login("nurse1", "night-shift").await.expect("login");
        assert_eq!(r.status(), 429);
        let retry: u64 = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!((1..=300).contains(&retry), "{retry}");

        // The admin sees every login, failure, lockout and logout, newest first.
        let head = cookie_of(&login("head", "head-nurse").await.expect("login"));
        let log: Vec<serde_json::Value> = c
            .get(url("/api/v1/audit?limit=100"))
            .header("cookie", &head)
            .send()
            .await
            .expect("audit")
            .json()
            .await
            .expect("json");
        let actions: Vec<(&str, &str)> = log
            .iter()
            .map(|e| (e["actor"].as_str().unwrap_or(""), e["action"].as_str().unwrap_or("")))
            .collect();
        let mut expected = vec![
            ("head", "login"),
            ("nurse1", "login_rate_limited"),
            ("nurse1", "login_lockout"),
        ];
        expected.extend([("nurse1", "login_failed"); 5]);
        expected.extend([("nurse1", "logout"), ("guest", "login"), ("nurse1", "login")]);
        assert_eq!(actions, expected);
    }
}
