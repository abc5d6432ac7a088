//! Fuzz harnesses for the gateway's decoders: one function per cargo-fuzz target, taking the raw
//! fuzz input, running the decoder on it and checking what must hold for any input. A panic, an
//! out-of-vocabulary reading or a broken invariant is a finding.
//!
//! The same file is compiled into `gateway/tests/fuzz_corpus.rs`, which replays every checked-in
//! seed under `corpus/<target>/` on the stable compiler, so the corpus stays meaningful without
//! libFuzzer. Each function returns how many readings, frames or answers the input gave, which
//! that test uses to see that a corpus reaches past the first checks.
//!
//! Input layouts (what a seed file holds):
//! - `canonical`, `zigbee2mqtt`, `json_map`: the MQTT payload, on the decoder's home topic.
//! - `mr60fda1`: one byte seeding how the stream is cut into reads, then the UART bytes.
//! - `modbus`: unit, function (even 03, odd 04), register count - 1 (mod 125), a chunking seed
//!   byte, then the bytes on the bus.
//! - `register_map`: one byte choosing the shipped map (low 7 bits) and, when its top bit is clear,
//!   sizing the registers to the map's count; then the registers, big-endian.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use nh_gateway::decode::json_map::Profile;
use nh_gateway::decode::modbus::{Function, ResponseScanner, Scan, MAX_READ_COUNT};
use nh_gateway::decode::mr60fda1::{self, Frame, FrameReader, MAX_DATA_LEN};
use nh_gateway::decode::register_map::{self, CompiledMap};
use nh_gateway::decode::{DecodeError, Decoder, Limits};
use nh_gateway::reading::{Reading, Value};
use nh_gateway::vocabulary;

pub const CANONICAL_TOPIC: &str = "nh/nh-hz-01/gas-k1/telemetry";
pub const ZIGBEE2MQTT_TOPIC: &str = "zigbee2mqtt/A-305 smoke";
pub const JSON_MAP_TOPIC: &str = "acme/up/24e124538b223213";

/// The json_map target's profile: the operator manual's LoRaWAN gas detector, which uses every
/// kind of mapping (RFC 3339 time, sequence number, scale, inverted boolean, enum table, a
/// pointer into an array); the one test profile of the repository.
pub const JSON_MAP_PROFILE: &str = include_str!("../../../tests/fixtures/acme-profile.toml");

/// Tight limits, so that the size and depth checks are reached by small inputs too.
const SMALL: Limits = Limits {
    max_payload_bytes: 256,
    max_json_depth: 3,
};

pub fn canonical(data: &[u8]) -> usize {
    let decoder = Decoder::Canonical {
        site: "nh-hz-01".into(),
    };
    message(&decoder, CANONICAL_TOPIC, data)
}

pub fn zigbee2mqtt(data: &[u8]) -> usize {
    message(&Decoder::Zigbee2Mqtt, ZIGBEE2MQTT_TOPIC, data)
}

pub fn json_map(data: &[u8]) -> usize {
    static DECODER: OnceLock<Decoder> = OnceLock::new();
    let decoder = DECODER.get_or_init(|| {
        let profile: Profile = toml::from_str(JSON_MAP_PROFILE).expect("the harness profile parses");
        assert_eq!(profile.validate(), Vec::<String>::new(), "the harness profile is valid");
        Decoder::JsonMap(std::sync::Arc::new(profile))
    });
    message(decoder, JSON_MAP_TOPIC, data)
}

/// One MQTT message through a decoder, with the default limits and with tight ones.
fn message(decoder: &Decoder, topic: &str, payload: &[u8]) -> usize {
    let full = decoder.decode(topic, payload, &Limits::default());
    check_readings(&full);
    let small = decoder.decode(topic, payload, &SMALL);
    check_readings(&small);
    // Tighter limits only ever turn an acceptance into a rejection, never change a reading.
    if let Ok(r) = &small {
        assert_eq!(Ok(r), full.as_ref(), "tight limits changed an accepted reading");
    }
    full.map(|r| r.len()).unwrap_or(0)
}

fn check_readings(r: &Result<Vec<Reading>, DecodeError>) {
    match r {
        Ok(readings) => {
            assert!(!readings.is_empty(), "Ok with no reading");
            for reading in readings {
                assert!(!reading.metrics.is_empty(), "a reading without metrics: {reading:?}");
                check_metrics(&reading.metrics);
                if let Some(ts) = reading.ts_ms {
                    assert!(ts >= 0, "negative device time {ts}");
                }
            }
        }
        Err(e) => assert!(!e.reason().is_empty()),
    }
}

