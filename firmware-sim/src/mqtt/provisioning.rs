//! Provisioning files: the MQTT secrets a gateway hands out, read by `--provisioning-file`.
//!
//! This is the same contract as the "provisioning file" of docs/security.md (written by
//! `nh-gateway device-credentials --provisioning-file` and by `nh-gateway demo`), read here on
//! its own because the simulator never depends on the gateway crate: one `[[identities]]` table
//! per identity, its `name` the MQTT username (and client id), its `secret` the MQTT password.
//!
//! ```toml
//! [[identities]]
//! name = "nh-sim"
//! secret = "40 hex digits"
//! ```
//!
//! Keys beyond these two are ignored, so a later gateway may add some. Secrets never appear in
//! `Debug` output or in error messages (a parse error on a `secret` line names the line only).

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;

use crate::mqtt::link::Credentials;

#[derive(Deserialize)]
struct FileToml {
    #[serde(default)]
    identities: Vec<EntryToml>,
}

#[derive(Deserialize)]
struct EntryToml {
    name: String,
    secret: String,
}

/// One identity's login.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    secret: String,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A parsed provisioning file. `Debug` shows the names, never a secret.
#[derive(Debug, Clone)]
pub struct Provisioning {
    /// Where it came from, for messages.
    origin: String,
    identities: Vec<Entry>,
}

impl Provisioning {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Provisioning> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the provisioning file {}", path.display()))?;
        Provisioning::parse_from(&text, &path.display().to_string())
    }

    /// Parses a provisioning file's text.
    pub fn parse(text: &str) -> anyhow::Result<Provisioning> {
        Provisioning::parse_from(text, "the provisioning file")
    }

    fn parse_from(text: &str, origin: &str) -> anyhow::Result<Provisioning> {
        let file: FileToml = toml::from_str(text).map_err(|e| anyhow!("{origin}: {}", describe(text, &e)))?;
        let mut identities: Vec<Entry> = Vec::with_capacity(file.identities.len());
        for (i, e) in file.identities.into_iter().enumerate() {
            if e.name.is_empty() {
                bail!("{origin}: identity {} has an empty `name`", i + 1);
            }
            if e.secret.is_empty() {
                bail!("{origin}: identity `{}` has an empty `secret`", e.name);
            }
            if identities.iter().any(|x| x.name == e.name) {
                bail!("{origin}: identity `{}` is listed twice", e.name);
            }
            identities.push(Entry {
                name: e.name,
                secret: e.secret,
            });
        }
        if identities.is_empty() {
            bail!("{origin} lists no identity (no [[identities]] with `name` and `secret`)");
        }
        Ok(Provisioning {
            origin: origin.to_owned(),
            identities,
        })
    }

    /// The identities' names, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.identities.iter().map(|e| e.name.as_str())
    }

    /// The login of `username`, or of the file's only identity when `username` is `None`.
    /// Errors name the identities the file has.
    pub fn credentials(&self, username: Option<&str>) -> anyhow::Result<Credentials> {
        let choices = || self.names().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
        let entry = match username {
            Some(u) => self
                .identities
                .iter()
                .find(|e| e.name == u)
                .ok_or_else(|| anyhow!("{} has no identity `{u}`; it has {}", self.origin, choices()))?,
            None => match self.identities.as_slice() {
                [only] => only,
                _ => bail!(
                    "{} has {} identities ({}): choose one with --username",
                    self.origin,
                    self.identities.len(),
                    choices()
                ),
            },
        };
        Ok(Credentials {
            username: entry.name.clone(),
            password: entry.secret.clone(),
        })
    }
}

