//! VM snapshots: records, create, revert, delete.

use hostbus_protocol::commands::*;
use hostbus_protocol::types::{
    DiskDevice, DiskFormat, ObjectClass, PowerState, SnapshotRecord, VmOperation, VmRecord,
};
use hostbus_protocol::{Error, ErrorCode};
use uuid::Uuid;
use virt::domain::Domain;
use virt::domain_snapshot::DomainSnapshot;

use super::{require, require_not_template};
use crate::errors::{already_exists, Subject};
use crate::inner::Inner;
use crate::tasks::Progress;
use crate::xml;

/// QEMU keeps a snapshot inside the VM's qcow2 images (and the memory
/// state in one of them): a VM with no writable disk, or with a writable
/// disk in another format, cannot have one. Refused here, before libvirt
/// fails in its own words.
fn internal_snapshot_possible(rec: &VmRecord) -> Result<(), Error> {
    let writable: Vec<_> = rec
        .disks
        .iter()
        .filter(|d| d.device == DiskDevice::Disk && !d.read_only)
        .collect();
    let refuse = |reason: String| {
        Error::new(
            ErrorCode::OperationNotSupported,
            [
                ("operation", "snapshot.create".to_owned()),
                ("reason", reason.clone()),
            ],
            format!("vm {} cannot have a snapshot: {reason}", rec.name),
        )
    };
    if writable.is_empty() {
        return Err(refuse(
            "it has no writable disk to hold the snapshot; internal snapshots live in qcow2 disks"
                .into(),
        ));
    }
    if let Some(d) = writable.iter().find(|d| d.format != DiskFormat::Qcow2) {
        return Err(refuse(format!(
            "disk {} is {}; internal snapshots need every writable disk in qcow2",
            d.target, d.format
        )));
    }
    Ok(())
}

impl Inner {
    pub(crate) fn snapshot_raw(
        &self,
        vm: Uuid,
        s: &DomainSnapshot,
    ) -> Result<SnapshotRecord, Error> {
        let name = s.name().unwrap_or_default();
        let facts = xml::parse_snapshot(&self.lv(&Subject::snapshot(vm, &name), s.xml_desc(0))?)?;
        Ok(SnapshotRecord {
            vm,
            name: facts.name,
            description: facts.description,
            created_at: facts.created_at_s.saturating_mul(1000),
            vm_power_state: facts.state,
            parent: facts.parent,
            current: s.is_current(0).unwrap_or(false),
            generation: 0,
        })
    }

    pub(crate) fn snapshot_record(
        &self,
        vm: Uuid,
        s: &DomainSnapshot,
    ) -> Result<SnapshotRecord, Error> {
        let rec = self.snapshot_raw(vm, s)?;
        let id = format!("{vm}/{}", rec.name);
        Ok(self.observed(&id, rec, None))
    }

    /// Observes every snapshot of a VM, noticing the ones that are gone.
    pub(crate) fn vm_snapshots(
        &self,
        vm: Uuid,
        dom: &Domain,
    ) -> Result<Vec<SnapshotRecord>, Error> {
        let snaps = self.lv(&Subject::vm(vm, "snapshot.list"), dom.list_all_snapshots(0))?;
        let mut out = Vec::new();
        for s in &snaps {
            out.push(self.snapshot_record(vm, s)?);
        }
        out.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
        self.gone_under(ObjectClass::Snapshot, &format!("{vm}/"), |name| {
            out.iter().any(|s| s.name == name)
        });
        Ok(out)
    }

    pub(crate) fn snapshot_list(&self, vm: Uuid) -> Result<SnapshotListResponse, Error> {
        let conn = self.conn()?;
        let dom = self.lookup_vm(&conn, vm)?;
        Ok(SnapshotListResponse {
            snapshots: self.vm_snapshots(vm, &dom)?,
        })
    }

    pub(crate) fn prepare_snapshot(
        &self,
        vm: Uuid,
        op: VmOperation,
    ) -> Result<(Domain, VmRecord), Error> {
        let conn = self.conn()?;
        let dom = self.lookup_vm(&conn, vm)?;
        let rec = self.vm_record(&dom)?;
        require(&rec, op)?;
        Ok((dom, rec))
    }

    pub(crate) fn snapshot_create(
        &self,
        r: SnapshotCreateRequest,
        id: Uuid,
        progress: &Progress,
    ) -> Result<SnapshotRecord, Error> {
        let (dom, rec) = self.prepare_snapshot(r.vm, VmOperation::SnapshotCreate)?;
        if Domain::lookup_snapshot_by_name(&dom, &r.name, 0).is_ok() {
            return Err(already_exists("snapshot", &format!("{}/{}", r.vm, r.name)));
        }
        if matches!(rec.domain_type.as_deref(), Some("kvm" | "qemu")) {
            internal_snapshot_possible(&rec)?;
        }
        progress.step(0, 1)?;
        let _op = self.begin_op(r.vm, id, VmOperation::SnapshotCreate);
        let snap = self.lv(
            &Subject::snapshot(r.vm, &r.name),
            dom.create_snapshot_xml(&xml::snapshot_xml(&r.name, &r.description), 0),
        )?;
        let rec = self.snapshot_record(r.vm, &snap)?;
        self.vm_snapshots(r.vm, &dom)?;
        self.vm_record(&dom)?;
        progress.took_effect(1, 1);
        Ok(rec)
    }

    pub(crate) fn snapshot_revert(&self, r: SnapshotRef, id: Uuid) -> Result<VmRecord, Error> {
        // A template is cloned, not run: reverting it to a snapshot taken
        // while it ran would start it.
        let vm = self.vm_get(r.vm)?;
        if vm.template {
            let runs = self.snapshot_list(r.vm)?.snapshots.iter().any(|s| {
                s.name == r.name
                    && matches!(s.vm_power_state, PowerState::Running | PowerState::Paused)
            });
            if runs {
                require_not_template(&vm, VmOperation::SnapshotRevert)?;
            }
        }
        self.snapshot_op(&r, id, VmOperation::SnapshotRevert, |s| s.revert(0))
    }

    pub(crate) fn snapshot_delete(&self, r: SnapshotRef, id: Uuid) -> Result<Empty, Error> {
        self.snapshot_op(&r, id, VmOperation::SnapshotDelete, |s| s.delete(0))?;
        Ok(Empty {})
    }

    /// Runs `act` on snapshot `r` as `op` and returns the VM's new record.
    fn snapshot_op(
        &self,
        r: &SnapshotRef,
        id: Uuid,
        op: VmOperation,
        act: impl FnOnce(&DomainSnapshot) -> Result<(), virt::error::Error>,
    ) -> Result<VmRecord, Error> {
        let (dom, _) = self.prepare_snapshot(r.vm, op)?;
        let subject = Subject::snapshot(r.vm, &r.name);
        let snap = self.lv(&subject, Domain::lookup_snapshot_by_name(&dom, &r.name, 0))?;
        let _op = self.begin_op(r.vm, id, op);
        self.lv(&subject, act(&snap))?;
        self.vm_snapshots(r.vm, &dom)?;
        self.vm_record(&dom)
    }
}
