//! Fleet administration over the call session: declaring the shared
//! broker objects, forgetting a host.

use hostbus_amqp::to_lapin;
use hostbus_protocol::names::{self, Target, PRESENCE_EXCHANGE};
use hostbus_protocol::{encode, now_ms, AmqpProperties, Announcement, ContentType, RosterAction};
use lapin::options::BasicPublishOptions;
use uuid::Uuid;

use crate::client::Client;
use crate::connection::is_not_found;
use crate::error::{ClientError, ErrorKind};
use crate::presence::Liveness;

impl Client {
    /// Declares the shared broker objects (exchanges, dead-letter queue,
    /// streams) with `settings`, as an administrator does when agents may
    /// not (docs/security.md). Objects that exist with other arguments are
    /// left as they are and returned. Over an agent's socket, fails with
    /// [`ErrorKind::Unsupported`].
    pub async fn declare_topology(
        &self,
        settings: &hostbus_amqp::topology::TopologySettings,
    ) -> Result<Vec<hostbus_amqp::topology::Mismatch>, ClientError> {
        self.broker_only("declaring the broker's objects")?;
        let session = self.session().await?;
        Ok(hostbus_amqp::topology::declare_shared(&session.conn, settings).await?)
    }

    /// Removes `host` from the fleet: deletes its command queue (and so
    /// its bindings: broadcasts stop reaching it) and publishes a `forget`
    /// announcement, after which fleet views no longer list it (until its
    /// agent announces itself again). Refused with [`ErrorKind::BadState`]
    /// while the host looks alive, unless `force`. Needs the broker
    /// permissions to delete the queue and publish `<host>.forget` on
    /// `hostbus.presence`; over an agent's socket, fails with
    /// [`ErrorKind::Unsupported`].
    pub async fn forget_host(&self, host: &str, force: bool) -> Result<(), ClientError> {
        self.broker_only("forgetting a host")?;
        Target::Host(host.to_owned())
            .validate()
            .map_err(|e| ClientError::from(hostbus_protocol::Error::from(e)))?;
        let presence = self.presence().await?;
        if let Some(h) = presence.host(host) {
            if h.liveness == Liveness::Alive && !force {
                return Err(ClientError::new(
                    ErrorKind::BadState,
                    format!(
                        "host {host} is alive (heard of {} ms ago): stop its agent first, or force",
                        h.last_seen_ms.unwrap_or_default()
                    ),
                ));
            }
        }
        let session = self.session().await?;
        let ch = session.conn.create_channel().await?;
        match ch
            .queue_delete(
                names::agent_queue(host).as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        let _ = ch.close(200, "forgot".into()).await;
        let a = Announcement {
            host_id: host.to_owned(),
            action: RosterAction::Forget,
            epoch: None,
            time: now_ms(),
            started_at: 0,
            interval_ms: 0,
            labels: Vec::new(),
            versions: None,
            capabilities: Vec::new(),
            by: self.inner.cfg.user(),
            migration_uri: None,
        };
        let body = encode(ContentType::MsgPack, &a)
            .map_err(|e| ClientError::new(ErrorKind::Internal, e.to_string()))?;
        let mut props = AmqpProperties {
            kind: Some("announcement".into()),
            content_type: Some(ContentType::MsgPack.as_str().to_owned()),
            timestamp: Some(now_ms() / 1000),
            delivery_mode: Some(2),
            user_id: self.inner.cfg.user(),
            ..AmqpProperties::default()
        };
        props.message_id = Some(Uuid::new_v4().to_string());
        let confirm = session
            .channel
            .basic_publish(
                PRESENCE_EXCHANGE.into(),
                a.routing_key().as_str().into(),
                BasicPublishOptions::default(),
                &body,
                to_lapin(&props),
            )
            .await?
            .await?;
        if confirm.is_nack() {
            return Err(ClientError::new(
                ErrorKind::Connection,
                "the broker refused the forget announcement",
            ));
        }
        Ok(())
    }
}
