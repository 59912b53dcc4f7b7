//! Commands interrupted by a SIGKILL of their agent, on a real libvirtd
//! (whose state outlives the agent, unlike the test driver's), one test per
//! recovery class of bridge/src/recover.rs that leaves objects behind: a
//! re-run answered from the object's state (`volume.create`,
//! `volume.clone`, `snapshot.create`; `vm.define`, which also cleans what
//! a half-done run left, is tests/tests/qemu.rs's define burst). Each step
//! of a command pauses 300 ms (`HOSTBUS_STEP_PAUSE_MS`), before and after
//! the libvirt call, so the kill lands both before a command took effect
//! and after it took effect but before its reply. After the restart every
//! call is answered once, with the object that stands for it, and nothing
//! stands twice or half-made.
//!
//! Gated like the real-hypervisor suite (`scripts/qemu-setup`); its tests
//! share the machine's libvirtd with qemu.rs, whose binary scripts/test
//! runs before or after this one, never beside it.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use hostbus_client::protocol::types::{
    BootSpec, DiskBus, DiskDevice, DiskFormat, DiskSource, DiskSpec, ObjectClass, PoolKind,
    PoolSpec, VmSpec, VolumeSpec,
};
use hostbus_client::protocol::EventAction;
use hostbus_client::{Client, ClientConfig, Host, Notification, SubscribeOptions};
use hostbus_tests::{AgentProcess, QemuHost, RabbitNode, QEMU_PREFIX};
use tokio::sync::Mutex;

static TURNS: Mutex<()> = Mutex::const_new(());
const HOST: &str = "q1";
const MIB: u64 = 1 << 20;

/// A libvirtd, a private broker, an agent whose steps pause, a client and
/// a running dir pool.
struct Rig {
    q: QemuHost,
    agent: AgentProcess,
    client: Client,
    pool: String,
    _node: RabbitNode,
}

impl Rig {
    async fn start() -> Option<Self> {
        let q = QemuHost::from_env().expect("the real-hypervisor environment")?;
        q.start_libvirtd().expect("libvirtd runs");
        q.remove_leftovers();
        let node = RabbitNode::start().expect("rabbit");
        let agent = AgentProcess::builder(HOST, &node.amqp_url())
            .libvirt_uri(&q.uri)
            .env("HOSTBUS_DOMAIN_TYPE", "qemu")
            .env("HOSTBUS_CONCURRENCY", "2")
            .env("HOSTBUS_STEP_PAUSE_MS", "300")
            .env("HOSTBUS_RECONNECT_MAX_BACKOFF_MS", "1000")
            .spawn()
            .expect("agent");
        let mut cfg = ClientConfig::new(node.amqp_url());
        cfg.timeout = Duration::from_secs(90);
        let client = Client::connect(cfg).await.expect("client");
        let pool = format!("{QEMU_PREFIX}recovery");
        let rig = Self {
            q,
            agent,
            client,
            pool,
            _node: node,
        };
        rig.wait_serving().await;
        let host = rig.host();
        host.define_pool(PoolSpec {
            name: rig.pool.clone(),
            kind: PoolKind::Dir,
            target_path: rig.q.pool_dir(&rig.pool).display().to_string(),
            source: None,
            autostart: false,
        })
        .await
        .expect("define the pool");
        host.pool(&rig.pool).start().await.expect("start the pool");
        Some(rig)
    }

    fn host(&self) -> Host {
        self.client.host(HOST)
    }

    async fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = self.host().ping().await {
            assert!(
                Instant::now() < deadline,
                "the agent does not serve: {e}\n{}",
                self.agent.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs `calls` at once; once the first event of `class` shows that
    /// one took effect, SIGKILLs the agent, restarts it on its journal and
    /// returns every call's answer, panicking on any failure. Asserts that
    /// the kill hit commands in flight.
    async fn killed_during<T, F>(&mut self, class: ObjectClass, calls: Vec<F>) -> Vec<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, hostbus_client::ClientError>> + Send + 'static,
    {
        let mut sub = self
            .client
            .subscribe(
                &[&format!("{HOST}.#")],
                SubscribeOptions {
                    resync: false,
                    ..SubscribeOptions::default()
                },
            )
            .await
            .expect("subscribe");
        let running: Vec<_> = calls.into_iter().map(tokio::spawn).collect();
        let first = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(n) = sub.next().await {
                if let Ok(Notification::Event(e)) = n {
                    if e.class == class && e.action == EventAction::Created {
                        return;
                    }
                }
            }
        })
        .await;
        assert!(
            first.is_ok(),
            "no {class:?} was created\n{}",
            self.agent.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        self.agent.kill().expect("SIGKILL");
        self.agent.restart().expect("restart on the same journal");
        self.wait_serving().await;
        let mut answers = Vec::new();
        for call in running {
            let answer = call
                .await
                .expect("join")
                .unwrap_or_else(|e| panic!("a call failed: {e}\n{}", self.agent.log_tail(60)));
            answers.push(answer);
        }
        let log = self.agent.log();
        let second = log
            .split("=== hostbus-tests: start #2")
            .nth(1)
            .unwrap_or_default();
        let interrupted = second
            .matches("command was interrupted before it finished")
            .count();
        let from_state = second
            .matches("the interrupted command had already taken effect")
            .count();
        println!(
            "after the restart: {interrupted} interrupted commands re-run, {} answered from the journal, {from_state} answered from the object's state",
            second.matches("duplicate command answered from the journal").count(),
        );
        // The kill lands 150 ms into the 300 ms between a command's effect
        // (its event) and its reply: that command's re-run finds its object.
        assert!(
            interrupted >= 1 && from_state >= 1,
            "the kill must hit a command that took effect and was not answered\n{}",
            self.agent.log_tail(60)
        );
        answers
    }

    async fn volume_names(&self) -> BTreeSet<String> {
        self.host()
            .pool(&self.pool)
            .volumes()
            .await
            .expect("volumes")
            .into_iter()
            .map(|v| v.name)
            .collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.agent.log_tail(60));
        }
        self.q.remove_leftovers();
    }
}

