//! Modbus RTU framing for the master side: read requests (function 03/04), the CRC, and a
//! response scanner that finds the answer of the unit that was asked in whatever bytes arrive.
//!
//! Pure code: the poller in `sources::serial::modbus` owns the port and the timing. A response
//! is framed by its length and CRC rather than by the 3.5-character silence of the spec, which a
//! USB adapter or a pseudo-terminal does not preserve. A late answer of another unit (after a
//! timeout) is recognised and skipped instead of being taken for the next answer.

/// CRC-16/MODBUS (polynomial 0xA001 reflected, initial value 0xFFFF); sent low byte first.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for b in bytes {
        crc ^= u16::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xA001 } else { crc >> 1 };
        }
    }
    crc
}

/// Read functions a register map may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// 03: read holding registers.
    Holding = 3,
    /// 04: read input registers.
    Input = 4,
}

/// Most registers one read request may ask for (the spec's limit, 125).
pub const MAX_READ_COUNT: u16 = 125;

/// The 8 bytes of a read request.
pub fn read_request(unit: u8, function: Function, start: u16, count: u16) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[0] = unit;
    out[1] = function as u8;
    out[2..4].copy_from_slice(&start.to_be_bytes());
    out[4..6].copy_from_slice(&count.to_be_bytes());
    let crc = crc16(&out[..6]);
    out[6..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// What the scanner made of the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// Not yet a complete answer from the unit that was asked.
    Incomplete,
    /// The registers asked for.
    Registers(Vec<u16>),
    /// The unit answered with an exception code (01 illegal function, 02 illegal address...).
    Exception(u8),
}

/// Looks for the answer of `unit` to a read of `count` registers with `function` in a stream
/// of bytes. Counts what it had to skip.
#[derive(Debug)]
pub struct ResponseScanner {
    unit: u8,
    function: u8,
    count: u16,
    buf: Vec<u8>,
    /// Frames whose CRC did not match (a corrupted answer, or noise that looked like a frame).
    pub crc_errors: u32,
    /// Well-formed frames of another unit or function (a late answer to an earlier request).
    pub foreign_frames: u32,
    /// Frames of this unit with the wrong byte count for the request.
    pub bad_length: u32,
    /// Bytes dropped while resynchronizing.
    pub skipped_bytes: u32,
}

/// Longest RTU frame (the spec's 256 bytes); the buffer never holds much more.
const MAX_FRAME: usize = 256;

impl ResponseScanner {
    pub fn new(unit: u8, function: Function, count: u16) -> Self {
        ResponseScanner {
            unit,
            function: function as u8,
            count,
            buf: Vec::with_capacity(MAX_FRAME),
            crc_errors: 0,
            foreign_frames: 0,
            bad_length: 0,
            skipped_bytes: 0,
        }
    }

    /// Feeds bytes; returns the answer once a complete one for this request is found.
    pub fn push(&mut self, bytes: &[u8]) -> Scan {
        self.buf.extend_from_slice(bytes);
        loop {
            match self.frame_len() {
                None => {
                    // Bound the buffer: without a frame start in reach, old bytes go.
                    if self.buf.len() > 2 * MAX_FRAME {
                        let drop = self.buf.len() - MAX_FRAME;
                        self.skip(drop);
                    }
                    return Scan::Incomplete;
                }
                Some(len) if len > MAX_FRAME => {
                    self.skip(1);
                    continue;
                }
                Some(len) if self.buf.len() < len => {
                    // Noise can look like the start of a long frame; an answer behind it is
                    // complete and CRC-valid on its own. Look for one before waiting on.
                    match self.answer_ahead() {
                        Some(offset) => {
                            self.skip(offset);
                            continue;
                        }
                        None => return Scan::Incomplete,
                    }
                }
                Some(len) => {
                    let (body, crc) = self.buf[..len].split_at(len - 2);
                    if crc16(body).to_le_bytes() != [crc[0], crc[1]] {
                        self.crc_errors += 1;
                        self.skip(1);
                        continue;
                    }
                    let (unit, fc) = (self.buf[0], self.buf[1]);
                    if unit != self.unit || (fc & 0x7F) != self.function {
                        self.foreign_frames += 1;
                        self.buf.drain(..len);
                        continue;
                    }
                    if fc & 0x80 != 0 {
                        let code = self.buf[2];
                        self.buf.drain(..len);
                        return Scan::Exception(code);
                    }
                    let byte_count = usize::from(self.buf[2]);
                    if byte_count != 2 * usize::from(self.count) {
                        self.bad_length += 1;
                        self.buf.drain(..len);
                        continue;
                    }
                    let regs = self.buf[3..3 + byte_count]
                        .chunks_exact(2)
                        .map(|w| u16::from_be_bytes([w[0], w[1]]))
                        .collect();
                    self.buf.drain(..len);
                    return Scan::Registers(regs);
                }
            }
        }
    }

