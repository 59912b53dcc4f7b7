//! Typed commands over plain AMQP, as a third party sends them through an
//! [`AmqpPeer`]: a command's properties, a typed call and its decoded reply,
//! the error of an error reply, an event's body. The suites share these
//! instead of writing their own.

use std::borrow::Borrow;
use std::time::Duration;

use hostbus_protocol::commands::Empty;
use hostbus_protocol::envelope::{AmqpProperties, Envelope, STATUS_HEADER};
use hostbus_protocol::names::host_key;
use hostbus_protocol::{decode, encode, now_ms, Command, ContentType, Error, Event, Reply};

use crate::amqp::{AmqpPeer, Received};

/// How long a typed call waits for its reply.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The largest reply body the helpers decode.
pub const REPLY_LIMIT: usize = 64 << 20;

/// The properties of command `command` from `sender` in `ct`, due within
/// 30 s (RabbitMQ checks the sender against the login; the agent authorizes
/// on it).
pub fn command_props(command: &str, sender: &str, ct: ContentType) -> AmqpProperties {
    let mut env = Envelope::new(command);
    env.content_type = ct;
    env.sender = Some(sender.to_owned());
    env.deadline = Some(now_ms() + 30_000);
    env.to_properties(now_ms())
}

/// Sends command `C` to `host` as `sender` in MessagePack and decodes the
/// reply. Panics when no reply comes within [`CALL_TIMEOUT`] or it does not
/// decode.
pub async fn call_as<C: Command>(
    peer: &mut AmqpPeer,
    host: &str,
    sender: &str,
    req: &C::Request,
) -> (Received, Reply<C::Response>) {
    send::<C>(peer, host, sender, req, ContentType::MsgPack).await
}

/// Sends command `C` to `host` as `sender`, in `ct`, and decodes the reply
/// in `ct`.
async fn send<C: Command>(
    peer: &mut AmqpPeer,
    host: &str,
    sender: &str,
    req: &C::Request,
    ct: ContentType,
) -> (Received, Reply<C::Response>) {
    let body = encode(ct, req).expect("encode");
    let r = peer
        .call(
            &host_key(host),
            &command_props(C::NAME, sender, ct),
            &body,
            CALL_TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("{} as {sender}: {e}", C::NAME));
    let reply = decode(ct, &r.body, REPLY_LIMIT)
        .unwrap_or_else(|e| panic!("{}: undecodable reply: {e}", C::NAME));
    (r, reply)
}

/// Sends `C` to `host` as `guest` (an admin by default) in `ct`, checks that
/// the reply comes in the request's encoding, and decodes it.
pub async fn call_in<C: Command>(
    peer: &mut AmqpPeer,
    host: &str,
    req: &C::Request,
    ct: ContentType,
) -> (Received, Reply<C::Response>) {
    let (r, reply) = send::<C>(peer, host, "guest", req, ct).await;
    let reply_ct =
        ContentType::parse(r.properties.content_type.as_deref()).expect("reply content type");
    assert_eq!(reply_ct, ct, "replies come in the request's encoding");
    (r, reply)
}

/// The value of an `ok` reply; panics naming `C` on any other reply.
pub fn expect_ok<C: Command>(reply: Reply<C::Response>) -> C::Response {
    match reply {
        Reply::Ok(v) => v,
        other => panic!("{}: {other:?}", C::NAME),
    }
}

/// Sends `C` to `host` as `guest` in MessagePack and returns its value.
pub async fn ok<C: Command>(
    peer: &mut AmqpPeer,
    host: &str,
    req: impl Borrow<C::Request>,
) -> C::Response {
    expect_ok::<C>(
        call_in::<C>(peer, host, req.borrow(), ContentType::MsgPack)
            .await
            .1,
    )
}

/// The error of an error reply, if it is one (decoded in the reply's
/// content type).
pub fn reply_error(r: &Received) -> Option<Error> {
    let ct = ContentType::parse(r.properties.content_type.as_deref()).unwrap_or_default();
    match decode::<Reply<Empty>>(ct, &r.body, REPLY_LIMIT) {
        Ok(Reply::Error(e)) => Some(e),
        _ => None,
    }
}

/// The error of a reply that must be an error reply, with its status header.
pub fn error_of(r: &Received) -> Error {
    let ct = ContentType::parse(r.properties.content_type.as_deref()).unwrap_or_default();
    match decode::<Reply<Empty>>(ct, &r.body, 1 << 20) {
        Ok(Reply::Error(e)) => {
            assert_eq!(r.header_str(STATUS_HEADER), Some("error"));
            e
        }
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// The event a message on `hostbus.evt` carries (MessagePack).
pub fn event_of(r: &Received) -> Event {
    decode(ContentType::MsgPack, &r.body, REPLY_LIMIT).expect("event")
}
