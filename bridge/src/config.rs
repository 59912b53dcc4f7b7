//! How the bridge is set up: [`Config`] and the domain type of new VMs.

use std::time::Duration;

use crate::locks::LockHook;

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
            .finish_non_exhaustive()
    }
}
