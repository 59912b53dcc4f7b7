//! VM records: power states, operations, devices, stats, snapshots.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::device::*;
use super::object::*;
use super::vm_spec::*;
use super::{wire_enum, Timestamp};

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
