//! The agent's configuration: defaults < TOML file < `HOSTBUS_*` environment
//! < command-line flags, merged with the `config` crate, validated before
//! anything connects. Every field is documented in `docs/operations.md`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

mod validate;

/// Command-line flags. Each overrides the file and the environment.
#[derive(Debug, Clone, Parser, Default)]
#[command(
    name = "hostbus-agent",
    version,
    about = "Serves one virtualization host on the hostbus message bus."
)]
pub struct Flags {
    /// TOML configuration file (also `HOSTBUS_CONFIG`).
    #[arg(long, env = "HOSTBUS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Broker URL; repeat for a broker cluster (tried in order).
    #[arg(long = "broker-url")]
    pub broker_urls: Vec<String>,
    /// Host id on the bus (default: the hostname).
    #[arg(long)]
    pub host_id: Option<String>,
    /// A label; repeat for several. The agent also serves `group.<label>`.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// libvirt URI.
    #[arg(long)]
    pub libvirt_uri: Option<String>,
    /// Hypervisor domain type of new VMs: `auto`, `kvm` or `qemu` (TCG).
    #[arg(long)]
    pub domain_type: Option<String>,
    /// Commands executed at once (also the AMQP prefetch).
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Heartbeat interval in milliseconds.
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u64>,
    /// Path of the command journal.
    #[arg(long)]
    pub journal_path: Option<PathBuf>,
    /// Log format: `text` or `json`.
    #[arg(long)]
    pub log_format: Option<String>,
    /// Log filter, e.g. `info` or `hostbus_agent=debug`.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Address of the Prometheus metrics endpoint, e.g. `127.0.0.1:9187`; `off` disables it.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Serve the HTTP binding on this Unix socket (docs/http.md).
    #[arg(long, value_name = "PATH")]
    pub http_socket: Option<PathBuf>,
    /// Serve the HTTP binding on this TCP address, TLS with client
    /// certificates (`http_tls_cert`, `http_tls_key`, `http_client_ca`).
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<String>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated over a broker cluster (Raft), counts deliveries even when
    /// a consumer's connection drops, dead-letters at least once.
    Quorum,
    /// One node's queue: faster on one node, lost with its node.
    Classic,
}