fn check_metrics(metrics: &BTreeMap<String, Value>) {
    for (name, value) in metrics {
        assert_eq!(vocabulary::check(name, value), Ok(()), "{name} = {value:?}");
    }
}

/// A few lines of deterministic randomness for cutting streams into reads.
struct Cuts(u64);

impl Cuts {
    fn new(seed: u8) -> Self {
        Cuts(0x9E37_79B9_7F4A_7C15 ^ u64::from(seed).wrapping_mul(0x0100_0000_01B3))
    }

    /// The length of the next read: 1 to `max` bytes.
    fn next(&mut self, max: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        1 + (self.0 % max as u64) as usize
    }
}

/// The radar's UART stream, read whole and read in arbitrary pieces: the same frames either way.
pub fn mr60fda1(data: &[u8]) -> usize {
    let Some((&seed, stream)) = data.split_first() else {
        return 0;
    };
    let frames = |results: Vec<Result<Frame, mr60fda1::FrameError>>| -> Vec<Frame> {
        results
            .into_iter()
            .filter_map(|r| match r {
                Ok(f) => Some(f),
                Err(e) => {
                    assert!(!e.reason().is_empty());
                    None
                }
            })
            .collect()
    };
    let whole = frames(FrameReader::new().push(stream));

    let mut reader = FrameReader::new();
    let mut cuts = Cuts::new(seed);
    let mut rest = stream;
    let mut pieces = Vec::new();
    while !rest.is_empty() {
        let (read, more) = rest.split_at(cuts.next(64).min(rest.len()));
        pieces.extend(frames(reader.push(read)));
        rest = more;
    }
    // Empty reads happen too (a port read that timed out).
    pieces.extend(frames(reader.push(&[])));
    assert_eq!(whole, pieces, "frames depend on how the stream was cut");

    for f in &whole {
        assert!(f.data.len() <= MAX_DATA_LEN);
        // A frame found in the stream is a well-formed one: it encodes to bytes of the stream.
        let bytes = f.encode();
        assert!(stream.windows(bytes.len()).any(|w| w == bytes.as_slice()));
        if let Some(m) = mr60fda1::metrics(f) {
            check_metrics(&m);
        }
    }
    whole.len()
}

/// Bytes on an RS-485 bus, in arbitrary pieces, scanned for the answer of the unit asked.
pub fn modbus(data: &[u8]) -> usize {
    let [unit, function, count, seed, stream @ ..] = data else {
        return 0;
    };
    let function = if function % 2 == 0 {
        Function::Holding
    } else {
        Function::Input
    };
    let count = u16::from(*count) % MAX_READ_COUNT + 1;
    let mut scanner = ResponseScanner::new(*unit, function, count);
    let mut cuts = Cuts::new(*seed);
    let mut rest = stream;
    let mut answers = 0;
    while !rest.is_empty() {
        let (read, more) = rest.split_at(cuts.next(32).min(rest.len()));
        rest = more;
        match scanner.push(read) {
            Scan::Incomplete => {}
            Scan::Registers(regs) => {
                assert_eq!(regs.len(), usize::from(count), "an answer of the wrong size");
                answers += 1;
            }
            Scan::Exception(_) => answers += 1,
        }
    }
    answers
}

/// Registers through a shipped register map.
pub fn register_map(data: &[u8]) -> usize {
    static MAPS: OnceLock<Vec<CompiledMap>> = OnceLock::new();
    let maps = MAPS.get_or_init(|| {
        register_map::builtin()
            .iter()
            .map(|m| m.compile().expect("shipped maps compile"))
            .collect()
    });
    let Some((&choice, rest)) = data.split_first() else {
        return 0;
    };
    if maps.is_empty() {
        return 0;
    }
    let map = &maps[usize::from(choice & 0x7F) % maps.len()];
    let mut regs: Vec<u16> = rest
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]))
        .collect();
    if choice & 0x80 == 0 {
        regs.resize(usize::from(map.count), 0);
    }
    match map.decode(&regs) {
        Ok(metrics) => {
            check_metrics(&metrics);
            metrics.len()
        }
        Err(e) => {
            assert!(!e.reason().is_empty());
            0
        }
    }
}
