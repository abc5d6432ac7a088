//! Serial devices on pseudo-terminals (`nh-sim serial`): Modbus RTU gas detectors and MR60FDA1
//! fall radars played on the master side of a pty, the gateway reading the slave through a
//! stable link (`DIR/<bus>`, as `/dev/serial/by-id` gives on real hardware).
//!
//! Modules:
//!
//! - [`config`]: the bench file (`config/serial/*.toml`): buses, units, scripts, outages;
//!   validation with every error at once.
//! - [`modbus`]: RTU slave framing: CRC-16/MODBUS, finding requests, FC 03/04 answers and
//!   exceptions.
//! - [`gas`]: a gas detector's script, its own alarm status and its `generic_gas` / `midas`
//!   registers.
//! - [`radar`]: the MR60FDA1 frames, its script, reports on change, the 1 Hz body-movement
//!   report and garbage bursts.
//! - [`pty`]: pty pairs (master non-blocking under `AsyncFd`, slave held open and raw) and atomic
//!   links.
//! - `bus`: one bus at run time (a task per bus).
//!
//! [`run_bench`] prints, one line each: `pty bus=<b> link=<l> path=<p>` per bus (again after an
//! outage), `ready`, `started`, `event bus=<b> [unit=<u>] t_ms=<ms> wall_ms=<unix ms> what=<...>`
//! and at the end `done bus=<b> frames=<n> garbage_bytes=<n>` (radar) or
//! `done bus=<b> requests=<n> answered=<n>` (modbus).

pub mod config;
pub mod gas;
pub mod modbus;
pub mod pty;
pub mod radar;

mod bus;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinSet};

pub use config::{is_bench, load, parse, summary, Bench, BenchErrors, BusSpec};

use bus::BusTask;

/// Capacity of the output line channel. Lines never drop: the buses wait for the printer.
pub const LINES_CAPACITY: usize = 1024;

/// Something a device did, for an `event` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEvent {
    /// The Modbus unit, if the event is a unit's.
    pub unit: Option<u8>,
    /// A word, then `key=value` details.
    pub what: String,
}

/// Why a bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("link directory {}: {source}", path.display())]
    Dir { path: PathBuf, source: io::Error },
    #[error("bus `{bus}`: opening a pty: {source}")]
    Pty { bus: String, source: io::Error },
    #[error("bus `{bus}`: link {}: {source}", path.display())]
    Link {
        bus: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("bus `{bus}`: {message}")]
    Bus { bus: String, message: String },
}

/// What one bus did, for its `done` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusSummary {
    pub bus: String,
    pub counts: Counts,
}

/// The counters of a bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counts {
    /// Valid frames written (whole frames only) and garbage bytes written.
    Radar { frames: u64, garbage_bytes: u64 },
    /// Requests with a valid CRC seen on the bus (any unit) and answers written (exceptions and
    /// deliberately corrupted answers included).
    Modbus { requests: u64, answered: u64 },
}

impl fmt::Display for BusSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.counts {
            Counts::Radar { frames, garbage_bytes } => {
                write!(f, "done bus={} frames={frames} garbage_bytes={garbage_bytes}", self.bus)
            }
            Counts::Modbus { requests, answered } => {
                write!(f, "done bus={} requests={requests} answered={answered}", self.bus)
            }
        }
    }
}

/// How to run a bench.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Where the links go (created if missing).
    pub dir: PathBuf,
    /// Stop this long after the start.
    pub duration: Option<Duration>,
}

fn wall_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

fn pty_line(bus: &str, link: &Path, path: &Path) -> String {
    format!("pty bus={bus} link={} path={}", link.display(), path.display())
}

fn event_line(bus: &str, unit: Option<u8>, t_ms: u64, what: &str) -> String {
    let unit = unit.map(|u| format!(" unit={u}")).unwrap_or_default();
    format!("event bus={bus}{unit} t_ms={t_ms} wall_ms={} what={what}", wall_ms())
}

