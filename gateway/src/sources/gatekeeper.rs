//! The embedded broker's front door: an MQTT 3.1.1 session layer that authenticates every
//! CONNECT and authorizes every PUBLISH, SUBSCRIBE and will against [`Policy`] before the bytes
//! reach rumqttd.
//!
//! rumqttd checks credentials at CONNECT only and its connection handler is private, so the
//! gateway puts this layer in front of it: devices connect here; an admitted connection gets a
//! connection of its own to rumqttd's listener on 127.0.0.1, which demands an internal random
//! secret (nothing else on the box can skip this layer), and allowed packets pass through
//! unchanged. rumqttd keeps doing what it does well (sessions, QoS, retained messages, wills,
//! keep-alive); this layer only reads packet headers and topics.
//!
//! - A refused CONNECT gets a CONNACK with code 4 (known username, wrong secret) or 5 (not
//!   authorized: no credentials, unknown username, a client id that is not the username, a will
//!   on a topic the identity may not publish on), then the connection closes.
//! - A refused PUBLISH is not forwarded: no subscriber sees it, the journal never does. QoS 1 is
//!   acknowledged here (MQTT 3.1.1 lets a server acknowledge or close; acknowledging keeps a
//!   device from resending it for ever), QoS 2 is received and completed here.
//! - A SUBSCRIBE with a filter the identity may not read gets a SUBACK with 0x80 for every filter
//!   and is not forwarded.
//! - The [`MAX_REFUSALS`]th refused act on a connection closes it.
//! - Client ids with `+`, `#`, `/` or a leading `$` never reach rumqttd (they could poison its
//!   connection table: upstream issue #991), and this layer reads rumqttd's CONNACK before it
//!   lets a connection go, so rumqttd never fails writing one.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rumqttd::protocol::v4::{check, V4};
use rumqttd::protocol::{Login, Packet, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::access::events::AccessEvents;
use crate::access::{Admission, Identity, Policy, Reason};
use crate::secret::Secret;

/// Refused acts on one connection before it is closed.
pub const MAX_REFUSALS: u32 = 5;
/// How long a new connection may take to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long rumqttd may take to answer a forwarded CONNECT.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once (devices and tools; the gateway's own clients bypass this layer).
pub const MAX_CONNECTIONS: usize = 10_000;
/// The username the gateway's own clients and this layer present to rumqttd.
pub const INTERNAL_USER: &str = "nh-gateway-internal";

/// CONNACK return codes of MQTT 3.1.1.
const UNACCEPTABLE_PROTOCOL: u8 = 1;
const IDENTIFIER_REJECTED: u8 = 2;
const BAD_USERNAME_OR_PASSWORD: u8 = 4;
const NOT_AUTHORIZED: u8 = 5;

/// What the layer needs.
pub struct Gatekeeper {
    pub policy: Arc<Policy>,
    /// rumqttd's internal listener.
    pub upstream: SocketAddr,
    /// The secret rumqttd's internal listener demands.
    pub internal_secret: Secret,
    pub events: Arc<AccessEvents>,
    /// Largest packet a client may send (remaining length).
    pub max_packet_bytes: usize,
}

impl Gatekeeper {
    /// Serves `listener` until cancelled.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "MQTT accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                warn!(%peer, limit = MAX_CONNECTIONS, "MQTT connection refused: too many connections");
                continue;
            };
            let gk = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    r = gk.session(stream, peer) => {
                        if let Err(e) = r {
                            debug!(%peer, error = %e, "MQTT session ended");
                        }
                    }
                }
                drop(slot);
            });
        }
    }

    async fn session(&self, mut client: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
        let mut buf = BytesMut::with_capacity(1024);
        // CONNECT
        let connect = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            read_frame(&mut client, &mut buf, self.max_packet_bytes),
        )
        .await
        {
            Ok(Ok(Some(frame))) => frame,
            _ => return Ok(()),
        };
        let mut connect = connect;
        let packet = match V4.read_mut(&mut connect, self.max_packet_bytes) {
            Ok(p) => p,
            Err(rumqttd::protocol::Error::InvalidProtocolLevel(_)) | Err(rumqttd::protocol::Error::InvalidProtocol) => {
                self.events.refused(None, Reason::Protocol, peer.ip(), None);
                return connack(&mut client, UNACCEPTABLE_PROTOCOL).await;
            }
            Err(_) => {
                self.events.refused(None, Reason::Protocol, peer.ip(), None);
                return Ok(());
            }
        };
        let Packet::Connect(connect, _, will, _, login) = packet else {
            self.events.refused(None, Reason::Protocol, peer.ip(), None);
            return Ok(());
        };
        // An empty client id (allowed with a clean session) is assigned: the username when there
        // is one (it has to be), else a fresh one.
        let mut connect = connect;
        if connect.client_id.is_empty() {
            connect.client_id = match login.as_ref().filter(|l| !l.username.is_empty()) {
                Some(l) => l.username.clone(),
                None => format!("nh-anon-{}", self.events.next_anonymous_id()),
            };
        }
        let login_ref = login.as_ref().map(|l| (l.username.as_str(), l.password.as_str()));
        let identity = match self.policy.admit(peer.ip(), &connect.client_id, login_ref) {
            Admission::Admitted(identity) => identity,
            Admission::Refused { claimed, reason } => {
                self.events.refused(claimed.as_deref(), reason, peer.ip(), None);
                let code = if reason == Reason::BadSecret {
                    BAD_USERNAME_OR_PASSWORD
                } else {
                    NOT_AUTHORIZED
                };
                return connack(&mut client, code).await;
            }
        };
        if !valid_client_id(&connect.client_id) {
            self.events.refused(Some(&identity), Reason::ClientId, peer.ip(), None);
            return connack(&mut client, IDENTIFIER_REJECTED).await;
        }
        if let Some(w) = &will {
            let allowed = std::str::from_utf8(&w.topic).is_ok_and(|t| self.policy.may_publish(&identity, t));
            if !allowed {
                let topic = String::from_utf8_lossy(&w.topic).into_owned();
                self.events
                    .refused(Some(&identity), Reason::Will, peer.ip(), Some(topic));
                return connack(&mut client, NOT_AUTHORIZED).await;
            }
        }
        // Admitted: the same CONNECT, with the internal login, to rumqttd.
        let mut upstream = match tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(self.upstream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                warn!(error = %e, "embedded broker unreachable from the MQTT front door");
                return Ok(());
            }
            Err(_) => return Ok(()),
        };
        upstream.set_nodelay(true)?;
        let internal = Login {
            username: INTERNAL_USER.to_owned(),
            password: self.internal_secret.expose().to_owned(),
        };
        let mut out = BytesMut::new();
        if V4
            .write(Packet::Connect(connect, None, will, None, Some(internal)), &mut out)
            .is_err()
        {
            return Ok(());
        }
        upstream.write_all(&out).await?;
        // rumqttd's CONNACK, read before anything else can close this connection.
        let mut up_buf = BytesMut::with_capacity(1024);
        let connack_frame = match tokio::time::timeout(
            UPSTREAM_TIMEOUT,
            read_frame(&mut upstream, &mut up_buf, usize::MAX >> 4),
        )
        .await
        {
            Ok(Ok(Some(f))) => f,
            _ => return Ok(()),
        };
        client.write_all(&connack_frame).await?;
        if connack_frame.get(3).copied().unwrap_or(1) != 0 {
            return Ok(());
        }
        self.events.connected(&identity);
        let result = self.relay(client, upstream, buf, up_buf, &identity, peer.ip()).await;
        self.events.disconnected(&identity);
        result
    }

    /// Moves packets both ways until either side ends: client packets checked, rumqttd's
    /// passed through whole (so that acknowledgements made here never split one).
    async fn relay(
        &self,
        client: TcpStream,
        upstream: TcpStream,
        mut buf: BytesMut,
        mut up_buf: BytesMut,
        identity: &Arc<Identity>,
        peer: IpAddr,
    ) -> std::io::Result<()> {
        let (mut client_rx, mut client_tx) = client.into_split();
        let (mut up_rx, mut up_tx) = upstream.into_split();
        let (to_client, mut to_client_rx) = mpsc::channel::<Bytes>(64);
        let writer = async move {
            while let Some(b) = to_client_rx.recv().await {
                client_tx.write_all(&b).await?;
            }
            let _ = client_tx.shutdown().await;
            Ok::<(), std::io::Error>(())
        };
        let from_broker = {
            let to_client = to_client.clone();
            async move {
                loop {
                    // Whole frames only.
                    let mut end = 0;
                    while let Ok(h) = check(up_buf[end..].iter(), usize::MAX >> 4) {
                        end += h.frame_length();
                    }
                    if end > 0 {
                        let frames = up_buf.split_to(end).freeze();
                        if to_client.send(frames).await.is_err() {
                            return Ok(());
                        }
                    }
                    up_buf.reserve(4096);
                    if up_rx.read_buf(&mut up_buf).await? == 0 {
                        return Ok::<(), std::io::Error>(());
                    }
                }
            }
        };
        let from_client = async move {
            let mut refusals = 0u32;
            let mut refused_qos2: Vec<u16> = Vec::new();
            loop {
                let mut forward = BytesMut::new();
                loop {
                    let header = match check(buf.iter(), self.max_packet_bytes) {
                        Ok(h) => h,
                        Err(rumqttd::protocol::Error::InsufficientBytes(_)) => break,
                        Err(_) => {
                            self.events.refused(Some(identity), Reason::Protocol, peer, None);
                            return Ok(());
                        }
                    };
                    let frame = buf.split_to(header.frame_length());
                    let body = &frame[header.fixed_header_len..];
                    match header.byte1 >> 4 {
                        // PUBLISH
                        3 => {
                            let qos = (header.byte1 >> 1) & 3;
                            let Some((topic, rest)) = read_str(body) else {
                                self.events.refused(Some(identity), Reason::Protocol, peer, None);
                                return Ok(());
                            };
                            if self.policy.may_publish(identity, topic) {
                                forward.extend_from_slice(&frame);
                                continue;
                            }
                            self.events
                                .refused(Some(identity), Reason::Publish, peer, Some(topic.to_owned()));
                            let pkid = (rest.len() >= 2).then(|| u16::from_be_bytes([rest[0], rest[1]]));
                            match (qos, pkid) {
                                (1, Some(id)) => {
                                    let _ = to_client.send(ack(0x40, id)).await;
                                }
                                (2, Some(id)) => {
                                    refused_qos2.push(id);
                                    let _ = to_client.send(ack(0x50, id)).await;
                                }
                                _ => {}
                            }
                            refusals += 1;
                        }
                        // PUBREL of a refused QoS 2 publish: completed here.
                        6 if body.len() >= 2 => {
                            let id = u16::from_be_bytes([body[0], body[1]]);
                            if let Some(i) = refused_qos2.iter().position(|r| *r == id) {
                                refused_qos2.swap_remove(i);
                                let _ = to_client.send(ack(0x70, id)).await;
                            } else {
                                forward.extend_from_slice(&frame);
                            }
                        }
                        // SUBSCRIBE
                        8 => {
                            let Some((pkid, filters)) = read_subscribe(body) else {
                                self.events.refused(Some(identity), Reason::Protocol, peer, None);
                                return Ok(());
                            };
                            let denied = filters.iter().find(|f| !self.policy.may_subscribe(identity, f));
                            match denied {
                                None => forward.extend_from_slice(&frame),
                                Some(f) => {
                                    self.events
                                        .refused(Some(identity), Reason::Subscribe, peer, Some((*f).to_owned()));
                                    let mut suback = BytesMut::with_capacity(4 + filters.len());
                                    suback.put_u8(0x90);
                                    suback.put_u8((2 + filters.len()) as u8);
                                    suback.put_u16(pkid);
                                    for _ in &filters {
                                        suback.put_u8(0x80);
                                    }
                                    let _ = to_client.send(suback.freeze()).await;
                                    refusals += 1;
                                }
                            }
                        }
                        // A second CONNECT is a protocol violation.
                        1 => {
                            self.events.refused(Some(identity), Reason::Protocol, peer, None);
                            return Ok(());
                        }
                        _ => forward.extend_from_slice(&frame),
                    }
                    if refusals >= MAX_REFUSALS {
                        if !forward.is_empty() {
                            up_tx.write_all(&forward).await?;
                        }
                        warn!(identity = %identity.name, refusals, "MQTT connection closed after repeated refused acts");
                        return Ok(());
                    }
                }
                if !forward.is_empty() {
                    up_tx.write_all(&forward).await?;
                }
                buf.reserve(4096);
                if client_rx.read_buf(&mut buf).await? == 0 {
                    return Ok::<(), std::io::Error>(());
                }
            }
        };
        // Whichever direction ends first ends the session; dropping the other closes its socket
        // (rumqttd then publishes the will if the client did not say DISCONNECT).
        tokio::select! {
            r = from_client => r,
            r = from_broker => r,
            r = writer => r,
        }
    }
}

