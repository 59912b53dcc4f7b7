//! The libvirt connection: opened lazily, dropped when libvirt reports it
//! broken or closed, reopened on the next call or health check.

use std::sync::mpsc::Sender;
use std::sync::Mutex;

use hostbus_protocol::types::HealthStatus;
use hostbus_protocol::Error;
use virt::connect::Connect;

use crate::errors::host_unavailable;
use crate::events::{self, RawEvent, Registrations};
use crate::locks::lock;

struct Live {
    conn: Connect,
    regs: Option<Registrations>,
}

/// Health of the hypervisor connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// Summary.
    pub status: HealthStatus,
    /// Whether the connection is up.
    pub connected: bool,
    /// What is wrong, when something is.
    pub message: String,
    /// Times the connection was reopened after a failure.
    pub reconnects: u64,
}

/// What `health` reports, kept apart from the connection: opening a
/// connection can block for as long as libvirt takes, and `health` is read
/// from async code (the agent's heartbeats), which must not wait for it.
#[derive(Default)]
struct Status {
    connected: bool,
    last_error: String,
    reconnects: u64,
    ever_connected: bool,
}

pub(crate) struct Conn {
    uri: String,
    callbacks: bool,
    events: Sender<RawEvent>,
    /// Held while the connection is opened or closed.
    live: Mutex<Option<Live>>,
    /// Held only to read or write a few fields.
    status: Mutex<Status>,
}

impl Conn {
    pub(crate) fn new(uri: &str, events: Sender<RawEvent>, callbacks: bool) -> Self {
        Self {
            uri: uri.to_owned(),
            callbacks,
            events,
            live: Mutex::new(None),
            status: Mutex::default(),
        }
    }

    pub(crate) fn uri(&self) -> &str {
        &self.uri
    }

    /// The live connection, opening it when there is none.
    pub(crate) fn get(&self) -> Result<Connect, Error> {
        let mut live = lock(&self.live);
        if let Some(l) = &*live {
            return Ok(l.conn.clone());
        }
        match Connect::open(Some(&self.uri)) {
            Ok(conn) => {
                let regs = self
                    .callbacks
                    .then(|| events::register(&conn, &self.events));
                let mut st = lock(&self.status);
                if st.ever_connected {
                    st.reconnects += 1;
                    tracing::info!(uri = %self.uri, "reconnected to libvirt");
                } else {
                    tracing::info!(uri = %self.uri, "connected to libvirt");
                }
                st.ever_connected = true;
                st.connected = true;
                st.last_error.clear();
                let out = conn.clone();
                *live = Some(Live { conn, regs });
                Ok(out)
            }
            Err(e) => {
                lock(&self.status).last_error = e.message().to_owned();
                tracing::warn!(uri = %self.uri, error = %e, "cannot connect to libvirt");
                Err(host_unavailable(e.message()))
            }
        }
    }

    /// Drops the connection after a failure; the next call reconnects.
    pub(crate) fn invalidate(&self, reason: &str) {
        let mut live = lock(&self.live);
        if let Some(mut l) = live.take() {
            tracing::warn!(uri = %self.uri, reason, "libvirt connection lost");
            if let Some(regs) = l.regs.take() {
                events::deregister(&l.conn, regs);
            }
        }
        let mut st = lock(&self.status);
        st.connected = false;
        st.last_error = reason.to_owned();
    }

    /// Probes the connection; reconnects when it is gone.
    pub(crate) fn check(&self) {
        let alive = lock(&self.live)
            .as_ref()
            .map(|l| l.conn.is_alive().unwrap_or(false));
        match alive {
            Some(true) => {}
            Some(false) => {
                self.invalidate("connection is not alive");
                let _ = self.get();
            }
            None => {
                let _ = self.get();
            }
        }
    }

    pub(crate) fn health(&self) -> HealthReport {
        let st = lock(&self.status);
        let connected = st.connected;
        HealthReport {
            status: if connected {
                HealthStatus::Ok
            } else {
                HealthStatus::Down
            },
            connected,
            message: if connected {
                String::new()
            } else {
                st.last_error.clone()
            },
            reconnects: st.reconnects,
        }
    }

    /// Closes the connection and removes the callbacks.
    pub(crate) fn close(&self) {
        if let Some(mut l) = lock(&self.live).take() {
            if let Some(regs) = l.regs.take() {
                events::deregister(&l.conn, regs);
            }
        }
        lock(&self.status).connected = false;
    }
}
