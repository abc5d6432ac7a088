//! Bad input never costs good data: malformed payloads of every kind, on the canonical, the
//! Zigbee2MQTT and a generic JSON mapping subscription, interleaved with good readings and a
//! device flooding. Every bad one is counted by its reason, exactly; every good one is stored,
//! exactly; the flooding device loses its bulk readings over the limit but none of its
//! life-safety ones; the gateway keeps its pid, its health and its MQTT connection throughout.
//!
//! The gateway runs on a test clock that stands still (time scale 1e-6: a virtual millisecond
//! per thousand real seconds), so receive times, and so the flood limit's bucket, do not depend
//! on how fast this machine is.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Result};
use nh_e2e::{wait_for, workspace_root, write_config, Gateway, TempDir};
use nh_gateway::normalize::{DEFAULT_DEVICE_BURST, DEFAULT_MAX_DEVICE_RATE_PER_S};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value as Json};

const CANONICAL_DEVICE: &str = "vital-t-101";
const CANONICAL_TOPIC: &str = "nh/nh-test/vital-t-101/telemetry";
/// `door-t-101` in the registry.
const Z2M_TOPIC: &str = "zigbee2mqtt/door_t101";
const Z2M_DEVICE: &str = "door-t-101";
/// A vendor JSON through the `acme-presence` profile, the device id from the topic.
const JSON_MAP_TOPIC: &str = "acme/up/presence-t-corridor";
const JSON_MAP_DEVICE: &str = "presence-t-corridor";
/// The wearable that floods.
const FLOOD_DEVICE: &str = "watch-r-0002";
const FLOOD_TOPIC: &str = "nh/nh-test/watch-r-0002/telemetry";

/// One malformed message and the reason it must be counted under.
struct Bad {
    topic: String,
    payload: Vec<u8>,
    reason: &'static str,
}

fn bad(topic: &str, payload: impl Into<Vec<u8>>, reason: &'static str) -> Bad {
    Bad {
        topic: topic.to_owned(),
        payload: payload.into(),
        reason,
    }
}

