//! The Mosquitto command-line clients as third-party MQTT clients: `mosquitto_pub` (one
//! connection, one message, then a clean DISCONNECT) and `mosquitto_sub` (a long-running
//! subscriber whose output a test reads). Both run with `-d`, so the CONNACK return code a
//! broker answered is in their output (`received CONNACK (5)`); a refused connection also makes
//! them exit non-zero with `Connection error: Connection Refused: not authorised.` (code 5) or
//! `... bad user name or password.` (code 4).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::{require, wait_until, which, Proc};

/// How long one `mosquitto_pub` may take (connect, publish, acknowledgement, disconnect).
const PUB_TIMEOUT: Duration = Duration::from_secs(20);

/// Who a client says it is: its client id and, when it has them, its credentials.
#[derive(Clone, Default)]
pub struct Login {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Login {
    /// No credentials, with this client id.
    pub fn anonymous(client_id: &str) -> Login {
        Login {
            client_id: client_id.to_owned(),
            username: None,
            password: None,
        }
    }

    /// An identity as it should connect: username and client id are its name.
    pub fn identity(name: &str, secret: &str) -> Login {
        Login::new(name, name, secret)
    }

    /// Any combination (another identity's client id, a wrong secret...).
    pub fn new(client_id: &str, username: &str, password: &str) -> Login {
        Login {
            client_id: client_id.to_owned(),
            username: Some(username.to_owned()),
            password: Some(password.to_owned()),
        }
    }

    fn args(&self) -> Vec<String> {
        let mut a = vec!["-i".to_owned(), self.client_id.clone()];
        if let Some(u) = &self.username {
            a.push("-u".into());
            a.push(u.clone());
        }
        if let Some(p) = &self.password {
            a.push("-P".into());
            a.push(p.clone());
        }
        a
    }
}

/// What one `mosquitto_pub` run did.
#[derive(Debug)]
pub struct PubOutcome {
    pub status: ExitStatus,
    /// stdout and stderr (the `-d` trace, then any error).
    pub output: String,
}

impl PubOutcome {
    /// Connected, published, acknowledged (QoS 1) and disconnected.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The CONNACK return code the broker answered, if one came.
    pub fn connack(&self) -> Option<u8> {
        connack_code(&self.output)
    }

