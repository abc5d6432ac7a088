//! The InfluxDB forwarder against a real VictoriaMetrics behind a fault-injecting proxy:
//! timeouts and 5xx are retried without loss, a malformed line is isolated, quarantined and
//! counted, and the cursor never stalls.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::Result;
use nh_e2e::fault_proxy::{Fault, FaultProxy};
use nh_e2e::{wait_for, workspace_root, write_config, Gateway, TempDir, VictoriaMetrics};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_and_a_bad_line_is_quarantined() -> Result<()> {
    let dir = TempDir::new("influx-faults")?;
    let vm = VictoriaMetrics::start().await?;
    let proxy = FaultProxy::start(vm.url()).await?;
    proxy.with(|s| {
        s.faults = VecDeque::from([
            Fault::Status(503),
            Fault::Delay(Duration::from_secs(3)),
            Fault::Status(500),
            Fault::Status(429),
        ]);
        s.poison = Some("POISON".into());
    });
    let journal = dir.path().join("journal.db");
    let cfg = format!(
        "[site]\nid = \"nh-test\"\n[registry]\nfile = \"{}\"\n[journal]\npath = \"{}\"\n\
         [influx]\nurl = \"{}\"\norg = \"nh\"\nbucket = \"nh\"\nbatch_max_lines = 50\nlinger_ms = 100\ntimeout_ms = 1000\nbackoff_max_ms = 400\n",
        workspace_root().join("config/test/devices.toml").display(),
        journal.display(),
        proxy.url()
    );
    let gw = Gateway::start(&write_config(dir.path(), &cfg)?, &[], dir.path()).await?;
    let broker = gw.mqtt.expect("embedded broker");

    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("radar", broker.ip().to_string(), broker.port()), 1000);
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = eventloop.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = ev {
                let _ = acked_tx.send(());
            }
        }
    });
    const N: i64 = 300;
    const BAD: i64 = 137;
    let start = nh_gateway::clock::system_now_ms() - 3_600_000;
    for i in 0..N {
        let extra = if i == BAD { r#","fault_code":"POISON""# } else { "" };
        let payload = format!(
            r#"{{"ts":{},"seq":{},"metrics":{{"body_movement":{}{extra}}}}}"#,
            start + i * 1000,
            i + 1,
            i % 100
        );
        client
            .publish("nh/nh-test/radar-t-101/telemetry", QoS::AtLeastOnce, false, payload)
            .await?;
    }
    for _ in 0..N {
        tokio::time::timeout(Duration::from_secs(30), acked_rx.recv()).await?;
    }
    gw.wait_forwarded(N as u64, true, Duration::from_secs(60)).await?;

    let m = gw.metrics().await?;
    assert_eq!(m.get("nh_influx_quarantined_lines_total").copied(), Some(1.0));
    assert!(
        m.get("nh_influx_failures_total{kind=\"http_5xx\"}")
            .copied()
            .unwrap_or(0.0)
            >= 2.0,
        "{m:?}"
    );
    assert!(
        m.get("nh_influx_failures_total{kind=\"timeout\"}")
            .copied()
            .unwrap_or(0.0)
            >= 1.0,
        "{m:?}"
    );
    assert!(
        m.get("nh_influx_failures_total{kind=\"throttled\"}")
            .copied()
            .unwrap_or(0.0)
            >= 1.0,
        "{m:?}"
    );
    assert!(
        m.get("nh_influx_failures_total{kind=\"malformed\"}")
            .copied()
            .unwrap_or(0.0)
            >= 1.0,
        "{m:?}"
    );

    // Every good reading is in the database exactly once; the bad one is not.
    let series = wait_for(
        "points in VictoriaMetrics",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let s = vm
                .export("{__name__=\"fall_radar_body_movement\",device=\"radar-t-101\"}")
                .await
                .ok()?;
            let n: usize = s.iter().map(|x| x.timestamps.len()).sum();
            (n >= (N - 1) as usize).then_some(s)
        },
    )
    .await?;
    let mut ts: Vec<i64> = series.iter().flat_map(|s| s.timestamps.clone()).collect();
    ts.sort_unstable();
    let expected: Vec<i64> = (0..N).filter(|i| *i != BAD).map(|i| start + i * 1000).collect();
    assert_eq!(ts, expected);

    // The refused line is kept in the journal's quarantine with the database's answer.
    let store = nh_gateway::journal::Store::open_secondary(&journal)?;
    let q = store.quarantined()?;
    assert_eq!(q.len(), 1);
    assert!(q[0].1.contains("POISON") && q[0].2.contains("400"), "{q:?}");
    Ok(())
}
