//! Logins that cannot lock the night nurse out: twenty wrong passwords for `nurse` from
//! 127.0.0.1 lock that name out there, and only there; the right password from 127.0.0.2 logs in
//! at once; the audit log shows the lockout, and rule S8's P3 entry is raised once for the name.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use nh_e2e::{wait_for, write_config, Gateway, TempDir};
use serde_json::{json, Value as Json};

const NURSE: (&str, &str) = ("nurse", "night-shift-7");

/// A client whose connections come from `from` (any 127.0.0.0/8 address is this machine).
fn client_from(from: IpAddr) -> Result<reqwest011::Client> {
    Ok(reqwest011::Client::builder()
        .local_address(from)
        .timeout(Duration::from_secs(30))
        .build()?)
}

async fn login(client: &reqwest011::Client, gw: &Gateway, password: &str) -> Result<u16> {
    let r = client
        .post(gw.url("/api/v1/login"))
        .json(&json!({ "user": NURSE.0, "password": password }))
        .send()
        .await?;
    Ok(r.status().as_u16())
}

#[tokio::test]
async fn twenty_wrong_passwords_from_one_address_do_not_lock_the_nurse_out_elsewhere() -> Result<()> {
    let dir = TempDir::new("lockout")?;
    std::fs::write(
        dir.path().join("devices.toml"),
        "site = \"nh-login\"\n[[devices]]\nid = \"bed-1\"\nclass = \"bed_sensor\"\ninterval_s = 60\n",
    )?;
    let hash = nh_gateway::auth::hash_password(NURSE.1).map_err(anyhow::Error::msg)?;
    let config = write_config(
        dir.path(),
        &format!(
            "[site]\nid = \"nh-login\"\n[registry]\nfile = \"devices.toml\"\n[journal]\npath = \"journal.db\"\n\
             [[auth.operators]]\nuser = \"{}\"\nrole = \"operator\"\npassword_hash = \"{hash}\"\n",
            NURSE.0
        ),
    )?;
    let gw = Gateway::start(&config, &[], dir.path()).await?;
    let attacker = client_from([127, 0, 0, 1].into())?;
    let nurse = client_from([127, 0, 0, 2].into())?;

    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(login(&attacker, &gw, "guess").await?);
    }
    assert_eq!(&statuses[..5], [401; 5], "five wrong passwords are tried: {statuses:?}");
    assert!(
        statuses[5..].iter().all(|s| *s == 429),
        "then locked out there: {statuses:?}"
    );
    // Even the right password is refused at the attacker's address ...
    assert_eq!(login(&attacker, &gw, NURSE.1).await?, 429);
    // ... and accepted at once from the nurse's.
    let t = std::time::Instant::now();
    assert_eq!(
        login(&nurse, &gw, NURSE.1).await?,
        200,
        "the nurse logs in from her own address"
    );
    eprintln!(
        "login from a clean address during the lockout: {} ms",
        t.elapsed().as_millis()
    );

    // The audit shows the lockout with its address; one rate-limited entry per lockout.
    let audit = gw.get_json("/api/v1/audit?limit=1000").await?;
    let entries = audit.as_array().cloned().unwrap_or_default();
    let of = |action: &str| -> Vec<Json> {
        entries
            .iter()
            .filter(|e| e["actor"] == NURSE.0 && e["action"] == action)
            .cloned()
            .collect()
    };
    let lockouts = of("login_lockout");
    assert_eq!(lockouts.len(), 1, "{audit:#}");
    assert_eq!(lockouts[0]["detail"]["address"], "127.0.0.1", "{audit:#}");
    assert_eq!(lockouts[0]["detail"]["scope"], "user_address", "{audit:#}");
    assert_eq!(of("login_failed").len(), 5, "{audit:#}");
    assert_eq!(of("login_rate_limited").len(), 1, "{audit:#}");
    assert_eq!(of("login").len(), 1, "{audit:#}");

    // S8's P3 entry, once, for the nurse's name.
    let s8 = wait_for(
        "S8 for the nurse's lockout",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let alerts = gw.get_json("/api/v1/alerts?state=all&limit=1000").await.ok()?;
            let found: Vec<Json> = alerts
                .as_array()?
                .iter()
                .filter(|a| a["rule"] == "S8" && a["device"] == "gateway:login:nurse")
                .cloned()
                .collect();
            (!found.is_empty()).then_some(found)
        },
    )
    .await
    .with_context(|| gw.proc.log_tail())?;
    assert_eq!(s8.len(), 1, "{s8:#?}");
    assert_eq!(s8[0]["priority"], "P3", "{s8:#?}");
    let metrics = reqwest011::get(gw.url("/metrics")).await?.text().await?;
    assert!(metrics.contains("nh_auth_lockouts_total 1"), "{metrics}");
    Ok(())
}
