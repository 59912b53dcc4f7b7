//! The HTTP binding (docs/http.md): the whole catalogue over HTTP/1.1 on a
//! Unix socket and, optionally, TCP with TLS and client certificates.
//!
//! Thin by design: a request's path and headers become the dispatcher's
//! typed [`Request`] (command, command id, deadline, async flag, version,
//! content type, the peer and its role) and go through the same
//! [`Dispatcher`] (roles, validation, object locks, the journal, the
//! bridge); its typed answer becomes the response, the status from the
//! error's code. Events come from the same [`Feed`]. This module holds no
//! host logic and knows neither the bridge nor AMQP;
//! `tests/tests/crate_boundaries.rs` checks what it imports.

mod events;
mod listen;
mod tls;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hostbus_protocol::envelope::{
    ASYNC_HEADER, COMMAND_ID_HEADER, DEADLINE_HEADER, HOST_HEADER, STATUS_HEADER, VERSION_HEADER,
};
use hostbus_protocol::{
    encode, ContentType, Error, ErrorCode, Heartbeat, ProtocolVersion, Reply, ReplyStatus,
    PROTOCOL_VERSION,
};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::auth::{authorize_role, Role};
use crate::config::{HttpSettings, PeerRoles};
use crate::dispatch::{Caller, Dispatcher, Handled, Head, Request};
use crate::feed::Feed;

pub(crate) use listen::{bind, serve, Remote};

/// What the binding serves with.
pub(crate) struct HttpBinding {
    dispatcher: Arc<Dispatcher>,
    feed: Arc<Feed>,
    heartbeat: Box<dyn Fn() -> Heartbeat + Send + Sync>,
    peer_roles: PeerRoles,
    cert_roles: std::collections::BTreeMap<String, Role>,
    /// Commands run at once over HTTP (the bus has its own bound).
    permits: Semaphore,
    /// How many permits there are.
    concurrency: u32,
    max_payload: usize,
}

impl HttpBinding {
    /// A binding over the agent's dispatcher and feed; `heartbeat` says
    /// how the host is now; at most `concurrency` commands run at once.
    pub(crate) fn new(
        dispatcher: Arc<Dispatcher>,
        feed: Arc<Feed>,
        heartbeat: Box<dyn Fn() -> Heartbeat + Send + Sync>,
        settings: &HttpSettings,
        concurrency: usize,
        max_payload: usize,
    ) -> Self {
        Self {
            dispatcher,
            feed,
            heartbeat,
            peer_roles: settings.peer_roles.clone(),
            cert_roles: settings.roles.clone(),
            permits: Semaphore::new(concurrency.max(1)),
            concurrency: u32::try_from(concurrency.max(1)).unwrap_or(u32::MAX),
            max_payload,
        }
    }

    /// Stops taking commands and waits up to `bound` for those running;
    /// whether they all finished. Later commands get `HOST_UNAVAILABLE`.
    pub(crate) async fn drain(&self, bound: std::time::Duration) -> bool {
        let all = tokio::time::timeout(bound, self.permits.acquire_many(self.concurrency)).await;
        self.permits.close();
        matches!(all, Ok(Ok(_)))
    }

    /// The peer's name and role.
    fn peer(&self, remote: &Remote) -> (String, Option<Role>) {
        match remote {
            Remote::Unix {
                uid: Some(uid),
                gid: Some(gid),
            } => (format!("uid:{uid}"), self.peer_roles.role(*uid, *gid)),
            Remote::Unix { .. } => ("unknown peer".to_owned(), None),
            Remote::Cert { cn: Some(cn) } => (cn.clone(), self.cert_roles.get(cn).copied()),
            Remote::Cert { cn: None } => ("certificate without a CN".to_owned(), None),
        }
    }

    /// The refusal of a peer whose role does not allow reading, if it has none.
    fn refuse_reader(&self, remote: &Remote, what: &str) -> Option<Response> {
        let (principal, role) = self.peer(remote);
        authorize_role(&principal, role, what, hostbus_protocol::Access::Read)
            .err()
            .map(|e| error_response(ContentType::Json, e))
    }
}

/// The binding's routes.
pub(crate) fn router(binding: Arc<HttpBinding>) -> Router {
    Router::new()
        .route("/v1/commands/{command}", post(command))
        .route("/v1/events", get(events::events))
        .route("/v1/heartbeat", get(heartbeat))
        .route("/v1/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .with_state(binding)
}

/// A protocol error as an HTTP response, in `ct`.
fn error_response(ct: ContentType, e: Error) -> Response {
    let status =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let retry = retry_after(&e);
    let body = encode(ct, &Reply::<()>::Error(e)).unwrap_or_default();
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct.as_str()));
    h.insert(
        hostbus_protocol::envelope::STATUS_HEADER,
        HeaderValue::from_static("error"),
    );
    if let Some(v) = retry {
        h.insert(header::RETRY_AFTER, v);
    }
    r
}

