//! The end-to-end test harness: real processes on free loopback ports with temporary folders.
//!
//! - [`TempDir`]: a temporary folder removed on drop (`tempfile`'s, with a label in its name).
//! - [`VictoriaMetrics`]: a real VictoriaMetrics server (Debian's `victoria-metrics`), read back
//!   through its export API.
//! - [`Mosquitto`]: a real Mosquitto broker for the external-broker mode.
//! - [`Gateway`]: the `nh-gateway` binary, started and waited for on its `ready` line
//!   ([`wait_ready`] reads that line from any gateway's stdout).
//! - [`sim`]: runs the `nh-sim` binary.
//! - MQTT access: every site a test writes without an `[mqtt.access]` section gets
//!   [`LOOPBACK_ACCESS`] (clients on 127.0.0.1 publish without credentials, as before access
//!   control); a test of access control writes its own section and identities file
//!   ([`write_site`]), provisions secrets with `nh-gateway device-credentials` ([`provision`],
//!   [`provision_all`]: [`Provisioned`]), writes the external broker's files with
//!   `nh-gateway mosquitto-config` ([`mosquitto_config`]) and starts Mosquitto on them
//!   ([`Mosquitto::start_generated`]).
//! - [`mqtt_cli`]: `mosquitto_pub` and `mosquitto_sub` as third-party clients.
//! - [`fault_proxy`]: an HTTP proxy in front of VictoriaMetrics that injects 5xx, timeouts and
//!   400s, to exercise the InfluxDB forwarder's error paths against the real database.
//! - helpers to read `/metrics` and to wait for a condition with a deadline ([`wait_for`],
//!   [`wait_until`]): tests wait for what they can observe, never for a fixed time.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub mod fault_proxy;
pub mod mqtt_cli;
pub mod webdriver;

/// The workspace root (this crate sits in `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A binary of the workspace, from the same profile folder as the running test.
pub fn bin(name: &str) -> PathBuf {
    // A test runs from target/<profile>/deps/, a harness binary from target/<profile>/: the
    // workspace binaries sit in target/<profile>/.
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins` with the same profile as the tests; scripts/test.sh does)",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (bound and released; the kernel does not hand it out again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A temporary folder, removed on drop unless `NH_KEEP_TMP` is set.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    /// A new empty folder under the system's temporary folder, named `nh-e2e-<label>-<random>`.
    pub fn new(label: &str) -> Result<Self> {
        let keep = std::env::var_os("NH_KEEP_TMP").is_some();
        let dir = tempfile::Builder::new()
            .prefix(&format!("nh-e2e-{label}-"))
            .disable_cleanup(keep)
            .tempdir()
            .with_context(|| format!("creating a temporary folder for {label}"))?;
        Ok(TempDir(dir))
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
    pub log: PathBuf,
}

impl Proc {
    /// The process's stderr log so far (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `probe` returns `Some`, polling every `every`, for at most `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, every: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_until(what, timeout, every, || {
        let answer = probe();
        async move { anyhow::Ok(answer.await) }
    })
    .await
}

