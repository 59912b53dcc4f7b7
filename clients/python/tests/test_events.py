"""Event subscriptions: over the broker's event stream (hostbus.events) and
over an agent's socket (server-sent events).

The first part needs no broker: the framing, the per-host resync rule, and
the subscription's offsets and reconnections against a scripted broker.
The second part runs against the cluster of the fixtures (conftest.py):
changes are made with raw pika calls (docs/protocol.md §12) on h1, and over
the socket on the host behind it, each on a VM of its own, defined and
removed by the test.
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from typing import Any, Callable, Iterator

import httpx
import msgpack
import pika
import pika.exceptions
import pytest
from _helpers import opener

import hostbus
from hostbus import types as t
from hostbus.errors import NotFoundError
from hostbus._sse import SocketSubscription, SseMessage, SseParser
from hostbus.events import (
    EventNotification,
    Notification,
    Resync,
    ResyncReason,
    Subscription,
    Tracker,
    check_pattern,
    stream_channel,
    topic_matches,
)

# --------------------------------------------------------------- helpers




def inventory_wire(epoch: str, seq: int) -> dict[str, Any]:
    host = {"host_id": "a", "hostname": "a", "uri": "test:///default", "hypervisor": "TEST",
            "hypervisor_version": "0", "libvirt_version": "0", "arch": "x86_64",
            "cpu_model": "i686", "cpus": 1, "cpu_mhz": 1, "sockets": 1, "cores": 1,
            "threads": 1, "memory_kib": 1, "generation": 1, "migration_uri": None}
    return {"taken_at": 5, "host": host, "vms": [], "snapshots": [], "pools": [],
            "volumes": [], "networks": [], "tasks": [], "epoch": epoch, "seq": seq}


def inventory(epoch: str, seq: int) -> t.Inventory:
    return t.Inventory.from_wire(inventory_wire(epoch, seq))


def ev(host: str, epoch: str, seq: int, cls: str = "vm", action: str = "changed",
       inventory: dict[str, Any] | None = None) -> dict[str, Any]:
    """An event's wire map."""
    return {"host_id": host, "epoch": epoch, "seq": seq, "time": 1, "class": cls,
            "action": action, "object_id": f"o{seq}", "generation": seq,
            "record": "none", "inventory": inventory, "migration": None}


def seq_of(n: Notification) -> tuple[str, int] | None:
    """A resync's inventory (epoch, seq)."""
    assert isinstance(n, Resync), n
    return None if n.inventory is None else (str(n.inventory.epoch), n.inventory.seq)


def stamp(n: Notification) -> tuple[str, str, int]:
    assert isinstance(n, EventNotification), n
    return (str(n.event.host_id), str(n.event.epoch), int(n.event.seq))


def offset_of(n: Notification) -> int:
    assert isinstance(n, EventNotification) and n.offset is not None, n
    return n.offset


def stamps(got: list[Notification]) -> list[tuple[int | None, tuple[str, str, int]]]:
    return [(n.offset, stamp(n)) for n in got if isinstance(n, EventNotification)]


def kind(n: Notification) -> str:
    if isinstance(n, Resync):
        return f"resync {n.host_id} {n.reason.value}"
    return f"{n.key} {n.event.seq}"


# --------------------------------------------------------------- no broker


def test_topic_patterns_match_like_rabbitmq() -> None:
    assert topic_matches("*.vm.*", "h1.vm.started")
    assert not topic_matches("*.vm.*", "h1.pool.started")
    assert topic_matches("h1.#", "h1.vm.started")
    assert topic_matches("#", "h1.agent.online")
    assert not topic_matches("h1.#", "h2.vm.started")
    assert topic_matches("h1.vm.#", "h1.vm")
    assert topic_matches("*.task.finished", "h3.task.finished")
    assert not topic_matches("h1.*", "h1.vm.started")
    assert topic_matches("#.started", "h1.vm.started")


def test_patterns_are_checked() -> None:
    check_pattern("*.vm.*")
    check_pattern("node-07.#")
    for bad in ("h1..x", "", "H1.#", "h1.vm.*x", "h 1.#"):
        with pytest.raises(ValueError):
            check_pattern(bad)
    with pytest.raises(TypeError):
        Subscription(lambda name: None, "h1.#")  # one string, not a list


