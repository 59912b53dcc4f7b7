//! The calls section: round trips through the SDK next to the raw
//! baseline, events to 1 and 10 subscribers, the agent's footprint.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hostbus_client::protocol::commands::{VmPause, VmResume, VmUuid};
use hostbus_client::protocol::names::{EVENT_EXCHANGE, PRESENCE_EXCHANGE};
use hostbus_client::protocol::{decode, now_ms, ContentType, Event};
use hostbus_client::{Client, ClientConfig};
use hostbus_tests::{AgentProcess, AmqpPeer, RabbitNode};

use crate::measure::{
    change_call, change_call_on, list_call, measure, ping_call, ping_call_on, Call, Meter, Run,
};
use crate::raw::{raw_call, Raw, RawOpts};
use crate::report::{self, hwm_kib, row, rss_kib, write_section, HEADER};
use crate::{Args, WEB01};

/// A step of the breakdown: its row name and the operation it adds.
type Step = (&'static str, fn(&mut RawOpts));

pub(crate) async fn bench(a: &Args) {
    let node = RabbitNode::start().expect("rabbit");
    let url = node.amqp_url();

    let peer = AmqpPeer::connect(&url).await.expect("peer");
    let mut beats = peer.watch(PRESENCE_EXCHANGE, "h1.heartbeat").await;
    let spawned = Instant::now();
    let agent = AgentProcess::builder("h1", &url)
        .arg("--log-level")
        .arg("warn")
        .heartbeat_interval(Duration::from_millis(1000))
        // As many commands in flight as the deepest client concurrency measured.
        .concurrency(64)
        .env("HOSTBUS_QUEUE_TYPE", &a.queue_type)
        // The HTTP binding too, for the same calls without the broker.
        .arg("--http-socket")
        .arg("agent.sock")
        .start();
    beats
        .next(Duration::from_secs(60))
        .await
        .expect("first heartbeat");
    let first_heartbeat = spawned.elapsed();
    // A second agent whose command queue is classic (the first one's is
    // the default quorum queue, or --queue-type): reads and changes on both
    // in one interleaved run.
    let classic = AgentProcess::builder("h2", &url)
        .arg("--log-level")
        .arg("warn")
        .heartbeat_interval(Duration::from_millis(1000))
        .concurrency(64)
        .metrics(false)
        .env("HOSTBUS_QUEUE_TYPE", "classic")
        .start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = agent.pid().expect("pid");
    let rss_idle = rss_kib(pid);

    let client = Client::connect(ClientConfig::new(&url))
        .await
        .expect("client");
    let local = Client::connect(ClientConfig::local(agent.dir().join("agent.sock")))
        .await
        .expect("client over the agent's socket");
    // Another agent build to compare with (HOSTBUS_BENCH_COMPARE_AGENT),
    // served on its Unix socket only (no broker), measured in the same
    // interleaved slices as this build's socket rows.
    let compared = std::env::var_os("HOSTBUS_BENCH_COMPARE_AGENT").map(|bin| {
        AgentProcess::builder("h1", "amqp://guest:guest@127.0.0.1:1/%2f")
            .binary(bin)
            .arg("--log-level")
            .arg("warn")
            .concurrency(64)
            .metrics(false)
            .arg("--http-socket")
            .arg("agent.sock")
            .start()
    });
    let mut agents = vec![pid];
    agents.extend(classic.pid());
    let mut other = None;
    if let Some(c) = &compared {
        agents.extend(c.pid());
        let deadline = Instant::now() + Duration::from_secs(60);
        other = loop {
            match Client::connect(ClientConfig::local(c.dir().join("agent.sock"))).await {
                Ok(cl) => break Some(cl),
                Err(e) if Instant::now() > deadline => panic!("the compared agent: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
    }
    let meter = Meter {
        broker: node
            .process_group()
            .map(hostbus_tests::group_members)
            .unwrap_or_default(),
        agents,
    };
    if let Some(c) = a.profile {
        eprintln!(
            "hostbus-bench: host.ping at concurrency {c} for {} s; agent pid {pid}, broker pids {:?}",
            a.secs, meter.broker
        );
        let r = measure(&meter, c, a.secs, 1, &[ping_call(&client)]).await;
        println!(
            "{HEADER}\n{}",
            row(&format!("{c:>3}"), "hostbus host.ping", &r[0], r[0].rate())
        );
        return;
    }
    // Two minimal responders: answering inline is fastest at concurrency 1,
    // a task per request from 16 on; the baseline is whichever is faster.
    let raw_inline = Arc::new(Raw::start(&url, RawOpts::default()).await);
    let raw_tasks = Arc::new(
        Raw::start(
            &url,
            RawOpts {
                spawn: true,
                ..RawOpts::default()
            },
        )
        .await,
    );
    let raw_quorum = Arc::new(
        Raw::start(
            &url,
            RawOpts {
                spawn: true,
                quorum: true,
                ..RawOpts::default()
            },
        )
        .await,
    );
    let mut table = Vec::new();
    let mut targets = Vec::new();
    let levels: &[usize] = if a.breakdown_only { &[] } else { &[1, 16, 64] };
    let mut names = vec![
        "raw lapin, inline responder",
        "raw lapin, task per request",
        "hostbus host.ping",
        "hostbus vm.list",
        "hostbus host.ping, Unix socket",
        "hostbus vm.list, Unix socket",
        "hostbus vm.set_memory (a change)",
        "hostbus vm.set_memory, Unix socket",
        "raw lapin, quorum queue",
        "hostbus host.ping, classic queues",
        "hostbus vm.set_memory, classic queues",
    ];
    if other.is_some() {
        names.extend([
            "compared build: vm.list, Unix socket",
            "compared build: vm.set_memory, Unix socket",
        ]);
    }
    for &c in levels {
        let mut paths = vec![
            raw_call(&raw_inline),
            raw_call(&raw_tasks),
            ping_call(&client),
            list_call(&client),
            ping_call(&local),
            list_call(&local),
            change_call(&client),
            change_call(&local),
            raw_call(&raw_quorum),
            ping_call_on(&client, "h2"),
            change_call_on(&client, "h2"),
        ];
        if let Some(o) = &other {
            paths.extend([list_call(o), change_call(o)]);
        }
        let runs = measure(&meter, c, a.secs, a.rounds, &paths).await;
        let base = if runs[1].rate() > runs[0].rate() {
            &runs[1]
        } else {
            &runs[0]
        };
        let ping = &runs[2];
        targets.push((
            c,
            ping.rate() / base.rate(),
            ping.pct(0.99) / base.pct(0.99),
            runs[9].rate() / base.rate(),
            runs[6].rate() / runs[8].rate(),
        ));
        for (name, r) in names.iter().zip(&runs) {
            table.push(row(&format!("{c:>3}"), name, r, base.rate()));
        }
    }
    let rss_load = hwm_kib(pid);
    raw_inline.close().await;
    raw_tasks.close().await;
    raw_quorum.close().await;

    // The price list: the raw baseline with hostbus's broker operations
    // added one at a time, then hostbus itself.
    let mut breakdown = Vec::new();
    if a.breakdown {
        // Each step adds one operation to the options of the step before.
        let adds: [Step; 7] = [
            ("raw, task per request", |o| o.spawn = true),
            ("+ topic exchange", |o| o.topic = true),
            ("+ durable queue", |o| o.durable = true),
            ("+ responder acks", |o| o.ack = true),
            ("+ per-message TTL", |o| o.ttl = true),
            ("+ client confirms, mandatory", |o| o.confirm = true),
            ("+ persistent requests", |o| o.persistent = true),
        ];
        let mut o = RawOpts::default();
        let mut steps = vec![("raw, inline responder", o)];
        for (name, add) in adds {
            add(&mut o);
            steps.push((name, o));
        }
        let mut raws = Vec::new();
        for &(_, opts) in &steps {
            raws.push(Arc::new(Raw::start(&url, opts).await));
        }
        let mut paths: Vec<Call> = raws.iter().map(raw_call).collect();
        paths.push(ping_call(&client));
        for c in [1usize, 16, 64] {
            let runs = measure(&meter, c, a.secs, a.rounds, &paths).await;
            // Against the faster of the two minimal responders (rows 1 and 2).
            let base = runs.iter().take(2).map(Run::rate).fold(0.0, f64::max);
            let names = steps.iter().map(|(n, _)| *n).chain(["hostbus host.ping"]);
            for (name, r) in names.zip(&runs) {
                breakdown.push(row(&format!("{c:>3}"), name, r, base));
            }
        }
        for r in raws {
            r.close().await;
        }
    }

    // Events: pause/resume churn on web01 (one VM: its operations are
    // serialized anyway); subscribers on plain lapin.
    let mut ev_rows = Vec::new();
    let fan_out: &[usize] = if a.breakdown_only { &[] } else { &[1, 10] };
    for &subs in fan_out {
        let mut consumers = Vec::new();
        for _ in 0..subs {
            consumers.push(
                peer.subscribe(EVENT_EXCHANGE, "h1.vm.*")
                    .await
                    .expect("subscribe"),
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = Vec::new();
        let (cl, stop2) = (client.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let uuid = WEB01.parse().expect("uuid");
            while !stop2.load(Ordering::Relaxed) {
                let _ = cl.call::<VmPause>("h1", VmUuid { uuid }).await;
                let _ = cl.call::<VmResume>("h1", VmUuid { uuid }).await;
            }
        }));
        let window = Duration::from_secs(a.secs);
        let mut counts = Vec::new();
        let mut lat = Vec::new();
        let collected = async {
            let mut handles = Vec::new();
            for mut s in consumers {
                handles.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let mut n = 0u64;
                    let mut l = Vec::new();
                    while t.elapsed() < window {
                        if let Ok(r) = s.next(Duration::from_millis(500)).await {
                            if let Ok(e) = decode::<Event>(ContentType::MsgPack, &r.body, 64 << 20)
                            {
                                n += 1;
                                l.push(Duration::from_millis(now_ms().saturating_sub(e.time)));
                            }
                        }
                    }
                    (n, l)
                }));
            }
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.expect("subscriber"));
            }
            out
        }
        .await;
        stop.store(true, Ordering::Relaxed);
        for l in load {
            let _ = l.await;
        }
        for (n, l) in collected {
            counts.push(n);
            lat.extend(l);
        }
        let r = Run {
            calls: counts.iter().sum::<u64>() / subs as u64,
            secs: window.as_secs_f64(),
            lat,
            ..Run::default()
        };
        ev_rows.push(format!(
            "| {subs:>2} | {:>9.0} | {:>9.0} | {:>7.1} | {:>7.1} |",
            r.rate(),
            r.rate() * subs as f64,
            r.pct(0.5),
            r.pct(0.99)
        ));
    }

    let mut out = report::preamble(format_args!(
        "The agent's command queue is a {} queue. Each cell: {} slices of {} s (each after 0.5 s of warm-up), interleaved with the other rows of its table; calls/s is the median slice, latencies and CPU cover all slices.",
        a.queue_type,
        a.rounds,
        a.secs
    ));
    let _ = writeln!(
        out,
        "### Calls through the broker, and over the agent's Unix socket\n"
    );
    report::table(&mut out, HEADER, &table);
    let _ = writeln!(out, "\nCPU columns: microseconds of CPU per call in the broker (all its processes), the agent, and the benchmark process (the SDK client; for the raw rows, the raw client and responder). The `Unix socket` rows are the same SDK calls over the agent's HTTP binding (docs/http.md), no broker in the path; `of raw` still compares with the broker baseline.");
    if !breakdown.is_empty() {
        let _ = writeln!(
            out,
            "\n### What each broker operation costs (raw lapin, added one at a time)\n"
        );
        report::table(&mut out, HEADER, &breakdown);
        let _ = writeln!(out, "\nEach row adds one thing a hostbus call asks of the broker to the row above; \"of raw\" is against the faster of the first two rows of the same concurrency.");
    }
    let _ = writeln!(
        out,
        "\n### Targets (against the raw baselines of the same run)\n"
    );
    let _ = writeln!(out, "Reads (`host.ping`, on the read lane) against the raw classic echo; a change (`vm.set_memory`) on the default quorum queue against the raw quorum echo.\n");
    let _ = writeln!(out, "| concurrency | reads, default (target ≥ 0.90) | reads, classic queues (target ≥ 0.90) | p99 ratio | change vs raw quorum |\n|---:|---:|---:|---:|---:|");
    for (c, ratio, p99x, classic, change) in &targets {
        let _ = writeln!(
            out,
            "| {c} | {ratio:.2} {} | {classic:.2} {} | {p99x:.2} | {change:.2} |",
            if *ratio >= 0.9 { "met" } else { "missed" },
            if *classic >= 0.9 { "met" } else { "missed" },
        );
    }
    let _ = writeln!(out, "\n### Events (VM pause/resume churn on one agent)\n");
    report::table(&mut out, "| subscribers | events/s each | deliveries/s total | p50 ms | p99 ms |\n|---:|---:|---:|---:|---:|", &ev_rows);
    let _ = writeln!(out, "\n### Agent footprint\n");
    let _ = writeln!(
        out,
        "| RSS idle | peak RSS (VmHWM, after all calls) | start to first heartbeat |\n|---:|---:|---:|\n| {:.1} MiB | {:.1} MiB | {} ms |",
        rss_idle as f64 / 1024.0,
        rss_load as f64 / 1024.0,
        first_heartbeat.as_millis()
    );
    println!("{out}");
    if a.write {
        write_section("bench", &out);
    }
    drop(agent);
}
