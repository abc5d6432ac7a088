//! The command line of `nh-sim`: the clap arguments of every subcommand, the shared login and
//! test-clock flags, and the parsers of their values. No behaviour beyond reading flags.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use nh_sim::link::Credentials;
use nh_sim::load::PayloadSize;
use nh_sim::probe::Trigger;
use nh_sim::provisioning::Provisioning;
use nh_sim::{Clock, Format};

/// Environment variable holding the MQTT password for --username.
const PASSWORD_ENV: &str = "NH_SIM_PASSWORD";

/// Environment variable holding the MQTT password for --watch-username (without
/// --provisioning-file).
const WATCH_PASSWORD_ENV: &str = "NH_SIM_WATCH_PASSWORD";

#[derive(Parser)]
#[command(
    name = "nh-sim",
    version,
    about = "Simulated nursing-home devices speaking the gateway's wire formats"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
pub(crate) struct SerialArgs {
    /// Serial bench file (TOML, config/serial/*.toml).
    pub(crate) file: PathBuf,
    /// Directory of the links, one per bus (created if missing).
    #[arg(long, value_name = "DIR", required_unless_present = "check")]
    pub(crate) dir: Option<PathBuf>,
    /// Start the scripts on a `start` line on stdin; until then the devices stay as at t=0.
    #[arg(long)]
    pub(crate) wait_start: bool,
    /// Stop this many seconds after the start (default: on SIGTERM/SIGINT or when stdin closes).
    #[arg(long, value_name = "S")]
    pub(crate) duration_s: Option<f64>,
    /// Only validate the file and print a one-line summary.
    #[arg(long, conflicts_with_all = ["wait_start", "duration_s"])]
    pub(crate) check: bool,
}

#[derive(Args)]
pub(crate) struct ScenarioArgs {
    /// Scenario file (TOML).
    pub(crate) file: PathBuf,
    /// Broker address (the gateway's embedded broker).
    #[arg(long, value_name = "HOST:PORT", required_unless_present_any = ["dry_run", "info"])]
    pub(crate) broker: Option<String>,
    /// Print the message timeline (one JSON line each, after an info line) without a broker.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// With --dry-run: only the messages of devices the timeline names.
    #[arg(long, requires = "dry_run")]
    pub(crate) scripted_only: bool,
    /// Print how to run the scenario (site, start, time scale, registry, rules) as JSON.
    #[arg(long, conflicts_with = "dry_run")]
    pub(crate) info: bool,
    /// Real seconds to wait for alerts in flight after the last instant that matters (default:
    /// the file's grace_s, else 3).
    #[arg(long)]
    pub(crate) grace_s: Option<f64>,
    /// MQTT client id of the publisher (default the username with a login, else
    /// nh-sim-scenario-<pid>), and without --watch-username the prefix of the alerts
    /// subscriber's (`<id>-alerts`).
    #[arg(long)]
    pub(crate) client_id: Option<String>,
    #[command(flatten)]
    pub(crate) login: LoginArgs,
    /// Consumer identity the alerts subscriber logs in as (its username and client id); needed
    /// with a login, since one identity cannot hold two connections. Its password comes from
    /// --provisioning-file, else from $NH_SIM_WATCH_PASSWORD.
    #[arg(long, value_name = "NAME")]
    pub(crate) watch_username: Option<String>,
    #[command(flatten)]
    pub(crate) clock: ClockArgs,
}

/// The shared test clock (docs/contracts.md): virtual = START + SCALE x (now - ORIGIN).
#[derive(Args, Clone, Copy)]
pub(crate) struct ClockArgs {
    /// Real time (ms since epoch) at which the virtual clock read --test-clock-start.
    #[arg(long, value_name = "REAL_MS")]
    pub(crate) test_clock_origin: Option<i64>,
    /// Virtual time (ms since epoch) at --test-clock-origin.
    #[arg(long, value_name = "VIRTUAL_MS")]
    pub(crate) test_clock_start: Option<i64>,
    /// Virtual milliseconds per real millisecond.
    #[arg(long, value_name = "N")]
    pub(crate) time_scale: Option<f64>,
}

