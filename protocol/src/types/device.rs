//! Device kinds a VM and its volumes use: disk formats and buses, boot devices, CPU modes, NIC models.

wire_enum! {
    /// How a disk's image is stored.
    DiskFormat {
        /// Raw image.
        Raw = "raw",
        /// QEMU copy-on-write v2.
        Qcow2 = "qcow2",
    }
}

wire_enum! {
    /// The guest-visible bus of a disk.
    DiskBus {
        /// Paravirtual virtio-blk.
        Virtio = "virtio",
        /// SCSI.
        Scsi = "scsi",
        /// SATA.
        Sata = "sata",
        /// IDE.
        Ide = "ide",
    }
}

wire_enum! {
    /// What a disk is to the guest.
    DiskDevice {
        /// A hard disk.
        Disk = "disk",
        /// A CD-ROM drive (read-only; bus `sata`, `ide` or `scsi`).
        Cdrom = "cdrom",
    }
}

// `wire_enum!` takes no per-variant attributes, so no `#[default]`.
#[allow(clippy::derivable_impls)]
impl Default for DiskDevice {
    fn default() -> Self {
        DiskDevice::Disk
    }
}

wire_enum! {
    /// A device class the firmware boots from, in `BootSpec.order`.
    BootDevice {
        /// The first hard disk (disks in spec order).
        Disk = "disk",
        /// The first CD-ROM drive.
        Cdrom = "cdrom",
        /// The network (PXE through the first NIC).
        Network = "network",
    }
}

wire_enum! {
    /// The CPU a guest sees.
    CpuMode {
        /// A model like the host's, with its features (KVM's default: guests
        /// can migrate between similar hosts).
        HostModel = "host_model",
        /// Exactly the host's CPU (KVM only; fastest, not migratable).
        HostPassthrough = "host_passthrough",
        /// Every feature the hypervisor can offer (TCG's default: QEMU's
        /// `max` CPU, new enough for current distributions).
        Maximum = "maximum",
        /// The hypervisor's own default model (QEMU's `qemu64`, too old for
        /// some current distributions).
        HypervisorDefault = "hypervisor_default",
    }
}

wire_enum! {
    /// The guest-visible NIC model.
    NicModel {
        /// Paravirtual virtio-net.
        Virtio = "virtio",
        /// Intel e1000.
        E1000 = "e1000",
        /// Realtek rtl8139.
        Rtl8139 = "rtl8139",
    }
}

/// The format a new disk or volume gets when none is given.
pub(super) fn default_format() -> DiskFormat {
    DiskFormat::Qcow2
}
