//! The hostbus integration-test harness. Cross-crate tests live in `tests/`
//! beside this file.
//!
//! * [`RabbitNode`]: a private RabbitMQ node from the OS package, on free
//!   ports with its own data directory; stop, restart (durable state
//!   survives) and `rabbitmqctl`. With `HOSTBUS_TEST_AMQP_URL` set, an
//!   existing broker is used instead; tests that stop or restart the broker
//!   or run `rabbitmqctl` start with [`RabbitNode::start_private`] and then
//!   fail at once with a clear error rather than being skipped.
//!   [`RabbitNode::start_with_tls`] adds a TLS listener ([`TlsListener`]).
//! * [`AgentProcess`]: the `hostbus-agent` binary (built once per test
//!   process) run as a real process, with its log captured to a file,
//!   signals, exit status and restart on the same journal.
//! * [`AmqpPeer`] and [`Subscription`]: a third party's view of the bus on
//!   plain lapin: raw commands with chosen properties, replies through
//!   direct reply-to, events and heartbeats on exclusive queues;
//!   [`to_lapin`]/[`from_lapin`] map the protocol's `AmqpProperties`.
//! * Helpers every suite shares instead of rewriting them: typed calls over
//!   a peer ([`call_as`], [`call_in`], [`ok`], [`error_of`]), agents
//!   started and waited for ([`spawn_online`], [`next_online`]), specs and
//!   by-name requests ([`small_vm`], [`new_disk`], [`named`], ...: the
//!   test kit's, re-exported; the bridge's and protocol's tests take
//!   `hostbus-testkit` itself), queue and exchange declarations ([`declare_queue`],
//!   [`declare_topic`], [`consume_no_ack`]), one `hostctl` runner
//!   ([`Hostctl`], which can say which of [`hostctl_verbs`] a suite did not
//!   run), the hostctl tour of one host that the broker and socket suites
//!   share ([`tour`]), the SDK calls of the suites ([`sdk`]) and the steps
//!   the fault suites share ([`faults`]).
//! * [`HttpPeer`]: the agent's HTTP binding on its Unix socket, raw
//!   (status, headers, body, server-sent events); [`Pki`]: test certificates.
//! * [`NotABroker`]: a local server that accepts TCP connections and is
//!   not a broker (silent, answering garbage, closing at once), for what a
//!   failed connection attempt must leave behind: nothing.
//! * [`QemuHost`]: the real hypervisor of the QEMU suites (libvirtd and a
//!   tiny guest from `scripts/qemu-setup`), its gate and its libvirtd;
//!   [`qemu_bench`]: what those suites share (a bench of hypervisor,
//!   broker, agent and SDK client, the host's events, the guest's console,
//!   the turns they take).
//! * [`libvirt_hosts`]: N independent libvirt hosts on this one machine
//!   (`scripts/libvirt-hosts`: a libvirtd each, in a mount namespace of
//!   its own), between which real guests migrate.
//!
//! Process management blocks. Called from a multi-threaded tokio runtime
//! (`#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`), the
//! blocking methods use `block_in_place`, so the test's AMQP connections
//! keep running meanwhile.
//!
//! ```no_run
//! use std::time::Duration;
//! use hostbus_protocol::{names, Envelope};
//! use hostbus_tests::{AgentProcess, AmqpPeer, RabbitNode};
//!
//! # async fn example() -> hostbus_tests::Result<()> {
//! let node = RabbitNode::start()?;
//! let mut peer = AmqpPeer::connect(&node.amqp_url()).await?;
//! let mut events = peer.subscribe(names::EVENT_EXCHANGE, "h1.#").await?;
//! let agent = AgentProcess::builder("h1", &node.amqp_url()).label("rack1").spawn()?;
//! let online = events.next(Duration::from_secs(30)).await?;
//! let props = Envelope::new("host.get").to_properties(hostbus_protocol::now_ms());
//! let reply = peer
//!     .call(&names::host_key("h1"), &props, b"\x80", Duration::from_secs(10))
//!     .await?;
//! # drop((agent, online, reply));
//! # Ok(())
//! # }
//! ```

mod agent;
mod amqp;
mod calls;
pub mod compose;
mod error;
pub mod faults;
mod hostctl;
mod http;
pub mod libvirt_hosts;
mod not_a_broker;
mod online;
mod pki;
mod process;
mod qemu;
pub mod qemu_bench;
pub mod qemu_cluster;
mod rabbit;
mod raw;
pub mod sdk;
pub mod tour;

pub use agent::{
    agent_binary, cargo, commands_total, metric, node_file_uri, workspace_dir, AgentBuilder,
    AgentProcess, AGENT_BIN_ENV,
};
pub use amqp::{
    consume_no_ack, declare_queue, declare_topic, from_lapin, to_lapin, watch_online, AmqpPeer,
    QueueKind, Received, Subscription,
};
pub use calls::{
    call_as, call_in, command_props, error_of, event_of, expect_ok, ok, reply_error, CALL_TIMEOUT,
    REPLY_LIMIT,
};
pub use error::{ErrorKind, HarnessError, Result};
pub use hostbus_testkit::{
    named, nat_network, new_disk, new_disk_in, pool_name, small_vm, snapshot_ref, virtio_nic,
    volume_disk, volume_key,
};
pub use hostctl::{hostctl_binary, hostctl_verbs, CtlOutput, Hostctl};
pub use http::{HttpPeer, HttpReply, SseMessage, SseStream};
pub use not_a_broker::{Behaviour, NotABroker};
pub use online::{next_online, spawn_online, ONLINE_TIMEOUT};
pub use pki::{Pki, TlsHttpAgent};
pub use process::{
    free_port, group_alive, group_members, rss_kib, run_logged, signal_group, stat_fields,
    thread_names, Signal, TempDir,
};
pub use qemu::{
    type_on_serial, wait_for_text, QemuHost, QEMU_HOME_ENV, QEMU_INITRD_ENV, QEMU_KERNEL_ENV,
    QEMU_PREFIX, QEMU_REQUIRED_ENV, QEMU_URI_ENV,
};
pub use rabbit::{
    RabbitNode, RabbitVersion, TlsListener, EXTERNAL_URL_ENV, RABBITMQ_BIN_DIR_ENV, START_TIMEOUT,
};
pub use raw::{
    long_str, nested_table, short_str, table, RawOutcome, RawProperties, RawProperty, RawPublisher,
};
