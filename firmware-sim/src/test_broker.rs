//! Minimal MQTT 3.1.1 brokers for the simulator's own unit tests, and the waits those tests
//! synchronize on.
//!
//! - [`TestBroker`]: accepts CONNECT, records and acknowledges PUBLISH, answers PINGREQ, and can
//!   cut connections on purpose.
//! - [`ScriptedBroker`]: acknowledges by a [`Script`]: PubAcks in reverse batches (so rumqttc
//!   holds publishes back), a limit on PubAcks (a hung broker), withheld acknowledgements that
//!   stall the client until the broker cuts the connection.
//! - [`Outage`]: a TCP relay in front of a broker that goes away and comes back on the same port.
//! - [`wait_until`]: polls a condition until it holds, with a deadline (instead of sleeping and
//!   hoping).
//!
//! Not a stand-in for the real broker in end-to-end tests (those run rumqttd and Mosquitto): it
//! exists because fault injection (a broker that drops a connection with publishes unacknowledged)
//! is what the link's re-publishing must be tested against, and real brokers do not do that on cue.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

pub struct TestBroker {
    addr: SocketAddr,
    received: Received,
    task: JoinHandle<()>,
}

#[derive(Clone, Copy)]
struct Faults {
    /// The first `drops` connections are closed after `drop_after` publishes each.
    drops: usize,
    drop_after: usize,
    /// Of those, the last `unacked_tail` are neither acknowledged nor kept (lost by the broker).
    unacked_tail: usize,
}

const NO_FAULTS: Faults = Faults {
    drops: 0,
    drop_after: 0,
    unacked_tail: 0,
};

impl TestBroker {
    pub async fn start() -> TestBroker {
        TestBroker::spawn(NO_FAULTS).await
    }

    /// A broker that cuts its first `drops` connections after `drop_after` publishes each,
    /// without acknowledging (or keeping) the last `unacked_tail` of them; later connections
    /// behave. (A connection that stopped acknowledging but stayed open would stall any client:
    /// no real broker does that, so neither does this one.)
    pub async fn start_dropping(drops: usize, drop_after: usize, unacked_tail: usize) -> TestBroker {
        assert!(unacked_tail <= drop_after);
        TestBroker::spawn(Faults {
            drops,
            drop_after,
            unacked_tail,
        })
        .await
    }

    async fn spawn(faults: Faults) -> TestBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let received: Received = Arc::default();
        let sink = received.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            let accepted = AtomicUsize::new(0);
            while let Ok((stream, _)) = listener.accept().await {
                let n = accepted.fetch_add(1, Ordering::Relaxed);
                let faults = if n < faults.drops { faults } else { NO_FAULTS };
                connections.spawn(serve(stream, sink.clone(), faults));
            }
        });
        TestBroker { addr, received, task }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn received(&self) -> Vec<(String, Vec<u8>)> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Parses the remaining-length varint at `buf[1..]`: (length, header size), or None if incomplete.
fn remaining_length(buf: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        len |= ((b & 0x7F) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Some((len, 2 + i));
        }
    }
    None
}

async fn serve(mut stream: TcpStream, received: Received, faults: Faults) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut publishes = 0usize;
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut consumed = 0;
        while let Some((len, header)) = remaining_length(&buf[consumed..]) {
            if buf.len() < consumed + header + len {
                break;
            }
            let first = buf[consumed];
            let body = &buf[consumed + header..consumed + header + len];
            consumed += header + len;
            match first >> 4 {
                1 => out.extend_from_slice(&[0x20, 0x02, 0x00, 0x00]),
                3 => {
                    let qos = (first >> 1) & 0x03;
                    let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
                    let topic = String::from_utf8_lossy(&body[2..2 + topic_len]).into_owned();
                    let mut at = 2 + topic_len;
                    let pkid = if qos > 0 {
                        at += 2;
                        Some([body[at - 2], body[at - 1]])
                    } else {
                        None
                    };
                    publishes += 1;
                    let lost = faults.drop_after > 0 && publishes > faults.drop_after - faults.unacked_tail;
                    if !lost {
                        if let Ok(mut r) = received.lock() {
                            r.push((topic, body[at..].to_vec()));
                        }
                        if let Some(id) = pkid {
                            out.extend_from_slice(&[0x40, 0x02, id[0], id[1]]);
                        }
                    }
                    if faults.drop_after > 0 && publishes >= faults.drop_after {
                        let _ = stream.write_all(&out).await;
                        return;
                    }
                }
                12 => out.extend_from_slice(&[0xD0, 0x00]),
                14 => return,
                _ => {}
            }
        }
        buf.drain(..consumed);
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// How a [`ScriptedBroker`] acknowledges.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Script {
    /// PubAcks are withheld until this many are due (or the client paused for 2 ms), then sent
    /// in reverse order: rumqttc then meets packet ids still in flight and holds publishes back.
    pub reverse_batch: usize,
    /// Publishes acknowledged at most, over all connections; later ones are read and ignored
    /// (the client stalls as with a hung broker).
    pub ack_limit: usize,
    /// On the first `cuts` connections, the first publish after `cut_after` PubAcks is never
    /// acknowledged (nor kept); the others are. Once the client reuses that packet id it
    /// holds the new publish back and stalls, and the broker then closes the connection.
    pub cuts: usize,
    pub cut_after: usize,
}

