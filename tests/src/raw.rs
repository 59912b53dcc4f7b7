//! A raw AMQP 0-9-1 publisher that writes its frames by hand, so a test can
//! put any bytes into any message property: short strings that are not
//! UTF-8, header tables nested thousands deep, field types no client sends.
//! This is what "any publisher may send anything" means on the wire; lapin
//! (like every well-behaved client) cannot produce such messages.
//!
//! Only what publishing needs is spoken: the handshake with PLAIN login,
//! one channel in confirm mode, `basic.publish` with a content header whose
//! property bytes the caller writes, and the broker's `basic.ack`/`nack`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{ErrorKind, HarnessError, Result};

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;

/// A basic property, by its bit in the content header's property flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RawProperty {
    /// `content_type` (short string).
    ContentType = 15,
    /// `content_encoding` (short string).
    ContentEncoding = 14,
    /// `headers` (field table).
    Headers = 13,
    /// `delivery_mode` (octet).
    DeliveryMode = 12,
    /// `priority` (octet).
    Priority = 11,
    /// `correlation_id` (short string).
    CorrelationId = 10,
    /// `reply_to` (short string).
    ReplyTo = 9,
    /// `expiration` (short string).
    Expiration = 8,
    /// `message_id` (short string).
    MessageId = 7,
    /// `timestamp` (64-bit).
    Timestamp = 6,
    /// `type` (short string).
    Type = 5,
    /// `user_id` (short string).
    UserId = 4,
    /// `app_id` (short string).
    AppId = 3,
    /// `cluster_id` (short string, deprecated).
    ClusterId = 2,
}

/// The properties of a raw message: each property's encoded bytes, exactly
/// as they go on the wire (a short string with its length octet, a table
/// with its 32-bit length, ...). Use [`short_str`], [`long_str`] and
/// [`table`] to build them, or write any bytes at all.
#[derive(Debug, Clone, Default)]
pub struct RawProperties {
    fields: Vec<(RawProperty, Vec<u8>)>,
}

impl RawProperties {
    /// Sets one property's encoded bytes (replacing an earlier value).
    pub fn set(mut self, p: RawProperty, encoded: Vec<u8>) -> Self {
        self.fields.retain(|(q, _)| *q != p);
        self.fields.push((p, encoded));
        self
    }

    /// Sets a short-string property to `bytes` (any bytes, at most 255).
    pub fn short(self, p: RawProperty, bytes: &[u8]) -> Self {
        self.set(p, short_str(bytes))
    }

    /// The property flags and the properties in wire order.
    fn encode(&self) -> (u16, Vec<u8>) {
        let mut fields = self.fields.clone();
        fields.sort_by_key(|f| std::cmp::Reverse(f.0));
        let mut flags = 0u16;
        let mut out = Vec::new();
        for (p, bytes) in fields {
            flags |= 1 << (p as u16);
            out.extend_from_slice(&bytes);
        }
        (flags, out)
    }
}

/// A short string: one length octet, then the bytes (truncated to 255).
pub fn short_str(bytes: &[u8]) -> Vec<u8> {
    let n = bytes.len().min(255);
    let mut v = Vec::with_capacity(n + 1);
    v.push(n as u8);
    v.extend_from_slice(&bytes[..n]);
    v
}

