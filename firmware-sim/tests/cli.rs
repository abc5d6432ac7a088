//! The `nh-sim` binary's offline commands: registry validation and generation, and the checked-in
//! registries under `config/` (CI validates every file there; this keeps the generated demo
//! registry in step with the generator).

use std::path::PathBuf;
use std::process::{Command, Output};

fn nh_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nh-sim"))
        .args(args)
        .output()
        .expect("run nh-sim")
}

fn config(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("config")
        .join(path)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn checked_in_registries_validate() {
    let demo = config("demo/devices.toml");
    let test = config("test/devices.toml");
    let out = nh_sim(&["validate", demo.to_str().expect("path"), test.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("site nh-demo, 313 devices"), "{stdout}");
    assert!(stdout.contains("site nh-test"), "{stdout}");
}

#[test]
fn test_registry_covers_every_class_in_both_formats() {
    let registry = nh_sim::registry::load(&config("test/devices.toml")).expect("valid");
    for class in nh_sim::DeviceClass::ALL {
        assert!(
            registry.devices.iter().any(|d| d.class == class),
            "no {class} in the test registry"
        );
    }
    let z2m = registry.devices.iter().filter(|d| d.zigbee_name.is_some()).count();
    assert!(z2m >= 5 && z2m < registry.devices.len(), "{z2m}");
}

#[test]
fn demo_registry_is_what_the_generator_prints() {
    let out = nh_sim(&[
        "gen-registry",
        "--site",
        "nh-demo",
        "--buildings",
        "1",
        "--floors",
        "3",
        "--rooms-per-floor",
        "20",
        "--zigbee-share",
        "0.5",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let checked_in = std::fs::read_to_string(config("demo/devices.toml")).expect("demo registry");
    assert!(
        text(&out.stdout) == checked_in,
        "config/demo/devices.toml is stale: regenerate it with the command in its header"
    );
}

#[test]
fn validate_lists_every_error_and_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "site = \"s\"\n[[devices]]\nid = \"a b\"\nclass = \"toaster\"\nbuilding = \"A\"\nfloor = \"1\"\nroom = \"r\"\ninterval_s = 0\n",
    )
    .expect("write");
    let out = nh_sim(&["validate", bad.to_str().expect("path")]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("3 error(s)"), "{stderr}");
    assert!(
        stderr.contains("key `id`") && stderr.contains("key `class`") && stderr.contains("key `interval_s`"),
        "{stderr}"
    );
}

#[test]
fn a_provisioning_file_with_several_identities_needs_username_and_never_shows_a_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("provisioning.toml");
    let (a, b) = (
        "00112233445566778899aabbccddeeff00112233",
        "ffeeddccbbaa99887766554433221100ffeeddcc",
    );
    std::fs::write(
        &file,
        format!(
            "[[identities]]\nname = \"nh-sim\"\nsecret = \"{a}\"\n\n\
             [[identities]]\nname = \"bed-101\"\nsecret = \"{b}\"\n"
        ),
    )
    .expect("write");
    let registry = config("test/devices.toml");
    let base = [
        "run",
        "--registry",
        registry.to_str().expect("path"),
        "--broker",
        "127.0.0.1:9",
        "--provisioning-file",
        file.to_str().expect("path"),
    ];
    // The login is chosen before any connection is tried.
    let out = nh_sim(&base);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("`nh-sim`") && stderr.contains("`bed-101`") && stderr.contains("--username"),
        "{stderr}"
    );
    let named = [&base[..], &["--username", "door-7"][..]].concat();
    let out = nh_sim(&named);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("`door-7`") && stderr.contains("`bed-101`"), "{stderr}");
    for out in [nh_sim(&base), nh_sim(&named)] {
        let all = text(&out.stderr) + &text(&out.stdout);
        assert!(!all.contains(a) && !all.contains(b), "{all}");
    }
}

#[test]
fn scenario_and_alert_probe_with_a_login_need_a_watch_identity_before_connecting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("provisioning.toml");
    let (bridge, watch) = (
        "00112233445566778899aabbccddeeff00112233",
        "ffeeddccbbaa99887766554433221100ffeeddcc",
    );
    std::fs::write(
        &file,
        format!(
            "[[identities]]\nname = \"nh-sim\"\nsecret = \"{bridge}\"\n\n\
             [[identities]]\nname = \"nh-sim-watch\"\nsecret = \"{watch}\"\n"
        ),
    )
    .expect("write");
    let scenario = config("scenarios/r01-fall-confirmed.toml");
    let file = file.to_str().expect("path");
    // Port 9 (discard): nothing answers MQTT there, and nothing may be tried before the check.
    let commands: [Vec<&str>; 2] = [
        vec![
            "scenario",
            scenario.to_str().expect("path"),
            "--broker",
            "127.0.0.1:9",
            "--provisioning-file",
            file,
            "--username",
            "nh-sim",
        ],
        vec![
            "alert-probe",
            "--broker",
            "127.0.0.1:9",
            "--site",
            "nh-test",
            "--provisioning-file",
            file,
            "--username",
            "nh-sim",
        ],
    ];
    for args in &commands {
        let out = nh_sim(args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("--watch-username") && stderr.contains("consumer identity"),
            "{args:?}: {stderr}"
        );
        assert!(
            !stderr.contains("cannot connect") && !stderr.contains("SUBACK") && !stderr.contains("SubAck"),
            "{args:?} tried the broker: {stderr}"
        );
        // The same identity for both connections is refused as well.
        let same = [&args[..], &["--watch-username", "nh-sim"][..]].concat();
        let out = nh_sim(&same);
        assert!(!out.status.success(), "{same:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("consumer identity"), "{same:?}: {stderr}");
        for out in [nh_sim(args), nh_sim(&same)] {
            let all = text(&out.stderr) + &text(&out.stdout);
            assert!(!all.contains(bridge) && !all.contains(watch), "{all}");
        }
    }
}
