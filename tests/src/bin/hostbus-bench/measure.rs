//! Driving calls and measuring them: rate, latency and CPU per call.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostbus_client::protocol::commands::{
    HostPing, Ping, VmList, VmListRequest, VmSetMemory, VmSetMemoryRequest,
};
use hostbus_client::Client;

/// Latency samples and a count over one or more windows.
#[derive(Default)]
pub(crate) struct Run {
    pub(crate) calls: u64,
    pub(crate) secs: f64,
    pub(crate) lat: Vec<Duration>,
    /// CPU seconds over the windows: broker, agent, this process.
    pub(crate) cpu: [f64; 3],
    /// Calls/s of each window merged in.
    pub(crate) rates: Vec<f64>,
}

impl Run {
    /// Calls/s: the median over the windows merged in.
    pub(crate) fn rate(&self) -> f64 {
        if self.rates.is_empty() {
            return self.calls as f64 / self.secs;
        }
        let mut r = self.rates.clone();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    }
    fn merge(&mut self, other: Run) {
        self.rates.push(other.calls as f64 / other.secs);
        self.calls += other.calls;
        self.secs += other.secs;
        self.lat.extend(other.lat);
        for i in 0..3 {
            self.cpu[i] += other.cpu[i];
        }
    }
    pub(crate) fn pct(&self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return f64::NAN;
        }
        let mut v = self.lat.clone();
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i].as_secs_f64() * 1000.0
    }
    /// CPU microseconds per call of the broker, the agent and this process.
    pub(crate) fn cpu_per_call(&self) -> [f64; 3] {
        let n = self.calls.max(1) as f64;
        self.cpu.map(|c| c * 1e6 / n)
    }
}

/// Where the CPU goes: the broker's process group, the agents, this process.
#[derive(Clone)]
pub(crate) struct Meter {
    pub(crate) broker: Vec<u32>,
    pub(crate) agents: Vec<u32>,
}

impl Meter {
    pub(crate) fn sample(&self) -> [f64; 3] {
        [
            cpu_secs(&self.broker),
            cpu_secs(&self.agents),
            cpu_secs(&[std::process::id()]),
        ]
    }
}

/// One way of making a call; true when it succeeded.
pub(crate) type Call = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

pub(crate) fn ping_call(client: &Client) -> Call {
    ping_call_on(client, "h1")
}

/// `host.ping` of `host`.
pub(crate) fn ping_call_on(client: &Client, host: &'static str) -> Call {
    let cl = client.clone();
    Arc::new(move || {
        let cl = cl.clone();
        Box::pin(async move { cl.call::<HostPing>(host, Ping { echo: None }).await.is_ok() })
    })
}

pub(crate) fn list_call(client: &Client) -> Call {
    let cl = client.clone();
    Arc::new(move || {
        let cl = cl.clone();
        Box::pin(async move {
            cl.call::<VmList>("h1", VmListRequest { power_state: None })
                .await
                .is_ok()
        })
    })
}

/// `vm.set_memory` of web01 to the memory it has: a change (journaled,
/// in web01's line, through the bridge) that leaves the VM as it was.
pub(crate) fn change_call(client: &Client) -> Call {
    change_call_on(client, "h1")
}

/// [`change_call`] on `host`.
pub(crate) fn change_call_on(client: &Client, host: &'static str) -> Call {
    let cl = client.clone();
    let uuid = crate::WEB01.parse().unwrap_or_default();
    Arc::new(move || {
        let cl = cl.clone();
        Box::pin(async move {
            cl.call::<VmSetMemory>(
                host,
                VmSetMemoryRequest {
                    uuid,
                    memory_kib: 1_048_576,
                },
            )
            .await
            .is_ok()
        })
    })
}

/// Measures every path at `concurrency`: `rounds` slices of `secs` each,
/// interleaved (path 1, 2, …, then again), so a slow spell of the machine
/// hits every path alike. Calls/s is the median slice.
pub(crate) async fn measure(
    meter: &Meter,
    concurrency: usize,
    secs: u64,
    rounds: usize,
    paths: &[Call],
) -> Vec<Run> {
    let mut runs: Vec<Run> = paths.iter().map(|_| Run::default()).collect();
    for _ in 0..rounds {
        for (path, run) in paths.iter().zip(&mut runs) {
            let p = path.clone();
            run.merge(drive(meter, concurrency, secs, move || p()).await);
        }
    }
    runs
}

/// Runs `concurrency` loops of `call` for `secs`, after a short warm-up.
pub(crate) async fn drive<F, Fut>(meter: &Meter, concurrency: usize, secs: u64, call: F) -> Run
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let warm = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (stop, warm, samples, call) =
            (stop.clone(), warm.clone(), samples.clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if !call().await {
                    continue;
                }
                if warm.load(Ordering::Relaxed) {
                    mine.push(t.elapsed());
                }
            }
            samples.lock().expect("samples").extend(mine);
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    warm.store(true, Ordering::Relaxed);
    let cpu0 = meter.sample();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = t.elapsed().as_secs_f64();
    let cpu1 = meter.sample();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let lat = std::mem::take(&mut *samples.lock().expect("samples"));
    Run {
        calls: lat.len() as u64,
        secs: elapsed,
        lat,
        cpu: [0, 1, 2].map(|i| cpu1[i] - cpu0[i]),
        rates: Vec::new(),
    }
}

/// CPU seconds (user + system) used so far by the processes `pids`.
pub(crate) fn cpu_secs(pids: &[u32]) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    pids.iter()
        .filter_map(|&p| {
            // stat(5) fields 14 and 15: utime, stime.
            let f = hostbus_tests::stat_fields(p)?;
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tick)
        })
        .sum()
}

/// The `p` quantile of `v`, in ms.
pub(crate) fn quantile_ms(v: &[Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}
