//! The one place where a libvirt error becomes a protocol error.

use hostbus_protocol::types::PowerState;
use hostbus_protocol::{Error, ErrorCode};
use virt::error::{ErrorNumber, ErrorNumberEnum};

/// What an operation was working on, so a libvirt error can name it.
#[derive(Debug, Clone)]
pub(crate) enum Subject {
    Host,
    Vm { id: String, op: &'static str },
    Snapshot { vm: String, name: String },
    Pool { name: String, op: &'static str },
    Volume { pool: String, name: String },
    Network { name: String, op: &'static str },
}

impl Subject {
    pub(crate) fn vm(id: impl ToString, op: &'static str) -> Self {
        Subject::Vm {
            id: id.to_string(),
            op,
        }
    }
    pub(crate) fn pool(name: &str, op: &'static str) -> Self {
        Subject::Pool {
            name: name.to_owned(),
            op,
        }
    }
    pub(crate) fn volume(pool: &str, name: &str) -> Self {
        Subject::Volume {
            pool: pool.to_owned(),
            name: name.to_owned(),
        }
    }
    pub(crate) fn network(name: &str, op: &'static str) -> Self {
        Subject::Network {
            name: name.to_owned(),
            op,
        }
    }
    pub(crate) fn snapshot(vm: impl ToString, name: &str) -> Self {
        Subject::Snapshot {
            vm: vm.to_string(),
            name: name.to_owned(),
        }
    }

    fn class_and_name(&self) -> (&'static str, String) {
        match self {
            Subject::Host => ("host", String::new()),
            Subject::Vm { id, .. } => ("vm", id.clone()),
            Subject::Snapshot { vm, name } => ("snapshot", format!("{vm}/{name}")),
            Subject::Pool { name, .. } => ("pool", name.clone()),
            Subject::Volume { pool, name } => ("volume", format!("{pool}/{name}")),
            Subject::Network { name, .. } => ("network", name.clone()),
        }
    }
}

/// Whether a libvirt error means the connection itself is broken, so the
/// bridge should drop it and reconnect.
pub(crate) fn is_connection_error(e: &virt::error::Error) -> bool {
    matches!(
        e.code(),
        ErrorNumberEnum::Known(ErrorNumber::NoConnect | ErrorNumber::InvalidConn)
    ) || (matches!(e.code(), ErrorNumberEnum::Known(ErrorNumber::SystemError))
        && matches!(
            e.domain(),
            virt::error::ErrorDomainEnum::Known(virt::error::ErrorDomain::Rpc)
        ))
}

/// Maps a libvirt error on `subject` to a protocol error. This is the only
/// function that looks at libvirt error numbers.
pub(crate) fn map_error(e: &virt::error::Error, subject: &Subject) -> Error {
    let detail = e.message().to_owned();
    let (class, name) = subject.class_and_name();
    let code = match e.code() {
        ErrorNumberEnum::Known(n) => n,
        ErrorNumberEnum::Unknown(_) => ErrorNumber::InternalError,
    };
    match code {
        ErrorNumber::NoDomain => match subject {
            Subject::Snapshot { vm, .. } => {
                not_found(ErrorCode::VmNotFound, &[("vm", vm.clone())], &detail)
            }
            _ => not_found(ErrorCode::VmNotFound, &[("vm", name)], &detail),
        },
        ErrorNumber::NoDomainSnapshot => match subject {
            Subject::Snapshot { vm, name } => not_found(
                ErrorCode::SnapshotNotFound,
                &[("vm", vm.clone()), ("snapshot", name.clone())],
                &detail,
            ),
            _ => Error::internal(detail),
        },
        ErrorNumber::NoStoragePool => {
            let pool = match subject {
                Subject::Volume { pool, .. } => pool.clone(),
                _ => name,
            };
            not_found(ErrorCode::PoolNotFound, &[("pool", pool)], &detail)
        }
        ErrorNumber::NoStorageVolume => match subject {
            Subject::Volume { pool, name } => not_found(
                ErrorCode::VolumeNotFound,
                &[("pool", pool.clone()), ("volume", name.clone())],
                &detail,
            ),
            _ => not_found(
                ErrorCode::VolumeNotFound,
                &[("pool", String::new()), ("volume", name)],
                &detail,
            ),
        },
        ErrorNumber::NoNetwork => {
            not_found(ErrorCode::NetworkNotFound, &[("network", name)], &detail)
        }
        // virCheckFlags: the driver lacks a flag combination (the test
        // driver refuses live and config changes together, libvirt 11's
        // attaches live only). The request was fine; the host cannot do it.
        ErrorNumber::InvalidArg if is_unsupported_flags(e) => {
            not_supported(subject, class, &detail)
        }
        ErrorNumber::InvalidArg | ErrorNumber::XmlError | ErrorNumber::XmlDetail => Error::new(
            ErrorCode::InvalidArgument,
            [("field", class.to_owned()), ("reason", detail.clone())],
            format!("the hypervisor refused the {class} definition: {detail}"),
        ),
        ErrorNumber::OperationInvalid => bad_state(subject, &detail),
        ErrorNumber::NoSupport
        | ErrorNumber::OperationUnsupported
        | ErrorNumber::ArgumentUnsupported => not_supported(subject, class, &detail),
        ErrorNumber::OperationTimeout | ErrorNumber::AgentUnresponsive => Error::new(
            ErrorCode::Timeout,
            [
                ("operation", class.to_owned()),
                ("timeout_s", String::new()),
            ],
            format!("the hypervisor timed out: {detail}"),
        ),
        ErrorNumber::ResourceBusy => Error::new(
            ErrorCode::Busy,
            [
                ("object", format!("{class}/{name}")),
                ("retry_after_ms", "1000".to_owned()),
            ],
            format!("{class} {name} is busy in the hypervisor: {detail}"),
        ),
        ErrorNumber::DomExist | ErrorNumber::NetworkExist | ErrorNumber::StorageVolExist => {
            Error::new(
                ErrorCode::AlreadyExists,
                [("class", class.to_owned()), ("name", name.clone())],
                format!("{class} {name} already exists: {detail}"),
            )
        }
        ErrorNumber::NoConnect | ErrorNumber::InvalidConn => host_unavailable(&detail),
        ErrorNumber::SystemError if is_connection_error(e) => host_unavailable(&detail),
        _ if needs_qemu_img(&detail) => Error::new(
            ErrorCode::OperationNotSupported,
            [("operation", class.to_owned()), ("reason", detail.clone())],
            format!("the hypervisor needs qemu-img (package qemu-utils) for this {class} operation: {detail}"),
        ),
        _ => Error::internal(detail),
    }
}

/// Whether libvirt failed for want of `qemu-img` ("creation of non-raw
/// file images is not supported without qemu-img."), which the host lacks
/// (`host.capabilities` says which volume formats it can create). The
/// bridge checks before creating a volume; this catches what the daemon
/// finds missing on its own `PATH`.
fn needs_qemu_img(message: &str) -> bool {
    message.contains("without qemu-img")
}

/// Whether libvirt refused a flag (combination) the driver does not
/// implement (`virCheckFlags`, `VIR_EXCLUSIVE_FLAGS_RET`), as opposed to any other failure: only then
/// may a caller retry the same change with other flags.
pub(crate) fn is_unsupported_flags(e: &virt::error::Error) -> bool {
    matches!(e.code(), ErrorNumberEnum::Known(ErrorNumber::InvalidArg))
        && (e.message().contains("unsupported flags")
            || e.message().contains("are mutually exclusive"))
}

fn not_supported(subject: &Subject, class: &'static str, detail: &str) -> Error {
    let op = match subject {
        Subject::Vm { op, .. } | Subject::Pool { op, .. } | Subject::Network { op, .. } => *op,
        _ => class,
    };
    Error::new(
        ErrorCode::OperationNotSupported,
        [("operation", op.to_owned()), ("reason", detail.to_owned())],
        format!("{op} is not supported by this host: {detail}"),
    )
}

/// `HOST_UNAVAILABLE`.
pub(crate) fn host_unavailable(reason: &str) -> Error {
    Error::new(
        ErrorCode::HostUnavailable,
        [("reason", reason.to_owned())],
        format!("the hypervisor is unavailable: {reason}"),
    )
}

fn not_found(code: ErrorCode, params: &[(&str, String)], detail: &str) -> Error {
    let what: Vec<String> = params.iter().map(|(k, v)| format!("{k} {v}")).collect();
    Error::new(
        code,
        params.iter().map(|(k, v)| (*k, v.clone())),
        format!("{} not found ({detail})", what.join(", ")),
    )
}

fn bad_state(subject: &Subject, detail: &str) -> Error {
    use ErrorCode::*;
    let (code, key, name, op) = match subject {
        Subject::Vm { id, op } => (VmBadPowerState, "vm", id, *op),
        Subject::Pool { name, op } => (PoolBadState, "pool", name, *op),
        Subject::Volume { pool, .. } => (PoolBadState, "pool", pool, "volume"),
        Subject::Network { name, op } => (NetworkBadState, "network", name, *op),
        Subject::Snapshot { vm, .. } => (VmBadPowerState, "vm", vm, "snapshot"),
        Subject::Host => return Error::internal(detail),
    };
    let message = match subject {
        Subject::Volume { .. } => {
            format!("pool {name} does not allow this volume operation: {detail}")
        }
        Subject::Snapshot { name: snap, .. } => {
            format!("snapshot {snap} of vm {name} cannot be used now: {detail}")
        }
        _ => format!("{key} {name} cannot {op} in its current state: {detail}"),
    };
    let mut params = vec![(key, name.clone()), ("operation", op.to_owned())];
    if code == VmBadPowerState {
        params.push(("current", PowerState::Unknown.to_string()));
        params.push(("allowed", String::new()));
    } else {
        params.push(("current", String::new()));
    }
    Error::new(code, params, message)
}

/// `ALREADY_EXISTS` for an object of `class` named `name`.
pub(crate) fn already_exists(class: &str, name: &str) -> Error {
    Error::new(
        ErrorCode::AlreadyExists,
        [("class", class.to_owned()), ("name", name.to_owned())],
        format!("{class} {name} already exists"),
    )
}

/// `code` (a `*_BAD_STATE`) for object `name` of `class`, which is
/// `current`, so `op` is not possible.
pub(crate) fn state_error(
    code: ErrorCode,
    class: &str,
    name: &str,
    op: &str,
    current: &str,
) -> Error {
    Error::new(
        code,
        [
            (class, name.to_owned()),
            ("operation", op.to_owned()),
            ("current", current.to_owned()),
        ],
        format!("{class} {name} is {current}; {op} is not possible"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirts_words_for_a_missing_qemu_img_are_recognised() {
        assert!(needs_qemu_img(
            "creation of non-raw file images is not supported without qemu-img."
        ));
        assert!(!needs_qemu_img("cannot open file: Permission denied"));
    }
}
