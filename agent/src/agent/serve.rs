//! The bus binding of one delivery: its AMQP properties read into the
//! dispatcher's typed request (the bus alone knows properties, reply
//! addresses, acks and dead-lettering), then run, dead-lettered when the
//! dispatcher finds it unprocessable, replied to (on the reply lane when a
//! redelivered message's direct reply could cost the connection), and its
//! ack settled; and how many times a message was delivered.

use hostbus_protocol::envelope::reply_properties;
use hostbus_protocol::names;
use hostbus_protocol::{
    now_ms, AmqpProperties, ContentType, Envelope, Error, ErrorCode, HeaderValue,
};
use lapin::options::BasicPublishOptions;
use lapin::{Channel, Confirmation};

use crate::dispatch::{Admission, Caller, Handled, Head, Request};
use crate::lane::{LaneError, ReplyMessage};
use crate::settle::Settle;
use hostbus_amqp::{classify_reply_to, to_lapin, ReplyAddress};

/// Where and how a delivery is answered on the bus.
pub(super) struct BusReply {
    /// The `reply_to` address; `None` for a cast or an address the broker
    /// would refuse.
    to: Option<String>,
    /// The reply's `correlation_id`.
    correlation: String,
    /// The reply's `type`.
    command: String,
}

impl BusReply {
    fn message(self, h: &mut Handled, host_id: &str) -> Option<ReplyMessage> {
        let to = self.to?;
        Some(ReplyMessage {
            to,
            properties: reply_properties(
                self.correlation,
                &self.command,
                h.content_type,
                h.status,
                host_id,
                now_ms(),
            ),
            body: std::mem::take(&mut h.body),
        })
    }
}

use super::{lock, Agent, Lanes};

/// Header in which quorum queues count earlier deliveries of a message.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// What identifies a message across its redeliveries: its message id, or
/// a hash of its body when it has none.
fn message_key(d: &lapin::message::Delivery, props: &AmqpProperties) -> String {
    props.message_id.clone().unwrap_or_else(|| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        d.data.hash(&mut h);
        format!("body:{:x}", h.finish())
    })
}

impl Agent {
    /// How many times this message has been delivered, this time included:
    /// the broker's count where the queue keeps one (quorum queues'
    /// `x-delivery-count`, which survives agent restarts and connection
    /// losses), else this process's count of redeliveries.
    pub(super) fn deliveries(&self, d: &lapin::message::Delivery, props: &AmqpProperties) -> u32 {
        let broker = match props.headers.get(DELIVERY_COUNT_HEADER) {
            Some(HeaderValue::Int(n)) => u32::try_from(*n).unwrap_or(u32::MAX).saturating_add(1),
            _ => 1,
        };
        if !d.redelivered {
            return broker;
        }
        let key = message_key(d, props);
        let mut seen = lock(&self.redeliveries);
        if seen.len() > 10_000 {
            seen.clear();
        }
        let n = seen.entry(key).or_insert(1);
        *n = n.saturating_add(1);
        (*n).max(broker)
    }

    /// Reads a delivery's properties into the dispatcher's request and
    /// admits it; call it in arrival order. Properties that do not make an
    /// envelope, and a reply address the broker would refuse, are refused
    /// here.
    pub(super) fn admit(
        &self,
        props: &AmqpProperties,
        payload: &[u8],
        deliveries: u32,
    ) -> (Admission, BusReply) {
        let env = match Envelope::from_properties(props) {
            Ok(env) => env,
            Err(err) => return self.refuse_unread(props, err),
        };
        let mut reply = BusReply {
            to: env.reply_to.clone(),
            correlation: env.reply_correlation(),
            command: env.command.clone(),
        };
        if reply
            .to
            .as_deref()
            .is_some_and(|to| classify_reply_to(to) == ReplyAddress::Invalid)
        {
            // Replying would make the broker close our connection.
            reply.to = None;
            let err = Error::new(
                ErrorCode::BadEnvelope,
                [
                    ("property", "reply_to".to_owned()),
                    (
                        "reason",
                        "is not a reply address the broker issued".to_owned(),
                    ),
                ],
                "bad envelope: `reply_to` is not a reply address the broker issued",
            );
            let refused = self
                .dispatcher
                .refuse(Some(&env.command), env.content_type, err);
            return (Admission::Done(refused), reply);
        }
        let head = Head {
            command: env.command,
            command_id: env.command_id,
            deadline: env.deadline,
            asynchronous: env.asynchronous,
            version: env.version,
            content_type: env.content_type,
        };
        let admission = self.dispatcher.admit(Request {
            head: &head,
            caller: Caller::Bus {
                user: env.sender.as_deref(),
                cast: reply.to.is_none(),
            },
            payload,
            deliveries,
        });
        (admission, reply)
    }

