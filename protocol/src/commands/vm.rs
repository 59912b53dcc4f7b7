//! Request and response types of the VM commands.

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
    // A filter this agent does not know (or `unknown`, which nothing is ever
    // in) is refused rather than answered with an empty list.
    validate(this) { this.power_state.map_or(Ok(()), |v| v.known("power_state")) }
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
    validate(this) { Ok(()) }
}

wire_struct! {
    /// Request of `vm.define`.
    VmDefineRequest {
        /// What to define.
        spec: VmSpec,
    }
    validate(this) { this.spec.validate().map_err(|e| e.within("spec")) }
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
    validate(this) { Ok(()) }
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
    validate(this) { Ok(()) }
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
    validate(this) { check_range("timeout_s", this.timeout_s, 0, MAX_SHUTDOWN_TIMEOUT_S) }
}
fn default_shutdown_timeout() -> u32 {
    120
}

wire_struct! {
    /// Request of `vm.set_memory`.
    VmSetMemoryRequest {
        /// The VM.
        uuid: Uuid,
        /// New memory, KiB; at most the VM's `max_memory_kib`.
        memory_kib: u64,
    }
    validate(this) {
        check_range(
            "memory_kib",
            this.memory_kib,
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
    validate(this) { check_range("vcpus", this.vcpus, 1, MAX_VCPUS) }
}

wire_struct! {
    /// Request of `vm.attach_disk`.
    VmAttachDiskRequest {
        /// The VM.
        uuid: Uuid,
        /// The disk.
        disk: DiskSpec,
    }
    validate(this) { this.disk.validate().map_err(|e| e.within("disk")) }
}

wire_struct! {
    /// Request of `vm.detach_disk`.
    VmDetachDiskRequest {
        /// The VM.
        uuid: Uuid,
        /// Guest device name, e.g. `vdb`.
        target: String,
    }
    validate(this) { check_device_target("target", &this.target) }
}

wire_struct! {
    /// Request of `vm.attach_nic`.
    VmAttachNicRequest {
        /// The VM.
        uuid: Uuid,
        /// The NIC.
        nic: NicSpec,
    }
    validate(this) { this.nic.validate().map_err(|e| e.within("nic")) }
}

wire_struct! {
    /// Request of `vm.detach_nic`.
    VmDetachNicRequest {
        /// The VM.
        uuid: Uuid,
        /// MAC address of the NIC.
        mac: String,
    }
    validate(this) { check_mac("mac", &this.mac) }
}

wire_struct! {
    /// Request of `vm.clone`.
    VmCloneRequest {
        /// The VM to copy; it must be halted.
        source: Uuid,
        /// The new VM's name.
        name: String,
        /// Each disk a qcow2 overlay on the source's volume, in that
        /// volume's pool, instead of a full copy.
        #[serde(default)]
        linked: bool,
        /// The pool full copies go in (default: each source disk's own).
        #[serde(default)]
        pool: Option<String>,
    }
    validate(this) {
        check_name("name", &this.name)?;
        match &this.pool {
            Some(_) if this.linked => Err(ValidationError::new(
                "pool",
                "a linked clone's overlays stay in their source volume's pool",
            )),
            Some(p) => check_name("pool", p),
            None => Ok(()),
        }
    }
}

wire_struct! {
    /// Request of `vm.set_template`.
    VmSetTemplateRequest {
        /// The VM; it must be halted.
        uuid: Uuid,
        /// Whether it is a template (false: an ordinary VM again).
        template: bool,
    }
    validate(this) { Ok(()) }
}
