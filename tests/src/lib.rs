//! The end-to-end test harness: real processes on free loopback ports with temporary folders.
//!
//! - [`TempDir`]: a temporary folder removed on drop (`tempfile`'s, with a label in its name).
//! - [`VictoriaMetrics`]: a real VictoriaMetrics server (Debian's `victoria-metrics`), read back
//!   through its export API.
//! - [`Mosquitto`]: a real Mosquitto broker for the external-broker mode.
//! - [`Gateway`]: the `nh-gateway` binary, started and waited for on its `ready` line
//!   ([`wait_ready`] reads that line from any gateway's stdout).
//! - [`sim`]: runs the `nh-sim` binary.
//! - [`fault_proxy`]: an HTTP proxy in front of VictoriaMetrics that injects 5xx, timeouts and
//!   400s, to exercise the InfluxDB forwarder's error paths against the real database.
//! - helpers to read `/metrics` and to wait for a condition with a deadline ([`wait_for`],
//!   [`wait_until`]): tests wait for what they can observe, never for a fixed time.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub mod fault_proxy;
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

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn require(name: &str, sbin: &[&str]) -> Result<PathBuf> {
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
            proc: None,
            dir,
        };
        m.restart().await?;
        Ok(m)
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
        let persistence = if self.persistent {
            format!(
                "persistence true\npersistence_location {}/\nautosave_interval 0\nmax_queued_messages 0\n",
                self.dir.path().display()
            )
        } else {
            "persistence false\nmax_queued_messages 1000000\n".to_owned()
        };
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}\
                 # The default of 20 caps a subscriber that acknowledges after a commit.\n\
                 max_inflight_messages 1000\n\
                 # Small packets (acks, alerts) must not wait for Nagle's algorithm and a delayed\n\
                 # ACK: without it about one alert in 100 took 40 ms more (nh-bench).\n\
                 set_tcp_nodelay true\n\
                 message_size_limit 1048576\nlog_dest stderr\n"
            ),
        )?;
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

/// Writes a gateway configuration into `dir` and returns its path.
pub fn write_config(dir: &Path, body: &str) -> Result<PathBuf> {
    let p = dir.join("gateway.toml");
    std::fs::write(&p, body)?;
    Ok(p)
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
