//! Pools and volumes: states, records, specs.

use uuid::Uuid;

use super::device::*;

use crate::validate::*;

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

wire_struct! {
    /// A storage pool.
    PoolRecord {
        /// Stable identity.
        uuid: Uuid,
        /// Unique name on the host; pools are addressed by name.
        name: String,
        /// Backend.
        kind: PoolKind,
        /// State.
        state: PoolState,
        /// Target path (directory or device) on the host.
        target_path: Option<String>,
        /// Total bytes.
        capacity_bytes: u64,
        /// Allocated bytes.
        allocation_bytes: u64,
        /// Free bytes.
        available_bytes: u64,
        /// Started when the host boots.
        autostart: bool,
        /// Defined persistently.
        persistent: bool,
        /// Volumes in the pool (0 when inactive).
        volumes: u32,
        /// Generation of the record.
        generation: u64,
    }
}

wire_struct! {
    /// A storage volume.
    VolumeRecord {
        /// The pool holding it.
        pool: String,
        /// Name, unique in its pool.
        name: String,
        /// libvirt's unique key for the volume.
        key: String,
        /// Host path.
        path: String,
        /// Image format.
        format: DiskFormat,
        /// Virtual size, bytes.
        capacity_bytes: u64,
        /// Bytes allocated on the host.
        allocation_bytes: u64,
        /// Generation of the record.
        generation: u64,
        /// The image it is an overlay on (a linked clone's disk): that
        /// image must stay while this volume does.
        #[serde(default)]
        backing_path: Option<String>,
    }
}

wire_struct! {
    /// A storage pool to define.
    PoolSpec {
        /// Unique name.
        name: String,
        /// Backend (only `dir` is accepted by every driver).
        kind: PoolKind,
        /// Target directory or device path on the host.
        target_path: String,
        /// Source device or host for non-directory backends.
        #[serde(default)]
        source: Option<String>,
        /// Start when the host boots.
        #[serde(default)]
        autostart: bool,
    }
    validate(this) {
        check_name("name", &this.name)?;
        if this.kind == PoolKind::Unknown {
            return Err(ValidationError::new("kind", "unknown pool kind"));
        }
        check_path("target_path", &this.target_path)?;
        if let Some(s) = &this.source {
            check_text("source", s)?;
        }
        Ok(())
    }
}

wire_struct! {
    /// A volume to create.
    VolumeSpec {
        /// Name, unique in its pool.
        name: String,
        /// Virtual size, bytes.
        capacity_bytes: u64,
        /// Bytes to preallocate (default 0: sparse).
        #[serde(default)]
        allocation_bytes: u64,
        /// Format (default qcow2).
        #[serde(default = "default_format")]
        format: DiskFormat,
    }
    validate(this) {
        check_name("name", &this.name)?;
        check_range("capacity_bytes", this.capacity_bytes, 1, MAX_VOLUME_BYTES)?;
        check_range(
            "allocation_bytes",
            this.allocation_bytes,
            0,
            this.capacity_bytes,
        )?;
        if this.format == DiskFormat::Unknown {
            return Err(ValidationError::new("format", "unknown format"));
        }
        Ok(())
    }
}
