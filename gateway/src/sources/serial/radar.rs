//! A Seeed MR60FDA1 radar on a UART: bytes in, frames found by `decode::mr60fda1::FrameReader`
//! (which resynchronizes after garbage and caps the frame length), reports journaled as readings
//! of the radar's device. The 1 Hz body-movement frames keep the device alive for the offline
//! rule; presence, motion, fall and dwell come on change.

use std::sync::atomic::Ordering;

use tokio::io::AsyncReadExt;
use tokio_serial::SerialStream;

use super::{LinkError, SerialSource};
use crate::decode::mr60fda1::{self, FrameReader};
use crate::reading::{DeviceKey, Reading};

pub struct Reader {
    device: String,
    frames: FrameReader,
}

impl Reader {
    pub fn new(src: &SerialSource) -> Self {
        Reader {
            device: src.port.radar_id(),
            frames: FrameReader::new(),
        }
    }

    /// Reads until the port fails.
    pub async fn serve(&mut self, src: &SerialSource, port: &mut SerialStream) -> Result<(), LinkError> {
        // A partial frame from before a reconnect is not continued by the new stream.
        self.frames = FrameReader::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = port.read(&mut buf).await?;
            if n == 0 {
                return Err(LinkError::Closed);
            }
            let recv_ms = src.clock.now_ms();
            let mut readings = Vec::new();
            for result in self.frames.push(&buf[..n]) {
                match result {
                    Ok(frame) => {
                        src.stats.frames.fetch_add(1, Ordering::Relaxed);
                        match mr60fda1::metrics(&frame) {
                            Some(metrics) => readings.push(Reading {
                                device: DeviceKey::Id(self.device.clone()),
                                ts_ms: None,
                                seq: None,
                                metrics,
                            }),
                            // Answers to queries and reports we do not use.
                            None => src.stats.frame_error("uart_unused_frame"),
                        }
                    }
                    Err(e) => src.stats.frame_error(e.reason()),
                }
            }
            src.ingest(readings, recv_ms).await?;
        }
    }
}
