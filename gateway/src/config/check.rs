//! `nh-gateway validate FILE...`: what kind of file each one is, and checking it the way the
//! gateway would read it.
//!
//! The kind comes from the file's top-level tables (`[site]`, `[[devices]]`, `[[rules]]`,
//! `[[modbus_maps]]`, `[[models]]`, `[[residents]]`, `[[bridges]]` or `[[consumers]]`), read
//! from its table headers so that a file with a syntax error is still recognised and its errors
//! reported with their lines. A site configuration is checked with every file it names (the MQTT
//! identities and credentials files of `[mqtt.access]` included), its secrets' shape only: an
//! environment variable is read at run time, so one that is unset here is not an error.

use std::collections::BTreeSet;
use std::path::Path;

use super::{diagnostics, load_text, read_file, ConfigError, ConfigErrors, Env, Loaded, ResidentsFile, SecretCheck};
use crate::registry::Registry;

/// What a file holds, by its top-level tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `[site]`: a site configuration (with the registry, rules, residents and secrets it names).
    Site,
    /// `[[devices]]` without `[site]`: a device registry.
    Registry,
    /// `[[rules]]`: a rule catalog.
    Rules,
    /// `[[modbus_maps]]` without `[site]`: Modbus register maps.
    ModbusMaps,
    /// `[[models]]` without `[site]`: a button table.
    Buttons,
    /// `[[residents]]` without `[site]`: a residents file.
    Residents,
    /// `[[bridges]]` or `[[consumers]]` without `[site]`: an MQTT identities file.
    Identities,
}

impl FileKind {
    /// The kind of a file from its table headers; anything else is read as a site configuration
    /// (whose parser then says what is missing).
    pub fn of(text: &str) -> FileKind {
        let tables = top_level_tables(text);
        let has = |t: &str| tables.contains(t);
        let site = has("site");
        if has("rules") {
            FileKind::Rules
        } else if site {
            FileKind::Site
        } else if has("modbus_maps") {
            FileKind::ModbusMaps
        } else if has("models") {
            FileKind::Buttons
        } else if has("residents") {
            FileKind::Residents
        } else if has("bridges") || has("consumers") {
            FileKind::Identities
        } else if has("devices") {
            FileKind::Registry
        } else {
            FileKind::Site
        }
    }
}

/// The names of the top-level tables and arrays of tables a TOML text declares (`[site]`,
/// `[[devices]]`, `[site.x]` counts as `site`).
fn top_level_tables(text: &str) -> BTreeSet<&str> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let inner = l.strip_prefix("[[").or_else(|| l.strip_prefix('['))?;
            let end = inner.find(']')?;
            let name = inner[..end].split('.').next()?.trim();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// Validates one file for `nh-gateway validate`. Returns a one-line summary.
pub fn validate_file(path: &Path, env: &Env) -> Result<String, ConfigErrors> {
    let text = read_file(path)?;
    match FileKind::of(&text) {
        FileKind::Rules => {
            let r = crate::rules::RuleSet::parse(path, &text)?;
            Ok(format!("rule catalog, {} rules ({})", r.len(), r.ids().join(" ")))
        }
        FileKind::ModbusMaps => check_modbus_maps(path, &text),
        FileKind::Buttons => match crate::buttons::ButtonTable::parse(&text) {
            Ok(t) => Ok(format!("button table, {} models", t.len())),
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                file: path.to_owned(),
                line: 0,
                key: String::new(),
                message: e.to_string(),
            }])),
        },
        FileKind::Residents => {
            let (file, d) = diagnostics::parse_all::<ResidentsFile>(path, &text);
            let n = file.map_or(0, |f| f.residents.len());
            d.into_result(format!("{n} residents"))
        }
        FileKind::Identities => {
            let f = crate::access::IdentitiesFile::load(path)?;
            Ok(format!(
                "MQTT identities, {} bridges, {} consumers",
                f.bridges.len(),
                f.consumers.len()
            ))
        }
        FileKind::Registry => {
            let r = Registry::parse(path, &text)?;
            Ok(format!("registry of site {}, {} devices", r.site(), r.len()))
        }
        FileKind::Site => check_site(path, &text, env),
    }
}

