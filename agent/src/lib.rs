//! The hostbus bus agent: serves one host's bridge through a RabbitMQ broker.
//!
//! It consumes commands from the host's durable queue, dispatches them into
//! the bridge on blocking threads, replies to `reply_to` with the
//! `correlation_id` before acking, publishes lifecycle events and heartbeats
//! with publisher confirms, reconnects forever, and drains on SIGTERM. It is
//! the only host-side crate that knows AMQP.
//!
//! Public, for the binary and the tests: [`config`] (the settings),
//! [`Agent`] (one host's service), [`fleet`] (many simulated hosts in one
//! process, `--simulate`), [`metrics`] (the Prometheus endpoint) and
//! [`journal`] (the command journal, which tests open after a crash). The
//! rest is the crate's own: `dispatch` (the typed seam between the
//! bindings and the bridge), `agent` (the bus binding: sessions, topology,
//! events, presence, reconnection, shutdown), `http` (the HTTP binding),
//! `settle` (acks), `stamp` (the session clock), `feed` (the one stamping
//! point of events, feeding both bindings), `auth`, `lane`.

mod agent;
mod auth;
pub mod config;
mod dispatch;
mod feed;
pub mod fleet;
mod http;
pub mod journal;
mod lane;
pub mod metrics;
mod peers;
mod settle;
mod stamp;
mod sync;

pub use agent::Agent;
pub use config::{Config, ConfigError, Flags};