def test_a_gap_or_a_new_epoch_resyncs_and_drops_what_the_inventory_reflects() -> None:
    snapshots: list[str] = []
    inventories = {"a": inventory("e2", 7)}

    def snapshot(host: str) -> t.Inventory:
        snapshots.append(host)
        return inventories[host]

    tr = Tracker(["a.vm.*"], snapshot)
    seen = [kind(n) for n in tr.event(ev("a", "e1", 4), "a.vm.changed", 10)]
    assert seen == ["a.vm.changed 4"], "the first event of a host starts its tracking"
    assert tr.event(ev("a", "e1", 4), "a.vm.changed", 11) == [], "a duplicate"
    assert [kind(n) for n in tr.event(ev("a", "e1", 5), "a.vm.changed", 12)] == ["a.vm.changed 5"]
    # Another class: not notified, still counted.
    assert tr.event(ev("a", "e1", 6, "pool"), "a.pool.changed", 13) == []
    assert [kind(n) for n in tr.event(ev("a", "e1", 7), "a.vm.changed", 14)] == ["a.vm.changed 7"]
    # A gap: 8 never came. The snapshot reflects up to 7 of e1: 9 is newer.
    inventories["a"] = inventory("e1", 7)
    out = tr.event(ev("a", "e1", 9), "a.vm.changed", 15)
    assert [kind(n) for n in out] == ["resync a gap", "a.vm.changed 9"]
    assert seq_of(out[0]) == ("e1", 7)
    # A gap the snapshot already covers: the event, and those up to its seq, are dropped.
    inventories["a"] = inventory("e1", 13)
    assert [kind(n) for n in tr.event(ev("a", "e1", 11), "a.vm.changed", 16)] == ["resync a gap"]
    assert tr.event(ev("a", "e1", 12), "a.vm.changed", 17) == []
    assert tr.event(ev("a", "e1", 13), "a.vm.changed", 18) == []
    assert [kind(n) for n in tr.event(ev("a", "e1", 14), "a.vm.changed", 19)] == ["a.vm.changed 14"]
    # A new epoch (the agent restarted).
    inventories["a"] = inventory("e2", 3)
    assert [kind(n) for n in tr.event(ev("a", "e2", 2), "a.vm.changed", 20)] == ["resync a new_epoch"]
    assert [kind(n) for n in tr.event(ev("a", "e2", 4), "a.vm.changed", 21)] == ["a.vm.changed 4"]
    # A host the patterns do not follow is tracked, never resynced.
    assert tr.event(ev("b", "x", 1), "b.vm.changed", 22) == []
    assert tr.event(ev("b", "x", 5), "b.vm.changed", 23) == []
    assert snapshots == ["a", "a", "a"]


def test_agent_online_carries_its_inventory_and_is_notified() -> None:
    tr = Tracker(["#"], None)
    out = tr.event(ev("a", "e1", 1, "agent", "online", inventory_wire("e1", 1)), "a.agent.online", 0)
    assert [kind(n) for n in out] == ["resync a agent_online", "a.agent.online 1"]
    assert seq_of(out[0]) == ("e1", 1)
    # A restart: the new epoch's online resyncs from its own inventory.
    out = tr.event(ev("a", "e2", 1, "agent", "online", inventory_wire("e2", 1)), "a.agent.online", 1)
    assert [kind(n) for n in out] == ["resync a new_epoch", "a.agent.online 1"]
    assert seq_of(out[0]) == ("e2", 1)


def test_a_failed_snapshot_is_reported_in_the_resync() -> None:
    def snapshot(host: str) -> t.Inventory:
        raise RuntimeError("HOST_UNAVAILABLE")

    tr = Tracker(["#"], snapshot)
    tr.event(ev("a", "e1", 1), None, None)
    out = tr.event(ev("a", "e1", 3), None, None)
    assert isinstance(out[0], Resync) and out[0].inventory is None
    assert isinstance(out[0].error, RuntimeError)
    assert [kind(n) for n in out] == ["resync a gap", "a.vm.changed 3"]


