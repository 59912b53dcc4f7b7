//! The reply lane: a broker connection of its own for replies that may be
//! poison.
//!
//! RabbitMQ 3.10 answers a reply to a direct reply-to address it cannot
//! use (forged, or pointing at a node that left the cluster) by closing the
//! replier's whole connection (see `hostbus_amqp::reply_to`). A first
//! delivery is answered on the command channel, fast and in order with its
//! ack. A message delivered again may be redelivered because its reply took
//! the session down: its direct reply goes out here instead, one at a time
//! and confirmed, so a poison address costs this connection, not the
//! session, and is recognised as poison because the session outlived it.

use std::time::Duration;

use hostbus_amqp::to_lapin;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, Connection};

use hostbus_protocol::AmqpProperties;

/// A reply to publish: where, its properties, its body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReplyMessage {
    /// The `reply_to` queue.
    pub to: String,
    /// Reply properties.
    pub properties: AmqpProperties,
    /// Encoded body.
    pub body: Vec<u8>,
}

/// Why a reply did not go out on the lane.
#[derive(Debug)]
pub(crate) enum LaneError {
    /// The broker closed the lane when given this reply while the session
    /// stayed up: the address is poison; do not reply to it again.
    Refused(String),
    /// The lane could not be used (the broker or the network is down).
    Unavailable(String),
}

/// A lazily opened connection with one confirm channel; replies on it are
/// serialized.
pub(crate) struct ReplyLane {
    url: String,
    name: String,
    tls: hostbus_amqp::Tls,
    opts: hostbus_amqp::ConnectOptions,
    open: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

/// How long a reply on the lane may wait for its confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

impl ReplyLane {
    /// A lane to the broker at `url`; nothing connects until the first reply.
    pub(crate) fn new(
        url: &str,
        host_id: &str,
        tls: &hostbus_amqp::Tls,
        opts: hostbus_amqp::ConnectOptions,
    ) -> Self {
        Self {
            url: url.to_owned(),
            name: format!("hostbus-agent/{host_id}/replies"),
            tls: tls.clone(),
            opts,
            open: tokio::sync::Mutex::new(None),
        }
    }

    /// Publishes `reply` and waits for the broker's confirm. `session_up`
    /// tells whether the agent's own session is still connected, which is
    /// how a refusal of this reply is told from an outage.
    pub(crate) async fn publish(
        &self,
        reply: &ReplyMessage,
        session_up: impl Fn() -> bool,
    ) -> Result<(), LaneError> {
        let mut open = self.open.lock().await;
        if !open
            .as_ref()
            .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected())
        {
            *open = None;
            let conn = hostbus_amqp::connect(&self.url, &self.name, &self.tls, self.opts)
                .await
                .map_err(LaneError::Unavailable)?;
            let ch = conn
                .create_channel()
                .await
                .map_err(|e| LaneError::Unavailable(e.to_string()))?;
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| LaneError::Unavailable(e.to_string()))?;
            *open = Some((conn, ch));
        }
        let Some((_, ch)) = open.as_ref() else {
            return Err(LaneError::Unavailable("no lane".into()));
        };
        let sent = async {
            let confirm = ch
                .basic_publish(
                    "".into(),
                    hostbus_amqp::short(&reply.to),
                    BasicPublishOptions::default(),
                    &reply.body,
                    to_lapin(&reply.properties),
                )
                .await?
                .await?;
            Ok::<_, lapin::Error>(confirm)
        };
        let outcome = tokio::time::timeout(CONFIRM_TIMEOUT, sent).await;
        match outcome {
            Ok(Ok(Confirmation::Nack(_))) => Err(LaneError::Unavailable(
                "the broker refused the reply".into(),
            )),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                *open = None;
                // Give the broker's close a moment to reach the session too,
                // if it was the whole broker going away.
                tokio::time::sleep(Duration::from_millis(200)).await;
                if session_up() {
                    Err(LaneError::Refused(e.to_string()))
                } else {
                    Err(LaneError::Unavailable(e.to_string()))
                }
            }
            Err(_) => {
                *open = None;
                Err(LaneError::Unavailable(format!(
                    "no confirm within {} s",
                    CONFIRM_TIMEOUT.as_secs()
                )))
            }
        }
    }
}
