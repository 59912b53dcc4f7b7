//! Records (what an object is, as read back from the host) and specs (what a
//! manager asks to create), in the XenAPI spirit: every record carries the
//! object's generation and the operations it allows now.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;
use crate::validate::{
    check_device_target, check_each, check_ipv4, check_mac, check_name, check_path, check_range,
    check_text, Validate, Validation, ValidationError, MAX_DEVICES, MAX_MEMORY_KIB, MAX_VCPUS,
    MAX_VOLUME_BYTES, MIN_MEMORY_KIB,
};

/// Milliseconds since the Unix epoch, UTC.
pub type Timestamp = u64;

/// Declares a wire enum of unit variants in snake_case with an `Unknown`
/// fallback, `as_str`, `Display` and `ALL`.
macro_rules! wire_enum {
    ($(#[doc = $doc:literal])+ $name:ident { $( $(#[doc = $vdoc:literal])+ $variant:ident = $wire:literal, )+ }) => {
        $(#[doc = $doc])+
        ///
        /// Values this peer does not know decode to `Unknown`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        pub enum $name {
            $( $(#[doc = $vdoc])+ #[serde(rename = $wire)] $variant, )+
            /// A value sent by a newer peer that this one does not know.
            #[serde(other, rename = "unknown")]
            Unknown,
        }

        impl $name {
            /// Every known value.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The value as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                    $name::Unknown => "unknown",
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use wire_enum;

wire_enum! {
    /// The power state of a VM, after XenAPI: halted ⇄ running ⇄ paused, running → suspended → running.
    PowerState {
        /// Defined but not running.
        Halted = "halted",
        /// Running.
        Running = "running",
        /// Running but its vCPUs are stopped; memory stays resident.
        Paused = "paused",
        /// Its memory is saved to disk; `vm.resume` restores it.
        Suspended = "suspended",
        /// The guest crashed; it must be destroyed or reset.
        Crashed = "crashed",
    }
}

wire_enum! {
    /// An operation on a VM, as listed in `allowed_operations` and `current_operations`.
    VmOperation {
        /// `vm.start`.
        Start = "start",
        /// `vm.shutdown`.
        Shutdown = "shutdown",
        /// `vm.destroy`.
        Destroy = "destroy",
        /// `vm.reboot`.
        Reboot = "reboot",
        /// `vm.reset`.
        Reset = "reset",
        /// `vm.pause`.
        Pause = "pause",
        /// `vm.resume`.
        Resume = "resume",
        /// `vm.suspend`.
        Suspend = "suspend",
        /// `vm.undefine`.
        Undefine = "undefine",
        /// `vm.set_memory`.
        SetMemory = "set_memory",
        /// `vm.set_vcpus`.
        SetVcpus = "set_vcpus",
        /// `vm.attach_disk`.
        AttachDisk = "attach_disk",
        /// `vm.detach_disk`.
        DetachDisk = "detach_disk",
        /// `vm.attach_nic`.
        AttachNic = "attach_nic",
        /// `vm.detach_nic`.
        DetachNic = "detach_nic",
        /// `snapshot.create`.
        SnapshotCreate = "snapshot_create",
        /// `snapshot.revert`.
        SnapshotRevert = "snapshot_revert",
        /// `snapshot.delete`.
        SnapshotDelete = "snapshot_delete",
    }
}

wire_enum! {
    /// How a disk's image is stored.
    DiskFormat {
        /// Raw image.
        Raw = "raw",
        /// QEMU copy-on-write v2.
        Qcow2 = "qcow2",
    }
}

wire_enum! {
    /// The guest-visible bus of a disk.
    DiskBus {
        /// Paravirtual virtio-blk.
        Virtio = "virtio",
        /// SCSI.
        Scsi = "scsi",
        /// SATA.
        Sata = "sata",
        /// IDE.
        Ide = "ide",
    }
}

wire_enum! {
    /// What a disk is to the guest.
    DiskDevice {
        /// A hard disk.
        Disk = "disk",
        /// A CD-ROM drive (read-only; bus `sata`, `ide` or `scsi`).
        Cdrom = "cdrom",
    }
}

// `wire_enum!` takes no per-variant attributes, so no `#[default]`.
#[allow(clippy::derivable_impls)]
impl Default for DiskDevice {
    fn default() -> Self {
        DiskDevice::Disk
    }
}

wire_enum! {
    /// A device class the firmware boots from, in [`BootSpec::order`].
    BootDevice {
        /// The first hard disk (disks in spec order).
        Disk = "disk",
        /// The first CD-ROM drive.
        Cdrom = "cdrom",
        /// The network (PXE through the first NIC).
        Network = "network",
    }
}

wire_enum! {
    /// The CPU a guest sees.
    CpuMode {
        /// A model like the host's, with its features (KVM's default: guests
        /// can migrate between similar hosts).
        HostModel = "host_model",
        /// Exactly the host's CPU (KVM only; fastest, not migratable).
        HostPassthrough = "host_passthrough",
        /// Every feature the hypervisor can offer (TCG's default: QEMU's
        /// `max` CPU, new enough for current distributions).
        Maximum = "maximum",
        /// The hypervisor's own default model (QEMU's `qemu64`, too old for
        /// some current distributions).
        HypervisorDefault = "hypervisor_default",
    }
}

wire_enum! {
    /// The guest-visible NIC model.
    NicModel {
        /// Paravirtual virtio-net.
        Virtio = "virtio",
        /// Intel e1000.
        E1000 = "e1000",
        /// Realtek rtl8139.
        Rtl8139 = "rtl8139",
    }
}

wire_enum! {
    /// The state of a storage pool.
    PoolState {
        /// Defined but not started.
        Inactive = "inactive",
        /// Being built.
        Building = "building",
        /// Started and usable.
        Running = "running",
        /// Started but degraded.
        Degraded = "degraded",
        /// Started but not accessible.
        Inaccessible = "inaccessible",
    }
}

wire_enum! {
    /// The backend of a storage pool.
    PoolKind {
        /// A directory on the host.
        Dir = "dir",
        /// A mounted block device.
        Fs = "fs",
        /// A network file system.
        Netfs = "netfs",
        /// An LVM volume group.
        Logical = "logical",
        /// A partitioned disk.
        Disk = "disk",
        /// An iSCSI target.
        Iscsi = "iscsi",
        /// A Ceph RBD pool.
        Rbd = "rbd",
    }
}

wire_enum! {
    /// How a virtual network reaches the outside.
    ForwardMode {
        /// No forwarding: guests reach each other and the host only.
        Isolated = "isolated",
        /// NAT through the host.
        Nat = "nat",
        /// Routed without NAT.
        Route = "route",
        /// Attached to an existing host bridge.
        Bridge = "bridge",
        /// Open forwarding, no firewall rules.
        Open = "open",
    }
}

wire_enum! {
    /// The lifecycle of a task, after XenAPI.
    TaskStatus {
        /// Accepted, not started yet.
        Pending = "pending",
        /// Running; `progress` moves.
        Running = "running",
        /// Finished; `result` holds the outcome.
        Success = "success",
        /// Finished with `error`.
        Failure = "failure",
        /// Cancellation requested, not yet effective.
        Cancelling = "cancelling",
        /// Cancelled before it finished.
        Cancelled = "cancelled",
    }
}

impl TaskStatus {
    /// Whether the task has finished (success, failure or cancelled).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Success | TaskStatus::Failure | TaskStatus::Cancelled
        )
    }
}

wire_enum! {
    /// The health of an agent and its hypervisor connection.
    HealthStatus {
        /// Everything works.
        Ok = "ok",
        /// Serving, with a problem described in the message.
        Degraded = "degraded",
        /// The hypervisor is unreachable; commands get `HOST_UNAVAILABLE`.
        Down = "down",
    }
}

/// A disk as the VM sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DiskRecord {
    /// Guest device name, such as `vda`.
    pub target: String,
    /// Bus the guest sees.
    pub bus: DiskBus,
    /// Image format.
    pub format: DiskFormat,
    /// Host path of the image, if file- or block-backed.
    pub source_path: Option<String>,
    /// The pool and volume backing the disk, when it comes from a pool.
    pub volume: Option<VolumeRef>,
    /// Read-only disk.
    pub read_only: bool,
    /// A disk or a CD-ROM drive.
    #[serde(default)]
    pub device: DiskDevice,
}

/// A NIC as the VM sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct NicRecord {
    /// MAC address, `52:54:00:..`.
    pub mac: String,
    /// The virtual network it is attached to, if any.
    pub network: Option<String>,
    /// The host bridge it is attached to, if any.
    pub bridge: Option<String>,
    /// Device model.
    pub model: NicModel,
}

/// A reference to a volume in a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct VolumeRef {
    /// Pool name.
    pub pool: String,
    /// Volume name inside the pool.
    pub volume: String,
}

impl Validate for VolumeRef {
    fn validate(&self) -> Validation {
        check_name("pool", &self.pool)?;
        check_name("volume", &self.volume)
    }
}

/// An operation in progress on an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct CurrentOperation {
    /// The command id (or task id) running it.
    pub id: Uuid,
    /// The operation.
    pub operation: VmOperation,
}

