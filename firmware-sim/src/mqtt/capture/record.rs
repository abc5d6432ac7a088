//! `nh-sim record`: subscribes to any broker and writes every message raw into a capture,
//! line by line, subscribing again after a lost connection.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rumqttc::{AsyncClient, ClientError, Event, Packet, Publish, QoS, SubAck, SubscribeFilter};
use serde::Serialize;
use tokio::time::Instant;

use super::{qos_of, Captured, Header, FORMAT};
use crate::clock::Clock;
use crate::mqtt::link::{client_id_or, client_options, Credentials};

/// What `record` subscribes to and when it stops.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub broker: String,
    pub filters: Vec<String>,
    /// Subscription QoS (what the broker delivers is at most this).
    pub qos: u8,
    pub out: PathBuf,
    /// Stop after this long (default: on the stop signal only).
    pub duration: Option<Duration>,
    /// Stop once this many messages were written.
    pub count: Option<u64>,
    pub client_id: Option<String>,
    pub credentials: Option<Credentials>,
    /// The clock of `t_ms` (a test clock: captures of a time-scaled run carry virtual times).
    pub clock: Clock,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordSummary {
    pub recorded: u64,
    pub binary: u64,
    /// Connections lost and made again (each followed by a new subscription).
    pub reconnects: u64,
    pub out: String,
}

/// Records until the duration, the count or `stop` ends it; calls `subscribed` once the broker
/// acknowledged the subscriptions.
pub async fn run_record(
    opts: RecordOptions,
    subscribed: impl FnOnce(),
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<RecordSummary> {
    if opts.filters.is_empty() {
        bail!("record needs at least one --filter");
    }
    let qos = qos_of(opts.qos)?;
    let id = client_id_or(opts.client_id.as_deref(), opts.credentials.as_ref(), || {
        format!("nh-sim-record-{}", std::process::id())
    });
    let mqtt = client_options(&opts.broker, id, opts.credentials.as_ref())?;
    let (client, mut eventloop) = AsyncClient::new(mqtt, 100);
    subscribe(&client, &opts.filters, qos).map_err(|e| anyhow!("subscribe: {e}"))?;
    let mut out = create_capture(&opts)?;
    let deadline = opts.duration.map(|d| Instant::now() + d);
    let mut subscribed = Some(subscribed);
    let (mut recorded, mut binary, mut reconnects) = (0u64, 0u64, 0u64);
    let mut connected_once = false;
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = &mut stop => break,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => break,
        };
        let event = match event {
            Ok(e) => e,
            // A recording of hours outlives a broker restart: reconnect (rumqttc does on the
            // next poll) and subscribe again. A broker never reached is an error at once.
            Err(e) if connected_once => {
                tracing::warn!(error = %e, broker = %opts.broker, "record: connection lost; reconnecting");
                reconnects += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = &mut stop => break,
                }
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("MQTT connection to {}", opts.broker)),
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                if connected_once {
                    subscribe(&client, &opts.filters, qos).map_err(|e| anyhow!("subscribe again: {e}"))?;
                }
                connected_once = true;
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                refuse_refused(&opts, &ack)?;
                if let Some(f) = subscribed.take() {
                    out.flush()?;
                    f();
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                binary += u64::from(write_message(&mut out, &opts.clock, &p)?);
                recorded += 1;
                if opts.count.is_some_and(|c| recorded >= c) {
                    break;
                }
            }
            _ => {}
        }
    }
    out.flush()?;
    let _ = client.try_disconnect();
    Ok(RecordSummary {
        recorded,
        binary,
        reconnects,
        out: opts.out.display().to_string(),
    })
}

/// Asks for every filter at `qos` (again after a reconnect: the session is clean).
fn subscribe(client: &AsyncClient, filters: &[String], qos: QoS) -> Result<(), ClientError> {
    client.try_subscribe_many(filters.iter().map(|f| SubscribeFilter::new(f.clone(), qos)))
}

/// Creates the capture file and writes its header (the start on the recording clock).
fn create_capture(opts: &RecordOptions) -> anyhow::Result<BufWriter<std::fs::File>> {
    let file =
        std::fs::File::create(&opts.out).with_context(|| format!("cannot create capture {}", opts.out.display()))?;
    let mut out = BufWriter::new(file);
    let header = Header {
        format: FORMAT.to_owned(),
        broker: opts.broker.clone(),
        filters: opts.filters.clone(),
        start_ms: opts.clock.now(),
    };
    writeln!(out, "{}", serde_json::to_string(&header)?)?;
    Ok(out)
}

/// Fails naming the filters the broker refused: a capture missing them would look complete.
fn refuse_refused(opts: &RecordOptions, ack: &SubAck) -> anyhow::Result<()> {
    let refused: Vec<&String> = ack
        .return_codes
        .iter()
        .zip(&opts.filters)
        .filter(|(c, _)| matches!(c, rumqttc::SubscribeReasonCode::Failure))
        .map(|(_, f)| f)
        .collect();
    if !refused.is_empty() {
        bail!("{} refused the subscription to {refused:?}", opts.broker);
    }
    Ok(())
}

/// Writes one received message, stamped on `clock`; true when its payload went to base64.
fn write_message(out: &mut impl Write, clock: &Clock, p: &Publish) -> anyhow::Result<bool> {
    let line = Captured::new(clock.now(), p.topic.clone(), p.qos as u8, p.retain, &p.payload);
    writeln!(out, "{}", serde_json::to_string(&line)?)?;
    // Line by line: a capture cut short (killed, disk full) keeps what came before.
    out.flush()?;
    Ok(line.payload_b64.is_some())
}
