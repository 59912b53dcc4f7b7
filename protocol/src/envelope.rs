//! The envelope of a command and its reply, and their mapping onto AMQP 0-9-1
//! basic properties, as plain data: this crate knows no AMQP library. The
//! agent and the client copy [`AmqpProperties`] to and from their library's
//! property type field by field.

use std::collections::BTreeMap;
use std::fmt;

use uuid::Uuid;

use crate::codec::ContentType;
use crate::error::{Error, ErrorCode};
pub use crate::reply::{Reply, ReplyStatus};
use crate::types::Timestamp;

/// Header that carries the protocol version, `"<major>.<minor>"`.
pub const VERSION_HEADER: &str = "x-hostbus-version";
/// Header that carries the absolute deadline, milliseconds since the Unix epoch.
pub const DEADLINE_HEADER: &str = "x-hostbus-deadline";
/// Header that asks for asynchronous execution (`true`): the reply is a task.
pub const ASYNC_HEADER: &str = "x-hostbus-async";
/// Header of a reply: `ok`, `task` or `error`, mirroring the body's variant.
pub const STATUS_HEADER: &str = "x-hostbus-status";
/// Header of a reply: the id of the host that answered.
pub const HOST_HEADER: &str = "x-hostbus-host";
/// HTTP binding (docs/http.md): the header that carries the command id, the
/// bus's `message_id`.
pub const COMMAND_ID_HEADER: &str = "x-hostbus-command-id";

/// A protocol version. Peers with the same major version interoperate;
/// minor versions only add (fields, commands, codes, enum values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    /// Changes on a breaking change.
    pub major: u16,
    /// Changes on an additive change.
    pub minor: u16,
}

/// The version this crate speaks.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion { major: 1, minor: 1 };

impl ProtocolVersion {
    /// Parses `"1.0"`.
    pub fn parse(s: &str) -> Option<Self> {
        let (major, minor) = s.trim().split_once('.')?;
        Some(Self {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }

    /// Whether a peer speaking `self` can serve a request of version `other`.
    pub fn accepts(self, other: ProtocolVersion) -> bool {
        self.major == other.major
    }

    /// The version a request states in [`VERSION_HEADER`], if this peer
    /// serves it: `BAD_ENVELOPE` for text that is no version,
    /// `UNSUPPORTED_VERSION` for another major version.
    pub fn accepted(text: &str) -> Result<Self, Error> {
        let version = Self::parse(text).ok_or_else(|| {
            Error::new(
                ErrorCode::BadEnvelope,
                [
                    ("property", VERSION_HEADER.to_owned()),
                    ("reason", "is not `<major>.<minor>`".to_owned()),
                ],
                format!("bad envelope: `{VERSION_HEADER}` is not `<major>.<minor>`"),
            )
        })?;
        if !PROTOCOL_VERSION.accepts(version) {
            return Err(Error::new(
                ErrorCode::UnsupportedVersion,
                [
                    ("version", version.to_string()),
                    ("supported", PROTOCOL_VERSION.to_string()),
                ],
                format!("protocol version {version} is not supported; this peer speaks {PROTOCOL_VERSION}"),
            ));
        }
        Ok(version)
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A header value, the subset of AMQP field values the protocol uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// A long string.
    Str(String),
    /// A signed 64-bit integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A value of another AMQP type (a float, a table, an array, ...), by
    /// the name of its type. The protocol reads none of them; they are kept
    /// so that a header of the wrong type is refused as such, not as missing.
    Other(String),
}

impl HeaderValue {
    fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::Str(s) => Some(s),
            _ => None,
        }
    }
    fn as_int(&self) -> Option<i64> {
        match self {
            HeaderValue::Int(i) => Some(*i),
            HeaderValue::Str(s) => s.parse().ok(),
            HeaderValue::Bool(_) | HeaderValue::Other(_) => None,
        }
    }
    fn as_bool(&self) -> Option<bool> {
        match self {
            HeaderValue::Bool(b) => Some(*b),
            HeaderValue::Str(s) => s.parse().ok(),
            HeaderValue::Int(i) => Some(*i != 0),
            HeaderValue::Other(_) => None,
        }
    }
}

/// AMQP 0-9-1 basic properties as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AmqpProperties {
    /// `message_id`.
    pub message_id: Option<String>,
    /// `correlation_id`.
    pub correlation_id: Option<String>,
    /// `reply_to`.
    pub reply_to: Option<String>,
    /// `type`.
    pub kind: Option<String>,
    /// `content_type`.
    pub content_type: Option<String>,
    /// `timestamp`, seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// `expiration`, milliseconds of TTL as a decimal string.
    pub expiration: Option<String>,
    /// `user_id`, verified by RabbitMQ against the publisher's login.
    pub user_id: Option<String>,
    /// `delivery_mode`: 2 for persistent.
    pub delivery_mode: Option<u8>,
    /// `headers`.
    pub headers: BTreeMap<String, HeaderValue>,
}

