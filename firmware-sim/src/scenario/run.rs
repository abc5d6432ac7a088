//! Running a scenario: the message plan (baseline fleet + scripted steps), the dry run, and the
//! runner against a broker that collects alerts and judges them.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;
use serde_json::{json, Value as Json};

use super::expect::{evaluate, Evaluation, ReceivedAlert};
use super::{time, Action, Scenario, Step};
use crate::clock::{system_now_ms, Clock};
use crate::metrics::{round2, Value};
use crate::model::behaviour::Report;
use crate::model::schedule::{Message, Overlay, Stream};
use crate::mqtt::link::{client_id_or, parse_broker, Credentials, Link, LinkOptions, FIRST_CONNECT_TIMEOUT};

/// A step as the overlay holds it: (absolute from, absolute until, action, pulse done).
type ActiveStep = (i64, Option<i64>, Action, bool);

/// The scripted steps laid over the baseline.
struct Script {
    /// Per device: its steps.
    steps: HashMap<usize, Vec<ActiveStep>>,
}

fn put(report: &mut Report, name: &'static str, value: Value) {
    match report.metrics.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = value,
        None => report.metrics.push((name, value)),
    }
}

impl Overlay for Script {
    fn apply(&mut self, device_index: usize, ts: i64, report: &mut Report) -> bool {
        let Some(steps) = self.steps.get_mut(&device_index) else {
            return true;
        };
        for (from, until, action, done) in steps.iter_mut() {
            if ts < *from || until.is_some_and(|u| ts >= u) {
                continue;
            }
            match action {
                Action::Silent => return false,
                Action::Set(values) => {
                    for (name, v) in values.iter() {
                        put(report, name, v.clone());
                    }
                }
                Action::Pulse(values) => {
                    if !*done {
                        *done = true;
                        for (name, v) in values.iter() {
                            put(report, name, v.clone());
                        }
                    }
                }
                Action::Ramp {
                    metric,
                    from: lo,
                    to,
                    over_ms,
                } => {
                    let f = ((ts - *from) as f64 / *over_ms as f64).clamp(0.0, 1.0);
                    put(report, metric, Value::Num(round2(*lo + (*to - *lo) * f)));
                }
            }
        }
        true
    }
}

/// What a scenario publishes, from a virtual start.
pub struct Plan {
    pub start_ms: i64,
    pub stream: Stream,
    /// Named events: (name, device index, absolute virtual time, publishes a report then?).
    pub events: Vec<NamedEvent>,
}

fn step_until(step: &Step, start_ms: i64) -> Option<i64> {
    step.for_ms.map(|f| start_ms + step.at_ms + f)
}

/// Builds the message stream of `sc` from `start_ms`; `end_ms` bounds the extra reports of steps
/// that hold to the end (the stream itself is endless: the runner decides when to stop).
pub fn plan(sc: &Scenario, start_ms: i64, seconds: Option<u64>) -> Plan {
    let reg = &sc.registry;
    let end_ms = start_ms + 1000 * seconds.unwrap_or(sc.duration_s).max(sc.duration_s) as i64 + 3_600_000;
    let mut steps: HashMap<usize, Vec<ActiveStep>> = HashMap::new();
    let mut extra: Vec<(i64, usize)> = Vec::new();
    let mut events = Vec::new();
    for s in &sc.timeline {
        let from = start_ms + s.at_ms;
        let until = step_until(s, start_ms);
        let interval_ms = reg.devices[s.device_index].interval_s as i64 * 1000;
        steps
            .entry(s.device_index)
            .or_default()
            .push((from, until, s.action.clone(), false));
        let reports_now = !matches!(s.action, Action::Silent);
        if reports_now {
            extra.push((from, s.device_index));
        }
        if let Some(u) = until {
            // The device reports its return to normal (or, after a silence, that it is back).
            extra.push((u, s.device_index));
        }
        let every = match (&s.action, s.every_ms) {
            (_, Some(e)) => Some(e),
            (Action::Ramp { over_ms, .. }, None) => Some((over_ms / 12).clamp(1000, interval_ms.max(1000))),
            _ => None,
        };
        if let (Some(every), false) = (every, matches!(s.action, Action::Silent)) {
            let stop = until.unwrap_or(end_ms).min(end_ms);
            let mut t = from + every;
            while t < stop {
                extra.push((t, s.device_index));
                t += every;
            }
        }
        if let Some(name) = &s.name {
            events.push((name.clone(), s.device_index, from, reports_now));
        }
    }
    let regular: Vec<bool> = (0..reg.devices.len())
        .map(|i| sc.baseline || steps.contains_key(&i))
        .collect();
    let stream =
        Stream::new(reg, sc.seed, start_ms, seconds, false).scripted(Box::new(Script { steps }), extra, &regular);
    Plan {
        start_ms,
        stream,
        events,
    }
}

