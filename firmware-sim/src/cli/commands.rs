//! One function per `nh-sim` subcommand: turn its arguments into the library's options, run it
//! (on a runtime of its own when it is async), print its summary, and choose the exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use nh_sim::capture;
use nh_sim::facility::{self, FacilityOptions};
use nh_sim::probe::{run_probe, ProbeOptions};
use nh_sim::scenario::{self, ScenarioOptions};
use nh_sim::serial::{self, BenchOptions};
use nh_sim::sink::{run_sink, SinkOptions};
use nh_sim::{registry, run_fleet, run_load, Fleet, LoadOptions, RunOptions};

use super::args::{
    AnonymizeArgs, GenArgs, LoadArgs, ProbeArgs, RecordArgs, ReplayArgs, RunArgs, ScenarioArgs, SerialArgs, SinkArgs,
};

/// Exit code when the broker did not acknowledge every publish in time.
const EXIT_UNACKED: u8 = 3;

/// Exit code when a scenario ran but its expectations failed.
const EXIT_SCENARIO_FAILED: u8 = 2;

/// `validate`: every file checked as a serial bench, a scenario or a registry (by its content).
pub(crate) fn validate(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for file in files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let ok = if serial::is_bench(&text) {
            validate_bench(file)
        } else if scenario::is_scenario(&text) {
            validate_scenario(file)
        } else {
            validate_registry(file)
        };
        failed |= !ok;
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn validate_bench(file: &Path) -> bool {
    match serial::load(file) {
        Ok(b) => {
            println!("ok: {} ({})", file.display(), serial::summary(&b));
            true
        }
        Err(e) => {
            eprintln!("{e}");
            false
        }
    }
}

fn validate_scenario(file: &Path) -> bool {
    match scenario::load(file) {
        Ok(s) => {
            println!(
                "ok: {} (scenario `{}`, site {}, {} steps, {} expectations)",
                file.display(),
                s.name,
                s.registry.site,
                s.timeline.len(),
                s.expect.len()
            );
            true
        }
        Err(e) => {
            eprintln!("{e}");
            false
        }
    }
}

fn validate_registry(file: &Path) -> bool {
    match registry::load(file) {
        Ok(r) => {
            println!("ok: {} (site {}, {} devices)", file.display(), r.site, r.devices.len());
            true
        }
        Err(e) => {
            eprintln!("{e}");
            false
        }
    }
}

/// `scenario`: `--info`, `--dry-run`, or a run against a gateway judged by its alerts.
pub(crate) fn scenario(a: ScenarioArgs) -> anyhow::Result<ExitCode> {
    let sc = scenario::load(&a.file)?;
    if a.info {
        println!("{}", scenario::run::info(&sc));
        return Ok(ExitCode::SUCCESS);
    }
    if a.dry_run {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        scenario::dry_run(&sc, a.scripted_only, &mut out)?;
        std::io::Write::flush(&mut out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let logins = a.login.with_watcher(a.watch_username.as_deref())?;
    let opts = ScenarioOptions {
        clock: a.clock.test_clock()?,
        client_id: a.client_id,
        credentials: logins.publisher,
        watch_credentials: logins.watcher,
        grace_s: a.grace_s,
        ..ScenarioOptions::new(a.broker.unwrap_or_default())
    };
    let report = runtime()?.block_on(scenario::run_scenario(&sc, opts, shutdown_signal()))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if report.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_SCENARIO_FAILED)
    })
}

/// `gen-registry`: a demo facility's registry on stdout.
pub(crate) fn gen_registry(a: GenArgs) -> anyhow::Result<ExitCode> {
    let opts = FacilityOptions {
        site: a.site,
        buildings: a.buildings,
        floors: a.floors,
        rooms_per_floor: a.rooms_per_floor,
        zigbee_share: a.zigbee_share,
        seed: a.seed,
        load_devices: a.load_devices,
        load_format: a.load_format,
    };
    print!("{}", facility::generate(&opts, &opts.command_line())?);
    Ok(ExitCode::SUCCESS)
}

