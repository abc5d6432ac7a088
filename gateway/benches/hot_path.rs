//! Criterion benches of the hot pure functions: each decoder, normalization, line-protocol
//! formatting and rule evaluation per reading; the MQTT front door's per-message access check; and the journal's group commit (a full bulk
//! transaction, and what a single life-safety reading costs), on a real SQLite file.
//!
//! ```sh
//! cargo bench -p nh-gateway --bench hot_path
//! ```

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use nh_gateway::clock::Clock;
use nh_gateway::config::UnknownDevicePolicy;
use nh_gateway::decode::{canonical, json_map, modbus, mr60fda1, register_map, zigbee2mqtt, Decoder, Limits};
use nh_gateway::influx::line_protocol;
use nh_gateway::journal::config::SyncPolicy;
use nh_gateway::journal::writer::WriterConfig;
use nh_gateway::journal::{spawn_writer, Ack, Ingest, Record, Store};
use nh_gateway::normalize::Normalizer;
use nh_gateway::reading::Value;
use nh_gateway::registry::Registry;
use nh_gateway::rules::{Engine, RuleSet};
use nh_gateway::telemetry::Telemetry;

const SITE: &str = "nh-b";
const T0: i64 = 1_763_880_000_000;

/// A radar's usual report, the bulk of the load (`nh-sim load --payload typical`).
const CANONICAL: &[u8] = br#"{"ts":1763880000000,"seq":42,"metrics":{"presence":true,"motion_state":"moving","posture":"sitting","body_movement":42,"heart_rate":72,"resp_rate":16,"rssi":-61}}"#;
const ZIGBEE: &[u8] = br#"{"smoke":false,"smoke_density":0.5,"test":false,"battery":98,"voltage":2995,"linkquality":87,"last_seen":1763880000000}"#;
/// The shared test profile of a LoRaWAN gas detector.
const ACME_PROFILE: &str = include_str!("../../tests/fixtures/acme-profile.toml");
const ACME: &[u8] = br#"{"devEUI":"a84041000181c61e","fCnt":77,"time":"2025-11-23T06:40:00.123Z","object":{"gas":52,"alarm":0,"battery_mv":3021},"rxInfo":[{"rssi":-97,"snr":7.5}]}"#;

const REGISTRY: &str = r#"
site = "nh-b"
[[devices]]
id = "radar-1"
class = "presence_radar"
room = "A-101"
zone = "bedroom"
interval_s = 60
[[devices]]
id = "smoke-1"
class = "smoke_alarm"
room = "A-101"
zone = "bedroom"
interval_s = 3600
"#;

fn registry() -> Arc<Registry> {
    Arc::new(Registry::parse(Path::new("devices.toml"), REGISTRY).expect("bench registry"))
}

fn record() -> Record {
    let mut metrics = BTreeMap::new();
    metrics.insert("presence".to_owned(), Value::Bool(true));
    metrics.insert("motion_state".to_owned(), Value::Text("moving".into()));
    metrics.insert("posture".to_owned(), Value::Text("sitting".into()));
    metrics.insert("body_movement".to_owned(), Value::Num(42.0));
    metrics.insert("heart_rate".to_owned(), Value::Num(72.0));
    metrics.insert("resp_rate".to_owned(), Value::Num(16.0));
    metrics.insert("rssi".to_owned(), Value::Num(-61.0));
    Record {
        device: "radar-1".into(),
        class: "presence_radar".into(),
        building: "A".into(),
        floor: "1".into(),
        room: "A-101".into(),
        zone: "bedroom".into(),
        ts: T0,
        ts_recv: T0 + 3,
        ts_replaced: false,
        seq: Some(42),
        metrics,
    }
}

