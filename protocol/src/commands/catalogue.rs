//! The catalogue: one line per command, with every fact a server or a
//! client needs about it. The macro turns the lines into marker types,
//! [`AnyRequest`]/[`AnyResponse`], [`COMMANDS`] and
//! [`AnyRequest::plan`], each matched exhaustively.

use super::*;
use crate::codec::{decode, encode, CodecError, ContentType};
use crate::error::Error;
use crate::reply::Reply;
use crate::types::*;
use crate::validate::{Validate, Validation};

macro_rules! catalogue {
    ($( $(#[doc = $doc:literal])+ $marker:ident = $name:literal, $access:ident, $req:ident => $resp:ident, $run:ident, $target:expr, $cli:literal; )+) => {
        $(
            $(#[doc = $doc])+
            #[doc = concat!("\n\nWire name `", $name, "`, access `", stringify!($access), "`, runs as `", stringify!($run), "`, request [`", stringify!($req), "`], response [`", stringify!($resp), "`], `hostctl ", $cli, "`.")]
            #[derive(Debug, Clone, Copy, PartialEq, Eq)]
            pub struct $marker;

            const _: () = assert!(
                Run::$run.fits(Access::$access),
                concat!($name, ": a read must run Inline or Read, a change Change or Cancellable")
            );

            impl Command for $marker {
                const NAME: &'static str = $name;
                const ACCESS: Access = Access::$access;
                const DOC: &'static str = concat!($($doc),+);
                const RUN: Run = Run::$run;
                const CLI: &'static str = $cli;
                type Request = $req;
                fn targets(request: &$req) -> Vec<Target> {
                    let targets: fn(&$req) -> Vec<Target> = $target;
                    targets(request)
                }
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
                run: Run::$run,
                cli: $cli,
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

            /// Everything a server decides about this request before
            /// running it: access, how it runs, the object it works on.
            pub fn plan(&self) -> Plan {
                match self {
                    $( AnyRequest::$marker(r) => Plan {
                        command: $name,
                        access: Access::$access,
                        run: Run::$run,
                        targets: <$marker as Command>::targets(r),
                    }, )+
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

            /// The inventory the response carries (`host.snapshot`'s), for
            /// the server to stamp with its session before replying.
            pub fn inventory_mut(&mut self) -> Option<&mut Inventory> {
                match self {
                    $( AnyResponse::$marker(v) => v.inventory_mut(), )+
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

// One line per command:
//   Marker = "wire.name", Access, Request => Response, Run, target, "hostctl verb";
// `Run` is Inline / Read (reads) or Change / Cancellable (changes: journaled,
// may run as a task); `targets` are the objects whose lines a change waits
// in, the one its task names first (`|_| vec![]` for reads); the verb is
// checked against hostctl's commands.
catalogue! {
    /// Checks that the agent is alive and serving; echoes `echo`.
    HostPing = "host.ping", Read, Ping => Pong, Inline, |_| vec![], "ping";
    /// The host record: hardware, hypervisor and versions.
    HostInfo = "host.info", Read, Empty => HostRecord, Read, |_| vec![], "host info";
    /// What the host and its hypervisor can do, and which commands it serves.
    HostCapabilities = "host.capabilities", Read, Empty => Capabilities, Read, |_| vec![], "host caps";
    /// Memory, CPU and VM load of the host now.
    HostStatsGet = "host.stats", Read, Empty => HostStats, Read, |_| vec![], "host stats";
    /// Every record of the host with its generation, for resync.
    HostSnapshot = "host.snapshot", Read, Empty => Inventory, Read, |_| vec![], "host snapshot";
    /// Marks the host as taking no new VMs (migrations to it are refused; placement skips it), e.g. while it drains; VMs on it keep running.
    HostDisable = "host.disable", Operate, HostDisableRequest => HostRecord, Change, |_| vec![], "host disable";
    /// Lets the host take new VMs again.
    HostEnable = "host.enable", Operate, Empty => HostRecord, Change, |_| vec![], "host enable";

    /// VMs of the host, optionally only those in one power state.
    VmList = "vm.list", Read, VmListRequest => VmListResponse, Read, |_| vec![], "vm list";
    /// One VM by uuid.
    VmGet = "vm.get", Read, VmUuid => VmRecord, Read, |_| vec![], "vm get";
    /// One VM by name.
    VmGetByName = "vm.get_by_name", Read, ObjectName => VmRecord, Read, |_| vec![], "vm get";
    /// Defines a VM from a typed spec; it starts halted.
    VmDefine = "vm.define", Admin, VmDefineRequest => VmRecord, Cancellable, |r| vec![Target::NewVm(r.spec.name.clone())], "vm create";
    /// Removes a halted VM's definition, its snapshots, and optionally the volumes it owns.
    VmUndefine = "vm.undefine", Admin, VmUndefineRequest => Empty, Cancellable, |r| vec![Target::Vm(r.uuid)], "vm delete";
    /// Starts a halted VM, optionally paused.
    VmStart = "vm.start", Operate, VmStartRequest => VmRecord, Change, |r| vec![Target::Vm(r.uuid)], "vm start";
    /// Asks the guest to shut down cleanly; fails with `TIMEOUT` (or forces off when `force`) after `timeout_s`.
    VmShutdown = "vm.shutdown", Operate, VmShutdownRequest => VmRecord, Cancellable, |r| vec![Target::Vm(r.uuid)], "vm shutdown";
    /// Stops a VM at once, like pulling the plug.
    VmDestroy = "vm.destroy", Operate, VmUuid => VmRecord, Change, |r| vec![Target::Vm(r.uuid)], "vm destroy";
    /// Asks the guest to reboot.
    VmReboot = "vm.reboot", Operate, VmUuid => VmRecord, Change, |r| vec![Target::Vm(r.uuid)], "vm reboot";
    /// Resets the VM like a reset button, without guest cooperation.
    VmReset = "vm.reset", Operate, VmUuid => VmRecord, Change, |r| vec![Target::Vm(r.uuid)], "vm reset";
    /// Stops a running VM's vCPUs; memory stays resident.
    VmPause = "vm.pause", Operate, VmUuid => VmRecord, Change, |r| vec![Target::Vm(r.uuid)], "vm pause";
    /// Resumes a paused VM, or restores a suspended one.
    VmResume = "vm.resume", Operate, VmUuid => VmRecord, Change, |r| vec![Target::Vm(r.uuid)], "vm resume";
    /// Saves a running or paused VM's memory to disk and stops it.
    VmSuspend = "vm.suspend", Operate, VmUuid => VmRecord, Change, |r| vec![Target::Vm(r.uuid)], "vm suspend";
    /// Changes a VM's memory (live when running, and in its definition).
    VmSetMemory = "vm.set_memory", Operate, VmSetMemoryRequest => VmRecord, Change, |r| vec![Target::Vm(r.uuid)], "vm set-memory";
    /// Changes a VM's vCPU count (live when running, and in its definition).
    VmSetVcpus = "vm.set_vcpus", Operate, VmSetVcpusRequest => VmRecord, Change, |r| vec![Target::Vm(r.uuid)], "vm set-vcpus";
    /// Attaches a disk.
    VmAttachDisk = "vm.attach_disk", Operate, VmAttachDiskRequest => VmRecord, Change, |r| vec![Target::Vm(r.uuid)], "vm attach-disk";
    /// Detaches a disk by guest target.
    VmDetachDisk = "vm.detach_disk", Operate, VmDetachDiskRequest => VmRecord, Change, |r| vec![Target::Vm(r.uuid)], "vm detach-disk";
    /// Attaches a NIC.
    VmAttachNic = "vm.attach_nic", Operate, VmAttachNicRequest => VmRecord, Change, |r| vec![Target::Vm(r.uuid)], "vm attach-nic";
    /// Detaches a NIC by MAC address.
    VmDetachNic = "vm.detach_nic", Operate, VmDetachNicRequest => VmRecord, Change, |r| vec![Target::Vm(r.uuid)], "vm detach-nic";
    /// Makes a new VM (new name, uuid and MACs) from a halted one, copying its disks or overlaying them (`linked`).
    VmClone = "vm.clone", Admin, VmCloneRequest => VmRecord, Cancellable, |r| vec![Target::NewVm(r.name.clone()), Target::Vm(r.source)], "vm clone";
    /// Marks a halted VM as a template (it can be cloned, not started), or unmarks it.
    VmSetTemplate = "vm.set_template", Admin, VmSetTemplateRequest => VmRecord, Change, |r| vec![Target::Vm(r.uuid)], "vm template";
    /// Moves a VM to another host (live, or a halted VM's definition offline; storage shared or copied), as a cancellable task with progress; the destination is prepared over the bus first.
    VmMigrate = "vm.migrate", Operate, VmMigrateRequest => MigrationRecord, Cancellable, |r| vec![Target::Vm(r.uuid)], "vm migrate";
    /// Host to host, from a migration's source: checks this host can take the VM (enabled, free memory, name and uuid, networks, pools), makes copied storage's volumes, answers with the migration URI.
    VmMigratePrepare = "vm.migrate_prepare", Peer, VmMigratePrepareRequest => VmMigratePrepareResponse, Change, |r| vec![Target::NewVm(r.name.clone())], "vm migrate";
    /// Host to host, from a migration's source: the prepared migration did not happen; removes the volumes the prepare made.
    VmMigrateAbort = "vm.migrate_abort", Peer, VmMigrateAbortRequest => Empty, Change, |r| vec![Target::NewVm(r.name.clone())], "vm migrate";
    /// CPU, memory, block and network counters of a VM.
    VmStatsGet = "vm.stats", Read, VmUuid => VmStats, Read, |_| vec![], "vm stats";

    /// Takes a snapshot of a VM.
    SnapshotCreate = "snapshot.create", Operate, SnapshotCreateRequest => SnapshotRecord, Change, |r| vec![Target::Vm(r.vm)], "snapshot create";
    /// Snapshots of a VM.
    SnapshotList = "snapshot.list", Read, VmUuid => SnapshotListResponse, Read, |_| vec![], "snapshot list";
    /// Reverts a VM to a snapshot, restoring its power state at the time.
    SnapshotRevert = "snapshot.revert", Operate, SnapshotRef => VmRecord, Change, |r| vec![Target::Vm(r.vm)], "snapshot revert";
    /// Deletes a snapshot.
    SnapshotDelete = "snapshot.delete", Admin, SnapshotRef => Empty, Change, |r| vec![Target::Vm(r.vm)], "snapshot delete";

    /// Storage pools of the host.
    PoolList = "pool.list", Read, Empty => PoolListResponse, Read, |_| vec![], "pool list";
    /// One pool by name.
    PoolGet = "pool.get", Read, ObjectName => PoolRecord, Read, |_| vec![], "pool get";
    /// Defines a pool; it starts inactive unless `autostart` is set.
    PoolDefine = "pool.define", Admin, PoolDefineRequest => PoolRecord, Change, |r| vec![Target::Pool(r.spec.name.clone())], "pool create";
    /// Starts (activates) a pool.
    PoolStart = "pool.start", Operate, ObjectName => PoolRecord, Change, |r| vec![Target::Pool(r.name.clone())], "pool start";
    /// Stops (deactivates) a pool.
    PoolStop = "pool.stop", Operate, ObjectName => PoolRecord, Change, |r| vec![Target::Pool(r.name.clone())], "pool stop";
    /// Rescans a pool's volumes.
    PoolRefresh = "pool.refresh", Operate, ObjectName => PoolRecord, Change, |r| vec![Target::Pool(r.name.clone())], "pool refresh";
    /// Removes an inactive pool's definition; its data stays.
    PoolUndefine = "pool.undefine", Admin, ObjectName => Empty, Change, |r| vec![Target::Pool(r.name.clone())], "pool delete";

    /// Volumes of an active pool.
    VolumeList = "volume.list", Read, PoolName => VolumeListResponse, Read, |_| vec![], "volume list";
    /// One volume.
    VolumeGet = "volume.get", Read, VolumeKey => VolumeRecord, Read, |_| vec![], "volume get";
    /// Creates a volume.
    VolumeCreate = "volume.create", Admin, VolumeCreateRequest => VolumeRecord, Change, |r| vec![Target::Volume { pool: r.pool.clone(), name: r.spec.name.clone() }], "volume create";
    /// Deletes a volume and its data.
    VolumeDelete = "volume.delete", Admin, VolumeKey => Empty, Change, |r| vec![Target::Volume { pool: r.pool.clone(), name: r.name.clone() }], "volume delete";
    /// Grows a volume (shrinking is refused).
    VolumeResize = "volume.resize", Admin, VolumeResizeRequest => VolumeRecord, Change, |r| vec![Target::Volume { pool: r.pool.clone(), name: r.name.clone() }], "volume resize";
    /// Copies a volume into a new one in the same pool.
    VolumeClone = "volume.clone", Admin, VolumeCloneRequest => VolumeRecord, Change, |r| vec![Target::Volume { pool: r.pool.clone(), name: r.new_name.clone() }, Target::Volume { pool: r.pool.clone(), name: r.name.clone() }], "volume clone";

    /// Virtual networks of the host.
    NetworkList = "network.list", Read, Empty => NetworkListResponse, Read, |_| vec![], "network list";
    /// One network by name.
    NetworkGet = "network.get", Read, ObjectName => NetworkRecord, Read, |_| vec![], "network get";
    /// Defines a network; it starts inactive unless `autostart` is set.
    NetworkDefine = "network.define", Admin, NetworkDefineRequest => NetworkRecord, Change, |r| vec![Target::Network(r.spec.name.clone())], "network create";
    /// Starts a network.
    NetworkStart = "network.start", Operate, ObjectName => NetworkRecord, Change, |r| vec![Target::Network(r.name.clone())], "network start";
    /// Stops a network.
    NetworkStop = "network.stop", Operate, ObjectName => NetworkRecord, Change, |r| vec![Target::Network(r.name.clone())], "network stop";
    /// Removes an inactive network's definition.
    NetworkUndefine = "network.undefine", Admin, ObjectName => Empty, Change, |r| vec![Target::Network(r.name.clone())], "network delete";

    /// One task by id.
    TaskGet = "task.get", Read, TaskId => TaskRecord, Read, |_| vec![], "task get";
    /// Tasks not yet collected, optionally only those in one status.
    TaskList = "task.list", Read, TaskListRequest => TaskListResponse, Read, |_| vec![], "task list";
    /// Asks a task to stop; it ends `cancelled` if its operation allows it.
    TaskCancel = "task.cancel", Operate, TaskId => TaskRecord, Change, |_| vec![], "task cancel";
}
