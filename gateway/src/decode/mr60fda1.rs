//! Seeed MR60FDA1 60 GHz fall radar, legacy UART protocol (Seeed's MR60FDA1 wiki; docs/devices.md):
//! `53 59 | control | command | len_hi len_lo | data | checksum | 54 43`, checksum = low byte of
//! the sum of every byte before it.
//!
//! A UART is a byte stream, not a message stream: [`FrameReader`] takes bytes as they come,
//! finds frames, resynchronizes after garbage, a bad checksum or a bad tail by dropping one byte
//! and searching again, and never panics on any input. [`metrics`] turns a report frame into
//! canonical metrics. Pure code: the serial port that feeds it is a source's business.

use std::collections::BTreeMap;

use crate::reading::Value;

pub const HEADER: [u8; 2] = [0x53, 0x59];
pub const TAIL: [u8; 2] = [0x54, 0x43];
/// Longest data part accepted; the radar's reports carry 1 byte, its longest answers a few dozen.
pub const MAX_DATA_LEN: usize = 256;
/// Header, control, command, length (2), checksum, tail (2).
const OVERHEAD: usize = 9;
/// Bytes buffered while waiting for the rest of a frame, at most.
const MAX_BUFFER: usize = 4 * (MAX_DATA_LEN + OVERHEAD);

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub control: u8,
    pub command: u8,
    pub data: Vec<u8>,
}

impl Frame {
    /// The frame's bytes on the wire (the simulator side and tests build frames with it).
    pub fn encode(&self) -> Vec<u8> {
        let len = self.data.len().min(u16::MAX as usize);
        let mut out = Vec::with_capacity(len + OVERHEAD);
        out.extend_from_slice(&HEADER);
        out.push(self.control);
        out.push(self.command);
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(&self.data[..len]);
        out.push(checksum(&out));
        out.extend_from_slice(&TAIL);
        out
    }
}

/// Low byte of the sum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// Why bytes were skipped while looking for frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("{0} bytes before a frame header skipped")]
    Garbage(usize),
    #[error("frame checksum mismatch")]
    BadChecksum,
    #[error("frame without its 54 43 tail")]
    BadTail,
    #[error("frame length {0} above the limit")]
    TooLong(usize),
}

impl FrameError {
    /// The reason label counted on `/metrics`.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Garbage(_) => "uart_garbage",
            FrameError::BadChecksum => "uart_bad_checksum",
            FrameError::BadTail => "uart_bad_tail",
            FrameError::TooLong(_) => "uart_too_long",
        }
    }
}

/// Finds frames in a byte stream.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn new() -> Self {
        FrameReader::default()
    }

    /// Adds bytes read from the port; returns the frames completed by them and what was skipped.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Result<Frame, FrameError>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            // Find the header; everything before it is garbage.
            let start = self.buf.windows(2).position(|w| w == HEADER);
            let skip = match start {
                Some(s) => s,
                // Keep a trailing 0x53: it may be the first half of a header.
                None => self.buf.len() - usize::from(self.buf.last() == Some(&HEADER[0])),
            };
            if skip > 0 {
                out.push(Err(FrameError::Garbage(skip)));
                self.buf.drain(..skip);
            }
            if start.is_none() || self.buf.len() < 6 {
                break;
            }
            let len = usize::from(u16::from_be_bytes([self.buf[4], self.buf[5]]));
            if len > MAX_DATA_LEN {
                out.push(Err(FrameError::TooLong(len)));
                self.buf.drain(..1);
                continue;
            }
            let total = len + OVERHEAD;
            if self.buf.len() < total {
                break;
            }
            let body_end = 6 + len;
            if self.buf[body_end] != checksum(&self.buf[..body_end]) {
                out.push(Err(FrameError::BadChecksum));
                self.buf.drain(..1);
                continue;
            }
            if self.buf[body_end + 1..total] != TAIL {
                out.push(Err(FrameError::BadTail));
                self.buf.drain(..1);
                continue;
            }
            let frame = Frame {
                control: self.buf[2],
                command: self.buf[3],
                data: self.buf[6..body_end].to_vec(),
            };
            self.buf.drain(..total);
            out.push(Ok(frame));
        }
        // A port spewing half-frames must not grow memory.
        if self.buf.len() > MAX_BUFFER {
            let excess = self.buf.len() - MAX_BUFFER;
            self.buf.drain(..excess);
            out.push(Err(FrameError::Garbage(excess)));
        }
        out
    }
}

/// Human presence report class.
pub const CONTROL_HUMAN: u8 = 0x80;
/// Fall report class.
pub const CONTROL_FALL: u8 = 0x83;

