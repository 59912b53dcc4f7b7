//! Request types of the host commands.

use crate::types::Timestamp;
use crate::validate::check_text;

wire_struct! {
    /// Request of `host.ping`.
    Ping {
        /// Text to send back, at most 1024 bytes.
        #[serde(default)]
        echo: Option<String>,
    }
    validate(this) {
        this.echo
            .as_deref()
            .map_or(Ok(()), |e| check_text("echo", e))
    }
}

wire_struct! {
    /// Response of `host.ping`.
    Pong {
        /// The host that answered.
        host_id: String,
        /// Its clock when answering.
        time: Timestamp,
        /// The request's `echo`.
        #[serde(default)]
        echo: Option<String>,
    }
}

wire_struct! {
    /// Request of `host.disable`.
    HostDisableRequest {
        /// Why (shown in the fleet view and in refusals), at most 1024 bytes.
        #[serde(default)]
        reason: String,
    }
    validate(this) { check_text("reason", &this.reason) }
}