/// A long string: a 32-bit length, then the bytes.
pub fn long_str(bytes: &[u8]) -> Vec<u8> {
    let mut v = (bytes.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(bytes);
    v
}

/// A field table from entries whose values are already encoded with their
/// type octet (`b'S'` + long string, `b'F'` + table, ...).
pub fn table(entries: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in entries {
        body.extend_from_slice(&short_str(k));
        body.extend_from_slice(v);
    }
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// A header table nested `depth` levels deep: `{"x": {"x": {... {}}}}`.
pub fn nested_table(depth: usize) -> Vec<u8> {
    // Built from the inside out, without recursion.
    let mut t = table(&[]);
    for _ in 0..depth {
        let mut v = vec![b'F'];
        v.extend_from_slice(&t);
        t = table(&[(b"x", v)]);
    }
    t
}

/// What the broker said to one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawOutcome {
    /// `basic.ack`: the broker took the message.
    Ack,
    /// `basic.nack`.
    Nack,
    /// The broker closed the channel or connection instead (code, e.g. 406).
    Closed(u16),
}

/// One connection with one channel in confirm mode.
#[derive(Debug)]
pub struct RawPublisher {
    stream: TcpStream,
    frame_max: u32,
    published: u64,
}

impl RawPublisher {
    /// Connects to `127.0.0.1:port` and logs in with `user`/`password` on
    /// vhost `/`.
    pub async fn connect(port: u16, user: &str, password: &str) -> Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| HarnessError::io("raw publisher: cannot connect", e))?;
        let mut p = Self {
            stream,
            frame_max: 131_072,
            published: 0,
        };
        p.write_all(b"AMQP\x00\x00\x09\x01").await?;
        p.expect_method(0, (10, 10)).await?; // connection.start
        let mut a = table(&[]);
        a.extend_from_slice(&short_str(b"PLAIN"));
        let mut login = vec![0];
        login.extend_from_slice(user.as_bytes());
        login.push(0);
        login.extend_from_slice(password.as_bytes());
        a.extend_from_slice(&long_str(&login));
        a.extend_from_slice(&short_str(b"en_US"));
        p.method(0, (10, 11), &a).await?; // start-ok
        let tune = p.expect_method(0, (10, 30)).await?;
        // Take the broker's limits as they are (RabbitMQ refuses a
        // channel_max of 0, "no limit", when its own is lower).
        let channel_max = tune
            .get(..2)
            .map_or(1, |c| u16::from_be_bytes([c[0], c[1]]));
        if let Some(fm) = tune.get(2..6) {
            let fm = u32::from_be_bytes([fm[0], fm[1], fm[2], fm[3]]);
            if fm > 0 {
                p.frame_max = fm;
            }
        }
        let mut a = channel_max.to_be_bytes().to_vec();
        a.extend_from_slice(&p.frame_max.to_be_bytes());
        a.extend_from_slice(&0u16.to_be_bytes());
        p.method(0, (10, 31), &a).await?; // tune-ok, no heartbeats
        let mut a = short_str(b"/");
        a.extend_from_slice(&short_str(b""));
        a.push(0);
        p.method(0, (10, 40), &a).await?; // connection.open
        p.expect_method(0, (10, 41)).await?;
        p.method(1, (20, 10), &short_str(b"")).await?; // channel.open
        p.expect_method(1, (20, 11)).await?;
        p.method(1, (85, 10), &[0]).await?; // confirm.select
        p.expect_method(1, (85, 11)).await?;
        Ok(p)
    }

    /// Publishes `body` with raw `props` to `exchange`/`key` and waits (at
    /// most `timeout`) for the broker's confirm, or for it closing the
    /// channel or connection.
    pub async fn publish(
        &mut self,
        exchange: &str,
        key: &str,
        props: &RawProperties,
        body: &[u8],
        timeout: Duration,
    ) -> Result<RawOutcome> {
        let mut a = 0u16.to_be_bytes().to_vec();
        a.extend_from_slice(&short_str(exchange.as_bytes()));
        a.extend_from_slice(&short_str(key.as_bytes()));
        a.push(0); // neither mandatory nor immediate
        self.method(1, (60, 40), &a).await?;
        let (flags, encoded) = props.encode();
        let mut h = 60u16.to_be_bytes().to_vec();
        h.extend_from_slice(&0u16.to_be_bytes());
        h.extend_from_slice(&(body.len() as u64).to_be_bytes());
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&encoded);
        self.frame(FRAME_HEADER, 1, &h).await?;
        let chunk = (self.frame_max as usize).saturating_sub(8).max(1);
        for part in body.chunks(chunk) {
            self.frame(FRAME_BODY, 1, part).await?;
        }
        self.published += 1;
        let wait = async {
            loop {
                let (kind, channel, payload) = self.read_frame().await?;
                if kind != FRAME_METHOD || payload.len() < 4 {
                    continue;
                }
                let id = (
                    u16::from_be_bytes([payload[0], payload[1]]),
                    u16::from_be_bytes([payload[2], payload[3]]),
                );
                let code = || {
                    payload
                        .get(4..6)
                        .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]))
                };
                match (channel, id) {
                    (1, (60, 80)) => return Ok(RawOutcome::Ack),
                    (1, (60, 120)) => return Ok(RawOutcome::Nack),
                    (_, (20, 40)) | (0, (10, 50)) => return Ok(RawOutcome::Closed(code())),
                    _ => {}
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(HarnessError::new(
                ErrorKind::Timeout,
                format!("raw publisher: no confirm within {timeout:?}"),
            )),
        }
    }

    async fn write_all(&mut self, b: &[u8]) -> Result<()> {
        self.stream
            .write_all(b)
            .await
            .map_err(|e| HarnessError::io("raw publisher: cannot write", e))
    }

    async fn frame(&mut self, kind: u8, channel: u16, payload: &[u8]) -> Result<()> {
        let mut f = Vec::with_capacity(payload.len() + 8);
        f.push(kind);
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f.push(FRAME_END);
        self.write_all(&f).await
    }

    async fn method(&mut self, channel: u16, id: (u16, u16), args: &[u8]) -> Result<()> {
        let mut p = id.0.to_be_bytes().to_vec();
        p.extend_from_slice(&id.1.to_be_bytes());
        p.extend_from_slice(args);
        self.frame(FRAME_METHOD, channel, &p).await
    }

    async fn read_frame(&mut self) -> Result<(u8, u16, Vec<u8>)> {
        let io = |e| HarnessError::io("raw publisher: cannot read", e);
        loop {
            let mut head = [0u8; 7];
            self.stream.read_exact(&mut head).await.map_err(io)?;
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            let mut payload = vec![0u8; size + 1];
            self.stream.read_exact(&mut payload).await.map_err(io)?;
            payload.pop();
            if head[0] == FRAME_HEARTBEAT {
                continue;
            }
            return Ok((head[0], u16::from_be_bytes([head[1], head[2]]), payload));
        }
    }

    /// Reads frames until method `id` arrives on `channel`; returns its
    /// arguments. A `close` instead is an error.
    async fn expect_method(&mut self, channel: u16, id: (u16, u16)) -> Result<Vec<u8>> {
        let read = async {
            loop {
                let (kind, ch, payload) = self.read_frame().await?;
                if kind != FRAME_METHOD || ch != channel || payload.len() < 4 {
                    continue;
                }
                let got = (
                    u16::from_be_bytes([payload[0], payload[1]]),
                    u16::from_be_bytes([payload[2], payload[3]]),
                );
                if got == id {
                    return Ok(payload[4..].to_vec());
                }
                if got == (10, 50) || got == (20, 40) {
                    let text = payload
                        .get(7..)
                        .map(|t| String::from_utf8_lossy(t).into_owned())
                        .unwrap_or_default();
                    return Err(HarnessError::new(
                        ErrorKind::Amqp,
                        format!("raw publisher: the broker closed instead of {id:?}: {text}"),
                    ));
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Ok(r) => r,
            Err(_) => Err(HarnessError::new(
                ErrorKind::Timeout,
                format!("raw publisher: no {id:?} from the broker"),
            )),
        }
    }
}
