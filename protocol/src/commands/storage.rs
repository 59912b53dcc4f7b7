//! Request and response types of the pool and volume commands.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::*;
use crate::validate::*;

wire_struct! {
    /// Response of `pool.list`.
    PoolListResponse {
        /// Pools, sorted by name.
        pools: Vec<PoolRecord>,
    }
}

wire_struct! {
    /// Request of `pool.define`.
    PoolDefineRequest {
        /// What to define.
        spec: PoolSpec,
    }
}
impl Validate for PoolDefineRequest {
    fn validate(&self) -> Validation {
        self.spec.validate().map_err(|e| e.within("spec"))
    }
}

wire_struct! {
    /// A pool by name, for volume listings.
    PoolName {
        /// Pool name.
        pool: String,
    }
}
impl Validate for PoolName {
    fn validate(&self) -> Validation {
        check_name("pool", &self.pool)
    }
}

wire_struct! {
    /// Response of `volume.list`.
    VolumeListResponse {
        /// Volumes, sorted by name.
        volumes: Vec<VolumeRecord>,
    }
}

wire_struct! {
    /// A volume by pool and name.
    VolumeKey {
        /// Pool name.
        pool: String,
        /// Volume name.
        name: String,
    }
}
impl Validate for VolumeKey {
    fn validate(&self) -> Validation {
        check_name("pool", &self.pool)?;
        check_name("name", &self.name)
    }
}

wire_struct! {
    /// Request of `volume.create`.
    VolumeCreateRequest {
        /// Pool to create it in.
        pool: String,
        /// What to create.
        spec: VolumeSpec,
    }
}
impl Validate for VolumeCreateRequest {
    fn validate(&self) -> Validation {
        check_name("pool", &self.pool)?;
        self.spec.validate().map_err(|e| e.within("spec"))
    }
}

wire_struct! {
    /// Request of `volume.resize`.
    VolumeResizeRequest {
        /// Pool name.
        pool: String,
        /// Volume name.
        name: String,
        /// New virtual size, bytes; must not be smaller than the current one.
        capacity_bytes: u64,
    }
}
impl Validate for VolumeResizeRequest {
    fn validate(&self) -> Validation {
        check_name("pool", &self.pool)?;
        check_name("name", &self.name)?;
        check_range("capacity_bytes", self.capacity_bytes, 1, MAX_VOLUME_BYTES)
    }
}

wire_struct! {
    /// Request of `volume.clone`.
    VolumeCloneRequest {
        /// Pool name (source and clone).
        pool: String,
        /// Source volume name.
        name: String,
        /// Name of the new volume.
        new_name: String,
    }
}
impl Validate for VolumeCloneRequest {
    fn validate(&self) -> Validation {
        check_name("pool", &self.pool)?;
        check_name("name", &self.name)?;
        check_name("new_name", &self.new_name)
    }
}