/// A TOML error as `line N: message`, without the source snippet (it may be a secret's line);
/// an error on a `secret` line does not repeat the value either.
fn describe(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.message().to_owned();
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or_default();
    if line.trim_start().starts_with("secret") {
        format!("line {line_no}: `secret` must be a quoted string (the MQTT password)")
    } else {
        format!("line {line_no}: {}", e.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_A: &str = "00112233445566778899aabbccddeeff00112233";
    const SECRET_B: &str = "ffeeddccbbaa99887766554433221100ffeeddcc";

    fn two() -> String {
        format!(
            "# written by nh-gateway device-credentials\n\n\
             [[identities]]\nname = \"nh-sim\"\nsecret = \"{SECRET_A}\"\n\n\
             [[identities]]\nname = \"bed-101\"\nsecret = \"{SECRET_B}\"\n"
        )
    }

    #[test]
    fn the_only_identity_is_the_default() {
        let text = format!("[[identities]]\nname = \"nh-sim\"\nsecret = \"{SECRET_A}\"\n");
        let p = Provisioning::parse(&text).expect("parses");
        let c = p.credentials(None).expect("the only one");
        assert_eq!(c.username, "nh-sim");
        assert_eq!(c.password, SECRET_A);
        assert_eq!(p.credentials(Some("nh-sim")).expect("named").password, SECRET_A);
    }

    #[test]
    fn username_picks_one_of_several() {
        let p = Provisioning::parse(&two()).expect("parses");
        assert_eq!(p.names().collect::<Vec<_>>(), ["nh-sim", "bed-101"]);
        let c = p.credentials(Some("bed-101")).expect("named");
        assert_eq!((c.username.as_str(), c.password.as_str()), ("bed-101", SECRET_B));
        let c = p.credentials(Some("nh-sim")).expect("named");
        assert_eq!((c.username.as_str(), c.password.as_str()), ("nh-sim", SECRET_A));
    }

    #[test]
    fn several_without_username_is_an_error_naming_the_choices() {
        let p = Provisioning::parse(&two()).expect("parses");
        let e = p.credentials(None).expect_err("ambiguous").to_string();
        assert!(
            e.contains("`nh-sim`") && e.contains("`bed-101`") && e.contains("--username"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_name_is_an_error_naming_the_choices() {
        let p = Provisioning::parse(&two()).expect("parses");
        let e = p.credentials(Some("door-7")).expect_err("not there").to_string();
        assert!(e.contains("`door-7`"), "{e}");
        assert!(e.contains("`nh-sim`") && e.contains("`bed-101`"), "{e}");
        assert!(!e.contains(SECRET_A) && !e.contains(SECRET_B), "{e}");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let p = Provisioning::parse(&two()).expect("parses");
        let debug = format!("{p:?}");
        assert!(debug.contains("nh-sim") && debug.contains("bed-101"), "{debug}");
        assert!(!debug.contains(SECRET_A) && !debug.contains(SECRET_B), "{debug}");
        let c = p.credentials(Some("nh-sim")).expect("named");
        assert!(!format!("{c:?}").contains(SECRET_A));
    }

    #[test]
    fn bad_files_are_errors_without_the_secret() {
        let e = Provisioning::parse("").expect_err("empty").to_string();
        assert!(e.contains("no identity"), "{e}");
        let e = Provisioning::parse("[[identities]]\nname = \"nh-sim\"\n")
            .expect_err("no secret")
            .to_string();
        assert!(e.contains("secret"), "{e}");
        let e = Provisioning::parse("[[identities]]\nname = \"nh-sim\"\nsecret = 123456789\n")
            .expect_err("not a string")
            .to_string();
        assert!(e.contains("line 3") && !e.contains("123456789"), "{e}");
        let twice = format!(
            "[[identities]]\nname = \"a\"\nsecret = \"{SECRET_A}\"\n\
             [[identities]]\nname = \"a\"\nsecret = \"{SECRET_B}\"\n"
        );
        let e = Provisioning::parse(&twice).expect_err("twice").to_string();
        assert!(
            e.contains("twice") && !e.contains(SECRET_A) && !e.contains(SECRET_B),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_are_ignored_and_a_file_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("provisioning.toml");
        std::fs::write(
            &path,
            format!("[[identities]]\nname = \"nh-sim\"\nsecret = \"{SECRET_A}\"\nnote = \"bench\"\n"),
        )
        .expect("write");
        let p = Provisioning::load(&path).expect("loads");
        assert_eq!(p.credentials(None).expect("only").username, "nh-sim");
        let e = Provisioning::load(&dir.path().join("missing.toml"))
            .expect_err("missing")
            .to_string();
        assert!(e.contains("missing.toml"), "{e}");
    }
}
