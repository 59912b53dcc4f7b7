//! Event subscriptions as a typed stream, with gap detection and automatic
//! resync from `host.snapshot`.
//!
//! The agent numbers its events per epoch without gaps. The subscription
//! binds by host (`<host>.#`, or `#` when the pattern's host part is a
//! wildcard) and filters by the patterns locally, so it sees every sequence
//! number of the hosts it follows and can tell a lost event from a filtered
//! one. Its queue is bounded (`queue_limit`, oldest dropped first): a
//! subscriber that falls behind loses events, notices the gap, and receives a
//! fresh inventory instead of silently diverging.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{Stream, StreamExt};
use hostbus_protocol::commands::{Empty, HostSnapshot};
use hostbus_protocol::names::EVENT_EXCHANGE;
use hostbus_protocol::types::{Inventory, ObjectClass};
use hostbus_protocol::{decode, ContentType, Event, EventAction};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::client::Client;
use crate::error::{ClientError, ErrorKind};

/// Options of a subscription.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Messages the broker keeps for this subscriber before dropping the oldest.
    pub queue_limit: u32,
    /// Fetch a fresh inventory when a gap or a new epoch is seen.
    pub resync: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            queue_limit: 10_000,
            resync: true,
        }
    }
}

/// Why a resync happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResyncReason {
    /// Sequence numbers `expected..got` of this epoch never arrived.
    Gap {
        /// The sequence number that should have come next.
        expected: u64,
        /// The one that came.
        got: u64,
    },
    /// The agent restarted (a new epoch).
    NewEpoch,
    /// The agent (re)connected and announced itself with a full inventory.
    AgentOnline,
}

/// What a subscription yields.
#[derive(Debug, Clone)]
pub enum Notification {
    /// An event matching the patterns.
    Event(Box<Event>),
    /// The subscriber's view of `host` must be replaced by `inventory`.
    Resync {
        /// The host.
        host: String,
        /// Why.
        reason: ResyncReason,
        /// The host's full state (absent when fetching it failed: see `error`).
        inventory: Option<Box<Inventory>>,
        /// Why the inventory is missing.
        error: Option<ClientError>,
    },
}

