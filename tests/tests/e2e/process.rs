//! The gateway as a process the service manager runs: one gateway per journal, a stage that
//! dies takes the process down (non-zero, the stage named) so that it is started again, a
//! serial link that errors retries in place, and a start after a kill says so.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nh_e2e::{wait_for, wait_until, write_config, Gateway, TempDir};

/// Two devices: a fall radar on a serial link (`uart:b1`) and a smoke alarm on MQTT.
const REGISTRY: &str = r#"
site = "nh-test"
[[devices]]
id = "uart:b1"
class = "fall_radar"
room = "A-101"
zone = "bedroom"
interval_s = 60
[[devices]]
id = "smoke-1"
class = "smoke_alarm"
room = "A-101"
zone = "bedroom"
interval_s = 60
"#;

/// A site on the embedded broker with a journal in `dir`; `extra` is appended (a `[[serial]]`
/// port).
fn site(dir: &Path, extra: &str) -> Result<std::path::PathBuf> {
    let registry = dir.join("devices.toml");
    std::fs::write(&registry, REGISTRY)?;
    write_config(
        dir,
        &format!(
            r#"[site]
id = "nh-test"
[registry]
file = "{registry}"
[journal]
path = "{journal}"
{extra}"#,
            registry = registry.display(),
            journal = dir.join("journal.db").display(),
        ),
    )
}

/// Waits up to `timeout` for `child` to exit; its status, or None if it still runs.
async fn exit_within(child: &mut std::process::Child, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
    let exited = wait_until("the process to exit", timeout, Duration::from_millis(50), || {
        std::future::ready(child.try_wait().map_err(anyhow::Error::from))
    })
    .await;
    match exited {
        Ok(status) => Ok(Some(status)),
        // The deadline passed (or the status was unreadable): one last look says which.
        Err(_) => Ok(child.try_wait()?),
    }
}

#[tokio::test]
async fn a_second_gateway_on_the_same_journal_refuses_to_start_and_the_first_keeps_serving() -> Result<()> {
    let dir = TempDir::new("journal-lock")?;
    let config = site(dir.path(), "")?;
    let first = Gateway::start(&config, &[], dir.path()).await?;
    let started = Instant::now();
    let mut second = Command::new(nh_e2e::bin("nh-gateway"))
        .args(["run", "--config"])
        .arg(&config)
        .args(["--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // The issue's deadline is one second; 5 s leaves room for a loaded CI machine.
    let Some(status) = exit_within(&mut second, Duration::from_secs(5)).await? else {
        let _ = second.kill();
        bail!("the second gateway is still running after 5 s");
    };
    let took = started.elapsed();
    let out = second.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!status.success(), "exit status {status}");
    assert!(!stdout.contains("ready "), "the second gateway said ready: {stdout}");
    let journal = dir.path().join("journal.db");
    assert!(
        stderr.contains(&format!(
            "journal {} is in use by another gateway (pid {}",
            journal.display(),
            first.pid
        )),
        "{stderr}"
    );
    eprintln!("second gateway refused in {} ms", took.as_millis());
    // The first one is unharmed: still healthy, its journal still its own.
    let health = first.get_json("/healthz").await?;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(first.metric("nh_unclean_starts_total").await?, 0.0);
    Ok(())
}

#[tokio::test]
async fn a_stage_that_panics_stops_the_process_naming_it_and_a_failing_serial_link_retries() -> Result<()> {
    let dir = TempDir::new("stage-panic")?;
    // A serial port that does not exist: the link fails to open and retries with backoff.
    let missing = dir.path().join("no-such-tty");
    let serial = format!(
        "[[serial]]\nbus = \"b1\"\npath = \"{}\"\nprotocol = \"mr60fda1\"\nreopen_max_ms = 200\n",
        missing.display()
    );
    let config = site(dir.path(), &serial)?;
    let mut gw = Gateway::start(&config, &[], dir.path()).await?;
    // Several failed opens later the gateway is still serving.
    wait_for(
        "three failed opens of the serial port",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let log = std::fs::read_to_string(&gw.proc.log).unwrap_or_default();
            let fails = log.matches("serial link down").count();
            async move { (fails >= 3).then_some(()) }
        },
    )
    .await?;
    // Still running and serving (its /metrics answers); the link is reported down, not fatal.
    assert_eq!(gw.metric("nh_unclean_starts_total").await?, 0.0);
    assert!(
        gw.proc.child.try_wait()?.is_none(),
        "the gateway exited over a serial link"
    );
    drop(gw);

    // The same site with the rules-and-alerts stage made to panic: exit non-zero, stage named.
    let dir = TempDir::new("stage-panic-alerts")?;
    let config = site(dir.path(), "")?;
    for stage in ["alerts", "mqtt-bulk"] {
        let mut gw = Gateway::start(
            &config,
            &[
                ("NH_TEST_PANIC_STAGE", stage.to_owned()),
                ("NH_TEST_PANIC_AFTER_MS", "500".to_owned()),
            ],
            dir.path(),
        )
        .await?;
        let Some(status) = exit_within(&mut gw.proc.child, Duration::from_secs(30)).await? else {
            bail!(
                "stage {stage} panicked but the gateway is still running:\n{}",
                gw.proc.log_tail()
            );
        };
        assert!(!status.success(), "exit status {status}");
        let log = std::fs::read_to_string(&gw.proc.log)?;
        assert!(
            log.lines().any(|l| l.contains("ERROR")
                && l.contains(&format!("stage={stage}"))
                && l.contains("panicked: test hook")),
            "no ERROR line naming {stage}:\n{}",
            gw.proc.log_tail()
        );
        assert!(
            log.contains(&format!("nh-gateway: stage {stage} panicked")),
            "{}",
            gw.proc.log_tail()
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_start_after_a_kill_warns_once_and_counts_it() -> Result<()> {
    let dir = TempDir::new("unclean-start")?;
    let config = site(dir.path(), "")?;
    let mut gw = Gateway::start(&config, &[], dir.path()).await?;
    assert_eq!(gw.metric("nh_unclean_starts_total").await?, 0.0);
    gw.proc.child.kill()?;
    gw.proc.child.wait()?;
    let mut gw = Gateway::start(&config, &[], dir.path()).await?;
    assert_eq!(gw.metric("nh_unclean_starts_total").await?, 1.0);
    let log = std::fs::read_to_string(&gw.proc.log)?;
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("did not stop cleanly"))
        .collect();
    assert_eq!(warns.len(), 1, "{}", gw.proc.log_tail());
    // A clean stop, and the next start is quiet.
    nh_e2e::terminate(&mut gw.proc.child)?;
    let gw = Gateway::start(&config, &[], dir.path()).await?;
    assert_eq!(gw.metric("nh_unclean_starts_total").await?, 0.0);
    Ok(())
}

/// The binary the tests run is built the way a site's is (`cargo build`, no `demo` feature):
/// the simulator is not in it, and `demo` says how to get a binary that has it.
#[test]
fn a_production_binary_refuses_the_demo_and_names_the_feature() -> Result<()> {
    let out = Command::new(nh_e2e::bin("nh-gateway"))
        .args(["demo", "--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the demo ran: {stderr}");
    assert!(
        stderr.contains("--features demo") && stderr.contains("not built into this binary"),
        "{stderr}"
    );
    Ok(())
}
