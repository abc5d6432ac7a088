//! Who may do what on MQTT, against the real gateway with `mosquitto_pub`/`mosquitto_sub` (and
//! rumqttc for wills and the reconnect storm) as third-party clients:
//!
//! - a refused CONNECT gets its CONNACK code (5 without credentials or under another identity's
//!   client id, 4 or 5 for a wrong secret or an unknown user), and never takes over the client
//!   id of a connected device;
//! - a device publishing on another device's topic, on the gateway's alerts topic or with a will
//!   on another device's topic reaches no subscriber and no journal, is counted, and raises S8
//!   once; its own readings before and after still land;
//! - the preheat attack of issue 18 (an attacker holding a gas detector in preheat while it
//!   reports 45 %LEL), without credentials and with another detector's: R14 P1 at once;
//! - a Zigbee2MQTT bridge publishes for its listed devices only;
//! - Mosquitto on the files of `nh-gateway mosquitto-config` refuses the same spoofs;
//! - 2,000 devices reconnect after a gateway restart (the real time is printed).
//!
//! Every test runs its own gateway on free ports in its own folder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use nh_e2e::mqtt_cli::{publish, publish_ok, Login, PubOutcome, Subscriber};
use nh_e2e::{
    free_port, mosquitto_config, provision, provision_all, raise_open_files_limit, wait_for, write_site, Gateway,
    Mosquitto, Provisioned, TempDir,
};
use rumqttc::{AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::{json, Value as Json};

const SITE: &str = "nh-acc";

/// Two kitchen gas detectors, a vital-signs radar (device A of the spoof tests), a door contact
/// reporting through a home hub (device B), and three Zigbee devices of which the Zigbee2MQTT
/// bridge speaks for two.
const REGISTRY: &str = r#"site = "nh-acc"

[[devices]]
id = "kitchen-gas-1"
class = "gas_detector"
building = "A"
floor = "1"
room = "K-101"
zone = "kitchen"
interval_s = 60

[[devices]]
id = "kitchen-gas-2"
class = "gas_detector"
building = "A"
floor = "1"
room = "K-102"
zone = "kitchen"
interval_s = 60

[[devices]]
id = "vital-1"
class = "vital_radar"
building = "A"
floor = "1"
room = "A-101"
zone = "bedroom"
bed = "1"
interval_s = 60

[[devices]]
id = "door-2"
class = "door_contact"
building = "A"
floor = "1"
room = "A-102"
zone = "entrance"
interval_s = 600

[[devices]]
id = "door-z-1"
class = "door_contact"
zigbee_name = "door_z1"
building = "A"
floor = "1"
room = "A-103"
zone = "entrance"
interval_s = 600

[[devices]]
id = "smoke-z-1"
class = "smoke_alarm"
zigbee_name = "smoke_z1"
building = "A"
floor = "1"
room = "A-103"
interval_s = 600

[[devices]]
id = "door-z-9"
class = "door_contact"
zigbee_name = "door_z9"
building = "A"
floor = "1"
room = "A-109"
zone = "entrance"
interval_s = 600
"#;

const IDENTITIES: &str = r#"# The Zigbee2MQTT instance of floor 1: two of its three devices.
[[bridges]]
name = "z2m"
devices = ["door-z-1", "smoke-z-1"]

# The home hub the door contact door-2 reports through.
[[bridges]]
name = "hub"
devices = ["door-2"]

# The control room's MQTT client: reads everything, publishes nothing.
[[consumers]]
name = "control-room"
subscribe = ["nh/{site}/#", "zigbee2mqtt/#"]
"#;

/// How long a reading, a count or an alert may take to show (a loaded 2-core CI machine).
const SHOW: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

fn telemetry(device: &str) -> String {
    format!("nh/{SITE}/{device}/telemetry")
}

fn alerts_topic() -> String {
    format!("nh/{SITE}/alerts")
}

fn embedded_config(anonymous: &str) -> String {
    format!(
        r#"[site]
id = "{SITE}"
[mqtt]
mode = "embedded"
[mqtt.access]
identities = "mqtt-identities.toml"
anonymous = "{anonymous}"
[registry]
file = "devices.toml"
[journal]
path = "journal.db"
"#
    )
}

/// A gateway on the embedded broker with access control, its secrets provisioned.
struct Embedded {
    gw: Gateway,
    broker: SocketAddr,
    secrets: Provisioned,
    config: PathBuf,
    dir: TempDir,
}

impl Embedded {
    async fn start(label: &str, anonymous: &str, identities: &[&str]) -> Result<Embedded> {
        let dir = TempDir::new(label)?;
        let config = write_site(dir.path(), &embedded_config(anonymous), REGISTRY, Some(IDENTITIES))?;
        let secrets = provision(&config, identities)?;
        let gw = Gateway::start(&config, &[], dir.path()).await?;
        let broker = gw.mqtt.ok_or_else(|| anyhow!("no embedded broker address"))?;
        Ok(Embedded {
            gw,
            broker,
            secrets,
            config,
            dir,
        })
    }

    fn login(&self, name: &str) -> Result<Login> {
        Ok(Login::identity(name, self.secrets.secret(name)?))
    }
}

/// A secret of the right form that is not `secret`.
fn wrong_secret(secret: &str) -> String {
    let wrong = "0123456789abcdef0123456789abcdef01234567".to_owned();
    if wrong == secret {
        "fedcba9876543210fedcba9876543210fedcba98".to_owned()
    } else {
        wrong
    }
}

/// `nh_mqtt_refused_total` for `reason` (summed over any other labels).
async fn refused(gw: &Gateway, reason: &str) -> Result<f64> {
    let label = format!("reason=\"{reason}\"");
    Ok(gw
        .metrics()
        .await?
        .iter()
        .filter(|(k, _)| k.starts_with("nh_mqtt_refused_total{") && k.contains(&label))
        .map(|(_, v)| v)
        .sum())
}

/// Waits until `nh_mqtt_refused_total{reason}` reaches `at_least`; returns it.
async fn wait_refused(gw: &Gateway, reason: &str, at_least: f64) -> Result<f64> {
    wait_for(
        &format!("nh_mqtt_refused_total{{reason=\"{reason}\"}} >= {at_least}"),
        SHOW,
        POLL,
        || async move { refused(gw, reason).await.ok().filter(|n| *n >= at_least) },
    )
    .await
    .with_context(|| gw.proc.log_tail())
}

/// Every journaled reading of `device` (`ts`, `seq`, `metrics`).
async fn readings(gw: &Gateway, device: &str) -> Result<Vec<Json>> {
    let rows = gw
        .get_json(&format!("/api/v1/readings?device={device}&limit=100000"))
        .await?;
    rows.as_array()
        .cloned()
        .ok_or_else(|| anyhow!("readings of {device}: {rows}"))
}

/// Waits until a journaled reading of `device` has metrics satisfying `pred`.
async fn wait_reading(gw: &Gateway, device: &str, what: &str, pred: impl Fn(&Json) -> bool) -> Result<Json> {
    let pred = &pred;
    wait_for(&format!("{device}: {what}"), SHOW, POLL, || async move {
        readings(gw, device)
            .await
            .ok()?
            .into_iter()
            .find(|r| pred(&r["metrics"]))
    })
    .await
    .with_context(|| gw.proc.log_tail())
}

/// Every alert, whatever its state.
async fn alerts(gw: &Gateway) -> Result<Vec<Json>> {
    let list = gw.get_json("/api/v1/alerts?state=all&limit=10000").await?;
    list.as_array().cloned().ok_or_else(|| anyhow!("alerts list: {list}"))
}

/// The alerts of `rule` for `device`.
async fn alerts_for(gw: &Gateway, rule: &str, device: &str) -> Result<Vec<Json>> {
    Ok(alerts(gw)
        .await?
        .into_iter()
        .filter(|a| a["rule"] == rule && a["device"] == device)
        .collect())
}

/// Waits for the first alert of `rule` for `device`.
async fn wait_alert(gw: &Gateway, rule: &str, device: &str) -> Result<Json> {
    wait_for(&format!("{rule} for {device}"), SHOW, POLL, || async move {
        alerts_for(gw, rule, device).await.ok()?.into_iter().next()
    })
    .await
    .with_context(|| gw.proc.log_tail())
}

/// Waits for an entry of the access audit by `actor` with `action`.
async fn wait_audit(gw: &Gateway, actor: &str, action: &str) -> Result<Json> {
    wait_for(&format!("audit entry {actor} {action}"), SHOW, POLL, || async move {
        let log = gw.get_json("/api/v1/audit?limit=1000").await.ok()?;
        log.as_array()?
            .iter()
            .find(|e| e["actor"] == actor && e["action"] == action)
            .cloned()
    })
    .await
    .with_context(|| gw.proc.log_tail())
}

fn assert_refused(out: &PubOutcome, codes: &[u8], what: &str) {
    assert!(out.refused(), "{what}: expected a refused CONNECT, got {out:?}");
    assert!(
        out.connack().is_some_and(|c| codes.contains(&c)),
        "{what}: expected CONNACK {codes:?}, got {out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connects_get_their_connack_code_and_never_take_over_a_client_id() -> Result<()> {
    let site = Embedded::start("mqtt-refused", "refuse", &["vital-1", "door-2", "hub"]).await?;
    let (gw, broker) = (&site.gw, site.broker);
    let a = site.secrets.secret("vital-1")?;

    // The provisioning file is its owner's alone; the credentials file holds no secret.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&site.secrets.file)?.permissions().mode();
        assert_eq!(mode & 0o077, 0, "provisioning file mode {mode:o}");
        let credentials = site.dir.path().join("mqtt-credentials.toml");
        let stored = std::fs::read_to_string(&credentials)
            .with_context(|| format!("the credentials file beside {}", site.config.display()))?;
        for (name, secret) in &site.secrets.secrets {
            assert!(stored.contains(name.as_str()), "no credentials for {name}:\n{stored}");
            assert!(
                !stored.contains(secret.as_str()),
                "the secret of {name} is in the credentials file"
            );
        }
    }

    let reading = json!({"metrics": {"heart_rate": 99}}).to_string();
    // No credentials, under a client id of its own and under a device's: 5.
    for id in ["probe-anonymous", "vital-1"] {
        let out = publish(broker, &Login::anonymous(id), &telemetry("vital-1"), &reading, &[]).await?;
        assert_refused(&out, &[5], &format!("no credentials as {id}"));
    }
    wait_refused(gw, "no_credentials", 2.0).await?;

    // A wrong secret for a known identity, any secret for an unknown one: 4 or 5.
    let wrong = wrong_secret(a);
    let out = publish(
        broker,
        &Login::identity("vital-1", &wrong),
        &telemetry("vital-1"),
        &reading,
        &[],
    )
    .await?;
    assert_refused(&out, &[4, 5], "a wrong secret");
    wait_refused(gw, "bad_secret", 1.0).await?;
    let out = publish(
        broker,
        &Login::identity("nobody", &wrong),
        &telemetry("vital-1"),
        &reading,
        &[],
    )
    .await?;
    assert_refused(&out, &[4, 5], "an unknown user");
    wait_refused(gw, "unknown_user", 1.0).await?;

    // B is connected, subscribed to its own topics.
    let b_topics = format!("nh/{SITE}/door-2/#");
    let mut b = Subscriber::start(broker, &site.login("door-2")?, &[b_topics.as_str()], site.dir.path()).await?;
    // A's credentials under B's client id: 5, and B is not disconnected.
    let out = publish(
        broker,
        &Login::new("door-2", "vital-1", a),
        &telemetry("vital-1"),
        &reading,
        &[],
    )
    .await?;
    assert_refused(&out, &[5], "A's credentials with B's client id");
    wait_refused(gw, "client_id", 1.0).await?;
    // A subscribing to B's topics: refused (SUBACK 128), counted.
    let denied = Subscriber::start(broker, &site.login("vital-1")?, &[b_topics.as_str()], site.dir.path()).await;
    assert!(denied.is_err(), "vital-1 subscribed to door-2's topics");
    drop(denied);
    wait_refused(gw, "subscribe", 1.0).await?;
    // B's hub reports for it afterwards; B, still on its first connection, receives it.
    let report = json!({"metrics": {"contact_open": false, "battery_pct": 88}}).to_string();
    publish_ok(broker, &site.login("hub")?, &telemetry("door-2"), &report).await?;
    b.wait_for_message("door-2 to receive its hub's report", SHOW, |t, p| {
        t == telemetry("door-2") && p.contains("\"battery_pct\":88")
    })
    .await?;
    assert!(b.running(), "door-2's subscriber exited:\n{}", b.output());
    assert_eq!(b.connects(), 1, "door-2 was disconnected:\n{}", b.output());

    // The hub's report was journaled; nothing of the refused clients was.
    wait_reading(gw, "door-2", "the hub's report", |m| m["battery_pct"] == 88.0).await?;
    assert_eq!(readings(gw, "vital-1").await?, Vec::<Json>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_publishes_only_as_itself_and_impersonation_raises_s8_once() -> Result<()> {
    let mut site = Embedded::start("mqtt-spoof", "refuse", &["vital-1", "door-2", "control-room"]).await?;
    let broker = site.broker;
    let a = site.login("vital-1")?;
    let everything = format!("nh/{SITE}/#");
    let consumer = Subscriber::start(
        broker,
        &site.login("control-room")?,
        &[everything.as_str(), "zigbee2mqtt/#"],
        site.dir.path(),
    )
    .await?;
    let gw = &site.gw;

    // A's own reading before: journaled and delivered.
    publish_ok(
        broker,
        &a,
        &telemetry("vital-1"),
        &json!({"metrics": {"heart_rate": 61}}).to_string(),
    )
    .await?;
    wait_reading(gw, "vital-1", "heart_rate 61", |m| m["heart_rate"] == 61.0).await?;
    consumer
        .wait_for_message("the consumer to receive A's first reading", SHOW, |t, p| {
            t == telemetry("vital-1") && p.contains("61")
        })
        .await?;
    let publish_before = refused(gw, "publish").await?;
    let will_before = refused(gw, "will").await?;

    // A on B's telemetry topic and on the gateway's alerts topic: acknowledged (the device is
    // not disconnected for one refused message) and dropped.
    let fake_door = json!({"metrics": {"contact_open": true, "battery_pct": 13}}).to_string();
    let out = publish(broker, &a, &telemetry("door-2"), &fake_door, &[]).await?;
    assert!(
        out.success(),
        "a refused PUBLISH is acknowledged, the connection kept: {out:?}"
    );
    let fake_alert =
        json!({"id": "a-spoofed", "rule": "R1", "priority": "P1", "device": "door-2", "message": "spoofed-alert"})
            .to_string();
    let out = publish(broker, &a, &alerts_topic(), &fake_alert, &[]).await?;
    assert!(
        out.success(),
        "a refused PUBLISH is acknowledged, the connection kept: {out:?}"
    );
    // A with a will on B's topic: refused at CONNECT.
    let fake_will = json!({"metrics": {"contact_open": true, "battery_pct": 14}}).to_string();
    let door_topic = telemetry("door-2");
    let will = [
        "--will-topic",
        door_topic.as_str(),
        "--will-payload",
        fake_will.as_str(),
        "--will-qos",
        "1",
    ];
    let out = publish(
        broker,
        &a,
        &telemetry("vital-1"),
        &json!({"metrics": {"heart_rate": 63}}).to_string(),
        &will,
    )
    .await?;
    assert_refused(&out, &[5], "a will on another device's topic");

    wait_refused(gw, "publish", publish_before + 2.0).await?;
    wait_refused(gw, "will", will_before + 1.0).await?;

    // A's own reading after: journaled and delivered.
    publish_ok(
        broker,
        &a,
        &telemetry("vital-1"),
        &json!({"metrics": {"heart_rate": 62}}).to_string(),
    )
    .await?;
    wait_reading(gw, "vital-1", "heart_rate 62", |m| m["heart_rate"] == 62.0).await?;
    consumer
        .wait_for_message("the consumer to receive A's second reading", SHOW, |t, p| {
            t == telemetry("vital-1") && p.contains("62")
        })
        .await?;

    // S8 for A, once, P2; none for B, whose name A used.
    let s8 = wait_alert(gw, "S8", "gateway:access:vital-1").await?;
    assert_eq!(s8["priority"], "P2", "{s8}");
    wait_audit(gw, "mqtt:vital-1", "mqtt_refused").await?;
    let s8s = alerts_for(gw, "S8", "gateway:access:vital-1").await?;
    assert_eq!(s8s.len(), 1, "one S8 per identity per episode: {s8s:#?}");
    assert_eq!(alerts_for(gw, "S8", "gateway:access:door-2").await?, Vec::<Json>::new());
    // Per identity in the API (admins): A's refusals, none for B.
    let ids = gw.get_json("/api/v1/mqtt/identities").await?;
    assert_eq!(ids["embedded"], true, "{ids}");
    assert!(
        ids["identities"]["vital-1"]["refused"]["publish"].as_u64() >= Some(2),
        "{ids}"
    );
    assert!(
        ids["identities"]["vital-1"]["refused"]["will"].as_u64() >= Some(1),
        "{ids}"
    );
    assert!(
        ids["identities"]["door-2"]["refused"]
            .as_object()
            .is_none_or(|r| r.is_empty()),
        "{ids}"
    );

    // Delivered to no subscriber, journaled nowhere.
    let received = consumer.messages();
    for (topic, payload) in &received {
        assert!(*topic != telemetry("door-2"), "the consumer received {topic} {payload}");
        assert!(
            !payload.contains("spoofed-alert") && !payload.contains("a-spoofed"),
            "the consumer received the fake alert: {topic} {payload}"
        );
    }
    assert_eq!(readings(gw, "door-2").await?, Vec::<Json>::new(), "B's journal");
    let mut rates: Vec<f64> = readings(gw, "vital-1")
        .await?
        .iter()
        .filter_map(|r| r["metrics"]["heart_rate"].as_f64())
        .collect();
    rates.sort_by(f64::total_cmp);
    assert_eq!(rates, vec![61.0, 62.0], "A's own readings, and only those");
    let live = alerts(gw).await?;
    assert!(
        !live.iter().any(|x| x["id"] == "a-spoofed"),
        "the fake alert is in the alert list: {live:#?}"
    );
    assert!(site.gw.proc.child.try_wait()?.is_none(), "the gateway exited");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_refused_publishes_close_the_connection() -> Result<()> {
    let site = Embedded::start("mqtt-repeat", "refuse", &["vital-1"]).await?;
    let (gw, broker) = (&site.gw, site.broker);
    let publish_before = refused(gw, "publish").await?;
    let mut opts = MqttOptions::new("vital-1", broker.ip().to_string(), broker.port());
    opts.set_credentials("vital-1", site.secrets.secret("vital-1")?);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let spoofs = 20;
    for i in 0..spoofs {
        let payload = json!({"metrics": {"contact_open": true, "battery_pct": i}}).to_string();
        client
            .publish(telemetry("door-2"), QoS::AtLeastOnce, false, payload)
            .await?;
    }
    let (acks, ended) = tokio::time::timeout(SHOW, async {
        let mut acks = 0u32;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acks += 1,
                Ok(_) => {}
                Err(e) => break (acks, e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("the connection stayed open through {spoofs} refused publishes"))?;
    eprintln!("repeated refusals: {acks} refused publishes acknowledged, then the connection ended ({ended})");
    assert!(
        acks <= 5,
        "{acks} refused publishes acknowledged before the connection was closed"
    );
    wait_refused(gw, "publish", publish_before + 5.0).await?;
    assert_eq!(readings(gw, "door-2").await?, Vec::<Json>::new());
    drop(client);
    Ok(())
}

/// Who attacks the gas detector.
#[derive(Clone, Copy, Debug)]
enum Attacker {
    /// Any program on the LAN, without credentials (under its own client id or the detector's).
    NoCredentials,
    /// The other kitchen detector's credentials.
    OtherDetector,
}

/// Issue 18's first paragraph: while an attacker keeps publishing `{"metrics":{"preheat":true}}`
/// for kitchen-gas-1, the detector reports 45 %LEL. R14 (P1, no hold at >= 25 %LEL) must be
/// raised at once, as if the attacker were not there.
async fn preheat_attack(label: &str, attacker: Attacker) -> Result<()> {
    let site = Embedded::start(label, "refuse", &["kitchen-gas-1", "kitchen-gas-2"]).await?;
    let (gw, broker) = (&site.gw, site.broker);
    let stop = Arc::new(AtomicBool::new(false));
    let attack = {
        let stop = stop.clone();
        let other = site.login("kitchen-gas-2")?;
        tokio::spawn(async move {
            let preheat = json!({"metrics": {"preheat": true}}).to_string();
            let mut outcomes = Vec::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let login = match attacker {
                    Attacker::NoCredentials if i.is_multiple_of(2) => Login::anonymous("attacker"),
                    Attacker::NoCredentials => Login::anonymous("kitchen-gas-1"),
                    Attacker::OtherDetector => other.clone(),
                };
                outcomes.push(publish(broker, &login, &telemetry("kitchen-gas-1"), &preheat, &[]).await?);
                i += 1;
                // The attacker's pace: a few messages a second.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(outcomes)
        })
    };
    // The attack is under way before the leak.
    let reason = match attacker {
        Attacker::NoCredentials => "no_credentials",
        Attacker::OtherDetector => "publish",
    };
    wait_refused(gw, reason, 3.0).await?;

    let leak = Instant::now();
    publish_ok(
        broker,
        &site.login("kitchen-gas-1")?,
        &telemetry("kitchen-gas-1"),
        &json!({"metrics": {"gas_lel": 45.0}}).to_string(),
    )
    .await?;
    let r14 = wait_alert(gw, "R14", "kitchen-gas-1").await?;
    let took = leak.elapsed();
    eprintln!(
        "preheat attack ({attacker:?}): R14 {} raised {} ms after the 45 %LEL reading",
        r14["priority"],
        took.as_millis()
    );
    assert_eq!(r14["priority"], "P1", "{r14}");
    // Keep attacking a little longer: still nothing of it lands.
    let during = refused(gw, reason).await?;
    wait_refused(gw, reason, during + 2.0).await?;
    stop.store(true, Ordering::Relaxed);
    let outcomes = attack.await??;
    ensure!(outcomes.len() >= 5, "only {} attacks", outcomes.len());
    for out in &outcomes {
        match attacker {
            Attacker::NoCredentials => assert_refused(out, &[5], "the attacker without credentials"),
            Attacker::OtherDetector => assert!(out.success(), "refused publishes are acknowledged: {out:?}"),
        }
    }

    // The detector's journal: its reading, never the attacker's preheat.
    let rows = readings(gw, "kitchen-gas-1").await?;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["metrics"]["gas_lel"], 45.0);
    assert!(
        rows.iter().all(|r| r["metrics"].get("preheat").is_none()),
        "a preheat landed: {rows:#?}"
    );
    assert_eq!(readings(gw, "kitchen-gas-2").await?, Vec::<Json>::new());
    // Nor was the level taken for one read during preheat.
    assert_eq!(alerts_for(gw, "R23", "kitchen-gas-1").await?, Vec::<Json>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preheat_attack_without_credentials_leaves_r14_as_if_the_attacker_were_not_there() -> Result<()> {
    preheat_attack("mqtt-preheat-anonymous", Attacker::NoCredentials).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preheat_attack_with_another_detectors_credentials_leaves_r14_as_if_the_attacker_were_not_there(
) -> Result<()> {
    preheat_attack("mqtt-preheat-other-device", Attacker::OtherDetector).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zigbee2mqtt_bridge_publishes_for_its_listed_devices_and_nothing_else() -> Result<()> {
    let site = Embedded::start("mqtt-bridge", "refuse", &["z2m"]).await?;
    let (gw, broker) = (&site.gw, site.broker);
    let z2m = site.login("z2m")?;
    let publish_before = refused(gw, "publish").await?;

    // Its listed devices, on their Zigbee2MQTT topics and on the canonical one; its own state.
    publish_ok(broker, &z2m, "zigbee2mqtt/door_z1", r#"{"contact":true,"battery":91}"#).await?;
    publish_ok(broker, &z2m, "zigbee2mqtt/smoke_z1", r#"{"smoke":false,"battery":92}"#).await?;
    publish_ok(
        broker,
        &z2m,
        &telemetry("door-z-1"),
        &json!({"metrics": {"contact_open": true, "battery_pct": 90}}).to_string(),
    )
    .await?;
    publish_ok(broker, &z2m, "zigbee2mqtt/bridge/state", r#"{"state":"online"}"#).await?;
    // An unlisted Zigbee device, and a device that is not its own at all.
    publish_ok(broker, &z2m, "zigbee2mqtt/door_z9", r#"{"contact":false,"battery":93}"#).await?;
    publish_ok(
        broker,
        &z2m,
        &telemetry("kitchen-gas-1"),
        &json!({"metrics": {"gas_lel": 0.5}}).to_string(),
    )
    .await?;

    wait_reading(gw, "door-z-1", "its Zigbee2MQTT report", |m| m["battery_pct"] == 91.0).await?;
    wait_reading(gw, "door-z-1", "its canonical report", |m| m["battery_pct"] == 90.0).await?;
    wait_reading(gw, "smoke-z-1", "its Zigbee2MQTT report", |m| m["battery_pct"] == 92.0).await?;
    wait_refused(gw, "publish", publish_before + 2.0).await?;
    assert_eq!(
        refused(gw, "publish").await?,
        publish_before + 2.0,
        "exactly the two publishes for devices the bridge does not speak for are refused"
    );
    assert_eq!(readings(gw, "door-z-9").await?, Vec::<Json>::new());
    assert_eq!(readings(gw, "kitchen-gas-1").await?, Vec::<Json>::new());
    wait_alert(gw, "S8", "gateway:access:z2m").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_without_credentials_a_tool_publishes_for_devices_but_never_as_one_or_as_the_gateway() -> Result<()>
{
    let site = Embedded::start("mqtt-loopback", "loopback", &["vital-1"]).await?;
    let (gw, broker) = (&site.gw, site.broker);
    let tool = Login::anonymous("bench-tool");
    publish_ok(
        broker,
        &tool,
        &telemetry("door-2"),
        &json!({"metrics": {"contact_open": false, "battery_pct": 77}}).to_string(),
    )
    .await?;
    wait_reading(gw, "door-2", "the tool's reading", |m| m["battery_pct"] == 77.0).await?;
    // Not on the gateway's own topic.
    let publish_before = refused(gw, "publish").await?;
    publish_ok(broker, &tool, &alerts_topic(), r#"{"id":"a-from-a-tool"}"#).await?;
    wait_refused(gw, "publish", publish_before + 1.0).await?;
    // Not under a client id an identity owns.
    let out = publish(
        broker,
        &Login::anonymous("vital-1"),
        &telemetry("vital-1"),
        &json!({"metrics": {"heart_rate": 70}}).to_string(),
        &[],
    )
    .await?;
    assert_refused(&out, &[5], "no credentials under a device's client id");
    // The device itself, with its credentials.
    publish_ok(
        broker,
        &site.login("vital-1")?,
        &telemetry("vital-1"),
        &json!({"metrics": {"heart_rate": 71}}).to_string(),
    )
    .await?;
    let rows = wait_reading(gw, "vital-1", "its own reading", |m| m["heart_rate"] == 71.0).await?;
    assert_eq!(readings(gw, "vital-1").await?.len(), 1, "{rows}");
    Ok(())
}

/// The gateway's password on the external broker (its three users: subscriber, priority lane,
/// alert publisher).
const GATEWAY_PASSWORD: &str = "nh-e2e-gateway-on-mosquitto-0123456789";
const GATEWAY_CLIENT: &str = "nh-gw-acc";

fn external_config(port: u16) -> String {
    format!(
        r#"[site]
id = "{SITE}"
[mqtt]
mode = "external"
host = "127.0.0.1"
port = {port}
client_id = "{GATEWAY_CLIENT}"
username = "{{client_id}}"
password = {{ file = "mqtt-password" }}
[mqtt.access]
identities = "mqtt-identities.toml"
[registry]
file = "devices.toml"
[journal]
path = "journal.db"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_on_the_generated_files_refuses_the_same_spoofs() -> Result<()> {
    let dir = TempDir::new("mqtt-external")?;
    let port = free_port();
    std::fs::write(dir.path().join("mqtt-password"), GATEWAY_PASSWORD)?;
    let config = write_site(dir.path(), &external_config(port), REGISTRY, Some(IDENTITIES))?;
    let secrets = provision(&config, &["vital-1", "door-2", "hub", "control-room"])?;
    let out = dir.path().join("mosquitto-files");
    std::fs::create_dir_all(&out)?;
    mosquitto_config(&config, &out)?;

    // The files: a user per provisioned identity and per gateway client, hashed; their rights.
    let passwords = std::fs::read_to_string(out.join("passwords"))?;
    let gateway_users = [
        GATEWAY_CLIENT.to_owned(),
        format!("{GATEWAY_CLIENT}-ls"),
        // The alert publisher's id does not follow `[mqtt] client_id` (docs/contracts.md).
        format!("nh-gateway-{SITE}-alerts"),
    ];
    for user in secrets.secrets.keys().chain(gateway_users.iter()) {
        assert!(
            passwords.lines().any(|l| l.starts_with(&format!("{user}:$6$"))),
            "no `{user}:$6$...` line in the password file:\n{passwords}"
        );
    }
    for secret in secrets.secrets.values().map(String::as_str).chain([GATEWAY_PASSWORD]) {
        assert!(!passwords.contains(secret), "a secret in clear in the password file");
    }
    let acl = std::fs::read_to_string(out.join("acl"))?;
    for user in ["vital-1", "door-2", "hub", "control-room", GATEWAY_CLIENT] {
        assert!(
            acl.lines().any(|l| l.trim() == format!("user {user}")),
            "no `user {user}` in the ACL file:\n{acl}"
        );
    }
    let snippet = std::fs::read_to_string(out.join("mosquitto.conf"))?;
    for line in [
        "allow_anonymous false",
        "use_username_as_clientid true",
        "persistence true",
        "password_file ",
        "acl_file ",
        "max_inflight_messages ",
    ] {
        assert!(
            snippet.lines().any(|l| l.trim_start().starts_with(line)),
            "no `{line}` in the snippet:\n{snippet}"
        );
    }

    let mosquitto = Mosquitto::start_generated(&out, port).await?;
    let gw = Gateway::start(&config, &[], dir.path())
        .await
        .with_context(|| format!("mosquitto log:\n{}", mosquitto.log()))?;
    assert_eq!(gw.mqtt, None, "external mode runs no broker");
    wait_for("the gateway connected to Mosquitto", SHOW, POLL, || async {
        let m = gw.metrics().await.ok()?;
        (m.get("nh_mqtt_connected").copied() == Some(1.0)).then_some(())
    })
    .await
    .with_context(|| format!("{}\nmosquitto log:\n{}", gw.proc.log_tail(), mosquitto.log()))?;
    let broker: SocketAddr = ([127, 0, 0, 1], port).into();
    let a_secret = secrets.secret("vital-1")?;
    let a = Login::identity("vital-1", a_secret);
    let reading = json!({"metrics": {"heart_rate": 99}}).to_string();

    // No credentials, a wrong secret: refused.
    let out = publish(
        broker,
        &Login::anonymous("probe-anonymous"),
        &telemetry("vital-1"),
        &reading,
        &[],
    )
    .await?;
    assert_refused(&out, &[4, 5], "no credentials");
    let out = publish(
        broker,
        &Login::identity("vital-1", &wrong_secret(a_secret)),
        &telemetry("vital-1"),
        &reading,
        &[],
    )
    .await?;
    assert_refused(&out, &[4, 5], "a wrong secret");

    let everything = format!("nh/{SITE}/#");
    let consumer = Subscriber::start(
        broker,
        &Login::identity("control-room", secrets.secret("control-room")?),
        &[everything.as_str(), "zigbee2mqtt/#"],
        dir.path(),
    )
    .await?;
    let b_topics = format!("nh/{SITE}/door-2/#");
    let mut b = Subscriber::start(
        broker,
        &Login::identity("door-2", secrets.secret("door-2")?),
        &[b_topics.as_str()],
        dir.path(),
    )
    .await?;

    // A's own reading before.
    publish_ok(
        broker,
        &a,
        &telemetry("vital-1"),
        &json!({"metrics": {"heart_rate": 71}}).to_string(),
    )
    .await?;
    wait_reading(&gw, "vital-1", "heart_rate 71", |m| m["heart_rate"] == 71.0).await?;

    // A's credentials under B's client id: whatever Mosquitto answers (with
    // use_username_as_clientid it connects as A), B is not disconnected.
    let _ = publish(
        broker,
        &Login::new("door-2", "vital-1", a_secret),
        &telemetry("door-2"),
        &reading,
        &[],
    )
    .await?;
    // A on B's topic and on the gateway's alerts topic.
    let fake_door = json!({"metrics": {"contact_open": true, "battery_pct": 13}}).to_string();
    let out = publish(broker, &a, &telemetry("door-2"), &fake_door, &[]).await?;
    assert!(out.success(), "Mosquitto acknowledges a denied QoS 1 PUBLISH: {out:?}");
    publish(
        broker,
        &a,
        &alerts_topic(),
        r#"{"id":"a-spoofed","message":"spoofed-alert"}"#,
        &[],
    )
    .await?;
    // A with a will on B's topic, gone without a DISCONNECT.
    let will_result = connect_with_will_and_vanish(broker, "vital-1", a_secret, &telemetry("door-2")).await?;
    eprintln!("external mode: a will on another device's topic at CONNECT: {will_result}");

    // A's own reading after: journaled and delivered (after anything the will could have done).
    publish_ok(
        broker,
        &a,
        &telemetry("vital-1"),
        &json!({"metrics": {"heart_rate": 72}}).to_string(),
    )
    .await?;
    wait_reading(&gw, "vital-1", "heart_rate 72", |m| m["heart_rate"] == 72.0).await?;
    consumer
        .wait_for_message("the consumer to receive A's second reading", SHOW, |t, p| {
            t == telemetry("vital-1") && p.contains("72")
        })
        .await
        .with_context(|| mosquitto.log())?;

    for (topic, payload) in consumer.messages() {
        assert!(topic != telemetry("door-2"), "the consumer received {topic} {payload}");
        assert!(
            !payload.contains("spoofed-alert"),
            "the consumer received the fake alert: {payload}"
        );
    }
    assert_eq!(b.messages(), Vec::<(String, String)>::new(), "door-2 received a spoof");
    assert!(b.running(), "door-2's subscriber exited:\n{}", b.output());
    assert_eq!(b.connects(), 1, "door-2 was disconnected:\n{}", b.output());
    assert_eq!(readings(&gw, "door-2").await?, Vec::<Json>::new(), "B's journal");
    let mut rates: Vec<f64> = readings(&gw, "vital-1")
        .await?
        .iter()
        .filter_map(|r| r["metrics"]["heart_rate"].as_f64())
        .collect();
    rates.sort_by(f64::total_cmp);
    assert_eq!(rates, vec![71.0, 72.0], "A's own readings, and only those");
    assert!(
        !alerts(&gw).await?.iter().any(|x| x["id"] == "a-spoofed"),
        "the fake alert is in the alert list"
    );
    Ok(())
}

/// Connects as `name` with a will on `will_topic` and, if admitted, drops the connection without
/// a DISCONNECT (the broker then publishes the will, subject to its rights). Says what happened.
async fn connect_with_will_and_vanish(
    broker: SocketAddr,
    name: &str,
    secret: &str,
    will_topic: &str,
) -> Result<String> {
    let mut opts = MqttOptions::new(name, broker.ip().to_string(), broker.port());
    opts.set_credentials(name, secret);
    opts.set_last_will(LastWill::new(
        will_topic,
        json!({"metrics": {"contact_open": true, "battery_pct": 14}}).to_string(),
        QoS::AtLeastOnce,
        false,
    ));
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let outcome = match tokio::time::timeout(SHOW, eventloop.poll()).await {
        Err(_) => return Err(anyhow!("no CONNACK within {SHOW:?}")),
        Ok(Ok(Event::Incoming(Packet::ConnAck(c)))) => format!("admitted ({:?}), then dropped", c.code),
        Ok(Ok(other)) => format!("unexpected first event {other:?}"),
        Ok(Err(ConnectionError::ConnectionRefused(code))) => format!("refused ({code:?})"),
        Ok(Err(e)) => format!("failed: {e}"),
    };
    drop(client);
    drop(eventloop);
    Ok(outcome)
}

/// The reconnect storm's fleet.
const STORM_DEVICES: usize = 2000;
/// The issue's target is 10 s; the assertion allows 5x on a loaded CI machine.
const STORM_DEADLINE: Duration = Duration::from_secs(50);
/// A device's reconnect backoff: from 100 ms, doubling, at most 1 s, with a per-device jitter.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

fn storm_id(i: usize) -> String {
    format!("storm-{i:04}")
}

/// Which of the fleet's clients hold a connection.
struct Fleet {
    up: Vec<AtomicBool>,
    connected: AtomicUsize,
    refusals: AtomicUsize,
}

impl Fleet {
    fn set(&self, i: usize, up: bool) {
        if self.up[i].swap(up, Ordering::SeqCst) != up {
            if up {
                self.connected.fetch_add(1, Ordering::SeqCst);
            } else {
                self.connected.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn connected(&self) -> usize {
        self.connected.load(Ordering::SeqCst)
    }
}

/// One device: connects, and after every loss reconnects with backoff, like firmware does.
async fn device_loop(i: usize, mut eventloop: rumqttc::EventLoop, fleet: Arc<Fleet>) {
    let mut backoff = BACKOFF_MIN;
    // A per-device jitter (0-99 ms), so the fleet does not retry in lockstep.
    let jitter = Duration::from_millis((i as u64).wrapping_mul(2_654_435_761) % 100);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                fleet.set(i, true);
                backoff = BACKOFF_MIN;
            }
            Ok(_) => {}
            Err(e) => {
                fleet.set(i, false);
                if matches!(e, ConnectionError::ConnectionRefused(_)) {
                    fleet.refusals.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_devices_reconnect_after_a_gateway_restart() -> Result<()> {
    // This process holds 2,000 connections; the gateway, which inherits the limit, about three
    // times as many (device sockets, and its own links to the broker behind them).
    let limit = raise_open_files_limit(16_384)?;
    ensure!(
        limit >= 4 * STORM_DEVICES as u64,
        "the open files limit is {limit}: too low for {STORM_DEVICES} MQTT connections (raise `ulimit -n`)"
    );
    let dir = TempDir::new("mqtt-storm")?;
    let mut registry = format!("site = \"{SITE}\"\n");
    for i in 0..STORM_DEVICES {
        registry.push_str(&format!(
            "\n[[devices]]\nid = \"{}\"\nclass = \"door_contact\"\nbuilding = \"S\"\nfloor = \"{}\"\nroom = \"S-{:04}\"\ninterval_s = 3600\n",
            storm_id(i),
            i / 200,
            i / 4
        ));
    }
    let port = free_port();
    let config = write_site(
        dir.path(),
        &format!(
            "[site]\nid = \"{SITE}\"\n[mqtt]\nmode = \"embedded\"\nlisten = \"127.0.0.1:{port}\"\n\
             [mqtt.access]\nanonymous = \"refuse\"\n[registry]\nfile = \"devices.toml\"\n[journal]\npath = \"journal.db\"\n"
        ),
        &registry,
        None,
    )?;
    let secrets = provision_all(&config)?;
    ensure!(
        secrets.secrets.len() == STORM_DEVICES,
        "{} secrets provisioned for {STORM_DEVICES} devices",
        secrets.secrets.len()
    );
    let listen = format!("127.0.0.1:{port}");
    let fixed = ["--mqtt", listen.as_str()];
    let mut gw = Gateway::start_with(&config, &[], dir.path(), &fixed).await?;
    ensure!(
        gw.mqtt.map(|a| a.port()) == Some(port),
        "the broker is not on {listen}: {:?}",
        gw.mqtt
    );

    let fleet = Arc::new(Fleet {
        up: (0..STORM_DEVICES).map(|_| AtomicBool::new(false)).collect(),
        connected: AtomicUsize::new(0),
        refusals: AtomicUsize::new(0),
    });
    let mut clients = Vec::with_capacity(STORM_DEVICES);
    let mut tasks = Vec::with_capacity(STORM_DEVICES);
    let first = Instant::now();
    for i in 0..STORM_DEVICES {
        let id = storm_id(i);
        let mut opts = MqttOptions::new(id.as_str(), "127.0.0.1", port);
        opts.set_credentials(id.as_str(), secrets.secret(&id)?);
        opts.set_keep_alive(Duration::from_secs(60));
        opts.set_clean_session(true);
        let (client, eventloop) = AsyncClient::new(opts, 10);
        // The client's request channel must stay open, or its event loop ends.
        clients.push(client);
        tasks.push(tokio::spawn(device_loop(i, eventloop, fleet.clone())));
    }
    let all_connected =
        |fleet: Arc<Fleet>| move || std::future::ready((fleet.connected() == STORM_DEVICES).then_some(()));
    wait_for(
        "the fleet's first connections",
        Duration::from_secs(120),
        Duration::from_millis(20),
        all_connected(fleet.clone()),
    )
    .await
    .with_context(|| {
        format!(
            "{} of {STORM_DEVICES} connected; {}",
            fleet.connected(),
            gw.proc.log_tail()
        )
    })?;
    eprintln!(
        "reconnect storm: {STORM_DEVICES} devices first connected in {} ms",
        first.elapsed().as_millis()
    );
    ensure!(
        fleet.refusals.load(Ordering::SeqCst) == 0,
        "{} CONNECTs refused",
        fleet.refusals.load(Ordering::SeqCst)
    );

    // The restart: a clean stop, every device notices, the same gateway starts again.
    gw.stop(Duration::from_secs(60)).await?;
    wait_for(
        "every device to notice the gateway is gone",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || std::future::ready((fleet.connected() == 0).then_some(())),
    )
    .await
    .with_context(|| format!("{} still connected", fleet.connected()))?;
    let restart = Instant::now();
    let gw = Gateway::start_with(&config, &[], dir.path(), &fixed).await?;
    let ready = restart.elapsed();
    let reconnected = wait_for(
        "all devices connected again",
        STORM_DEADLINE.saturating_sub(restart.elapsed()),
        Duration::from_millis(20),
        all_connected(fleet.clone()),
    )
    .await;
    let all = restart.elapsed();
    let connected = fleet.connected();
    eprintln!(
        "reconnect storm: {connected} of {STORM_DEVICES} devices connected {} ms after the gateway's restart \
         (ready after {} ms, the fleet {} ms after that); target 10 s",
        all.as_millis(),
        ready.as_millis(),
        all.saturating_sub(ready).as_millis()
    );
    reconnected.with_context(|| format!("{connected} of {STORM_DEVICES} connected; {}", gw.proc.log_tail()))?;
    ensure!(
        fleet.refusals.load(Ordering::SeqCst) == 0,
        "{} CONNECTs refused",
        fleet.refusals.load(Ordering::SeqCst)
    );

    // No panic: the same process, healthy.
    let mut gw = gw;
    assert!(
        gw.proc.child.try_wait()?.is_none(),
        "the gateway exited:\n{}",
        gw.proc.log_tail()
    );
    let health = gw.get_json("/healthz").await?;
    assert_eq!(health["status"], "ok", "{health}");
    let log = std::fs::read_to_string(&gw.proc.log)?;
    assert!(
        !log.contains("panicked"),
        "a panic in the gateway's log:\n{}",
        gw.proc.log_tail()
    );
    for task in &tasks {
        task.abort();
    }
    drop(clients);
    Ok(())
}

#[test]
fn the_storm_jitter_spreads_the_fleet() {
    let spread: std::collections::BTreeSet<u64> = (0..STORM_DEVICES)
        .map(|i| (i as u64).wrapping_mul(2_654_435_761) % 100)
        .collect();
    assert!(spread.len() >= 90, "{} distinct jitters", spread.len());
}
