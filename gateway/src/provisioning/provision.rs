//! Giving identities their secrets, and the site's [`Policy`] as the commands build it.
//!
//! [`provision`] makes a new random secret per identity, stores its hashes in the credentials
//! file (replacing the identity's older entry) and, when asked, the secret itself in a
//! provisioning file; `nh-gateway device-credentials` and the demo use it. [`policy_for`] and
//! [`load_policy`] build the [`Policy`] of a loaded site configuration: its registry, its
//! identities file and its credentials file, each error naming its file.

use std::path::Path;

use anyhow::{anyhow, Context as _};

use crate::access::credentials::{entry_for, generate_secret};
use crate::access::files::{CredentialsFile, ProvisioningFile};
use crate::access::Policy;
use crate::config::{Env, Loaded};

/// Makes a new secret for each of `names` (an identity named twice gets one), stores its hashes
/// in the credentials file at `credentials_path` (a missing file is an empty one; an older
/// entry of the same identity is replaced, so its old secret stops working), and with
/// `provisioning` also the secrets in that provisioning file (merged with what it holds).
/// Both files are written with mode 0600. Returns each name with its new secret, in order.
///
/// The provisioning file is written before the credentials file: should the second write fail,
/// the old secrets still work and nothing is lost but this run.
pub fn provision(
    credentials_path: &Path,
    names: &[String],
    provisioning: Option<&Path>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut credentials = CredentialsFile::load(credentials_path)?;
    let mut provisioning_file = match provisioning {
        Some(p) => Some((p, ProvisioningFile::load(p)?)),
        None => None,
    };
    let mut pairs: Vec<(String, String)> = Vec::with_capacity(names.len());
    for name in names {
        if pairs.iter().any(|(n, _)| n == name) {
            continue;
        }
        anyhow::ensure!(
            crate::registry::is_valid_id(name),
            "`{name}` is not a valid identity name: use [A-Za-z0-9._:-]+"
        );
        let secret = generate_secret().map_err(|e| anyhow!(e))?;
        let entry = entry_for(name, &secret).map_err(|e| anyhow!(e))?;
        credentials.credentials.retain(|c| c.identity != *name);
        credentials.credentials.push(entry);
        if let Some((_, file)) = provisioning_file.as_mut() {
            file.set(name, &secret);
        }
        pairs.push((name.clone(), secret));
    }
    if let Some((path, file)) = &provisioning_file {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        file.save(path)
            .with_context(|| format!("writing the provisioning file {}", path.display()))?;
    }
    credentials
        .save(credentials_path)
        .with_context(|| format!("writing the credentials file {}", credentials_path.display()))?;
    Ok(pairs)
}

/// The [`Policy`] of a loaded site (built while loading: the registry's devices, the identities
/// file, the stored credentials).
pub fn load_policy(loaded: &Loaded) -> std::sync::Arc<Policy> {
    loaded.access.clone()
}

