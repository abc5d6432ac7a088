//! Every file under `config/` is validated by the program that reads it; a broken file gets
//! every error at once, with line numbers.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use nh_e2e::{bin, workspace_root, TempDir};

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            files_under(&p, out);
        } else if p.extension().is_some_and(|e| e == "toml") {
            out.push(p);
        }
    }
}

/// Which program reads a config file: registries are read by both (`nh-sim` builds its fleet
/// from them), site configurations, rule catalogs and register maps by the gateway, simulator
/// scenarios and serial benches by `nh-sim`; the button table and MQTT identities files by the
/// gateway.
#[test]
fn every_file_in_config_is_valid() -> Result<()> {
    let mut files = Vec::new();
    files_under(&workspace_root().join("config"), &mut files);
    assert!(!files.is_empty());
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        let is_registry = text.lines().any(|l| l.trim() == "[[devices]]");
        let mut programs = vec![];
        let is_rules = text.lines().any(|l| l.trim() == "[[rules]]");
        let is_maps = text.lines().any(|l| l.trim() == "[[modbus_maps]]");
        let is_residents = text.lines().any(|l| l.trim() == "[[residents]]");
        let is_buttons = text.lines().any(|l| l.trim() == "[[models]]");
        let is_identities = text
            .lines()
            .any(|l| l.trim() == "[[bridges]]" || l.trim() == "[[consumers]]");
        if is_registry
            || is_rules
            || is_maps
            || is_residents
            || is_buttons
            || is_identities
            || text.lines().any(|l| l.trim() == "[site]")
        {
            programs.push("nh-gateway");
        }
        // Serial benches (`nh-sim serial`) list their buses.
        let is_bench = text.lines().any(|l| l.trim() == "[[buses]]");
        if is_registry || is_bench || text.lines().any(|l| l.trim() == "[scenario]") {
            programs.push("nh-sim");
        }
        assert!(!programs.is_empty(), "{}: no program reads this file", f.display());
        for program in programs {
            let out = Command::new(bin(program)).arg("validate").arg(&f).output()?;
            assert!(
                out.status.success(),
                "{program} validate {}: {}{}",
                f.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

#[test]
fn validate_reports_every_error_with_its_line() -> Result<()> {
    let dir = TempDir::new("validate")?;
    let registry = dir.path().join("devices.toml");
    std::fs::write(
        &registry,
        "site = \"nh-x\"\n[[devices]]\nid = \"bad id\"\nclass = \"toaster\"\ninterval_s = 10\n",
    )?;
    let cfg = dir.path().join("site.toml");
    std::fs::write(
        &cfg,
        "[site]\nid = \"nh-x\"\ncolour = \"blue\"\n[mqtt]\nmode = \"external\"\nkeep_alive_s = \"soon\"\n[registry]\nfile = \"devices.toml\"\n[http]\nlisten = \"nowhere\"\n",
    )?;
    let out = Command::new(bin("nh-gateway")).arg("validate").arg(&cfg).output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "site.toml:3: `site.colour`",
        "site.toml:6: `mqtt.keep_alive_s`",
        "site.toml:10: `http.listen`",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    let lines_with_numbers = err.lines().filter(|l| l.contains(".toml:")).count();
    assert!(lines_with_numbers >= 3, "{err}");

    // Once the structure is fixed, the semantic errors of both files appear together.
    std::fs::write(
        &cfg,
        "[site]\nid = \"nh-x\"\n[mqtt]\nmode = \"external\"\n[registry]\nfile = \"devices.toml\"\n[journal]\nretention_days = 0\n",
    )?;
    let out = Command::new(bin("nh-gateway")).arg("validate").arg(&cfg).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "site.toml:3: `mqtt.host`",
        "site.toml:8: `journal.retention_days`",
        "devices.toml:3: `devices.0.id`",
        "devices.toml:4: `devices.0.class`",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    Ok(())
}