/// A VM: everything a manager needs to show and decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct VmRecord {
    /// Stable identity.
    pub uuid: Uuid,
    /// Unique name on the host.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Current power state.
    pub power_state: PowerState,
    /// Memory currently assigned, KiB.
    pub memory_kib: u64,
    /// Memory ceiling, KiB.
    pub max_memory_kib: u64,
    /// vCPUs currently online.
    pub vcpus: u32,
    /// vCPU ceiling.
    pub max_vcpus: u32,
    /// Disks in guest order.
    #[serde(default)]
    pub disks: Vec<DiskRecord>,
    /// NICs in guest order.
    #[serde(default)]
    pub nics: Vec<NicRecord>,
    /// Started when the host boots.
    pub autostart: bool,
    /// Defined persistently (false for transient domains).
    pub persistent: bool,
    /// Has a managed-save image (suspended VMs do).
    #[serde(default)]
    pub has_saved_state: bool,
    /// Name of the current snapshot, if any.
    #[serde(default)]
    pub current_snapshot: Option<String>,
    /// Per-object generation: grows by at least one on every change seen.
    pub generation: u64,
    /// Operations the VM allows in its current state.
    #[serde(default)]
    pub allowed_operations: Vec<VmOperation>,
    /// Operations in progress.
    #[serde(default)]
    pub current_operations: Vec<CurrentOperation>,
    /// How the guest boots.
    #[serde(default)]
    pub boot: BootSpec,
    /// The CPU the guest sees (`None`: not said in its definition).
    #[serde(default)]
    pub cpu_mode: Option<CpuMode>,
    /// The hypervisor domain type, e.g. `kvm`, `qemu` (TCG) or `test`.
    #[serde(default)]
    pub domain_type: Option<String>,
    /// The serial console, when the VM has one.
    #[serde(default)]
    pub console: Option<ConsoleRecord>,
}

