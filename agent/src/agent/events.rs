//! What the agent publishes besides replies: the AMQP properties of its
//! own messages, confirmed publishing, bridge events, and `agent.online` /
//! `agent.offline` announcements.

use std::sync::Arc;

use hostbus_protocol::envelope::VERSION_HEADER;
use hostbus_protocol::names;
use hostbus_protocol::{
    encode, now_ms, AmqpProperties, ContentType, Event, EventAction, HeaderValue, PROTOCOL_VERSION,
};
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{Channel, Confirmation};
use uuid::Uuid;

use hostbus_amqp::to_lapin;

use super::{Agent, Events};

impl Agent {
    /// The properties of a message the agent publishes on its own: a fresh
    /// id, its kind, MessagePack, persistent, the protocol version and
    /// this host.
    pub(super) fn message_props(&self, kind: &str, expiration_ms: Option<u64>) -> AmqpProperties {
        let mut p = AmqpProperties {
            message_id: Some(Uuid::new_v4().to_string()),
            kind: Some(kind.to_owned()),
            content_type: Some(ContentType::MsgPack.as_str().to_owned()),
            timestamp: Some(now_ms() / 1000),
            expiration: expiration_ms.map(|e| e.to_string()),
            delivery_mode: Some(2),
            ..AmqpProperties::default()
        };
        p.headers.insert(
            VERSION_HEADER.to_owned(),
            HeaderValue::Str(PROTOCOL_VERSION.to_string()),
        );
        p.headers.insert(
            hostbus_protocol::envelope::HOST_HEADER.to_owned(),
            HeaderValue::Str(self.cfg.host_id.clone()),
        );
        p
    }

    pub(super) async fn publish_confirmed(
        &self,
        publ: &Channel,
        exchange: &str,
        key: &str,
        body: &[u8],
        props: AmqpProperties,
    ) -> anyhow::Result<()> {
        let confirm = publ
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(key),
                BasicPublishOptions::default(),
                body,
                to_lapin(&props),
            )
            .await?
            .await?;
        if let Confirmation::Nack(_) = confirm {
            anyhow::bail!("the broker refused the message");
        }
        Ok(())
    }

    /// Publishes the feed's events as they come, until the stream ends or
    /// a publish fails; returns why it stopped. Events numbered before
    /// this session's `agent.online` (number `online`) are skipped: its
    /// inventory reflects them.
    pub(super) async fn publish_events(
        self: Arc<Self>,
        publ: Channel,
        events: Events,
        online: u64,
    ) -> String {
        let mut rx = events.lock().await;
        while let Some(event) = rx.recv().await {
            if event.seq <= online {
                continue;
            }
            if let Err(e) = self.send_event(&publ, &event).await {
                return format!("cannot publish an event: {e}");
            }
        }
        "the bridge's event stream ended".to_owned()
    }

    pub(super) async fn send_event(&self, publ: &Channel, event: &Event) -> anyhow::Result<()> {
        let body = encode(ContentType::MsgPack, event)?;
        let kind = format!("{}.{}", event.class, event.action);
        self.publish_confirmed(
            publ,
            names::EVENT_EXCHANGE,
            &event.routing_key(),
            &body,
            self.message_props(&kind, None),
        )
        .await?;
        self.metrics.event_published();
        Ok(())
    }

    /// Publishes `agent.online` (with the full inventory) or `agent.offline`;
    /// returns its sequence number.
    pub(super) async fn announce(
        &self,
        publ: &Channel,
        action: EventAction,
    ) -> anyhow::Result<u64> {
        let inventory = if action == EventAction::Online {
            let bridge = self.bridge.clone();
            let (inv, load) =
                tokio::task::spawn_blocking(move || (bridge.inventory(), bridge.host_load()))
                    .await?;
            // The first heartbeat follows at once: it reports this load and
            // these versions.
            self.note_load(&load);
            match inv {
                Ok(inv) => {
                    self.note_host(&inv.host);
                    Some(inv)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no inventory for agent.online");
                    None
                }
            }
        } else {
            None
        };
        let event = self
            .feed
            .announce(|s| s.announcement(action, now_ms(), inventory));
        let seq = event.seq;
        self.send_event(publ, &event).await?;
        tracing::info!(action = %action, seq, "announced");
        Ok(seq)
    }
}
