//! The hostbus wire contract.
//!
//! Every command, result, event and error that crosses the broker is defined
//! here, with the envelope and its mapping onto AMQP properties, the
//! encodings, the names of exchanges, queues and routing keys, request
//! validation and schema export. This crate is a leaf: it knows neither AMQP
//! libraries nor libvirt nor an async runtime, so any binding and any client
//! can depend on it.
//!
//! * [`commands`]: the catalogue; one marker type per operation implementing
//!   [`Command`] (`VmStart::NAME == "vm.start"`).
//! * [`types`]: records (what objects are) and specs (what to create).
//! * [`envelope`]: command envelope and its AMQP property mapping.
//! * [`reply`]: the reply body (`ok` / `task` / `error`).
//! * [`events`]: lifecycle events and presence heartbeats.
//! * [`error`]: structured XenAPI-style errors.
//! * [`codec`]: MessagePack (named fields) and JSON, with a size limit.
//! * [`names`]: exchanges, queues, routing keys, host id and label rules.
//! * [`validate`]: request validation naming the field at fault.
//! * [`schema`]: JSON Schema export.
//!
//! The wire is specified for implementers in `docs/protocol.md`.

#[macro_use]
mod macros;

pub mod codec;
pub mod commands;
pub mod envelope;
pub mod error;
pub mod events;
pub mod names;
pub mod openapi;
pub mod reply;
pub mod schema;
pub mod types;
pub mod validate;

pub use codec::{decode, encode, CodecError, ContentType, DEFAULT_MAX_PAYLOAD};
pub use commands::{
    command_info, visit_commands, Access, AnyRequest, AnyResponse, Command, CommandInfo,
    CommandVisitor, Plan, Planned, Run, Target, COMMANDS,
};
pub use envelope::{
    AmqpProperties, Envelope, HeaderValue, ProtocolVersion, Reply, ReplyStatus, PROTOCOL_VERSION,
};
pub use error::{Error, ErrorCode, ErrorFamily};
pub use events::{Announcement, Event, EventAction, Heartbeat, RosterAction};
pub use validate::{Validate, ValidationError};

/// Milliseconds since the Unix epoch now, the protocol's clock.
pub fn now_ms() -> types::Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
