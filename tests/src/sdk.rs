//! The SDK calls the suites and the bench make again and again, each
//! panicking with what failed.

use std::time::Duration;

use futures_lite::StreamExt;
use hostbus_client::protocol::commands::{VmList, VmListRequest, VmListResponse};
use hostbus_client::protocol::names::Target;
use hostbus_client::{
    Broadcast, Client, ClientError, Notification, StartAt, SubscribeOptions, Subscription,
};

/// A subscription of `client` to the events matching `patterns`, from the
/// next event on.
pub async fn subscribe(client: &Client, patterns: &[&str]) -> Subscription {
    subscribe_from(client, patterns, StartAt::Next).await
}

/// A subscription of `client` to the events matching `patterns`, reading
/// the stream from `from`.
pub async fn subscribe_from(client: &Client, patterns: &[&str], from: StartAt) -> Subscription {
    client
        .subscribe(
            patterns,
            SubscribeOptions {
                from,
                ..SubscribeOptions::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("subscribe to {patterns:?}: {e}"))
}

/// The next notification of `sub` within `within`; panics naming `what`
/// when none comes, the subscription ends or fails.
pub async fn next_notification(
    sub: &mut Subscription,
    within: Duration,
    what: &str,
) -> Notification {
    tokio::time::timeout(within, sub.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {within:?}"))
        .unwrap_or_else(|| panic!("{what}: the subscription ended"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// [`list_vms`] to the hosts labelled `label`.
pub async fn list_group(
    client: &Client,
    label: &str,
    timeout: Duration,
) -> Result<Broadcast<VmListResponse>, ClientError> {
    list_vms(client, &Target::Group(label.to_owned()), timeout).await
}

/// `vm.list` (every power state) broadcast to `target`, waiting up to
/// `timeout` for the hosts expected to answer.
pub async fn list_vms(
    client: &Client,
    target: &Target,
    timeout: Duration,
) -> Result<Broadcast<VmListResponse>, ClientError> {
    client
        .broadcast::<VmList>(target, VmListRequest { power_state: None }, timeout)
        .await
}

/// Stops `agent` (SIGTERM), waits for its exit and until `client`'s fleet
/// view no longer sees its host alive (its goodbye was read), up to 10 s.
pub async fn stop_and_see_gone(client: &Client, agent: &mut crate::AgentProcess) {
    agent.terminate().expect("stop the agent");
    agent
        .wait_exit(Duration::from_secs(30))
        .expect("the agent stops");
    let fleet = client.presence().await.expect("fleet view");
    let since = std::time::Instant::now();
    while fleet
        .host(agent.host_id())
        .is_some_and(|v| v.liveness == hostbus_client::Liveness::Alive)
    {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "{} still looks alive",
            agent.host_id()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The names of the volumes of `pool` on `host`.
pub async fn volume_names_of(host: &hostbus_client::Host, pool: &str) -> Vec<String> {
    host.pool(pool)
        .volumes()
        .await
        .expect("volumes")
        .into_iter()
        .map(|v| v.name)
        .collect()
}
