//! Host facts, VM snapshots, the full inventory and reconciliation scans.

use std::collections::{BTreeMap, HashSet};

use hostbus_protocol::commands::*;
use hostbus_protocol::types::{
    Capabilities, DiskDevice, DiskFormat, HostRecord, HostStats, Inventory, ObjectClass, PoolState,
    PowerState, Record, SnapshotRecord, VmOperation, VmRecord,
};
use hostbus_protocol::{now_ms, Error, ErrorCode, COMMANDS};
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::domain_snapshot::DomainSnapshot;

use crate::errors::Subject;
use crate::vm::already_exists;
use crate::xml::{self, CapsFacts};
use crate::Inner;

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

fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

impl Inner {
    pub(crate) fn caps_facts(&self, conn: &Connect) -> Result<CapsFacts, Error> {
        xml::parse_capabilities(&self.lv(&Subject::Host, conn.capabilities())?)
    }

    pub(crate) fn ping(&self, r: Ping) -> Pong {
        Pong {
            host_id: self.config.host_id.clone(),
            time: now_ms(),
            echo: r.echo,
        }
    }

    pub(crate) fn host_info(&self) -> Result<HostRecord, Error> {
        let conn = self.conn()?;
        let h = Subject::Host;
        let node = self.lv(&h, conn.node_info())?;
        let caps = self.caps_facts(&conn)?;
        let rec = HostRecord {
            host_id: self.config.host_id.clone(),
            hostname: conn.hostname().unwrap_or_default(),
            uri: self.conn.uri().to_owned(),
            hypervisor: conn.driver_type().unwrap_or_default(),
            hypervisor_version: conn.hyp_version().map(version_string).unwrap_or_default(),
            libvirt_version: conn.lib_version().map(version_string).unwrap_or_default(),
            // libvirt's node info names the architecture in its `model`
            // (`x86_64` under QEMU); the capabilities name the CPU model.
            cpu_model: if caps.cpu_model.is_empty() {
                node.model
            } else {
                caps.cpu_model
            },
            arch: caps.arch,
            cpus: node.cpus,
            cpu_mhz: node.mhz,
            sockets: node.sockets,
            cores: node.cores,
            threads: node.threads,
            memory_kib: node.memory,
            generation: 0,
        };
        let id = rec.host_id.clone();
        Ok(
            match self.observer.observe(
                ObjectClass::Host,
                &id,
                Some(Record::Host(rec.clone())),
                None,
                self.emitting(),
            ) {
                Some(Record::Host(r)) => r,
                _ => rec,
            },
        )
    }

    pub(crate) fn capabilities(&self) -> Result<Capabilities, Error> {
        let conn = self.conn()?;
        let caps = self.caps_facts(&conn)?;
        Ok(Capabilities {
            arch: caps.arch,
            guest_domain_types: caps.guest_domain_types,
            machine_types: caps.machine_types,
            cpu_features: caps.cpu_features,
            commands: COMMANDS.iter().map(|c| c.name.to_owned()).collect(),
            live_resize: true,
            snapshots: true,
        })
    }

    pub(crate) fn host_stats(&self) -> Result<HostStats, Error> {
        let conn = self.conn()?;
        let node = self.lv(&Subject::Host, conn.node_info())?;
        let vms = self.all_vms(&conn)?;
        let active: Vec<_> = vms
            .iter()
            .filter(|v| matches!(v.power_state, PowerState::Running | PowerState::Paused))
            .collect();
        let vm_memory_kib: u64 = active.iter().map(|v| v.memory_kib).sum();
        // Drivers that cannot report free memory (the test driver) get an
        // estimate: physical memory less what active VMs hold.
        let free_kib = match conn.free_memory() {
            Ok(bytes) if bytes > 0 => bytes / 1024,
            _ => node.memory.saturating_sub(vm_memory_kib),
        };
        Ok(HostStats {
            sampled_at: now_ms(),
            memory_total_kib: node.memory,
            memory_free_kib: free_kib,
            // Drivers that keep no host CPU counters (the test driver) leave it empty.
            cpu_time_ns: crate::ffi::node_cpu_times(&conn).unwrap_or_else(|e| {
                tracing::debug!(error = %e, "no host cpu times");
                BTreeMap::new()
            }),
            vms_total: vms.len() as u32,
            vms_active: active.len() as u32,
            vm_memory_kib,
            vm_vcpus: active.iter().map(|v| v.vcpus).sum(),
        })
    }

    // ----------------------------------------------------------- snapshots

