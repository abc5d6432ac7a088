//! Record and replay (`nh-sim record`, `nh-sim replay`) between two real Mosquitto brokers: a
//! capture replayed and recorded again has the same topics and payload bytes in the same
//! per-topic order, binary payloads included.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use nh_e2e::{bin, sim, workspace_root, Mosquitto, TempDir};
use nh_sim::capture::Capture;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Starts `nh-sim record` of everything on `broker` into `out` and waits for its subscription.
fn start_record(broker: &str, out: &Path) -> Result<Child> {
    start_record_of(broker, out, &["#"], &[])
}

/// Starts `nh-sim record` of `filters` on `broker` into `out` (with `extra` arguments: a test
/// clock) and waits for its subscription.
pub(crate) fn start_record_of(broker: &str, out: &Path, filters: &[&str], extra: &[String]) -> Result<Child> {
    let mut cmd = Command::new(bin("nh-sim"));
    cmd.args(["record", "--broker", broker, "--out"]).arg(out).args(extra);
    for f in filters {
        cmd.args(["--filter", f]);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    match lines.next() {
        Some(Ok(l)) if l.contains("\"subscribed\":true") => {}
        other => bail!("nh-sim record did not subscribe: {other:?}"),
    }
    // Keep reading (the summary) so the pipe never fills.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Ok(child)
}

/// Stops a recorder with SIGTERM and reads its capture.
fn stop_record(mut child: Child, out: &Path) -> Result<Capture> {
    nh_e2e::terminate(&mut child)?;
    Capture::read(out)
}

/// Publishes `payload` on `topic` at QoS 1 and waits for the PubAck.
async fn publish_raw(broker: &str, topic: &str, payload: Vec<u8>) -> Result<()> {
    let addr: SocketAddr = broker.parse()?;
    let opts = MqttOptions::new("raw-device", addr.ip().to_string(), addr.port());
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    client.publish(topic, QoS::AtLeastOnce, false, payload).await?;
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await? {
                return Ok::<(), rumqttc::ConnectionError>(());
            }
        }
    })
    .await;
    match acked {
        Ok(Ok(())) => Ok(()),
        other => bail!("no PubAck for the raw publish: {other:?}"),
    }
}

/// Payloads per topic, in arrival order.
fn per_topic(c: &Capture) -> Result<BTreeMap<String, Vec<Vec<u8>>>> {
    let mut out: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for m in &c.messages {
        out.entry(m.topic.clone()).or_default().push(m.bytes()?);
    }
    Ok(out)
}

#[tokio::test]
async fn a_capture_replayed_and_recorded_again_is_the_same_per_topic_binary_included() -> Result<()> {
    let dir = TempDir::new("capture")?;
    let site_a = Mosquitto::start().await?;
    let site_b = Mosquitto::start().await?;
    let (a, b) = (
        format!("127.0.0.1:{}", site_a.port),
        format!("127.0.0.1:{}", site_b.port),
    );

    // The site: a known fleet publishes (canonical and Zigbee2MQTT payloads), and a device
    // sends a payload that is not UTF-8.
    let first = dir.path().join("first.jsonl");
    let recorder = start_record(&a, &first)?;
    let registry = workspace_root().join("config/test/devices.toml");
    let sent = sim::run(&registry, a.parse()?, 120, 11, dir.path())?;
    let binary: Vec<u8> = vec![0x00, 0x9f, 0x92, 0x96, 0xff, 0xfe, b'\n', 0x01];
    publish_raw(&a, "vendor/raw/dev-1/up", binary.clone()).await?;
    // Everything the fleet published is in the capture before it is stopped.
    let expected = sent.len() + 1;
    nh_e2e::wait_for(
        "the first capture",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let n = std::fs::read_to_string(&first).map(|t| t.lines().count()).unwrap_or(0);
            async move { (n > expected).then_some(()) }
        },
    )
    .await?;
    let first = stop_record(recorder, &first)?;
    assert_eq!(first.messages.len(), expected, "every published message recorded once");
    assert!(
        first.messages.iter().any(|m| m.payload_b64.is_some()),
        "the binary payload is base64"
    );

    // Anonymized: no original id or friendly name left anywhere, the registry rewritten to match
    // and valid, every message kept (the binary one byte for byte).
    let anon = dir.path().join("anon.jsonl");
    let anon_registry = dir.path().join("anon-devices.toml");
    let out = Command::new(bin("nh-sim"))
        .arg("anonymize")
        .arg(dir.path().join("first.jsonl"))
        .arg("--out")
        .arg(&anon)
        .arg("--registry")
        .arg(&registry)
        .arg("--registry-out")
        .arg(&anon_registry)
        .args(["--shift-ms", "-86400000"])
        .output()?;
    assert!(
        out.status.success(),
        "anonymize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&anon)? + &std::fs::read_to_string(&anon_registry)?;
    let original: toml::Value = toml::from_str(&std::fs::read_to_string(&registry)?)?;
    let mut identifiers = Vec::new();
    for d in original["devices"].as_array().into_iter().flatten() {
        for key in ["id", "zigbee_name"] {
            if let Some(v) = d.get(key).and_then(|v| v.as_str()) {
                identifiers.push(v.to_owned());
            }
        }
    }
    assert!(identifiers.len() > 10, "{identifiers:?}");
    for id in &identifiers {
        assert!(
            !text.contains(id.as_str()),
            "`{id}` is still in the anonymized capture or registry"
        );
    }
    for program in ["nh-sim", "nh-gateway"] {
        let v = Command::new(bin(program))
            .arg("validate")
            .arg(&anon_registry)
            .output()?;
        assert!(
            v.status.success(),
            "{program} validate: {}",
            String::from_utf8_lossy(&v.stderr)
        );
    }
    let anonymized = Capture::read(&anon)?;
    assert_eq!(anonymized.messages.len(), first.messages.len());
    assert_eq!(anonymized.messages[0].t_ms, first.messages[0].t_ms - 86_400_000);
    assert!(anonymized
        .messages
        .iter()
        .any(|m| m.bytes().ok().as_deref() == Some(binary.as_slice())));

    // Replay into the second broker while recording there.
    let second_path = dir.path().join("second.jsonl");
    let recorder = start_record(&b, &second_path)?;
    let out = Command::new(bin("nh-sim"))
        .args(["replay", "--broker", &b, "--as-fast-as-possible"])
        .arg(dir.path().join("first.jsonl"))
        .output()?;
    assert!(
        out.status.success(),
        "replay: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(summary["sent"], expected as u64, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    nh_e2e::wait_for(
        "the second capture",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let n = std::fs::read_to_string(&second_path)
                .map(|t| t.lines().count())
                .unwrap_or(0);
            async move { (n > expected).then_some(()) }
        },
    )
    .await?;
    let second = stop_record(recorder, &second_path)?;
    assert_eq!(
        per_topic(&first)?,
        per_topic(&second)?,
        "same topics, same bytes, same order per topic"
    );
    let raw = per_topic(&second)?;
    assert_eq!(
        raw.get("vendor/raw/dev-1/up"),
        Some(&vec![binary]),
        "binary payload byte-identical"
    );
    Ok(())
}

