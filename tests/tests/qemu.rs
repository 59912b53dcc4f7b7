//! The real-hypervisor suite: a tiny Debian guest under QEMU (TCG) and
//! libvirtd, driven through a real agent and the SDK over a private
//! RabbitMQ node, as a cluster manager would.
//!
//! Needs what `scripts/qemu-setup` prepares (scripts/test runs it): without
//! its environment the suite says so and does not run, except where it is
//! required (`HOSTBUS_QEMU_REQUIRED` or `CI`), where that is a failure
//! (`hostbus_tests::QemuHost::from_env`). The tests share one libvirtd
//! (one of them restarts it), so they take turns.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use hostbus_client::protocol::types::{
    BootSpec, CpuMode, DiskBus, DiskDevice, DiskFormat, DiskSource, DiskSpec, ForwardMode,
    HealthStatus, NetworkSpec, ObjectClass, PoolKind, PoolSpec, PowerState, Record, VmRecord,
    VmSpec, VolumeRef, VolumeSpec,
};
use hostbus_client::protocol::{ErrorCode, Event, EventAction};
use hostbus_client::{
    Client, ClientConfig, ClientError, Host, Notification, SubscribeOptions, Subscription,
};
use hostbus_tests::{
    nat_network, volume_disk, wait_for_text, AgentProcess, Hostctl, QemuHost, RabbitNode,
    QEMU_PREFIX,
};
use tokio::sync::Mutex;

/// The tests share libvirtd (one stops it) and two cores: one at a time.
static TURNS: Mutex<()> = Mutex::const_new(());

const BOOTED: &str = "hostbus-guest: up after";
const HOST: &str = "q1";
const MIB: u64 = 1 << 20;

/// What every test starts with: the hypervisor, a private broker, an agent
/// serving `qemu:///system` with TCG guests, and an SDK client.
struct Bench {
    q: QemuHost,
    url: String,
    agent: AgentProcess,
    client: Client,
    // Last: the broker outlives the agent and the client.
    _node: RabbitNode,
}

impl Bench {
    /// `None` when the suite is not configured here (and not required).
    async fn start(reconcile_ms: u64) -> Option<Self> {
        Self::start_with(reconcile_ms, &[]).await
    }

    /// The suite's turn (its tests share one libvirtd and run one at a
    /// time), then [`start`](Self::start).
    async fn turn(reconcile_ms: u64) -> Option<(tokio::sync::MutexGuard<'static, ()>, Self)> {
        let turn = TURNS.lock().await;
        Some((turn, Self::start(reconcile_ms).await?))
    }

    /// [`turn`](Self::turn), then the host's handle and its events from now
    /// on.
    async fn turn_watched(reconcile_ms: u64) -> Option<Watched> {
        let (turn, b) = Self::turn(reconcile_ms).await?;
        let host = b.host();
        let ev = b.events().await;
        Some((turn, b, host, ev))
    }

    /// [`start`](Self::start) with more agent settings.
    async fn start_with(reconcile_ms: u64, env: &[(&str, &str)]) -> Option<Self> {
        let q = QemuHost::from_env().expect("the real-hypervisor environment")?;
        q.start_libvirtd().expect("libvirtd runs");
        q.remove_leftovers();
        let node = RabbitNode::start().expect("rabbit");
        let url = node.amqp_url();
        let mut builder = AgentProcess::builder(HOST, &url)
            .libvirt_uri(&q.uri)
            .env("HOSTBUS_DOMAIN_TYPE", "qemu")
            .env("HOSTBUS_RECONCILE_INTERVAL_MS", reconcile_ms.to_string())
            .env("HOSTBUS_RECONNECT_MAX_BACKOFF_MS", "1000");
        for (k, v) in env {
            builder = builder.env(*k, *v);
        }
        let agent = builder.spawn().expect("agent");
        let mut cfg = ClientConfig::new(url.clone());
        cfg.timeout = Duration::from_secs(90);
        let client = Client::connect(cfg).await.expect("client");
        let bench = Self {
            q,
            url,
            agent,
            client,
            _node: node,
        };
        bench.wait_serving().await;
        Some(bench)
    }

    fn host(&self) -> Host {
        self.client.host(HOST)
    }