impl ClockArgs {
    pub(crate) fn clock(self) -> anyhow::Result<Clock> {
        Clock::from_flags(self.test_clock_origin, self.test_clock_start, self.time_scale)
    }

    /// The test clock when any of its flags is given.
    pub(crate) fn test_clock(self) -> anyhow::Result<Option<Clock>> {
        let given = self.test_clock_origin.is_some() || self.test_clock_start.is_some() || self.time_scale.is_some();
        given.then(|| self.clock()).transpose()
    }
}

#[derive(Args)]
pub(crate) struct RunArgs {
    /// Device registry file (TOML).
    #[arg(long)]
    pub(crate) registry: PathBuf,
    /// Broker address.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) broker: String,
    /// Virtual seconds of simulated time (default: run until interrupted).
    #[arg(long)]
    pub(crate) seconds: Option<u64>,
    /// Seed: same seed + registry + seconds = same messages.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// MQTT QoS of the telemetry publishes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub(crate) qos: u8,
    /// No pacing: publish as fast as the broker takes it (timestamps stay on the virtual schedule,
    /// starting at the virtual clock start).
    #[arg(long)]
    pub(crate) fast: bool,
    /// Write one JSON line per published message (canonical content) to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) record: Option<PathBuf>,
    /// MQTT client id (default: the username with a login, else nh-sim-<site>-<pid>).
    #[arg(long)]
    pub(crate) client_id: Option<String>,
    /// Mix rare realistic incidents (suspected falls, SOS presses) into the baseline.
    #[arg(long)]
    pub(crate) incidents: bool,
    /// Seconds to wait for outstanding PubAcks before reporting failure.
    #[arg(long, default_value_t = 30)]
    pub(crate) ack_timeout_s: u64,
    #[command(flatten)]
    pub(crate) login: LoginArgs,
    #[command(flatten)]
    pub(crate) clock: ClockArgs,
}

/// MQTT login: the password comes from the environment or a provisioning file, never from the
/// command line. With a login and no --client-id, the client id is the username.
#[derive(Args)]
pub(crate) struct LoginArgs {
    /// MQTT username; the password is read from $NH_SIM_PASSWORD, or with --provisioning-file
    /// from that file (then the identity to use among those it lists).
    #[arg(long)]
    pub(crate) username: Option<String>,
    /// Provisioning file with the MQTT secrets (`nh-gateway device-credentials
    /// --provisioning-file`, or the one `nh-gateway demo` writes): log in as its only identity,
    /// or as the one --username names.
    #[arg(long, value_name = "FILE")]
    pub(crate) provisioning_file: Option<PathBuf>,
}

/// The logins of a command that opens a publisher and an alerts subscriber (`scenario`,
/// `alert-probe`). `Debug` shows the usernames, never a password.
#[derive(Debug)]
pub(crate) struct Logins {
    /// The publisher's login (a bridge identity), if any.
    pub(crate) publisher: Option<Credentials>,
    /// The alerts subscriber's login (a consumer identity, `--watch-username`), if any.
    pub(crate) watcher: Option<Credentials>,
}

