//! `nh-sim`: simulated devices for the nursing-home gateway.
//!
//! Commands: `run` (publish a registry's fleet), `load` (open-loop load), `sink` (a plain
//! subscriber, for the raw broker limit), `record`, `anonymize` and `replay` (captures of real traffic), `alert-probe` (alert latency), `gen-registry` (a demo
//! facility's registry), `scenario` (run a scenario against a gateway and judge its alerts),
//! `serial` (serial devices on ptys), `validate` (check registry, scenario and serial bench
//! files). Summaries go to stdout as one JSON line (`serial`: one line per pty, event and bus),
//! logs to stderr. Exit codes: 0 ok, 1 error, 2 scenario failed, 3 not every publish was
//! acknowledged.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use nh_sim::capture;
use nh_sim::facility::{self, FacilityOptions};
use nh_sim::link::Credentials;
use nh_sim::load::PayloadSize;
use nh_sim::probe::{run_probe, ProbeOptions, Trigger};
use nh_sim::scenario::{self, ScenarioOptions};
use nh_sim::serial::{self, BenchOptions};
use nh_sim::sink::{run_sink, SinkOptions};
use nh_sim::{registry, run_fleet, run_load, Clock, Fleet, Format, LoadOptions, RunOptions};

/// Exit code when the broker did not acknowledge every publish in time.
const EXIT_UNACKED: u8 = 3;

/// Exit code when a scenario ran but its expectations failed.
const EXIT_SCENARIO_FAILED: u8 = 2;

/// Environment variable holding the MQTT password for --username.
const PASSWORD_ENV: &str = "NH_SIM_PASSWORD";

