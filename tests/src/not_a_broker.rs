//! Servers on local ports that accept TCP connections and are not brokers:
//! the broker states an operator meets that are neither up nor refusing.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{HarnessError, Result};

/// What a [`NotABroker`] does with each connection it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Reads what it is sent and never writes: a hung node, a node out of
    /// file descriptors, a load balancer with no healthy backend.
    Silent,
    /// Answers the AMQP greeting with bytes that are not AMQP.
    Garbage,
    /// Closes each connection as soon as it is accepted.
    Closing,
}

/// A server on a free port of 127.0.0.1 that behaves as `behaviour` says,
/// each connection on a thread of its own, until dropped.
#[derive(Debug)]
pub struct NotABroker {
    behaviour: Behaviour,
    port: u16,
    stop: Arc<AtomicBool>,
}

impl NotABroker {
    /// Starts the server.
    pub fn start(behaviour: Behaviour) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| HarnessError::io("cannot bind a local port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| HarnessError::io("cannot read the bound port", e))?
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name(format!("not-a-broker-{port}"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let _ = std::thread::Builder::new()
                        .name("not-a-broker-conn".into())
                        .spawn(move || answer(behaviour, conn));
                }
            })
            .map_err(|e| HarnessError::io("cannot start a thread", e))?;
        Ok(Self {
            behaviour,
            port,
            stop,
        })
    }

    /// What the server does.
    pub fn behaviour(&self) -> Behaviour {
        self.behaviour
    }

    /// An AMQP URL of the server.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for NotABroker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Serves one connection until the peer closes it.
fn answer(behaviour: Behaviour, mut conn: TcpStream) {
    let mut buf = [0u8; 1024];
    match behaviour {
        Behaviour::Closing => {
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
        Behaviour::Garbage => {
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(&[0xa5; 64]);
        }
        Behaviour::Silent => {}
    }
    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
}