/// `run`: a registry's fleet published to a broker.
pub(crate) fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let fleet = Fleet::load(&a.registry)?;
    let opts = RunOptions {
        client_id: a.client_id,
        qos: a.qos,
        seed: a.seed,
        seconds: a.seconds,
        clock: a.clock.clock()?,
        fast: a.fast,
        record: a.record,
        ack_timeout: Duration::from_secs(a.ack_timeout_s),
        incidents: a.incidents,
        credentials: a.login.credentials()?,
        ..RunOptions::new(a.broker)
    };
    let summary = runtime()?.block_on(run_fleet(fleet, opts, shutdown_signal()))?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(if summary.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNACKED)
    })
}

/// `load`: open-loop load at a fixed offered rate.
pub(crate) fn load(a: LoadArgs) -> anyhow::Result<ExitCode> {
    if !(a.ack_timeout_s.is_finite() && a.ack_timeout_s >= 0.0) {
        anyhow::bail!("--ack-timeout-s must be a number of seconds >= 0");
    }
    let opts = LoadOptions {
        client_id: a.client_id,
        qos: a.qos,
        devices: a.devices,
        site: a.site,
        format: a.format,
        clock: a.clock.clock()?,
        ack_timeout: Duration::from_secs_f64(a.ack_timeout_s),
        credentials: a.login.credentials()?,
        clean_session: a.clean_session,
        record_acked: a.record_acked,
        payload: a.payload,
        mix: a.mix,
        ..LoadOptions::new(a.broker, a.rate, a.seconds)
    };
    let summary = runtime()?.block_on(run_load(opts, shutdown_signal()))?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(if summary.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNACKED)
    })
}

/// `sink`: a plain subscriber counting what the broker passes through.
pub(crate) fn sink(a: SinkArgs) -> anyhow::Result<ExitCode> {
    let opts = SinkOptions {
        broker: a.broker,
        client_id: a.client_id,
        filter: a.filter,
        qos: a.qos,
        count: a.count,
        max_wait: seconds("max-wait-s", a.max_wait_s)?,
        idle: seconds("idle-s", a.idle_s)?,
        credentials: a.login.credentials()?,
    };
    let summary = runtime()?.block_on(run_sink(opts, print_subscribed))?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(ExitCode::SUCCESS)
}

/// `record`: a broker's traffic written to a capture.
pub(crate) fn record(a: RecordArgs) -> anyhow::Result<ExitCode> {
    let opts = capture::RecordOptions {
        broker: a.broker,
        filters: a.filters,
        qos: a.qos,
        out: a.out,
        duration: a.duration_s.map(|s| seconds("duration-s", s)).transpose()?,
        count: a.count,
        client_id: a.client_id,
        credentials: a.login.credentials()?,
        clock: a.clock.clock()?,
    };
    let summary = runtime()?.block_on(capture::run_record(opts, print_subscribed, shutdown_signal()))?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(ExitCode::SUCCESS)
}

/// `replay`: a capture published again.
pub(crate) fn replay(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let opts = capture::ReplayOptions {
        broker: a.broker,
        file: a.file,
        speed: (!a.as_fast_as_possible).then_some(a.speed),
        loops: a.loops,
        client_id: a.client_id,
        credentials: a.login.credentials()?,
        ack_wait: seconds("ack-wait-s", a.ack_wait_s)?,
        clock: a.clock.test_clock()?,
    };
    let summary = runtime()?.block_on(capture::run_replay(opts))?;
    println!("{}", serde_json::to_string(&summary)?);
    if summary.failed > 0 || summary.acked < summary.qos1 {
        return Ok(ExitCode::from(EXIT_UNACKED));
    }
    Ok(ExitCode::SUCCESS)
}

/// `anonymize`: a capture with pseudonyms, its mapping apart.
pub(crate) fn anonymize(a: AnonymizeArgs) -> anyhow::Result<ExitCode> {
    let map_out = a.map_out.unwrap_or_else(|| {
        let mut p = a.out.clone().into_os_string();
        p.push(".map.json");
        PathBuf::from(p)
    });
    // Added to the defaults: naming one more field must not stop the others.
    let mut fields: Vec<String> = nh_sim::anonymize::DEFAULT_FIELDS
        .iter()
        .map(|f| (*f).to_owned())
        .collect();
    fields.extend(a.fields);
    let opts = nh_sim::anonymize::AnonymizeOptions {
        input: a.file,
        out: a.out,
        map_out,
        registry: a.registry,
        registry_out: a.registry_out,
        fields,
        shift_ms: a.shift_ms,
        prefix: a.prefix,
    };
    let summary = nh_sim::anonymize::run_anonymize(&opts)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(ExitCode::SUCCESS)
}

