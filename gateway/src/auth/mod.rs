//! Who may do what: operator accounts (argon2id password hashes in the configuration) logging in
//! to a session cookie, API tokens for machines (`Authorization: Bearer`), three roles, and a
//! login rate limit.
//!
//! - `viewer` sees (every `/api/v1` read), `operator` also acknowledges and resolves (every
//!   write), `admin` also reads the audit log.
//! - Sessions live in memory: a gateway restart logs everyone out (the page shows the login form
//!   again; alerts keep coming meanwhile on MQTT and webhooks).
//! - A wrong password costs the same time as a right one, for known and unknown users alike;
//!   5 failures of one user name from one address, or 20 from one address, within 5 minutes lock
//!   that name there (or that address) out for 5 minutes, and each further failure after a
//!   lockout for twice as long (429 with `Retry-After`). A name is never locked out from every
//!   address: the right password from an address without recent failures always logs in.

pub mod http;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Session cookie name.
pub const COOKIE: &str = "nh_session";
/// Most sessions kept; the oldest goes first (a bound on memory, far above a control room's use).
const MAX_SESSIONS: usize = 4096;
/// Failures tracked per key, and keys tracked, so a flood of names cannot grow memory.
const MAX_LIMITER_KEYS: usize = 16_384;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// `[auth]` of the site configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// How long a login lasts (a night shift and its handover fit in 12 hours).
    #[serde(default = "default_session_hours")]
    pub session_hours: u64,
    /// Failed logins of one user name within `login_window_s` before further tries are refused.
    #[serde(default = "default_user_failures")]
    pub login_max_failures: u32,
    /// Failed logins from one client address within `login_window_s` (several nurses share the
    /// control-room PC, so this is higher than the per-user limit).
    #[serde(default = "default_address_failures")]
    pub login_max_failures_per_address: u32,
    /// The window of the login limits.
    #[serde(default = "default_login_window_s")]
    pub login_window_s: u64,
    /// People: `[[auth.operators]]`.
    #[serde(default)]
    pub operators: Vec<OperatorConfig>,
    /// Machines: `[[auth.tokens]]`.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            session_hours: default_session_hours(),
            login_max_failures: default_user_failures(),
            login_max_failures_per_address: default_address_failures(),
            login_window_s: default_login_window_s(),
            operators: Vec::new(),
            tokens: Vec::new(),
        }
    }
}

fn default_session_hours() -> u64 {
    12
}
fn default_user_failures() -> u32 {
    5
}
fn default_address_failures() -> u32 {
    20
}
fn default_login_window_s() -> u64 {
    300
}

/// One person's account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// Login name; it is the actor recorded in the audit trail.
    pub user: String,
    /// Display name shown on the page.
    #[serde(default)]
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: Role,
    /// Argon2id PHC string from `nh-gateway hash-password` (the password is never stored).
    pub password_hash: String,
}

/// One machine's token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The actor recorded when this token acts.
    pub name: String,
    pub role: Role,
    /// SHA-256 of the token, 64 hex digits, from `nh-gateway hash-token` (a token is long and
    /// random, so a fast digest is enough and every request can be checked cheaply).
    pub token_sha256: String,
}

