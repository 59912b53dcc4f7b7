//! Domain XML: definitions, devices, snapshots.

use std::fmt::Write as _;

use hostbus_protocol::types::{
    BootDevice, BootSpec, ConsoleRecord, CpuMode, DiskBus, DiskDevice, DiskFormat, DiskRecord,
    NicModel, NicRecord, PowerState, VolumeRef,
};
use hostbus_protocol::Error;
use roxmltree::Node;
use uuid::Uuid;

use super::{attr_at, child, esc, parse, size_at, text_at};

pub(crate) enum DiskSrc {
    /// A file or block device outside every pool.
    Path(String),
    /// A volume of a pool (`<disk type='volume'>`): the record then names it.
    Volume { pool: String, volume: String },
}

/// A disk as the bridge writes it into domain XML.
pub(crate) struct DiskXml<'a> {
    pub target: &'a str,
    pub source: DiskSrc,
    pub bus: DiskBus,
    pub format: DiskFormat,
    pub read_only: bool,
    pub device: DiskDevice,
}

/// A NIC as the bridge writes it into domain XML.
pub(crate) struct NicXml<'a> {
    pub network: Option<&'a str>,
    pub bridge: Option<&'a str>,
    pub mac: String,
    pub model: NicModel,
}

/// Everything needed to write a domain definition.
pub(crate) struct DomainXml<'a> {
    pub domain_type: &'a str,
    pub name: &'a str,
    pub uuid: Uuid,
    pub description: &'a str,
    pub memory_kib: u64,
    pub max_memory_kib: u64,
    pub vcpus: u32,
    pub max_vcpus: u32,
    pub arch: &'a str,
    pub boot: &'a BootSpec,
    /// `None`: no `<cpu>` element (the hypervisor's default model).
    pub cpu_mode: Option<CpuMode>,
    /// The file that receives the serial console's output.
    pub console_log: Option<String>,
    pub disks: Vec<DiskXml<'a>>,
    pub nics: Vec<NicXml<'a>>,
}

pub(crate) fn disk_xml(d: &DiskXml<'_>) -> String {
    let (kind, source) = match &d.source {
        DiskSrc::Path(p) if p.starts_with("/dev/") => {
            ("block", format!("<source dev='{}'/>", esc(p)))
        }
        DiskSrc::Path(p) => ("file", format!("<source file='{}'/>", esc(p))),
        DiskSrc::Volume { pool, volume } => (
            "volume",
            format!("<source pool='{}' volume='{}'/>", esc(pool), esc(volume)),
        ),
    };
    let device = match d.device {
        DiskDevice::Cdrom => "cdrom",
        _ => "disk",
    };
    let mut s = format!(
        "<disk type='{kind}' device='{device}'><driver name='qemu' type='{}'/>{source}<target dev='{}' bus='{}'/>",
        d.format.as_str(),
        esc(d.target),
        d.bus.as_str()
    );
    if d.read_only || d.device == DiskDevice::Cdrom {
        s.push_str("<readonly/>");
    }
    s.push_str("</disk>");
    s
}

pub(crate) fn nic_xml(n: &NicXml<'_>) -> String {
    let (kind, source) = match (n.network, n.bridge) {
        (Some(net), _) => ("network", format!("<source network='{}'/>", esc(net))),
        (None, Some(br)) => ("bridge", format!("<source bridge='{}'/>", esc(br))),
        (None, None) => ("network", "<source network='default'/>".to_owned()),
    };
    format!(
        "<interface type='{kind}'><mac address='{}'/>{source}<model type='{}'/></interface>",
        esc(&n.mac),
        n.model.as_str()
    )
}

fn boot_dev(d: BootDevice) -> Option<&'static str> {
    match d {
        BootDevice::Disk => Some("hd"),
        BootDevice::Cdrom => Some("cdrom"),
        BootDevice::Network => Some("network"),
        BootDevice::Unknown => None,
    }
}

