//! The agent's configuration: defaults < TOML file < `HOSTBUS_*` environment
//! < command-line flags, merged with the `config` crate, validated before
//! anything connects. Every field is documented in `docs/operations.md`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use hostbus_protocol::names::{check_host_id, check_label};
use serde::Deserialize;

/// Command-line flags. Each overrides the file and the environment.
#[derive(Debug, Parser, Default)]
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
            .map_err(map)?;
        let cfg: Config = b.build().map_err(map)?.try_deserialize().map_err(map)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// `domain_type` for the bridge.
    pub fn bridge_domain_type(&self) -> Result<hostbus_bridge::DomainType, ConfigError> {
        self.domain_type
            .parse()
            .map_err(|e: String| field_error("domain_type", e))
    }

    /// `console_log_dir` for the bridge (`None` when `off`).
    pub fn bridge_console_log_dir(&self) -> Option<String> {
        (self.console_log_dir != "off").then(|| self.console_log_dir.clone())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.broker_urls.is_empty() {
            return Err(field_error(
                "broker_urls",
                "at least one broker URL is needed",
            ));
        }
        for u in &self.broker_urls {
            u.parse::<lapin::uri::AMQPUri>().map_err(|e| {
                field_error("broker_urls", format_args!("{u:?} is not an AMQP URL: {e}"))
            })?;
        }
        check_host_id("host_id", &self.host_id).map_err(|e| field_error("host_id", e.reason))?;
        for l in &self.labels {
            check_label("labels", l)
                .map_err(|e| field_error("labels", format_args!("{l:?} {}", e.reason)))?;
        }
        if self.libvirt_uri.is_empty() {
            return Err(field_error("libvirt_uri", "must not be empty"));
        }
        self.bridge_domain_type()?;
        if self.console_log_dir != "off" && !self.console_log_dir.starts_with('/') {
            return Err(field_error(
                "console_log_dir",
                "must be an absolute directory or `off`",
            ));
        }
        if !(1..=1024).contains(&self.concurrency) {
            return Err(field_error(
                "concurrency",
                format_args!("must be between 1 and 1024, got {}", self.concurrency),
            ));
        }
        if !(50..=3_600_000).contains(&self.heartbeat_interval_ms) {
            return Err(field_error(
                "heartbeat_interval_ms",
                "must be between 50 and 3600000",
            ));
        }
        if self.reconcile_interval_ms < 100 {
            return Err(field_error("reconcile_interval_ms", "must be at least 100"));
        }
        if self.max_payload_bytes < 1024 || self.max_payload_bytes > 64 << 20 {
            return Err(field_error(
                "max_payload_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        if self.reconnect_max_backoff_ms < 100 {
            return Err(field_error(
                "reconnect_max_backoff_ms",
                "must be at least 100",
            ));
        }
        self.metrics_socket()?;
        self.role_map()?;
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(field_error(
                "tls_cert_file",
                "tls_cert_file and tls_key_file go together",
            ));
        }
        self.tls()?;
        if self.max_deliveries == 0 {
            return Err(field_error("max_deliveries", "must be at least 1"));
        }
        if self.max_object_queue == 0 {
            return Err(field_error("max_object_queue", "must be at least 1"));
        }
        if self.dead_letter_max_length == 0 {
            return Err(field_error("dead_letter_max_length", "must be at least 1"));
        }
        for (field, v) in [
            ("dead_letter_max_age_s", self.dead_letter_max_age_s),
            ("event_retention_s", self.event_retention_s),
            ("roster_retention_s", self.roster_retention_s),
            ("beat_retention_s", self.beat_retention_s),
        ] {
            if v < 60 {
                return Err(field_error(field, "must be at least 60"));
            }
        }
        if self.event_retention_bytes < 1 << 20 {
            return Err(field_error(
                "event_retention_bytes",
                "must be at least 1048576",
            ));
        }
        if !(100..=600_000).contains(&self.connect_timeout_ms) {
            return Err(field_error(
                "connect_timeout_ms",
                "must be between 100 and 600000",
            ));
        }
        if self.amqp_frame_max != 0 && self.amqp_frame_max < 4096 {
            return Err(field_error(
                "amqp_frame_max",
                "must be 0 (the broker's) or at least 4096 (AMQP's smallest frame)",
            ));
        }
        Ok(())
    }

    /// The roles, parsed.
    pub fn role_map(&self) -> Result<BTreeMap<String, crate::auth::Role>, ConfigError> {
        self.roles
            .iter()
            .map(|(u, r)| {
                crate::auth::Role::parse(r)
                    .map(|role| (u.clone(), role))
                    .ok_or_else(|| {
                        field_error(
                            "roles",
                            format_args!("{u} = {r:?}: roles are read-only, operator or admin"),
                        )
                    })
            })
            .collect()
    }

    /// The TLS material, read from the configured files.
    pub fn tls(&self) -> Result<hostbus_amqp::Tls, ConfigError> {
        hostbus_amqp::Tls::load(
            self.tls_ca_file.as_deref(),
            self.tls_cert_file.as_deref(),
            self.tls_key_file.as_deref(),
        )
        .map_err(|e| field_error("tls_ca_file", e))
    }

    /// The metrics address, or `None` when disabled.
    pub fn metrics_socket(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.metrics_addr == "off" || self.metrics_addr.is_empty() {
            return Ok(None);
        }
        self.metrics_addr.parse().map(Some).map_err(|_| {
            field_error(
                "metrics_addr",
                format_args!(
                    "{:?} is not an address like 127.0.0.1:9187, or `off`",
                    self.metrics_addr
                ),
            )
        })
    }

    /// Heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
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
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = std::env::temp_dir().join(format!("hostbus-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("agent.toml");
        std::fs::write(&file, "host_id = \"from-file\"\nconcurrency = 3\nlabels = [\"a\", \"b\"]\nheartbeat_interval_ms = 1000\n").expect("write");
        let flags = Flags {
            config: Some(file.clone()),
            concurrency: Some(5),
            ..Flags::default()
        };
        let c = Config::load(
            &flags,
            &env(&[
                ("HOSTBUS_HEARTBEAT_INTERVAL_MS", "2000"),
                ("HOSTBUS_LABELS", "x,y"),
                ("HOSTBUS_TEST_AMQP_URL", "ignored"),
            ]),
        )
        .expect("load");
        assert_eq!(c.host_id, "from-file");
        assert_eq!(c.concurrency, 5, "flags beat the file");
        assert_eq!(c.heartbeat_interval_ms, 2000, "environment beats the file");
        assert_eq!(c.labels, ["x", "y"]);
        assert_eq!(c.libvirt_uri, "qemu:///system", "defaults fill the rest");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn invalid_values_name_the_field() {
        let bad = |pairs: &[(&str, &str)]| {
            Config::load(&Flags::default(), &env(pairs))
                .expect_err("invalid")
                .to_string()
        };
        assert!(bad(&[("HOSTBUS_HOST_ID", "Bad.Host")]).contains("`host_id`"));
        assert!(bad(&[("HOSTBUS_CONCURRENCY", "0")]).contains("`concurrency`"));
        assert!(bad(&[("HOSTBUS_CONCURRENCY", "many")]).contains("concurrency"));
        assert!(bad(&[("HOSTBUS_BROKER_URLS", "http://x")]).contains("`broker_urls`"));
        assert!(bad(&[("HOSTBUS_LABELS", "ok,Not OK")]).contains("`labels`"));
        assert!(bad(&[("HOSTBUS_LOG_FORMAT", "xml")]).contains("log_format"));
        assert!(bad(&[("HOSTBUS_METRICS_ADDR", "nowhere")]).contains("`metrics_addr`"));
        assert!(bad(&[("HOSTBUS_QUEUE_TYPE", "mirrored")]).contains("queue_type"));
        assert!(bad(&[("HOSTBUS_DOMAIN_TYPE", "xen")]).contains("`domain_type`"));
        assert!(bad(&[("HOSTBUS_CONSOLE_LOG_DIR", "logs")]).contains("`console_log_dir`"));
        assert!(bad(&[("HOSTBUS_AMQP_FRAME_MAX", "1024")]).contains("`amqp_frame_max`"));
    }

    #[test]
    fn the_frame_size_reaches_the_connection_options() {
        let c = Config::load(&Flags::default(), &env(&[])).expect("defaults");
        assert_eq!(
            c.connect_options().frame_max,
            None,
            "the broker's by default"
        );
        let c = Config::load(
            &Flags::default(),
            &env(&[("HOSTBUS_AMQP_FRAME_MAX", "16384")]),
        )
        .expect("16 KiB");
        assert_eq!(c.connect_options().frame_max, Some(16_384));
    }

    #[test]
    fn domain_type_comes_from_the_environment_or_a_flag() {
        let c = Config::load(&Flags::default(), &env(&[])).expect("defaults");
        assert_eq!(
            c.bridge_domain_type().ok(),
            Some(hostbus_bridge::DomainType::Auto)
        );
        let c =
            Config::load(&Flags::default(), &env(&[("HOSTBUS_DOMAIN_TYPE", "qemu")])).expect("env");
        assert_eq!(
            c.bridge_domain_type().ok(),
            Some(hostbus_bridge::DomainType::Qemu)
        );
        let flags = Flags {
            domain_type: Some("kvm".into()),
            ..Flags::default()
        };
        let c = Config::load(&flags, &env(&[("HOSTBUS_DOMAIN_TYPE", "qemu")])).expect("flag");
        assert_eq!(
            c.bridge_domain_type().ok(),
            Some(hostbus_bridge::DomainType::Kvm)
        );
        let c = Config::load(
            &Flags::default(),
            &env(&[("HOSTBUS_CONSOLE_LOG_DIR", "off")]),
        )
        .expect("off");
        assert_eq!(c.bridge_console_log_dir(), None);
    }

    /// Issue 14: `HOSTBUS_QUEUE_TYPE` was silently ignored; now it is a
    /// setting, and a variable that names no setting is refused.
    #[test]
    fn queue_type_is_a_setting_and_unknown_variables_are_refused() {
        let c = Config::load(
            &Flags::default(),
            &env(&[("HOSTBUS_QUEUE_TYPE", "classic")]),
        )
        .expect("classic");
        assert_eq!(c.queue_type, QueueType::Classic);
        let c = Config::load(&Flags::default(), &env(&[])).expect("defaults");
        assert_eq!(c.queue_type, QueueType::Quorum, "quorum by default");
        let err = Config::load(&Flags::default(), &env(&[("HOSTBUS_QUEUE_TYP", "classic")]))
            .expect_err("a typo");
        assert!(err.to_string().contains("HOSTBUS_QUEUE_TYP"), "{err}");
        // Other programs' variables are not the agent's business.
        Config::load(
            &Flags::default(),
            &env(&[
                ("HOSTBUS_URL", "amqp://x"),
                ("HOSTBUS_TEST_AMQP_URL", "amqp://y"),
            ]),
        )
        .expect("foreign variables pass");
    }

    #[test]
    fn unknown_file_fields_are_refused() {
        let dir = std::env::temp_dir().join(format!("hostbus-cfg-unknown-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("agent.toml");
        std::fs::write(&file, "hots_id = \"typo\"\n").expect("write");
        let err = Config::load(
            &Flags {
                config: Some(file),
                ..Flags::default()
            },
            &HashMap::new(),
        )
        .expect_err("typo");
        assert!(err.to_string().contains("hots_id"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
