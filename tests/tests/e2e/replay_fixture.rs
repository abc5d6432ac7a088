//! The recorded demo shift (`tests/fixtures/demo-shift/`): 30 minutes of a one-floor facility,
//! canonical and Zigbee2MQTT devices mixed, with a fall, an SOS, a smoke alarm and a gas leak,
//! recorded from a gateway's broker and anonymized. Replayed at 20x against a gateway on the test
//! clock, it must raise exactly the alerts its scenario file names; anonymized once more, it must
//! raise the same alerts under the new names, with no old name left anywhere.
//!
//! `make_the_demo_shift_fixture` (ignored) is how the fixture was made, and makes it again:
//! `cargo test -p nh-e2e --test e2e -- --ignored make_the_demo_shift_fixture`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nh_e2e::{bin, workspace_root, TempDir};
use nh_sim::capture::{Capture, Captured, Header};

fn fixture_dir() -> PathBuf {
    workspace_root().join("tests/fixtures/demo-shift")
}

/// Runs `nh-sim` with `args`; its stdout, or an error with its stderr.
fn sim(args: &[&str]) -> Result<String> {
    let out = Command::new(bin("nh-sim")).args(args).output()?;
    if !out.status.success() {
        bail!("nh-sim {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shift_replayed_at_20x_raises_exactly_its_alerts() -> Result<()> {
    let file = fixture_dir().join("scenario.toml");
    let info: serde_json::Value = serde_json::from_str(&sim(&["scenario", "--info", path(&file)])?)?;
    assert_eq!(info["duration_s"], 1800, "{info}");
    assert_eq!(info["time_scale"], 20.0, "{info}");
    assert!(info["expectations"].as_u64() >= Some(4), "{info}");
    let started = Instant::now();
    let (passed, report) = crate::scenarios::run_one(&file).await?;
    let took = started.elapsed();
    eprintln!("demo shift at 20x: {:.1} s in all\n{report}", took.as_secs_f64());
    assert!(passed, "the demo shift did not raise exactly its alerts:\n{report}");
    // 90 s of paced replay; the budget is 2 minutes of CI time for the replay.
    let replay: serde_json::Value = serde_json::from_str(&report)?;
    let replay_s = replay["elapsed_real_s"].as_f64().context("elapsed_real_s")?;
    assert!(replay_s < 120.0, "the replay took {replay_s} s");
    assert!(
        took < Duration::from_secs(150),
        "took {took:?} with the gateway's start"
    );
    Ok(())
}

/// Whether `id` occurs in `text` as a whole identifier (not inside a longer one).
fn has_token(text: &str, id: &str) -> bool {
    let is_id = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    text.match_indices(id).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + id.len()..].chars().next();
        !before.is_some_and(is_id) && !after.is_some_and(is_id)
    })
}