fn decoders(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("canonical", |b| {
        b.iter(|| canonical::decode(SITE, "nh/nh-b/radar-1/telemetry", black_box(CANONICAL), &limits))
    });
    g.bench_function("zigbee2mqtt", |b| {
        b.iter(|| zigbee2mqtt::decode("zigbee2mqtt/smoke_kitchen", black_box(ZIGBEE), &limits))
    });
    let profile: json_map::Profile = toml::from_str(ACME_PROFILE).expect("profile");
    g.bench_function("json_map", |b| {
        b.iter(|| json_map::decode(&profile, "acme/up", black_box(ACME), &limits))
    });
    // A radar's fall report and a heartbeat, as one read from the UART brings them.
    let mut uart = mr60fda1::Frame {
        control: mr60fda1::CONTROL_FALL,
        command: 0x01,
        data: vec![1],
    }
    .encode();
    uart.extend(
        mr60fda1::Frame {
            control: mr60fda1::CONTROL_HUMAN,
            command: 0x01,
            data: vec![1],
        }
        .encode(),
    );
    g.bench_function("mr60fda1_two_frames", |b| {
        b.iter(|| {
            let mut reader = mr60fda1::FrameReader::new();
            reader
                .push(black_box(&uart))
                .into_iter()
                .filter_map(|f| f.ok().and_then(|f| mr60fda1::metrics(&f)))
                .count()
        })
    });
    // Modbus: a response scanned (CRC), then registers through the built-in Midas map.
    let maps = register_map::builtin();
    let map = maps
        .iter()
        .find(|m| m.name == "honeywell_midas_lel")
        .unwrap_or(&maps[0])
        .compile()
        .expect("builtin map compiles");
    let regs: Vec<u16> = (0..map.count).map(|i| if i == 0 { 0x0100 } else { 12 }).collect();
    let mut response = vec![1u8, 0x03, (regs.len() * 2) as u8];
    for r in &regs {
        response.extend(r.to_be_bytes());
    }
    let crc = modbus::crc16(&response);
    response.extend(crc.to_le_bytes());
    g.bench_function("modbus_response_and_register_map", |b| {
        b.iter(|| {
            let mut scanner = modbus::ResponseScanner::new(1, map.function, map.count);
            let scan = scanner.push(black_box(&response));
            (scan, map.decode(black_box(&regs)))
        })
    });
    g.finish();
}

fn normalize(c: &mut Criterion) {
    let normalizer = Normalizer::new(
        registry(),
        UnknownDevicePolicy::Accept,
        Limits::default(),
        300_000,
        604_800_000,
        Clock::system(),
        Arc::new(Telemetry::default()),
    );
    let decoder = Decoder::Canonical { site: SITE.into() };
    let mut g = c.benchmark_group("normalize");
    g.throughput(Throughput::Elements(1));
    let mut recv = T0;
    g.bench_function("process_canonical", |b| {
        b.iter(|| {
            // Advancing time: the flood limit's bucket refills as it would at 1 reading/ms.
            recv += 1;
            normalizer.process(&decoder, "nh/nh-b/radar-1/telemetry", black_box(CANONICAL), recv)
        })
    });
    g.finish();
}

fn line_protocol(c: &mut Criterion) {
    let r = record();
    let mut g = c.benchmark_group("influx");
    g.throughput(Throughput::Elements(1));
    let mut out = String::with_capacity(64 * 1024);
    g.bench_function("write_line", |b| {
        b.iter(|| {
            out.clear();
            line_protocol::write_line(&mut out, SITE, black_box(&r));
            out.len()
        })
    });
    g.finish();
}

fn rules(c: &mut Criterion) {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/rules.toml"))
        .expect("config/rules.toml");
    let set = Arc::new(RuleSet::parse(Path::new("rules.toml"), &text).expect("shipped rules"));
    let mut engine = Engine::new(set, registry(), T0);
    let mut r = record();
    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(1));
    g.bench_function("observe_bulk_reading", |b| {
        b.iter(|| {
            r.ts += 1;
            r.ts_recv += 1;
            engine.observe(black_box(&r), r.ts_recv).len()
        })
    });
    g.finish();
}

