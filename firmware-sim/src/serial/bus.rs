//! One bus at run time: its pty and link, its outages, and the devices playing on the master
//! side. A task of its own that loops on `select!` over shutdown, the start, the master's bytes,
//! the pending output and a 10 ms tick that moves script time on.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use super::config::{BusDevices, BusSpec, Outage};
use super::gas::GasUnit;
use super::modbus::{self, Scan};
use super::pty::{point_link, remove_link, Pty};
use super::radar::Radar;
use super::{event_line, pty_line, BusSummary, Counts, DeviceEvent, SerialError};
use crate::rng::Rng;

/// How often script time is looked at: steps, ramps crossing a setpoint, outages and delayed
/// answers take effect within this much of their time.
const TICK: Duration = Duration::from_millis(10);

/// A pty has no baud timing, so a slave cannot use the 3.5-character silence of RTU framing;
/// bytes of an unfinished request older than this are dropped instead, the way a slave's t3.5
/// timer drops a truncated frame.
const FRAME_GAP: Duration = Duration::from_millis(100);

/// The radar sends its body-movement report this often.
const BODY_MOVEMENT_PERIOD: Duration = Duration::from_secs(1);

/// Overflow policy of the radar's output: when nobody reads the port the pty fills up; once this
/// many frames wait, further once-per-second reports are dropped (a UART with nobody listening
/// loses them too). State reports are never dropped: there is one per script change at most.
const MAX_QUEUED_FRAMES: usize = 32;

/// At the end, the reader gets this long to take in what was written before the pty closes
/// (a hangup discards unread input): a `done` line then counts what the gateway could read.
const DRAIN_DEADLINE: Duration = Duration::from_secs(1);

/// Read buffer for the master.
const READ_BUF: usize = 4096;

/// Stream of the garbage PRNG, per bus (`Rng::for_device`).
const GARBAGE_STREAM: u64 = 0x6761_7262;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Frame,
    Answer,
    Garbage,
}

#[derive(Debug)]
struct Chunk {
    bytes: Vec<u8>,
    written: usize,
    kind: Kind,
}

/// What completed writes amounted to.
#[derive(Debug, Default, Clone, Copy)]
struct Written {
    frames: u64,
    answers: u64,
    garbage: u64,
}

/// Bytes waiting for the pty, in order; counted as they are written.
#[derive(Debug, Default)]
struct Outbox {
    chunks: VecDeque<Chunk>,
    frames_queued: usize,
    garbage_queued: u64,
}

