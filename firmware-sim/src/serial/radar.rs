//! A Seeed MR60FDA1 fall radar (docs/devices.md): frame encoding, the script played over time, the
//! reports it owes (state reports on change, the body-movement parameter once per second) and
//! seeded garbage bursts. Time is script time in seconds (0 = the start).

use super::config::{Motion, RadarStep};
use super::DeviceEvent;
use crate::rng::Rng;

/// Frame header.
pub const HEAD: [u8; 2] = [0x53, 0x59];
/// Frame tail.
pub const TAIL: [u8; 2] = [0x54, 0x43];

/// Control byte of human reports.
pub const HUMAN: u8 = 0x80;
/// Control byte of fall reports.
pub const FALL: u8 = 0x83;
/// 0x80 0x01: presence, 0 nobody / 1 someone.
pub const CMD_PRESENCE: u8 = 0x01;
/// 0x80 0x02: motion, 0 none / 1 stationary / 2 moving.
pub const CMD_MOTION: u8 = 0x02;
/// 0x80 0x03: body-movement parameter 0-100, once per second.
pub const CMD_BODY_MOVEMENT: u8 = 0x03;
/// 0x83 0x01: fall state.
pub const CMD_FALL: u8 = 0x01;
/// 0x83 0x05: stationary residency (dwell).
pub const CMD_DWELL: u8 = 0x05;

/// Bytes around the data of a frame.
pub const FRAME_OVERHEAD: usize = 9;

/// A frame: `53 59 control command len_hi len_lo data checksum 54 43`, the checksum being the low
/// byte of the sum of every byte before it.
pub fn frame(control: u8, command: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_OVERHEAD + data.len());
    out.extend_from_slice(&HEAD);
    out.extend_from_slice(&[control, command]);
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    out.push(checksum(&out));
    out.extend_from_slice(&TAIL);
    out
}

/// Low byte of the sum.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// Splits a byte stream into the valid frames it holds (checksum and tail checked), skipping
/// anything else: what a reader that resynchronises sees. For tests and tools.
pub fn parse_frames(bytes: &[u8]) -> (Vec<(u8, u8, Vec<u8>)>, usize) {
    let mut frames = Vec::new();
    let mut i = 0;
    let mut skipped = 0;
    while i + FRAME_OVERHEAD <= bytes.len() {
        if bytes[i..i + 2] != HEAD {
            i += 1;
            skipped += 1;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([bytes[i + 4], bytes[i + 5]]));
        let end = i + FRAME_OVERHEAD + len;
        if end <= bytes.len() && bytes[end - 2..end] == TAIL && checksum(&bytes[i..i + 6 + len]) == bytes[i + 6 + len] {
            frames.push((bytes[i + 2], bytes[i + 3], bytes[i + 6..i + 6 + len].to_vec()));
            i = end;
        } else {
            i += 1;
            skipped += 1;
        }
    }
    (frames, skipped)
}

/// What the radar reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    presence: bool,
    motion: Motion,
    fall: bool,
    dwell: bool,
}

/// A garbage burst in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Garbage {
    /// Bytes not handed out yet.
    pub remaining: u64,
    pub chunk: usize,
    /// A chunk was handed out already (the next one is preceded by a frame).
    pub started: bool,
}

/// One simulated radar.
#[derive(Debug, Clone)]
pub struct Radar {
    script: Vec<RadarStep>,
    next_step: usize,
    state: State,
    /// The state as last reported; `None` for a field never reported.
    reported: [Option<u8>; 4],
    body_movement: u8,
    silent: bool,
    garbage: Option<Garbage>,
    rng: Rng,
}

impl Radar {
    /// The radar before its script starts: nobody there, no motion, no fall.
    pub fn new(script: Vec<RadarStep>, rng: Rng) -> Radar {
        Radar {
            script,
            next_step: 0,
            state: State {
                presence: false,
                motion: Motion::None,
                fall: false,
                dwell: false,
            },
            reported: [None; 4],
            body_movement: 0,
            silent: false,
            garbage: None,
            rng,
        }
    }

    pub fn is_silent(&self) -> bool {
        self.silent
    }

    /// Plays the script up to script time `t`.
    pub fn advance(&mut self, t: f64, events: &mut Vec<DeviceEvent>) {
        while let Some(step) = self.script.get(self.next_step) {
            if step.at_s > t {
                break;
            }
            let step = step.clone();
            self.next_step += 1;
            self.apply(&step, events);
        }
    }

