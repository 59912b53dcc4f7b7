//! Evacuation: every running VM off one host, before its maintenance.
//!
//! The host is disabled first, so that nothing lands on it meanwhile (not
//! from this evacuation, not from another manager). Its running and paused
//! VMs are then placed, largest first, each on the destination with the
//! most free memory left, among the target hosts the fleet view shows
//! alive, enabled and taking migrations, and moved a few at a time by
//! `vm.migrate` tasks on the host. The host stays disabled: the operator
//! enables it ([`Host::enable`](crate::Host::enable)) after the
//! maintenance.

use std::collections::HashMap;
use std::time::Duration;

use hostbus_protocol::types::{PowerState, Record, TaskRecord, TaskStatus, VmRecord};
use hostbus_protocol::ErrorCode;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::client::Client;
use crate::error::{ClientError, ErrorKind};
use crate::handles::MigrateOptions;
use crate::presence::{HostView, Liveness};

/// The reason an evacuation disables its host with.
pub const EVACUATING: &str = "evacuating";

/// Where an evacuation may send VMs (the evacuated host itself is never
/// one of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// These hosts.
    Hosts(Vec<String>),
    /// Every host with this label.
    Label(String),
}

/// How an evacuation moves VMs.
#[derive(Debug, Clone)]
pub struct EvacuateOptions {
    /// Migrations at once (default 2; 0 counts as 1).
    pub parallel: usize,
    /// Copy each VM's disks to its destination (default: the storage is
    /// shared).
    pub copy_storage: bool,
    /// Bandwidth limit of each migration, MiB/s.
    pub bandwidth_mib_s: Option<u64>,
    /// Longest pause of each guest at its switch-over, ms.
    pub max_downtime_ms: Option<u64>,
}

impl Default for EvacuateOptions {
    fn default() -> Self {
        Self {
            parallel: 2,
            copy_storage: false,
            bandwidth_mib_s: None,
            max_downtime_ms: None,
        }
    }
}

/// What an evacuation reports while it runs, in order: the plan, then a
/// `Finished` for each VM no destination has room for, then for each
/// migration `Started`, `Moving` on every change of its task, `Finished`.
#[derive(Debug, Clone)]
pub enum EvacuationProgress {
    /// The VMs to move (placed or not) and the destinations they may go to.
    Planned {
        /// How many VMs run or are paused on the host: each gets a
        /// `Finished`.
        total: usize,
        /// The hosts that may take them.
        destinations: Vec<String>,
    },
    /// A VM's migration task started.
    Started {
        /// The VM.
        vm: Uuid,
        /// Its name.
        name: String,
        /// Where it goes.
        destination: String,
        /// The `vm.migrate` task on the evacuated host.
        task: Uuid,
    },
    /// A migration's task progressed.
    Moving {
        /// The VM.
        vm: Uuid,
        /// Its name.
        name: String,
        /// The task's progress, 0 to 100.
        percent: u8,
    },
    /// A VM is done with: moved, failed, or refused for want of room.
    Finished(VmEvacuation),
}

/// What an evacuation did.
#[derive(Debug, Clone, Serialize)]
pub struct EvacuationReport {
    /// The evacuated host (left disabled).
    pub host: String,
    /// The hosts VMs could go to.
    pub destinations: Vec<String>,
    /// Target hosts that could not take VMs, and why.
    pub skipped: Vec<SkippedHost>,
    /// Each VM that ran or was paused on the host, largest first.
    pub vms: Vec<VmEvacuation>,
}

impl EvacuationReport {
    /// Whether every VM moved (true when there was none to move).
    pub fn all_moved(&self) -> bool {
        self.vms
            .iter()
            .all(|v| matches!(v.outcome, EvacuationOutcome::Moved { .. }))
    }
}

/// A target host an evacuation did not use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedHost {
    /// The host.
    pub host: String,
    /// Why: not alive, disabled, takes no migrations, unknown.
    pub reason: String,
}

/// One VM of an evacuation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmEvacuation {
    /// The VM.
    pub uuid: Uuid,
    /// Its name.
    pub name: String,
    /// Its memory, KiB (what placement counted).
    pub memory_kib: u64,
    /// Where it was sent; `None` when no destination had room.
    pub destination: Option<String>,
    /// The `vm.migrate` task, once submitted.
    pub task: Option<Uuid>,
    /// How it ended.
    pub outcome: EvacuationOutcome,
}