    /// [`admit`](Self::admit) for a delivery from the read queue, which
    /// takes reads only: a change that arrives there (a client sending it
    /// with a `read.` key) is refused with `BAD_ENVELOPE` before it takes a
    /// place in any line, since the read queue keeps nothing across an
    /// agent's or a broker node's loss.
    pub(super) fn admit_read(
        &self,
        props: &AmqpProperties,
        payload: &[u8],
        deliveries: u32,
    ) -> (Admission, BusReply) {
        let change = props
            .kind
            .as_deref()
            .and_then(hostbus_protocol::command_info);
        let Some(change) = change.filter(|c| c.access != hostbus_protocol::Access::Read) else {
            return self.admit(props, payload, deliveries);
        };
        let command = change.name;
        let err = Error::new(
            ErrorCode::BadEnvelope,
            [
                ("property", "routing_key".to_owned()),
                (
                    "reason",
                    format!("{command} changes; the read lane takes reads only: send it with host.<id>, all or group.<label>"),
                ),
            ],
            format!("bad envelope: {command} was sent to the read lane, which takes reads only"),
        );
        self.refuse_unread(props, err)
    }

    /// Refuses a delivery with `err` from its raw properties, before (or
    /// instead of) reading them as an envelope: the reply goes where they
    /// say, in the encoding they name.
    fn refuse_unread(&self, props: &AmqpProperties, err: Error) -> (Admission, BusReply) {
        let ct = ContentType::parse(props.content_type.as_deref()).unwrap_or_default();
        let reply = BusReply {
            to: props.reply_to.clone().filter(|r| !r.is_empty()),
            correlation: props
                .correlation_id
                .clone()
                .or_else(|| props.message_id.clone())
                .unwrap_or_default(),
            command: props.kind.clone().unwrap_or_else(|| "invalid".to_owned()),
        };
        let refused = self.dispatcher.refuse(props.kind.as_deref(), ct, err);
        (Admission::Done(refused), reply)
    }