/// The identifiers of a registry: device ids, Zigbee friendly names and resident ids.
fn identifiers(registry: &Path) -> Result<Vec<String>> {
    let reg: toml::Table = std::fs::read_to_string(registry)?.parse()?;
    let mut ids = Vec::new();
    for d in reg["devices"].as_array().context("devices")? {
        for key in ["id", "zigbee_name", "resident"] {
            if let Some(v) = d.get(key).and_then(|v| v.as_str()) {
                ids.push(v.to_owned());
            }
        }
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shift_anonymized_again_keeps_no_name_and_raises_the_same_alerts() -> Result<()> {
    let dir = TempDir::new("anonymized-shift")?;
    let fixture = fixture_dir();
    let (capture, registry, map) = (
        dir.path().join("capture.jsonl"),
        dir.path().join("devices.toml"),
        dir.path().join("map.json"),
    );
    sim(&[
        "anonymize",
        path(&fixture.join("capture.jsonl")),
        "--out",
        path(&capture),
        "--registry",
        path(&fixture.join("devices.toml")),
        "--registry-out",
        path(&registry),
        "--map-out",
        path(&map),
        "--prefix",
        "x",
        "--shift-ms",
        "-86400000",
    ])?;

    // No old identifier anywhere in what may leave the site.
    let originals = identifiers(&fixture.join("devices.toml"))?;
    assert!(originals.len() > 40, "{originals:?}");
    for f in [&capture, &registry] {
        let text = std::fs::read_to_string(f)?;
        let left: Vec<&String> = originals.iter().filter(|id| has_token(&text, id)).collect();
        assert!(left.is_empty(), "{} still names {left:?}", f.display());
    }
    sim(&["validate", path(&registry)])?;
    // Every JSON payload is still JSON, with the same keys.
    let (before, after) = (Capture::read(&fixture.join("capture.jsonl"))?, Capture::read(&capture)?);
    assert_eq!(before.messages.len(), after.messages.len());
    for (b, a) in before.messages.iter().zip(&after.messages) {
        let keys = |bytes: Vec<u8>| -> Result<Vec<String>> {
            let v: serde_json::Value = serde_json::from_slice(&bytes)?;
            Ok(v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default())
        };
        assert_eq!(keys(b.bytes()?)?, keys(a.bytes()?)?, "{} -> {}", b.topic, a.topic);
    }

    // The fixture's scenario with the new names: the same alerts, exactly.
    let mapping: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&map)?)?;
    let devices: BTreeMap<String, String> = serde_json::from_value(mapping["devices"].clone())?;
    let mut sc: toml::Table = std::fs::read_to_string(fixture.join("scenario.toml"))?.parse()?;
    let header = sc
        .get_mut("scenario")
        .and_then(|s| s.as_table_mut())
        .context("[scenario]")?;
    header.insert("capture".into(), path(&capture).into());
    header.insert("registry".into(), path(&registry).into());
    header.insert("rules".into(), path(&workspace_root().join("config/rules.toml")).into());
    let mut renamed = 0;
    for e in sc
        .get_mut("expect")
        .and_then(|e| e.as_array_mut())
        .context("[[expect]]")?
    {
        let t = e.as_table_mut().context("expect")?;
        if let Some(d) = t.get("device").and_then(|d| d.as_str()) {
            let new = devices.get(d).with_context(|| format!("{d} is not in the mapping"))?;
            t.insert("device".into(), new.clone().into());
            renamed += 1;
        }
    }
    assert!(renamed >= 4, "expectations without a device");
    let file = dir.path().join("scenario.toml");
    std::fs::write(&file, toml::to_string(&sc)?)?;
    let (passed, report) = crate::scenarios::run_one(&file).await?;
    assert!(
        passed,
        "the anonymized shift raised other alerts than the fixture:\n{report}"
    );
    Ok(())
}

/// The facility: one floor of eight rooms from the demo generator, half of the Zigbee-capable
/// devices on Zigbee2MQTT. Devices that report every 10 or 30 s report every 60 s instead, so
/// that offline supervision (three intervals) spans 9 s of real time at 20x.
const FACILITY: &[&str] = &[
    "gen-registry",
    "--site",
    "nh-demo",
    "--buildings",
    "1",
    "--floors",
    "1",
    "--rooms-per-floor",
    "8",
    "--zigbee-share",
    "0.5",
    "--seed",
    "7",
];

/// The shift as it was played: (event, seconds after the start, device, step, expected rule,
/// expected within seconds of the event, not before). The windows are wide (240 s of virtual
/// time is 12 s of real time at 20x) so that a loaded machine cannot fail them: what is checked
/// exactly is which alerts come, and that nothing else does.
const EVENTS: &[(&str, u32, &str, &str, &str, u32, i32)] = &[
    (
        "fall",
        300,
        "radar-a-1-03",
        "set = { fall_state = \"fall\", presence = true, motion_state = \"stationary\" }\nfor_s = 30\nevery_s = 10",
        "R1",
        240,
        -5,
    ),
    ("sos", 660, "sos-a-1", "pulse = { sos = true }", "R4", 240, -5),
    (
        "smoke",
        1020,
        "smoke-a-1-06",
        "set = { smoke = true }\nfor_s = 60\nevery_s = 10",
        "R11",
        240,
        -5,
    ),
    (
        "gas leak",
        1380,
        "gas-a-1",
        "ramp = { metric = \"gas_lel\", from = 0, to = 40, over_s = 60 }\nfor_s = 240\nevery_s = 5",
        "R14",
        300,
        10,
    ),
];