/// Where a VM's serial console can be reached on its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ConsoleRecord {
    /// The console's device in the guest, e.g. `ttyS0` (serial port 0).
    pub guest_device: String,
    /// The host pseudo-terminal connected to it while the VM runs (what
    /// `virsh console` opens).
    #[serde(default)]
    pub pty: Option<String>,
    /// A host file that receives everything the guest writes to it (kept
    /// across restarts of the VM).
    #[serde(default)]
    pub log_path: Option<String>,
}

/// The host and its hypervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct HostRecord {
    /// The host id used on the bus.
    pub host_id: String,
    /// The hypervisor's idea of its hostname.
    pub hostname: String,
    /// The libvirt URI served, e.g. `qemu:///system`.
    pub uri: String,
    /// Hypervisor driver, e.g. `QEMU` or `Test`.
    pub hypervisor: String,
    /// Hypervisor version, `major.minor.micro`.
    pub hypervisor_version: String,
    /// libvirt library version, `major.minor.micro`.
    pub libvirt_version: String,
    /// CPU architecture, e.g. `x86_64`.
    pub arch: String,
    /// CPU model.
    pub cpu_model: String,
    /// Logical CPUs.
    pub cpus: u32,
    /// CPU frequency, MHz.
    pub cpu_mhz: u32,
    /// CPU sockets (per NUMA node, as libvirt reports them).
    pub sockets: u32,
    /// Cores per socket.
    pub cores: u32,
    /// Threads per core.
    pub threads: u32,
    /// Physical memory, KiB.
    pub memory_kib: u64,
    /// Generation of the host record.
    pub generation: u64,
}

