//! The HTTP stage, started last so that `ready` means every stage is up: the API, the alert
//! stream, the control-room routes, the login, and the embedded page.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::{info, warn};

use super::alerts::Alerts;
use super::{MqttEndpoint, StartError, Wiring};
use crate::alerts::delivery::{DeliveryStats, StreamState};
use crate::api::alerts::AlertsApiState;
use crate::api::control::ControlState;
use crate::api::{self, ApiState};
use crate::auth::http::{AuthState, SiteInfo};
use crate::auth::Auth;
use crate::config::Resident;
use crate::rules::RuleSet;
use crate::site_time::SiteTime;

/// Where the HTTP stage listens, and where devices reach the MQTT side (for the page's
/// "connect a device" help).
pub(super) struct Listen {
    /// `--http`; else `[http] listen`.
    pub(super) http: Option<SocketAddr>,
    pub(super) mqtt: MqttEndpoint,
    /// The embedded broker's front door, for `/api/v1/mqtt/identities`.
    pub(super) mqtt_access: Option<Arc<crate::access::events::AccessEvents>>,
    /// Where login lockouts go (rule S8).
    pub(super) access_events: Arc<crate::access::events::AccessEvents>,
}

impl Wiring {
    /// Listens on `--http` or `[http] listen` and serves every route; returns the address.
    pub(super) async fn start_http(
        &self,
        listen: Listen,
        rules: &RuleSet,
        residents: Vec<Resident>,
        site_time: SiteTime,
        alerts: Alerts,
        delivery_stats: Arc<DeliveryStats>,
    ) -> Result<SocketAddr, StartError> {
        let config = &self.config;
        let (listener, http_addr) = bind(listen.http.unwrap_or(config.http.listen)).await?;
        let auth = Arc::new(Auth::new(config.auth.clone()));
        if auth.is_empty() {
            warn!("no [[auth.operators]] or [[auth.tokens]] configured: every /api/v1 request is refused");
        }
        let mut state = ApiState::new(
            config.site.id.clone(),
            self.registry.clone(),
            self.telemetry.clone(),
            self.journal_path.clone(),
        );
        state.auth = Some(auth.clone());
        state.clock = self.clock;
        state.offline_multiple = rules.offline_multiple();
        state.mqtt_access = listen.mqtt_access.clone();
        let status_telemetry = self.telemetry.clone();
        let stream = StreamState::new(
            self.journal_path.clone(),
            alerts.events,
            move || status_telemetry.status(),
            delivery_stats,
            self.shutdown.clone(),
        );
        let mut auth_state = AuthState::new(
            auth,
            self.clock,
            SiteInfo {
                id: config.site.id.clone(),
                name: config.site.name.clone(),
                timezone: config.site.timezone.clone(),
                mqtt: match listen.mqtt {
                    MqttEndpoint::Embedded(addr) => Some(addr.to_string()),
                    MqttEndpoint::External => None,
                },
            },
            self.journal_path.clone(),
        );
        let events = listen.access_events.clone();
        auth_state.on_lockout = Some(Arc::new(move |user: Option<&str>, ip| events.login_lockout(user, ip)));
        let control = ControlState::new(
            self.registry.clone(),
            residents,
            self.clock,
            config.shifts.minutes_or_default(),
            site_time,
            self.journal_path.clone(),
        );
        let app = http_app(
            state,
            AlertsApiState::new(alerts.handle, self.journal_path.clone()),
            stream,
            control,
            auth_state,
        );
        self.serve(listener, app);
        info!(%http_addr, "HTTP API listening");
        Ok(http_addr)
    }

    /// Serves `app` until shutdown, as a stage.
    fn serve(&self, listener: TcpListener, app: axum::Router) {
        let http_shutdown = self.shutdown.clone();
        self.spawn_other("http-api", async move {
            let serve = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await });
            if let Err(e) = serve.await {
                warn!(error = %e, "HTTP server ended");
            }
        });
    }
}

/// The listener on `addr` (port 0: a free port) and the address it got.
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::HttpBind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartError::HttpBind { addr, source })?;
    Ok((listener, local))
}

/// The HTTP routes: `/healthz`, `/metrics`, the page and login open; the rest of `/api/v1`
/// behind the login middleware. Every response carries the page's security headers.
fn http_app(
    api: ApiState,
    alerts: AlertsApiState,
    stream: StreamState,
    control: ControlState,
    auth: AuthState,
) -> axum::Router {
    let protected = api::router(api.clone())
        .merge(api::alerts::routes(alerts))
        .merge(api::stream::routes(stream, api.auth.clone()))
        .merge(api::control::routes(control))
        .merge(crate::auth::http::protected_routes(auth.clone()))
        .layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            crate::auth::http::require,
        ));
    api::open_routes(api)
        .merge(crate::auth::http::routes(auth))
        .merge(crate::web::routes())
        .merge(protected)
        .layer(axum::middleware::from_fn(api::security_headers))
}
