//! Reading RabbitMQ streams (events, heartbeats, the roster): where to
//! start, a delivery's offset and encoding, and the error for a stream
//! that is not there.

use hostbus_protocol::ContentType;
use lapin::options::BasicConsumeOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Consumer};

use crate::connection::is_not_found;
use crate::error::{ClientError, ErrorKind};

/// `x-stream-offset` `next` or `first`.
pub(crate) fn named(spec: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(spec.as_bytes()))
}

/// `x-stream-offset` at a numbered offset.
pub(crate) fn at(offset: u64) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(offset).unwrap_or(i64::MAX))
}

/// `x-stream-offset` at a time, ms since the epoch (the broker's
/// granularity is a second).
pub(crate) fn at_time(ms: u64) -> AMQPValue {
    AMQPValue::Timestamp(ms / 1000)
}

/// A stream delivery's offset.
pub(crate) fn offset_of(d: &lapin::message::Delivery) -> Option<u64> {
    let headers = d.properties.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(o) => u64::try_from(*o).ok(),
        AMQPValue::LongUInt(o) => Some(u64::from(*o)),
        _ => None,
    }
}

/// A delivery's encoding (MessagePack when it does not say).
pub(crate) fn content_type(d: &lapin::message::Delivery) -> ContentType {
    ContentType::parse(d.properties.content_type().as_ref().map(|c| c.as_str())).unwrap_or_default()
}

/// Whether stream delivery `d` was published through `exchange` under
/// `key`, the routing key its body gives: only then did the broker's topic
/// permissions check that its publisher may speak for the host it names.
/// The default exchange reaches every queue by name, streams included, and
/// hosts may write to it (their replies go through it), so a host could
/// append a message claiming to be another's (docs/security.md); such a
/// message is skipped, with a warning.
pub(crate) fn published_as(d: &lapin::message::Delivery, exchange: &str, key: &str) -> bool {
    let ok = d.exchange.as_str() == exchange && d.routing_key.as_str() == key;
    if !ok {
        tracing::warn!(
            exchange = d.exchange.as_str(),
            routing_key = d.routing_key.as_str(),
            expected_exchange = exchange,
            expected_key = key,
            "skipped a stream message not published under its own routing key (forged, or a peer's defect)"
        );
    }
    ok
}

/// Starts consuming stream `queue` at `offset`.
pub(crate) async fn consume(
    ch: &Channel,
    queue: &str,
    offset: AMQPValue,
) -> Result<Consumer, ClientError> {
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), offset);
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions::default(),
        args,
    )
    .await
    .map_err(|e| missing(queue, e))
}

/// A broker error about `object` (a stream or an exchange), saying what
/// to do when it does not exist.
pub(crate) fn missing(object: &str, e: lapin::Error) -> ClientError {
    if is_not_found(&e) {
        ClientError::new(
            ErrorKind::NotFound,
            format!(
                "{object} does not exist on this broker: no agent of this version has connected yet (agents declare it), or an administrator must run `hostctl admin setup`"
            ),
        )
    } else {
        e.into()
    }
}
