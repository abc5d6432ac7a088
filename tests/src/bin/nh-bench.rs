//! `nh-bench`: end-to-end throughput of the gateway on this machine.
//!
//! Starts a real VictoriaMetrics and the gateway (embedded broker, journal, InfluxDB
//! forwarding) on loopback, then for each offered rate runs `nh-sim load` (open loop, QoS 1)
//! and measures how fast the readings reach the journal and the database, with the gateway's
//! CPU and RSS. Prints one JSON line per step.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! ./target/release/nh-bench --rates 5000,10000,20000,40000 --seconds 10
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nh_e2e::{bin, cpu_and_rss, write_config, Gateway, TempDir, VictoriaMetrics};

/// The bench site: the load generator's devices (`load-NNNN`, presence radars, which no rule
/// watches) and one smoke alarm per room for the life-safety stream (one room each, so no two
/// smoke alerts correlate into one incident). Long intervals: nobody goes offline mid-run.
fn bench_registry(load_devices: u32, smoke: u32) -> String {
    let mut s = String::from("site = \"nh-bench\"\n");
    for i in 0..load_devices {
        s += &format!(
            "[[devices]]\nid = \"load-{i:04}\"\nclass = \"presence_radar\"\nroom = \"L-{i}\"\ninterval_s = 86400\n"
        );
    }
    for i in 0..smoke {
        s += &format!(
            "[[devices]]\nid = \"smoke-{i:04}\"\nclass = \"smoke_alarm\"\nroom = \"S-{i}\"\ninterval_s = 86400\n"
        );
    }
    s
}

struct Args {
    rates: Vec<u64>,
    seconds: u64,
    qos: u8,
    devices: u32,
    sync: String,
    alerts: u32,
}