/// Waits until `probe` answers `Ok(Some(_))`, polling every `every`, for at most `timeout`. An
/// error from the probe ends the wait at once: a browser or a process that failed will not
/// answer later either.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, every: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await.with_context(|| format!("while waiting for {what}"))? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Whether something accepts TCP connections on `addr` now (a server that is up).
pub async fn tcp_accepts(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

pub(crate) fn require(name: &str, sbin: &[&str]) -> Result<PathBuf> {
    which(name)
        .or_else(|| sbin.iter().map(PathBuf::from).find(|p| p.exists()))
        .ok_or_else(|| {
            anyhow!("`{name}` is not installed: run scripts/test.sh, which installs it from Debian's packages")
        })
}

/// A real VictoriaMetrics server on a free loopback port with a temporary data folder.
pub struct VictoriaMetrics {
    pub port: u16,
    proc: Option<Proc>,
    dir: TempDir,
}

/// Sends SIGTERM to a child and waits for it to exit (a clean stop of a server).
pub fn terminate(child: &mut Child) -> Result<()> {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status()?;
    if !status.success() {
        bail!("kill -TERM {} failed", child.id());
    }
    child.wait()?;
    Ok(())
}

impl VictoriaMetrics {
    pub async fn start() -> Result<Self> {
        let dir = TempDir::new("vm")?;
        let mut vm = VictoriaMetrics {
            port: free_port(),
            proc: None,
            dir,
        };
        vm.restart().await?;
        Ok(vm)
    }

    /// Stops the server with SIGTERM (its data stays).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            terminate(&mut p.child)?;
        }
        Ok(())
    }

    /// Starts the server (again) on the same port and data folder; waits for `/health`.
    pub async fn restart(&mut self) -> Result<()> {
        let exe = require("victoria-metrics", &["/usr/bin/victoria-metrics"])?;
        let port = self.port;
        let log = self.dir.path().join(format!("vm-{}.log", free_port()));
        let child = Command::new(exe)
            .arg(format!("-storageDataPath={}", self.dir.path().join("data").display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            // The default retention (1 month) silently drops older points.
            .arg("-retentionPeriod=100y")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting victoria-metrics")?;
        let proc = Proc {
            child,
            name: "victoria-metrics",
            log,
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let client = http();
        wait_for(
            "victoria-metrics /health",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                let client = client.clone();
                async move {
                    let r = client.get(format!("http://{addr}/health")).send().await.ok()?;
                    r.status().is_success().then_some(())
                }
            },
        )
        .await
        .with_context(|| proc.log_tail())?;
        self.proc = Some(proc);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every stored point of the series matching `selector`, via the export API (which, unlike
    /// the query API, hides nothing recent).
    pub async fn export(&self, selector: &str) -> Result<Vec<Series>> {
        let client = http();
        client
            .get(format!("{}/internal/force_flush", self.url()))
            .send()
            .await?;
        let body = client
            .post(format!("{}/api/v1/export", self.url()))
            .form(&[("match[]", selector), ("start", "0")])
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let mut out = Vec::new();
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let s: Series = serde_json::from_str(line).with_context(|| format!("export line {line}"))?;
            out.push(s);
        }
        Ok(out)
    }
}

/// One exported series.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Series {
    pub metric: HashMap<String, String>,
    pub values: Vec<f64>,
    pub timestamps: Vec<i64>,
}

/// A real Mosquitto broker on a free loopback port.
pub struct Mosquitto {
    pub port: u16,
    persistent: bool,
    /// Configuration lines after the harness's `listener` line in place of its own
    /// (`allow_anonymous true`, persistence): see [`Mosquitto::start_with_snippet`].
    snippet: Option<String>,
    proc: Option<Proc>,
    dir: TempDir,
}

impl Mosquitto {
    /// A broker without persistence.
    pub async fn start() -> Result<Self> {
        Self::start_with(false).await
    }

    /// A broker; with `persistent`, sessions and queued messages are saved on a clean stop and
    /// loaded at start (`persistence true`), and queues are unlimited (`max_queued_messages 0`).
    pub async fn start_with(persistent: bool) -> Result<Self> {
        let dir = TempDir::new("mosquitto")?;
        let mut m = Mosquitto {
            port: free_port(),
            persistent,
            snippet: None,
            proc: None,
            dir,
        };
        m.restart().await?;
        Ok(m)
    }

    /// A broker on `port` (0: a free one) whose configuration is the harness's `listener` line
    /// followed by `snippet` (no anonymous access unless the snippet allows it, no persistence
    /// unless it asks for it; without a `persistence_location` of its own the file goes to
    /// [`Mosquitto::dir`]). The listener comes first because Mosquitto applies listener settings
    /// such as `use_username_as_clientid` to the listener defined before them.
    pub async fn start_with_snippet(port: u16, snippet: &str) -> Result<Self> {
        let dir = TempDir::new("mosquitto")?;
        let mut m = Mosquitto {
            port: if port == 0 { free_port() } else { port },
            persistent: false,
            snippet: Some(snippet.to_owned()),
            proc: None,
            dir,
        };
        m.restart().await?;
        Ok(m)
    }

    /// A broker on `port` (0: a free one) configured by the files `nh-gateway mosquitto-config
    /// --out OUT` wrote: `OUT/mosquitto.conf` (the snippet), `OUT/passwords`, `OUT/acl`.
    ///
    /// The snippet is used line for line after the harness's own `listener` line, except that
    /// `password_file`, `acl_file` and `persistence_location` point at copies in the broker's
    /// folder: run as root, Mosquitto reads them as the `mosquitto` user, which cannot enter a
    /// test's private temporary folder. The paths the snippet names must exist (relative ones
    /// are taken from OUT). `listener`, `port`, `bind_address` and `log_dest` lines of the snippet
    /// are left out (the harness owns the listener and the log).
    pub async fn start_generated(out: &Path, port: u16) -> Result<Self> {
        let dir = TempDir::new("mosquitto")?;
        let conf_path = out.join("mosquitto.conf");
        let generated = std::fs::read_to_string(&conf_path)
            .with_context(|| format!("reading the generated {}", conf_path.display()))?;
        let mut snippet = String::new();
        let mut copied = Vec::new();
        for line in generated.lines() {
            let trimmed = line.trim();
            let (key, value) = trimmed
                .split_once(char::is_whitespace)
                .map(|(k, v)| (k, v.trim()))
                .unwrap_or((trimmed, ""));
            match key {
                "password_file" | "acl_file" => {
                    let named = Path::new(value);
                    let source = if named.is_absolute() {
                        named.to_path_buf()
                    } else {
                        out.join(named)
                    };
                    if !source.is_file() {
                        bail!(
                            "{}: `{key} {value}` names no file ({} does not exist)",
                            conf_path.display(),
                            source.display()
                        );
                    }
                    let copy = dir
                        .path()
                        .join(if key == "password_file" { "passwords" } else { "acl" });
                    std::fs::copy(&source, &copy)
                        .with_context(|| format!("copying {} for mosquitto", source.display()))?;
                    {
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644))?;
                    }
                    snippet.push_str(&format!("{key} {}\n", copy.display()));
                    copied.push(key);
                }
                "persistence_location" => {
                    snippet.push_str(&format!("persistence_location {}/\n", dir.path().display()));
                }
                "listener" | "port" | "bind_address" | "log_dest" => {}
                _ => {
                    snippet.push_str(line);
                    snippet.push('\n');
                }
            }
        }
        for key in ["password_file", "acl_file"] {
            if !copied.contains(&key) {
                bail!("{} has no `{key}` line:\n{generated}", conf_path.display());
            }
        }
        let mut m = Mosquitto {
            port: if port == 0 { free_port() } else { port },
            persistent: false,
            snippet: Some(snippet),
            proc: None,
            dir,
        };
        m.restart().await?;
        Ok(m)
    }

    /// The broker's folder (its configuration, log and persistence file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The running broker's log so far (`log_type all` with a snippet: every CONNECT, denied
    /// PUBLISH and SUBACK).
    pub fn log(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Stops the broker with SIGTERM (it saves its persistence file).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            terminate(&mut p.child)?;
        }
        Ok(())
    }

    /// Starts the broker (again) on the same port and folder; waits until it listens.
    pub async fn restart(&mut self) -> Result<()> {
        let exe = require("mosquitto", &["/usr/sbin/mosquitto"])?;
        let port = self.port;
        let conf = self.dir.path().join("mosquitto.conf");
        // Run as root, Mosquitto drops to the `mosquitto` user: its persistence file must be
        // writable by that user, or the clean stop loses the queued messages.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o777))?;
        }
        let text = match &self.snippet {
            Some(snippet) => {
                // Mosquitto's default is its working folder: keep a persistence file out of the tree.
                let location = if snippet.contains("persistence_location") {
                    String::new()
                } else {
                    format!("persistence_location {}/\n", self.dir.path().display())
                };
                format!(
                    "listener {port} 127.0.0.1\n{snippet}\n{location}message_size_limit 1048576\nlog_dest stderr\nlog_type all\n"
                )
            }
            None => {
                let persistence = if self.persistent {
                    format!(
                        "persistence true\npersistence_location {}/\nautosave_interval 0\nmax_queued_messages 0\n",
                        self.dir.path().display()
                    )
                } else {
                    "persistence false\nmax_queued_messages 1000000\n".to_owned()
                };
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}\
                     # The default of 20 caps a subscriber that acknowledges after a commit.\n\
                     max_inflight_messages 1000\n\
                     # Small packets (acks, alerts) must not wait for Nagle's algorithm and a delayed\n\
                     # ACK: without it about one alert in 100 took 40 ms more (nh-bench).\n\
                     set_tcp_nodelay true\n\
                     message_size_limit 1048576\nlog_dest stderr\n"
                )
            }
        };
        std::fs::write(&conf, text)?;
        let log = self.dir.path().join(format!("mosquitto-{}.log", free_port()));
        let child = Command::new(exe)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting mosquitto")?;
        let proc = Proc {
            child,
            name: "mosquitto",
            log,
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_for(
            "mosquitto to listen",
            Duration::from_secs(20),
            Duration::from_millis(20),
            || async move { tcp_accepts(addr).await.then_some(()) },
        )
        .await
        .with_context(|| proc.log_tail())?;
        self.proc = Some(proc);
        Ok(())
    }
}

