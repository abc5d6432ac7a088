//! Every scenario in `config/scenarios/` against the real gateway: each one starts `nh-gateway`
//! with the shipped rules (`config/rules.toml`) and the scenario's registry on the shared test
//! clock, runs `nh-sim scenario` against its embedded broker with the same three clock values,
//! and asserts the scenario passed (expected alerts within their deadlines, nothing else).
//!
//! One test runs them two at a time (`NH_SCENARIO_JOBS`, default 2), and the test itself runs
//! apart from the other end-to-end tests: they are time-scaled, and every window a scenario
//! relies on spans >= 10 s of real time, so two light scenarios side by side stall nothing that
//! matters, while a machine loaded by other tests could. `NH_SCENARIO=<substring>` runs only the
//! matching files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use nh_e2e::{bin, workspace_root, write_config, Gateway, TempDir};

/// Real time between choosing the clock origin and the scenario's virtual start: the gateway
/// starts meanwhile (it then runs a little before the start, which is harmless).
const LEAD_MS: i64 = 5_000;

fn scenario_files() -> Result<Vec<PathBuf>> {
    let dir = workspace_root().join("config/scenarios");
    let filter = std::env::var("NH_SCENARIO").ok();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
        let p = entry?.path();
        if p.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&p)?;
        if !text.lines().any(|l| l.trim() == "[scenario]") {
            continue; // a registry the scenarios name
        }
        if let Some(f) = &filter {
            if !p.to_string_lossy().contains(f.as_str()) {
                continue;
            }
        }
        files.push(p);
    }
    files.sort();
    Ok(files)
}

/// What `nh-sim scenario --info` says about a scenario.
fn info(file: &Path) -> Result<serde_json::Value> {
    let out = Command::new(bin("nh-sim"))
        .arg("scenario")
        .arg("--info")
        .arg(file)
        .output()?;
    if !out.status.success() {
        bail!("nh-sim scenario --info: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs one scenario against a fresh gateway; returns (passed, report text).
pub(crate) async fn run_one(file: &Path) -> Result<(bool, String)> {
    run_one_recorded(file, None).await
}

/// The device topics a recording of a scenario keeps (not the gateway's alerts).
pub(crate) const DEVICE_TOPICS: &[&str] = &["nh/+/+/telemetry", "zigbee2mqtt/#"];

/// [`run_one`], and with `record` given, `nh-sim record` of the device topics on the gateway's
/// broker (on the same test clock) into that file from before the start to the end.
pub(crate) async fn run_one_recorded(file: &Path, record: Option<&Path>) -> Result<(bool, String)> {
    let info = info(file)?;
    let site = info["site"].as_str().context("site")?.to_owned();
    let registry = info["gateway_registry"]
        .as_str()
        .or(info["registry"].as_str())
        .context("registry")?
        .to_owned();
    let start = info["start_ms"].as_i64().context("scenario without start")?;
    let scale = info["time_scale"].as_f64().context("time_scale")?;
    let rules = workspace_root().join("config/rules.toml");
    let dir = TempDir::new("scenario")?;
    let cfg = write_config(
        dir.path(),
        &format!(
            "[site]\nid = \"{site}\"\n[mqtt]\nmode = \"embedded\"\n[registry]\nfile = \"{registry}\"\n\
             [journal]\npath = \"{journal}\"\n[rules]\nfile = \"{rules}\"\n",
            journal = dir.path().join("journal.db").display(),
            rules = rules.display(),
        ),
    )?;
    let origin = now_ms() + LEAD_MS;
    let clock = [
        "--test-clock-origin".to_owned(),
        origin.to_string(),
        "--test-clock-start".to_owned(),
        start.to_string(),
        "--time-scale".to_owned(),
        scale.to_string(),
    ];
    let clock_args: Vec<&str> = clock.iter().map(String::as_str).collect();
    let gw = Gateway::start_with(&cfg, &[], dir.path(), &clock_args).await?;
    let mqtt = gw.mqtt.context("the gateway has no embedded broker")?;
    let recorder = match record {
        Some(out) => Some(crate::capture::start_record_of(
            &mqtt.to_string(),
            out,
            DEVICE_TOPICS,
            &clock,
        )?),
        None => None,
    };
    let real_budget = info["real_duration_s"].as_f64().unwrap_or(60.0) + 120.0;
    let file = file.to_path_buf();
    let broker = mqtt.to_string();
    let out = tokio::time::timeout(
        Duration::from_secs_f64(real_budget),
        tokio::task::spawn_blocking(move || {
            Command::new(bin("nh-sim"))
                .arg("scenario")
                .arg(&file)
                .args(["--broker", &broker])
                .args(&clock)
                .output()
        }),
    )
    .await
    .context("nh-sim scenario did not finish in time")???;
    if let Some(mut r) = recorder {
        nh_e2e::terminate(&mut r)?;
    }
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let passed = out.status.success();
    if !passed {
        let log = gw.proc.log_tail();
        return Ok((
            false,
            format!(
                "{report}\n--- nh-sim stderr ---\n{}\n--- gateway log ---\n{log}",
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }
    Ok((true, report))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_passes_against_the_gateway() -> Result<()> {
    let files = scenario_files()?;
    assert!(!files.is_empty(), "no scenarios in config/scenarios");
    let jobs: usize = std::env::var("NH_SCENARIO_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(2)
        .max(1);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(jobs));
    let mut runs = tokio::task::JoinSet::new();
    for f in files {
        let slots = slots.clone();
        runs.spawn(async move {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let _slot = slots.acquire_owned().await?;
            eprintln!("=== scenario {name} started");
            let (passed, report) = run_one(&f).await.with_context(|| name.clone())?;
            // One block per scenario, whole, as it ends.
            eprintln!(
                "=== scenario {name}\n{report}\n=== {name}: {}",
                if passed { "pass" } else { "FAIL" }
            );
            anyhow::Ok((name, passed))
        });
    }
    let mut failed = Vec::new();
    while let Some(run) = runs.join_next().await {
        let (name, passed) = run??;
        if !passed {
            failed.push(name);
        }
    }
    failed.sort();
    assert!(failed.is_empty(), "failed scenarios: {failed:?}");
    Ok(())
}
