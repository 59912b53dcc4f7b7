//! The host record, its capabilities, stats and health.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{wire_enum, Timestamp};

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