    fn snapshot_raw(&self, vm: Uuid, s: &DomainSnapshot) -> Result<SnapshotRecord, Error> {
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

    fn snapshot_record(&self, vm: Uuid, s: &DomainSnapshot) -> Result<SnapshotRecord, Error> {
        let rec = self.snapshot_raw(vm, s)?;
        let id = format!("{vm}/{}", rec.name);
        Ok(
            match self.observer.observe(
                ObjectClass::Snapshot,
                &id,
                Some(Record::Snapshot(rec.clone())),
                None,
                self.emitting(),
            ) {
                Some(Record::Snapshot(r)) => r,
                _ => rec,
            },
        )
    }

    /// Observes every snapshot of a VM, noticing the ones that are gone.
    fn vm_snapshots(&self, vm: Uuid, dom: &Domain) -> Result<Vec<SnapshotRecord>, Error> {
        let snaps = self.lv(&Subject::vm(vm, "snapshot.list"), dom.list_all_snapshots(0))?;
        let mut out = Vec::new();
        for s in &snaps {
            out.push(self.snapshot_record(vm, s)?);
        }
        out.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
        let prefix = format!("{vm}/");
        for id in self.observer.existing(ObjectClass::Snapshot) {
            if let Some(name) = id.strip_prefix(&prefix) {
                if !out.iter().any(|s| s.name == name) {
                    self.observer
                        .observe(ObjectClass::Snapshot, &id, None, None, self.emitting());
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn snapshot_list(&self, vm: Uuid) -> Result<SnapshotListResponse, Error> {
        let conn = self.conn()?;
        let dom = self.lookup_vm(&conn, vm)?;
        Ok(SnapshotListResponse {
            snapshots: self.vm_snapshots(vm, &dom)?,
        })
    }

    fn prepare_snapshot(&self, vm: Uuid, op: VmOperation) -> Result<(Domain, VmRecord), Error> {
        let conn = self.conn()?;
        let dom = self.lookup_vm(&conn, vm)?;
        let rec = self.vm_record(&dom)?;
        crate::vm::require(&rec, op)?;
        Ok((dom, rec))
    }

    pub(crate) fn snapshot_create(
        &self,
        r: SnapshotCreateRequest,
        id: Uuid,
    ) -> Result<SnapshotRecord, Error> {
        let (dom, rec) = self.prepare_snapshot(r.vm, VmOperation::SnapshotCreate)?;
        if Domain::lookup_snapshot_by_name(&dom, &r.name, 0).is_ok() {
            return Err(already_exists("snapshot", &format!("{}/{}", r.vm, r.name)));
        }
        if matches!(rec.domain_type.as_deref(), Some("kvm" | "qemu")) {
            internal_snapshot_possible(&rec)?;
        }
        let _op = self.begin_op(r.vm, id, VmOperation::SnapshotCreate);
        let snap = self.lv(
            &Subject::snapshot(r.vm, &r.name),
            dom.create_snapshot_xml(&xml::snapshot_xml(&r.name, &r.description), 0),
        )?;
        let rec = self.snapshot_record(r.vm, &snap)?;
        self.vm_snapshots(r.vm, &dom)?;
        self.vm_record(&dom)?;
        Ok(rec)
    }

    pub(crate) fn snapshot_revert(
        &self,
        r: SnapshotRef,
        id: Uuid,
    ) -> Result<hostbus_protocol::types::VmRecord, Error> {
        let (dom, _) = self.prepare_snapshot(r.vm, VmOperation::SnapshotRevert)?;
        let subject = Subject::snapshot(r.vm, &r.name);
        let snap = self.lv(&subject, Domain::lookup_snapshot_by_name(&dom, &r.name, 0))?;
        let _op = self.begin_op(r.vm, id, VmOperation::SnapshotRevert);
        self.lv(&subject, snap.revert(0))?;
        self.vm_snapshots(r.vm, &dom)?;
        self.vm_record(&dom)
    }

    pub(crate) fn snapshot_delete(&self, r: SnapshotRef, id: Uuid) -> Result<Empty, Error> {
        let (dom, _) = self.prepare_snapshot(r.vm, VmOperation::SnapshotDelete)?;
        let subject = Subject::snapshot(r.vm, &r.name);
        let snap = self.lv(&subject, Domain::lookup_snapshot_by_name(&dom, &r.name, 0))?;
        let _op = self.begin_op(r.vm, id, VmOperation::SnapshotDelete);
        self.lv(&subject, snap.delete(0))?;
        self.vm_snapshots(r.vm, &dom)?;
        self.vm_record(&dom)?;
        Ok(Empty {})
    }

    // ----------------------------------------------------- inventory, scans

    /// Every record of the host, observed (so differences emit events).
    pub(crate) fn inventory(&self) -> Result<Inventory, Error> {
        let conn = self.conn()?;
        let host = self.host_info()?;
        let vms = self.all_vms(&conn)?;
        let mut snapshots = Vec::new();
        for vm in &vms {
            if let Ok(dom) = self.lookup_vm(&conn, vm.uuid) {
                snapshots.extend(self.vm_snapshots(vm.uuid, &dom)?);
            }
        }
        let live: HashSet<String> = vms.iter().map(|v| v.uuid.to_string()).collect();
        for id in self.observer.existing(ObjectClass::Vm) {
            if !live.contains(&id) {
                self.refresh_vm_by_uuid(&id, None)?;
            }
        }
        let pools = self.all_pools(&conn)?;
        let mut volumes = Vec::new();
        for (p, rec) in &pools {
            if rec.state == PoolState::Running {
                volumes.extend(self.pool_volumes(p, &rec.name)?);
            }
        }
        let pool_names: HashSet<&str> = pools.iter().map(|(_, r)| r.name.as_str()).collect();
        for id in self.observer.existing(ObjectClass::Pool) {
            if !pool_names.contains(id.as_str()) {
                self.refresh_pool(&id)?;
            }
        }
        let networks = self.all_networks(&conn)?;
        let net_names: HashSet<&str> = networks.iter().map(|n| n.name.as_str()).collect();
        for id in self.observer.existing(ObjectClass::Network) {
            if !net_names.contains(id.as_str()) {
                self.refresh_network(&id)?;
            }
        }
        Ok(Inventory {
            taken_at: now_ms(),
            epoch: None,
            seq: 0,
            host,
            vms,
            snapshots,
            pools: pools.into_iter().map(|(_, r)| r).collect(),
            volumes,
            networks,
            tasks: self.tasks.list(None),
        })
    }
}