impl Outbox {
    fn push(&mut self, kind: Kind, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        match kind {
            Kind::Frame => self.frames_queued += 1,
            Kind::Garbage => self.garbage_queued += bytes.len() as u64,
            Kind::Answer => {}
        }
        self.chunks.push_back(Chunk {
            bytes,
            written: 0,
            kind,
        });
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The unwritten bytes of the first chunk.
    fn front(&self) -> &[u8] {
        self.chunks.front().map(|c| &c.bytes[c.written..]).unwrap_or_default()
    }

    /// `n` bytes of the first chunk were written.
    fn consume(&mut self, n: usize) -> Written {
        let mut w = Written::default();
        let Some(c) = self.chunks.front_mut() else {
            return w;
        };
        let n = n.min(c.bytes.len() - c.written);
        c.written += n;
        if c.kind == Kind::Garbage {
            w.garbage = n as u64;
            self.garbage_queued -= n as u64;
        }
        if c.written == c.bytes.len() {
            match c.kind {
                Kind::Frame => {
                    w.frames = 1;
                    self.frames_queued -= 1;
                }
                Kind::Answer => w.answers = 1,
                Kind::Garbage => {}
            }
            self.chunks.pop_front();
        }
        w
    }

    /// Drops everything (the pty went away); returns the garbage bytes never written.
    fn clear(&mut self) -> u64 {
        let unwritten = self.garbage_queued;
        *self = Outbox::default();
        unwritten
    }
}

/// The modbus side of a bus.
struct ModbusBus {
    units: Vec<GasUnit>,
    inbuf: Vec<u8>,
    last_rx: Instant,
    /// Answers held back by `delay_ms`.
    delayed: Vec<(Instant, Vec<u8>)>,
    requests: u64,
    answered: u64,
}

/// The radar side of a bus.
struct RadarBus {
    radar: Radar,
    next_beat: Instant,
    frames: u64,
    garbage_bytes: u64,
    dropped: u64,
}

enum Devices {
    Modbus(ModbusBus),
    Radar(RadarBus),
}

/// What woke the loop.
enum Wake {
    Shutdown,
    Start(Option<Instant>),
    Read(io::Result<usize>),
    Wrote(io::Result<usize>),
    Tick,
}

/// One bus, ready to run.
pub(crate) struct BusTask {
    name: String,
    dir: PathBuf,
    link: PathBuf,
    pty: Option<Pty>,
    outages: Vec<Outage>,
    next_outage: usize,
    /// Script time at which the current outage ends.
    outage_end: Option<f64>,
    devices: Devices,
    out: Outbox,
    lines: mpsc::Sender<String>,
    start: Option<Instant>,
    /// Events of the state at t=0, printed at the start.
    initial_events: Vec<DeviceEvent>,
}

impl BusTask {
    /// Creates the bus's pty and link; the devices take their state at t=0.
    pub(crate) fn open(
        spec: &BusSpec,
        seed: u64,
        dir: &Path,
        lines: mpsc::Sender<String>,
    ) -> Result<BusTask, SerialError> {
        let pty = Pty::open().map_err(|source| SerialError::Pty {
            bus: spec.name.clone(),
            source,
        })?;
        let link = point_link(dir, &spec.name, pty.path()).map_err(|source| SerialError::Link {
            bus: spec.name.clone(),
            path: dir.join(&spec.name),
            source,
        })?;
        let mut initial_events = Vec::new();
        let now = Instant::now();
        let devices = match &spec.devices {
            BusDevices::Modbus(units) => {
                let mut units: Vec<GasUnit> = units.iter().cloned().map(GasUnit::new).collect();
                for u in &mut units {
                    u.advance(0.0, &mut initial_events);
                }
                Devices::Modbus(ModbusBus {
                    units,
                    inbuf: Vec::new(),
                    last_rx: now,
                    delayed: Vec::new(),
                    requests: 0,
                    answered: 0,
                })
            }
            BusDevices::Radar(script) => {
                let mut radar = Radar::new(script.clone(), Rng::for_device(seed, &spec.name, GARBAGE_STREAM));
                radar.advance(0.0, &mut initial_events);
                Devices::Radar(RadarBus {
                    radar,
                    next_beat: now,
                    frames: 0,
                    garbage_bytes: 0,
                    dropped: 0,
                })
            }
        };
        Ok(BusTask {
            name: spec.name.clone(),
            dir: dir.to_path_buf(),
            link,
            pty: Some(pty),
            outages: spec.outages.clone(),
            next_outage: 0,
            outage_end: None,
            devices,
            out: Outbox::default(),
            lines,
            start: None,
            initial_events,
        })
    }

    /// The `pty ...` line of the current pty.
    pub(crate) fn pty_line(&self) -> Option<String> {
        self.pty.as_ref().map(|p| pty_line(&self.name, &self.link, p.path()))
    }

    /// Removes the link (a bus that never ran).
    pub(crate) fn discard(self) {
        remove_link(&self.link).ok();
    }