/// Everything about a command that is not its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique id of the command (`message_id`), the key of deduplication.
    pub command_id: Uuid,
    /// The command's wire name (`type`), e.g. `vm.start`.
    pub command: String,
    /// Id the reply will carry (`correlation_id`); the command id when absent.
    pub correlation_id: Option<String>,
    /// Where to reply (`reply_to`); absent for a cast.
    pub reply_to: Option<String>,
    /// Absolute deadline (header and `expiration`); past it, the command is not run.
    pub deadline: Option<Timestamp>,
    /// The sender's protocol version (header).
    pub version: ProtocolVersion,
    /// The broker-verified sender (`user_id`).
    pub sender: Option<String>,
    /// Payload encoding (`content_type`).
    pub content_type: ContentType,
    /// When sent, seconds (`timestamp`).
    pub sent_at: Option<u64>,
    /// Run as a task and reply with the task at once (header).
    pub asynchronous: bool,
}

impl Envelope {
    /// A new command envelope with a fresh id, the current protocol version
    /// and MessagePack content.
    pub fn new(command: &str) -> Self {
        Self {
            command_id: Uuid::new_v4(),
            command: command.to_owned(),
            correlation_id: None,
            reply_to: None,
            deadline: None,
            version: PROTOCOL_VERSION,
            sender: None,
            content_type: ContentType::MsgPack,
            sent_at: None,
            asynchronous: false,
        }
    }

    /// Whether this is a cast (no reply expected).
    pub fn is_cast(&self) -> bool {
        self.reply_to.is_none()
    }

    /// The correlation id the reply carries.
    pub fn reply_correlation(&self) -> String {
        self.correlation_id
            .clone()
            .unwrap_or_else(|| self.command_id.to_string())
    }

    /// Whether the broker should keep this command on disk (delivery mode
    /// 2). Every command is persistent except a read whose reply goes to
    /// direct reply-to: that reply's only consumer is the caller's
    /// connection, which a broker restart closes, so a read kept across the
    /// restart would run for nobody. Persisting it costs the broker a disk
    /// write per call (about a third of the broker's throughput; see
    /// docs/performance.md).
    pub fn is_persistent(&self) -> bool {
        let read = crate::commands::command_info(&self.command)
            .is_some_and(|c| c.access == crate::commands::Access::Read);
        !(read && self.reply_to.as_deref() == Some(crate::names::DIRECT_REPLY_TO))
    }

    /// Whether the deadline has passed at `now` (ms).
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// `EXPIRED` for this envelope at `now`.
    pub fn expired_error(&self, now: Timestamp) -> Error {
        Error::expired(&self.command, self.deadline.unwrap_or_default(), now)
    }

