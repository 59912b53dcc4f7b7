//! The cluster section: calls and events on a three-node RabbitMQ cluster
//! with quorum queues next to one node with classic queues, in the same
//! run; the outage when the agent's node is lost; what replayable events
//! cost per event.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use hostbus_client::protocol::commands::{VmPause, VmResume, VmUuid};
use hostbus_client::protocol::names::{EVENT_EXCHANGE, EVENT_STREAM};
use hostbus_client::{Client, ClientConfig};
use hostbus_tests::{group_members, AgentProcess, AmqpPeer, RabbitNode};
use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;

use crate::measure::{measure, ping_call, quantile_ms, Meter, Run};
use crate::report::{self, write_section};
use crate::Args;

const WEB01: &str = "11111111-0000-4000-8000-000000000001";

/// An agent `h1` on `urls`, with `queue_type`, waited for.
async fn agent(urls: &[String], queue_type: &str) -> AgentProcess {
    let peer = AmqpPeer::connect(&urls[0]).await.expect("peer");
    let mut online = peer.watch(EVENT_EXCHANGE, "h1.agent.online").await;
    let mut b = AgentProcess::builder("h1", &urls[0])
        .arg("--log-level")
        .arg("warn")
        .concurrency(64)
        .env("HOSTBUS_QUEUE_TYPE", queue_type);
    for u in &urls[1..] {
        b = b.broker_url(u.clone());
    }
    let a = b.spawn().expect("agent");
    online
        .next(Duration::from_secs(90))
        .await
        .expect("agent online");
    a
}

fn client_config(urls: &[String]) -> ClientConfig {
    let mut cfg = ClientConfig::new(urls[0].clone());
    cfg.urls = urls.to_vec();
    cfg
}

fn broker_pids(nodes: &[RabbitNode]) -> Vec<u32> {
    nodes
        .iter()
        .filter_map(RabbitNode::process_group)
        .flat_map(group_members)
        .collect()
}

/// Events per second to one SDK subscriber while a manager pauses and
/// resumes web01 for `secs`, with the broker's CPU per event.
/// Pauses and resumes web01 on h1 until the flag is set: a steady stream
/// of VM events.
fn churn(client: &Client) -> (Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (cl, flag) = (client.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let uuid = WEB01.parse().expect("uuid");
        while !flag.load(Ordering::Relaxed) {
            let _ = cl.call::<VmPause>("h1", VmUuid { uuid }).await;
            let _ = cl.call::<VmResume>("h1", VmUuid { uuid }).await;
        }
    });
    (stop, task)
}