/// `Retry-After`, whole seconds rounded up, for `BUSY`.
fn retry_after(e: &Error) -> Option<HeaderValue> {
    let ms: u64 = e.param("retry_after_ms")?.parse().ok()?;
    Some(HeaderValue::from(ms.div_ceil(1000).max(1)))
}

/// Reads and drops a request body nobody will use (up to the payload
/// limit): a body left unread makes hyper close the connection after the
/// reply, and a client reusing it meets a reset.
async fn drain(b: &HttpBinding, body: Body) {
    let _ = axum::body::to_bytes(body, b.max_payload).await;
}

async fn wrong_method(
    State(b): State<Arc<HttpBinding>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    body: Body,
) -> Response {
    drain(&b, body).await;
    let allow = if uri.path().starts_with("/v1/commands/") {
        "POST"
    } else {
        "GET"
    };
    let mut r = error_response(
        ContentType::Json,
        Error::new(
            ErrorCode::BadEnvelope,
            [
                ("property", "method".to_owned()),
                (
                    "reason",
                    format!("{method} is not served here; use {allow}"),
                ),
            ],
            format!(
                "bad envelope: {method} {} is not served; use {allow}",
                uri.path()
            ),
        ),
    );
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

async fn not_found(
    State(b): State<Arc<HttpBinding>>,
    uri: axum::http::Uri,
    body: Body,
) -> Response {
    drain(&b, body).await;
    error_response(
        ContentType::Json,
        Error::new(
            ErrorCode::UnknownCommand,
            [("command", uri.path().to_owned())],
            format!("no such path: {} (see /v1/openapi.json)", uri.path()),
        ),
    )
}

/// A GET any reader may make: the body dropped, the peer checked, then
/// `answer`.
async fn read_only(
    b: &HttpBinding,
    remote: &Remote,
    body: Body,
    what: &str,
    answer: impl FnOnce() -> Response,
) -> Response {
    drain(b, body).await;
    b.refuse_reader(remote, what).unwrap_or_else(answer)
}

async fn heartbeat(
    State(b): State<Arc<HttpBinding>>,
    ConnectInfo(remote): ConnectInfo<Remote>,
    body: Body,
) -> Response {
    read_only(&b, &remote, body, "GET /v1/heartbeat", || {
        json_response(&(b.heartbeat)())
    })
    .await
}

async fn openapi(
    State(b): State<Arc<HttpBinding>>,
    ConnectInfo(remote): ConnectInfo<Remote>,
    body: Body,
) -> Response {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    read_only(&b, &remote, body, "GET /v1/openapi.json", || {
        let text = TEXT.get_or_init(hostbus_protocol::openapi::openapi_text);
        ([(header::CONTENT_TYPE, "application/json")], text.clone()).into_response()
    })
    .await
}

fn json_response<T: serde::Serialize>(value: &T) -> Response {
    match encode(ContentType::Json, value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error_response(ContentType::Json, Error::internal(e)),
    }
}

/// `POST /v1/commands/{command}`: one command through the dispatcher.
async fn command(
    State(b): State<Arc<HttpBinding>>,
    ConnectInfo(remote): ConnectInfo<Remote>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Errors before the dispatcher are answered in the request's encoding
    // when it is one the protocol speaks, else JSON. An empty
    // `Content-Type` is no content type: JSON here (on the bus, where an
    // absent one means MessagePack, so does an empty one).
    let asked = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .filter(|v| !v.trim().is_empty());
    let ct = ContentType::parse(Some(asked.as_deref().unwrap_or("application/json")))
        .unwrap_or(ContentType::Json);
    let body = match read_body(body, b.max_payload).await {
        Ok(body) => body,
        Err(e) => return error_response(ct, e),
    };
    let head = match head(&name, asked.as_deref(), &headers) {
        Ok(h) => h,
        Err(e) => return reply_response(&b, None, b.dispatcher.refuse(Some(&name), ct, e)),
    };
    // An empty body is the empty request.
    let payload: &[u8] = match (body.is_empty(), head.content_type) {
        (false, _) => &body,
        (true, ContentType::Json) => b"{}",
        (true, ContentType::MsgPack) => &[0x80],
    };
    let (principal, role) = b.peer(&remote);
    let Ok(_permit) = b.permits.acquire().await else {
        return error_response(
            ct,
            Error::new(
                ErrorCode::HostUnavailable,
                [("reason", "the agent is stopping".to_owned())],
                "the agent is stopping; retry on its next start",
            ),
        );
    };
    let handled = b
        .dispatcher
        .handle(Request {
            head: &head,
            caller: Caller::Peer {
                principal: &principal,
                role,
            },
            payload,
            deliveries: 1,
        })
        .await;
    reply_response(&b, Some(head.command_id), handled)
}

/// The body, at most `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Error> {
    match axum::body::to_bytes(body, limit.saturating_add(1)).await {
        Ok(bytes) if bytes.len() > limit => Err(too_large(bytes.len(), limit)),
        Ok(bytes) => Ok(bytes),
        Err(e) => {
            let source = e.into_inner();
            if source.is::<http_body_util::LengthLimitError>() {
                Err(too_large(limit + 1, limit))
            } else {
                Err(Error::new(
                    ErrorCode::MalformedMessage,
                    [("reason", format!("cannot read the body: {source}"))],
                    format!("malformed message: cannot read the body: {source}"),
                ))
            }
        }
    }
}

