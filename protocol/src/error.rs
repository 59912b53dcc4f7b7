//! Structured errors in the XenAPI style: a code, named parameters and a
//! human message. Every reply that is not a value carries one of these.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::ValidationError;

macro_rules! error_codes {
    ($( $(#[doc = $doc:literal])+ $variant:ident = $wire:literal, http: $http:literal, family: $family:ident, retryable: $retry:literal, params: [$($param:literal),*]; )+) => {
        /// The error codes of the protocol. Peers must treat a code they do not
        /// know as [`ErrorCode::Unknown`] (it decodes that way) and fall back on
        /// the message.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[doc = $doc])+ #[serde(rename = $wire)] $variant, )+
            /// A code this peer does not know (sent by a newer peer).
            #[serde(other, rename = "UNKNOWN")]
            Unknown,
        }

        impl ErrorCode {
            /// Every code, for documentation and tests.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            /// The code as it appears on the wire, e.g. `VM_NOT_FOUND`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $wire,)+
                    ErrorCode::Unknown => "UNKNOWN",
                }
            }

            /// Names of the parameters this code carries.
            pub fn params(self) -> &'static [&'static str] {
                match self {
                    $(ErrorCode::$variant => &[$($param),*],)+
                    ErrorCode::Unknown => &[],
                }
            }

            /// What the code means, as documented.
            pub fn description(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => concat!($($doc),+),)+
                    ErrorCode::Unknown => "A code this peer does not know.",
                }
            }

            /// The HTTP status of a reply with this code on the HTTP binding
            /// (docs/http.md).
            pub fn http_status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $http,)+
                    ErrorCode::Unknown => 500,
                }
            }

            /// The family the code belongs to, which SDKs map to their
            /// error kinds (the schema's `family` of each code).
            pub fn family(self) -> ErrorFamily {
                match self {
                    $(ErrorCode::$variant => ErrorFamily::$family,)+
                    ErrorCode::Unknown => ErrorFamily::Internal,
                }
            }

            /// Whether the same request may succeed if sent again later unchanged.
            pub fn is_retryable(self) -> bool {
                match self {
                    $(ErrorCode::$variant => $retry,)+
                    ErrorCode::Unknown => false,
                }
            }
        }
    };
}