/// A running `nh-gateway`.
pub struct Gateway {
    pub http: SocketAddr,
    /// The embedded broker's address (None in external mode).
    pub mqtt: Option<SocketAddr>,
    pub proc: Proc,
    pub pid: u32,
}

impl Gateway {
    /// Runs `nh-gateway run --config FILE --http 127.0.0.1:0 --mqtt 127.0.0.1:0` with `env`
    /// and waits for its `ready` line.
    pub async fn start(config: &Path, env: &[(&str, String)], log_dir: &Path) -> Result<Self> {
        Self::start_with(config, env, log_dir, &[]).await
    }

    /// As [`Gateway::start`], with extra arguments.
    pub async fn start_with(config: &Path, env: &[(&str, String)], log_dir: &Path, args: &[&str]) -> Result<Self> {
        let log = log_dir.join(format!("gateway-{}.log", free_port()));
        add_loopback_access(config)?;
        add_test_token(config)?;
        let mut cmd = Command::new(bin("nh-gateway"));
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .args(["--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"])
            .args(args);
        for k in ["NH_INFLUX_URL", "NH_INFLUX_ORG", "NH_INFLUX_BUCKET", "NH_INFLUX_TOKEN"] {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting nh-gateway")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let proc = Proc {
            child,
            name: "nh-gateway",
            log,
        };
        let pid = proc.child.id();
        let ready = wait_ready(stdout, READY_TIMEOUT)
            .await
            .with_context(|| format!("nh-gateway did not start; log:\n{}", proc.log_tail()))?;
        Ok(Gateway {
            http: ready.http,
            mqtt: ready.mqtt,
            proc,
            pid,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// Stops the gateway with SIGTERM and waits for it to exit, at most `timeout` (after which
    /// it is killed and this is an error: a clean stop that hangs is a bug).
    pub async fn stop(&mut self, timeout: Duration) -> Result<()> {
        if self.proc.child.try_wait()?.is_some() {
            bail!("the gateway had already exited; log:\n{}", self.proc.log_tail());
        }
        let status = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        let child = &mut self.proc.child;
        let exited = wait_until(
            "the gateway to exit after SIGTERM",
            timeout,
            Duration::from_millis(20),
            || std::future::ready(child.try_wait().map_err(anyhow::Error::from)),
        )
        .await;
        if let Err(e) = exited {
            let _ = self.proc.child.kill();
            let _ = self.proc.child.wait();
            return Err(e.context(self.proc.log_tail()));
        }
        Ok(())
    }

    /// `/metrics` as `name{labels}` -> value.
    pub async fn metrics(&self) -> Result<HashMap<String, f64>> {
        let text = http().get(self.url("/metrics")).send().await?.text().await?;
        Ok(parse_prometheus(&text))
    }

    pub async fn metric(&self, name: &str) -> Result<f64> {
        Ok(self.metrics().await?.get(name).copied().unwrap_or(0.0))
    }

    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let r = http().get(self.url(path)).send().await?;
        let status = r.status();
        let body = r.text().await?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Waits until the journal holds `n` readings and InfluxDB (when configured) took them all.
    pub async fn wait_forwarded(&self, n: u64, influx: bool, timeout: Duration) -> Result<()> {
        wait_for(
            "readings committed and forwarded",
            timeout,
            Duration::from_millis(100),
            || async move {
                let m = self.metrics().await.ok()?;
                let accepted = m.get("nh_readings_accepted_total").copied().unwrap_or(0.0) as u64;
                let last = m.get("nh_journal_last_id").copied().unwrap_or(0.0);
                let cursor = m.get("nh_influx_cursor").copied().unwrap_or(0.0);
                (accepted >= n && (!influx || cursor >= last)).then_some(())
            },
        )
        .await
        .with_context(|| self.proc.log_tail())
    }
}

/// How long a gateway may take to print its `ready` line (a salvage of a damaged journal or a
/// loaded CI machine included).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What a gateway's `ready` line announces: `ready http=ADDR mqtt=ADDR` (or `mqtt=external`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub http: SocketAddr,
    /// The embedded broker's address (None in external mode).
    pub mqtt: Option<SocketAddr>,
}

/// Parses a `ready` line.
pub fn parse_ready(line: &str) -> Result<Ready> {
    let mut http = None;
    let mut mqtt = None;
    for part in line.split_whitespace().skip(1) {
        match part.split_once('=') {
            Some(("http", a)) => http = a.parse().ok(),
            Some(("mqtt", "external")) => {}
            Some(("mqtt", a)) => mqtt = a.parse().ok(),
            _ => {}
        }
    }
    let http = http.ok_or_else(|| anyhow!("bad ready line `{line}`"))?;
    Ok(Ready { http, mqtt })
}

/// Reads a gateway's stdout until its `ready` line, for at most `timeout`, and parses it. A
/// thread of its own keeps reading the rest, so the gateway never blocks on a full pipe.
pub async fn wait_ready(stdout: ChildStdout, timeout: Duration) -> Result<Ready> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("ready ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(line);
                }
            }
        }
    });
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(line)) => parse_ready(&line),
        Ok(Err(_)) => bail!("the gateway's stdout closed without a ready line"),
        Err(_) => bail!("no ready line within {timeout:?}"),
    }
}

