//! The command line: every subcommand, flag and argument as clap types.
//! Arguments are parsed into typed values here (`HOST/VM` into [`At`],
//! states and modes into enums), so the commands never split or match
//! strings themselves; a malformed argument is a usage error (exit 2).
//! Where a flag's help already names its values, clap's list is hidden.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use hostbus_client::protocol::types::{
    BootDevice, CpuMode, DiskFormat, DiskSource, ForwardMode, PowerState,
};
use hostbus_client::StartAt;

use crate::args::{At, DiskArg, Network, Pool, Vm, VolumeAt};

const EXIT_CODES: &str = "EXIT CODES:
  0  success
  1  other error (internal, unexpected reply)
  2  usage error (bad flags or arguments), or a broker-only command
     (admin ..., host forget) with --socket
  3  not found (host, VM, pool, volume, network, snapshot, task)
  4  refused: invalid argument, bad state, already exists, unsupported
  5  unreachable: broker or agent socket connection failed, timeout,
     host unavailable, busy
  6  permission denied
  7  partial: a broadcast where some expected hosts did not answer, or an
     evacuation that left VMs on their host (none had room, or a
     migration failed)
  130  interrupted (SIGINT, Ctrl-C), as `events --follow` ends
  143  terminated (SIGTERM)
  Whatever the code, hostctl closes its broker connections before it exits;
  a command already sent when it is interrupted may still run.

ENVIRONMENT:
  HOSTBUS_URL         broker URL(s), comma-separated (like --url)
  HOSTBUS_SOCKET      a local agent's socket (like --socket; wins over HOSTBUS_URL)
  HOSTBUS_TIMEOUT_MS  call deadline (like --timeout-ms)
  HOSTBUS_OUTPUT      table or json (like --output)
  HOSTBUS_CA_FILE     CA certificate for amqps:// (like --ca-file)
  HOSTBUS_CERT_FILE   client certificate (like --cert-file)
  HOSTBUS_KEY_FILE    client key (like --key-file)
  HOSTCTL_CONFIG      config file (like --config; must exist, /dev/null for none;
                      default ~/.config/hostbus/hostctl.toml, if it exists)

EXAMPLES:
  hostctl hosts
  hostctl vm list --all
  hostctl vm start h1/web01
  hostctl vm create h1 --name app01 --memory 1024 --vcpus 2 --disk default:10 --network default
  hostctl vm template h1/base01
  hostctl vm create h1 --from-template base01 --name app02 --linked --start
  hostctl vm migrate h1/web01 --to h2
  hostctl host evacuate h1 --label rack-a --parallel 3
  hostctl host enable h1
  hostctl events '*.vm.*' --follow
  hostctl events 'h1.#' --from -1h
  hostctl host forget h9
  hostctl --output json vm get h1/web01 | jq .power_state
  hostctl --socket /run/hostbus/agent.sock vm list   (no broker; its host)
  HOSTBUS_SOCKET=/run/hostbus/agent.sock hostctl vm start h1/web01";

#[derive(Parser)]
#[command(
    name = "hostctl",
    version,
    about = "Drive hostbus hosts through the broker, or one host through its agent's socket.",
    after_help = EXIT_CODES
)]
pub(crate) struct Cli {
    /// Broker URL; repeat for a cluster.
    #[arg(long = "url", global = true)]
    pub(crate) urls: Vec<String>,
    /// A local agent's HTTP socket (/run/hostbus/agent.sock): drive the
    /// one host its agent serves, without a broker.
    ///
    /// No --url is needed; a --url flag overrides HOSTBUS_SOCKET and the
    /// config file's `socket`. Every command works through it, naming that
    /// host, except `admin ...` and `host forget`, which administer the
    /// broker (exit 2); `events` starts at the next event only.
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "urls")]
    pub(crate) socket: Option<PathBuf>,
    /// Call deadline in milliseconds.
    #[arg(long, global = true)]
    pub(crate) timeout_ms: Option<u64>,
    /// Output format.
    #[arg(long, short, global = true, value_enum)]
    pub(crate) output: Option<Output>,
    /// Config file (TOML with `urls`, `socket`, `timeout_ms`, `output`,
    /// `ca_file`, `cert_file`, `key_file`); one named here must exist.
    #[arg(long, global = true)]
    pub(crate) config: Option<PathBuf>,
    /// CA certificate (PEM) for amqps:// brokers.
    #[arg(long, global = true)]
    pub(crate) ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for brokers that verify clients.
    #[arg(long, global = true)]
    pub(crate) cert_file: Option<PathBuf>,
    /// Client key (PEM, PKCS#8).
    #[arg(long, global = true)]
    pub(crate) key_file: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    // Broker-only commands are listed in `Cmd::broker_only`.
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
    Events(EventsArgs),
    /// Broker administration.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Prints the protocol's JSON Schema.
    Schema,
    /// Prints a shell completion script.
    Completions { shell: clap_complete::Shell },
}