async fn events(client: &Client, meter: &Meter, secs: u64) -> (f64, f64, f64) {
    let mut sub = client
        .subscribe(&["h1.vm.*"], hostbus_client::SubscribeOptions::default())
        .await
        .expect("subscribe");
    let (stop, churn) = churn(client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu0 = meter.sample();
    let t = Instant::now();
    let mut n = 0u64;
    let mut lat = Vec::new();
    while t.elapsed() < Duration::from_secs(secs) {
        if let Ok(Some(Ok(hostbus_client::Notification::Event(e)))) =
            tokio::time::timeout(Duration::from_millis(500), sub.next()).await
        {
            n += 1;
            lat.push(Duration::from_millis(
                hostbus_client::protocol::now_ms().saturating_sub(e.time),
            ));
        }
    }
    let elapsed = t.elapsed().as_secs_f64();
    let cpu1 = meter.sample();
    stop.store(true, Ordering::Relaxed);
    let _ = churn.await;
    let broker_us = (cpu1[0] - cpu0[0]) * 1e6 / n.max(1) as f64;
    (n as f64 / elapsed, quantile_ms(&lat, 0.5), broker_us)
}

fn call_row(name: &str, c: usize, r: &Run) -> String {
    let [b, ag, cl] = r.cpu_per_call();
    format!(
        "| {name} | {c} | {:.0} | {:.2} | {:.2} | {b:.0} | {ag:.0} | {cl:.0} |",
        r.rate(),
        r.pct(0.5),
        r.pct(0.99)
    )
}

/// A client of `urls`, the meter of `broker` and `agent`, and the rows of
/// one broker setup (`label`): host.ping at concurrency 1 and 16 into
/// `calls`, events into `event_rows`.
async fn measure_setup(
    label: &str,
    urls: &[String],
    broker: Vec<u32>,
    agent: &AgentProcess,
    a: &Args,
    calls: &mut Vec<String>,
    event_rows: &mut Vec<String>,
) -> (Client, Meter) {
    let client = Client::connect(client_config(urls)).await.expect("client");
    let meter = Meter {
        broker,
        agents: vec![agent.pid().expect("pid")],
    };
    for c in [1usize, 16] {
        let r = measure(&meter, c, a.secs, a.rounds, &[ping_call(&client)]).await;
        calls.push(call_row(label, c, &r[0]));
    }
    let (rate, p50, broker_us) = events(&client, &meter, a.secs * 2).await;
    event_rows.push(format!(
        "| {label} | {rate:.0} | {p50:.0} | {broker_us:.0} |"
    ));
    (client, meter)
}

pub(crate) async fn bench(a: &Args) {
    let mut calls = Vec::new();
    let mut event_rows = Vec::new();

    // One node, classic queues.
    let single = RabbitNode::start().expect("rabbit");
    let urls = vec![single.amqp_url()];
    let agent1 = agent(&urls, "classic").await;
    let (client, meter) = measure_setup(
        "one node, classic queues",
        &urls,
        broker_pids(std::slice::from_ref(&single)),
        &agent1,
        a,
        &mut calls,
        &mut event_rows,
    )
    .await;
    // What the event stream costs: the same without its binding.
    let peer = AmqpPeer::connect(&urls[0]).await.expect("peer");
    peer.channel()
        .queue_unbind(
            EVENT_STREAM.into(),
            EVENT_EXCHANGE.into(),
            "#".into(),
            FieldTable::default(),
        )
        .await
        .expect("unbind the stream");
    // A subscriber on a queue of its own, as before the stream existed.
    let mut plain = peer.watch(EVENT_EXCHANGE, "h1.vm.*").await;
    let count = Arc::new(AtomicU64::new(0));
    let (stop, churn) = churn(&client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu0 = meter.sample();
    let t = Instant::now();
    let window = Duration::from_secs(a.secs * 2);
    while t.elapsed() < window {
        if plain.next(Duration::from_millis(500)).await.is_ok() {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
    let elapsed = t.elapsed().as_secs_f64();
    let cpu1 = meter.sample();
    stop.store(true, Ordering::Relaxed);
    let _ = churn.await;
    let n = count.load(Ordering::Relaxed);
    event_rows.push(format!(
        "| one node, no event stream (a subscriber's own queue) | {:.0} | – | {:.0} |",
        n as f64 / elapsed,
        (cpu1[0] - cpu0[0]) * 1e6 / n.max(1) as f64
    ));
    peer.channel()
        .queue_bind(
            EVENT_STREAM.into(),
            EVENT_EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the stream again");
    drop((client, agent1, peer, single));

    // Three nodes, quorum queues.
    let mut nodes = RabbitNode::start_cluster(3).expect("cluster");
    let urls: Vec<String> = nodes.iter().map(RabbitNode::amqp_url).collect();
    let agent3 = agent(&urls, "quorum").await;
    let (client, _) = measure_setup(
        "three nodes, quorum queues",
        &urls,
        broker_pids(&nodes),
        &agent3,
        a,
        &mut calls,
        &mut event_rows,
    )
    .await;

    // The outage: the node the agent is connected to stops while host.ping
    // goes on at concurrency 1.
    let victim = nodes
        .iter()
        .position(|n| agent3.log().contains(&format!("127.0.0.1:{}/", n.port())))
        .unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let lat = Arc::new(std::sync::Mutex::new(
        Vec::<(Instant, Duration, bool)>::new(),
    ));
    let pinger = {
        let (cl, stop, lat) = (client.clone(), stop.clone(), lat.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = cl
                    .call::<hostbus_client::protocol::commands::HostPing>(
                        "h1",
                        hostbus_client::protocol::commands::Ping { echo: None },
                    )
                    .await
                    .is_ok();
                lat.lock().expect("lat").push((t, t.elapsed(), ok));
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut node = nodes.remove(victim);
    let stop_began = Instant::now();
    let stopping = tokio::task::spawn_blocking(move || {
        node.stop().expect("stop the node");
        node
    });
    let node = stopping.await.expect("join");
    let stopped_after = stop_began.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = pinger.await;
    let samples = lat.lock().expect("lat").clone();
    let failed = samples.iter().filter(|(_, _, ok)| !ok).count();
    let around: Vec<&(Instant, Duration, bool)> = samples
        .iter()
        .filter(|(t, d, _)| *t + *d >= stop_began)
        .collect();
    let worst = around.iter().map(|(_, d, _)| *d).max().unwrap_or_default();
    // The longest time without an answer: between two consecutive replies.
    let mut ends: Vec<Instant> = samples
        .iter()
        .filter(|(_, _, ok)| *ok)
        .map(|(t, d, _)| *t + *d)
        .collect();
    ends.sort();
    let gap = ends
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    drop((client, agent3, node, nodes));

    let mut out = report::preamble(format_args!(
        "The same release agent (concurrency 64) and SDK on one RabbitMQ node with classic queues, then on a three-node cluster on this machine with quorum queues (command queue, dead-letter queue; the streams are replicated too). Each call cell: {} slices of {} s.",
        a.rounds,
        a.secs
    ));
    report::table(&mut out, "| broker | concurrency | host.ping calls/s | p50 ms | p99 ms | broker µs | agent µs | client µs |\n|---|---:|---:|---:|---:|---:|---:|---:|", &calls);
    report::table(&mut out, "\n| events (pause/resume churn on one VM, one SDK subscriber) | events/s | latency p50 ms | broker CPU µs per event |\n|---|---:|---:|---:|", &event_rows);
    let _ = writeln!(
        out,
        "\n**Losing a node.** The node the agent was connected to (it also led some of the queues) was stopped (`rabbitmqctl stop`, {:.1} s) while `host.ping` went on at concurrency 1 from a manager given all three URLs: {} calls, {failed} failed; the longest call {:.0} ms; the longest time without a reply {:.0} ms.",
        stopped_after.as_secs_f64(),
        samples.len(),
        worst.as_secs_f64() * 1000.0,
        gap.as_secs_f64() * 1000.0
    );
    println!("{out}");
    if a.write {
        write_section("cluster", &out);
    }
}