impl QueueType {
    /// The `x-queue-type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Broker URLs (`amqp://` or `amqps://`), tried in order.
    pub broker_urls: Vec<String>,
    /// Host id on the bus.
    pub host_id: String,
    /// Labels: the agent also serves `group.<label>`.
    pub labels: Vec<String>,
    /// libvirt URI.
    pub libvirt_uri: String,
    /// Commands executed at once; also the AMQP prefetch.
    pub concurrency: u32,
    /// Heartbeat interval, ms.
    pub heartbeat_interval_ms: u64,
    /// Command journal path.
    pub journal_path: PathBuf,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// Prometheus endpoint address, or `off`.
    pub metrics_addr: String,
    /// How often the bridge reconciles with libvirt, ms.
    pub reconcile_interval_ms: u64,
    /// How long finished tasks stay queryable, s.
    pub task_ttl_s: u64,
    /// Bound on draining in-flight commands at shutdown, ms.
    pub shutdown_timeout_ms: u64,
    /// Largest accepted command payload, bytes.
    pub max_payload_bytes: usize,
    /// Longest wait between reconnection attempts, ms.
    pub reconnect_max_backoff_ms: u64,
    /// Pause after each step of multi-step operations, ms (demos and tests only).
    pub step_pause_ms: u64,
    /// Users (broker logins, as carried in `user_id`) and their roles:
    /// `read-only`, `operator` or `admin`.
    pub roles: BTreeMap<String, String>,
    /// CA certificates (PEM) for `amqps://` brokers; system roots when absent.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for brokers that verify clients.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// Client key (PEM, PKCS#8) for `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Journal entries older than this are dropped, s.
    pub journal_max_age_s: u64,
    /// Most journal entries kept.
    pub journal_max_entries: u64,
    /// Operations queued on one object before new ones get `BUSY`.
    pub max_object_queue: usize,
    /// Deliveries of one command (crashes included) before it is dead-lettered.
    pub max_deliveries: u32,
    /// Declare the exchanges on connecting. Turn off when an administrator
    /// declares them and host users have no `configure` permission on them
    /// (docs/security.md).
    pub declare_exchanges: bool,
    /// Hypervisor domain type of new VMs: `auto` (`kvm` when the host lists
    /// it), `kvm`, or `qemu` (TCG, where KVM is absent or unusable).
    pub domain_type: String,
    /// Directory where each new VM's serial console is logged
    /// (`<dir>/<vm>-serial0.log`, written by virtlogd); `off` for none.
    pub console_log_dir: String,
    /// Queue type of the command queue and the dead-letter queue.
    pub queue_type: QueueType,
    /// A command queue without a consumer for this long is deleted by the
    /// broker (with its bindings), s; 0 keeps it for ever.
    pub queue_expires_s: u64,
    /// Most messages kept in the dead-letter queue (oldest dropped first).
    pub dead_letter_max_length: u64,
    /// Dead letters older than this are dropped, s.
    pub dead_letter_max_age_s: u64,
    /// How long the event stream keeps events, s.
    pub event_retention_s: u64,
    /// Most bytes the event stream keeps.
    pub event_retention_bytes: u64,
    /// How long the roster stream keeps host announcements, s.
    pub roster_retention_s: u64,
    /// How long the heartbeat stream keeps heartbeats, s.
    pub beat_retention_s: u64,
    /// Longest time to open a broker connection (TCP, TLS, AMQP handshake), ms.
    pub connect_timeout_ms: u64,
    /// AMQP heartbeat asked of the broker, s (a URL's `?heartbeat=` wins).
    pub amqp_heartbeat_s: u16,
    /// Largest AMQP frame asked of the broker, bytes; 0 takes the broker's
    /// (a URL's `?frame_max=` wins). Sets each connection's buffers.
    pub amqp_frame_max: u32,
    /// Unix socket of the HTTP binding (docs/http.md); absent: off.
    #[serde(default)]
    pub http_socket: Option<PathBuf>,
    /// File mode of `http_socket`, octal.
    pub http_socket_mode: String,
    /// Owner given to `http_socket`: `UID` or `UID:GID`, numeric.
    #[serde(default)]
    pub http_socket_owner: Option<String>,
    /// Roles of the socket's peers, by `uid:N` or `gid:N`; empty: root and
    /// the agent's own user are admins.
    #[serde(default)]
    pub http_peer_roles: BTreeMap<String, String>,
    /// TCP address of the HTTP binding (TLS with client certificates only).
    #[serde(default)]
    pub http_listen: Option<String>,
    /// The HTTP binding's certificate chain (PEM), for `http_listen`.
    #[serde(default)]
    pub http_tls_cert: Option<PathBuf>,
    /// The key (PEM) of `http_tls_cert`.
    #[serde(default)]
    pub http_tls_key: Option<PathBuf>,
    /// CA (PEM) that signs the HTTP binding's client certificates.
    #[serde(default)]
    pub http_client_ca: Option<PathBuf>,
}

/// Every field, with its environment variable and default.
const FIELDS: &[&str] = &[
    "broker_urls",
    "host_id",
    "labels",
    "libvirt_uri",
    "concurrency",
    "heartbeat_interval_ms",
    "journal_path",
    "log_format",
    "log_level",
    "metrics_addr",
    "reconcile_interval_ms",
    "task_ttl_s",
    "shutdown_timeout_ms",
    "max_payload_bytes",
    "reconnect_max_backoff_ms",
    "step_pause_ms",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "journal_max_age_s",
    "journal_max_entries",
    "max_object_queue",
    "max_deliveries",
    "declare_exchanges",
    "domain_type",
    "console_log_dir",
    "queue_type",
    "queue_expires_s",
    "dead_letter_max_length",
    "dead_letter_max_age_s",
    "event_retention_s",
    "event_retention_bytes",
    "roster_retention_s",
    "beat_retention_s",
    "connect_timeout_ms",
    "amqp_heartbeat_s",
    "amqp_frame_max",
    "http_socket",
    "http_socket_mode",
    "http_socket_owner",
    "http_listen",
    "http_tls_cert",
    "http_tls_key",
    "http_client_ca",
];