/// A named event: (name, device index, absolute virtual time, publishes a report then?).
pub type NamedEvent = (String, usize, i64, bool);

/// The messages of a run, in time order.
type Outgoings = Box<dyn Iterator<Item = Outgoing> + Send>;

/// One message the runner publishes: simulated, or taken from a capture.
struct Outgoing {
    /// Virtual time it is due at (the device time of a simulated message).
    ts: i64,
    /// The simulated device (a capture's messages have none).
    device_index: Option<usize>,
    device_id: Option<Arc<str>>,
    topic: Arc<str>,
    payload: Vec<u8>,
    retain: bool,
}

impl From<Message> for Outgoing {
    fn from(m: Message) -> Outgoing {
        Outgoing {
            ts: m.ts,
            device_index: Some(m.device_index),
            device_id: Some(m.device_id),
            topic: m.topic,
            payload: m.payload,
            retain: false,
        }
    }
}

/// What the runner publishes from `start_ms`: the capture laid onto it (each message at its
/// offset from the capture's start, the times in its payload moved by the same amount), else the
/// plan's simulated stream. Named events come from the timeline only.
fn outgoing(sc: &Scenario, start_ms: i64, seconds: Option<u64>) -> anyhow::Result<(Outgoings, Vec<NamedEvent>)> {
    let Some((path, capture)) = &sc.capture else {
        let Plan { stream, events, .. } = plan(sc, start_ms, seconds);
        return Ok((Box::new(stream.map(Outgoing::from)), events));
    };
    let shift = start_ms - capture.header.start_ms;
    let mut messages = Vec::with_capacity(capture.messages.len());
    for m in &capture.messages {
        let bytes = m.bytes().with_context(|| path.display().to_string())?;
        messages.push(Outgoing {
            ts: m.t_ms + shift,
            device_index: None,
            device_id: None,
            topic: Arc::from(m.topic.as_str()),
            payload: crate::mqtt::capture::shift_times(&bytes, shift),
            retain: m.retain,
        });
    }
    // File order is arrival order; a stable sort keeps it among equal times (per-topic order).
    messages.sort_by_key(|m| m.ts);
    Ok((Box::new(messages.into_iter()), Vec::new()))
}

/// The virtual start of a scenario without a test clock: the file's `start`, else now.
fn default_start(sc: &Scenario) -> i64 {
    sc.start_ms.unwrap_or_else(system_now_ms)
}

/// What `--info` and the first line of `--dry-run` print: how to run the scenario.
pub fn info(sc: &Scenario) -> Json {
    let real_s = sc.duration_s as f64 / sc.time_scale;
    json!({
        "scenario": sc.name,
        "file": sc.path.as_ref().map(|p| p.display().to_string()),
        "description": sc.description,
        "site": sc.registry.site,
        "registry": absolute(&sc.registry_path),
        "gateway_registry": absolute(sc.gateway_registry_path.as_ref().unwrap_or(&sc.registry_path)),
        "rules": sc.rules_path.as_ref().map(|p| absolute(p)),
        "start_ms": sc.start_ms,
        "start": sc.start_ms.map(|s| time::format_rfc3339(s, sc.utc_offset_min)),
        "duration_s": sc.duration_s,
        "time_scale": sc.time_scale,
        "real_duration_s": (real_s * 10.0).round() / 10.0,
        "baseline": sc.baseline,
        "capture": sc.capture.as_ref().map(|(p, _)| absolute(p)),
        "capture_messages": sc.capture.as_ref().map(|(_, c)| c.messages.len()),
        "nothing_else": sc.nothing_else,
        "steps": sc.timeline.len(),
        "expectations": sc.expect.len(),
        "shortest_interval_s": sc.registry.devices.iter().map(|d| d.interval_s).min(),
    })
}

