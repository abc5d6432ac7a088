//! The source stages besides MQTT: the normalizer every source shares, one serial source per
//! `[[serial]]` port, and self-supervision, which journals through the priority input and so
//! stops with the sources.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tracing::info;

use super::Wiring;
use crate::config::{SerialPortConfig, SerialProtocol};
use crate::decode::register_map::CompiledMap;
use crate::decode::Limits;
use crate::journal::WriterHandle;
use crate::normalize::{FloodLimit, Normalizer};
use crate::sources::serial::{SerialSource, SerialStats};
use crate::supervise::{Supervisor, MQTT_SILENCE_MS};

impl Wiring {
    /// Decoding limits, the registry and the time checks, shared by every source.
    pub(super) fn normalizer(&self) -> Arc<Normalizer> {
        let config = &self.config;
        let limits = Limits {
            max_payload_bytes: config.decode.max_payload_bytes,
            max_json_depth: config.decode.max_json_depth,
        };
        Arc::new(
            Normalizer::new(
                self.registry.clone(),
                config.registry.unknown_devices,
                limits,
                (config.decode.max_future_s * 1000) as i64,
                (config.decode.max_past_s * 1000) as i64,
                self.clock,
                self.telemetry.clone(),
            )
            .with_flood_limit(FloodLimit::from(&config.decode)),
        )
    }

    /// One source per serial port, counted in `stats` per bus.
    pub(super) fn start_serial(
        &self,
        maps: &BTreeMap<String, Arc<CompiledMap>>,
        stats: &SerialStats,
        normalizer: &Arc<Normalizer>,
        writer: &WriterHandle,
    ) {
        for port in &self.config.serial {
            let protocol = SerialSource::protocol_label(port.protocol);
            let serial = SerialSource {
                stats: stats.bus(&port.bus, protocol),
                port: port.clone(),
                maps: maps.clone(),
                normalizer: normalizer.clone(),
                // Gas and fire panels, fall radars: life-safety links take the priority input.
                journal: writer.tx_priority.clone(),
                clock: self.clock,
            };
            info!(bus = %port.bus, path = %port.path.display(), protocol, "serial source on");
            self.spawn_source(format!("serial:{}", port.bus), serial.run(self.shutdown.clone()));
        }
    }

    /// Self-supervision (rules S2-S7) journals through the priority input: it stops with the
    /// sources so that the writer can drain and end.
    pub(super) fn start_supervisor(&self, writer: &WriterHandle) {
        let links = serial_links(&self.config.serial);
        let supervisor = Supervisor {
            telemetry: self.telemetry.clone(),
            clock: self.clock,
            journal: writer.tx_priority.clone(),
            journal_path: self.journal_path.clone(),
            influx: self.config.influx.is_some(),
            expect_mqtt: self
                .registry
                .devices()
                .iter()
                .any(|d| !links.contains_key(&d.id) && d.interval_s.saturating_mul(1000) < MQTT_SILENCE_MS as u64),
        };
        self.spawn_source("supervisor", supervisor.run(self.shutdown.clone()));
    }
}

/// Device id -> id of the serial link it hangs on.
pub(super) fn serial_links(ports: &[SerialPortConfig]) -> HashMap<String, String> {
    let mut links = HashMap::new();
    for p in ports {
        match p.protocol {
            SerialProtocol::ModbusRtu => {
                for u in &p.units {
                    links.insert(u.device_id(&p.bus), p.link_id());
                }
            }
            SerialProtocol::Mr60fda1 => {
                links.insert(p.radar_id(), p.link_id());
            }
        }
    }
    links
}