/// Plays a bench: creates every bus's pty and link (a `pty` line each, then `ready`), starts the
/// scripts when `start` completes (`started`), and stops when `shutdown` completes or
/// `duration` has passed since the start (`done` lines). Every line goes to `lines`.
///
/// A bus that fails stops the bench with its error. Links are removed on the way out.
pub async fn run_bench(
    bench: &Bench,
    opts: &BenchOptions,
    start: impl Future<Output = ()>,
    shutdown: impl Future<Output = ()>,
    lines: mpsc::Sender<String>,
) -> Result<Vec<BusSummary>, SerialError> {
    std::fs::create_dir_all(&opts.dir).map_err(|source| SerialError::Dir {
        path: opts.dir.clone(),
        source,
    })?;
    let mut buses: Vec<BusTask> = Vec::with_capacity(bench.buses.len());
    for spec in &bench.buses {
        match BusTask::open(spec, bench.seed, &opts.dir, lines.clone()) {
            Ok(bus) => {
                if let Some(line) = bus.pty_line() {
                    lines.send(line).await.ok();
                }
                buses.push(bus);
            }
            Err(e) => {
                buses.into_iter().for_each(BusTask::discard);
                return Err(e);
            }
        }
    }
    lines.send("ready".to_owned()).await.ok();

    let (start_tx, start_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let names: Vec<String> = bench.buses.iter().map(|b| b.name.clone()).collect();
    let mut tasks = JoinSet::new();
    let mut task_names = HashMap::new();
    for (index, bus) in buses.into_iter().enumerate() {
        let (start_rx, stop_rx) = (start_rx.clone(), stop_rx.clone());
        let handle = tasks.spawn(async move { (index, bus.run(start_rx, stop_rx).await) });
        task_names.insert(handle.id(), names[index].clone());
    }
    let names = Names {
        by_index: &names,
        by_task: &task_names,
    };

    let mut summaries: Vec<Option<BusSummary>> = vec![None; names.by_index.len()];
    let mut failure: Option<SerialError> = None;
    tokio::pin!(shutdown);
    let started = tokio::select! {
        _ = start => true,
        _ = &mut shutdown => false,
        Some(joined) = tasks.join_next() => {
            failure = Some(early_end(joined, &names));
            false
        }
    };
    if started {
        let at = Instant::now();
        lines.send("started".to_owned()).await.ok();
        start_tx.send_replace(Some(at));
        let deadline = async {
            match opts.duration {
                Some(d) => tokio::time::sleep_until((at + d).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => {}
            _ = deadline => {}
            Some(joined) = tasks.join_next() => failure = Some(early_end(joined, &names)),
        }
    }
    stop_tx.send_replace(true);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, Ok(summary))) => summaries[index] = Some(summary),
            other => {
                let e = early_end(other, &names);
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let summaries: Vec<BusSummary> = summaries.into_iter().flatten().collect();
    for s in &summaries {
        lines.send(s.to_string()).await.ok();
    }
    Ok(summaries)
}

/// The names of the bus tasks.
struct Names<'a> {
    by_index: &'a [String],
    by_task: &'a HashMap<tokio::task::Id, String>,
}

/// A bus task that ended on its own (before the shutdown), or failed: the error, logged with the
/// bus's name.
fn early_end(joined: Result<(usize, Result<BusSummary, SerialError>), JoinError>, names: &Names<'_>) -> SerialError {
    let e = match joined {
        Ok((_, Err(e))) => e,
        Ok((index, Ok(_))) => SerialError::Bus {
            bus: names.by_index.get(index).cloned().unwrap_or_default(),
            message: "stopped before the shutdown".to_owned(),
        },
        Err(e) => SerialError::Bus {
            bus: names.by_task.get(&e.id()).cloned().unwrap_or_default(),
            message: format!("bus task failed: {e}"),
        },
    };
    tracing::error!(error = %e, "bus stopped");
    e
}
