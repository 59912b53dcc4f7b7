//! The second transport: HTTP/1.1 on a local agent's Unix socket
//! (docs/http.md), for one host and no broker. Commands are
//! `POST /v1/commands/{name}` with the envelope's facts as headers, and
//! their reply body is the bus's `Reply`; `GET /v1/heartbeat` is the
//! host's heartbeat; `GET /v1/events` its event stream (read by
//! `events.rs`, framed by `sse.rs`).
//!
//! One connection is kept for requests, taken out while a request uses
//! it and put back once its reply is read whole: a request dropped halfway
//! (a deadline, a cancelled future) drops its connection with it, so no
//! reply can be read by the wrong request. Requests made meanwhile open a
//! connection of their own, closed when they are done. An event stream
//! has its own connection too.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hostbus_protocol::envelope::{
    ASYNC_HEADER, COMMAND_ID_HEADER, DEADLINE_HEADER, VERSION_HEADER,
};
use hostbus_protocol::{
    decode, encode, AmqpProperties, Command, ContentType, Heartbeat, Reply, PROTOCOL_VERSION,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use uuid::Uuid;

use crate::connection::lock;
use crate::error::{ClientError, ErrorKind};
use crate::reply::{decode_reply, RawReply, MAX_REPLY};

/// The path of the host's heartbeat.
const HEARTBEAT: &str = "/v1/heartbeat";
/// The path of the host's event stream.
pub(crate) const EVENTS: &str = "/v1/events";

type Sender = SendRequest<Full<Bytes>>;

/// A local agent's socket, and the host it serves.
pub(crate) struct Socket {
    path: PathBuf,
    /// The connection kept between requests.
    idle: Mutex<Option<Sender>>,
    /// The host the agent serves, from its heartbeat when connecting.
    host: String,
}

impl Socket {
    /// Connects to the agent at `path` and reads its heartbeat (which
    /// names the host it serves); fails with a `Connection` error naming
    /// the path when nothing serves there.
    pub(crate) async fn connect(path: &Path) -> Result<(Self, Heartbeat), ClientError> {
        let mut socket = Self {
            path: path.to_owned(),
            idle: Mutex::new(None),
            host: String::new(),
        };
        let hb = socket.heartbeat().await?;
        socket.host.clone_from(&hb.host_id);
        Ok((socket, hb))
    }

    /// The socket's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The host the agent serves.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// A `Connection` error about this socket.
    fn lost(&self, what: impl std::fmt::Display) -> ClientError {
        ClientError::new(
            ErrorKind::Connection,
            format!("agent socket {}: {what}", self.path.display()),
        )
    }

    /// Opens a connection.
    async fn open(&self) -> Result<Sender, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.path)
            .await
            .map_err(|e| {
                ClientError::new(
                    ErrorKind::Connection,
                    format!(
                        "cannot connect to the agent socket {}: {e} (is hostbus-agent running with --http-socket {0}?)",
                        self.path.display()
                    ),
                )
            })?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.lost(e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "agent socket connection ended");
            }
        });
        Ok(sender)
    }

    /// A connection ready for a request: the kept one if it still is, else
    /// a new one.
    async fn ready(&self) -> Result<Sender, ClientError> {
        let kept = lock(&self.idle).take();
        if let Some(mut sender) = kept {
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let mut sender = self.open().await?;
        sender.ready().await.map_err(|e| self.lost(e))?;
        Ok(sender)
    }

    /// Sends `req` and reads its reply whole (at most [`MAX_REPLY`]
    /// bytes): the status, the content type and the body.
    async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Option<String>, Bytes), ClientError> {
        let mut sender = self.ready().await?;
        let resp = sender.send_request(req).await.map_err(|e| self.lost(e))?;
        let status = resp.status();
        let content_type = content_type(&resp);
        let body = Limited::new(resp.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| self.lost(e))?
            .to_bytes();
        let mut idle = lock(&self.idle);
        if idle.is_none() && !sender.is_closed() {
            *idle = Some(sender);
        }
        Ok((status, content_type, body))
    }

    /// A request to `path` with the headers every request has.
    fn request(method: Method, path: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost")
            .header(VERSION_HEADER, PROTOCOL_VERSION.to_string())
    }

    /// Posts command `C` (`req` in `content_type`) with its command id,
    /// absolute deadline (ms since the Unix epoch) and whether it should
    /// run as a task; its reply, decoded as the bus's. An error status's
    /// body is a `Reply` too; one that is not says what the status says.
    pub(crate) async fn call<C: Command>(
        &self,
        req: &C::Request,
        content_type: ContentType,
        command_id: Uuid,
        deadline: u64,
        asynchronous: bool,
    ) -> Result<Reply<C::Response>, ClientError> {
        let body = encode(content_type, req)
            .map_err(|e| ClientError::new(ErrorKind::InvalidArgument, e.to_string()))?;
        let mut req = Self::request(Method::POST, &format!("/v1/commands/{}", C::NAME))
            .header(header::CONTENT_TYPE, content_type.as_str())
            .header(COMMAND_ID_HEADER, command_id.to_string())
            .header(DEADLINE_HEADER, deadline.to_string());
        if asynchronous {
            req = req.header(ASYNC_HEADER, "true");
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::new(ErrorKind::InvalidArgument, e.to_string()))?;
        let (status, content_type, body) = self.exchange(req).await?;
        let raw = RawReply {
            props: AmqpProperties {
                content_type,
                ..AmqpProperties::default()
            },
            body: body.into(),
        };
        decode_reply::<C>(&raw).map_err(|e| {
            if status.is_success() {
                e
            } else {
                refusal(
                    C::NAME,
                    status,
                    raw.props.content_type.as_deref(),
                    &raw.body,
                )
            }
        })
    }

    /// `GET /v1/heartbeat`: the host's heartbeat now.
    pub(crate) async fn heartbeat(&self) -> Result<Heartbeat, ClientError> {
        let req = Self::request(Method::GET, HEARTBEAT)
            .body(Full::default())
            .map_err(|e| ClientError::new(ErrorKind::Internal, e.to_string()))?;
        let (status, content_type, body) = self.exchange(req).await?;
        if !status.is_success() {
            return Err(refusal(HEARTBEAT, status, content_type.as_deref(), &body));
        }
        decode(ContentType::Json, &body, MAX_REPLY).map_err(|e| {
            ClientError::new(
                ErrorKind::Internal,
                format!("undecodable heartbeat from {}: {e}", self.path.display()),
            )
        })
    }

    /// `GET path` on a connection of its own, for a reply read as it comes
    /// (an event stream); an error status is the error its body says.
    pub(crate) async fn stream(&self, path: &str) -> Result<Response<Incoming>, ClientError> {
        let mut sender = self.open().await?;
        sender.ready().await.map_err(|e| self.lost(e))?;
        let req = Self::request(Method::GET, path)
            .body(Full::default())
            .map_err(|e| ClientError::new(ErrorKind::Internal, e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| self.lost(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let content_type = content_type(&resp);
        let body = Limited::new(resp.into_body(), MAX_REPLY)
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        Err(refusal(path, status, content_type.as_deref(), &body))
    }
}

fn content_type(resp: &Response<Incoming>) -> Option<String> {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The error of a reply with an error status: the protocol error its body
/// holds (`{"error": ...}`), else one made of the status.
fn refusal(what: &str, status: StatusCode, content_type: Option<&str>, body: &[u8]) -> ClientError {
    let said = ContentType::parse(content_type)
        .ok()
        .and_then(|ct| decode::<Reply<serde::de::IgnoredAny>>(ct, body, MAX_REPLY).ok());
    if let Some(Reply::Error(e)) = said {
        return e.into();
    }
    let kind = match status {
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => ErrorKind::PermissionDenied,
        StatusCode::NOT_FOUND => ErrorKind::NotFound,
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => ErrorKind::Timeout,
        StatusCode::TOO_MANY_REQUESTS => ErrorKind::Busy,
        StatusCode::SERVICE_UNAVAILABLE => ErrorKind::Unavailable,
        s if s.is_client_error() => ErrorKind::InvalidArgument,
        _ => ErrorKind::Internal,
    };
    ClientError::new(kind, format!("{what}: the agent answered HTTP {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostbus_protocol::{encode, Error as WireError, ErrorCode};

    #[test]
    fn an_error_status_is_the_error_its_body_holds_else_its_own() {
        let reply: Reply<()> = Reply::Error(WireError::new(
            ErrorCode::PermissionDenied,
            [("principal", "uid:1000".to_owned())],
            "no role",
        ));
        for ct in [ContentType::Json, ContentType::MsgPack] {
            let body = encode(ct, &reply).expect("encode");
            let e = refusal("x", StatusCode::FORBIDDEN, Some(ct.as_str()), &body);
            assert_eq!(e.code(), Some(ErrorCode::PermissionDenied));
            assert_eq!(e.param("principal"), Some("uid:1000"));
        }
        let e = refusal("/v1/x", StatusCode::METHOD_NOT_ALLOWED, None, b"");
        assert_eq!(
            (e.kind(), e.code(), e.message()),
            (
                ErrorKind::InvalidArgument,
                None,
                "/v1/x: the agent answered HTTP 405 Method Not Allowed"
            )
        );
        let e = refusal(
            "/v1/x",
            StatusCode::BAD_GATEWAY,
            Some("text/plain"),
            b"oops",
        );
        assert_eq!(e.kind(), ErrorKind::Internal);
    }
}