    /// The AMQP properties of the command, with `expiration` computed from
    /// the deadline at `now` (ms), so the broker drops it when it expires.
    pub fn to_properties(&self, now: Timestamp) -> AmqpProperties {
        let mut headers = BTreeMap::new();
        headers.insert(
            VERSION_HEADER.to_owned(),
            HeaderValue::Str(self.version.to_string()),
        );
        if let Some(d) = self.deadline {
            headers.insert(
                DEADLINE_HEADER.to_owned(),
                HeaderValue::Int(i64::try_from(d).unwrap_or(i64::MAX)),
            );
        }
        if self.asynchronous {
            headers.insert(ASYNC_HEADER.to_owned(), HeaderValue::Bool(true));
        }
        AmqpProperties {
            message_id: Some(self.command_id.to_string()),
            correlation_id: self.correlation_id.clone(),
            reply_to: self.reply_to.clone(),
            kind: Some(self.command.clone()),
            content_type: Some(self.content_type.as_str().to_owned()),
            timestamp: self.sent_at.or(Some(now / 1000)),
            expiration: self.deadline.map(|d| d.saturating_sub(now).to_string()),
            user_id: self.sender.clone(),
            delivery_mode: Some(if self.is_persistent() { 2 } else { 1 }),
            headers,
        }
    }

    /// Reads an envelope from received properties. Missing or malformed
    /// properties give `BAD_ENVELOPE`, a foreign major version
    /// `UNSUPPORTED_VERSION`, a foreign encoding `UNSUPPORTED_CONTENT_TYPE`.
    pub fn from_properties(p: &AmqpProperties) -> Result<Self, Error> {
        let bad = |property: &str, reason: &str| {
            Error::new(
                ErrorCode::BadEnvelope,
                [
                    ("property", property.to_owned()),
                    ("reason", reason.to_owned()),
                ],
                format!("bad envelope: `{property}` {reason}"),
            )
        };
        let command_id = p
            .message_id
            .as_deref()
            .ok_or_else(|| bad("message_id", "is missing"))?;
        let command_id =
            Uuid::parse_str(command_id).map_err(|_| bad("message_id", "is not a UUID"))?;
        let command = p
            .kind
            .clone()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| bad("type", "is missing"))?;
        let version = match p.headers.get(VERSION_HEADER) {
            None => return Err(bad(VERSION_HEADER, "is missing")),
            Some(v) => ProtocolVersion::accepted(
                v.as_str()
                    .ok_or_else(|| bad(VERSION_HEADER, "is not `<major>.<minor>`"))?,
            )?,
        };
        let content_type = ContentType::parse(p.content_type.as_deref())?;
        let deadline = match p.headers.get(DEADLINE_HEADER) {
            None => None,
            Some(v) => Some(
                v.as_int()
                    .and_then(|i| u64::try_from(i).ok())
                    .ok_or_else(|| bad(DEADLINE_HEADER, "is not a non-negative integer"))?,
            ),
        };
        let asynchronous = match p.headers.get(ASYNC_HEADER) {
            None => false,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| bad(ASYNC_HEADER, "is not a boolean"))?,
        };
        Ok(Self {
            command_id,
            command,
            correlation_id: p.correlation_id.clone(),
            reply_to: p.reply_to.clone().filter(|r| !r.is_empty()),
            deadline,
            version,
            sender: p.user_id.clone(),
            content_type,
            sent_at: p.timestamp,
            asynchronous,
        })
    }

    /// The AMQP properties of the reply to this command.
    pub fn reply_properties(
        &self,
        status: ReplyStatus,
        host_id: &str,
        now: Timestamp,
    ) -> AmqpProperties {
        reply_properties(
            self.reply_correlation(),
            &self.command,
            self.content_type,
            status,
            host_id,
            now,
        )
    }
}

