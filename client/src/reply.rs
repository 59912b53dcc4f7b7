//! A reply as the client receives it, over the broker or an agent's
//! socket, and how it becomes a command's response. Apart from `client.rs`
//! so that the socket transport, which `client.rs` uses, does not import
//! from it.

use hostbus_protocol::{decode, AmqpProperties, Command, ContentType, Reply};

use crate::error::{ClientError, ErrorKind};

/// Largest reply the client accepts.
pub(crate) const MAX_REPLY: usize = 64 << 20;

/// A raw reply: its properties and body.
#[derive(Debug, Clone)]
pub(crate) struct RawReply {
    pub(crate) props: AmqpProperties,
    pub(crate) body: Vec<u8>,
}

/// The response of a synchronous call's reply, or its error.
pub(crate) fn response<C: Command>(reply: Reply<C::Response>) -> Result<C::Response, ClientError> {
    match reply {
        Reply::Ok(v) => Ok(v),
        Reply::Error(e) => Err(e.into()),
        Reply::Task(t) => Err(ClientError::new(
            ErrorKind::Internal,
            format!(
                "{} answered with task {} to a synchronous call",
                C::NAME,
                t.id
            ),
        )),
    }
}

/// A reply's body as command `C`'s reply.
pub(crate) fn decode_reply<C: Command>(raw: &RawReply) -> Result<Reply<C::Response>, ClientError> {
    let ct = ContentType::parse(raw.props.content_type.as_deref())
        .map_err(|e| ClientError::new(ErrorKind::Internal, e.to_string()))?;
    decode(ct, &raw.body, MAX_REPLY).map_err(|e| {
        ClientError::new(
            ErrorKind::Internal,
            format!("undecodable reply to {}: {e}", C::NAME),
        )
    })
}