/// Every malformed message, one per way of being wrong.
fn bad_payloads() -> Vec<Bad> {
    let c = CANONICAL_TOPIC;
    let z = Z2M_TOPIC;
    let j = JSON_MAP_TOPIC;
    let m = |metrics: &str| format!(r#"{{"metrics":{metrics}}}"#);
    vec![
        // Not UTF-8.
        bad(c, vec![0x7b, 0xff, 0xfe, 0x7d], "invalid_utf8"),
        bad(
            c,
            b"{\"metrics\":{\"fault_code\":\"\xc3\x28\"}}".to_vec(),
            "invalid_utf8",
        ),
        bad(
            c,
            b"{\"metrics\":{\"fault_code\":\"\xc0\xaf\"}}".to_vec(),
            "invalid_utf8",
        ),
        bad(c, b"\xff\xfe{\x00\"\x00".to_vec(), "invalid_utf8"),
        bad(z, b"{\"contact\":\xc3}".to_vec(), "invalid_utf8"),
        // Too large: far above, and one byte above, the 64 KiB limit.
        bad(
            c,
            format!(
                r#"{{"metrics":{{"heart_rate":70}},"pad":"{}"}}"#,
                "x".repeat(100 * 1024)
            ),
            "oversized",
        ),
        bad(c, pad_to(m(r#"{"heart_rate":70}"#), 64 * 1024 + 1), "oversized"),
        bad(z, pad_to(r#"{"contact":true}"#.to_owned(), 200 * 1024), "oversized"),
        // Too deep (the limit is 16).
        bad(
            c,
            format!(
                r#"{{"metrics":{{"heart_rate":70}},"x":{}1{}}}"#,
                "[".repeat(20),
                "]".repeat(20)
            ),
            "too_deep",
        ),
        bad(c, format!("{}{}", "[".repeat(17), "]".repeat(17)), "too_deep"),
        bad(
            z,
            format!(r#"{{"update":{}{}}}"#, "{\"a\":".repeat(30), "}".repeat(31)),
            "too_deep",
        ),
        // Not JSON at all, or not quite.
        bad(c, "", "invalid_json"),
        bad(c, "   \n", "invalid_json"),
        bad(c, r#"{"metrics":{"heart_rate":7"#, "invalid_json"),
        bad(c, r#"{"metrics":{"heart_rate":70}} trailing"#, "invalid_json"),
        bad(c, "\u{feff}{\"metrics\":{\"heart_rate\":70}}", "invalid_json"),
        bad(c, "{\"metrics\":{\"heart_rate\":70}}\0", "invalid_json"),
        bad(z, "online", "invalid_json"),
        bad(j, "{p:true}", "invalid_json"),
        // NaN and infinities, written the ways firmware writes them.
        bad(c, m(r#"{"heart_rate":NaN}"#), "invalid_json"),
        bad(c, m(r#"{"heart_rate":nan}"#), "invalid_json"),
        bad(c, m(r#"{"heart_rate":Infinity}"#), "invalid_json"),
        bad(c, m(r#"{"heart_rate":-Infinity}"#), "invalid_json"),
        bad(c, m(r#"{"heart_rate":1e400}"#), "invalid_json"),
        bad(c, m(r#"{"heart_rate":-1e400}"#), "invalid_json"),
        bad(z, r#"{"battery":NaN}"#, "invalid_json"),
        bad(c, m(r#"{"heart_rate":"NaN"}"#), "wrong_type"),
        bad(c, m(r#"{"heart_rate":"Infinity"}"#), "wrong_type"),
        // Outside the metric's physical range.
        bad(c, m(r#"{"heart_rate":400}"#), "out_of_range"),
        bad(c, m(r#"{"spo2":101}"#), "out_of_range"),
        bad(c, m(r#"{"spo2":-1}"#), "out_of_range"),
        bad(c, m(r#"{"temperature":-300}"#), "out_of_range"),
        bad(c, m(r#"{"gas_lel":150}"#), "out_of_range"),
        bad(c, m(r#"{"battery_pct":1e300}"#), "out_of_range"),
        bad(c, m(r#"{"lat":91}"#), "out_of_range"),
        bad(c, m(r#"{"heart_rate":70,"heart_rate":500}"#), "out_of_range"),
        bad(z, r#"{"battery":250}"#, "out_of_range"),
        bad(z, r#"{"contact":true,"voltage":-5}"#, "out_of_range"),
        bad(j, r#"{"move":500}"#, "out_of_range"),
        // Wrong JSON types.
        bad(c, m(r#"{"smoke":"yes"}"#), "wrong_type"),
        bad(c, m(r#"{"heart_rate":true}"#), "wrong_type"),
        bad(c, m(r#"{"heart_rate":null}"#), "wrong_type"),
        bad(c, m(r#"{"heart_rate":[70]}"#), "wrong_type"),
        bad(c, m(r#"{"heart_rate":{"v":70}}"#), "wrong_type"),
        bad(c, r#"{"metrics":[]}"#, "wrong_type"),
        bad(c, r#"{"metrics":"heart_rate=70"}"#, "wrong_type"),
        bad(
            c,
            m(&format!(r#"{{"fault_code":"{}"}}"#, "x".repeat(129))),
            "wrong_type",
        ),
        bad(c, r#"{"metrics":{"heart_rate":70},"device":"x"}"#, "wrong_type"),
        bad(c, r#"{"seq":-1,"metrics":{"heart_rate":70}}"#, "wrong_type"),
        bad(z, r#"{"contact":"open"}"#, "wrong_type"),
        bad(z, r#"{"contact":true,"battery":"91"}"#, "wrong_type"),
        bad(j, r#"{"move":"fast"}"#, "wrong_type"),
        // Not an object at the top.
        bad(c, r#"[{"metrics":{"heart_rate":70}}]"#, "wrong_type"),
        bad(c, "42", "wrong_type"),
        bad(c, r#""heart_rate=70""#, "wrong_type"),
        bad(c, "null", "wrong_type"),
        bad(z, "true", "wrong_type"),
        bad(j, r#"[{"p":true}]"#, "wrong_type"),
        // Missing or empty metrics.
        bad(c, r#"{"ts":1777636800000}"#, "wrong_type"),
        bad(c, r#"{"metrics":{}}"#, "no_metrics"),
        bad(z, r#"{"illuminance":120,"update":{"state":"idle"}}"#, "no_metrics"),
        bad(j, r#"{"x":1}"#, "no_metrics"),
        // Unknown metrics.
        bad(c, m(r#"{"heart_rate":70,"colour":"red"}"#), "unknown_metric"),
        bad(c, m(r#"{"heartrate":70}"#), "unknown_metric"),
        // Enum values outside the vocabulary.
        bad(c, m(r#"{"fall_state":"falling"}"#), "bad_enum"),
        bad(c, m(r#"{"motion_state":"running"}"#), "bad_enum"),
        bad(c, m(r#"{"button":"triple"}"#), "bad_enum"),
        bad("zigbee2mqtt/radar_t102", r#"{"fall_down_status":"tumble"}"#, "bad_enum"),
        bad("zigbee2mqtt/radar_t102", r#"{"status":"standing"}"#, "bad_enum"),
        bad(j, r#"{"p":"maybe"}"#, "bad_enum"),
        // Timestamps that are no timestamp (a sane-looking but far one is accepted and marked).
        bad(c, r#"{"ts":-1,"metrics":{"heart_rate":70}}"#, "bad_timestamp"),
        bad(c, r#"{"ts":1.5,"metrics":{"heart_rate":70}}"#, "bad_timestamp"),
        bad(
            c,
            r#"{"ts":"2026-05-01T12:00:00Z","metrics":{"heart_rate":70}}"#,
            "bad_timestamp",
        ),
        bad(
            c,
            r#"{"ts":9223372036854775808,"metrics":{"heart_rate":70}}"#,
            "bad_timestamp",
        ),
        bad(z, r#"{"contact":true,"last_seen":"yesterday"}"#, "bad_timestamp"),
        bad(j, r#"{"p":true,"ts":"yesterday"}"#, "bad_timestamp"),
        // Devices the registry does not know (unknown_devices = "reject").
        bad("nh/nh-test/ghost-1/telemetry", m(r#"{"smoke":true}"#), "unknown_device"),
        bad("zigbee2mqtt/ghost smoke", r#"{"smoke":true}"#, "unknown_device"),
        bad("acme/up/ghost-2", r#"{"p":true}"#, "unknown_device"),
        // Another site's telemetry.
        bad(
            "nh/nh-other/vital-t-101/telemetry",
            m(r#"{"heart_rate":70}"#),
            "wrong_site",
        ),
    ]
}

/// `json` padded with spaces before its closing brace to `len` bytes.
fn pad_to(mut json: String, len: usize) -> Vec<u8> {
    let close = json.pop();
    while json.len() + 1 < len {
        json.push(' ');
    }
    json.extend(close);
    json.into_bytes()
}

/// A good message and the reading the history API must return for it.
struct Good {
    topic: &'static str,
    payload: String,
    device: &'static str,
    /// The stored time: the device's, or the receive time when the device's was too far off.
    ts: i64,
    metrics: Json,
}

/// The `i`-th good message, in turn through each decoder; every 20th has a device time far in
/// the future or the past, which is replaced by the receive time (`now`, on the stopped clock).
fn good(i: i64, now: i64) -> Good {
    let normal_ts = now - 600_000 + i * 1000;
    let (ts, stored_ts) = match i % 20 {
        7 => (now + 86_400_000, now),
        13 => (now - 30 * 86_400_000, now),
        _ => (normal_ts, normal_ts),
    };
    match i % 3 {
        0 => Good {
            topic: CANONICAL_TOPIC,
            payload: json!({"ts": ts, "metrics": {"heart_rate": 40 + i, "resp_rate": 14.5}}).to_string(),
            device: CANONICAL_DEVICE,
            ts: stored_ts,
            metrics: json!({"heart_rate": 40 + i, "resp_rate": 14.5}),
        },
        1 => {
            // Zigbee2MQTT `last_seen` as RFC 3339 for the far ones, epoch ms otherwise.
            let last_seen = if ts == normal_ts {
                json!(ts)
            } else if ts > now {
                json!("2099-01-01T00:00:00Z")
            } else {
                json!("2001-01-01T00:00:00.000+08:00")
            };
            Good {
                topic: Z2M_TOPIC,
                payload: json!({"contact": i % 2 == 0, "battery": i % 100, "linkquality": i, "last_seen": last_seen})
                    .to_string(),
                device: Z2M_DEVICE,
                ts: stored_ts,
                metrics: json!({"contact_open": i % 2 != 0, "battery_pct": i % 100, "lqi": i}),
            }
        }
        _ => Good {
            topic: JSON_MAP_TOPIC,
            payload: json!({"ts": ts, "p": i % 2 == 0, "move": i % 100, "rssi_ignored": -80}).to_string(),
            device: JSON_MAP_DEVICE,
            ts: stored_ts,
            metrics: json!({"presence": i % 2 == 0, "body_movement": i % 100}),
        },
    }
}

/// A reading as compared: time, sequence number, and metrics with every number as f64
/// (the gateway stores numbers as floats: 41 comes back as 41.0).
fn comparable(ts: i64, seq: Option<u64>, metrics: &Json) -> (i64, Option<u64>, String) {
    let metrics: BTreeMap<String, String> = metrics
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v.as_f64() {
                        Some(f) => format!("{f:?}"),
                        None => v.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default();
    (ts, seq, format!("{metrics:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_never_costs_good_data() -> Result<()> {
    let dir = TempDir::new("bad-input")?;
    let cfg = format!(
        r#"[site]
id = "nh-test"
[registry]
file = "{registry}"
unknown_devices = "reject"
[journal]
path = "{journal}"
[decode]
max_device_rate_per_s = {rate:?}
device_burst = {burst}

[[mqtt.subscriptions]]
filter = "nh/+/+/telemetry"
decoder = "canonical"
qos = 1
[[mqtt.subscriptions]]
filter = "zigbee2mqtt/+"
decoder = "zigbee2mqtt"
qos = 1
[[mqtt.subscriptions]]
filter = "acme/up/+"
decoder = "json_map"
profile = "acme-presence"
qos = 1

[[profiles]]
name = "acme-presence"
device_topic_level = 2
ts_pointer = "/ts"
[[profiles.fields]]
pointer = "/p"
metric = "presence"
[[profiles.fields]]
pointer = "/move"
metric = "body_movement"
"#,
        registry = workspace_root().join("config/test/devices.toml").display(),
        journal = dir.path().join("journal.db").display(),
        rate = DEFAULT_MAX_DEVICE_RATE_PER_S,
        burst = DEFAULT_DEVICE_BURST,
    );
    let now = nh_gateway::clock::system_now_ms();
    let (now_arg, scale) = (now.to_string(), "0.000001");
    let clock = [
        "--test-clock-origin",
        now_arg.as_str(),
        "--test-clock-start",
        now_arg.as_str(),
        "--time-scale",
        scale,
    ];
    let mut gw = Gateway::start_with(&write_config(dir.path(), &cfg)?, &[], dir.path(), &clock).await?;
    let broker = gw.mqtt.expect("embedded broker");
    let connects_at_start = gw.metric("nh_mqtt_connects_total").await?;

    let mut opts = MqttOptions::new("bad-device", broker.ip().to_string(), broker.port());
    opts.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let client_broke = Arc::new(AtomicBool::new(false));
    let broke = client_broke.clone();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    let _ = acked_tx.send(());
                }
                Ok(_) => {}
                Err(_) => {
                    broke.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
    });

    // Bad and good interleaved: a good one after every bad one.
    let bads = bad_payloads();
    let distinct: std::collections::HashSet<(&str, &[u8])> =
        bads.iter().map(|b| (b.topic.as_str(), b.payload.as_slice())).collect();
    ensure!(
        distinct.len() == bads.len() && bads.len() >= 50,
        "{} distinct bad payloads",
        distinct.len()
    );
    let mut goods = Vec::new();
    let mut published = 0;
    for (i, b) in bads.iter().enumerate() {
        client
            .publish(&b.topic, QoS::AtLeastOnce, false, b.payload.clone())
            .await?;
        let g = good(i as i64, now);
        client
            .publish(g.topic, QoS::AtLeastOnce, false, g.payload.clone())
            .await?;
        goods.push(g);
        published += 2;
    }

    // One wearable floods: its burst and 90 more readings at once, on a clock that does not move.
    // The bucket lets the burst through and none of the bulk readings after it; its SOS and fall
    // readings, sent once the bucket is empty (one in three after the burst), are all kept.
    let burst = i64::from(DEFAULT_DEVICE_BURST);
    let mut flood_kept = Vec::new();
    let mut flood_dropped = 0u64;
    for seq in 1..=burst + 90 {
        let after_burst = seq > burst;
        let (metrics, kept) = if after_burst && seq % 3 == 0 {
            let m = if seq % 2 == 0 {
                json!({"sos": seq % 4 == 0})
            } else {
                json!({"fall_state": "none", "heart_rate": 90})
            };
            (m, true)
        } else {
            (json!({"heart_rate": 60 + seq % 50, "spo2": 97}), !after_burst)
        };
        let payload = json!({"seq": seq, "metrics": metrics}).to_string();
        client.publish(FLOOD_TOPIC, QoS::AtLeastOnce, false, payload).await?;
        published += 1;
        if kept {
            flood_kept.push(comparable(now, Some(seq as u64), &metrics));
        } else {
            flood_dropped += 1;
        }
    }
    for _ in 0..published {
        tokio::time::timeout(Duration::from_secs(30), acked_rx.recv()).await?;
    }

    // Everything decoded: every message either stored or counted.
    let expected_accepted = (goods.len() + flood_kept.len()) as f64;
    let expected_rejected = (bads.len() as u64 + flood_dropped) as f64;
    let m = wait_for(
        "every message stored or counted",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let m = gw.metrics().await.ok()?;
            let accepted = m.get("nh_readings_accepted_total").copied().unwrap_or(0.0);
            let rejected: f64 = m
                .iter()
                .filter(|(k, _)| k.starts_with("nh_readings_rejected_total{"))
                .map(|(_, v)| v)
                .sum();
            (accepted >= expected_accepted && rejected >= expected_rejected).then_some(m)
        },
    )
    .await?;

    // Every bad one counted under its reason, and nothing else counted.
    let mut want: BTreeMap<String, f64> = BTreeMap::new();
    for b in &bads {
        *want
            .entry(format!("nh_readings_rejected_total{{reason=\"{}\"}}", b.reason))
            .or_default() += 1.0;
    }
    *want
        .entry("nh_readings_rejected_total{reason=\"flood\"}".to_owned())
        .or_default() += flood_dropped as f64;
    let got: BTreeMap<String, f64> = m
        .iter()
        .filter(|(k, _)| k.starts_with("nh_readings_rejected_total{"))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(got, want, "rejections by reason");
    assert_eq!(m.get("nh_readings_accepted_total").copied(), Some(expected_accepted));
    // The far device times were kept as readings, marked with the receive time.
    let far = goods.iter().filter(|g| g.ts == now).count() as f64;
    assert!(far >= 4.0);
    assert_eq!(m.get("nh_readings_time_replaced_total").copied(), Some(far));

    // Every good reading stored, exactly.
    for device in [CANONICAL_DEVICE, Z2M_DEVICE, JSON_MAP_DEVICE] {
        let mut want: Vec<_> = goods
            .iter()
            .filter(|g| g.device == device)
            .map(|g| comparable(g.ts, None, &g.metrics))
            .collect();
        want.sort();
        let stored = stored(&gw, device).await?;
        // A replaced time is the receive time, which the stopped clock makes `now`.
        for (r, ts_recv) in &stored {
            assert_eq!(*ts_recv, now, "receive time of {r:?}");
        }
        let mut got: Vec<_> = stored.into_iter().map(|(r, _)| r).collect();
        got.sort();
        assert_eq!(got, want, "readings of {device}");
    }

    // The flooding wearable: its burst and every life-safety reading, nothing else.
    let mut got: Vec<_> = stored(&gw, FLOOD_DEVICE).await?.into_iter().map(|(r, _)| r).collect();
    got.sort();
    flood_kept.sort();
    assert_eq!(got.len(), flood_kept.len());
    assert_eq!(got, flood_kept, "readings of the flooding {FLOOD_DEVICE}");

    // Nothing crashed or broke: same process, healthy, one MQTT connection all along.
    assert!(gw.proc.child.try_wait()?.is_none(), "the gateway exited");
    assert_eq!(gw.proc.child.id(), gw.pid);
    let m = gw.metrics().await?;
    assert_eq!(m.get("nh_mqtt_connects_total").copied(), Some(connects_at_start));
    assert_eq!(m.get("nh_mqtt_connected").copied(), Some(1.0));
    assert!(
        !client_broke.load(Ordering::Relaxed),
        "the broker dropped the publishing client"
    );
    let health = gw.get_json("/healthz").await?;
    assert_eq!(health["status"], "ok");
    Ok(())
}

/// A device's stored readings as `(comparable, ts_recv)`.
async fn stored(gw: &Gateway, device: &str) -> Result<Vec<((i64, Option<u64>, String), i64)>> {
    let r = gw
        .get_json(&format!("/api/v1/readings?device={device}&since=0&limit=5000"))
        .await?;
    Ok(r.as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    let ts = r["ts"].as_i64().unwrap_or(-1);
                    let recv = r["ts_recv"].as_i64().unwrap_or(-1);
                    (comparable(ts, r["seq"].as_u64(), &r["metrics"]), recv)
                })
                .collect()
        })
        .unwrap_or_default())
}
