//! The command catalogue: one marker type per operation, with its wire name,
//! its request and response types and the access level it needs.
//!
//! Adding an operation is one line in [`catalogue!`](crate::commands) and one
//! handler in the bridge. Dispatch tables iterate the catalogue through
//! [`visit_commands`].

use std::fmt::Debug;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::{decode, encode, CodecError, ContentType};
use crate::envelope::Reply;
use crate::error::Error;
use crate::types::Record;
use crate::types::{
    Capabilities, DiskSpec, HostRecord, HostStats, Inventory, NetworkRecord, NetworkSpec, NicSpec,
    PoolRecord, PoolSpec, PowerState, SnapshotRecord, TaskRecord, TaskStatus, Timestamp, VmRecord,
    VmSpec, VmStats, VolumeRecord, VolumeSpec,
};
use crate::validate::{
    check_device_target, check_mac, check_name, check_range, check_text, Validate, Validation,
    MAX_MEMORY_KIB, MAX_SHUTDOWN_TIMEOUT_S, MAX_VCPUS, MAX_VOLUME_BYTES, MIN_MEMORY_KIB,
};

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

/// Everything a request or response type is.
pub trait Message:
    Serialize
    + DeserializeOwned
    + JsonSchema
    + Debug
    + Clone
    + PartialEq
    + Send
    + Sync
    + MaybeArbitrary
    + 'static
{
}
impl<T> Message for T where
    T: Serialize
        + DeserializeOwned
        + JsonSchema
        + Debug
        + Clone
        + PartialEq
        + Send
        + Sync
        + MaybeArbitrary
        + 'static
{
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
}

impl Access {
    /// The wire name: `read`, `operate`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Operate => "operate",
            Access::Admin => "admin",
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
    /// The request payload.
    type Request: Message + Validate;
    /// The value of a successful reply.
    type Response: Message;
    /// Tags a request of this command.
    fn wrap(request: Self::Request) -> AnyRequest;
    /// Takes this command's response out of an [`AnyResponse`]; `None` when
    /// it holds another command's response.
    fn unwrap(response: AnyResponse) -> Option<Self::Response>;
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
}

/// Looks a command up by wire name.
pub fn command_info(name: &str) -> Option<&'static CommandInfo> {
    COMMANDS.iter().find(|c| c.name == name)
}

