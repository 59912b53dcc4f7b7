//! One error type for every failure a caller can see.

use std::collections::BTreeMap;
use std::fmt;

use hostbus_protocol::{Error as WireError, ErrorCode, ErrorFamily};

/// What kind of failure, for programs to branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The object (VM, pool, volume, network, snapshot, task, device) does not exist.
    NotFound,
    /// A request field is invalid, or the request is malformed.
    InvalidArgument,
    /// The object's state does not allow the operation (a disabled host
    /// refuses to take a VM).
    BadState,
    /// The sender may not run the command.
    PermissionDenied,
    /// No reply arrived before the deadline; the command may or may not have run.
    Timeout,
    /// The broker connection failed or was lost.
    Connection,
    /// The command's deadline passed before it ran; nothing ran.
    Expired,
    /// The host is overloaded, or the object is busy with another operation
    /// that excludes this one (a migrating VM); retry later.
    Busy,
    /// The host cannot serve right now (hypervisor down), or another host
    /// the command needs (a migration's destination) is not serving.
    Unavailable,
    /// The object already exists.
    AlreadyExists,
    /// The host or driver does not support the operation, or speaks another protocol version.
    Unsupported,
    /// The command was cancelled.
    Cancelled,
    /// No host is bound to the routing key (unknown host id or empty group).
    NoRoute,
    /// Anything else, including `INTERNAL` errors of the agent.
    Internal,
}

/// An error from the SDK: the kind, and for errors that came from an agent
/// the protocol code and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    kind: ErrorKind,
    code: Option<ErrorCode>,
    params: BTreeMap<String, String>,
    message: String,
}

impl ClientError {
    /// An error of `kind` raised by the SDK itself.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: None,
            params: BTreeMap::new(),
            message: message.into(),
        }
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The protocol code, when an agent answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        self.code
    }

    /// A protocol parameter by name (for example `field` of `INVALID_ARGUMENT`).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// All protocol parameters.
    pub fn params(&self) -> &BTreeMap<String, String> {
        &self.params
    }

    /// The human message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether sending the same request again later may succeed. After a
    /// `Timeout` or `Connection` error the command may have run: retry with
    /// the same command id (see `CallOptions::command_id`) so the agent can
    /// answer from its journal instead of running it twice.
    pub fn is_retryable(&self) -> bool {
        match self.code {
            Some(code) => code.is_retryable(),
            None => matches!(
                self.kind,
                ErrorKind::Timeout
                    | ErrorKind::Connection
                    | ErrorKind::Busy
                    | ErrorKind::Unavailable
            ),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "{code}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        let kind = match e.code.family() {
            ErrorFamily::InvalidArgument => ErrorKind::InvalidArgument,
            ErrorFamily::NotFound => ErrorKind::NotFound,
            ErrorFamily::BadState => ErrorKind::BadState,
            ErrorFamily::PermissionDenied => ErrorKind::PermissionDenied,
            ErrorFamily::Expired => ErrorKind::Expired,
            ErrorFamily::Busy => ErrorKind::Busy,
            ErrorFamily::Unavailable => ErrorKind::Unavailable,
            ErrorFamily::Timeout => ErrorKind::Timeout,
            ErrorFamily::Cancelled => ErrorKind::Cancelled,
            ErrorFamily::AlreadyExists => ErrorKind::AlreadyExists,
            ErrorFamily::Unsupported => ErrorKind::Unsupported,
            ErrorFamily::Internal => ErrorKind::Internal,
        };
        Self {
            kind,
            code: Some(e.code),
            params: e.params,
            message: e.message,
        }
    }
}

impl From<lapin::Error> for ClientError {
    fn from(e: lapin::Error) -> Self {
        ClientError::new(ErrorKind::Connection, format!("broker: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_errors_keep_code_params_and_retryability() {
        let e: ClientError = WireError::new(
            ErrorCode::Busy,
            [
                ("object", "vm:x".to_owned()),
                ("retry_after_ms", "500".to_owned()),
            ],
            "busy",
        )
        .into();
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert_eq!(e.code(), Some(ErrorCode::Busy));
        assert_eq!(e.param("retry_after_ms"), Some("500"));
        assert!(e.is_retryable());
        let e: ClientError =
            WireError::new(ErrorCode::VmNotFound, [("vm", "x".to_owned())], "nope").into();
        assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::NotFound, false));
        assert!(ClientError::new(ErrorKind::Timeout, "slow").is_retryable());
        let kind = |code| ClientError::from(WireError::new(code, [], "x")).kind();
        assert_eq!(kind(ErrorCode::HostDisabled), ErrorKind::BadState);
        assert_eq!(kind(ErrorCode::OperationInProgress), ErrorKind::Busy);
        assert_eq!(kind(ErrorCode::PeerUnavailable), ErrorKind::Unavailable);
        assert_eq!(kind(ErrorCode::VolumeInUse), ErrorKind::BadState);
        assert_eq!(kind(ErrorCode::DeviceDetachPending), ErrorKind::BadState);
        assert_eq!(kind(ErrorCode::Unknown), ErrorKind::Internal);
        assert!(!ClientError::new(ErrorKind::NoRoute, "who").is_retryable());
    }
}
