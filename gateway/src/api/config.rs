//! The HTTP API's configuration (`[http]`) and the residents' display names it shows to
//! logged-in staff (`[residents]`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address of the HTTP API (`--http` overrides it; port 0 picks a free port).
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_http_listen(),
        }
    }
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidentsConfig {
    /// File of `[[residents]]` entries (`id`, `name`), relative to this configuration file.
    pub file: PathBuf,
}

/// The residents file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidentsFile {
    #[serde(default)]
    pub residents: Vec<Resident>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resident {
    /// The pseudonymous id the registry's devices carry (`resident = "r-4c64"`).
    pub id: String,
    /// Display name.
    pub name: String,
}