error_codes! {
    /// A request field is invalid; `field` names it (a path such as `spec.disks[0].capacity_bytes`).
    InvalidArgument = "INVALID_ARGUMENT", http: 400, family: InvalidArgument, retryable: false, params: ["field", "reason"];
    /// The payload could not be decoded in its content type, or has the wrong shape for the command.
    MalformedMessage = "MALFORMED_MESSAGE", http: 400, family: InvalidArgument, retryable: false, params: ["reason"];
    /// The payload is larger than the receiver accepts.
    PayloadTooLarge = "PAYLOAD_TOO_LARGE", http: 413, family: InvalidArgument, retryable: false, params: ["size", "limit"];
    /// The `content_type` property names an encoding the receiver does not speak.
    UnsupportedContentType = "UNSUPPORTED_CONTENT_TYPE", http: 415, family: InvalidArgument, retryable: false, params: ["content_type"];
    /// The `type` property names no command this agent knows.
    UnknownCommand = "UNKNOWN_COMMAND", http: 404, family: InvalidArgument, retryable: false, params: ["command"];
    /// The request's protocol major version is not spoken by the receiver.
    UnsupportedVersion = "UNSUPPORTED_VERSION", http: 400, family: Unsupported, retryable: false, params: ["version", "supported"];
    /// A required envelope property is missing or invalid (`message_id`, `type`, ...).
    BadEnvelope = "BAD_ENVELOPE", http: 400, family: InvalidArgument, retryable: false, params: ["property", "reason"];
    /// The command's deadline passed before it could run; nothing was executed.
    Expired = "EXPIRED", http: 408, family: Expired, retryable: false, params: ["deadline", "now"];
    /// The sender may not run this command (no verified `user_id`, or its role lacks the command).
    PermissionDenied = "PERMISSION_DENIED", http: 403, family: PermissionDenied, retryable: false, params: ["user", "command"];
    /// Too much work is queued on the object or the agent; retry after `retry_after_ms`.
    Busy = "BUSY", http: 429, family: Busy, retryable: true, params: ["object", "retry_after_ms"];
    /// The hypervisor connection is down; the agent is reconnecting.
    HostUnavailable = "HOST_UNAVAILABLE", http: 503, family: Unavailable, retryable: true, params: ["reason"];
    /// The operation exists but this host or driver does not support it.
    OperationNotSupported = "OPERATION_NOT_SUPPORTED", http: 422, family: Unsupported, retryable: false, params: ["operation", "reason"];
    /// The operation did not complete in time (for example a clean shutdown).
    Timeout = "TIMEOUT", http: 504, family: Timeout, retryable: true, params: ["operation", "timeout_s"];
    /// The operation was cancelled through `task.cancel`.
    Cancelled = "CANCELLED", http: 409, family: Cancelled, retryable: false, params: ["task"];
    /// No VM with this uuid or name exists on the host.
    VmNotFound = "VM_NOT_FOUND", http: 404, family: NotFound, retryable: false, params: ["vm"];
    /// The VM's power state does not allow the operation; `allowed` lists the states that do, comma-separated.
    VmBadPowerState = "VM_BAD_POWER_STATE", http: 409, family: BadState, retryable: false, params: ["vm", "operation", "current", "allowed"];
    /// The VM is a template (`vm.set_template`): it is cloned, not run; `operation` is what was refused.
    VmIsTemplate = "VM_IS_TEMPLATE", http: 409, family: BadState, retryable: false, params: ["vm", "operation"];
    /// No snapshot of this name exists for the VM.
    SnapshotNotFound = "SNAPSHOT_NOT_FOUND", http: 404, family: NotFound, retryable: false, params: ["vm", "snapshot"];
    /// No storage pool of this name exists.
    PoolNotFound = "POOL_NOT_FOUND", http: 404, family: NotFound, retryable: false, params: ["pool"];
    /// The pool's state does not allow the operation (e.g. volumes of an inactive pool).
    PoolBadState = "POOL_BAD_STATE", http: 409, family: BadState, retryable: false, params: ["pool", "operation", "current"];
    /// No volume of this name exists in the pool.
    VolumeNotFound = "VOLUME_NOT_FOUND", http: 404, family: NotFound, retryable: false, params: ["pool", "volume"];
    /// No network of this name exists.
    NetworkNotFound = "NETWORK_NOT_FOUND", http: 404, family: NotFound, retryable: false, params: ["network"];
    /// The network's state does not allow the operation.
    NetworkBadState = "NETWORK_BAD_STATE", http: 409, family: BadState, retryable: false, params: ["network", "operation", "current"];
    /// The volume backs a disk of a VM that must not lose it now (`vms`: their uuids, comma-separated): deleting or cloning it is refused while a VM that writes it runs, deleting it while any VM is defined on it; detach it or stop the VM first.
    VolumeInUse = "VOLUME_IN_USE", http: 409, family: BadState, retryable: false, params: ["pool", "volume", "vms"];
    /// The guest did not release the device within the wait (it ignores or has not finished the unplug request); the device stays attached until it does, and a vm `changed` event reports its removal then.
    DeviceDetachPending = "DEVICE_DETACH_PENDING", http: 409, family: BadState, retryable: false, params: ["vm", "device"];
    /// No device with this target or MAC is attached to the VM.
    DeviceNotFound = "DEVICE_NOT_FOUND", http: 404, family: NotFound, retryable: false, params: ["vm", "device"];
    /// No task with this id is known (it may have been collected after its TTL).
    TaskNotFound = "TASK_NOT_FOUND", http: 404, family: NotFound, retryable: false, params: ["task"];
    /// The task has finished or its operation cannot be interrupted.
    TaskNotCancellable = "TASK_NOT_CANCELLABLE", http: 409, family: BadState, retryable: false, params: ["task", "status"];
    /// An object of this class and name (or uuid) already exists.
    AlreadyExists = "ALREADY_EXISTS", http: 409, family: AlreadyExists, retryable: false, params: ["class", "name"];
    /// The host lacks the resources (memory, space, CPUs) for the operation.
    InsufficientResources = "INSUFFICIENT_RESOURCES", http: 422, family: Busy, retryable: false, params: ["resource", "reason"];
    /// Another operation that excludes this one is running on the object (a second migration of a migrating VM); `task` is its task.
    OperationInProgress = "OPERATION_IN_PROGRESS", http: 409, family: Busy, retryable: true, params: ["object", "operation", "task"];
    /// The host takes no new VMs (`host.disable`): a migration or placement to it is refused; `reason` is the operator's.
    HostDisabled = "HOST_DISABLED", http: 409, family: BadState, retryable: false, params: ["host", "reason"];
    /// Another host this command needs (a migration's destination) is not serving: its agent is offline, stale or unknown to the fleet.
    PeerUnavailable = "PEER_UNAVAILABLE", http: 503, family: Unavailable, retryable: true, params: ["host", "reason"];
    /// An unexpected failure inside the agent or the hypervisor; `reason` has the detail.
    Internal = "INTERNAL", http: 500, family: Internal, retryable: false, params: ["reason"];
}

/// A group of error codes that a caller handles alike; SDKs map each to
/// one error kind (`ClientError::kind` in Rust). Every code has exactly one
/// (`ErrorCode::family`); the schema exports it as `family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorFamily {
    /// The request is invalid or malformed, or names no known command.
    InvalidArgument,
    /// The object does not exist.
    NotFound,
    /// The object's state does not allow the operation.
    BadState,
    /// The sender may not run the command.
    PermissionDenied,
    /// The deadline passed before the command ran; nothing ran.
    Expired,
    /// The host or the object is busy; retry later.
    Busy,
    /// The host, or another host the command needs, is not serving.
    Unavailable,
    /// The operation did not complete in time.
    Timeout,
    /// The operation was cancelled.
    Cancelled,
    /// The object already exists.
    AlreadyExists,
    /// The host, driver or protocol version does not support the operation.
    Unsupported,
    /// An unexpected failure, or a code this peer does not know.
    Internal,
}