/// Loads a site configuration for the commands that work on its files (`device-credentials`,
/// `mosquitto-config`): checked like `validate` does, so a secret in an unset environment
/// variable is no error (the commands that need one resolve it themselves).
pub fn load_site(path: &Path) -> anyhow::Result<Loaded> {
    let text = crate::config::read_file(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(crate::config::load_text(
        path,
        &text,
        base,
        &Env::from_process(),
        None,
        crate::config::SecretCheck::ShapeOnly,
    )?)
}

/// The folder a configuration file's relative paths start from.
pub fn config_dir(config_path: &Path) -> &Path {
    config_path.parent().unwrap_or(Path::new("."))
}

/// The identities `device-credentials` works on: `names` (each must be an identity of `policy`:
/// a device id of the registry, a bridge or a consumer; duplicates dropped), or with `all`
/// every identity, sorted; with `missing` only those without credentials yet.
pub fn select(policy: &Policy, names: &[String], all: bool, missing: bool) -> anyhow::Result<Vec<String>> {
    let mut selected: Vec<String> = if all {
        let mut v: Vec<String> = policy.identities().map(|i| i.name.clone()).collect();
        v.sort();
        v
    } else {
        let unknown: Vec<String> = names
            .iter()
            .filter(|n| policy.identity(n).is_none())
            .map(|n| format!("`{n}`"))
            .collect();
        anyhow::ensure!(
            unknown.is_empty(),
            "no MQTT identity named {}: identities are the device ids of the registry and the bridges \
             and consumers of the identities file ([mqtt.access] identities)",
            unknown.join(", ")
        );
        let mut v: Vec<String> = Vec::with_capacity(names.len());
        for n in names {
            if !v.contains(n) {
                v.push(n.clone());
            }
        }
        v
    };
    if missing {
        selected.retain(|n| !policy.credentials().has(n));
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::credentials::CredentialStore;
    use crate::access::files::IdentitiesFile;
    use crate::access::{Verdict, DEFAULT_ZIGBEE_BASE};
    use crate::registry::Registry;

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    fn store(path: &Path) -> CredentialStore {
        CredentialStore::from_file(&CredentialsFile::load(path).expect("credentials file")).expect("store")
    }

    #[test]
    fn provisioned_secrets_verify_and_both_files_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = dir.path().join("mqtt-credentials.toml");
        let prov = dir.path().join("sub").join("provisioning.toml");
        let names = vec!["bed-1".to_owned(), "nh-sim".to_owned(), "bed-1".to_owned()];
        let pairs = provision(&creds, &names, Some(&prov)).expect("provision");
        assert_eq!(
            pairs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["bed-1", "nh-sim"]
        );
        assert_eq!(mode(&creds), 0o600);
        assert_eq!(mode(&prov), 0o600);
        let s = store(&creds);
        for (name, secret) in &pairs {
            assert_eq!(s.verify(name, secret), Verdict::Match);
        }
        assert_eq!(s.verify("bed-1", &pairs[1].1), Verdict::Mismatch);
        // The credentials file holds hashes only.
        let text = std::fs::read_to_string(&creds).expect("read");
        assert!(pairs.iter().all(|(_, secret)| !text.contains(secret.as_str())));
        let p = ProvisioningFile::load(&prov).expect("provisioning file");
        assert_eq!(p.identities.len(), 2);
        for (name, secret) in &pairs {
            assert!(p.identities.iter().any(|i| i.name == *name && i.secret == *secret));
        }
    }

    #[test]
    fn provisioning_again_replaces_the_old_secret_and_keeps_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = dir.path().join("mqtt-credentials.toml");
        let prov = dir.path().join("provisioning.toml");
        let first = provision(&creds, &["a".to_owned(), "b".to_owned()], Some(&prov)).expect("first");
        let again = provision(&creds, &["a".to_owned()], Some(&prov)).expect("again");
        assert_ne!(first[0].1, again[0].1);
        let s = store(&creds);
        assert_eq!(s.len(), 2);
        assert_eq!(s.verify("a", &again[0].1), Verdict::Match);
        assert_eq!(s.verify("a", &first[0].1), Verdict::Mismatch);
        assert_eq!(s.verify("b", &first[1].1), Verdict::Match);
        let file = CredentialsFile::load(&creds).expect("credentials file");
        assert_eq!(file.credentials.iter().filter(|c| c.identity == "a").count(), 1);
        let p = ProvisioningFile::load(&prov).expect("provisioning file");
        assert_eq!(p.identities.len(), 2);
        assert!(p.identities.iter().any(|i| i.name == "a" && i.secret == again[0].1));
        assert!(p.identities.iter().any(|i| i.name == "b" && i.secret == first[1].1));
        assert_eq!(mode(&creds), 0o600);
        assert_eq!(mode(&prov), 0o600);
    }

    #[test]
    fn without_a_provisioning_file_only_the_credentials_file_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = dir.path().join("c.toml");
        let pairs = provision(&creds, &["x".to_owned()], None).expect("provision");
        assert_eq!(pairs.len(), 1);
        assert_eq!(store(&creds).verify("x", &pairs[0].1), Verdict::Match);
        let entries: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").flatten().collect();
        assert_eq!(entries.len(), 1, "no temporary file left behind");
        assert!(provision(&creds, &["no/slash".to_owned()], None).is_err());
    }

    #[test]
    fn names_are_checked_against_the_policy() {
        let registry = Registry::parse(
            Path::new("devices.toml"),
            "site = \"s\"\n[[devices]]\nid = \"bed-1\"\nclass = \"smoke_alarm\"\ninterval_s = 60\n\
             [[devices]]\nid = \"bed-2\"\nclass = \"smoke_alarm\"\ninterval_s = 60\n",
        )
        .expect("registry");
        let secret = generate_secret().expect("secret");
        let file = CredentialsFile {
            credentials: vec![entry_for("bed-1", &secret).expect("entry")],
        };
        let policy = Policy::build(
            &registry,
            &IdentitiesFile::default(),
            CredentialStore::from_file(&file).expect("store"),
            crate::access::Anonymous::Refuse,
            &[DEFAULT_ZIGBEE_BASE.to_owned()],
        )
        .expect("policy");
        assert_eq!(select(&policy, &[], true, false).expect("all"), ["bed-1", "bed-2"]);
        assert_eq!(select(&policy, &[], true, true).expect("missing"), ["bed-2"]);
        let named = ["bed-2".to_owned(), "bed-1".to_owned(), "bed-2".to_owned()];
        assert_eq!(
            select(&policy, &named, false, false).expect("named"),
            ["bed-2", "bed-1"]
        );
        let e = select(&policy, &["bed-9".to_owned(), "bed-1".to_owned()], false, false)
            .expect_err("unknown")
            .to_string();
        assert!(e.contains("`bed-9`") && !e.contains("`bed-1`"), "{e}");
    }
}