/// How one VM's evacuation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum EvacuationOutcome {
    /// It runs on its destination.
    Moved {
        /// Wall time of the migration, ms.
        elapsed_ms: u64,
        /// How long the guest was paused at the switch-over, ms.
        downtime_ms: Option<u64>,
    },
    /// It is still on the evacuated host.
    Failed {
        /// The protocol code, when a host answered with an error
        /// (`INSUFFICIENT_RESOURCES` when no destination had room).
        code: Option<ErrorCode>,
        /// What went wrong.
        message: String,
    },
}

impl EvacuationOutcome {
    fn failed(e: &ClientError) -> Self {
        Self::Failed {
            code: e.code(),
            message: e.message().to_owned(),
        }
    }
}

impl Client {
    /// Evacuates `host`: disables it (reason [`EVACUATING`]), then
    /// live-migrates each VM running or paused on it to one of `targets`
    /// that the fleet view shows alive, enabled and with a migration URI,
    /// `opts.parallel` at a time. Each VM, largest first, goes to the
    /// destination with the most free memory (its last heartbeat's, less
    /// what this evacuation already sent there); a VM that fits on none
    /// is not moved. `on_progress` hears of the plan and of each
    /// migration; the report says where each VM went, or why it did not.
    ///
    /// The host stays disabled, whatever happened: enable it after the
    /// maintenance. An error means the evacuation did not start (the host
    /// could not be disabled or its VMs listed); a VM that did not move is
    /// in the report, not an error. It needs the broker (the fleet view of
    /// other hosts): over an agent's socket it fails with
    /// [`ErrorKind::Unsupported`].
    ///
    /// # Cancel safety
    /// Dropping the future stops waiting and starts no more migrations;
    /// those already started go on (their tasks run on `host`:
    /// `task.cancel` stops them), and the host stays disabled.
    pub async fn evacuate(
        &self,
        host: &str,
        targets: Targets,
        opts: EvacuateOptions,
        mut on_progress: impl FnMut(EvacuationProgress),
    ) -> Result<EvacuationReport, ClientError> {
        self.broker_only("evacuating a host")?;
        let source = self.host(host);
        source.disable(EVACUATING).await?;
        let active: Vec<VmRecord> = source
            .vms(None)
            .await?
            .into_iter()
            .filter(|v| matches!(v.power_state, PowerState::Running | PowerState::Paused))
            .collect();
        let fleet = self.presence().await?;
        fleet.wait_ready(Duration::from_secs(10)).await;
        let (rooms, skipped) = destinations(&fleet.hosts(), host, &targets);
        let destinations: Vec<String> = rooms.iter().map(|r| r.host.clone()).collect();
        on_progress(EvacuationProgress::Planned {
            total: active.len(),
            destinations: destinations.clone(),
        });

        let memory: Vec<u64> = active.iter().map(|v| v.memory_kib).collect();
        let plan = place(&memory, &rooms);
        let mut moves = Vec::new();
        let mut results: HashMap<Uuid, VmEvacuation> = HashMap::new();
        for &(i, room) in &plan {
            let vm = &active[i];
            let out = VmEvacuation {
                uuid: vm.uuid,
                name: vm.name.clone(),
                memory_kib: vm.memory_kib,
                destination: room.map(|r| rooms[r].host.clone()),
                task: None,
                outcome: EvacuationOutcome::Failed {
                    code: Some(ErrorCode::InsufficientResources),
                    message: if rooms.is_empty() {
                        "no host can take VMs: no target is alive, enabled and taking migrations"
                            .to_owned()
                    } else {
                        format!("no host has {} KiB free", vm.memory_kib)
                    },
                },
            };
            if room.is_some() {
                moves.push(out);
            } else {
                on_progress(EvacuationProgress::Finished(out.clone()));
                results.insert(vm.uuid, out);
            }
        }

        let migrate = MigrateOptions {
            offline: false,
            copy_storage: opts.copy_storage,
            bandwidth_mib_s: opts.bandwidth_mib_s,
            max_downtime_ms: opts.max_downtime_ms,
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut waiting = moves.into_iter();
        let mut running = JoinSet::new();
        let mut started: HashMap<tokio::task::Id, VmEvacuation> = HashMap::new();
        loop {
            while running.len() < opts.parallel.max(1) {
                let Some(m) = waiting.next() else { break };
                let job = migrate_one(
                    self.clone(),
                    host.to_owned(),
                    m.clone(),
                    migrate.clone(),
                    tx.clone(),
                );
                started.insert(running.spawn(job).id(), m);
            }
            let done = tokio::select! {
                biased;
                Some(p) = rx.recv() => {
                    on_progress(p);
                    continue;
                }
                done = running.join_next_with_id() => done,
            };
            let Some(done) = done else { break };
            // What its task reported comes before its end.
            while let Ok(p) = rx.try_recv() {
                on_progress(p);
            }
            let v = match done {
                Ok((id, v)) => {
                    started.remove(&id);
                    v
                }
                Err(e) => {
                    let mut v = started.remove(&e.id()).ok_or_else(|| {
                        ClientError::new(ErrorKind::Internal, format!("a migration ended: {e}"))
                    })?;
                    v.outcome = EvacuationOutcome::Failed {
                        code: None,
                        message: format!("its migration's waiter ended: {e}"),
                    };
                    v
                }
            };
            on_progress(EvacuationProgress::Finished(v.clone()));
            results.insert(v.uuid, v);
        }

        let vms = plan
            .iter()
            .filter_map(|&(i, _)| results.remove(&active[i].uuid))
            .collect();
        Ok(EvacuationReport {
            host: host.to_owned(),
            destinations,
            skipped,
            vms,
        })
    }
}

/// Migrates one placed VM (`vm.destination`) off `source` and waits for
/// its task, telling `progress` when it starts and as it moves.
async fn migrate_one(
    client: Client,
    source: String,
    mut vm: VmEvacuation,
    opts: MigrateOptions,
    progress: mpsc::UnboundedSender<EvacuationProgress>,
) -> VmEvacuation {
    let destination = vm.destination.clone().unwrap_or_default();
    let task = match client
        .host(&source)
        .vm(vm.uuid)
        .migrate(&destination, opts)
        .await
    {
        Ok(t) => t,
        Err(e) => {
            vm.outcome = EvacuationOutcome::failed(&e);
            return vm;
        }
    };
    vm.task = Some(task.id());
    let _ = progress.send(EvacuationProgress::Started {
        vm: vm.uuid,
        name: vm.name.clone(),
        destination,
        task: task.id(),
    });
    let ended = task
        .wait(|t| {
            let _ = progress.send(EvacuationProgress::Moving {
                vm: vm.uuid,
                name: vm.name.clone(),
                percent: t.progress,
            });
        })
        .await;
    vm.outcome = match ended {
        Ok(t) => migration_outcome(&t),
        Err(e) => EvacuationOutcome::failed(&e),
    };
    vm
}

/// How a finished `vm.migrate` task ended for its VM.
fn migration_outcome(t: &TaskRecord) -> EvacuationOutcome {
    match (t.status, &t.result, &t.error) {
        (TaskStatus::Success, Some(Record::Migration(m)), _) if m.host == m.destination => {
            EvacuationOutcome::Moved {
                elapsed_ms: m.elapsed_ms,
                downtime_ms: m.downtime_ms,
            }
        }
        (TaskStatus::Success, Some(Record::Migration(m)), _) => EvacuationOutcome::Failed {
            code: None,
            message: format!("it stayed on {} (an interrupted migration)", m.host),
        },
        (TaskStatus::Success, other, _) => EvacuationOutcome::Failed {
            code: None,
            message: format!("unexpected task result {other:?}"),
        },
        (_, _, Some(e)) => EvacuationOutcome::Failed {
            code: Some(e.code),
            message: e.message.clone(),
        },
        (s, _, None) => EvacuationOutcome::Failed {
            code: None,
            message: format!("task ended {s} without an error"),
        },
    }
}

/// A destination and its free memory, KiB.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Room {
    host: String,
    free_kib: u64,
}

