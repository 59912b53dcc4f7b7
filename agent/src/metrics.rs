//! Prometheus metrics: a small registry rendered in the text exposition
//! format, and an HTTP endpoint serving it at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sync::lock;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds of the latency histogram buckets, seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// The agent's metrics.
#[derive(Default)]
pub struct Metrics {
    commands: Mutex<BTreeMap<(String, String), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    in_flight: AtomicU64,
    events_published: AtomicU64,
    heartbeats_published: AtomicU64,
    reconnects: AtomicU64,
    dead_lettered: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    /// Counts a finished command by type and outcome (`ok`, `task`, or an error code).
    pub fn command(&self, command: &str, outcome: &str, elapsed: Duration) {
        *lock(&self.commands)
            .entry((command.to_owned(), outcome.to_owned()))
            .or_default() += 1;
        let secs = elapsed.as_secs_f64();
        let mut lat = lock(&self.latency);
        let h = lat.entry(command.to_owned()).or_insert_with(|| Histogram {
            counts: vec![0; BUCKETS.len()],
            ..Histogram::default()
        });
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// Commands executing now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Marks a command as started; the guard marks it finished.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Total commands handled.
    pub fn commands_total(&self) -> u64 {
        lock(&self.commands).values().sum()
    }

    /// Counts a published event.
    pub fn event_published(&self) {
        self.events_published.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a published heartbeat.
    pub fn heartbeat_published(&self) {
        self.heartbeats_published.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a reconnection to the broker.
    pub fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a message sent to the dead-letter exchange.
    pub fn dead_lettered(&self, code: &str) {
        *lock(&self.dead_lettered)
            .entry(code.to_owned())
            .or_default() += 1;
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP hostbus_commands_total Commands handled, by type and outcome.\n# TYPE hostbus_commands_total counter\n");
        for ((cmd, outcome), n) in lock(&self.commands).iter() {
            let _ = writeln!(
                s,
                "hostbus_commands_total{{command=\"{cmd}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        s.push_str("# HELP hostbus_command_duration_seconds Time from delivery to reply, by command.\n# TYPE hostbus_command_duration_seconds histogram\n");
        for (cmd, h) in lock(&self.latency).iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "hostbus_command_duration_seconds_bucket{{command=\"{cmd}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                s,
                "hostbus_command_duration_seconds_bucket{{command=\"{cmd}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                s,
                "hostbus_command_duration_seconds_sum{{command=\"{cmd}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                s,
                "hostbus_command_duration_seconds_count{{command=\"{cmd}\"}} {}",
                h.count
            );
        }
        let values = [
            self.in_flight.load(Ordering::Relaxed),
            self.events_published.load(Ordering::Relaxed),
            self.heartbeats_published.load(Ordering::Relaxed),
            self.reconnects.load(Ordering::Relaxed),
        ];
        let gauges = GAUGES
            .iter()
            .zip(values)
            .map(|(&(n, k, h), v)| (n, k, h, v));
        for (name, kind, help, v) in gauges {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        s.push_str("# HELP hostbus_dead_lettered_total Messages the agent sent to the dead-letter exchange, by error code.\n# TYPE hostbus_dead_lettered_total counter\n");
        for (code, n) in lock(&self.dead_lettered).iter() {
            let _ = writeln!(s, "hostbus_dead_lettered_total{{code=\"{code}\"}} {n}");
        }
        s
    }
}

/// The single-valued metrics: name, type and help, in the order
/// [`Metrics::render`] reads their values.
const GAUGES: [(&str, &str, &str); 4] = [
    (
        "hostbus_commands_in_flight",
        "gauge",
        "Commands executing now.",
    ),
    (
        "hostbus_events_published_total",
        "counter",
        "Events published with a broker confirm.",
    ),
    (
        "hostbus_heartbeats_published_total",
        "counter",
        "Heartbeats published.",
    ),
    (
        "hostbus_reconnects_total",
        "counter",
        "Reconnections to the broker.",
    ),
];

/// Decrements the in-flight gauge when dropped.
pub struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `/metrics` on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics endpoint listening");
    loop {
        let (mut sock, _) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // Read the request head, however many writes it came in.
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            let n = loop {
                match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut chunk)).await {
                    Ok(Ok(0)) => break buf.len(),
                    Ok(Ok(k)) => {
                        buf.extend_from_slice(&chunk[..k]);
                        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > 8192 {
                            break buf.len();
                        }
                    }
                    _ => return,
                }
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = if path == "/metrics" {
                ("200 OK", metrics.render())
            } else {
                ("404 Not Found", "not found\n".to_owned())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Arc::new(Metrics::default());
        m.command("vm.start", "ok", Duration::from_millis(3));
        m.command("vm.start", "VM_NOT_FOUND", Duration::from_millis(20));
        {
            let _g = m.start();
            assert_eq!(m.in_flight(), 1);
        }
        assert_eq!(m.in_flight(), 0);
        let text = m.render();
        assert!(
            text.contains("hostbus_commands_total{command=\"vm.start\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "hostbus_command_duration_seconds_bucket{command=\"vm.start\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("hostbus_command_duration_seconds_count{command=\"vm.start\"} 2"),
            "{text}"
        );
        assert_eq!(m.commands_total(), 2);
    }
}
