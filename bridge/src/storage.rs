//! Storage pools and volumes.

use hostbus_protocol::commands::*;
use hostbus_protocol::types::{
    ObjectClass, PoolKind, PoolRecord, PoolSpec, PoolState, VolumeRecord, VolumeSpec,
};
use hostbus_protocol::{Error, ErrorCode, ValidationError};
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::sys;

use crate::errors::Subject;
use crate::errors::{already_exists, state_error};
use crate::inner::{read_all, uuid_of, Inner};
use crate::tasks::Progress;
use crate::xml;

fn pool_state(raw: u32) -> PoolState {
    match raw {
        0 => PoolState::Inactive,
        1 => PoolState::Building,
        2 => PoolState::Running,
        3 => PoolState::Degraded,
        4 => PoolState::Inaccessible,
        _ => PoolState::Unknown,
    }
}

/// A VM disk backed by a volume.
pub(crate) struct VolumeUser {
    pub uuid: Uuid,
    pub domain: Domain,
    /// The disk's guest target.
    pub target: String,
    /// Running or paused: QEMU holds the image open.
    pub active: bool,
    /// The guest cannot write it.
    pub read_only: bool,
}

fn volume_in_use(pool: &str, volume: &str, op: &str, users: &[&VolumeUser]) -> Error {
    let vms: Vec<String> = users.iter().map(|u| u.uuid.to_string()).collect();
    Error::new(
        ErrorCode::VolumeInUse,
        [
            ("pool", pool.to_owned()),
            ("volume", volume.to_owned()),
            ("vms", vms.join(",")),
        ],
        format!(
            "volume {pool}/{volume} backs a disk of vm {}; {op} is refused while it does",
            vms.join(", ")
        ),
    )
}

fn pool_bad_state(name: &str, op: &str, current: PoolState) -> Error {
    state_error(ErrorCode::PoolBadState, "pool", name, op, current.as_str())
}

impl Inner {
    pub(crate) fn lookup_pool(&self, conn: &Connect, name: &str) -> Result<StoragePool, Error> {
        self.lv(
            &Subject::pool(name, "lookup"),
            conn.lookup_storage_pool_by_name(name),
        )
    }

    pub(crate) fn lookup_volume(
        &self,
        conn: &Connect,
        pool: &str,
        name: &str,
    ) -> Result<StorageVol, Error> {
        let p = self.lookup_pool(conn, pool)?;
        let rec = self.pool_record(&p)?;
        if rec.state != PoolState::Running {
            return Err(pool_bad_state(pool, "volume lookup", rec.state));
        }
        self.lv(
            &Subject::volume(pool, name),
            p.lookup_storage_vol_by_name(name),
        )
    }

    fn pool_raw(&self, p: &StoragePool) -> Result<PoolRecord, Error> {
        let name = p.name().unwrap_or_default();
        let subject = Subject::pool(&name, "get");
        let info = self.lv(&subject, p.info())?;
        let facts = xml::parse_pool(&self.lv(&subject, p.xml_desc(0))?)?;
        let state = pool_state(info.state);
        Ok(PoolRecord {
            uuid: uuid_of(p.uuid_string()),
            kind: facts.kind,
            state,
            target_path: facts.target_path,
            capacity_bytes: info.capacity,
            allocation_bytes: info.allocation,
            available_bytes: info.available,
            autostart: p.autostart().unwrap_or(false),
            persistent: p.is_persistent().unwrap_or(true),
            volumes: if state == PoolState::Running {
                p.num_of_volumes().unwrap_or(0)
            } else {
                0
            },
            generation: 0,
            name,
        })
    }

    pub(crate) fn pool_record(&self, p: &StoragePool) -> Result<PoolRecord, Error> {
        let rec = self.pool_raw(p)?;
        let id = rec.name.clone();
        Ok(self.observed(&id, rec, None))
    }