macro_rules! catalogue {
    ($( $(#[doc = $doc:literal])+ $marker:ident = $name:literal, $access:ident, $req:ident => $resp:ident; )+) => {
        $(
            $(#[doc = $doc])+
            #[doc = concat!("\n\nWire name `", $name, "`, access `", stringify!($access), "`, request [`", stringify!($req), "`], response [`", stringify!($resp), "`].")]
            #[derive(Debug, Clone, Copy, PartialEq, Eq)]
            pub struct $marker;

            impl Command for $marker {
                const NAME: &'static str = $name;
                const ACCESS: Access = Access::$access;
                const DOC: &'static str = concat!($($doc),+);
                type Request = $req;
                type Response = $resp;
                fn wrap(request: $req) -> AnyRequest {
                    AnyRequest::$marker(request)
                }
                fn unwrap(response: AnyResponse) -> Option<$resp> {
                    match response {
                        AnyResponse::$marker(v) => Some(v),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    }
                }
            }
        )+

        /// Every command of the protocol, in catalogue order.
        pub const COMMANDS: &[CommandInfo] = &[$(
            CommandInfo {
                name: $name,
                access: Access::$access,
                doc: concat!($($doc),+),
                request: stringify!($req),
                response: stringify!($resp),
            },
        )+];

        /// Calls `visitor.visit::<C>()` for every command of the catalogue.
        pub fn visit_commands<V: CommandVisitor>(visitor: &mut V) {
            $( visitor.visit::<$marker>(); )+
        }

        /// Any request of the catalogue, tagged by command: what a server
        /// decodes from a delivery and matches on exhaustively, so a command
        /// without a handler does not compile.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(clippy::large_enum_variant)]
        pub enum AnyRequest {
            $(
                #[doc = concat!("`", $name, "`.")]
                $marker($req),
            )+
        }

        /// Any successful response of the catalogue, tagged by command.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(clippy::large_enum_variant)]
        pub enum AnyResponse {
            $(
                #[doc = concat!("`", $name, "`.")]
                $marker($resp),
            )+
        }

        impl AnyRequest {
            /// Decodes the payload of command `name`. An unknown name gives
            /// `UNKNOWN_COMMAND`; bytes that do not decode give
            /// `MALFORMED_MESSAGE` or `PAYLOAD_TOO_LARGE`.
            pub fn decode(name: &str, ct: ContentType, bytes: &[u8], limit: usize) -> Result<Self, Error> {
                match name {
                    $( $name => Ok(AnyRequest::$marker(decode(ct, bytes, limit)?)), )+
                    _ => Err(Error::unknown_command(name)),
                }
            }

            /// The command's wire name.
            pub fn name(&self) -> &'static str {
                match self {
                    $( AnyRequest::$marker(_) => $name, )+
                }
            }

            /// The access level the command needs.
            pub fn access(&self) -> Access {
                match self {
                    $( AnyRequest::$marker(_) => Access::$access, )+
                }
            }

            /// Validates the request's fields.
            pub fn validate(&self) -> Validation {
                match self {
                    $( AnyRequest::$marker(r) => r.validate(), )+
                }
            }

            /// Encodes the request payload.
            pub fn encode(&self, ct: ContentType) -> Result<Vec<u8>, CodecError> {
                match self {
                    $( AnyRequest::$marker(r) => encode(ct, r), )+
                }
            }
        }

        impl AnyResponse {
            /// The command's wire name.
            pub fn name(&self) -> &'static str {
                match self {
                    $( AnyResponse::$marker(_) => $name, )+
                }
            }

            /// Encodes `{"ok": <response>}`, the body of a successful reply.
            pub fn encode_reply(&self, ct: ContentType) -> Result<Vec<u8>, CodecError> {
                match self {
                    $( AnyResponse::$marker(v) => encode(ct, &Reply::Ok(v)), )+
                }
            }

            /// The response as a record, for task results (lists and stats give [`Record::None`]).
            pub fn into_record(self) -> Record {
                match self {
                    $( AnyResponse::$marker(v) => v.into_record(), )+
                }
            }
        }
    };
}

catalogue! {
    /// Checks that the agent is alive and serving; echoes `echo`.
    HostPing = "host.ping", Read, Ping => Pong;
    /// The host record: hardware, hypervisor and versions.
    HostInfo = "host.info", Read, Empty => HostRecord;
    /// What the host and its hypervisor can do, and which commands it serves.
    HostCapabilities = "host.capabilities", Read, Empty => Capabilities;
    /// Memory, CPU and VM load of the host now.
    HostStatsGet = "host.stats", Read, Empty => HostStats;
    /// Every record of the host with its generation, for resync.
    HostSnapshot = "host.snapshot", Read, Empty => Inventory;

    /// VMs of the host, optionally only those in one power state.
    VmList = "vm.list", Read, VmListRequest => VmListResponse;
    /// One VM by uuid.
    VmGet = "vm.get", Read, VmUuid => VmRecord;
    /// One VM by name.
    VmGetByName = "vm.get_by_name", Read, ObjectName => VmRecord;
    /// Defines a VM from a typed spec; it starts halted.
    VmDefine = "vm.define", Admin, VmDefineRequest => VmRecord;
    /// Removes a halted VM's definition, its snapshots, and optionally the volumes it owns.
    VmUndefine = "vm.undefine", Admin, VmUndefineRequest => Empty;
    /// Starts a halted VM, optionally paused.
    VmStart = "vm.start", Operate, VmStartRequest => VmRecord;
    /// Asks the guest to shut down cleanly; fails with `TIMEOUT` (or forces off when `force`) after `timeout_s`.
    VmShutdown = "vm.shutdown", Operate, VmShutdownRequest => VmRecord;
    /// Stops a VM at once, like pulling the plug.
    VmDestroy = "vm.destroy", Operate, VmUuid => VmRecord;
    /// Asks the guest to reboot.
    VmReboot = "vm.reboot", Operate, VmUuid => VmRecord;
    /// Resets the VM like a reset button, without guest cooperation.
    VmReset = "vm.reset", Operate, VmUuid => VmRecord;
    /// Stops a running VM's vCPUs; memory stays resident.
    VmPause = "vm.pause", Operate, VmUuid => VmRecord;
    /// Resumes a paused VM, or restores a suspended one.
    VmResume = "vm.resume", Operate, VmUuid => VmRecord;
    /// Saves a running or paused VM's memory to disk and stops it.
    VmSuspend = "vm.suspend", Operate, VmUuid => VmRecord;
    /// Changes a VM's memory (live when running, and in its definition).
    VmSetMemory = "vm.set_memory", Operate, VmSetMemoryRequest => VmRecord;
    /// Changes a VM's vCPU count (live when running, and in its definition).
    VmSetVcpus = "vm.set_vcpus", Operate, VmSetVcpusRequest => VmRecord;
    /// Attaches a disk.
    VmAttachDisk = "vm.attach_disk", Operate, VmAttachDiskRequest => VmRecord;
    /// Detaches a disk by guest target.
    VmDetachDisk = "vm.detach_disk", Operate, VmDetachDiskRequest => VmRecord;
    /// Attaches a NIC.
    VmAttachNic = "vm.attach_nic", Operate, VmAttachNicRequest => VmRecord;
    /// Detaches a NIC by MAC address.
    VmDetachNic = "vm.detach_nic", Operate, VmDetachNicRequest => VmRecord;
    /// CPU, memory, block and network counters of a VM.
    VmStatsGet = "vm.stats", Read, VmUuid => VmStats;

    /// Takes a snapshot of a VM.
    SnapshotCreate = "snapshot.create", Operate, SnapshotCreateRequest => SnapshotRecord;
    /// Snapshots of a VM.
    SnapshotList = "snapshot.list", Read, VmUuid => SnapshotListResponse;
    /// Reverts a VM to a snapshot, restoring its power state at the time.
    SnapshotRevert = "snapshot.revert", Operate, SnapshotRef => VmRecord;
    /// Deletes a snapshot.
    SnapshotDelete = "snapshot.delete", Admin, SnapshotRef => Empty;

    /// Storage pools of the host.
    PoolList = "pool.list", Read, Empty => PoolListResponse;
    /// One pool by name.
    PoolGet = "pool.get", Read, ObjectName => PoolRecord;
    /// Defines a pool; it starts inactive unless `autostart` is set.
    PoolDefine = "pool.define", Admin, PoolDefineRequest => PoolRecord;
    /// Starts (activates) a pool.
    PoolStart = "pool.start", Operate, ObjectName => PoolRecord;
    /// Stops (deactivates) a pool.
    PoolStop = "pool.stop", Operate, ObjectName => PoolRecord;
    /// Rescans a pool's volumes.
    PoolRefresh = "pool.refresh", Operate, ObjectName => PoolRecord;
    /// Removes an inactive pool's definition; its data stays.
    PoolUndefine = "pool.undefine", Admin, ObjectName => Empty;

    /// Volumes of an active pool.
    VolumeList = "volume.list", Read, PoolName => VolumeListResponse;
    /// One volume.
    VolumeGet = "volume.get", Read, VolumeKey => VolumeRecord;
    /// Creates a volume.
    VolumeCreate = "volume.create", Admin, VolumeCreateRequest => VolumeRecord;
    /// Deletes a volume and its data.
    VolumeDelete = "volume.delete", Admin, VolumeKey => Empty;
    /// Grows a volume (shrinking is refused).
    VolumeResize = "volume.resize", Admin, VolumeResizeRequest => VolumeRecord;
    /// Copies a volume into a new one in the same pool.
    VolumeClone = "volume.clone", Admin, VolumeCloneRequest => VolumeRecord;

    /// Virtual networks of the host.
    NetworkList = "network.list", Read, Empty => NetworkListResponse;
    /// One network by name.
    NetworkGet = "network.get", Read, ObjectName => NetworkRecord;
    /// Defines a network; it starts inactive unless `autostart` is set.
    NetworkDefine = "network.define", Admin, NetworkDefineRequest => NetworkRecord;
    /// Starts a network.
    NetworkStart = "network.start", Operate, ObjectName => NetworkRecord;
    /// Stops a network.
    NetworkStop = "network.stop", Operate, ObjectName => NetworkRecord;
    /// Removes an inactive network's definition.
    NetworkUndefine = "network.undefine", Admin, ObjectName => Empty;

    /// One task by id.
    TaskGet = "task.get", Read, TaskId => TaskRecord;
    /// Tasks not yet collected, optionally only those in one status.
    TaskList = "task.list", Read, TaskListRequest => TaskListResponse;
    /// Asks a task to stop; it ends `cancelled` if its operation allows it.
    TaskCancel = "task.cancel", Operate, TaskId => TaskRecord;
}

macro_rules! wire_struct {
    ($(#[doc = $doc:literal])+ $name:ident { $( $(#[doc = $fdoc:literal])+ $(#[serde($($attr:tt)*)])? $field:ident : $ty:ty, )* }) => {
        $(#[doc = $doc])+
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        pub struct $name {
            $( $(#[doc = $fdoc])+ $(#[serde($($attr)*)])? pub $field: $ty, )*
        }
    };
}

wire_struct! {
    /// No parameters (encodes as an empty map; any map is accepted).
    Empty {}
}
impl Validate for Empty {
    fn validate(&self) -> Validation {
        Ok(())
    }
}

wire_struct! {
    /// Request of `host.ping`.
    Ping {
        /// Text to send back, at most 1024 bytes.
        #[serde(default)]
        echo: Option<String>,
    }
}
impl Validate for Ping {
    fn validate(&self) -> Validation {
        self.echo
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
    /// Request of `vm.list`.
    VmListRequest {
        /// Only VMs in this power state.
        #[serde(default)]
        power_state: Option<PowerState>,
    }
}
impl Validate for VmListRequest {
    fn validate(&self) -> Validation {
        Ok(())
    }
}

wire_struct! {
    /// Response of `vm.list`.
    VmListResponse {
        /// The VMs, sorted by name.
        vms: Vec<VmRecord>,
    }
}

wire_struct! {
    /// A VM by uuid.
    VmUuid {
        /// The VM.
        uuid: Uuid,
    }
}
impl Validate for VmUuid {
    fn validate(&self) -> Validation {
        Ok(())
    }
}

wire_struct! {
    /// An object by name (VMs, pools, networks).
    ObjectName {
        /// The name.
        name: String,
    }
}
impl Validate for ObjectName {
    fn validate(&self) -> Validation {
        check_name("name", &self.name)
    }
}

wire_struct! {
    /// Request of `vm.define`.
    VmDefineRequest {
        /// What to define.
        spec: VmSpec,
    }
}
impl Validate for VmDefineRequest {
    fn validate(&self) -> Validation {
        self.spec.validate().map_err(|e| e.within("spec"))
    }
}

wire_struct! {
    /// Request of `vm.undefine`.
    VmUndefineRequest {
        /// The VM; it must be halted.
        uuid: Uuid,
        /// Also delete the pool volumes its disks use.
        #[serde(default)]
        remove_storage: bool,
    }
}
impl Validate for VmUndefineRequest {
    fn validate(&self) -> Validation {
        Ok(())
    }
}

wire_struct! {
    /// Request of `vm.start`.
    VmStartRequest {
        /// The VM.
        uuid: Uuid,
        /// Start with vCPUs paused.
        #[serde(default)]
        paused: bool,
    }
}
impl Validate for VmStartRequest {
    fn validate(&self) -> Validation {
        Ok(())
    }
}

wire_struct! {
    /// Request of `vm.shutdown`.
    VmShutdownRequest {
        /// The VM.
        uuid: Uuid,
        /// Seconds to wait for the guest, 0 to 3600 (default 120). 0 asks and returns at once.
        #[serde(default = "default_shutdown_timeout")]
        timeout_s: u32,
        /// Destroy the VM if it has not stopped when the timeout expires.
        #[serde(default)]
        force: bool,
    }
}
fn default_shutdown_timeout() -> u32 {
    120
}
impl Validate for VmShutdownRequest {
    fn validate(&self) -> Validation {
        check_range("timeout_s", self.timeout_s, 0, MAX_SHUTDOWN_TIMEOUT_S)
    }
}

wire_struct! {
    /// Request of `vm.set_memory`.
    VmSetMemoryRequest {
        /// The VM.
        uuid: Uuid,
        /// New memory, KiB; at most the VM's `max_memory_kib`.
        memory_kib: u64,
    }
}
impl Validate for VmSetMemoryRequest {
    fn validate(&self) -> Validation {
        check_range(
            "memory_kib",
            self.memory_kib,
            MIN_MEMORY_KIB,
            MAX_MEMORY_KIB,
        )
    }
}

wire_struct! {
    /// Request of `vm.set_vcpus`.
    VmSetVcpusRequest {
        /// The VM.
        uuid: Uuid,
        /// New vCPU count; at most the VM's `max_vcpus`.
        vcpus: u32,
    }
}
impl Validate for VmSetVcpusRequest {
    fn validate(&self) -> Validation {
        check_range("vcpus", self.vcpus, 1, MAX_VCPUS)
    }
}

wire_struct! {
    /// Request of `vm.attach_disk`.
    VmAttachDiskRequest {
        /// The VM.
        uuid: Uuid,
        /// The disk.
        disk: DiskSpec,
    }
}
impl Validate for VmAttachDiskRequest {
    fn validate(&self) -> Validation {
        self.disk.validate().map_err(|e| e.within("disk"))
    }
}

wire_struct! {
    /// Request of `vm.detach_disk`.
    VmDetachDiskRequest {
        /// The VM.
        uuid: Uuid,
        /// Guest device name, e.g. `vdb`.
        target: String,
    }
}
impl Validate for VmDetachDiskRequest {
    fn validate(&self) -> Validation {
        check_device_target("target", &self.target)
    }
}

wire_struct! {
    /// Request of `vm.attach_nic`.
    VmAttachNicRequest {
        /// The VM.
        uuid: Uuid,
        /// The NIC.
        nic: NicSpec,
    }
}
impl Validate for VmAttachNicRequest {
    fn validate(&self) -> Validation {
        self.nic.validate().map_err(|e| e.within("nic"))
    }
}

wire_struct! {
    /// Request of `vm.detach_nic`.
    VmDetachNicRequest {
        /// The VM.
        uuid: Uuid,
        /// MAC address of the NIC.
        mac: String,
    }
}
impl Validate for VmDetachNicRequest {
    fn validate(&self) -> Validation {
        check_mac("mac", &self.mac)
    }
}

wire_struct! {
    /// Request of `snapshot.create`.
    SnapshotCreateRequest {
        /// The VM.
        vm: Uuid,
        /// Snapshot name, unique per VM.
        name: String,
        /// Free text.
        #[serde(default)]
        description: String,
    }
}
impl Validate for SnapshotCreateRequest {
    fn validate(&self) -> Validation {
        check_name("name", &self.name)?;
        check_text("description", &self.description)
    }
}

wire_struct! {
    /// Response of `snapshot.list`.
    SnapshotListResponse {
        /// Snapshots, oldest first.
        snapshots: Vec<SnapshotRecord>,
    }
}

wire_struct! {
    /// A snapshot of a VM.
    SnapshotRef {
        /// The VM.
        vm: Uuid,
        /// Snapshot name.
        name: String,
    }
}
impl Validate for SnapshotRef {
    fn validate(&self) -> Validation {
        check_name("name", &self.name)
    }
}

wire_struct! {
    /// Response of `pool.list`.
    PoolListResponse {
        /// Pools, sorted by name.
        pools: Vec<PoolRecord>,
    }
}

wire_struct! {
    /// Request of `pool.define`.
    PoolDefineRequest {
        /// What to define.
        spec: PoolSpec,
    }
}
impl Validate for PoolDefineRequest {
    fn validate(&self) -> Validation {
        self.spec.validate().map_err(|e| e.within("spec"))
    }
}

wire_struct! {
    /// A pool by name, for volume listings.
    PoolName {
        /// Pool name.
        pool: String,
    }
}
impl Validate for PoolName {
    fn validate(&self) -> Validation {
        check_name("pool", &self.pool)
    }
}

wire_struct! {
    /// Response of `volume.list`.
    VolumeListResponse {
        /// Volumes, sorted by name.
        volumes: Vec<VolumeRecord>,
    }
}

wire_struct! {
    /// A volume by pool and name.
    VolumeKey {
        /// Pool name.
        pool: String,
        /// Volume name.
        name: String,
    }
}
impl Validate for VolumeKey {
    fn validate(&self) -> Validation {
        check_name("pool", &self.pool)?;
        check_name("name", &self.name)
    }
}

wire_struct! {
    /// Request of `volume.create`.
    VolumeCreateRequest {
        /// Pool to create it in.
        pool: String,
        /// What to create.
        spec: VolumeSpec,
    }
}
impl Validate for VolumeCreateRequest {
    fn validate(&self) -> Validation {
        check_name("pool", &self.pool)?;
        self.spec.validate().map_err(|e| e.within("spec"))
    }
}

wire_struct! {
    /// Request of `volume.resize`.
    VolumeResizeRequest {
        /// Pool name.
        pool: String,
        /// Volume name.
        name: String,
        /// New virtual size, bytes; must not be smaller than the current one.
        capacity_bytes: u64,
    }
}
impl Validate for VolumeResizeRequest {
    fn validate(&self) -> Validation {
        check_name("pool", &self.pool)?;
        check_name("name", &self.name)?;
        check_range("capacity_bytes", self.capacity_bytes, 1, MAX_VOLUME_BYTES)
    }
}

wire_struct! {
    /// Request of `volume.clone`.
    VolumeCloneRequest {
        /// Pool name (source and clone).
        pool: String,
        /// Source volume name.
        name: String,
        /// Name of the new volume.
        new_name: String,
    }
}
impl Validate for VolumeCloneRequest {
    fn validate(&self) -> Validation {
        check_name("pool", &self.pool)?;
        check_name("name", &self.name)?;
        check_name("new_name", &self.new_name)
    }
}

wire_struct! {
    /// Response of `network.list`.
    NetworkListResponse {
        /// Networks, sorted by name.
        networks: Vec<NetworkRecord>,
    }
}

wire_struct! {
    /// Request of `network.define`.
    NetworkDefineRequest {
        /// What to define.
        spec: NetworkSpec,
    }
}
impl Validate for NetworkDefineRequest {
    fn validate(&self) -> Validation {
        self.spec.validate().map_err(|e| e.within("spec"))
    }
}

wire_struct! {
    /// A task by id.
    TaskId {
        /// Task id.
        id: Uuid,
    }
}
impl Validate for TaskId {
    fn validate(&self) -> Validation {
        Ok(())
    }
}

wire_struct! {
    /// Request of `task.list`.
    TaskListRequest {
        /// Only tasks in this status.
        #[serde(default)]
        status: Option<TaskStatus>,
    }
}
impl Validate for TaskListRequest {
    fn validate(&self) -> Validation {
        Ok(())
    }
}

wire_struct! {
    /// Response of `task.list`.
    TaskListResponse {
        /// Tasks, oldest first.
        tasks: Vec<TaskRecord>,
    }
}

/// Turns a response into the record a task stores as its result.
pub trait IntoRecord {
    /// The record, or [`Record::None`] for responses that are not one object.
    fn into_record(self) -> Record;
}

macro_rules! into_record {
    ($($ty:ident => $variant:ident),* ; $($none:ident),*) => {
        $(impl IntoRecord for $ty {
            fn into_record(self) -> Record {
                Record::$variant(self.into())
            }
        })*
        $(impl IntoRecord for $none {
            fn into_record(self) -> Record {
                Record::None
            }
        })*
    };
}

into_record!(
    HostRecord => Host, VmRecord => Vm, SnapshotRecord => Snapshot, PoolRecord => Pool,
    VolumeRecord => Volume, NetworkRecord => Network, TaskRecord => Task;
    Empty, Pong, Capabilities, HostStats, Inventory, VmListResponse, VmStats,
    SnapshotListResponse, PoolListResponse, VolumeListResponse, NetworkListResponse,
    TaskListResponse
);

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
