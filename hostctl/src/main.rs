//! `hostctl`: drive hostbus hosts from a shell.
//!
//! Human tables by default, `--output json` everywhere; progress bars on
//! long operations; exit codes scripts can rely on (see `hostctl --help`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use futures_lite::StreamExt;
use hostbus_client::protocol::commands::{VmList, VmListRequest};
use hostbus_client::protocol::names::Target;
use hostbus_client::protocol::types::{
    BootDevice, BootSpec, CpuMode, DiskBus, DiskDevice, DiskFormat, DiskSource, DiskSpec,
    ForwardMode, IpSpec, NetworkSpec, NicModel, NicSpec, PoolKind, PoolSpec, PowerState,
    TaskRecord, TaskStatus, VmRecord, VmSpec, VolumeRef, VolumeSpec,
};
use hostbus_client::{
    Client, ClientConfig, ClientError, ErrorKind, Notification, StartAt, SubscribeOptions,
};
use serde::Serialize;

/// `println!` that ends the program quietly when stdout is a closed pipe
/// (`hostctl ... | head`), like other Unix tools.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

const EXIT_CODES: &str = "EXIT CODES:
  0  success
  1  other error (internal, unexpected reply)
  2  usage error (bad flags or arguments)
  3  not found (host, VM, pool, volume, network, snapshot, task)
  4  refused: invalid argument, bad state, already exists, unsupported
  5  unreachable: broker connection failed, timeout, host unavailable, busy
  6  permission denied
  7  partial: a broadcast where some expected hosts did not answer

ENVIRONMENT:
  HOSTBUS_URL         broker URL(s), comma-separated (like --url)
  HOSTBUS_TIMEOUT_MS  call deadline (like --timeout-ms)
  HOSTBUS_OUTPUT      table or json (like --output)
  HOSTBUS_CA_FILE     CA certificate for amqps:// (like --ca-file)
  HOSTBUS_CERT_FILE   client certificate (like --cert-file)
  HOSTBUS_KEY_FILE    client key (like --key-file)
  HOSTCTL_CONFIG      config file (default ~/.config/hostbus/hostctl.toml)

EXAMPLES:
  hostctl hosts
  hostctl vm list --all
  hostctl vm start h1/web01
  hostctl vm create h1 --name app01 --memory 1024 --vcpus 2 --disk default:10 --network default
  hostctl events '*.vm.*' --follow
  hostctl events 'h1.#' --from -1h
  hostctl host forget h9
  hostctl --output json vm get h1/web01 | jq .power_state";

#[derive(Parser)]
#[command(name = "hostctl", version, about = "Drive hostbus hosts through the broker.", after_help = EXIT_CODES)]
struct Cli {
    /// Broker URL; repeat for a cluster.
    #[arg(long = "url", global = true)]
    urls: Vec<String>,
    /// Call deadline in milliseconds.
    #[arg(long, global = true)]
    timeout_ms: Option<u64>,
    /// Output format.
    #[arg(long, short, global = true, value_enum)]
    output: Option<Output>,
    /// Config file (TOML with `urls`, `timeout_ms`, `output`, `ca_file`, `cert_file`, `key_file`).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// CA certificate (PEM) for amqps:// brokers.
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for brokers that verify clients.
    #[arg(long, global = true)]
    cert_file: Option<PathBuf>,
    /// Client key (PEM, PKCS#8).
    #[arg(long, global = true)]
    key_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every host of the fleet, as the broker remembers it: alive, stale or
    /// gone (until forgotten).
    Hosts {
        /// Longest wait for the broker's history, ms.
        #[arg(long, default_value_t = 10_000)]
        listen_ms: u64,
    },
    /// Checks that a host's agent answers.
    Ping { host: String },
    /// Host facts.
    #[command(subcommand)]
    Host(HostCmd),
    /// VMs.
    #[command(subcommand)]
    Vm(VmCmd),
    /// VM snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Storage pools.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Storage volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Virtual networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Tasks.
    #[command(subcommand)]
    Task(TaskCmd),
    /// Prints events matching PATTERNs (`*.vm.*`, `h1.#`; default all).
    Events {
        patterns: Vec<String>,
        /// Where to start: `next` (default), `first` (the oldest the broker
        /// keeps), a stream offset (a printed `offset` plus one), or a time
        /// (`-10m`, `-2h`: that long ago).
        #[arg(long, default_value = "next")]
        from: String,
        /// Keep printing until interrupted.
        #[arg(long)]
        follow: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
        /// Without --follow: stop after this long, ms.
        #[arg(long, default_value_t = 3000)]
        duration_ms: u64,
    },
    /// Broker administration.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Prints the protocol's JSON Schema.
    Schema,
    /// Prints a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Declares the exchanges, the dead-letter queue and the streams with
    /// the agents' default settings (for brokers whose host users may not
    /// declare them: docs/security.md).
    Setup {
        /// Queue type of the dead-letter queue.
        #[arg(long, value_enum, default_value = "quorum")]
        queue_type: AdminQueueType,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AdminQueueType {
    Quorum,
    Classic,
}

#[derive(Subcommand)]
enum HostCmd {
    /// Removes a host that is gone from the fleet: deletes its command
    /// queue and bindings, and fleet views stop listing it.
    Forget {
        host: String,
        /// Even if it looks alive.
        #[arg(long)]
        force: bool,
    },
    /// Hardware and hypervisor facts.
    Info { host: String },
    /// What the host can do.
    Caps { host: String },
    /// Memory and VM load now.
    Stats { host: String },
    /// Every record of the host (JSON).
    Snapshot { host: String },
}

#[derive(Subcommand)]
enum VmCmd {
    /// Lists VMs of one host, a label group or all hosts.
    List {
        #[arg(long, conflicts_with_all = ["all", "label"])]
        host: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        label: Option<String>,
        /// Only VMs in this state (halted, running, paused, suspended).
        #[arg(long)]
        state: Option<String>,
    },
    /// One VM (HOST/VM, VM by name or uuid).
    Get { vm: String },
    /// Starts a VM.
    Start {
        vm: String,
        #[arg(long)]
        paused: bool,
    },
    /// Asks a VM to shut down cleanly.
    Shutdown {
        vm: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 120)]
        timeout: u32,
        /// Force off after the timeout.
        #[arg(long)]
        force: bool,
    },
    /// Stops a VM at once.
    Destroy { vm: String },
    /// Pauses a VM.
    Pause { vm: String },
    /// Resumes a paused or suspended VM.
    Resume { vm: String },
    /// Suspends a VM to disk.
    Suspend { vm: String },
    /// Reboots a VM.
    Reboot { vm: String },
    /// Resets a VM.
    Reset { vm: String },
    /// Defines a VM on HOST.
    Create(Box<VmCreate>),
    /// Removes a halted VM.
    Delete {
        vm: String,
        /// Also delete its volumes.
        #[arg(long)]
        remove_storage: bool,
    },
    /// Sets memory, MiB.
    SetMemory { vm: String, mib: u64 },
    /// Sets vCPUs.
    SetVcpus { vm: String, vcpus: u32 },
    /// CPU, memory, disk and network counters.
    Stats { vm: String },
    /// Where the VM's serial console is, and how to reach it on its host.
    Console { vm: String },
}