    fn apply(&mut self, step: &RadarStep, events: &mut Vec<DeviceEvent>) {
        let mut say = |what: String| events.push(DeviceEvent { unit: None, what });
        let flag = |v: bool, on: &str, off: &str| if v { on.to_owned() } else { off.to_owned() };
        if let Some(v) = step.presence.filter(|v| *v != self.state.presence) {
            self.state.presence = v;
            say(flag(v, "presence", "presence_clear"));
        }
        if let Some(v) = step.motion.filter(|v| *v != self.state.motion) {
            self.state.motion = v;
            say(format!("motion_{}", v.as_str()));
        }
        if let Some(v) = step.fall.filter(|v| *v != self.state.fall) {
            self.state.fall = v;
            say(flag(v, "fall", "fall_clear"));
        }
        if let Some(v) = step.dwell.filter(|v| *v != self.state.dwell) {
            self.state.dwell = v;
            say(flag(v, "dwell", "dwell_clear"));
        }
        if let Some(v) = step.body_movement {
            self.body_movement = v;
            say(format!("body_movement value={v}"));
        }
        if let Some(v) = step.silent.filter(|v| *v != self.silent) {
            self.silent = v;
            say(flag(v, "silent", "silent_end"));
        }
        if let Some((bytes, chunk)) = step.garbage {
            let g = self.garbage.get_or_insert(Garbage {
                remaining: 0,
                chunk,
                started: false,
            });
            g.remaining += bytes;
            g.chunk = chunk;
            say(format!("garbage_begin bytes={bytes} chunk={chunk}"));
        }
    }

    /// The reports owed for state that differs from what was last reported (everything, the
    /// first time). Nothing while silent: the radar catches up when it speaks again.
    pub fn state_frames(&mut self) -> Vec<Vec<u8>> {
        if self.silent {
            return Vec::new();
        }
        let s = self.state;
        let fields = [
            (HUMAN, CMD_PRESENCE, u8::from(s.presence)),
            (HUMAN, CMD_MOTION, s.motion.code()),
            (FALL, CMD_FALL, u8::from(s.fall)),
            (FALL, CMD_DWELL, u8::from(s.dwell)),
        ];
        let mut out = Vec::new();
        for (i, (control, command, value)) in fields.into_iter().enumerate() {
            if self.reported[i] != Some(value) {
                self.reported[i] = Some(value);
                out.push(frame(control, command, &[value]));
            }
        }
        out
    }

    /// The once-per-second body-movement report.
    pub fn body_movement_frame(&self) -> Vec<u8> {
        frame(HUMAN, CMD_BODY_MOVEMENT, &[self.body_movement])
    }

    /// True while a garbage burst has bytes left to hand out.
    pub fn garbage_pending(&self) -> bool {
        self.garbage.is_some_and(|g| g.remaining > 0)
    }

    /// The next piece of the garbage burst: a body-movement frame (between chunks) and a chunk of
    /// seeded random bytes. `None` when there is no burst or the radar is silent.
    pub fn next_garbage(&mut self) -> Option<(Option<Vec<u8>>, Vec<u8>)> {
        if self.silent {
            return None;
        }
        let frame = self.body_movement_frame();
        let g = self.garbage.as_mut().filter(|g| g.remaining > 0)?;
        let n = g.remaining.min(g.chunk as u64) as usize;
        let separator = g.started.then_some(frame);
        g.started = true;
        g.remaining -= n as u64;
        let mut chunk = vec![0u8; n];
        for block in chunk.chunks_mut(8) {
            let bytes = self.rng.next_u64().to_le_bytes();
            block.copy_from_slice(&bytes[..block.len()]);
        }
        Some((separator, chunk))
    }

    /// Garbage handed out but never written (the pty went away): it is owed again.
    pub fn return_garbage(&mut self, bytes: u64) {
        if bytes > 0 {
            if let Some(g) = self.garbage.as_mut() {
                g.remaining += bytes;
            }
        }
    }