    async fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.host().ping().await {
                Ok(_) => return,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("the agent does not serve: {e}\n{}", self.agent.log_tail(40)),
            }
        }
    }

    async fn events(&self) -> Events {
        let sub = self
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
        Events {
            sub,
            seen: Vec::new(),
        }
    }

    /// A running dir pool `<prefix>pool` under the suite's home.
    async fn pool(&self, name: &str) {
        let dir = self.q.pool_dir(name);
        self.host()
            .define_pool(PoolSpec {
                name: name.into(),
                kind: PoolKind::Dir,
                target_path: dir.display().to_string(),
                source: None,
                autostart: false,
            })
            .await
            .expect("define the pool");
        self.host()
            .pool(name)
            .start()
            .await
            .expect("start the pool");
    }

    /// A VM spec booting the guest's kernel and initramfs on a serial console.
    fn guest(&self, name: &str, disks: Vec<DiskSpec>, cmdline: &str) -> VmSpec {
        VmSpec {
            description: "hostbus real-hypervisor suite".into(),
            max_memory_kib: Some(256 * 1024),
            disks,
            boot: BootSpec {
                order: vec![],
                kernel: Some(self.q.kernel.display().to_string()),
                initrd: Some(self.q.initrd.display().to_string()),
                cmdline: Some(format!("console=ttyS0 {cmdline}")),
            },
            ..VmSpec::new(name, 192 * 1024, 1)
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.agent.log_tail(60));
        }
        self.q.remove_leftovers();
    }
}

/// Every event of the host, kept, with waits for particular ones.
/// The names of the volumes in `pool`.
async fn volume_names(pool: &hostbus_client::Pool) -> Vec<String> {
    pool.volumes()
        .await
        .expect("volumes")
        .into_iter()
        .map(|v| v.name)
        .collect()
}