fn cpu_xml(mode: CpuMode) -> Option<&'static str> {
    match mode {
        CpuMode::HostModel => Some("<cpu mode='host-model'/>"),
        CpuMode::HostPassthrough => Some("<cpu mode='host-passthrough'/>"),
        CpuMode::Maximum => Some("<cpu mode='maximum'/>"),
        CpuMode::HypervisorDefault | CpuMode::Unknown => None,
    }
}

pub(crate) fn domain_xml(d: &DomainXml<'_>) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<domain type='{}'><name>{}</name><uuid>{}</uuid><description>{}</description>\
         <memory unit='KiB'>{}</memory><currentMemory unit='KiB'>{}</currentMemory>\
         <vcpu placement='static' current='{}'>{}</vcpu><os><type arch='{}'>hvm</type>",
        esc(d.domain_type),
        esc(d.name),
        d.uuid,
        esc(d.description),
        d.max_memory_kib,
        d.memory_kib,
        d.vcpus,
        d.max_vcpus,
        esc(d.arch)
    );
    if let Some(k) = &d.boot.kernel {
        let _ = write!(s, "<kernel>{}</kernel>", esc(k));
        if let Some(i) = &d.boot.initrd {
            let _ = write!(s, "<initrd>{}</initrd>", esc(i));
        }
        if let Some(c) = &d.boot.cmdline {
            let _ = write!(s, "<cmdline>{}</cmdline>", esc(c));
        }
    }
    if d.boot.order.is_empty() {
        if d.boot.kernel.is_none() {
            s.push_str("<boot dev='hd'/>");
        }
    } else {
        for dev in d.boot.order.iter().filter_map(|b| boot_dev(*b)) {
            let _ = write!(s, "<boot dev='{dev}'/>");
        }
    }
    s.push_str("</os><features><acpi/></features>");
    if let Some(cpu) = d.cpu_mode.and_then(cpu_xml) {
        s.push_str(cpu);
    }
    s.push_str(
        "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash><devices>",
    );
    for disk in &d.disks {
        s.push_str(&disk_xml(disk));
    }
    for nic in &d.nics {
        s.push_str(&nic_xml(nic));
    }
    // One serial port, which is also the console; libvirt's virtlogd
    // copies its output to `console_log`.
    s.push_str("<serial type='pty'>");
    if let Some(log) = &d.console_log {
        let _ = write!(s, "<log file='{}' append='on'/>", esc(log));
    }
    s.push_str(
        "<target port='0'/></serial><console type='pty'><target type='serial' port='0'/></console>",
    );
    s.push_str("</devices></domain>");
    s
}

/// What the bridge reads back from a domain definition.
#[derive(Debug, Clone)]
pub(crate) struct DomainFacts {
    pub name: String,
    pub uuid: Uuid,
    pub description: String,
    pub memory_kib: u64,
    pub max_memory_kib: u64,
    pub vcpus: u32,
    pub max_vcpus: u32,
    pub disks: Vec<DiskRecord>,
    pub nics: Vec<NicRecord>,
    /// Host-side device of each NIC (`<target dev=..>`), parallel to `nics`.
    pub nic_devs: Vec<Option<String>>,
    pub boot: BootSpec,
    pub cpu_mode: Option<CpuMode>,
    pub domain_type: Option<String>,
    pub console: Option<ConsoleRecord>,
    /// Whether any disk is marked shareable between VMs, by target.
    pub shareable: Vec<String>,
}

