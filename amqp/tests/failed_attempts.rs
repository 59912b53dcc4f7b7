//! A connection attempt that fails, at whatever stage, leaves nothing
//! behind: no lapin I/O thread, no buffers. Servers that are not brokers
//! stand in for the broker states an operator meets: a node that accepts
//! TCP connections and never answers (out of file descriptors, hung, a
//! load balancer without a healthy backend), one that answers garbage, one
//! that closes at once.
//!
//! One test in this binary, so that the process's threads are its own.

use std::time::{Duration, Instant};

use hostbus_amqp::{connect, ConnectOptions, Tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a server does with each connection it accepts.
#[derive(Debug, Clone, Copy)]
enum Server {
    /// Reads what it is sent and never writes.
    Silent,
    /// Answers the AMQP greeting with bytes that are not AMQP.
    Garbage,
    /// Closes the connection at once.
    Closing,
}

async fn serve(kind: Server) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                match kind {
                    Server::Silent => while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {},
                    Server::Garbage => {
                        let _ = s.read(&mut buf).await;
                        let _ = s.write_all(&[0xa5; 64]).await;
                        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                    }
                    Server::Closing => drop(s),
                }
            });
        }
    });
    port
}

/// This process's threads named `lapin-io-loop`, and all its threads.
fn threads() -> (usize, usize) {
    let mut io_loops = 0;
    let mut all = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let Ok(task) = task else { continue };
        all += 1;
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "lapin-io-loop" {
            io_loops += 1;
        }
    }
    (io_loops, all)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Waits until no lapin I/O thread is left (a thread ends shortly after
/// its socket is shut down); returns how many are left after `within`.
async fn io_loops_after(within: Duration) -> usize {
    let end = Instant::now() + within;
    loop {
        let (n, _) = threads();
        if n == 0 || Instant::now() > end {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_leave_no_thread_and_no_memory_behind() {
    const ROUNDS: usize = 40;
    let opts = ConnectOptions {
        timeout: Duration::from_millis(100),
        ..ConnectOptions::default()
    };
    let mut servers = Vec::new();
    for kind in [Server::Silent, Server::Garbage, Server::Closing] {
        servers.push((kind, serve(kind).await));
    }
    let attempt = |scheme: &'static str, port: u16| async move {
        let url = format!("{scheme}://guest:guest@127.0.0.1:{port}/%2f");
        connect(&url, "failed-attempts", &Tls::default(), opts).await
    };
    // Warm up: the runtime's threads, the TLS roots, the allocator's arenas.
    for &(_, port) in &servers {
        for scheme in ["amqp", "amqps"] {
            let _ = attempt(scheme, port).await;
        }
    }
    io_loops_after(Duration::from_secs(5)).await;
    let (_, threads_before) = threads();
    let rss_before = rss_kib();

    for &(kind, port) in &servers {
        for scheme in ["amqp", "amqps"] {
            for _ in 0..ROUNDS {
                let e = attempt(scheme, port)
                    .await
                    .expect_err("no broker answers here");
                assert!(e.contains("cannot connect to"), "{kind:?} {scheme}: {e}");
            }
            let left = io_loops_after(Duration::from_secs(5)).await;
            assert_eq!(
                left, 0,
                "{ROUNDS} failed {scheme} attempts against a {kind:?} server left {left} lapin I/O threads"
            );
        }
    }

    let (_, threads_after) = threads();
    let rss_after = rss_kib();
    let attempts = ROUNDS * servers.len() * 2;
    eprintln!(
        "after {attempts} failed attempts: threads {threads_before} -> {threads_after}, RSS {rss_before} -> {rss_after} KiB"
    );
    // tokio's blocking pool (name resolution) may have grown by a thread.
    assert!(
        threads_after <= threads_before + 2,
        "threads grew from {threads_before} to {threads_after}"
    );
    // A leaked attempt holds at least its two 256 KiB frame buffers.
    assert!(
        rss_after < rss_before + 4 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB over {attempts} failed attempts"
    );
}
