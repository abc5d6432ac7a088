//! The Modbus RTU master of one bus. RS-485 is half duplex: one request at a time. Each unit
//! has its own poll interval and is polled when due (earliest deadline first), on a fixed
//! cadence (the next poll is due one interval after the previous was due, not after it ended).
//!
//! A dead unit must not stall the others: every attempt waits at most its timeout (plus the
//! frames' time on the wire), retries are bounded, and after 3 polls in a row without an answer
//! the unit is polled once per `DEAD_POLL` with a single attempt until it answers again. Its
//! readings stop, so the rules engine's absence rule reports it offline.
//!
//! Why not tokio-modbus: it has no request timeout, and after one the advice is to drop the
//! context and reopen the port (a late answer would otherwise be taken for the next one); a
//! CRC mismatch is only logged through the `log` crate while it drops bytes one by one, so it
//! cannot be counted per unit. The framing we need (read registers, exceptions, CRC) is small
//! and lives in `decode::modbus`, where a late answer of another unit is recognised and skipped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_serial::{ClearBuffer, SerialPort, SerialStream};
use tracing::{info, warn};

use super::config::ModbusUnitConfig;
use super::{wire_time, LinkError, SerialSource, UnitStats};
use crate::decode::modbus::{read_request, ResponseScanner, Scan};
use crate::decode::register_map::CompiledMap;
use crate::reading::{DeviceKey, Reading, Value};

/// Polls in a row without an answer before a unit counts as offline (R17 in docs/rules.md: 3
/// consecutive failed polls).
const OFFLINE_AFTER: u32 = 3;
/// How often an offline unit is tried (one attempt), so it costs the bus little.
const DEAD_POLL: Duration = Duration::from_secs(5);
/// Log lines per unit and kind of failure before they are only counted.
const LOG_BUDGET: u32 = 5;

struct Unit {
    cfg: ModbusUnitConfig,
    device: String,
    map: Option<Arc<CompiledMap>>,
    stats: Arc<UnitStats>,
    next_due: Instant,
    failures: u32,
    logged: u32,
}

pub struct Poller {
    units: Vec<Unit>,
}

enum Outcome {
    Registers(Vec<u16>, i64),
    Exception(u8),
    Silent,
}

impl Poller {
    pub fn new(src: &SerialSource) -> Self {
        let now = Instant::now();
        let units = src
            .port
            .units
            .iter()
            .map(|u| {
                let stats = src.stats.unit(u.unit);
                Unit {
                    device: u.device_id(&src.port.bus),
                    map: src.maps.get(&u.map).cloned(),
                    cfg: u.clone(),
                    stats,
                    next_due: now,
                    failures: 0,
                    logged: 0,
                }
            })
            .collect();
        Poller { units }
    }

    /// Polls until the port fails.
    pub async fn serve(&mut self, src: &SerialSource, port: &mut SerialStream) -> Result<(), LinkError> {
        if self.units.is_empty() {
            std::future::pending::<()>().await;
        }
        let mut buf = [0u8; 512];
        loop {
            let Some(i) = (0..self.units.len()).min_by_key(|&i| (self.units[i].next_due, i)) else {
                return Ok(());
            };
            tokio::time::sleep_until(self.units[i].next_due).await;
            let unit = &mut self.units[i];
            let Some(map) = unit.map.clone() else {
                // Validation guarantees the map; never poll without one.
                unit.next_due = Instant::now() + DEAD_POLL;
                continue;
            };
            let attempts = if unit.failures >= OFFLINE_AFTER {
                1
            } else {
                unit.cfg.retries + 1
            };
            let outcome = poll(src, port, unit, &map, attempts, &mut buf).await?;
            let bus = &src.port.bus;
            let interval = Duration::from_millis(unit.cfg.poll_ms);
            match outcome {
                Outcome::Silent => {
                    unit.failures += 1;
                    if unit.failures == OFFLINE_AFTER {
                        unit.stats.online.store(0, Ordering::Relaxed);
                        warn!(%bus, unit = unit.cfg.unit, device = %unit.device, "Modbus unit not answering; polled every {} s until it does", DEAD_POLL.as_secs());
                    }
                }
                Outcome::Exception(code) => {
                    unit.stats.exception(code);
                    answered(unit, bus);
                    if unit.logged < LOG_BUDGET {
                        unit.logged += 1;
                        warn!(%bus, unit = unit.cfg.unit, code, "Modbus exception response (is the register map right for this device?)");
                    }
                    let readings = vec![fault_reading(&unit.device, &format!("modbus_exception_{code}"))];
                    src.ingest(readings, src.clock.now_ms()).await?;
                }
                Outcome::Registers(regs, recv_ms) => {
                    answered(unit, bus);
                    let metrics = match map.decode(&regs) {
                        Ok(m) => m,
                        Err(e) => {
                            unit.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                            src.normalizer.telemetry.rejected(e.reason());
                            if unit.logged < LOG_BUDGET {
                                unit.logged += 1;
                                warn!(%bus, unit = unit.cfg.unit, error = %e, "Modbus answer refused by the register map");
                            }
                            // The device answers but cannot be read: a fault, not a silence.
                            let mut r = fault_reading(&unit.device, &format!("map_{}", e.reason()));
                            r.ts_ms = Some(recv_ms);
                            src.ingest(vec![r], recv_ms).await?;
                            schedule(unit, interval);
                            continue;
                        }
                    };
                    let reading = Reading {
                        device: DeviceKey::Id(unit.device.clone()),
                        ts_ms: None,
                        seq: None,
                        metrics,
                    };
                    src.ingest(vec![reading], recv_ms).await?;
                }
            }
            schedule(unit, interval);
        }
    }
}