impl ErrorFamily {
    /// Every family, for documentation and tests.
    pub const ALL: &'static [ErrorFamily] = &[
        ErrorFamily::InvalidArgument,
        ErrorFamily::NotFound,
        ErrorFamily::BadState,
        ErrorFamily::PermissionDenied,
        ErrorFamily::Expired,
        ErrorFamily::Busy,
        ErrorFamily::Unavailable,
        ErrorFamily::Timeout,
        ErrorFamily::Cancelled,
        ErrorFamily::AlreadyExists,
        ErrorFamily::Unsupported,
        ErrorFamily::Internal,
    ];

    /// The snake_case name, as in the schema: `not_found`, `bad_state`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorFamily::InvalidArgument => "invalid_argument",
            ErrorFamily::NotFound => "not_found",
            ErrorFamily::BadState => "bad_state",
            ErrorFamily::PermissionDenied => "permission_denied",
            ErrorFamily::Expired => "expired",
            ErrorFamily::Busy => "busy",
            ErrorFamily::Unavailable => "unavailable",
            ErrorFamily::Timeout => "timeout",
            ErrorFamily::Cancelled => "cancelled",
            ErrorFamily::AlreadyExists => "already_exists",
            ErrorFamily::Unsupported => "unsupported",
            ErrorFamily::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A structured error as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[error("{code}: {message}")]
pub struct Error {
    /// The machine-readable code.
    pub code: ErrorCode,
    /// Named parameters; which names appear is documented per code.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// A sentence for humans. Never parse it.
    #[serde(default)]
    pub message: String,
}

impl Error {
    /// An error with a code, parameters in the documented order, and a message.
    pub fn new<'a>(
        code: ErrorCode,
        params: impl IntoIterator<Item = (&'a str, String)>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            code,
            params: params.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            message: message.into(),
        }
    }

    /// A parameter by name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// `INTERNAL` with a reason.
    pub fn internal(reason: impl fmt::Display) -> Self {
        Self::with_reason(ErrorCode::Internal, "internal error", reason)
    }

    /// An error whose one parameter is `reason`, said after `what`.
    fn with_reason(code: ErrorCode, what: &str, reason: impl fmt::Display) -> Self {
        let reason = reason.to_string();
        let message = format!("{what}: {reason}");
        Self::new(code, [("reason", reason)], message)
    }

    /// `UNKNOWN_COMMAND` for a command name.
    pub fn unknown_command(name: &str) -> Self {
        Self::new(
            ErrorCode::UnknownCommand,
            [("command", name.to_owned())],
            format!("unknown command `{name}`"),
        )
    }

    /// `EXPIRED`: `command` reached its deadline (ms since the epoch) at
    /// `now` before it could run; nothing was executed.
    pub fn expired(command: &str, deadline: u64, now: u64) -> Self {
        Self::new(
            ErrorCode::Expired,
            [("deadline", deadline.to_string()), ("now", now.to_string())],
            format!(
                "command {command} expired {} ms before it could run",
                now.saturating_sub(deadline)
            ),
        )
    }

    /// `MALFORMED_MESSAGE` with a reason.
    pub fn malformed(reason: impl fmt::Display) -> Self {
        Self::with_reason(ErrorCode::MalformedMessage, "malformed message", reason)
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.code.is_retryable()
    }
}

impl From<ValidationError> for Error {
    fn from(e: ValidationError) -> Self {
        let message = e.to_string();
        Self::new(
            ErrorCode::InvalidArgument,
            [("field", e.field), ("reason", e.reason)],
            message,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_documented_and_round_trips_by_name() {
        for &code in ErrorCode::ALL {
            assert!(!code.description().is_empty());
            let json = serde_json::to_string(&code).expect("encode");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).expect("decode");
            assert_eq!(back, code);
        }
    }

    #[test]
    fn every_family_is_named_as_serde_names_it_and_has_a_code() {
        for &family in ErrorFamily::ALL {
            let json = serde_json::to_string(&family).expect("encode");
            assert_eq!(json, format!("\"{}\"", family.as_str()));
            assert!(
                ErrorCode::ALL.iter().any(|c| c.family() == family),
                "{family} groups no code"
            );
        }
        assert_eq!(ErrorCode::Unknown.family(), ErrorFamily::Internal);
        assert_eq!(ErrorCode::VolumeInUse.family(), ErrorFamily::BadState);
        assert_eq!(
            ErrorCode::UnsupportedVersion.family(),
            ErrorFamily::Unsupported
        );
    }

    #[test]
    fn unknown_codes_decode_to_unknown() {
        let code: ErrorCode = serde_json::from_str("\"QUANTUM_FLUX\"").expect("decode");
        assert_eq!(code, ErrorCode::Unknown);
    }

    #[test]
    fn validation_errors_name_the_field() {
        let e: Error = ValidationError::new("spec.name", "must not be empty").into();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert_eq!(e.param("field"), Some("spec.name"));
    }
}