/// The AMQP properties of a reply, for callers that could not read a full
/// envelope (the reply to a bad envelope still needs a correlation id).
pub fn reply_properties(
    correlation_id: String,
    command: &str,
    content_type: ContentType,
    status: ReplyStatus,
    host_id: &str,
    now: Timestamp,
) -> AmqpProperties {
    let mut headers = BTreeMap::new();
    headers.insert(
        VERSION_HEADER.to_owned(),
        HeaderValue::Str(PROTOCOL_VERSION.to_string()),
    );
    headers.insert(
        STATUS_HEADER.to_owned(),
        HeaderValue::Str(status.as_str().to_owned()),
    );
    headers.insert(HOST_HEADER.to_owned(), HeaderValue::Str(host_id.to_owned()));
    AmqpProperties {
        message_id: Some(Uuid::new_v4().to_string()),
        correlation_id: Some(correlation_id),
        kind: Some(command.to_owned()),
        content_type: Some(content_type.as_str().to_owned()),
        timestamp: Some(now / 1000),
        // Persistent, so replies to a durable reply queue survive a broker restart.
        delivery_mode: Some(2),
        headers,
        ..AmqpProperties::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        let mut e = Envelope::new("vm.start");
        e.reply_to = Some("amq.rabbitmq.reply-to".into());
        e.deadline = Some(10_000);
        e.sender = Some("manager".into());
        e.asynchronous = true;
        e.sent_at = Some(5);
        e
    }

    #[test]
    fn envelope_survives_the_property_mapping() {
        let e = sample();
        let p = e.to_properties(4_000);
        assert_eq!(p.expiration.as_deref(), Some("6000"));
        assert_eq!(p.kind.as_deref(), Some("vm.start"));
        assert_eq!(Envelope::from_properties(&p), Ok(e));
    }

    #[test]
    fn only_reads_answered_on_direct_reply_to_are_transient() {
        let mode = |command: &str, reply_to: Option<&str>| {
            let mut e = Envelope::new(command);
            e.reply_to = reply_to.map(str::to_owned);
            e.to_properties(0).delivery_mode
        };
        let direct = Some(crate::names::DIRECT_REPLY_TO);
        assert_eq!(mode("host.ping", direct), Some(1));
        assert_eq!(mode("vm.list", direct), Some(1));
        // A change must survive a broker restart even if its caller does not.
        assert_eq!(mode("vm.start", direct), Some(2));
        // A named reply queue can outlive the caller's connection.
        assert_eq!(mode("vm.list", Some("my.replies")), Some(2));
        // A cast has no reply at all: keep it.
        assert_eq!(mode("vm.list", None), Some(2));
        assert_eq!(mode("no.such.command", direct), Some(2));
    }

    #[test]
    fn bad_properties_name_the_property() {
        let mut p = sample().to_properties(0);
        p.message_id = Some("not-a-uuid".into());
        let err = Envelope::from_properties(&p).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadEnvelope);
        assert_eq!(err.param("property"), Some("message_id"));

        let mut p = sample().to_properties(0);
        p.headers
            .insert(VERSION_HEADER.into(), HeaderValue::Str("2.0".into()));
        let err = Envelope::from_properties(&p).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedVersion);

        let mut p = sample().to_properties(0);
        p.headers.remove(VERSION_HEADER);
        assert_eq!(
            Envelope::from_properties(&p).unwrap_err().param("property"),
            Some(VERSION_HEADER)
        );

        let mut p = sample().to_properties(0);
        p.content_type = Some("text/plain".into());
        assert_eq!(
            Envelope::from_properties(&p).unwrap_err().code,
            ErrorCode::UnsupportedContentType
        );
    }

    #[test]
    fn minor_versions_interoperate() {
        let mut p = sample().to_properties(0);
        p.headers
            .insert(VERSION_HEADER.into(), HeaderValue::Str("1.7".into()));
        assert!(Envelope::from_properties(&p).is_ok());
    }

    #[test]
    fn deadlines_expire() {
        let e = sample();
        assert!(!e.is_expired(9_999));
        assert!(e.is_expired(10_000));
        assert_eq!(e.expired_error(10_500).code, ErrorCode::Expired);
    }
}