pub fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// The API token every gateway the harness starts accepts (role `admin`): [`http`] sends it.
pub const TEST_TOKEN: &str = "nh-e2e-test-token-0123456789abcdef";

/// Adds the harness's `[[auth.tokens]]` entry to a configuration file that lacks it.
pub fn add_test_token(config: &Path) -> Result<()> {
    let text = std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let digest = nh_gateway::auth::token_digest_hex(TEST_TOKEN);
    if !text.contains(&digest) {
        let block = format!("\n[[auth.tokens]]\nname = \"e2e-tests\"\nrole = \"admin\"\ntoken_sha256 = \"{digest}\"\n");
        std::fs::write(config, text + &block)?;
    }
    Ok(())
}

/// An HTTP client that sends the harness's API token.
pub fn http() -> reqwest011::Client {
    let mut headers = reqwest011::header::HeaderMap::new();
    if let Ok(v) = reqwest011::header::HeaderValue::from_str(&format!("Bearer {TEST_TOKEN}")) {
        headers.insert(reqwest011::header::AUTHORIZATION, v);
    }
    reqwest011::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .unwrap_or_default()
}

/// An HTTP client without credentials.
pub fn anonymous_http() -> reqwest011::Client {
    reqwest011::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

pub mod sim {
    //! Runs the `nh-sim` binary.
    use super::*;

    /// One message the simulator published (its `--record` line).
    #[derive(Debug, Clone, serde::Deserialize)]
    pub struct Sent {
        pub device: String,
        pub topic: String,
        pub format: String,
        pub ts: i64,
        pub seq: Option<u64>,
        pub metrics: serde_json::Map<String, serde_json::Value>,
    }

    /// `nh-sim run` to completion (all QoS 1 publishes acknowledged); returns what it published.
    ///
    /// The virtual timeline ends now: it starts `seconds` ago, so `--fast` publishes device
    /// times in the past, as a fleet that was running would.
    pub fn run(registry: &Path, broker: SocketAddr, seconds: u64, seed: u64, dir: &Path) -> Result<Vec<Sent>> {
        let record = dir.join(format!("sent-{seed}.jsonl"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        let start = now - (seconds as i64) * 1000 - 60_000;
        let out = Command::new(bin("nh-sim"))
            .arg("run")
            .arg("--registry")
            .arg(registry)
            .args([
                "--broker",
                &broker.to_string(),
                "--seconds",
                &seconds.to_string(),
                "--seed",
                &seed.to_string(),
                "--fast",
            ])
            .arg("--record")
            .arg(&record)
            .args([
                "--test-clock-origin",
                &now.to_string(),
                "--test-clock-start",
                &start.to_string(),
                "--time-scale",
                "1",
            ])
            .output()
            .context("running nh-sim")?;
        if !out.status.success() {
            bail!(
                "nh-sim failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = std::fs::read_to_string(&record)?;
        text.lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("record line {l}")))
            .collect()
    }
}

/// Writes a gateway configuration into `dir` and returns its path. A site without an
/// `[mqtt.access]` section gets [`LOOPBACK_ACCESS`].
pub fn write_config(dir: &Path, body: &str) -> Result<PathBuf> {
    let p = dir.join("gateway.toml");
    std::fs::write(&p, with_loopback_access(body).unwrap_or_else(|| body.to_owned()))?;
    Ok(p)
}

/// The `[mqtt.access]` section of the sites the tests write without one: clients on this
/// machine publish without credentials (with a bridge's rights for every device, never on the
/// gateway's own topics), as every test did before access control. Tests of access control
/// write their own section.
pub const LOOPBACK_ACCESS: &str = "\n[mqtt.access]\nanonymous = \"loopback\"\n";

/// `text` with [`LOOPBACK_ACCESS`] appended, when it is a site configuration of the embedded
/// broker without an `[mqtt.access]` section; `None` when it has one, runs an external broker,
/// or is not valid TOML (a test of the gateway's own diagnostics).
pub fn with_loopback_access(text: &str) -> Option<String> {
    let table: toml::Table = text.parse().ok()?;
    let mqtt = table.get("mqtt").and_then(|m| m.as_table());
    if mqtt.is_some_and(|m| m.contains_key("access") || m.get("mode").and_then(|v| v.as_str()) == Some("external")) {
        return None;
    }
    let mut out = text.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(LOOPBACK_ACCESS);
    // An inline `mqtt = { ... }` table cannot take a section: leave such a file alone.
    out.parse::<toml::Table>().ok().map(|_| out)
}

/// Adds [`LOOPBACK_ACCESS`] to a configuration file that needs it (see [`with_loopback_access`]).
pub fn add_loopback_access(config: &Path) -> Result<()> {
    let text = std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    if let Some(with) = with_loopback_access(&text) {
        std::fs::write(config, with)?;
    }
    Ok(())
}

/// The files of a site with access control in `dir`: `devices.toml` (`registry`),
/// `mqtt-identities.toml` (`identities`, when given) and `gateway.toml` (`config`, which names
/// them and carries its own `[mqtt.access]`). Returns the configuration's path.
pub fn write_site(dir: &Path, config: &str, registry: &str, identities: Option<&str>) -> Result<PathBuf> {
    std::fs::write(dir.join("devices.toml"), registry)?;
    if let Some(text) = identities {
        std::fs::write(dir.join("mqtt-identities.toml"), text)?;
    }
    write_config(dir, config)
}

/// The secrets of a provisioning file (`[[identities]] name, secret`: the written contract
/// between `nh-gateway device-credentials` and whoever provisions devices), by identity.
#[derive(Clone)]
pub struct Provisioned {
    pub file: PathBuf,
    pub secrets: BTreeMap<String, String>,
}

impl std::fmt::Debug for Provisioned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioned")
            .field("file", &self.file)
            .field("identities", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct ProvisioningToml {
    #[serde(default)]
    identities: Vec<ProvisionedToml>,
}

#[derive(serde::Deserialize)]
struct ProvisionedToml {
    name: String,
    secret: String,
}

impl Provisioned {
    /// Reads a provisioning file.
    pub fn load(file: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let parsed: ProvisioningToml =
            toml::from_str(&text).with_context(|| format!("{} is no provisioning file", file.display()))?;
        let mut secrets = BTreeMap::new();
        for i in parsed.identities {
            if secrets.insert(i.name.clone(), i.secret).is_some() {
                bail!("{}: `{}` is listed twice", file.display(), i.name);
            }
        }
        Ok(Provisioned {
            file: file.to_owned(),
            secrets,
        })
    }

    /// `name`'s secret.
    pub fn secret(&self, name: &str) -> Result<&str> {
        self.secrets
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("no secret for `{name}` in {}", self.file.display()))
    }
}

/// Runs `nh-gateway device-credentials --config CONFIG SELECTION... --provisioning-file FILE`
/// (`selection`: `--identity NAME` pairs, `--all`, `--missing`) and reads the file back. The
/// command must succeed and must not print a secret (they go to the file only).
pub fn device_credentials(config: &Path, selection: &[&str], provisioning: &Path) -> Result<Provisioned> {
    let out = Command::new(bin("nh-gateway"))
        .arg("device-credentials")
        .arg("--config")
        .arg(config)
        .args(selection)
        .arg("--provisioning-file")
        .arg(provisioning)
        .output()
        .context("running nh-gateway device-credentials")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "nh-gateway device-credentials {selection:?}: {}\n{stdout}{stderr}",
            out.status
        );
    }
    let provisioned = Provisioned::load(provisioning)?;
    if let Some(name) = provisioned
        .secrets
        .iter()
        .find(|(_, secret)| stdout.contains(secret.as_str()) || stderr.contains(secret.as_str()))
        .map(|(name, _)| name)
    {
        bail!("nh-gateway device-credentials printed the secret of `{name}` although it wrote a provisioning file");
    }
    Ok(provisioned)
}

/// New secrets for `names` (devices, bridges, consumers), in `provisioning.toml` beside `config`.
pub fn provision(config: &Path, names: &[&str]) -> Result<Provisioned> {
    let mut selection = Vec::with_capacity(names.len() * 2);
    for name in names {
        selection.push("--identity");
        selection.push(*name);
    }
    device_credentials(config, &selection, &provisioning_file_beside(config))
}

/// New secrets for every identity of the site, in `provisioning.toml` beside `config`.
pub fn provision_all(config: &Path) -> Result<Provisioned> {
    device_credentials(config, &["--all"], &provisioning_file_beside(config))
}

fn provisioning_file_beside(config: &Path) -> PathBuf {
    config
        .parent()
        .map(|d| d.join("provisioning.toml"))
        .unwrap_or_else(|| PathBuf::from("provisioning.toml"))
}

/// Runs `nh-gateway mosquitto-config --config CONFIG --out OUT` (OUT/passwords, OUT/acl,
/// OUT/mosquitto.conf); see [`Mosquitto::start_generated`].
pub fn mosquitto_config(config: &Path, out: &Path) -> Result<()> {
    let run = Command::new(bin("nh-gateway"))
        .arg("mosquitto-config")
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out)
        .output()
        .context("running nh-gateway mosquitto-config")?;
    if !run.status.success() {
        bail!(
            "nh-gateway mosquitto-config: {}\n{}{}",
            run.status,
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
    }
    Ok(())
}

/// Raises this process's soft limit of open files to `want` (at most the hard limit), with
/// `prlimit`, when it is lower; children started afterwards inherit it. Returns the soft limit
/// in force. A test holding thousands of connections (and the gateway it starts) needs it.
pub fn raise_open_files_limit(want: u64) -> Result<u64> {
    let (soft, hard) = open_files_limit()?;
    if soft >= want {
        return Ok(soft);
    }
    let target = want.min(hard);
    let hard_text = if hard == u64::MAX {
        "unlimited".to_owned()
    } else {
        hard.to_string()
    };
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={target}:{hard_text}"))
        .status()
        .context("running prlimit (util-linux) to raise the open files limit")?;
    if !status.success() {
        bail!("prlimit --nofile={target}:{hard_text} failed: {status}");
    }
    Ok(open_files_limit()?.0)
}

/// (soft, hard) limits of open files of this process, from /proc (`unlimited` as `u64::MAX`).
fn open_files_limit() -> Result<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or_else(|| anyhow!("no `Max open files` in /proc/self/limits"))?;
    let fields: Vec<&str> = line["Max open files".len()..].split_whitespace().collect();
    let value = |i: usize| -> Result<u64> {
        match fields.get(i) {
            Some(&"unlimited") => Ok(u64::MAX),
            Some(v) => Ok(v.parse()?),
            None => bail!("bad line `{line}`"),
        }
    };
    Ok((value(0)?, value(1)?))
}