/// Bookkeeping of an answer: the unit is alive.
fn answered(unit: &mut Unit, bus: &str) {
    unit.stats.answers.fetch_add(1, Ordering::Relaxed);
    if unit.failures >= OFFLINE_AFTER {
        info!(%bus, unit = unit.cfg.unit, "Modbus unit answers again");
    }
    unit.failures = 0;
    unit.stats.online.store(1, Ordering::Relaxed);
}

/// The next poll: one interval after this one was due; when that is already past (the bus was
/// late, or the port was away), one interval from now: a late bus does not burst to catch up.
/// An offline unit waits `DEAD_POLL`.
fn schedule(unit: &mut Unit, interval: Duration) {
    let now = Instant::now();
    let next = unit.next_due + interval;
    unit.next_due = if unit.failures >= OFFLINE_AFTER {
        now + DEAD_POLL.max(interval)
    } else if next < now {
        now + interval
    } else {
        next
    };
}

fn fault_reading(device: &str, code: &str) -> Reading {
    Reading {
        device: DeviceKey::Id(device.to_owned()),
        ts_ms: None,
        seq: None,
        metrics: [
            ("fault".to_owned(), Value::Bool(true)),
            ("fault_code".to_owned(), Value::Text(code.to_owned())),
        ]
        .into_iter()
        .collect(),
    }
}

/// One poll: up to `attempts` request/answer exchanges.
async fn poll(
    src: &SerialSource,
    port: &mut SerialStream,
    unit: &mut Unit,
    map: &CompiledMap,
    attempts: u32,
    buf: &mut [u8],
) -> Result<Outcome, LinkError> {
    let request = read_request(unit.cfg.unit, map.function, map.start, map.count);
    // The answer's length: unit, function, byte count, data, CRC.
    let answer_len = 5 + 2 * usize::from(map.count);
    let wait = Duration::from_millis(unit.cfg.timeout_ms) + wire_time(request.len() + answer_len, src.port.baud);
    for _ in 0..attempts {
        // Whatever waits in the input now is not the answer to this request: a late answer
        // to an earlier one, or noise. Drop it so it cannot be taken for ours.
        let stray = port.bytes_to_read().map_err(std::io::Error::from)?;
        if stray > 0 {
            port.clear(ClearBuffer::Input).map_err(std::io::Error::from)?;
            src.stats.stray_bytes.fetch_add(u64::from(stray), Ordering::Relaxed);
        }
        port.write_all(&request).await?;
        unit.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut scanner = ResponseScanner::new(unit.cfg.unit, map.function, map.count);
        let deadline = Instant::now() + wait;
        let found = loop {
            match tokio::time::timeout_at(deadline, port.read(buf)).await {
                Err(_) => break None,
                Ok(Ok(0)) => return Err(LinkError::Closed),
                Ok(Ok(n)) => match scanner.push(&buf[..n]) {
                    Scan::Incomplete => continue,
                    Scan::Registers(regs) => break Some(Outcome::Registers(regs, src.clock.now_ms())),
                    Scan::Exception(code) => break Some(Outcome::Exception(code)),
                },
                Ok(Err(e)) => return Err(e.into()),
            }
        };
        unit.stats
            .foreign_frames
            .fetch_add(u64::from(scanner.foreign_frames), Ordering::Relaxed);
        if let Some(outcome) = found {
            return Ok(outcome);
        }
        if scanner.crc_errors > 0 {
            unit.stats.crc_errors.fetch_add(1, Ordering::Relaxed);
        } else {
            unit.stats.timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(Outcome::Silent)
}
