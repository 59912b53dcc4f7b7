//! A private RabbitMQ node, started from the operating system's package for
//! one test and thrown away after it.
//!
//! [`RabbitNode`] is the handle tests hold; `node.rs` starts, stops and
//! cleans up the node's processes; `url.rs` rewrites AMQP URLs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

mod node;
mod url;
mod version;

use node::PrivateNode;
use url::{percent_encode, replace_userinfo, url_port};
pub use version::RabbitVersion;

use crate::amqp::redact;
use crate::error::{ErrorKind, HarnessError, Result};
use crate::process::{blocking, unique_name};

/// Environment variable that makes [`RabbitNode::start`] use an existing
/// broker at this URL instead of starting a private node.
pub const EXTERNAL_URL_ENV: &str = "HOSTBUS_TEST_AMQP_URL";

/// Environment variable naming the folder of `rabbitmq-server` and
/// `rabbitmqctl` (default: `/usr/lib/rabbitmq/bin` when it exists, else `PATH`).
pub const RABBITMQ_BIN_DIR_ENV: &str = "HOSTBUS_RABBITMQ_BIN_DIR";

/// How long a node may take to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A TLS (AMQPS) listener for a private node, on 127.0.0.1 and a free port
/// of its own beside the plain AMQP listener (which stays, so the harness
/// still probes readiness and `rabbitmqctl` works as usual).
///
/// The files are PEM and must be readable by the node (it runs as the
/// current user). They go into `rabbitmq.conf` as
/// `ssl_options.cacertfile/certfile/keyfile`, with `ssl_options.verify =
/// verify_peer` (a client certificate, when one is presented, must be
/// signed by the CA) and `ssl_options.fail_if_no_peer_cert` as set here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    /// CA certificate(s) that sign the server's and clients' certificates.
    pub ca_file: PathBuf,
    /// The server's certificate.
    pub cert_file: PathBuf,
    /// The server's private key.
    pub key_file: PathBuf,
    /// Refuse clients that present no certificate.
    pub fail_if_no_peer_cert: bool,
}

impl TlsListener {
    /// The `rabbitmq.conf` lines of this listener on `port`.
    fn config(&self, port: u16) -> String {
        format!(
            "listeners.ssl.1 = 127.0.0.1:{port}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = {}\n",
            self.ca_file.display(),
            self.cert_file.display(),
            self.key_file.display(),
            self.fail_if_no_peer_cert
        )
    }
}

/// A RabbitMQ broker for tests: a private node started from the OS package,
/// or, when `HOSTBUS_TEST_AMQP_URL` is set, an existing broker at that URL.
///
/// Dropping a private node kills it (its whole process group) and removes
/// its directory, also when the test panics.
#[derive(Debug)]
pub struct RabbitNode {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Private(Box<PrivateNode>),
    External { url: String },
}

impl RabbitNode {
    /// Starts a private node on free ports with its own data directory and
    /// waits (up to [`START_TIMEOUT`]) until `guest` can open an AMQP
    /// connection. With `HOSTBUS_TEST_AMQP_URL` set, starts nothing and
    /// returns a handle on that broker.
    ///
    /// Blocks for several seconds; inside a multi-threaded tokio runtime it
    /// uses `block_in_place`, so it may be called directly from async tests.
    pub fn start() -> Result<Self> {
        if let Some(url) = std::env::var(EXTERNAL_URL_ENV)
            .ok()
            .filter(|u| !u.trim().is_empty())
        {
            return Ok(Self {
                inner: Inner::External {
                    url: url.trim().to_owned(),
                },
            });
        }
        blocking(|| PrivateNode::start_with(None, None)).map(|node| Self {
            inner: Inner::Private(Box::new(node)),
        })
    }

    /// Starts `n` private nodes joined into one RabbitMQ cluster (own node
    /// names, ports and data directories, a shared Erlang cookie; nodes 2..n
    /// join node 1 with `rabbitmqctl join_cluster`). An error at once when
    /// `HOSTBUS_TEST_AMQP_URL` is set. Takes some 10 s per node on two cores.
    pub fn start_cluster(n: usize) -> Result<Vec<Self>> {
        if let Some(url) = std::env::var(EXTERNAL_URL_ENV)
            .ok()
            .filter(|u| !u.trim().is_empty())
        {
            return Err(needs_private("a broker cluster", &url));
        }
        let cookie = unique_name("hostbus-cookie").replace('-', "");
        let mut nodes: Vec<Self> = Vec::with_capacity(n);
        for _ in 0..n {
            let node = blocking(|| PrivateNode::start_with(None, Some(&cookie)))?;
            nodes.push(Self {
                inner: Inner::Private(Box::new(node)),
            });
        }
        let first = nodes
            .first()
            .and_then(|f| f.node_name().map(str::to_owned))
            .ok_or_else(|| HarnessError::new(ErrorKind::Startup, "a cluster needs a node"))?;
        for node in nodes.iter().skip(1) {
            node.ctl(&["stop_app"])?;
            node.ctl(&["join_cluster", &first])?;
            node.start_app_after_join()?;
            node.ctl(&["await_startup"])?;
        }
        Ok(nodes)
    }