/// What the host can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Capabilities {
    /// Host architecture.
    pub arch: String,
    /// Guest domain types per architecture, e.g. `x86_64` → `[kvm, qemu]`.
    pub guest_domain_types: BTreeMap<String, Vec<String>>,
    /// Machine types offered for the host architecture.
    pub machine_types: Vec<String>,
    /// Host CPU features.
    pub cpu_features: Vec<String>,
    /// Commands this host supports (protocol names).
    pub commands: Vec<String>,
    /// Whether live memory/vCPU changes are supported.
    pub live_resize: bool,
    /// Whether snapshots are supported.
    pub snapshots: bool,
}

/// A point-in-time view of host load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct HostStats {
    /// When sampled.
    pub sampled_at: Timestamp,
    /// Physical memory, KiB.
    pub memory_total_kib: u64,
    /// Free memory, KiB.
    pub memory_free_kib: u64,
    /// Cumulative CPU time by kind (`user`, `kernel`, `idle`, `iowait`), nanoseconds.
    pub cpu_time_ns: BTreeMap<String, u64>,
    /// VMs defined.
    pub vms_total: u32,
    /// VMs running or paused.
    pub vms_active: u32,
    /// Memory assigned to active VMs, KiB.
    pub vm_memory_kib: u64,
    /// vCPUs of active VMs.
    pub vm_vcpus: u32,
}

/// Block device counters of one VM disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct BlockStats {
    /// Guest device name.
    pub target: String,
    /// Read requests.
    pub read_reqs: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Write requests.
    pub write_reqs: u64,
    /// Bytes written.
    pub write_bytes: u64,
}

/// Interface counters of one VM NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct NetStats {
    /// MAC address of the NIC.
    pub mac: String,
    /// Host-side interface name, if known.
    pub interface: Option<String>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

/// Counters of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct VmStats {
    /// The VM.
    pub uuid: Uuid,
    /// When sampled.
    pub sampled_at: Timestamp,
    /// Its power state at sampling.
    pub power_state: PowerState,
    /// Cumulative CPU time, nanoseconds.
    pub cpu_time_ns: u64,
    /// vCPUs online.
    pub vcpus: u32,
    /// Memory assigned, KiB.
    pub memory_kib: u64,
    /// Resident memory on the host, KiB, when the driver reports it.
    pub memory_rss_kib: Option<u64>,
    /// Per-disk counters.
    pub block: Vec<BlockStats>,
    /// Per-NIC counters.
    pub net: Vec<NetStats>,
}

/// A VM snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SnapshotRecord {
    /// The VM it belongs to.
    pub vm: Uuid,
    /// Name, unique per VM.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// When taken.
    pub created_at: Timestamp,
    /// The VM's power state when taken; reverting restores it.
    pub vm_power_state: PowerState,
    /// Parent snapshot, if any.
    pub parent: Option<String>,
    /// Whether this is the VM's current snapshot.
    pub current: bool,
    /// Generation of the snapshot record.
    pub generation: u64,
}

/// A storage pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PoolRecord {
    /// Stable identity.
    pub uuid: Uuid,
    /// Unique name on the host; pools are addressed by name.
    pub name: String,
    /// Backend.
    pub kind: PoolKind,
    /// State.
    pub state: PoolState,
    /// Target path (directory or device) on the host.
    pub target_path: Option<String>,
    /// Total bytes.
    pub capacity_bytes: u64,
    /// Allocated bytes.
    pub allocation_bytes: u64,
    /// Free bytes.
    pub available_bytes: u64,
    /// Started when the host boots.
    pub autostart: bool,
    /// Defined persistently.
    pub persistent: bool,
    /// Volumes in the pool (0 when inactive).
    pub volumes: u32,
    /// Generation of the record.
    pub generation: u64,
}

/// A storage volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct VolumeRecord {
    /// The pool holding it.
    pub pool: String,
    /// Name, unique in its pool.
    pub name: String,
    /// libvirt's unique key for the volume.
    pub key: String,
    /// Host path.
    pub path: String,
    /// Image format.
    pub format: DiskFormat,
    /// Virtual size, bytes.
    pub capacity_bytes: u64,
    /// Bytes allocated on the host.
    pub allocation_bytes: u64,
    /// Generation of the record.
    pub generation: u64,
}

