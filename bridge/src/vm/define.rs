//! `vm.define` and `vm.undefine`: disk resolution (existing volumes,
//! paths, new volumes), rollback, and the storage a VM owns.

use hostbus_protocol::commands::*;
use hostbus_protocol::types::{
    CpuMode, DiskDevice, DiskFormat, DiskSource, DiskSpec, NicSpec, VmOperation, VmRecord,
};
use hostbus_protocol::{Error, ErrorCode, ValidationError};
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::storage_vol::StorageVol;
use virt::sys;

use super::{new_volume_name, random_mac, VolExt};
use crate::config::DomainType;
use crate::errors::already_exists;
use crate::errors::Subject;
use crate::inner::Inner;
use crate::tasks::Progress;
use crate::xml::{self, DiskSrc, DiskXml, DomainXml, NicXml};

impl Inner {
    /// Resolves a disk spec to its source and its actual format, creating a
    /// new volume when asked (returned, for rollback). The format of an
    /// existing volume is the volume's: a spec that says otherwise is
    /// refused, since QEMU would either fail to start or show the guest the
    /// image's raw bytes. `field` names the spec in errors.
    pub(crate) fn resolve_disk(
        &self,
        conn: &Connect,
        vm_name: &str,
        d: &DiskSpec,
        field: &str,
    ) -> Result<(DiskSrc, DiskFormat, Option<StorageVol>), Error> {
        let existing = |pool: &str, volume: &str, vol: &StorageVol| -> Result<_, Error> {
            let subject = Subject::volume(pool, volume);
            let actual = xml::parse_volume_format(&self.lv(&subject, vol.xml_desc(0))?)?;
            if actual == DiskFormat::Unknown {
                return Err(ValidationError::new(
                    format!("{field}.source"),
                    format_args!("volume {pool}/{volume} has a format QEMU disks cannot use"),
                )
                .into());
            }
            if let Some(said) = d.format.filter(|f| *f != actual) {
                return Err(ValidationError::new(
                    format!("{field}.format"),
                    format_args!("is {said}, but volume {pool}/{volume} is {actual}"),
                )
                .into());
            }
            Ok((
                DiskSrc::Volume {
                    pool: pool.to_owned(),
                    volume: volume.to_owned(),
                },
                actual,
                None,
            ))
        };
        match &d.source {
            DiskSource::Path(p) => match conn.lookup_storage_vol_by_path(p) {
                // A path inside a pool is that pool's volume.
                Ok(vol) => {
                    let pool = vol.get_pool_name_lossy().unwrap_or_default();
                    let name = vol.name().unwrap_or_default();
                    existing(&pool, &name, &vol)
                }
                Err(_) => {
                    let format = d.format.ok_or_else(|| {
                        Error::from(ValidationError::new(
                            format!("{field}.format"),
                            "is required for a path outside every storage pool",
                        ))
                    })?;
                    Ok((DiskSrc::Path(p.clone()), format, None))
                }
            },
            DiskSource::Volume(v) => {
                let vol = self.lookup_volume(conn, &v.pool, &v.volume)?;
                existing(&v.pool, &v.volume, &vol)
            }
            DiskSource::NewVolume {
                pool,
                capacity_bytes,
            } => {
                let format = d.format.unwrap_or(DiskFormat::Qcow2);
                let name = new_volume_name(vm_name, &d.target, Some(format));
                let spec = hostbus_protocol::types::VolumeSpec {
                    name: name.clone(),
                    capacity_bytes: *capacity_bytes,
                    allocation_bytes: 0,
                    format,
                };
                let vol = self.create_volume_raw(conn, pool, &spec)?;
                Ok((
                    DiskSrc::Volume {
                        pool: pool.clone(),
                        volume: name,
                    },
                    format,
                    Some(vol),
                ))
            }
        }
    }

