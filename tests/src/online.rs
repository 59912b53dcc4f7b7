//! Waiting for agents to come online, as every suite does before it sends
//! its first command.

use std::time::Duration;

use hostbus_protocol::names::EVENT_EXCHANGE;
use hostbus_protocol::Event;

use crate::agent::{AgentBuilder, AgentProcess};
use crate::amqp::{AmqpPeer, Subscription};
use crate::calls::event_of;

/// How long an agent may take to come online.
pub const ONLINE_TIMEOUT: Duration = Duration::from_secs(60);

/// The next `<host>.agent.online` event of `agent` on `events` within
/// [`ONLINE_TIMEOUT`] (other messages are skipped); panics with the tail of
/// the agent's log.
pub async fn next_online(events: &mut Subscription, agent: &AgentProcess) -> Event {
    let key = format!("{}.agent.online", agent.host_id());
    let r = events
        .next_matching(ONLINE_TIMEOUT, |r| r.routing_key == key)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail(40)));
    event_of(&r)
}

/// Starts the agent `builder` describes once a peer on its (first) broker
/// watches the agent's `agent.online` events, and waits until it is online.
/// Returns the peer, the watch (for later announcements), the agent and its
/// first announcement.
pub async fn spawn_online(builder: AgentBuilder) -> (AmqpPeer, Subscription, AgentProcess, Event) {
    let peer = AmqpPeer::connect(builder.first_broker_url())
        .await
        .expect("peer");
    let mut events = peer
        .subscribe(
            EVENT_EXCHANGE,
            &format!("{}.agent.online", builder.host_id()),
        )
        .await
        .expect("subscribe");
    let agent = builder.spawn().expect("agent");
    let online = next_online(&mut events, &agent).await;
    (peer, events, agent, online)
}