/// A virtual network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct NetworkRecord {
    /// Stable identity.
    pub uuid: Uuid,
    /// Unique name on the host; networks are addressed by name.
    pub name: String,
    /// Started.
    pub active: bool,
    /// Started when the host boots.
    pub autostart: bool,
    /// Defined persistently.
    pub persistent: bool,
    /// Host bridge device.
    pub bridge: Option<String>,
    /// Forwarding mode.
    pub forward: ForwardMode,
    /// Host-side address and DHCP range.
    pub ip: Option<IpSpec>,
    /// Generation of the record.
    pub generation: u64,
}

/// What a task is doing it to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ObjectRef {
    /// Object class: `vm`, `pool`, `volume`, `network`, `snapshot`, `host`.
    pub class: ObjectClass,
    /// Its id: a uuid for VMs, a name for pools and networks, `pool/volume`, `vm-uuid/snapshot`.
    pub id: String,
}

wire_enum! {
    /// Classes of objects, as used in events, tasks and routing keys.
    ObjectClass {
        /// The host itself.
        Host = "host",
        /// A VM.
        Vm = "vm",
        /// A VM snapshot.
        Snapshot = "snapshot",
        /// A storage pool.
        Pool = "pool",
        /// A storage volume.
        Volume = "volume",
        /// A virtual network.
        Network = "network",
        /// A task.
        Task = "task",
        /// The agent (online/offline announcements).
        Agent = "agent",
    }
}

/// A long operation that runs in the background.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct TaskRecord {
    /// Task id.
    pub id: Uuid,
    /// The command that started it, e.g. `vm.start`.
    pub command: String,
    /// The object it works on.
    pub object: Option<ObjectRef>,
    /// Status.
    pub status: TaskStatus,
    /// Progress, 0 to 100.
    pub progress: u8,
    /// Created.
    pub created_at: Timestamp,
    /// Finished, if it has.
    pub finished_at: Option<Timestamp>,
    /// Whether `task.cancel` can interrupt it now.
    pub cancellable: bool,
    /// The command's result on success.
    pub result: Option<Record>,
    /// The command's error on failure or cancellation.
    pub error: Option<Error>,
    /// Generation of the record.
    pub generation: u64,
}

/// Any record, tagged by class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Record {
    /// The host record.
    Host(HostRecord),
    /// A VM record.
    Vm(VmRecord),
    /// A snapshot record.
    Snapshot(SnapshotRecord),
    /// A pool record.
    Pool(PoolRecord),
    /// A volume record.
    Volume(VolumeRecord),
    /// A network record.
    Network(NetworkRecord),
    /// A task record.
    Task(Box<TaskRecord>),
    /// No record (a command whose result is empty, or an object that is gone).
    None,
}

impl Record {
    /// The class of the record.
    pub fn class(&self) -> Option<ObjectClass> {
        Some(match self {
            Record::Host(_) => ObjectClass::Host,
            Record::Vm(_) => ObjectClass::Vm,
            Record::Snapshot(_) => ObjectClass::Snapshot,
            Record::Pool(_) => ObjectClass::Pool,
            Record::Volume(_) => ObjectClass::Volume,
            Record::Network(_) => ObjectClass::Network,
            Record::Task(_) => ObjectClass::Task,
            Record::None => return None,
        })
    }
}

/// Every record of a host with its generation: what `host.snapshot` returns
/// and what `agent.online` carries, so a subscriber can resync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Inventory {
    /// When taken.
    pub taken_at: Timestamp,
    /// The serving agent's epoch (absent when not served by an agent).
    #[serde(default)]
    pub epoch: Option<Uuid>,
    /// The agent's last event sequence number when the inventory was taken:
    /// events of this epoch with a higher `seq` may be newer than it; for
    /// older ones, compare the object's generation.
    #[serde(default)]
    pub seq: u64,
    /// The host.
    pub host: HostRecord,
    /// Every VM.
    pub vms: Vec<VmRecord>,
    /// Every snapshot of every VM.
    pub snapshots: Vec<SnapshotRecord>,
    /// Every pool.
    pub pools: Vec<PoolRecord>,
    /// Every volume of every active pool.
    pub volumes: Vec<VolumeRecord>,
    /// Every network.
    pub networks: Vec<NetworkRecord>,
    /// Tasks not yet collected.
    pub tasks: Vec<TaskRecord>,
}

// ---------------------------------------------------------------- specs

