//! `nh-gateway`: run a site, run the demo facility, validate configuration files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use nh_gateway::access::files::CredentialsFile;
use nh_gateway::app::{self, RunOptions};
use nh_gateway::auth;
use nh_gateway::clock::Clock;
use nh_gateway::config::{self, Env};
use nh_gateway::provisioning::{mosquitto, provision};

/// jemalloc instead of glibc's malloc: the buffers the embedded broker's log frees are reused
/// and returned instead of fragmenting per-thread arenas, so RSS stays flat under a steady load
/// (docs/memory.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "nh-gateway",
    version,
    about = "IoT ingestion gateway for smart nursing homes",
    // A flag given twice takes the last value (scripts append overrides to a base command).
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway of one site.
    Run {
        /// The site configuration file.
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Run a demo facility (3 floors x 20 rooms, simulated devices) on the embedded defaults
    /// (in a binary built with `--features demo`).
    Demo {
        /// Folder for the demo's journal, its configuration and MQTT credentials, and the
        /// simulated fleet's provisioning file (default: a new temporary folder).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Simulated devices report this many times faster than real life.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Check configuration files (site configurations and the registries they name); lists every error.
    Validate {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the fully commented default configuration.
    PrintDefaultConfig,
    /// Read a password from the first line of stdin and print its argon2id hash for
    /// `[[auth.operators]] password_hash`.
    HashPassword,
    /// Read an API token from the first line of stdin (or generate one with --generate) and
    /// print its SHA-256 for `[[auth.tokens]] token_sha256`.
    HashToken {
        /// Make a new random token; prints `token=... token_sha256=...`.
        #[arg(long)]
        generate: bool,
    },
    /// Make new MQTT secrets for identities (devices by registry id, bridges and consumers of
    /// the identities file): their salted hashes go into the credentials file, replacing older
    /// ones; the secrets are printed once (`NAME SECRET` lines), or written to a provisioning file.
    DeviceCredentials {
        /// The site configuration file.
        #[arg(long)]
        config: PathBuf,
        /// An identity to make a secret for; repeat for several.
        #[arg(long = "identity", value_name = "NAME")]
        identity: Vec<String>,
        /// Every identity of the site.
        #[arg(long, conflicts_with = "identity")]
        all: bool,
        /// Only the identities that have no credentials yet.
        #[arg(long)]
        missing: bool,
        /// Write the secrets into this file (mode 0600, merged with what it holds) instead of
        /// printing them.
        #[arg(long, value_name = "FILE")]
        provisioning_file: Option<PathBuf>,
    },
    /// Write a Mosquitto password file, ACL file and mosquitto.conf snippet granting the site's
    /// identities and the gateway's own connections what the embedded broker grants them.
    MosquittoConfig {
        /// The site configuration file.
        #[arg(long)]
        config: PathBuf,
        /// A folder of its own for `passwords`, `acl` and `mosquitto.conf` (created if missing;
        /// `include_dir` reads every `.conf` file in it).
        #[arg(long)]
        out: PathBuf,
        /// Mosquitto's `persistence_location`.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/mosquitto/")]
        persistence_location: PathBuf,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// HTTP listen address (port 0: pick a free port).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Embedded MQTT broker listen address (port 0: pick a free port).
    #[arg(long)]
    mqtt: Option<SocketAddr>,
    /// Test clock: the real time (ms) at which the virtual clock reads --test-clock-start.
    #[arg(long, requires_all = ["test_clock_start", "time_scale"])]
    test_clock_origin: Option<i64>,
    /// Test clock: the virtual time (ms) at --test-clock-origin.
    #[arg(long, requires_all = ["test_clock_origin", "time_scale"])]
    test_clock_start: Option<i64>,
    /// Test clock: how many virtual ms pass per real ms.
    #[arg(long, requires_all = ["test_clock_origin", "test_clock_start"])]
    time_scale: Option<f64>,
}

impl Common {
    fn options(&self) -> anyhow::Result<RunOptions> {
        let clock = match (self.test_clock_origin, self.test_clock_start, self.time_scale) {
            (Some(o), Some(s), Some(n)) => {
                anyhow::ensure!(n > 0.0 && n.is_finite(), "--time-scale must be a positive number");
                Some(Clock::test(o, s, n))
            }
            _ => None,
        };
        Ok(RunOptions {
            http: self.http,
            mqtt: self.mqtt,
            clock,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nh-gateway: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn,rumqttc=warn"));
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours for a terminal only: a service's log file or journal gets plain text.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(filter),
        )
        // Counts messages lost inside the embedded broker, whatever NH_LOG lets through.
        .with(nh_gateway::sources::broker::overrun_layer())
        .init();
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::PrintDefaultConfig => {
            print!("{}", config::DEFAULT_CONFIG);
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { files } => Ok(validate(&files)),
        Command::HashPassword => {
            let password = stdin_line()?;
            anyhow::ensure!(password.chars().count() >= 8, "a password needs at least 8 characters");
            println!("{}", auth::hash_password(&password).map_err(|e| anyhow::anyhow!(e))?);
            Ok(ExitCode::SUCCESS)
        }
        Command::HashToken { generate: true } => {
            let token = auth::generate_token().map_err(|e| anyhow::anyhow!(e))?;
            println!("token={token} token_sha256={}", auth::token_digest_hex(&token));
            Ok(ExitCode::SUCCESS)
        }
        Command::HashToken { generate: false } => {
            let token = stdin_line()?;
            anyhow::ensure!(
                token.len() >= 20,
                "a token needs at least 20 characters (use --generate)"
            );
            println!("{}", auth::token_digest_hex(&token));
            Ok(ExitCode::SUCCESS)
        }
        Command::DeviceCredentials {
            config: path,
            identity,
            all,
            missing,
            provisioning_file,
        } => device_credentials(&path, &identity, all, missing, provisioning_file.as_deref()),
        Command::MosquittoConfig {
            config: path,
            out,
            persistence_location,
        } => mosquitto_config(&path, &out, &persistence_location),
        Command::Run { config: path, common } => {
            let opts = common.options()?;
            let loaded = config::load(&path, &Env::from_process()).map_err(|e| anyhow::anyhow!("{e}"))?;
            runtime()?.block_on(serve(loaded, opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { data, speed, common } => run_demo(data, speed, &common),
    }
}

/// `demo`: the demo facility, with its simulated fleet.
#[cfg(feature = "demo")]
fn run_demo(data: Option<PathBuf>, speed: f64, common: &Common) -> anyhow::Result<ExitCode> {
    let opts = common.options()?;
    runtime()?.block_on(nh_gateway::demo::run(data, speed, opts))?;
    Ok(ExitCode::SUCCESS)
}

/// `demo` in a binary built without the simulator: refused, with the command that builds it.
#[cfg(not(feature = "demo"))]
fn run_demo(_data: Option<PathBuf>, _speed: f64, _common: &Common) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "the demo is not built into this binary: build it with `cargo run --release -p nh-gateway --features demo -- demo`"
    )
}

/// `device-credentials`: new secrets for the named identities (or all, or those without any).
fn device_credentials(
    config_path: &Path,
    names: &[String],
    all: bool,
    missing: bool,
    provisioning_file: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        all || !names.is_empty(),
        "name the identities with --identity NAME (repeated), or give --all"
    );
    let loaded = provision::load_site(config_path)?;
    let config_dir = provision::config_dir(config_path);
    let policy = provision::load_policy(&loaded);
    let selected = provision::select(&policy, names, all, missing)?;
    if selected.is_empty() {
        eprintln!("every identity named has credentials already: nothing to do");
        return Ok(ExitCode::SUCCESS);
    }
    let credentials = loaded.config.mqtt.access.credentials_path(config_dir);
    let pairs = provision::provision(&credentials, &selected, provisioning_file)?;
    match provisioning_file {
        Some(file) => println!(
            "{} secret(s) written to {} (mode 0600); their hashes are in {}",
            pairs.len(),
            file.display(),
            credentials.display()
        ),
        None => {
            for (name, secret) in &pairs {
                println!("{name} {secret}");
            }
            eprintln!(
                "{} secret(s) above, shown this once: {} keeps only their salted hashes, and the gateway \
                 cannot show a secret again (make a new one instead).",
                pairs.len(),
                credentials.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `mosquitto-config`: the site's identities and rights as Mosquitto files in `out`.
fn mosquitto_config(config_path: &Path, out: &Path, persistence_location: &Path) -> anyhow::Result<ExitCode> {
    let loaded = provision::load_site(config_path)?;
    let config_dir = provision::config_dir(config_path);
    let policy = provision::load_policy(&loaded);
    let credentials_path = loaded.config.mqtt.access.credentials_path(config_dir);
    let credentials = CredentialsFile::load(&credentials_path)?;
    let gateway = mosquitto::gateway_users(&loaded.config, config_dir)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out_dir = std::fs::canonicalize(out).with_context(|| format!("reading {}", out.display()))?;
    let settings = mosquitto::MosquittoSettings {
        out_dir: out_dir.clone(),
        persistence_location: persistence_location.to_owned(),
        max_inflight_messages: loaded.config.mqtt.inflight,
        port: loaded.config.mqtt.port,
    };
    let files = mosquitto::render(&policy, &credentials, &gateway, &settings);
    for w in &files.warnings {
        eprintln!("warning: {w}");
    }
    mosquitto::write(&out_dir, &files)?;
    if loaded.config.mqtt.mode != config::MqttMode::External {
        eprintln!("note: [mqtt] mode is not \"external\": the gateway uses these users only with mode = \"external\"");
    }
    let users = files.passwords.lines().count();
    println!(
        "wrote {dir}/passwords ({users} users), {dir}/acl and {dir}/mosquitto.conf\n\
         Include the snippet from mosquitto.conf with `include_dir {dir}` (or copy its lines there), make\n\
         `passwords` and `acl` readable by the user Mosquitto runs as (they are mode 0600), and restart\n\
         Mosquitto. Run this command again after device-credentials or a registry change.",
        dir = out_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The first line of stdin, without its line end.
fn stdin_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading stdin")?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(!line.is_empty(), "nothing on stdin");
    Ok(line)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn serve(loaded: config::Loaded, opts: RunOptions) -> anyhow::Result<()> {
    let mut running = app::start(loaded, opts).await?;
    println!("{}", running.ready_line());
    let failed = tokio::select! {
        _ = app::wait_for_signal() => None,
        f = running.stage_failed() => Some(f),
    };
    running.shutdown().await;
    match failed {
        // Non-zero: the service manager starts the gateway again; the journal makes that safe.
        Some(f) => Err(anyhow::anyhow!("{f}")),
        None => Ok(()),
    }
}

/// Validates each file: a site configuration (it has a `[site]` table) with its registry, or a
/// registry on its own (it has `[[devices]]`).
fn validate(files: &[PathBuf]) -> ExitCode {
    let env = Env::default();
    let mut failed = false;
    for f in files {
        match config::validate_file(f, &env) {
            Ok(summary) => println!("{}: ok ({summary})", f.display()),
            Err(errors) => {
                failed = true;
                eprint!("{errors}");
            }
        }
    }
    if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}
