//! The hostbus API bridge: the one place where a host is managed.
//!
//! It takes protocol requests, runs them against libvirt, and returns protocol
//! results or protocol errors; it also turns libvirt lifecycle callbacks into
//! protocol events. It is synchronous and knows nothing of AMQP. The libvirt
//! implementation lands with issue 3; until then this crate only fixes its place
//! in the dependency graph.
