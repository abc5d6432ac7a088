//! Modbus RTU, the slave side: CRC, finding request frames in the bytes a master wrote, and the
//! answers to FC 03 / FC 04. Pure functions; the bus task owns the timing.

/// Function code: read holding registers.
pub const READ_HOLDING: u8 = 0x03;
/// Function code: read input registers.
pub const READ_INPUT: u8 = 0x04;

/// Exception: the function code is not supported.
pub const ILLEGAL_FUNCTION: u8 = 0x01;
/// Exception: the address range is outside the device's registers.
pub const ILLEGAL_DATA_ADDRESS: u8 = 0x02;
/// Exception: the quantity is outside 1-125.
pub const ILLEGAL_DATA_VALUE: u8 = 0x03;

/// The most registers one FC 03/04 request may ask for (the answer must fit 256 bytes).
pub const MAX_READ_COUNT: u16 = 125;

/// Longest RTU frame.
pub const MAX_FRAME: usize = 256;

/// CRC-16/MODBUS: reflected polynomial 0xA001, initial value 0xFFFF. On the wire the low byte
/// goes first.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xA001 } else { crc >> 1 };
        }
    }
    crc
}

/// `frame` followed by its CRC, low byte first.
pub fn with_crc(mut frame: Vec<u8>) -> Vec<u8> {
    let crc = crc16(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame
}

/// True if the last two bytes of `frame` are the CRC of the rest.
pub fn crc_ok(frame: &[u8]) -> bool {
    frame.len() >= 4 && {
        let (body, crc) = frame.split_at(frame.len() - 2);
        crc16(body).to_le_bytes() == [crc[0], crc[1]]
    }
}

/// A request frame, CRC checked and removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub unit: u8,
    pub function: u8,
    /// The PDU after the function code.
    pub data: Vec<u8>,
}

/// What the start of the receive buffer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// A request and the number of bytes it used.
    Frame(Request, usize),
    /// Not enough bytes yet.
    NeedMore,
    /// No request starts at the first byte: drop this many bytes and look again.
    Skip(usize),
}

/// The length of a request with this function code, from the bytes seen so far; `None` when the
/// code has no fixed layout (found by looking for a matching CRC instead).
fn request_len(buf: &[u8]) -> Option<Result<usize, ()>> {
    let need = |index: usize, base: usize| match buf.get(index) {
        Some(&n) => Ok(base + usize::from(n)),
        None => Err(()),
    };
    Some(match buf.get(1)? {
        0x01..=0x06 | 0x08 => Ok(8),
        0x07 | 0x0B | 0x0C | 0x11 => Ok(4),
        // unit fc addr(2) qty(2) bytecount data crc(2)
        0x0F | 0x10 => need(6, 9),
        // unit fc bytecount data crc(2)
        0x14 | 0x15 => need(2, 5),
        0x16 => Ok(10),
        // unit fc raddr(2) rqty(2) waddr(2) wqty(2) bytecount data crc(2)
        0x17 => need(10, 13),
        0x18 => Ok(6),
        _ => return None,
    })
}

/// Looks for a request at the start of `buf`. A frame whose CRC fails is not a frame: the caller
/// drops one byte and looks again (resynchronisation).
pub fn scan(buf: &[u8]) -> Scan {
    // Waiting for the rest of a frame that starts at the first byte: unless a whole request of a
    // known layout already follows, in which case the first byte was line noise and waiting
    // would only hold that request up.
    let need_more = || {
        if (1..buf.len()).any(|i| known_frame_at(&buf[i..])) {
            Scan::Skip(1)
        } else {
            Scan::NeedMore
        }
    };
    if buf.len() < 2 {
        return Scan::NeedMore;
    }
    let len = match request_len(buf) {
        Some(Ok(len)) => len,
        Some(Err(())) => return need_more(),
        None => {
            // A function code without a fixed layout: the shortest prefix with a valid CRC.
            let upto = buf.len().min(MAX_FRAME);
            return match (4..=upto).find(|&l| crc_ok(&buf[..l])) {
                Some(l) => Scan::Frame(request(&buf[..l]), l),
                None if buf.len() >= MAX_FRAME => Scan::Skip(1),
                None => need_more(),
            };
        }
    };
    if len > MAX_FRAME {
        return Scan::Skip(1);
    }
    if buf.len() < len {
        return need_more();
    }
    if crc_ok(&buf[..len]) {
        Scan::Frame(request(&buf[..len]), len)
    } else {
        Scan::Skip(1)
    }
}

