//! Prometheus metrics: a `prometheus-client` registry rendered as
//! OpenMetrics text, served at `/metrics` by axum.
//!
//! [`router`] is the route on its own, for any axum server of the agent to
//! mount; [`serve`] is the agent's own metrics endpoint.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::{text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Upper bounds of the latency histogram buckets, seconds (`+Inf` is implicit).
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The `Content-Type` of the page: OpenMetrics text, as `prometheus-client`
/// encodes it.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `hostbus_commands_total`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandOutcome {
    command: String,
    outcome: String,
}

/// `hostbus_command_duration_seconds`'s label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabel {
    command: String,
}

/// `hostbus_dead_lettered_total`'s label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    commands: Family<CommandOutcome, Counter>,
    /// The sum of `commands` over its labels, for heartbeats.
    commands_total: AtomicU64,
    latency: Family<CommandLabel, Histogram>,
    in_flight: Gauge,
    events_published: Counter,
    heartbeats_published: Counter,
    reconnects: Counter,
    dead_lettered: Family<CodeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let commands = Family::default();
        let latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let in_flight = Gauge::default();
        let events_published = Counter::default();
        let heartbeats_published = Counter::default();
        let reconnects = Counter::default();
        let dead_lettered = Family::default();
        // Counters are registered without `_total`: the encoder appends it.
        let mut registry = Registry::default();
        registry.register(
            "hostbus_commands",
            "Commands handled, by type and outcome",
            commands.clone(),
        );
        registry.register(
            "hostbus_command_duration_seconds",
            "Time from delivery to reply, by command",
            latency.clone(),
        );
        registry.register(
            "hostbus_commands_in_flight",
            "Commands executing now",
            in_flight.clone(),
        );
        registry.register(
            "hostbus_events_published",
            "Events published with a broker confirm",
            events_published.clone(),
        );
        registry.register(
            "hostbus_heartbeats_published",
            "Heartbeats published",
            heartbeats_published.clone(),
        );
        registry.register(
            "hostbus_reconnects",
            "Reconnections to the broker",
            reconnects.clone(),
        );
        registry.register(
            "hostbus_dead_lettered",
            "Messages the agent sent to the dead-letter exchange, by error code",
            dead_lettered.clone(),
        );
        Self {
            registry,
            commands,
            commands_total: AtomicU64::new(0),
            latency,
            in_flight,
            events_published,
            heartbeats_published,
            reconnects,
            dead_lettered,
        }
    }
}

impl Metrics {
    /// Counts a finished command by type and outcome (`ok`, `task`, or an error code).
    pub fn command(&self, command: &str, outcome: &str, elapsed: Duration) {
        self.commands
            .get_or_create(&CommandOutcome {
                command: command.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.commands_total.fetch_add(1, Ordering::Relaxed);
        self.latency
            .get_or_create(&CommandLabel {
                command: command.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Commands executing now.
    pub fn in_flight(&self) -> u64 {
        u64::try_from(self.in_flight.get()).unwrap_or(0)
    }

    /// Marks a command as started; the guard marks it finished.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.inc();
        InFlight(self.clone())
    }

    /// Total commands handled.
    pub fn commands_total(&self) -> u64 {
        self.commands_total.load(Ordering::Relaxed)
    }

    /// Counts a published event.
    pub fn event_published(&self) {
        self.events_published.inc();
    }

    /// Counts a published heartbeat.
    pub fn heartbeat_published(&self) {
        self.heartbeats_published.inc();
    }

    /// Counts a reconnection to the broker.
    pub fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// Counts a message sent to the dead-letter exchange.
    pub fn dead_lettered(&self, code: &str) {
        self.dead_lettered
            .get_or_create(&CodeLabel {
                code: code.to_owned(),
            })
            .inc();
    }

    /// The OpenMetrics text of every metric, `# EOF` last.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail, and none of these metrics is one
        // the text format cannot express; a page cut short is logged.
        if let Err(e) = text::encode(&mut s, &self.registry) {
            tracing::error!(error = %e, "metrics could not be encoded");
        }
        s
    }
}

/// Decrements the in-flight gauge when dropped.
pub struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// `GET /metrics` (and `HEAD`) answering with `metrics`' page; no fallback,
/// so it merges into a router that has its own and answers 404 alone.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(page))
        .with_state(metrics)
}

async fn page(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(CONTENT_TYPE, CONTENT_TYPE_OPENMETRICS)], metrics.render())
}