/// `hostctl vm create`'s arguments (boxed: they are many).
#[derive(clap::Args)]
struct VmCreate {
    host: String,
    #[arg(long)]
    name: String,
    /// Memory, MiB.
    #[arg(long)]
    memory: u64,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// `POOL:GiB` for a new volume, `POOL/VOLUME` for an existing one, or an absolute path;
    /// `@raw` or `@qcow2` after it states the format (an existing volume's own is the
    /// default; a path outside every pool needs it). Repeat.
    #[arg(long = "disk")]
    disks: Vec<String>,
    /// An ISO image as a CD-ROM drive: `POOL/VOLUME` or an absolute path. Repeat.
    #[arg(long = "cdrom")]
    cdroms: Vec<String>,
    /// Boot order, comma-separated: disk, cdrom, network (default: disk).
    #[arg(long, value_delimiter = ',')]
    boot: Vec<String>,
    /// Boot this kernel (a path on the host) directly.
    #[arg(long)]
    kernel: Option<String>,
    /// The initrd for --kernel.
    #[arg(long, requires = "kernel")]
    initrd: Option<String>,
    /// The kernel command line for --kernel.
    #[arg(long, requires = "kernel")]
    cmdline: Option<String>,
    /// host-model, host-passthrough, maximum or hypervisor-default
    /// (default: the host's choice, host-model on KVM, maximum under TCG).
    #[arg(long)]
    cpu_mode: Option<String>,
    /// Network name. Repeat.
    #[arg(long = "network")]
    networks: Vec<String>,
    #[arg(long)]
    description: Option<String>,
    /// Start it once defined.
    #[arg(long)]
    start: bool,
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Snapshots of a VM.
    List { vm: String },
    /// Takes a snapshot.
    Create {
        vm: String,
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Reverts to a snapshot.
    Revert { vm: String, name: String },
    /// Deletes a snapshot.
    Delete { vm: String, name: String },
}

#[derive(Subcommand)]
enum PoolCmd {
    /// Pools of a host.
    List { host: String },
    /// One pool (HOST/POOL).
    Get { pool: String },
    /// Defines a directory pool.
    Create {
        host: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        path: String,
        #[arg(long)]
        autostart: bool,
    },
    /// Starts a pool.
    Start { pool: String },
    /// Stops a pool.
    Stop { pool: String },
    /// Rescans a pool.
    Refresh { pool: String },
    /// Removes a stopped pool's definition.
    Delete { pool: String },
}

#[derive(Subcommand)]
enum VolumeCmd {
    /// Volumes of a pool (HOST/POOL).
    List { pool: String },
    /// Creates a volume in HOST/POOL.
    Create {
        pool: String,
        name: String,
        /// Size, GiB.
        #[arg(long)]
        size: u64,
        #[arg(long, default_value = "qcow2")]
        format: String,
    },
    /// Deletes HOST/POOL/VOLUME.
    Delete { volume: String },
    /// Grows HOST/POOL/VOLUME to a size in GiB.
    Resize {
        volume: String,
        #[arg(long)]
        size: u64,
    },
    /// Copies HOST/POOL/VOLUME to NEW in the same pool.
    Clone { volume: String, new_name: String },
}

#[derive(Subcommand)]
enum NetworkCmd {
    /// Networks of a host.
    List { host: String },
    /// One network (HOST/NET).
    Get { network: String },
    /// Defines a network on HOST.
    Create {
        host: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        bridge: Option<String>,
        /// isolated, nat, route, bridge, open.
        #[arg(long, default_value = "nat")]
        forward: String,
        /// Host address with prefix, e.g. 192.168.150.1/24.
        #[arg(long)]
        ip: Option<String>,
        /// DHCP range, e.g. 192.168.150.10-192.168.150.99.
        #[arg(long)]
        dhcp: Option<String>,
        #[arg(long)]
        autostart: bool,
    },
    /// Starts a network.
    Start { network: String },
    /// Stops a network.
    Stop { network: String },
    /// Removes a stopped network's definition.
    Delete { network: String },
}

#[derive(Subcommand)]
enum TaskCmd {
    /// Tasks of a host.
    List { host: String },
    /// One task.
    Get { host: String, id: uuid::Uuid },
    /// Waits for a task, with a progress bar.
    Wait { host: String, id: uuid::Uuid },
    /// Cancels a task.
    Cancel { host: String, id: uuid::Uuid },
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    urls: Option<Vec<String>>,
    timeout_ms: Option<u64>,
    output: Option<Output>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

/// An error with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match e.kind() {
            ErrorKind::NotFound | ErrorKind::NoRoute => 3,
            ErrorKind::InvalidArgument
            | ErrorKind::BadState
            | ErrorKind::AlreadyExists
            | ErrorKind::Unsupported
            | ErrorKind::Cancelled
            | ErrorKind::Expired => 4,
            ErrorKind::Timeout
            | ErrorKind::Connection
            | ErrorKind::Unavailable
            | ErrorKind::Busy => 5,
            ErrorKind::PermissionDenied => 6,
            _ => 1,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure {
            code: 1,
            message: format!("{e:#}"),
        }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

type Res<T> = Result<T, Failure>;

struct Ctx {
    client: Client,
    output: Output,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Completions { shell } = &cli.cmd {
        clap_complete::generate(
            *shell,
            &mut Cli::command(),
            "hostctl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    if let Cmd::Schema = &cli.cmd {
        print!("{}", hostbus_client::protocol::schema::schema_text());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hostctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("hostctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn load_config(cli: &Cli) -> Res<(ClientConfig, Output)> {
    let path = cli
        .config
        .clone()
        .or_else(|| std::env::var_os("HOSTCTL_CONFIG").map(PathBuf::from))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/hostbus/hostctl.toml"))
        });
    let file: FileConfig = match path {
        Some(p) if p.exists() => {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| usage(format!("cannot read {}: {e}", p.display())))?;
            serde_json::from_value(
                toml_to_json(&text).map_err(|e| usage(format!("{}: {e}", p.display())))?,
            )
            .map_err(|e| usage(format!("{}: {e}", p.display())))?
        }
        _ => FileConfig::default(),
    };
    let urls = if !cli.urls.is_empty() {
        cli.urls.clone()
    } else if let Ok(v) = std::env::var("HOSTBUS_URL") {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    } else {
        file.urls
            .unwrap_or_else(|| vec!["amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()])
    };
    let timeout_ms = cli
        .timeout_ms
        .or_else(|| {
            std::env::var("HOSTBUS_TIMEOUT_MS")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .or(file.timeout_ms)
        .unwrap_or(10_000);
    let output = cli
        .output
        .or_else(|| match std::env::var("HOSTBUS_OUTPUT").as_deref() {
            Ok("json") => Some(Output::Json),
            Ok("table") => Some(Output::Table),
            _ => None,
        })
        .or(file.output)
        .unwrap_or(Output::Table);
    let pick = |flag: &Option<PathBuf>, env: &str, file: &Option<PathBuf>| {
        flag.clone()
            .or_else(|| std::env::var_os(env).map(PathBuf::from))
            .or_else(|| file.clone())
    };
    let ca = pick(&cli.ca_file, "HOSTBUS_CA_FILE", &file.ca_file);
    let cert = pick(&cli.cert_file, "HOSTBUS_CERT_FILE", &file.cert_file);
    let key = pick(&cli.key_file, "HOSTBUS_KEY_FILE", &file.key_file);
    let tls = hostbus_client::Tls::load(ca.as_deref(), cert.as_deref(), key.as_deref())
        .map_err(|e| usage(e.to_string()))?;
    let mut cfg = ClientConfig::new(urls.first().cloned().unwrap_or_default());
    cfg.urls = urls;
    cfg.tls = tls;
    cfg.timeout = Duration::from_millis(timeout_ms);
    Ok((cfg, output))
}

/// A tiny TOML subset (key = value lines, strings, integers, string arrays)
/// read into JSON, enough for hostctl's three settings.
fn toml_to_json(text: &str) -> Result<serde_json::Value, String> {
    let mut map = serde_json::Map::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected `key = value`", n + 1))?;
        let v = v.trim();
        let value = if let Some(inner) = v.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            serde_json::Value::Array(
                inner
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| serde_json::Value::String(s.trim_matches('"').to_owned()))
                    .collect(),
            )
        } else if let Some(s) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            serde_json::Value::String(s.to_owned())
        } else {
            serde_json::Value::Number(
                v.parse::<u64>()
                    .map_err(|_| format!("line {}: cannot read `{v}`", n + 1))?
                    .into(),
            )
        };
        map.insert(k.trim().to_owned(), value);
    }
    Ok(serde_json::Value::Object(map))
}

/// Splits `HOST/REST`.
fn split(arg: &str, what: &str) -> Res<(String, String)> {
    arg.split_once('/')
        .filter(|(h, r)| !h.is_empty() && !r.is_empty())
        .map(|(h, r)| (h.to_owned(), r.to_owned()))
        .ok_or_else(|| usage(format!("expected HOST/{what}, got `{arg}`")))
}

fn print_json<T: Serialize>(v: &T) -> Res<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Failure {
        code: 1,
        message: e.to_string(),
    })?;
    outln!("{s}");
    Ok(())
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        outln!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        line(r);
    }
}

