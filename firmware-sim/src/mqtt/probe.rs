//! The alert-latency probe (`nh-sim alert-probe`): sets off life-safety devices (smoke alarms
//! going off, or SOS presses) spread evenly over a span, and times each one from its MQTT publish
//! to the first alert naming that device on `nh/{site}/alerts`.
//!
//! What it measures is publish -> alert received: an upper bound of the gateway's own "reading
//! received -> alert published", since it adds the broker's way in and out and this process's
//! scheduling. The alert's `raised_at` (the gateway's clock, ms) gives the part up to the alert's
//! creation, reported as `raise_latency`.
//!
//! Each device is set off once: an alert stays active (deduplicated per rule and device), so a
//! second alarm from the same device would raise nothing new. Give the probe fresh devices for
//! every run (`--first`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, Context};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS, SubAck};
use serde::Serialize;
use tokio::time::Instant;

use crate::latency::Percentiles;
use crate::mqtt::link::{client_id_or, client_options, Credentials};

/// Which reading sets a device off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `{"metrics":{"smoke":true}}` (a smoke alarm going off: rule R11).
    Smoke,
    /// `{"metrics":{"sos":true}}` (an SOS press).
    Sos,
}

impl Trigger {
    pub fn parse(s: &str) -> Option<Trigger> {
        match s {
            "smoke" => Some(Trigger::Smoke),
            "sos" => Some(Trigger::Sos),
            _ => None,
        }
    }

