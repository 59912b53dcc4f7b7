//! Host facts (info, capabilities, statistics, load) and the full
//! inventory that reconciliation scans.

use std::collections::{BTreeMap, HashSet};

use hostbus_protocol::commands::*;
use hostbus_protocol::types::{
    Capabilities, DiskFormat, HostRecord, HostStats, Inventory, ObjectClass, Placement, PoolState,
    PowerState,
};
use hostbus_protocol::{now_ms, ContentType, Error, ErrorCode, COMMANDS};
use virt::connect::Connect;

use crate::errors::Subject;
use crate::inner::Inner;
use crate::xml::{self, CapsFacts};

/// The host's load as heartbeats report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostLoad {
    /// The one-minute load average, in thousandths (0 where unknown).
    pub load_avg_milli: u32,
    /// Running or paused VMs; `None` when libvirt did not answer.
    pub vms_active: Option<u32>,
    /// Free memory; `None` when libvirt did not answer.
    pub memory_free_kib: Option<u64>,
}

/// The one-minute load average from `/proc/loadavg`, in thousandths; 0
/// where there is none.
fn load_avg_milli() -> u32 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|l| l.parse::<f64>().ok())
        })
        .map_or(0, |l| (l * 1000.0) as u32)
}

/// The volume formats a host of libvirt driver `driver` (`QEMU`, `Test`,
/// ...) can create, with or without `qemu-img`.
fn creatable_formats(driver: &str, qemu_img: bool) -> Vec<DiskFormat> {
    if qemu_img || driver.eq_ignore_ascii_case("test") {
        vec![DiskFormat::Raw, DiskFormat::Qcow2]
    } else {
        vec![DiskFormat::Raw]
    }
}

/// The first file named `name` in a directory of `PATH`.
fn find_in_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Why a host without `qemu-img` refuses to create a `format` volume.
pub(crate) fn no_qemu_img(op: &str, format: DiskFormat) -> Error {
    Error::new(
        ErrorCode::OperationNotSupported,
        [
            ("operation", op.to_owned()),
            (
                "reason",
                format!("{format} volumes need qemu-img (package qemu-utils), which this host lacks; it can create raw volumes"),
            ),
        ],
        format!(
            "{op} of a {format} volume is not supported by this host: it has no qemu-img (install qemu-utils), and creates raw volumes only"
        ),
    )
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
            host_id: self.config().host_id.clone(),
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
            host_id: self.config().host_id.clone(),
            hostname: conn.hostname().unwrap_or_default(),
            uri: self.connection().uri().to_owned(),
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
            placement: self.placement(),
            migration_uri: self.config().migration_uri.clone(),
            generation: 0,
        };
        let id = rec.host_id.clone();
        Ok(self.observed(&id, rec, None))
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
            volume_formats: self.volume_formats(&conn),
            migration_uri: self.config().migration_uri.clone(),
        })
    }

    /// The formats this host can create volumes in. libvirt's storage
    /// driver makes every file volume but a raw one with `qemu-img` (Debian
    /// package `qemu-utils`), which a hypervisor host need not have; the
    /// test driver needs nothing.
    pub(crate) fn volume_formats(&self, conn: &Connect) -> Vec<DiskFormat> {
        creatable_formats(
            &conn.driver_type().unwrap_or_default(),
            find_in_path("qemu-img").is_some(),
        )
    }

    /// `OPERATION_NOT_SUPPORTED` for `op` when this host cannot create a
    /// volume of `format` (see [`Self::volume_formats`]).
    pub(crate) fn check_creatable(
        &self,
        conn: &Connect,
        op: &str,
        format: DiskFormat,
    ) -> Result<(), Error> {
        if self.volume_formats(conn).contains(&format) {
            return Ok(());
        }
        Err(no_qemu_img(op, format))
    }

    /// `host.disable` (`enabled` false, with the operator's reason) and
    /// `host.enable`: the host record with its new placement.
    pub(crate) fn set_placement(&self, enabled: bool, reason: String) -> Result<HostRecord, Error> {
        self.store_placement(Placement { enabled, reason })?;
        tracing::info!(enabled, reason = %self.placement().reason, "host placement set");
        self.host_info()
    }

    pub(crate) fn host_load(&self) -> HostLoad {
        let load_avg_milli = load_avg_milli();
        let stats = self.host_stats().ok();
        HostLoad {
            load_avg_milli,
            vms_active: stats.as_ref().map(|s| s.vms_active),
            memory_free_kib: stats.map(|s| s.memory_free_kib),
        }
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
        for id in self.observer().existing(ObjectClass::Vm) {
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
        for id in self.observer().existing(ObjectClass::Pool) {
            if !pool_names.contains(id.as_str()) {
                self.refresh_pool(&id)?;
            }
        }
        let networks = self.all_networks(&conn)?;
        let net_names: HashSet<&str> = networks.iter().map(|n| n.name.as_str()).collect();
        for id in self.observer().existing(ObjectClass::Network) {
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
            tasks: self.tasks().list(None),
        })
    }
}

/// The placement kept in `file` (JSON), enabled when there is none or it
/// cannot be read (said in the log).
pub(crate) fn load_placement(file: Option<&std::path::Path>) -> Placement {
    let Some(file) = file else {
        return Placement::default();
    };
    match std::fs::read(file) {
        Ok(bytes) => hostbus_protocol::decode(ContentType::Json, &bytes, 64 * 1024)
            .unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "cannot read the host's placement; taking new vms");
                Placement::default()
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Placement::default(),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot read the host's placement; taking new vms");
            Placement::default()
        }
    }
}

/// Writes `placement` to `file` (through a temporary file, so a crash
/// leaves the old or the new one).
pub(crate) fn save_placement(
    file: Option<&std::path::Path>,
    placement: &Placement,
) -> Result<(), Error> {
    let Some(file) = file else {
        return Ok(());
    };
    let bytes = hostbus_protocol::encode(ContentType::Json, placement)
        .map_err(|e| Error::internal(format!("cannot encode the placement: {e}")))?;
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, file))
        .map_err(|e| {
            Error::internal(format!(
                "cannot keep the placement in {}: {e}",
                file.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_qemu_img_a_hypervisor_host_creates_raw_volumes_only() {
        assert_eq!(creatable_formats("QEMU", false), [DiskFormat::Raw]);
        assert_eq!(
            creatable_formats("QEMU", true),
            [DiskFormat::Raw, DiskFormat::Qcow2]
        );
        assert_eq!(
            creatable_formats("Test", false),
            [DiskFormat::Raw, DiskFormat::Qcow2]
        );
    }

    #[test]
    fn a_missing_qemu_img_is_named_in_a_structured_refusal() {
        let e = no_qemu_img("volume.create", DiskFormat::Qcow2);
        assert_eq!(e.code, ErrorCode::OperationNotSupported);
        assert_eq!(e.param("operation"), Some("volume.create"));
        assert!(
            e.param("reason").is_some_and(|r| r.contains("qemu-utils")),
            "{e:?}"
        );
    }

    #[test]
    fn programs_are_found_on_the_path() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("no-such-program-hostbus").is_none());
    }
}
