//! `nh-sim replay`: publishes a capture again from one connection, with its original spacing
//! divided by a speed, as fast as the broker takes it, or laid onto a test clock.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use rumqttc::QoS;
use serde::Serialize;
use tokio::time::Instant;

use super::{qos_of, Capture};
use crate::clock::Clock;
use crate::mqtt::link::{client_id_or, Credentials, Link, LinkOptions};

/// How `replay` paces a capture.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub broker: String,
    pub file: PathBuf,
    /// Original spacing divided by this; `None`: as fast as the broker takes them.
    pub speed: Option<f64>,
    /// Times through the capture (at least 1).
    pub loops: u32,
    pub client_id: Option<String>,
    pub credentials: Option<Credentials>,
    /// How long to wait for the last acknowledgements.
    pub ack_wait: Duration,
    /// A test clock: the capture's timeline is laid onto it from its current time on (paced at
    /// its scale, `ts`/`last_seen`/`timestamp` in payloads shifted by the same amount), so that
    /// a gateway on the same clock sees the capture's times.
    pub clock: Option<Clock>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplaySummary {
    pub sent: u64,
    /// QoS 1 messages the broker acknowledged.
    pub acked: u64,
    pub qos1: u64,
    /// Messages handed over more than 100 ms after their slot.
    pub late: u64,
    pub failed: u64,
    pub seconds: f64,
}

/// A message later than this after its slot counts as late.
const LATE_AFTER: Duration = Duration::from_millis(100);

/// Publishes the capture in file order (so each topic keeps its order) from one connection.
pub async fn run_replay(opts: ReplayOptions) -> anyhow::Result<ReplaySummary> {
    let capture = Capture::read(&opts.file)?;
    if let Some(s) = opts.speed {
        if !(s > 0.0 && s.is_finite()) {
            bail!("--speed must be a positive number");
        }
    }
    let mut link_opts = LinkOptions::new(
        opts.broker.clone(),
        client_id_or(opts.client_id.as_deref(), opts.credentials.as_ref(), || {
            format!("nh-sim-replay-{}", std::process::id())
        }),
    );
    link_opts.credentials = opts.credentials.clone();
    let mut link = Link::connect(&link_opts).await?;
    let started = Instant::now();
    // The capture's timeline starts at its header's start (a quiet stretch before the first
    // message is kept), as in a scenario that replays it.
    let first_t = capture
        .messages
        .first()
        .map_or(capture.header.start_ms, |m| m.t_ms.min(capture.header.start_ms));
    let (speed, shift_ms) = match &opts.clock {
        Some(c) => (Some(c.scale), c.now() - first_t),
        None => (opts.speed, 0),
    };
    let span_ms = capture.messages.last().map_or(0, |m| m.t_ms) - first_t;
    let (mut sent, mut late, mut failed, mut qos1) = (0u64, 0u64, 0u64, 0u64);
    for round in 0..opts.loops.max(1) {
        for m in &capture.messages {
            if let Some(speed) = speed {
                let offset_ms = (i64::from(round)
                    .saturating_mul(span_ms.saturating_add(1))
                    .saturating_add(m.t_ms.saturating_sub(first_t)))
                .max(0) as f64
                    / speed;
                let due = started + Duration::from_secs_f64(offset_ms / 1000.0);
                let now = Instant::now();
                if now < due {
                    tokio::time::sleep_until(due).await;
                } else if now - due > LATE_AFTER {
                    late += 1;
                }
            }
            let qos = qos_of(m.qos.min(1))?;
            let mut payload = m.bytes()?;
            if shift_ms != 0 {
                let by = i64::from(round)
                    .saturating_mul(span_ms.saturating_add(1))
                    .saturating_add(shift_ms);
                payload = super::shift_times(&payload, by);
            }
            match link.publish_retained(&m.topic, qos, payload, m.retain).await {
                Ok(()) => {
                    sent += 1;
                    qos1 += u64::from(qos == QoS::AtLeastOnce);
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(topic = %m.topic, error = %e, "replay: publish failed");
                }
            }
        }
    }
    let acked = link.wait_acked(qos1, opts.ack_wait).await;
    let seconds = started.elapsed().as_secs_f64();
    link.close().await;
    Ok(ReplaySummary {
        sent,
        acked,
        qos1,
        late,
        failed,
        seconds,
    })
}
