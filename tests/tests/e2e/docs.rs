//! The documents say what the code does: every rule with its numbers, every configuration key,
//! no pointer outside the repository, and the README's first site works as written.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use nh_e2e::{bin, wait_ready, wait_until, workspace_root, TempDir, READY_TIMEOUT};

fn read(rel: &str) -> Result<String> {
    std::fs::read_to_string(workspace_root().join(rel)).with_context(|| format!("reading {rel}"))
}

/// Every number in a TOML value (arrays and tables included), as text.
fn numbers(v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::Integer(i) => out.push(i.to_string()),
        toml::Value::Float(f) => out.push(f.to_string()),
        toml::Value::Array(a) => a.iter().for_each(|x| numbers(x, out)),
        toml::Value::Table(t) => t.values().for_each(|x| numbers(x, out)),
        _ => {}
    }
}

/// The text of `### <heading>...` up to the next heading of level 2 or 3.
fn section<'a>(doc: &'a str, heading: &str) -> Option<&'a str> {
    let start = doc.find(&format!("\n### {heading}"))? + 1;
    let rest = &doc[start..];
    let body_from = rest.find('\n').map_or(rest.len(), |i| i + 1);
    let end = rest[body_from..]
        .find("\n### ")
        .into_iter()
        .chain(rest[body_from..].find("\n## "))
        .min()
        .map_or(rest.len(), |i| body_from + i);
    Some(&rest[..end])
}

#[test]
fn every_rule_is_in_docs_rules_md_with_its_numbers() -> Result<()> {
    let catalog: toml::Value = toml::from_str(&read("config/rules.toml")?)?;
    let doc = read("docs/rules.md")?;
    let rules = catalog
        .get("rules")
        .and_then(|r| r.as_array())
        .ok_or_else(|| anyhow!("no [[rules]]"))?;
    let mut missing = Vec::new();
    for entry in rules {
        let id = entry.get("id").and_then(|v| v.as_str()).unwrap_or_default();
        let name = entry.get("name").and_then(|v| v.as_str()).unwrap_or_default();
        let heading = format!("{id} {name}");
        let Some(text) = section(&doc, &heading) else {
            missing.push(format!("no section `### {heading}`"));
            continue;
        };
        let mut nums = Vec::new();
        numbers(entry, &mut nums);
        for n in nums {
            if !text.contains(&n) {
                missing.push(format!("{id}: the number {n} is not in its section"));
            }
        }
        if let Some(p) = entry.get("priority").and_then(|v| v.as_str()) {
            if !text.contains(p) {
                missing.push(format!("{id}: priority {p} is not in its section"));
            }
        }
    }
    assert!(missing.is_empty(), "docs/rules.md:\n{}", missing.join("\n"));
    Ok(())
}

/// Every key and table `print-default-config` prints, commented-out ones included.
fn default_config_keys() -> Vec<String> {
    let mut keys = Vec::new();
    for line in nh_gateway::config::DEFAULT_CONFIG.lines() {
        let l = line.trim_start();
        let l = l.strip_prefix("# ").unwrap_or(l);
        if l.starts_with('[') {
            if let Some(end) = l.find(']') {
                let header = if l.starts_with("[[") { &l[..end + 2] } else { &l[..=end] };
                keys.push(header.to_owned());
            }
            continue;
        }
        if let Some((k, _)) = l.split_once(" = ") {
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                keys.push(k.to_owned());
            }
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

#[test]
fn every_configuration_key_is_in_docs_configuration_md() -> Result<()> {
    let doc = read("docs/configuration.md")?;
    let keys = default_config_keys();
    assert!(keys.len() > 40, "too few keys found: {keys:?}");
    let missing: Vec<&String> = keys.iter().filter(|k| !doc.contains(&format!("`{k}`"))).collect();
    assert!(missing.is_empty(), "not in docs/configuration.md: {missing:?}");
    Ok(())
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            if name != "target" && !name.starts_with('.') {
                files_under(&p, out);
            }
        } else if ["rs", "toml", "md", "sh"]
            .iter()
            .any(|e| p.extension().is_some_and(|x| x == *e))
        {
            out.push(p);
        }
    }
}