/// The suite's turn, a bench, its host and its events.
type Watched = (tokio::sync::MutexGuard<'static, ()>, Bench, Host, Events);

struct Events {
    sub: Subscription,
    seen: Vec<Event>,
}

impl Events {
    async fn next_matching(
        &mut self,
        within: Duration,
        what: &str,
        pred: impl Fn(&Event) -> bool,
    ) -> Event {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.sub.next()).await {
                Ok(Some(Ok(Notification::Event(e)))) => {
                    let e = *e;
                    self.seen.push(e.clone());
                    if pred(&e) {
                        return e;
                    }
                }
                Ok(Some(Ok(Notification::Resync { .. }))) => {}
                Ok(Some(Err(e))) => panic!("the event subscription failed: {e}"),
                Ok(None) => panic!("the event subscription ended"),
                Err(_) => panic!(
                    "no event {what} within {within:?}; seen: {:?}",
                    self.seen
                        .iter()
                        .map(|e| format!("{}:{}#{}", e.routing_key(), e.object_id, e.generation))
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Waits for `action` on VM `vm`.
    async fn vm(&mut self, vm: &VmRecord, action: EventAction, within: Duration) -> VmRecord {
        let id = vm.uuid.to_string();
        let e = self
            .next_matching(within, &format!("vm.{action} of {}", vm.name), |e| {
                e.class == ObjectClass::Vm && e.object_id == id && e.action == action
            })
            .await;
        match e.record {
            Record::Vm(v) => v,
            // Gone (undefined): the event carries no record.
            Record::None => VmRecord {
                generation: e.generation,
                ..vm.clone()
            },
            other => panic!("a vm event with another record: {other:?}"),
        }
    }

    /// Events of `vm` in a window, without waiting for any in particular.
    async fn drain(&mut self, window: Duration) {
        let until = Instant::now() + window;
        while let Ok(Some(Ok(n))) = tokio::time::timeout(
            until.saturating_duration_since(Instant::now()),
            self.sub.next(),
        )
        .await
        {
            if let Notification::Event(e) = n {
                self.seen.push(*e);
            }
        }
    }

    /// The actions seen for object `id`, in order, after checking that its
    /// generations only grew.
    fn history(&self, id: &str) -> Vec<EventAction> {
        let mine: Vec<&Event> = self.seen.iter().filter(|e| e.object_id == id).collect();
        for w in mine.windows(2) {
            assert!(
                w[1].generation > w[0].generation,
                "generations of {id} must grow: {} #{} then {} #{}",
                w[0].action,
                w[0].generation,
                w[1].action,
                w[1].generation
            );
        }
        mine.iter().map(|e| e.action).collect()
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    r.expect_err("expected an error")
        .code()
        .unwrap_or(ErrorCode::Unknown)
}

fn console_log(vm: &VmRecord) -> String {
    vm.console
        .as_ref()
        .and_then(|c| c.log_path.clone())
        .unwrap_or_else(|| panic!("{} has no console log: {:?}", vm.name, vm.console))
}

/// Waits until the console shows `needle` `times` times.
fn console(vm: &VmRecord, needle: &str, times: usize, within: Duration) -> String {
    wait_for_text(Path::new(&console_log(vm)), needle, times, within)
        .unwrap_or_else(|e| panic!("{}: {e}", vm.name))
}

/// The guest's last report of its disks (`hostbus-guest: disks: vda vdb`).
fn guest_disks(vm: &VmRecord) -> String {
    std::fs::read_to_string(console_log(vm))
        .unwrap_or_default()
        .lines()
        .rev()
        .find_map(|l| l.split("hostbus-guest: disks:").nth(1))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Types `line` on the guest's serial console through its host pty until
/// the console shows `expect`. QEMU notices a reader of its pty only on a
/// timer (about a second), so the pty stays open and the line is repeated.
fn type_on_console(vm: &VmRecord, pty: &str, line: &str, expect: &str) {
    use std::io::Write;
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(pty)
        .unwrap_or_else(|e| panic!("cannot open {pty}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tty.write_all(format!("{line}\r").as_bytes())
            .expect("type on the console");
        if wait_for_text(
            Path::new(&console_log(vm)),
            expect,
            1,
            Duration::from_secs(2),
        )
        .is_ok()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: typing {line:?} did not bring {expect:?}",
            vm.name
        );
    }
}

/// Starts libvirtd again if a test that stopped it ends early.
struct StartLibvirtdOnDrop(bool, QemuHost);

impl Drop for StartLibvirtdOnDrop {
    fn drop(&mut self) {
        if self.0 {
            if let Err(e) = self.1.start_libvirtd() {
                eprintln!("cannot start libvirtd again: {e}");
            }
        }
    }
}

async fn wait_guest_disks(vm: &VmRecord, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while guest_disks(vm) != want {
        assert!(
            Instant::now() < deadline,
            "the guest of {} reports disks {:?}, not {want:?}",
            vm.name,
            guest_disks(vm)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// --------------------------------------------------------------------- 1

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_lives_its_whole_life_through_the_agent() {
    // Reconciliation is rare here: every event below comes from libvirt's
    // callbacks or the operations themselves.
    let Some((_turn, b, host, mut ev)) = Bench::turn_watched(120_000).await else {
        return;
    };
    let pool = format!("{QEMU_PREFIX}pool");
    let started_at = Instant::now();

    // The host as QEMU reports it.
    let info = host.info().await.expect("host.info");
    assert_eq!(info.hypervisor, "QEMU");
    assert!(
        !info.cpu_model.is_empty() && info.cpu_model != info.arch,
        "host.cpu_model names a CPU model, not the architecture: {info:?}"
    );
    let stats = host.stats().await.expect("host.stats");
    assert!(
        stats.cpu_time_ns.get("idle").is_some_and(|n| *n > 0)
            && stats.cpu_time_ns.contains_key("user"),
        "host CPU times: {:?}",
        stats.cpu_time_ns
    );

    // Storage: a directory pool, a qcow2 root volume and a raw data volume.
    b.pool(&pool).await;
    let p = host.pool(&pool);
    let vol = |name: &str, mib: u64, format| VolumeSpec {
        name: name.into(),
        capacity_bytes: mib * MIB,
        allocation_bytes: 0,
        format,
    };
    p.create_volume(vol("root.qcow2", 64, DiskFormat::Qcow2))
        .await
        .expect("root volume");
    p.create_volume(vol("data.img", 16, DiskFormat::Raw))
        .await
        .expect("data volume");

    // A format that contradicts the volume is refused before anything exists.
    let name = format!("{QEMU_PREFIX}life");
    let wrong = b.guest(
        &name,
        vec![volume_disk(
            "vda",
            &pool,
            "root.qcow2",
            Some(DiskFormat::Raw),
        )],
        "",
    );
    let err = host
        .define_vm(wrong)
        .await
        .expect_err("raw for a qcow2 volume");
    assert_eq!(
        (err.code(), err.param("field")),
        (
            Some(ErrorCode::InvalidArgument),
            Some("spec.disks[0].format")
        ),
        "{err}"
    );

    // Define from the volume: its format, pool and path are the volume's.
    let spec = b.guest(
        &name,
        vec![volume_disk("vda", &pool, "root.qcow2", None)],
        "",
    );
    let vm = host.define_vm(spec).await.expect("define");
    let defined = ev
        .vm(&vm, EventAction::Defined, Duration::from_secs(10))
        .await;
    assert_eq!(defined.uuid, vm.uuid);
    assert_eq!(
        vm.domain_type.as_deref(),
        Some("qemu"),
        "TCG, as configured"
    );
    assert_eq!(vm.cpu_mode, Some(CpuMode::Maximum), "TCG's default CPU");
    let vda = &vm.disks[0];
    assert_eq!(vda.format, DiskFormat::Qcow2);
    assert_eq!(
        vda.volume,
        Some(VolumeRef {
            pool: pool.clone(),
            volume: "root.qcow2".into()
        })
    );
    assert_eq!(
        vda.source_path.as_deref(),
        Some(
            b.q.pool_dir(&pool)
                .join("root.qcow2")
                .to_str()
                .expect("utf-8")
        )
    );
    let _ = std::fs::remove_file(console_log(&vm));
    let h = host.vm(vm.uuid);
    assert_eq!(
        code(p.delete_volume("root.qcow2").await),
        ErrorCode::VolumeInUse,
        "a volume a defined vm boots from is not deleted"
    );

    // Start, and watch the guest boot on its serial console.
    let t = Instant::now();
    let running = h.start().await.expect("start");
    assert_eq!(running.power_state, PowerState::Running);
    let pty = running
        .console
        .as_ref()
        .and_then(|c| c.pty.clone())
        .expect("a running vm's console has a pty");
    assert!(pty.starts_with("/dev/pts/"), "{pty}");
    let log = console(&running, BOOTED, 1, Duration::from_secs(60));
    let boot = t.elapsed();
    let guest_uptime = log
        .lines()
        .find_map(|l| l.split(BOOTED).nth(1))
        .unwrap_or_default()
        .trim()
        .to_owned();
    println!(
        "TCG boot: shell on the console {boot:?} after vm.start (guest uptime {guest_uptime})"
    );
    ev.vm(&vm, EventAction::Started, Duration::from_secs(10))
        .await;
    wait_guest_disks(&running, "vda").await;

    // An image a running guest writes can be neither cloned nor deleted.
    assert_eq!(
        code(p.clone_volume("root.qcow2", "copy.qcow2").await),
        ErrorCode::VolumeInUse
    );

    // A raw disk attached live: the guest sees it; a snapshot is refused
    // clearly (internal snapshots need qcow2); the volume grows live.
    let r = h
        .attach_disk(volume_disk("vdb", &pool, "data.img", None))
        .await
        .expect("attach live");
    let vdb = r.disks.iter().find(|d| d.target == "vdb").expect("vdb");
    assert_eq!(vdb.format, DiskFormat::Raw, "the volume's own format");
    wait_guest_disks(&running, "vda vdb").await;
    let err = h.snapshot("s0", "").await.expect_err("a raw disk");
    assert_eq!(err.code(), Some(ErrorCode::OperationNotSupported), "{err}");
    assert!(err.message().contains("vdb"), "{err}");
    let grown = p
        .resize_volume("data.img", 32 * MIB)
        .await
        .expect("live resize");
    assert_eq!(grown.capacity_bytes, 32 * MIB);
    console(
        &running,
        "capacity change from 32768 to 65536",
        1,
        Duration::from_secs(20),
    );
    h.detach_disk("vdb").await.expect("detach live");
    wait_guest_disks(&running, "vda").await;

    // A guest that cannot answer (paused) keeps the device: the detach says
    // so, and the removal is an event once the guest lets it go.
    h.attach_disk(volume_disk("vdb", &pool, "data.img", None))
        .await
        .expect("attach again");
    wait_guest_disks(&running, "vda vdb").await;
    h.pause().await.expect("pause");
    ev.vm(&vm, EventAction::Paused, Duration::from_secs(10))
        .await;
    let err = h
        .detach_disk("vdb")
        .await
        .expect_err("a paused guest cannot release it");
    assert_eq!(
        (err.code(), err.param("device")),
        (Some(ErrorCode::DeviceDetachPending), Some("vdb")),
        "{err}"
    );
    assert!(
        h.get()
            .await
            .expect("get")
            .disks
            .iter()
            .any(|d| d.target == "vdb"),
        "the device is still there"
    );
    h.resume().await.expect("resume");
    let id = vm.uuid.to_string();
    ev.next_matching(Duration::from_secs(20), "the removal of vdb", |e| {
        e.object_id == id
            && matches!(&e.record, Record::Vm(v) if v.disks.iter().all(|d| d.target != "vdb"))
    })
    .await;
    wait_guest_disks(&running, "vda").await;

    // Memory, through the guest's balloon: in effect (and an event) once
    // the guest has given it back.
    h.set_memory(128 * 1024).await.expect("set memory");
    ev.next_matching(Duration::from_secs(30), "memory at 128 MiB", |e| {
        e.object_id == id && matches!(&e.record, Record::Vm(v) if v.memory_kib == 128 * 1024)
    })
    .await;

    // Snapshot of the running guest, revert, delete.
    let s = h.snapshot("s1", "running guest").await.expect("snapshot");
    assert_eq!(s.vm_power_state, PowerState::Running);
    let r = h.revert("s1").await.expect("revert");
    assert_eq!(r.power_state, PowerState::Running);
    h.delete_snapshot("s1").await.expect("delete snapshot");
    assert!(h.snapshots().await.expect("snapshots").is_empty());

    // Suspend to disk and back.
    let r = h.suspend().await.expect("suspend");
    assert_eq!(r.power_state, PowerState::Suspended);
    ev.vm(&vm, EventAction::Suspended, Duration::from_secs(10))
        .await;
    let r = h.resume().await.expect("restore");
    assert_eq!(r.power_state, PowerState::Running);

    // A reboot the guest performs: the event comes when it happens.
    let boots = std::fs::read_to_string(console_log(&vm))
        .unwrap_or_default()
        .matches(BOOTED)
        .count();
    h.reboot().await.expect("reboot");
    ev.vm(&vm, EventAction::Rebooted, Duration::from_secs(30))
        .await;
    console(&running, BOOTED, boots + 1, Duration::from_secs(60));

    // Clean shutdown through ACPI.
    let r = h
        .shutdown(Duration::from_secs(60), false)
        .await
        .expect("clean shutdown");
    assert_eq!(r.power_state, PowerState::Halted);
    console(
        &running,
        "hostbus-guest: power button",
        1,
        Duration::from_secs(5),
    );
    ev.vm(&vm, EventAction::Stopped, Duration::from_secs(10))
        .await;

    // Undefine with storage: its own disk goes, a read-only one stays.
    h.attach_disk(DiskSpec {
        read_only: true,
        ..volume_disk("vdb", &pool, "data.img", None)
    })
    .await
    .expect("attach read-only to the halted vm");
    h.undefine(true).await.expect("undefine with storage");
    ev.vm(&vm, EventAction::Undefined, Duration::from_secs(10))
        .await;
    let left = volume_names(&p).await;
    assert_eq!(
        left,
        ["data.img"],
        "root.qcow2 removed, the read-only data.img kept"
    );

    // Every event of the vm, in order, with growing generations.
    ev.drain(Duration::from_millis(500)).await;
    let history = ev.history(&vm.uuid.to_string());
    for a in [
        EventAction::Defined,
        EventAction::Started,
        EventAction::Paused,
        EventAction::Resumed,
        EventAction::Suspended,
        EventAction::Rebooted,
        EventAction::Stopped,
        EventAction::Undefined,
    ] {
        assert!(history.contains(&a), "no {a} in {history:?}");
    }
    println!(
        "whole life of {name}: {:?}, {} events: {:?}",
        started_at.elapsed(),
        history.len(),
        history
    );
}

// --------------------------------------------------------------------- 2

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_a_guest_ignores_are_not_reported_as_done() {
    let Some((_turn, b, host, mut ev)) = Bench::turn_watched(120_000).await else {
        return;
    };
    // No disk, and a guest that ignores the power button.
    let mut spec = b.guest(&format!("{QEMU_PREFIX}deaf"), vec![], "hostbus.noacpi");
    spec.max_vcpus = Some(2);
    let vm = host.define_vm(spec).await.expect("define");
    let _ = std::fs::remove_file(console_log(&vm));
    let h = host.vm(vm.uuid);
    let running = h.start().await.expect("start");
    console(&running, BOOTED, 1, Duration::from_secs(60));

    // A vCPU the guest cannot release (it is paused): one timeout, as
    // libvirt reports it, and the change applied nowhere.
    let r = h.set_vcpus(2).await.expect("hotplug a vcpu");
    assert_eq!(r.vcpus, 2);
    h.pause().await.expect("pause");
    let t = Instant::now();
    let err = h
        .set_vcpus(1)
        .await
        .expect_err("a paused guest cannot unplug");
    let took = t.elapsed();
    assert_eq!(err.code(), Some(ErrorCode::Timeout), "{err}");
    assert!(
        took < Duration::from_secs(8),
        "one wait for the guest, not a retry: {took:?}"
    );
    assert_eq!(h.get().await.expect("get").vcpus, 2, "nothing half-applied");
    h.resume().await.expect("resume");

    // Nothing to keep a snapshot in: a clear refusal, not INTERNAL.
    let err = h.snapshot("s", "").await.expect_err("no disk");
    assert_eq!(err.code(), Some(ErrorCode::OperationNotSupported), "{err}");

    // The reboot request is accepted and ignored: no `rebooted` event.
    ev.drain(Duration::from_millis(300)).await;
    h.reboot().await.expect("the request is delivered");
    ev.drain(Duration::from_secs(5)).await;
    let id = vm.uuid.to_string();
    let rebooted = ev
        .seen
        .iter()
        .filter(|e| e.object_id == id && e.action == EventAction::Rebooted)
        .count();
    assert_eq!(rebooted, 0, "nothing rebooted: {:?}", ev.history(&id));

    // A clean shutdown it ignores times out; forced, it ends halted.
    let err = h
        .shutdown(Duration::from_secs(3), false)
        .await
        .expect_err("ignored");
    assert_eq!(err.code(), Some(ErrorCode::Timeout), "{err}");
    let r = h
        .shutdown(Duration::from_secs(1), true)
        .await
        .expect("forced");
    assert_eq!(r.power_state, PowerState::Halted);
    h.undefine(false).await.expect("undefine");
}

// --------------------------------------------------------------------- 3

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_are_defined_started_and_stopped() {
    let Some((_turn, b)) = Bench::turn(120_000).await else {
        return;
    };
    let host = b.host();
    let nat = format!("{QEMU_PREFIX}nat");
    let n = host
        .define_network(nat_network(
            &nat,
            "hbqbr0",
            "10.203.77.1",
            ("10.203.77.100", "10.203.77.199"),
        ))
        .await
        .expect("define a NAT network");
    assert!(!n.active);
    let net = host.network(&nat);
    let n = net.start().await.expect("start");
    assert!(n.active);
    assert_eq!(n.bridge.as_deref(), Some("hbqbr0"));
    let n = net.stop().await.expect("stop");
    assert!(!n.active);
    net.undefine().await.expect("undefine");

    // A network on an existing host bridge is defined without the stp and
    // delay libvirt refuses for it.
    let bridged = format!("{QEMU_PREFIX}lan");
    let n = host
        .define_network(NetworkSpec {
            name: bridged.clone(),
            bridge: Some("hbqlan0".into()),
            forward: ForwardMode::Bridge,
            ip: None,
            autostart: false,
        })
        .await
        .expect("define a bridge network");
    assert_eq!(n.forward, ForwardMode::Bridge);
    host.network(&bridged).undefine().await.expect("undefine");
}

// --------------------------------------------------------------------- 4

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_during_a_define_burst_answers_each_and_defines_one_vm_each() {
    let _turn = TURNS.lock().await;
    // Two at a time, each step of a definition 300 ms long (its volume,
    // then the vm), so the kill lands in the middle of some.
    let Some(mut b) = Bench::start_with(
        120_000,
        &[
            ("HOSTBUS_CONCURRENCY", "2"),
            ("HOSTBUS_STEP_PAUSE_MS", "300"),
        ],
    )
    .await
    else {
        return;
    };
    let pool = format!("{QEMU_PREFIX}burst");
    b.pool(&pool).await;
    let host = b.host();
    let mut ev = b.events().await;

    // Eight definitions, each creating a volume; the agent dies while they run.
    let names: Vec<String> = (0..8).map(|i| format!("{QEMU_PREFIX}burst-{i}")).collect();
    let calls: Vec<_> = names
        .iter()
        .map(|n| {
            let host = host.clone();
            let mut spec = b.guest(n, vec![], "");
            spec.disks = vec![DiskSpec {
                target: "vda".into(),
                source: DiskSource::NewVolume {
                    pool: pool.clone(),
                    capacity_bytes: 16 * MIB,
                },
                bus: DiskBus::Virtio,
                format: None,
                read_only: false,
                device: DiskDevice::Disk,
            }];
            tokio::spawn(async move { host.define_vm(spec).await })
        })
        .collect();
    ev.next_matching(Duration::from_secs(60), "a first definition", |e| {
        e.class == ObjectClass::Vm && e.action == EventAction::Defined
    })
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    b.agent.kill().expect("SIGKILL");
    let killed = Instant::now();
    b.agent.restart().expect("restart on the same journal");
    b.wait_serving().await;
    println!("agent back {:?} after SIGKILL", killed.elapsed());

    // Every call is answered, with the one VM that stands for it.
    let mut answers: BTreeMap<String, VmRecord> = BTreeMap::new();
    for (name, call) in names.iter().zip(calls) {
        let vm = call
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", b.agent.log_tail(60)));
        assert_eq!(&vm.name, name);
        answers.insert(name.clone(), vm);
    }
    let vms = host.vms(None).await.expect("vm.list");
    for (name, answer) in &answers {
        let now: Vec<&VmRecord> = vms.iter().filter(|v| &v.name == name).collect();
        assert_eq!(now.len(), 1, "{name} is defined exactly once");
        assert_eq!(
            now[0].uuid, answer.uuid,
            "{name}: the answer is the vm that stands"
        );
        assert_eq!(now[0].disks.len(), 1, "{name}");
    }
    // libvirtd holds the state: no volume without its vm, none twice.
    let mut volumes = volume_names(&host.pool(&pool)).await;
    volumes.sort();
    let mut expected: Vec<String> = names.iter().map(|n| format!("{n}-vda.qcow2")).collect();
    expected.sort();
    assert_eq!(volumes, expected);
    let log = b.agent.log();
    let second = log
        .split("=== hostbus-tests: start #2")
        .nth(1)
        .unwrap_or_default();
    let interrupted = second
        .matches("command was interrupted before it finished")
        .count();
    println!(
        "after the restart: {interrupted} interrupted commands re-run, {} answered from the journal",
        second.matches("duplicate command answered from the journal").count()
    );
    assert!(
        interrupted >= 1,
        "the kill must hit running definitions\n{}",
        b.agent.log_tail(60)
    );
}

// --------------------------------------------------------------------- 5

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libvirtd_restart_is_seen_in_health_and_loses_no_change() {
    // Reconciliation every second: it is what reconnects and catches up.

    let Some((_turn, b, host, mut ev)) = Bench::turn_watched(1_000).await else {
        return;
    };
    let presence = b.client.presence().await.expect("presence");
    let health = || {
        presence
            .hosts()
            .into_iter()
            .find(|h| h.host_id == HOST)
            .map(|h| h.health.status)
    };
    let wait_health = |want: HealthStatus| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while health() != Some(want) {
            assert!(
                Instant::now() < deadline,
                "health is {:?}, not {want}",
                health()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    wait_health(HealthStatus::Ok).await;

    // This one through hostctl, as an operator would.
    let name = format!("{QEMU_PREFIX}restart");
    let _ = std::fs::remove_file(format!("/var/log/libvirt/qemu/{name}-serial0.log"));
    let created = Hostctl::new(&b.url).json(&[
        "vm",
        "create",
        HOST,
        "--name",
        &name,
        "--memory",
        "192",
        "--kernel",
        b.q.kernel.to_str().expect("utf-8"),
        "--initrd",
        b.q.initrd.to_str().expect("utf-8"),
        "--cmdline",
        "console=ttyS0",
        "--cpu-mode",
        "maximum",
        "--start",
    ]);
    let vm: VmRecord = serde_json::from_value(created).expect("a vm record");
    assert_eq!(vm.power_state, PowerState::Running);
    assert_eq!(vm.boot.cmdline.as_deref(), Some("console=ttyS0"));
    let h = host.vm(vm.uuid);
    let running = h.get().await.expect("get");
    console(&running, BOOTED, 1, Duration::from_secs(60));
    let before = ev
        .vm(&vm, EventAction::Started, Duration::from_secs(10))
        .await;
    let where_ = Hostctl::new(&b.url).json(&["vm", "console", &format!("{HOST}/{name}")]);
    assert_eq!(where_["log_path"].as_str(), Some(console_log(&vm).as_str()));
    assert!(
        where_["attach"]
            .as_str()
            .is_some_and(|a| a.contains("virsh")),
        "{where_}"
    );

    // libvirtd goes away: health goes down, commands say the host is unavailable.
    let mut restart = StartLibvirtdOnDrop(true, b.q.clone());
    b.q.stop_libvirtd().expect("stop libvirtd");
    wait_health(HealthStatus::Down).await;
    assert_eq!(code(h.get().await), ErrorCode::HostUnavailable);

    // Meanwhile the guest powers itself off (typed on its serial console);
    // nobody is connected to tell.
    let pty = where_["pty"]
        .as_str()
        .expect("the console's pty")
        .to_owned();
    type_on_console(&running, &pty, "poweroff", "reboot: Power down");

    // libvirtd is back: health recovers and the missed change is an event.
    b.q.start_libvirtd().expect("start libvirtd");
    restart.0 = false;
    wait_health(HealthStatus::Ok).await;
    let stopped = ev
        .vm(&vm, EventAction::Stopped, Duration::from_secs(30))
        .await;
    assert!(stopped.generation > before.generation);
    assert_eq!(h.get().await.expect("get").power_state, PowerState::Halted);

    // Events go on as before.
    h.undefine(false).await.expect("undefine");
    let gone = ev
        .next_matching(Duration::from_secs(10), "vm.undefined", |e| {
            e.object_id == vm.uuid.to_string() && e.action == EventAction::Undefined
        })
        .await;
    assert!(gone.generation > stopped.generation);
}

// --------------------------------------------------------------------- 6

/// A hypervisor host without `qemu-img` (Debian's `qemu-utils`, only a
/// recommendation of QEMU's packages) says so in its capabilities and
/// refuses a qcow2 volume with a structured error naming the package, not
/// `INTERNAL`; it still creates raw volumes. The agent is started with a
/// `PATH` where no `qemu-img` is, as on such a host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_qemu_img_says_which_volumes_it_can_create() {
    let _turn = TURNS.lock().await;
    let Some(b) = Bench::start(120_000).await else {
        return;
    };
    let caps = b.host().capabilities().await.expect("capabilities");
    assert_eq!(caps.volume_formats, [DiskFormat::Raw, DiskFormat::Qcow2]);
    drop(b);

    let Some(b) = Bench::start_with(120_000, &[("PATH", "/nonexistent")]).await else {
        return;
    };
    let caps = b.host().capabilities().await.expect("capabilities");
    assert_eq!(caps.volume_formats, [DiskFormat::Raw]);
    let pool = format!("{QEMU_PREFIX}noimg");
    b.pool(&pool).await;
    let p = b.host().pool(&pool);
    let vol = |name: &str, format| VolumeSpec {
        name: name.into(),
        capacity_bytes: 8 * MIB,
        allocation_bytes: 0,
        format,
    };
    let e = p
        .create_volume(vol("disk.qcow2", DiskFormat::Qcow2))
        .await
        .expect_err("no qemu-img for qcow2");
    assert_eq!(e.code(), Some(ErrorCode::OperationNotSupported), "{e}");
    assert!(
        e.param("reason").is_some_and(|r| r.contains("qemu-utils")),
        "{e}"
    );
    assert_eq!(volume_names(&p).await, Vec::<String>::new());
    let raw = p
        .create_volume(vol("disk.raw", DiskFormat::Raw))
        .await
        .expect("a raw volume needs no qemu-img");
    assert_eq!(raw.format, DiskFormat::Raw);
    p.delete_volume("disk.raw").await.expect("delete");
}

/// Whether virtlogd answers on its admin socket.
fn virtlogd_answers() -> bool {
    std::process::Command::new("virt-admin")
        .args(["-q", "-c", "virtlogd:///system", "version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `scripts/qemu-setup` starts a daemon the suite needs when it does not
/// answer on its socket, whatever runs under its name: in a chroot, the
/// surrounding machine's virtlogd made it skip starting one, and every
/// `vm.start` then failed with `HOST_UNAVAILABLE: Failed to connect socket
/// to '/run/libvirt/virtlogd-sock'`. Here a decoy named `virtlogd` runs
/// while the real one is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setup_starts_virtlogd_when_only_a_decoy_of_its_name_runs() {
    let _turn = TURNS.lock().await;
    let Some(q) = QemuHost::from_env().expect("the real-hypervisor environment") else {
        return;
    };
    let pkill = std::process::Command::new("pkill")
        .args(["-x", "virtlogd"])
        .status()
        .expect("pkill");
    assert!(pkill.success(), "no virtlogd was running");
    let end = Instant::now() + Duration::from_secs(10);
    while virtlogd_answers() {
        assert!(Instant::now() < end, "virtlogd does not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dir = hostbus_tests::TempDir::new("decoy").expect("a folder");
    let decoy_bin = dir.join("virtlogd");
    std::fs::copy("/bin/sleep", &decoy_bin).expect("copy sleep");
    let mut decoy = std::process::Command::new(&decoy_bin)
        .arg("120")
        .spawn()
        .expect("the decoy");
    let started = q.start_libvirtd();
    let answers = virtlogd_answers();
    let _ = decoy.kill();
    let _ = decoy.wait();
    started.expect("scripts/qemu-setup start-libvirtd");
    assert!(answers, "virtlogd does not answer after scripts/qemu-setup");
}
