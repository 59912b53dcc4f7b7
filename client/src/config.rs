//! What a client is configured with: broker URLs or a local agent's
//! socket, TLS, deadlines, and the options of one call.

use std::path::PathBuf;
use std::time::Duration;

use hostbus_protocol::ContentType;
use uuid::Uuid;

/// How to reach the hosts: through the broker, or one host through its
/// agent's Unix socket.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Broker URLs, tried in order (`amqp://user:pass@host:5672/%2f`, `amqps://...`).
    pub urls: Vec<String>,
    /// A local agent's HTTP socket (`/run/hostbus/agent.sock`, docs/http.md).
    /// When set, the client opens no broker connection and `urls`, `tls`,
    /// `user_id` and `connect` are not used: every call goes to the one
    /// host that agent serves (a call naming another host fails with
    /// [`crate::ErrorKind::NoRoute`]); broker administration fails with
    /// [`crate::ErrorKind::Unsupported`]; subscriptions start at
    /// [`crate::StartAt::Next`] only (the agent keeps no event history).
    /// The agent authorizes the peer by its uid and gid.
    pub socket: Option<PathBuf>,
    /// Default deadline of a call.
    pub timeout: Duration,
    /// Encoding of requests (replies come back in the same one).
    pub content_type: ContentType,
    /// The `user_id` property to send: must equal the broker login, which
    /// RabbitMQ verifies; the agent authorizes on it. Taken from the first
    /// URL's user when not set.
    pub user_id: Option<String>,
    /// TLS material for `amqps://` URLs (CA, optional client certificate).
    pub tls: hostbus_amqp::Tls,
    /// Connection timeout and AMQP heartbeat (10 s each by default).
    pub connect: hostbus_amqp::ConnectOptions,
}

impl ClientConfig {
    /// A configuration for one broker URL with a 10 s default deadline.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            socket: None,
            timeout: Duration::from_secs(10),
            content_type: ContentType::MsgPack,
            user_id: None,
            tls: hostbus_amqp::Tls::default(),
            connect: hostbus_amqp::ConnectOptions::default(),
        }
    }

    /// A configuration for a local agent's HTTP socket (no broker) with a
    /// 10 s default deadline: see [`ClientConfig::socket`].
    pub fn local(socket: impl Into<PathBuf>) -> Self {
        Self {
            urls: Vec::new(),
            socket: Some(socket.into()),
            ..Self::new("")
        }
    }

    /// The login this configuration sends as: `user_id`, else the first
    /// URL's user.
    pub fn user(&self) -> Option<String> {
        self.user_id.clone().or_else(|| {
            let url = self.urls.first()?;
            let rest = url.split_once("://")?.1;
            let (creds, _) = rest.rsplit_once('@')?;
            let user = creds.split(':').next()?;
            (!user.is_empty()).then(|| user.to_owned())
        })
    }
}

/// Options of one call.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Deadline (default: the client's). Also the message expiration, so an
    /// agent that was down does not run a command nobody waits for.
    pub timeout: Option<Duration>,
    /// The command id; reuse it to retry a call safely (the agent answers a
    /// repeated id from its journal).
    pub command_id: Option<Uuid>,
}
