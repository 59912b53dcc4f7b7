//! Broker connections, shared by the call session, subscriptions and the
//! fleet view: opening one on the first URL that answers, closing one with
//! AMQP's `connection.close` within a bound, tying the background tasks
//! that own one to their client's close, and asking the broker whether
//! hosts' agents are connected.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hostbus_protocol::names;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::config::ClientConfig;
use crate::error::{ClientError, ErrorKind};

/// Locks `m`, even if a thread panicked while holding it (the data behind
/// the client's mutexes stays consistent at every step).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens connections to the broker.
#[derive(Clone)]
pub(crate) struct Connector {
    /// The broker URLs in the order this process tries them: from a random
    /// position, so a fleet of managers spreads over a cluster's nodes.
    order: Vec<String>,
    tls: hostbus_amqp::Tls,
    options: hostbus_amqp::ConnectOptions,
}

impl Connector {
    pub(crate) fn new(cfg: &ClientConfig) -> Self {
        Self {
            order: hostbus_amqp::spread(&cfg.urls, Uuid::new_v4().as_u128() as u64),
            tls: cfg.tls.clone(),
            options: cfg.connect,
        }
    }

    /// Opens a new AMQP connection to the first URL that answers, named
    /// `hostbus-client/<purpose>` on the broker, and runs `setup` on it
    /// (channels, consumers). When `setup` fails, the connection is closed
    /// (not only dropped) before the error is returned.
    pub(crate) async fn open<T>(
        &self,
        purpose: &str,
        setup: impl AsyncFnOnce(&Connection) -> Result<T, ClientError>,
    ) -> Result<(Connection, T), ClientError> {
        let conn = hostbus_amqp::connect_first(
            &self.order,
            &format!("hostbus-client/{purpose}"),
            &self.tls,
            self.options,
        )
        .await
        .map(|(c, _)| c)
        .map_err(|e| ClientError::new(ErrorKind::Connection, e))?;
        match setup(&conn).await {
            Ok(t) => Ok((conn, t)),
            Err(e) => {
                let _ = close(&conn, "setup failed").await;
                Err(e)
            }
        }
    }
}

/// How long closing a connection waits for the broker's `close-ok`: a
/// broker that is gone or cut off must not hold up a program's exit.
/// A client closes its connections at once, so its close takes this long
/// at most.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Closes `conn` with AMQP `connection.close` (reply code 200, `why` as
/// its text) and waits for the broker's `close-ok`, at most
/// [`CLOSE_TIMEOUT`]; a connection that is already lost or closing is
/// left as it is. On a timeout the connection is given up on: lapin's I/O
/// thread ends once the broker answers or the heartbeat says it is gone.
pub(crate) async fn close(conn: &Connection, why: &str) -> Result<(), ClientError> {
    if !conn.status().connected() {
        return Ok(());
    }
    match tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, why.into())).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ClientError::new(
            ErrorKind::Timeout,
            format!(
                "the broker did not confirm closing the connection within {} ms; it was given up on",
                CLOSE_TIMEOUT.as_millis()
            ),
        )),
    }
}

/// The error of anything asked of a client after [`crate::Client::close`].
pub(crate) fn closed_error() -> ClientError {
    ClientError::new(
        ErrorKind::BadState,
        "this client was closed (Client::close): connect a new one",
    )
}

/// A client's side of the ties to its background tasks that hold a
/// connection (each call session's reply reader, subscriptions, the fleet
/// view): its close tells them all, then waits until each has closed its
/// connection.
pub(crate) struct Ties {
    closing: watch::Sender<bool>,
    /// Cloned into each tie; taken at close, so that the receiver ends
    /// once every tied task has ended.
    done: Mutex<Option<mpsc::UnboundedSender<Result<(), ClientError>>>>,
    ended: tokio::sync::Mutex<mpsc::UnboundedReceiver<Result<(), ClientError>>>,
}

