//! The hostbus test kit: what the tests of several crates build their
//! requests from (VM, disk, NIC and network specs, by-name requests), in
//! protocol types only.
//!
//! It depends on hostbus-protocol alone, so the protocol's and the
//! bridge's own tests take it as a dev-dependency; hostbus-tests, the
//! integration harness, depends on it and re-exports it.
//! `tests/tests/crate_boundaries.rs` keeps it a leaf over the protocol.
//!
//! ```
//! use hostbus_testkit::{small_vm, virtio_nic};
//!
//! let mut spec = small_vm("web01", &["vda"]);
//! spec.nics.push(virtio_nic("default", None));
//! assert_eq!(spec.disks[0].target, "vda");
//! ```

mod minimal;
mod specs;

pub use minimal::minimal_request;

pub use specs::{
    named, nat_network, new_disk, new_disk_in, pool_name, small_vm, snapshot_ref, virtio_nic,
    volume_disk, volume_key,
};