    pub(crate) fn volume_raw(&self, pool: &str, v: &StorageVol) -> Result<VolumeRecord, Error> {
        let name = v.name().unwrap_or_default();
        let subject = Subject::volume(pool, &name);
        let info = self.lv(&subject, v.info())?;
        let desc = self.lv(&subject, v.xml_desc(0))?;
        Ok(VolumeRecord {
            pool: pool.to_owned(),
            key: v.key().unwrap_or_default(),
            path: v.path().unwrap_or_default(),
            format: xml::parse_volume_format(&desc)?,
            capacity_bytes: info.capacity,
            allocation_bytes: info.allocation,
            generation: 0,
            backing_path: xml::parse_volume_backing(&desc)?,
            name,
        })
    }

    pub(crate) fn volume_record(&self, pool: &str, v: &StorageVol) -> Result<VolumeRecord, Error> {
        let rec = self.volume_raw(pool, v)?;
        let id = format!("{pool}/{}", rec.name);
        Ok(self.observed(&id, rec, None))
    }

    pub(crate) fn volume_gone(&self, pool: &str, name: &str) {
        self.gone(ObjectClass::Volume, &format!("{pool}/{name}"));
    }

    pub(crate) fn all_pools(
        &self,
        conn: &Connect,
    ) -> Result<Vec<(StoragePool, PoolRecord)>, Error> {
        let pools = self.lv(&Subject::Host, conn.list_all_storage_pools(0));
        let mut out = read_all(pools, ErrorCode::PoolNotFound, |p| {
            self.pool_record(&p).map(|r| (p, r))
        })?;
        out.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        Ok(out)
    }

    /// Observes every volume of a running pool and notices volumes that are gone.
    pub(crate) fn pool_volumes(
        &self,
        p: &StoragePool,
        pool: &str,
    ) -> Result<Vec<VolumeRecord>, Error> {
        let vols = self.lv(&Subject::pool(pool, "volume.list"), p.list_all_volumes(0));
        let mut out = read_all(vols, ErrorCode::VolumeNotFound, |v| {
            self.volume_record(pool, &v)
        })?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        self.gone_under(ObjectClass::Volume, &format!("{pool}/"), |name| {
            out.iter().any(|v| v.name == name)
        });
        Ok(out)
    }

    pub(crate) fn refresh_pool(&self, name: &str) -> Result<(), Error> {
        let conn = self.conn()?;
        match conn.lookup_storage_pool_by_name(name) {
            Ok(p) => {
                let rec = self.pool_record(&p)?;
                if rec.state == PoolState::Running {
                    self.pool_volumes(&p, name)?;
                }
            }
            Err(_) => {
                self.gone(ObjectClass::Pool, name);
            }
        }
        Ok(())
    }

    pub(crate) fn pool_list(&self) -> Result<PoolListResponse, Error> {
        let conn = self.conn()?;
        Ok(PoolListResponse {
            pools: self.all_pools(&conn)?.into_iter().map(|(_, r)| r).collect(),
        })
    }

    pub(crate) fn pool_get(&self, name: &str) -> Result<PoolRecord, Error> {
        let conn = self.conn()?;
        let p = self.lookup_pool(&conn, name)?;
        self.pool_record(&p)
    }

    pub(crate) fn pool_define(&self, r: PoolDefineRequest) -> Result<PoolRecord, Error> {
        let spec = r.spec;
        let conn = self.conn()?;
        if conn.lookup_storage_pool_by_name(&spec.name).is_ok() {
            return Err(already_exists("pool", &spec.name));
        }
        let xml = xml::pool_xml(&spec)?;
        let subject = Subject::pool(&spec.name, "define");
        let defined = conn.define_storage_pool_xml(&xml, 0);
        if let Some(e) = defined
            .as_ref()
            .err()
            .and_then(|e| source_conflict(&spec, e))
        {
            return Err(e);
        }
        let p = self.lv(&subject, defined)?;
        if spec.kind == PoolKind::Dir {
            // Creates the target directory on real hosts; drivers without
            // build support (the test driver) need none.
            if let Err(e) = p.build(0) {
                tracing::debug!(pool = %spec.name, error = %e, "pool build skipped");
            }
        }
        if spec.autostart {
            self.lv(&subject, p.set_autostart(true).map(|_| ()))?;
            self.lv(&subject, p.create(0).map(|_| ()))?;
        }
        tracing::info!(pool = %spec.name, "defined pool");
        self.pool_record(&p)
    }

