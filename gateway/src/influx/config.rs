//! InfluxDB v2 forwarding's configuration (`[influx]`), with its defaults.

use serde::Deserialize;

use crate::diagnostics::Diagnostics;

use crate::secret::SecretSource;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// Base URL of the InfluxDB v2 API (`NH_INFLUX_URL` overrides it).
    pub url: String,
    /// Organization (`NH_INFLUX_ORG`).
    pub org: String,
    /// Bucket (`NH_INFLUX_BUCKET`).
    pub bucket: String,
    /// API token, from the environment or a file: `{ env = "NH_INFLUX_TOKEN" }` or
    /// `{ file = "/etc/nh/influx.token" }` (`NH_INFLUX_TOKEN` overrides it).
    #[serde(default)]
    pub token: Option<SecretSource>,
    /// Most lines in one write.
    #[serde(default = "default_batch_lines")]
    pub batch_max_lines: usize,
    /// How long a partial batch waits for more readings before it is written.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Timeout of one write request.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Longest wait between retries of a failing write.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

/// 5000 lines: VictoriaMetrics and InfluxDB both take this in one request comfortably.
fn default_batch_lines() -> usize {
    5000
}
fn default_linger_ms() -> u64 {
    500
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_backoff_max_ms() -> u64 {
    30_000
}

impl InfluxConfig {
    pub(crate) fn from_env_only(url: String) -> Self {
        InfluxConfig {
            url,
            org: "nh".into(),
            bucket: "nh".into(),
            token: None,
            batch_max_lines: default_batch_lines(),
            linger_ms: default_linger_ms(),
            timeout_ms: default_timeout_ms(),
            backoff_max_ms: default_backoff_max_ms(),
        }
    }
}

impl InfluxConfig {
    /// Reports the section's problems under `influx.*`.
    pub(crate) fn check(&self, d: &mut Diagnostics<'_>) {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            d.at_key("influx.url", "must start with http:// or https://");
        }
        if self.org.is_empty() {
            d.at_key("influx.org", "must not be empty");
        }
        if self.bucket.is_empty() {
            d.at_key("influx.bucket", "must not be empty");
        }
        if self.batch_max_lines == 0 {
            d.at_key("influx.batch_max_lines", "must be at least 1");
        }
        if self.timeout_ms == 0 {
            d.at_key("influx.timeout_ms", "must be positive");
        }
    }
}