/// Reads one whole frame into `buf`, returning it; `None` at end of stream.
async fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut, max: usize) -> std::io::Result<Option<BytesMut>> {
    loop {
        match check(buf.iter(), max) {
            Ok(h) => return Ok(Some(buf.split_to(h.frame_length()))),
            Err(rumqttd::protocol::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())),
        }
        buf.reserve(1024);
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn connack(client: &mut TcpStream, code: u8) -> std::io::Result<()> {
    client.write_all(&[0x20, 0x02, 0x00, code]).await?;
    client.flush().await?;
    let _ = client.shutdown().await;
    Ok(())
}

/// A two-byte acknowledgement (PUBACK 0x40, PUBREC 0x50, PUBCOMP 0x70).
fn ack(kind: u8, pkid: u16) -> Bytes {
    let id = pkid.to_be_bytes();
    Bytes::copy_from_slice(&[kind, 2, id[0], id[1]])
}

/// A length-prefixed UTF-8 string at the start of `b`, and what follows it.
fn read_str(b: &[u8]) -> Option<(&str, &[u8])> {
    if b.len() < 2 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([b[0], b[1]]));
    let s = b.get(2..2 + len)?;
    Some((std::str::from_utf8(s).ok()?, &b[2 + len..]))
}

/// The packet id and the filters of a SUBSCRIBE body.
fn read_subscribe(mut b: &[u8]) -> Option<(u16, Vec<&str>)> {
    if b.len() < 2 {
        return None;
    }
    let pkid = b.get_u16();
    let mut filters = Vec::new();
    while !b.is_empty() {
        let (f, rest) = read_str(b)?;
        // The requested QoS byte.
        b = rest.get(1..)?;
        filters.push(f);
    }
    if filters.is_empty() {
        return None;
    }
    Some((pkid, filters))
}

/// A client id rumqttd can take safely. Empty ids are refused too: every identity has a name.
fn valid_client_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && !id.starts_with('$') && !id.contains(['+', '#', '/', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_bodies_parse_and_bad_ones_do_not() {
        let mut b = vec![0x00, 0x07];
        for f in ["a/b", "c/#"] {
            b.extend_from_slice(&(f.len() as u16).to_be_bytes());
            b.extend_from_slice(f.as_bytes());
            b.push(1);
        }
        assert_eq!(read_subscribe(&b), Some((7, vec!["a/b", "c/#"])));
        assert_eq!(read_subscribe(&b[..b.len() - 1]), None);
        assert_eq!(read_subscribe(&[0, 1]), None);
    }

    #[test]
    fn client_ids_that_could_poison_rumqttd_are_refused() {
        for bad in ["", "a/b", "a+b", "#", "$sys", "x\0"] {
            assert!(!valid_client_id(bad), "{bad:?}");
        }
        assert!(valid_client_id("bed-a-1-01"));
    }
}
