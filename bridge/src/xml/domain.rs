//! Domain XML: definitions, devices, snapshots.

use std::io;

use hostbus_protocol::types::{
    BootDevice, BootSpec, ConsoleRecord, CpuMode, DiskBus, DiskDevice, DiskFormat, DiskRecord,
    NicModel, NicRecord, PowerState, VolumeRef,
};
use hostbus_protocol::Error;
use quick_xml::events::{BytesStart, BytesText, Event};
use roxmltree::Node;
use uuid::Uuid;

use super::{
    attr_at, child, document, element, empty, is, parse, rewrite, size_at, text, text_at, Xml,
};

pub(crate) enum DiskSrc {
    /// A file or block device outside every pool.
    Path(String),
    /// A volume of a pool (`<disk type='volume'>`): the record then names it.
    Volume { pool: String, volume: String },
}

impl DiskSrc {
    /// The `<disk type>` of this source, and the attributes of its `<source>`.
    fn attributes(&self) -> (&'static str, Vec<(&'static str, &str)>) {
        match self {
            DiskSrc::Path(p) if p.starts_with("/dev/") => ("block", vec![("dev", p.as_str())]),
            DiskSrc::Path(p) => ("file", vec![("file", p.as_str())]),
            DiskSrc::Volume { pool, volume } => (
                "volume",
                vec![("pool", pool.as_str()), ("volume", volume.as_str())],
            ),
        }
    }
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

/// A device the bridge attaches or detaches: written alone for libvirt's
/// device API ([`Device::xml`]), or into a halted VM's definition
/// ([`add_device`]).
pub(crate) enum Device<'a> {
    Disk(DiskXml<'a>),
    Nic(NicXml<'a>),
}

impl Device<'_> {
    pub(crate) fn xml(&self) -> String {
        document(|w| self.write(w))
    }

    fn write(&self, w: &mut Xml) -> io::Result<()> {
        match self {
            Device::Disk(d) => write_disk(w, d),
            Device::Nic(n) => write_nic(w, n),
        }
    }
}

fn write_disk(w: &mut Xml, d: &DiskXml<'_>) -> io::Result<()> {
    let (kind, source) = d.source.attributes();
    let device = match d.device {
        DiskDevice::Cdrom => "cdrom",
        DiskDevice::Disk | DiskDevice::Unknown => "disk",
    };
    element(w, "disk", &[("type", kind), ("device", device)], |w| {
        empty(
            w,
            "driver",
            &[("name", "qemu"), ("type", d.format.as_str())],
        )?;
        empty(w, "source", &source)?;
        empty(w, "target", &[("dev", d.target), ("bus", d.bus.as_str())])?;
        if d.read_only || d.device == DiskDevice::Cdrom {
            empty(w, "readonly", &[])?;
        }
        Ok(())
    })
}

fn write_nic(w: &mut Xml, n: &NicXml<'_>) -> io::Result<()> {
    let (kind, source) = match (n.network, n.bridge) {
        (Some(net), _) => ("network", ("network", net)),
        (None, Some(br)) => ("bridge", ("bridge", br)),
        (None, None) => ("network", ("network", "default")),
    };
    element(w, "interface", &[("type", kind)], |w| {
        empty(w, "mac", &[("address", n.mac.as_str())])?;
        empty(w, "source", &[source])?;
        empty(w, "model", &[("type", n.model.as_str())])
    })
}

fn boot_dev(d: BootDevice) -> Option<&'static str> {
    match d {
        BootDevice::Disk => Some("hd"),
        BootDevice::Cdrom => Some("cdrom"),
        BootDevice::Network => Some("network"),
        BootDevice::Unknown => None,
    }
}

/// The `<cpu mode>` of a CPU mode; `None`: no `<cpu>` element.
fn cpu_mode(mode: CpuMode) -> Option<&'static str> {
    match mode {
        CpuMode::HostModel => Some("host-model"),
        CpuMode::HostPassthrough => Some("host-passthrough"),
        CpuMode::Maximum => Some("maximum"),
        CpuMode::HypervisorDefault | CpuMode::Unknown => None,
    }
}

