//! A tree of typed handles over the catalogue:
//! `client.host("h1").vm_named("web01").start().await`.

use std::time::Duration;

use hostbus_protocol::commands::*;
use hostbus_protocol::types::{
    Capabilities, DiskSpec, HostRecord, HostStats, Inventory, NetworkRecord, NetworkSpec, NicSpec,
    PoolRecord, PoolSpec, PowerState, SnapshotRecord, TaskRecord, TaskStatus, VmRecord, VmSpec,
    VmStats, VolumeRecord, VolumeSpec,
};
use hostbus_protocol::Command;
use uuid::Uuid;

use crate::client::Client;
use crate::error::{ClientError, ErrorKind};

/// Methods that each send one command whose request the handle makes
/// itself (through its `call`), returning the command's response:
/// `/// doc` `name -> Response = Command;`.
macro_rules! calls {
    ($($(#[$doc:meta])* $method:ident -> $ret:ty = $cmd:ty;)*) => {
        $(
            $(#[$doc])*
            pub async fn $method(&self) -> Result<$ret, ClientError> {
                self.call::<$cmd>().await
            }
        )*
    };
}

/// One host.
#[derive(Clone)]
pub struct Host {
    client: Client,
    id: String,
}

impl Client {
    /// A handle on host `id` (nothing is sent yet).
    pub fn host(&self, id: &str) -> Host {
        Host {
            client: self.clone(),
            id: id.to_owned(),
        }
    }
}

impl Host {
    /// The host id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Calls any command on this host.
    pub async fn call<C: Command>(&self, req: C::Request) -> Result<C::Response, ClientError> {
        self.client.call::<C>(&self.id, req).await
    }

    /// Starts any command on this host as a task.
    pub async fn submit<C: Command>(&self, req: C::Request) -> Result<Task, ClientError> {
        let rec = self.client.submit::<C>(&self.id, req).await?;
        Ok(self.task(rec.id))
    }

    /// `host.ping`.
    pub async fn ping(&self) -> Result<Pong, ClientError> {
        self.call::<HostPing>(Ping { echo: None }).await
    }
    /// `host.info`.
    pub async fn info(&self) -> Result<HostRecord, ClientError> {
        self.call::<HostInfo>(Empty {}).await
    }
    /// `host.capabilities`.
    pub async fn capabilities(&self) -> Result<Capabilities, ClientError> {
        self.call::<HostCapabilities>(Empty {}).await
    }
    /// `host.stats`.
    pub async fn stats(&self) -> Result<HostStats, ClientError> {
        self.call::<HostStatsGet>(Empty {}).await
    }
    /// `host.disable`: the host takes no new VMs (migrations to it are
    /// refused, placement skips it) until [`Host::enable`]; what it runs
    /// keeps running. `reason` is shown in the fleet view and in refusals.
    pub async fn disable(&self, reason: &str) -> Result<HostRecord, ClientError> {
        self.call::<HostDisable>(HostDisableRequest {
            reason: reason.to_owned(),
        })
        .await
    }
    /// `host.enable`: the host takes new VMs again.
    pub async fn enable(&self) -> Result<HostRecord, ClientError> {
        self.call::<HostEnable>(Empty {}).await
    }
    /// `host.snapshot`: every record, for resync.
    pub async fn snapshot(&self) -> Result<Inventory, ClientError> {
        self.call::<HostSnapshot>(Empty {}).await
    }
    /// `vm.list`, optionally filtered by power state.
    pub async fn vms(&self, power_state: Option<PowerState>) -> Result<Vec<VmRecord>, ClientError> {
        Ok(self
            .call::<VmList>(VmListRequest { power_state })
            .await?
            .vms)
    }
    /// A VM by uuid.
    pub fn vm(&self, uuid: Uuid) -> Vm {
        Vm {
            host: self.clone(),
            key: VmKey::Uuid(uuid),
        }
    }
    /// A VM by name (resolved to its uuid on each operation).
    pub fn vm_named(&self, name: &str) -> Vm {
        Vm {
            host: self.clone(),
            key: VmKey::Name(name.to_owned()),
        }
    }
    /// A VM by uuid or name, whichever `key` parses as.
    pub fn vm_key(&self, key: &str) -> Vm {
        match key.parse() {
            Ok(u) => self.vm(u),
            Err(_) => self.vm_named(key),
        }
    }
    /// `vm.define`.
    pub async fn define_vm(&self, spec: VmSpec) -> Result<VmRecord, ClientError> {
        self.call::<VmDefine>(VmDefineRequest { spec }).await
    }
    /// `vm.define` as a task (for specs that create volumes).
    pub async fn define_vm_async(&self, spec: VmSpec) -> Result<Task, ClientError> {
        self.submit::<VmDefine>(VmDefineRequest { spec }).await
    }
    /// `pool.list`.
    pub async fn pools(&self) -> Result<Vec<PoolRecord>, ClientError> {
        Ok(self.call::<PoolList>(Empty {}).await?.pools)
    }
    /// A pool by name.
    pub fn pool(&self, name: &str) -> Pool {
        Pool {
            host: self.clone(),
            name: name.to_owned(),
        }
    }
    /// `pool.define`.
    pub async fn define_pool(&self, spec: PoolSpec) -> Result<PoolRecord, ClientError> {
        self.call::<PoolDefine>(PoolDefineRequest { spec }).await
    }
    /// `network.list`.
    pub async fn networks(&self) -> Result<Vec<NetworkRecord>, ClientError> {
        Ok(self.call::<NetworkList>(Empty {}).await?.networks)
    }
    /// A network by name.
    pub fn network(&self, name: &str) -> Network {
        Network {
            host: self.clone(),
            name: name.to_owned(),
        }
    }
    /// `network.define`.
    pub async fn define_network(&self, spec: NetworkSpec) -> Result<NetworkRecord, ClientError> {
        self.call::<NetworkDefine>(NetworkDefineRequest { spec })
            .await
    }
    /// `task.list`.
    pub async fn tasks(&self, status: Option<TaskStatus>) -> Result<Vec<TaskRecord>, ClientError> {
        Ok(self
            .call::<TaskList>(TaskListRequest { status })
            .await?
            .tasks)
    }
    /// A task by id.
    pub fn task(&self, id: Uuid) -> Task {
        Task {
            host: self.clone(),
            id,
        }
    }
}

fn object_name(name: &str) -> ObjectName {
    ObjectName {
        name: name.to_owned(),
    }
}

#[derive(Clone)]
enum VmKey {
    Uuid(Uuid),
    Name(String),
}

/// One VM.
#[derive(Clone)]
pub struct Vm {
    host: Host,
    key: VmKey,
}

impl Vm {
    /// The VM's uuid, looking it up by name if needed.
    pub async fn uuid(&self) -> Result<Uuid, ClientError> {
        match &self.key {
            VmKey::Uuid(u) => Ok(*u),
            VmKey::Name(n) => Ok(self.host.call::<VmGetByName>(object_name(n)).await?.uuid),
        }
    }

    /// Calls `C` with the request `request` makes of this VM's uuid.
    async fn call_on<C: Command>(
        &self,
        request: impl FnOnce(Uuid) -> C::Request,
    ) -> Result<C::Response, ClientError> {
        let uuid = self.uuid().await?;
        self.host.call::<C>(request(uuid)).await
    }

    async fn call<C: Command<Request = VmUuid>>(&self) -> Result<C::Response, ClientError> {
        self.call_on::<C>(|uuid| VmUuid { uuid }).await
    }

    /// `vm.get` (or `vm.get_by_name`).
    pub async fn get(&self) -> Result<VmRecord, ClientError> {
        match &self.key {
            VmKey::Uuid(u) => self.host.call::<VmGet>(VmUuid { uuid: *u }).await,
            VmKey::Name(n) => self.host.call::<VmGetByName>(object_name(n)).await,
        }
    }
    /// `vm.start`.
    pub async fn start(&self) -> Result<VmRecord, ClientError> {
        self.call_on::<VmStart>(|uuid| VmStartRequest {
            uuid,
            paused: false,
        })
        .await
    }
    /// `vm.start` with vCPUs paused.
    pub async fn start_paused(&self) -> Result<VmRecord, ClientError> {
        self.call_on::<VmStart>(|uuid| VmStartRequest { uuid, paused: true })
            .await
    }
    /// `vm.shutdown`: asks the guest, waits up to `timeout`, forces off after it when `force`.
    pub async fn shutdown(&self, timeout: Duration, force: bool) -> Result<VmRecord, ClientError> {
        let timeout_s = u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX);
        self.call_on::<VmShutdown>(|uuid| VmShutdownRequest {
            uuid,
            timeout_s,
            force,
        })
        .await
    }
    calls! {
        /// `vm.destroy`.
        destroy -> VmRecord = VmDestroy;
        /// `vm.reboot`.
        reboot -> VmRecord = VmReboot;
        /// `vm.reset`.
        reset -> VmRecord = VmReset;
        /// `vm.pause`.
        pause -> VmRecord = VmPause;
        /// `vm.resume`.
        resume -> VmRecord = VmResume;
        /// `vm.suspend`.
        suspend -> VmRecord = VmSuspend;
        /// `vm.stats`.
        stats -> VmStats = VmStatsGet;
    }
    /// `vm.set_memory`.
    pub async fn set_memory(&self, memory_kib: u64) -> Result<VmRecord, ClientError> {
        self.call_on::<VmSetMemory>(|uuid| VmSetMemoryRequest { uuid, memory_kib })
            .await
    }
    /// `vm.set_vcpus`.
    pub async fn set_vcpus(&self, vcpus: u32) -> Result<VmRecord, ClientError> {
        self.call_on::<VmSetVcpus>(|uuid| VmSetVcpusRequest { uuid, vcpus })
            .await
    }
    /// `vm.attach_disk`.
    pub async fn attach_disk(&self, disk: DiskSpec) -> Result<VmRecord, ClientError> {
        self.call_on::<VmAttachDisk>(|uuid| VmAttachDiskRequest { uuid, disk })
            .await
    }
    /// `vm.detach_disk`.
    pub async fn detach_disk(&self, target: &str) -> Result<VmRecord, ClientError> {
        self.call_on::<VmDetachDisk>(|uuid| VmDetachDiskRequest {
            uuid,
            target: target.to_owned(),
        })
        .await
    }
    /// `vm.attach_nic`.
    pub async fn attach_nic(&self, nic: NicSpec) -> Result<VmRecord, ClientError> {
        self.call_on::<VmAttachNic>(|uuid| VmAttachNicRequest { uuid, nic })
            .await
    }
    /// `vm.detach_nic`.
    pub async fn detach_nic(&self, mac: &str) -> Result<VmRecord, ClientError> {
        self.call_on::<VmDetachNic>(|uuid| VmDetachNicRequest {
            uuid,
            mac: mac.to_owned(),
        })
        .await
    }
    /// `vm.clone` as a task: a new VM `name` from this halted VM, its
    /// disks copied into their own pools (or `pool`), or overlaid on them
    /// when `linked`. The task's result is the new VM's record.
    pub async fn clone_to(
        &self,
        name: &str,
        linked: bool,
        pool: Option<&str>,
    ) -> Result<Task, ClientError> {
        let source = self.uuid().await?;
        self.host
            .submit::<VmClone>(VmCloneRequest {
                source,
                name: name.to_owned(),
                linked,
                pool: pool.map(str::to_owned),
            })
            .await
    }
    /// `vm.migrate` as a task: moves this VM to host `to` (sent to the
    /// host the handle names, the VM's current one). The task's progress
    /// follows the hypervisor's job; its result is a
    /// [`Record::Migration`](hostbus_protocol::types::Record::Migration)
    /// (wait with [`Task::wait`] or [`Task::result`]); `task.cancel`
    /// aborts the move and leaves the VM where it was.
    pub async fn migrate(&self, to: &str, opts: MigrateOptions) -> Result<Task, ClientError> {
        let uuid = self.uuid().await?;
        let MigrateOptions {
            offline,
            copy_storage,
            bandwidth_mib_s,
            max_downtime_ms,
        } = opts;
        self.host
            .submit::<VmMigrate>(VmMigrateRequest {
                uuid,
                destination: to.to_owned(),
                offline,
                copy_storage,
                bandwidth_mib_s,
                max_downtime_ms,
            })
            .await
    }
    /// `vm.set_template`: marks the halted VM a template (it can then be
    /// cloned, not started), or an ordinary VM again.
    pub async fn set_template(&self, template: bool) -> Result<VmRecord, ClientError> {
        self.call_on::<VmSetTemplate>(|uuid| VmSetTemplateRequest { uuid, template })
            .await
    }
    /// `vm.undefine`.
    pub async fn undefine(&self, remove_storage: bool) -> Result<(), ClientError> {
        self.call_on::<VmUndefine>(|uuid| VmUndefineRequest {
            uuid,
            remove_storage,
        })
        .await
        .map(|_| ())
    }
    /// `snapshot.list`.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotRecord>, ClientError> {
        Ok(self.call::<SnapshotList>().await?.snapshots)
    }
    /// `snapshot.create`.
    pub async fn snapshot(
        &self,
        name: &str,
        description: &str,
    ) -> Result<SnapshotRecord, ClientError> {
        self.call_on::<SnapshotCreate>(|vm| SnapshotCreateRequest {
            vm,
            name: name.to_owned(),
            description: description.to_owned(),
        })
        .await
    }
    /// `snapshot.revert`.
    pub async fn revert(&self, name: &str) -> Result<VmRecord, ClientError> {
        self.call_on::<SnapshotRevert>(|vm| SnapshotRef {
            vm,
            name: name.to_owned(),
        })
        .await
    }
    /// `snapshot.delete`.
    pub async fn delete_snapshot(&self, name: &str) -> Result<(), ClientError> {
        self.call_on::<SnapshotDelete>(|vm| SnapshotRef {
            vm,
            name: name.to_owned(),
        })
        .await
        .map(|_| ())
    }
}

/// How [`Vm::migrate`] moves a VM. The default: live (it keeps running),
/// over shared storage (the same disk paths reach the same data on both
/// hosts), at libvirt's bandwidth and downtime.
#[derive(Debug, Clone, Default)]
pub struct MigrateOptions {
    /// Move a halted VM's definition only, not a running guest.
    pub offline: bool,
    /// Copy the VM's disks to the destination (its volumes are made
    /// there first); not with `offline`.
    pub copy_storage: bool,
    /// Bandwidth limit, MiB/s.
    pub bandwidth_mib_s: Option<u64>,
    /// Longest pause of the guest at the switch-over, ms.
    pub max_downtime_ms: Option<u64>,
}

/// A handle on an object its host knows by name: the struct, `call` for
/// the commands whose request is that name, and `undefine`.
macro_rules! named {
    ($(#[$doc:meta])* $handle:ident, $undefine:ty, $wire:literal) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $handle {
            host: Host,
            name: String,
        }

        impl $handle {
            async fn call<C: Command<Request = ObjectName>>(
                &self,
            ) -> Result<C::Response, ClientError> {
                self.host.call::<C>(object_name(&self.name)).await
            }

            #[doc = concat!("`", $wire, "`.")]
            pub async fn undefine(&self) -> Result<(), ClientError> {
                self.call::<$undefine>().await.map(|_| ())
            }
        }
    };
}

named!(
    /// One storage pool.
    Pool,
    PoolUndefine,
    "pool.undefine"
);
named!(
    /// One virtual network.
    Network,
    NetworkUndefine,
    "network.undefine"
);

impl Pool {
    calls! {
        /// `pool.get`.
        get -> PoolRecord = PoolGet;
        /// `pool.start`.
        start -> PoolRecord = PoolStart;
        /// `pool.stop`.
        stop -> PoolRecord = PoolStop;
        /// `pool.refresh`.
        refresh -> PoolRecord = PoolRefresh;
    }
    /// `volume.list`.
    pub async fn volumes(&self) -> Result<Vec<VolumeRecord>, ClientError> {
        Ok(self
            .host
            .call::<VolumeList>(PoolName {
                pool: self.name.clone(),
            })
            .await?
            .volumes)
    }
    /// `volume.create`.
    pub async fn create_volume(&self, spec: VolumeSpec) -> Result<VolumeRecord, ClientError> {
        self.host
            .call::<VolumeCreate>(VolumeCreateRequest {
                pool: self.name.clone(),
                spec,
            })
            .await
    }
    /// `volume.get`.
    pub async fn volume(&self, name: &str) -> Result<VolumeRecord, ClientError> {
        self.host
            .call::<VolumeGet>(VolumeKey {
                pool: self.name.clone(),
                name: name.to_owned(),
            })
            .await
    }
    /// `volume.delete`.
    pub async fn delete_volume(&self, name: &str) -> Result<(), ClientError> {
        self.host
            .call::<VolumeDelete>(VolumeKey {
                pool: self.name.clone(),
                name: name.to_owned(),
            })
            .await
            .map(|_| ())
    }
    /// `volume.resize`.
    pub async fn resize_volume(
        &self,
        name: &str,
        capacity_bytes: u64,
    ) -> Result<VolumeRecord, ClientError> {
        self.host
            .call::<VolumeResize>(VolumeResizeRequest {
                pool: self.name.clone(),
                name: name.to_owned(),
                capacity_bytes,
            })
            .await
    }
    /// `volume.clone`.
    pub async fn clone_volume(
        &self,
        name: &str,
        new_name: &str,
    ) -> Result<VolumeRecord, ClientError> {
        self.host
            .call::<VolumeClone>(VolumeCloneRequest {
                pool: self.name.clone(),
                name: name.to_owned(),
                new_name: new_name.to_owned(),
            })
            .await
    }
}

impl Network {
    calls! {
        /// `network.get`.
        get -> NetworkRecord = NetworkGet;
        /// `network.start`.
        start -> NetworkRecord = NetworkStart;
        /// `network.stop`.
        stop -> NetworkRecord = NetworkStop;
    }
}

/// One task.
#[derive(Clone)]
pub struct Task {
    host: Host,
    id: Uuid,
}

impl Task {
    /// The task id (the id of the command that started it).
    pub fn id(&self) -> Uuid {
        self.id
    }
    async fn call<C: Command<Request = TaskId>>(&self) -> Result<C::Response, ClientError> {
        self.host.call::<C>(TaskId { id: self.id }).await
    }
    calls! {
        /// `task.get`.
        get -> TaskRecord = TaskGet;
        /// `task.cancel`.
        cancel -> TaskRecord = TaskCancel;
    }
    /// Waits until the task finishes, calling `progress` on every change,
    /// and returns the final record (whatever its status).
    ///
    /// # Cancel safety
    /// Dropping the future stops waiting; the task goes on.
    pub async fn wait(
        &self,
        mut progress: impl FnMut(&TaskRecord),
    ) -> Result<TaskRecord, ClientError> {
        let mut last_generation = 0;
        loop {
            let t = self.get().await?;
            if t.generation != last_generation {
                last_generation = t.generation;
                progress(&t);
            }
            if t.status.is_final() {
                return Ok(t);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    /// Waits, then turns a failed or cancelled task into its error.
    pub async fn result(&self) -> Result<TaskRecord, ClientError> {
        let t = self.wait(|_| {}).await?;
        match (t.status, &t.error) {
            (TaskStatus::Success, _) => Ok(t),
            (_, Some(e)) => Err(e.clone().into()),
            (s, None) => Err(ClientError::new(
                ErrorKind::Internal,
                format!("task ended {s} without an error"),
            )),
        }
    }
}