/// Where a new disk's storage comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum DiskSource {
    /// An existing volume in a pool.
    Volume(VolumeRef),
    /// A new volume created in `pool` with this size (named after the VM and target).
    NewVolume {
        /// Pool to create it in.
        pool: String,
        /// Virtual size, bytes.
        capacity_bytes: u64,
    },
    /// An existing file or block device on the host.
    Path(String),
}

/// A disk to give a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DiskSpec {
    /// Guest device name, such as `vda`.
    pub target: String,
    /// Storage.
    pub source: DiskSource,
    /// Bus the guest sees (default virtio).
    #[serde(default = "default_bus")]
    pub bus: DiskBus,
    /// Image format. Absent: the volume's own format for a `volume` source
    /// (or a path that is a volume of a pool), qcow2 for a new volume. A
    /// format that contradicts the volume's is refused (`INVALID_ARGUMENT`);
    /// a path outside every pool needs it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// Read-only (always, for a CD-ROM).
    #[serde(default)]
    pub read_only: bool,
    /// A disk (default) or a CD-ROM drive.
    #[serde(default)]
    pub device: DiskDevice,
}

fn default_bus() -> DiskBus {
    DiskBus::Virtio
}
fn default_format() -> DiskFormat {
    DiskFormat::Qcow2
}

impl Validate for DiskSpec {
    fn validate(&self) -> Validation {
        check_device_target("target", &self.target)?;
        match &self.source {
            DiskSource::Volume(v) => v.validate().map_err(|e| e.within("source.volume")),
            DiskSource::NewVolume {
                pool,
                capacity_bytes,
            } => {
                check_name("source.new_volume.pool", pool)?;
                check_range(
                    "source.new_volume.capacity_bytes",
                    *capacity_bytes,
                    1 << 20,
                    MAX_VOLUME_BYTES,
                )
            }
            DiskSource::Path(p) => check_path("source.path", p),
        }?;
        if self.bus == DiskBus::Unknown {
            return Err(ValidationError::new("bus", "unknown bus"));
        }
        if self.format == Some(DiskFormat::Unknown) {
            return Err(ValidationError::new("format", "unknown format"));
        }
        match self.device {
            DiskDevice::Disk => {}
            DiskDevice::Cdrom => {
                if self.bus == DiskBus::Virtio {
                    return Err(ValidationError::new(
                        "bus",
                        "a cdrom needs bus sata, ide or scsi",
                    ));
                }
                if matches!(self.source, DiskSource::NewVolume { .. }) {
                    return Err(ValidationError::new(
                        "source",
                        "a cdrom reads an existing image, not a new volume",
                    ));
                }
            }
            DiskDevice::Unknown => return Err(ValidationError::new("device", "unknown device")),
        }
        Ok(())
    }
}

/// How a VM boots: from its devices in firmware order, or straight into a
/// kernel (XenAPI's HVM boot order and PV kernel/ramdisk/args).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct BootSpec {
    /// Devices the firmware tries, in order (empty: `[disk]`). Ignored by
    /// the firmware when `kernel` is set.
    #[serde(default)]
    pub order: Vec<BootDevice>,
    /// A kernel image on the host to boot directly.
    #[serde(default)]
    pub kernel: Option<String>,
    /// An initrd on the host for `kernel`.
    #[serde(default)]
    pub initrd: Option<String>,
    /// The kernel command line for `kernel`.
    #[serde(default)]
    pub cmdline: Option<String>,
}

impl Validate for BootSpec {
    fn validate(&self) -> Validation {
        if self.order.len() > BootDevice::ALL.len() {
            return Err(ValidationError::new(
                "order",
                format_args!("must have at most {} entries", BootDevice::ALL.len()),
            ));
        }
        for (i, d) in self.order.iter().enumerate() {
            if *d == BootDevice::Unknown {
                return Err(ValidationError::new(
                    format!("order[{i}]"),
                    "unknown boot device",
                ));
            }
            if self.order[..i].contains(d) {
                return Err(ValidationError::new(
                    format!("order[{i}]"),
                    format_args!("{d} is listed twice"),
                ));
            }
        }
        if let Some(k) = &self.kernel {
            check_path("kernel", k)?;
        }
        if let Some(i) = &self.initrd {
            check_path("initrd", i)?;
        }
        if let Some(c) = &self.cmdline {
            check_text("cmdline", c)?;
            if c.contains('\n') {
                return Err(ValidationError::new("cmdline", "must be one line"));
            }
        }
        if self.kernel.is_none() && (self.initrd.is_some() || self.cmdline.is_some()) {
            return Err(ValidationError::new(
                "kernel",
                "is required when initrd or cmdline is given",
            ));
        }
        Ok(())
    }
}

