//! A minimal MQTT 3.1.1 sink for the simulator's own unit tests: accepts CONNECT, records and
//! acknowledges PUBLISH, answers PINGREQ, and can cut connections on purpose.
//!
//! Not a stand-in for the real broker in end-to-end tests (those run rumqttd and Mosquitto): it
//! exists because fault injection (a broker that drops a connection with publishes unacknowledged)
//! is what the link's re-publishing must be tested against, and real brokers do not do that on cue.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

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
            let mut connections = tokio::task::JoinSet::new();
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
