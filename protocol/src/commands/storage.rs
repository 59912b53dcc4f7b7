//! Request and response types of the pool and volume commands.

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
    validate(this) { this.spec.validate().map_err(|e| e.within("spec")) }
}

wire_struct! {
    /// A pool by name, for volume listings.
    PoolName {
        /// Pool name.
        pool: String,
    }
    validate(this) { check_name("pool", &this.pool) }
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
    validate(this) {
        check_name("pool", &this.pool)?;
        check_name("name", &this.name)
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
    validate(this) {
        check_name("pool", &this.pool)?;
        this.spec.validate().map_err(|e| e.within("spec"))
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
    validate(this) {
        check_name("pool", &this.pool)?;
        check_name("name", &this.name)?;
        check_range("capacity_bytes", this.capacity_bytes, 1, MAX_VOLUME_BYTES)
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
    validate(this) {
        check_name("pool", &this.pool)?;
        check_name("name", &this.name)?;
        check_name("new_name", &this.new_name)
    }
}
