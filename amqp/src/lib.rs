//! AMQP glue shared by the agent and the client, so both speak the wire the
//! same way: conversion between lapin's properties and the protocol's
//! plain-data [`AmqpProperties`](hostbus_protocol::AmqpProperties), and URL
//! redaction for logs. It knows lapin and the protocol, nothing else; the
//! bridge and the protocol never depend on it.

pub mod connect;
pub mod props;

pub use connect::{connect, Tls, TlsFileError};
pub use props::{from_lapin, to_lapin};

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