pub(crate) fn parse_domain(xml: &str) -> Result<DomainFacts, Error> {
    let doc = parse(xml)?;
    let root = doc.root_element();
    let uuid = text_at(root, &["uuid"])
        .and_then(|u| Uuid::parse_str(&u).ok())
        .ok_or_else(|| Error::internal("domain XML without a uuid"))?;
    let max_memory_kib = size_at(root, &["memory"], 1024, "KiB").unwrap_or(0);
    let memory_kib = size_at(root, &["currentMemory"], 1024, "KiB").unwrap_or(max_memory_kib);
    let vcpu = child(root, "vcpu");
    let max_vcpus: u32 = vcpu
        .and_then(|v| v.text())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1);
    let vcpus: u32 = vcpu
        .and_then(|v| v.attribute("current"))
        .and_then(|c| c.parse().ok())
        .unwrap_or(max_vcpus);
    let mut disks = Vec::new();
    let mut nics = Vec::new();
    let mut nic_devs = Vec::new();
    let mut shareable = Vec::new();
    let mut console = None;
    let os = child(root, "os");
    let boot = BootSpec {
        order: os
            .map(|os| {
                os.children()
                    .filter(|c| c.has_tag_name("boot"))
                    .filter_map(|b| match b.attribute("dev") {
                        Some("hd") => Some(BootDevice::Disk),
                        Some("cdrom") => Some(BootDevice::Cdrom),
                        Some("network") => Some(BootDevice::Network),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        kernel: os.and_then(|os| text_at(os, &["kernel"])),
        initrd: os.and_then(|os| text_at(os, &["initrd"])),
        cmdline: os.and_then(|os| text_at(os, &["cmdline"])),
    };
    let cpu_mode = child(root, "cpu").and_then(|c| match c.attribute("mode") {
        Some("host-model") => Some(CpuMode::HostModel),
        Some("host-passthrough") => Some(CpuMode::HostPassthrough),
        Some("maximum") => Some(CpuMode::Maximum),
        _ => None,
    });
    if let Some(devices) = child(root, "devices") {
        for d in devices.children().filter(|c| c.has_tag_name("disk")) {
            let device = match d.attribute("device").unwrap_or("disk") {
                "disk" => DiskDevice::Disk,
                "cdrom" => DiskDevice::Cdrom,
                _ => continue,
            };
            let Some(target) = attr_at(d, &["target"], "dev") else {
                continue;
            };
            let source = child(d, "source");
            let source_path = source
                .and_then(|s| s.attribute("file").or(s.attribute("dev")))
                .map(str::to_owned);
            let format = match attr_at(d, &["driver"], "type").as_deref() {
                Some("qcow2") => DiskFormat::Qcow2,
                Some("raw") | None => DiskFormat::Raw,
                Some(_) => DiskFormat::Unknown,
            };
            if child(d, "shareable").is_some() {
                shareable.push(target.clone());
            }
            let bus = match attr_at(d, &["target"], "bus").as_deref() {
                Some("virtio") => DiskBus::Virtio,
                Some("scsi") => DiskBus::Scsi,
                Some("sata") => DiskBus::Sata,
                Some("ide") => DiskBus::Ide,
                _ => DiskBus::Unknown,
            };
            let volume = source.and_then(|s| {
                Some(VolumeRef {
                    pool: s.attribute("pool")?.to_owned(),
                    volume: s.attribute("volume")?.to_owned(),
                })
            });
            disks.push(DiskRecord {
                target,
                bus,
                format,
                source_path,
                volume,
                read_only: child(d, "readonly").is_some(),
                device,
            });
        }
        console = devices
            .children()
            .find(|c| c.has_tag_name("serial"))
            .map(|ser| {
                let port = attr_at(ser, &["target"], "port").unwrap_or_else(|| "0".into());
                ConsoleRecord {
                    guest_device: format!("ttyS{port}"),
                    pty: (ser.attribute("type") == Some("pty"))
                        .then(|| attr_at(ser, &["source"], "path"))
                        .flatten(),
                    log_path: attr_at(ser, &["log"], "file"),
                }
            });
        for i in devices.children().filter(|c| c.has_tag_name("interface")) {
            let source = child(i, "source");
            let model = match attr_at(i, &["model"], "type").as_deref() {
                Some("virtio") => NicModel::Virtio,
                Some("e1000") => NicModel::E1000,
                Some("rtl8139") => NicModel::Rtl8139,
                _ => NicModel::Unknown,
            };
            nic_devs.push(attr_at(i, &["target"], "dev"));
            nics.push(NicRecord {
                mac: attr_at(i, &["mac"], "address").unwrap_or_default(),
                network: source
                    .and_then(|s| s.attribute("network"))
                    .map(str::to_owned),
                bridge: source
                    .and_then(|s| s.attribute("bridge"))
                    .map(str::to_owned),
                model,
            });
        }
    }
    Ok(DomainFacts {
        name: text_at(root, &["name"]).unwrap_or_default(),
        uuid,
        description: text_at(root, &["description"]).unwrap_or_default(),
        memory_kib,
        max_memory_kib,
        vcpus,
        max_vcpus,
        disks,
        nics,
        nic_devs,
        boot,
        cpu_mode,
        domain_type: root.attribute("type").map(str::to_owned),
        console,
        shareable,
    })
}

/// The domain definition with `device` added to its devices.
pub(crate) fn add_device(domain: &str, device: &str) -> Result<String, Error> {
    if let Some(i) = domain.rfind("</devices>") {
        return Ok(format!("{}{device}{}", &domain[..i], &domain[i..]));
    }
    if let Some(i) = domain.find("<devices/>") {
        return Ok(format!(
            "{}<devices>{device}</devices>{}",
            &domain[..i],
            &domain[i + "<devices/>".len()..]
        ));
    }
    if let Some(i) = domain.rfind("</domain>") {
        return Ok(format!(
            "{}<devices>{device}</devices>{}",
            &domain[..i],
            &domain[i..]
        ));
    }
    Err(Error::internal("domain XML without a closing tag"))
}

/// The domain definition without the first `tag` device (`disk` or
/// `interface`) for which `matches` holds, or `None` when there is none.
pub(crate) fn remove_device(
    domain: &str,
    tag: &str,
    matches: impl Fn(Node<'_, '_>) -> bool,
) -> Result<Option<String>, Error> {
    let doc = parse(domain)?;
    let Some(devices) = child(doc.root_element(), "devices") else {
        return Ok(None);
    };
    let found = devices
        .children()
        .find(|c| c.has_tag_name(tag) && matches(*c));
    Ok(found.map(|n| {
        let r = n.range();
        format!("{}{}", &domain[..r.start], &domain[r.end..])
    }))
}

/// Whether a `<disk>` node has guest target `target`.
pub(crate) fn disk_has_target(n: Node<'_, '_>, target: &str) -> bool {
    attr_at(n, &["target"], "dev").as_deref() == Some(target)
}

/// Whether an `<interface>` node has MAC `mac` (case-insensitive).
pub(crate) fn nic_has_mac(n: Node<'_, '_>, mac: &str) -> bool {
    attr_at(n, &["mac"], "address").is_some_and(|m| m.eq_ignore_ascii_case(mac))
}

// ---------------------------------------------------------------- snapshots

pub(crate) fn snapshot_xml(name: &str, description: &str) -> String {
    format!(
        "<domainsnapshot><name>{}</name><description>{}</description></domainsnapshot>",
        esc(name),
        esc(description)
    )
}

/// What the bridge reads back from a snapshot.
pub(crate) struct SnapshotFacts {
    pub name: String,
    pub description: String,
    pub created_at_s: u64,
    pub state: PowerState,
    pub parent: Option<String>,
}

pub(crate) fn parse_snapshot(xml: &str) -> Result<SnapshotFacts, Error> {
    let doc = parse(xml)?;
    let root = doc.root_element();
    let state = match text_at(root, &["state"]).as_deref() {
        Some("running") | Some("blocked") => PowerState::Running,
        Some("paused") => PowerState::Paused,
        Some("shutoff") | Some("shutdown") | Some("nostate") => PowerState::Halted,
        Some("crashed") => PowerState::Crashed,
        Some("pmsuspended") => PowerState::Suspended,
        _ => PowerState::Unknown,
    };
    Ok(SnapshotFacts {
        name: text_at(root, &["name"]).unwrap_or_default(),
        description: text_at(root, &["description"]).unwrap_or_default(),
        created_at_s: text_at(root, &["creationTime"])
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
        state,
        parent: text_at(root, &["parent", "name"]),
    })
}

// -------------------------------------------------------------------- pools

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_domain_xml_parses_back() {
        let xml = domain_xml(&DomainXml {
            domain_type: "test",
            name: "a<b",
            uuid: Uuid::nil(),
            description: "it's \"quoted\" & <tagged>",
            memory_kib: 1024,
            max_memory_kib: 2048,
            vcpus: 1,
            max_vcpus: 2,
            arch: "x86_64",
            boot: &BootSpec {
                order: vec![BootDevice::Cdrom, BootDevice::Disk],
                kernel: Some("/boot/vmlinuz".into()),
                initrd: Some("/boot/initrd.img".into()),
                cmdline: Some("console=ttyS0 root=/dev/vda".into()),
            },
            cpu_mode: Some(CpuMode::Maximum),
            console_log: Some("/var/log/x-serial0.log".into()),
            disks: vec![
                DiskXml {
                    target: "vda",
                    source: DiskSrc::Path("/var/lib/x.qcow2".into()),
                    bus: DiskBus::Virtio,
                    format: DiskFormat::Qcow2,
                    read_only: true,
                    device: DiskDevice::Disk,
                },
                DiskXml {
                    target: "hdc",
                    source: DiskSrc::Volume {
                        pool: "isos".into(),
                        volume: "install.iso".into(),
                    },
                    bus: DiskBus::Ide,
                    format: DiskFormat::Raw,
                    read_only: false,
                    device: DiskDevice::Cdrom,
                },
            ],
            nics: vec![NicXml {
                network: Some("default"),
                bridge: None,
                mac: "52:54:00:00:00:01".into(),
                model: NicModel::E1000,
            }],
        });
        let f = parse_domain(&xml).expect("parse");
        assert_eq!(f.name, "a<b");
        assert_eq!(f.description, "it's \"quoted\" & <tagged>");
        assert_eq!(
            (f.memory_kib, f.max_memory_kib, f.vcpus, f.max_vcpus),
            (1024, 2048, 1, 2)
        );
        assert_eq!(f.disks[0].target, "vda");
        assert!(f.disks[0].read_only);
        assert_eq!(f.disks[0].format, DiskFormat::Qcow2);
        assert_eq!(f.nics[0].model, NicModel::E1000);
        assert_eq!(f.nics[0].network.as_deref(), Some("default"));
        let cd = &f.disks[1];
        assert_eq!((cd.device, cd.read_only), (DiskDevice::Cdrom, true));
        assert_eq!(
            cd.volume,
            Some(VolumeRef {
                pool: "isos".into(),
                volume: "install.iso".into()
            })
        );
        assert_eq!(f.boot.order, vec![BootDevice::Cdrom, BootDevice::Disk]);
        assert_eq!(f.boot.kernel.as_deref(), Some("/boot/vmlinuz"));
        assert_eq!(f.boot.initrd.as_deref(), Some("/boot/initrd.img"));
        assert_eq!(
            f.boot.cmdline.as_deref(),
            Some("console=ttyS0 root=/dev/vda")
        );
        assert_eq!(f.cpu_mode, Some(CpuMode::Maximum));
        assert_eq!(f.domain_type.as_deref(), Some("test"));
        let console = f.console.expect("a serial console");
        assert_eq!(console.guest_device, "ttyS0");
        assert_eq!(console.log_path.as_deref(), Some("/var/log/x-serial0.log"));
        assert_eq!(console.pty, None, "a defined vm has no pty yet");
    }
}
