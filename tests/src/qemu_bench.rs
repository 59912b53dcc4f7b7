//! What the real-hypervisor suites (`tests/tests/qemu_*.rs`) share: a
//! [`Bench`] (the hypervisor, a private broker, an agent serving
//! `qemu:///system` with TCG guests, an SDK client), the host's
//! [`Events`], the guest's serial console, and [`TURNS`], which the tests
//! of a binary take one at a time.
//!
//! Each test starts with [`Bench::turn`] or [`Bench::start`], which take
//! the suite's gate, [`QemuHost::from_env`]: without `scripts/qemu-setup`'s
//! environment a test says so and returns, unless the suite is required.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use hostbus_client::protocol::types::{
    BootSpec, DiskSpec, ObjectClass, PoolKind, PoolSpec, Record, VmRecord, VmSpec,
};
use hostbus_client::protocol::{ErrorCode, Event, EventAction};
use hostbus_client::{
    Client, ClientConfig, ClientError, Host, Notification, SubscribeOptions, Subscription,
};
use tokio::sync::Mutex;

use crate::agent::AgentProcess;
use crate::qemu::{wait_for_text, QemuHost};
use crate::rabbit::RabbitNode;

/// The tests share libvirtd (one stops it) and two cores: one at a time.
///
/// A static of this library is one per test binary: it orders the tests of
/// one `qemu_*` binary. The binaries themselves never run at once, because
/// `cargo test` and `scripts/test` (its first phase) run test binaries one
/// after another; run them by hand likewise, never two at a time.
pub static TURNS: Mutex<()> = Mutex::const_new(());

/// What the guest prints on its console once it has booted.
pub const BOOTED: &str = "hostbus-guest: up after";
/// The agent's host id.
pub const HOST: &str = "q1";
/// One MiB, in bytes.
pub const MIB: u64 = 1 << 20;

/// What every test starts with: the hypervisor, a private broker, an agent
/// serving `qemu:///system` with TCG guests, and an SDK client.
pub struct Bench {
    /// The hypervisor.
    pub q: QemuHost,
    /// The private broker's URL.
    pub url: String,
    /// The agent serving the hypervisor.
    pub agent: AgentProcess,
    /// An SDK client on the broker.
    pub client: Client,
    // Last: the broker outlives the agent and the client.
    _node: RabbitNode,
}

impl Bench {
    /// `None` when the suite is not configured here (and not required).
    pub async fn start(reconcile_ms: u64) -> Option<Self> {
        Self::start_with(reconcile_ms, &[]).await
    }

    /// The suite's turn (its tests share one libvirtd and run one at a
    /// time), then [`start`](Self::start).
    pub async fn turn(reconcile_ms: u64) -> Option<(tokio::sync::MutexGuard<'static, ()>, Self)> {
        let turn = TURNS.lock().await;
        Some((turn, Self::start(reconcile_ms).await?))
    }

    /// [`turn`](Self::turn), then the host's handle and its events from now
    /// on.
    pub async fn turn_watched(reconcile_ms: u64) -> Option<Watched> {
        let (turn, b) = Self::turn(reconcile_ms).await?;
        let host = b.host();
        let ev = b.events().await;
        Some((turn, b, host, ev))
    }

    /// [`start`](Self::start) with more agent settings.
    pub async fn start_with(reconcile_ms: u64, env: &[(&str, &str)]) -> Option<Self> {
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

    /// The handle of the agent's host.
    pub fn host(&self) -> Host {
        self.client.host(HOST)
    }

    /// Waits (up to 60 s) until the agent answers `host.ping`.
    pub async fn wait_serving(&self) {
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

    /// The host's events from now on, without resyncs.
    pub async fn events(&self) -> Events {
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
    pub async fn pool(&self, name: &str) {
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
    pub fn guest(&self, name: &str, disks: Vec<DiskSpec>, cmdline: &str) -> VmSpec {
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

/// The names of the volumes in `pool`.
pub async fn volume_names(pool: &hostbus_client::Pool) -> Vec<String> {
    pool.volumes()
        .await
        .expect("volumes")
        .into_iter()
        .map(|v| v.name)
        .collect()
}

/// The suite's turn, a bench, its host and its events.
pub type Watched = (tokio::sync::MutexGuard<'static, ()>, Bench, Host, Events);

/// Every event of the host, kept, with waits for particular ones.
pub struct Events {
    sub: Subscription,
    /// Every event received so far, in order.
    pub seen: Vec<Event>,
}

impl Events {
    /// The next event `pred` accepts within `within` (every event is kept
    /// in [`seen`](Self::seen)); panics naming `what` and the events seen.
    pub async fn next_matching(
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
    pub async fn vm(&mut self, vm: &VmRecord, action: EventAction, within: Duration) -> VmRecord {
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
    pub async fn drain(&mut self, window: Duration) {
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
    pub fn history(&self, id: &str) -> Vec<EventAction> {
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

/// The error code of a call that must fail.
pub fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    r.expect_err("expected an error")
        .code()
        .unwrap_or(ErrorCode::Unknown)
}

/// The path of `vm`'s console log.
pub fn console_log(vm: &VmRecord) -> String {
    vm.console
        .as_ref()
        .and_then(|c| c.log_path.clone())
        .unwrap_or_else(|| panic!("{} has no console log: {:?}", vm.name, vm.console))
}

/// Waits until the console shows `needle` `times` times.
pub fn console(vm: &VmRecord, needle: &str, times: usize, within: Duration) -> String {
    wait_for_text(Path::new(&console_log(vm)), needle, times, within)
        .unwrap_or_else(|e| panic!("{}: {e}", vm.name))
}

/// The guest's last report of its disks (`hostbus-guest: disks: vda vdb`).
pub fn guest_disks(vm: &VmRecord) -> String {
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
pub fn type_on_console(vm: &VmRecord, pty: &str, line: &str, expect: &str) {
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
pub struct StartLibvirtdOnDrop(pub bool, pub QemuHost);

impl Drop for StartLibvirtdOnDrop {
    fn drop(&mut self) {
        if self.0 {
            if let Err(e) = self.1.start_libvirtd() {
                eprintln!("cannot start libvirtd again: {e}");
            }
        }
    }
}

/// Waits (up to 30 s) until the guest of `vm` reports exactly the disks
/// `want` (`vda vdb`).
pub async fn wait_guest_disks(vm: &VmRecord, want: &str) {
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
