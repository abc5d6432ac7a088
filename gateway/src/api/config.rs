//! The HTTP API's configuration (`[http]`) and the residents' display names it shows to
//! logged-in staff (`[residents]`), and the shift changes of its shift summary (`[shifts]`).

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShiftsConfig {
    /// Local times (`HH:MM`, in the rule catalog's UTC offset) at which a shift begins.
    #[serde(default = "default_shift_starts")]
    pub starts: Vec<String>,
}

impl Default for ShiftsConfig {
    fn default() -> Self {
        ShiftsConfig {
            starts: default_shift_starts(),
        }
    }
}

/// The shift changes of a three-shift day, local time.
pub const DEFAULT_SHIFT_STARTS: [&str; 3] = ["07:00", "15:00", "23:00"];

fn default_shift_starts() -> Vec<String> {
    DEFAULT_SHIFT_STARTS.iter().map(|s| (*s).to_owned()).collect()
}

impl ShiftsConfig {
    /// The starts as minutes of the local day, sorted; `None` if one is not `HH:MM`.
    pub fn start_minutes(&self) -> Option<Vec<i64>> {
        let mut out = Vec::with_capacity(self.starts.len());
        for s in &self.starts {
            let (h, m) = s.trim().split_once(':')?;
            let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
            if !(0..24).contains(&h) || !(0..60).contains(&m) {
                return None;
            }
            out.push(h * 60 + m);
        }
        out.sort_unstable();
        out.dedup();
        (!out.is_empty()).then_some(out)
    }

    /// The starts as minutes of the local day; the defaults' if these are not valid (which
    /// validation refuses before the gateway starts).
    pub fn minutes_or_default(&self) -> Vec<i64> {
        self.start_minutes()
            .or_else(|| ShiftsConfig::default().start_minutes())
            .unwrap_or_default()
    }
}