/// The destinations `targets` name for VMs of `source`, from the fleet
/// view: alive, enabled and with a migration URI, each with the free
/// memory of its last heartbeat; and the named ones that are not, with
/// why. A label's hosts are those of the view that carry it (the source
/// is left out of it silently; named, it is skipped).
fn destinations(
    fleet: &[HostView],
    source: &str,
    targets: &Targets,
) -> (Vec<Room>, Vec<SkippedHost>) {
    let named: Vec<&str> = match targets {
        Targets::Hosts(hosts) => {
            let mut named: Vec<&str> = Vec::new();
            for h in hosts {
                if !named.contains(&h.as_str()) {
                    named.push(h);
                }
            }
            named
        }
        Targets::Label(label) => fleet
            .iter()
            .filter(|h| h.host_id != source && h.labels.iter().any(|l| l == label))
            .map(|h| h.host_id.as_str())
            .collect(),
    };
    let mut rooms = Vec::new();
    let mut skipped = Vec::new();
    for id in named {
        let why = if id == source {
            Err("the host being evacuated".to_owned())
        } else {
            match fleet.iter().find(|h| h.host_id == id) {
                None => Err("unknown to the fleet view".to_owned()),
                Some(h) => usable(h),
            }
        };
        match why {
            Ok(free_kib) => rooms.push(Room {
                host: id.to_owned(),
                free_kib,
            }),
            Err(reason) => skipped.push(SkippedHost {
                host: id.to_owned(),
                reason,
            }),
        }
    }
    (rooms, skipped)
}