fn absolute(p: &std::path::Path) -> String {
    std::fs::canonicalize(p)
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// The message timeline without a broker: one JSON line per message after an `info` line.
/// `scripted_only` keeps the messages of devices the timeline names.
pub fn dry_run(sc: &Scenario, scripted_only: bool, out: &mut dyn std::io::Write) -> anyhow::Result<u64> {
    let start_ms = default_start(sc);
    writeln!(out, "{}", info(sc))?;
    let scripted: Vec<usize> = sc.timeline.iter().map(|s| s.device_index).collect();
    let (messages, _) = outgoing(sc, start_ms, Some(sc.duration_s))?;
    let mut n = 0;
    for m in messages {
        let is_scripted = m.device_index.is_some_and(|i| scripted.contains(&i));
        if scripted_only && !is_scripted {
            continue;
        }
        let payload: Json = serde_json::from_slice(&m.payload).unwrap_or(Json::Null);
        let line = json!({
            "t_s": (m.ts - start_ms) as f64 / 1000.0,
            "time": time::format_rfc3339(m.ts, sc.utc_offset_min),
            "device": m.device_id.as_deref(),
            "topic": &*m.topic,
            "scripted": is_scripted,
            "payload": payload,
        });
        writeln!(out, "{line}")?;
        n += 1;
    }
    Ok(n)
}

/// How to run a scenario against a broker.
#[derive(Debug, Clone)]
pub struct ScenarioOptions {
    pub broker: String,
    /// The shared test clock, when given (its start is the scenario's virtual start); `None`: the
    /// system clock at scale 1 (a gateway on the real clock).
    pub clock: Option<Clock>,
    /// The publisher's client id (default: the username with `credentials`, else
    /// `nh-sim-scenario-<pid>`); the alerts subscriber's is the username of
    /// `watch_credentials`, else `<client_id or nh-sim-scenario-<pid>>-alerts`.
    pub client_id: Option<String>,
    /// The publisher's login (a bridge identity).
    pub credentials: Option<Credentials>,
    /// The alerts subscriber's login (a consumer identity; its username is its client id). A
    /// gateway admits an identity on one connection only, so the subscriber never borrows
    /// `credentials`: without this it connects without a login.
    pub watch_credentials: Option<Credentials>,
    pub connect_timeout: Duration,
    /// Real seconds waited for alerts in flight; default the scenario's `grace_s`.
    pub grace_s: Option<f64>,
}

impl ScenarioOptions {
    pub fn new(broker: impl Into<String>) -> ScenarioOptions {
        ScenarioOptions {
            broker: broker.into(),
            clock: None,
            client_id: None,
            credentials: None,
            watch_credentials: None,
            connect_timeout: FIRST_CONNECT_TIMEOUT,
            grace_s: None,
        }
    }
}

/// The JSON report of a run (`nh-sim scenario` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub file: Option<PathBuf>,
    pub pass: bool,
    pub site: String,
    pub start_ms: i64,
    pub time_scale: f64,
    pub duration_s: u64,
    /// Virtual seconds the run observed.
    pub observed_s: f64,
    pub elapsed_real_s: f64,
    pub published: u64,
    pub acked: u64,
    /// Virtual ms the publisher fell behind its schedule at worst (a stalled machine).
    pub max_publish_lag_ms: i64,
    /// Named events and when they happened (virtual seconds after start).
    pub events: HashMap<String, f64>,
    pub alerts_received: usize,
    #[serde(flatten)]
    pub evaluation: Evaluation,
}

type Inbox = Arc<Mutex<Vec<ReceivedAlert>>>;

