//! Request and response types of the VM commands.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::types::*;
use crate::validate::*;

wire_struct! {
    /// Request of `vm.list`.
    VmListRequest {
        /// Only VMs in this power state.
        #[serde(default)]
        power_state: Option<PowerState>,
    }
}
impl Validate for VmListRequest {
    /// A filter this agent does not know (or `unknown`, which nothing is ever
    /// in) is refused rather than answered with an empty list.
    fn validate(&self) -> Validation {
        self.power_state.map_or(Ok(()), |v| v.known("power_state"))
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