/// A NIC to give a VM. Exactly one of `network` and `bridge` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct NicSpec {
    /// Virtual network to attach to.
    #[serde(default)]
    pub network: Option<String>,
    /// Host bridge to attach to.
    #[serde(default)]
    pub bridge: Option<String>,
    /// MAC address; generated when absent.
    #[serde(default)]
    pub mac: Option<String>,
    /// Device model (default virtio).
    #[serde(default = "default_model")]
    pub model: NicModel,
}

fn default_model() -> NicModel {
    NicModel::Virtio
}

impl Validate for NicSpec {
    fn validate(&self) -> Validation {
        match (&self.network, &self.bridge) {
            (Some(n), None) => check_name("network", n)?,
            (None, Some(b)) => {
                check_name("bridge", b)?;
                if b.len() > 15 {
                    return Err(ValidationError::new("bridge", "must be at most 15 bytes"));
                }
            }
            _ => {
                return Err(ValidationError::new(
                    "network",
                    "exactly one of `network` and `bridge` must be set",
                ))
            }
        }
        if let Some(mac) = &self.mac {
            check_mac("mac", mac)?;
        }
        if self.model == NicModel::Unknown {
            return Err(ValidationError::new("model", "unknown model"));
        }
        Ok(())
    }
}

/// A VM to define.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct VmSpec {
    /// Unique name on the host.
    pub name: String,
    /// Identity; generated when absent.
    #[serde(default)]
    pub uuid: Option<Uuid>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Memory at start, KiB.
    pub memory_kib: u64,
    /// Memory ceiling, KiB (default: `memory_kib`).
    #[serde(default)]
    pub max_memory_kib: Option<u64>,
    /// vCPUs at start.
    pub vcpus: u32,
    /// vCPU ceiling (default: `vcpus`).
    #[serde(default)]
    pub max_vcpus: Option<u32>,
    /// Guest architecture (default: the host's).
    #[serde(default)]
    pub arch: Option<String>,
    /// Disks, in boot order.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// NICs.
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    /// Start when the host boots.
    #[serde(default)]
    pub autostart: bool,
    /// How it boots (default: from the first disk).
    #[serde(default)]
    pub boot: BootSpec,
    /// The CPU the guest sees. Absent: the host's choice, `host_model` on
    /// KVM and `maximum` under TCG.
    #[serde(default)]
    pub cpu_mode: Option<CpuMode>,
}

impl Validate for VmSpec {
    fn validate(&self) -> Validation {
        check_name("name", &self.name)?;
        check_text("description", &self.description)?;
        check_range(
            "memory_kib",
            self.memory_kib,
            MIN_MEMORY_KIB,
            MAX_MEMORY_KIB,
        )?;
        if let Some(max) = self.max_memory_kib {
            check_range("max_memory_kib", max, self.memory_kib, MAX_MEMORY_KIB)?;
        }
        check_range("vcpus", self.vcpus, 1, MAX_VCPUS)?;
        if let Some(max) = self.max_vcpus {
            check_range("max_vcpus", max, self.vcpus, MAX_VCPUS)?;
        }
        if let Some(arch) = &self.arch {
            check_name("arch", arch)?;
        }
        check_each("disks", &self.disks, MAX_DEVICES)?;
        check_each("nics", &self.nics, MAX_DEVICES)?;
        self.boot.validate().map_err(|e| e.within("boot"))?;
        if self.cpu_mode == Some(CpuMode::Unknown) {
            return Err(ValidationError::new("cpu_mode", "unknown cpu mode"));
        }
        for (i, d) in self.boot.order.iter().enumerate() {
            let has = match d {
                BootDevice::Disk => self.disks.iter().any(|x| x.device == DiskDevice::Disk),
                BootDevice::Cdrom => self.disks.iter().any(|x| x.device == DiskDevice::Cdrom),
                BootDevice::Network => !self.nics.is_empty(),
                BootDevice::Unknown => false,
            };
            if !has && self.boot.kernel.is_none() {
                return Err(ValidationError::new(
                    format!("boot.order[{i}]"),
                    format_args!("the vm has no {d} device to boot from"),
                ));
            }
        }
        let mut targets: Vec<&str> = self.disks.iter().map(|d| d.target.as_str()).collect();
        targets.sort_unstable();
        if let Some(w) = targets.windows(2).find(|w| w[0] == w[1]) {
            return Err(ValidationError::new(
                "disks",
                format_args!("target {} is used twice", w[0]),
            ));
        }
        Ok(())
    }
}