    /// Plays the bus until shutdown; the link is removed on the way out.
    pub(crate) async fn run(
        mut self,
        mut start: watch::Receiver<Option<Instant>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<BusSummary, SerialError> {
        let result = self.play(&mut start, &mut shutdown).await;
        if result.is_ok() {
            self.drain().await;
        }
        remove_link(&self.link).ok();
        self.pty = None;
        result?;
        Ok(self.summary())
    }

    /// Waits (up to `DRAIN_DEADLINE`) until nothing written waits unread in the pty.
    async fn drain(&self) {
        let Some(pty) = &self.pty else {
            return;
        };
        let deadline = Instant::now() + DRAIN_DEADLINE;
        // Bytes reach the slave's queue a little after the write: empty twice in a row counts.
        let mut empty = 0;
        while empty < 2 && Instant::now() < deadline {
            match pty.has_unread() {
                Ok(true) => empty = 0,
                Ok(false) => empty += 1,
                Err(_) => return,
            }
            tokio::time::sleep(TICK).await;
        }
    }

    fn summary(&self) -> BusSummary {
        let counts = match &self.devices {
            Devices::Modbus(m) => Counts::Modbus {
                requests: m.requests,
                answered: m.answered,
            },
            Devices::Radar(r) => Counts::Radar {
                frames: r.frames,
                garbage_bytes: r.garbage_bytes,
            },
        };
        BusSummary {
            bus: self.name.clone(),
            counts,
        }
    }

    async fn play(
        &mut self,
        start: &mut watch::Receiver<Option<Instant>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), SerialError> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut buf = vec![0u8; READ_BUF];
        loop {
            let wake = tokio::select! {
                biased;
                _ = async { shutdown.wait_for(|stop| *stop).await.ok(); } => Wake::Shutdown,
                at = async { start.wait_for(Option::is_some).await.ok().and_then(|at| *at) },
                    if self.start.is_none() => Wake::Start(at),
                r = read_some(self.pty.as_ref(), &mut buf) => Wake::Read(r),
                r = write_some(self.pty.as_ref(), self.out.front()), if !self.out.is_empty() => Wake::Wrote(r),
                _ = tick.tick() => Wake::Tick,
            };
            match wake {
                Wake::Shutdown => return Ok(()),
                Wake::Start(None) => {
                    // The start sender is gone: the bench is shutting down.
                    shutdown.wait_for(|stop| *stop).await.ok();
                    return Ok(());
                }
                Wake::Start(Some(at)) => self.on_start(at).await,
                Wake::Read(Ok(0)) => return Err(self.failed("the pty master reported end of file")),
                Wake::Read(Ok(n)) => {
                    let bytes = buf[..n].to_vec();
                    self.on_bytes(&bytes).await;
                }
                Wake::Read(Err(e)) => return Err(self.failed(format!("reading the pty master: {e}"))),
                Wake::Wrote(Ok(n)) => self.on_written(n).await,
                Wake::Wrote(Err(e)) => return Err(self.failed(format!("writing the pty master: {e}"))),
                Wake::Tick => self.on_tick().await?,
            }
            self.refill_garbage();
        }
    }

    fn failed(&self, message: impl Into<String>) -> SerialError {
        SerialError::Bus {
            bus: self.name.clone(),
            message: message.into(),
        }
    }

    /// Script time now, seconds; 0 before the start.
    fn script_time(&self, now: Instant) -> f64 {
        self.start
            .map(|s| now.saturating_duration_since(s).as_secs_f64())
            .unwrap_or(0.0)
    }

    async fn emit(&self, events: Vec<DeviceEvent>) {
        if events.is_empty() {
            return;
        }
        let t_ms = self
            .start
            .map(|s| Instant::now().saturating_duration_since(s).as_millis() as u64)
            .unwrap_or(0);
        for e in events {
            self.line(event_line(&self.name, e.unit, t_ms, &e.what)).await;
        }
    }

    async fn line(&self, line: String) {
        // Lines never drop: a slow reader of stdout slows the bus down instead.
        self.lines.send(line).await.ok();
    }

    async fn on_start(&mut self, at: Instant) {
        self.start = Some(at);
        let events = std::mem::take(&mut self.initial_events);
        self.emit(events).await;
        if let Devices::Radar(r) = &mut self.devices {
            // State reports once at the start, and the body movement at whole seconds from it.
            r.next_beat = at;
        }
        self.tick_devices(Instant::now()).await;
    }