fn mib(kib: u64) -> String {
    format!("{}", kib / 1024)
}

fn gib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1u64 << 30) as f64)
}

impl Ctx {
    fn show<T: Serialize>(&self, value: &T, human: impl FnOnce(&T)) -> Res<()> {
        match self.output {
            Output::Json => print_json(value),
            Output::Table => {
                human(value);
                Ok(())
            }
        }
    }

    fn vm_rows(&self, vms: &[(String, VmRecord)]) {
        table(
            &["HOST", "NAME", "STATE", "VCPUS", "MEMORY_MIB", "UUID"],
            vms.iter()
                .map(|(h, v)| {
                    vec![
                        h.clone(),
                        v.name.clone(),
                        v.power_state.to_string(),
                        v.vcpus.to_string(),
                        mib(v.memory_kib),
                        v.uuid.to_string(),
                    ]
                })
                .collect(),
        );
    }

    fn vm(&self, vm: &VmRecord) -> Res<()> {
        self.show(vm, |v| {
            outln!("name:        {}", v.name);
            outln!("uuid:        {}", v.uuid);
            outln!("state:       {}", v.power_state);
            outln!(
                "memory:      {} MiB (max {} MiB)",
                v.memory_kib / 1024,
                v.max_memory_kib / 1024
            );
            outln!("vcpus:       {} (max {})", v.vcpus, v.max_vcpus);
            for d in &v.disks {
                let volume = d
                    .volume
                    .as_ref()
                    .map(|r| format!(" ({}/{})", r.pool, r.volume))
                    .unwrap_or_default();
                let kind = if d.device == DiskDevice::Cdrom {
                    "cdrom:      "
                } else {
                    "disk:       "
                };
                outln!(
                    "{kind} {} {} {}{volume}{}",
                    d.target,
                    d.format,
                    d.source_path.as_deref().unwrap_or("-"),
                    if d.read_only { " read-only" } else { "" }
                );
            }
            for n in &v.nics {
                outln!(
                    "nic:         {} {}",
                    n.mac,
                    n.network.as_deref().or(n.bridge.as_deref()).unwrap_or("-")
                );
            }
            if let Some(k) = &v.boot.kernel {
                outln!(
                    "boot:        kernel {k}{}{}",
                    v.boot
                        .initrd
                        .as_ref()
                        .map(|i| format!(" initrd {i}"))
                        .unwrap_or_default(),
                    v.boot
                        .cmdline
                        .as_ref()
                        .map(|c| format!(" cmdline \"{c}\""))
                        .unwrap_or_default()
                );
            } else if !v.boot.order.is_empty() {
                let order: Vec<&str> = v.boot.order.iter().map(|b| b.as_str()).collect();
                outln!("boot:        {}", order.join(","));
            }
            if let Some(t) = &v.domain_type {
                outln!(
                    "hypervisor:  {t}, cpu {}",
                    v.cpu_mode.map_or("hypervisor default", |m| m.as_str())
                );
            }
            if let Some(c) = &v.console {
                outln!(
                    "console:     {} pty {} log {}",
                    c.guest_device,
                    c.pty.as_deref().unwrap_or("-"),
                    c.log_path.as_deref().unwrap_or("-")
                );
            }
            let ops: Vec<&str> = v.allowed_operations.iter().map(|o| o.as_str()).collect();
            outln!("allowed:     {}", ops.join(", "));
            outln!("generation:  {}", v.generation);
        })
    }
}

/// Draws a progress bar on stderr when it is a terminal.
struct Progress {
    tty: bool,
    label: String,
}

impl Progress {
    fn new(label: &str) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            label: label.to_owned(),
        }
    }
    fn update(&self, t: &TaskRecord) {
        if !self.tty {
            return;
        }
        let filled = usize::from(t.progress.min(100)) * 30 / 100;
        eprint!(
            "\r{} [{}{}] {:>3}% {}",
            self.label,
            "#".repeat(filled),
            ".".repeat(30 - filled),
            t.progress,
            t.status
        );
        let _ = std::io::stderr().flush();
    }
    fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