impl AuthConfig {
    /// Every problem of the section, as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.session_hours == 0 {
            out.push(("auth.session_hours".into(), "must be at least 1".into()));
        }
        if self.login_max_failures == 0 || self.login_max_failures_per_address == 0 {
            out.push(("auth.login_max_failures".into(), "must be at least 1".into()));
        }
        if self.login_window_s == 0 {
            out.push(("auth.login_window_s".into(), "must be at least 1".into()));
        }
        for (i, o) in self.operators.iter().enumerate() {
            let key = |k: &str| format!("auth.operators.{i}.{k}");
            if o.user.trim().is_empty() || o.user.len() > 64 || o.user.chars().any(char::is_control) {
                out.push((key("user"), "must be 1-64 printable characters".into()));
            }
            if self.operators[..i].iter().any(|p| p.user == o.user) {
                out.push((key("user"), format!("duplicate user `{}`", o.user)));
            }
            match PasswordHash::new(&o.password_hash) {
                Ok(h) if h.algorithm.as_str().starts_with("argon2") => {}
                Ok(h) => out.push((
                    key("password_hash"),
                    format!("`{}` is not argon2; use `nh-gateway hash-password`", h.algorithm),
                )),
                Err(e) => out.push((
                    key("password_hash"),
                    format!("not a PHC string ({e}); use `nh-gateway hash-password`"),
                )),
            }
        }
        for (i, t) in self.tokens.iter().enumerate() {
            let key = |k: &str| format!("auth.tokens.{i}.{k}");
            if t.name.trim().is_empty() {
                out.push((key("name"), "must not be empty".into()));
            }
            if parse_digest(&t.token_sha256).is_none() {
                out.push((
                    key("token_sha256"),
                    "must be 64 hex digits; use `nh-gateway hash-token`".into(),
                ));
            }
            if self.tokens[..i]
                .iter()
                .any(|p| p.token_sha256.eq_ignore_ascii_case(&t.token_sha256))
            {
                out.push((key("token_sha256"), "the same token is configured twice".into()));
            }
        }
        out
    }
}

/// Who is acting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// Login name or token name: the actor of the audit trail.
    pub user: String,
    /// Display name.
    pub name: String,
    pub role: Role,
    /// Whether this came with a session cookie (a person) or a bearer token (a machine).
    #[serde(skip)]
    pub via_session: bool,
}

/// What a login attempt came to.
#[derive(Debug)]
pub enum LoginOutcome {
    /// The session token for the cookie, and who it is.
    Ok(String, Principal),
    /// Wrong user name or password; with the lockout this failure started, if it started one.
    Wrong(Option<Lockout>),
    /// Locked out: seconds until the next try is accepted; `first` for the first refused try of
    /// this lockout (the one worth an audit entry).
    Limited { wait_s: u64, first: bool },
}

/// A lockout a failed login started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    /// `user_address`: this user name from this address; `address`: every name from it.
    pub scope: &'static str,
    /// How long it lasts.
    pub wait_s: u64,
    /// The how-manieth lockout of this key in a row (each one twice as long as the last).
    pub nth: u32,
}

/// The first lockout of a key lasts `login_window_s`; each further one twice as long as the
/// last, up to this.
pub const MAX_LOCKOUT_S: u64 = 3600;

struct Session {
    principal: Principal,
    /// Cancelled when the session ends by logout or eviction (expiry is by time).
    ended: tokio_util::sync::CancellationToken,
    expires_ms: i64,
    created_ms: i64,
}

/// One key's failures (a user name from an address, or an address).
#[derive(Default)]
struct Entry {
    /// Failure times within the window.
    failures: VecDeque<i64>,
    /// Tries are refused until then.
    locked_until: i64,
    /// Lockouts in a row: every failure after one starts the next, twice as long.
    lockouts: u32,
    /// Whether a refused try of the current lockout was seen.
    refused_seen: bool,
    last_ms: i64,
}

/// Failures and lockouts per key, with growing delays.
#[derive(Default)]
struct Limiter {
    entries: HashMap<String, Entry>,
}

impl Limiter {
    /// Seconds until `key` may try again, if it is locked out now, and whether this is the first
    /// refused try of the lockout.
    fn locked(&mut self, key: &str, window_ms: i64, now: i64) -> Option<(u64, bool)> {
        let e = self.entries.get_mut(key)?;
        if e.locked_until > now {
            let first = !e.refused_seen;
            e.refused_seen = true;
            return Some((((e.locked_until - now).max(1000) as u64).div_ceil(1000), first));
        }
        // Quiet for a window after its last failure and lockout: forgotten, lockouts included.
        if now - e.last_ms.max(e.locked_until) >= window_ms {
            self.entries.remove(key);
        }
        None
    }

