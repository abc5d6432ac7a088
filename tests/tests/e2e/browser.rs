//! The control-room page in a real headless Chromium (Debian's `chromium` + `chromedriver`),
//! driven over WebDriver: a gateway with operators, residents and a small registry on two floors,
//! fed by the simulator (six hours of history, then live traffic), and scripted device
//! readings for the alerts.
//!
//! A nurse logs in through the form, enables sound, sees a fall reach the board (the figure is
//! printed), acknowledges and resolves it with notes; the board is captured in Chinese and in
//! English, the facility view with a device chart, the shift summary and the audit log (PNGs in
//! `tests/artifacts/`). A viewer gets no buttons and a 403 from the API. Every request the page
//! made stayed on the gateway's origin under `default-src 'self'`. Finally the gateway is
//! SIGKILLed and the page must say so.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nh_e2e::webdriver::{Browser, NetworkLog};
use nh_e2e::{bin, sim, wait_until, workspace_root, write_config, Gateway, Proc, TempDir};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value as J};

const SITE: &str = "nh-web";

/// Two floors: rooms with a fall radar over a bed, wearables, a door contact, a smoke alarm.
const REGISTRY: &str = r#"
site = "nh-web"

[[devices]]
id = "radar-101"
class = "fall_radar"
building = "A"
floor = "1"
room = "A-101"
zone = "bedroom"
bed = "1"
resident = "r-4c64"
care_flags = ["high_fall_risk"]
interval_s = 60

[[devices]]
id = "wear-101"
class = "wearable"
building = "A"
floor = "1"
room = "A-101"
bed = "1"
resident = "r-4c64"
interval_s = 60

[[devices]]
id = "door-102"
class = "door_contact"
building = "A"
floor = "1"
room = "A-102"
zone = "entrance"
interval_s = 300

[[devices]]
id = "radar-102"
class = "fall_radar"
building = "A"
floor = "1"
room = "A-102"
zone = "bathroom"
bed = "2"
resident = "r-3374"
interval_s = 60

[[devices]]
id = "radar-201"
class = "fall_radar"
building = "A"
floor = "2"
room = "A-201"
zone = "bedroom"
bed = "1"
resident = "r-9928"
interval_s = 60

[[devices]]
id = "smoke-201"
class = "smoke_alarm"
building = "A"
floor = "2"
room = "A-201"
interval_s = 86400

[[devices]]
id = "wear-202"
class = "wearable"
building = "A"
floor = "2"
room = "A-202"
bed = "1"
resident = "r-cef2"
interval_s = 86400
"#;

/// The devices the simulator feeds; `smoke-201` and `wear-202` only carry this test's scripted
/// readings (so no baseline reading clears their alerts while the board is captured).
const SIMULATED: &[&str] = &["radar-101", "wear-101", "door-102", "radar-102", "radar-201"];

const RESIDENTS: &str = r#"
[[residents]]
id = "r-4c64"
name = "王秀英"
[[residents]]
id = "r-3374"
name = "李凤英"
[[residents]]
id = "r-9928"
name = "张金生"
[[residents]]
id = "r-cef2"
name = "刘桂英"
"#;

const NURSE: (&str, &str) = ("nurse1", "night-shift-pass-1");
const VIEWER: (&str, &str) = ("viewer1", "viewer-pass-2");
const ADMIN: (&str, &str) = ("admin1", "admin-pass-3");
const TOKEN: &str = "e2e-browser-test-token-0123456789";

/// The acceptance figure is 2 s from publish to board; the assertion allows 5x.
const FALL_DEADLINE: Duration = Duration::from_secs(10);
const UI_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a wait looks at the page again.
const UI_POLL: Duration = Duration::from_millis(50);

