//! `vm.clone` and `vm.set_template`: a new VM from a halted one, its disks
//! copied (full) or overlaid (linked), and the mark that makes a VM a
//! template (kept in hostbus's own element of the domain's `<metadata>`).

use hostbus_protocol::commands::*;
use hostbus_protocol::types::{DiskDevice, DiskFormat, VmOperation, VmRecord, VolumeSpec};
use hostbus_protocol::{Error, ErrorCode};
use uuid::{Builder, Uuid};
use virt::connect::Connect;
use virt::storage_vol::StorageVol;
use virt::sys;

use super::{mac_of, new_volume_name, VmResult, VolExt};
use crate::errors::{already_exists, Subject};
use crate::inner::Inner;
use crate::tasks::Progress;
use crate::xml::{self, CloneXml, DiskSrc};

/// One disk of the source that a clone copies, and where its copy goes.
pub(crate) struct ClonedDisk {
    /// Its index among the source's disks.
    index: usize,
    source: StorageVol,
    source_pool: String,
    source_format: DiskFormat,
    source_path: String,
    capacity_bytes: u64,
    /// The pool and name of the copy.
    pub(crate) pool: String,
    pub(crate) name: String,
    /// The copy's format: the source's for a full copy, qcow2 for an overlay.
    format: DiskFormat,
}

/// The uuid of the VM that command `id` clones: the same for every run of
/// the command, so a re-run after a crash names the VM the first run made.
pub(crate) fn clone_uuid(id: Uuid) -> Uuid {
    let mut b = *id.as_bytes();
    b[0] ^= 0xc1;
    b[1] ^= 0x0e;
    Builder::from_random_bytes(b).into_uuid()
}

/// The MAC of NIC `index` of the VM that command `id` clones, derived like
/// `vm.attach_nic`'s ([`mac_of`]) so a re-run gives the same MACs.
fn clone_mac(id: Uuid, index: usize) -> String {
    mac_of(Uuid::from_u128(id.as_u128().wrapping_add(index as u128)))
}

fn not_clonable(target: &str, reason: &str) -> Error {
    Error::new(
        ErrorCode::OperationNotSupported,
        [
            ("operation", "vm.clone".to_owned()),
            ("reason", format!("disk {target} {reason}")),
        ],
        format!(
            "cannot clone disk {target}: it {reason}; only volumes of a storage pool are copied"
        ),
    )
}

impl Inner {
    /// The disks a clone of the VM (its inactive definition `desc`) named
    /// `r.name` copies, and where each copy goes. CD-ROMs and read-only
    /// disks are shared, not copied; a disk outside every storage pool is
    /// refused (hostbus creates and removes files only through pools).
    pub(crate) fn clone_plan(
        &self,
        conn: &Connect,
        desc: &str,
        r: &VmCloneRequest,
    ) -> Result<Vec<ClonedDisk>, Error> {
        let facts = xml::parse_domain(desc)?;
        let mut out = Vec::new();
        for (index, d) in facts.disks.iter().enumerate() {
            if d.read_only || d.device != DiskDevice::Disk {
                continue;
            }
            let vol = match (&d.volume, &d.source_path) {
                (Some(v), _) => self.lookup_volume(conn, &v.pool, &v.volume)?,
                (None, Some(p)) => conn
                    .lookup_storage_vol_by_path(p)
                    .map_err(|_| not_clonable(&d.target, "is a path outside every storage pool"))?,
                (None, None) => return Err(not_clonable(&d.target, "has no source")),
            };
            let source_pool = self.lv(
                &Subject::vm(&facts.name, "clone"),
                vol.get_pool_name_lossy(),
            )?;
            let rec = self.volume_raw(&source_pool, &vol)?;
            let format = if r.linked {
                DiskFormat::Qcow2
            } else {
                rec.format
            };
            let pool = match (&r.pool, r.linked) {
                (Some(p), false) => p.clone(),
                _ => source_pool.clone(),
            };
            out.push(ClonedDisk {
                index,
                source: vol,
                source_pool,
                source_format: rec.format,
                source_path: rec.path,
                capacity_bytes: rec.capacity_bytes,
                name: new_volume_name(&r.name, &d.target, Some(format)),
                pool,
                format,
            });
        }
        Ok(out)
    }