#[tokio::test]
async fn replay_keeps_the_spacing_scaled_by_speed() -> Result<()> {
    let dir = TempDir::new("capture-speed")?;
    let broker = Mosquitto::start().await?;
    let b = format!("127.0.0.1:{}", broker.port);
    // A capture spanning 4 s of recorded time, replayed at 2x: about 2 s.
    let path = dir.path().join("c.jsonl");
    let mut text = format!(
        "{{\"format\":\"{}\",\"broker\":\"x\",\"filters\":[\"#\"],\"start_ms\":0}}\n",
        nh_sim::capture::FORMAT
    );
    for i in 0..5 {
        text.push_str(&format!(
            "{{\"t_ms\":{},\"topic\":\"t/{}\",\"qos\":1,\"retain\":false,\"payload\":\"{i}\"}}\n",
            1000 + i * 1000,
            i % 2
        ));
    }
    std::fs::write(&path, text)?;
    let out = Command::new(bin("nh-sim"))
        .args(["replay", "--broker", &b, "--speed", "2"])
        .arg(&path)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let seconds = summary["seconds"].as_f64().unwrap_or_default();
    assert_eq!(
        (summary["sent"].clone(), summary["acked"].clone()),
        (5.into(), 5.into()),
        "{summary}"
    );
    // 2 s of spacing; 5x margin above for a loaded machine, none below (it must wait).
    assert!((2.0..10.0).contains(&seconds), "took {seconds} s: {summary}");
    Ok(())
}

#[tokio::test]
async fn replay_on_a_test_clock_moves_device_times_onto_it() -> Result<()> {
    let dir = TempDir::new("capture-clock")?;
    let broker = Mosquitto::start().await?;
    let b = format!("127.0.0.1:{}", broker.port);
    // Two readings 2 s apart (capture time and device time alike), long ago.
    let (t0, v0) = (1_000_000_000_000i64, 1_800_000_000_000i64);
    let path = dir.path().join("old.jsonl");
    let mut text = format!(
        "{{\"format\":\"{}\",\"broker\":\"x\",\"filters\":[\"#\"],\"start_ms\":{t0}}}\n",
        nh_sim::capture::FORMAT
    );
    for (i, t) in [t0, t0 + 2000].iter().enumerate() {
        let payload = format!("{{\\\"ts\\\":{t},\\\"seq\\\":{i},\\\"metrics\\\":{{\\\"smoke\\\":false}}}}");
        text.push_str(&format!(
            "{{\"t_ms\":{t},\"topic\":\"nh/s/smoke-1/telemetry\",\"qos\":1,\"retain\":false,\"payload\":\"{payload}\"}}\n"
        ));
    }
    std::fs::write(&path, text)?;
    let recorded = dir.path().join("new.jsonl");
    let recorder = start_record(&b, &recorded)?;
    let now = nh_gateway::clock::system_now_ms();
    let out = Command::new(bin("nh-sim"))
        .args(["replay", "--broker", &b])
        .arg(&path)
        .args([
            "--test-clock-origin",
            &now.to_string(),
            "--test-clock-start",
            &v0.to_string(),
        ])
        .args(["--time-scale", "2"])
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    nh_e2e::wait_for(
        "the replayed readings",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let n = std::fs::read_to_string(&recorded)
                .map(|t| t.lines().count())
                .unwrap_or(0);
            async move { (n >= 3).then_some(()) }
        },
    )
    .await?;
    let got = stop_record(recorder, &recorded)?;
    let ts: Vec<i64> = got
        .messages
        .iter()
        .map(|m| {
            Ok(serde_json::from_slice::<serde_json::Value>(&m.bytes()?)?["ts"]
                .as_i64()
                .unwrap_or(0))
        })
        .collect::<Result<_>>()?;
    assert_eq!(ts.len(), 2);
    // On the test clock from its start on (within a loaded machine's 10 s), still 2 s apart.
    assert!((v0..v0 + 10_000).contains(&ts[0]), "{ts:?}");
    assert_eq!(ts[1] - ts[0], 2000, "{ts:?}");
    // Paced at the clock's scale: 2 s of capture in about 1 s of real time.
    let real = (got.messages[1].t_ms - got.messages[0].t_ms) as f64 / 1000.0;
    assert!((0.8..5.0).contains(&real), "{real} s apart");
    Ok(())
}
