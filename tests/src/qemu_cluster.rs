//! Two or three libvirt hosts with an agent each, for the migration suite
//! (`tests/tests/qemu_migration.rs`) and the migration benchmark
//! (`hostbus-bench migration`): agents `m1`.. taking migrations at their
//! host's unix-socket URI, guests that count on their serial console
//! (logged where every host reaches), and what reads them.

use std::path::Path;
use std::time::{Duration, Instant};

use hostbus_client::protocol::commands::VmMigrateRequest;
use hostbus_client::protocol::types::{
    BootSpec, DiskSpec, MigrationRecord, PowerState, Record, TaskRecord, TaskStatus, VmRecord,
    VmSpec,
};
use hostbus_client::{Client, ClientConfig, Host};

use crate::libvirt_hosts::{LibvirtHosts, VirtHost};
use crate::qemu_bench::BOOTED;
use crate::{type_on_serial, wait_for_text, watch_online, AgentProcess, QemuHost, RabbitNode};

/// What the counting guest prints before each number.
pub const COUNT: &str = "hb-count ";

/// Starts a counter on the guest's console, once however often it is typed:
/// `hb-count 1`, `hb-count 2`, ... one a second.
pub const START_COUNTING: &str = "[ -e /tmp/counting ] || { touch /tmp/counting; n=0; \
     while :; do n=$((n+1)); echo hb-count $n; sleep 1; done & }";

/// The counter's numbers in the console log, in order (the typed line's
/// echo, `echo hb-count $n`, is no number).
pub fn counts(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit_once(COUNT)?.1.trim().parse().ok())
        .collect()
}

/// The counter's last number in the console log (0 before the first).
pub fn last_count(log: &Path) -> u64 {
    counts(log).last().copied().unwrap_or(0)
}

/// Libvirt hosts `m1`.., an agent for each (taking migrations at its
/// host's unix-socket URI, consoles logged where every host reaches), a
/// private broker and an SDK client.
pub struct Cluster {
    /// The real hypervisor's environment (guest kernel and initramfs).
    pub q: QemuHost,
    /// The libvirt hosts.
    pub hosts: LibvirtHosts,
    /// Their agents, `m1`.. in order.
    pub agents: Vec<AgentProcess>,
    /// An SDK client on the broker.
    pub client: Client,
    /// The broker's URL.
    pub url: String,
    // Last: the broker outlives the agents and the client.
    _node: RabbitNode,
}

/// The host id of host `i` (from 0): `m1`, `m2`, ...
pub fn host_id(i: usize) -> String {
    format!("m{}", i + 1)
}

impl Cluster {
    /// `n` libvirt hosts with an agent each, online, a broker and a client.
    pub async fn start(q: QemuHost, n: usize) -> Self {
        let hosts = LibvirtHosts::start(n).expect("libvirt hosts");
        let node = RabbitNode::start().expect("rabbit");
        let url = node.amqp_url();
        let (_peer, mut online) = watch_online(&url).await;
        let mut agents = Vec::new();
        for i in 0..n {
            agents.push(Self::agent(&hosts, &url, i, None));
        }
        online
            .take(n, Duration::from_secs(60))
            .await
            .expect("agents online");
        let mut cfg = ClientConfig::new(url.clone());
        cfg.timeout = Duration::from_secs(120);
        let client = Client::connect(cfg).await.expect("client");
        Self {
            q,
            hosts,
            agents,
            client,
            url,
            _node: node,
        }
    }

    /// The agent of host `i` (on the journal of an earlier one, to restart it).
    pub fn agent(
        hosts: &LibvirtHosts,
        url: &str,
        i: usize,
        journal: Option<&Path>,
    ) -> AgentProcess {
        let h = &hosts.hosts()[i];
        let mut b = AgentProcess::builder(&host_id(i), url)
            .libvirt_uri(&h.uri)
            .env("HOSTBUS_DOMAIN_TYPE", "qemu")
            .env("HOSTBUS_MIGRATION_URI", &h.uri)
            .env(
                "HOSTBUS_CONSOLE_LOG_DIR",
                hosts.shared_dir().display().to_string(),
            )
            .env("HOSTBUS_RECONCILE_INTERVAL_MS", "2000")
            .env("HOSTBUS_HEARTBEAT_INTERVAL_MS", "1000")
            .env("HOSTBUS_RECONNECT_MAX_BACKOFF_MS", "1000");
        if let Some(j) = journal {
            b = b.journal_path(j);
        }
        b.spawn().expect("agent")
    }

    /// The real-hypervisor suites' turn (they share the machine's cores),
    /// then [`start`](Self::start); `None` when the suite is not configured
    /// here (and not required).
    pub async fn turn(n: usize) -> Option<(tokio::sync::MutexGuard<'static, ()>, Self)> {
        let turn = crate::qemu_bench::TURNS.lock().await;
        let q = QemuHost::from_env().expect("the real-hypervisor environment")?;
        Some((turn, Self::start(q, n).await))
    }

