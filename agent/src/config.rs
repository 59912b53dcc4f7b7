//! The agent's configuration: defaults < TOML file < `HOSTBUS_*` environment
//! < command-line flags, read and typed at load, validated before anything
//! connects.
//!
//! Each setting is declared once, in the `settings!` block below: its name,
//! type, default, flag and doc line. The [`Config`] struct, the flags, the
//! environment variables (`HOSTBUS_` and the name in capitals), the known
//! variables and the settings table of docs/operations.md all come from
//! that declaration ([`SETTINGS`]; a test compares the table with the docs).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use hostbus_bridge::DomainType;

use crate::auth::Role;

#[macro_use]
mod declare;
mod http;
mod validate;
mod value;

use declare::Layers;
pub use declare::{reference_table, SettingFlags, SettingInfo};
pub use http::{HttpSettings, PeerRoles, SocketSettings, TcpSettings};
pub use value::FileMode;
use value::SettingValue;

settings! {
    /// Broker URLs (`amqp://` or `amqps://`); several for a broker cluster.
    /// Tried in turn from a position derived from the host id, so a fleet
    /// spreads over the nodes.
    broker_urls: Vec<String> = vec!["amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()],
        flag "broker-url";
    /// Host id on the bus: 1–63 of `a-z 0-9 -`, not starting or ending with `-`.
    host_id: String = hostname(), shown "the hostname (first label, lowercase)", flag "host-id";
    /// Labels; the agent also serves `group.<label>`. Same rules as host ids.
    labels: Vec<String> = Vec::new(), flag "label";
    /// libvirt connection URI. `test:///default` or `test:///path/node.xml`
    /// for demos and tests.
    libvirt_uri: String = "qemu:///system".to_owned(), flag "libvirt-uri";
    /// How other hosts' libvirt reaches this host's libvirt to migrate VMs
    /// here (`qemu+tls://h2.example/system`; see operations.md), shown in
    /// the roster and `host.capabilities`; `none`: this host takes no
    /// migrations (it can still send its VMs away).
    migration_uri: Option<String> = None, shown "none", flag "migration-uri";
    /// Commands executed at once; also the AMQP prefetch. 1–1024.
    concurrency: u32 = 8, flag "concurrency";
    /// Presence heartbeat interval. 50–3600000.
    heartbeat_interval_ms: u64 = 5000, flag "heartbeat-interval-ms";
    /// Where the command journal lives.
    journal_path: PathBuf = PathBuf::from("/var/lib/hostbus/journal"), flag "journal-path";
    /// `text` or `json` (one object per line, for log shippers).
    log_format: LogFormat = LogFormat::Text, flag "log-format";
    /// A `tracing` filter: `info`, `debug`, `hostbus_agent=debug,info`.
    /// lapin's own events are off unless the filter names lapin
    /// (`lapin=debug,info`): the agent reports what they would, at the
    /// levels below.
    log_level: String = "info".to_owned(), flag "log-level";
    /// Prometheus endpoint (`/metrics`), or `off`.
    metrics_addr: Option<SocketAddr> = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9187))),
        flag "metrics-addr";
    /// How often the bridge compares libvirt's state with what it last saw
    /// (catches changes made outside hostbus). At least 100.
    reconcile_interval_ms: u64 = 30_000;
    /// How long finished tasks stay visible to `task.get`.
    task_ttl_s: u64 = 600;
    /// Bound on draining in-flight commands at shutdown.
    shutdown_timeout_ms: u64 = 30_000;
    /// Largest command payload accepted; larger ones get `PAYLOAD_TOO_LARGE`.
    /// 1024–67108864.
    max_payload_bytes: usize = hostbus_protocol::DEFAULT_MAX_PAYLOAD;
    /// Longest wait between broker reconnection attempts. At least 100.
    reconnect_max_backoff_ms: u64 = 30_000;
    /// Pause after each step of multi-step operations. For demos and tests
    /// on the instant test driver only.
    step_pause_ms: u64 = 0;
    /// Broker users (as carried in the broker-verified `user_id`) and their
    /// roles: `read-only`, `operator`, `admin`. See [security.md](security.md).
    roles: BTreeMap<String, Role> = BTreeMap::from([("guest".to_owned(), Role::Admin)]),
        shown "`guest = \"admin\"` when no `[roles]` table is given";
    /// CA certificates (PEM) that sign the broker's certificate, for
    /// `amqps://` URLs.
    tls_ca_file: Option<PathBuf> = None, shown "none (system roots)";
    /// Client certificate (PEM), for brokers that verify clients. With
    /// `tls_key_file`.
    tls_cert_file: Option<PathBuf> = None;
    /// Client key (PEM, PKCS#8).
    tls_key_file: Option<PathBuf> = None;
    /// Finished journal entries older than this are dropped (at start and
    /// every 10 minutes).
    journal_max_age_s: u64 = 86_400;
    /// Most journal entries kept; the oldest finished ones go first. Entries
    /// of interrupted commands are kept.
    journal_max_entries: u64 = 100_000;
    /// Operations waiting on one object (a VM, a pool) before new ones are
    /// answered `BUSY` with a `retry_after_ms` hint.
    max_object_queue: usize = 16;
    /// Deliveries of one message (counted by the broker on quorum queues,
    /// else by the agent), or executions of one changing command (crashes
    /// included, from the journal), before it is dead-lettered and answered
    /// `INTERNAL`.
    max_deliveries: u32 = 3;
    /// Declare the shared objects on connecting: exchanges, the dead-letter
    /// queue and the three streams. Set `false` when an administrator
    /// declares them (`hostctl admin setup`) and host users may not (see
    /// [security.md](security.md)).
    declare_exchanges: bool = true;
    /// Type of the command queue and the dead-letter queue: `quorum` or
    /// `classic` (see "Queue types" below).
    queue_type: QueueType = QueueType::Quorum;
    /// The broker deletes a command queue (and its bindings) that has had no
    /// consumer for this long (7 days by default): the queue of a retired
    /// host does not collect broadcasts for ever. `0`: never.
    queue_expires_s: u64 = 7 * 86_400;
    /// Most messages `hostbus.dead-letter` keeps; beyond it the oldest are
    /// dropped.
    dead_letter_max_length: u64 = 100_000;
    /// Dead letters older than this are dropped. At least 60.
    dead_letter_max_age_s: u64 = 7 * 86_400;
    /// How long the stream `hostbus.events` keeps events: how long a
    /// subscriber may be away and still resume without a resync. At least 60.
    event_retention_s: u64 = 86_400;
    /// Most bytes of events kept (whichever limit comes first). At least 1 MiB.
    event_retention_bytes: u64 = 1 << 30;
    /// How long `hostbus.presence.roster` keeps host announcements: a dead
    /// host not forgotten stays in fleet views this long after its last
    /// (re)connection. At least 60.
    roster_retention_s: u64 = 7 * 86_400;
    /// How long `hostbus.presence.beats` keeps heartbeats (fleet views read
    /// one to three intervals back). At least 60.
    beat_retention_s: u64 = 600;
    /// Longest time to open a broker connection (TCP, TLS and the AMQP
    /// handshake): a node that accepts and hangs does not hang the agent.
    /// 100–600000.
    connect_timeout_ms: u64 = 10_000;
    /// AMQP heartbeat asked of the broker: a dead peer on a silent network
    /// is noticed after about two. A URL's `?heartbeat=N` wins.
    amqp_heartbeat_s: u16 = 10;
    /// Largest AMQP frame asked of the broker, in bytes; `0` takes the
    /// broker's (128 KiB on RabbitMQ). The AMQP client keeps 32 frames of
    /// buffer each way per connection, so this sets the memory of each of
    /// the agent's two connections: 8 MiB at 128 KiB, 1 MiB at 16384.
    /// Larger messages are split into more frames. `0` or at least 4096; a
    /// URL's `?frame_max=N` wins. The simulator uses 16384 unless set.
    amqp_frame_max: u32 = 0;
    /// Hypervisor domain type of new VMs: `auto` (`kvm` when the host's
    /// capabilities list it for the guest architecture, else the first type
    /// listed), `kvm`, or `qemu` (TCG: software emulation). See
    /// [Running on a real host](#running-on-a-real-host).
    domain_type: DomainType = DomainType::Auto, flag "domain-type";
    /// Where each new VM's serial console is logged (`<dir>/<vm>-serial0.log`,
    /// written by libvirt's virtlogd, appended across restarts), or `off`.
    /// An absolute directory.
    console_log_dir: Option<String> = Some("/var/log/libvirt/qemu".to_owned());
    /// Serve the HTTP binding (docs/http.md) on this Unix socket, broker or
    /// not; `/run/hostbus/agent.sock` is the documented place. A stale
    /// socket file is replaced; one another process serves on is refused
    /// (exit 1).
    http_socket: Option<PathBuf> = None, shown "off", flag "http-socket" value "PATH";
    /// File mode of the socket (octal).
    http_socket_mode: FileMode = FileMode(0o660);
    /// `UID` or `UID:GID` (numeric) given to the socket file.
    http_socket_owner: Option<(u32, Option<u32>)> = None, shown "unchanged";
    /// Roles of the socket's peers by `uid:N` or `gid:N` (their primary
    /// gid); a uid entry wins. In TOML, an `[http_peer_roles]` table with
    /// quoted keys (`"uid:0" = "admin"`). See [security.md](security.md).
    http_peer_roles: PeerRoles = PeerRoles::default(),
        shown "root and the agent's own uid: `admin`";
    /// Also serve the HTTP binding on TCP, TLS with client certificates
    /// only; needs the next three.
    http_listen: Option<SocketAddr> = None, shown "off", flag "http-listen" value "ADDR";
    /// The listener's certificate chain (PEM).
    http_tls_cert: Option<PathBuf> = None;
    /// The key (PEM) of `http_tls_cert`.
    http_tls_key: Option<PathBuf> = None;
    /// CA (PEM) whose client certificates are admitted; the subject CN is
    /// looked up in `roles`.
    http_client_ca: Option<PathBuf> = None;
}