pub(crate) fn domain_xml(d: &DomainXml<'_>) -> String {
    document(|w| {
        element(w, "domain", &[("type", d.domain_type)], |w| {
            text(w, "name", &[], d.name)?;
            text(w, "uuid", &[], &d.uuid.to_string())?;
            text(w, "description", &[], d.description)?;
            let kib = [("unit", "KiB")];
            text(w, "memory", &kib, &d.max_memory_kib.to_string())?;
            text(w, "currentMemory", &kib, &d.memory_kib.to_string())?;
            let current = d.vcpus.to_string();
            let vcpu = [("placement", "static"), ("current", current.as_str())];
            text(w, "vcpu", &vcpu, &d.max_vcpus.to_string())?;
            element(w, "os", &[], |w| write_os(w, d.arch, d.boot))?;
            element(w, "features", &[], |w| empty(w, "acpi", &[]))?;
            if let Some(mode) = d.cpu_mode.and_then(cpu_mode) {
                empty(w, "cpu", &[("mode", mode)])?;
            }
            text(w, "on_poweroff", &[], "destroy")?;
            text(w, "on_reboot", &[], "restart")?;
            text(w, "on_crash", &[], "destroy")?;
            element(w, "devices", &[], |w| {
                for disk in &d.disks {
                    write_disk(w, disk)?;
                }
                for nic in &d.nics {
                    write_nic(w, nic)?;
                }
                write_console(w, d.console_log.as_deref())
            })
        })
    })
}

fn write_os(w: &mut Xml, arch: &str, boot: &BootSpec) -> io::Result<()> {
    text(w, "type", &[("arch", arch)], "hvm")?;
    if let Some(k) = &boot.kernel {
        text(w, "kernel", &[], k)?;
        if let Some(i) = &boot.initrd {
            text(w, "initrd", &[], i)?;
        }
        if let Some(c) = &boot.cmdline {
            text(w, "cmdline", &[], c)?;
        }
    }
    if boot.order.is_empty() {
        if boot.kernel.is_none() {
            empty(w, "boot", &[("dev", "hd")])?;
        }
    } else {
        for dev in boot.order.iter().filter_map(|b| boot_dev(*b)) {
            empty(w, "boot", &[("dev", dev)])?;
        }
    }
    Ok(())
}

/// One serial port, which is also the console; libvirt's virtlogd copies
/// its output to `log`.
fn write_console(w: &mut Xml, log: Option<&str>) -> io::Result<()> {
    element(w, "serial", &[("type", "pty")], |w| {
        if let Some(log) = log {
            empty(w, "log", &[("file", log), ("append", "on")])?;
        }
        empty(w, "target", &[("port", "0")])
    })?;
    element(w, "console", &[("type", "pty")], |w| {
        empty(w, "target", &[("type", "serial"), ("port", "0")])
    })
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
    /// Marked a template in hostbus's metadata ([`template_metadata`]).
    pub template: bool,
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
        template: child(root, "metadata").is_some_and(|m| {
            m.children()
                .filter(|c| c.tag_name().namespace() == Some(HOSTBUS_NS))
                .any(|c| c.has_tag_name((HOSTBUS_NS, "vm")) && child(c, "template").is_some())
        }),
    })
}

// ---------------------------------------------------------------- metadata

/// The XML namespace of hostbus's own element in a domain's `<metadata>`,
/// which libvirt keeps in the definition (so it survives agent restarts)
/// and never interprets.
pub(crate) const HOSTBUS_NS: &str = "urn:hostbus:vm:1";

/// The prefix libvirt writes hostbus's metadata element with.
pub(crate) const HOSTBUS_PREFIX: &str = "hostbus";

