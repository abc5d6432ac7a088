//! MQTT secrets: generated at random (160 bits), stored only as a salted SHA-256 (cheap enough
//! that 2,000 devices reconnecting at once cost milliseconds, strong because the secret is
//! random rather than a chosen password), compared in constant time. The same secret is hashed
//! for Mosquitto's password file (`$6$`: salted SHA-512) when it is generated, so the external
//! broker mode grants the same logins without ever storing the secret.

use std::collections::HashMap;

use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use super::files::{CredentialEntry, CredentialsFile};
use crate::secret::{from_hex, to_hex};

/// Bytes of randomness in a secret (160 bits).
pub const SECRET_BYTES: usize = 20;

/// The stored hash of one identity's secret.
#[derive(Clone)]
struct Stored {
    salt: Vec<u8>,
    sha256: [u8; 32],
}

/// Whether a presented secret is the identity's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Match,
    Mismatch,
    /// The identity has no credentials yet.
    NoCredentials,
}

/// The stored credentials, by identity. `Debug` shows names only.
#[derive(Clone, Default)]
pub struct CredentialStore {
    by_name: HashMap<String, Stored>,
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialStore")
            .field("identities", &self.by_name.len())
            .finish()
    }
}

impl CredentialStore {
    /// From the credentials file; entries that do not parse are errors naming the identity.
    pub fn from_file(file: &CredentialsFile) -> Result<CredentialStore, String> {
        let mut by_name = HashMap::new();
        for e in &file.credentials {
            let salt = from_hex(&e.salt).ok_or_else(|| format!("credentials of `{}`: salt is not hex", e.identity))?;
            let sha256: [u8; 32] = from_hex(&e.sha256)
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| format!("credentials of `{}`: sha256 is not 64 hex digits", e.identity))?;
            by_name.insert(e.identity.clone(), Stored { salt, sha256 });
        }
        Ok(CredentialStore { by_name })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Checks `secret` against `name`'s stored hash, in constant time.
    pub fn verify(&self, name: &str, secret: &str) -> Verdict {
        let Some(stored) = self.by_name.get(name) else {
            return Verdict::NoCredentials;
        };
        let presented = salted_sha256(&stored.salt, secret);
        if bool::from(presented.ct_eq(&stored.sha256)) {
            Verdict::Match
        } else {
            Verdict::Mismatch
        }
    }
}

fn salted_sha256(salt: &[u8], secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(secret.as_bytes());
    h.finalize().into()
}

/// A new random secret (hex).
pub fn generate_secret() -> Result<String, String> {
    let mut buf = [0u8; SECRET_BYTES];
    getrandom::getrandom(&mut buf).map_err(|e| format!("no randomness: {e}"))?;
    Ok(to_hex(&buf))
}

/// The stored form of `identity`'s new `secret`: fresh salts, both hashes.
pub fn entry_for(identity: &str, secret: &str) -> Result<CredentialEntry, String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| format!("no randomness: {e}"))?;
    let mut msalt = [0u8; 12];
    getrandom::getrandom(&mut msalt).map_err(|e| format!("no randomness: {e}"))?;
    Ok(CredentialEntry {
        identity: identity.to_owned(),
        salt: to_hex(&salt),
        sha256: to_hex(&salted_sha256(&salt, secret)),
        mosquitto: mosquitto_hash(secret, &msalt),
    })
}

/// Mosquitto's `$6$` password hash: base64 of the salt, base64 of SHA-512(password, salt).
pub fn mosquitto_hash(secret: &str, salt: &[u8]) -> String {
    let mut h = Sha512::new();
    h.update(secret.as_bytes());
    h.update(salt);
    let digest = h.finalize();
    format!("$6${}${}", base64(salt), base64(&digest))
}

/// Standard base64 with padding (what Mosquitto's password file uses).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_secret_verifies_and_nothing_else_does() {
        let secret = generate_secret().expect("randomness");
        assert_eq!(secret.len(), SECRET_BYTES * 2);
        let file = CredentialsFile {
            credentials: vec![entry_for("bed-1", &secret).expect("entry")],
        };
        let store = CredentialStore::from_file(&file).expect("store");
        assert_eq!(store.verify("bed-1", &secret), Verdict::Match);
        assert_eq!(store.verify("bed-1", "guess"), Verdict::Mismatch);
        assert_eq!(store.verify("bed-2", &secret), Verdict::NoCredentials);
        assert!(!format!("{store:?}").contains(&secret));
    }

    #[test]
    fn base64_pads_like_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }
}
