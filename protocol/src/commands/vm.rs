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

wire_struct! {
    /// Request of `vm.migrate`, sent to the VM's host (the source).
    VmMigrateRequest {
        /// The VM.
        uuid: Uuid,
        /// The host id it moves to.
        destination: String,
        /// Move a halted VM's definition only (default: a live migration
        /// of a running or paused VM).
        #[serde(default)]
        offline: bool,
        /// Copy its disks to the destination (default: the storage is
        /// shared, the same paths reach the same data on both hosts).
        #[serde(default)]
        copy_storage: bool,
        /// Bandwidth limit, MiB/s (default: libvirt's, unlimited).
        #[serde(default)]
        bandwidth_mib_s: Option<u64>,
        /// Longest pause of the guest at the switch-over, ms (default: libvirt's).
        #[serde(default)]
        max_downtime_ms: Option<u64>,
    }
    validate(this) {
        crate::names::check_host_id("destination", &this.destination)?;
        if let Some(b) = this.bandwidth_mib_s {
            check_range("bandwidth_mib_s", b, 1, 1 << 20)?;
        }
        if let Some(d) = this.max_downtime_ms {
            check_range("max_downtime_ms", d, 1, 600_000)?;
        }
        if this.offline && this.copy_storage {
            return Err(ValidationError::new(
                "copy_storage",
                "an offline migration moves the definition only; copy the volumes with a live one",
            ));
        }
        Ok(())
    }
}

wire_struct! {
    /// Request of `vm.migrate_prepare`, sent by a migration's source agent
    /// to its destination: what the VM needs there.
    VmMigratePrepareRequest {
        /// The VM's uuid (it keeps it).
        uuid: Uuid,
        /// Its name (it keeps it).
        name: String,
        /// The source host.
        source: String,
        /// The `vm.migrate` task on the source.
        task: Uuid,
        /// Whether it arrives running (a live migration).
        live: bool,
        /// Memory it needs, KiB (checked against the destination's free
        /// memory when it arrives running).
        memory_kib: u64,
        /// Virtual networks its NICs use.
        #[serde(default)]
        networks: Vec<String>,
        /// Storage pools its disks are in.
        #[serde(default)]
        pools: Vec<String>,
        /// Volumes to make for copied storage (empty for shared storage).
        #[serde(default)]
        disks: Vec<MigrationDisk>,
        /// The VM's generation on the source when the migration began:
        /// the destination's records of it continue above it.
        generation: u64,
    }
    validate(this) {
        check_name("name", &this.name)?;
        crate::names::check_host_id("source", &this.source)?;
        check_each("disks", &this.disks, 64)
    }
}

wire_struct! {
    /// Response of `vm.migrate_prepare`: how the source reaches the
    /// destination's hypervisor, and what it made there.
    VmMigratePrepareResponse {
        /// The destination host.
        host_id: String,
        /// The libvirt URI the source's libvirt migrates to (the
        /// destination's `migration_uri` setting).
        migration_uri: String,
        /// The volumes made for copied storage.
        #[serde(default)]
        created: Vec<MigrationDisk>,
    }
}

wire_struct! {
    /// Request of `vm.migrate_abort`: a migration prepared on this host
    /// (the destination) did not happen; the volumes its prepare made are
    /// removed unless the VM arrived after all.
    VmMigrateAbortRequest {
        /// The VM.
        uuid: Uuid,
        /// Its name.
        name: String,
        /// The volumes the prepare made.
        #[serde(default)]
        created: Vec<MigrationDisk>,
    }
    validate(this) {
        check_name("name", &this.name)?;
        check_each("created", &this.created, 64)
    }
}
