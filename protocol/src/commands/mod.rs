//! The command catalogue: one marker type per operation, with its wire name,
//! its request and response types, and every fact a server needs about it
//! (access level, how it runs, the object it works on, the `hostctl` verb
//! that exposes it), in one line of `commands/catalogue.rs`.
//!
//! Request types live by object class: [`host`], [`vm`], [`snapshot`],
//! [`storage`], [`network`], [`task`]; [`common`] holds what several share.
//! ARCHITECTURE.md has the recipe for adding a command.

use std::fmt::Debug;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::validate::Validate;

mod catalogue;
pub mod common;
pub mod host;
pub mod network;
mod plan;
pub mod snapshot;
pub mod storage;
pub mod task;
pub mod vm;

pub use catalogue::*;
pub use common::*;
pub use host::*;
pub use network::*;
pub use plan::{Plan, Planned, Run, Target};
pub use snapshot::*;
pub use storage::*;
pub use task::*;
pub use vm::*;

#[cfg(feature = "arbitrary")]
mod arb {
    /// Wire types can be generated from arbitrary bytes (feature `arbitrary`).
    pub trait MaybeArbitrary: for<'a> arbitrary::Arbitrary<'a> {}
    impl<T: for<'a> arbitrary::Arbitrary<'a>> MaybeArbitrary for T {}
}
#[cfg(not(feature = "arbitrary"))]
mod arb {
    /// Wire types can be generated from arbitrary bytes (feature `arbitrary`).
    pub trait MaybeArbitrary {}
    impl<T> MaybeArbitrary for T {}
}
pub use arb::MaybeArbitrary;

/// Declares a trait with `bounds` and implements it for every type that
/// meets them (a trait alias), writing the bounds once.
macro_rules! trait_alias {
    ($(#[doc = $doc:literal])+ $name:ident = $($bound:tt)+) => {
        $(#[doc = $doc])+
        pub trait $name: $($bound)+ {}
        impl<T: $($bound)+> $name for T {}
    };
}

trait_alias! {
    /// Everything a request or response type is.
    Message = Serialize + DeserializeOwned + JsonSchema + Debug + Clone + PartialEq + Send + Sync + MaybeArbitrary + 'static
}

/// Who may run a command. Roles are cumulative: an operator may do what a
/// reader may, an admin what an operator may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Reads state; changes nothing.
    Read,
    /// Changes the running state of existing objects (start, stop, attach, snapshot).
    Operate,
    /// Creates or destroys objects and data (define, undefine, delete, resize).
    Admin,
    /// Host-to-host steps of an operation that spans two hosts (a
    /// migration's prepare on its destination): only other agents, never a
    /// manager's or an operator's login, whatever its role.
    Peer,
}

impl Access {
    /// The wire name: `read`, `operate`, `admin`, `peer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Operate => "operate",
            Access::Admin => "admin",
            Access::Peer => "peer",
        }
    }
}

/// One operation of the protocol.
pub trait Command: 'static {
    /// The wire name, carried in the AMQP `type` property, e.g. `vm.start`.
    const NAME: &'static str;
    /// The access level needed to run it.
    const ACCESS: Access;
    /// What it does.
    const DOC: &'static str;
    /// How a server runs it.
    const RUN: Run;
    /// The `hostctl` verb that sends it.
    const CLI: &'static str;
    /// The request payload.
    type Request: Message + Validate;
    /// The value of a successful reply.
    type Response: Message;
    /// Tags a request of this command.
    fn wrap(request: Self::Request) -> AnyRequest;
    /// Takes this command's response out of an [`AnyResponse`]; `None` when
    /// it holds another command's response.
    fn unwrap(response: AnyResponse) -> Option<Self::Response>;
    /// The objects a request of this command works on, each a line it
    /// waits in; the first is the one its task names.
    fn targets(request: &Self::Request) -> Vec<Target>;
}

/// Receives each command type of the catalogue in turn.
pub trait CommandVisitor {
    /// Called once per command.
    fn visit<C: Command>(&mut self);
}

/// Plain data about one command, for listings, docs and lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandInfo {
    /// Wire name.
    pub name: &'static str,
    /// Access level.
    pub access: Access,
    /// What it does.
    pub doc: &'static str,
    /// Rust name of the request type (also its schema name).
    pub request: &'static str,
    /// Rust name of the response type (also its schema name).
    pub response: &'static str,
    /// How a server runs it: inline, as a read, or as a change (which can
    /// run as a task, and may be cancellable).
    pub run: Run,
    /// The `hostctl` verb that sends it, e.g. `vm start`.
    pub cli: &'static str,
}