def test_hello_tells_what_was_missed_between_streams() -> None:
    tr = Tracker(["#"], lambda host: inventory("e1", 9))
    assert tr.hello("a", "e1", 4) == []
    assert [kind(n) for n in tr.event(ev("a", "e1", 5), None, None)] == ["a.vm.changed 5"]
    assert tr.hello("a", "e1", 5) == [], "nothing missed"
    assert [kind(n) for n in tr.hello("a", "e1", 8)] == ["resync a gap"]
    assert tr.event(ev("a", "e1", 9), None, None) == [], "reflected by the snapshot"
    assert [kind(n) for n in tr.event(ev("a", "e1", 10), None, None)] == ["a.vm.changed 10"]
    assert [kind(n) for n in tr.hello("a", "e3", 0)] == ["resync a new_epoch"]


def parse(*chunks: bytes) -> list[SseMessage]:
    p = SseParser()
    return [m for c in chunks for m in p.push(c)]


def test_sse_framing() -> None:
    stream = (b'event: hello\ndata: {"host_id":"h1","last_seq":41}\n\n'
              b": keep-alive\n\n"
              b'id: 42\nevent: vm.started\ndata: {"seq":42}\n\n')
    assert parse(stream) == [SseMessage("hello", '{"host_id":"h1","last_seq":41}'),
                             SseMessage("vm.started", '{"seq":42}')]
    split = b'event: vm.paused\r\ndata: {"seq":7}\r\n\r\nevent: x\rdata:y\r\r'
    for cut in range(len(split) + 1):
        assert parse(split[:cut], split[cut:]) == [
            SseMessage("vm.paused", '{"seq":7}'), SseMessage("x", "y")], cut
    assert parse(b"data: a\ndata:  b\ndata\n\nevent: lonely\n\ndata: c\n\n") == [
        SseMessage("message", "a\n b\n"), SseMessage("message", "c")]
    assert parse(b"event: x\ndata: y\n") == [], "not ended by an empty line"
    one_by_one = parse(*[bytes([b]) for b in stream])
    assert [m.event for m in one_by_one] == ["hello", "vm.started"]


# ---- a scripted broker: a stream of events, chunks of 10, connections that die


class FakeBroker:
    def __init__(self, events: list[dict[str, Any]], first: int = 0) -> None:
        # offset -> event; offsets below `first` are no longer kept.
        self.stream = {first + i: e for i, e in enumerate(events)}
        self.first = first
        self.kill_after: list[int] = []  # deliveries per connection before it dies
        self.acks = 0
        self.failing_acks: set[int] = set()  # the acks (counted from 1) that find the channel closed
        self.connections: list[FakeConn] = []
        self.names: set[str] = set()

    def append(self, e: dict[str, Any]) -> None:
        self.stream[max(self.stream, default=self.first - 1) + 1] = e

    def open(self, name: str) -> FakeConn:
        self.names.add(name)
        c = FakeConn(self, self.kill_after.pop(0) if self.kill_after else None)
        self.connections.append(c)
        return c


class FakeConn:
    def __init__(self, broker: FakeBroker, dies_after: int | None) -> None:
        self.broker = broker
        self.dies_after = dies_after
        self.is_open = True
        self.ch = FakeChannel(self)

    def channel(self) -> FakeChannel:
        return self.ch

    def close(self) -> None:
        self.is_open = False

    def process_data_events(self, time_limit: float | None = 0) -> None:
        if not self.is_open:
            raise pika.exceptions.ConnectionWrongStateError()
        ch = self.ch
        if ch.callback is None or ch.at is None:
            return
        for _ in range(7):  # a few frames per call
            if self.dies_after is not None and ch.delivered >= self.dies_after:
                self.is_open = False
                raise pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED")
            body = self.broker.stream.get(ch.at)
            if body is None:
                return
            ch.delivered += 1
            method = pika.spec.Basic.Deliver(delivery_tag=ch.delivered, exchange="hostbus.evt", routing_key=(
                f"{body['host_id']}.{body['class']}.{body['action']}"))
            props = pika.BasicProperties(content_type="application/msgpack",
                                         headers={"x-stream-offset": ch.at})
            ch.at += 1
            ch.callback(ch, method, props, msgpack.packb(body))