/// The alerts task's once-a-second work at the bench site's size (2,000 bulk devices and 2,500
/// smoke alarms, each heard once): the engine's tick over every device, and the snapshot of its
/// state serialized for saving.
fn engine_tick_and_snapshot(c: &mut Criterion) {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/rules.toml"))
        .expect("config/rules.toml");
    let set = Arc::new(RuleSet::parse(Path::new("rules.toml"), &text).expect("shipped rules"));
    let mut reg = String::from("site = \"nh-b\"\n");
    for i in 0..2000 {
        reg += &format!(
            "[[devices]]\nid = \"load-{i:04}\"\nclass = \"presence_radar\"\nroom = \"L-{i}\"\ninterval_s = 86400\n"
        );
    }
    for i in 0..2500 {
        reg += &format!(
            "[[devices]]\nid = \"smoke-{i:04}\"\nclass = \"smoke_alarm\"\nroom = \"S-{i}\"\ninterval_s = 86400\n"
        );
    }
    let registry = Arc::new(Registry::parse(Path::new("devices.toml"), &reg).expect("registry"));
    let mut engine = Engine::new(set, registry.clone(), T0);
    let mut r = record();
    for d in registry.devices() {
        r.device = d.id.clone();
        r.class = d.class.clone();
        r.room = d.room.clone();
        if d.class == "smoke_alarm" {
            r.metrics = BTreeMap::from([("smoke".to_owned(), Value::Bool(false))]);
        }
        engine.observe(&r, T0 + 1);
    }
    let mut now = T0 + 1000;
    let mut g = c.benchmark_group("alerts_tick_4500_devices");
    g.bench_function("engine_tick", |b| {
        b.iter(|| {
            now += 1000;
            engine.tick(black_box(now)).len()
        })
    });
    g.bench_function("snapshot_to_json", |b| {
        b.iter(|| serde_json::to_string(&engine.snapshot()).map(|s| s.len()).unwrap_or(0))
    });
    g.finish();
}

/// One message of `n` per commit through the journal writer with `sync = full`, timed from the
/// first send until the last acknowledgement: a full 5000-message bulk group commit, and a
/// single life-safety reading on the priority input (what a fire waits for at most, besides
/// the one bulk commit already running).
fn journal_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _entered = rt.enter();
    let store = Store::open(&dir.path().join("journal.db"), SyncPolicy::Full).expect("journal");
    let cfg = WriterConfig {
        commit_max_messages: 5000,
        retention_ms: 3_600_000,
        disk_budget_bytes: u64::MAX,
        guard_cursor: None,
        clock: Clock::system(),
        observer: None,
        observer_priority: None,
        exit_on_corruption: false,
        bulk_linger: std::time::Duration::ZERO,
        bulk_linger_gap: std::time::Duration::ZERO,
        bulk_linger_messages: 1,
    };
    let writer = spawn_writer(store, cfg, Arc::new(Telemetry::default())).expect("writer");
    let mut seq = 0u64;
    let mut send = |tx: &tokio::sync::mpsc::Sender<Ingest>, n: usize, class: &str, metric: (&str, Value)| {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let mut done_tx = Some(done_tx);
        for i in 0..n {
            seq += 1;
            let mut r = record();
            r.class = class.into();
            r.seq = Some(seq);
            r.metrics = BTreeMap::from([(metric.0.to_owned(), metric.1.clone())]);
            let ack = (i + 1 == n).then(|| {
                let tx = done_tx.take();
                Ack::new(move || {
                    if let Some(tx) = tx {
                        let _ = tx.send(());
                    }
                })
            });
            tx.blocking_send(Ingest { records: vec![r], ack })
                .expect("writer running");
        }
        done_rx.blocking_recv().expect("acknowledged");
    };
    let mut g = c.benchmark_group("journal_commit");
    g.sample_size(10);
    g.throughput(Throughput::Elements(5000));
    g.bench_function("bulk_5000_sync_full", |b| {
        b.iter(|| send(&writer.tx, 5000, "presence_radar", ("heart_rate", Value::Num(70.0))))
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_priority_sync_full", |b| {
        b.iter(|| send(&writer.tx_priority, 1, "smoke_alarm", ("smoke", Value::Bool(true))))
    });
    g.finish();
}