const SHIFT_START: &str = "2026-05-02T14:00:00+08:00";
const SHIFT_S: i64 = 1800;
/// The fixture's times are a week before the recording (time of day and weekday kept).
const SHIFT_BACK_MS: i64 = 7 * 86_400_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "makes tests/fixtures/demo-shift again; run by hand"]
async fn make_the_demo_shift_fixture() -> Result<()> {
    let dir = TempDir::new("make-demo-shift")?;
    let out = fixture_dir();
    std::fs::create_dir_all(&out)?;

    // 1. The facility.
    let registry = dir.path().join("devices.toml");
    let generated = sim(FACILITY)?;
    let slower: String = generated
        .lines()
        .map(|l| match l {
            "interval_s = 10" | "interval_s = 30" => "interval_s = 60\n".to_owned(),
            l => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&registry, slower)?;

    // 2. The shift, played live against a gateway while its broker is recorded.
    let mut source = format!(
        "[scenario]\nname = \"Demo shift (source of the fixture)\"\nregistry = \"devices.toml\"\n\
         rules = \"{}\"\nstart = \"{SHIFT_START}\"\nduration_s = {SHIFT_S}\ntime_scale = 20\n",
        path(&workspace_root().join("config/rules.toml"))
    );
    for (name, at, device, step, rule, within, not_before) in EVENTS {
        source.push_str(&format!(
            "\n[[timeline]]\nname = \"{name}\"\nat_s = {at}\ndevice = \"{device}\"\n{step}\n\n\
             [[expect]]\nname = \"{name}\"\nrule = \"{rule}\"\npriority = \"P1\"\ndevice = \"{device}\"\n\
             after = \"{name}\"\nnot_before_s = {not_before}\nwithin_s = {within}\n"
        ));
    }
    let source_file = dir.path().join("shift.toml");
    std::fs::write(&source_file, &source)?;
    let raw = dir.path().join("raw.jsonl");
    let (passed, report) = crate::scenarios::run_one_recorded(&source_file, Some(&raw)).await?;
    assert!(passed, "the live shift failed:\n{report}");

    // 3. The capture cut to the shift: it starts at the shift's start and ends 30 minutes later.
    let info: serde_json::Value = serde_json::from_str(&sim(&["scenario", "--info", path(&source_file)])?)?;
    let start_ms = info["start_ms"].as_i64().context("start_ms")?;
    let mut cap = Capture::read(&raw)?;
    cap.messages
        .retain(|m| m.t_ms >= start_ms && m.t_ms <= start_ms + SHIFT_S * 1000);
    let header = Header { start_ms, ..cap.header };
    let mut text = serde_json::to_string(&header)? + "\n";
    for m in &cap.messages {
        text.push_str(&serde_json::to_string::<Captured>(m)?);
        text.push('\n');
    }
    let cut = dir.path().join("cut.jsonl");
    std::fs::write(&cut, text)?;
    let zigbee = cap
        .messages
        .iter()
        .filter(|m| m.topic.starts_with("zigbee2mqtt/"))
        .count();
    assert!(
        zigbee > 0 && zigbee < cap.messages.len(),
        "canonical and Zigbee2MQTT payloads mixed"
    );

    // 4. Anonymized; the mapping stays behind in the temporary folder.
    let map = dir.path().join("map.json");
    sim(&[
        "anonymize",
        path(&cut),
        "--out",
        path(&out.join("capture.jsonl")),
        "--registry",
        path(&registry),
        "--registry-out",
        path(&out.join("devices.toml")),
        "--map-out",
        path(&map),
        "--shift-ms",
        &(-SHIFT_BACK_MS).to_string(),
    ])?;
    let mapping: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&map)?)?;
    let pseudonym = |d: &str| -> Result<String> {
        mapping["devices"][d]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{d} not mapped"))
    };

    // 5. The fixture's scenario: the same expectations, counted from the start.
    let start = nh_sim::scenario::time::format_rfc3339(start_ms - SHIFT_BACK_MS, 8 * 60);
    let mut sc = format!(
        "# Generated by `cargo test -p nh-e2e --test e2e -- --ignored make_the_demo_shift_fixture`\n\
         # (tests/tests/e2e/replay_fixture.rs): {} messages recorded from a gateway's broker while\n\
         # the simulator played a one-floor facility for 30 minutes, anonymized. Every alert the\n\
         # shift raised is expected below, and nothing else may come (nothing_else).\n\
         [scenario]\nname = \"Demo shift, recorded and anonymized\"\nregistry = \"devices.toml\"\n\
         rules = \"../../../config/rules.toml\"\ncapture = \"capture.jsonl\"\nstart = \"{start}\"\n\
         duration_s = {SHIFT_S}\ntime_scale = 20\n",
        cap.messages.len()
    );
    for (name, at, device, _, rule, within, not_before) in EVENTS {
        let at = i64::from(*at);
        sc.push_str(&format!(
            "\n# {name} at {}:{:02}\n[[expect]]\nname = \"{name}\"\nrule = \"{rule}\"\npriority = \"P1\"\n\
             device = \"{}\"\nnot_before_s = {}\nwithin_s = {}\n",
            at / 60,
            at % 60,
            pseudonym(device)?,
            at + i64::from(*not_before),
            at + i64::from(*within),
        ));
    }
    std::fs::write(out.join("scenario.toml"), sc)?;
    sim(&["validate", path(&out.join("scenario.toml"))])?;
    Ok(())
}