class FakeChannel:
    def __init__(self, conn: FakeConn) -> None:
        self.conn = conn
        self.callback: Callable[..., None] | None = None
        self.at: int | None = None
        self.delivered = 0
        self.acked: list[int] = []
        self.consumer_tags = ["ctag"]
        self.asked: Any = None

    @property
    def is_open(self) -> bool:
        return self.conn.is_open

    def basic_qos(self, prefetch_count: int) -> None:
        pass

    def basic_consume(self, queue: str, callback: Callable[..., None], auto_ack: bool,
                      arguments: dict[str, Any]) -> str:
        assert queue == "hostbus.events" and not auto_ack
        b = self.conn.broker
        offset = arguments["x-stream-offset"]
        self.asked = offset
        last = max(b.stream, default=b.first - 1)
        if offset == "first":
            self.at = b.first
        elif offset == "next":
            self.at = last + 1
        else:
            assert isinstance(offset, int)
            # Chunks of 10; what is no longer kept starts at the first kept.
            self.at = max(b.first, offset - offset % 10)
        self.callback = callback
        return "ctag"

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        b = self.conn.broker
        b.acks += 1
        if b.acks in b.failing_acks:
            self.conn.is_open = False
            raise pika.exceptions.ChannelWrongStateError("Channel is closed.")
        self.acked.append(delivery_tag)


def drain(sub: Subscription, n: int | None = None) -> list[Notification]:
    out: list[Notification] = []
    while n is None or len(out) < n:
        got = sub.next(timeout=0.5)
        if got is None:
            break
        out.append(got)
    return out


