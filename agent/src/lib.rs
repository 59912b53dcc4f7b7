//! The hostbus bus agent: consumes commands from the host's AMQP queue,
//! dispatches them into the bridge on blocking threads, replies, and publishes
//! lifecycle events and heartbeats. It is the only host-side crate that knows
//! AMQP. The service itself lands with issue 4.
