//! Direct reply-to addresses, as RabbitMQ issues them, told apart from
//! anything else a publisher may put into `reply_to`.
//!
//! A publisher that consumes `amq.rabbitmq.reply-to` and sends a command
//! with that `reply_to` has it rewritten by the broker to
//! `amq.rabbitmq.reply-to.<pid>.<key>`: `<pid>` is the base64 of the Erlang
//! external term of the publisher's channel process, `<key>` the base64 of
//! 16 random bytes. Publishing a reply to such an address makes the broker
//! decode it, and RabbitMQ 3.10 answers an address it cannot decode (or one
//! whose node has left the cluster) by crashing the replying channel, which
//! closes the replier's whole connection (`rabbit_channel:deliver_reply/2`,
//! `rabbit_direct_reply_to:decode_reply_to_v2/2`). A poison `reply_to`
//! therefore has to be refused before the reply, and a reply that may still
//! be poison has to go out where it cannot take the agent's session down
//! (the agent's reply lane). RabbitMQ 4.0 decodes inside a `try` and drops
//! a reply it cannot deliver; the same handling costs nothing there
//! (`tests/tests/faults_hostile.rs` checks both).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hostbus_protocol::names::DIRECT_REPLY_TO;

/// What a `reply_to` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyAddress {
    /// A queue by name (replies go through the default exchange; a wrong
    /// name loses the reply, nothing worse).
    Queue,
    /// A direct reply-to address of the form the broker issues.
    Direct,
    /// Starts like a direct reply-to address but is not one the broker
    /// could have issued: replying to it would close the replier's
    /// connection.
    Invalid,
}

/// Classifies a `reply_to`.
pub fn classify_reply_to(reply_to: &str) -> ReplyAddress {
    let Some(rest) = reply_to.strip_prefix(DIRECT_REPLY_TO) else {
        return ReplyAddress::Queue;
    };
    let Some(rest) = rest.strip_prefix('.') else {
        // `amq.rabbitmq.reply-to` itself (the broker rewrites it on publish,
        // so it never reaches a consumer as such) or `amq.rabbitmq.reply-tox`.
        return ReplyAddress::Invalid;
    };
    let mut parts = rest.split('.');
    let (Some(pid), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
        return ReplyAddress::Invalid;
    };
    match (STANDARD.decode(pid), STANDARD.decode(key)) {
        (Ok(pid), Ok(key)) if is_pid_term(&pid) && !key.is_empty() => ReplyAddress::Direct,
        _ => ReplyAddress::Invalid,
    }
}

/// Whether `b` is an Erlang external-format pid: version 131, `NEW_PID_EXT`
/// (88) or `PID_EXT` (103), a node atom, then id, serial and creation.
fn is_pid_term(b: &[u8]) -> bool {
    let [131, tag, rest @ ..] = b else {
        return false;
    };
    let tail = match tag {
        88 => 12,
        103 => 9,
        _ => return false,
    };
    let (len, rest) = match rest {
        // ATOM_EXT, ATOM_UTF8_EXT: two length bytes.
        [100 | 118, hi, lo, rest @ ..] => (usize::from(*hi) << 8 | usize::from(*lo), rest),
        // SMALL_ATOM_EXT, SMALL_ATOM_UTF8_EXT: one.
        [115 | 119, n, rest @ ..] => (usize::from(*n), rest),
        _ => return false,
    };
    len > 0 && rest.len() == len + tail && rest[..len].contains(&b'@')
}

/// A direct reply-to address in the form RabbitMQ 3.10 on Erlang 25 issues
/// (v2 encoding: the node is `reply@<hash>`) whose node is in no cluster:
/// [`ReplyAddress::Direct`] to [`classify_reply_to`], yet a broker closes
/// the connection that replies to it. For tests of that case.
pub fn forged_direct_reply_to() -> String {
    let node = b"reply@1234567";
    let mut pid = vec![131, 88, 118, 0, node.len() as u8];
    pid.extend_from_slice(node);
    pid.extend_from_slice(&[0, 0, 3, 1, 0, 0, 0, 0, 99, 104, 35, 17]);
    format!(
        "{DIRECT_REPLY_TO}.{}.{}",
        STANDARD.encode(pid),
        STANDARD.encode([7u8; 16])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_addresses_are_direct() {
        assert_eq!(
            classify_reply_to(&forged_direct_reply_to()),
            ReplyAddress::Direct
        );
    }

    #[test]
    fn queue_names_are_queues() {
        for q in [
            "my.replies",
            "amq.gen-JzTY20BRgKO-HjmUJj0wLg",
            "",
            "amq.rabbitmq",
        ] {
            assert_eq!(classify_reply_to(q), ReplyAddress::Queue, "{q}");
        }
    }

    #[test]
    fn what_the_broker_cannot_decode_is_invalid() {
        let good = forged_direct_reply_to();
        let (_, key) = good.rsplit_once('.').expect("key");
        for bad in [
            "amq.rabbitmq.reply-to".to_owned(),
            "amq.rabbitmq.reply-to.abc.def".to_owned(),
            "amq.rabbitmq.reply-to.".to_owned(),
            "amq.rabbitmq.reply-tox".to_owned(),
            format!("amq.rabbitmq.reply-to.{}", STANDARD.encode(b"x")),
            format!("{good}.extra"),
            // base64 of something that is not a pid term
            format!(
                "amq.rabbitmq.reply-to.{}.{key}",
                STANDARD.encode([131, 100, 0, 1, b'a'])
            ),
            // a pid whose length does not add up
            format!(
                "amq.rabbitmq.reply-to.{}.{key}",
                STANDARD.encode([131, 88, 119, 3, b'a', b'@', b'b', 0])
            ),
        ] {
            assert_eq!(classify_reply_to(&bad), ReplyAddress::Invalid, "{bad}");
        }
    }
}
