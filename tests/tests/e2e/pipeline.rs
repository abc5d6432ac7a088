//! The first vertical slice, end to end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use nh_e2e::sim::{self, Sent};
use nh_e2e::{wait_for, workspace_root, write_config, Gateway, Mosquitto, TempDir, VictoriaMetrics};
use nh_gateway::registry::Registry;
use nh_gateway::vocabulary::{self, Kind};

const SITE: &str = "nh-test";
/// Virtual seconds of fleet activity: a couple of hours gives several thousand readings.
const SIM_SECONDS: u64 = 7200;
/// Generous: a busy 2-core CI machine.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(120);

fn registry_path() -> PathBuf {
    workspace_root().join("config/test/devices.toml")
}

fn config(dir: &Path, mqtt: &str, extra: &str) -> String {
    format!(
        r#"
[site]
id = "{SITE}"
[mqtt]
{mqtt}
[registry]
file = "{registry}"
[journal]
path = "{journal}"
{extra}
"#,
        registry = registry_path().display(),
        journal = dir.join("journal.db").display(),
    )
}

const INFLUX_FAST: &str = "[influx]\nurl = \"http://unused.invalid\"\norg = \"nh\"\nbucket = \"nh\"\nlinger_ms = 100\n";

/// What VictoriaMetrics must hold for these sent messages: series name and device -> ts -> value.
type Points = BTreeMap<(String, String), BTreeMap<i64, f64>>;

fn expected_points(sent: &[Sent], registry: &Registry) -> Result<Points> {
    let mut out = Points::new();
    for s in sent {
        let Some(dev) = registry.get(&s.device) else {
            bail!("sent by unregistered device {}", s.device)
        };
        for (name, value) in &s.metrics {
            let Some(spec) = vocabulary::metric(name) else {
                bail!("simulator sent unknown metric {name}")
            };
            let mut put = |series: String, v: f64| {
                out.entry((series, s.device.clone())).or_default().insert(s.ts, v);
            };
            match (spec.kind, value) {
                (Kind::Number { .. }, serde_json::Value::Number(n)) => {
                    put(format!("{}_{name}", dev.class), n.as_f64().unwrap_or(f64::NAN))
                }
                (Kind::Bool, serde_json::Value::Bool(b)) => {
                    put(format!("{}_{name}", dev.class), if *b { 1.0 } else { 0.0 })
                }
                (Kind::Enum(_), serde_json::Value::String(v)) => {
                    // VictoriaMetrics keeps only numbers: the string field is stored as 0, the code as is.
                    put(format!("{}_{name}", dev.class), 0.0);
                    let code = vocabulary::enum_code(name, v).unwrap_or(u32::MAX);
                    put(format!("{}_{name}_code", dev.class), f64::from(code));
                }
                (Kind::Text, serde_json::Value::String(_)) => put(format!("{}_{name}", dev.class), 0.0),
                _ => bail!("simulator sent {name}={value} of the wrong type"),
            }
        }
    }
    Ok(out)
}