    async fn on_bytes(&mut self, bytes: &[u8]) {
        let now = Instant::now();
        let t = self.script_time(now);
        let started = self.start.is_some();
        let Devices::Modbus(m) = &mut self.devices else {
            // A radar ignores what it is sent (queries are not simulated).
            return;
        };
        m.inbuf.extend_from_slice(bytes);
        m.last_rx = now;
        let mut events = Vec::new();
        loop {
            match modbus::scan(&m.inbuf) {
                Scan::NeedMore => break,
                Scan::Skip(n) => {
                    m.inbuf.drain(..n);
                }
                Scan::Frame(request, used) => {
                    m.inbuf.drain(..used);
                    m.requests += 1;
                    if request.unit == 0 {
                        continue; // broadcast: never answered
                    }
                    let Some(unit) = m.units.iter_mut().find(|u| u.unit() == request.unit) else {
                        continue; // not on this bus
                    };
                    if started {
                        unit.advance(t, &mut events);
                    }
                    if unit.is_silent() {
                        continue;
                    }
                    let mut answer = modbus::answer(&request, &unit.registers(t));
                    if unit.next_answer_corrupt() {
                        modbus::corrupt_crc(&mut answer);
                    }
                    match unit.delay_ms() {
                        0 => self.out.push(Kind::Answer, answer),
                        ms => m.delayed.push((now + Duration::from_millis(ms), answer)),
                    }
                }
            }
        }
        self.emit(events).await;
    }

    async fn on_written(&mut self, n: usize) {
        let w = self.out.consume(n);
        let ended = match &mut self.devices {
            Devices::Modbus(m) => {
                m.answered += w.answers;
                None
            }
            Devices::Radar(r) => {
                r.frames += w.frames;
                r.garbage_bytes += w.garbage;
                (w.garbage > 0 && self.out.garbage_queued == 0 && r.radar.finish_garbage())
                    .then(|| format!("garbage_end frames={} garbage_bytes={}", r.frames, r.garbage_bytes))
            }
        };
        if let Some(what) = ended {
            self.emit(vec![DeviceEvent { unit: None, what }]).await;
        }
    }

    /// Hands the next garbage chunk to the outbox once the previous one is out.
    fn refill_garbage(&mut self) {
        if self.pty.is_none() || self.start.is_none() || self.out.garbage_queued > 0 {
            return;
        }
        if let Devices::Radar(r) = &mut self.devices {
            if let Some((separator, chunk)) = r.radar.next_garbage() {
                if let Some(frame) = separator {
                    self.out.push(Kind::Frame, frame);
                }
                self.out.push(Kind::Garbage, chunk);
            }
        }
    }

    async fn on_tick(&mut self) -> Result<(), SerialError> {
        let now = Instant::now();
        if self.start.is_some() {
            self.outages(self.script_time(now)).await?;
        }
        self.tick_devices(now).await;
        Ok(())
    }

    /// Begins and ends outages due at script time `t`.
    async fn outages(&mut self, t: f64) -> Result<(), SerialError> {
        loop {
            if let Some(end) = self.outage_end {
                if t < end {
                    return Ok(());
                }
                let pty = Pty::open().map_err(|source| SerialError::Pty {
                    bus: self.name.clone(),
                    source,
                })?;
                point_link(&self.dir, &self.name, pty.path()).map_err(|source| SerialError::Link {
                    bus: self.name.clone(),
                    path: self.link.clone(),
                    source,
                })?;
                let what = format!("outage_end path={}", pty.path().display());
                self.pty = Some(pty);
                self.outage_end = None;
                if let Some(line) = self.pty_line() {
                    self.line(line).await;
                }
                self.emit(vec![DeviceEvent { unit: None, what }]).await;
                continue;
            }
            let Some(o) = self.outages.get(self.next_outage).copied() else {
                return Ok(());
            };
            if t < o.at_s {
                return Ok(());
            }
            self.next_outage += 1;
            self.outage_end = Some(o.at_s + o.for_s);
            // The link goes first: nobody may open the old slave between the two steps.
            remove_link(&self.link).map_err(|source| SerialError::Link {
                bus: self.name.clone(),
                path: self.link.clone(),
                source,
            })?;
            self.pty = None;
            let unwritten = self.out.clear();
            match &mut self.devices {
                Devices::Modbus(m) => {
                    m.inbuf.clear();
                    m.delayed.clear();
                }
                Devices::Radar(r) => r.radar.return_garbage(unwritten),
            }
            let what = format!("outage_begin for_s={}", o.for_s);
            self.emit(vec![DeviceEvent { unit: None, what }]).await;
        }
    }

