//! Memory stays bounded under steady load: a short version of `nh-bench --soak`, kept in CI.
//!
//! The embedded broker's logs are capped by `[mqtt] broker_log_mb`; before that cap existed the
//! gateway grew by about 0.36 MB per second at 1,000 readings/s (1,300 MB an hour) for as long
//! as the load lasted. Here the cap is small (16 MB), so the logs reach it within seconds, and
//! the RSS slope after two minutes (the logs full, the journal's caches warm) must be well below
//! the unbounded one. The long soak and its figures
//! are `nh-bench --soak` (docs/memory.md).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nh_e2e::{bin, cpu_and_rss, write_config, Gateway, TempDir};
use nh_sim::load::Mix;

const DEVICES: u32 = 500;
const MIX: &str = "presence_radar=4,wearable=1";
const RATE: u64 = 1_000;
const SECONDS: u64 = 180;
/// Samples before this are the logs filling up to their cap.
const WARMUP_S: f64 = 120.0;
/// Well below the 1,300 MB/hour of the unbounded logs, above what the journal's caches still add.
const MAX_SLOPE_MB_PER_H: f64 = 500.0;

fn slope_mb_per_hour(samples: &[(f64, u64)]) -> f64 {
    let n = samples.len() as f64;
    let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let sxy: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 as f64 - my)).sum();
    let sxx: f64 = samples.iter().map(|s| (s.0 - mx).powi(2)).sum();
    sxy / sxx * 3600.0 / 1_048_576.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_stays_bounded_under_steady_load_with_the_broker_log_capped() -> Result<()> {
    let dir = TempDir::new("memory")?;
    let mix = Mix::parse(MIX).map_err(|e| anyhow::anyhow!(e))?;
    let mut registry = "site = \"nh-mem\"\n".to_owned();
    for i in 0..DEVICES {
        registry += &format!(
            "[[devices]]\nid = \"load-{i:04}\"\nclass = \"{}\"\nroom = \"M-{i}\"\ninterval_s = 86400\n",
            mix.class_of(i as usize).name()
        );
    }
    std::fs::write(dir.path().join("devices.toml"), registry)?;
    let cfg = write_config(
        dir.path(),
        &format!(
            "[site]\nid = \"nh-mem\"\n[mqtt]\nbroker_log_mb = 16\n[registry]\nfile = \"devices.toml\"\n\
             [journal]\npath = \"{}\"\n",
            dir.path().join("journal.db").display()
        ),
    )?;
    let gw = Gateway::start(&cfg, &[], dir.path()).await?;
    let broker = gw.mqtt.context("embedded broker")?.to_string();
    let load = tokio::process::Command::new(bin("nh-sim"))
        .args(["load", "--broker", &broker, "--rate", &RATE.to_string()])
        .args(["--seconds", &SECONDS.to_string(), "--qos", "1", "--site", "nh-mem"])
        .args(["--devices", &DEVICES.to_string(), "--mix", MIX, "--payload", "typical"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let started = Instant::now();
    let run = load.wait_with_output();
    tokio::pin!(run);
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let out = loop {
        tokio::select! {
            out = &mut run => break out?,
            // The sampling period of the memory curve.
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                if let Some((_, rss)) = cpu_and_rss(gw.pid) {
                    samples.push((started.elapsed().as_secs_f64(), rss));
                }
            }
        }
    };
    let summary: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).context("nh-sim load summary")?;
    let acked = summary["acked"].as_u64().unwrap_or(0);
    gw.wait_forwarded(acked, false, Duration::from_secs(60)).await?;
    let after: Vec<(f64, u64)> = samples.iter().copied().filter(|s| s.0 >= WARMUP_S).collect();
    let slope = slope_mb_per_hour(&after);
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0) as f64 / 1_048_576.0;
    let overruns = gw.metric("nh_mqtt_broker_log_overruns_total").await?;
    eprintln!(
        "memory: {acked} readings at {RATE}/s, RSS {:.1} -> {:.1} MB (peak {peak:.1}), slope after {WARMUP_S} s {slope:.1} MB/hour, overruns {overruns}",
        samples.first().map_or(0.0, |s| s.1 as f64 / 1_048_576.0),
        samples.last().map_or(0.0, |s| s.1 as f64 / 1_048_576.0),
    );
    assert!(acked >= RATE * SECONDS * 9 / 10, "the load ran: {summary}");
    assert!(after.len() >= 10, "samples after the warm-up: {}", after.len());
    assert!(
        slope <= MAX_SLOPE_MB_PER_H,
        "RSS grows {slope:.1} MB/hour after the warm-up (samples {samples:?})"
    );
    assert_eq!(overruns, 0.0, "a subscriber keeping up loses nothing inside the broker");
    Ok(())
}