fn check_modbus_maps(path: &Path, text: &str) -> Result<String, ConfigErrors> {
    let (file, mut d) = diagnostics::parse_all::<crate::decode::register_map::MapsFile>(path, text);
    let Some(file) = file else {
        return Err(ConfigErrors(d.errors));
    };
    for (i, m) in file.modbus_maps.iter().enumerate() {
        if let Err(problems) = m.compile() {
            for p in problems {
                d.at_key(&format!("modbus_maps.{i}"), format!("map `{}`: {p}", m.name));
            }
        }
    }
    let names: Vec<&str> = file.modbus_maps.iter().map(|m| m.name.as_str()).collect();
    let summary = format!("{} Modbus register maps ({})", names.len(), names.join(" "));
    d.into_result(summary)
}

fn check_site(path: &Path, text: &str, env: &Env) -> Result<String, ConfigErrors> {
    let base = path.parent().unwrap_or(Path::new("."));
    let l: Loaded = load_text(path, text, base, env, None, SecretCheck::ShapeOnly)?;
    let influx_deferred = l.config.influx.as_ref().is_some_and(|i| i.token.is_some()) && l.influx_token.is_none();
    let mqtt_deferred = l.config.mqtt.password.is_some() && l.mqtt_password.is_none();
    if influx_deferred || mqtt_deferred {
        return Ok("valid (secrets come from the environment at run time)".to_owned());
    }
    Ok(format!(
        "site {}, {} devices, {} subscriptions, {} serial ports, influx {}",
        l.config.site.id,
        l.registry.len(),
        l.config.mqtt.subscriptions.len(),
        l.config.serial.len(),
        if l.config.influx.is_some() { "on" } else { "off" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_known_by_its_top_level_tables() {
        assert_eq!(FileKind::of("[site]\nid = \"a\"\n[[devices]]\n"), FileKind::Site);
        assert_eq!(
            FileKind::of("site = \"a\"\n[[devices]]\nid = \"x\"\n"),
            FileKind::Registry
        );
        assert_eq!(FileKind::of("[[rules]]\nid = \"R1\"\n"), FileKind::Rules);
        assert_eq!(FileKind::of("[[modbus_maps]]\nname = \"m\"\n"), FileKind::ModbusMaps);
        assert_eq!(FileKind::of("[site]\n[[modbus_maps]]\n"), FileKind::Site);
        assert_eq!(FileKind::of("[[models]]\n"), FileKind::Buttons);
        assert_eq!(FileKind::of("[[residents]]\n"), FileKind::Residents);
        assert_eq!(FileKind::of("[[bridges]]\nname = \"z2m\"\n"), FileKind::Identities);
        assert_eq!(FileKind::of("[[consumers]]\nname = \"bms\"\n"), FileKind::Identities);
        assert_eq!(
            FileKind::of("  [[devices]] # indented\n[[devices.x]]\n"),
            FileKind::Registry
        );
        // A broken file is still recognised by its headers.
        assert_eq!(FileKind::of("[[rules]]\nid = = 3\n"), FileKind::Rules);
        assert_eq!(FileKind::of(""), FileKind::Site);
    }

    #[test]
    fn a_missing_identities_file_and_a_bad_credentials_file_are_reported_with_their_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write");
        write(
            "d.toml",
            "site = \"nh-s\"\n[[devices]]\nid = \"bed-1\"\nclass = \"smoke_alarm\"\ninterval_s = 60\n",
        );
        let site = dir.path().join("site.toml");
        let config =
            |access: &str| format!("[site]\nid = \"nh-s\"\n[registry]\nfile = \"d.toml\"\n[mqtt.access]\n{access}");
        std::fs::write(&site, config("")).expect("write");
        validate_file(&site, &Env::default()).expect("no identities file, no credentials yet: valid");

        std::fs::write(&site, config("identities = \"ids.toml\"\n")).expect("write");
        let e = validate_file(&site, &Env::default()).expect_err("missing").to_string();
        assert!(
            e.contains("ids.toml") && e.contains("cannot read the MQTT identities file"),
            "{e}"
        );

        write("ids.toml", "[[consumers]]\nname = \"control-room\"\n");
        write(
            "mqtt-credentials.toml",
            "[[credentials]]\nidentity = \"bed-1\"\nsalt = \"00\"\nsha256 = \"zz\"\nmosquitto = \"\"\n",
        );
        let e = validate_file(&site, &Env::default()).expect_err("bad hash").to_string();
        assert!(
            e.contains("mqtt-credentials.toml") && e.contains("credentials of `bed-1`: sha256"),
            "{e}"
        );
        write("mqtt-credentials.toml", "[[credentials]]\nidentity = \"bed-1\"\n");
        let e = validate_file(&site, &Env::default())
            .expect_err("missing fields")
            .to_string();
        assert!(e.contains("mqtt-credentials.toml"), "{e}");
    }
}