    /// Counts a failure; returns the lockout it starts, if any.
    fn fail(&mut self, key: String, max: u32, window_ms: i64, now: i64) -> Option<(u64, u32)> {
        if self.entries.len() >= MAX_LIMITER_KEYS && !self.entries.contains_key(&key) {
            // Forget the key whose last failure is oldest.
            if let Some(k) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_ms)
                .map(|(k, _)| k.clone())
            {
                self.entries.remove(&k);
            }
        }
        let e = self.entries.entry(key).or_default();
        while e.failures.front().is_some_and(|&t| t <= now - window_ms) {
            e.failures.pop_front();
        }
        e.failures.push_back(now);
        e.last_ms = now;
        if e.failures.len() < max as usize && e.lockouts == 0 {
            return None;
        }
        e.lockouts += 1;
        let base_s = (window_ms / 1000).max(1) as u64;
        let wait_s = base_s
            .saturating_mul(1u64 << (e.lockouts - 1).min(20))
            .min(MAX_LOCKOUT_S);
        e.locked_until = now + wait_s as i64 * 1000;
        e.refused_seen = false;
        e.failures.clear();
        Some((wait_s, e.lockouts))
    }

    fn clear(&mut self, key: &str) {
        self.entries.remove(key);
    }
}

/// Counters shown on `/metrics`.
#[derive(Debug, Default)]
pub struct AuthStats {
    pub logins: AtomicU64,
    pub login_failures: AtomicU64,
    pub login_limited: AtomicU64,
    /// Lockouts started (a user name from an address, or an address).
    pub lockouts: AtomicU64,
    /// Requests refused: no or unknown credentials (401).
    pub unauthenticated: AtomicU64,
    /// Requests refused: the role is too low (403).
    pub forbidden: AtomicU64,
}

/// The accounts, tokens, sessions and limiter of one gateway.
pub struct Auth {
    config: AuthConfig,
    operators: HashMap<String, OperatorConfig>,
    tokens: HashMap<[u8; 32], Principal>,
    /// A hash verified when the user is unknown, so that costs what a known user costs.
    dummy_hash: String,
    sessions: Mutex<HashMap<String, Session>>,
    limiter: Mutex<Limiter>,
    pub stats: AuthStats,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("operators", &self.operators.len())
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// From a validated configuration (entries that do not parse are skipped; validation has
    /// reported them).
    pub fn new(config: AuthConfig) -> Self {
        let mut operators = HashMap::new();
        for o in &config.operators {
            if PasswordHash::new(&o.password_hash).is_ok() {
                operators.insert(o.user.clone(), o.clone());
            }
        }
        let mut tokens = HashMap::new();
        for t in &config.tokens {
            if let Some(d) = parse_digest(&t.token_sha256) {
                tokens.insert(
                    d,
                    Principal {
                        user: t.name.clone(),
                        name: t.name.clone(),
                        role: t.role,
                        via_session: false,
                    },
                );
            }
        }
        let dummy_hash = hash_password("not a password of anyone").unwrap_or_default();
        Auth {
            config,
            operators,
            tokens,
            dummy_hash,
            sessions: Mutex::new(HashMap::new()),
            limiter: Mutex::new(Limiter::default()),
            stats: AuthStats::default(),
        }
    }

    /// Whether anyone at all can get in (no accounts and no tokens: every `/api/v1` request is
    /// refused, and the gateway says so at start).
    pub fn is_empty(&self) -> bool {
        self.operators.is_empty() && self.tokens.is_empty()
    }

    /// The principal of a bearer token.
    pub fn token(&self, token: &str) -> Option<Principal> {
        self.tokens.get(&digest(token)).cloned()
    }

    /// The principal of a session cookie's value, if the session is alive.
    pub fn session(&self, id: &str, now_ms: i64) -> Option<Principal> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(id) {
            Some(s) if s.expires_ms > now_ms => Some(s.principal.clone()),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn logout(&self, id: &str) -> Option<Principal> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let s = sessions.remove(id)?;
        s.ended.cancel();
        Some(s.principal)
    }