/// CPU time (user + system, seconds) and resident memory (bytes) of a process, from /proc.
pub fn cpu_and_rss(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux.
    let cpu = ticks / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((cpu, rss_kb * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_line_gives_the_http_and_broker_addresses() {
        let embedded = parse_ready("ready http=127.0.0.1:40001 mqtt=127.0.0.1:40002").ok();
        assert_eq!(
            embedded,
            Some(Ready {
                http: ([127, 0, 0, 1], 40001).into(),
                mqtt: Some(([127, 0, 0, 1], 40002).into()),
            })
        );
        let external = parse_ready("ready http=127.0.0.1:40001 mqtt=external").ok();
        assert_eq!(external.and_then(|r| r.mqtt), None);
        assert!(parse_ready("ready mqtt=127.0.0.1:40002").is_err());
    }

    #[test]
    fn sites_without_access_control_get_loopback_access() {
        let plain = "[site]\nid = \"x\"\n[mqtt]\nmode = \"embedded\"\n";
        let with = with_loopback_access(plain).unwrap_or_default();
        assert!(with.starts_with(plain) && with.ends_with(LOOPBACK_ACCESS), "{with}");
        assert_eq!(with_loopback_access(&with), None, "added once");
        let no_mqtt_section = "[site]\nid = \"x\"\n[registry]\nfile = \"devices.toml\"";
        assert!(with_loopback_access(no_mqtt_section).is_some_and(|t| t.contains("devices.toml\"\n\n[mqtt.access]")));
        let own = "[site]\nid = \"x\"\n[mqtt.access]\nanonymous = \"refuse\"\n";
        assert_eq!(with_loopback_access(own), None);
        assert_eq!(with_loopback_access("[site]\n[mqtt]\nmode = \"external\"\n"), None);
        assert_eq!(
            with_loopback_access("[site\n"),
            None,
            "not TOML: left to the gateway's diagnostics"
        );
    }

    #[tokio::test]
    async fn waiting_ends_at_the_first_answer_at_an_error_or_at_the_deadline() {
        let mut polls = 0;
        let third = wait_until(
            "the third poll",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                polls += 1;
                std::future::ready(anyhow::Ok((polls >= 3).then_some(polls)))
            },
        )
        .await;
        assert_eq!(third.ok(), Some(3));
        let failed = wait_until(
            "a failing probe",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || std::future::ready(Err::<Option<()>, _>(anyhow!("gone"))),
        )
        .await;
        assert!(failed.is_err_and(|e| format!("{e:#}").contains("gone")));
        let never = wait_for(
            "nothing",
            Duration::from_millis(20),
            Duration::from_millis(5),
            || async { None::<()> },
        )
        .await;
        assert!(never.is_err_and(|e| e.to_string().starts_with("timed out after")));
    }
}
