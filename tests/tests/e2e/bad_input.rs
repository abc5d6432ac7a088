//! Malformed payloads are counted by reason, the gateway keeps running, the connection never
//! breaks, and every good reading published between them arrives.

use std::time::Duration;

use anyhow::Result;
use nh_e2e::{wait_for, workspace_root, write_config, Gateway, TempDir};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_are_counted_and_good_readings_all_arrive() -> Result<()> {
    let dir = TempDir::new("bad-input")?;
    let cfg = format!(
        "[site]\nid = \"nh-test\"\n[registry]\nfile = \"{}\"\nunknown_devices = \"reject\"\n[journal]\npath = \"{}\"\n",
        workspace_root().join("config/test/devices.toml").display(),
        dir.path().join("journal.db").display()
    );
    let gw = Gateway::start(&write_config(dir.path(), &cfg)?, &[], dir.path()).await?;
    let broker = gw.mqtt.expect("embedded broker");

    let mut opts = MqttOptions::new("bad-device", broker.ip().to_string(), broker.port());
    opts.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = eventloop.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = ev {
                let _ = acked_tx.send(());
            }
        }
    });

    let good_topic = "nh/nh-test/radar-t-101/telemetry";
    let now = nh_gateway::clock::system_now_ms();
    let good = |i: i64| {
        format!(
            r#"{{"ts":{},"seq":{},"metrics":{{"presence":true,"body_movement":{}}}}}"#,
            now - 60_000 + i * 1000,
            i + 1,
            i
        )
    };
    let oversized = format!(
        r#"{{"metrics":{{"presence":true}},"pad":"{}"}}"#,
        "x".repeat(100 * 1024)
    );
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        (good_topic, b"{not json".to_vec(), "invalid_json"),
        (good_topic, br#"{"metrics":{"gas_lel":"high"}}"#.to_vec(), "wrong_type"),
        (
            good_topic,
            br#"{"metrics":{"heart_rate":NaN}}"#.to_vec(),
            "invalid_json",
        ),
        (good_topic, br#"{"metrics":{"spo2":250}}"#.to_vec(), "out_of_range"),
        (
            "nh/nh-test/ghost-1/telemetry",
            br#"{"metrics":{"smoke":true}}"#.to_vec(),
            "unknown_device",
        ),
        (good_topic, oversized.into_bytes(), "oversized"),
        (good_topic, vec![0x7b, 0xff, 0xfe, 0x7d], "invalid_utf8"),
        ("zigbee2mqtt/smoke_t101", br#"{"smoke":"yes"}"#.to_vec(), "wrong_type"),
    ];
    let mut published = 0;
    for (i, (topic, payload, _)) in bad.iter().enumerate() {
        client
            .publish(good_topic, QoS::AtLeastOnce, false, good(i as i64))
            .await?;
        client.publish(*topic, QoS::AtLeastOnce, false, payload.clone()).await?;
        published += 2;
    }
    client
        .publish(good_topic, QoS::AtLeastOnce, false, good(bad.len() as i64))
        .await?;
    published += 1;
    for _ in 0..published {
        tokio::time::timeout(Duration::from_secs(30), acked_rx.recv()).await?;
    }

    let goods = bad.len() as u64 + 1;
    let readings = wait_for(
        "every good reading in the history API",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let r = gw.get_json("/api/v1/readings?device=radar-t-101&since=0").await.ok()?;
            let r = r.as_array()?.clone();
            (r.len() as u64 == goods).then_some(r)
        },
    )
    .await?;
    for (i, r) in readings.iter().enumerate() {
        assert_eq!(r["metrics"]["body_movement"].as_f64(), Some(i as f64));
    }

    let mut want = std::collections::BTreeMap::<&str, f64>::new();
    for (_, _, reason) in &bad {
        *want.entry(reason).or_default() += 1.0;
    }
    let m = gw.metrics().await?;
    for (reason, n) in want {
        assert_eq!(
            m.get(&format!("nh_readings_rejected_total{{reason=\"{reason}\"}}"))
                .copied(),
            Some(n),
            "reason {reason}"
        );
    }
    // The connection never broke: no redelivery loop of the oversized message.
    assert_eq!(m.get("nh_mqtt_connects_total").copied(), Some(1.0));
    assert_eq!(m.get("nh_readings_accepted_total").copied(), Some(goods as f64));
    let health = gw.get_json("/healthz").await?;
    assert_eq!(health["status"], "ok");
    Ok(())
}