/// `alert-probe`: life-safety devices set off, their alerts timed.
pub(crate) fn alert_probe(a: ProbeArgs) -> anyhow::Result<ExitCode> {
    // Before anything connects: a login the subscriber cannot use fails here.
    let logins = a.login.with_watcher(a.watch_username.as_deref())?;
    let devices = (a.first..a.first.saturating_add(a.count))
        .map(|i| format!("{}{i:04}", a.prefix))
        .collect();
    let opts = ProbeOptions {
        broker: a.broker,
        site: a.site,
        client_id: a.client_id,
        devices,
        trigger: a.trigger,
        span: seconds("span-s", a.span_s)?,
        grace: seconds("grace-s", a.grace_s)?,
        credentials: logins.publisher,
        watch_credentials: logins.watcher,
    };
    let summary = runtime()?.block_on(run_probe(opts))?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(ExitCode::SUCCESS)
}

/// Tells the caller the subscription stands: `{"subscribed":true}` on stdout, flushed.
fn print_subscribed() {
    use std::io::Write;
    println!("{{\"subscribed\":true}}");
    let _ = std::io::stdout().flush();
}

fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    if !(s.is_finite() && s >= 0.0) {
        anyhow::bail!("--{flag} must be a number of seconds >= 0");
    }
    Ok(Duration::from_secs_f64(s))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Completes on Ctrl-C or SIGTERM (how test harnesses stop a process).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// What stdin said, read on a thread of its own (a blocked read must not hold up the runtime's
/// shutdown).
struct StdinControl {
    start: tokio::sync::oneshot::Receiver<()>,
    closed: tokio::sync::oneshot::Receiver<()>,
}

fn watch_stdin() -> StdinControl {
    let (start_tx, start) = tokio::sync::oneshot::channel();
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut start_tx = Some(start_tx);
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            match line.trim() {
                "start" => {
                    if let Some(tx) = start_tx.take() {
                        let _ = tx.send(());
                    }
                }
                "" => {}
                other => tracing::warn!(line = other, "unknown stdin command (only `start` is known)"),
            }
        }
        let _ = closed_tx.send(());
    });
    StdinControl { start, closed }
}

/// `serial`: serial devices played on ptys until a signal, the duration, or stdin closing.
pub(crate) fn serial(a: SerialArgs) -> anyhow::Result<ExitCode> {
    let bench = match serial::load(&a.file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if a.check {
        println!("ok: {} ({})", a.file.display(), serial::summary(&bench));
        return Ok(ExitCode::SUCCESS);
    }
    let duration = match a.duration_s {
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => anyhow::bail!("--duration-s must be > 0, got {s}"),
        None => None,
    };
    let opts = BenchOptions {
        dir: a.dir.context("--dir is required")?,
        duration,
    };
    let wait_start = a.wait_start;
    runtime()?.block_on(async move {
        let (lines_tx, mut lines_rx) = tokio::sync::mpsc::channel::<String>(serial::LINES_CAPACITY);
        let printer = tokio::spawn(async move {
            use std::io::Write;
            while let Some(line) = lines_rx.recv().await {
                let mut out = std::io::stdout().lock();
                // A closed stdout is no reason to stop the devices.
                let _ = writeln!(out, "{line}").and_then(|()| out.flush());
            }
        });
        let stdin = watch_stdin();
        let start = async move {
            // stdin closed before `start`: never start, the shutdown branch ends the bench.
            if wait_start && stdin.start.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let closed = stdin.closed;
        let shutdown = async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = closed => {}
            }
        };
        let result = serial::run_bench(&bench, &opts, start, shutdown, lines_tx).await;
        let _ = printer.await;
        result?;
        Ok(ExitCode::SUCCESS)
    })
}