/// A storage pool to define.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PoolSpec {
    /// Unique name.
    pub name: String,
    /// Backend (only `dir` is accepted by every driver).
    pub kind: PoolKind,
    /// Target directory or device path on the host.
    pub target_path: String,
    /// Source device or host for non-directory backends.
    #[serde(default)]
    pub source: Option<String>,
    /// Start when the host boots.
    #[serde(default)]
    pub autostart: bool,
}

impl Validate for PoolSpec {
    fn validate(&self) -> Validation {
        check_name("name", &self.name)?;
        if self.kind == PoolKind::Unknown {
            return Err(ValidationError::new("kind", "unknown pool kind"));
        }
        check_path("target_path", &self.target_path)?;
        if let Some(s) = &self.source {
            check_text("source", s)?;
        }
        Ok(())
    }
}

/// A volume to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct VolumeSpec {
    /// Name, unique in its pool.
    pub name: String,
    /// Virtual size, bytes.
    pub capacity_bytes: u64,
    /// Bytes to preallocate (default 0: sparse).
    #[serde(default)]
    pub allocation_bytes: u64,
    /// Format (default qcow2).
    #[serde(default = "default_format")]
    pub format: DiskFormat,
}

impl Validate for VolumeSpec {
    fn validate(&self) -> Validation {
        check_name("name", &self.name)?;
        check_range("capacity_bytes", self.capacity_bytes, 1, MAX_VOLUME_BYTES)?;
        check_range(
            "allocation_bytes",
            self.allocation_bytes,
            0,
            self.capacity_bytes,
        )?;
        if self.format == DiskFormat::Unknown {
            return Err(ValidationError::new("format", "unknown format"));
        }
        Ok(())
    }
}

/// The host side of a virtual network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct IpSpec {
    /// Host address on the network, IPv4.
    pub address: String,
    /// Prefix length, 1 to 30.
    pub prefix: u8,
    /// First DHCP address, if DHCP is on.
    #[serde(default)]
    pub dhcp_start: Option<String>,
    /// Last DHCP address, if DHCP is on.
    #[serde(default)]
    pub dhcp_end: Option<String>,
}

impl Validate for IpSpec {
    fn validate(&self) -> Validation {
        check_ipv4("address", &self.address)?;
        check_range("prefix", self.prefix, 1, 30)?;
        match (&self.dhcp_start, &self.dhcp_end) {
            (Some(s), Some(e)) => {
                check_ipv4("dhcp_start", s)?;
                check_ipv4("dhcp_end", e)
            }
            (None, None) => Ok(()),
            _ => Err(ValidationError::new(
                "dhcp_start",
                "dhcp_start and dhcp_end must be given together",
            )),
        }
    }
}

/// A virtual network to define.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct NetworkSpec {
    /// Unique name.
    pub name: String,
    /// Host bridge device name (generated when absent, required for `bridge` forwarding).
    #[serde(default)]
    pub bridge: Option<String>,
    /// Forwarding mode.
    pub forward: ForwardMode,
    /// Host address and DHCP range.
    #[serde(default)]
    pub ip: Option<IpSpec>,
    /// Start when the host boots.
    #[serde(default)]
    pub autostart: bool,
}

impl Validate for NetworkSpec {
    fn validate(&self) -> Validation {
        check_name("name", &self.name)?;
        if let Some(b) = &self.bridge {
            check_name("bridge", b)?;
            if b.len() > 15 {
                return Err(ValidationError::new("bridge", "must be at most 15 bytes"));
            }
        }
        if self.forward == ForwardMode::Unknown {
            return Err(ValidationError::new("forward", "unknown forward mode"));
        }
        if self.forward == ForwardMode::Bridge && self.bridge.is_none() {
            return Err(ValidationError::new(
                "bridge",
                "is required when forward is `bridge`",
            ));
        }
        if let Some(ip) = &self.ip {
            ip.validate().map_err(|e| e.within("ip"))?;
        }
        Ok(())
    }
}
