//! The libvirt connection: opened lazily, dropped when libvirt reports it
//! broken or closed, reopened on the next call or health check.

use std::sync::mpsc::Sender;
use std::sync::{Mutex, MutexGuard, PoisonError};

use hostbus_protocol::types::HealthStatus;
use hostbus_protocol::Error;
use virt::connect::Connect;

use crate::errors::host_unavailable;
use crate::events::{self, RawEvent, Registrations};

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

struct State {
    live: Option<Live>,
    last_error: String,
    reconnects: u64,
    ever_connected: bool,
}

pub(crate) struct Conn {
    uri: String,
    callbacks: bool,
    events: Sender<RawEvent>,
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Conn {
    pub(crate) fn new(uri: &str, events: Sender<RawEvent>, callbacks: bool) -> Self {
        Self {
            uri: uri.to_owned(),
            callbacks,
            events,
            state: Mutex::new(State {
                live: None,
                last_error: String::new(),
                reconnects: 0,
                ever_connected: false,
            }),
        }
    }

    pub(crate) fn uri(&self) -> &str {
        &self.uri
    }

    /// The live connection, opening it when there is none.
    pub(crate) fn get(&self) -> Result<Connect, Error> {
        let mut st = lock(&self.state);
        if let Some(live) = &st.live {
            return Ok(live.conn.clone());
        }
        match Connect::open(Some(&self.uri)) {
            Ok(conn) => {
                let regs = self
                    .callbacks
                    .then(|| events::register(&conn, &self.events));
                if st.ever_connected {
                    st.reconnects += 1;
                    tracing::info!(uri = %self.uri, "reconnected to libvirt");
                } else {
                    tracing::info!(uri = %self.uri, "connected to libvirt");
                }
                st.ever_connected = true;
                st.last_error.clear();
                let out = conn.clone();
                st.live = Some(Live { conn, regs });
                Ok(out)
            }
            Err(e) => {
                st.last_error = e.message().to_owned();
                tracing::warn!(uri = %self.uri, error = %e, "cannot connect to libvirt");
                Err(host_unavailable(e.message()))
            }
        }
    }

    /// Drops the connection after a failure; the next call reconnects.
    pub(crate) fn invalidate(&self, reason: &str) {
        let mut st = lock(&self.state);
        if let Some(mut live) = st.live.take() {
            tracing::warn!(uri = %self.uri, reason, "libvirt connection lost");
            if let Some(regs) = live.regs.take() {
                events::deregister(&live.conn, regs);
            }
        }
        st.last_error = reason.to_owned();
    }

    /// Probes the connection; reconnects when it is gone.
    pub(crate) fn check(&self) {
        let alive = {
            let st = lock(&self.state);
            st.live.as_ref().map(|l| l.conn.is_alive().unwrap_or(false))
        };
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
        let st = lock(&self.state);
        let connected = st.live.is_some();
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
        let mut st = lock(&self.state);
        if let Some(mut live) = st.live.take() {
            if let Some(regs) = live.regs.take() {
                events::deregister(&live.conn, regs);
            }
        }
    }
}