    /// A live session's end: the token its logout cancels, and its expiry (ms).
    pub fn session_end(&self, id: &str) -> Option<(tokio_util::sync::CancellationToken, i64)> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(id).map(|s| (s.ended.clone(), s.expires_ms))
    }

    /// Checks a login. Blocking (argon2 takes tens of milliseconds): call it off the runtime.
    ///
    /// Failures count per user name and address, and per address: `login_max_failures` wrong
    /// passwords for one name from one address, or `login_max_failures_per_address` from one
    /// address, lock that key out for `login_window_s`, and every further failure after a
    /// lockout locks it again for twice as long (up to [`MAX_LOCKOUT_S`]). A user name is never
    /// locked out everywhere: the right password from an address without recent failures always
    /// logs in, so nobody on the LAN can lock the night nurse out.
    pub fn login(&self, user: &str, password: &str, addr: Option<IpAddr>, now_ms: i64) -> LoginOutcome {
        let window_ms = self.config.login_window_s as i64 * 1000;
        let addr_text = addr.map(|a| a.to_string()).unwrap_or_default();
        let user_key = format!("u:{user}\u{0}{addr_text}");
        let addr_key = addr.map(|_| format!("a:{addr_text}"));
        {
            let mut lim = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
            let by_user = lim.locked(&user_key, window_ms, now_ms);
            let by_addr = addr_key.as_deref().and_then(|k| lim.locked(k, window_ms, now_ms));
            if let Some((wait_s, first)) = by_user.max(by_addr) {
                self.stats.login_limited.fetch_add(1, Ordering::Relaxed);
                return LoginOutcome::Limited { wait_s, first };
            }
        }
        let argon = Argon2::default();
        let ok = match self.operators.get(user) {
            Some(op) => PasswordHash::new(&op.password_hash)
                .is_ok_and(|h| argon.verify_password(password.as_bytes(), &h).is_ok())
                .then(|| op.clone()),
            None => {
                if let Ok(h) = PasswordHash::new(&self.dummy_hash) {
                    let _ = argon.verify_password(password.as_bytes(), &h);
                }
                None
            }
        };
        let mut lim = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        let Some(op) = ok else {
            self.stats.login_failures.fetch_add(1, Ordering::Relaxed);
            let mut lockout = lim
                .fail(user_key, self.config.login_max_failures, window_ms, now_ms)
                .map(|(wait_s, nth)| Lockout {
                    scope: "user_address",
                    wait_s,
                    nth,
                });
            if let Some(k) = addr_key {
                if let Some((wait_s, nth)) = lim.fail(k, self.config.login_max_failures_per_address, window_ms, now_ms)
                {
                    if lockout.as_ref().is_none_or(|l| l.wait_s < wait_s) {
                        lockout = Some(Lockout {
                            scope: "address",
                            wait_s,
                            nth,
                        });
                    }
                }
            }
            if lockout.is_some() {
                self.stats.lockouts.fetch_add(1, Ordering::Relaxed);
            }
            return LoginOutcome::Wrong(lockout);
        };
        lim.clear(&user_key);
        drop(lim);
        self.stats.logins.fetch_add(1, Ordering::Relaxed);
        let principal = Principal {
            user: op.user.clone(),
            name: if op.name.is_empty() {
                op.user.clone()
            } else {
                op.name.clone()
            },
            role: op.role,
            via_session: true,
        };
        let id = random_hex(32);
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.expires_ms > now_ms);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(k) = sessions
                .iter()
                .min_by_key(|(_, s)| s.created_ms)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&k);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                principal: principal.clone(),
                ended: tokio_util::sync::CancellationToken::new(),
                expires_ms: now_ms + self.config.session_hours as i64 * 3_600_000,
                created_ms: now_ms,
            },
        );
        LoginOutcome::Ok(id, principal)
    }

    /// Whether `user` is a configured operator (a lockout's alert names only those).
    pub fn is_operator(&self, user: &str) -> bool {
        self.operators.contains_key(user)
    }

    pub fn session_max_age_s(&self) -> u64 {
        self.config.session_hours * 3600
    }

    /// `/metrics` lines.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let s = &self.stats;
        let sessions = self.sessions.lock().map(|m| m.len()).unwrap_or(0);
        let _ = writeln!(out, "# TYPE nh_auth_logins_total counter");
        let _ = writeln!(out, "nh_auth_logins_total {}", s.logins.load(Ordering::Relaxed));
        let _ = writeln!(out, "# TYPE nh_auth_login_failures_total counter");
        let _ = writeln!(
            out,
            "nh_auth_login_failures_total{{reason=\"wrong\"}} {}",
            s.login_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "nh_auth_login_failures_total{{reason=\"rate_limited\"}} {}",
            s.login_limited.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE nh_auth_lockouts_total counter");
        let _ = writeln!(out, "nh_auth_lockouts_total {}", s.lockouts.load(Ordering::Relaxed));
        let _ = writeln!(out, "# TYPE nh_auth_refused_total counter");
        let _ = writeln!(
            out,
            "nh_auth_refused_total{{status=\"401\"}} {}",
            s.unauthenticated.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "nh_auth_refused_total{{status=\"403\"}} {}",
            s.forbidden.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE nh_auth_sessions gauge");
        let _ = writeln!(out, "nh_auth_sessions {sessions}");
    }
}