/// A host's free memory if it can take migrations now, else why not.
fn usable(h: &HostView) -> Result<u64, String> {
    match h.liveness {
        Liveness::Alive => {}
        Liveness::Stale => return Err("not alive (stale)".to_owned()),
        Liveness::Gone => return Err("not alive (gone)".to_owned()),
    }
    if !h.placement.enabled {
        return Err(if h.placement.reason.is_empty() {
            "disabled".to_owned()
        } else {
            format!("disabled: {}", h.placement.reason)
        });
    }
    if h.migration_uri.is_none() {
        return Err("takes no migrations (its agent has no migration_uri)".to_owned());
    }
    Ok(h.load.memory_free_kib)
}

/// Places VMs (their memory, KiB) in `rooms`: largest first (in their
/// order when equal), each in the room with the most memory left after
/// what this plan already put there (the first of them on a tie), when it
/// fits there. Returns, in placement order, each VM's index and its
/// room's (`None`: no room has enough).
fn place(memory_kib: &[u64], rooms: &[Room]) -> Vec<(usize, Option<usize>)> {
    let mut order: Vec<usize> = (0..memory_kib.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(memory_kib[i]));
    let mut left: Vec<u64> = rooms.iter().map(|r| r.free_kib).collect();
    order
        .into_iter()
        .map(|i| {
            let most = (0..left.len()).reduce(|a, b| if left[b] > left[a] { b } else { a });
            let room = most.filter(|&r| left[r] >= memory_kib[i]);
            if let Some(r) = room {
                left[r] -= memory_kib[i];
            }
            (i, room)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 20;

    fn rooms(free: &[(&str, u64)]) -> Vec<Room> {
        free.iter()
            .map(|(h, f)| Room {
                host: (*h).to_owned(),
                free_kib: *f,
            })
            .collect()
    }

    /// The plan as (VM index, host) pairs.
    fn plan(memory: &[u64], free: &[(&str, u64)]) -> Vec<(usize, Option<String>)> {
        let rooms = rooms(free);
        place(memory, &rooms)
            .into_iter()
            .map(|(vm, r)| (vm, r.map(|r| rooms[r].host.clone())))
            .collect()
    }

    fn on(h: &str) -> Option<String> {
        Some(h.to_owned())
    }

    #[test]
    fn the_largest_vm_goes_first_to_the_host_with_the_most_free_memory() {
        assert_eq!(
            plan(
                &[GIB, 4 * GIB, 2 * GIB],
                &[("h2", 5 * GIB), ("h3", 6 * GIB)]
            ),
            [(1, on("h3")), (2, on("h2")), (0, on("h2"))]
        );
    }

    #[test]
    fn memory_placed_by_the_plan_counts_against_its_host() {
        // h2 has the most free memory, but after the first VM it has less
        // than h3.
        assert_eq!(
            plan(
                &[2 * GIB, 2 * GIB, 2 * GIB],
                &[("h2", 5 * GIB), ("h3", 4 * GIB)]
            ),
            [(0, on("h2")), (1, on("h3")), (2, on("h2"))]
        );
    }

    #[test]
    fn a_vm_no_host_has_room_for_is_refused_and_smaller_ones_still_placed() {
        assert_eq!(
            plan(
                &[8 * GIB, GIB, 3 * GIB],
                &[("h2", 4 * GIB), ("h3", 2 * GIB)]
            ),
            [(0, None), (2, on("h2")), (1, on("h3"))]
        );
        // Exactly the free memory fits.
        assert_eq!(plan(&[GIB], &[("h2", GIB)]), [(0, on("h2"))]);
    }

    #[test]
    fn without_destinations_every_vm_is_refused() {
        assert_eq!(plan(&[GIB, 2 * GIB], &[]), [(1, None), (0, None)]);
        assert_eq!(plan(&[], &[("h2", GIB)]), []);
    }

    #[test]
    fn ties_keep_the_order_given() {
        assert_eq!(
            plan(&[GIB, GIB], &[("h2", 3 * GIB), ("h3", 3 * GIB)]),
            [(0, on("h2")), (1, on("h3"))]
        );
    }

    fn view(id: &str, labels: &[&str]) -> HostView {
        use hostbus_protocol::events::{Health, Load, Versions};
        use hostbus_protocol::types::{HealthStatus, Placement};
        HostView {
            host_id: id.to_owned(),
            liveness: Liveness::Alive,
            connected: None,
            epoch: Uuid::nil(),
            last_seen_ms: Some(1000),
            started_at: 0,
            interval_ms: 5000,
            last_seq: 0,
            versions: Versions {
                agent: String::new(),
                protocol: String::new(),
                libvirt: String::new(),
                hypervisor: String::new(),
            },
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            health: Health {
                status: HealthStatus::Ok,
                hypervisor_connected: true,
                message: String::new(),
            },
            load: Load {
                in_flight: 0,
                commands_total: 0,
                tasks_running: 0,
                vms_active: 0,
                load_avg_milli: 0,
                memory_free_kib: 8 * GIB,
            },
            capabilities: Vec::new(),
            placement: Placement::default(),
            migration_uri: Some(format!("qemu+tls://{id}/system")),
        }
    }

    #[test]
    fn destinations_are_the_targets_alive_enabled_and_taking_migrations() {
        let mut stale = view("h3", &["rack-a"]);
        stale.liveness = Liveness::Stale;
        let mut disabled = view("h4", &["rack-a"]);
        disabled.placement.enabled = false;
        disabled.placement.reason = "firmware".into();
        let mut no_uri = view("h5", &["rack-a"]);
        no_uri.migration_uri = None;
        let mut fleet = vec![
            view("h1", &["rack-a"]),
            view("h2", &["rack-a"]),
            stale,
            disabled,
            no_uri,
            view("h6", &["rack-b"]),
        ];
        fleet[1].load.memory_free_kib = 3 * GIB;
        let (rooms, skipped) = destinations(&fleet, "h1", &Targets::Label("rack-a".into()));
        assert_eq!(rooms, self::rooms(&[("h2", 3 * GIB)]));
        let why: Vec<(&str, &str)> = skipped
            .iter()
            .map(|s| (s.host.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(
            why,
            [
                ("h3", "not alive (stale)"),
                ("h4", "disabled: firmware"),
                ("h5", "takes no migrations (its agent has no migration_uri)"),
            ]
        );

        let named = Targets::Hosts(vec!["h6".into(), "h1".into(), "h9".into(), "h6".into()]);
        let (rooms, skipped) = destinations(&fleet, "h1", &named);
        assert_eq!(rooms, self::rooms(&[("h6", 8 * GIB)]));
        let why: Vec<(&str, &str)> = skipped
            .iter()
            .map(|s| (s.host.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(
            why,
            [
                ("h1", "the host being evacuated"),
                ("h9", "unknown to the fleet view"),
            ]
        );
    }
}