impl Ties {
    pub(crate) fn new() -> Self {
        let (done, ended) = mpsc::unbounded_channel();
        Self {
            closing: watch::Sender::new(false),
            done: Mutex::new(Some(done)),
            ended: tokio::sync::Mutex::new(ended),
        }
    }

    /// A tie for a new background task; `None` once the client is closed.
    pub(crate) fn tie(&self) -> Option<Tie> {
        let done = lock(&self.done).clone()?;
        Some(Tie {
            closing: self.closing.subscribe(),
            done,
        })
    }

    /// Whether the client is closed (or closing).
    pub(crate) fn closed(&self) -> bool {
        *self.closing.borrow()
    }

    /// Resolves when the client is dropped (not when it closes): for a
    /// task that must close its connection then.
    pub(crate) fn dropped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.subscribe();
        async move { while closing.changed().await.is_ok() {} }
    }

    /// Tells every tied task that the client closes; from now on there
    /// are no new ties.
    pub(crate) fn close(&self) {
        self.closing.send_replace(true);
        lock(&self.done).take();
    }

    /// Waits until every tied task has ended (each closes its connection
    /// within [`CLOSE_TIMEOUT`] once told); the first error of those that
    /// closed because the client did.
    pub(crate) async fn ended(&self) -> Result<(), ClientError> {
        let mut ended = self.ended.lock().await;
        let mut outcome = Ok(());
        while let Some(r) = ended.recv().await {
            if outcome.is_ok() {
                outcome = r;
            }
        }
        outcome
    }
}

/// A background task's tie to its client.
pub(crate) struct Tie {
    closing: watch::Receiver<bool>,
    done: mpsc::UnboundedSender<Result<(), ClientError>>,
}

impl Tie {
    /// Resolves when the client closes; never when the client is dropped
    /// without closing (the task then ends by its own rule).
    pub(crate) async fn client_closed(&mut self) {
        if self.closing.wait_for(|closing| *closing).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Runs `work` until it ends, `stop` fires or its sender is dropped,
    /// or the client closes: what a background task does before it closes
    /// its connection.
    pub(crate) async fn until_stopped(
        &mut self,
        work: impl std::future::Future<Output = ()>,
        stop: oneshot::Receiver<()>,
    ) {
        tokio::select! {
            () = work => {}
            _ = stop => {}
            () = self.client_closed() => {}
        }
    }

    /// Ends the tie with how closing the task's connection went, which a
    /// client's close that is waiting for it reports.
    pub(crate) fn end(self, closed: &Result<(), ClientError>) {
        if *self.closing.borrow() {
            let _ = self.done.send(closed.clone());
        }
    }
}

/// Whether a lapin error is the broker's 404 (no such queue or exchange).
pub(crate) fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(a) if a.get_id() == 404)
}

/// Asks the broker, for each host, whether its command queue has a
/// consumer (its agent is connected): a passive `queue.declare` of
/// `hostbus.agent.<host>`, about a millisecond each. A queue that does not
/// exist counts as no consumer; a host the broker could not be asked about
/// is left out.
pub(crate) async fn probe(conn: &Connection, hosts: Vec<String>) -> Vec<(String, bool)> {
    let mut out = Vec::with_capacity(hosts.len());
    let mut ch: Option<Channel> = None;
    for host in hosts {
        if ch.as_ref().is_none_or(|c| !c.status().connected()) {
            // A failed passive declare closes its channel: open another.
            ch = conn.create_channel().await.ok();
        }
        let Some(c) = ch.as_ref() else { break };
        let declared = c
            .queue_declare(
                names::agent_queue(&host).as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..lapin::options::QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(q) => out.push((host, q.consumer_count() > 0)),
            Err(e) if is_not_found(&e) => out.push((host, false)),
            Err(_) => {}
        }
    }
    if let Some(c) = ch {
        let _ = c.close(200, "probed".into()).await;
    }
    out
}
