//! `nh-bench`: where the gateway stands against its broker's limit, on this machine.
//!
//! For each mode (the embedded rumqttd, an external Mosquitto) it starts the pieces on loopback
//! and measures, in one run:
//!
//! 1. the raw broker: `nh-sim load` at a rate no broker here reaches, into a plain subscriber
//!    (`nh-sim sink`), at QoS 0 and 1. The broker has the same settings as in the gateway runs:
//!    in embedded mode a standalone rumqttd started through the gateway's own
//!    [`nh_gateway::sources::broker::start`] with the gateway's default packet size, inflight
//!    window and log size; in external mode the very Mosquitto the gateway then uses (`max_inflight_messages
//!    1000`), measured before the gateway subscribes;
//! 2. the facility of the RSS targets: a gateway with the load's devices only, its
//!    start-to-ready time, idle RSS, and peak RSS at 10,000 readings/s (its own database);
//! 3. the gateway with the probes' smoke alarms registered too: a ramp of offered rates (QoS 1, and QoS 0
//!    in external mode) until a step no longer keeps up. Per step: the rate into the journal and
//!    into the database (a real VictoriaMetrics), the latency of a small stream of life-safety
//!    readings mixed in (`nh-sim alert-probe`), the gateway's CPU and peak RSS;
//! 4. at the end: every reading the publisher had acknowledged is in the journal, and the points
//!    in VictoriaMetrics are counted against it; the stripped release binary's size.
//!
//! Prints one JSON line per measurement to stdout and writes the whole report to `--out`.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! ./target/release/nh-bench --out bench-report.json
//! ```
//!
//! `--soak MINUTES` measures memory over time instead: per mode, a gateway with `--devices`
//! devices of `--mix` (default: the quiet-night facility mix) at a steady `--soak-rate` (default
//! 1,000 readings/s) for MINUTES, RSS sampled every 30 s; it reports the RSS slope after the
//! warm-up (5 min, or a third of a shorter run) in MB/hour, the peak, and the journal's growth
//! on disk per reading. Target: slope <= 1 MB/hour.
//!
//! ```sh
//! ./target/release/nh-bench --soak 20 --mode both --out soak-report.json
//! ```

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nh_e2e::{bin, cpu_and_rss, write_config, Gateway, Mosquitto, TempDir, VictoriaMetrics};
use nh_sim::load::{LoadClass, Mix};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

const SITE: &str = "nh-bench";

/// Life-safety readings per probe run (so p99 is a real percentile, not the maximum).
const PROBE_COUNT: u32 = 100;

/// Ramp steps that can run per mode and QoS; sizes the registry's smoke alarms.
const MAX_STEPS: u32 = 12;

/// The rate of the RSS target (2,000 devices at 10,000 readings/s).
const FLEET_RATE: u64 = 10_000;

/// `[mqtt] broker_log_mb` of the ramp's gateway (see `start_gateway`).
const RAMP_BROKER_LOG_MB: u64 = 1024;

/// A step keeps up when the journal takes at least this share of the offered rate.
const KEEPS_UP: f64 = 0.9;

/// The bench site: `load-NNNN` presence radars (no rule watches them) for the bulk load, and
/// smoke alarms `smoke-NNNN`, one room each (no two alerts correlate), for the probes. Long
/// intervals: nobody goes offline mid-run.
fn bench_registry(load_devices: u32, smoke: u32, mix: &Mix) -> String {
    let mut s = format!("site = \"{SITE}\"\n");
    for i in 0..load_devices {
        s += &format!(
            "[[devices]]\nid = \"load-{i:04}\"\nclass = \"{}\"\nroom = \"L-{i}\"\ninterval_s = 86400\n",
            mix.class_of(i as usize).name()
        );
    }
    for i in 0..smoke {
        s += &format!(
            "[[devices]]\nid = \"smoke-{i:04}\"\nclass = \"smoke_alarm\"\nroom = \"S-{i}\"\ninterval_s = 86400\n"
        );
    }
    s
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Embedded,
    External,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Embedded => "embedded",
            Mode::External => "external",
        }
    }
}

struct Args {
    modes: Vec<Mode>,
    rates: Vec<u64>,
    seconds: f64,
    raw_rate: u64,
    raw_seconds: f64,
    devices: u32,
    payload: String,
    /// `nh-sim load --mix`: the load devices' classes.
    mix: String,
    sync: String,
    out: Option<String>,
    /// Ramp with QoS 0 too in external mode.
    qos0: bool,
    /// `--soak MINUTES`: the memory soak instead of the ramp.
    soak_minutes: Option<f64>,
    soak_rate: u64,
    /// `[mqtt] broker_log_mb` of the gateways (default: the gateway's default).
    broker_log_mb: Option<u64>,
}

