//! The demo facility: `nh-gateway demo` runs the gateway on the embedded defaults (embedded
//! broker, embedded journal) with the simulated fleet of `config/demo/devices.toml`
//! (3 floors x 20 rooms, 313 devices) publishing to its broker in process, and prints a short
//! live summary until Ctrl-C. `NH_INFLUX_URL` and friends turn on InfluxDB forwarding as usual.
//!
//! The broker admits only known identities (`config/demo/mqtt-identities.toml`): at every start
//! the demo gives the fleet's bridge `nh-sim` a new secret, keeps its hash in the data folder's
//! `mqtt-credentials.toml` and the secret in its `provisioning.toml` (mode 0600), and the fleet
//! logs in with it. The data folder also holds the site configuration as the demo runs it
//! (`site.toml` with its registry, residents and identities), so that `nh-gateway
//! device-credentials --config DATA/site.toml --identity <device id>` gives a device of the demo
//! its own secret (docs/security.md).
//!
//! Built with the `demo` feature only (it links the simulator):
//! `cargo run --release -p nh-gateway --features demo -- demo`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::access::files::DEFAULT_CREDENTIALS_FILE;
use crate::app::{self, wait_for_signal, MqttEndpoint, RunOptions, Running};
use crate::clock::{system_now_ms, Clock};
use crate::config::{self, Env, Loaded};
use crate::journal::Store;
use crate::stages::StageFailure;

/// The demo site configuration and registry, compiled in so the demo runs from anywhere.
pub const SITE_TOML: &str = include_str!("../../config/demo/site.toml");
pub const DEVICES_TOML: &str = include_str!("../../config/demo/devices.toml");
pub const RESIDENTS_TOML: &str = include_str!("../../config/demo/residents.toml");
pub const IDENTITIES_TOML: &str = include_str!("../../config/demo/mqtt-identities.toml");

/// The simulated fleet's MQTT identity: a bridge publishing for every device of the registry
/// (`config/demo/mqtt-identities.toml`). Its username and its client id.
pub const FLEET_IDENTITY: &str = "nh-sim";

/// The identities file's name in the data folder (`[mqtt.access] identities` of the demo file).
const IDENTITIES_FILE: &str = "mqtt-identities.toml";

/// The provisioning file the demo writes into its data folder: the fleet's secret.
pub const PROVISIONING_FILE: &str = "provisioning.toml";

/// How often the live summary is printed.
const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// A device counts as online when heard within this many expected intervals (DEVICE_OFFLINE
/// uses 3: rule R17, docs/rules.md).
const ONLINE_INTERVALS: i64 = 3;

pub async fn run(data: Option<PathBuf>, speed: f64, mut opts: RunOptions) -> anyhow::Result<()> {
    anyhow::ensure!(speed > 0.0 && speed.is_finite(), "--speed must be a positive number");
    let (data_dir, _temp) = match data {
        Some(d) => (d, None),
        None => {
            let d = std::env::temp_dir().join(format!("nh-demo-{}", std::process::id()));
            (d.clone(), Some(RemoveOnDrop(d)))
        }
    };
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    // Absolute: the site configuration written there names its journal and credentials by it.
    let data_dir = std::path::absolute(&data_dir).with_context(|| format!("resolving {}", data_dir.display()))?;
    // Before the configuration is loaded: the broker then starts with the fleet's new hash.
    let provisioning = data_dir.join(PROVISIONING_FILE);
    let fleet_login = provision_fleet(&data_dir, &provisioning)?;
    let loaded = load_config(&data_dir)?;
    let journal_path = loaded.journal_path.clone();
    let devices: Vec<(String, i64)> = loaded
        .registry
        .devices()
        .iter()
        .map(|d| (d.id.clone(), d.interval_s as i64 * 1000))
        .collect();

    // One timeline for the gateway and the fleet: the given test clock, or now at `speed`.
    let now = system_now_ms();
    let clock = opts.clock.unwrap_or_else(|| Clock::test(now, now, speed));
    opts.clock = Some(clock);
    let mut running = app::start(loaded, opts).await?;
    println!("{}", running.ready_line());
    println!(
        "provisioning file {} (mode 0600): the MQTT secret the simulated fleet logs in with as \
         `{FLEET_IDENTITY}`; a device gets its own with `nh-gateway device-credentials --config {} \
         --identity <device id>` (docs/security.md)",
        provisioning.display(),
        data_dir.join("site.toml").display()
    );
    let MqttEndpoint::Embedded(broker) = running.mqtt else {
        anyhow::bail!("the demo runs on the embedded broker")
    };
    eprintln!(
        "demo facility nh-demo: {} devices on 3 floors x 20 rooms; control room http://{}/ (nurse / demo-nurse, admin / demo-admin, viewer / demo-viewer), metrics http://{}/metrics; Ctrl-C to stop",
        devices.len(),
        running.http_addr,
        running.http_addr
    );

    let stop = CancellationToken::new();
    let fleet_task = spawn_fleet(broker, clock, now, fleet_login, stop.clone())?;
    let failed = print_summaries(&mut running, &journal_path, &devices, clock).await;
    stop.cancel();
    match fleet_task.await {
        Ok(Ok(summary)) => eprintln!(
            "fleet published {} messages, {} acknowledged",
            summary.published, summary.acked
        ),
        Ok(Err(e)) => warn!(error = %e, "demo fleet ended with an error"),
        Err(e) => warn!(error = %e, "demo fleet task failed"),
    }
    running.shutdown().await;
    match failed {
        Some(f) => Err(anyhow::anyhow!("{f}")),
        None => Ok(()),
    }
}

