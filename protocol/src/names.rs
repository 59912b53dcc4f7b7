//! Names on the broker: exchanges, queues, routing keys, and the rules for
//! host ids and labels that appear in them.
//!
//! Commands go through the topic exchange [`COMMAND_EXCHANGE`] with routing
//! keys [`host_key`] (`host.<id>`), [`ALL_KEY`] (`all`) or [`group_key`]
//! (`group.<label>`). Events go through the topic exchange [`EVENT_EXCHANGE`]
//! with routing keys [`event_key`] (`<host>.<class>.<action>`), heartbeats
//! through [`PRESENCE_EXCHANGE`] with [`presence_key`] (`<host>.heartbeat`).

use crate::validate::{Validation, ValidationError};

/// Topic exchange that carries commands to agents.
pub const COMMAND_EXCHANGE: &str = "hostbus.cmd";
/// Topic exchange that carries lifecycle events from agents.
pub const EVENT_EXCHANGE: &str = "hostbus.evt";
/// Topic exchange that carries heartbeats (`<host>.heartbeat`). Online and
/// offline announcements are events (`<host>.agent.online`, `<host>.agent.offline`)
/// on [`EVENT_EXCHANGE`].
pub const PRESENCE_EXCHANGE: &str = "hostbus.presence";
/// Fanout exchange that receives dead-lettered commands.
pub const DEAD_LETTER_EXCHANGE: &str = "hostbus.dlx";
/// Queue bound to [`DEAD_LETTER_EXCHANGE`] where poison messages are kept for inspection.
pub const DEAD_LETTER_QUEUE: &str = "hostbus.dead-letter";
/// Routing key that reaches every agent.
pub const ALL_KEY: &str = "all";

/// Stream queue that keeps every event: bound to [`EVENT_EXCHANGE`] with
/// `#`. Subscribers read it from an offset (their resume token) or a time.
pub const EVENT_STREAM: &str = "hostbus.events";
/// Stream queue that keeps recent heartbeats: bound to
/// [`PRESENCE_EXCHANGE`] with [`BEAT_STREAM_BINDINGS`].
pub const BEAT_STREAM: &str = "hostbus.presence.beats";
/// Stream queue that keeps roster announcements for days: bound to
/// [`PRESENCE_EXCHANGE`] with [`ROSTER_STREAM_BINDINGS`].
pub const ROSTER_STREAM: &str = "hostbus.presence.roster";
/// Binding keys of [`BEAT_STREAM`]: heartbeats and sync markers.
pub const BEAT_STREAM_BINDINGS: &[&str] = &["*.heartbeat", "_sync.*"];
/// Binding keys of [`ROSTER_STREAM`]: announcements and sync markers.
pub const ROSTER_STREAM_BINDINGS: &[&str] = &["*.online", "*.offline", "*.forget", "_sync.*"];
/// RabbitMQ's direct reply-to pseudo queue, the default `reply_to` of clients.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Longest host id or label, in bytes (a DNS label).
pub const MAX_HOST_ID_LEN: usize = 63;

/// Routing key that reaches exactly one host: `host.<id>`.
pub fn host_key(host_id: &str) -> String {
    format!("host.{host_id}")
}

/// Routing key that reaches every host carrying `label`: `group.<label>`.
pub fn group_key(label: &str) -> String {
    format!("group.{label}")
}

/// The durable command queue of one agent: `hostbus.agent.<id>`.
pub fn agent_queue(host_id: &str) -> String {
    format!("hostbus.agent.{host_id}")
}

/// Prefix of the read lane's routing keys: a read sent with
/// `read.host.<id>`, `read.all` or `read.group.<label>` reaches the agents'
/// read queues ([`agent_read_queue`]) instead of their durable command
/// queues.
pub const READ_PREFIX: &str = "read.";

/// The read queue of one agent, `hostbus.agent.<id>.reads`: classic,
/// exclusive to the agent's connection, for read commands only. A read
/// loses nothing when it is lost with its queue: it is sent again with the
/// same command id.
pub fn agent_read_queue(host_id: &str) -> String {
    format!("hostbus.agent.{host_id}.reads")
}

/// Routing key of an event: `<host>.<class>.<action>`, e.g. `h1.vm.started`.
pub fn event_key(host_id: &str, class: &str, action: &str) -> String {
    format!("{host_id}.{class}.{action}")
}

/// Routing key of a heartbeat: `<host>.heartbeat`.
pub fn presence_key(host_id: &str) -> String {
    format!("{host_id}.heartbeat")
}

/// Routing key of a roster announcement: `<host>.online`, `<host>.offline`,
/// `<host>.forget`.
pub fn roster_key(host_id: &str, action: &str) -> String {
    format!("{host_id}.{action}")
}

/// Routing key of a sync marker: `_sync.<id>`. A reader of the presence
/// streams publishes one to [`PRESENCE_EXCHANGE`] (it lands in both
/// streams) and knows it has read everything published before once its
/// marker comes back. Host ids cannot start with `_`, so no host's key
/// collides with it.
pub fn sync_key(id: &str) -> String {
    format!("_sync.{id}")
}

/// Host ids and labels: 1 to 63 bytes of lowercase ASCII letters, digits and
/// `-`, starting and ending with a letter or digit (a DNS label). They appear
/// inside routing keys, so `.`, `*` and `#` are never allowed.
pub fn check_host_id(field: &str, id: &str) -> Validation {
    check_label(field, id)
}

/// Same rules as [`check_host_id`].
pub fn check_label(field: &str, label: &str) -> Validation {
    if label.is_empty() || label.len() > MAX_HOST_ID_LEN {
        return Err(ValidationError::new(
            field,
            format_args!("must be 1 to {MAX_HOST_ID_LEN} bytes, got {}", label.len()),
        ));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(ValidationError::new(
            field,
            "may contain only lowercase ASCII letters, digits and `-`",
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(ValidationError::new(
            field,
            "must not start or end with `-`",
        ));
    }
    Ok(())
}

/// Where a command is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One host, by id.
    Host(String),
    /// Every host.
    All,
    /// Every host carrying a label.
    Group(String),
}

impl Target {
    /// The routing key on [`COMMAND_EXCHANGE`].
    pub fn routing_key(&self) -> String {
        match self {
            Target::Host(id) => host_key(id),
            Target::All => ALL_KEY.to_owned(),
            Target::Group(label) => group_key(label),
        }
    }

    /// The routing key of the read lane: [`READ_PREFIX`] and
    /// [`Target::routing_key`].
    pub fn read_key(&self) -> String {
        format!("{READ_PREFIX}{}", self.routing_key())
    }

    /// Checks the host id or label.
    pub fn validate(&self) -> Validation {
        match self {
            Target::Host(id) => check_host_id("host", id),
            Target::All => Ok(()),
            Target::Group(label) => check_label("label", label),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape() {
        assert_eq!(host_key("h1"), "host.h1");
        assert_eq!(group_key("gpu"), "group.gpu");
        assert_eq!(event_key("h1", "vm", "started"), "h1.vm.started");
        assert_eq!(agent_queue("h1"), "hostbus.agent.h1");
        assert_eq!(Target::All.routing_key(), "all");
    }

    #[test]
    fn host_ids_cannot_break_routing_keys() {
        for bad in [
            "",
            "h.1",
            "h*",
            "h#",
            "H1",
            "-h",
            "h-",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(check_host_id("host", bad).is_err(), "{bad:?} accepted");
        }
        for good in ["h1", "node-07", "a", &"a".repeat(63)] {
            assert!(check_host_id("host", good).is_ok(), "{good:?} refused");
        }
    }
}