    /// The volumes `vm.undefine` removes with `remove_storage`: those of the
    /// VM's writable hard disks that no other VM uses. Read-only disks,
    /// CD-ROMs and shareable disks are shared by nature and stay.
    pub(crate) fn owned_volumes(
        &self,
        conn: &Connect,
        dom: &Domain,
        rec: &VmRecord,
    ) -> Result<Vec<StorageVol>, Error> {
        let subject = Subject::vm(rec.uuid, "undefine");
        let desc = self.lv(&subject, dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE))?;
        let shareable = xml::parse_domain(&desc)?.shareable;
        let mut out = Vec::new();
        for d in &rec.disks {
            if d.read_only || d.device != DiskDevice::Disk || shareable.contains(&d.target) {
                tracing::info!(vm = %rec.name, disk = %d.target, "keeping the image of a read-only or shared disk");
                continue;
            }
            let vol = match (&d.volume, &d.source_path) {
                (Some(v), _) => conn
                    .lookup_storage_pool_by_name(&v.pool)
                    .and_then(|p| p.lookup_storage_vol_by_name(&v.volume)),
                (None, Some(p)) => conn.lookup_storage_vol_by_path(p),
                (None, None) => continue,
            };
            let Ok(vol) = vol else { continue };
            let pool = vol.get_pool_name_lossy().unwrap_or_default();
            let name = vol.name().unwrap_or_default();
            let path = vol.path().unwrap_or_default();
            let others = self
                .volume_users(conn, &pool, &name, &path)?
                .into_iter()
                .filter(|u| u.uuid != rec.uuid)
                .count();
            if others > 0 {
                tracing::info!(vm = %rec.name, volume = %name, others, "keeping a volume other vms use");
                continue;
            }
            out.push(vol);
        }
        Ok(out)
    }

    pub(crate) fn check_networks(&self, conn: &Connect, nics: &[NicSpec]) -> Result<(), Error> {
        for n in nics {
            if let Some(net) = &n.network {
                self.lookup_network(conn, net)?;
            }
        }
        Ok(())
    }

    pub(crate) fn rollback_volumes(&self, created: Vec<StorageVol>) {
        for v in created {
            let name = v.name().unwrap_or_default();
            if let Err(e) = v.delete(0) {
                tracing::warn!(volume = %name, error = %e, "cannot roll back a volume created for a failed operation");
            }
        }
    }

    pub(crate) fn vm_define(
        &self,
        r: VmDefineRequest,
        progress: &Progress,
    ) -> Result<VmRecord, Error> {
        let spec = r.spec;
        let conn = self.conn()?;
        if conn.lookup_domain_by_name(&spec.name).is_ok() {
            return Err(already_exists("vm", &spec.name));
        }
        let uuid = spec.uuid.unwrap_or_else(Uuid::new_v4);
        if conn.lookup_domain_by_uuid_string(&uuid.to_string()).is_ok() {
            return Err(already_exists("vm", &uuid.to_string()));
        }
        let caps = self.caps_facts(&conn)?;
        let arch = spec.arch.clone().unwrap_or_else(|| {
            if caps.guest_domain_types.contains_key(&caps.arch) {
                caps.arch.clone()
            } else {
                caps.guest_domain_types
                    .keys()
                    .next()
                    .cloned()
                    .unwrap_or_default()
            }
        });
        let types = caps.guest_domain_types.get(&arch).ok_or_else(|| {
            Error::from(ValidationError::new(
                "spec.arch",
                format_args!("this host runs no {arch} guests"),
            ))
        })?;
        let domain_type = match self.config().domain_type {
            DomainType::Auto if types.iter().any(|t| t == "kvm") => "kvm",
            DomainType::Auto => types.first().map_or("qemu", String::as_str),
            wanted => {
                let t = wanted.as_str();
                if !types.iter().any(|x| x == t) {
                    return Err(Error::new(
                        ErrorCode::OperationNotSupported,
                        [
                            ("operation", "vm.define".to_owned()),
                            ("reason", format!("domain type {t} for {arch}")),
                        ],
                        format!(
                            "this host runs no {t} guests for {arch} (it offers {}); see the agent's domain_type",
                            types.join(", ")
                        ),
                    ));
                }
                t
            }
        };
        // KVM guests see a model like the host's CPU; TCG offers QEMU's
        // `max` (its default, qemu64, is too old for current distributions);
        // other drivers get what they default to.
        let cpu_mode = spec.cpu_mode.or(match domain_type {
            "kvm" => Some(CpuMode::HostModel),
            "qemu" => Some(CpuMode::Maximum),
            _ => None,
        });
        self.check_networks(&conn, &spec.nics)?;

        let new_volumes = spec
            .disks
            .iter()
            .filter(|d| matches!(d.source, DiskSource::NewVolume { .. }))
            .count();
        let total = new_volumes + 1;
        let mut created = Vec::new();
        let mut disks = Vec::new();
        for (i, d) in spec.disks.iter().enumerate() {
            let field = format!("spec.disks[{i}]");
            let step = progress
                .step(created.len(), total)
                .and_then(|()| self.resolve_disk(&conn, &spec.name, d, &field));
            match step {
                Ok((source, format, vol)) => {
                    created.extend(vol);
                    disks.push(DiskXml {
                        target: &d.target,
                        source,
                        bus: d.bus,
                        format,
                        read_only: d.read_only,
                        device: d.device,
                    });
                }
                Err(e) => {
                    self.rollback_volumes(created);
                    return Err(e);
                }
            }
        }
        if let Err(e) = progress.step(created.len(), total) {
            self.rollback_volumes(created);
            return Err(e);
        }
        let nics = spec
            .nics
            .iter()
            .map(|n| NicXml {
                network: n.network.as_deref(),
                bridge: n.bridge.as_deref(),
                mac: n.mac.clone().unwrap_or_else(random_mac),
                model: n.model,
            })
            .collect();
        let xml = xml::domain_xml(&DomainXml {
            domain_type,
            name: &spec.name,
            uuid,
            description: &spec.description,
            memory_kib: spec.memory_kib,
            max_memory_kib: spec.max_memory_kib.unwrap_or(spec.memory_kib),
            vcpus: spec.vcpus,
            max_vcpus: spec.max_vcpus.unwrap_or(spec.vcpus),
            arch: &arch,
            boot: &spec.boot,
            cpu_mode,
            console_log: self
                .config()
                .console_log_dir
                .as_ref()
                .map(|dir| format!("{}/{}-serial0.log", dir.trim_end_matches('/'), spec.name)),
            disks,
            nics,
        });
        let dom = match self.lv(
            &Subject::vm(&spec.name, "define"),
            conn.define_domain_xml(&xml),
        ) {
            Ok(d) => d,
            Err(e) => {
                self.rollback_volumes(created);
                return Err(e);
            }
        };
        if spec.autostart {
            self.lv(
                &Subject::vm(uuid, "define"),
                dom.set_autostart(true).map(|_| ()),
            )?;
        }
        for v in &created {
            if let (Ok(pool), Ok(name)) = (v.get_pool_name_lossy(), v.name()) {
                let _ = self.volume_get(&pool, &name);
            }
        }
        tracing::info!(vm = %spec.name, %uuid, "defined vm");
        self.vm_record(&dom)
    }

    pub(crate) fn vm_undefine(
        &self,
        r: VmUndefineRequest,
        progress: &Progress,
        id: Uuid,
    ) -> Result<Empty, Error> {
        let (conn, dom, rec) = self.prepare(r.uuid, VmOperation::Undefine)?;
        let _op = self.begin_op(r.uuid, id, VmOperation::Undefine);
        let volumes: Vec<StorageVol> = if r.remove_storage {
            self.owned_volumes(&conn, &dom, &rec)?
        } else {
            Vec::new()
        };
        let total = volumes.len() + 1;
        progress.step(0, total)?;
        let flags =
            sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
        self.lv(&Subject::vm(r.uuid, "undefine"), dom.undefine_flags(flags))?;
        self.vm_gone(&r.uuid.to_string());
        // Past this point the VM is gone; storage removal runs to the end.
        for (i, v) in volumes.into_iter().enumerate() {
            let pool = v.get_pool_name_lossy().unwrap_or_default();
            let name = v.name().unwrap_or_default();
            progress.fraction((i + 1) as u64, total as u64);
            if let Err(e) = v.delete(0) {
                tracing::warn!(volume = %name, error = %e, "cannot delete a volume of an undefined vm");
            }
            self.volume_gone(&pool, &name);
        }
        tracing::info!(vm = %rec.name, uuid = %r.uuid, "undefined vm");
        Ok(Empty {})
    }
}