fn volume(name: &str) -> VolumeSpec {
    VolumeSpec {
        name: name.into(),
        capacity_bytes: 16 * MIB,
        allocation_bytes: 0,
        format: DiskFormat::Qcow2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_created_while_their_agent_is_killed_stand_once_each() {
    let _turn = TURNS.lock().await;
    let Some(mut rig) = Rig::start().await else {
        return;
    };
    let names: Vec<String> = (0..8).map(|i| format!("v{i}.qcow2")).collect();
    let pool = rig.host().pool(&rig.pool);
    let calls = names
        .iter()
        .map(|n| {
            let (pool, spec) = (pool.clone(), volume(n));
            async move { pool.create_volume(spec).await }
        })
        .collect();
    let answers = rig.killed_during(ObjectClass::Volume, calls).await;
    let answered: BTreeSet<String> = answers.into_iter().map(|v| v.name).collect();
    let expected: BTreeSet<String> = names.into_iter().collect();
    assert_eq!(answered, expected);
    assert_eq!(rig.volume_names().await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_made_while_their_agent_is_killed_stand_once_each() {
    let _turn = TURNS.lock().await;
    let Some(mut rig) = Rig::start().await else {
        return;
    };
    let pool = rig.host().pool(&rig.pool);
    pool.create_volume(volume("src.qcow2"))
        .await
        .expect("the source");
    let names: Vec<String> = (0..6).map(|i| format!("c{i}.qcow2")).collect();
    let calls = names
        .iter()
        .map(|n| {
            let (pool, n) = (pool.clone(), n.clone());
            async move { pool.clone_volume("src.qcow2", &n).await }
        })
        .collect();
    let answers = rig.killed_during(ObjectClass::Volume, calls).await;
    let answered: BTreeSet<String> = answers.into_iter().map(|v| v.name).collect();
    let mut expected: BTreeSet<String> = names.into_iter().collect();
    assert_eq!(answered, expected);
    expected.insert("src.qcow2".into());
    assert_eq!(rig.volume_names().await, expected);
    for v in pool.volumes().await.expect("volumes") {
        assert_eq!(v.capacity_bytes, 16 * MIB, "{} is whole", v.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_taken_while_their_agent_is_killed_stand_once_each() {
    let _turn = TURNS.lock().await;
    let Some(mut rig) = Rig::start().await else {
        return;
    };
    let name = format!("{QEMU_PREFIX}snaps");
    let spec = VmSpec {
        disks: vec![DiskSpec {
            target: "vda".into(),
            source: DiskSource::NewVolume {
                pool: rig.pool.clone(),
                capacity_bytes: 16 * MIB,
            },
            bus: DiskBus::Virtio,
            format: None,
            read_only: false,
            device: DiskDevice::Disk,
        }],
        boot: BootSpec {
            order: vec![],
            kernel: Some(rig.q.kernel.display().to_string()),
            initrd: Some(rig.q.initrd.display().to_string()),
            cmdline: Some("console=ttyS0".into()),
        },
        ..VmSpec::new(&name, 128 * 1024, 1)
    };
    let vm = rig.host().define_vm(spec).await.expect("define");
    let handle = rig.host().vm(vm.uuid);
    let names: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    let calls = names
        .iter()
        .map(|n| {
            let (h, n) = (handle.clone(), n.clone());
            async move { h.snapshot(&n, "taken in a crash test").await }
        })
        .collect();
    let answers = rig.killed_during(ObjectClass::Snapshot, calls).await;
    let answered: BTreeSet<String> = answers.into_iter().map(|s| s.name).collect();
    let expected: BTreeSet<String> = names.into_iter().collect();
    assert_eq!(answered, expected);
    let standing: Vec<String> = handle
        .snapshots()
        .await
        .expect("snapshots")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(standing.len(), expected.len(), "{standing:?}");
    assert_eq!(standing.into_iter().collect::<BTreeSet<_>>(), expected);
    handle.undefine(true).await.expect("undefine");
}