/// hostbus's metadata element of a template: `<vm><template/></vm>`, which
/// libvirt stores as `<hostbus:vm xmlns:hostbus="urn:hostbus:vm:1">`.
pub(crate) fn template_metadata() -> String {
    document(|w| element(w, "vm", &[], |w| empty(w, "template", &[])))
}

// ---------------------------------------------------------------- clones

/// What a clone changes in its source's definition.
pub(crate) struct CloneXml<'a> {
    pub name: &'a str,
    pub uuid: Uuid,
    /// The MAC of each NIC, in order.
    pub macs: Vec<String>,
    /// The new source of each disk, in order; `None`: the disk keeps its
    /// source (a CD-ROM, a read-only disk).
    pub disks: Vec<Option<(DiskSrc, DiskFormat)>>,
    /// The console log file, when the source has one.
    pub console_log: Option<String>,
}

/// The definition of a clone of the domain `source` (its inactive XML):
/// the same, copied event by event, with `clone`'s name, uuid, MACs, disk
/// sources and console log, and without hostbus's metadata (a clone of a
/// template is an ordinary VM).
pub(crate) fn clone_domain(source: &str, clone: &CloneXml<'_>) -> Result<String, Error> {
    let uuid = clone.uuid.to_string();
    let mut disk = 0usize;
    let mut nic = 0usize;
    // The disk being copied, when its source is replaced.
    let mut replacing: Option<&(DiskSrc, DiskFormat)> = None;
    // Depth of an element being left out (its events are dropped).
    let mut skipping = 0usize;
    rewrite(source, |w, event, around| {
        if skipping > 0 {
            match &event {
                Event::Start(_) => skipping += 1,
                Event::End(_) => skipping -= 1,
                _ => {}
            }
            return Ok(());
        }
        let in_disk = around.is(&["domain", "devices", "disk"]);
        match &event {
            Event::Text(_) if around.is(&["domain", "name"]) => {
                return w.write_event(Event::Text(BytesText::new(clone.name)));
            }
            Event::Text(_) if around.is(&["domain", "uuid"]) => {
                return w.write_event(Event::Text(BytesText::new(&uuid)));
            }
            Event::Start(e) | Event::Empty(e)
                if around.is(&["domain", "metadata"])
                    && e.attributes()
                        .flatten()
                        .any(|a| a.value.as_ref() == HOSTBUS_NS.as_bytes()) =>
            {
                skipping = usize::from(matches!(event, Event::Start(_)));
                return Ok(());
            }
            Event::Start(e) | Event::Empty(e)
                if around.is(&["domain", "devices"]) && is(e.name(), "disk") =>
            {
                replacing = clone.disks.get(disk).and_then(Option::as_ref);
                disk += 1;
                if let Some((src, _)) = replacing {
                    let (kind, _) = src.attributes();
                    let start = with_attribute(e, "type", kind);
                    return w.write_event(match event {
                        Event::Start(_) => Event::Start(start),
                        _ => Event::Empty(start),
                    });
                }
            }
            Event::Start(e) | Event::Empty(e) if in_disk => {
                let Some((src, format)) = replacing else {
                    return w.write_event(event);
                };
                if is(e.name(), "source") {
                    skipping = usize::from(matches!(event, Event::Start(_)));
                    let (_, attributes) = src.attributes();
                    return empty(w, "source", &attributes);
                }
                // The copy's own chain is libvirt's to find, not the source's.
                if is(e.name(), "backingStore") {
                    skipping = usize::from(matches!(event, Event::Start(_)));
                    return Ok(());
                }
                if is(e.name(), "driver") {
                    let driver = with_attribute(e, "type", format.as_str());
                    return w.write_event(match event {
                        Event::Start(_) => Event::Start(driver),
                        _ => Event::Empty(driver),
                    });
                }
            }
            Event::Empty(e)
                if around.is(&["domain", "devices", "interface"]) && is(e.name(), "mac") =>
            {
                if let Some(mac) = clone.macs.get(nic) {
                    nic += 1;
                    return w.write_event(Event::Empty(with_attribute(e, "address", mac)));
                }
            }
            Event::Empty(e)
                if around.is(&["domain", "devices", "serial"]) && is(e.name(), "log") =>
            {
                if let Some(log) = &clone.console_log {
                    return w.write_event(Event::Empty(with_attribute(e, "file", log)));
                }
            }
            _ => {}
        }
        w.write_event(event)
    })
}