/// Subscribes to the alerts topic and waits for the SubAck; alerts are pushed into the inbox with
/// their virtual arrival time. Re-subscribes after a reconnect.
async fn subscribe_alerts(
    opts: &ScenarioOptions,
    site: &str,
    clock: Clock,
    inbox: Inbox,
) -> anyhow::Result<(AsyncClient, tokio::task::JoinHandle<()>)> {
    let (host, port) = parse_broker(&opts.broker)?;
    let id = client_id_or(None, opts.watch_credentials.as_ref(), || {
        format!(
            "{}-alerts",
            opts.client_id
                .clone()
                .unwrap_or_else(|| format!("nh-sim-scenario-{}", std::process::id()))
        )
    });
    let mut mqtt = MqttOptions::new(id, host, port);
    mqtt.set_keep_alive(Duration::from_secs(15))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20);
    if let Some(c) = &opts.watch_credentials {
        mqtt.set_credentials(c.username.clone(), c.password.clone());
    }
    let (client, mut eventloop) = AsyncClient::new(mqtt, 100);
    let topic = format!("nh/{site}/alerts");
    // None until the first SubAck, then whether it granted the filter.
    let (subacked_tx, mut subacked) = tokio::sync::watch::channel(None::<bool>);
    let sub = client.clone();
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(100);
                    // Awaiting a client call in the event loop task deadlocks on a full channel: try_.
                    if let Err(e) = sub.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                        tracing::error!(error = %e, "cannot subscribe to alerts");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let granted = !ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                    subacked_tx.send_replace(Some(granted));
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let arrival_ms = clock.now();
                    match serde_json::from_slice::<Json>(&p.payload) {
                        Ok(json) => {
                            tracing::info!(alert = %json, "alert");
                            if let Ok(mut v) = inbox.lock() {
                                v.push(ReceivedAlert { arrival_ms, json });
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "alert payload is not JSON"),
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(rumqttc::ConnectionError::RequestsDone) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "alerts subscription lost; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    });
    // Copied out at once: the watch's read guard must not outlive this statement.
    let granted = match tokio::time::timeout(opts.connect_timeout, subacked.wait_for(|s| s.is_some())).await {
        Ok(Ok(s)) => *s,
        _ => None,
    };
    match granted {
        Some(true) => Ok((client, task)),
        Some(false) => {
            task.abort();
            anyhow::bail!(
                "{} refused the subscription to nh/{site}/alerts: the alerts subscriber's identity may not read it",
                opts.broker
            );
        }
        None => {
            task.abort();
            anyhow::bail!(
                "no SubAck for nh/{site}/alerts from {} within {:?}",
                opts.broker,
                opts.connect_timeout
            );
        }
    }
}

/// Runs `sc` against a broker: subscribes to the alerts first, publishes the plan paced on the
/// clock, and stops once the duration passed and every expectation is met, or once every deadline
/// passed (plus the grace time for alerts in flight). `shutdown` ends it early (reported failed).
pub async fn run_scenario(
    sc: &Scenario,
    opts: ScenarioOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<ScenarioReport> {
    let started = Instant::now();
    let clock = scenario_clock(sc, opts.clock);
    let start_ms = clock.start_virtual_ms;
    let site = sc.registry.site.clone();
    let inbox: Inbox = Arc::default();
    let (sub_client, sub_task) = subscribe_alerts(&opts, &site, clock, inbox.clone()).await?;
    let client_id = client_id_or(opts.client_id.as_deref(), opts.credentials.as_ref(), || {
        format!("nh-sim-scenario-{}", std::process::id())
    });
    let mut link = Link::connect(&LinkOptions {
        connect_timeout: opts.connect_timeout,
        credentials: opts.credentials.clone(),
        ..LinkOptions::new(opts.broker.clone(), client_id)
    })
    .await?;
    let late = clock.now() - start_ms;
    if late > 0 {
        tracing::warn!(
            late_virtual_ms = late,
            "started after the scenario's virtual start: early messages go out at once"
        );
    }
    tracing::info!(scenario = %sc.name, site = %site, start_ms, scale = clock.scale, "scenario running");

    let played = play(sc, &opts, &link, clock, &inbox, shutdown).await?;
    let acked = link.wait_acked(played.published, Duration::from_secs(5)).await;
    link.close().await;
    let _ = sub_client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), sub_task).await;
    let alerts = inbox.lock().map(|v| v.clone()).unwrap_or_default();
    let mut evaluation = evaluate(sc, start_ms, &played.anchors, &alerts);
    if played.interrupted {
        evaluation.pass = false;
    }
    let observed_s = ((clock.now() - start_ms) as f64 / 100.0).round() / 10.0;
    Ok(ScenarioReport {
        scenario: sc.name.clone(),
        file: sc.path.clone(),
        pass: evaluation.pass,
        site,
        start_ms,
        time_scale: clock.scale,
        duration_s: sc.duration_s,
        observed_s,
        elapsed_real_s: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        published: played.published,
        acked,
        max_publish_lag_ms: played.max_lag,
        events: played
            .anchors
            .iter()
            .map(|(k, v)| (k.clone(), (*v - start_ms) as f64 / 1000.0))
            .collect(),
        alerts_received: alerts.len(),
        evaluation,
    })
}

