//! Sources own their link and push work into the journal's bounded queue.
//!
//! - [`mqtt`]: the MQTT subscriber (embedded or external broker), with manual acknowledgements.
//! - [`broker`]: the embedded rumqttd broker, on 127.0.0.1 only.
//! - [`gatekeeper`]: the embedded broker's front door: every CONNECT, PUBLISH, SUBSCRIBE and will
//!   checked against the site's MQTT identities (`access`).
//! - [`serial`]: serial ports: Modbus RTU buses and radar UARTs, reopened when they fail.

pub mod broker;
pub mod config;
pub mod gatekeeper;
pub mod mqtt;
pub mod serial;