fn task_outcome(t: &TaskRecord) -> Res<()> {
    match (t.status, &t.error) {
        (TaskStatus::Success, _) => Ok(()),
        (_, Some(e)) => Err(ClientError::from(e.clone()).into()),
        (s, None) => Err(Failure {
            code: 1,
            message: format!("task ended {s}"),
        }),
    }
}

/// `hostctl vm console`: the console's place on its host, and the command
/// that attaches to it there (consoles are not carried over the bus).
fn vm_console(ctx: &Ctx, host: &str, vm: &VmRecord) -> Res<()> {
    #[derive(Serialize)]
    struct Console<'a> {
        host: &'a str,
        vm: &'a str,
        uuid: uuid::Uuid,
        power_state: PowerState,
        guest_device: Option<&'a str>,
        pty: Option<&'a str>,
        log_path: Option<&'a str>,
        attach: String,
        follow: Option<String>,
    }
    let c = vm.console.as_ref().ok_or_else(|| Failure {
        code: 1,
        message: format!("vm {} has no serial console", vm.name),
    })?;
    let out = Console {
        host,
        vm: &vm.name,
        uuid: vm.uuid,
        power_state: vm.power_state,
        guest_device: Some(c.guest_device.as_str()),
        pty: c.pty.as_deref(),
        log_path: c.log_path.as_deref(),
        attach: format!("virsh -c qemu:///system console {}", vm.uuid),
        follow: c.log_path.as_ref().map(|p| format!("tail -F {p}")),
    };
    ctx.show(&out, |o| {
        outln!("host:        {}", o.host);
        outln!("vm:          {} ({})", o.vm, o.power_state);
        outln!("device:      {}", o.guest_device.unwrap_or("-"));
        outln!("pty:         {}", o.pty.unwrap_or("- (not running)"));
        outln!("log:         {}", o.log_path.unwrap_or("-"));
        outln!("attach:      {}   (on {}; Ctrl-] leaves)", o.attach, o.host);
        if let Some(f) = &o.follow {
            outln!("follow:      {f}   (on {})", o.host);
        }
    })
}

/// Splits an optional `@raw` / `@qcow2` off a disk argument.
fn split_format(arg: &str) -> Res<(&str, Option<DiskFormat>)> {
    match arg.rsplit_once('@') {
        Some((rest, "raw")) => Ok((rest, Some(DiskFormat::Raw))),
        Some((rest, "qcow2")) => Ok((rest, Some(DiskFormat::Qcow2))),
        Some((_, other)) => Err(usage(format!(
            "disk `{arg}`: format `{other}` is not raw or qcow2"
        ))),
        None => Ok((arg, None)),
    }
}

fn parse_cdrom(arg: &str, index: usize) -> Res<DiskSpec> {
    // IDE: every machine type has it; hdc is the secondary master.
    let target = format!(
        "hd{}",
        (b'c' + u8::try_from(index).map_err(|_| usage("too many cdroms"))?) as char
    );
    let source = if arg.starts_with('/') {
        DiskSource::Path(arg.to_owned())
    } else if let Some((pool, volume)) = arg.split_once('/') {
        DiskSource::Volume(VolumeRef {
            pool: pool.to_owned(),
            volume: volume.to_owned(),
        })
    } else {
        return Err(usage(format!("cdrom `{arg}`: use POOL/VOLUME or /path")));
    };
    Ok(DiskSpec {
        target,
        source,
        bus: DiskBus::Ide,
        format: Some(DiskFormat::Raw),
        read_only: true,
        device: DiskDevice::Cdrom,
    })
}

fn parse_disk(arg: &str, index: usize) -> Res<DiskSpec> {
    let (arg, format) = split_format(arg)?;
    let target = format!(
        "vd{}",
        (b'a' + u8::try_from(index).map_err(|_| usage("too many disks"))?) as char
    );
    let source = if arg.starts_with('/') {
        DiskSource::Path(arg.to_owned())
    } else if let Some((pool, size)) = arg.split_once(':') {
        let gib: u64 = size
            .parse()
            .map_err(|_| usage(format!("disk `{arg}`: size must be whole GiB")))?;
        DiskSource::NewVolume {
            pool: pool.to_owned(),
            capacity_bytes: gib << 30,
        }
    } else if let Some((pool, volume)) = arg.split_once('/') {
        DiskSource::Volume(VolumeRef {
            pool: pool.to_owned(),
            volume: volume.to_owned(),
        })
    } else {
        return Err(usage(format!(
            "disk `{arg}`: use POOL:GiB, POOL/VOLUME or /path"
        )));
    };
    Ok(DiskSpec {
        target,
        source,
        bus: DiskBus::Virtio,
        format,
        read_only: false,
        device: DiskDevice::Disk,
    })
}