    /// Submits `req` on host `from` as a task and waits for its end.
    pub async fn migrate(&self, from: usize, req: VmMigrateRequest) -> TaskRecord {
        self.host(from)
            .submit::<hostbus_client::protocol::commands::VmMigrate>(req)
            .await
            .expect("submit vm.migrate")
            .wait(|_| {})
            .await
            .expect("the migration's task")
    }

    /// The power state of VM `uuid` on host `i`, as its agent reads it.
    pub async fn power_state(&self, i: usize, uuid: uuid::Uuid) -> PowerState {
        self.host(i)
            .vm(uuid)
            .get()
            .await
            .unwrap_or_else(|e| panic!("vm {uuid} on {}: {e}", host_id(i)))
            .power_state
    }

    /// Stops VM `uuid` on host `i` and removes it with its storage.
    pub async fn remove(&self, i: usize, uuid: uuid::Uuid) {
        let vm = self.host(i).vm(uuid);
        vm.destroy().await.expect("destroy");
        vm.undefine(true).await.expect("undefine");
    }

    /// The SDK handle of host `i`.
    pub fn host(&self, i: usize) -> Host {
        self.client.host(&host_id(i))
    }

    /// The libvirt host `i`.
    pub fn virt(&self, i: usize) -> &VirtHost {
        &self.hosts.hosts()[i]
    }

    /// A 128 MiB guest on host `i` booted to its shell and counting on its
    /// console; its record and console log.
    pub async fn counting_guest(
        &self,
        i: usize,
        name: &str,
        disks: Vec<DiskSpec>,
    ) -> (VmRecord, std::path::PathBuf) {
        let spec = VmSpec {
            disks,
            boot: BootSpec {
                order: vec![],
                kernel: Some(self.q.kernel.display().to_string()),
                initrd: Some(self.q.initrd.display().to_string()),
                cmdline: Some("console=ttyS0".into()),
            },
            ..VmSpec::new(name, 128 * 1024, 1)
        };
        let vm = self.host(i).define_vm(spec).await.expect("define");
        self.host(i).vm(vm.uuid).start().await.expect("start");
        let log = self.hosts.shared_dir().join(format!("{name}-serial0.log"));
        wait_for_text(&log, BOOTED, 1, Duration::from_secs(90)).expect("the guest boots");
        self.type_on(i, name, START_COUNTING, &log, &format!("{COUNT}1"));
        (vm, log)
    }

    /// Types `line` on the console of `name` on host `i` until `expect` shows.
    pub fn type_on(&self, i: usize, name: &str, line: &str, log: &Path, expect: &str) {
        let pty = self
            .virt(i)
            .virsh(&["ttyconsole", name])
            .expect("the console's pty");
        type_on_serial(
            Path::new(pty.trim()),
            line,
            log,
            expect,
            Duration::from_secs(30),
        )
        .expect("typed on the console");
    }

    /// The names of the domains of libvirt host `i`, by virsh.
    pub fn domains(&self, i: usize) -> Vec<String> {
        self.virt(i)
            .virsh(&["list", "--all", "--name"])
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for a in &self.agents {
                eprintln!("--- {}\n{}", a.host_id(), a.log_tail(40));
            }
        }
    }
}

/// A live migration of `uuid` to host `to`, storage shared, no limits.
pub fn migrate_req(uuid: uuid::Uuid, to: usize) -> VmMigrateRequest {
    VmMigrateRequest {
        uuid,
        destination: host_id(to),
        offline: false,
        copy_storage: false,
        bandwidth_mib_s: None,
        max_downtime_ms: None,
    }
}

/// The migration a successful `vm.migrate` task reports (panics otherwise).
pub fn migration_of(t: &TaskRecord) -> MigrationRecord {
    assert_eq!(t.status, TaskStatus::Success, "{:?}", t.error);
    match &t.result {
        Some(Record::Migration(m)) => (**m).clone(),
        other => panic!("not a migration's result: {other:?}"),
    }
}

/// Waits until the guest's counter passes `n`: it runs (somewhere).
pub async fn counts_past(log: &Path, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while last_count(log) <= n {
        assert!(
            Instant::now() < deadline,
            "the guest stopped counting at {}",
            last_count(log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (up to 60 s) until `task` reports `min` percent or ends.
pub async fn wait_progress(task: &hostbus_client::Task, min: u8) -> TaskRecord {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = task.get().await.expect("task");
        if t.progress >= min || t.status.is_final() {
            return t;
        }
        assert!(Instant::now() < deadline, "no progress: {t:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