/// The clock the run lives on: the test clock when given (warning where it disagrees with the
/// file), else the system clock from now.
fn scenario_clock(sc: &Scenario, given: Option<Clock>) -> Clock {
    let Some(c) = given else {
        tracing::warn!("no test clock: running on the system clock at scale 1 from now");
        return Clock::system();
    };
    if let Some(s) = sc.start_ms {
        if s != c.start_virtual_ms {
            tracing::warn!(
                file_start = s,
                clock_start = c.start_virtual_ms,
                "--test-clock-start differs from the scenario's start: the clock wins"
            );
        }
    }
    if (c.scale - sc.time_scale).abs() > f64::EPSILON {
        tracing::warn!(
            file_scale = sc.time_scale,
            clock_scale = c.scale,
            "--time-scale differs from the scenario's"
        );
    }
    c
}

/// What the publishing phase did.
struct Played {
    /// Named events and the virtual time they happened.
    anchors: HashMap<String, i64>,
    published: u64,
    /// Virtual ms behind the schedule at worst.
    max_lag: i64,
    interrupted: bool,
}

/// Publishes the plan paced on the clock, anchoring named events as their first message goes
/// out, until [`stop_real_at`] says the run has seen enough or `shutdown` completes.
async fn play(
    sc: &Scenario,
    opts: &ScenarioOptions,
    link: &Link,
    clock: Clock,
    inbox: &Inbox,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Played> {
    let start_ms = clock.start_virtual_ms;
    let (mut stream, events) = outgoing(sc, start_ms, None)?;
    let grace_ms = (opts.grace_s.unwrap_or(sc.grace_s) * 1000.0) as i64;
    let mut anchors: HashMap<String, i64> = HashMap::new();
    // Silences are anchored at their scheduled time: nothing is published then.
    for (name, _, at, publishes) in &events {
        if !publishes {
            anchors.insert(name.clone(), *at);
        }
    }
    let mut published = 0u64;
    let mut max_lag = 0i64;
    let mut interrupted = false;
    let mut next: Option<Outgoing> = stream.next();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let evaluation = {
            let alerts = inbox.lock().map(|v| v.clone()).unwrap_or_default();
            evaluate(sc, start_ms, &anchors, &alerts)
        };
        let now_real = system_now_ms();
        if now_real >= stop_real_at(sc, &events, &evaluation, clock) + grace_ms {
            break;
        }
        // Publish every message that is due.
        while let Some(m) = next.take() {
            if clock.real_at(m.ts) > system_now_ms() {
                next = Some(m);
                break;
            }
            let now_v = clock.now();
            max_lag = max_lag.max(now_v - m.ts);
            for (name, device, at, publishes) in &events {
                if *publishes && Some(*device) == m.device_index && m.ts >= *at && !anchors.contains_key(name) {
                    anchors.insert(name.clone(), now_v.max(*at));
                }
            }
            tokio::select! {
                biased;
                _ = &mut shutdown => { interrupted = true; break; }
                // QoS 1 for a capture's QoS 0 messages too: the judgement must not hang on a drop.
                sent = link.publish_retained(&m.topic, QoS::AtLeastOnce, m.payload, m.retain) => sent?,
            }
            published += 1;
            next = stream.next();
        }
        if interrupted {
            break;
        }
        let wake = next
            .as_ref()
            .map(|m| clock.real_at(m.ts))
            .unwrap_or(i64::MAX)
            .min(system_now_ms() + 50);
        let wait = (wake - system_now_ms()).max(1) as u64;
        tokio::select! {
            biased;
            _ = &mut shutdown => { interrupted = true; break; }
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
    }
    Ok(Played {
        anchors,
        published,
        max_lag,
        interrupted,
    })
}

/// Real time (ms) until which the run goes on, before the grace for alerts in flight: the end of
/// the duration once every expectation is met, else the last deadline that could still be met.
fn stop_real_at(sc: &Scenario, events: &[NamedEvent], ev: &Evaluation, clock: Clock) -> i64 {
    let end_ms = clock.start_virtual_ms + sc.duration_s as i64 * 1000;
    let all_met = ev.expectations.iter().all(|e| e.met);
    let last = if all_met {
        end_ms
    } else {
        // Every unmet expectation could still be met until its deadline; one waiting for an
        // event that has not happened yet keeps the run going until that event is due.
        let mut until = end_ms.max(ev.pending_until_ms.unwrap_or(end_ms));
        for e in &sc.expect {
            if let Some(a) = &e.after {
                if !anchors_has(&ev.expectations, &e.name) {
                    if let Some((_, _, at, _)) = events.iter().find(|(n, ..)| n == a) {
                        until = until.max(*at + e.within_ms);
                    }
                }
            }
        }
        until
    };
    clock.real_at(last)
}

fn anchors_has(results: &[super::ExpectationResult], name: &str) -> bool {
    results.iter().any(|r| r.name == name && r.met)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse;

    fn sc(text: &str) -> Scenario {
        parse(text, &crate::scenario::tests::test_dir()).expect("valid")
    }

    const T0: i64 = 1_777_642_200_000;

    fn metric<'a>(m: &'a Message, name: &str) -> Option<&'a Value> {
        // Decode from the payload, independently of the overlay.
        let _ = m;
        m.metrics.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    #[test]
    fn steps_override_the_baseline_report_at_once_and_end() {
        let s = sc(r#"
[scenario]
name = "t"
registry = "../test/devices.toml"
duration_s = 300
baseline = false

[[timeline]]
name = "fall"
at_s = 30
device = "radar-t-101"
set = { fall_state = "fall" }
for_s = 20

[[timeline]]
at_s = 10
device = "gas-t-boiler"
ramp = { metric = "gas_lel", from = 0, to = 30, over_s = 60 }

[[timeline]]
at_s = 60
device = "smoke-t-102"
silent = true

[[timeline]]
at_s = 40
device = "sos-t-102"
pulse = { sos = true }
"#);
        let msgs: Vec<Message> = plan(&s, T0, Some(300)).stream.collect();
        let radar: Vec<&Message> = msgs.iter().filter(|m| &*m.device_id == "radar-t-101").collect();
        let falls: Vec<i64> = radar
            .iter()
            .filter(|m| metric(m, "fall_state") == Some(&Value::Text("fall")))
            .map(|m| m.ts - T0)
            .collect();
        assert_eq!(falls.first(), Some(&30_000), "reported at once: {falls:?}");
        assert!(falls.iter().all(|t| (30_000..50_000).contains(t)), "{falls:?}");
        assert!(radar.iter().any(|m| m.ts - T0 == 50_000), "reports the end at once");
        // Only scripted devices report without a baseline.
        assert!(msgs
            .iter()
            .all(|m| ["radar-t-101", "gas-t-boiler", "smoke-t-102", "sos-t-102"].contains(&&*m.device_id)));
        // The ramp reaches 30 %LEL at t = 70 s, reported at least every 5 s.
        let gas: Vec<(i64, f64)> = msgs
            .iter()
            .filter(|m| &*m.device_id == "gas-t-boiler")
            .filter_map(|m| match metric(m, "gas_lel") {
                Some(Value::Num(x)) if m.ts - T0 >= 10_000 => Some((m.ts - T0, *x)),
                _ => None,
            })
            .collect();
        assert_eq!(gas[0], (10_000, 0.0));
        assert!(
            gas.windows(2).all(|w| w[1].1 >= w[0].1 && w[1].0 - w[0].0 <= 5_000),
            "{gas:?}"
        );
        assert!(gas.iter().any(|(t, x)| *t >= 70_000 && *x == 30.0));
        // Silent from 60 s.
        assert!(msgs
            .iter()
            .filter(|m| &*m.device_id == "smoke-t-102")
            .all(|m| m.ts - T0 < 60_000));
        // One press.
        let presses = msgs
            .iter()
            .filter(|m| &*m.device_id == "sos-t-102" && metric(m, "sos") == Some(&Value::Bool(true)))
            .count();
        assert_eq!(presses, 1);
        // Payloads carry the scripted values too.
        let first_fall = radar.iter().find(|m| m.ts - T0 == 30_000).expect("fall report");
        let p: Json = serde_json::from_slice(&first_fall.payload).expect("json");
        assert_eq!(p["metrics"]["fall_state"], json!("fall"));
    }

    #[test]
    fn dry_run_prints_info_then_the_timeline() {
        let s = sc(r#"
[scenario]
name = "t"
registry = "../test/devices.toml"
start = "2026-05-01T21:30:00+08:00"
duration_s = 60
time_scale = 3

[[timeline]]
at_s = 30
device = "sos-t-1-bath"
pulse = { sos = true }
"#);
        let mut out = Vec::new();
        let n = dry_run(&s, true, &mut out).expect("dry run");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<Json> = text.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
        assert_eq!(lines.len() as u64, n + 1);
        assert_eq!(lines[0]["time_scale"], json!(3.0));
        assert_eq!(lines[0]["start"], json!("2026-05-01T21:30:00.000+08:00"));
        let press = lines
            .iter()
            .find(|l| l["payload"]["sos"] == json!(true))
            .expect("the press");
        assert_eq!(press["t_s"], json!(30.0));
        assert_eq!(press["topic"], json!("zigbee2mqtt/sos_t1_bath"));
    }

    /// A capture in a fresh temporary folder beside a copy of the test registry; returns the
    /// folder (removed on drop).
    fn capture_dir(name: &str, lines: &[String]) -> tempfile::TempDir {
        let temp = tempfile::Builder::new().prefix(name).tempdir().expect("temp dir");
        let dir = temp.path();
        std::fs::copy(
            crate::scenario::tests::test_dir().join("../test/devices.toml"),
            dir.join("devices.toml"),
        )
        .expect("registry");
        let mut text = format!(
            "{{\"format\":\"{}\",\"broker\":\"b\",\"filters\":[\"#\"],\"start_ms\":1000000000000}}\n",
            crate::mqtt::capture::FORMAT
        );
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(dir.join("c.jsonl"), text).expect("capture");
        temp
    }

    fn captured(t_ms: i64, topic: &str, payload: &str) -> String {
        serde_json::to_string(&crate::mqtt::capture::Captured::new(
            t_ms,
            topic.into(),
            0,
            false,
            payload.as_bytes(),
        ))
        .expect("json")
    }

    const HEADER: &str = "[scenario]\nname = \"c\"\nregistry = \"devices.toml\"\ncapture = \"c.jsonl\"\n";

    #[test]
    fn a_capture_scenario_lays_the_capture_onto_its_start_with_payload_times_moved() {
        let dir = capture_dir(
            "lay",
            &[
                captured(
                    1_000_000_001_000,
                    "zigbee2mqtt/smoke_t101",
                    r#"{"smoke":false,"last_seen":1000000000900}"#,
                ),
                captured(
                    1_000_000_003_000,
                    "nh/nh-test/radar-t-101/telemetry",
                    r#"{"ts":1000000002950,"metrics":{}}"#,
                ),
            ],
        );
        let text = format!("{HEADER}duration_s = 10\n");
        let s = parse(&text, dir.path()).expect("valid");
        assert!(!s.baseline, "no simulated fleet beside a capture");
        let (out, events) = outgoing(&s, T0, None).expect("outgoing");
        let out: Vec<Outgoing> = out.collect();
        assert!(events.is_empty());
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].ts, out[1].ts), (T0 + 1000, T0 + 3000));
        assert_eq!(
            String::from_utf8_lossy(&out[0].payload),
            format!(r#"{{"smoke":false,"last_seen":{}}}"#, T0 + 900)
        );
        assert_eq!(&*out[1].topic, "nh/nh-test/radar-t-101/telemetry");
        assert!(out[1].device_index.is_none());
    }

    #[test]
    fn a_capture_scenario_refuses_a_baseline_a_timeline_and_a_short_duration() {
        let dir = capture_dir("refuse", &[captured(1_000_000_060_000, "zigbee2mqtt/x", "{}")]);
        let text = format!(
            "{HEADER}duration_s = 30\nbaseline = true\n\n[[timeline]]\nat_s = 1\ndevice = \"radar-t-101\"\npulse = {{ presence = true }}\n"
        );
        let e = parse(&text, dir.path()).expect_err("refused").to_string();
        assert!(e.contains("scenario.baseline"), "{e}");
        assert!(e.contains("timeline: steps script simulated devices"), "{e}");
        assert!(e.contains("shorter than the capture"), "{e}");
        let missing = parse(
            &HEADER
                .replace("c.jsonl", "none.jsonl")
                .replace("name", "duration_s = 9\nname"),
            dir.path(),
        )
        .expect_err("no capture")
        .to_string();
        assert!(missing.contains("scenario.capture"), "{missing}");
    }
}