/// Asserts that VictoriaMetrics holds exactly the points of `sent`, with the right tags.
async fn assert_database_holds(vm: &VictoriaMetrics, sent: &[Sent], registry: &Registry) -> Result<()> {
    let expected = expected_points(sent, registry)?;
    let mut actual = Points::new();
    for series in vm.export(&format!("{{site=\"{SITE}\"}}")).await? {
        let name = series.metric.get("__name__").cloned().unwrap_or_default();
        let device = series.metric.get("device").cloned().unwrap_or_default();
        let Some(dev) = registry.get(&device) else {
            bail!("series {name} of unknown device {device}")
        };
        for (tag, want) in [
            ("building", &dev.building),
            ("floor", &dev.floor),
            ("room", &dev.room),
            ("zone", &dev.zone),
        ] {
            let got = series.metric.get(tag).map(String::as_str).unwrap_or("");
            if got != want.as_str() {
                bail!("series {name} of {device}: tag {tag}={got:?}, registry says {want:?}");
            }
        }
        if series.metric.keys().any(|k| k.contains("resident")) {
            bail!("series {name} carries a resident tag");
        }
        let points = actual.entry((name, device)).or_default();
        for (ts, v) in series.timestamps.iter().zip(&series.values) {
            if points.insert(*ts, *v).is_some() {
                bail!("duplicate point at {ts}");
            }
        }
    }
    let mut problems = Vec::new();
    for (key, want) in &expected {
        match actual.get(key) {
            None => problems.push(format!("missing series {key:?} ({} points)", want.len())),
            Some(got) => {
                for (ts, v) in want {
                    match got.get(ts) {
                        None => problems.push(format!("{key:?}: missing point at {ts}")),
                        Some(g) if (g - v).abs() > 1e-9 * v.abs().max(1.0) => {
                            problems.push(format!("{key:?} at {ts}: {g} != {v}"))
                        }
                        _ => {}
                    }
                }
                if got.len() != want.len() {
                    problems.push(format!("{key:?}: {} points stored, {} sent", got.len(), want.len()));
                }
            }
        }
    }
    for key in actual.keys().filter(|k| !expected.contains_key(*k)) {
        problems.push(format!("unexpected series {key:?}"));
    }
    if !problems.is_empty() {
        bail!(
            "{} differences, first ones:\n{}",
            problems.len(),
            problems.iter().take(15).cloned().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

fn check_coverage(sent: &[Sent], registry: &Registry) {
    assert!(sent.len() >= 2000, "only {} readings sent", sent.len());
    for format in ["canonical", "zigbee2mqtt"] {
        assert!(sent.iter().any(|s| s.format == format), "no {format} messages");
    }
    for d in registry.devices() {
        assert!(
            sent.iter().any(|s| s.device == d.id),
            "device {} ({}) sent nothing",
            d.id,
            d.class
        );
    }
}

async fn run_against_database(mqtt_section: &str, broker_of: impl Fn(&Gateway) -> SocketAddr) -> Result<()> {
    let dir = TempDir::new("pipeline")?;
    let vm = VictoriaMetrics::start().await?;
    let cfg = write_config(dir.path(), &config(dir.path(), mqtt_section, INFLUX_FAST))?;
    let gw = Gateway::start(&cfg, &[("NH_INFLUX_URL", vm.url())], dir.path()).await?;
    let registry = Registry::load(&registry_path()).map_err(|e| anyhow::anyhow!("{e}"))?;

    let sent = sim::run(&registry_path(), broker_of(&gw), SIM_SECONDS, 42, dir.path())?;
    check_coverage(&sent, &registry);
    gw.wait_forwarded(sent.len() as u64, true, FORWARD_TIMEOUT).await?;
    let m = gw.metrics().await?;
    assert_eq!(m.get("nh_readings_accepted_total").copied(), Some(sent.len() as f64));
    // Life-safety devices took the priority lane: each of their messages was processed there
    // once, and its bulk-lane copy skipped.
    let life_safety = sent
        .iter()
        .filter(|s| {
            registry
                .get(&s.device)
                .is_some_and(|d| nh_gateway::safety::takes_priority_lane(&d.class))
        })
        .count();
    assert!(life_safety > 0);
    assert_eq!(m.get("nh_mqtt_priority_connected").copied(), Some(1.0));
    assert_eq!(
        m.get("nh_mqtt_priority_skipped_total").copied(),
        Some(life_safety as f64),
        "every life-safety message skipped once on the bulk lane"
    );
    assert_database_holds(&vm, &sent, &registry).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_through_embedded_broker_lands_exactly_in_victoriametrics() -> Result<()> {
    run_against_database("mode = \"embedded\"", |gw| gw.mqtt.expect("embedded broker address")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_through_external_mosquitto_lands_exactly_in_victoriametrics() -> Result<()> {
    let mosquitto = Mosquitto::start().await?;
    let port = mosquitto.port;
    let section = format!("mode = \"external\"\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"nh-gw-test\"");
    run_against_database(&section, move |_| SocketAddr::from(([127, 0, 0, 1], port))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_influx_the_local_history_api_answers() -> Result<()> {
    let dir = TempDir::new("history")?;
    let cfg = write_config(dir.path(), &config(dir.path(), "mode = \"embedded\"", ""))?;
    let gw = Gateway::start(&cfg, &[], dir.path()).await?;
    let registry = Registry::load(&registry_path()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let broker = gw.mqtt.expect("embedded broker address");
    let sent = sim::run(&registry_path(), broker, 1800, 7, dir.path())?;
    gw.wait_forwarded(sent.len() as u64, false, FORWARD_TIMEOUT).await?;

    // Devices: every registered one, with its last reception and last values. The journal's
    // devices table follows the rows within a second (`journal::writer::DEVICES_EVERY`).
    let devices = wait_for(
        "every device seen in /api/v1/devices",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let devices = gw.get_json("/api/v1/devices").await.ok()?;
            let devices = devices.as_array().cloned().unwrap_or_default();
            devices
                .iter()
                .all(|d| d["last_seen"].as_i64().is_some())
                .then_some(devices)
        },
    )
    .await?;
    assert_eq!(devices.len(), registry.len());
    for d in &devices {
        for key in ["id", "site", "class", "room", "last_seen"] {
            assert!(d.get(key).is_some(), "device without `{key}`: {d}");
        }
        assert_eq!(d["site"], SITE);
        assert!(d["last_seen"].as_i64().is_some(), "never seen: {d}");
    }

    // Readings: per device, exactly what was sent, ascending, `since` inclusive, `limit` honoured.
    for dev in registry.devices() {
        let mine: Vec<&Sent> = sent.iter().filter(|s| s.device == dev.id).collect();
        let got = gw
            .get_json(&format!("/api/v1/readings?device={}&since=0&limit=100000", dev.id))
            .await?;
        let got = got.as_array().cloned().unwrap_or_default();
        assert_eq!(got.len(), mine.len(), "readings of {}", dev.id);
        for (g, s) in got.iter().zip(&mine) {
            assert_eq!(g["ts"].as_i64(), Some(s.ts), "{}", dev.id);
            assert!(
                same_json(&g["metrics"], &serde_json::Value::Object(s.metrics.clone())),
                "{} at {}: {} != {:?}",
                dev.id,
                s.ts,
                g["metrics"],
                s.metrics
            );
        }
        if mine.len() >= 3 {
            let since = mine[1].ts;
            let page = gw
                .get_json(&format!("/api/v1/readings?device={}&since={since}&limit=1", dev.id))
                .await?;
            assert_eq!(page.as_array().map(Vec::len), Some(1));
            assert_eq!(page[0]["ts"].as_i64(), Some(since));
        }
    }
    Ok(())
}

/// JSON equality with numbers compared as f64 (87 and 87.0 are the same reading).
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (a, b) {
        (J::Number(x), J::Number(y)) => x.as_f64() == y.as_f64(),
        (J::Object(x), J::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}