    fn pool_op(
        &self,
        name: &str,
        op: &'static str,
        need: PoolState,
        act: impl FnOnce(&StoragePool) -> Result<(), virt::error::Error>,
    ) -> Result<(StoragePool, PoolRecord), Error> {
        let conn = self.conn()?;
        let p = self.lookup_pool(&conn, name)?;
        let rec = self.pool_record(&p)?;
        if rec.state != need {
            return Err(pool_bad_state(name, op, rec.state));
        }
        self.lv(&Subject::pool(name, op), act(&p))?;
        let rec = self.pool_record(&p)?;
        Ok((p, rec))
    }

    pub(crate) fn pool_start(&self, name: &str) -> Result<PoolRecord, Error> {
        self.pool_op_scan(name, "pool.start", PoolState::Inactive, |p| {
            p.create(0).map(|_| ())
        })
    }

    pub(crate) fn pool_stop(&self, name: &str) -> Result<PoolRecord, Error> {
        Ok(self
            .pool_op(name, "pool.stop", PoolState::Running, |p| p.destroy())?
            .1)
    }

    pub(crate) fn pool_refresh(&self, name: &str) -> Result<PoolRecord, Error> {
        self.pool_op_scan(name, "pool.refresh", PoolState::Running, |p| {
            p.refresh(0).map(|_| ())
        })
    }

    /// A [`pool_op`](Self::pool_op) after which the pool's volumes are
    /// observed (they appear when it starts or refreshes).
    fn pool_op_scan(
        &self,
        name: &str,
        op: &'static str,
        need: PoolState,
        act: impl FnOnce(&StoragePool) -> Result<(), virt::error::Error>,
    ) -> Result<PoolRecord, Error> {
        let (p, rec) = self.pool_op(name, op, need, act)?;
        self.pool_volumes(&p, name)?;
        Ok(rec)
    }

    pub(crate) fn pool_undefine(&self, name: &str) -> Result<Empty, Error> {
        let conn = self.conn()?;
        let p = self.lookup_pool(&conn, name)?;
        let rec = self.pool_record(&p)?;
        if rec.state != PoolState::Inactive {
            return Err(pool_bad_state(name, "pool.undefine", rec.state));
        }
        self.lv(&Subject::pool(name, "pool.undefine"), p.undefine())?;
        self.gone(ObjectClass::Pool, name);
        tracing::info!(pool = %name, "undefined pool");
        Ok(Empty {})
    }

    pub(crate) fn running_pool(
        &self,
        conn: &Connect,
        pool: &str,
        op: &str,
    ) -> Result<StoragePool, Error> {
        let p = self.lookup_pool(conn, pool)?;
        let rec = self.pool_record(&p)?;
        if rec.state != PoolState::Running {
            return Err(pool_bad_state(pool, op, rec.state));
        }
        Ok(p)
    }

    pub(crate) fn volume_list(&self, pool: &str) -> Result<VolumeListResponse, Error> {
        let conn = self.conn()?;
        let p = self.running_pool(&conn, pool, "volume.list")?;
        Ok(VolumeListResponse {
            volumes: self.pool_volumes(&p, pool)?,
        })
    }

    pub(crate) fn volume_get(&self, pool: &str, name: &str) -> Result<VolumeRecord, Error> {
        let conn = self.conn()?;
        let v = self.lookup_volume(&conn, pool, name)?;
        self.volume_record(pool, &v)
    }

    /// Creates a volume without observing it (callers observe).
    pub(crate) fn create_volume_raw(
        &self,
        conn: &Connect,
        pool: &str,
        spec: &VolumeSpec,
    ) -> Result<StorageVol, Error> {
        let p = self.running_pool(conn, pool, "volume.create")?;
        if p.lookup_storage_vol_by_name(&spec.name).is_ok() {
            return Err(already_exists("volume", &format!("{pool}/{}", spec.name)));
        }
        self.check_creatable(conn, "volume.create", spec.format)?;
        let v = self.lv(
            &Subject::volume(pool, &spec.name),
            StorageVol::create_xml(&p, &xml::volume_xml(spec), 0),
        )?;
        Ok(v)
    }

