//! The agent's link to other hosts: the host-to-host steps of a migration
//! (`vm.migrate_prepare`, `vm.migrate_abort`, `vm.get` on the destination)
//! go over the bus like any manager's commands, through the client SDK,
//! under the agent's own broker login. The bridge calls them from a task's
//! thread ([`Peers`] blocks); they run on the agent's runtime.
//!
//! The connection and the fleet view are made on first use and kept: a
//! destination the fleet view does not see alive is refused at once
//! (`PEER_UNAVAILABLE`), not after a timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hostbus_bridge::Peers;
use hostbus_client::{CallOptions, Client, ClientConfig, ClientError, Liveness};
use hostbus_protocol::commands::*;
use hostbus_protocol::types::VmRecord;
use hostbus_protocol::{Error, ErrorCode};
use tokio::runtime::Handle;
use tokio::sync::OnceCell;
use uuid::Uuid;

/// How long a peer has to answer a prepare (it may create volumes).
const PREPARE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a peer has to answer an abort or a read.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the fleet view may take to read the broker's history.
const FLEET_READY: Duration = Duration::from_secs(10);

/// [`Peers`] over the bus.
pub(crate) struct BusPeers {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClientConfig,
    runtime: Handle,
    client: OnceCell<Client>,
}

fn unavailable(host: &str, reason: impl Into<String>) -> Error {
    let reason = reason.into();
    Error::new(
        ErrorCode::PeerUnavailable,
        [("host", host.to_owned()), ("reason", reason.clone())],
        format!("host {host} is not serving: {reason}"),
    )
}

/// A client error as the protocol error the task reports: the peer's own
/// error as it sent it, anything else (no reply, no connection) as
/// `PEER_UNAVAILABLE`.
fn from_client(host: &str, e: ClientError) -> Error {
    match e.code() {
        Some(code) => Error::new(
            code,
            e.params().iter().map(|(k, v)| (k.as_str(), v.clone())),
            e.message().to_owned(),
        ),
        None => unavailable(host, e.message()),
    }
}

impl BusPeers {
    /// Peers reached with `cfg` (the agent's broker URLs, TLS and login),
    /// their calls run on `runtime`.
    pub(crate) fn new(cfg: ClientConfig, runtime: Handle) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                runtime,
                client: OnceCell::new(),
            }),
        }
    }

    /// Runs `f` on the runtime and waits for it on this (blocking) thread.
    fn block<T: Send + 'static>(
        &self,
        f: impl FnOnce(Arc<Inner>) -> std::pin::Pin<Box<dyn Future<Output = T> + Send>>,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        let fut = f(self.inner.clone());
        self.inner.runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().ok()
    }
}

impl BusPeers {
    /// The peers of the agent configured by `cfg` (its broker URLs, TLS
    /// and login), on the current runtime; `None` outside a runtime (the
    /// bridge then refuses `vm.migrate`).
    pub(crate) fn for_agent(cfg: &crate::config::Config) -> anyhow::Result<Option<Arc<dyn Peers>>> {
        let Ok(runtime) = Handle::try_current() else {
            return Ok(None);
        };
        let mut client = ClientConfig::new("");
        client.urls = cfg.broker_order();
        client.tls = cfg.tls()?;
        client.connect = cfg.connect_options();
        client.timeout = CALL_TIMEOUT;
        Ok(Some(Arc::new(Self::new(client, runtime))))
    }
}

impl Inner {
    async fn client(&self) -> Result<&Client, ClientError> {
        self.client
            .get_or_try_init(|| Client::connect(self.cfg.clone()))
            .await
    }

    /// The client, once the fleet view says `host` serves.
    async fn serving(&self, host: &str) -> Result<&Client, Error> {
        let client = self
            .client()
            .await
            .map_err(|e| unavailable(host, e.message()))?;
        let presence = client
            .presence()
            .await
            .map_err(|e| unavailable(host, e.message()))?;
        presence.wait_ready(FLEET_READY).await;
        match presence.host(host) {
            None => Err(unavailable(host, "it is not in the fleet")),
            Some(v) if v.liveness == Liveness::Alive => Ok(client),
            Some(v) => Err(unavailable(
                host,
                format!(
                    "its agent is {} (last heard {})",
                    match v.liveness {
                        Liveness::Stale => "stale",
                        _ => "gone",
                    },
                    v.last_seen_ms.map_or(
                        "before the fleet view's look-back".to_owned(),
                        |ms| format!("{ms} ms ago")
                    )
                ),
            )),
        }
    }

    async fn call<C: Command>(
        &self,
        host: &str,
        req: C::Request,
        timeout: Duration,
    ) -> Result<C::Response, Error> {
        let client = self.serving(host).await?;
        let opts = CallOptions {
            timeout: Some(timeout),
            command_id: None,
        };
        client
            .call_with::<C>(host, req, &opts)
            .await
            .map_err(|e| from_client(host, e))
    }
}

fn gone(host: &str) -> Error {
    unavailable(host, "the agent is stopping")
}

impl Peers for BusPeers {
    fn prepare(
        &self,
        host: &str,
        request: VmMigratePrepareRequest,
    ) -> Result<VmMigratePrepareResponse, Error> {
        let h = host.to_owned();
        self.block(move |p| {
            Box::pin(async move {
                p.call::<VmMigratePrepare>(&h, request, PREPARE_TIMEOUT)
                    .await
            })
        })
        .unwrap_or_else(|| Err(gone(host)))
    }

    fn abort(&self, host: &str, request: VmMigrateAbortRequest) -> Result<(), Error> {
        let h = host.to_owned();
        self.block(move |p| {
            Box::pin(async move {
                p.call::<VmMigrateAbort>(&h, request, CALL_TIMEOUT)
                    .await
                    .map(drop)
            })
        })
        .unwrap_or_else(|| Err(gone(host)))
    }

    fn vm_get(&self, host: &str, uuid: Uuid) -> Result<VmRecord, Error> {
        let h = host.to_owned();
        self.block(move |p| {
            Box::pin(async move { p.call::<VmGet>(&h, VmUuid { uuid }, CALL_TIMEOUT).await })
        })
        .unwrap_or_else(|| Err(gone(host)))
    }
}