/// Reads an environment variable (unset or not UTF-8: `None`).
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl LoginArgs {
    pub(crate) fn credentials(&self) -> anyhow::Result<Option<Credentials>> {
        let provisioning = self.provisioning()?;
        self.credentials_from(provisioning.as_ref(), &env_var)
    }

    /// The publisher's login and the alerts subscriber's (`watch_username`, from the same
    /// provisioning file or from $NH_SIM_WATCH_PASSWORD); see `logins_from`.
    pub(crate) fn with_watcher(&self, watch_username: Option<&str>) -> anyhow::Result<Logins> {
        let provisioning = self.provisioning()?;
        self.logins_from(watch_username, provisioning.as_ref(), &env_var)
    }

    fn provisioning(&self) -> anyhow::Result<Option<Provisioning>> {
        self.provisioning_file.as_deref().map(Provisioning::load).transpose()
    }

    /// The login, given the provisioning file (already read) and the environment `env`.
    fn credentials_from(
        &self,
        provisioning: Option<&Provisioning>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Option<Credentials>> {
        if let Some(p) = provisioning {
            return p.credentials(self.username.as_deref()).map(Some);
        }
        let Some(username) = &self.username else {
            return Ok(None);
        };
        let password = env(PASSWORD_ENV).with_context(|| format!("--username needs ${PASSWORD_ENV}"))?;
        Ok(Some(Credentials {
            username: username.clone(),
            password,
        }))
    }

    /// The two logins of a publisher and its alerts subscriber, given the provisioning file
    /// (already read) and the environment `env`:
    /// - the publisher's as [`LoginArgs::credentials`] reads it, except that a provisioning file
    ///   whose identities are the watch identity and one other logs the publisher in as that
    ///   other without --username;
    /// - the subscriber's: `watch_username` with its secret from the provisioning file, or
    ///   without a file from $NH_SIM_WATCH_PASSWORD.
    ///
    /// A publisher login without a watch login is an error (the gateway ties client ids to
    /// usernames and one identity cannot hold two connections), and so is the same identity
    /// for both. Neither login (anonymous, as on a gateway's loopback) is fine.
    fn logins_from(
        &self,
        watch_username: Option<&str>,
        provisioning: Option<&Provisioning>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Logins> {
        let publisher = match (provisioning, self.username.as_deref(), watch_username) {
            (Some(p), None, Some(watch)) => {
                let others: Vec<&str> = p.names().filter(|n| *n != watch).collect();
                match others.as_slice() {
                    [only] => Some(p.credentials(Some(*only))?),
                    _ => self.credentials_from(provisioning, env)?,
                }
            }
            _ => self.credentials_from(provisioning, env)?,
        };
        let watcher = match (watch_username, provisioning) {
            (None, _) => None,
            (Some(watch), Some(p)) => Some(
                p.credentials(Some(watch))
                    .context("the alerts subscriber's login (--watch-username)")?,
            ),
            (Some(watch), None) => Some(Credentials {
                username: watch.to_owned(),
                password: env(WATCH_PASSWORD_ENV)
                    .with_context(|| format!("--watch-username needs ${WATCH_PASSWORD_ENV}"))?,
            }),
        };
        match (&publisher, &watcher) {
            (Some(p), None) => bail!(
                "the alerts subscriber needs a consumer identity of its own: give --watch-username NAME \
                 (a [[consumers]] identity of the gateway allowed nh/{{site}}/alerts, its secret in the \
                 same --provisioning-file or in ${WATCH_PASSWORD_ENV}); the publisher logs in as `{}`, \
                 and one identity cannot hold two connections",
                p.username
            ),
            (Some(p), Some(w)) if p.username == w.username => bail!(
                "--watch-username `{}` is the publisher's identity too: the alerts subscriber needs a \
                 consumer identity of its own (one identity cannot hold two connections)",
                w.username
            ),
            _ => {}
        }
        Ok(Logins { publisher, watcher })
    }
}

#[derive(Args)]
pub(crate) struct LoadArgs {
    /// Broker address.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) broker: String,
    /// Offered messages per second.
    #[arg(long)]
    pub(crate) rate: f64,
    /// Length of the send phase in seconds.
    #[arg(long)]
    pub(crate) seconds: f64,
    /// MQTT QoS.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub(crate) qos: u8,
    /// Simulated devices load-0000...
    #[arg(long, default_value_t = 100)]
    pub(crate) devices: usize,
    /// Site id in canonical topics.
    #[arg(long, default_value = "nh-demo")]
    pub(crate) site: String,
    /// Wire format: canonical or zigbee2mqtt.
    #[arg(long, default_value = "canonical", value_parser = parse_format)]
    pub(crate) format: Format,
    /// MQTT client id (default: the username with a login, else nh-sim-load-<pid>); give a fixed
    /// one with --clean-session false.
    #[arg(long)]
    pub(crate) client_id: Option<String>,
    /// MQTT clean session: `false` asks the broker to keep the session across reconnects (and
    /// across its restarts, if it persists sessions).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub(crate) clean_session: bool,
    /// Seconds to wait for outstanding PubAcks after the send phase.
    #[arg(long, visible_alias = "ack-timeout", default_value_t = 30.0, value_name = "S")]
    pub(crate) ack_timeout_s: f64,
    /// Write `<device> <seq> <ts>` to FILE for every message the broker acknowledged (PUBACK),
    /// flushed every second and at the end. Needs --qos 1.
    #[arg(long, value_name = "FILE")]
    pub(crate) record_acked: Option<PathBuf>,
    /// Reading size: `small` (2 metrics, ~90 bytes) or `typical` (7 metrics, ~150 bytes).
    #[arg(long, default_value = "small", value_parser = parse_payload)]
    pub(crate) payload: PayloadSize,
    /// Device classes by weight, e.g. `presence_radar=6,wearable=2,bed_sensor=1,door_contact=1,smoke_alarm=1`
    /// (device n's class is fixed; readings are quiet-night values no rule alerts on).
    #[arg(long, default_value = "presence_radar", value_parser = nh_sim::load::Mix::parse)]
    pub(crate) mix: nh_sim::load::Mix,
    #[command(flatten)]
    pub(crate) login: LoginArgs,
    #[command(flatten)]
    pub(crate) clock: ClockArgs,
}

#[derive(Args)]
pub(crate) struct SinkArgs {
    /// Broker address.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) broker: String,
    /// Topic filter.
    #[arg(long, default_value = "nh/+/+/telemetry")]
    pub(crate) filter: String,
    /// Subscription QoS.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub(crate) qos: u8,
    /// Stop after this many messages.
    #[arg(long)]
    pub(crate) count: Option<u64>,
    /// Stop after this many seconds in any case.
    #[arg(long, default_value_t = 600.0, value_name = "S")]
    pub(crate) max_wait_s: f64,
    /// Stop once nothing arrived for this many seconds after the first message.
    #[arg(long, default_value_t = 3.0, value_name = "S")]
    pub(crate) idle_s: f64,
    /// MQTT client id (default: the username with a login, else nh-sim-sink-<pid>).
    #[arg(long)]
    pub(crate) client_id: Option<String>,
    #[command(flatten)]
    pub(crate) login: LoginArgs,
}

#[derive(Args)]
pub(crate) struct RecordArgs {
    /// Broker address.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) broker: String,
    /// Topic filter; repeat for several (default: everything).
    #[arg(long = "filter", default_values_t = vec!["#".to_owned()])]
    pub(crate) filters: Vec<String>,
    /// Subscription QoS.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub(crate) qos: u8,
    /// The capture file to write.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// Stop after this many seconds.
    #[arg(long, value_name = "S")]
    pub(crate) duration_s: Option<f64>,
    /// Stop after this many messages.
    #[arg(long)]
    pub(crate) count: Option<u64>,
    /// MQTT client id (default: the username with a login, else nh-sim-record-<pid>).
    #[arg(long)]
    pub(crate) client_id: Option<String>,
    #[command(flatten)]
    pub(crate) login: LoginArgs,
    /// Receive times on this clock (a capture of a time-scaled run then carries virtual times).
    #[command(flatten)]
    pub(crate) clock: ClockArgs,
}

#[derive(Args)]
pub(crate) struct ReplayArgs {
    /// The capture file (`nh-sim record --out`).
    pub(crate) file: PathBuf,
    /// Broker address.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) broker: String,
    /// Original spacing divided by N (1 = as recorded).
    #[arg(long, default_value_t = 1.0, conflicts_with = "as_fast_as_possible")]
    pub(crate) speed: f64,
    /// No pacing: as fast as the broker acknowledges.
    #[arg(long)]
    pub(crate) as_fast_as_possible: bool,
    /// Times through the capture.
    #[arg(long = "loop", default_value_t = 1, value_name = "N")]
    pub(crate) loops: u32,
    /// Seconds to wait for the last acknowledgements.
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    pub(crate) ack_wait_s: f64,
    /// MQTT client id (default: the username with a login, else nh-sim-replay-<pid>).
    #[arg(long)]
    pub(crate) client_id: Option<String>,
    #[command(flatten)]
    pub(crate) login: LoginArgs,
    /// Lay the capture onto this test clock from its current time: paced at its scale, device
    /// times in the payloads shifted to match (--speed is then ignored).
    #[command(flatten)]
    pub(crate) clock: ClockArgs,
}

#[derive(Args)]
pub(crate) struct AnonymizeArgs {
    /// The capture to anonymize.
    pub(crate) file: PathBuf,
    /// The anonymized capture.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// The mapping original -> pseudonym (JSON; keep it private). Default: <out>.map.json.
    #[arg(long, value_name = "FILE")]
    pub(crate) map_out: Option<PathBuf>,
    /// The site's registry: its ids and friendly names are replaced too.
    #[arg(long, value_name = "FILE")]
    pub(crate) registry: Option<PathBuf>,
    /// Where the rewritten registry goes (needs --registry).
    #[arg(long, value_name = "FILE", requires = "registry")]
    pub(crate) registry_out: Option<PathBuf>,
    /// One more JSON key whose values identify a device; repeat. Always: imei IMEI deviceId
    /// device_id devEUI dev_eui devEui ieee_address ieeeAddr iccid imsi friendly_name.
    #[arg(long = "field")]
    pub(crate) fields: Vec<String>,
    /// Milliseconds added to every time in the capture.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub(crate) shift_ms: i64,
    /// Put before every pseudonym (`dev-0001` becomes `<prefix>dev-0001`), to anonymize an
    /// already anonymized capture again without mixing the two sets.
    #[arg(long, default_value = "")]
    pub(crate) prefix: String,
}

#[derive(Args)]
pub(crate) struct ProbeArgs {
    /// Broker address.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) broker: String,
    /// Site id.
    #[arg(long)]
    pub(crate) site: String,
    /// Device ids are <prefix><NNNN>, numbered from --first.
    #[arg(long, default_value = "smoke-")]
    pub(crate) prefix: String,
    #[arg(long, default_value_t = 0)]
    pub(crate) first: u32,
    /// Devices to set off (one reading each).
    #[arg(long, default_value_t = 100)]
    pub(crate) count: u32,
    /// `smoke` (smoke=true) or `sos` (sos=true).
    #[arg(long, default_value = "smoke", value_parser = parse_trigger)]
    pub(crate) trigger: Trigger,
    /// Seconds over which the readings are spread.
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    pub(crate) span_s: f64,
    /// Seconds to wait for the last alerts.
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    pub(crate) grace_s: f64,
    /// Prefix of the client ids (`<id>-sub`, `<id>-pub`; default nh-sim-probe-<pid>); with a
    /// login and no --client-id the publisher's id is the username, and with --watch-username
    /// the subscriber's is that name.
    #[arg(long)]
    pub(crate) client_id: Option<String>,
    #[command(flatten)]
    pub(crate) login: LoginArgs,
    /// Consumer identity the alerts subscriber logs in as (its username and client id); needed
    /// with a login, since one identity cannot hold two connections. Its password comes from
    /// --provisioning-file, else from $NH_SIM_WATCH_PASSWORD.
    #[arg(long, value_name = "NAME")]
    pub(crate) watch_username: Option<String>,
}

fn parse_payload(s: &str) -> Result<PayloadSize, String> {
    PayloadSize::parse(s).ok_or_else(|| format!("unknown payload size `{s}` (small or typical)"))
}

fn parse_trigger(s: &str) -> Result<Trigger, String> {
    Trigger::parse(s).ok_or_else(|| format!("unknown trigger `{s}` (smoke or sos)"))
}

#[derive(Args)]
pub(crate) struct GenArgs {
    /// Site id.
    #[arg(long)]
    pub(crate) site: String,
    #[arg(long, default_value_t = 1)]
    pub(crate) buildings: u32,
    #[arg(long, default_value_t = 3)]
    pub(crate) floors: u32,
    #[arg(long, default_value_t = 20)]
    pub(crate) rooms_per_floor: u32,
    /// Share (0..1) of Zigbee-capable devices connected through Zigbee2MQTT.
    #[arg(long, default_value_t = 0.5)]
    pub(crate) zigbee_share: f64,
    /// Seed for resident ids, care flags and the Zigbee choice.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Also list N devices load-0000.. for `nh-sim load` against this registry.
    #[arg(long, default_value_t = 0)]
    pub(crate) load_devices: u32,
    /// Wire format of the load devices.
    #[arg(long, default_value = "canonical", value_parser = parse_format)]
    pub(crate) load_format: Format,
}

fn parse_format(s: &str) -> Result<Format, String> {
    Format::parse(s).ok_or_else(|| format!("unknown format `{s}` (canonical or zigbee2mqtt)"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    const BRIDGE_SECRET: &str = "00112233445566778899aabbccddeeff00112233";
    const WATCH_SECRET: &str = "ffeeddccbbaa99887766554433221100ffeeddcc";
    const BRIDGE_ENV_SECRET: &str = "bridge-secret-from-the-environment";
    const WATCH_ENV_SECRET: &str = "watch-secret-from-the-environment";

    fn login(username: Option<&str>) -> LoginArgs {
        LoginArgs {
            username: username.map(str::to_owned),
            provisioning_file: None,
        }
    }

    /// $NH_SIM_PASSWORD and $NH_SIM_WATCH_PASSWORD both set.
    fn both_env(name: &str) -> Option<String> {
        match name {
            PASSWORD_ENV => Some(BRIDGE_ENV_SECRET.to_owned()),
            WATCH_PASSWORD_ENV => Some(WATCH_ENV_SECRET.to_owned()),
            _ => None,
        }
    }

    /// Only $NH_SIM_PASSWORD set.
    fn bridge_env(name: &str) -> Option<String> {
        (name == PASSWORD_ENV).then(|| BRIDGE_ENV_SECRET.to_owned())
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn provisioning(entries: &[(&str, &str)]) -> Provisioning {
        let text: String = entries
            .iter()
            .map(|(name, secret)| format!("[[identities]]\nname = \"{name}\"\nsecret = \"{secret}\"\n\n"))
            .collect();
        Provisioning::parse(&text).expect("parses")
    }

    /// The file `nh-gateway device-credentials --identity nh-sim --identity nh-sim-watch` writes.
    fn bridge_and_watch() -> Provisioning {
        provisioning(&[("nh-sim", BRIDGE_SECRET), ("nh-sim-watch", WATCH_SECRET)])
    }

    fn names(l: &Logins) -> (Option<&str>, Option<&str>) {
        (
            l.publisher.as_ref().map(|c| c.username.as_str()),
            l.watcher.as_ref().map(|c| c.username.as_str()),
        )
    }

    fn passwords(l: &Logins) -> (Option<&str>, Option<&str>) {
        (
            l.publisher.as_ref().map(|c| c.password.as_str()),
            l.watcher.as_ref().map(|c| c.password.as_str()),
        )
    }

    #[test]
    fn without_any_login_both_connections_stay_anonymous() {
        let l = login(None).logins_from(None, None, &both_env).expect("anonymous");
        assert_eq!(names(&l), (None, None));
    }

    #[test]
    fn the_watch_login_comes_from_its_own_environment_variable() {
        let l = login(Some("nh-sim"))
            .logins_from(Some("nh-sim-watch"), None, &both_env)
            .expect("two logins");
        assert_eq!(names(&l), (Some("nh-sim"), Some("nh-sim-watch")));
        assert_eq!(passwords(&l), (Some(BRIDGE_ENV_SECRET), Some(WATCH_ENV_SECRET)));
        // An anonymous publisher (a gateway's loopback) beside a logged-in subscriber.
        let l = login(None)
            .logins_from(Some("nh-sim-watch"), None, &both_env)
            .expect("watch login only");
        assert_eq!(names(&l), (None, Some("nh-sim-watch")));
        assert_eq!(passwords(&l), (None, Some(WATCH_ENV_SECRET)));
    }

    #[test]
    fn a_watch_username_without_its_password_is_an_error_naming_the_variable() {
        let e = login(Some("nh-sim"))
            .logins_from(Some("nh-sim-watch"), None, &bridge_env)
            .expect_err("no watch password");
        assert!(format!("{e:#}").contains("$NH_SIM_WATCH_PASSWORD"), "{e:#}");
        let e = login(Some("nh-sim"))
            .logins_from(Some("nh-sim-watch"), None, &no_env)
            .expect_err("no password at all");
        assert!(format!("{e:#}").contains("$NH_SIM_PASSWORD"), "{e:#}");
    }

    #[test]
    fn a_publisher_login_without_a_watch_login_is_refused_early() {
        let e = login(Some("nh-sim"))
            .logins_from(None, None, &both_env)
            .expect_err("subscriber without identity");
        let e = format!("{e:#}");
        assert!(e.contains("--watch-username") && e.contains("consumer identity"), "{e}");
        assert!(e.contains("`nh-sim`") && !e.contains(BRIDGE_ENV_SECRET), "{e}");
        let p = bridge_and_watch();
        let e = login(Some("nh-sim"))
            .logins_from(None, Some(&p), &no_env)
            .expect_err("subscriber without identity");
        let e = format!("{e:#}");
        assert!(e.contains("--watch-username"), "{e}");
        assert!(!e.contains(BRIDGE_SECRET) && !e.contains(WATCH_SECRET), "{e}");
    }

    #[test]
    fn one_identity_for_both_connections_is_refused() {
        let e = login(Some("nh-sim"))
            .logins_from(Some("nh-sim"), None, &both_env)
            .expect_err("same identity");
        assert!(format!("{e:#}").contains("`nh-sim`"), "{e:#}");
        let p = bridge_and_watch();
        let e = login(Some("nh-sim-watch"))
            .logins_from(Some("nh-sim-watch"), Some(&p), &no_env)
            .expect_err("same identity");
        assert!(format!("{e:#}").contains("consumer identity"), "{e:#}");
        // A file with the watch identity only: the publisher would be it as well.
        let p = provisioning(&[("nh-sim-watch", WATCH_SECRET)]);
        assert!(login(None)
            .logins_from(Some("nh-sim-watch"), Some(&p), &no_env)
            .is_err());
    }

    #[test]
    fn both_secrets_come_from_one_provisioning_file() {
        let p = bridge_and_watch();
        for username in [Some("nh-sim"), None] {
            // Without --username the publisher is the file's other identity; the environment is
            // not read when there is a file.
            let l = login(username)
                .logins_from(Some("nh-sim-watch"), Some(&p), &both_env)
                .expect("two logins");
            assert_eq!(names(&l), (Some("nh-sim"), Some("nh-sim-watch")));
            assert_eq!(passwords(&l), (Some(BRIDGE_SECRET), Some(WATCH_SECRET)));
        }
    }

    #[test]
    fn provisioning_file_errors_name_the_identities_and_never_a_secret() {
        // The watch identity missing from the file.
        let p = provisioning(&[("nh-sim", BRIDGE_SECRET)]);
        let e = login(None)
            .logins_from(Some("nh-sim-watch"), Some(&p), &no_env)
            .expect_err("no watch identity");
        let e = format!("{e:#}");
        assert!(e.contains("--watch-username") && e.contains("`nh-sim-watch`"), "{e}");
        assert!(!e.contains(BRIDGE_SECRET), "{e}");
        // Two candidates for the publisher: --username must choose.
        let p = provisioning(&[
            ("nh-sim", BRIDGE_SECRET),
            ("bed-101", BRIDGE_SECRET),
            ("nh-sim-watch", WATCH_SECRET),
        ]);
        let e = login(None)
            .logins_from(Some("nh-sim-watch"), Some(&p), &no_env)
            .expect_err("ambiguous publisher");
        let e = format!("{e:#}");
        assert!(e.contains("--username") && e.contains("`bed-101`"), "{e}");
        assert!(!e.contains(BRIDGE_SECRET) && !e.contains(WATCH_SECRET), "{e}");
        let l = login(Some("bed-101"))
            .logins_from(Some("nh-sim-watch"), Some(&p), &no_env)
            .expect("chosen");
        assert_eq!(names(&l), (Some("bed-101"), Some("nh-sim-watch")));
    }

    #[test]
    fn logins_debug_shows_names_not_secrets() {
        let p = bridge_and_watch();
        let l = login(None)
            .logins_from(Some("nh-sim-watch"), Some(&p), &no_env)
            .expect("two logins");
        let debug = format!("{l:?}");
        assert!(debug.contains("nh-sim") && debug.contains("nh-sim-watch"), "{debug}");
        assert!(
            !debug.contains(BRIDGE_SECRET) && !debug.contains(WATCH_SECRET),
            "{debug}"
        );
    }

    #[test]
    fn the_single_login_is_read_as_before() {
        let c = login(Some("nh-sim"))
            .credentials_from(None, &both_env)
            .expect("env login")
            .expect("a login");
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("nh-sim", BRIDGE_ENV_SECRET)
        );
        let e = login(Some("nh-sim"))
            .credentials_from(None, &no_env)
            .expect_err("no password");
        assert!(e.to_string().contains("$NH_SIM_PASSWORD"), "{e}");
        assert!(login(None).credentials_from(None, &both_env).expect("none").is_none());
        let p = bridge_and_watch();
        let c = login(Some("nh-sim-watch"))
            .credentials_from(Some(&p), &no_env)
            .expect("file login")
            .expect("a login");
        assert_eq!(c.password, WATCH_SECRET);
    }

    #[test]
    fn scenario_and_alert_probe_take_a_watch_username() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "nh-sim",
            "scenario",
            "s.toml",
            "--broker",
            "127.0.0.1:1883",
            "--provisioning-file",
            "p.toml",
            "--watch-username",
            "nh-sim-watch",
        ])
        .expect("parses");
        let Command::Scenario(a) = cli.command else {
            panic!("not the scenario command")
        };
        assert_eq!(a.watch_username.as_deref(), Some("nh-sim-watch"));
        let cli = Cli::try_parse_from([
            "nh-sim",
            "alert-probe",
            "--broker",
            "127.0.0.1:1883",
            "--site",
            "nh-demo",
            "--username",
            "nh-sim",
            "--watch-username",
            "nh-sim-watch",
        ])
        .expect("parses");
        let Command::AlertProbe(a) = cli.command else {
            panic!("not the alert-probe command")
        };
        assert_eq!(a.watch_username.as_deref(), Some("nh-sim-watch"));
        assert_eq!(a.login.username.as_deref(), Some("nh-sim"));
    }
}