#[derive(Parser)]
#[command(
    name = "nh-sim",
    version,
    about = "Simulated nursing-home devices speaking the gateway's wire formats"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish the fleet of a device registry to a broker.
    Run(RunArgs),
    /// Open-loop load at a fixed offered rate.
    Load(LoadArgs),
    /// A plain subscriber: counts and times what a broker passes through (the raw limit the
    /// gateway is measured against). Prints `{"subscribed":true}` once subscribed, then a JSON
    /// summary.
    Sink(SinkArgs),
    /// Record every message of any broker raw (topic, payload bytes, QoS, retain, receive time),
    /// one JSON line each after a header. Prints `{"subscribed":true}` once subscribed, then a
    /// JSON summary; stops after --duration-s, --count, or on SIGTERM/SIGINT.
    Record(RecordArgs),
    /// Publish a capture again, each topic in its order, with the original spacing divided by
    /// --speed (or as fast as the broker takes them); prints a JSON summary.
    Replay(ReplayArgs),
    /// Replace a capture's device ids, Zigbee friendly names and identifying JSON fields with
    /// consistent pseudonyms, shift its times, write the mapping apart and, with --registry,
    /// the registry rewritten to match.
    Anonymize(AnonymizeArgs),
    /// Sets off life-safety devices over a span and times each alert on nh/{site}/alerts.
    AlertProbe(ProbeArgs),
    /// Print the device registry of a demo facility (TOML).
    GenRegistry(GenArgs),
    /// Run a scenario (config/scenarios/*.toml) against a gateway's broker: publish the scripted
    /// fleet, collect the alerts on nh/{site}/alerts, print a JSON report; exit 0 on pass, 2 on fail.
    Scenario(ScenarioArgs),
    /// Play serial devices (Modbus RTU gas detectors, MR60FDA1 radars) on ptys, one stable link
    /// per bus in --dir. Prints `pty`, `ready`, `started`, `event` and `done` lines.
    Serial(SerialArgs),
    /// Validate device registry, scenario and serial bench files (a scenario has a [scenario]
    /// table, a bench [[buses]]): exit 0, or non-zero with every error listed.
    Validate {
        /// Registry, scenario or serial bench files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Args)]
struct SerialArgs {
    /// Serial bench file (TOML, config/serial/*.toml).
    file: PathBuf,
    /// Directory of the links, one per bus (created if missing).
    #[arg(long, value_name = "DIR", required_unless_present = "check")]
    dir: Option<PathBuf>,
    /// Start the scripts on a `start` line on stdin; until then the devices stay as at t=0.
    #[arg(long)]
    wait_start: bool,
    /// Stop this many seconds after the start (default: on SIGTERM/SIGINT or when stdin closes).
    #[arg(long, value_name = "S")]
    duration_s: Option<f64>,
    /// Only validate the file and print a one-line summary.
    #[arg(long, conflicts_with_all = ["wait_start", "duration_s"])]
    check: bool,
}

#[derive(Args)]
struct ScenarioArgs {
    /// Scenario file (TOML).
    file: PathBuf,
    /// Broker address (the gateway's embedded broker).
    #[arg(long, value_name = "HOST:PORT", required_unless_present_any = ["dry_run", "info"])]
    broker: Option<String>,
    /// Print the message timeline (one JSON line each, after an info line) without a broker.
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: only the messages of devices the timeline names.
    #[arg(long, requires = "dry_run")]
    scripted_only: bool,
    /// Print how to run the scenario (site, start, time scale, registry, rules) as JSON.
    #[arg(long, conflicts_with = "dry_run")]
    info: bool,
    /// Real seconds to wait for alerts in flight after the last instant that matters (default:
    /// the file's grace_s, else 3).
    #[arg(long)]
    grace_s: Option<f64>,
    /// MQTT client id prefix (default nh-sim-scenario-<pid>).
    #[arg(long)]
    client_id: Option<String>,
    #[command(flatten)]
    login: LoginArgs,
    #[command(flatten)]
    clock: ClockArgs,
}

/// The shared test clock (docs/contracts.md): virtual = START + SCALE x (now - ORIGIN).
#[derive(Args, Clone, Copy)]
struct ClockArgs {
    /// Real time (ms since epoch) at which the virtual clock read --test-clock-start.
    #[arg(long, value_name = "REAL_MS")]
    test_clock_origin: Option<i64>,
    /// Virtual time (ms since epoch) at --test-clock-origin.
    #[arg(long, value_name = "VIRTUAL_MS")]
    test_clock_start: Option<i64>,
    /// Virtual milliseconds per real millisecond.
    #[arg(long, value_name = "N")]
    time_scale: Option<f64>,
}

impl ClockArgs {
    fn clock(self) -> anyhow::Result<Clock> {
        Clock::from_flags(self.test_clock_origin, self.test_clock_start, self.time_scale)
    }

    /// The test clock when any of its flags is given.
    fn test_clock(self) -> anyhow::Result<Option<Clock>> {
        let given = self.test_clock_origin.is_some() || self.test_clock_start.is_some() || self.time_scale.is_some();
        given.then(|| self.clock()).transpose()
    }
}

#[derive(Args)]
struct RunArgs {
    /// Device registry file (TOML).
    #[arg(long)]
    registry: PathBuf,
    /// Broker address.
    #[arg(long, value_name = "HOST:PORT")]
    broker: String,
    /// Virtual seconds of simulated time (default: run until interrupted).
    #[arg(long)]
    seconds: Option<u64>,
    /// Seed: same seed + registry + seconds = same messages.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// MQTT QoS of the telemetry publishes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// No pacing: publish as fast as the broker takes it (timestamps stay on the virtual schedule,
    /// starting at the virtual clock start).
    #[arg(long)]
    fast: bool,
    /// Write one JSON line per published message (canonical content) to this file.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// MQTT client id (default nh-sim-<site>-<pid>).
    #[arg(long)]
    client_id: Option<String>,
    /// Mix rare realistic incidents (suspected falls, SOS presses) into the baseline.
    #[arg(long)]
    incidents: bool,
    /// Seconds to wait for outstanding PubAcks before reporting failure.
    #[arg(long, default_value_t = 30)]
    ack_timeout_s: u64,
    #[command(flatten)]
    login: LoginArgs,
    #[command(flatten)]
    clock: ClockArgs,
}

/// MQTT login: the password comes from the environment, never from the command line.
#[derive(Args)]
struct LoginArgs {
    /// MQTT username; the password is read from $NH_SIM_PASSWORD.
    #[arg(long)]
    username: Option<String>,
}

impl LoginArgs {
    fn credentials(&self) -> anyhow::Result<Option<Credentials>> {
        let Some(username) = &self.username else {
            return Ok(None);
        };
        let password = std::env::var(PASSWORD_ENV).with_context(|| format!("--username needs ${PASSWORD_ENV}"))?;
        Ok(Some(Credentials {
            username: username.clone(),
            password,
        }))
    }
}

#[derive(Args)]
struct LoadArgs {
    /// Broker address.
    #[arg(long, value_name = "HOST:PORT")]
    broker: String,
    /// Offered messages per second.
    #[arg(long)]
    rate: f64,
    /// Length of the send phase in seconds.
    #[arg(long)]
    seconds: f64,
    /// MQTT QoS.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Simulated devices load-0000...
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Site id in canonical topics.
    #[arg(long, default_value = "nh-demo")]
    site: String,
    /// Wire format: canonical or zigbee2mqtt.
    #[arg(long, default_value = "canonical", value_parser = parse_format)]
    format: Format,
    /// MQTT client id (default nh-sim-load-<pid>); give a fixed one with --clean-session false.
    #[arg(long)]
    client_id: Option<String>,
    /// MQTT clean session: `false` asks the broker to keep the session across reconnects (and
    /// across its restarts, if it persists sessions).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    clean_session: bool,
    /// Seconds to wait for outstanding PubAcks after the send phase.
    #[arg(long, visible_alias = "ack-timeout", default_value_t = 30.0, value_name = "S")]
    ack_timeout_s: f64,
    /// Write `<device> <seq> <ts>` to FILE for every message the broker acknowledged (PUBACK),
    /// flushed every second and at the end. Needs --qos 1.
    #[arg(long, value_name = "FILE")]
    record_acked: Option<PathBuf>,
    /// Reading size: `small` (2 metrics, ~90 bytes) or `typical` (7 metrics, ~150 bytes).
    #[arg(long, default_value = "small", value_parser = parse_payload)]
    payload: PayloadSize,
    /// Device classes by weight, e.g. `presence_radar=6,wearable=2,bed_sensor=1,door_contact=1,smoke_alarm=1`
    /// (device n's class is fixed; readings are quiet-night values no rule alerts on).
    #[arg(long, default_value = "presence_radar", value_parser = nh_sim::load::Mix::parse)]
    mix: nh_sim::load::Mix,
    #[command(flatten)]
    login: LoginArgs,
    #[command(flatten)]
    clock: ClockArgs,
}

#[derive(Args)]
struct SinkArgs {
    /// Broker address.
    #[arg(long, value_name = "HOST:PORT")]
    broker: String,
    /// Topic filter.
    #[arg(long, default_value = "nh/+/+/telemetry")]
    filter: String,
    /// Subscription QoS.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds in any case.
    #[arg(long, default_value_t = 600.0, value_name = "S")]
    max_wait_s: f64,
    /// Stop once nothing arrived for this many seconds after the first message.
    #[arg(long, default_value_t = 3.0, value_name = "S")]
    idle_s: f64,
    /// MQTT client id (default nh-sim-sink-<pid>).
    #[arg(long)]
    client_id: Option<String>,
    #[command(flatten)]
    login: LoginArgs,
}

#[derive(Args)]
struct RecordArgs {
    /// Broker address.
    #[arg(long, value_name = "HOST:PORT")]
    broker: String,
    /// Topic filter; repeat for several (default: everything).
    #[arg(long = "filter", default_values_t = vec!["#".to_owned()])]
    filters: Vec<String>,
    /// Subscription QoS.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// The capture file to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Stop after this many seconds.
    #[arg(long, value_name = "S")]
    duration_s: Option<f64>,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// MQTT client id (default nh-sim-record-<pid>).
    #[arg(long)]
    client_id: Option<String>,
    #[command(flatten)]
    login: LoginArgs,
    /// Receive times on this clock (a capture of a time-scaled run then carries virtual times).
    #[command(flatten)]
    clock: ClockArgs,
}

#[derive(Args)]
struct ReplayArgs {
    /// The capture file (`nh-sim record --out`).
    file: PathBuf,
    /// Broker address.
    #[arg(long, value_name = "HOST:PORT")]
    broker: String,
    /// Original spacing divided by N (1 = as recorded).
    #[arg(long, default_value_t = 1.0, conflicts_with = "as_fast_as_possible")]
    speed: f64,
    /// No pacing: as fast as the broker acknowledges.
    #[arg(long)]
    as_fast_as_possible: bool,
    /// Times through the capture.
    #[arg(long = "loop", default_value_t = 1, value_name = "N")]
    loops: u32,
    /// Seconds to wait for the last acknowledgements.
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    ack_wait_s: f64,
    /// MQTT client id (default nh-sim-replay-<pid>).
    #[arg(long)]
    client_id: Option<String>,
    #[command(flatten)]
    login: LoginArgs,
    /// Lay the capture onto this test clock from its current time: paced at its scale, device
    /// times in the payloads shifted to match (--speed is then ignored).
    #[command(flatten)]
    clock: ClockArgs,
}

#[derive(Args)]
struct AnonymizeArgs {
    /// The capture to anonymize.
    file: PathBuf,
    /// The anonymized capture.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The mapping original -> pseudonym (JSON; keep it private). Default: <out>.map.json.
    #[arg(long, value_name = "FILE")]
    map_out: Option<PathBuf>,
    /// The site's registry: its ids and friendly names are replaced too.
    #[arg(long, value_name = "FILE")]
    registry: Option<PathBuf>,
    /// Where the rewritten registry goes (needs --registry).
    #[arg(long, value_name = "FILE", requires = "registry")]
    registry_out: Option<PathBuf>,
    /// One more JSON key whose values identify a device; repeat. Always: imei IMEI deviceId
    /// device_id devEUI dev_eui devEui ieee_address ieeeAddr iccid imsi friendly_name.
    #[arg(long = "field")]
    fields: Vec<String>,
    /// Milliseconds added to every time in the capture.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    shift_ms: i64,
    /// Put before every pseudonym (`dev-0001` becomes `<prefix>dev-0001`), to anonymize an
    /// already anonymized capture again without mixing the two sets.
    #[arg(long, default_value = "")]
    prefix: String,
}

#[derive(Args)]
struct ProbeArgs {
    /// Broker address.
    #[arg(long, value_name = "HOST:PORT")]
    broker: String,
    /// Site id.
    #[arg(long)]
    site: String,
    /// Device ids are <prefix><NNNN>, numbered from --first.
    #[arg(long, default_value = "smoke-")]
    prefix: String,
    #[arg(long, default_value_t = 0)]
    first: u32,
    /// Devices to set off (one reading each).
    #[arg(long, default_value_t = 100)]
    count: u32,
    /// `smoke` (smoke=true) or `sos` (sos=true).
    #[arg(long, default_value = "smoke", value_parser = parse_trigger)]
    trigger: Trigger,
    /// Seconds over which the readings are spread.
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    span_s: f64,
    /// Seconds to wait for the last alerts.
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    grace_s: f64,
    /// MQTT client id (default nh-sim-probe-<pid>).
    #[arg(long)]
    client_id: Option<String>,
    #[command(flatten)]
    login: LoginArgs,
}

fn parse_payload(s: &str) -> Result<PayloadSize, String> {
    PayloadSize::parse(s).ok_or_else(|| format!("unknown payload size `{s}` (small or typical)"))
}

fn parse_trigger(s: &str) -> Result<Trigger, String> {
    Trigger::parse(s).ok_or_else(|| format!("unknown trigger `{s}` (smoke or sos)"))
}

fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    if !(s.is_finite() && s >= 0.0) {
        anyhow::bail!("--{flag} must be a number of seconds >= 0");
    }
    Ok(Duration::from_secs_f64(s))
}