/// `e` with attribute `name` set to `value` (in its place, or last).
fn with_attribute(e: &BytesStart<'_>, name: &str, value: &str) -> BytesStart<'static> {
    let tag = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    let mut out = BytesStart::new(tag);
    let mut set = false;
    for a in e.attributes().flatten() {
        if a.key.as_ref() == name.as_bytes() {
            out.push_attribute((name, value));
            set = true;
        } else {
            out.push_attribute(a);
        }
    }
    if !set {
        out.push_attribute((name, value));
    }
    out
}

/// The domain definition with `device` added to its devices: before
/// `</devices>`, or in a `<devices>` element of its own where there was
/// none or an empty one.
pub(crate) fn add_device(domain: &str, device: &Device<'_>) -> Result<String, Error> {
    let mut added = false;
    let changed = rewrite(domain, |w, event, around| {
        match &event {
            Event::End(e) if !added && is(e.name(), "devices") && around.is(&["domain"]) => {
                added = true;
                device.write(w)?;
            }
            Event::Empty(e) if !added && is(e.name(), "devices") && around.is(&["domain"]) => {
                added = true;
                return element(w, "devices", &[], |w| device.write(w));
            }
            Event::End(e) if !added && is(e.name(), "domain") && around.is(&[]) => {
                added = true;
                element(w, "devices", &[], |w| device.write(w))?;
            }
            _ => {}
        }
        w.write_event(event)
    })?;
    if !added {
        return Err(Error::internal("domain XML without a closing tag"));
    }
    Ok(changed)
}

/// The domain definition without the first `tag` device (`disk` or
/// `interface`) for which `matches` holds, or `None` when there is none.
pub(crate) fn remove_device(
    domain: &str,
    tag: &str,
    matches: impl Fn(Node<'_, '_>) -> bool,
) -> Result<Option<String>, Error> {
    let Some(index) = device_index(domain, tag, matches)? else {
        return Ok(None);
    };
    // The `tag` devices met so far, and whether the events are the
    // removed device's.
    let mut seen = 0;
    let mut removing = false;
    let changed = rewrite(domain, |w, event, around| {
        let device = around.is(&["domain", "devices"]);
        match &event {
            Event::Start(e) | Event::Empty(e) if device && is(e.name(), tag) => {
                seen += 1;
                if seen - 1 == index {
                    removing = matches!(event, Event::Start(_));
                    return Ok(());
                }
            }
            Event::End(_) if removing && device => {
                removing = false;
                return Ok(());
            }
            _ if removing => return Ok(()),
            _ => {}
        }
        w.write_event(event)
    })?;
    Ok(Some(changed))
}

/// Whether the domain definition has a `tag` device for which `matches`
/// holds.
pub(crate) fn has_device(
    domain: &str,
    tag: &str,
    matches: impl Fn(Node<'_, '_>) -> bool,
) -> Result<bool, Error> {
    Ok(device_index(domain, tag, matches)?.is_some())
}

/// Which of the domain's `tag` devices is the first for which `matches`
/// holds, counting from 0.
fn device_index(
    domain: &str,
    tag: &str,
    matches: impl Fn(Node<'_, '_>) -> bool,
) -> Result<Option<usize>, Error> {
    let doc = parse(domain)?;
    let Some(devices) = child(doc.root_element(), "devices") else {
        return Ok(None);
    };
    Ok(devices
        .children()
        .filter(|c| c.has_tag_name(tag))
        .position(matches))
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
    document(|w| {
        element(w, "domainsnapshot", &[], |w| {
            text(w, "name", &[], name)?;
            text(w, "description", &[], description)
        })
    })
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