    /// `rabbitmqctl start_app` on a node that has just joined a cluster.
    /// RabbitMQ 4.0.5 refuses it now and then with
    /// `failed_to_deny_deprecated_features` (see
    /// [`PrivateNode::spawn_and_wait`]); it is then tried again, up to five
    /// times in all.
    fn start_app_after_join(&self) -> Result<()> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.ctl(&["start_app"]) {
                Ok(_) => return Ok(()),
                Err(e) if tries < 5 && e.to_string().contains(node::DENIAL_RACE) => {
                    eprintln!(
                        "hostbus-tests: `start_app` of {} refused with {} (a RabbitMQ 4.0 \
                         race); trying again",
                        self.node_name().unwrap_or("?"),
                        node::DENIAL_RACE
                    );
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Like [`start`](Self::start), but an error at once (before the test
    /// changes anything on the broker) when `HOSTBUS_TEST_AMQP_URL` is set:
    /// for tests that stop or restart the broker or run `rabbitmqctl`.
    pub fn start_private() -> Result<Self> {
        let node = Self::start()?;
        node.private("this test")?;
        Ok(node)
    }

    /// Starts a private node with a TLS listener beside the plain one (see
    /// [`TlsListener`]); [`tls_port`](Self::tls_port) says where. An error
    /// at once when `HOSTBUS_TEST_AMQP_URL` is set.
    pub fn start_with_tls(tls: TlsListener) -> Result<Self> {
        if let Some(url) = std::env::var(EXTERNAL_URL_ENV)
            .ok()
            .filter(|u| !u.trim().is_empty())
        {
            return Err(needs_private("a TLS listener", &url));
        }
        blocking(|| PrivateNode::start_with(Some(tls), None)).map(|node| Self {
            inner: Inner::Private(Box::new(node)),
        })
    }

    /// The TLS port of a node started with
    /// [`start_with_tls`](Self::start_with_tls).
    pub fn tls_port(&self) -> Option<u16> {
        match &self.inner {
            Inner::Private(n) => n.tls.as_ref().map(|(_, port)| *port),
            Inner::External { .. } => None,
        }
    }

    /// `amqps://<user>:<password>@<host>:<tls port>/%2f` for a node with a
    /// TLS listener; `host` must match the server certificate (`localhost`
    /// or `127.0.0.1`).
    pub fn amqps_url_for(&self, host: &str, user: &str, password: &str) -> Option<String> {
        self.tls_port().map(|port| {
            format!(
                "amqps://{}:{}@{host}:{port}/%2f",
                percent_encode(user),
                percent_encode(password)
            )
        })
    }

    /// Whether this handle is a private node (not `HOSTBUS_TEST_AMQP_URL`).
    pub fn is_private(&self) -> bool {
        matches!(self.inner, Inner::Private(_))
    }

    /// The URL of the default vhost with the `guest` user.
    pub fn amqp_url(&self) -> String {
        match &self.inner {
            Inner::Private(n) => n.url_for("guest", "guest"),
            Inner::External { url } => url.clone(),
        }
    }

    /// The URL of the default vhost with another user. For an external
    /// broker, the user and password of `HOSTBUS_TEST_AMQP_URL` are replaced.
    pub fn url_for(&self, user: &str, password: &str) -> String {
        match &self.inner {
            Inner::Private(n) => n.url_for(user, password),
            Inner::External { url } => replace_userinfo(url, user, password),
        }
    }

    /// The AMQP port.
    pub fn port(&self) -> u16 {
        match &self.inner {
            Inner::Private(n) => n.port,
            Inner::External { url } => url_port(url),
        }
    }

    /// The Erlang node name of a private node, e.g.
    /// `hostbus-test-4242-0@localhost`.
    pub fn node_name(&self) -> Option<&str> {
        match &self.inner {
            Inner::Private(n) => Some(&n.name),
            Inner::External { .. } => None,
        }
    }

    /// The RabbitMQ release of a private node (`None` for an external
    /// broker), for the assertions that differ between releases.
    pub fn version(&self) -> Option<RabbitVersion> {
        match &self.inner {
            Inner::Private(n) => Some(n.version),
            Inner::External { .. } => None,
        }
    }

    /// The data directory of a private node.
    pub fn data_dir(&self) -> Option<&Path> {
        match &self.inner {
            Inner::Private(n) => Some(n.dir.path()),
            Inner::External { .. } => None,
        }
    }

    /// The process group of a running private node (every process of the
    /// node belongs to it).
    pub fn process_group(&self) -> Option<u32> {
        match &self.inner {
            Inner::Private(n) => n.child.as_ref().map(Child::id),
            Inner::External { .. } => None,
        }
    }

    /// Whether the node is running (an external broker always counts as
    /// running).
    pub fn is_running(&mut self) -> bool {
        match &mut self.inner {
            Inner::Private(n) => n.is_running(),
            Inner::External { .. } => true,
        }
    }

    /// Runs `rabbitmqctl -n <node> <args>` and returns its standard output;
    /// a non-zero exit is an error with its output. Private nodes only.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let node = self.private("`rabbitmqctl`")?;
        blocking(|| node.ctl(args))
    }

    /// `rabbitmqctl -n <node>` as [`ctl`](Self::ctl) runs it, not run:
    /// its program, first arguments, working directory and environment
    /// (`Command::get_envs` lists what it sets and what it removes), for a
    /// test that hands `rabbitmqctl` to a program of its own (a control
    /// script in another language). Private nodes only.
    pub fn ctl_command(&self) -> Result<Command> {
        Ok(self.private("`rabbitmqctl`")?.ctl_command())
    }

    /// Adds a user with a password and full permissions on the default
    /// vhost (`rabbitmqctl add_user` and `set_permissions`). Private nodes
    /// only.
    pub fn add_user(&self, user: &str, password: &str) -> Result<()> {
        self.ctl(&["add_user", user, password])?;
        self.ctl(&["set_permissions", "-p", "/", user, ".*", ".*", ".*"])?;
        Ok(())
    }

    /// Stops the node cleanly (`rabbitmqctl stop`), waits for it to exit and
    /// kills what is left after a timeout. The data directory stays, so
    /// [`restart`](Self::restart) finds durable queues and persistent
    /// messages again. An error for an external broker.
    pub fn stop(&mut self) -> Result<()> {
        let node = self.private_mut("`stop`")?;
        blocking(|| node.stop())
    }

    /// Starts a stopped node again (stopping it first if it runs) on the
    /// same ports, name and data directory, and waits until it is ready.
    /// An error for an external broker.
    pub fn restart(&mut self) -> Result<()> {
        let node = self.private_mut("`restart`")?;
        blocking(|| {
            node.stop()?;
            node.spawn_and_wait()
        })
    }

    /// Starts a node stopped by [`stop`](Self::stop) again; does nothing if
    /// it runs. An error for an external broker.
    pub fn start_again(&mut self) -> Result<()> {
        let node = self.private_mut("`start_again`")?;
        blocking(|| {
            if node.is_running() {
                Ok(())
            } else {
                node.spawn_and_wait()
            }
        })
    }

    /// The node's own log file (`log/<node name>.log` in its data
    /// directory), where the broker says which connections it accepted
    /// and how each ended; `None` for an external broker.
    pub fn log_file(&self) -> Option<PathBuf> {
        match &self.inner {
            Inner::Private(n) => Some(n.log_file()),
            Inner::External { .. } => None,
        }
    }

    /// The last `lines` lines of the node's own log and of its console.
    pub fn log_tail(&self, lines: usize) -> String {
        match &self.inner {
            Inner::Private(n) => n.log_tail(lines),
            Inner::External { url } => format!("<external broker {url}: no log>"),
        }
    }

    /// The deprecated features the node's log says were asked for since the
    /// last call (RabbitMQ 4 logs each use; 3.10 has none to log): for the
    /// test that asks for them on purpose. A 4.x node whose log names one
    /// no test took fails the test when it is dropped: every suite that
    /// runs on RabbitMQ 4 thereby shows that hostbus uses none.
    pub fn take_deprecated_feature_uses(&mut self) -> Vec<String> {
        match &mut self.inner {
            Inner::Private(n) => {
                let uses = n.deprecated_feature_uses();
                let new = uses
                    .get(n.deprecated_uses_taken..)
                    .unwrap_or_default()
                    .to_vec();
                n.deprecated_uses_taken = uses.len();
                new
            }
            Inner::External { .. } => Vec::new(),
        }
    }

    fn private(&self, what: &str) -> Result<&PrivateNode> {
        match &self.inner {
            Inner::Private(n) => Ok(n),
            Inner::External { url } => Err(needs_private(what, url)),
        }
    }

    fn private_mut(&mut self, what: &str) -> Result<&mut PrivateNode> {
        match &mut self.inner {
            Inner::Private(n) => Ok(n),
            Inner::External { url } => Err(needs_private(what, url)),
        }
    }
}

fn needs_private(what: &str, url: &str) -> HarnessError {
    HarnessError::new(
        ErrorKind::NeedsPrivateNode,
        format!(
            "{what} needs a private RabbitMQ node, but {EXTERNAL_URL_ENV} is set \
             ({}): unset it to run this test",
            redact(url)
        ),
    )
}

impl Drop for RabbitNode {
    /// Kills a private node; then, unless the test is already failing,
    /// panics if the node's log says a deprecated feature was asked for
    /// that the test did not take (RabbitMQ 4 only; see
    /// [`take_deprecated_feature_uses`](Self::take_deprecated_feature_uses)).
    fn drop(&mut self) {
        if let Inner::Private(node) = &mut self.inner {
            blocking(|| node.kill());
            if std::thread::panicking() || !node.version.has_deprecated_features() {
                return;
            }
            let uses = node.deprecated_feature_uses();
            let untaken = uses.get(node.deprecated_uses_taken..).unwrap_or_default();
            if !untaken.is_empty() {
                panic!(
                    "RabbitMQ {} node {} was asked for deprecated features, which it denies: {}\n{}",
                    node.version,
                    node.name,
                    untaken.join(", "),
                    node.log_tail(40)
                );
            }
        }
    }
}