    /// Refused at CONNECT with a CONNACK (return code 1-5), not a bare close: exited non-zero
    /// and either printed the refused CONNACK or libmosquitto's `Connection Refused` text.
    pub fn refused(&self) -> bool {
        !self.success()
            && (self.connack().is_some_and(|c| (1..=5).contains(&c)) || self.output.contains("Connection Refused"))
    }
}

/// The return code of the first `received CONNACK (N)` line of a `-d` trace.
pub fn connack_code(output: &str) -> Option<u8> {
    let at = output.find("received CONNACK (")? + "received CONNACK (".len();
    let rest = &output[at..];
    let end = rest.find(')')?;
    rest[..end].trim().parse().ok()
}

/// Publishes `payload` on `topic` with QoS 1 as `login`, with `extra` arguments (a will:
/// `--will-topic T --will-payload P --will-qos 1`), and waits for the client to exit.
pub async fn publish(
    broker: SocketAddr,
    login: &Login,
    topic: &str,
    payload: &str,
    extra: &[&str],
) -> Result<PubOutcome> {
    let exe = require("mosquitto_pub", &[])?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["-d", "-V", "mqttv311", "-q", "1", "-h"])
        .arg(broker.ip().to_string())
        .arg("-p")
        .arg(broker.port().to_string())
        .args(login.args())
        .arg("-t")
        .arg(topic)
        .arg("-m")
        .arg(payload)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PUB_TIMEOUT, cmd.output())
        .await
        .map_err(|_| anyhow!("mosquitto_pub as {login:?} on {topic} did not finish within {PUB_TIMEOUT:?}"))?
        .context("running mosquitto_pub")?;
    Ok(PubOutcome {
        status: out.status,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// Publishes and requires success (a reading a device is entitled to send).
pub async fn publish_ok(broker: SocketAddr, login: &Login, topic: &str, payload: &str) -> Result<()> {
    let out = publish(broker, login, topic, payload, &[]).await?;
    if !out.success() {
        bail!(
            "mosquitto_pub as {login:?} on {topic} failed ({}):\n{}",
            out.status,
            out.output
        );
    }
    Ok(())
}

/// A running `mosquitto_sub -d -v` (QoS 1), its output line-buffered into a file.
pub struct Subscriber {
    pub proc: Proc,
    pub client_id: String,
    out: PathBuf,
}

impl Subscriber {
    /// Connects as `login`, subscribes to `filters` and waits for the SUBACK (every filter
    /// granted). An error if the connection or a subscription is refused.
    pub async fn start(broker: SocketAddr, login: &Login, filters: &[&str], dir: &Path) -> Result<Subscriber> {
        let exe = require("mosquitto_sub", &[])?;
        let out = dir.join(format!("mosquitto_sub-{}-{}.out", login.client_id, crate::free_port()));
        let file = std::fs::File::create(&out)?;
        // Line-buffered through `stdbuf`: into a file, mosquitto_sub's stdout is block-buffered.
        let mut cmd = match which("stdbuf") {
            Some(stdbuf) => {
                let mut c = Command::new(stdbuf);
                c.arg("-oL").arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.args(["-d", "-v", "-V", "mqttv311", "-q", "1", "-h"])
            .arg(broker.ip().to_string())
            .arg("-p")
            .arg(broker.port().to_string())
            .args(login.args());
        for f in filters {
            cmd.arg("-t").arg(f);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting mosquitto_sub")?;
        let mut sub = Subscriber {
            proc: Proc {
                child,
                name: "mosquitto_sub",
                log: out.clone(),
            },
            client_id: login.client_id.clone(),
            out,
        };
        let what = format!("mosquitto_sub {} to subscribe to {filters:?}", login.client_id);
        let granted = {
            let out = &sub.out;
            let child = &mut sub.proc.child;
            wait_until(&what, Duration::from_secs(20), Duration::from_millis(20), || {
                let text = std::fs::read_to_string(out).unwrap_or_default();
                std::future::ready(subscribed(&text, child))
            })
            .await?
        };
        // `Subscribed (mid: 1): 1, 1`: the granted QoS per filter; 128 is a refusal.
        let codes = granted.rsplit(':').next().unwrap_or("");
        if codes.split(',').any(|c| c.trim() == "128") {
            bail!("a subscription of {} was refused: {granted}", login.client_id);
        }
        Ok(sub)
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// The messages it received so far, as (topic, payload).
    pub fn messages(&self) -> Vec<(String, String)> {
        self.output()
            .lines()
            .filter(|l| !is_trace(l))
            .filter_map(|l| l.split_once(' ').map(|(t, p)| (t.to_owned(), p.to_owned())))
            .collect()
    }

    /// How many times it sent CONNECT (more than once: it was disconnected and came back).
    pub fn connects(&self) -> usize {
        self.output().lines().filter(|l| l.contains(" sending CONNECT")).count()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.proc.child.try_wait(), Ok(None))
    }

    /// Waits until a received message satisfies `pred`, at most `timeout`.
    pub async fn wait_for_message(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str, &str) -> bool,
    ) -> Result<(String, String)> {
        let pred = &pred;
        wait_until(what, timeout, Duration::from_millis(20), || {
            let found = self.messages().into_iter().find(|(t, p)| pred(t.as_str(), p.as_str()));
            std::future::ready(anyhow::Ok(found))
        })
        .await
        .with_context(|| format!("{} received:\n{}", self.client_id, self.output()))
    }
}

/// The `Subscribed (mid: N): ...` line once the SUBACK came; an error if the connection was
/// refused or the client exited first.
fn subscribed(text: &str, child: &mut std::process::Child) -> Result<Option<String>> {
    if let Some(code) = connack_code(text).filter(|c| *c != 0) {
        bail!("connection refused with CONNACK {code}:\n{text}");
    }
    if let Some(line) = text.lines().find(|l| l.starts_with("Subscribed (mid:")) {
        return Ok(Some(line.to_owned()));
    }
    if let Some(status) = child.try_wait()? {
        bail!("mosquitto_sub exited ({status}) before subscribing:\n{text}");
    }
    Ok(None)
}

/// A line of the `-d` trace or an error, not a received message.
fn is_trace(line: &str) -> bool {
    line.is_empty()
        || line.starts_with("Client ")
        || line.starts_with("Subscribed (mid:")
        || line.starts_with("Connection error")
        || line.starts_with("Error")
        || line.starts_with("Warning")
        || line.starts_with("All subscription requests were denied")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connack_code_comes_from_the_debug_trace() {
        let refused = "Client (null) sending CONNECT\nClient (null) received CONNACK (5)\nConnection error: Connection Refused: not authorised.\n";
        assert_eq!(connack_code(refused), Some(5));
        assert_eq!(connack_code("Client a received CONNACK (0)\n"), Some(0));
        assert_eq!(connack_code("Error: Connection refused\n"), None);
    }

    #[test]
    fn received_messages_are_told_from_the_trace() {
        assert!(is_trace(
            "Client subx received PUBLISH (d0, q1, r0, m1, 'a/x', ... (19 bytes))"
        ));
        assert!(is_trace("Subscribed (mid: 1): 1, 1"));
        assert!(!is_trace("nh/s/dev-1/telemetry {\"metrics\":{\"x\":1}}"));
    }
}
