//! An agent killed with SIGKILL while commands run: interrupted commands
//! run again on the same journal and finished ones do not, a command that
//! never finishes is dead-lettered after its deliveries, and an
//! interrupted command that already took effect is answered as done. What
//! they show is written down in docs/security.md ("Delivery guarantees").
//!
//! Replies go to a durable queue of the test's own where a test outlives an
//! agent, so nothing the agent answered is lost on the way, and every reply
//! delivery is counted. Figures are printed; run with `--nocapture` to see
//! them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use hostbus_protocol::commands::*;
use hostbus_protocol::envelope::STATUS_HEADER;
use hostbus_protocol::names::{self, host_key};
use hostbus_protocol::types::{DiskFormat, ObjectClass, PowerState, Record, VmRecord, VolumeSpec};
use hostbus_protocol::{decode, Command, ContentType, EventAction, HeaderValue, Reply};
use hostbus_tests::faults::{
    check_replies, collect_replies, command, declare_reply_queue, define_request, take_dead_letter,
    vm_names, vm_of, volume_names, Sent,
};
use hostbus_tests::{
    commands_total, event_of, next_online, ok, reply_error, spawn_online, AgentProcess, AmqpPeer,
    RabbitNode, Subscription,
};

const WEB01: &str = "11111111-0000-4000-8000-000000000001";
const T: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_burst_reruns_interrupted_commands_and_runs_finished_ones_once() {
    const REPLIES: &str = "faults.kill.replies";
    let node = RabbitNode::start().expect("rabbit");
    let url = node.amqp_url();
    let peer = AmqpPeer::connect(&url).await.expect("peer");
    let mut events = peer.watch(names::EVENT_EXCHANGE, "h1.#").await;
    let mut agent = AgentProcess::builder("h1", &url)
        .concurrency(2)
        .env("HOSTBUS_STEP_PAUSE_MS", "300")
        .env("HOSTBUS_RECONNECT_MAX_BACKOFF_MS", "1000")
        .start();
    let first = next_online(&mut events, &agent).await;
    declare_reply_queue(&url, REPLIES).await;

    // Eight definitions with one or two new volumes: 600 or 900 ms each,
    // two at a time.
    let disks = |i: usize| 1 + i % 2;
    let sent: Vec<Sent> = (0..8)
        .map(|i| command::<VmDefine>(&define_request(&format!("kill-vm-{i}"), disks(i)), REPLIES))
        .collect();
    for s in &sent {
        peer.publish_command(&host_key("h1"), &s.props, &s.body)
            .await
            .expect("publish");
    }
    // Kill 150 ms after the first definition finishes: the command that
    // took its place is in its first step, the other one in its last.
    let mut defined_before: BTreeMap<String, uuid::Uuid> = BTreeMap::new();
    let defined = events
        .next_matching(Duration::from_secs(30), |r| {
            r.routing_key == "h1.vm.defined"
        })
        .await
        .expect("a first definition");
    let mut pending = vec![defined];
    tokio::time::sleep(Duration::from_millis(150)).await;
    agent.kill().expect("SIGKILL");
    let killed_at = Instant::now();
    // Events the first process published before it died.
    pending.extend(
        events
            .collect_for(Duration::from_millis(300))
            .await
            .expect("events"),
    );
    for r in &pending {
        let e = event_of(r);
        if e.epoch == first.epoch && e.class == ObjectClass::Vm && e.action == EventAction::Defined
        {
            if let Record::Vm(vm) = e.record {
                defined_before.insert(vm.name, vm.uuid);
            }
        }
    }
    agent.restart().expect("restart on the same journal");
    let second = next_online(&mut events, &agent).await;
    assert_ne!(second.epoch, first.epoch, "a new process");
    println!(
        "killed; defined before the kill: {:?}; back online after {:?}",
        defined_before.keys().collect::<Vec<_>>(),
        killed_at.elapsed()
    );

    let ids: BTreeSet<String> = sent.iter().map(|s| s.id.clone()).collect();
    let replies = collect_replies(&url, REPLIES, &ids, (60, 2), &agent).await;
    let (dup_ids, extra) = check_replies(&sent, &replies);
    println!("{dup_ids} ids answered more than once ({extra} extra deliveries)");

    let second_run = agent.log_since_start(2);
    assert!(!second_run.is_empty(), "the agent was not restarted");
    let interrupted = second_run
        .matches("command was interrupted before it finished")
        .count();
    let from_journal = second_run
        .matches("duplicate command answered from the journal")
        .count();
    println!("after the restart: {interrupted} interrupted commands re-run, {from_journal} answered from the journal");
    assert!(
        interrupted >= 1,
        "the kill must hit running commands\n{}",
        agent.log_tail(60)
    );

    // The test driver's state lives in the agent process: what the killed
    // process defined is gone, what the new one defined is there.
    let mut peer = AmqpPeer::connect(&url).await.expect("peer");
    let vms = vm_names(&mut peer).await;
    let volumes = volume_names(&mut peer).await;
    let mut rerun_or_new = 0;
    for (i, s) in sent.iter().enumerate() {
        let name = format!("kill-vm-{i}");
        let answer = vm_of(&replies[&s.id][0]);
        assert_eq!(
            (answer.name.as_str(), answer.disks.len()),
            (name.as_str(), disks(i)),
            "{name}"
        );
        let now: Vec<&VmRecord> = vms.iter().filter(|v| v.name == name).collect();
        match now.as_slice() {
            [vm] => {
                rerun_or_new += 1;
                assert_eq!(
                    vm.uuid, answer.uuid,
                    "{name}: the reply describes the one definition that stands"
                );
                assert_ne!(
                    defined_before.get(&name),
                    Some(&answer.uuid),
                    "{name} finished before the kill and was defined again"
                );
                for t in &["vda", "vdb"][..disks(i)] {
                    let v = format!("{name}-{t}.qcow2");
                    assert_eq!(volumes.iter().filter(|x| **x == v).count(), 1, "{v}");
                }
            }
            [] => assert_eq!(
                defined_before.get(&name),
                Some(&answer.uuid),
                "{name} is answered but was defined neither before the kill nor after"
            ),
            more => panic!("{name} defined {} times", more.len()),
        }
    }
    let strays: Vec<&String> = volumes
        .iter()
        .filter(|v| v.starts_with("kill-vm-"))
        .filter(|v| !vms.iter().any(|vm| v.starts_with(&format!("{}-", vm.name))))
        .collect();
    assert!(strays.is_empty(), "leftover volumes: {strays:?}");
    let m = agent.metrics_text();
    assert_eq!(
        commands_total(&m, VmDefine::NAME, "ok") as usize,
        rerun_or_new,
        "the new process ran each definition it answered exactly once\n{m}"
    );
    println!(
        "{rerun_or_new} definitions ran in the new process, {} before the kill",
        sent.len() - rerun_or_new
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_never_finishes_is_dead_lettered_after_max_deliveries() {
    const REPLIES: &str = "faults.poison.replies";
    // Three steps of 1 s: long enough to be killed in the middle, every time.
    let poison = command::<VmDefine>(&define_request("poison-vm", 2), REPLIES);
    let (node, peer, mut events, mut agent) = slow_h1_running(REPLIES, &poison).await;
    let url = node.amqp_url();
    // The default HOSTBUS_MAX_DELIVERIES is 3: kill the agent during each of
    // the first three executions.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for attempt in 1..=3 {
        agent.kill().expect("SIGKILL");
        agent.restart().expect("restart");
        next_online(&mut events, &agent).await;
        if attempt < 3 {
            agent
                .wait_for_log("command was interrupted before it finished", T)
                .expect("the re-run starts");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let ids = BTreeSet::from([poison.id.clone()]);
    let replies = collect_replies(&url, REPLIES, &ids, (30, 1), &agent).await;
    let r = &replies[&poison.id];
    assert_eq!(r.len(), 1, "one answer");
    let e = reply_error(&r[0]).expect("an error reply");
    println!("after three crashes: {e}");
    assert_eq!(e.code.as_str(), "INTERNAL", "{e}");
    assert!(e.message.contains("delivered 4 times"), "{e}");

    let ch = peer.connection().create_channel().await.expect("channel");
    let (dead, props) = take_dead_letter(&ch, "the command was dead-lettered").await;
    assert_eq!(props.message_id.as_deref(), Some(poison.id.as_str()));
    assert_eq!(dead.delivery.data, poison.body, "the original message");
    let header = |k: &str| match props.headers.get(k) {
        Some(HeaderValue::Str(s)) => s.clone(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(header("x-hostbus-dead-code"), "INTERNAL");
    assert!(header("x-hostbus-dead-reason").contains("vm.define was delivered 4 times"));
    // The journal keeps the verdict: the same id again gets the same answer
    // and runs nothing.
    let mut peer = peer;
    let mut again = poison.props.clone();
    again.reply_to = Some(names::DIRECT_REPLY_TO.into());
    let r2 = peer
        .call(&host_key("h1"), &again, &poison.body, T)
        .await
        .expect("resend");
    assert_eq!(r2.body, r[0].body);
    let vms = vm_names(&mut peer).await;
    assert!(!vms.iter().any(|v| v.name == "poison-vm"));
    let m = agent.metrics_text();
    assert_eq!(commands_total(&m, VmDefine::NAME, "INTERNAL"), 1, "{m}");
    assert_eq!(
        commands_total(&m, VmDefine::NAME, "journal-error"),
        1,
        "{m}"
    );
}

/// A crash can leave the journal saying "started" while libvirt already
/// shows the effect (the VM runs, the volume exists). The libvirt test
/// driver loses its state with the agent process, so this test writes the
/// journal entry the crash would have left, with the agent's own journal
/// code, and lets the agent find it: the re-run is reconciled to success
/// instead of failing with the state error the first run caused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_command_that_already_took_effect_is_answered_as_done() {
    let node = RabbitNode::start().expect("rabbit");
    let dir = hostbus_tests::TempDir::new("reconcile").expect("temp dir");
    let journal_path = dir.path().join("journal");
    let web: uuid::Uuid = WEB01.parse().expect("uuid");
    // vm.start of web01, which already runs in node-h1.xml: the first run "succeeded".
    let start = command::<VmStart>(
        &VmStartRequest {
            uuid: web,
            paused: false,
        },
        names::DIRECT_REPLY_TO,
    );
    // vm.define whose first run created its volume, then crashed before defining the VM.
    let define = command::<VmDefine>(&define_request("halfdone", 1), names::DIRECT_REPLY_TO);
    {
        let j =
            hostbus_agent::journal::Journal::open(&journal_path, Duration::from_secs(3600), 1000)
                .expect("journal");
        j.start(&start.id, VmStart::NAME).expect("start entry");
        j.start(&define.id, VmDefine::NAME).expect("define entry");
    }
    let (mut peer, _online, _agent, _) =
        spawn_online(AgentProcess::builder("h1", &node.amqp_url()).journal_path(&journal_path))
            .await;
    let leftover = "halfdone-vda.qcow2".to_owned(); // the name vm.define gives a new qcow2 vda
    ok::<VolumeCreate>(
        &mut peer,
        "h1",
        &VolumeCreateRequest {
            pool: "default".into(),
            spec: VolumeSpec {
                name: leftover.clone(),
                capacity_bytes: 1 << 30,
                allocation_bytes: 0,
                format: DiskFormat::Qcow2,
            },
        },
    )
    .await;

    // The redelivery of the interrupted start: not VM_BAD_POWER_STATE, but done.
    let r = peer
        .call(&host_key("h1"), &start.props, &start.body, T)
        .await
        .expect("reply");
    match decode::<Reply<VmRecord>>(ContentType::MsgPack, &r.body, 1 << 20).expect("decode") {
        Reply::Ok(vm) => assert_eq!(vm.power_state, PowerState::Running),
        other => panic!("the interrupted vm.start was not reconciled: {other:?}"),
    }
    // The redelivery of the interrupted define: its leftover volume is cleaned, then it runs.
    let r = peer
        .call(&host_key("h1"), &define.props, &define.body, T)
        .await
        .expect("reply");
    match decode::<Reply<VmRecord>>(ContentType::MsgPack, &r.body, 1 << 20).expect("decode") {
        Reply::Ok(vm) => assert_eq!((vm.name.as_str(), vm.disks.len()), ("halfdone", 1)),
        other => panic!("the interrupted vm.define was not reconciled: {other:?}"),
    }
    let vols = volume_names(&mut peer).await;
    assert_eq!(
        vols.iter().filter(|v| **v == leftover).count(),
        1,
        "{vols:?}"
    );
    // Both are now answered from the journal.
    let again = peer
        .call(&host_key("h1"), &start.props, &start.body, T)
        .await
        .expect("reply");
    assert_eq!(again.header_str(STATUS_HEADER), Some("ok"));
}

/// A RabbitMQ node and an agent h1 that runs one command at a time, a
/// second a step, with `sent` published to it (its replies kept in the
/// durable queue `replies`).
async fn slow_h1_running(
    replies: &str,
    sent: &Sent,
) -> (RabbitNode, AmqpPeer, Subscription, AgentProcess) {
    let node = RabbitNode::start().expect("rabbit");
    let url = node.amqp_url();
    let (peer, events, agent, _) = spawn_online(
        AgentProcess::builder("h1", &url)
            .concurrency(1)
            .env("HOSTBUS_STEP_PAUSE_MS", "1000"),
    )
    .await;
    declare_reply_queue(&url, replies).await;
    peer.publish_command(&host_key("h1"), &sent.props, &sent.body)
        .await
        .expect("publish");
    (node, peer, events, agent)
}

/// A `vm.clone` of db01 to `name`, replying to `reply_to`.
fn clone_command(name: &str, reply_to: &str) -> Sent {
    let db01: uuid::Uuid = "11111111-0000-4000-8000-000000000002"
        .parse()
        .expect("uuid");
    command::<VmClone>(
        &VmCloneRequest {
            source: db01,
            name: name.into(),
            linked: false,
            pool: None,
        },
        reply_to,
    )
}

/// An agent killed between a clone's disk copy and its definition: the
/// redelivered clone runs again as interrupted and is answered once with
/// the whole clone, one VM and one copy of its disk. (The test driver's
/// state dies with the process; what cleaning a half-made clone removes is
/// shown by the next test, which leaves the half-made disk in place.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_clone_makes_the_whole_clone_after_its_restart() {
    const REPLIES: &str = "faults.clone.replies";
    let clone = clone_command("db01-kill", REPLIES);
    let (node, _peer, mut events, mut agent) = slow_h1_running(REPLIES, &clone).await;
    let url = node.amqp_url();
    // Step 1 (pause, copy the disk) ends at about 1 s, step 2 (pause, define) at 2 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.kill().expect("SIGKILL");
    agent.restart().expect("restart on the same journal");
    next_online(&mut events, &agent).await;
    let ids = BTreeSet::from([clone.id.clone()]);
    let replies = collect_replies(&url, REPLIES, &ids, (30, 1), &agent).await;
    let r = &replies[&clone.id];
    assert_eq!(r.len(), 1, "one answer");
    let vm = vm_of(&r[0]);
    assert_eq!((vm.name.as_str(), vm.disks.len()), ("db01-kill", 1));
    assert!(
        agent
            .log_since_start(2)
            .contains("command was interrupted before it finished"),
        "the clone was not interrupted\n{}",
        agent.log_tail(40)
    );
    let mut peer = AmqpPeer::connect(&url).await.expect("peer");
    let vms = vm_names(&mut peer).await;
    let now: Vec<&VmRecord> = vms.iter().filter(|v| v.name == "db01-kill").collect();
    assert_eq!(now.len(), 1, "one clone");
    assert_eq!(now[0].uuid, vm.uuid, "the answer is the clone that stands");
    let volumes = volume_names(&mut peer).await;
    let copies: Vec<&String> = volumes
        .iter()
        .filter(|v| v.starts_with("db01-kill"))
        .collect();
    assert_eq!(copies, ["db01-kill-vda.qcow2"], "{volumes:?}");
}

/// A clone whose first run copied a disk and died before defining the VM
/// (its journal entry says started, its disk is there, the VM is not): the
/// redelivery removes that disk, then makes the clone, so one copy stands
/// and no half-made clone is left. Without the clean, the re-run would find
/// the disk's name taken and fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_clone_removes_the_disk_its_first_run_left_then_finishes() {
    let node = RabbitNode::start().expect("rabbit");
    let dir = hostbus_tests::TempDir::new("halfclone").expect("temp dir");
    let journal_path = dir.path().join("journal");
    let clone = clone_command("halfclone", names::DIRECT_REPLY_TO);
    {
        let j =
            hostbus_agent::journal::Journal::open(&journal_path, Duration::from_secs(3600), 1000)
                .expect("journal");
        j.start(&clone.id, VmClone::NAME).expect("clone entry");
    }
    let (mut peer, _online, agent, _) =
        spawn_online(AgentProcess::builder("h1", &node.amqp_url()).journal_path(&journal_path))
            .await;
    let leftover = ok::<VolumeClone>(
        &mut peer,
        "h1",
        &VolumeCloneRequest {
            pool: "default".into(),
            name: "db01.qcow2".into(),
            new_name: "halfclone-vda.qcow2".into(),
        },
    )
    .await;
    let r = peer
        .call(&host_key("h1"), &clone.props, &clone.body, T)
        .await
        .expect("reply");
    match decode::<Reply<VmRecord>>(ContentType::MsgPack, &r.body, 1 << 20).expect("decode") {
        Reply::Ok(vm) => assert_eq!((vm.name.as_str(), vm.disks.len()), ("halfclone", 1)),
        other => panic!("the interrupted vm.clone was not finished: {other:?}"),
    }
    assert!(
        agent
            .log_since_start(1)
            .contains("removed a volume left by an interrupted command"),
        "{}",
        agent.log_tail(40)
    );
    let vols = volume_names(&mut peer).await;
    assert_eq!(
        vols.iter().filter(|v| **v == leftover.name).count(),
        1,
        "{vols:?}"
    );
    let vms = vm_names(&mut peer).await;
    assert_eq!(vms.iter().filter(|v| v.name == "halfclone").count(), 1);
}