/// The environment variable of `--config`.
const CONFIG_VARIABLE: &str = "HOSTBUS_CONFIG";

/// Command-line flags: the settings' ([`SettingFlags`]), each over the file
/// and the environment, and those that are no setting.
#[derive(Debug, Clone, Parser, Default)]
#[command(
    name = "hostbus-agent",
    version,
    about = "Serves one virtualization host on the hostbus message bus."
)]
pub struct Flags {
    /// TOML configuration file (also `HOSTBUS_CONFIG`).
    #[arg(long, env = CONFIG_VARIABLE)]
    pub config: Option<PathBuf>,
    /// The settings' flags.
    #[command(flatten)]
    pub settings: SettingFlags,
    /// Runs this many simulated hosts on libvirt's test driver instead of
    /// serving this host (a fleet for load tests; docs/operations.md).
    #[arg(long, value_name = "N")]
    pub simulate: Option<u32>,
    /// Host id prefix of simulated hosts: `<prefix>0001`, `<prefix>0002`, ...
    #[arg(long, default_value = "sim-", requires = "simulate")]
    pub host_prefix: String,
}

/// The RabbitMQ queue type of the agent's command queue and of the
/// dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated over a broker cluster (Raft), counts deliveries even when
    /// a consumer's connection drops, dead-letters at least once.
    Quorum,
    /// One node's queue: faster on one node, lost with its node.
    Classic,
}