/// `HOSTBUS_*` variables of other hostbus programs and of the test
/// harness, which the agent leaves alone. Any other `HOSTBUS_*` variable
/// that names no agent field is refused: a typo must not be ignored.
const FOREIGN_VARIABLES: &[&str] = &[
    "HOSTBUS_URL",
    "HOSTBUS_TIMEOUT_MS",
    "HOSTBUS_OUTPUT",
    "HOSTBUS_CA_FILE",
    "HOSTBUS_CERT_FILE",
    "HOSTBUS_KEY_FILE",
    "HOSTBUS_CONFIG",
    "HOSTBUS_ROLES",
    "HOSTBUS_HTTP_PEER_ROLES",
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

impl Config {
    /// Loads the configuration from `flags`, the environment `env` and the
    /// file the flags or environment name, then validates it.
    pub fn load(flags: &Flags, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let map = |e: config::ConfigError| ConfigError(e.to_string());
        let mut b = config::Config::builder()
            .set_default("broker_urls", vec!["amqp://guest:guest@127.0.0.1:5672/%2f"])
            .map_err(map)?
            .set_default("host_id", hostname())
            .map_err(map)?
            .set_default("labels", Vec::<String>::new())
            .map_err(map)?
            .set_default("libvirt_uri", "qemu:///system")
            .map_err(map)?
            .set_default("concurrency", 8)
            .map_err(map)?
            .set_default("heartbeat_interval_ms", 5000)
            .map_err(map)?
            .set_default("journal_path", "/var/lib/hostbus/journal")
            .map_err(map)?
            .set_default("log_format", "text")
            .map_err(map)?
            .set_default("log_level", "info")
            .map_err(map)?
            .set_default("metrics_addr", "127.0.0.1:9187")
            .map_err(map)?
            .set_default("reconcile_interval_ms", 30_000)
            .map_err(map)?
            .set_default("task_ttl_s", 600)
            .map_err(map)?
            .set_default("shutdown_timeout_ms", 30_000)
            .map_err(map)?
            .set_default(
                "max_payload_bytes",
                hostbus_protocol::DEFAULT_MAX_PAYLOAD as u64,
            )
            .map_err(map)?
            .set_default("reconnect_max_backoff_ms", 30_000)
            .map_err(map)?
            .set_default("step_pause_ms", 0)
            .map_err(map)?
            .set_default("journal_max_age_s", 86_400)
            .map_err(map)?
            .set_default("journal_max_entries", 100_000)
            .map_err(map)?
            .set_default("max_object_queue", 16)
            .map_err(map)?
            .set_default("max_deliveries", 3)
            .map_err(map)?
            .set_default("declare_exchanges", true)
            .map_err(map)?
            .set_default("domain_type", "auto")
            .map_err(map)?
            .set_default("console_log_dir", "/var/log/libvirt/qemu")
            .map_err(map)?
            .set_default("queue_type", "quorum")
            .map_err(map)?
            .set_default("queue_expires_s", 7 * 86_400)
            .map_err(map)?
            .set_default("dead_letter_max_length", 100_000)
            .map_err(map)?
            .set_default("dead_letter_max_age_s", 7 * 86_400)
            .map_err(map)?
            .set_default("event_retention_s", 86_400)
            .map_err(map)?
            .set_default("event_retention_bytes", 1u64 << 30)
            .map_err(map)?
            .set_default("roster_retention_s", 7 * 86_400)
            .map_err(map)?
            .set_default("beat_retention_s", 600)
            .map_err(map)?
            .set_default("connect_timeout_ms", 10_000)
            .map_err(map)?
            .set_default("amqp_heartbeat_s", 10)
            .map_err(map)?
            .set_default("amqp_frame_max", 0)
            .map_err(map)?
            .set_default("http_socket_mode", "0660")
            .map_err(map)?;
        if let Some(unknown) = env.keys().filter(|k| k.starts_with("HOSTBUS_")).find(|k| {
            !FIELDS
                .iter()
                .any(|f| **k == format!("HOSTBUS_{}", f.to_ascii_uppercase()))
                && !FOREIGN_VARIABLES.contains(&k.as_str())
                && !FOREIGN_PREFIXES.iter().any(|p| k.starts_with(p))
        }) {
            return Err(ConfigError(format!(
                "unknown setting {unknown}: the agent's variables are HOSTBUS_ followed by a field of docs/operations.md, e.g. HOSTBUS_QUEUE_TYPE"
            )));
        }
        // Without a [roles] table, the broker's default `guest` login is an
        // admin: right for a laptop, wrong for production (docs/security.md).
        let has_roles_file = flags.config.as_ref().is_some_and(|p| {
            std::fs::read_to_string(p).is_ok_and(|t| t.lines().any(|l| l.trim() == "[roles]"))
        });
        if !has_roles_file && !env.contains_key("HOSTBUS_ROLES") {
            b = b.set_default("roles.guest", "admin").map_err(map)?;
        }
        if let Some(roles) = env.get("HOSTBUS_ROLES") {
            for pair in roles.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (user, role) = pair.split_once('=').ok_or_else(|| {
                    field_error("roles", format_args!("{pair:?} is not user=role"))
                })?;
                b = b
                    .set_override(format!("roles.{}", user.trim()), role.trim())
                    .map_err(map)?;
            }
        }
        if let Some(path) = &flags.config {
            b = b.add_source(
                config::File::from(path.clone())
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        // Only the agent's own variables: other HOSTBUS_* variables (the
        // client's, the tests') must not trip `deny_unknown_fields`.
        let own: config::Map<String, String> = FIELDS
            .iter()
            .filter_map(|f| {
                env.get(&format!("HOSTBUS_{}", f.to_ascii_uppercase()))
                    .map(|v| (format!("HOSTBUS_{}", f.to_ascii_uppercase()), v.clone()))
            })
            .collect();
        b = b.add_source(
            config::Environment::with_prefix("HOSTBUS")
                .prefix_separator("_")
                .list_separator(",")
                .with_list_parse_key("broker_urls")
                .with_list_parse_key("labels")
                .try_parsing(true)
                .source(Some(own)),
        );
        if !flags.broker_urls.is_empty() {
            b = b
                .set_override("broker_urls", flags.broker_urls.clone())
                .map_err(map)?;
        }
        if !flags.labels.is_empty() {
            b = b
                .set_override("labels", flags.labels.clone())
                .map_err(map)?;
        }
        b = b
            .set_override_option("host_id", flags.host_id.clone())
            .map_err(map)?
            .set_override_option("libvirt_uri", flags.libvirt_uri.clone())
            .map_err(map)?
            .set_override_option("domain_type", flags.domain_type.clone())
            .map_err(map)?
            .set_override_option("concurrency", flags.concurrency.map(i64::from))
            .map_err(map)?
            .set_override_option(
                "heartbeat_interval_ms",
                flags.heartbeat_interval_ms.map(|v| v.to_string()),
            )
            .map_err(map)?
            .set_override_option(
                "journal_path",
                flags.journal_path.as_ref().map(|p| p.display().to_string()),
            )
            .map_err(map)?
            .set_override_option("log_format", flags.log_format.clone())
            .map_err(map)?
            .set_override_option("log_level", flags.log_level.clone())
            .map_err(map)?
            .set_override_option("metrics_addr", flags.metrics_addr.clone())
            .map_err(map)?
            .set_override_option(
                "http_socket",
                flags.http_socket.as_ref().map(|p| p.display().to_string()),
            )
            .map_err(map)?
            .set_override_option("http_listen", flags.http_listen.clone())
            .map_err(map)?;
        let mut cfg: Config = b.build().map_err(map)?.try_deserialize().map_err(map)?;
        // Keys like `uid:0` are no configuration paths: merged here.
        if let Some(roles) = env.get("HOSTBUS_HTTP_PEER_ROLES") {
            for pair in roles.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (peer, role) = pair.split_once('=').ok_or_else(|| {
                    field_error("http_peer_roles", format_args!("{pair:?} is not peer=role"))
                })?;
                cfg.http_peer_roles
                    .insert(peer.trim().to_owned(), role.trim().to_owned());
            }
        }
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

mod http;

pub use http::{HttpSettings, PeerRoles, SocketSettings, TcpSettings};

#[cfg(test)]
mod tests;
