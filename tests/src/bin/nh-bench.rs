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

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nh_e2e::{bin, cpu_and_rss, write_config, Gateway, TempDir, VictoriaMetrics};

struct Args {
    rates: Vec<u64>,
    seconds: u64,
    qos: u8,
    devices: u32,
    sync: String,
}

fn args() -> Result<Args> {
    let mut a = Args {
        rates: vec![5_000, 10_000, 20_000],
        seconds: 10,
        qos: 1,
        devices: 1000,
        sync: "full".into(),
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
            other => {
                bail!("unknown flag {other} (--rates R1,R2 --seconds N --qos Q --devices D --journal-sync full|normal)")
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
    let out = Command::new(bin("nh-sim"))
        .args([
            "gen-registry",
            "--site",
            "nh-bench",
            "--floors",
            "1",
            "--rooms-per-floor",
            "1",
            "--load-devices",
            &a.devices.to_string(),
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "gen-registry: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&registry, out.stdout)?;
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

    for rate in &a.rates {
        let before = gw.metrics().await?;
        let accepted0 = before.get("nh_readings_accepted_total").copied().unwrap_or(0.0) as u64;
        let commits0 = before.get("nh_journal_commits_total").copied().unwrap_or(0.0);
        let (cpu0, _) = cpu_and_rss(gw.pid).unwrap_or_default();
        let started = Instant::now();
        let load = tokio::process::Command::new(bin("nh-sim"))
            .args([
                "load",
                "--broker",
                &broker.to_string(),
                "--rate",
                &rate.to_string(),
                "--seconds",
                &a.seconds.to_string(),
            ])
            .args([
                "--qos",
                &a.qos.to_string(),
                "--devices",
                &a.devices.to_string(),
                "--site",
                "nh-bench",
            ])
            .output();
        tokio::pin!(load);
        let mut peak_rss = 0u64;
        let mut journal_done: Option<f64> = None;
        let mut load_out = None;
        let mut sent = u64::MAX;
        // Sample until the load finished and the journal and the database hold everything.
        let db_done = loop {
            tokio::select! {
                out = &mut load, if load_out.is_none() => {
                    let out = out?;
                    anyhow::ensure!(out.status.success(), "nh-sim load: {}", String::from_utf8_lossy(&out.stderr));
                    let summary: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).context("load summary")?;
                    sent = summary["acked"].as_u64().unwrap_or(0);
                    load_out = Some(summary);
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if let Some((_, rss)) = cpu_and_rss(gw.pid) {
                peak_rss = peak_rss.max(rss);
            }
            let m = gw.metrics().await?;
            let accepted = m.get("nh_readings_accepted_total").copied().unwrap_or(0.0) as u64 - accepted0;
            let cursor = m.get("nh_influx_cursor").copied().unwrap_or(0.0);
            let last = m.get("nh_journal_last_id").copied().unwrap_or(0.0);
            if accepted >= sent && journal_done.is_none() {
                journal_done = Some(started.elapsed().as_secs_f64());
            }
            if accepted >= sent && cursor >= last {
                break started.elapsed().as_secs_f64();
            }
            if started.elapsed() > Duration::from_secs(a.seconds * 20 + 120) {
                bail!("step {rate}/s did not complete: {accepted} of {sent} in the journal");
            }
        };
        let (cpu1, _) = cpu_and_rss(gw.pid).unwrap_or_default();
        let commits = gw.metric("nh_journal_commits_total").await? - commits0;
        let summary = load_out.unwrap_or_default();
        let journal_s = journal_done.unwrap_or(db_done);
        let line = serde_json::json!({
            "offered_rate": rate,
            "qos": a.qos,
            "journal_sync": a.sync,
            "avg_commit_rows": (sent as f64 / commits.max(1.0)).round(),
            "sent": sent,
            "publish_rate": summary["achieved_rate"],
            "late_sends": summary["late"],
            "journal_rate": (sent as f64 / journal_s).round(),
            "database_rate": (sent as f64 / db_done).round(),
            "journal_done_s": (journal_s * 100.0).round() / 100.0,
            "database_done_s": (db_done * 100.0).round() / 100.0,
            "gateway_cpu_pct": ((cpu1 - cpu0) / db_done * 100.0).round(),
            "gateway_peak_rss_mb": (peak_rss as f64 / 1048576.0).round(),
        });
        println!("{line}");
    }
    Ok(())
}