/// True if `buf` starts with a whole request of a fixed-layout function code and a valid CRC.
fn known_frame_at(buf: &[u8]) -> bool {
    matches!(request_len(buf), Some(Ok(len)) if len <= buf.len() && crc_ok(&buf[..len]))
}

fn request(frame: &[u8]) -> Request {
    Request {
        unit: frame[0],
        function: frame[1],
        data: frame[2..frame.len() - 2].to_vec(),
    }
}

/// An exception answer: `unit fc|0x80 code crc`.
pub fn exception(unit: u8, function: u8, code: u8) -> Vec<u8> {
    with_crc(vec![unit, function | 0x80, code])
}

/// The answer of a unit with these registers (offset 0 first) to a request addressed to it:
/// FC 03 and FC 04 read the same registers; every other function is illegal.
pub fn answer(request: &Request, registers: &[u16]) -> Vec<u8> {
    let (unit, fc) = (request.unit, request.function);
    if fc != READ_HOLDING && fc != READ_INPUT {
        return exception(unit, fc, ILLEGAL_FUNCTION);
    }
    let [a_hi, a_lo, c_hi, c_lo] = match request.data.as_slice() {
        &[a, b, c, d] => [a, b, c, d],
        _ => return exception(unit, fc, ILLEGAL_DATA_VALUE),
    };
    let address = usize::from(u16::from_be_bytes([a_hi, a_lo]));
    let count = u16::from_be_bytes([c_hi, c_lo]);
    if count == 0 || count > MAX_READ_COUNT {
        return exception(unit, fc, ILLEGAL_DATA_VALUE);
    }
    let Some(values) = registers.get(address..address + usize::from(count)) else {
        return exception(unit, fc, ILLEGAL_DATA_ADDRESS);
    };
    let mut out = Vec::with_capacity(5 + values.len() * 2);
    out.extend_from_slice(&[unit, fc, (count * 2) as u8]);
    for v in values {
        out.extend_from_slice(&v.to_be_bytes());
    }
    with_crc(out)
}