fn too_large(size: usize, limit: usize) -> Error {
    Error::new(
        ErrorCode::PayloadTooLarge,
        [("size", size.to_string()), ("limit", limit.to_string())],
        format!("the payload is larger than the {limit} bytes accepted"),
    )
}

/// The command's head from the request's path and headers
/// (docs/http.md): the command id (a new one when absent), the deadline,
/// the async flag, the protocol version (this peer's when absent) and the
/// content type (JSON when absent).
fn head(name: &str, content_type: Option<&str>, headers: &HeaderMap) -> Result<Head, Error> {
    let bad = |property: &str, reason: String| {
        Error::new(
            ErrorCode::BadEnvelope,
            [
                ("property", property.to_owned()),
                ("reason", reason.clone()),
            ],
            format!("bad envelope: `{property}` {reason}"),
        )
    };
    let text = |name: &str| -> Result<Option<String>, Error> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(str::to_owned)
                    .map_err(|_| bad(name, "is not visible ASCII".to_owned()))
            })
            .transpose()
    };
    let command_id = match text(COMMAND_ID_HEADER)? {
        Some(id) => Uuid::parse_str(id.trim())
            .map_err(|_| bad(COMMAND_ID_HEADER, format!("is not a UUID: {id:?}")))?,
        None => Uuid::new_v4(),
    };
    let deadline = match text(DEADLINE_HEADER)? {
        Some(d) => Some(d.trim().parse::<u64>().map_err(|_| {
            bad(
                DEADLINE_HEADER,
                format!("is not ms since the Unix epoch: {d:?}"),
            )
        })?),
        None => None,
    };
    let asynchronous = match text(ASYNC_HEADER)?.as_deref().map(str::trim) {
        None | Some("false" | "0") => false,
        Some("true" | "1") => true,
        Some(a) => return Err(bad(ASYNC_HEADER, format!("is not true or false: {a:?}"))),
    };
    // Optional here: the request line already says which API this is.
    let version = match text(VERSION_HEADER)? {
        Some(v) => ProtocolVersion::accepted(&v)?,
        None => PROTOCOL_VERSION,
    };
    Ok(Head {
        command: name.to_owned(),
        command_id,
        deadline,
        asynchronous,
        version,
        content_type: ContentType::parse(Some(content_type.unwrap_or("application/json")))?,
    })
}

/// The dispatcher's answer as an HTTP response: the same `Reply` body, a
/// status from its outcome (an error's from its code), the reply headers.
fn reply_response(b: &HttpBinding, command_id: Option<Uuid>, h: Handled) -> Response {
    let status = match (&h.status, &h.error) {
        (ReplyStatus::Ok, _) => StatusCode::OK,
        (ReplyStatus::Task, _) => StatusCode::ACCEPTED,
        (ReplyStatus::Error, Some(e)) => {
            StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
        (ReplyStatus::Error, None) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut r = (status, h.body).into_response();
    let headers = r.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(h.content_type.as_str()),
    );
    if let Some(id) = command_id.and_then(|c| HeaderValue::from_str(&c.to_string()).ok()) {
        headers.insert(COMMAND_ID_HEADER, id);
    }
    if let Ok(v) = HeaderValue::from_str(&PROTOCOL_VERSION.to_string()) {
        headers.insert(VERSION_HEADER, v);
    }
    headers.insert(STATUS_HEADER, HeaderValue::from_static(h.status.as_str()));
    if let Ok(host) = HeaderValue::from_str(b.dispatcher.host_id()) {
        headers.insert(HOST_HEADER, host);
    }
    if let Some(v) = h.error.as_ref().and_then(retry_after) {
        headers.insert(header::RETRY_AFTER, v);
    }
    r
}