    fn payload(self) -> &'static str {
        match self {
            Trigger::Smoke => r#"{"metrics":{"smoke":true}}"#,
            Trigger::Sos => r#"{"metrics":{"sos":true}}"#,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub broker: String,
    pub site: String,
    /// Prefix of the two connections' ids (`<id>-sub`, `<id>-pub`); default
    /// `nh-sim-probe-<pid>`. Without it and with `credentials`, the publisher's id is the
    /// username (a gateway admits an identity under its own name only); with
    /// `watch_credentials`, the subscriber's id is their username.
    pub client_id: Option<String>,
    /// Registered life-safety devices to set off, one reading each, in this order.
    pub devices: Vec<String>,
    pub trigger: Trigger,
    /// The readings are spread evenly over this span.
    pub span: Duration,
    /// How long to wait for the last alerts after the last reading.
    pub grace: Duration,
    /// The publisher's login (a bridge identity).
    pub credentials: Option<Credentials>,
    /// The alerts subscriber's login (a consumer identity). A gateway admits an identity on one
    /// connection only, so the subscriber never borrows `credentials`: without this it connects
    /// without a login.
    pub watch_credentials: Option<Credentials>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeSummary {
    pub sent: u64,
    pub received: u64,
    /// MQTT publish (this process) -> alert received (this process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Percentiles>,
    /// MQTT publish (wall clock, ms) -> the alert's `raised_at` (the gateway's clock, ms): the
    /// broker's way in plus the gateway up to the alert's creation; millisecond resolution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raise_latency: Option<Percentiles>,
    /// Devices whose alert never came (at most 20 named).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// First alert per device: when it arrived and its `raised_at`.
type Arrivals = Arc<Mutex<HashMap<String, (Instant, i64)>>>;

pub async fn run_probe(opts: ProbeOptions) -> anyhow::Result<ProbeSummary> {
    if !crate::model::registry::is_valid_id(&opts.site) {
        anyhow::bail!("site `{}` is not a valid id", opts.site);
    }
    let id = opts
        .client_id
        .clone()
        .unwrap_or_else(|| format!("nh-sim-probe-{}", std::process::id()));
    // Two connections, as a control room and a device are two clients. On one connection the
    // broker's PubAck for the reading would still be unacknowledged at TCP level when the alert
    // follows it, and Nagle's algorithm on the broker's socket (neither rumqttd nor Mosquitto
    // sets TCP_NODELAY by default) would hold the alert until the probe's delayed ACK: about
    // 40 ms that no real subscriber pays.
    let subscriber_id = client_id_or(None, opts.watch_credentials.as_ref(), || format!("{id}-sub"));
    let (client, eventloop) = connect(&opts.broker, subscriber_id, opts.watch_credentials.as_ref())?;
    let publisher_id = match (&opts.client_id, &opts.credentials) {
        (None, Some(c)) => c.username.clone(),
        _ => format!("{id}-pub"),
    };
    let (publisher, publisher_loop) = connect(&opts.broker, publisher_id, opts.credentials.as_ref())?;
    let publisher_driver = tokio::spawn(drive_publisher(publisher_loop));
    let arrivals: Arrivals = Arc::default();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel::<bool>();
    let driver = tokio::spawn(collect_alerts(eventloop, arrivals.clone(), subscribed_tx));
    let result = async {
        subscribe(&opts, &client, subscribed_rx).await?;
        let sent = set_off(&opts, &publisher).await?;
        wait_for_alerts(&arrivals, &sent, Instant::now() + opts.grace).await;
        Ok(summarize(&arrivals, &sent))
    }
    .await;
    let _ = client.try_disconnect();
    let _ = publisher.try_disconnect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    driver.abort();
    publisher_driver.abort();
    result
}

/// A reading sent: the device, and when (this process's clock, and the wall clock in ms).
type Sent = Vec<(String, (Instant, i64))>;

/// Polls the publisher's connection (its PubAcks), retrying after an error.
async fn drive_publisher(mut publisher_loop: EventLoop) {
    loop {
        if publisher_loop.poll().await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Polls the subscriber's connection: tells `subscribed` on the SUBACK whether the broker granted
/// the subscription, and notes the first alert of each device in `arrivals`.
async fn collect_alerts(mut eventloop: EventLoop, seen: Arrivals, subscribed: tokio::sync::oneshot::Sender<bool>) {
    let mut subscribed_tx = Some(subscribed);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if let Some(t) = subscribed_tx.take() {
                    let _ = t.send(granted(&ack));
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let now = Instant::now();
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
                    continue;
                };
                let (Some(device), raised_at) = (v["device"].as_str(), v["raised_at"].as_i64().unwrap_or(0)) else {
                    continue;
                };
                seen.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(device.to_owned())
                    .or_insert((now, raised_at));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "alert probe: MQTT connection lost");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Whether a SUBACK grants every filter asked for.
fn granted(ack: &SubAck) -> bool {
    !ack.return_codes
        .iter()
        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
}

/// Subscribes to the site's alerts and waits for the SUBACK; a refused subscription is an error.
async fn subscribe(
    opts: &ProbeOptions,
    client: &AsyncClient,
    subscribed: tokio::sync::oneshot::Receiver<bool>,
) -> anyhow::Result<()> {
    let filter = format!("nh/{}/alerts", opts.site);
    client
        .subscribe(filter.clone(), QoS::AtLeastOnce)
        .await
        .map_err(|e| anyhow!("subscribe: {e}"))?;
    let granted = tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .context("no SUBACK within 10 s")?
        .context("the MQTT connection ended")?;
    if !granted {
        anyhow::bail!(
            "{} refused the subscription to {filter}: the subscriber's identity may not read it",
            opts.broker
        );
    }
    Ok(())
}

/// Sets off every device once, spread evenly over the span.
async fn set_off(opts: &ProbeOptions, publisher: &AsyncClient) -> anyhow::Result<Sent> {
    let every = opts.span / (opts.devices.len() as u32).max(1);
    let start = Instant::now();
    let mut sent = Vec::with_capacity(opts.devices.len());
    for (i, device) in opts.devices.iter().enumerate() {
        tokio::time::sleep_until(start + every * i as u32).await;
        let topic = format!("nh/{}/{device}/telemetry", opts.site);
        let at = (Instant::now(), wall_ms());
        publisher
            .publish(topic, QoS::AtLeastOnce, false, opts.trigger.payload())
            .await
            .map_err(|e| anyhow!("publish: {e}"))?;
        sent.push((device.clone(), at));
    }
    Ok(sent)
}

/// Waits until every device set off has its alert, or the deadline passed.
async fn wait_for_alerts(arrivals: &Arrivals, sent: &Sent, deadline: Instant) {
    loop {
        let done = {
            let m = arrivals.lock().unwrap_or_else(PoisonError::into_inner);
            sent.iter().all(|(d, _)| m.contains_key(d))
        };
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The latencies of the alerts that came, and the devices whose alert did not.
fn summarize(arrivals: &Arrivals, sent: &Sent) -> ProbeSummary {
    let m = arrivals.lock().unwrap_or_else(PoisonError::into_inner);
    let (mut latency, mut raise, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    for (device, (at, at_ms)) in sent {
        match m.get(device) {
            Some((arrived, raised_at)) => {
                latency.push(arrived.duration_since(*at).as_secs_f64() * 1000.0);
                raise.push((raised_at - at_ms) as f64);
            }
            None if missing.len() < 20 => missing.push(device.clone()),
            None => {}
        }
    }
    ProbeSummary {
        sent: sent.len() as u64,
        received: latency.len() as u64,
        latency: Percentiles::from_ms(latency),
        raise_latency: Percentiles::from_ms(raise),
        missing,
    }
}

fn connect(broker: &str, id: String, credentials: Option<&Credentials>) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let mqtt = client_options(broker, id, credentials)?;
    let (client, mut eventloop) = AsyncClient::new(mqtt, 1_000);
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    Ok((client, eventloop))
}