    /// Handles one admitted delivery: reply first, then ack.
    pub(super) async fn serve(
        &self,
        lanes: &Lanes,
        (admission, reply): (Admission, BusReply),
        props: AmqpProperties,
        d: lapin::message::Delivery,
        deliveries: u32,
    ) {
        let tag = d.delivery_tag;
        let mut handled = match admission {
            Admission::Done(h) => h,
            Admission::Ready(a) => self.dispatcher.run(a).await,
        };
        let command = reply.command.clone();
        let mut dead = false;
        if let Some(reason) = &handled.unprocessable {
            if let Err(e) = self
                .dead_letter(&lanes.publ, props.clone(), &d, reason, &handled.outcome)
                .await
            {
                tracing::warn!(error = %e, "cannot dead-letter a message; it will be redelivered");
                lanes.settler.settle(Settle::Requeue(tag));
                return;
            }
            dead = true;
        }
        if let Some(reply) = reply.message(&mut handled, &self.cfg.host_id) {
            // A message seen before may have been redelivered because its
            // reply closed our connection: reply where that cannot happen.
            let risky = deliveries > 1 && classify_reply_to(&reply.to) == ReplyAddress::Direct;
            let sent = if risky {
                match lanes
                    .lane
                    .publish(&reply, || lanes.cmd.status().connected())
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(LaneError::Refused(e)) => {
                        tracing::warn!(command = %command, reply_to = %reply.to, error = %e, "the broker refused this reply address; not replying to it again");
                        let why = format!("the broker closed the connection when given reply_to {:?}; not replied", reply.to);
                        if !dead {
                            if let Err(e) = self
                                .dead_letter(&lanes.publ, props, &d, &why, "BAD_ENVELOPE")
                                .await
                            {
                                tracing::warn!(error = %e, "cannot dead-letter a message; it will be redelivered");
                                lanes.settler.settle(Settle::Requeue(tag));
                                return;
                            }
                        }
                        Ok(())
                    }
                    Err(LaneError::Unavailable(e)) => Err(anyhow::anyhow!(e)),
                }
            } else {
                self.publish_reply(&lanes.publ, &lanes.cmd, reply).await
            };
            if let Err(e) = sent {
                tracing::warn!(command = %command, error = %e, "cannot publish the reply; the command will be redelivered");
                lanes.settler.settle(Settle::Requeue(tag));
                return;
            }
        }
        lanes.settler.settle(Settle::Ack(tag));
    }

    /// Sends the original message to the dead-letter exchange, with the
    /// reason, the error code and this host in its headers, for inspection;
    /// once per message: a redelivery of one this process already copied
    /// (the ack was lost with its connection) is only acked.
    pub(super) async fn dead_letter(
        &self,
        publ: &Channel,
        mut props: AmqpProperties,
        d: &lapin::message::Delivery,
        reason: &str,
        code: &str,
    ) -> anyhow::Result<()> {
        let key = message_key(d, &props);
        if d.redelivered && lock(&self.dead_lettered).contains(&key) {
            tracing::info!(
                code,
                "a redelivered message was dead-lettered before; acked without another copy"
            );
            return Ok(());
        }
        props.expiration = None;
        // The sender's login, which the broker verified, moves to a header:
        // the copy is published under the agent's login, and RabbitMQ
        // refuses a `user_id` that is not the publisher's (closing the
        // channel, and the reply to the command with it).
        if let Some(user) = props.user_id.take() {
            props
                .headers
                .insert("x-hostbus-dead-user".into(), HeaderValue::Str(user));
        }
        props.headers.insert(
            "x-hostbus-dead-reason".into(),
            HeaderValue::Str(reason.to_owned()),
        );
        props.headers.insert(
            "x-hostbus-dead-code".into(),
            HeaderValue::Str(code.to_owned()),
        );
        props.headers.insert(
            "x-hostbus-dead-host".into(),
            HeaderValue::Str(self.cfg.host_id.clone()),
        );
        props.headers.insert(
            "x-hostbus-dead-at".into(),
            HeaderValue::Int(i64::try_from(now_ms()).unwrap_or(i64::MAX)),
        );
        self.publish_confirmed(
            publ,
            names::DEAD_LETTER_EXCHANGE,
            &names::agent_queue(&self.cfg.host_id),
            &d.data,
            props,
        )
        .await?;
        {
            let mut copied = lock(&self.dead_lettered);
            if copied.len() > 10_000 {
                copied.clear();
            }
            copied.insert(key);
        }
        self.metrics.dead_lettered(code);
        tracing::warn!(reason, code, "message dead-lettered");
        Ok(())
    }

    /// Publishes a reply before the command is acked.
    ///
    /// A reply to direct reply-to goes out on the command channel without a
    /// confirm: the broker handles a channel's frames in order, so once it
    /// has the ack it has the reply, and a confirm would promise no more
    /// (the reply lives only as long as the caller's connection). A reply to
    /// a named queue may have to survive a broker restart: it goes out on
    /// the confirm channel, and the command is acked only once the broker
    /// has confirmed it.
    pub(super) async fn publish_reply(
        &self,
        publ: &Channel,
        cmd: &Channel,
        r: ReplyMessage,
    ) -> anyhow::Result<()> {
        if r.to.starts_with(names::DIRECT_REPLY_TO) {
            cmd.basic_publish(
                "".into(),
                r.to.as_str().into(),
                BasicPublishOptions::default(),
                &r.body,
                to_lapin(&r.properties),
            )
            .await?;
            return Ok(());
        }
        let confirm = publ
            .basic_publish(
                "".into(),
                r.to.as_str().into(),
                BasicPublishOptions::default(),
                &r.body,
                to_lapin(&r.properties),
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Nack(_) => anyhow::bail!("the broker refused the reply"),
            _ => Ok(()),
        }
    }
}
