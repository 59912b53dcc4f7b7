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
