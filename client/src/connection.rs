//! Broker connections, shared by the call session, subscriptions and the
//! fleet view: opening one on the first URL that answers, and asking the
//! broker whether hosts' agents are connected.

use std::sync::{Mutex, MutexGuard, PoisonError};

use hostbus_protocol::names;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
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
    /// `hostbus-client/<purpose>` on the broker.
    pub(crate) async fn open(&self, purpose: &str) -> Result<Connection, ClientError> {
        hostbus_amqp::connect_first(
            &self.order,
            &format!("hostbus-client/{purpose}"),
            &self.tls,
            self.options,
        )
        .await
        .map(|(c, _)| c)
        .map_err(|e| ClientError::new(ErrorKind::Connection, e))
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
