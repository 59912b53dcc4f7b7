//! The host record, its capabilities, stats and health.

use std::collections::BTreeMap;

use super::{DiskFormat, Timestamp};

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

wire_struct! {
    /// The host and its hypervisor.
    HostRecord {
        /// The host id used on the bus.
        host_id: String,
        /// The hypervisor's idea of its hostname.
        hostname: String,
        /// The libvirt URI served, e.g. `qemu:///system`.
        uri: String,
        /// Hypervisor driver, e.g. `QEMU` or `Test`.
        hypervisor: String,
        /// Hypervisor version, `major.minor.micro`.
        hypervisor_version: String,
        /// libvirt library version, `major.minor.micro`.
        libvirt_version: String,
        /// CPU architecture, e.g. `x86_64`.
        arch: String,
        /// CPU model.
        cpu_model: String,
        /// Logical CPUs.
        cpus: u32,
        /// CPU frequency, MHz.
        cpu_mhz: u32,
        /// CPU sockets (per NUMA node, as libvirt reports them).
        sockets: u32,
        /// Cores per socket.
        cores: u32,
        /// Threads per core.
        threads: u32,
        /// Physical memory, KiB.
        memory_kib: u64,
        /// Whether it takes new VMs (`host.disable`, `host.enable`).
        #[serde(default)]
        placement: Placement,
        /// How other hosts' libvirt reaches this one's for migrations
        /// (the agent's `migration_uri`); absent: it takes none.
        #[serde(default)]
        migration_uri: Option<String>,
        /// Generation of the host record.
        generation: u64,
    }
}

wire_struct! {
    /// Whether a host takes new VMs. A disabled host keeps running what it
    /// runs and serves every command but refuses to be a migration's
    /// destination; managers' placement skips it (xapi's `host.disable`).
    Placement {
        /// False after `host.disable`, until `host.enable`.
        #[serde(default = "crate::types::host::enabled")]
        enabled: bool,
        /// The operator's reason, when disabled.
        #[serde(default)]
        reason: String,
    }
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            enabled: true,
            reason: String::new(),
        }
    }
}

pub(crate) fn enabled() -> bool {
    true
}

wire_struct! {
    /// What the host can do.
    Capabilities {
        /// Host architecture.
        arch: String,
        /// Guest domain types per architecture, e.g. `x86_64` → `[kvm, qemu]`.
        guest_domain_types: BTreeMap<String, Vec<String>>,
        /// Machine types offered for the host architecture.
        machine_types: Vec<String>,
        /// Host CPU features.
        cpu_features: Vec<String>,
        /// Commands this host supports (protocol names).
        commands: Vec<String>,
        /// Whether live memory/vCPU changes are supported.
        live_resize: bool,
        /// Whether snapshots are supported.
        snapshots: bool,
        /// The formats this host can create volumes in (`volume.create`,
        /// new disks of `vm.define`, `volume.clone`): `qcow2` needs
        /// `qemu-img` on a hypervisor host, `raw` nothing. Empty from an
        /// agent older than this field.
        #[serde(default)]
        volume_formats: Vec<DiskFormat>,
        /// How other hosts' libvirt reaches this one's for migrations (the
        /// agent's `migration_uri`); absent: it takes no migrations.
        #[serde(default)]
        migration_uri: Option<String>,
    }
}

wire_struct! {
    /// A point-in-time view of host load.
    HostStats {
        /// When sampled.
        sampled_at: Timestamp,
        /// Physical memory, KiB.
        memory_total_kib: u64,
        /// Free memory, KiB.
        memory_free_kib: u64,
        /// Cumulative CPU time by kind (`user`, `kernel`, `idle`, `iowait`), nanoseconds.
        cpu_time_ns: BTreeMap<String, u64>,
        /// VMs defined.
        vms_total: u32,
        /// VMs running or paused.
        vms_active: u32,
        /// Memory assigned to active VMs, KiB.
        vm_memory_kib: u64,
        /// vCPUs of active VMs.
        vm_vcpus: u32,
    }
}