async fn run(cli: Cli) -> Res<u8> {
    let (cfg, output) = load_config(&cli)?;
    let client = Client::connect(cfg).await?;
    let ctx = Ctx { client, output };
    let c = &ctx.client;
    match cli.cmd {
        Cmd::Schema | Cmd::Completions { .. } => {}
        Cmd::Hosts { listen_ms } => {
            let p = c.presence().await?;
            p.wait_ready(Duration::from_millis(listen_ms)).await;
            if !p.is_ready() {
                eprintln!("hostctl: the broker's history did not arrive in time; the list may be incomplete");
            }
            let hosts = p.hosts();
            ctx.show(&hosts, |hs| {
                table(
                    &[
                        "HOST",
                        "STATE",
                        "HEALTH",
                        "LABELS",
                        "VMS_ACTIVE",
                        "IN_FLIGHT",
                        "LAST_SEEN",
                        "AGENT",
                        "EPOCH",
                    ],
                    hs.iter()
                        .map(|h| {
                            vec![
                                h.host_id.clone(),
                                format!("{:?}", h.liveness).to_lowercase(),
                                h.health.status.to_string(),
                                h.labels.join(","),
                                h.load.vms_active.to_string(),
                                h.load.in_flight.to_string(),
                                h.last_seen_ms.map_or_else(
                                    || format!(">{}s", p.lookback().as_secs()),
                                    |ms| format!("{:.1}s", ms as f64 / 1000.0),
                                ),
                                h.versions.agent.clone(),
                                h.epoch.to_string(),
                            ]
                        })
                        .collect(),
                )
            })?;
        }
        Cmd::Ping { host } => {
            let started = std::time::Instant::now();
            let pong = c.host(&host).ping().await?;
            let rtt = started.elapsed().as_secs_f64() * 1000.0;
            ctx.show(
                &serde_json::json!({"host": pong.host_id, "rtt_ms": rtt}),
                |_| outln!("{} answered in {rtt:.1} ms", pong.host_id),
            )?;
        }
        Cmd::Admin(AdminCmd::Setup { queue_type }) => {
            let settings = hostbus_client::topology::TopologySettings {
                queue_type: match queue_type {
                    AdminQueueType::Quorum => hostbus_client::topology::QueueType::Quorum,
                    AdminQueueType::Classic => hostbus_client::topology::QueueType::Classic,
                },
                ..Default::default()
            };
            let mismatches = c.declare_topology(&settings).await?;
            for m in &mismatches {
                eprintln!(
                    "hostctl: {} exists with other arguments; left as it is ({})",
                    m.queue, m.reason
                );
            }
            ctx.show(
                &serde_json::json!({"declared": true, "left_as_is": mismatches.iter().map(|m| &m.queue).collect::<Vec<_>>()}),
                |_| outln!("exchanges, dead-letter queue and streams declared"),
            )?;
        }
        Cmd::Host(h) => {
            match h {
                HostCmd::Forget { host, force } => {
                    c.forget_host(&host, force).await?;
                    ctx.show(&serde_json::json!({"forgotten": host}), |_| {
                    outln!("{host} forgotten: its queue is deleted and fleet views no longer list it")
                })?;
                }
                HostCmd::Info { host } => {
                    let i = c.host(&host).info().await?;
                    ctx.show(&i, |i| {
                        table(
                            &[
                                "HOST",
                                "HYPERVISOR",
                                "LIBVIRT",
                                "ARCH",
                                "CPUS",
                                "MEMORY_MIB",
                                "CPU_MODEL",
                            ],
                            vec![vec![
                                i.host_id.clone(),
                                format!("{} {}", i.hypervisor, i.hypervisor_version),
                                i.libvirt_version.clone(),
                                i.arch.clone(),
                                i.cpus.to_string(),
                                mib(i.memory_kib),
                                i.cpu_model.clone(),
                            ]],
                        )
                    })?;
                }
                HostCmd::Caps { host } => {
                    let caps = c.host(&host).capabilities().await?;
                    ctx.show(&caps, |c| {
                        outln!("arch: {}", c.arch);
                        for (a, t) in &c.guest_domain_types {
                            outln!("guests {a}: {}", t.join(", "));
                        }
                        outln!("commands: {}", c.commands.len());
                    })?;
                }
                HostCmd::Stats { host } => {
                    let s = c.host(&host).stats().await?;
                    ctx.show(&s, |s| {
                        table(
                            &[
                                "MEMORY_MIB",
                                "FREE_MIB",
                                "VMS",
                                "ACTIVE",
                                "VM_MEMORY_MIB",
                                "VM_VCPUS",
                            ],
                            vec![vec![
                                mib(s.memory_total_kib),
                                mib(s.memory_free_kib),
                                s.vms_total.to_string(),
                                s.vms_active.to_string(),
                                mib(s.vm_memory_kib),
                                s.vm_vcpus.to_string(),
                            ]],
                        )
                    })?;
                }
                HostCmd::Snapshot { host } => print_json(&c.host(&host).snapshot().await?)?,
            }
        }
        Cmd::Vm(v) => return vm_cmd(&ctx, v).await,
        Cmd::Snapshot(s) => match s {
            SnapshotCmd::List { vm } => {
                let (h, v) = split(&vm, "VM")?;
                let snaps = c.host(&h).vm_key(&v).snapshots().await?;
                ctx.show(&snaps, |ss| {
                    table(
                        &["NAME", "VM_STATE", "CURRENT", "PARENT", "DESCRIPTION"],
                        ss.iter()
                            .map(|s| {
                                vec![
                                    s.name.clone(),
                                    s.vm_power_state.to_string(),
                                    s.current.to_string(),
                                    s.parent.clone().unwrap_or_default(),
                                    s.description.clone(),
                                ]
                            })
                            .collect(),
                    )
                })?;
            }
            SnapshotCmd::Create {
                vm,
                name,
                description,
            } => {
                let (h, v) = split(&vm, "VM")?;
                let s = c.host(&h).vm_key(&v).snapshot(&name, &description).await?;
                ctx.show(&s, |s| {
                    outln!("snapshot {} of {v} taken ({})", s.name, s.vm_power_state)
                })?;
            }
            SnapshotCmd::Revert { vm, name } => {
                let (h, v) = split(&vm, "VM")?;
                let r = c.host(&h).vm_key(&v).revert(&name).await?;
                ctx.show(&r, |r| {
                    outln!("{} reverted to {name}: {}", r.name, r.power_state)
                })?;
            }
            SnapshotCmd::Delete { vm, name } => {
                let (h, v) = split(&vm, "VM")?;
                c.host(&h).vm_key(&v).delete_snapshot(&name).await?;
                ctx.show(&serde_json::json!({"deleted": name}), |_| {
                    outln!("snapshot {name} deleted")
                })?;
            }
        },
        Cmd::Pool(p) => match p {
            PoolCmd::List { host } => {
                let pools = c.host(&host).pools().await?;
                ctx.show(&pools, |ps| {
                    table(
                        &[
                            "NAME",
                            "STATE",
                            "KIND",
                            "VOLUMES",
                            "CAPACITY_GIB",
                            "AVAILABLE_GIB",
                            "PATH",
                        ],
                        ps.iter()
                            .map(|p| {
                                vec![
                                    p.name.clone(),
                                    p.state.to_string(),
                                    p.kind.to_string(),
                                    p.volumes.to_string(),
                                    gib(p.capacity_bytes),
                                    gib(p.available_bytes),
                                    p.target_path.clone().unwrap_or_default(),
                                ]
                            })
                            .collect(),
                    )
                })?;
            }
            PoolCmd::Get { pool } => {
                let (h, p) = split(&pool, "POOL")?;
                print_json_or(&ctx, &c.host(&h).pool(&p).get().await?)?;
            }
            PoolCmd::Create {
                host,
                name,
                path,
                autostart,
            } => {
                let r = c
                    .host(&host)
                    .define_pool(PoolSpec {
                        name,
                        kind: PoolKind::Dir,
                        target_path: path,
                        source: None,
                        autostart,
                    })
                    .await?;
                ctx.show(&r, |r| outln!("pool {} defined ({})", r.name, r.state))?;
            }
            PoolCmd::Start { pool } => {
                let (h, p) = split(&pool, "POOL")?;
                let r = c.host(&h).pool(&p).start().await?;
                ctx.show(&r, |r| outln!("pool {} is {}", r.name, r.state))?;
            }
            PoolCmd::Stop { pool } => {
                let (h, p) = split(&pool, "POOL")?;
                let r = c.host(&h).pool(&p).stop().await?;
                ctx.show(&r, |r| outln!("pool {} is {}", r.name, r.state))?;
            }
            PoolCmd::Refresh { pool } => {
                let (h, p) = split(&pool, "POOL")?;
                let r = c.host(&h).pool(&p).refresh().await?;
                ctx.show(&r, |r| {
                    outln!("pool {} refreshed: {} volumes", r.name, r.volumes)
                })?;
            }
            PoolCmd::Delete { pool } => {
                let (h, p) = split(&pool, "POOL")?;
                c.host(&h).pool(&p).undefine().await?;
                ctx.show(&serde_json::json!({"deleted": p}), |_| {
                    outln!("pool {p} deleted")
                })?;
            }
        },
        Cmd::Volume(v) => match v {
            VolumeCmd::List { pool } => {
                let (h, p) = split(&pool, "POOL")?;
                let vols = c.host(&h).pool(&p).volumes().await?;
                ctx.show(&vols, |vs| {
                    table(
                        &["NAME", "FORMAT", "CAPACITY_GIB", "ALLOCATION_GIB", "PATH"],
                        vs.iter()
                            .map(|v| {
                                vec![
                                    v.name.clone(),
                                    v.format.to_string(),
                                    gib(v.capacity_bytes),
                                    gib(v.allocation_bytes),
                                    v.path.clone(),
                                ]
                            })
                            .collect(),
                    )
                })?;
            }
            VolumeCmd::Create {
                pool,
                name,
                size,
                format,
            } => {
                let (h, p) = split(&pool, "POOL")?;
                let format = match format.as_str() {
                    "qcow2" => DiskFormat::Qcow2,
                    "raw" => DiskFormat::Raw,
                    other => return Err(usage(format!("unknown format `{other}` (qcow2, raw)"))),
                };
                let v = c
                    .host(&h)
                    .pool(&p)
                    .create_volume(VolumeSpec {
                        name,
                        capacity_bytes: size << 30,
                        allocation_bytes: 0,
                        format,
                    })
                    .await?;
                ctx.show(&v, |v| {
                    outln!(
                        "volume {} created: {} GiB at {}",
                        v.name,
                        gib(v.capacity_bytes),
                        v.path
                    )
                })?;
            }
            VolumeCmd::Delete { volume } => {
                let (h, rest) = split(&volume, "POOL/VOLUME")?;
                let (p, v) = split(&rest, "VOLUME")?;
                c.host(&h).pool(&p).delete_volume(&v).await?;
                ctx.show(&serde_json::json!({"deleted": v}), |_| {
                    outln!("volume {v} deleted")
                })?;
            }
            VolumeCmd::Resize { volume, size } => {
                let (h, rest) = split(&volume, "POOL/VOLUME")?;
                let (p, v) = split(&rest, "VOLUME")?;
                let r = c.host(&h).pool(&p).resize_volume(&v, size << 30).await?;
                ctx.show(&r, |r| {
                    outln!("volume {} is now {} GiB", r.name, gib(r.capacity_bytes))
                })?;
            }
            VolumeCmd::Clone { volume, new_name } => {
                let (h, rest) = split(&volume, "POOL/VOLUME")?;
                let (p, v) = split(&rest, "VOLUME")?;
                let r = c.host(&h).pool(&p).clone_volume(&v, &new_name).await?;
                ctx.show(&r, |r| outln!("volume {v} cloned to {}", r.name))?;
            }
        },
        Cmd::Network(n) => match n {
            NetworkCmd::List { host } => {
                let nets = c.host(&host).networks().await?;
                ctx.show(&nets, |ns| {
                    table(
                        &["NAME", "ACTIVE", "FORWARD", "BRIDGE", "ADDRESS"],
                        ns.iter()
                            .map(|n| {
                                vec![
                                    n.name.clone(),
                                    n.active.to_string(),
                                    n.forward.to_string(),
                                    n.bridge.clone().unwrap_or_default(),
                                    n.ip.as_ref()
                                        .map(|i| format!("{}/{}", i.address, i.prefix))
                                        .unwrap_or_default(),
                                ]
                            })
                            .collect(),
                    )
                })?;
            }
            NetworkCmd::Get { network } => {
                let (h, n) = split(&network, "NETWORK")?;
                print_json_or(&ctx, &c.host(&h).network(&n).get().await?)?;
            }
            NetworkCmd::Create {
                host,
                name,
                bridge,
                forward,
                ip,
                dhcp,
                autostart,
            } => {
                let forward = match forward.as_str() {
                    "isolated" => ForwardMode::Isolated,
                    "nat" => ForwardMode::Nat,
                    "route" => ForwardMode::Route,
                    "bridge" => ForwardMode::Bridge,
                    "open" => ForwardMode::Open,
                    other => return Err(usage(format!("unknown forward mode `{other}`"))),
                };
                let ip = match ip {
                    None => None,
                    Some(cidr) => {
                        let (address, prefix) = cidr
                            .split_once('/')
                            .ok_or_else(|| usage("--ip must look like 192.168.150.1/24"))?;
                        let prefix = prefix
                            .parse()
                            .map_err(|_| usage("--ip prefix must be a number"))?;
                        let (dhcp_start, dhcp_end) =
                            match dhcp.as_deref().map(|d| d.split_once('-')) {
                                None => (None, None),
                                Some(Some((a, b))) => (Some(a.to_owned()), Some(b.to_owned())),
                                Some(None) => return Err(usage("--dhcp must look like START-END")),
                            };
                        Some(IpSpec {
                            address: address.to_owned(),
                            prefix,
                            dhcp_start,
                            dhcp_end,
                        })
                    }
                };
                let r = c
                    .host(&host)
                    .define_network(NetworkSpec {
                        name,
                        bridge,
                        forward,
                        ip,
                        autostart,
                    })
                    .await?;
                ctx.show(&r, |r| outln!("network {} defined", r.name))?;
            }
            NetworkCmd::Start { network } => {
                let (h, n) = split(&network, "NETWORK")?;
                let r = c.host(&h).network(&n).start().await?;
                ctx.show(&r, |r| outln!("network {} active: {}", r.name, r.active))?;
            }
            NetworkCmd::Stop { network } => {
                let (h, n) = split(&network, "NETWORK")?;
                let r = c.host(&h).network(&n).stop().await?;
                ctx.show(&r, |r| outln!("network {} active: {}", r.name, r.active))?;
            }
            NetworkCmd::Delete { network } => {
                let (h, n) = split(&network, "NETWORK")?;
                c.host(&h).network(&n).undefine().await?;
                ctx.show(&serde_json::json!({"deleted": n}), |_| {
                    outln!("network {n} deleted")
                })?;
            }
        },
        Cmd::Task(t) => match t {
            TaskCmd::List { host } => {
                let tasks = c.host(&host).tasks(None).await?;
                ctx.show(&tasks, |ts| {
                    table(
                        &["ID", "COMMAND", "STATUS", "PROGRESS", "OBJECT"],
                        ts.iter()
                            .map(|t| {
                                vec![
                                    t.id.to_string(),
                                    t.command.clone(),
                                    t.status.to_string(),
                                    format!("{}%", t.progress),
                                    t.object.as_ref().map(|o| o.id.clone()).unwrap_or_default(),
                                ]
                            })
                            .collect(),
                    )
                })?;
            }
            TaskCmd::Get { host, id } => print_json_or(&ctx, &c.host(&host).task(id).get().await?)?,
            TaskCmd::Wait { host, id } => {
                let bar = Progress::new(&format!("task {id}"));
                let t = c.host(&host).task(id).wait(|t| bar.update(t)).await?;
                bar.done();
                ctx.show(&t, |t| outln!("task {} {}", t.id, t.status))?;
                task_outcome(&t)?;
            }
            TaskCmd::Cancel { host, id } => {
                let t = c.host(&host).task(id).cancel().await?;
                ctx.show(&t, |t| outln!("task {} {}", t.id, t.status))?;
            }
        },
        Cmd::Events {
            patterns,
            from,
            follow,
            count,
            duration_ms,
        } => {
            let pats: Vec<&str> = patterns.iter().map(String::as_str).collect();
            let opts = SubscribeOptions {
                from: parse_start(&from)?,
                ..SubscribeOptions::default()
            };
            let mut sub = c.subscribe(&pats, opts).await?;
            let mut seen = 0usize;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(duration_ms);
            loop {
                let next = if follow {
                    Some(sub.next().await)
                } else {
                    tokio::time::timeout_at(deadline, sub.next()).await.ok()
                };
                let Some(Some(n)) = next else { break };
                match n? {
                    Notification::Event(e) => {
                        seen += 1;
                        let offset = sub.position();
                        match ctx.output {
                            Output::Json => {
                                // The event's own fields, and its stream offset.
                                let mut v = serde_json::to_value(&e).map_err(|e| Failure {
                                    code: 1,
                                    message: e.to_string(),
                                })?;
                                if let Some(m) = v.as_object_mut() {
                                    m.insert("offset".into(), serde_json::json!(offset));
                                }
                                outln!("{v}")
                            }
                            Output::Table => outln!(
                                "{} offset={:<7} {:<10} {:<9} {:<9} seq={:<5} gen={:<4} {}",
                                e.time,
                                offset.map_or_else(|| "-".to_owned(), |o| o.to_string()),
                                e.host_id,
                                e.class,
                                e.action,
                                e.seq,
                                e.generation,
                                e.object_id
                            ),
                        }
                    }
                    Notification::Resync { host, reason, .. } => {
                        eprintln!("hostctl: resynced {host} ({reason:?})")
                    }
                }
                let _ = std::io::stdout().flush();
                if count.is_some_and(|n| seen >= n) {
                    break;
                }
            }
        }
    }
    Ok(0)
}