    /// Moves the devices to the current script time and queues what they owe.
    async fn tick_devices(&mut self, now: Instant) {
        let t = self.script_time(now);
        let started = self.start.is_some();
        let connected = self.pty.is_some();
        let mut events = Vec::new();
        match &mut self.devices {
            Devices::Modbus(m) => {
                if started {
                    for u in &mut m.units {
                        u.advance(t, &mut events);
                    }
                }
                if !m.inbuf.is_empty() && now.saturating_duration_since(m.last_rx) >= FRAME_GAP {
                    m.inbuf.clear();
                }
                let mut i = 0;
                while i < m.delayed.len() {
                    if m.delayed[i].0 <= now {
                        let (_, answer) = m.delayed.remove(i);
                        self.out.push(Kind::Answer, answer);
                    } else {
                        i += 1;
                    }
                }
            }
            Devices::Radar(r) => {
                if started {
                    r.radar.advance(t, &mut events);
                    // During an outage the reports go nowhere: lost, like on a cut cable.
                    for frame in r.radar.state_frames() {
                        if connected {
                            self.out.push(Kind::Frame, frame);
                        }
                    }
                }
                if now >= r.next_beat {
                    r.next_beat += BODY_MOVEMENT_PERIOD;
                    if r.next_beat <= now {
                        r.next_beat = now + BODY_MOVEMENT_PERIOD;
                    }
                    if connected && !r.radar.is_silent() {
                        if self.out.frames_queued < MAX_QUEUED_FRAMES {
                            self.out.push(Kind::Frame, r.radar.body_movement_frame());
                        } else {
                            r.dropped += 1;
                            if r.dropped == 1 || r.dropped % 60 == 0 {
                                tracing::warn!(bus = %self.name, dropped = r.dropped, "nobody reads the radar port: body-movement reports dropped");
                            }
                        }
                    }
                }
            }
        }
        self.emit(events).await;
    }
}

async fn read_some(pty: Option<&Pty>, buf: &mut [u8]) -> io::Result<usize> {
    match pty {
        Some(p) => p.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn write_some(pty: Option<&Pty>, bytes: &[u8]) -> io::Result<usize> {
    match pty {
        Some(p) => p.write(bytes).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_counts_frames_answers_and_garbage_as_they_are_written() {
        let mut out = Outbox::default();
        out.push(Kind::Frame, vec![1, 2, 3]);
        out.push(Kind::Garbage, vec![0; 10]);
        out.push(Kind::Answer, vec![9]);
        assert_eq!(out.frames_queued, 1);
        let w = out.consume(2);
        assert_eq!((w.frames, w.garbage), (0, 0));
        assert_eq!(out.front(), [3]);
        assert_eq!(out.consume(1).frames, 1);
        assert_eq!(out.consume(4).garbage, 4);
        assert_eq!(out.garbage_queued, 6);
        assert_eq!(out.clear(), 6, "unwritten garbage is owed again");
        assert!(out.is_empty());
        out.push(Kind::Answer, vec![9]);
        assert_eq!(out.consume(1).answers, 1);
    }
}
