//! AMQP glue shared by the agent and the client, so both speak the wire the
//! same way: conversion between lapin's properties and the protocol's
//! plain-data [`AmqpProperties`](hostbus_protocol::AmqpProperties), and URL
//! redaction for logs. It knows lapin and the protocol, nothing else; the
//! bridge and the protocol never depend on it.

pub mod connect;
pub mod props;
pub mod reply_to;
pub mod topology;

pub use connect::{
    connect, connect_first, is_precondition_failed, spread, stable_hash, ConnectOptions, Tls,
    TlsFileError,
};
pub use props::{from_lapin, short, to_lapin};
pub use reply_to::{classify_reply_to, ReplyAddress};

/// A broker URL without its password, for logs and error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;
    use lapin::types::parsing::{parse_field_table, parse_short_string, MAX_NESTING};
    use lapin::types::AMQPValue;

    /// vendor/README.md: upstream failed the frame (and lapin closed the
    /// connection) on a short string that is not UTF-8.
    #[test]
    fn lapin_reads_non_utf8_short_strings() {
        let (rest, s) = parse_short_string(&[6, b'h', b'o', b's', b't', 0xff, 0xfe][..])
            .expect("a non-UTF-8 short string parses");
        assert!(rest.is_empty());
        assert_eq!(s.as_str(), "host\u{fffd}\u{fffd}");
        // 255 invalid bytes would read as 765: cut to a valid short string.
        let mut long = vec![255u8];
        long.extend([0xff; 255]);
        let (_, s) = parse_short_string(&long[..]).expect("parses");
        assert_eq!(s.as_str().len(), 255);
    }

    /// vendor/README.md: upstream recursed once per level of nesting and
    /// overflowed the stack (the process aborted) at ten thousand levels.
    #[test]
    fn lapin_skips_hostile_nesting() {
        // {"x": {"x": ... {}}} twenty thousand levels deep, built inside out.
        let mut t: Vec<u8> = vec![0, 0, 0, 0];
        for _ in 0..20_000 {
            let mut body = vec![1, b'x', b'F'];
            body.extend_from_slice(&t);
            t = u32::try_from(body.len())
                .expect("fits")
                .to_be_bytes()
                .to_vec();
            t.extend_from_slice(&body);
        }
        // Run on the default stack of a spawned thread, as lapin's I/O thread.
        let parsed = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let (rest, table) = parse_field_table(&t[..]).expect("deep nesting parses");
                assert!(rest.is_empty());
                let mut depth = 0;
                let mut table = table;
                while let Some(AMQPValue::FieldTable(inner)) = table.inner().get("x").cloned() {
                    table = inner;
                    depth += 1;
                }
                depth
            })
            .expect("thread")
            .join()
            .expect("no stack overflow");
        assert_eq!(parsed, MAX_NESTING, "levels up to the bound are kept");
    }

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact("amqp://bob:secret@host:5672/%2f"),
            "amqp://bob:***@host:5672/%2f"
        );
        assert_eq!(redact("amqp://host"), "amqp://host");
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://h/%2f"), "amqp://h/%2f");
    }
}