/// The per-message checks of the embedded broker's front door on a site of 2,000 devices (half
/// of them behind Zigbee2MQTT): a device on its own and on another's topic, a bridge for every
/// device on the last device's topic and on a topic it may not use, and a CONNECT's credential
/// check (salted SHA-256, constant-time comparison).
fn access_check(c: &mut Criterion) {
    use nh_gateway::access::credentials::{entry_for, generate_secret, CredentialStore};
    use nh_gateway::access::files::{BridgeEntry, CredentialsFile, IdentitiesFile};
    use nh_gateway::access::{Anonymous, Policy};
    let mut text = format!("site = \"{SITE}\"\n");
    for i in 0..2000 {
        text.push_str(&format!(
            "[[devices]]\nid = \"dev-{i}\"\nclass = \"smoke_alarm\"\ninterval_s = 60\n"
        ));
        if i % 2 == 0 {
            text.push_str(&format!("zigbee_name = \"smoke_{i}\"\n"));
        }
    }
    let registry = Registry::parse(Path::new("devices.toml"), &text).expect("registry");
    let identities = IdentitiesFile {
        bridges: vec![BridgeEntry {
            name: "hub".into(),
            devices: vec!["*".into()],
            publish: Vec::new(),
            subscribe: None,
        }],
        ..IdentitiesFile::default()
    };
    let secret = generate_secret().expect("secret");
    let file = CredentialsFile {
        credentials: vec![entry_for("dev-7", &secret).expect("entry")],
    };
    let store = CredentialStore::from_file(&file).expect("store");
    let policy = Policy::build(
        &registry,
        &identities,
        store,
        Anonymous::Refuse,
        &["zigbee2mqtt".to_owned()],
    )
    .expect("policy");
    let device = policy.identity("dev-7").expect("device").clone();
    let bridge = policy.identity("hub").expect("bridge").clone();
    let own = format!("nh/{SITE}/dev-7/telemetry");
    let foreign = format!("nh/{SITE}/dev-8/telemetry");
    let last = format!("nh/{SITE}/dev-1999/telemetry");
    let zigbee = "zigbee2mqtt/smoke_1998".to_owned();
    let alerts = format!("nh/{SITE}/alerts");
    assert!(policy.may_publish(&device, &own) && !policy.may_publish(&device, &foreign));
    assert!(policy.may_publish(&bridge, &last) && policy.may_publish(&bridge, &zigbee));
    assert!(!policy.may_publish(&bridge, &alerts));
    let mut g = c.benchmark_group("access_check");
    g.throughput(Throughput::Elements(1));
    g.bench_function("device_own_topic", |b| {
        b.iter(|| policy.may_publish(&device, black_box(&own)))
    });
    g.bench_function("device_foreign_topic", |b| {
        b.iter(|| policy.may_publish(&device, black_box(&foreign)))
    });
    g.bench_function("bridge_2000_devices", |b| {
        b.iter(|| policy.may_publish(&bridge, black_box(&last)))
    });
    g.bench_function("bridge_2000_devices_zigbee", |b| {
        b.iter(|| policy.may_publish(&bridge, black_box(&zigbee)))
    });
    g.bench_function("bridge_refused_alerts", |b| {
        b.iter(|| policy.may_publish(&bridge, black_box(&alerts)))
    });
    let peer: std::net::IpAddr = [192, 168, 1, 20].into();
    g.bench_function("connect_credentials", |b| {
        b.iter(|| policy.admit(peer, black_box("dev-7"), Some(("dev-7", black_box(secret.as_str())))))
    });
    g.finish();
}

criterion_group!(
    benches,
    access_check,
    decoders,
    normalize,
    line_protocol,
    rules,
    engine_tick_and_snapshot,
    journal_commit
);
criterion_main!(benches);
