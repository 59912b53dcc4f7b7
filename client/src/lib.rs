//! The hostbus client SDK: what a cluster manager, an event subscriber or an
//! operator uses to drive hosts through the broker, or one host through its
//! agent's socket. It speaks only the wire protocol and builds without
//! libvirt.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hostbus_client::ClientError> {
//! use hostbus_client::{Client, ClientConfig};
//! let client = Client::connect(ClientConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")).await?;
//! let vm = client.host("h1").vm_named("web01").start().await?;
//! println!("{} is {}", vm.name, vm.power_state);
//! client.close().await?;
//! # Ok(()) }
//! ```
//!
//! * [`Client`]: calls with deadlines, casts, broadcasts, tasks.
//! * [`Host`], [`Vm`], [`Pool`], [`Network`], [`Task`]: typed handles.
//! * [`Subscription`]: events as a `Stream`, read from the broker's event
//!   stream, resumable from an offset, reconnecting on its own.
//! * [`Presence`]: the fleet view, complete at once (read from the broker's
//!   presence streams), then live.
//! * [`Client::evacuate`]: every running VM off one host, each migrated to
//!   the target with the most free memory.
//! * [`ClientError`]: one error type with an [`ErrorKind`].
//!
//! Two transports: the broker (every host of the fleet), or one host
//! through its agent's Unix socket, with no broker at all
//! ([`ClientConfig::local`], the HTTP binding of docs/http.md): the same
//! calls, handles, tasks and subscriptions, for the host that agent
//! serves.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hostbus_client::ClientError> {
//! use hostbus_client::{Client, ClientConfig};
//! let client = Client::connect(ClientConfig::local("/run/hostbus/agent.sock")).await?;
//! let host = client.local_host().unwrap_or_default();
//! println!("{:?}", client.host(host).vms(None).await?);
//! client.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Closing
//!
//! A client holds broker connections (one for calls, one for the fleet
//! view once used, one per subscription). Close them when done:
//! [`Client::close`] closes every one of them with AMQP's
//! `connection.close`, [`Subscription::close`] one subscription's, each
//! waiting at most two seconds for the broker. A program that only drops
//! them and exits leaves `client unexpectedly closed TCP connection` in the
//! broker's log for each; a long-running program that drops them gets them
//! closed in the background (see [`Client`] for what a drop guarantees).
//!
//! Runnable examples live in `client/examples/`.

mod admin;
mod broadcast;
mod client;
mod config;
mod connection;
mod error;
mod evacuate;
mod events;
mod handles;
mod presence;
mod reply;
mod socket;
mod sse;
mod stream;

pub use broadcast::Broadcast;
pub use client::Client;
pub use config::{CallOptions, ClientConfig};
pub use error::{ClientError, ErrorKind};
pub use evacuate::{
    EvacuateOptions, EvacuationOutcome, EvacuationProgress, EvacuationReport, SkippedHost, Targets,
    VmEvacuation, EVACUATING,
};
pub use events::{
    topic_matches, Notification, ResyncReason, StartAt, SubscribeOptions, Subscription,
};
pub use handles::{Host, MigrateOptions, Network, Pool, Task, Vm};
pub use hostbus_amqp::{topology, ConnectOptions, Tls};
pub use hostbus_protocol as protocol;
pub use presence::{Expected, HostView, Liveness, Presence};