/// Where the screenshots go: `target/test-artifacts/` (so a test run leaves the tree clean), or
/// `tests/artifacts/` with `NH_UPDATE_ARTIFACTS=1` to refresh the committed ones.
fn artifacts() -> PathBuf {
    let dir = if std::env::var_os("NH_UPDATE_ARTIFACTS").is_some_and(|v| v == "1") {
        workspace_root().join("tests/artifacts")
    } else {
        workspace_root().join("target/test-artifacts")
    };
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// `nh-gateway hash-password` / `hash-token` with the secret on stdin.
fn hash(subcommand: &str, secret: &str) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new(bin("nh-gateway"))
        .arg(subcommand)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("nh-gateway {subcommand}"))?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(format!("{secret}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nh-gateway {subcommand}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn site_config(dir: &Path) -> Result<PathBuf> {
    std::fs::write(dir.join("devices.toml"), REGISTRY)?;
    std::fs::write(dir.join("residents.toml"), RESIDENTS)?;
    let mut cfg = String::from(
        "[site]\nid = \"nh-web\"\nname = \"颐养院 A 栋\"\ntimezone = \"Asia/Shanghai\"\n\
         [registry]\nfile = \"devices.toml\"\n[journal]\npath = \"journal.db\"\n\
         [residents]\nfile = \"residents.toml\"\n",
    );
    for ((user, password), (name, role)) in
        [NURSE, VIEWER, ADMIN]
            .into_iter()
            .zip([("李护士", "operator"), ("访客", "viewer"), ("王主管", "admin")])
    {
        cfg.push_str(&format!(
            "[[auth.operators]]\nuser = \"{user}\"\nname = \"{name}\"\nrole = \"{role}\"\npassword_hash = \"{}\"\n",
            hash("hash-password", password)?
        ));
    }
    cfg.push_str(&format!(
        "[[auth.tokens]]\nname = \"browser-admin\"\nrole = \"admin\"\ntoken_sha256 = \"{}\"\n",
        hash("hash-token", TOKEN)?
    ));
    write_config(dir, &cfg)
}

/// The simulator's share of the registry.
fn simulated_registry(dir: &Path) -> Result<PathBuf> {
    let mut out = String::from("site = \"nh-web\"\n");
    for block in REGISTRY.split("[[devices]]").skip(1) {
        if SIMULATED.iter().any(|id| block.contains(&format!("id = \"{id}\""))) {
            out.push_str("[[devices]]");
            out.push_str(block);
        }
    }
    let p = dir.join("sim-devices.toml");
    std::fs::write(&p, out)?;
    Ok(p)
}

/// `nh-sim run` paced on the system clock until killed: the live part of the fleet.
fn live_simulator(registry: &Path, gw: &Gateway, dir: &Path) -> Result<Proc> {
    let broker = gw.mqtt.context("embedded broker")?;
    let log = dir.join("nh-sim-live.log");
    let child = Command::new(bin("nh-sim"))
        .arg("run")
        .arg("--registry")
        .arg(registry)
        .args([
            "--broker",
            &broker.to_string(),
            "--seed",
            "11",
            "--client-id",
            "nh-sim-live",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting nh-sim run")?;
    Ok(Proc {
        child,
        name: "nh-sim",
        log,
    })
}

/// A device-side MQTT client, connected.
async fn devices_client(gw: &Gateway) -> Result<AsyncClient> {
    let broker = gw.mqtt.context("embedded broker")?;
    let (client, mut eventloop) = AsyncClient::new(
        MqttOptions::new("browser-test-devices", broker.ip().to_string(), broker.port()),
        100,
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    tokio::spawn(async move {
        while let Ok(ev) = eventloop.poll().await {
            if let Event::Incoming(Packet::ConnAck(_)) = ev {
                if let Some(t) = tx.take() {
                    let _ = t.send(());
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), rx).await??;
    Ok(client)
}

async fn publish(client: &AsyncClient, device: &str, metrics: J) -> Result<()> {
    let payload = json!({ "ts": nh_gateway::clock::system_now_ms(), "metrics": metrics });
    client
        .publish(
            format!("nh/{SITE}/{device}/telemetry"),
            QoS::AtLeastOnce,
            false,
            payload.to_string(),
        )
        .await?;
    Ok(())
}

/// A client without credentials (the page's own requests carry the session cookie instead).
fn anonymous() -> reqwest011::Client {
    reqwest011::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

async fn body_data(b: &Browser, key: &str) -> Result<String> {
    Ok(
        b.execute("return document.body.dataset[arguments[0]] || '';", json!([key]))
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

async fn wait_body_data(b: &Browser, key: &str, want: &str, timeout: Duration) -> Result<()> {
    let what = format!("body data-{key} to be `{want}`");
    let reached = wait_until(&what, timeout, UI_POLL, || async move {
        anyhow::Ok((body_data(b, key).await? == want).then_some(()))
    })
    .await;
    if reached.is_err() {
        let got = body_data(b, key).await?;
        bail!("body data-{key} is `{got}`, not `{want}`, after {timeout:?}");
    }
    Ok(())
}

async fn login(b: &Browser, gw: &Gateway, (user, password): (&str, &str)) -> Result<()> {
    b.navigate(&gw.url("/")).await?;
    let u = b.wait_visible("#login-user", UI_TIMEOUT).await?;
    b.clear(&u).await?;
    b.send_keys(&u, user).await?;
    let p = b.find("#login-password").await?;
    b.send_keys(&p, password).await?;
    b.click(&b.find("#login-submit").await?).await?;
    b.wait_visible("#view-board", UI_TIMEOUT).await?;
    Ok(())
}

async fn logout(b: &Browser) -> Result<()> {
    b.click(&b.find("#logout").await?).await?;
    b.wait_visible("#login-form", UI_TIMEOUT).await?;
    Ok(())
}

async fn enable_sound(b: &Browser) -> Result<()> {
    let button = b.wait_visible("#enable-sound", UI_TIMEOUT).await?;
    b.click(&button).await?;
    wait_body_data(b, "sound", "on", UI_TIMEOUT).await?;
    b.wait_gone("#enable-sound", UI_TIMEOUT).await
}

/// How many times the page has sounded a tone pattern.
async fn tone_plays(b: &Browser) -> Result<u64> {
    Ok(body_data(b, "tonePlays").await?.parse().unwrap_or(0))
}

/// Waits until the page's current tone has sounded twice more (the P1 pattern repeats every 2 s,
/// the connection-lost one every 4 s).
async fn tone_repeats(b: &Browser) -> Result<()> {
    let start = tone_plays(b).await?;
    tone_plays_reach(b, start + 2, Duration::from_secs(12)).await
}

/// Waits until the page has sounded its tone `plays` times in all.
async fn tone_plays_reach(b: &Browser, plays: u64, timeout: Duration) -> Result<()> {
    let reached = wait_until("the tone to repeat", timeout, UI_POLL, || async move {
        anyhow::Ok((tone_plays(b).await? >= plays).then_some(()))
    })
    .await;
    if reached.is_err() {
        bail!(
            "the tone did not repeat within {timeout:?} (plays: {} of {plays})",
            tone_plays(b).await?
        );
    }
    Ok(())
}

/// Clicks the first element matching `css`, found again when the page rebuilt it between the
/// find and the click (the board is redrawn on every alert change it hears of).
async fn click_current(b: &Browser, css: &str) -> Result<()> {
    wait_until(&format!("a click on `{css}`"), UI_TIMEOUT, UI_POLL, || async move {
        let clicked: Result<Option<()>> = match b.click(&b.find(css).await?).await {
            Ok(()) => Ok(Some(())),
            Err(e) if format!("{e:#}").contains("stale element reference") => Ok(None),
            Err(e) => Err(e),
        };
        clicked
    })
    .await
}

/// The open alert of `rule` on `device`, as the API shows it.
async fn open_alert(gw: &Gateway, rule: &str, device: &str) -> Result<Option<J>> {
    let open = gw.get_json("/api/v1/alerts?state=open").await?;
    Ok(open
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["rule"] == rule && a["device"] == device)
        .cloned())
}

/// The board's cards as (priority, rule, device, state), top to bottom.
async fn board(b: &Browser) -> Result<Vec<(String, String, String, String)>> {
    let v = b
        .execute(
            "return [...document.querySelectorAll('#alerts > li.alert')].map(li => \
             [li.dataset.priority, li.dataset.rule, li.dataset.device, li.dataset.state]);",
            json!([]),
        )
        .await?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let s = |i: usize| r[i].as_str().unwrap_or_default().to_owned();
            (s(0), s(1), s(2), s(3))
        })
        .collect())
}

/// `fetch` from the page (with its cookie); answers the HTTP status.
async fn page_fetch_status(b: &Browser, method: &str, path: &str, body: J) -> Result<u16> {
    let v = b
        .execute_async(
            "const [method, path, body, done] = arguments; \
             fetch(path, {method, credentials: 'same-origin', \
               headers: {'content-type': 'application/json'}, body: JSON.stringify(body)}) \
             .then(r => done(r.status), e => done(-1));",
            json!([method, path, body]),
        )
        .await?;
    v.as_u64()
        .map(|s| s as u16)
        .ok_or_else(|| anyhow!("fetch from the page failed: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_room_page_in_a_real_browser() -> Result<()> {
    let dir = TempDir::new("browser")?;
    let config = site_config(dir.path())?;
    let mut gw = Gateway::start(&config, &[], dir.path()).await?;
    let origin = format!("http://{}", gw.http);
    let api = |path: &str| format!("{origin}{path}");

    // The fleet: six hours of history (the span of the page's charts), then live traffic.
    let sim_registry = simulated_registry(dir.path())?;
    let broker = gw.mqtt.context("embedded broker")?;
    let history = sim::run(&sim_registry, broker, 6 * 3600 - 120, 7, dir.path())?;
    assert!(history.len() > 500, "{} readings of history", history.len());
    let _live = live_simulator(&sim_registry, &gw, dir.path())?;
    gw.wait_forwarded(history.len() as u64, false, Duration::from_secs(60))
        .await?;
    let devices = devices_client(&gw).await?;

    // The page itself, as any client sees it.
    let r = anonymous().get(api("/")).send().await?;
    assert_eq!(r.status().as_u16(), 200);
    let csp = r
        .headers()
        .get_all("content-security-policy")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    assert!(csp.contains("default-src 'self'"), "CSP of /: `{csp}`");
    assert!(r.text().await?.contains("/assets/app.js"));

    let b = Browser::start(dir.path()).await?;
    let mut net = NetworkLog::default();

    // ---- a nurse logs in through the form and enables sound.
    b.navigate(&gw.url("/")).await?;
    b.wait_visible("#login-form", UI_TIMEOUT).await?;
    b.save_screenshot(&artifacts().join("login.png")).await?;
    login(&b, &gw, NURSE).await?;
    enable_sound(&b).await?;
    wait_body_data(&b, "conn", "ok", UI_TIMEOUT).await?;
    assert!(
        !b.displayed(&b.find("#conn-lost").await?).await?,
        "connection-lost shown while connected"
    );

    // ---- two calmer alerts first: a smoke alarm's fault (P2), a wearable's low battery (P4).
    publish(&devices, "smoke-201", json!({"fault": true, "battery_pct": 85})).await?;
    publish(&devices, "wear-202", json!({"battery_pct": 12, "worn": true})).await?;
    b.wait_visible(
        "#alerts li.alert[data-device='smoke-201'][data-priority='P2']",
        UI_TIMEOUT,
    )
    .await?;
    b.wait_visible(
        "#alerts li.alert[data-device='wear-202'][data-priority='P4']",
        UI_TIMEOUT,
    )
    .await?;
    assert_eq!(body_data(&b, "tone").await?, "none", "no P1: no tone");

    // ---- the fall: from publish to the board.
    let fall_card = "#alerts li.alert[data-rule='R1'][data-device='radar-101']";
    let published = Instant::now();
    publish(&devices, "radar-101", json!({"fall_state": "fall", "presence": true})).await?;
    let browser = &b;
    // Looked at every 20 ms: the figure printed below is only as fine as this.
    wait_until(
        "the fall on the board",
        FALL_DEADLINE,
        Duration::from_millis(20),
        || async move { anyhow::Ok((!browser.find_all(fall_card).await?.is_empty()).then_some(())) },
    )
    .await
    .with_context(|| format!("the fall did not reach the board in {FALL_DEADLINE:?}"))?;
    let latency = published.elapsed();
    println!("fall published -> on the board: {} ms", latency.as_millis());
    let card = b.find(fall_card).await?;
    let text = b.text(&card).await?;
    for want in ["A-101", "王秀英", "1 床", "radar-101", "R1", "确认跌倒"] {
        assert!(text.contains(want), "fall card lacks `{want}`: {text}");
    }
    assert_eq!(
        b.attribute(&card, "class").await?.unwrap_or_default(),
        "alert p1 state-active"
    );
    // Priority first (the simulator's baseline raises nothing, but the order must hold anyway).
    let order: Vec<String> = board(&b).await?.into_iter().map(|c| c.0).collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "priority order: {order:?}");
    assert!(
        order.first().is_some_and(|p| p == "P1") && order.iter().any(|p| p == "P2") && order.iter().any(|p| p == "P4"),
        "{order:?}"
    );
    // The P1 tone repeats until acknowledged.
    wait_body_data(&b, "tone", "p1", Duration::from_secs(3)).await?;
    tone_repeats(&b).await?;
    b.wait_painted().await?;
    b.save_screenshot(&artifacts().join("board-zh.png")).await?;

    // ---- English after the toggle, remembered across a reload.
    b.click(&b.find("#lang-toggle").await?).await?;
    assert_eq!(b.text(&b.find("#tab-board").await?).await?, "Alerts");
    let text = b.text(&b.find(fall_card).await?).await?;
    assert!(text.contains("Fall confirmed in A-101"), "{text}");
    b.save_screenshot(&artifacts().join("board-en.png")).await?;
    b.navigate(&gw.url("/")).await?;
    b.wait_visible(fall_card, UI_TIMEOUT).await?;
    assert_eq!(
        b.text(&b.find("#tab-board").await?).await?,
        "Alerts",
        "language remembered"
    );
    enable_sound(&b).await?;
    b.click(&b.find("#lang-toggle").await?).await?;
    assert_eq!(b.text(&b.find("#tab-board").await?).await?, "告警");

    // ---- acknowledge with a note.
    b.click(&b.find(&format!("{fall_card} button.ack")).await?).await?;
    let note = b.wait_visible("#action-note", UI_TIMEOUT).await?;
    b.send_keys(&note, "已到场，正在协助老人").await?;
    b.click(&b.find("#action-confirm").await?).await?;
    b.wait_visible(&format!("{fall_card}[data-state='acknowledged']"), UI_TIMEOUT)
        .await?;
    let text = b.text(&b.find(fall_card).await?).await?;
    assert!(
        text.contains("已确认") && text.contains("已到场，正在协助老人"),
        "{text}"
    );
    assert!(b.find_all(&format!("{fall_card} button.ack")).await?.is_empty());
    wait_body_data(&b, "tone", "none", Duration::from_secs(3)).await?;
    let plays = tone_plays(&b).await?;
    // Time that must pass with nothing happening: longer than the 2 s repeat of the P1 pattern.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(tone_plays(&b).await?, plays, "a tone sounded after the acknowledgement");

    // ---- resolve with a note, once the resident is up again (the gateway recorded the clear).
    publish(&devices, "radar-101", json!({"fall_state": "none", "presence": true})).await?;
    let gateway = &gw;
    wait_until("the fall's condition cleared", UI_TIMEOUT, UI_POLL, || async move {
        let fall = open_alert(gateway, "R1", "radar-101").await?;
        anyhow::Ok(fall.filter(|a| a["condition_cleared"] == true).map(|_| ()))
    })
    .await?;
    click_current(&b, &format!("{fall_card} button.resolve")).await?;
    let note = b.wait_visible("#action-note", UI_TIMEOUT).await?;
    b.send_keys(&note, "已扶起，未受伤，已通知家属").await?;
    b.click(&b.find("input[name='resolution'][value='handled']").await?)
        .await?;
    b.click(&b.find("#action-confirm").await?).await?;
    if let Err(e) = b.wait_gone(fall_card, UI_TIMEOUT).await {
        let shown = b.text(&b.find("#action-error").await?).await.unwrap_or_default();
        bail!("{e}; the dialog says: {shown}");
    }
    let left = board(&b).await?;
    assert!(
        left.iter().all(|c| c.1 != "R1")
            && left.iter().any(|c| c.2 == "smoke-201")
            && left.iter().any(|c| c.2 == "wear-202"),
        "{left:?}"
    );

    // ---- facility view: rooms on two floors, device states, a device's chart.
    b.click(&b.find("#tab-facility").await?).await?;
    b.wait_visible(
        ".room[data-room='A-201'] .device[data-device-id='smoke-201']",
        UI_TIMEOUT,
    )
    .await?;
    let floors = b.find_all("#floors .floor").await?;
    assert_eq!(floors.len(), 2, "two floors");
    let status = |id: &str| {
        let b = &b;
        let sel = format!(".device[data-device-id='{id}']");
        async move {
            let e = b.find(&sel).await?;
            Ok::<_, anyhow::Error>(b.attribute(&e, "data-status").await?.unwrap_or_default())
        }
    };
    assert_eq!(status("smoke-201").await?, "alarm");
    assert_eq!(status("wear-202").await?, "alarm");
    assert_eq!(status("wear-101").await?, "ok");
    b.click(&b.find(".device[data-device-id='wear-101']").await?).await?;
    b.wait_visible("#chart svg path.series", UI_TIMEOUT).await?;
    let range = b.text(&b.find("#chart-range").await?).await?;
    println!("wear-101 chart: {range}");
    b.save_screenshot(&artifacts().join("facility.png")).await?;

    // ---- shift summary.
    b.click(&b.find("#tab-shifts").await?).await?;
    b.wait_visible(".shift[data-shift='current']", UI_TIMEOUT).await?;
    b.save_screenshot(&artifacts().join("shifts.png")).await?;
    assert!(
        !b.displayed(&b.find("#tab-audit").await?).await?,
        "an operator has no audit tab"
    );
    b.collect_network(&mut net).await?;
    logout(&b).await?;

    // ---- an admin reads the audit log.
    login(&b, &gw, ADMIN).await?;
    enable_sound(&b).await?;
    b.click(&b.wait_visible("#tab-audit", UI_TIMEOUT).await?).await?;
    b.wait_visible("#audit-rows tr[data-action='resolved']", UI_TIMEOUT)
        .await?;
    b.save_screenshot(&artifacts().join("audit.png")).await?;
    b.collect_network(&mut net).await?;

    // ---- the session cookie as the browser holds it, then a session that ends unasked: the
    // page must not fall back to a quiet login form.
    let cookies = b.cookies().await?;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "nh_session")
        .ok_or_else(|| anyhow!("no nh_session cookie: {cookies:?}"))?;
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    b.delete_cookie("nh_session").await?;
    b.click(&b.find("#tab-facility").await?).await?;
    b.wait_visible("#session-lost", UI_TIMEOUT).await?;
    b.wait_visible("#login-form", UI_TIMEOUT).await?;
    wait_body_data(&b, "tone", "conn", Duration::from_secs(3)).await?;
    b.save_screenshot(&artifacts().join("session-lost.png")).await?;

    // ---- a viewer: no buttons, and the API refuses the write.
    login(&b, &gw, VIEWER).await?;
    enable_sound(&b).await?;
    b.wait_visible("#alerts li.alert[data-device='smoke-201']", UI_TIMEOUT)
        .await?;
    assert!(
        b.find_all("#alerts button.ack").await?.is_empty(),
        "viewer sees an ack button"
    );
    assert!(
        b.find_all("#alerts button.resolve").await?.is_empty(),
        "viewer sees a resolve button"
    );
    let open = b
        .execute(
            "return document.querySelector(\"#alerts li.alert[data-device='smoke-201']\").dataset.alertId;",
            json!([]),
        )
        .await?;
    let open_id = open.as_str().unwrap_or_default().to_owned();
    let status = page_fetch_status(
        &b,
        "POST",
        &format!("/api/v1/alerts/{open_id}/ack"),
        json!({"note": "viewer tries"}),
    )
    .await?;
    assert_eq!(status, 403, "viewer's ack");
    wait_body_data(&b, "conn", "ok", UI_TIMEOUT).await?;

    // ---- every request stayed on the gateway's origin; `/` came with the policy.
    b.collect_network(&mut net).await?;
    assert!(net.requests.len() > 10, "{} requests logged", net.requests.len());
    let elsewhere: Vec<&str> = net
        .requests
        .iter()
        .map(|r| r.url.as_str())
        .filter(|u| !(u.starts_with(&format!("{origin}/")) || *u == origin))
        .filter(|u| {
            !["data:", "blob:", "chrome:", "chrome-extension:", "about:", "devtools:"]
                .iter()
                .any(|p| u.starts_with(p))
        })
        .collect();
    assert!(elsewhere.is_empty(), "requests off the origin: {elsewhere:?}");
    let root = net
        .responses
        .iter()
        .find(|r| r.url == format!("{origin}/"))
        .ok_or_else(|| anyhow!("no response for / in the performance log"))?;
    let page_csp = root
        .headers
        .iter()
        .filter(|(k, _)| k == "content-security-policy")
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    assert!(
        page_csp.contains("default-src 'self'"),
        "CSP seen by the browser: `{page_csp}`"
    );
    let refused: Vec<String> = b
        .log("browser")
        .await?
        .into_iter()
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .filter(|m| m.contains("Content Security Policy"))
        .collect();
    assert!(refused.is_empty(), "CSP violations: {refused:?}");
    println!("performance log: {} requests, all on {origin}", net.requests.len());

    // ---- the API's own guards, through reqwest.
    let r = anonymous()
        .post(api(&format!("/api/v1/alerts/{open_id}/ack")))
        .json(&json!({"note": "nobody"}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 401, "unauthenticated ack");
    let audit: J = anonymous()
        .get(api("/api/v1/audit?limit=500"))
        .bearer_auth(TOKEN)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let entries = audit.as_array().cloned().unwrap_or_default();
    for action in ["acknowledged", "resolved"] {
        let e = entries
            .iter()
            .find(|e| e["action"] == action && e["actor"] == NURSE.0)
            .ok_or_else(|| anyhow!("no `{action}` by {} in the audit log: {audit}", NURSE.0))?;
        assert!(e["note"].as_str().is_some_and(|n| !n.is_empty()), "{e}");
    }
    // Last, since the limit also counts per client address (the browser's too).
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let r = anonymous()
            .post(api("/api/v1/login"))
            .json(&json!({"user": ADMIN.0, "password": "wrong-password"}))
            .send()
            .await?;
        statuses.push(r.status().as_u16());
        retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429], "six wrong passwords");
    assert!(retry_after.is_some_and(|s| s > 0), "429 without Retry-After");

    // ---- the gateway hangs (SIGSTOP): the stream stays open but the heartbeats stop. The page
    // must not take that silence for calm: lost after 15 s without a heartbeat (the last one
    // may be up to 5 s old), back to normal once they return.
    let signal = |sig: &str| {
        Command::new("kill")
            .args([sig, &gw.pid.to_string()])
            .status()
            .map_err(anyhow::Error::from)
            .and_then(|s| {
                if s.success() {
                    Ok(())
                } else {
                    bail!("kill {sig} failed")
                }
            })
    };
    signal("-STOP")?;
    let stopped = Instant::now();
    let shown = b.wait_visible("#conn-lost", Duration::from_secs(30)).await;
    let silent_for = stopped.elapsed();
    signal("-CONT")?;
    shown.context("connection-lost banner while the gateway is stopped")?;
    println!(
        "gateway SIGSTOPped -> connection-lost shown: {} ms",
        silent_for.as_millis()
    );
    assert!(
        silent_for >= Duration::from_secs(9),
        "lost shown after {silent_for:?}: earlier than the 15 s heartbeat timeout allows"
    );
    b.wait_gone("#conn-lost", Duration::from_secs(15))
        .await
        .context("the banner goes once heartbeats return")?;
    wait_body_data(&b, "conn", "ok", UI_TIMEOUT).await?;

    // ---- the gateway dies: the page must say so, loudly.
    let killed = Instant::now();
    gw.proc.child.kill()?;
    gw.proc.child.wait()?;
    b.wait_visible("#conn-lost", Duration::from_secs(10))
        .await
        .context("connection-lost banner within 10 s of the SIGKILL")?;
    println!(
        "gateway SIGKILLed -> connection-lost shown: {} ms",
        killed.elapsed().as_millis()
    );
    wait_body_data(&b, "tone", "conn", Duration::from_secs(2)).await?;
    tone_repeats(&b).await?;
    b.wait_painted().await?;
    b.save_screenshot(&artifacts().join("connection-lost.png")).await?;

    b.quit().await?;
    Ok(())
}

/// A gateway that reports itself degraded (here: its radar UART is not plugged in) must not look
/// calm: the page shows the amber banner and the degraded tone repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_gateway_is_shown_with_a_banner_and_tone() -> Result<()> {
    let dir = TempDir::new("browser-degraded")?;
    let config = site_config(dir.path())?;
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str(&format!(
        "[[serial]]\nbus = \"ward2\"\npath = {:?}\nprotocol = \"mr60fda1\"\nbaud = 115200\ndevice = \"radar-201\"\nroom = \"A-201\"\n",
        dir.path().join("no-such-tty").display().to_string()
    ));
    std::fs::write(&config, text)?;
    let gw = Gateway::start(&config, &[], dir.path()).await?;
    let health = anonymous().get(gw.url("/healthz")).send().await?;
    assert_eq!(health.status().as_u16(), 503, "a link is down: /healthz says degraded");

    let b = Browser::start(dir.path()).await?;
    login(&b, &gw, NURSE).await?;
    enable_sound(&b).await?;
    // The first heartbeat comes at once; the banner follows it.
    b.wait_visible("#degraded", UI_TIMEOUT)
        .await
        .context("degraded banner")?;
    assert!(
        !b.displayed(&b.find("#conn-lost").await?).await?,
        "degraded is not a lost connection"
    );
    // No P1 is open (S1 for the link is a P2), so what sounds is the degraded pattern.
    wait_body_data(&b, "tone", "degraded", UI_TIMEOUT).await?;
    let first = tone_plays(&b).await?;
    tone_plays_reach(&b, first + 1, Duration::from_secs(30))
        .await
        .context("the degraded tone")?;
    b.save_screenshot(&artifacts().join("degraded.png")).await?;
    b.quit().await?;
    Ok(())
}
