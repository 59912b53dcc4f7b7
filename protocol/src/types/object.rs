//! References to objects: classes, object and volume references.

use crate::validate::*;

wire_struct! {
    /// A reference to a volume in a pool.
    VolumeRef {
        /// Pool name.
        pool: String,
        /// Volume name inside the pool.
        volume: String,
    }
    validate(this) {
        check_name("pool", &this.pool)?;
        check_name("volume", &this.volume)
    }
}

wire_struct! {
    /// What a task is doing it to.
    ObjectRef {
        /// Object class: `vm`, `pool`, `volume`, `network`, `snapshot`, `host`.
        class: ObjectClass,
        /// Its id: a uuid for VMs, a name for pools and networks, `pool/volume`, `vm-uuid/snapshot`.
        id: String,
    }
}

wire_enum! {
    /// Classes of objects, as used in events, tasks and routing keys.
    ObjectClass {
        /// The host itself.
        Host = "host",
        /// A VM.
        Vm = "vm",
        /// A VM snapshot.
        Snapshot = "snapshot",
        /// A storage pool.
        Pool = "pool",
        /// A storage volume.
        Volume = "volume",
        /// A virtual network.
        Network = "network",
        /// A task.
        Task = "task",
        /// The agent (online/offline announcements).
        Agent = "agent",
    }
}