    /// `vm.clone`: checks everything first (the source halted, the name
    /// and every new volume free), then one step per disk and one for the
    /// definition, which is last: a clone that is defined is whole. A
    /// failure or a cancel before the definition removes the volumes made.
    pub(crate) fn vm_clone(&self, r: VmCloneRequest, progress: &Progress, id: Uuid) -> VmResult {
        let (conn, dom, source) = self.prepare(r.source, VmOperation::Clone)?;
        if conn.lookup_domain_by_name(&r.name).is_ok() {
            return Err(already_exists("vm", &r.name));
        }
        let uuid = clone_uuid(id);
        if conn.lookup_domain_by_uuid_string(&uuid.to_string()).is_ok() {
            return Err(already_exists("vm", &uuid.to_string()));
        }
        let _op = self.begin_op(r.source, id, VmOperation::Clone);
        let subject = Subject::vm(r.source, "clone");
        let desc = self.lv(&subject, dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE))?;
        let plan = self.clone_plan(&conn, &desc, &r)?;
        for c in &plan {
            let p = self.running_pool(&conn, &c.pool, "vm.clone")?;
            if p.lookup_storage_vol_by_name(&c.name).is_ok() {
                return Err(already_exists("volume", &format!("{}/{}", c.pool, c.name)));
            }
            self.check_creatable(&conn, "vm.clone", c.format)?;
        }
        let total = plan.len() + 1;
        let mut created = Vec::new();
        let disks = xml::parse_domain(&desc)?.disks.len();
        let mut sources: Vec<_> = (0..disks).map(|_| None).collect();
        for (i, c) in plan.iter().enumerate() {
            match progress
                .step(i, total)
                .and_then(|()| self.clone_disk(&conn, c, r.linked))
            {
                Ok(v) => created.push(v),
                Err(e) => {
                    self.rollback_volumes(created);
                    return Err(e);
                }
            }
            sources[c.index] = Some((
                DiskSrc::Volume {
                    pool: c.pool.clone(),
                    volume: c.name.clone(),
                },
                c.format,
            ));
        }
        if let Err(e) = progress.step(plan.len(), total) {
            self.rollback_volumes(created);
            return Err(e);
        }
        let macs = (0..source.nics.len()).map(|i| clone_mac(id, i)).collect();
        let console_log = source
            .console
            .as_ref()
            .and_then(|c| c.log_path.as_deref())
            .map(
                |log| match log.strip_suffix(&format!("{}-serial0.log", source.name)) {
                    Some(dir) => format!("{dir}{}-serial0.log", r.name),
                    None => format!("{log}.{}", r.name),
                },
            );
        let xml = xml::clone_domain(
            &desc,
            &CloneXml {
                name: &r.name,
                uuid,
                macs,
                disks: sources,
                console_log,
            },
        )?;
        let new = match self.lv(&Subject::vm(&r.name, "clone"), conn.define_domain_xml(&xml)) {
            Ok(d) => d,
            Err(e) => {
                self.rollback_volumes(created);
                return Err(e);
            }
        };
        for c in &plan {
            let _ = self.volume_get(&c.pool, &c.name);
        }
        tracing::info!(vm = %r.name, %uuid, source = %source.name, linked = r.linked, "cloned vm");
        let rec = self.vm_record(&new)?;
        progress.took_effect(total, total);
        Ok(rec)
    }

    /// Makes one disk's copy: a full copy of its volume, or a qcow2
    /// overlay whose backing file is the volume.
    fn clone_disk(
        &self,
        conn: &Connect,
        c: &ClonedDisk,
        linked: bool,
    ) -> Result<StorageVol, Error> {
        let p = self.running_pool(conn, &c.pool, "vm.clone")?;
        let spec = VolumeSpec {
            name: c.name.clone(),
            capacity_bytes: c.capacity_bytes,
            allocation_bytes: 0,
            format: c.format,
        };
        let subject = Subject::volume(&c.pool, &c.name);
        let v = if linked {
            let overlay = xml::overlay_xml(&spec, &c.source_path, c.source_format);
            self.lv(&subject, StorageVol::create_xml(&p, &overlay, 0))?
        } else {
            self.lv(
                &subject,
                StorageVol::create_xml_from(&p, &xml::volume_xml(&spec), &c.source, 0),
            )?
        };
        tracing::debug!(pool = %c.pool, volume = %c.name, source = %format!("{}/{}", c.source_pool, c.source.name().unwrap_or_default()), linked, "made a clone's disk");
        Ok(v)
    }

    /// An interrupted `vm.clone` may have left volumes without the VM (the
    /// definition is its last step, and libvirt makes it at once: a clone
    /// that is defined is whole). If the VM does not exist, the volumes
    /// its plan names are removed so that the re-run starts clean and
    /// finishes the clone; if it does, the re-run finds it and is answered
    /// with it. The first run checked that none of these names existed
    /// before it made any, so what is removed is what it made.
    pub(crate) fn clean_cloned_volumes(&self, r: &VmCloneRequest) {
        if self.vm_get_by_name(&r.name).is_ok() {
            return;
        }
        let plan = self.conn().and_then(|conn| {
            let dom = self.lookup_vm(&conn, r.source)?;
            let desc = self.lv(
                &Subject::vm(r.source, "clone"),
                dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE),
            )?;
            self.clone_plan(&conn, &desc, r)
        });
        let plan = match plan {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(vm = %r.name, error = %e, "cannot tell what an interrupted vm.clone left");
                return;
            }
        };
        for c in plan {
            self.remove_left_volume(&c.pool, &c.name, "vm.clone");
        }
    }

    /// `vm.set_template`: a halted VM marked (or unmarked) as a template
    /// in hostbus's metadata element of its definition. A template does
    /// not start with its host either.
    pub(crate) fn vm_set_template(&self, r: VmSetTemplateRequest, id: Uuid) -> VmResult {
        let (_conn, dom, _) = self.prepare(r.uuid, VmOperation::SetTemplate)?;
        let _op = self.begin_op(r.uuid, id, VmOperation::SetTemplate);
        let subject = Subject::vm(r.uuid, "set_template");
        let kind = sys::VIR_DOMAIN_METADATA_ELEMENT as i32;
        let flags = sys::VIR_DOMAIN_AFFECT_CONFIG;
        if r.template {
            self.lv(&subject, dom.set_autostart(false).map(drop))?;
            let element = xml::template_metadata();
            self.lv(
                &subject,
                dom.set_metadata(
                    kind,
                    Some(&element),
                    Some(xml::HOSTBUS_PREFIX),
                    Some(xml::HOSTBUS_NS),
                    flags,
                ),
            )?;
        } else {
            self.lv(
                &subject,
                dom.set_metadata(kind, None, None, Some(xml::HOSTBUS_NS), flags),
            )?;
        }
        tracing::info!(uuid = %r.uuid, template = r.template, "set vm template mark");
        self.vm_record(&dom)
    }
}

/// `VM_IS_TEMPLATE` unless `vm` is an ordinary VM.
pub(crate) fn require_not_template(vm: &VmRecord, op: VmOperation) -> Result<(), Error> {
    if !vm.template {
        return Ok(());
    }
    Err(Error::new(
        ErrorCode::VmIsTemplate,
        [
            ("vm", vm.uuid.to_string()),
            ("operation", op.as_str().to_owned()),
        ],
        format!(
            "vm {} is a template: it is cloned, not run ({op} refused; vm.set_template false makes it an ordinary vm)",
            vm.name
        ),
    ))
}
