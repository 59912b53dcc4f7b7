//! Broadcasts: one command to every host of a target, the replies
//! collected against the fleet view's expectation.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hostbus_protocol::envelope::HOST_HEADER;
use hostbus_protocol::names::Target;
use hostbus_protocol::{Command, HeaderValue};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::client::{Client, Mode, Pending};
use crate::config::CallOptions;
use crate::connection::probe;
use crate::error::{ClientError, ErrorKind};
use crate::reply::{decode_reply, response};

/// How long a broadcast waits before asking the broker whether the alive
/// hosts that have not answered still have a consumer, and how often after.
const PROBE_AFTER: Duration = Duration::from_millis(500);
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The replies of a broadcast.
#[derive(Debug)]
pub struct Broadcast<T> {
    /// Each answering host's reply.
    pub replies: BTreeMap<String, Result<T, ClientError>>,
    /// Hosts the fleet view expected (every host it knows that the target
    /// reaches: alive, stale or gone) that did not answer.
    pub missing: Vec<String>,
}
impl Client {
    /// Sends command `C` to every host of `target` (`all` or a label group)
    /// and collects the replies.
    ///
    /// The hosts expected are computed once, from the fleet view: every
    /// host it knows that the target reaches. The broadcast returns as soon
    /// as every *alive* one has answered; stale and gone hosts are not
    /// waited for, but included if they answer meanwhile. An alive host that
    /// is slow to answer is checked with the broker after a moment: when
    /// its command queue has no consumer (its agent is not connected: it
    /// died since its last heartbeat), it is not waited for either. Every
    /// expected host that did not answer is in `missing`. `timeout` bounds
    /// the whole wait and is the command's deadline.
    ///
    /// Over an agent's socket, the fleet is the one host it serves: the
    /// command is a call to it when `target` reaches it (`all`, its id, or
    /// one of its labels), else the broadcast is empty.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the wait, not the command.
    pub async fn broadcast<C: Command>(
        &self,
        target: &Target,
        req: C::Request,
        timeout: Duration,
    ) -> Result<Broadcast<C::Response>, ClientError> {
        let presence = self.presence().await?;
        let expected = presence.expected(target);
        if self.inner.socket.is_some() {
            let mut replies = BTreeMap::new();
            let mut missing = Vec::new();
            let opts = CallOptions {
                timeout: Some(timeout),
                command_id: None,
            };
            for host in expected.alive.into_iter().chain(expected.not_alive) {
                match self.round_trip::<C>(&host, &req, &opts, false).await {
                    Err(e) if matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout) => {
                        missing.push(host)
                    }
                    r => {
                        replies.insert(host, r.and_then(response::<C>));
                    }
                }
            }
            return Ok(Broadcast { replies, missing });
        }
        let id = Uuid::new_v4();
        let corr = id.to_string();
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.register(corr.clone(), Pending::Many(tx.clone()));
        let opts = CallOptions {
            timeout: Some(timeout),
            command_id: Some(id),
        };
        let missing_of = |replies: &BTreeMap<String, Result<C::Response, ClientError>>| {
            let mut m: Vec<String> = expected
                .alive
                .iter()
                .chain(&expected.not_alive)
                .filter(|h| !replies.contains_key(*h))
                .cloned()
                .collect();
            m.sort();
            m
        };
        // Refused or cut off: publish again, with the same command id (an
        // agent that already has it answers once and runs it once).
        let give_up = tokio::time::Instant::now() + timeout;
        let mut reply = Mode {
            reply: true,
            read_lane: C::ACCESS == hostbus_protocol::Access::Read,
            ..Mode::default()
        };
        let mut published = self.publish::<C>(target, &req, &opts, reply).await;
        if reply.read_lane
            && published
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::NoRoute)
        {
            // No agent of the target has a read lane: their durable queues.
            reply.read_lane = false;
            published = self.publish::<C>(target, &req, &opts, reply).await;
        }
        while published
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::Connection)
            && tokio::time::Instant::now() + Duration::from_millis(200) < give_up
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            published = self.publish::<C>(target, &req, &opts, reply).await;
            // Replies come on the session this publish went out on.
            self.register(corr.clone(), Pending::Many(tx.clone()));
        }
        drop(tx);
        if let Err(e) = published {
            self.forget(&corr);
            // Nobody bound: an empty broadcast, not an error.
            if e.kind() == ErrorKind::NoRoute {
                return Ok(Broadcast {
                    replies: BTreeMap::new(),
                    missing: missing_of(&BTreeMap::new()),
                });
            }
            return Err(e);
        }
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        // Alive hosts not heard from yet; emptied by replies and probes.
        let mut waiting: BTreeSet<String> = expected.alive.iter().cloned().collect();
        let mut replies = BTreeMap::new();
        let mut next_probe = started + PROBE_AFTER.min(timeout / 4);
        while !waiting.is_empty() {
            let until = next_probe.min(deadline);
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(raw)) => {
                    let host = match raw.props.headers.get(HOST_HEADER) {
                        Some(HeaderValue::Str(h)) => h.clone(),
                        _ => continue,
                    };
                    let value = decode_reply::<C>(&raw).and_then(response::<C>);
                    waiting.remove(&host);
                    replies.insert(host, value);
                }
                Ok(None) => break,
                Err(_) if tokio::time::Instant::now() >= deadline => break,
                Err(_) => {
                    for host in self.unconsumed(&waiting).await {
                        tracing::info!(host = %host, "broadcast: the host's queue has no consumer; not waiting for it");
                        waiting.remove(&host);
                    }
                    next_probe = tokio::time::Instant::now() + PROBE_EVERY;
                }
            }
        }
        self.forget(&corr);
        let missing = missing_of(&replies);
        Ok(Broadcast { replies, missing })
    }

    /// Of `hosts`, those whose command queue has no consumer (or does not
    /// exist): the broker's word that their agent is not connected.
    async fn unconsumed(&self, hosts: &BTreeSet<String>) -> Vec<String> {
        let Ok(session) = self.session().await else {
            return Vec::new();
        };
        probe(&session.conn, hosts.iter().cloned().collect())
            .await
            .into_iter()
            .filter(|(_, connected)| !connected)
            .map(|(host, _)| host)
            .collect()
    }
}
