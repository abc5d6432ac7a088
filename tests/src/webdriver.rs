//! A small WebDriver client (the W3C protocol, as chromedriver speaks it) over reqwest, driving a
//! real headless Chromium from Debian's `chromium` and `chromium-driver` packages.
//!
//! [`Browser::start`] starts chromedriver on a free loopback port in a process group of its own
//! and opens a session; dropping the [`Browser`] kills chromedriver's group and every Chromium
//! process of this browser's profile folder, so a failing test leaves nothing running.
//! [`Browser::quit`] ends the session politely first.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value as J};

use crate::{free_port, Proc, TempDir};

/// The key under which the W3C protocol hands out element references.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How often a wait looks at the page again.
const POLL: Duration = Duration::from_millis(50);

/// A browser session: chromedriver plus the Chromium it started.
pub struct Browser {
    base: String,
    session: String,
    client: reqwest011::Client,
    driver: Option<Proc>,
    profile: TempDir,
}

/// An element of the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

/// What the browser's performance log says about one request.
#[derive(Debug, Clone)]
pub struct Request {
    pub url: String,
    pub method: String,
}

/// One response seen in the performance log.
#[derive(Debug, Clone)]
pub struct ResponseSeen {
    pub url: String,
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
}

/// The network events collected from the performance log.
#[derive(Debug, Clone, Default)]
pub struct NetworkLog {
    pub requests: Vec<Request>,
    pub responses: Vec<ResponseSeen>,
}

