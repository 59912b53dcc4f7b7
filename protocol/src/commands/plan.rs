//! What a server does with a request, decided once from the catalogue:
//! how it runs, and the objects whose lines it waits in.

use uuid::Uuid;

use super::{Access, AnyRequest};
use crate::error::Error;
use crate::types::{ObjectClass, ObjectRef};

/// How a server runs a command. Each command's is stated in the catalogue;
/// a read (`Access::Read`) is `Inline` or `Read`, a change is `Change` or
/// `Cancellable` (checked when the catalogue compiles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Run {
    /// Answered from memory on the receiving thread: no hypervisor call,
    /// no lock (`host.ping`).
    Inline,
    /// A read: runs on a blocking thread, is not journaled and never runs
    /// as a task (`x-hostbus-async` is ignored).
    Read,
    /// A change: journaled (at most once per command id), waits for its
    /// object's turn, and runs as a task when asked (`x-hostbus-async`).
    Change,
    /// A change whose task `task.cancel` can stop between its steps.
    Cancellable,
}

impl Run {
    /// Whether it changes state (journaled, may run as a task).
    pub const fn changes(self) -> bool {
        matches!(self, Run::Change | Run::Cancellable)
    }

    /// Whether its task can be cancelled.
    pub const fn cancellable(self) -> bool {
        matches!(self, Run::Cancellable)
    }

    /// Whether the access level fits: reads run inline or as reads,
    /// operate and admin commands are changes.
    pub const fn fits(self, access: Access) -> bool {
        matches!(access, Access::Read) != self.changes()
    }

    /// The snake_case name, the `runs` of each command in the schema:
    /// `inline`, `read`, `change`, `cancellable`.
    pub fn name(self) -> &'static str {
        match self {
            Run::Inline => "inline",
            Run::Read => "read",
            Run::Change => "change",
            Run::Cancellable => "cancellable",
        }
    }

    /// The name used in docs/protocol.md's command table.
    pub fn as_str(self) -> &'static str {
        match self {
            Run::Inline => "inline",
            Run::Read => "read",
            Run::Change => "change",
            Run::Cancellable => "change, cancellable",
        }
    }
}

/// The object a command works on: the line it waits in (commands on one
/// object run one at a time, in arrival order) and what its task names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A VM by uuid.
    Vm(Uuid),
    /// A VM being defined, by the name it will have (it has no uuid yet;
    /// its task's object id is this name, the uuid is in the result).
    NewVm(String),
    /// A storage pool.
    Pool(String),
    /// A volume of a pool.
    Volume {
        /// The pool.
        pool: String,
        /// The volume.
        name: String,
    },
    /// A virtual network.
    Network(String),
}

impl Target {
    /// The key of the object's line: `vm:<uuid>`, `vm-name:<name>`,
    /// `pool:<name>`, `volume:<pool>/<name>`, `network:<name>`.
    pub fn lock_key(&self) -> String {
        match self {
            Target::Vm(u) => format!("vm:{u}"),
            Target::NewVm(n) => format!("vm-name:{n}"),
            Target::Pool(n) => format!("pool:{n}"),
            Target::Volume { pool, name } => format!("volume:{pool}/{name}"),
            Target::Network(n) => format!("network:{n}"),
        }
    }

    /// The object as tasks and errors name it.
    pub fn object(&self) -> ObjectRef {
        let (class, id) = match self {
            Target::Vm(u) => (ObjectClass::Vm, u.to_string()),
            Target::NewVm(n) => (ObjectClass::Vm, n.clone()),
            Target::Pool(n) => (ObjectClass::Pool, n.clone()),
            Target::Volume { pool, name } => (ObjectClass::Volume, format!("{pool}/{name}")),
            Target::Network(n) => (ObjectClass::Network, n.clone()),
        };
        ObjectRef { class, id }
    }
}

/// Everything a server needs to know about one request before running it,
/// computed once per request by [`AnyRequest::plan`](super::AnyRequest::plan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The wire name.
    pub command: &'static str,
    /// The access level it needs.
    pub access: Access,
    /// How it runs.
    pub run: Run,
    /// The objects it works on, each a line it waits in: the first is the
    /// one its task names (`volume.clone`: the new volume, then its
    /// source). Empty for reads and `task.cancel`.
    pub targets: Vec<Target>,
}

impl Plan {
    /// The object its task names, if it works on one.
    pub fn target(&self) -> Option<&Target> {
        self.targets.first()
    }

    /// The keys of the lines it waits in, in the one global order every
    /// command takes them in (sorted, without repeats), so that two
    /// commands never wait for each other.
    pub fn lock_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.targets.iter().map(Target::lock_key).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The object, for task records.
    pub fn object(&self) -> Option<ObjectRef> {
        self.target().map(Target::object)
    }
}

/// A request that passed validation, with its plan: what a server admits,
/// decides about and runs. It can only be made by [`Planned::new`], so code
/// that takes a `Planned` knows the request was validated, once.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    request: AnyRequest,
    plan: Plan,
    /// The plan's lock keys, in order, formatted once.
    lock_keys: Vec<String>,
}

impl Planned {
    /// Validates `request` and computes its plan.
    pub fn new(request: AnyRequest) -> Result<Self, Error> {
        request.validate()?;
        let plan = request.plan();
        let lock_keys = plan.lock_keys();
        Ok(Self {
            request,
            plan,
            lock_keys,
        })
    }

    /// The keys of the lines it waits in (see [`Plan::lock_keys`]); empty
    /// for a request that takes no turn.
    pub fn lock_keys(&self) -> &[String] {
        &self.lock_keys
    }

    /// The request.
    pub fn request(&self) -> &AnyRequest {
        &self.request
    }

    /// Its plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The request, its plan and its lock keys.
    pub fn into_parts(self) -> (AnyRequest, Plan, Vec<String>) {
        (self.request, self.plan, self.lock_keys)
    }
}