impl QueueType {
    /// Every queue type.
    pub const ALL: &'static [QueueType] = &[QueueType::Quorum, QueueType::Classic];

    /// The `x-queue-type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Every format.
    pub const ALL: &'static [LogFormat] = &[LogFormat::Text, LogFormat::Json];

    /// The setting's value: `text` or `json`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// `HOSTBUS_*` variables of other hostbus programs and of the test
/// harness, which the agent leaves alone. Any other `HOSTBUS_*` variable
/// that names no agent setting is refused: a typo must not be ignored.
const FOREIGN_VARIABLES: &[&str] = &[
    "HOSTBUS_URL",
    "HOSTBUS_TIMEOUT_MS",
    "HOSTBUS_OUTPUT",
    "HOSTBUS_CA_FILE",
    "HOSTBUS_CERT_FILE",
    "HOSTBUS_KEY_FILE",
    "HOSTBUS_SOCKET",
    "HOSTBUS_AGENT_BIN",
    "HOSTBUS_RABBITMQ_BIN_DIR",
    "HOSTBUS_BLESS",
];

/// Prefixes of `HOSTBUS_*` variables that belong to the test harness and
/// benchmarks.
const FOREIGN_PREFIXES: &[&str] = &["HOSTBUS_TEST_", "HOSTBUS_BENCH_", "HOSTBUS_QEMU_"];

/// A configuration problem, naming the field at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn field_error(field: &str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("`{field}`: {reason}"))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_ascii_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .map(|h| h.split('.').next().unwrap_or_default().to_owned())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Whether `var`, a `HOSTBUS_*` variable, is a setting's, `--config`'s or
/// another program's.
fn known_variable(var: &str) -> bool {
    SETTINGS.iter().any(|s| s.env() == var)
        || var == CONFIG_VARIABLE
        || FOREIGN_VARIABLES.contains(&var)
        || FOREIGN_PREFIXES.iter().any(|p| var.starts_with(p))
}

/// The TOML file at `path`, as a table whose keys are all settings.
fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
    if let Some(unknown) = table
        .keys()
        .find(|k| !SETTINGS.iter().any(|s| s.name == *k))
    {
        return Err(ConfigError(format!(
            "unknown field `{unknown}` in {}: the settings are the fields of docs/operations.md",
            path.display()
        )));
    }
    Ok(table)
}

