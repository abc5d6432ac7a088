//! Zero loss under faults. External mode against a Mosquitto with persistence, an unlimited
//! queue and 1000 messages in flight: `nh-sim load` publishes numbered readings at 2,000/s for
//! more than 2 minutes while VictoriaMetrics is stopped for 30 s, the gateway is SIGKILLed and
//! restarted 3 times, and Mosquitto is restarted once; SOS presses are scripted through the run.
//! Afterwards every reading the simulator had a PUBACK for is in VictoriaMetrics, duplicates
//! stay within their bound, and every acknowledged SOS press has its alert.
//!
//! The embedded-broker variant measures what a SIGKILL costs there (rumqttd acknowledges
//! devices itself and keeps nothing across a crash).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nh_e2e::{bin, tcp_accepts, wait_for, write_config, Gateway, Mosquitto, TempDir, VictoriaMetrics};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value as J;
use tokio::time::Instant;

const SITE: &str = "nh-chaos";
const RATE: u64 = 2000;
const SECONDS: u64 = 130;
const DEVICES: usize = 200;
/// SOS buttons pressed once each through the run.
const SOS: usize = 12;

fn registry() -> String {
    let mut s = format!("site = \"{SITE}\"\n");
    for i in 1..=SOS {
        s += &format!(
            "[[devices]]\nid = \"sos-{i:02}\"\nclass = \"sos_button\"\nbuilding = \"A\"\nfloor = \"1\"\nroom = \"A-1{i:02}\"\ninterval_s = 86400\n"
        );
    }
    s
}

fn gateway_config(mqtt: &str, influx_url: &str) -> String {
    format!(
        r#"[site]
id = "{SITE}"
[mqtt]
{mqtt}
[registry]
file = "devices.toml"
unknown_devices = "accept"
[journal]
path = "journal.db"
[influx]
url = "{influx_url}"
org = "nh"
bucket = "nh"
linger_ms = 100
timeout_ms = 3000
backoff_max_ms = 2000
"#
    )
}

/// `nh-sim load` in the background, recording every acknowledged reading.
fn start_load(broker: SocketAddr, record: &Path, log: &Path) -> Result<Child> {
    Command::new(bin("nh-sim"))
        .arg("load")
        .args(["--broker", &broker.to_string()])
        .args(["--rate", &RATE.to_string(), "--seconds", &SECONDS.to_string()])
        .args(["--qos", "1", "--devices", &DEVICES.to_string(), "--site", SITE])
        .args(["--client-id", "chaos-load"])
        .arg("--record-acked")
        .arg(record)
        .stdout(std::fs::File::create(log.with_extension("json"))?)
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting nh-sim load")
}

/// (device, ts) -> seq of every acknowledged reading.
fn acked(record: &Path) -> Result<BTreeMap<(String, i64), u64>> {
    let text = std::fs::read_to_string(record)?;
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut f = line.split_whitespace();
        let (Some(d), Some(seq), Some(ts)) = (f.next(), f.next(), f.next()) else {
            bail!("bad record line `{line}`")
        };
        out.insert((d.to_owned(), ts.parse()?), seq.parse()?);
    }
    Ok(out)
}

/// One SOS press, as a button does it: connect, publish at QoS 1, wait for the PUBACK; on any
/// failure (the broker restarting) try again on a new connection once the broker listens, for
/// up to 30 s. True once the broker acknowledged it.
async fn press(broker: SocketAddr, device: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    let payload = format!(
        r#"{{"ts":{},"metrics":{{"sos":true}}}}"#,
        nh_gateway::clock::system_now_ms()
    );
    let mut attempt = 0;
    while Instant::now() < deadline {
        attempt += 1;
        let opts = MqttOptions::new(
            format!("chaos-{device}-{attempt}"),
            broker.ip().to_string(),
            broker.port(),
        );
        let (client, mut eventloop) = AsyncClient::new(opts, 10);
        let topic = format!("nh/{SITE}/{device}/telemetry");
        if client
            .publish(topic, QoS::AtLeastOnce, false, payload.clone())
            .await
            .is_err()
        {
            continue;
        }
        let acked = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        let _ = client.try_disconnect();
        if acked {
            return true;
        }
        // The broker is restarting: try again once it listens (or give up at the deadline).
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = wait_for("the broker to listen", left, Duration::from_millis(50), || async move {
            tcp_accepts(broker).await.then_some(())
        })
        .await;
    }
    false
}

/// Every point of `unregistered_presence` in the database: (device, ts) -> how many times.
async fn stored(vm: &VictoriaMetrics) -> Result<HashMap<(String, i64), u32>> {
    let mut out = HashMap::new();
    for s in vm.export("{__name__=\"unregistered_presence\"}").await? {
        let device = s.metric.get("device").cloned().unwrap_or_default();
        for ts in s.timestamps {
            *out.entry((device.clone(), ts)).or_insert(0) += 1;
        }
    }
    Ok(out)
}

