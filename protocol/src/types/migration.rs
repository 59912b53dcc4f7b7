//! Migration: what a finished (or interrupted) `vm.migrate` says, the
//! disks a destination makes for copied storage, and the note events of a
//! migrated VM carry on both hosts.

use uuid::Uuid;

use super::{DiskFormat, VmRecord};

wire_struct! {
    /// The result of `vm.migrate`: where the VM runs now and what the move
    /// cost. `host` is the destination when it moved, the source when it
    /// did not (a failed migration whose VM still runs at home is an
    /// error, not this record; this record with `host` = source is only
    /// what an interrupted migration's recovery found).
    MigrationRecord {
        /// The VM as the host it runs on now reads it.
        vm: VmRecord,
        /// The host it was migrated from.
        source: String,
        /// The host it was migrated to.
        destination: String,
        /// The host the VM is on now.
        host: String,
        /// Whether it ran during the move (false: an offline migration of
        /// a halted VM's definition).
        live: bool,
        /// Whether its disks were copied to the destination.
        copy_storage: bool,
        /// Wall time of the migration proper (libvirt's job), ms.
        elapsed_ms: u64,
        /// How long the guest was paused at the switch-over, ms, as
        /// libvirt measured it (live migrations).
        #[serde(default)]
        downtime_ms: Option<u64>,
        /// Bytes sent (memory and, with copied storage, disks).
        #[serde(default)]
        data_bytes: Option<u64>,
    }
}

wire_struct! {
    /// A disk the destination of a copy-storage migration makes before
    /// the data arrives: a volume of the same pool, name, size and
    /// format as the source's.
    MigrationDisk {
        /// The pool (it must exist and run on the destination).
        pool: String,
        /// The volume's name.
        name: String,
        /// Its size, bytes.
        capacity_bytes: u64,
        /// Its format.
        format: DiskFormat,
    }
    validate(this) {
        crate::validate::check_name("pool", &this.pool)?;
        crate::validate::check_name("name", &this.name)
    }
}

wire_struct! {
    /// What an event of a migrated VM says of the move: on the source's
    /// `undefined` event (the VM left) and the destination's first event
    /// of it (it arrived), so a subscriber to both hosts tells a
    /// migration from a destroy and a define.
    MigrationNote {
        /// The host it left.
        source: String,
        /// The host it went to.
        destination: String,
        /// The `vm.migrate` task (its command id).
        task: Uuid,
    }
}