impl Script {
    pub(crate) const PROMPT: Script = Script {
        reverse_batch: 1,
        ack_limit: usize::MAX,
        cuts: 0,
        cut_after: 0,
    };
}

/// A minimal MQTT 3.1.1 broker acknowledging by [`Script`]; remembers exactly the publishes it
/// sent a PubAck for.
pub(crate) struct ScriptedBroker {
    addr: SocketAddr,
    acked: Received,
    task: JoinHandle<()>,
}

impl ScriptedBroker {
    pub(crate) async fn start(script: Script) -> ScriptedBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let acked: Received = Arc::default();
        let sink = acked.clone();
        let task = tokio::spawn(async move {
            let budget = Arc::new(AtomicUsize::new(script.ack_limit));
            let mut connections = JoinSet::new();
            let mut accepted = 0;
            while let Ok((stream, _)) = listener.accept().await {
                accepted += 1;
                let cut_after = if accepted <= script.cuts { script.cut_after } else { 0 };
                connections.spawn(serve_scripted(stream, sink.clone(), script, cut_after, budget.clone()));
            }
        });
        ScriptedBroker { addr, acked, task }
    }

    pub(crate) fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// (topic, payload) of every publish acknowledged, in PubAck order.
    pub(crate) fn acked(&self) -> Vec<(String, Vec<u8>)> {
        self.acked.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for ScriptedBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Quiet time after which a client whose publish is withheld counts as stalled on it.
const STALLED: Duration = Duration::from_millis(50);

async fn serve_scripted(
    mut stream: TcpStream,
    acked: Received,
    script: Script,
    cut_after: usize,
    budget: Arc<AtomicUsize>,
) {
    let mut acks_sent = 0usize;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut due: Vec<([u8; 2], String, Vec<u8>)> = Vec::new();
    let mut withheld = false;
    let mut quiet = Duration::ZERO;
    loop {
        let tick = Duration::from_millis(2);
        let n = match tokio::time::timeout(tick, stream.read(&mut chunk)).await {
            Err(_) => 0,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        quiet = if n == 0 { quiet + tick } else { Duration::ZERO };
        if withheld && due.is_empty() && quiet >= STALLED {
            // Half-close and read until the client hangs up: closing with unread input would
            // reset the connection and could discard acks not yet read by the client.
            let _ = stream.shutdown().await;
            let drain = async { while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut consumed = 0;
        while let Some((len, header)) = remaining_length(&buf[consumed..]) {
            if buf.len() < consumed + header + len {
                break;
            }
            let first = buf[consumed];
            let body = buf[consumed + header..consumed + header + len].to_vec();
            consumed += header + len;
            match first >> 4 {
                1 => out.extend_from_slice(&[0x20, 0x02, 0x00, 0x00]),
                3 if (first >> 1) & 0x03 == 1 => {
                    let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
                    let topic = String::from_utf8_lossy(&body[2..2 + topic_len]).into_owned();
                    let pkid = [body[2 + topic_len], body[3 + topic_len]];
                    if cut_after > 0 && acks_sent >= cut_after && !withheld {
                        withheld = true;
                        continue;
                    }
                    let granted = budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                        .is_ok();
                    if granted {
                        due.push((pkid, topic, body[4 + topic_len..].to_vec()));
                    }
                }
                12 => out.extend_from_slice(&[0xD0, 0x00]),
                14 => return,
                _ => {}
            }
        }
        buf.drain(..consumed);
        let mut sent = Vec::new();
        if due.len() >= script.reverse_batch.max(1) || (n == 0 && !due.is_empty()) {
            for (pkid, topic, payload) in due.drain(..).rev() {
                out.extend_from_slice(&[0x40, 0x02, pkid[0], pkid[1]]);
                sent.push((topic, payload));
            }
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
        acks_sent += sent.len();
        if let Ok(mut a) = acked.lock() {
            a.extend(sent);
        }
    }
}

/// A TCP relay in front of a broker that can go away and come back on the same port, like a
/// broker restarted (without persistence: whatever it had not acknowledged is gone).
pub(crate) struct Outage {
    addr: SocketAddr,
    upstream: String,
    task: Option<JoinHandle<()>>,
}

impl Outage {
    pub(crate) async fn start(upstream: String) -> Outage {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let task = Some(tokio::spawn(relay(listener, upstream.clone())));
        Outage { addr, upstream, task }
    }

    pub(crate) fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Cuts every connection and refuses new ones.
    pub(crate) fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub(crate) async fn up(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("bind the same port again");
        self.task = Some(tokio::spawn(relay(listener, self.upstream.clone())));
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.down();
    }
}

async fn relay(listener: TcpListener, upstream: String) {
    // Dropped with the task: aborting it closes every relayed connection.
    let mut connections = JoinSet::new();
    while let Ok((mut client, _)) = listener.accept().await {
        let upstream = upstream.clone();
        connections.spawn(async move {
            if let Ok(mut server) = TcpStream::connect(&upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}

/// How often [`wait_until`] looks again.
const POLL_EVERY: Duration = Duration::from_millis(5);

/// Waits until `done` holds, looking every few milliseconds; panics naming `what` if it still
/// does not hold after `deadline`.
pub(crate) async fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + deadline;
    while !done() {
        assert!(tokio::time::Instant::now() < give_up, "not within {deadline:?}: {what}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}