/// `--from` of `hostctl events`: `next`, `first`, an offset, or `-<n><s|m|h|d>`.
fn parse_start(s: &str) -> Res<StartAt> {
    match s {
        "next" => return Ok(StartAt::Next),
        "first" => return Ok(StartAt::First),
        _ => {}
    }
    if let Ok(o) = s.parse::<u64>() {
        return Ok(StartAt::Offset(o));
    }
    let ago = s
        .strip_prefix('-')
        .and_then(|r| {
            let (n, unit) = r.split_at(r.len().checked_sub(1)?);
            let n: u64 = n.parse().ok()?;
            let secs = match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                _ => return None,
            };
            Some(n * secs * 1000)
        })
        .ok_or_else(|| {
            usage(format!(
                "--from {s}: say next, first, an offset, or a time like -10m"
            ))
        })?;
    Ok(StartAt::Time(
        hostbus_client::protocol::now_ms().saturating_sub(ago),
    ))
}

/// Records without a dedicated table print as JSON in both output modes.
fn print_json_or<T: Serialize>(_ctx: &Ctx, v: &T) -> Res<()> {
    print_json(v)
}

/// The one-word lifecycle operations: `hostctl vm <op> HOST/VM`.
async fn lifecycle(ctx: &Ctx, op: &str, vm: &str) -> Res<()> {
    let (h, v) = split(vm, "VM")?;
    let handle = ctx.client.host(&h).vm_key(&v);
    let r = match op {
        "destroy" => handle.destroy().await?,
        "pause" => handle.pause().await?,
        "resume" => handle.resume().await?,
        "suspend" => handle.suspend().await?,
        "reboot" => handle.reboot().await?,
        _ => handle.reset().await?,
    };
    ctx.show(&r, |r| outln!("{} is {}", r.name, r.power_state))
}

