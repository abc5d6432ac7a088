//! Serial sources: one task per port. The task opens the port (tokio-serial), runs its protocol
//! (Modbus RTU polling or radar frames) until the port fails, and reopens it with backoff. The
//! link's state is journaled as `link_up` of the device `serial:<bus>` (class `gateway`), so the
//! rules engine raises the link-down alert and the history shows every outage; `/metrics`
//! carries it as `nh_serial_link_up` with outage counters.
//!
//! - [`modbus`]: the RTU master: per-unit cadence, bounded timeouts, retries, counters.
//! - [`radar`]: MR60FDA1 frames from a UART.
//! - [`stats`]: the counters.

pub mod config;
pub mod modbus;
pub mod radar;
pub mod stats;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_serial::SerialStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::decode::register_map::CompiledMap;
use crate::journal::Ingest;
use crate::normalize::Normalizer;
use crate::reading::{Reading, Record, Value};
use config::{Parity, SerialPortConfig, SerialProtocol};
pub use stats::{BusStats, SerialStats, UnitStats};

const BACKOFF_START: Duration = Duration::from_millis(250);
/// A link that stayed up this long starts its next reopen series from the shortest wait.
const STABLE_AFTER: Duration = Duration::from_secs(5);

/// The class of the gateway's own components in the journal.
const LINK_CLASS: &str = "gateway";

/// One serial port's source.
pub struct SerialSource {
    pub port: SerialPortConfig,
    /// Register maps by name (Modbus).
    pub maps: BTreeMap<String, Arc<CompiledMap>>,
    pub normalizer: Arc<Normalizer>,
    pub journal: mpsc::Sender<Ingest>,
    pub stats: Arc<BusStats>,
    pub clock: Clock,
}

/// Why a port's session ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: tokio_serial::Error },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the port was closed (end of file)")]
    Closed,
    #[error("the journal is gone (shutting down)")]
    JournalClosed,
}

impl SerialSource {
    pub fn protocol_label(p: SerialProtocol) -> &'static str {
        match p {
            SerialProtocol::ModbusRtu => "modbus_rtu",
            SerialProtocol::Mr60fda1 => "mr60fda1",
        }
    }

    /// Runs until cancelled: open, serve, and after any failure reopen with backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        let bus = self.port.bus.clone();
        let path = self.port.path.display().to_string();
        let mut backoff = BACKOFF_START;
        let max_backoff = Duration::from_millis(self.port.reopen_max_ms);
        // The last link state journaled; `None` before the first.
        let mut journaled: Option<bool> = None;
        let mut protocol = match self.port.protocol {
            SerialProtocol::ModbusRtu => Protocol::Modbus(modbus::Poller::new(&self)),
            SerialProtocol::Mr60fda1 => Protocol::Radar(radar::Reader::new(&self)),
        };
        let mut failures_logged = 0u32;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let session = match open(&self.port) {
                Ok(mut stream) => {
                    let opened = tokio::time::Instant::now();
                    self.stats.up(self.clock.now_ms());
                    info!(%bus, %path, "serial port open");
                    failures_logged = 0;
                    if journaled != Some(true) && self.journal_link(true).await.is_ok() {
                        journaled = Some(true);
                    }
                    let result = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        r = protocol.serve(&self, &mut stream) => r,
                    };
                    if opened.elapsed() >= STABLE_AFTER {
                        backoff = BACKOFF_START;
                    }
                    result
                }
                Err(e) => Err(e),
            };
            let Err(e) = session else { continue };
            if matches!(e, LinkError::JournalClosed) {
                break;
            }
            self.stats.down(self.clock.now_ms());
            // Log each outage's first failures, then every 30th: a port that stays gone for
            // hours should not fill the log.
            if failures_logged < 3 || failures_logged.is_multiple_of(30) {
                warn!(%bus, %path, error = %e, retry_ms = backoff.as_millis() as u64, "serial link down");
            }
            failures_logged += 1;
            if journaled != Some(false) && self.journal_link(false).await.is_ok() {
                journaled = Some(false);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(max_backoff);
        }
        info!(%bus, "serial source stopped");
    }

    /// Journals the link's state (the rules engine sees it as any reading).
    async fn journal_link(&self, up: bool) -> Result<(), LinkError> {
        let now = self.clock.now_ms();
        let record = Record {
            device: self.port.link_id(),
            class: LINK_CLASS.to_owned(),
            building: String::new(),
            floor: String::new(),
            room: self.port.room.clone(),
            zone: String::new(),
            ts: now,
            ts_recv: now,
            ts_replaced: false,
            seq: None,
            metrics: BTreeMap::from([("link_up".to_owned(), Value::Bool(up))]),
        };
        self.journal
            .send(Ingest {
                records: vec![record],
                ack: None,
            })
            .await
            .map_err(|_| LinkError::JournalClosed)
    }

    /// Normalizes readings of this port and queues them for the journal (waiting when it is full).
    async fn ingest(&self, readings: Vec<Reading>, recv_ms: i64) -> Result<(), LinkError> {
        if readings.is_empty() {
            return Ok(());
        }
        let source = self.port.link_id();
        let records = self.normalizer.attach(readings, &source, recv_ms);
        if records.is_empty() {
            return Ok(());
        }
        self.journal
            .send(Ingest { records, ack: None })
            .await
            .map_err(|_| LinkError::JournalClosed)
    }
}

enum Protocol {
    Modbus(modbus::Poller),
    Radar(radar::Reader),
}

impl Protocol {
    async fn serve(&mut self, src: &SerialSource, stream: &mut SerialStream) -> Result<(), LinkError> {
        match self {
            Protocol::Modbus(p) => p.serve(src, stream).await,
            Protocol::Radar(r) => r.serve(src, stream).await,
        }
    }
}

/// Opens a port with its line settings (exclusive: no second process reads the same bus).
fn open(p: &SerialPortConfig) -> Result<SerialStream, LinkError> {
    let path = p.path.to_string_lossy().into_owned();
    let data_bits = match p.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let parity = match p.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let stop_bits = if p.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    let builder = tokio_serial::new(&path, p.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(tokio_serial::FlowControl::None);
    SerialStream::open(&builder).map_err(|source| LinkError::Open { path, source })
}

/// Time on the wire of `bytes` at `baud` (start, 8 data, parity or stop, stop: 11 bits each).
pub fn wire_time(bytes: usize, baud: u32) -> Duration {
    Duration::from_micros((bytes as u64 * 11 * 1_000_000) / u64::from(baud.max(1)))
}
