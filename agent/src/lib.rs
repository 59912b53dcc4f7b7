//! The hostbus bus agent: serves one host's bridge through a RabbitMQ broker.
//!
//! It consumes commands from the host's durable queue, dispatches them into
//! the bridge on blocking threads, replies to `reply_to` with the
//! `correlation_id` before acking, publishes lifecycle events and heartbeats
//! with publisher confirms, reconnects forever, and drains on SIGTERM. It is
//! the only host-side crate that knows AMQP.
//!
//! * [`config`]: the layered configuration.
//! * [`dispatch`]: delivery → reply, with no AMQP in it.
//! * [`agent`]: sessions, topology, events, presence, reconnection, shutdown.
//! * [`settle`]: acks, coalesced where it is safe.
//! * [`stamp`]: the session clock (host, epoch, seq) on all that is published.
//! * [`feed`]: the one stamping point of events, feeding both bindings.
//! * [`http`]: the HTTP binding (docs/http.md), over the same dispatcher.
//! * [`metrics`]: the Prometheus endpoint.
//! * [`fleet`]: many simulated hosts in one process (`--simulate`).

pub mod agent;
pub mod auth;
pub mod config;
pub mod dispatch;
pub mod feed;
pub mod fleet;
pub mod http;
pub mod journal;
pub mod lane;
pub mod metrics;
pub mod settle;
pub mod stamp;
mod sync;

pub use agent::Agent;
pub use config::{Config, ConfigError, Flags};