/// Canonical metrics of a report frame; `None` for frames that carry none (answers to
/// queries, heartbeats of other classes, movement distance).
///
/// - 0x80/0x01 presence -> `presence`; 0x80/0x02 motion -> `motion_state` none/stationary/moving;
///   0x80/0x03 body movement (1 Hz, also the liveness signal) -> `body_movement` (0-100);
/// - 0x83/0x01 fall -> `fall_state` none/fall;
/// - 0x83/0x05 stationary residency ("dwell": no activity after a sharp vertical change, the
///   vendor's sign of a fall with the person unable to move) -> `fall_state = suspected` while
///   it lasts (so R2 and its upgrade to R1 apply); its end carries no metric, the fall report
///   and motion frames say what happens next.
pub fn metrics(frame: &Frame) -> Option<BTreeMap<String, Value>> {
    let first = *frame.data.first()?;
    let (name, value) = match (frame.control, frame.command) {
        (CONTROL_HUMAN, 0x01) => ("presence", Value::Bool(first != 0)),
        (CONTROL_HUMAN, 0x02) => {
            let state = match first {
                0 => "none",
                1 => "stationary",
                2 => "moving",
                _ => return None,
            };
            ("motion_state", Value::Text(state.into()))
        }
        (CONTROL_HUMAN, 0x03) => ("body_movement", Value::Num(f64::from(first.min(100)))),
        (CONTROL_FALL, 0x01) => (
            "fall_state",
            Value::Text(if first == 1 { "fall" } else { "none" }.into()),
        ),
        (CONTROL_FALL, 0x05) if first == 1 => ("fall_state", Value::Text("suspected".into())),
        _ => return None,
    };
    Some(BTreeMap::from([(name.to_owned(), value)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(control: u8, command: u8, value: u8) -> Vec<u8> {
        Frame {
            control,
            command,
            data: vec![value],
        }
        .encode()
    }

    #[test]
    fn encodes_the_vendor_reset_frame_exactly() {
        // The reset frame of Seeed's MR60FDA1 documentation: 53 59 01 02 00 01 0F BF 54 43
        let f = Frame {
            control: 0x01,
            command: 0x02,
            data: vec![0x0F],
        };
        assert_eq!(
            f.encode(),
            vec![0x53, 0x59, 0x01, 0x02, 0x00, 0x01, 0x0F, 0xBF, 0x54, 0x43]
        );
        let mut r = FrameReader::new();
        assert_eq!(r.push(&f.encode()), vec![Ok(f)]);
    }

    #[test]
    fn reports_map_to_canonical_metrics() {
        let mut r = FrameReader::new();
        let mut bytes = report(0x80, 0x01, 1);
        bytes.extend(report(0x80, 0x02, 2));
        bytes.extend(report(0x80, 0x03, 37));
        bytes.extend(report(0x83, 0x01, 1));
        bytes.extend(report(0x83, 0x05, 1));
        let got: Vec<BTreeMap<String, Value>> = r
            .push(&bytes)
            .into_iter()
            .filter_map(|f| f.ok())
            .filter_map(|f| metrics(&f))
            .collect();
        let one = |k: &str, v: Value| BTreeMap::from([(k.to_owned(), v)]);
        assert_eq!(
            got,
            vec![
                one("presence", Value::Bool(true)),
                one("motion_state", Value::Text("moving".into())),
                one("body_movement", Value::Num(37.0)),
                one("fall_state", Value::Text("fall".into())),
                one("fall_state", Value::Text("suspected".into())),
            ]
        );
        for m in &got {
            for (k, v) in m {
                assert!(crate::vocabulary::check(k, v).is_ok(), "{k}={v:?}");
            }
        }
    }

    #[test]
    fn resynchronizes_after_garbage_and_a_bad_checksum() {
        let mut r = FrameReader::new();
        let mut bytes = vec![0x00, 0xFF, 0x53, 0x12];
        let mut bad = report(0x83, 0x01, 1);
        bad[7] ^= 0x55; // corrupt the checksum
        bytes.extend(bad);
        bytes.extend(report(0x80, 0x01, 0));
        let out = r.push(&bytes);
        assert!(out.iter().any(|e| e == &Err(FrameError::BadChecksum)));
        assert!(out.iter().any(|e| matches!(e, Err(FrameError::Garbage(_)))));
        let frames: Vec<Frame> = out.into_iter().filter_map(Result::ok).collect();
        assert_eq!(
            frames,
            vec![Frame {
                control: 0x80,
                command: 0x01,
                data: vec![0]
            }]
        );
    }

    #[test]
    fn frames_split_across_reads_are_joined() {
        let bytes = report(0x80, 0x03, 50);
        let mut r = FrameReader::new();
        for b in &bytes[..bytes.len() - 1] {
            assert!(
                r.push(&[*b]).iter().all(|x| x.is_err()),
                "no frame before the last byte"
            );
        }
        assert_eq!(r.push(&bytes[bytes.len() - 1..]).len(), 1);
    }

    #[test]
    fn absurd_lengths_and_endless_noise_stay_bounded() {
        let mut r = FrameReader::new();
        let out = r.push(&[0x53, 0x59, 0x80, 0x01, 0xFF, 0xFF, 0x00]);
        assert!(out.contains(&Err(FrameError::TooLong(0xFFFF))));
        for _ in 0..1000 {
            r.push(&[0x53, 0x59, 0x80, 0x01, 0x00, 0xF0]);
        }
        assert!(r.buf.len() <= MAX_BUFFER);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_good_frames_survive_noise() {
        // xorshift: no dependency, reproducible.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut r = FrameReader::new();
        let mut found = 0;
        for round in 0..2000 {
            let n = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..n).map(|_| (next() & 0xFF) as u8).collect();
            if round % 10 == 0 {
                bytes.extend(report(0x80, 0x03, (round % 100) as u8));
            }
            for f in r.push(&bytes).into_iter().flatten() {
                let _ = metrics(&f);
                if f.control == 0x80 && f.command == 0x03 {
                    found += 1;
                }
            }
        }
        // Noise may swallow a frame now and then (a random 53 59 just before it), rarely.
        assert!(found >= 190, "only {found} of 200 frames found");
    }
}
