//! `nh_sim`: the device simulator of the nursing-home gateway. Like real firmware it speaks the
//! wire formats on its own (docs/contracts.md) and never imports the gateway.
//!
//! Module map. The crate has two rooms and a few shared pieces:
//!
//! [`model`], the simulated devices (no I/O):
//!
//! - [`registry`]: the device registry TOML (the file the gateway reads): parse, validate, report
//!   every error with line, device and key.
//! - [`behaviour`]: what each device class reports and how values move (random walks in normal
//!   bands, battery drain, day/night habits, optional rare incidents).
//! - [`schedule`]: the deterministic, time-ordered message stream of a fleet (interval, phase,
//!   jitter per device; one seeded stream per device).
//! - [`metrics`]: metric values and their JSON form (at most 2 decimals, integers as integers).
//! - [`facility`]: `gen-registry`, the registry of a demo facility;
//!   [`facility::demo_registry_toml`] is `config/demo/devices.toml`, generated in process.
//!
//! [`mqtt`], the runners that talk to a broker:
//!
//! - [`link`]: the MQTT link (rumqttc): event loop task, backoff, PubAck counting, re-publishing
//!   after a lost session; the options of the plain subscribers too.
//! - [`fleet`]: [`Fleet`] and [`run_fleet`]: publish a registry's fleet, paced on the (test) clock
//!   or as fast as the broker takes it; the entry point of `nh-sim run` and `nh-gateway demo`.
//! - [`record`]: the record file (one JSON line per published message, canonical content) that
//!   end-to-end tests compare the database against.
//! - [`load`]: open-loop load at a fixed offered rate ([`run_load`], `nh-sim load`).
//! - [`sink`]: a plain subscriber that counts, acknowledges and times what a broker passes
//!   through (`nh-sim sink`): the raw broker's limit the gateway is measured against.
//! - [`probe`]: the alert-latency probe (`nh-sim alert-probe`): life-safety readings in, their
//!   alerts out of `nh/{site}/alerts`, timed.
//! - [`capture`]: captures of real MQTT traffic: the file format, `nh-sim record` and
//!   `nh-sim replay`.
//! - [`provisioning`]: the provisioning file (the gateway's MQTT secrets, `[[identities]]` with
//!   `name` and `secret`) behind `--provisioning-file`, read without the gateway crate.
//!
//! Each of these modules is also reachable at the crate root (`nh_sim::registry`,
//! `nh_sim::load`, ...), the paths other crates use.
//!
//! Beside the rooms:
//!
//! - [`wire`]: the formats on the wire: [`wire::canonical`] and [`wire::zigbee2mqtt`].
//! - [`anonymize`]: `nh-sim anonymize`: a capture with consistent pseudonyms and shifted times.
//! - [`scenario`]: scenario files (`config/scenarios/`: scripted device behaviour over the
//!   baseline fleet, and the alerts that must follow), the runner behind `nh-sim scenario`, and
//!   the matching of received alerts against expectations.
//! - [`serial`]: serial devices on ptys (`nh-sim serial`): Modbus RTU gas detectors and MR60FDA1
//!   radars on the master side, a stable link per bus for the gateway, scripted faults, outages
//!   and garbage.
//! - [`latency`]: latency percentiles for the reports.
//! - [`clock`]: the system clock or the shared test clock (`--test-clock-*`, `--time-scale`).
//! - [`rng`]: SplitMix64 and stable per-device seeds.
//! - `test_broker` (tests only): minimal MQTT brokers with scripted faults.
//!
//! The `nh-sim` binary (`src/main.rs`) keeps its command line apart in `src/cli/`: the
//! arguments of every subcommand and one function per subcommand.
//!
//! In-process use (the gateway's `demo`):
//!
//! ```no_run
//! # async fn demo(mqtt_port: u16, speed: f64) -> anyhow::Result<()> {
//! let fleet = nh_sim::Fleet::from_toml(&nh_sim::facility::demo_registry_toml())?;
//! // Paced on the clock, forever, QoS 1; share the gateway's (test) clock.
//! let opts = nh_sim::RunOptions {
//!     clock: nh_sim::Clock { scale: speed, ..nh_sim::Clock::system() },
//!     incidents: true,
//!     ..nh_sim::RunOptions::new(format!("127.0.0.1:{mqtt_port}"))
//! };
//! let shutdown = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! let summary = nh_sim::run_fleet(fleet, opts, shutdown).await?;
//! println!("{}", serde_json::to_string(&summary)?);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod anonymize;
pub mod clock;
pub mod latency;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod rng;
pub mod scenario;
pub mod serial;
pub mod wire;

#[cfg(test)]
mod test_broker;

pub use model::{behaviour, facility, registry, schedule};
pub use mqtt::{capture, fleet, link, load, probe, provisioning, record, sink};

pub use clock::Clock;
pub use fleet::{run_fleet, Fleet, RunOptions, Summary};
pub use load::{run_load, LoadOptions, LoadSummary};
pub use registry::{Device, DeviceClass, Registry, RegistryErrors};
pub use wire::Format;
