//! `hostbus-bench`: measures hostbus against the physical limit of its
//! broker, side by side in one run, and writes the figures into
//! `docs/performance.md`.
//!
//! ```sh
//! cargo run --release -p hostbus-tests --bin hostbus-bench            # calls: print and write docs/performance.md
//! cargo run --release -p hostbus-tests --bin hostbus-bench -- fleet    # 1,000 simulated hosts
//! cargo run --release -p hostbus-tests --bin hostbus-bench -- cluster  # three nodes and quorum queues against one node and classic queues
//! cargo run --release -p hostbus-tests --bin hostbus-bench -- migration  # real QEMU guests on three libvirt hosts (after scripts/qemu-setup)
//! cargo run --release -p hostbus-tests --bin hostbus-bench -- all --no-write --secs 2
//! ```
//!
//! Each section writes its own part of `docs/performance.md` (between
//! `<!-- <section>:begin -->` and `<!-- <section>:end -->`). The calls
//! section starts a private RabbitMQ node and a release-built agent on
//! libvirt's test driver, then measures:
//! * call round trips (`host.ping`, `vm.list`) through the SDK, over the
//!   broker and over the agent's Unix socket (the HTTP binding), at
//!   concurrency 1, 16 and 64, next to a raw-lapin baseline: the same broker,
//!   a minimal responder that answers on direct reply-to, no hostbus code;
//! * events from one agent to 1 and to 10 subscribers, with end-to-end latency;
//! * the agent's footprint: RSS idle and under load, time to first heartbeat.

pub(crate) const WEB01: &str = "11111111-0000-4000-8000-000000000001";

mod calls;
mod cluster;
mod fleet;
mod measure;
mod migration;
mod raw;
mod report;

/// Which parts to run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Calls,
    Fleet,
    Cluster,
    Migration,
    All,
}

struct Args {
    section: Section,
    /// Simulated hosts of the fleet section.
    hosts: u32,
    /// Queue type of the fleet section's agents.
    queue_type: String,
    /// Seconds per measured slice.
    secs: u64,
    /// Slices per path, interleaved across the paths of one table.
    rounds: usize,
    write: bool,
    breakdown: bool,
    /// Only the breakdown (for profiling sessions; writes nothing).
    breakdown_only: bool,
    /// Only host.ping at this concurrency, for attaching a profiler.
    profile: Option<usize>,
}

fn args() -> Args {
    let mut a = Args {
        section: Section::Calls,
        hosts: 1000,
        queue_type: "quorum".into(),
        secs: 2,
        rounds: 3,
        write: true,
        breakdown: true,
        breakdown_only: false,
        profile: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--secs" => a.secs = it.next().and_then(|v| v.parse().ok()).unwrap_or(2),
            "--rounds" => a.rounds = it.next().and_then(|v| v.parse().ok()).unwrap_or(3).max(1),
            "--no-write" => a.write = false,
            "calls" => a.section = Section::Calls,
            "fleet" => a.section = Section::Fleet,
            "cluster" => a.section = Section::Cluster,
            "migration" => a.section = Section::Migration,
            "all" => a.section = Section::All,
            "--hosts" => a.hosts = it.next().and_then(|v| v.parse().ok()).unwrap_or(1000),
            "--queue-type" => a.queue_type = it.next().unwrap_or_else(|| "quorum".into()),
            "--no-breakdown" => a.breakdown = false,
            "--profile" => {
                a.profile = it.next().and_then(|v| v.parse().ok());
                a.write = false;
            }
            "--breakdown-only" => {
                a.breakdown_only = true;
                a.write = false;
            }
            other => eprintln!("hostbus-bench: ignoring {other}"),
        }
    }
    a
}

fn main() {
    let a = args();
    // An agent binary named in the environment (another build, to compare
    // with) is measured as it is; else the release build of this tree.
    let agent = match std::env::var_os(hostbus_tests::AGENT_BIN_ENV) {
        Some(bin) => {
            eprintln!(
                "hostbus-bench: measuring the agent {}",
                bin.to_string_lossy()
            );
            std::path::PathBuf::from(bin)
        }
        None => {
            eprintln!("hostbus-bench: building the release agent");
            report::release_build("hostbus-agent", "hostbus-agent")
        }
    };
    // The harness runs the binary this variable names; set before any other thread exists.
    std::env::set_var(hostbus_tests::AGENT_BIN_ENV, agent);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let section = a.section;
    if matches!(section, Section::Calls | Section::All) {
        runtime.block_on(calls::bench(&a));
    }
    if matches!(section, Section::Fleet | Section::All) {
        runtime.block_on(fleet::bench(&a));
    }
    if matches!(section, Section::Cluster | Section::All) {
        runtime.block_on(cluster::bench(&a));
    }
    // Needs real hypervisors (scripts/qemu-setup): never part of `all`.
    if section == Section::Migration {
        runtime.block_on(migration::bench(&a));
    }
}
