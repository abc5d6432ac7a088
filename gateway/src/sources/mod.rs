//! Sources own their link and push work into the journal's bounded queue.
//!
//! - [`mqtt`]: the MQTT subscriber (embedded or external broker), with manual acknowledgements.
//! - [`broker`]: the embedded rumqttd broker.
//! - [`serial`]: serial ports: Modbus RTU buses and radar UARTs, reopened when they fail.

pub mod broker;
pub mod config;
pub mod mqtt;
pub mod serial;