    /// The length of the frame starting at the buffer's first byte, once knowable.
    fn frame_len(&self) -> Option<usize> {
        let fc = *self.buf.get(1)?;
        if fc & 0x80 != 0 {
            // unit, fc|0x80, exception code, crc
            return Some(5);
        }
        match fc {
            // unit, fc, byte count, data, crc
            0x01..=0x04 => Some(5 + usize::from(*self.buf.get(2)?)),
            // Echo of a write: unit, fc, address, value, crc
            0x05 | 0x06 | 0x0F | 0x10 => Some(8),
            // Anything else is not a frame start: resynchronize byte by byte.
            _ => Some(MAX_FRAME + 1),
        }
    }

    /// Offset of a complete, CRC-valid frame of the awaited unit and function after the start.
    fn answer_ahead(&self) -> Option<usize> {
        (1..self.buf.len().saturating_sub(4)).find(|&off| {
            let b = &self.buf[off..];
            if b[0] != self.unit || (b[1] & 0x7F) != self.function {
                return false;
            }
            let len = if b[1] & 0x80 != 0 { 5 } else { 5 + usize::from(b[2]) };
            b.len() >= len && crc16(&b[..len - 2]).to_le_bytes() == [b[len - 2], b[len - 1]]
        })
    }

    fn skip(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.buf.drain(..n);
        self.skipped_bytes = self.skipped_bytes.saturating_add(n as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(unit: u8, fc: u8, regs: &[u16]) -> Vec<u8> {
        let mut out = vec![unit, fc, (regs.len() * 2) as u8];
        for r in regs {
            out.extend_from_slice(&r.to_be_bytes());
        }
        let crc = crc16(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn crc_matches_the_spec_examples() {
        // 01 03 00 00 00 01 -> 84 0A; RAEGuard 3 manual: 01 03 00 08 00 02 -> 45 C9.
        assert_eq!(read_request(1, Function::Holding, 0, 1)[6..], [0x84, 0x0A]);
        assert_eq!(
            read_request(1, Function::Holding, 8, 2),
            [0x01, 0x03, 0x00, 0x08, 0x00, 0x02, 0x45, 0xC9]
        );
    }

    #[test]
    fn finds_the_answer_in_pieces() {
        let bytes = answer(3, 3, &[120, 1, 1, 0]);
        let mut s = ResponseScanner::new(3, Function::Holding, 4);
        for b in &bytes[..bytes.len() - 1] {
            assert_eq!(s.push(&[*b]), Scan::Incomplete);
        }
        assert_eq!(s.push(&bytes[bytes.len() - 1..]), Scan::Registers(vec![120, 1, 1, 0]));
    }

    #[test]
    fn skips_a_late_answer_of_another_unit_and_noise() {
        let mut stream = vec![0x00, 0xFF, 0x13];
        stream.extend(answer(2, 3, &[7, 7]));
        stream.extend(answer(3, 3, &[9, 9]));
        let mut s = ResponseScanner::new(3, Function::Holding, 2);
        assert_eq!(s.push(&stream), Scan::Registers(vec![9, 9]));
        assert_eq!(s.foreign_frames, 1);
        assert!(s.skipped_bytes >= 3);
    }

    #[test]
    fn counts_a_corrupted_crc_and_reports_exceptions() {
        let mut bad = answer(1, 4, &[1]);
        let n = bad.len();
        bad[n - 1] ^= 0x55;
        let mut s = ResponseScanner::new(1, Function::Input, 1);
        assert_eq!(s.push(&bad), Scan::Incomplete);
        assert!(s.crc_errors >= 1);

        // The rest of the corrupted frame looks like the start of a long one; the exception
        // behind it is found all the same.
        let mut ex = vec![1, 0x84, 0x02];
        let crc = crc16(&ex);
        ex.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(s.push(&ex), Scan::Exception(2));

        // Noise that announces a 200-byte frame does not hide the answer behind it.
        let mut s = ResponseScanner::new(1, Function::Input, 1);
        let mut stream = vec![0x07, 0x03, 200, 1, 2];
        stream.extend(answer(1, 4, &[42]));
        assert_eq!(s.push(&stream), Scan::Registers(vec![42]));
    }

    #[test]
    fn wrong_byte_count_is_not_an_answer() {
        let mut s = ResponseScanner::new(1, Function::Holding, 2);
        assert_eq!(s.push(&answer(1, 3, &[1, 2, 3])), Scan::Incomplete);
        assert_eq!(s.bad_length, 1);
    }

    #[test]
    fn any_bytes_never_panic_and_stay_bounded() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut s = ResponseScanner::new(1, Function::Holding, 7);
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let chunk = x.to_le_bytes();
            let _ = s.push(&chunk[..(x % 8) as usize]);
            assert!(s.buf.len() <= 2 * MAX_FRAME + 8);
        }
    }
}