async fn restart(gw: &mut Gateway, cfg: &Path, dir: &Path) -> Result<()> {
    gw.proc.child.kill()?;
    gw.proc.child.wait()?;
    *gw = Gateway::start(cfg, &[], dir).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_mode_loses_nothing_under_kills_and_outages() -> Result<()> {
    let dir = TempDir::new("chaos")?;
    std::fs::write(dir.path().join("devices.toml"), registry())?;
    let mut vm = VictoriaMetrics::start().await?;
    let mut mosquitto = Mosquitto::start_with(true).await?;
    let broker: SocketAddr = ([127, 0, 0, 1], mosquitto.port).into();
    let mqtt = format!(
        "mode = \"external\"\nhost = \"127.0.0.1\"\nport = {}\nclient_id = \"nh-gw-chaos\"\nclean_session = false",
        mosquitto.port
    );
    let cfg = write_config(dir.path(), &gateway_config(&mqtt, &vm.url()))?;
    let mut gw = Gateway::start(&cfg, &[], dir.path()).await?;
    let record = dir.path().join("acked.txt");
    let mut load = start_load(broker, &record, &dir.path().join("load.log"))?;
    let mut pressed: Vec<String> = Vec::new();
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);

    // The script: (second, action).
    let mut kills = 0;
    let mut sos = 0usize;
    let mut events: Vec<(u64, &str)> = vec![
        (15, "kill"),
        (30, "vm-stop"),
        (45, "kill"),
        (60, "vm-start"),
        (75, "mosquitto-restart"),
        (95, "kill"),
    ];
    for i in 0..SOS as u64 {
        events.push((8 + i * 10, "sos"));
    }
    events.sort();
    for (second, action) in events {
        // The script's own clock: each fault at its second, not when the system looks ready.
        tokio::time::sleep_until(at(second)).await;
        eprintln!("chaos t={second}s: {action}");
        match action {
            "kill" => {
                restart(&mut gw, &cfg, dir.path()).await?;
                kills += 1;
            }
            "vm-stop" => vm.stop()?,
            "vm-start" => vm.restart().await?,
            "mosquitto-restart" => {
                mosquitto.stop()?;
                mosquitto.restart().await?;
            }
            "sos" => {
                sos += 1;
                let device = format!("sos-{sos:02}");
                if press(broker, &device).await {
                    pressed.push(device);
                }
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(kills, 3);

    // The load ends by itself once every reading is acknowledged.
    let status = tokio::task::spawn_blocking(move || load.wait()).await??;
    let summary: J =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("load.json"))?).context("load summary")?;
    eprintln!("load: {summary}");
    assert!(status.success(), "nh-sim load failed: {summary}");
    let acked = acked(&record)?;
    assert!(
        acked.len() as u64 >= RATE * SECONDS * 9 / 10,
        "only {} readings acknowledged",
        acked.len()
    );

    // Everything acknowledged reaches the database.
    gw.wait_forwarded(0, true, Duration::from_secs(120)).await?;
    let db = wait_for(
        "every acknowledged reading in VictoriaMetrics",
        Duration::from_secs(120),
        Duration::from_secs(2),
        || async {
            let db = stored(&vm).await.ok()?;
            acked.keys().all(|k| db.contains_key(k)).then_some(db)
        },
    )
    .await;
    let db = match db {
        Ok(db) => db,
        Err(e) => {
            let db = stored(&vm).await?;
            let missing: Vec<_> = acked.iter().filter(|(k, _)| !db.contains_key(*k)).take(20).collect();
            let count = acked.keys().filter(|k| !db.contains_key(*k)).count();
            bail!(
                "{e}: {count} acknowledged readings missing, first: {missing:?}\n{}",
                gw.proc.log_tail()
            );
        }
    };
    // Per device: no seq missing among the acknowledged ones.
    let mut by_device: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for ((d, _), seq) in &acked {
        by_device.entry(d).or_default().push(*seq);
    }
    assert_eq!(by_device.len(), DEVICES);
    let points: u64 = db.values().map(|n| u64::from(*n)).sum();
    let duplicates = points - db.len() as u64;
    let replayed = gw.metric("nh_influx_replayed_lines_total").await? as u64;
    // The devices table follows the journal within a second (`journal::writer::DEVICES_EVERY`):
    // its duplicate count is read until it accounts for the duplicates, 10 s at most (then the
    // assertion below fails with the last count).
    let seq_duplicates = || async {
        let devices = gw.get_json("/api/v1/devices").await.ok()?;
        Some(
            devices
                .as_array()?
                .iter()
                .filter_map(|d| d["seq_duplicates"].as_u64())
                .sum::<u64>(),
        )
    };
    let seq_dups = match wait_for(
        "the devices table to count the duplicates",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async { seq_duplicates().await.filter(|dups| duplicates <= dups + replayed) },
    )
    .await
    {
        Ok(dups) => dups,
        Err(_) => seq_duplicates().await.unwrap_or(0),
    };
    eprintln!(
        "acknowledged {} readings, stored {} points ({} distinct), {} duplicates in the database; the gateway counted {} duplicate seqs (broker redeliveries) and {} lines written again after crashes",
        acked.len(),
        points,
        db.len(),
        duplicates,
        seq_dups,
        replayed
    );
    assert!(
        duplicates <= seq_dups + replayed,
        "every duplicate is accounted for: {duplicates} > {seq_dups} + {replayed}"
    );
    // Bound: per crash one forwarder batch (5000) plus the broker's in-flight window (1000); the
    // broker restart adds one in-flight window.
    assert!(duplicates <= 3 * (5000 + 1000) + 1000, "{duplicates} duplicates");

    // Every acknowledged SOS press has its alert.
    assert!(
        pressed.len() >= SOS - 1,
        "only {} of {SOS} presses acknowledged",
        pressed.len()
    );
    let alerts = gw.get_json("/api/v1/alerts?state=all&limit=1000").await?;
    let raised: BTreeSet<String> = alerts
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["rule"] == "R4")
        .flat_map(|a| {
            a["devices"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .chain(a["device"].as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect();
    for d in &pressed {
        assert!(
            raised.contains(d),
            "SOS press of {d} acknowledged by the broker but no alert: {raised:?}"
        );
    }
    Ok(())
}

/// Loss per SIGKILL with the embedded broker, at 2,000 readings/s: the readings rumqttd had
/// acknowledged to the device but the gateway had not committed yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_loss_window_per_kill_is_measured() -> Result<()> {
    let dir = TempDir::new("chaos-embedded")?;
    std::fs::write(dir.path().join("devices.toml"), registry())?;
    let mqtt_port = nh_e2e::free_port();
    let cfg_text = format!(
        "[site]\nid = \"{SITE}\"\n[mqtt]\nmode = \"embedded\"\nlisten = \"127.0.0.1:{mqtt_port}\"\n[registry]\nfile = \"devices.toml\"\n[journal]\npath = \"journal.db\"\n"
    );
    let cfg = write_config(dir.path(), &cfg_text)?;
    let fixed = ["--mqtt", &format!("127.0.0.1:{mqtt_port}")];
    let mut gw = Gateway::start_with(&cfg, &[], dir.path(), &fixed).await?;
    let broker: SocketAddr = ([127, 0, 0, 1], mqtt_port).into();
    let record = dir.path().join("acked.txt");
    let seconds = 40u64;
    let mut load = Command::new(bin("nh-sim"))
        .arg("load")
        .args(["--broker", &broker.to_string()])
        .args(["--rate", &RATE.to_string(), "--seconds", &seconds.to_string()])
        .args(["--qos", "1", "--devices", &DEVICES.to_string(), "--site", SITE])
        .args(["--client-id", "chaos-load-embedded"])
        .arg("--record-acked")
        .arg(&record)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("load.log"))?)
        .spawn()?;
    let t0 = Instant::now();
    let kills = 3u64;
    for k in 1..=kills {
        // The schedule under test: a kill every 10 s of the load, whatever the gateway is doing.
        tokio::time::sleep_until(t0 + Duration::from_secs(k * 10)).await;
        gw.proc.child.kill()?;
        gw.proc.child.wait()?;
        gw = Gateway::start_with(&cfg, &[], dir.path(), &fixed).await?;
    }
    let _ = tokio::task::spawn_blocking(move || load.wait()).await?;
    let acked = acked(&record)?;
    // The journal's view: every reading the gateway committed.
    let mut committed: BTreeSet<(String, i64)> = BTreeSet::new();
    for d in 0..DEVICES {
        let device = format!("load-{d:04}");
        let rows = gw
            .get_json(&format!("/api/v1/readings?device={device}&limit=100000"))
            .await?;
        for r in rows.as_array().into_iter().flatten() {
            committed.insert((device.clone(), r["ts"].as_i64().unwrap_or(0)));
        }
    }
    let lost = acked.keys().filter(|k| !committed.contains(*k)).count() as u64;
    let per_kill = lost as f64 / kills as f64;
    eprintln!(
        "embedded mode: {} readings acknowledged by rumqttd, {} committed, {lost} lost over {kills} SIGKILLs at {RATE}/s: {per_kill:.1} per kill ({:.1} ms of traffic)",
        acked.len(),
        committed.len(),
        per_kill * 1000.0 / RATE as f64
    );
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("embedded-loss-window.txt");
    std::fs::write(
        &out,
        format!(
            "acked {} lost {lost} kills {kills} rate {RATE} per_kill {per_kill:.1}\n",
            acked.len()
        ),
    )?;
    // One group commit at 2,000/s is a few ms of traffic; allow a generous bound.
    assert!(per_kill <= 500.0, "{per_kill} readings lost per kill");
    Ok(())
}