/// An argon2id PHC string of `password` with a fresh random salt (the default parameters of the
/// `argon2` crate: 19 MiB, 2 passes, as OWASP recommends).
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| format!("no randomness: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A new random API token (32 bytes as hex).
pub fn generate_token() -> Result<String, String> {
    let mut buf = [0u8; 32];
    getrandom::getrandom(&mut buf).map_err(|e| format!("no randomness: {e}"))?;
    Ok(hex(&buf))
}

/// SHA-256 of a token, as configured in `token_sha256`.
pub fn token_digest_hex(token: &str) -> String {
    hex(&digest(token))
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn parse_digest(s: &str) -> Option<[u8; 32]> {
    crate::secret::from_hex(s)?.try_into().ok()
}

fn hex(bytes: &[u8]) -> String {
    crate::secret::to_hex(bytes)
}

/// `n` random bytes as hex (session ids). Falls back to nothing predictable: a failure of the
/// system's randomness is fatal for logins, so the login fails.
fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    if getrandom::getrandom(&mut buf).is_err() {
        // Never hand out a guessable session: an id no cookie can match.
        return format!("unavailable-{}", std::process::id());
    }
    hex(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthConfig {
        AuthConfig {
            operators: vec![
                OperatorConfig {
                    user: "nurse1".into(),
                    name: "李护士".into(),
                    role: Role::Operator,
                    password_hash: hash_password("night-shift").expect("hash"),
                },
                OperatorConfig {
                    user: "guard".into(),
                    name: String::new(),
                    role: Role::Viewer,
                    password_hash: hash_password("gate").expect("hash"),
                },
            ],
            tokens: vec![TokenConfig {
                name: "city-platform".into(),
                role: Role::Viewer,
                token_sha256: token_digest_hex("s3cret-token-value"),
            }],
            ..AuthConfig::default()
        }
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }

    #[test]
    fn login_session_token_and_logout() {
        let auth = Auth::new(config());
        let addr = Some("127.0.0.1".parse().expect("ip"));
        let LoginOutcome::Ok(id, p) = auth.login("nurse1", "night-shift", addr, 1_000) else {
            panic!("login refused");
        };
        assert_eq!(
            (p.user.as_str(), p.name.as_str(), p.role),
            ("nurse1", "李护士", Role::Operator)
        );
        assert_eq!(id.len(), 64);
        assert_eq!(auth.session(&id, 2_000).map(|p| p.user), Some("nurse1".into()));
        assert!(auth.session("forged", 2_000).is_none());
        // 12 hours later the session is gone.
        assert!(auth.session(&id, 1_000 + 12 * 3_600_000).is_none());
        let LoginOutcome::Ok(id, _) = auth.login("nurse1", "night-shift", addr, 5_000) else {
            panic!("login refused");
        };
        assert!(auth.logout(&id).is_some());
        assert!(auth.session(&id, 6_000).is_none());
        assert_eq!(auth.token("s3cret-token-value").map(|p| p.role), Some(Role::Viewer));
        assert!(auth.token("s3cret-token-valuf").is_none());
        assert!(matches!(
            auth.login("nurse1", "Night-shift", addr, 7_000),
            LoginOutcome::Wrong(None)
        ));
        assert!(matches!(
            auth.login("nobody", "night-shift", addr, 7_000),
            LoginOutcome::Wrong(None)
        ));
    }

    #[test]
    fn wrong_passwords_lock_the_name_out_at_that_address_with_growing_delays() {
        let auth = Auth::new(AuthConfig {
            login_window_s: 60,
            ..config()
        });
        let addr = Some("10.0.0.5".parse().expect("ip"));
        for i in 0..4 {
            assert!(matches!(
                auth.login("nurse1", "guess", addr, 1_000 + i),
                LoginOutcome::Wrong(None)
            ));
        }
        // The fifth starts a lockout of the window's length.
        match auth.login("nurse1", "guess", addr, 1_004) {
            LoginOutcome::Wrong(Some(l)) => assert_eq!(
                l,
                Lockout {
                    scope: "user_address",
                    wait_s: 60,
                    nth: 1
                }
            ),
            other => panic!("{other:?}"),
        }
        // Even the right password is refused there while locked out; the first refusal says so.
        match auth.login("nurse1", "night-shift", addr, 2_000) {
            LoginOutcome::Limited { wait_s, first } => assert!((59..=60).contains(&wait_s) && first, "{wait_s}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            auth.login("nurse1", "night-shift", addr, 2_500),
            LoginOutcome::Limited { first: false, .. }
        ));
        // The right password from another address logs in at once: nobody can lock the nurse out.
        let elsewhere = Some("10.0.0.6".parse().expect("ip"));
        assert!(matches!(
            auth.login("nurse1", "night-shift", elsewhere, 2_000),
            LoginOutcome::Ok(..)
        ));
        // Another user from the same control-room PC is not locked out.
        assert!(matches!(auth.login("guard", "gate", addr, 2_000), LoginOutcome::Ok(..)));
        // After the lockout one more failure locks again, twice as long.
        match auth.login("nurse1", "guess", addr, 62_000) {
            LoginOutcome::Wrong(Some(l)) => assert_eq!((l.wait_s, l.nth), (120, 2)),
            other => panic!("{other:?}"),
        }
        // Once that has passed and a window without failures after it, the right password works.
        assert!(matches!(
            auth.login("nurse1", "night-shift", addr, 62_000 + 120_000 + 60_000),
            LoginOutcome::Ok(..)
        ));
    }

    #[test]
    fn lockouts_grow_up_to_the_cap() {
        let auth = Auth::new(AuthConfig {
            login_window_s: 300,
            login_max_failures: 1,
            ..config()
        });
        let addr = Some("10.0.0.7".parse().expect("ip"));
        let mut now = 0;
        let mut waits = Vec::new();
        for _ in 0..6 {
            match auth.login("nurse1", "guess", addr, now) {
                LoginOutcome::Wrong(Some(l)) => {
                    waits.push(l.wait_s);
                    now += l.wait_s as i64 * 1000;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(waits, [300, 600, 1200, 2400, 3600, 3600]);
    }

    #[test]
    fn one_address_guessing_many_names_is_limited() {
        let auth = Auth::new(config());
        let addr = Some("10.0.0.9".parse().expect("ip"));
        for i in 0..19 {
            assert!(matches!(
                auth.login(&format!("user{i}"), "x", addr, 1_000),
                LoginOutcome::Wrong(None)
            ));
        }
        assert!(matches!(
            auth.login("user19", "x", addr, 1_000),
            LoginOutcome::Wrong(Some(Lockout { scope: "address", .. }))
        ));
        assert!(matches!(
            auth.login("nurse1", "night-shift", addr, 1_000),
            LoginOutcome::Limited { .. }
        ));
        let other = Some("10.0.0.10".parse().expect("ip"));
        assert!(matches!(
            auth.login("nurse1", "night-shift", other, 1_000),
            LoginOutcome::Ok(..)
        ));
    }

    #[test]
    fn bad_entries_are_reported() {
        let mut c = config();
        c.operators.push(OperatorConfig {
            user: "nurse1".into(),
            name: String::new(),
            role: Role::Admin,
            password_hash: "plain-password".into(),
        });
        c.tokens.push(TokenConfig {
            name: String::new(),
            role: Role::Admin,
            token_sha256: "abc".into(),
        });
        let keys: Vec<String> = c.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "auth.operators.2.user",
                "auth.operators.2.password_hash",
                "auth.tokens.1.name",
                "auth.tokens.1.token_sha256"
            ]
        );
        assert!(config().problems().is_empty());
    }
}