impl Config {
    /// Loads the configuration from `flags`, the environment `env` and the
    /// file the flags or environment name, then validates it.
    pub fn load(flags: &Flags, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        if let Some(unknown) = env
            .keys()
            .find(|k| k.starts_with("HOSTBUS_") && !known_variable(k))
        {
            return Err(ConfigError(format!(
                "unknown setting {unknown}: the agent's variables are HOSTBUS_ followed by a field of docs/operations.md, e.g. HOSTBUS_QUEUE_TYPE"
            )));
        }
        let (file, file_name) = match &flags.config {
            Some(path) => (read_file(path)?, path.display().to_string()),
            None => (toml::Table::new(), String::new()),
        };
        let cfg = Config::from_layers(&mut Layers {
            file,
            file_name,
            env,
            flags: &flags.settings,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// The `tracing` filter of the agent's log: `log_level`, with lapin's
    /// own events off unless it names lapin. lapin logs the end of a
    /// connection at ERROR from its I/O thread ("Socket was readable but we
    /// read 0", "Exponential backoff attempts exhausted"), also where the
    /// agent ends it on purpose (an attempt it gave up on) and where the
    /// agent already reports it at WARN, with lapin's error as the reason.
    pub fn log_directives(&self) -> String {
        if self.log_level.contains("lapin") {
            self.log_level.clone()
        } else {
            format!("{},lapin=off", self.log_level)
        }
    }

    /// How broker connections are made.
    pub fn connect_options(&self) -> hostbus_amqp::ConnectOptions {
        hostbus_amqp::ConnectOptions {
            timeout: Duration::from_millis(self.connect_timeout_ms),
            heartbeat_s: self.amqp_heartbeat_s,
            frame_max: (self.amqp_frame_max > 0).then_some(self.amqp_frame_max),
        }
    }

    /// How the broker objects are declared.
    pub fn topology(&self) -> hostbus_amqp::topology::TopologySettings {
        use hostbus_amqp::topology::{QueueType as Q, TopologySettings};
        TopologySettings {
            queue_type: match self.queue_type {
                QueueType::Quorum => Q::Quorum,
                QueueType::Classic => Q::Classic,
            },
            queue_expires: (self.queue_expires_s > 0)
                .then(|| Duration::from_secs(self.queue_expires_s)),
            max_deliveries: self.max_deliveries,
            dead_letter_max_length: self.dead_letter_max_length,
            dead_letter_max_age: Duration::from_secs(self.dead_letter_max_age_s),
            event_retention: Duration::from_secs(self.event_retention_s),
            event_retention_bytes: self.event_retention_bytes,
            roster_retention: Duration::from_secs(self.roster_retention_s),
            beat_retention: Duration::from_secs(self.beat_retention_s),
        }
    }

    /// The broker URLs in the order this host tries them: starting at a
    /// position derived from the host id, so a fleet spreads over a
    /// cluster's nodes.
    pub fn broker_order(&self) -> Vec<String> {
        hostbus_amqp::spread(&self.broker_urls, hostbus_amqp::stable_hash(&self.host_id))
    }
}

#[cfg(test)]
mod tests;