fn installed(path: &str) -> Result<PathBuf> {
    let p = PathBuf::from(path);
    if p.exists() {
        Ok(p)
    } else {
        bail!("{path} is missing: run scripts/test.sh, which installs chromium and chromium-driver from Debian's packages")
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (window 1400x900, Chinese UI
    /// language, performance log on). The page's own autoplay rules stay in force.
    pub async fn start(log_dir: &Path) -> Result<Browser> {
        let driver_exe = installed("/usr/bin/chromedriver")?;
        let chromium = installed("/usr/bin/chromium")?;
        let profile = TempDir::new("chromium-profile")?;
        let port = free_port();
        let log = log_dir.join(format!("chromedriver-{port}.log"));
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(driver_exe)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // A group of its own, so the guard can kill chromedriver and what it started.
                .process_group(0)
                .spawn()
                .context("starting chromedriver")?
        };
        let driver = Proc {
            child,
            name: "chromedriver",
            log,
        };
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest011::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .context("HTTP client")?;
        let mut browser = Browser {
            base,
            session: String::new(),
            client,
            driver: Some(driver),
            profile,
        };
        crate::wait_for(
            "chromedriver /status",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                let c = browser.client.clone();
                let url = format!("{}/status", browser.base);
                async move {
                    let r = c.get(url).send().await.ok()?;
                    let v: J = r.json().await.ok()?;
                    v["value"]["ready"].as_bool().filter(|r| *r).map(|_| ())
                }
            },
        )
        .await?;
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            format!("--user-data-dir={}", browser.profile.path().display()),
            "--window-size=1400,900".to_owned(),
            "--lang=zh-CN".to_owned(),
        ];
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": args,
                        "prefs": {"intl.accept_languages": "zh-CN,zh"},
                    },
                    "goog:loggingPrefs": {"performance": "ALL", "browser": "ALL"},
                }
            }
        });
        let r = browser.raw("POST", "/session", Some(caps)).await?;
        browser.session = r["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {r}"))?
            .to_owned();
        browser
            .cmd(
                "POST",
                "/timeouts",
                Some(json!({"implicit": 0, "pageLoad": 30_000, "script": 30_000})),
            )
            .await?;
        Ok(browser)
    }

    async fn raw(&self, method: &str, path: &str, body: Option<J>) -> Result<J> {
        let url = format!("{}{}", self.base, path);
        let req = match method {
            "GET" => self.client.get(&url),
            "DELETE" => self.client.delete(&url),
            _ => self.client.post(&url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let r = req.send().await.with_context(|| format!("WebDriver {method} {path}"))?;
        let status = r.status();
        let v: J = r
            .json()
            .await
            .with_context(|| format!("WebDriver {method} {path}: body"))?;
        if !status.is_success() {
            bail!(
                "WebDriver {method} {path}: {status}: {} {}",
                v["value"]["error"].as_str().unwrap_or(""),
                v["value"]["message"].as_str().unwrap_or("")
            );
        }
        Ok(v["value"].clone())
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<J>) -> Result<J> {
        self.raw(method, &format!("/session/{}{}", self.session, path), body)
            .await
    }

    pub async fn navigate(&self, url: &str) -> Result<()> {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await.map(|_| ())
    }

    pub async fn current_url(&self) -> Result<String> {
        Ok(self
            .cmd("GET", "/url", None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    fn element_of(v: &J) -> Result<Element> {
        v[ELEMENT_KEY]
            .as_str()
            .map(|s| Element(s.to_owned()))
            .ok_or_else(|| anyhow!("not an element: {v}"))
    }

    /// The first element matching a CSS selector, or an error.
    pub async fn find(&self, css: &str) -> Result<Element> {
        let v = self
            .cmd("POST", "/element", Some(json!({"using": "css selector", "value": css})))
            .await
            .with_context(|| format!("finding `{css}`"))?;
        Self::element_of(&v)
    }

    /// Every element matching a CSS selector (possibly none).
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let v = self
            .cmd(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        v.as_array()
            .ok_or_else(|| anyhow!("not a list: {v}"))?
            .iter()
            .map(Self::element_of)
            .collect()
    }

    /// Waits for an element matching `css` that is displayed.
    pub async fn wait_visible(&self, css: &str, timeout: Duration) -> Result<Element> {
        crate::wait_until(&format!("a visible `{css}`"), timeout, POLL, || async move {
            for e in self.find_all(css).await? {
                if self.displayed(&e).await.unwrap_or(false) {
                    return Ok(Some(e));
                }
            }
            anyhow::Ok(None)
        })
        .await
    }

    /// Waits until no displayed element matches `css`.
    pub async fn wait_gone(&self, css: &str, timeout: Duration) -> Result<()> {
        crate::wait_until(&format!("no visible `{css}`"), timeout, POLL, || async move {
            let mut any = false;
            for e in self.find_all(css).await? {
                any |= self.displayed(&e).await.unwrap_or(false);
            }
            anyhow::Ok((!any).then_some(()))
        })
        .await
    }

    pub async fn click(&self, e: &Element) -> Result<()> {
        self.cmd("POST", &format!("/element/{}/click", e.0), Some(json!({})))
            .await
            .map(|_| ())
    }

    pub async fn clear(&self, e: &Element) -> Result<()> {
        self.cmd("POST", &format!("/element/{}/clear", e.0), Some(json!({})))
            .await
            .map(|_| ())
    }

    pub async fn send_keys(&self, e: &Element, text: &str) -> Result<()> {
        self.cmd(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        )
        .await
        .map(|_| ())
    }

    pub async fn text(&self, e: &Element) -> Result<String> {
        Ok(self
            .cmd("GET", &format!("/element/{}/text", e.0), None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// An attribute (or property, as chromedriver resolves it); None when absent.
    pub async fn attribute(&self, e: &Element, name: &str) -> Result<Option<String>> {
        let v = self
            .cmd("GET", &format!("/element/{}/attribute/{name}", e.0), None)
            .await?;
        Ok(v.as_str().map(str::to_owned))
    }

    pub async fn displayed(&self, e: &Element) -> Result<bool> {
        Ok(self
            .cmd("GET", &format!("/element/{}/displayed", e.0), None)
            .await?
            .as_bool()
            .unwrap_or(false))
    }

    /// The cookies of the current page's origin, as WebDriver describes them (`name`, `value`,
    /// `httpOnly`, `sameSite`, ...); HttpOnly ones included.
    pub async fn cookies(&self) -> Result<Vec<J>> {
        Ok(self
            .cmd("GET", "/cookie", None)
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    pub async fn delete_cookie(&self, name: &str) -> Result<()> {
        self.cmd("DELETE", &format!("/cookie/{name}"), None).await.map(|_| ())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn execute(&self, script: &str, args: J) -> Result<J> {
        self.cmd("POST", "/execute/sync", Some(json!({"script": script, "args": args})))
            .await
    }

    /// Runs `script` whose last argument is a callback; returns what it passes to it.
    pub async fn execute_async(&self, script: &str, args: J) -> Result<J> {
        self.cmd("POST", "/execute/async", Some(json!({"script": script, "args": args})))
            .await
    }

    /// Waits until the page has drawn what it holds now: the second of two animation frames
    /// runs after the paint that follows the first.
    pub async fn wait_painted(&self) -> Result<()> {
        self.execute_async(
            "const done = arguments[arguments.length - 1]; \
             requestAnimationFrame(() => requestAnimationFrame(() => done(true)));",
            json!([]),
        )
        .await
        .map(|_| ())
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Result<Vec<u8>> {
        let v = self.cmd("GET", "/screenshot", None).await?;
        decode_base64(v.as_str().ok_or_else(|| anyhow!("screenshot: not a string"))?)
    }

    /// Saves a PNG of the viewport to `path` (folders created).
    pub async fn save_screenshot(&self, path: &Path) -> Result<()> {
        let png = self.screenshot().await?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// The entries of a log type (`performance`, `browser`) since the last call.
    pub async fn log(&self, kind: &str) -> Result<Vec<J>> {
        let v = self.cmd("POST", "/se/log", Some(json!({ "type": kind }))).await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// The requests and responses of the performance log since the last call, added to `into`.
    pub async fn collect_network(&self, into: &mut NetworkLog) -> Result<()> {
        for entry in self.log("performance").await? {
            let Some(text) = entry["message"].as_str() else {
                continue;
            };
            let Ok(m) = serde_json::from_str::<J>(text) else {
                continue;
            };
            let m = &m["message"];
            let p = &m["params"];
            match m["method"].as_str() {
                Some("Network.requestWillBeSent") => into.requests.push(Request {
                    url: p["request"]["url"].as_str().unwrap_or_default().to_owned(),
                    method: p["request"]["method"].as_str().unwrap_or_default().to_owned(),
                }),
                Some("Network.responseReceived") => {
                    let r = &p["response"];
                    let headers = r["headers"]
                        .as_object()
                        .map(|h| {
                            h.iter()
                                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap_or_default().to_owned()))
                                .collect()
                        })
                        .unwrap_or_default();
                    into.responses.push(ResponseSeen {
                        url: r["url"].as_str().unwrap_or_default().to_owned(),
                        status: r["status"].as_u64().unwrap_or(0) as u16,
                        headers,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Ends the session (Chromium exits), then stops chromedriver.
    pub async fn quit(mut self) -> Result<()> {
        let r = self.raw("DELETE", &format!("/session/{}", self.session), None).await;
        self.kill();
        r.map(|_| ())
    }

    fn kill(&mut self) {
        if let Some(mut driver) = self.driver.take() {
            // The whole group: chromedriver and the Chromium it started.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", driver.child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = driver.child.kill();
            let _ = driver.child.wait();
        }
        // Chromium helpers that left the group: only those of this profile folder.
        let marker = format!("--user-data-dir={}", self.profile.path().display());
        for pid in processes_with_arg(&marker) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Processes whose command line holds `arg` exactly (from /proc).
fn processes_with_arg(arg: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// Standard base64 (with or without padding) to bytes.
pub fn decode_base64(text: &str) -> Result<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some((c - b'A') as u32),
            b'a'..=b'z' => Some((c - b'a') as u32 + 26),
            b'0'..=b'9' => Some((c - b'0') as u32 + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in text.as_bytes() {
        if c == b'=' || c.is_ascii_whitespace() {
            continue;
        }
        let v = value(c).ok_or_else(|| anyhow!("not base64: byte {c}"))?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::decode_base64;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(decode_base64("aGVsbG8=").ok(), Some(b"hello".to_vec()));
        assert_eq!(decode_base64("aGVsbG8").ok(), Some(b"hello".to_vec()));
        assert_eq!(decode_base64("iVBORw0KGgo=").ok(), Some(b"\x89PNG\r\n\x1a\n".to_vec()));
        assert!(decode_base64("a*b").is_err());
    }
}