/// A stream of notifications. Dropping it ends the subscription.
pub struct Subscription {
    rx: mpsc::Receiver<Result<Notification, ClientError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream for Subscription {
    type Item = Result<Notification, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether a topic pattern (`*` one word, `#` zero or more) matches a routing key.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn rec(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => rec(&p[1..], k) || (!k.is_empty() && rec(p, &k[1..])),
            (Some(&"*"), Some(_)) => rec(&p[1..], &k[1..]),
            (Some(w), Some(x)) if w == x => rec(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    rec(&p, &k)
}

fn check_pattern(p: &str) -> Result<(), ClientError> {
    let ok = !p.is_empty()
        && p.split('.').all(|w| {
            w == "*"
                || w == "#"
                || (!w.is_empty()
                    && w.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    }))
        });
    if ok {
        Ok(())
    } else {
        Err(ClientError::new(
            ErrorKind::InvalidArgument,
            format!("`{p}` is not an event pattern like `*.vm.*` or `h1.#`"),
        ))
    }
}

/// The binding keys that let a subscription see every sequence number of the hosts its patterns follow.
fn binding_keys(patterns: &[String]) -> BTreeSet<String> {
    let keys: BTreeSet<String> = patterns
        .iter()
        .map(|p| match p.split('.').next() {
            Some(host) if host != "*" && host != "#" => format!("{host}.#"),
            _ => "#".to_owned(),
        })
        .collect();
    if keys.contains("#") {
        BTreeSet::from(["#".to_owned()])
    } else {
        keys
    }
}

impl Client {
    /// Subscribes to events whose routing key (`<host>.<class>.<action>`)
    /// matches any of `patterns`.
    pub async fn subscribe(
        &self,
        patterns: &[&str],
        opts: SubscribeOptions,
    ) -> Result<Subscription, ClientError> {
        for p in patterns {
            check_pattern(p)?;
        }
        let patterns: Vec<String> = if patterns.is_empty() {
            vec!["#".to_owned()]
        } else {
            patterns.iter().map(|p| (*p).to_owned()).collect()
        };
        let conn = self.open_connection("events").await?;
        let ch = conn.create_channel().await?;
        // A small prefetch and acks after hand-over: a slow reader backs up
        // into the bounded queue, where the broker drops the oldest.
        ch.basic_qos(8, BasicQosOptions::default()).await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongInt(i32::try_from(opts.queue_limit).unwrap_or(i32::MAX)),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString(LongString::from("drop-head".as_bytes())),
        );
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await?;
        for key in binding_keys(&patterns) {
            ch.queue_bind(
                q.name().clone(),
                EVENT_EXCHANGE.into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        let mut consumer = ch
            .basic_consume(
                q.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (tx, rx) = mpsc::channel(16);
        let client = self.clone();
        let task = tokio::spawn(async move {
            let _keep = (conn, ch);
            let mut seen: HashMap<String, (Uuid, u64)> = HashMap::new();
            while let Some(d) = consumer.next().await {
                let d = match d {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let ct =
                    ContentType::parse(d.properties.content_type().as_ref().map(|c| c.as_str()))
                        .unwrap_or_default();
                let ev: Event = match decode(ct, &d.data, 64 << 20) {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable event skipped");
                        let _ = d.acker.ack(BasicAckOptions::default()).await;
                        continue;
                    }
                };
                let host = ev.host_id.clone();
                let reason = match seen.get(&host) {
                    None => None,
                    Some((epoch, _)) if *epoch != ev.epoch => Some(ResyncReason::NewEpoch),
                    Some((_, last)) if ev.seq <= *last => {
                        // A duplicate or an old event: already reflected.
                        let _ = d.acker.ack(BasicAckOptions::default()).await;
                        continue;
                    }
                    Some((_, last)) if ev.seq > last + 1 => Some(ResyncReason::Gap {
                        expected: last + 1,
                        got: ev.seq,
                    }),
                    Some(_) => None,
                };
                let online = ev.class == ObjectClass::Agent && ev.action == EventAction::Online;
                let mut last = ev.seq;
                let reason = reason.or(online.then_some(ResyncReason::AgentOnline));
                if let (Some(reason), true) = (reason, opts.resync) {
                    let (inventory, error) = match (&ev.inventory, online) {
                        (Some(inv), true) => (Some(Box::new(inv.clone())), None),
                        _ => match client.call::<HostSnapshot>(&host, Empty {}).await {
                            Ok(inv) => (Some(Box::new(inv)), None),
                            Err(e) => (None, Some(e)),
                        },
                    };
                    if let Some(inv) = &inventory {
                        if inv.epoch == Some(ev.epoch) {
                            last = last.max(inv.seq);
                        }
                    }
                    if tx
                        .send(Ok(Notification::Resync {
                            host: host.clone(),
                            reason,
                            inventory,
                            error,
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                seen.insert(host, (ev.epoch, last));
                let key = ev.routing_key();
                if patterns.iter().any(|p| topic_matches(p, &key))
                    && tx
                        .send(Ok(Notification::Event(Box::new(ev))))
                        .await
                        .is_err()
                {
                    return;
                }
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            }
            let _ = tx
                .send(Err(ClientError::new(
                    ErrorKind::Connection,
                    "the event subscription's connection was lost",
                )))
                .await;
        });
        Ok(Subscription { rx, task })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_match_like_rabbitmq() {
        assert!(topic_matches("*.vm.*", "h1.vm.started"));
        assert!(!topic_matches("*.vm.*", "h1.pool.started"));
        assert!(topic_matches("h1.#", "h1.vm.started"));
        assert!(topic_matches("#", "h1.agent.online"));
        assert!(!topic_matches("h1.#", "h2.vm.started"));
        assert!(topic_matches("h1.vm.#", "h1.vm"));
    }

    #[test]
    fn bindings_cover_whole_hosts() {
        let k = binding_keys(&["h1.vm.*".to_owned(), "h2.#".to_owned()]);
        assert_eq!(k.into_iter().collect::<Vec<_>>(), ["h1.#", "h2.#"]);
        let k = binding_keys(&["*.vm.*".to_owned(), "h2.#".to_owned()]);
        assert_eq!(k.into_iter().collect::<Vec<_>>(), ["#"]);
        assert!(check_pattern("*.vm.*").is_ok());
        assert!(check_pattern("h1..x").is_err());
    }
}