fn args() -> Result<Args> {
    let mut a = Args {
        rates: vec![5_000, 10_000, 20_000],
        seconds: 10,
        qos: 1,
        devices: 1000,
        sync: "full".into(),
        alerts: 40,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--rates" => a.rates = value.split(',').map(|r| r.trim().parse()).collect::<Result<_, _>>()?,
            "--seconds" => a.seconds = value.parse()?,
            "--qos" => a.qos = value.parse()?,
            "--devices" => a.devices = value.parse()?,
            "--journal-sync" => a.sync = value,
            "--alerts" => a.alerts = value.parse()?,
            other => {
                bail!("unknown flag {other} (--rates R1,R2 --seconds N --qos Q --devices D --journal-sync full|normal --alerts N per step; rate 0 = idle)")
            }
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let dir = TempDir::new("bench")?;
    let registry = dir.path().join("devices.toml");
    std::fs::write(&registry, bench_registry(a.devices, a.rates.len() as u32 * a.alerts))?;
    let vm = VictoriaMetrics::start().await?;
    let cfg = format!(
        "[site]\nid = \"nh-bench\"\n[registry]\nfile = \"{}\"\n[journal]\npath = \"{}\"\nsync = \"{}\"\n[influx]\nurl = \"{}\"\norg = \"nh\"\nbucket = \"nh\"\n",
        registry.display(),
        dir.path().join("journal.db").display(),
        a.sync,
        vm.url()
    );
    let gw = Gateway::start(&write_config(dir.path(), &cfg)?, &[], dir.path()).await?;
    let broker = gw.mqtt.context("embedded broker")?;
    eprintln!(
        "gateway pid {} http {} mqtt {broker}; VictoriaMetrics {}",
        gw.pid,
        gw.http,
        vm.url()
    );

    let smoke = SmokeStream::start(broker).await?;
    for (step, rate) in a.rates.iter().enumerate() {
        let before = gw.metrics().await?;
        let accepted0 = before.get("nh_readings_accepted_total").copied().unwrap_or(0.0) as u64;
        let commits0 = before.get("nh_journal_commits_total").copied().unwrap_or(0.0);
        let (cpu0, _) = cpu_and_rss(gw.pid).unwrap_or_default();
        let started = Instant::now();
        // Life-safety readings spread over the step, mixed into the bulk load.
        let first = step as u32 * a.alerts;
        let alerts = tokio::spawn(smoke.clone().run(first, a.alerts, Duration::from_secs(a.seconds)));
        let mut load_out = None;
        let mut sent = 0;
        if *rate > 0 {
            let out = tokio::process::Command::new(bin("nh-sim"))
                .args(["load", "--broker", &broker.to_string(), "--rate", &rate.to_string()])
                .args(["--seconds", &a.seconds.to_string(), "--qos", &a.qos.to_string()])
                .args(["--devices", &a.devices.to_string(), "--site", "nh-bench"])
                .output();
            let mut peak_rss = 0u64;
            tokio::pin!(out);
            let out = loop {
                tokio::select! {
                    out = &mut out => break out?,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        if let Some((_, rss)) = cpu_and_rss(gw.pid) { peak_rss = peak_rss.max(rss); }
                    }
                }
            };
            anyhow::ensure!(
                out.status.success(),
                "nh-sim load: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let summary: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).context("load summary")?;
            sent = summary["acked"].as_u64().unwrap_or(0);
            load_out = Some((summary, peak_rss));
        }
        let latencies = alerts.await??;
        // Wait until the journal and the database hold everything of this step.
        let mut peak_rss = load_out.as_ref().map_or(0, |l| l.1);
        let mut journal_done = None;
        let db_done = loop {
            let m = gw.metrics().await?;
            let accepted = m.get("nh_readings_accepted_total").copied().unwrap_or(0.0) as u64 - accepted0;
            let cursor = m.get("nh_influx_cursor").copied().unwrap_or(0.0);
            let last = m.get("nh_journal_last_id").copied().unwrap_or(0.0);
            if let Some((_, rss)) = cpu_and_rss(gw.pid) {
                peak_rss = peak_rss.max(rss);
            }
            if accepted >= sent && journal_done.is_none() {
                journal_done = Some(started.elapsed().as_secs_f64());
            }
            if accepted >= sent && cursor >= last {
                break started.elapsed().as_secs_f64();
            }
            if started.elapsed() > Duration::from_secs(a.seconds * 20 + 120) {
                bail!("step {rate}/s did not complete: {accepted} of {sent} in the journal");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (cpu1, _) = cpu_and_rss(gw.pid).unwrap_or_default();
        let commits = gw.metric("nh_journal_commits_total").await? - commits0;
        let summary = load_out.map(|l| l.0).unwrap_or_default();
        let journal_s = journal_done.unwrap_or(db_done);
        let line = serde_json::json!({
            "offered_rate": rate,
            "qos": a.qos,
            "journal_sync": a.sync,
            "sent": sent,
            "publish_rate": summary["achieved_rate"],
            "late_sends": summary["late"],
            "journal_rate": (sent as f64 / journal_s).round(),
            "database_rate": (sent as f64 / db_done).round(),
            "avg_commit_rows": (sent as f64 / commits.max(1.0)).round(),
            "gateway_cpu_pct": ((cpu1 - cpu0) / db_done * 100.0).round(),
            "gateway_peak_rss_mb": (peak_rss as f64 / 1048576.0).round(),
            "alerts": latencies.report(a.alerts),
        });
        println!("{line}");
    }
    Ok(())
}

/// Publishes smoke alarms going off and times each one until its alert arrives on
/// `nh/nh-bench/alerts` (the latency a control room sees, from the device's publish).
#[derive(Clone)]
struct SmokeStream {
    client: rumqttc::AsyncClient,
    arrivals: Arc<Mutex<HashMap<String, Instant>>>,
}

impl SmokeStream {
    async fn start(broker: std::net::SocketAddr) -> Result<Self> {
        use rumqttc::{Event, MqttOptions, Packet, QoS};
        let mut opts = MqttOptions::new("bench-smoke", broker.ip().to_string(), broker.port());
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1000);
        let mut net = eventloop.network_options();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let seen = arrivals.clone();
        tokio::spawn(async move {
            while let Ok(ev) = eventloop.poll().await {
                match ev {
                    Event::Incoming(Packet::SubAck(_)) => {
                        if let Some(t) = subscribed_tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        let now = Instant::now();
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) {
                            if v["rule"] == "R11" {
                                if std::env::var_os("NH_BENCH_TRACE").is_some() {
                                    let wall = nh_gateway::clock::system_now_ms();
                                    eprintln!(
                                        "alert {} raised_at {} arrived {} (+{} ms)",
                                        v["device"],
                                        v["raised_at"],
                                        wall,
                                        wall - v["raised_at"].as_i64().unwrap_or(0)
                                    );
                                }
                                if let (Some(d), Ok(mut m)) = (v["device"].as_str(), seen.lock()) {
                                    m.entry(d.to_owned()).or_insert(now);
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        });
        client.subscribe("nh/nh-bench/alerts", QoS::AtLeastOnce).await?;
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx).await??;
        Ok(SmokeStream { client, arrivals })
    }

    /// `count` smoke alarms `first..` go off evenly over `span`; waits for their alerts.
    async fn run(self, first: u32, count: u32, span: Duration) -> Result<Latencies> {
        let mut sent = Vec::new();
        let every = span / count.max(1);
        for i in first..first + count {
            let device = format!("smoke-{i:04}");
            let payload = format!(r#"{{"metrics":{{"smoke":true}}}}"#);
            let topic = format!("nh/nh-bench/{device}/telemetry");
            let at = Instant::now();
            self.client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await?;
            sent.push((device, at));
            tokio::time::sleep(every).await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let done = {
                let m = self.arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                sent.iter().all(|(d, _)| m.contains_key(d))
            };
            if done || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let m = self.arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut ms: Vec<f64> = sent
            .iter()
            .filter_map(|(d, at)| m.get(d).map(|arr| arr.duration_since(*at).as_secs_f64() * 1000.0))
            .collect();
        ms.sort_by(f64::total_cmp);
        Ok(Latencies { ms })
    }
}

struct Latencies {
    ms: Vec<f64>,
}

impl Latencies {
    fn pct(&self, p: f64) -> f64 {
        if self.ms.is_empty() {
            return f64::NAN;
        }
        let i = ((self.ms.len() as f64 - 1.0) * p).round() as usize;
        (self.ms[i.min(self.ms.len() - 1)] * 10.0).round() / 10.0
    }

    fn report(&self, expected: u32) -> serde_json::Value {
        serde_json::json!({
            "sent": expected,
            "received": self.ms.len(),
            "p50_ms": self.pct(0.5),
            "p99_ms": self.pct(0.99),
            "max_ms": self.pct(1.0),
        })
    }
}