/// A read request (for tests and tools): `unit fc addr count crc`.
pub fn read_request(unit: u8, function: u8, address: u16, count: u16) -> Vec<u8> {
    let mut out = vec![unit, function];
    out.extend_from_slice(&address.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    with_crc(out)
}

/// Spoils the CRC of an answer (a line error the master must detect).
pub fn corrupt_crc(frame: &mut [u8]) {
    if let Some(last) = frame.last_mut() {
        *last ^= 0xFF;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_reference_vector() {
        // 01 03 00 00 00 01 -> CRC 0x0A84, sent 84 0A.
        assert_eq!(crc16(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x01]), 0x0A84);
        assert_eq!(
            read_request(1, READ_HOLDING, 0, 1),
            vec![0x01, 0x03, 0x00, 0x00, 0x00, 0x01, 0x84, 0x0A]
        );
        // RAEGuard 3 manual: 01 03 00 08 00 02 45 C9.
        assert_eq!(read_request(1, READ_HOLDING, 8, 2)[6..], [0x45, 0xC9]);
        assert!(crc_ok(&[0x01, 0x03, 0x00, 0x08, 0x00, 0x02, 0x45, 0xC9]));
        assert!(!crc_ok(&[0x01, 0x03, 0x00, 0x08, 0x00, 0x02, 0xC9, 0x45]));
    }

    #[test]
    fn scan_finds_a_request_after_garbage_by_dropping_bytes() {
        // 0x03 at offset 1 looks like FC 03 (bad CRC); 0x55 at offset 2 is an unknown code.
        // 0x10 at offset 1 of the last one announces a long write (byte count 0xFF at offset 6).
        for noise in [
            &[0xAA, 0x03, 0x55][..],
            &[0x01, 0x03],
            &[0x00, 0x66, 0x13, 0x10],
            &[0x01, 0x10, 0, 0, 0, 0x7F, 0xFF],
        ] {
            let mut buf = noise.to_vec();
            buf.extend(read_request(7, READ_INPUT, 2, 3));
            let mut skipped = 0;
            loop {
                match scan(&buf[skipped..]) {
                    Scan::Skip(n) => skipped += n,
                    Scan::Frame(req, used) => {
                        assert_eq!(skipped, noise.len(), "{noise:02X?}");
                        assert_eq!(used, 8);
                        assert_eq!(req.unit, 7);
                        assert_eq!(req.function, READ_INPUT);
                        assert_eq!(req.data, vec![0, 2, 0, 3]);
                        break;
                    }
                    Scan::NeedMore => panic!("stalled at {skipped} after {noise:02X?}"),
                }
            }
        }
    }

    #[test]
    fn scan_waits_for_a_whole_frame() {
        let req = read_request(1, READ_HOLDING, 0, 1);
        assert_eq!(scan(&req[..5]), Scan::NeedMore);
        // Write multiple registers: the length comes from the byte count.
        let w = with_crc(vec![1, 0x10, 0, 0, 0, 1, 2, 0x12, 0x34]);
        assert_eq!(scan(&w[..6]), Scan::NeedMore);
        assert_eq!(scan(&w[..10]), Scan::NeedMore);
        assert!(matches!(scan(&w), Scan::Frame(r, 11) if r.function == 0x10));
        // An unknown function code is found by its CRC.
        let odd = with_crc(vec![1, 0x2B, 0x0E, 0x01, 0x00]);
        assert!(matches!(scan(&odd), Scan::Frame(r, 7) if r.function == 0x2B));
    }

    #[test]
    fn answers_read_the_same_registers_for_fc03_and_fc04() {
        let regs = [0x0102, 0x0304, 0x0506];
        for fc in [READ_HOLDING, READ_INPUT] {
            let req = Request {
                unit: 9,
                function: fc,
                data: vec![0, 1, 0, 2],
            };
            let a = answer(&req, &regs);
            assert_eq!(a[..7], [9, fc, 4, 0x03, 0x04, 0x05, 0x06]);
            assert!(crc_ok(&a));
        }
    }

    #[test]
    fn out_of_range_reads_and_other_functions_are_exceptions() {
        let regs = [0u16; 7];
        let read = |address: u16, count: u16| Request {
            unit: 1,
            function: READ_HOLDING,
            data: [address.to_be_bytes(), count.to_be_bytes()].concat(),
        };
        assert_eq!(answer(&read(5, 3), &regs), exception(1, 3, ILLEGAL_DATA_ADDRESS));
        assert_eq!(answer(&read(5, 3), &regs)[..3], [0x01, 0x83, 0x02]);
        assert_eq!(answer(&read(0, 7), &regs).len(), 5 + 14);
        assert_eq!(answer(&read(0, 0), &regs), exception(1, 3, ILLEGAL_DATA_VALUE));
        assert_eq!(answer(&read(0xFFFF, 2), &regs), exception(1, 3, ILLEGAL_DATA_ADDRESS));
        let write = Request {
            unit: 1,
            function: 0x06,
            data: vec![0, 0, 0, 1],
        };
        assert_eq!(answer(&write, &regs)[..3], [0x01, 0x86, 0x01]);
    }

    #[test]
    fn a_corrupted_crc_fails_the_check() {
        let mut a = answer(
            &Request {
                unit: 1,
                function: READ_HOLDING,
                data: vec![0, 0, 0, 1],
            },
            &[42],
        );
        assert!(crc_ok(&a));
        corrupt_crc(&mut a);
        assert!(!crc_ok(&a));
    }
}