/// Binds the metrics endpoint's listener (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves [`router`] on `listener` until the task is dropped.
pub async fn serve_on(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics endpoint listening");
    }
    axum::serve(listener, router(metrics)).await
}

/// Serves `/metrics` on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    serve_on(bind(addr).await?, metrics).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The value of the sample line `series` (name and labels as printed).
    fn sample(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(str::to_owned)
    }

    #[test]
    fn renders_counters_and_histograms() {
        let m = Arc::new(Metrics::default());
        m.command("vm.start", "ok", Duration::from_millis(3));
        m.command("vm.start", "VM_NOT_FOUND", Duration::from_millis(20));
        m.dead_lettered("BAD_ENVELOPE");
        m.heartbeat_published();
        m.heartbeat_published();
        {
            let _g = m.start();
            assert_eq!(m.in_flight(), 1);
            assert_eq!(
                sample(&m.render(), "hostbus_commands_in_flight").as_deref(),
                Some("1")
            );
        }
        assert_eq!(m.in_flight(), 0);
        assert_eq!(m.commands_total(), 2);
        let text = m.render();
        let expect = [
            (
                "hostbus_commands_total{command=\"vm.start\",outcome=\"ok\"}",
                "1",
            ),
            (
                "hostbus_commands_total{command=\"vm.start\",outcome=\"VM_NOT_FOUND\"}",
                "1",
            ),
            // The library puts `le` before the family's labels.
            (
                "hostbus_command_duration_seconds_bucket{le=\"0.0025\",command=\"vm.start\"}",
                "0",
            ),
            (
                "hostbus_command_duration_seconds_bucket{le=\"0.005\",command=\"vm.start\"}",
                "1",
            ),
            (
                "hostbus_command_duration_seconds_bucket{le=\"30.0\",command=\"vm.start\"}",
                "2",
            ),
            (
                "hostbus_command_duration_seconds_bucket{le=\"+Inf\",command=\"vm.start\"}",
                "2",
            ),
            (
                "hostbus_command_duration_seconds_count{command=\"vm.start\"}",
                "2",
            ),
            (
                "hostbus_command_duration_seconds_sum{command=\"vm.start\"}",
                "0.023",
            ),
            ("hostbus_commands_in_flight", "0"),
            ("hostbus_events_published_total", "0"),
            ("hostbus_heartbeats_published_total", "2"),
            ("hostbus_reconnects_total", "0"),
            ("hostbus_dead_lettered_total{code=\"BAD_ENVELOPE\"}", "1"),
        ];
        for (series, value) in expect {
            assert_eq!(
                sample(&text, series).as_deref(),
                Some(value),
                "{series}\n{text}"
            );
        }
        // Every bucket bound is exposed, once.
        let buckets = text
            .lines()
            .filter(|l| l.starts_with("hostbus_command_duration_seconds_bucket{"))
            .count();
        assert_eq!(buckets, BUCKETS.len() + 1, "{text}");
        assert!(text.contains("# TYPE hostbus_commands counter\n"), "{text}");
        assert!(
            text.contains("# TYPE hostbus_command_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// One HTTP/1.1 request on a fresh connection; the whole response.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        sock.write_all(req.as_bytes()).await.expect("request");
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), sock.read_to_string(&mut out))
            .await
            .expect("response in time")
            .expect("response");
        out
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let m = Arc::new(Metrics::default());
        m.command("host.ping", "ok", Duration::from_micros(40));
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(serve_on(listener, m.clone()));

        let ok = get(addr, "/metrics").await;
        let (head, body) = ok.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-type: {CONTENT_TYPE_OPENMETRICS}")),
            "{ok}"
        );
        assert_eq!(
            sample(
                body,
                "hostbus_commands_total{command=\"host.ping\",outcome=\"ok\"}"
            )
            .as_deref(),
            Some("1"),
            "{ok}"
        );
        assert!(body.ends_with("# EOF\n"), "{ok}");

        let missing = get(addr, "/nope").await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );

        server.abort();
    }
}
