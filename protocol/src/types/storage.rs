//! Pools and volumes: states, records, specs.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::device::*;
use super::wire_enum;
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
