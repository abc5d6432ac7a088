//! The demo facility: `nh-gateway demo` runs the gateway on the embedded defaults with a
//! simulated fleet (3 floors x 20 rooms) publishing to its embedded broker.

use std::path::PathBuf;

use crate::app::RunOptions;

pub async fn run(_data: Option<PathBuf>, _speed: f64, _opts: RunOptions) -> anyhow::Result<()> {
    anyhow::bail!("demo not wired yet")
}
