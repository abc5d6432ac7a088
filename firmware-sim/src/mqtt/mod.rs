//! The MQTT runners: the link every publisher shares, and the runs built on it or on a plain
//! rumqttc client: a fleet (`nh-sim run`, with its record file), open-loop load, the sink, the
//! alert-latency probe, and captures of real traffic (`record`, `replay`); and the provisioning
//! file their `--provisioning-file` logins come from.

pub mod capture;
pub mod fleet;
pub mod link;
pub mod load;
pub mod probe;
pub mod provisioning;
pub mod record;
pub mod sink;