impl Cmd {
    /// The verb of a command that administers the broker, and so cannot
    /// run through an agent's socket.
    pub(crate) fn broker_only(&self) -> Option<&'static str> {
        match self {
            Cmd::Admin(AdminCmd::Setup { .. }) => Some("admin setup"),
            Cmd::Host(HostCmd::Forget { .. }) => Some("host forget"),
            _ => None,
        }
    }
}

/// `hostctl events`' arguments.
#[derive(clap::Args)]
pub(crate) struct EventsArgs {
    pub(crate) patterns: Vec<String>,
    /// Where to start: `next` (default), `first` (the oldest the broker
    /// keeps), a stream offset (a printed `offset` plus one), or a time
    /// (`-10m`, `-2h`: that long ago).
    #[arg(
        long,
        default_value = "next",
        value_parser = crate::args::start_at,
        allow_hyphen_values = true
    )]
    pub(crate) from: StartAt,
    /// Keep printing until interrupted.
    #[arg(long)]
    pub(crate) follow: bool,
    /// Stop after this many events.
    #[arg(long)]
    pub(crate) count: Option<usize>,
    /// Without --follow: stop after this long, ms.
    #[arg(long, default_value_t = 3000)]
    pub(crate) duration_ms: u64,
}

#[derive(Subcommand)]
pub(crate) enum AdminCmd {
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
pub(crate) enum AdminQueueType {
    Quorum,
    Classic,
}

#[derive(Subcommand)]
pub(crate) enum HostCmd {
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
    /// Takes no new VMs: migrations to the host are refused and placement
    /// skips it; what it runs keeps running.
    Disable {
        host: String,
        /// Why (shown by `hosts` and in refusals).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Takes new VMs again (after `host disable` or `host evacuate`).
    Enable { host: String },
    /// Disables the host and live-migrates its running and paused VMs away,
    /// largest first, each to the target with the most free memory; the
    /// host stays disabled (`host enable` after the maintenance). Exits 7
    /// when a VM stayed.
    #[command(group(clap::ArgGroup::new("targets").required(true).args(["to", "label"])))]
    Evacuate {
        host: String,
        /// Destination hosts, comma-separated.
        #[arg(long, value_name = "HOSTS", value_delimiter = ',')]
        to: Vec<String>,
        /// Every host with this label is a destination.
        #[arg(long)]
        label: Option<String>,
        /// Migrations at once.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
        parallel: u16,
        #[command(flatten)]
        how: MoveFlags,
    },
}

/// How `vm migrate` and `host evacuate` move a VM.
#[derive(clap::Args)]
pub(crate) struct MoveFlags {
    /// Copy the disks to the destination (default: the storage is shared).
    #[arg(long)]
    pub(crate) copy_storage: bool,
    /// Bandwidth limit, MiB/s.
    #[arg(long = "bandwidth", value_name = "MIB_S", value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub(crate) bandwidth_mib_s: Option<u64>,
    /// Longest pause of the guest at the switch-over, ms.
    #[arg(long = "max-downtime", value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub(crate) max_downtime_ms: Option<u64>,
}

#[derive(Subcommand)]
pub(crate) enum VmCmd {
    /// Lists VMs of one host, a label group or all hosts (through
    /// --socket, the socket's host unless said otherwise).
    List {
        #[arg(long, conflicts_with_all = ["all", "label"])]
        host: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        label: Option<String>,
        /// Only VMs in this state (halted, running, paused, suspended).
        #[arg(long, value_parser = crate::args::power_state)]
        state: Option<PowerState>,
    },
    /// One VM (HOST/VM, VM by name or uuid).
    Get { vm: At<Vm> },
    /// Starts a VM.
    Start {
        vm: At<Vm>,
        #[arg(long)]
        paused: bool,
    },
    /// Asks a VM to shut down cleanly.
    Shutdown {
        vm: At<Vm>,
        /// Seconds to wait.
        #[arg(long, default_value_t = 120)]
        timeout: u32,
        /// Force off after the timeout.
        #[arg(long)]
        force: bool,
    },
    #[command(flatten)]
    Lifecycle(Lifecycle),
    /// Defines a VM on HOST.
    Create(Box<VmCreate>),
    /// Removes a halted VM.
    Delete {
        vm: At<Vm>,
        /// Also delete its volumes.
        #[arg(long)]
        remove_storage: bool,
    },
    /// Sets memory, MiB.
    SetMemory {
        vm: At<Vm>,
        #[arg(value_name = "MIB", value_parser = crate::args::mib_in_kib)]
        memory_kib: u64,
    },
    /// Sets vCPUs.
    SetVcpus { vm: At<Vm>, vcpus: u32 },
    /// CPU, memory, disk and network counters.
    Stats { vm: At<Vm> },
    /// Where the VM's serial console is, and how to reach it on its host.
    Console { vm: At<Vm> },
    /// Attaches a disk as guest TARGET (e.g. vdb): `POOL:GiB` for a new
    /// volume, `POOL/VOLUME`, or an absolute path, as `vm create --disk`.
    AttachDisk {
        vm: At<Vm>,
        #[arg(value_parser = crate::args::disk)]
        disk: DiskArg,
        /// Guest device name, e.g. vdb.
        #[arg(long)]
        target: String,
    },
    /// Detaches the disk at guest TARGET (e.g. vdb).
    DetachDisk { vm: At<Vm>, target: String },
    /// Attaches a virtio NIC on NETWORK.
    AttachNic {
        vm: At<Vm>,
        network: String,
        /// MAC address (default: generated).
        #[arg(long)]
        mac: Option<String>,
    },
    /// Detaches the NIC with MAC.
    DetachNic { vm: At<Vm>, mac: String },
    /// Makes NEW from the halted HOST/VM (new uuid and MACs): its disks
    /// copied, or with --linked qcow2 overlays on them; waits for the task
    /// with a progress bar.
    Clone {
        vm: At<Vm>,
        #[arg(value_name = "NEW")]
        name: String,
        /// Overlay each disk on its source volume instead of copying it
        /// (in the source's pool; the source must then stay).
        #[arg(long, conflicts_with = "pool")]
        linked: bool,
        /// The pool full copies go in (default: each disk's own).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Moves HOST/VM to host --to: live, with the guest running (or
    /// paused), or with --offline a halted VM's definition; waits for the
    /// task with a progress bar unless --async.
    Migrate {
        vm: At<Vm>,
        #[arg(long, value_name = "HOST")]
        to: String,
        /// Move a halted VM's definition only.
        #[arg(long, conflicts_with = "copy_storage")]
        offline: bool,
        #[command(flatten)]
        how: MoveFlags,
        /// Print the task and return at once (`hostctl task wait HOST ID`
        /// waits for it, `hostctl task cancel HOST ID` stops the move).
        #[arg(long = "async")]
        detach: bool,
    },
    /// Marks a halted VM as a template (cloned, never started); --off
    /// makes it an ordinary VM again.
    Template {
        vm: At<Vm>,
        #[arg(long)]
        off: bool,
    },
}

/// The one-word lifecycle operations: `hostctl vm <op> HOST/VM`, each
/// answered with the VM's new power state.
#[derive(Subcommand)]
pub(crate) enum Lifecycle {
    /// Stops a VM at once.
    Destroy { vm: At<Vm> },
    /// Pauses a VM.
    Pause { vm: At<Vm> },
    /// Resumes a paused or suspended VM.
    Resume { vm: At<Vm> },
    /// Suspends a VM to disk.
    Suspend { vm: At<Vm> },
    /// Reboots a VM.
    Reboot { vm: At<Vm> },
    /// Resets a VM.
    Reset { vm: At<Vm> },
}

/// `hostctl vm create`'s arguments (boxed: they are many).
#[derive(clap::Args)]
pub(crate) struct VmCreate {
    pub(crate) host: String,
    #[arg(long)]
    pub(crate) name: String,
    /// Clone this template (a VM of HOST, by name or uuid) instead of
    /// defining from flags; --memory, --vcpus and --start then apply to
    /// the clone, and --linked overlays its disks.
    #[arg(long, value_name = "TEMPLATE", conflicts_with_all = ["disks", "cdroms", "boot", "kernel", "cpu_mode", "networks", "description"])]
    pub(crate) from_template: Option<String>,
    /// With --from-template: overlay the template's disks instead of copying them.
    #[arg(long, requires = "from_template")]
    pub(crate) linked: bool,
    /// Memory, MiB (required without --from-template).
    #[arg(long = "memory", value_name = "MIB", value_parser = crate::args::mib_in_kib, required_unless_present = "from_template")]
    pub(crate) memory_kib: Option<u64>,
    /// vCPUs (default 1, or the template's).
    #[arg(long)]
    pub(crate) vcpus: Option<u32>,
    /// `POOL:GiB` for a new volume, `POOL/VOLUME` for an existing one, or an absolute path;
    /// `@raw` or `@qcow2` after it states the format (an existing volume's own is the
    /// default; a path outside every pool needs it). Repeat.
    #[arg(long = "disk", value_parser = crate::args::disk)]
    pub(crate) disks: Vec<DiskArg>,
    /// An ISO image as a CD-ROM drive: `POOL/VOLUME` or an absolute path. Repeat.
    #[arg(long = "cdrom", value_parser = crate::args::cdrom)]
    pub(crate) cdroms: Vec<DiskSource>,
    /// Boot order, comma-separated: disk, cdrom, network (default: disk).
    #[arg(long, value_delimiter = ',', value_enum, hide_possible_values = true)]
    pub(crate) boot: Vec<Boot>,
    /// Boot this kernel (a path on the host) directly.
    #[arg(long)]
    pub(crate) kernel: Option<String>,
    /// The initrd for --kernel.
    #[arg(long, requires = "kernel")]
    pub(crate) initrd: Option<String>,
    /// The kernel command line for --kernel.
    #[arg(long, requires = "kernel")]
    pub(crate) cmdline: Option<String>,
    /// host-model, host-passthrough, maximum or hypervisor-default
    /// (default: the host's choice, host-model on KVM, maximum under TCG).
    #[arg(long, value_enum, hide_possible_values = true)]
    pub(crate) cpu_mode: Option<Cpu>,
    /// Network name. Repeat.
    #[arg(long = "network")]
    pub(crate) networks: Vec<String>,
    #[arg(long)]
    pub(crate) description: Option<String>,
    /// Start it once defined.
    #[arg(long)]
    pub(crate) start: bool,
}

/// A boot device of `--boot`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Boot {
    #[value(alias = "hd")]
    Disk,
    #[value(alias = "cd")]
    Cdrom,
    #[value(aliases = ["net", "pxe"])]
    Network,
}

impl From<Boot> for BootDevice {
    fn from(b: Boot) -> Self {
        match b {
            Boot::Disk => BootDevice::Disk,
            Boot::Cdrom => BootDevice::Cdrom,
            Boot::Network => BootDevice::Network,
        }
    }
}

/// `--cpu-mode`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Cpu {
    #[value(alias = "host_model")]
    HostModel,
    #[value(alias = "host_passthrough")]
    HostPassthrough,
    #[value(alias = "max")]
    Maximum,
    #[value(alias = "hypervisor_default")]
    HypervisorDefault,
}

impl From<Cpu> for CpuMode {
    fn from(c: Cpu) -> Self {
        match c {
            Cpu::HostModel => CpuMode::HostModel,
            Cpu::HostPassthrough => CpuMode::HostPassthrough,
            Cpu::Maximum => CpuMode::Maximum,
            Cpu::HypervisorDefault => CpuMode::HypervisorDefault,
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum SnapshotCmd {
    /// Snapshots of a VM.
    List { vm: At<Vm> },
    /// Takes a snapshot.
    Create {
        vm: At<Vm>,
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Reverts to a snapshot.
    Revert { vm: At<Vm>, name: String },
    /// Deletes a snapshot.
    Delete { vm: At<Vm>, name: String },
}

#[derive(Subcommand)]
pub(crate) enum PoolCmd {
    /// Pools of a host.
    List { host: String },
    /// One pool (HOST/POOL).
    Get { pool: At<Pool> },
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
    Start { pool: At<Pool> },
    /// Stops a pool.
    Stop { pool: At<Pool> },
    /// Rescans a pool.
    Refresh { pool: At<Pool> },
    /// Removes a stopped pool's definition.
    Delete { pool: At<Pool> },
}

#[derive(Subcommand)]
pub(crate) enum VolumeCmd {
    /// Volumes of a pool (HOST/POOL).
    List { pool: At<Pool> },
    /// Creates a volume in HOST/POOL.
    Create {
        pool: At<Pool>,
        name: String,
        /// Size, GiB.
        #[arg(long = "size", value_name = "GIB", value_parser = crate::args::gib_in_bytes)]
        size_bytes: u64,
        #[arg(long, value_enum, default_value = "qcow2", hide_possible_values = true)]
        format: VolumeFormat,
    },
    /// Deletes HOST/POOL/VOLUME.
    Delete { volume: VolumeAt },
    /// One volume (HOST/POOL/VOLUME).
    Get { volume: VolumeAt },
    /// Grows HOST/POOL/VOLUME to a size in GiB.
    Resize {
        volume: VolumeAt,
        #[arg(long = "size", value_name = "GIB", value_parser = crate::args::gib_in_bytes)]
        size_bytes: u64,
    },
    /// Copies HOST/POOL/VOLUME to NEW in the same pool.
    Clone { volume: VolumeAt, new_name: String },
}

/// A new volume's `--format`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum VolumeFormat {
    Qcow2,
    Raw,
}

impl From<VolumeFormat> for DiskFormat {
    fn from(f: VolumeFormat) -> Self {
        match f {
            VolumeFormat::Qcow2 => DiskFormat::Qcow2,
            VolumeFormat::Raw => DiskFormat::Raw,
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum NetworkCmd {
    /// Networks of a host.
    List { host: String },
    /// One network (HOST/NET).
    Get { network: At<Network> },
    /// Defines a network on HOST.
    Create {
        host: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        bridge: Option<String>,
        /// isolated, nat, route, bridge, open.
        #[arg(long, value_enum, default_value = "nat", hide_possible_values = true)]
        forward: Forward,
        /// Host address with prefix, e.g. 192.168.150.1/24.
        #[arg(long, value_parser = crate::args::cidr)]
        ip: Option<(String, u8)>,
        /// DHCP range, e.g. 192.168.150.10-192.168.150.99.
        #[arg(long, value_parser = crate::args::range)]
        dhcp: Option<(String, String)>,
        #[arg(long)]
        autostart: bool,
    },
    /// Starts a network.
    Start { network: At<Network> },
    /// Stops a network.
    Stop { network: At<Network> },
    /// Removes a stopped network's definition.
    Delete { network: At<Network> },
}

/// A network's `--forward` mode.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Forward {
    Isolated,
    Nat,
    Route,
    Bridge,
    Open,
}

impl From<Forward> for ForwardMode {
    fn from(f: Forward) -> Self {
        match f {
            Forward::Isolated => ForwardMode::Isolated,
            Forward::Nat => ForwardMode::Nat,
            Forward::Route => ForwardMode::Route,
            Forward::Bridge => ForwardMode::Bridge,
            Forward::Open => ForwardMode::Open,
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum TaskCmd {
    /// Tasks of a host.
    List { host: String },
    /// One task.
    Get { host: String, id: uuid::Uuid },
    /// Waits for a task, with a progress bar.
    Wait { host: String, id: uuid::Uuid },
    /// Cancels a task.
    Cancel { host: String, id: uuid::Uuid },
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }

    /// A command line as a shell splits it (shlex), without what is not
    /// hostctl's: environment assignments in front, a pipe or a second
    /// command after, a trailing `(comment)`.
    fn words(line: &str) -> Vec<String> {
        let line = line.split(['|', ';']).next().unwrap_or_default();
        let line = line.split("  (").next().unwrap_or_default();
        let words = shlex::split(line).unwrap_or_else(|| panic!("unbalanced quotes: {line}"));
        words
            .into_iter()
            .skip_while(|w| w.contains('=') && !w.starts_with('-'))
            .collect()
    }

    /// Every hostctl command line the help's EXAMPLES, the README and the
    /// guides show parses (`--from -1h` did not: clap took `-1h` for a flag).
    #[test]
    fn every_documented_command_line_parses() {
        let help = super::EXIT_CODES
            .split("EXAMPLES:")
            .nth(1)
            .expect("examples");
        let docs = [
            include_str!("../../README.md"),
            include_str!("../../docs/operations.md"),
            include_str!("../../docs/security.md"),
        ];
        let mut lines: Vec<&str> = help.lines().filter(|l| l.starts_with("  ")).collect();
        for doc in docs {
            lines.extend(doc.lines().filter_map(|l| {
                let l = l.strip_prefix("$ ").unwrap_or(l);
                l.starts_with("hostctl ").then_some(l)
            }));
        }
        assert!(lines.len() > 20, "{lines:?}");
        for line in lines {
            let words = words(line);
            assert_eq!(words.first().map(String::as_str), Some("hostctl"), "{line}");
            if let Err(e) = super::Cli::try_parse_from(&words) {
                panic!("`{line}` does not parse: {e}");
            }
        }
    }

    #[test]
    fn events_start_at_a_time_ago() {
        let cli = super::Cli::try_parse_from(["hostctl", "events", "h1.#", "--from", "-10m"])
            .expect("parses");
        let super::Cmd::Events(args) = cli.cmd else {
            panic!("not events");
        };
        assert!(matches!(args.from, hostbus_client::StartAt::Time(_)));
    }

    #[test]
    fn an_evacuation_names_its_destinations_one_way() {
        let parse = |line: &str| super::Cli::try_parse_from(line.split(' '));
        let cli = parse("hostctl host evacuate h1 --to h2,h3 --parallel 3").expect("parses");
        let super::Cmd::Host(super::HostCmd::Evacuate { to, parallel, .. }) = cli.cmd else {
            panic!("not host evacuate");
        };
        assert_eq!(
            (to.as_slice(), parallel),
            (&["h2".into(), "h3".into()][..], 3)
        );
        for refused in [
            "hostctl host evacuate h1",
            "hostctl host evacuate h1 --to h2 --label rack-a",
            "hostctl host evacuate h1 --label rack-a --parallel 0",
            "hostctl vm migrate h1/web01 --to h2 --offline --copy-storage",
            "hostctl vm migrate h1/web01 --to h2 --max-downtime 0",
            "hostctl vm migrate h1/web01",
        ] {
            let e = parse(refused)
                .err()
                .unwrap_or_else(|| panic!("`{refused}` parses"));
            assert_eq!(e.exit_code(), 2, "{refused}");
        }
    }

    /// Every command of the catalogue names the hostctl verb that sends
    /// it; that verb exists (a command without one fails here).
    #[test]
    fn every_command_of_the_catalogue_has_its_verb() {
        let cli = super::Cli::command();
        for c in hostbus_client::protocol::COMMANDS {
            let mut at = &cli;
            for word in c.cli.split(' ') {
                at = at.find_subcommand(word).unwrap_or_else(|| {
                    panic!("{}: `hostctl {}` does not exist ({word})", c.name, c.cli)
                });
            }
        }
    }
}
