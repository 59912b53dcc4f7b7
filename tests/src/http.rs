//! The HTTP binding (docs/http.md) as a third party uses it: raw requests
//! over an agent's Unix socket with hyper (a connection per request), the
//! status, headers and body of each reply, and the server-sent event
//! stream read message by message.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hostbus_protocol::{decode, encode, Command, ContentType, Error, Reply};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::Request;
use hyper_util::rt::TokioIo;

use crate::error::{ErrorKind, HarnessError, Result};

/// One reply of the binding.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// The HTTP status.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpReply {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as a protocol `Reply`, in the encoding its content type names.
    pub fn reply<T: serde::de::DeserializeOwned>(&self) -> Reply<T> {
        let ct = ContentType::parse(self.header("content-type")).unwrap_or_else(|e| {
            panic!(
                "reply content type: {e}; status {} body {:?}",
                self.status,
                self.text()
            )
        });
        decode(ct, &self.body, 64 << 20).unwrap_or_else(|e| {
            panic!(
                "undecodable reply ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The error of an error reply; panics on any other.
    pub fn error(&self) -> Error {
        match self.reply::<serde::de::IgnoredAny>() {
            Reply::Error(e) => e,
            _ => panic!("not an error: status {} body {}", self.status, self.text()),
        }
    }

    /// The body as text (lossy), for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseMessage {
    /// Its `event:` field.
    pub event: String,
    /// Its `id:` field.
    pub id: Option<String>,
    /// Its `data:` lines, joined by newlines.
    pub data: String,
}

/// A server-sent event stream being read.
pub struct SseStream {
    body: Incoming,
    buf: String,
}

impl SseStream {
    /// The next message (comments skipped), within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<SseMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut m = SseMessage::default();
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => m.event = value.to_owned(),
                        "id" => m.id = Some(value.to_owned()),
                        "data" if m.data.is_empty() => m.data = value.to_owned(),
                        "data" => {
                            m.data.push('\n');
                            m.data.push_str(value);
                        }
                        _ => {}
                    }
                }
                if m.event.is_empty() && m.data.is_empty() {
                    continue; // a comment (keep-alive)
                }
                return Ok(m);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.body.frame())
                .await
                .map_err(|_| {
                    HarnessError::new(ErrorKind::Timeout, "no server-sent event in time")
                })?;
            match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                Some(Err(e)) => {
                    return Err(HarnessError::new(
                        ErrorKind::Io,
                        format!("event stream: {e}"),
                    ))
                }
                None => return Err(HarnessError::new(ErrorKind::Io, "the event stream ended")),
            }
        }
    }
}

/// A client of one agent's Unix socket.
#[derive(Debug, Clone)]
pub struct HttpPeer {
    socket: PathBuf,
}

fn io(what: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::new(ErrorKind::Io, format!("{what}: {e}"))
}

impl HttpPeer {
    /// A peer of the socket at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self {
            socket: path.into(),
        }
    }

    /// Waits until the socket accepts connections.
    pub async fn wait(path: &Path, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        loop {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Ok(Self::unix(path));
            }
            if Instant::now() > deadline {
                return Err(HarnessError::new(
                    ErrorKind::Timeout,
                    format!("{} does not accept connections", path.display()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new HTTP/1.1 connection to the socket.
    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| io(&self.socket.display().to_string(), e))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| io("HTTP handshake", e))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// Sends a request on `sender`'s connection.
    async fn send_on(
        sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<hyper::Response<Incoming>> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| io("request", e))?;
        sender.ready().await.map_err(|e| io("connection", e))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| io("HTTP request", e))
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<hyper::Response<Incoming>> {
        let mut sender = self.connect().await?;
        Self::send_on(&mut sender, method, path, headers, body).await
    }

    /// Two requests, `(method, path, body)` each, one after the other on
    /// one kept-alive connection: the second fails if the server closed it.
    pub async fn on_one_connection(
        &self,
        first: (&str, &str, Vec<u8>),
        second: (&str, &str, Vec<u8>),
    ) -> Result<(HttpReply, HttpReply)> {
        let mut sender = self.connect().await?;
        let json = [("content-type", "application/json")];
        let a = Self::send_on(&mut sender, first.0, first.1, &json, first.2).await?;
        let a = read(a).await?;
        let b = Self::send_on(&mut sender, second.0, second.1, &json, second.2).await?;
        Ok((a, read(b).await?))
    }

    /// Sends a request and reads the whole reply.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<HttpReply> {
        read(self.send(method, path, headers, body).await?).await
    }

    /// `POST /v1/commands/<C>` with `req` in `ct` and extra `headers`; the
    /// reply and its decoded body.
    pub async fn call<C: Command>(
        &self,
        req: &C::Request,
        ct: ContentType,
        headers: &[(&str, &str)],
    ) -> (HttpReply, Reply<C::Response>) {
        let body = encode(ct, req).expect("encode the request");
        let mut all = vec![("content-type", ct.as_str())];
        all.extend_from_slice(headers);
        let r = self
            .request("POST", &format!("/v1/commands/{}", C::NAME), &all, body)
            .await
            .expect("HTTP call");
        let reply = r.reply();
        (r, reply)
    }

    /// `GET /v1/events`: the stream, its `hello` message read.
    pub async fn events(&self) -> Result<(SseStream, SseMessage)> {
        let resp = self.send("GET", "/v1/events", &[], Vec::new()).await?;
        if resp.status() != 200 {
            return Err(io("GET /v1/events", resp.status()));
        }
        let mut s = SseStream {
            body: resp.into_body(),
            buf: String::new(),
        };
        let hello = s.next(Duration::from_secs(10)).await?;
        Ok((s, hello))
    }
}

/// The whole reply.
async fn read(resp: hyper::Response<Incoming>) -> Result<HttpReply> {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| io("reply body", e))?
        .to_bytes()
        .to_vec();
    Ok(HttpReply {
        status,
        headers,
        body,
    })
}
