//! Specs the suites create (disks, NICs, networks, the smallest VM that
//! boots on the test driver) and the by-name requests they send.

use hostbus_protocol::commands::{ObjectName, PoolName, SnapshotRef, VolumeKey};
use hostbus_protocol::types::{
    DiskFormat, DiskSource, DiskSpec, ForwardMode, IpSpec, NetworkSpec, NicSpec, VmSpec, VolumeRef,
};

/// A disk `target` on virtio backed by a new 1 GiB qcow2 volume in `pool`.
pub fn new_disk_in(target: &str, pool: &str) -> DiskSpec {
    let source = DiskSource::NewVolume {
        pool: pool.to_owned(),
        capacity_bytes: 1 << 30,
    };
    DiskSpec {
        format: Some(DiskFormat::Qcow2),
        ..DiskSpec::new(target, source)
    }
}

/// [`new_disk_in`] pool `default`.
pub fn new_disk(target: &str) -> DiskSpec {
    new_disk_in(target, "default")
}

/// A writable virtio disk `target` on the existing volume `pool`/`volume`.
pub fn volume_disk(target: &str, pool: &str, volume: &str, format: Option<DiskFormat>) -> DiskSpec {
    let source = DiskSource::Volume(VolumeRef {
        pool: pool.to_owned(),
        volume: volume.to_owned(),
    });
    DiskSpec {
        format,
        ..DiskSpec::new(target, source)
    }
}

/// A virtio NIC on libvirt network `network`, with MAC `mac` when given.
pub fn virtio_nic(network: &str, mac: Option<&str>) -> NicSpec {
    NicSpec {
        mac: mac.map(str::to_owned),
        ..NicSpec::on_network(network)
    }
}

/// A NAT network `name` on `bridge`, the host at `address`/24 with DHCP
/// from `dhcp.0` to `dhcp.1`; not started at boot.
pub fn nat_network(name: &str, bridge: &str, address: &str, dhcp: (&str, &str)) -> NetworkSpec {
    NetworkSpec {
        name: name.to_owned(),
        bridge: Some(bridge.to_owned()),
        forward: ForwardMode::Nat,
        ip: Some(IpSpec {
            address: address.to_owned(),
            prefix: 24,
            dhcp_start: Some(dhcp.0.to_owned()),
            dhcp_end: Some(dhcp.1.to_owned()),
        }),
        autostart: false,
    }
}

/// An object by name (a VM, pool or network).
pub fn named(name: &str) -> ObjectName {
    ObjectName {
        name: name.to_owned(),
    }
}

/// A pool by name, for volume listings.
pub fn pool_name(pool: &str) -> PoolName {
    PoolName {
        pool: pool.to_owned(),
    }
}

/// Volume `name` in `pool`.
pub fn volume_key(pool: &str, name: &str) -> VolumeKey {
    VolumeKey {
        pool: pool.to_owned(),
        name: name.to_owned(),
    }
}

/// Snapshot `name` of VM `vm`.
pub fn snapshot_ref(vm: uuid::Uuid, name: &str) -> SnapshotRef {
    SnapshotRef {
        vm,
        name: name.to_owned(),
    }
}

/// A VM of 256 MiB and one vCPU named `name`, with a [`new_disk`] for each
/// of `disks` (targets such as `vda`).
pub fn small_vm(name: &str, disks: &[&str]) -> VmSpec {
    VmSpec {
        disks: disks.iter().map(|t| new_disk(t)).collect(),
        ..VmSpec::new(name, 262_144, 1)
    }
}
