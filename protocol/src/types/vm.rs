//! VM records: power states, operations, devices, stats, snapshots.

use uuid::Uuid;

use super::device::*;
use super::object::*;
use super::vm_spec::*;
use super::Timestamp;

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
        /// `vm.clone` (of this VM, the source).
        Clone = "clone",
        /// `vm.set_template`.
        SetTemplate = "set_template",
        /// `vm.migrate` (live of a running or paused VM, offline of a halted one).
        Migrate = "migrate",
    }
}

wire_struct! {
    /// A disk as the VM sees it.
    DiskRecord {
        /// Guest device name, such as `vda`.
        target: String,
        /// Bus the guest sees.
        bus: DiskBus,
        /// Image format.
        format: DiskFormat,
        /// Host path of the image, if file- or block-backed.
        source_path: Option<String>,
        /// The pool and volume backing the disk, when it comes from a pool.
        volume: Option<VolumeRef>,
        /// Read-only disk.
        read_only: bool,
        /// A disk or a CD-ROM drive.
        #[serde(default)]
        device: DiskDevice,
    }
}

wire_struct! {
    /// A NIC as the VM sees it.
    NicRecord {
        /// MAC address, `52:54:00:..`.
        mac: String,
        /// The virtual network it is attached to, if any.
        network: Option<String>,
        /// The host bridge it is attached to, if any.
        bridge: Option<String>,
        /// Device model.
        model: NicModel,
    }
}

wire_struct! {
    /// An operation in progress on an object.
    CurrentOperation {
        /// The command id (or task id) running it.
        id: Uuid,
        /// The operation.
        operation: VmOperation,
    }
}

wire_struct! {
    /// A VM: everything a manager needs to show and decide.
    VmRecord {
        /// Stable identity.
        uuid: Uuid,
        /// Unique name on the host.
        name: String,
        /// Free text.
        #[serde(default)]
        description: String,
        /// Current power state.
        power_state: PowerState,
        /// Memory currently assigned, KiB.
        memory_kib: u64,
        /// Memory ceiling, KiB.
        max_memory_kib: u64,
        /// vCPUs currently online.
        vcpus: u32,
        /// vCPU ceiling.
        max_vcpus: u32,
        /// Disks in guest order.
        #[serde(default)]
        disks: Vec<DiskRecord>,
        /// NICs in guest order.
        #[serde(default)]
        nics: Vec<NicRecord>,
        /// Started when the host boots.
        autostart: bool,
        /// Defined persistently (false for transient domains).
        persistent: bool,
        /// Has a managed-save image (suspended VMs do).
        #[serde(default)]
        has_saved_state: bool,
        /// Name of the current snapshot, if any.
        #[serde(default)]
        current_snapshot: Option<String>,
        /// Per-object generation: grows by at least one on every change seen.
        generation: u64,
        /// Operations the VM allows in its current state.
        #[serde(default)]
        allowed_operations: Vec<VmOperation>,
        /// Operations in progress.
        #[serde(default)]
        current_operations: Vec<CurrentOperation>,
        /// How the guest boots.
        #[serde(default)]
        boot: BootSpec,
        /// The CPU the guest sees (`None`: not said in its definition).
        #[serde(default)]
        cpu_mode: Option<CpuMode>,
        /// The hypervisor domain type, e.g. `kvm`, `qemu` (TCG) or `test`.
        #[serde(default)]
        domain_type: Option<String>,
        /// The serial console, when the VM has one.
        #[serde(default)]
        console: Option<ConsoleRecord>,
        /// A template (`vm.set_template`): it is cloned, never started.
        #[serde(default)]
        template: bool,
    }
}

wire_struct! {
    /// Where a VM's serial console can be reached on its host.
    ConsoleRecord {
        /// The console's device in the guest, e.g. `ttyS0` (serial port 0).
        guest_device: String,
        /// The host pseudo-terminal connected to it while the VM runs (what
        /// `virsh console` opens).
        #[serde(default)]
        pty: Option<String>,
        /// A host file that receives everything the guest writes to it (kept
        /// across restarts of the VM).
        #[serde(default)]
        log_path: Option<String>,
    }
}

wire_struct! {
    /// Block device counters of one VM disk.
    BlockStats {
        /// Guest device name.
        target: String,
        /// Read requests.
        read_reqs: u64,
        /// Bytes read.
        read_bytes: u64,
        /// Write requests.
        write_reqs: u64,
        /// Bytes written.
        write_bytes: u64,
    }
}

wire_struct! {
    /// Interface counters of one VM NIC.
    NetStats {
        /// MAC address of the NIC.
        mac: String,
        /// Host-side interface name, if known.
        interface: Option<String>,
        /// Bytes received.
        rx_bytes: u64,
        /// Packets received.
        rx_packets: u64,
        /// Bytes sent.
        tx_bytes: u64,
        /// Packets sent.
        tx_packets: u64,
    }
}

wire_struct! {
    /// Counters of one VM.
    VmStats {
        /// The VM.
        uuid: Uuid,
        /// When sampled.
        sampled_at: Timestamp,
        /// Its power state at sampling.
        power_state: PowerState,
        /// Cumulative CPU time, nanoseconds.
        cpu_time_ns: u64,
        /// vCPUs online.
        vcpus: u32,
        /// Memory assigned, KiB.
        memory_kib: u64,
        /// Resident memory on the host, KiB, when the driver reports it.
        memory_rss_kib: Option<u64>,
        /// Per-disk counters.
        block: Vec<BlockStats>,
        /// Per-NIC counters.
        net: Vec<NetStats>,
    }
}

wire_struct! {
    /// A VM snapshot.
    SnapshotRecord {
        /// The VM it belongs to.
        vm: Uuid,
        /// Name, unique per VM.
        name: String,
        /// Free text.
        #[serde(default)]
        description: String,
        /// When taken.
        created_at: Timestamp,
        /// The VM's power state when taken; reverting restores it.
        vm_power_state: PowerState,
        /// Parent snapshot, if any.
        parent: Option<String>,
        /// Whether this is the VM's current snapshot.
        current: bool,
        /// Generation of the snapshot record.
        generation: u64,
    }
}