#[test]
fn nothing_in_the_repository_points_outside_it() -> Result<()> {
    // Built from pieces so that this file does not match itself.
    let needles = [
        ["domain", ".md"].concat(),
        ["DESIGN", ".md"].concat(),
        ["crates", ".md"].concat(),
        ["STYLE", ".md"].concat(),
        ["../", "shared"].concat(),
    ];
    let root = workspace_root();
    let mut files = Vec::new();
    files_under(&root, &mut files);
    let mut hits = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            if needles.iter().any(|n| line.contains(n.as_str())) {
                hits.push(format!(
                    "{}:{}: {}",
                    f.strip_prefix(&root).unwrap_or(&f).display(),
                    i + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "references outside the repository:\n{}",
        hits.join("\n")
    );
    Ok(())
}

#[test]
fn the_readme_is_short() -> Result<()> {
    let lines = read("README.md")?.lines().count();
    assert!(lines < 200, "README.md has {lines} lines");
    Ok(())
}

/// The `sh` blocks of the README's first-site section, in order.
fn first_site_blocks(readme: &str) -> Result<Vec<String>> {
    let start = readme
        .find("## A first real site in five steps")
        .ok_or_else(|| anyhow!("no first-site section in the README"))?;
    let rest = &readme[start + 3..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut blocks = Vec::new();
    let mut it = section.split("```sh\n").skip(1);
    for chunk in it.by_ref() {
        let end = chunk.find("```").ok_or_else(|| anyhow!("unclosed block"))?;
        blocks.push(chunk[..end].to_owned());
    }
    Ok(blocks)
}

fn sh(dir: &Path, path_env: &str, script: &str) -> Result<std::process::Output> {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path_env)
        .output()?;
    Ok(out)
}

#[tokio::test]
async fn the_readme_first_site_runs_as_written() -> Result<()> {
    let blocks = first_site_blocks(&read("README.md")?)?;
    assert_eq!(blocks.len(), 5, "five steps, five blocks: {blocks:#?}");
    let dir = TempDir::new("readme-first-site")?;
    let bin_dir = bin("nh-gateway")
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("no bin dir"))?;
    let path_env = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    // Steps 1-3: files, then validate.
    for (i, block) in blocks[..3].iter().enumerate() {
        let out = sh(dir.path(), &path_env, block)?;
        assert!(
            out.status.success(),
            "step {}:\n{block}\n{}{}",
            i + 1,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Step 4: the run command as written, on free loopback ports instead of 8080 and 1883.
    let run = blocks[3].trim();
    assert!(run.starts_with("nh-gateway run"), "step 4 is `{run}`");
    let log = dir.path().join("gateway.log");
    let mut child = Command::new("bash")
        .args(["-c", &format!("exec {run} --http 127.0.0.1:0 --mqtt 127.0.0.1:0")])
        .current_dir(dir.path())
        .env("PATH", &path_env)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let _kill = nh_e2e::Proc {
        child,
        name: "nh-gateway",
        log: log.clone(),
    };
    let ready = wait_ready(stdout, READY_TIMEOUT)
        .await
        .with_context(|| format!("log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()))?;
    let http = ready.http.to_string();
    let mqtt_port = ready
        .mqtt
        .ok_or_else(|| anyhow!("the first site runs no embedded broker"))?
        .port()
        .to_string();
    // Step 5: publish once, then ask until the reading is committed.
    let step5 = blocks[4]
        .replace("127.0.0.1:8080", &http)
        .replace("-p 1883", &format!("-p {mqtt_port}"));
    let split = step5.find("\ncurl").ok_or_else(|| anyhow!("no curl in step 5"))?;
    let (publish, query) = step5.split_at(split + 1);
    let out = sh(dir.path(), &path_env, publish)?;
    assert!(
        out.status.success(),
        "{publish}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (site, search_path) = (dir.path(), path_env.as_str());
    wait_until(
        "the reading listed",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async move {
            let out = sh(site, search_path, query)?;
            let rows = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default();
            let found = rows.as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|r| r["metrics"]["battery_pct"] == 97.0 && r["metrics"]["smoke"] == false)
            });
            anyhow::Ok(found.then_some(()))
        },
    )
    .await
    .with_context(|| {
        let listed = sh(site, search_path, query)
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default();
        format!(
            "the reading was not listed: {listed}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })
}