/// Gives the fleet's identity a new secret: its hash into the data folder's credentials file
/// (other identities' entries stay), the secret into `provisioning` (mode 0600). Returns the
/// fleet's login.
fn provision_fleet(data_dir: &Path, provisioning: &Path) -> anyhow::Result<nh_sim::link::Credentials> {
    let credentials = data_dir.join(DEFAULT_CREDENTIALS_FILE);
    let secrets =
        crate::provisioning::provision::provision(&credentials, &[FLEET_IDENTITY.to_owned()], Some(provisioning))
            .context("making the simulated fleet's MQTT secret")?;
    let password = secrets
        .into_iter()
        .find(|(name, _)| name == FLEET_IDENTITY)
        .map(|(_, secret)| secret)
        .ok_or_else(|| anyhow::anyhow!("no MQTT secret was made for `{FLEET_IDENTITY}`"))?;
    Ok(nh_sim::link::Credentials {
        username: FLEET_IDENTITY.to_owned(),
        password,
    })
}

/// The demo site configuration written into `data_dir` with its registry, residents and MQTT
/// identities, its journal and MQTT credentials moved there, and loaded.
fn load_config(data_dir: &Path) -> anyhow::Result<Loaded> {
    // The journal goes into the data folder, whatever the demo file says.
    let site_toml = SITE_TOML.replace(
        "path = \"data/journal.db\"",
        &format!("path = {:?}", data_dir.join("journal.db").display().to_string()),
    );
    for (name, text) in [
        ("site.toml", site_toml.as_str()),
        ("devices.toml", DEVICES_TOML),
        ("residents.toml", RESIDENTS_TOML),
        (IDENTITIES_FILE, IDENTITIES_TOML),
    ] {
        std::fs::write(data_dir.join(name), text)
            .with_context(|| format!("writing {name} into {}", data_dir.display()))?;
    }
    let site_path = data_dir.join("site.toml");
    let mut loaded = config::load_str(
        &site_path,
        &site_toml,
        data_dir,
        &Env::from_process(),
        Some(DEVICES_TOML),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The identities and credentials of the data folder, whatever the demo file says.
    let access = &mut loaded.config.mqtt.access;
    access.identities = Some(data_dir.join(IDENTITIES_FILE));
    access.credentials = Some(data_dir.join(DEFAULT_CREDENTIALS_FILE));
    Ok(loaded)
}

/// The simulated fleet of the demo registry, publishing to `broker` on the gateway's timeline
/// (`now` real ms reads `clock.at(now)`) until `stop`.
fn spawn_fleet(
    broker: SocketAddr,
    clock: Clock,
    now: i64,
    login: nh_sim::link::Credentials,
    stop: CancellationToken,
) -> anyhow::Result<JoinHandle<anyhow::Result<nh_sim::Summary>>> {
    let fleet = nh_sim::Fleet::from_toml(DEVICES_TOML).map_err(|e| anyhow::anyhow!("demo registry: {e}"))?;
    let sim_clock = nh_sim::Clock {
        origin_real_ms: now,
        start_virtual_ms: clock.at(now),
        scale: clock.scale(),
    };
    let sim_opts = nh_sim::RunOptions {
        clock: sim_clock,
        incidents: true,
        // The gateway admits an identity under its own name only.
        client_id: Some(login.username.clone()),
        credentials: Some(login),
        ..nh_sim::RunOptions::new(broker.to_string())
    };
    Ok(tokio::spawn(async move {
        nh_sim::run_fleet(fleet, sim_opts, async move { stop.cancelled().await }).await
    }))
}

/// Prints the live summary every [`SUMMARY_EVERY`] until Ctrl-C or SIGTERM (None) or a stage
/// fails (Some).
async fn print_summaries(
    running: &mut Running,
    journal_path: &Path,
    devices: &[(String, i64)],
    clock: Clock,
) -> Option<StageFailure> {
    let telemetry = running.telemetry.clone();
    let mut ticker = tokio::time::interval(SUMMARY_EVERY);
    ticker.tick().await;
    let mut last = (Instant::now(), telemetry.readings_accepted.load(Ordering::Relaxed));
    let signal = wait_for_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => return None,
            f = running.stage_failed() => return Some(f),
            _ = ticker.tick() => {
                let accepted = telemetry.readings_accepted.load(Ordering::Relaxed);
                let rate = (accepted - last.1) as f64 / last.0.elapsed().as_secs_f64();
                last = (Instant::now(), accepted);
                let online = count_online(journal_path, devices, clock.now_ms()).await;
                println!("devices online {online}/{} | readings/s {rate:.1} | readings total {accepted} | rejected {}",
                    devices.len(), telemetry.rejected_total());
            }
        }
    }
}

async fn count_online(journal: &Path, devices: &[(String, i64)], now_ms: i64) -> usize {
    let journal = journal.to_owned();
    let rows = tokio::task::spawn_blocking(move || Store::open_secondary(&journal).and_then(|s| s.devices())).await;
    let Ok(Ok(rows)) = rows else { return 0 };
    let seen: std::collections::HashMap<String, i64> = rows.into_iter().map(|r| (r.id, r.last_seen)).collect();
    devices
        .iter()
        .filter(|(id, interval)| seen.get(id).is_some_and(|t| now_ms - t <= ONLINE_INTERVALS * interval))
        .count()
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