#[cfg(test)]
mod quiet_night {
    //! The quiet night's baseline must trip no rule of the catalog (docs/rules.md) and no
    //! device may look offline: checked here on the message stream, without a gateway.
    use super::*;
    use crate::model::behaviour::is_night;
    use crate::model::registry::{CareFlag, DeviceClass};

    #[test]
    fn the_quiet_night_baseline_crosses_no_threshold_and_no_device_falls_silent() {
        let sc =
            crate::scenario::load(&crate::scenario::tests::test_dir().join("night-shift-quiet.toml")).expect("valid");
        let start = sc.start_ms.expect("start");
        let reg = sc.registry.clone();
        let mut last: Vec<i64> = vec![start; reg.devices.len()];
        let mut out_since: Vec<Option<i64>> = vec![None; reg.devices.len()];
        let mut still_since: Vec<Option<i64>> = vec![None; reg.devices.len()];
        let mut n = 0;
        for m in plan(&sc, start, Some(sc.duration_s)).stream {
            n += 1;
            let d = &reg.devices[m.device_index];
            let gap = m.ts - last[m.device_index];
            assert!(
                gap < 2 * d.interval_s as i64 * 1000 + 2_000,
                "{}: {gap} ms without a report",
                d.id
            );
            last[m.device_index] = m.ts;
            for (name, v) in &m.metrics {
                let bad = match (*name, v) {
                    (
                        "smoke" | "gas_alarm" | "co_alarm" | "sos" | "tamper" | "test" | "fault" | "battery_low",
                        Value::Bool(b),
                    ) => *b,
                    ("preheat", Value::Bool(b)) => *b,
                    ("worn", Value::Bool(b)) => !*b,
                    ("fall_state", Value::Text(s)) => *s != "none",
                    ("heart_rate", Value::Num(x)) => !(51.0..=110.0).contains(x),
                    ("spo2", Value::Num(x)) => *x < 94.0,
                    ("resp_rate", Value::Num(x)) => !(12.0..=20.0).contains(x),
                    ("gas_lel", Value::Num(x)) => *x >= 5.0,
                    ("co_ppm", Value::Num(x)) => *x >= 30.0,
                    ("temperature", Value::Num(x)) => *x >= 45.0,
                    ("battery_pct", Value::Num(x)) => *x <= 20.0,
                    ("contact_open", Value::Bool(open)) => *open && is_night(m.ts),
                    _ => false,
                };
                assert!(!bad, "{} at {}: {name} = {v:?}", d.id, time::format_rfc3339(m.ts, 480));
            }
            let has = |name: &str, v: &Value| m.metrics.iter().any(|(n, x)| *n == name && x == v);
            if d.class == DeviceClass::BedSensor && d.care_flags.contains(&CareFlag::HighFallRisk) {
                if has("bed_occupied", &Value::Bool(false)) && is_night(m.ts) {
                    let since = *out_since[m.device_index].get_or_insert(m.ts);
                    assert!(m.ts - since < 10 * 60_000, "{} out of bed at night", d.id);
                } else {
                    out_since[m.device_index] = None;
                }
            }
            if matches!(d.zone.as_deref(), Some("bathroom" | "corridor")) {
                if has("motion_state", &Value::Text("stationary")) {
                    let since = *still_since[m.device_index].get_or_insert(m.ts);
                    assert!(m.ts - since < 5 * 60_000, "{} still in a transit zone", d.id);
                } else {
                    still_since[m.device_index] = None;
                }
            }
        }
        assert!(n > 1000, "{n} messages");
        let end = start + sc.duration_s as i64 * 1000;
        for (i, d) in reg.devices.iter().enumerate() {
            assert!(
                end - last[i] < 2 * d.interval_s as i64 * 1000 + 2_000,
                "{} silent at the end",
                d.id
            );
        }
    }
}