/// Looks a command up by wire name.
pub fn command_info(name: &str) -> Option<&'static CommandInfo> {
    COMMANDS.iter().find(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_well_formed() {
        let mut names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate command names");
        for n in names {
            let (class, op) = n.split_once('.').expect("class.op");
            assert!(!class.is_empty() && !op.is_empty(), "{n}");
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_'),
                "{n}"
            );
        }
    }

    #[test]
    fn the_catalogue_covers_the_product() {
        for name in [
            "host.ping",
            "host.info",
            "host.capabilities",
            "host.stats",
            "host.snapshot",
            "vm.list",
            "vm.get",
            "vm.get_by_name",
            "vm.define",
            "vm.undefine",
            "vm.start",
            "vm.shutdown",
            "vm.destroy",
            "vm.reboot",
            "vm.reset",
            "vm.pause",
            "vm.resume",
            "vm.suspend",
            "vm.set_memory",
            "vm.set_vcpus",
            "vm.attach_disk",
            "vm.detach_disk",
            "vm.attach_nic",
            "vm.detach_nic",
            "vm.stats",
            "snapshot.create",
            "snapshot.list",
            "snapshot.revert",
            "snapshot.delete",
            "pool.list",
            "pool.get",
            "pool.define",
            "pool.start",
            "pool.stop",
            "pool.refresh",
            "pool.undefine",
            "volume.list",
            "volume.get",
            "volume.create",
            "volume.delete",
            "volume.resize",
            "volume.clone",
            "network.list",
            "network.get",
            "network.define",
            "network.start",
            "network.stop",
            "network.undefine",
            "task.get",
            "task.list",
            "task.cancel",
        ] {
            assert!(command_info(name).is_some(), "{name} missing");
        }
        assert!(command_info("vm.fly").is_none());
    }

    #[test]
    fn read_commands_change_nothing_by_name() {
        for c in COMMANDS {
            let op = c.name.split_once('.').map(|(_, op)| op).unwrap_or_default();
            let reads = [
                "ping",
                "info",
                "capabilities",
                "stats",
                "snapshot",
                "list",
                "get",
                "get_by_name",
            ];
            assert_eq!(reads.contains(&op), c.access == Access::Read, "{}", c.name);
        }
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use crate::codec::ContentType;
    use crate::types::PowerState;

    fn request(name: &str, json: &str) -> AnyRequest {
        AnyRequest::decode(name, ContentType::Json, json.as_bytes(), 1 << 20).expect("decodes")
    }

    #[test]
    fn an_unknown_filter_is_refused_not_answered_empty() {
        for (name, body, field) in [
            ("vm.list", r#"{"power_state":"flying"}"#, "power_state"),
            ("vm.list", r#"{"power_state":"unknown"}"#, "power_state"),
            ("task.list", r#"{"status":"sleeping"}"#, "status"),
        ] {
            let err = request(name, body).validate().expect_err(body);
            assert_eq!(err.field, field, "{name} {body}");
        }
        for s in PowerState::ALL {
            let body = format!(r#"{{"power_state":"{s}"}}"#);
            assert!(request("vm.list", &body).validate().is_ok(), "{body}");
        }
    }

    #[test]
    fn a_plan_names_the_line_and_the_object_once() {
        let uuid = uuid::Uuid::new_v4();
        let start = request("vm.start", &format!(r#"{{"uuid":"{uuid}"}}"#)).plan();
        assert_eq!(start.run, Run::Change);
        assert_eq!(start.lock_keys(), [format!("vm:{uuid}")]);
        let define = request(
            "vm.define",
            r#"{"spec":{"name":"web","memory_kib":1048576,"vcpus":1}}"#,
        )
        .plan();
        assert_eq!(define.run, Run::Cancellable);
        assert_eq!(define.lock_keys(), ["vm-name:web"]);
        assert_eq!(define.object().map(|o| o.id).as_deref(), Some("web"));
        // A clone waits in its source's line and its new name's, taken in
        // key order whichever is named first.
        let clone = request("volume.clone", r#"{"pool":"p","name":"z","new_name":"b"}"#).plan();
        assert_eq!(clone.lock_keys(), ["volume:p/b", "volume:p/z"]);
        assert_eq!(clone.object().map(|o| o.id).as_deref(), Some("p/b"));
        let back = request("volume.clone", r#"{"pool":"p","name":"b","new_name":"z"}"#).plan();
        assert_eq!(back.lock_keys(), clone.lock_keys());
        let ping = request("host.ping", "{}").plan();
        assert_eq!((ping.run, ping.targets), (Run::Inline, vec![]));
    }

    #[test]
    fn every_change_works_on_an_object_except_task_cancel_and_placement() {
        for c in COMMANDS {
            assert!(c.run.fits(c.access), "{}", c.name);
            assert!(!c.cli.is_empty(), "{}", c.name);
        }
        let changes_without_target: Vec<&str> = COMMANDS
            .iter()
            // host.disable / host.enable set one value of the host's, not
            // an object with a line.
            .filter(|c| c.run.changes() && !matches!(c.name, "task.cancel" | "host.enable"))
            .filter(|c| c.request == "Empty" || c.request == "TaskId")
            .map(|c| c.name)
            .collect();
        assert!(
            changes_without_target.is_empty(),
            "{changes_without_target:?}"
        );
    }
}
