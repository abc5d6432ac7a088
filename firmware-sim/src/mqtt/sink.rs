//! A plain subscriber (`nh-sim sink`): subscribes to a filter, lets rumqttc acknowledge each
//! QoS 1 message as it arrives, counts, and times each reading from its `ts` stamp (the load's
//! send time, ms since the epoch) to its arrival. What it achieves is the broker's pass-through
//! limit on this machine with one publisher and one subscriber, the figure the gateway's own
//! throughput is measured against (the gateway is this subscriber plus decode, journal commit
//! and acknowledgement after the commit).

use std::time::Duration;

use anyhow::{anyhow, Context};
use rumqttc::{AsyncClient, Event, Packet};
use serde::Serialize;
use tokio::time::Instant;

use crate::latency::Percentiles;
use crate::mqtt::fleet::qos_of;
use crate::mqtt::link::{client_id_or, client_options, Credentials};

/// What to subscribe to and when to stop.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    pub broker: String,
    pub client_id: Option<String>,
    pub filter: String,
    pub qos: u8,
    /// Stop once this many messages arrived.
    pub count: Option<u64>,
    /// Stop after this long in any case.
    pub max_wait: Duration,
    /// Stop once nothing arrived for this long after the first message.
    pub idle: Duration,
    pub credentials: Option<Credentials>,
}

/// What the sink received.
#[derive(Debug, Clone, Serialize)]
pub struct SinkSummary {
    pub received: u64,
    pub qos: u8,
    /// Messages per second from the first arrival to the last.
    pub rate: f64,
    /// Wall-clock ms since the epoch of the first and last arrival.
    pub first_ms: i64,
    pub last_ms: i64,
    /// Messages that carried a `ts` (or Zigbee2MQTT `last_seen`) stamp.
    pub stamped: u64,
    /// From the stamp (the publisher's send time) to the arrival, both on this machine's clock;
    /// millisecond resolution, as the stamp has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2e_latency: Option<Percentiles>,
    /// True when `count` was given and reached.
    pub complete: bool,
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The integer after `"key":` in a JSON text, without parsing the whole document (the sink must
/// keep up with the broker, not with serde).
pub fn stamp(payload: &[u8]) -> Option<i64> {
    for key in [&b"\"ts\":"[..], &b"\"last_seen\":"[..]] {
        if let Some(at) = payload.windows(key.len()).position(|w| w == key) {
            let digits = &payload[at + key.len()..];
            let digits = &digits[..digits.iter().take_while(|b| b.is_ascii_digit()).count()];
            return std::str::from_utf8(digits).ok()?.parse().ok();
        }
    }
    None
}

/// Subscribes, calls `subscribed` once the broker acknowledged the subscription, and counts
/// until a stop condition holds.
pub async fn run_sink(opts: SinkOptions, subscribed: impl FnOnce()) -> anyhow::Result<SinkSummary> {
    let qos = qos_of(opts.qos)?;
    let id = client_id_or(opts.client_id.as_deref(), opts.credentials.as_ref(), || {
        format!("nh-sim-sink-{}", std::process::id())
    });
    let mqtt = client_options(&opts.broker, id, opts.credentials.as_ref())?;
    let (client, mut eventloop) = AsyncClient::new(mqtt, 100);
    // As the gateway's subscriber does: acknowledgements must not wait for Nagle's algorithm.
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    client
        .try_subscribe(opts.filter.clone(), qos)
        .map_err(|e| anyhow!("subscribe: {e}"))?;
    let started = Instant::now();
    let mut subscribed = Some(subscribed);
    let (mut received, mut stamped) = (0u64, 0u64);
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let (mut first_ms, mut last_ms) = (0i64, 0i64);
    let mut latency_ms = Vec::new();
    loop {
        let idle_until = last.map(|l| l + opts.idle);
        let deadline = match idle_until {
            Some(i) => i.min(started + opts.max_wait),
            None => started + opts.max_wait,
        };
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = tokio::time::sleep_until(deadline) => break,
        };
        match event.with_context(|| format!("MQTT connection to {}", opts.broker))? {
            Event::Incoming(Packet::SubAck(_)) => {
                if let Some(f) = subscribed.take() {
                    f();
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                let now = Instant::now();
                let now_ms = wall_ms();
                received += 1;
                if first.is_none() {
                    first = Some(now);
                    first_ms = now_ms;
                }
                last = Some(now);
                last_ms = now_ms;
                if let Some(ts) = stamp(&p.payload) {
                    stamped += 1;
                    latency_ms.push((now_ms - ts) as f64);
                }
                if opts.count.is_some_and(|c| received >= c) {
                    break;
                }
            }
            _ => {}
        }
    }
    let _ = client.try_disconnect();
    let span = match (first, last) {
        (Some(f), Some(l)) => (l - f).as_secs_f64(),
        _ => 0.0,
    };
    Ok(SinkSummary {
        received,
        qos: opts.qos,
        rate: if span > 0.0 {
            ((received.saturating_sub(1)) as f64 / span).round()
        } else {
            0.0
        },
        first_ms,
        last_ms,
        stamped,
        e2e_latency: Percentiles::from_ms(latency_ms),
        complete: opts.count.is_some_and(|c| received >= c),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_found_without_parsing() {
        assert_eq!(
            stamp(br#"{"ts":1700000000123,"seq":4,"metrics":{}}"#),
            Some(1_700_000_000_123)
        );
        assert_eq!(stamp(br#"{"occupancy":true,"last_seen":17}"#), Some(17));
        assert_eq!(stamp(br#"{"metrics":{"smoke":true}}"#), None);
        assert_eq!(stamp(br#"{"ts":"#), None);
    }
}
