//! How the bridge is set up: [`Config`] and the domain type of new VMs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hostbus_protocol::commands::{
    VmMigrateAbortRequest, VmMigratePrepareRequest, VmMigratePrepareResponse,
};
use hostbus_protocol::types::VmRecord;
use hostbus_protocol::Error;
use uuid::Uuid;

use crate::locks::LockHook;

/// The host-to-host steps of a migration, which go over the bus: the bridge
/// knows no bus, so the agent hands it this. Every method blocks (the
/// bridge calls them from a task's thread, never from an async runtime).
pub trait Peers: Send + Sync {
    /// Asks `host` to take a VM: `vm.migrate_prepare` there, refused at
    /// once (`PEER_UNAVAILABLE`) when the fleet view says its agent is not
    /// serving.
    fn prepare(
        &self,
        host: &str,
        request: VmMigratePrepareRequest,
    ) -> Result<VmMigratePrepareResponse, Error>;
    /// Tells `host` that a migration it prepared did not happen
    /// (`vm.migrate_abort`).
    fn abort(&self, host: &str, request: VmMigrateAbortRequest) -> Result<(), Error>;
    /// The VM's record on `host` (`vm.get` there).
    fn vm_get(&self, host: &str, uuid: Uuid) -> Result<VmRecord, Error>;
}

/// How the bridge is set up.
#[derive(Clone)]
pub struct Config {
    /// libvirt URI, e.g. `qemu:///system`, `test:///default`, `test:///path/node.xml`.
    pub uri: String,
    /// The host id on the bus (reported in host records and pongs).
    pub host_id: String,
    /// How long finished tasks stay queryable.
    pub task_ttl: Duration,
    /// How often reconciliation compares libvirt's state with the last seen.
    pub reconcile_interval: Duration,
    /// A pause after each step of a multi-step operation (defining a VM with
    /// new volumes, removing storage). Zero in production; demos and tests on
    /// the instant test driver set it to watch progress and cancel tasks.
    pub step_pause: Duration,
    /// Observer of object lock transitions (tests, tracing).
    pub lock_hook: Option<LockHook>,
    /// Register libvirt lifecycle callbacks (default). Without them, changes
    /// made outside the bridge are seen by reconciliation only.
    pub libvirt_events: bool,
    /// The hypervisor domain type of new VMs.
    pub domain_type: DomainType,
    /// Where the serial console of each new VM is logged, as
    /// `<dir>/<vm name>-serial0.log` (written by libvirt's virtlogd).
    /// `None`: consoles are reachable through their pty only.
    pub console_log_dir: Option<String>,
    /// How other hosts' libvirt reaches this host's for migrations (a
    /// libvirt URI such as `qemu+tls://h2.example/system`); `None`: this
    /// host takes no migrations.
    pub migration_uri: Option<String>,
    /// The agent's link to other hosts; `None`: `vm.migrate` is refused.
    pub peers: Option<Arc<dyn Peers>>,
    /// Where the host's placement (`host.disable`) is kept across
    /// restarts; `None`: in memory only.
    pub state_file: Option<PathBuf>,
}

/// Which hypervisor domain type new VMs get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DomainType {
    /// `kvm` when the host's capabilities list it for the guest
    /// architecture, else the first type listed (`qemu`: TCG, or the test
    /// driver's `test`).
    #[default]
    Auto,
    /// Hardware virtualization; refused when the host does not list it.
    Kvm,
    /// QEMU's software emulator (TCG): slower, and works where KVM is
    /// absent or unusable (nested KVM that cannot run the guest).
    Qemu,
}

impl DomainType {
    /// The configuration name: `auto`, `kvm` or `qemu`.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Auto => "auto",
            DomainType::Kvm => "kvm",
            DomainType::Qemu => "qemu",
        }
    }
}

impl std::str::FromStr for DomainType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DomainType::Auto),
            "kvm" => Ok(DomainType::Kvm),
            "qemu" | "tcg" => Ok(DomainType::Qemu),
            other => Err(format!("`{other}` is not auto, kvm or qemu")),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            uri: "test:///default".into(),
            host_id: "localhost".into(),
            task_ttl: Duration::from_secs(600),
            reconcile_interval: Duration::from_secs(30),
            step_pause: Duration::ZERO,
            lock_hook: None,
            libvirt_events: true,
            domain_type: DomainType::Auto,
            console_log_dir: Some("/var/log/libvirt/qemu".into()),
            migration_uri: None,
            peers: None,
            state_file: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("uri", &self.uri)
            .field("host_id", &self.host_id)
            .field("task_ttl", &self.task_ttl)
            .field("reconcile_interval", &self.reconcile_interval)
            .field("step_pause", &self.step_pause)
            .field("libvirt_events", &self.libvirt_events)
            .field("domain_type", &self.domain_type)
            .field("console_log_dir", &self.console_log_dir)
            .field("migration_uri", &self.migration_uri)
            .field("peers", &self.peers.is_some())
            .field("state_file", &self.state_file)
            .finish_non_exhaustive()
    }
}