def test_reconnections_resume_after_the_last_event_read_nothing_missed_or_doubled() -> None:
    events = [ev("a" if i % 3 else "b", "e1", i // 3 + 1 if i % 3 == 0 else i - i // 3)
              for i in range(300)]
    broker = FakeBroker(events, first=0)
    # The connection dies after these many deliveries, again and again.
    broker.kill_after = [13, 1, 0, 29, 7, 64, 2, 2, 90]
    sub = Subscription(broker.open, ["#"], start="first", prefetch=8)
    got = drain(sub)
    offsets = [n.offset for n in got if isinstance(n, EventNotification)]
    assert offsets == list(range(300)), "every offset once, in order"
    assert not [n for n in got if isinstance(n, Resync)]
    assert sub.position == 299
    assert sub.reconnections == 9
    asked = [c.ch.asked for c in broker.connections]
    assert asked[0] == "first" and all(isinstance(a, int) for a in asked[1:])
    assert broker.names == {sub.name}
    assert sub.name == f"subscription {sub.id}"
    sub.close()


def test_an_ack_that_finds_the_connection_gone_loses_nothing() -> None:
    events = [ev("a", "e1", i + 1) for i in range(120)]
    broker = FakeBroker(events)
    # Reconnections mid-chunk make the broker resend the chunk's start,
    # skipped and acked inside pika's callback (prefetch 1: each acked).
    broker.kill_after = [15, 23, 37]
    broker.failing_acks = {3, 20, 21, 44, 90}
    with Subscription(broker.open, ["#"], start="first", prefetch=1) as sub:
        got = drain(sub)
    assert [n.offset for n in got] == list(range(120))
    assert sub.reconnections >= 5


def test_a_stored_offset_resumes_within_its_chunk() -> None:
    broker = FakeBroker([ev("a", "e1", i + 1) for i in range(40)], first=0)
    with Subscription(broker.open, ["a.#"], start=15) as sub:
        got = drain(sub)
        assert [n.offset for n in got] == list(range(15, 40))
        assert broker.connections[0].ch.delivered == 30, "the broker starts at the chunk (10)"
        assert sub.position == 39


def test_history_no_longer_kept_resyncs_every_host_followed() -> None:
    evs = [ev("a", "e1", i + 1) for i in range(20)] + [ev("b", "f", 1)]
    broker = FakeBroker(evs, first=100)  # offsets 100..120
    snap = {"a": inventory("e1", 4), "c": inventory("g", 2)}
    sub = Subscription(broker.open, ["a.#", "c.vm.*"], start=50, snapshot=lambda h: snap[h])
    got = drain(sub)
    assert [kind(n) for n in got[:2]] == ["resync a history_lost", "resync c history_lost"]
    assert all(isinstance(n, Resync) and n.inventory is snap[n.host_id] for n in got[:2])
    # a's events up to seq 4 are reflected by the snapshot.
    assert [stamp(n)[2] for n in got[2:]] == list(range(5, 21))
    assert got[2].offset == 104
    assert sub.position == 120, "b's event was read, filtered out"
    sub.close()


def test_filtered_events_advance_the_position_only_once_taken() -> None:
    broker = FakeBroker([ev("b", "e", 1), ev("a", "e", 1), ev("b", "e", 2), ev("b", "e", 3)])
    sub = Subscription(broker.open, ["a.#"], start="first")
    n = sub.next(1.0)
    assert isinstance(n, EventNotification) and n.offset == 1
    assert sub.position == 1
    assert sub.next(0.1) is None
    assert sub.position == 3
    broker.append(ev("a", "e", 2))
    n = sub.next(1.0)
    assert isinstance(n, EventNotification) and n.offset == 4
    sub.close()
    with pytest.raises(ValueError):
        sub.next(0)


def test_the_first_connection_fails_at_once() -> None:
    def refuse(name: str) -> Any:
        raise pika.exceptions.AMQPConnectionError("refused")

    with pytest.raises(pika.exceptions.AMQPConnectionError):
        Subscription(refuse, ["#"])
    for bad in ("last", -1, True, 1.5):
        with pytest.raises((ValueError, TypeError)):
            Subscription(FakeBroker([]).open, ["#"], start=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------- the cluster


class Bus:
    """Raw commands over pika (docs/protocol.md §12)."""

    def __init__(self, url: str) -> None:
        params = pika.URLParameters(url)
        params.client_properties = {"connection_name": "hostbus-python test caller"}
        self.user = params.credentials.username
        self.conn = pika.BlockingConnection(params)
        self.ch = self.conn.channel()
        self.replies: dict[str, bytes] = {}
        self.ch.basic_consume("amq.rabbitmq.reply-to", self._on_reply, auto_ack=True)

    def _on_reply(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        self.replies[props.correlation_id] = body

    def call(self, host: str, command: str, request: dict[str, Any], timeout: float = 30) -> Any:
        cid = str(uuid.uuid4())
        now_ms = int(time.time() * 1000)
        self.ch.basic_publish(
            exchange="hostbus.cmd", routing_key="host." + host, body=msgpack.packb(request),
            properties=pika.BasicProperties(
                message_id=cid, correlation_id=cid, reply_to="amq.rabbitmq.reply-to",
                type=command, content_type="application/msgpack", timestamp=now_ms // 1000,
                expiration=str(int(timeout * 1000)), user_id=self.user, delivery_mode=2,
                headers={"x-hostbus-version": "1.1",
                         "x-hostbus-deadline": now_ms + int(timeout * 1000)}))
        deadline = time.monotonic() + timeout
        while cid not in self.replies and time.monotonic() < deadline:
            self.conn.process_data_events(time_limit=0.1)
        reply = msgpack.unpackb(self.replies.pop(cid), raw=False)
        assert "ok" in reply, f"{command} on {host}: {reply}"
        return reply["ok"]

    def close(self) -> None:
        self.conn.close()


class Agent:
    """Raw commands over an agent's socket (docs/http.md)."""

    def __init__(self, path: str) -> None:
        self.http = httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url="http://agent")
        self.host_id = str(self.http.get("/v1/heartbeat").json()["host_id"])

    def call(self, host: str, command: str, request: dict[str, Any], timeout: float = 30) -> Any:
        assert host == self.host_id
        r = self.http.post(f"/v1/commands/{command}", json=request,
                           headers={"x-hostbus-command-id": str(uuid.uuid4())}, timeout=timeout)
        reply = r.json()
        assert "ok" in reply, f"{command}: {reply}"
        return reply["ok"]

    def close(self) -> None:
        self.http.close()


Caller = Callable[[str, str, dict[str, Any]], Any]


def vm_cycle(call: Caller, host: str, tag: str) -> str:
    """Defines, starts, stops and removes a VM of the test's own: four
    events at least (defined, started, stopped, undefined). Its uuid."""
    vm = call(host, "vm.define", {"spec": {"name": f"pyev-{tag}-{uuid.uuid4().hex[:8]}",
                                           "memory_kib": 65536, "vcpus": 1}})
    u = str(vm["uuid"])
    call(host, "vm.start", {"uuid": u})
    call(host, "vm.destroy", {"uuid": u})
    call(host, "vm.undefine", {"uuid": u})
    return u


def is_end(n: Notification, vm: str) -> bool:
    return (isinstance(n, EventNotification) and n.key.endswith(".vm.undefined")
            and str(n.event.object_id) == vm)


def read_until(sub: Any, vm: str, timeout: float = 30) -> list[Notification]:
    """Notifications up to the removal of VM ``vm``."""
    out: list[Notification] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no vm.undefined of {vm} within {timeout}s: {[kind(n) for n in out]}"
        n = sub.next(timeout=left)
        if n is None:
            continue
        out.append(n)
        if is_end(n, vm):
            return out


def vm_story(got: list[Notification], vm: str) -> list[str]:
    return [n.key.split(".", 1)[1] for n in got
            if isinstance(n, EventNotification) and str(n.event.object_id) == vm]


def assert_consecutive(got: list[Notification]) -> None:
    """Per host and epoch, sequence numbers 1 apart, and no resync."""
    last: dict[tuple[str, str], int] = {}
    for n in got:
        assert isinstance(n, EventNotification), f"no resync was needed: {n}"
        host, epoch, seq = stamp(n)
        if (host, epoch) in last:
            assert seq == last[(host, epoch)] + 1, f"{host} {epoch}: {last[(host, epoch)]} then {seq}"
        last[(host, epoch)] = seq


@pytest.fixture
def bus(url: str) -> Iterator[Bus]:
    b = Bus(url)
    yield b
    b.close()


def test_a_subscription_from_next_sees_a_vm_come_and_go_in_order(url: str, bus: Bus) -> None:
    with Subscription(opener(url), ["h1.#"]) as sub:
        vm = vm_cycle(bus.call, "h1", "next")
        got = read_until(sub, vm)
    story = vm_story(got, vm)
    assert story[0] == "vm.defined" and story[-1] == "vm.undefined"
    assert story.index("vm.started") < story.index("vm.stopped"), story
    assert_consecutive(got)
    assert all(n.key.startswith("h1.") for n in got if isinstance(n, EventNotification))
    offsets = [offset_of(n) for n in got]
    assert offsets == sorted(set(offsets))


def test_a_stream_consumer_cancelled_with_deliveries_in_flight_keeps_its_connection(url: str) -> None:
    """pika rejects what a cancelled consumer had in flight, and a stream
    answers a reject by closing the connection: on a plain channel this
    cancel lost the connection (a fleet view failed that way). On a
    ``stream_channel`` the connection goes on."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        for stream in ("hostbus.presence.beats", "hostbus.events"):
            ch = stream_channel(conn)
            ch.basic_qos(prefetch_count=100)
            tag = ch.basic_consume(stream, lambda *_: None, auto_ack=False,
                                   arguments={"x-stream-offset": "first"})
            ch.basic_cancel(tag)
            ch.queue_declare(stream, passive=True)
            conn.process_data_events(time_limit=0.3)
            assert conn.is_open and ch.is_open, stream
    finally:
        if conn.is_open:
            conn.close()


def test_an_event_put_into_the_stream_directly_is_skipped(url: str, bus: Bus) -> None:
    """The default exchange reaches the event stream too, and every host may
    write to it (its replies go through it): an event put there directly,
    claiming to be h1's, did not pass the topic permission of h1's key. The
    subscription skips it (logged) and goes on with h1's real events."""
    forged_vm = str(uuid.uuid4())
    forged = dict(ev("h1", str(uuid.uuid4()), 1, "vm", "started"), object_id=forged_vm)
    with Subscription(opener(url), ["h1.#"]) as sub:
        bus.ch.basic_publish(exchange="", routing_key="hostbus.events", body=msgpack.packb(forged),
                             properties=pika.BasicProperties(content_type="application/msgpack"))
        vm = vm_cycle(bus.call, "h1", "forged")
        got = read_until(sub, vm)
    assert not any(isinstance(n, EventNotification) and str(n.event.object_id) == forged_vm
                   for n in got), [kind(n) for n in got]
    assert vm_story(got, vm)[0] == "vm.defined"
    assert_consecutive(got)


def test_a_killed_connection_resumes_with_nothing_missed_or_doubled(
        url: str, bus: Bus, ctl: Any) -> None:
    sub = Subscription(opener(url), ["h1.#"], prefetch=2)
    try:
        got: list[Notification] = []
        # Before: a VM comes and goes, read to its end.
        before = vm_cycle(bus.call, "h1", "before")
        got += read_until(sub, before)
        started = time.monotonic()
        # During: the connection dies, then events are published while no
        # connection reads them.
        assert ctl.close_connections(sub.name) >= 1
        during = vm_cycle(bus.call, "h1", "during")
        # Killed again while reading (prefetch 2: most of them still at the broker).
        n = sub.next(timeout=30)
        assert n is not None
        got.append(n)
        assert ctl.close_connections(sub.name) >= 1
        got += read_until(sub, during)
        resumed_in = time.monotonic() - started
        # After.
        after = vm_cycle(bus.call, "h1", "after")
        got += read_until(sub, after)
        assert sub.reconnections >= 2
        position = sub.position
    finally:
        sub.close()
    assert_consecutive(got)
    offsets = [offset_of(n) for n in got]
    assert len(offsets) == len(set(offsets)), "nothing twice"
    assert offsets == sorted(offsets)
    assert position == offsets[-1]
    for vm in (before, during, after):
        story = vm_story(got, vm)
        assert story[0] == "vm.defined" and story[-1] == "vm.undefined", story
    # The same stretch read by a subscription nobody disturbed: the same events.
    with Subscription(opener(url), ["h1.#"], start=offsets[0]) as ref:
        expected = read_until(ref, after)
    assert [(n.offset, stamp(n)) for n in expected] == [(n.offset, stamp(n)) for n in got]
    assert resumed_in < 20


class Cutter:
    """A TCP relay to the broker whose connections can be cut (no AMQP
    goodbye: the client sees its stream lost) and that can refuse new
    ones for a while (the broker unreachable)."""

    def __init__(self, url: str) -> None:
        u = urllib.parse.urlsplit(url)
        self.upstream = (u.hostname or "127.0.0.1", u.port or (5671 if u.scheme == "amqps" else 5672))
        self.listener = socket.create_server(("127.0.0.1", 0))
        port = self.listener.getsockname()[1]
        self.url = urllib.parse.urlunsplit(u._replace(netloc=f"{u.netloc.rpartition('@')[0]}@127.0.0.1:{port}"))
        self.refuse_until = 0.0
        self.socks: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self.refuse_until:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.socks += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self, refuse_for: float = 0.0) -> None:
        self.refuse_until = time.monotonic() + refuse_for
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


def test_a_lost_tcp_stream_and_an_unreachable_broker_lose_nothing(url: str, bus: Bus) -> None:
    cutter = Cutter(url)
    try:
        sub = Subscription(opener(cutter.url), ["h1.#"], prefetch=3)
        with sub:
            got: list[Notification] = []
            first = vm_cycle(bus.call, "h1", "cut1")
            n = sub.next(timeout=30)
            assert n is not None
            got.append(n)
            # The stream is lost mid-read and the broker stays unreachable
            # for a second and a half: several attempts, backing off.
            cutter.cut(refuse_for=1.5)
            cut_at = time.monotonic()
            second = vm_cycle(bus.call, "h1", "cut2")
            got += read_until(sub, first)
            got += read_until(sub, second)
            assert time.monotonic() - cut_at >= 1.5
            assert sub.reconnections >= 1
    finally:
        cutter.close()
    assert_consecutive(got)
    offsets = [offset_of(n) for n in got]
    assert offsets == sorted(set(offsets)), "nothing missed twice or out of order"
    with Subscription(opener(url), ["h1.#"], start=offsets[0]) as ref:
        expected = read_until(ref, second)
    assert [(n.offset, stamp(n)) for n in expected] == [(n.offset, stamp(n)) for n in got]


def test_a_stored_offset_resumes_with_exactly_the_events_after_it(url: str, bus: Bus) -> None:
    with Subscription(opener(url), ["#"]) as sub:
        first = vm_cycle(bus.call, "h1", "stored")
        read_until(sub, first)
        stored = sub.position
        assert stored is not None
        second = vm_cycle(bus.call, "h1", "later")
        after = read_until(sub, second)
    with Subscription(opener(url), ["#"], start=stored + 1) as resumed:
        again = read_until(resumed, second)
    assert stamps(again)[0][0] == stored + 1, "every event matches `#`: the next offset comes first"
    # Other hosts' restarts would show as resyncs, differently in each: compare the events.
    assert stamps(again) == stamps(after)
    assert vm_story(again, second)[0] == "vm.defined"
    assert not vm_story(again, first), "nothing at or before the stored offset"


def test_a_subscription_from_a_time_replays_what_was_published_since(url: str, bus: Bus) -> None:
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    vm = vm_cycle(bus.call, "h1", "time")
    with Subscription(opener(url), ["*.vm.*"], start=since) as sub:
        got = read_until(sub, vm)
    story = vm_story(got, vm)
    assert story[0] == "vm.defined" and story[-1] == "vm.undefined"
    assert all(".vm." in n.key for n in got if isinstance(n, EventNotification))


def test_a_subscription_over_the_socket_sees_the_hosts_events(socket_path: str) -> None:
    agent = Agent(socket_path)
    try:
        with pytest.raises(ValueError):
            SocketSubscription(socket_path, ["#"], start="first")
        with SocketSubscription(socket_path, [f"{agent.host_id}.#"]) as sub:
            assert sub.position is None
            time.sleep(0.2)
            vm = vm_cycle(agent.call, agent.host_id, "socket")
            got = read_until(sub, vm)
    finally:
        agent.close()
    story = vm_story(got, vm)
    assert story[0] == "vm.defined" and story[-1] == "vm.undefined"
    assert story.index("vm.started") < story.index("vm.stopped"), story
    assert_consecutive(got)
    assert {stamp(n)[0] for n in got} == {agent.host_id}
    assert all(n.offset is None for n in got if isinstance(n, EventNotification))
    assert Counter(type(n) for n in got)[Resync] == 0
    _ = ResyncReason  # re-exported for callers


def test_a_missing_stream_is_not_found_and_a_plain_opener_will_do() -> None:
    class NoStream(FakeChannel):
        def basic_consume(self, queue: str, callback: Callable[..., None], auto_ack: bool,
                          arguments: dict[str, Any]) -> str:
            self.conn.is_open = False
            raise pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND - no queue 'hostbus.events'")

    broker = FakeBroker([ev("a", "e", 1)])

    def no_stream() -> FakeConn:  # takes no role: its connections are named its own way
        conn = broker.open("unnamed")
        conn.ch = NoStream(conn)
        return conn

    with pytest.raises(NotFoundError, match="hostctl admin setup"):
        Subscription(no_stream, ["#"])
    assert not broker.connections[-1].is_open
    with Subscription(lambda: broker.open("plain"), ["#"], start="first") as sub:
        n = sub.next(1.0)
        assert isinstance(n, EventNotification) and n.offset == 0
    assert broker.names == {"unnamed", "plain"}


def test_the_connections_subscriptions(url: str, socket_path: str, bus: Bus) -> None:
    with hostbus.Connection(url=url) as conn:
        with conn.events(["h1.vm.*"]) as sub:
            vm = vm_cycle(bus.call, "h1", "conn")
            got = read_until(sub, vm)
    story = vm_story(got, vm)
    assert story[0] == "vm.defined" and story[-1] == "vm.undefined"
    assert all(isinstance(n, EventNotification) and ".vm." in n.key for n in got)
    with hostbus.Connection(socket=socket_path) as local:
        agent = Agent(socket_path)
        try:
            with local.events() as sub:
                vm = vm_cycle(agent.call, agent.host_id, "conn-socket")
                got = read_until(sub, vm)
        finally:
            agent.close()
    assert vm_story(got, vm)[0] == "vm.defined"
    assert_consecutive(got)