#[derive(Args)]
struct GenArgs {
    /// Site id.
    #[arg(long)]
    site: String,
    #[arg(long, default_value_t = 1)]
    buildings: u32,
    #[arg(long, default_value_t = 3)]
    floors: u32,
    #[arg(long, default_value_t = 20)]
    rooms_per_floor: u32,
    /// Share (0..1) of Zigbee-capable devices connected through Zigbee2MQTT.
    #[arg(long, default_value_t = 0.5)]
    zigbee_share: f64,
    /// Seed for resident ids, care flags and the Zigbee choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also list N devices load-0000.. for `nh-sim load` against this registry.
    #[arg(long, default_value_t = 0)]
    load_devices: u32,
    /// Wire format of the load devices.
    #[arg(long, default_value = "canonical", value_parser = parse_format)]
    load_format: Format,
}

fn parse_format(s: &str) -> Result<Format, String> {
    Format::parse(s).ok_or_else(|| format!("unknown format `{s}` (canonical or zigbee2mqtt)"))
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttc=warn")),
        )
        .init();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { files } => {
            let mut failed = false;
            for file in &files {
                let text = std::fs::read_to_string(file).unwrap_or_default();
                if serial::is_bench(&text) {
                    match serial::load(file) {
                        Ok(b) => println!("ok: {} ({})", file.display(), serial::summary(&b)),
                        Err(e) => {
                            eprintln!("{e}");
                            failed = true;
                        }
                    }
                    continue;
                }
                if scenario::is_scenario(&text) {
                    match scenario::load(file) {
                        Ok(s) => println!(
                            "ok: {} (scenario `{}`, site {}, {} steps, {} expectations)",
                            file.display(),
                            s.name,
                            s.registry.site,
                            s.timeline.len(),
                            s.expect.len()
                        ),
                        Err(e) => {
                            eprintln!("{e}");
                            failed = true;
                        }
                    }
                    continue;
                }
                match registry::load(file) {
                    Ok(r) => println!("ok: {} (site {}, {} devices)", file.display(), r.site, r.devices.len()),
                    Err(e) => {
                        eprintln!("{e}");
                        failed = true;
                    }
                }
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Scenario(a) => {
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
            let c = a.clock;
            let clock = if c.test_clock_origin.is_some() || c.test_clock_start.is_some() || c.time_scale.is_some() {
                Some(c.clock()?)
            } else {
                None
            };
            let opts = ScenarioOptions {
                clock,
                client_id: a.client_id,
                credentials: a.login.credentials()?,
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
        Command::Serial(a) => run_serial(a),
        Command::GenRegistry(a) => {
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
        Command::Run(a) => {
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
        Command::Load(a) => {
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
        Command::Sink(a) => {
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
            let subscribed = || {
                use std::io::Write;
                println!("{{\"subscribed\":true}}");
                let _ = std::io::stdout().flush();
            };
            let summary = runtime()?.block_on(run_sink(opts, subscribed))?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Record(a) => {
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
            let subscribed = || {
                use std::io::Write;
                println!("{{\"subscribed\":true}}");
                let _ = std::io::stdout().flush();
            };
            let summary = runtime()?.block_on(capture::run_record(opts, subscribed, shutdown_signal()))?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(a) => {
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
        Command::Anonymize(a) => {
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
        Command::AlertProbe(a) => {
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
                credentials: a.login.credentials()?,
            };
            let summary = runtime()?.block_on(run_probe(opts))?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(ExitCode::SUCCESS)
        }
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

fn run_serial(a: SerialArgs) -> anyhow::Result<ExitCode> {
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