/// The facility of the soak: the quiet night's device classes.
const SOAK_MIX: &str = "presence_radar=6,wearable=2,bed_sensor=1,door_contact=1,smoke_alarm=1";
/// RSS samples this far apart.
const SOAK_SAMPLE: Duration = Duration::from_secs(30);
/// The soak's target: RSS growth after the warm-up.
const SOAK_MAX_SLOPE_MB_PER_H: f64 = 1.0;

const USAGE: &str = "nh-bench [--mode embedded|external|both] [--rates R1,R2,..] [--seconds S] \
[--raw-rate R] [--raw-seconds S] [--devices D] [--payload small|typical] [--mix CLASS=W,..] [--journal-sync full|normal] \
[--qos0 true|false] [--soak MINUTES] [--soak-rate R] [--broker-log-mb MB] [--out FILE]";

fn args() -> Result<Args> {
    let mut a = Args {
        modes: vec![Mode::Embedded, Mode::External],
        rates: vec![10_000, 20_000, 30_000, 40_000, 60_000, 80_000],
        seconds: 8.0,
        raw_rate: 400_000,
        raw_seconds: 5.0,
        devices: 2_000,
        payload: "typical".into(),
        mix: "presence_radar".into(),
        sync: "full".into(),
        out: None,
        qos0: true,
        soak_minutes: None,
        soak_rate: 1_000,
        broker_log_mb: None,
    };
    let mut mix_given = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it.next().with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--mode" => {
                a.modes = match value.as_str() {
                    "embedded" => vec![Mode::Embedded],
                    "external" => vec![Mode::External],
                    "both" => vec![Mode::Embedded, Mode::External],
                    other => bail!("--mode {other}: embedded, external or both"),
                }
            }
            "--rates" => a.rates = value.split(',').map(|r| r.trim().parse()).collect::<Result<_, _>>()?,
            "--seconds" => a.seconds = value.parse()?,
            "--raw-rate" => a.raw_rate = value.parse()?,
            "--raw-seconds" => a.raw_seconds = value.parse()?,
            "--devices" => a.devices = value.parse()?,
            "--payload" => a.payload = value,
            "--mix" => {
                Mix::parse(&value).map_err(|e| anyhow::anyhow!("--mix: {e}"))?;
                mix_given = true;
                a.mix = value
            }
            "--soak" => a.soak_minutes = Some(value.parse()?),
            "--soak-rate" => a.soak_rate = value.parse()?,
            "--broker-log-mb" => a.broker_log_mb = Some(value.parse()?),
            "--journal-sync" => a.sync = value,
            "--qos0" => a.qos0 = value.parse()?,
            "--out" => a.out = Some(value),
            other => bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    if a.rates.len() as u32 > MAX_STEPS {
        bail!("at most {MAX_STEPS} rates");
    }
    if a.soak_minutes.is_some() && !mix_given {
        a.mix = SOAK_MIX.to_owned();
    }
    Ok(a)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn wall_ms() -> i64 {
    nh_gateway::clock::system_now_ms()
}

fn mb(bytes: u64) -> f64 {
    round1(bytes as f64 / 1_048_576.0)
}