    /// Ends the burst once every byte is out; true if it just ended.
    pub fn finish_garbage(&mut self) -> bool {
        if self.garbage.is_some_and(|g| g.remaining == 0) {
            self.garbage = None;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(at_s: f64) -> RadarStep {
        RadarStep {
            at_s,
            ..RadarStep::default()
        }
    }

    #[test]
    fn reset_frame_matches_the_documented_bytes() {
        assert_eq!(
            frame(0x01, 0x02, &[0x0F]),
            vec![0x53, 0x59, 0x01, 0x02, 0x00, 0x01, 0x0F, 0xBF, 0x54, 0x43]
        );
        assert_eq!(frame(0x02, 0xA1, &[0x0F])[7], 0x5F);
        assert_eq!(frame(0x02, 0xA4, &[0x0F])[7], 0x62);
    }

    #[test]
    fn checksum_wraps_to_the_low_byte() {
        let f = frame(FALL, CMD_FALL, &[0xFF, 0xFF, 0xFF]);
        let sum: u32 = f[..f.len() - 3].iter().map(|b| u32::from(*b)).sum();
        assert_eq!(u32::from(f[f.len() - 3]), sum & 0xFF);
        let (frames, skipped) = parse_frames(&[&[1, 2, 0x53][..], &f, &[0x53, 0x59, 9]].concat());
        assert_eq!(frames, vec![(FALL, CMD_FALL, vec![0xFF, 0xFF, 0xFF])]);
        assert_eq!(skipped, 3);
    }

    #[test]
    fn state_is_reported_once_then_only_on_change() {
        let mut r = Radar::new(
            vec![
                RadarStep {
                    presence: Some(true),
                    motion: Some(Motion::Moving),
                    body_movement: Some(40),
                    ..step(0.0)
                },
                RadarStep {
                    fall: Some(true),
                    presence: Some(true),
                    ..step(8.0)
                },
            ],
            Rng::new(1),
        );
        let mut ev = Vec::new();
        r.advance(0.0, &mut ev);
        let first = r.state_frames();
        assert_eq!(
            first,
            vec![
                frame(HUMAN, CMD_PRESENCE, &[1]),
                frame(HUMAN, CMD_MOTION, &[2]),
                frame(FALL, CMD_FALL, &[0]),
                frame(FALL, CMD_DWELL, &[0]),
            ]
        );
        assert_eq!(r.body_movement_frame(), frame(HUMAN, CMD_BODY_MOVEMENT, &[40]));
        r.advance(7.9, &mut ev);
        assert!(r.state_frames().is_empty());
        r.advance(8.0, &mut ev);
        assert_eq!(r.state_frames(), vec![frame(FALL, CMD_FALL, &[1])]);
        let whats: Vec<&str> = ev.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(whats, ["presence", "motion_moving", "body_movement value=40", "fall"]);
    }

    #[test]
    fn a_silent_radar_reports_nothing_then_catches_up() {
        let mut r = Radar::new(
            vec![
                RadarStep {
                    silent: Some(true),
                    ..step(1.0)
                },
                RadarStep {
                    fall: Some(true),
                    ..step(2.0)
                },
                RadarStep {
                    silent: Some(false),
                    ..step(3.0)
                },
            ],
            Rng::new(1),
        );
        let mut ev = Vec::new();
        r.advance(0.0, &mut ev);
        assert_eq!(r.state_frames().len(), 4);
        r.advance(2.5, &mut ev);
        assert!(r.is_silent());
        assert!(r.state_frames().is_empty());
        r.advance(3.0, &mut ev);
        assert_eq!(r.state_frames(), vec![frame(FALL, CMD_FALL, &[1])]);
    }

    #[test]
    fn garbage_comes_in_chunks_with_a_frame_between_them_and_is_seeded() {
        let script = vec![RadarStep {
            garbage: Some((10_000, 4096)),
            ..step(1.0)
        }];
        let mut r = Radar::new(script.clone(), Rng::new(7));
        r.advance(1.0, &mut Vec::new());
        let mut sizes = Vec::new();
        let mut separators = 0;
        let mut all = Vec::new();
        while let Some((sep, chunk)) = r.next_garbage() {
            separators += usize::from(sep.is_some());
            sizes.push(chunk.len());
            all.extend(chunk);
        }
        assert_eq!(sizes, [4096, 4096, 1808]);
        assert_eq!(separators, 2);
        assert!(r.finish_garbage());
        assert!(!r.garbage_pending());
        let mut again = Radar::new(script, Rng::new(7));
        again.advance(1.0, &mut Vec::new());
        let first = again.next_garbage().map(|(_, c)| c).unwrap_or_default();
        assert_eq!(first[..], all[..4096], "same seed, same bytes");
    }
}