async fn vm_cmd(ctx: &Ctx, cmd: VmCmd) -> Res<u8> {
    let c = &ctx.client;
    let simple = match &cmd {
        VmCmd::Destroy { vm } => Some(("destroy", vm)),
        VmCmd::Pause { vm } => Some(("pause", vm)),
        VmCmd::Resume { vm } => Some(("resume", vm)),
        VmCmd::Suspend { vm } => Some(("suspend", vm)),
        VmCmd::Reboot { vm } => Some(("reboot", vm)),
        VmCmd::Reset { vm } => Some(("reset", vm)),
        _ => None,
    };
    if let Some((op, vm)) = simple {
        lifecycle(ctx, op, vm).await?;
        return Ok(0);
    }
    match cmd {
        VmCmd::List {
            host,
            all,
            label,
            state,
        } => {
            let power_state = match state.as_deref() {
                None => None,
                Some(s) => Some(
                    PowerState::ALL
                        .iter()
                        .copied()
                        .find(|p| p.as_str() == s)
                        .ok_or_else(|| usage(format!("unknown state `{s}`")))?,
                ),
            };
            let target = match (host, all, label) {
                (Some(h), _, _) => Target::Host(h),
                (None, true, _) => Target::All,
                (None, false, Some(l)) => Target::Group(l),
                (None, false, None) => {
                    return Err(usage("say which hosts: --host H, --all or --label L"))
                }
            };
            if let Target::Host(h) = &target {
                let vms = c.host(h).vms(power_state).await?;
                let rows: Vec<(String, VmRecord)> =
                    vms.into_iter().map(|v| (h.clone(), v)).collect();
                ctx.show(
                    &rows
                        .iter()
                        .map(|(h, v)| serde_json::json!({"host": h, "vm": v}))
                        .collect::<Vec<_>>(),
                    |_| ctx.vm_rows(&rows),
                )?;
                return Ok(0);
            }
            let b = c
                .broadcast::<VmList>(
                    &target,
                    VmListRequest { power_state },
                    c.config().timeout.min(Duration::from_secs(5)),
                )
                .await?;
            let mut rows = Vec::new();
            let mut errors = serde_json::Map::new();
            for (h, r) in &b.replies {
                match r {
                    Ok(list) => rows.extend(list.vms.iter().map(|v| (h.clone(), v.clone()))),
                    Err(e) => {
                        errors.insert(h.clone(), serde_json::Value::String(e.to_string()));
                    }
                }
            }
            let json = serde_json::json!({
                "vms": rows.iter().map(|(h, v)| serde_json::json!({"host": h, "vm": v})).collect::<Vec<_>>(),
                "missing": b.missing,
                "errors": errors,
            });
            ctx.show(&json, |_| {
                ctx.vm_rows(&rows);
                for (h, e) in &errors {
                    eprintln!("hostctl: {h}: {e}");
                }
            })?;
            if !b.missing.is_empty() {
                eprintln!("hostctl: no answer from {}", b.missing.join(", "));
                return Ok(7);
            }
        }
        VmCmd::Get { vm } => {
            let (h, v) = split(&vm, "VM")?;
            ctx.vm(&c.host(&h).vm_key(&v).get().await?)?;
        }
        VmCmd::Console { vm } => {
            let (h, v) = split(&vm, "VM")?;
            let rec = c.host(&h).vm_key(&v).get().await?;
            vm_console(ctx, &h, &rec)?;
        }
        VmCmd::Start { vm, paused } => {
            let (h, v) = split(&vm, "VM")?;
            let handle = c.host(&h).vm_key(&v);
            let r = if paused {
                handle.start_paused().await?
            } else {
                handle.start().await?
            };
            ctx.show(&r, |r| outln!("{} is {}", r.name, r.power_state))?;
        }
        VmCmd::Shutdown { vm, timeout, force } => {
            let (h, v) = split(&vm, "VM")?;
            let r = c
                .host(&h)
                .vm_key(&v)
                .shutdown(Duration::from_secs(u64::from(timeout)), force)
                .await?;
            ctx.show(&r, |r| outln!("{} is {}", r.name, r.power_state))?;
        }
        VmCmd::Destroy { vm }
        | VmCmd::Pause { vm }
        | VmCmd::Resume { vm }
        | VmCmd::Suspend { vm }
        | VmCmd::Reboot { vm }
        | VmCmd::Reset { vm } => {
            unreachable!("{vm} is handled by lifecycle()")
        }
        VmCmd::Create(args) => {
            let VmCreate {
                host,
                name,
                memory,
                vcpus,
                disks,
                cdroms,
                boot,
                kernel,
                initrd,
                cmdline,
                cpu_mode,
                networks,
                description,
                start,
            } = *args;
            let mut disks = disks
                .iter()
                .enumerate()
                .map(|(i, d)| parse_disk(d, i))
                .collect::<Res<Vec<_>>>()?;
            for (i, cd) in cdroms.iter().enumerate() {
                disks.push(parse_cdrom(cd, i)?);
            }
            let boot = BootSpec {
                order: boot
                    .iter()
                    .map(|b| match b.as_str() {
                        "disk" | "hd" => Ok(BootDevice::Disk),
                        "cdrom" | "cd" => Ok(BootDevice::Cdrom),
                        "network" | "net" | "pxe" => Ok(BootDevice::Network),
                        other => Err(usage(format!(
                            "--boot `{other}`: use disk, cdrom or network"
                        ))),
                    })
                    .collect::<Res<Vec<_>>>()?,
                kernel,
                initrd,
                cmdline,
            };
            let cpu_mode = cpu_mode
                .map(|m| match m.replace('-', "_").as_str() {
                    "host_model" => Ok(CpuMode::HostModel),
                    "host_passthrough" => Ok(CpuMode::HostPassthrough),
                    "maximum" | "max" => Ok(CpuMode::Maximum),
                    "hypervisor_default" => Ok(CpuMode::HypervisorDefault),
                    other => Err(usage(format!(
                        "--cpu-mode `{other}`: use host-model, host-passthrough, maximum or hypervisor-default"
                    ))),
                })
                .transpose()?;
            let nics = networks
                .into_iter()
                .map(|n| NicSpec {
                    network: Some(n),
                    bridge: None,
                    mac: None,
                    model: NicModel::Virtio,
                })
                .collect();
            let spec = VmSpec {
                name,
                uuid: None,
                description: description.unwrap_or_default(),
                memory_kib: memory * 1024,
                max_memory_kib: None,
                vcpus,
                max_vcpus: None,
                arch: None,
                disks,
                nics,
                autostart: false,
                boot,
                cpu_mode,
            };
            let hh = c.host(&host);
            let task = hh.define_vm_async(spec).await?;
            let bar = Progress::new("vm.define");
            let t = task.wait(|t| bar.update(t)).await?;
            bar.done();
            task_outcome(&t)?;
            let mut vm = match t.result {
                Some(hostbus_client::protocol::types::Record::Vm(vm)) => vm,
                other => {
                    return Err(Failure {
                        code: 1,
                        message: format!("unexpected task result {other:?}"),
                    })
                }
            };
            if start {
                vm = hh.vm(vm.uuid).start().await?;
            }
            ctx.vm(&vm)?;
        }
        VmCmd::Delete { vm, remove_storage } => {
            let (h, v) = split(&vm, "VM")?;
            c.host(&h).vm_key(&v).undefine(remove_storage).await?;
            ctx.show(&serde_json::json!({"deleted": v}), |_| {
                outln!("vm {v} deleted")
            })?;
        }
        VmCmd::SetMemory { vm, mib } => {
            let (h, v) = split(&vm, "VM")?;
            let r = c.host(&h).vm_key(&v).set_memory(mib * 1024).await?;
            ctx.show(&r, |r| outln!("{} has {} MiB", r.name, r.memory_kib / 1024))?;
        }
        VmCmd::SetVcpus { vm, vcpus } => {
            let (h, v) = split(&vm, "VM")?;
            let r = c.host(&h).vm_key(&v).set_vcpus(vcpus).await?;
            ctx.show(&r, |r| outln!("{} has {} vCPUs", r.name, r.vcpus))?;
        }
        VmCmd::Stats { vm } => {
            let (h, v) = split(&vm, "VM")?;
            let s = c.host(&h).vm_key(&v).stats().await?;
            ctx.show(&s, |s| {
                outln!(
                    "state: {}  cpu_time: {} ms  memory: {} MiB",
                    s.power_state,
                    s.cpu_time_ns / 1_000_000,
                    s.memory_kib / 1024
                );
                for b in &s.block {
                    outln!(
                        "disk {}: read {} B, written {} B",
                        b.target,
                        b.read_bytes,
                        b.write_bytes
                    );
                }
                for n in &s.net {
                    outln!("nic {}: rx {} B, tx {} B", n.mac, n.rx_bytes, n.tx_bytes);
                }
            })?;
        }
    }
    Ok(0)
}