/// `nh-sim load` to completion; its JSON summary.
async fn load(broker: &str, rate: u64, seconds: f64, qos: u8, a: &Args, ack_timeout_s: f64) -> Result<Value> {
    let out = tokio::process::Command::new(bin("nh-sim"))
        .args(["load", "--broker", broker, "--rate", &rate.to_string()])
        .args(["--seconds", &seconds.to_string(), "--qos", &qos.to_string()])
        .args([
            "--devices",
            &a.devices.to_string(),
            "--site",
            SITE,
            "--payload",
            &a.payload,
            "--mix",
            &a.mix,
        ])
        .args(["--ack-timeout-s", &ack_timeout_s.to_string()])
        .stderr(Stdio::piped())
        .output()
        .await
        .context("running nh-sim load")?;
    // Exit code 3 (not everything acknowledged) still has a summary.
    serde_json::from_slice(out.stdout.trim_ascii()).with_context(|| {
        format!(
            "nh-sim load printed no summary ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The raw broker: a plain subscriber and the load at `raw_rate`; returns the measurement.
async fn raw_pass_through(broker: &str, qos: u8, a: &Args) -> Result<Value> {
    let mut sink = tokio::process::Command::new(bin("nh-sim"))
        .args(["sink", "--broker", broker, "--qos", &qos.to_string(), "--idle-s", "2"])
        .args(["--max-wait-s", &(a.raw_seconds * 4.0 + 60.0).to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting nh-sim sink")?;
    let mut lines = BufReader::new(sink.stdout.take().context("sink stdout")?).lines();
    let first = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .context("nh-sim sink did not subscribe")??
        .unwrap_or_default();
    if !first.contains("subscribed") {
        bail!("nh-sim sink: unexpected first line {first}");
    }
    let start_ms = wall_ms();
    let summary = load(broker, a.raw_rate, a.raw_seconds, qos, a, 1.0).await?;
    let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .context("nh-sim sink did not finish")??
        .unwrap_or_default();
    let _ = sink.wait().await;
    let got: Value = serde_json::from_str(&line).with_context(|| format!("sink summary `{line}`"))?;
    let received = got["received"].as_u64().unwrap_or(0);
    let span_s = (got["last_ms"].as_i64().unwrap_or(start_ms) - start_ms) as f64 / 1000.0;
    Ok(json!({
        "qos": qos,
        "offered_rate": a.raw_rate,
        "sent": summary["sent"],
        "acked": summary["acked"],
        "publish_rate": summary["achieved_rate"],
        "received": received,
        "rate": if span_s > 0.0 { (received as f64 / span_s).round() } else { 0.0 },
        "e2e_latency": got["e2e_latency"],
        "publish_ack_latency": summary["ack_latency"],
    }))
}

/// `nh-sim alert-probe` for devices `first..first + PROBE_COUNT` over `span_s`.
fn probe(broker: &str, first: u32, span_s: f64) -> Result<tokio::process::Child> {
    tokio::process::Command::new(bin("nh-sim"))
        .args(["alert-probe", "--broker", broker, "--site", SITE])
        .args(["--first", &first.to_string(), "--count", &PROBE_COUNT.to_string()])
        .args(["--span-s", &span_s.to_string(), "--grace-s", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting nh-sim alert-probe")
}

async fn probe_result(child: tokio::process::Child) -> Result<Value> {
    let out = child.wait_with_output().await?;
    serde_json::from_slice(out.stdout.trim_ascii()).with_context(|| {
        format!(
            "nh-sim alert-probe: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn counter(m: &std::collections::HashMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

/// One step of the ramp: the load at `rate` with the alert probe mixed in; waits until the
/// journal and the database hold everything the broker acknowledged.
async fn step(gw: &Gateway, broker: &str, rate: u64, qos: u8, probe_first: u32, a: &Args) -> Result<Value> {
    let before = gw.metrics().await?;
    let accepted0 = counter(&before, "nh_readings_accepted_total") as u64;
    let commits0 = counter(&before, "nh_journal_commits_total");
    let (cpu0, _) = cpu_and_rss(gw.pid).unwrap_or_default();
    let started = Instant::now();
    let alerts = probe(broker, probe_first, a.seconds)?;
    let mut peak_rss = 0u64;
    let summary = if rate > 0 {
        let run = load(broker, rate, a.seconds, qos, a, 5.0);
        tokio::pin!(run);
        let summary = loop {
            tokio::select! {
                s = &mut run => break s?,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if let Some((_, rss)) = cpu_and_rss(gw.pid) { peak_rss = peak_rss.max(rss); }
                }
            }
        };
        summary
    } else {
        Value::Null
    };
    // QoS 1: what the broker acknowledged must all arrive. QoS 0: what was sent (the broker may
    // have dropped some; the wait then ends at its deadline and the step says so). Plus the
    // probe's life-safety readings, on the priority lane.
    let bulk = if qos == 1 {
        summary["acked"].as_u64()
    } else {
        summary["sent"].as_u64()
    }
    .unwrap_or(0);
    let expected = bulk + u64::from(PROBE_COUNT);
    let mut journal_done = None;
    let mut accepted;
    let deadline = started + Duration::from_secs_f64(a.seconds * 6.0 + 60.0);
    let db_done = loop {
        let m = gw.metrics().await?;
        // The probe's own readings are in the count too (on the priority lane).
        accepted = (counter(&m, "nh_readings_accepted_total") as u64).saturating_sub(accepted0);
        let cursor = counter(&m, "nh_influx_cursor");
        let last = counter(&m, "nh_journal_last_id");
        if let Some((_, rss)) = cpu_and_rss(gw.pid) {
            peak_rss = peak_rss.max(rss);
        }
        if accepted >= expected && journal_done.is_none() {
            journal_done = Some(started.elapsed().as_secs_f64());
        }
        if accepted >= expected && cursor >= last {
            break Some(started.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let alerts = probe_result(alerts).await?;
    let (cpu1, _) = cpu_and_rss(gw.pid).unwrap_or_default();
    let m = gw.metrics().await?;
    let commits = counter(&m, "nh_journal_commits_total") - commits0;
    let elapsed = started.elapsed().as_secs_f64();
    let rate_of = |t: Option<f64>| t.map(|t| (bulk as f64 / t).round());
    let journal_rate = rate_of(journal_done);
    let keeps_up = rate > 0 && journal_rate.is_some_and(|r| r >= KEEPS_UP * rate as f64);
    Ok(json!({
        "offered_rate": rate,
        "qos": qos,
        "sent": summary["sent"],
        "acked_by_broker": summary["acked"],
        "publish_rate": summary["achieved_rate"],
        "publish_ack_latency": summary["ack_latency"],
        "late_sends": summary["late"],
        "in_journal": accepted,
        "all_in_journal": accepted >= expected,
        "journal_rate": journal_rate,
        "database_rate": rate_of(db_done),
        "keeps_up": keeps_up,
        "avg_commit_rows": (accepted as f64 / commits.max(1.0)).round(),
        "gateway_cpu_pct": ((cpu1 - cpu0) / elapsed * 100.0).round(),
        "gateway_peak_rss_mb": mb(peak_rss),
        "alerts": alerts,
    }))
}

/// Starts the gateway; returns it with its start-to-ready time in ms.
async fn start_gateway(
    dir: &Path,
    mode: Mode,
    mosquitto: Option<u16>,
    vm: &VictoriaMetrics,
    a: &Args,
    smoke: u32,
) -> Result<(Gateway, f64)> {
    let registry = dir.join("devices.toml");
    std::fs::write(
        &registry,
        bench_registry(a.devices, smoke, &Mix::parse(&a.mix).map_err(|e| anyhow::anyhow!(e))?),
    )?;
    let client_id = format!("nh-gw-bench-{smoke}");
    let mqtt = match (mode, mosquitto) {
        (Mode::External, Some(port)) => {
            format!("[mqtt]\nmode = \"external\"\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"{client_id}\"\n")
        }
        // The ramp (the gateway with the probes' smoke alarms) measures throughput at and past
        // saturation, where the gateway falls behind the broker for seconds: its log is sized
        // so that lag costs nothing (RAM is what the soak and the fleet measure).
        _ => match (a.broker_log_mb, smoke) {
            (Some(mb), _) => format!("[mqtt]\nbroker_log_mb = {mb}\n"),
            (None, 0) => String::new(),
            (None, _) => format!("[mqtt]\nbroker_log_mb = {RAMP_BROKER_LOG_MB}\n"),
        },
    };
    let cfg = format!(
        "[site]\nid = \"{SITE}\"\n{mqtt}[registry]\nfile = \"{}\"\n[journal]\npath = \"{}\"\nsync = \"{}\"\n[influx]\nurl = \"{}\"\norg = \"nh\"\nbucket = \"nh\"\n",
        registry.display(),
        dir.join("journal.db").display(),
        a.sync,
        vm.url()
    );
    let config = write_config(dir, &cfg)?;
    let t = Instant::now();
    let gw = Gateway::start(&config, &[], dir).await?;
    let ready_ms = t.elapsed().as_secs_f64() * 1000.0;
    Ok((gw, round1(ready_ms)))
}

/// Points of the load devices' one always-sent metric per class in VictoriaMetrics (one per bulk
/// reading): `presence_radar_presence`, `wearable_heart_rate`, ...
async fn database_points(vm: &VictoriaMetrics) -> Result<u64> {
    let names: Vec<String> = LoadClass::ALL
        .iter()
        .map(|c| {
            let metric = match c {
                LoadClass::PresenceRadar => "presence",
                LoadClass::Wearable => "heart_rate",
                LoadClass::BedSensor => "bed_occupied",
                LoadClass::DoorContact => "contact_open",
                LoadClass::SmokeAlarm => "smoke",
            };
            format!("{}_{metric}", c.name())
        })
        .collect();
    let selector = format!("{{__name__=~\"{}\",device=~\"load-.*\"}}", names.join("|"));
    let client = nh_e2e::http();
    client.get(format!("{}/internal/force_flush", vm.url())).send().await?;
    // CSV export, one short line per point: a million points are a few MB.
    let body = client
        .post(format!("{}/api/v1/export/csv", vm.url()))
        .form(&[
            ("match[]", selector.as_str()),
            ("format", "__timestamp__"),
            ("start", "0"),
        ])
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(body.lines().filter(|l| !l.trim().is_empty()).count() as u64)
}

/// Least-squares slope of (seconds, bytes) samples, MB per hour.
fn slope_mb_per_hour(samples: &[(f64, u64)]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let sxy: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 as f64 - my)).sum();
    let sxx: f64 = samples.iter().map(|s| (s.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return 0.0;
    }
    sxy / sxx * 3600.0 / 1_048_576.0
}

/// The journal's bytes on disk (the database file and its write-ahead log).
fn journal_bytes(dir: &Path) -> u64 {
    ["journal.db", "journal.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// The memory soak of one mode (see the module docs).
async fn soak(mode: Mode, a: &Args, minutes: f64) -> Result<Value> {
    let dir = TempDir::new(&format!("soak-{}", mode.as_str()))?;
    let vm = VictoriaMetrics::start().await?;
    let mosquitto = match mode {
        Mode::External => Some(Mosquitto::start().await?),
        Mode::Embedded => None,
    };
    let (gw, _) = start_gateway(dir.path(), mode, mosquitto.as_ref().map(|m| m.port), &vm, a, 0).await?;
    let broker = match (&mosquitto, gw.mqtt) {
        (Some(m), _) => format!("127.0.0.1:{}", m.port),
        (None, Some(addr)) => addr.to_string(),
        (None, None) => bail!("embedded broker address"),
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seconds = minutes * 60.0;
    let warmup_s = if minutes >= 15.0 { 300.0 } else { seconds / 3.0 };
    let started = Instant::now();
    let accepted = |m: &std::collections::HashMap<String, f64>| counter(m, "nh_readings_accepted_total") as u64;
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut at_warmup: Option<(u64, u64)> = None;
    let sample = |samples: &mut Vec<(f64, u64)>| {
        if let Some((_, rss)) = cpu_and_rss(gw.pid) {
            let t = started.elapsed().as_secs_f64();
            eprintln!("{} soak: {:.0} s, RSS {} MB", mode.as_str(), t, mb(rss));
            samples.push((t, rss));
        }
    };
    sample(&mut samples);
    let run = load(&broker, a.soak_rate, seconds, 1, a, 30.0);
    tokio::pin!(run);
    let mut tick = tokio::time::interval(SOAK_SAMPLE);
    tick.tick().await;
    let summary = loop {
        tokio::select! {
            s = &mut run => break s?,
            _ = tick.tick() => {
                sample(&mut samples);
                if at_warmup.is_none() && started.elapsed().as_secs_f64() >= warmup_s {
                    let m = gw.metrics().await?;
                    at_warmup = Some((accepted(&m), journal_bytes(dir.path())));
                }
            }
        }
    };
    let acked = summary["acked"].as_u64().unwrap_or(0);
    gw.wait_forwarded(acked, false, Duration::from_secs(120)).await.ok();
    sample(&mut samples);
    let m = gw.metrics().await?;
    let (acc0, bytes0) = at_warmup.unwrap_or((0, 0));
    let readings = accepted(&m).saturating_sub(acc0);
    let grown = journal_bytes(dir.path()).saturating_sub(bytes0);
    let after: Vec<(f64, u64)> = samples.iter().copied().filter(|s| s.0 >= warmup_s).collect();
    let slope = slope_mb_per_hour(&after);
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let r = json!({
        "mode": mode.as_str(),
        "minutes": minutes,
        "rate": a.soak_rate,
        "devices": a.devices,
        "mix": a.mix,
        "broker_log_mb": a.broker_log_mb,
        "acked": acked,
        "accepted": accepted(&m),
        "broker_log_overruns": counter(&m, "nh_mqtt_broker_log_overruns_total"),
        "warmup_s": warmup_s,
        "rss_start_mb": mb(samples.first().map_or(0, |s| s.1)),
        "rss_end_mb": mb(samples.last().map_or(0, |s| s.1)),
        "rss_peak_mb": mb(peak),
        "rss_slope_mb_per_hour": round1(slope),
        "slope_target_met": slope <= SOAK_MAX_SLOPE_MB_PER_H,
        "journal_bytes_per_reading": if readings > 0 { round1(grown as f64 / readings as f64) } else { 0.0 },
        "samples": samples.iter().map(|s| json!([round1(s.0), mb(s.1)])).collect::<Vec<_>>(),
    });
    println!("{}", json!({ "soak": r }));
    Ok(r)
}

async fn run_mode(mode: Mode, a: &Args) -> Result<Value> {
    let dir = TempDir::new(&format!("bench-{}", mode.as_str()))?;
    let vm = VictoriaMetrics::start().await?;
    // The raw broker first, alone on the machine (the gateway is not running yet).
    let mut mosquitto = None;
    let raw_broker = match mode {
        Mode::Embedded => {
            // The gateway's defaults: mqtt.max_packet_bytes and mqtt.inflight.
            let b = nh_gateway::sources::broker::start(
                ([127, 0, 0, 1], 0).into(),
                1_048_576,
                1_000,
                &nh_gateway::sources::broker::BrokerLimits::default(),
                None,
            )
            .await?;
            b.addr.to_string()
        }
        Mode::External => {
            let m = Mosquitto::start().await?;
            let addr = format!("127.0.0.1:{}", m.port);
            mosquitto = Some(m);
            addr
        }
    };
    let mut raw = Vec::new();
    for qos in [0u8, 1] {
        let r = raw_pass_through(&raw_broker, qos, a).await?;
        eprintln!("{} raw broker QoS {qos}: {r}", mode.as_str());
        println!("{}", json!({"mode": mode.as_str(), "raw": r}));
        raw.push(r);
    }

    // The facility of the RSS targets: the load's devices only (no probe alarms), idle, then at
    // 10,000 readings/s; its own database, so the main run's point count stays exact.
    let fleet = {
        let fleet_dir = TempDir::new(&format!("bench-fleet-{}", mode.as_str()))?;
        let fleet_vm = VictoriaMetrics::start().await?;
        let (gw, ready_ms) = start_gateway(
            fleet_dir.path(),
            mode,
            mosquitto.as_ref().map(|m| m.port),
            &fleet_vm,
            a,
            0,
        )
        .await?;
        let broker = match mode {
            Mode::Embedded => gw.mqtt.context("embedded broker address")?.to_string(),
            Mode::External => raw_broker.clone(),
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle_rss = cpu_and_rss(gw.pid).map(|c| c.1).unwrap_or(0);
        let run = load(&broker, FLEET_RATE, a.seconds, 1, a, 5.0);
        tokio::pin!(run);
        let mut peak = idle_rss;
        let summary = loop {
            tokio::select! {
                s = &mut run => break s?,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if let Some((_, rss)) = cpu_and_rss(gw.pid) { peak = peak.max(rss); }
                }
            }
        };
        let acked = summary["acked"].as_u64().unwrap_or(0);
        gw.wait_forwarded(acked, true, Duration::from_secs(120)).await?;
        if let Some((_, rss)) = cpu_and_rss(gw.pid) {
            peak = peak.max(rss);
        }
        let f = json!({
            "devices": a.devices,
            "start_to_ready_ms": ready_ms,
            "idle_rss_mb": mb(idle_rss),
            "rate": FLEET_RATE,
            "acked": acked,
            "peak_rss_mb": mb(peak),
        });
        println!("{}", json!({"mode": mode.as_str(), "fleet": f}));
        f
    };
    let (gw, ready_ms) = start_gateway(
        dir.path(),
        mode,
        mosquitto.as_ref().map(|m| m.port),
        &vm,
        a,
        PROBE_COUNT * (2 * MAX_STEPS + 1),
    )
    .await?;
    let broker = match mode {
        Mode::Embedded => gw.mqtt.context("embedded broker address")?.to_string(),
        Mode::External => raw_broker.clone(),
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = cpu_and_rss(gw.pid).map(|c| c.1).unwrap_or(0);
    eprintln!(
        "{}: gateway pid {} ready in {ready_ms} ms, idle RSS {} MB",
        mode.as_str(),
        gw.pid,
        mb(idle_rss)
    );
    let mut probe_first = 0;
    let idle = step(&gw, &broker, 0, 1, probe_first, a).await?;
    probe_first += PROBE_COUNT;
    println!("{}", json!({"mode": mode.as_str(), "idle": idle}));

    let qos_list: &[u8] = match (mode, a.qos0) {
        (Mode::External, true) => &[1, 0],
        _ => &[1],
    };
    let mut ramps = Vec::new();
    let mut total_acked = 0u64;
    for &qos in qos_list {
        let mut steps = Vec::new();
        for &rate in &a.rates {
            let s = step(&gw, &broker, rate, qos, probe_first, a).await?;
            probe_first += PROBE_COUNT;
            total_acked += s["in_journal"].as_u64().unwrap_or(0).saturating_sub(PROBE_COUNT as u64);
            println!("{}", json!({"mode": mode.as_str(), "step": s}));
            let keeps_up = s["keeps_up"].as_bool().unwrap_or(false);
            steps.push(s);
            if !keeps_up {
                break;
            }
        }
        ramps.push(json!({"qos": qos, "steps": steps}));
    }
    let m = gw.metrics().await?;
    // VictoriaMetrics makes new series searchable with a short delay: count until the journal's
    // figure is reached or the count stops moving.
    let mut points = database_points(&vm).await?;
    for _ in 0..30 {
        if points >= total_acked {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let again = database_points(&vm).await?;
        if again == points && again > 0 {
            // Unchanged for a second: one more look after a longer pause, then it stands.
            tokio::time::sleep(Duration::from_secs(3)).await;
            points = database_points(&vm).await?;
            break;
        }
        points = again;
    }
    let rss_after = cpu_and_rss(gw.pid).map(|c| c.1).unwrap_or(0);
    Ok(json!({
        "mode": mode.as_str(),
        "raw": raw,
        "fleet": fleet,
        "start_to_ready_ms": ready_ms,
        "idle_rss_mb": mb(idle_rss),
        "idle_probe": idle,
        "ramps": ramps,
        "bulk_readings_in_journal": total_acked,
        "bulk_points_in_database": points,
        "rss_after_mb": mb(rss_after),
        "rejected": m.iter().filter(|(k, _)| k.starts_with("nh_rejected_total")).map(|(k, v)| (k.clone(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
    }))
}

/// The release binary's size, and stripped of its symbols too (`strip`, when installed).
fn binary_size() -> Value {
    let path = bin("nh-gateway");
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let scratch = TempDir::new("strip").ok();
    let stripped_size = scratch.as_ref().and_then(|dir| {
        let stripped = dir.path().join("nh-gateway-stripped");
        std::process::Command::new("strip")
            .arg("-o")
            .arg(&stripped)
            .arg(&path)
            .status()
            .ok()
            .filter(|s| s.success())
            .and_then(|_| std::fs::metadata(&stripped).ok())
            .map(|m| m.len())
    });
    json!({"path": path.display().to_string(), "bytes": size, "mb": mb(size), "stripped_mb": stripped_size.map(mb)})
}

/// The target table: measured value, limit, ratio, met.
fn targets(modes: &[Value], binary: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let best = |m: &Value, qos: u64| -> f64 {
        m["ramps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["qos"] == qos)
            .flat_map(|r| r["steps"].as_array().cloned().unwrap_or_default())
            .filter(|s| s["all_in_journal"] == true)
            .filter_map(|s| s["journal_rate"].as_f64())
            .fold(0.0, f64::max)
    };
    let raw = |m: &Value, qos: u64| -> f64 {
        m["raw"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["qos"] == qos)
            .and_then(|r| r["rate"].as_f64())
            .unwrap_or(f64::NAN)
    };
    let step_at = |m: &Value, pick: &dyn Fn(&[Value]) -> Option<Value>| -> Option<Value> {
        let steps: Vec<Value> = m["ramps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["qos"] == 1)
            .flat_map(|r| r["steps"].as_array().cloned().unwrap_or_default())
            .collect();
        pick(&steps)
    };
    for m in modes {
        let mode = m["mode"].as_str().unwrap_or("?");
        let (qos_list, need): (&[u64], f64) = if mode == "external" {
            (&[0, 1], 0.9)
        } else {
            (&[1], 0.5)
        };
        for &qos in qos_list {
            if m["ramps"].as_array().is_some_and(|r| r.iter().any(|r| r["qos"] == qos)) {
                let (g, r) = (best(m, qos), raw(m, qos));
                out.push(json!({
                    "target": format!("{mode} QoS {qos}: gateway throughput >= {}% of the raw broker", need * 100.0),
                    "measured": g, "limit": r, "ratio": (g / r * 1000.0).round() / 1000.0, "met": g >= need * r,
                }));
            }
        }
        let at_10k = step_at(m, &|s| s.iter().find(|s| s["offered_rate"] == 10_000).cloned());
        if let Some(s) = at_10k {
            let p99 = s["alerts"]["latency"]["p99_ms"].as_f64().unwrap_or(f64::NAN);
            out.push(json!({"target": format!("{mode}: alert p99 <= 5 ms at 10k readings/s"), "measured": p99, "limit": 5.0, "ratio": round1(p99 / 5.0), "met": p99 <= 5.0}));
        }
        let saturated = step_at(m, &|s| s.last().cloned());
        if let Some(s) = saturated {
            let p99 = s["alerts"]["latency"]["p99_ms"].as_f64().unwrap_or(f64::NAN);
            let what = if s["keeps_up"] == false {
                "at saturation"
            } else {
                "at the ramp's top (not saturated)"
            };
            out.push(json!({"target": format!("{mode}: alert p99 <= 20 ms with bulk load {what} ({} offered)", s["offered_rate"]), "measured": p99, "limit": 20.0, "ratio": round1(p99 / 20.0), "met": p99 <= 20.0}));
        }
        let rss = m["fleet"]["peak_rss_mb"].as_f64().unwrap_or(f64::NAN);
        out.push(json!({"target": format!("{mode}: RSS <= 64 MB at {} devices and {FLEET_RATE} readings/s", m["fleet"]["devices"]), "measured": rss, "limit": 64.0, "ratio": (rss / 64.0 * 100.0).round() / 100.0, "met": rss <= 64.0}));
        let idle = m["fleet"]["idle_rss_mb"].as_f64().unwrap_or(f64::NAN);
        out.push(json!({"target": format!("{mode}: idle RSS <= 20 MB ({} devices)", m["fleet"]["devices"]), "measured": idle, "limit": 20.0, "ratio": (idle / 20.0 * 100.0).round() / 100.0, "met": idle <= 20.0}));
        let ready = m["fleet"]["start_to_ready_ms"].as_f64().unwrap_or(f64::NAN);
        out.push(json!({"target": format!("{mode}: start to ready <= 1 s"), "measured": ready, "limit": 1000.0, "ratio": (ready / 1000.0 * 100.0).round() / 100.0, "met": ready <= 1000.0}));
        let (inj, indb) = (
            m["bulk_readings_in_journal"].as_u64().unwrap_or(0),
            m["bulk_points_in_database"].as_u64().unwrap_or(0),
        );
        out.push(json!({"target": format!("{mode}: every bulk reading in the database"), "measured": indb, "limit": inj, "ratio": (indb as f64 / inj.max(1) as f64 * 1000.0).round() / 1000.0, "met": indb >= inj}));
    }
    if let Some(s) = binary["stripped_mb"].as_f64() {
        out.push(json!({"target": "release binary <= 15 MB stripped", "measured": s, "limit": 15.0, "ratio": (s / 15.0 * 100.0).round() / 100.0, "met": s <= 15.0}));
    }
    out
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let t = Instant::now();
    let load_before = load_average();
    if let Some(minutes) = a.soak_minutes {
        let mut soaks = Vec::new();
        for &mode in &a.modes {
            soaks.push(
                soak(mode, &a, minutes)
                    .await
                    .with_context(|| format!("{} soak", mode.as_str()))?,
            );
        }
        let report = json!({
            "date_utc_ms": wall_ms(),
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "duration_s": round1(t.elapsed().as_secs_f64()),
            "soaks": soaks,
        });
        if let Some(out) = &a.out {
            std::fs::write(out, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {out}"))?;
        }
        return Ok(());
    }
    let mut modes = Vec::new();
    for &mode in &a.modes {
        modes.push(
            run_mode(mode, &a)
                .await
                .with_context(|| format!("{} mode", mode.as_str()))?,
        );
    }
    let binary = binary_size();
    let targets = targets(&modes, &binary);
    for t in &targets {
        println!("{}", json!({"target": t}));
    }
    let report = json!({
        "date_utc_ms": wall_ms(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "duration_s": round1(t.elapsed().as_secs_f64()),
        "settings": {
            "rates": a.rates, "seconds": a.seconds, "raw_rate": a.raw_rate, "raw_seconds": a.raw_seconds,
            "devices": a.devices, "payload": a.payload, "mix": a.mix, "journal_sync": a.sync, "probe_count": PROBE_COUNT,
        },
        "binary": binary,
        "modes": modes,
        "targets": targets,
    });
    if let Some(out) = &a.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {out}"))?;
        eprintln!("report written to {out} in {:.0} s", t.elapsed().as_secs_f64());
    }
    Ok(())
}