    pub(crate) fn volume_create(
        &self,
        pool: &str,
        spec: &VolumeSpec,
        progress: &Progress,
    ) -> Result<VolumeRecord, Error> {
        let conn = self.conn()?;
        progress.step(0, 1)?;
        let v = self.create_volume_raw(&conn, pool, spec)?;
        let rec = self.volume_record(pool, &v)?;
        let _ = self.pool_get(pool);
        tracing::info!(pool, volume = %spec.name, "created volume");
        progress.took_effect(1, 1);
        Ok(rec)
    }

    /// The host path of a volume, when its pool is running and has it.
    pub(crate) fn volume_path(&self, pool: &str, volume: &str) -> Option<String> {
        let conn = self.conn().ok()?;
        conn.lookup_storage_pool_by_name(pool)
            .ok()?
            .lookup_storage_vol_by_name(volume)
            .ok()?
            .path()
            .ok()
    }

    /// Every VM disk backed by volume `pool/name` (at `path`), by pool and
    /// volume name or by path, in the VMs' live definitions.
    /// The volumes (`pool/name`), in every running pool, whose backing
    /// file is `path`: qcow2 overlays such as a linked clone's disks.
    fn overlays_of(&self, conn: &Connect, path: &str) -> Result<Vec<String>, Error> {
        if path.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (p, rec) in self.all_pools(conn)? {
            if rec.state != PoolState::Running {
                continue;
            }
            for v in self.pool_volumes(&p, &rec.name)? {
                if v.backing_path.as_deref() == Some(path) {
                    out.push(format!("{}/{}", rec.name, v.name));
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn volume_users(
        &self,
        conn: &Connect,
        pool: &str,
        name: &str,
        path: &str,
    ) -> Result<Vec<VolumeUser>, Error> {
        let doms = self.lv(&Subject::Host, conn.list_all_domains(0))?;
        let mut out = Vec::new();
        for dom in doms {
            let Ok(desc) = dom.xml_desc(0) else { continue };
            let facts = xml::parse_domain(&desc)?;
            let active = dom.is_active().unwrap_or(false);
            for d in facts.disks {
                let by_ref = d
                    .volume
                    .as_ref()
                    .is_some_and(|v| v.pool == pool && v.volume == name);
                if by_ref || d.source_path.as_deref() == Some(path) {
                    out.push(VolumeUser {
                        uuid: facts.uuid,
                        domain: dom.clone(),
                        target: d.target,
                        active,
                        read_only: d.read_only,
                    });
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn volume_delete(&self, pool: &str, name: &str) -> Result<Empty, Error> {
        let conn = self.conn()?;
        let v = self.lookup_volume(&conn, pool, name)?;
        let path = v.path().unwrap_or_default();
        let users = self.volume_users(&conn, pool, name, &path)?;
        if !users.is_empty() {
            // A running VM would keep writing a deleted file; a halted one
            // could not start again.
            return Err(volume_in_use(
                pool,
                name,
                "volume.delete",
                &users.iter().collect::<Vec<_>>(),
            ));
        }
        let overlays = self.overlays_of(&conn, &path)?;
        if !overlays.is_empty() {
            // A linked clone's disk reads through its backing file: gone,
            // the clone's disk is broken.
            return Err(Error::new(
                ErrorCode::VolumeInUse,
                [
                    ("pool", pool.to_owned()),
                    ("volume", name.to_owned()),
                    ("vms", String::new()),
                ],
                format!(
                    "volume {pool}/{name} is the backing file of {} (linked clones' disks); \
                     volume.delete is refused while they exist",
                    overlays.join(", ")
                ),
            ));
        }
        self.lv(&Subject::volume(pool, name), v.delete(0))?;
        self.volume_gone(pool, name);
        let _ = self.pool_get(pool);
        tracing::info!(pool, volume = %name, "deleted volume");
        Ok(Empty {})
    }

    pub(crate) fn volume_resize(&self, r: VolumeResizeRequest) -> Result<VolumeRecord, Error> {
        let conn = self.conn()?;
        let v = self.lookup_volume(&conn, &r.pool, &r.name)?;
        let current = self.volume_raw(&r.pool, &v)?.capacity_bytes;
        if r.capacity_bytes < current {
            return Err(ValidationError::new(
                "capacity_bytes",
                format_args!("is smaller than the current {current}; shrinking is refused"),
            )
            .into());
        }
        let path = v.path().unwrap_or_default();
        let users = self.volume_users(&conn, &r.pool, &r.name, &path)?;
        let active: Vec<&VolumeUser> = users.iter().filter(|u| u.active).collect();
        let subject = Subject::volume(&r.pool, &r.name);
        match active.as_slice() {
            // QEMU holds the image (and its lock): it must grow it itself,
            // and tells the guest.
            [user] => {
                self.lv(
                    &Subject::vm(user.uuid, "volume.resize"),
                    user.domain.block_resize(
                        &user.target,
                        r.capacity_bytes,
                        sys::VIR_DOMAIN_BLOCK_RESIZE_BYTES,
                    ),
                )?;
                tracing::info!(pool = %r.pool, volume = %r.name, vm = %user.uuid, "resized a volume live");
            }
            [] => self.lv(&subject, v.resize(r.capacity_bytes, 0))?,
            many => return Err(volume_in_use(&r.pool, &r.name, "volume.resize", many)),
        }
        if !active.is_empty() {
            // The pool's view of the file is refreshed from disk.
            let _ = self.lookup_pool(&conn, &r.pool).map(|p| p.refresh(0));
        }
        let v = self.lookup_volume(&conn, &r.pool, &r.name)?;
        self.volume_record(&r.pool, &v)
    }

    pub(crate) fn volume_clone(
        &self,
        r: VolumeCloneRequest,
        progress: &Progress,
    ) -> Result<VolumeRecord, Error> {
        let conn = self.conn()?;
        let p = self.running_pool(&conn, &r.pool, "volume.clone")?;
        let src = self.lookup_volume(&conn, &r.pool, &r.name)?;
        if p.lookup_storage_vol_by_name(&r.new_name).is_ok() {
            return Err(already_exists(
                "volume",
                &format!("{}/{}", r.pool, r.new_name),
            ));
        }
        let src_rec = self.volume_raw(&r.pool, &src)?;
        self.check_creatable(&conn, "volume.clone", src_rec.format)?;
        let users = self.volume_users(&conn, &r.pool, &r.name, &src_rec.path)?;
        let writers: Vec<&VolumeUser> = users.iter().filter(|u| u.active && !u.read_only).collect();
        if !writers.is_empty() {
            // QEMU holds the write lock of an image its guest writes; a copy
            // taken now would not be consistent anyway.
            return Err(volume_in_use(&r.pool, &r.name, "volume.clone", &writers));
        }
        let spec = VolumeSpec {
            name: r.new_name.clone(),
            capacity_bytes: src_rec.capacity_bytes,
            allocation_bytes: 0,
            format: src_rec.format,
        };
        progress.step(0, 1)?;
        let v = self.lv(
            &Subject::volume(&r.pool, &r.new_name),
            StorageVol::create_xml_from(&p, &xml::volume_xml(&spec), &src, 0),
        )?;
        let _ = self.pool_get(&r.pool);
        let rec = self.volume_record(&r.pool, &v)?;
        progress.took_effect(1, 1);
        Ok(rec)
    }
}

/// libvirt refuses a pool whose directory or source another pool already
/// uses as an operation failure ("Storage source conflict with pool"): it
/// is the spec that is wrong, so it is `INVALID_ARGUMENT` on the field that
/// collides (a directory pool's target path, another kind's source).
fn source_conflict(spec: &PoolSpec, e: &virt::error::Error) -> Option<Error> {
    if !e.message().contains("conflict with pool") {
        return None;
    }
    let field = if spec.kind == PoolKind::Dir {
        "spec.target_path"
    } else {
        "spec.source"
    };
    Some(Error::new(
        ErrorCode::InvalidArgument,
        [
            ("field", field.to_owned()),
            ("reason", e.message().to_owned()),
        ],
        format!(
            "another pool already uses this {}: {}",
            &field[5..],
            e.message()
        ),
    ))
}
