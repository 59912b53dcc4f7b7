"""The fleet view (docs/protocol.md §10.2 to §10.4).

The first part needs no broker: how announcements, heartbeats and the
broker's answers make a host alive, stale or gone. The second part reads
the cluster of the fixtures (conftest.py): h1 (rack-a, gpu), h2 (rack-a)
and h3 (rack-b), alive.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import msgpack
import pika
import pika.frame
import pika.spec
import pytest
from _helpers import opener

import hostbus
import hostbus.presence as presence
from hostbus import types as t
from hostbus.presence import (
    HostView,
    Liveness,
    expected,
    fleet_view,
    local_view,
    probe,
    still_consuming,
)

# --------------------------------------------------------------- helpers




def beat(host: str, epoch: str, time_ms: int, interval_ms: int = 5000, **extra: Any) -> t.Heartbeat:
    hb: dict[str, Any] = {
        "host_id": host, "epoch": epoch, "last_seq": 1, "time": time_ms, "started_at": 1,
        "interval_ms": interval_ms,
        "versions": {"agent": "0.1.0", "protocol": "1.1", "libvirt": "", "hypervisor": ""},
        "capabilities": [], "labels": ["gpu"],
        "health": {"status": "ok", "hypervisor_connected": True, "message": ""},
        "load": {"in_flight": 0, "commands_total": 0, "tasks_running": 0, "vms_active": 0,
                 "load_avg_milli": 0, "memory_free_kib": 0},
        "facts": {}, "placement": {"enabled": True, "reason": ""},
    }
    hb.update(extra)
    return t.Heartbeat.from_wire(hb)


def announcement(host: str, action: str, epoch: str | None, time_ms: int,
                 **extra: Any) -> t.Announcement:
    a: dict[str, Any] = {
        "host_id": host, "action": action, "epoch": epoch, "time": time_ms, "started_at": time_ms,
        "interval_ms": 5000, "labels": ["gpu"], "versions": None, "capabilities": [],
        "by": None, "migration_uri": None,
    }
    a.update(extra)
    return t.Announcement.from_wire(a)


def views(state: Any, now: int, lookback: int = 17_000) -> dict[str, HostView]:
    return {h: state.view(e, now, lookback) for h, e in state.hosts.items()}


# --------------------------------------------------------------- no broker


def test_liveness_follows_the_last_beat_the_broker_and_goodbyes() -> None:
    now = 1_000_000
    s = presence._State()  # noqa: SLF001
    s.announce(announcement("alive", "online", "e1", now - 100_000))
    s.beat(beat("alive", "e1", now - 4_000))
    s.beat(beat("late", "e2", now - 20_000))
    s.beat(beat("hung", "e2", now - 40_000))
    s.beat(beat("dead", "e2", now - 20_000))
    s.announce(announcement("old", "online", "e1", now - 500_000))
    s.announce(announcement("left", "online", "e2", now - 9_000))
    s.announce(announcement("left", "offline", "e2", now - 8_000))
    # What the broker says of the ones asked about.
    s.hosts["hung"].connected = True
    s.hosts["dead"].connected = False
    v = views(s, now)
    assert v["alive"].liveness == Liveness.ALIVE
    assert v["alive"].last_seen_ms == 4_000
    assert v["alive"].announced_at == now - 100_000
    assert v["late"].liveness == Liveness.STALE, "not asked: by age"
    assert v["hung"].liveness == Liveness.STALE, "connected, silent"
    assert v["dead"].liveness == Liveness.GONE, "not connected"
    assert v["old"].liveness == Liveness.GONE
    assert v["old"].last_seen_ms is None, "older than the windows read"
    assert v["old"].heartbeat is None and v["old"].health.status == t.HealthStatus.DOWN
    assert v["old"].placement.enabled and v["old"].load.vms_active == 0
    assert v["left"].liveness == Liveness.GONE
    # A beat makes a host alive again, whatever the broker said.
    s.beat(beat("dead", "e2", now))
    assert views(s, now)["dead"].liveness == Liveness.ALIVE


def test_a_forgotten_host_leaves_until_it_announces_itself_again() -> None:
    s = presence._State()  # noqa: SLF001
    s.announce(announcement("h", "online", "e", 100))
    s.announce(announcement("h", "forget", None, 200, by="admin"))
    assert not s.hosts
    s.beat(beat("h", "e", 150))
    assert not s.hosts, "its old heartbeats, read after the roster, do not bring it back"
    s.announce(announcement("h", "online", "e2", 300))
    assert list(s.hosts) == ["h"]


def test_placement_is_the_last_beats_and_the_migration_uri_the_last_online_announcements() -> None:
    s = presence._State()  # noqa: SLF001
    s.announce(announcement("h", "online", "e", 100, migration_uri="qemu+tls://h.example/system",
                            capabilities=["host.ping", "vm.start"]))
    s.beat(beat("h", "e", 200, placement={"enabled": False, "reason": "evacuating"}))
    v = views(s, 300)["h"]
    assert v.migration_uri == "qemu+tls://h.example/system"
    assert v.capabilities == ["host.ping", "vm.start"]
    assert v.placement.enabled is False and v.placement.reason == "evacuating"
    assert v.heartbeat is not None and v.heartbeat.host_id == "h"
    s.beat(beat("h", "e", 400))
    assert views(s, 500)["h"].placement.enabled is True


def test_a_new_epoch_replaces_a_goodbye() -> None:
    s = presence._State()  # noqa: SLF001
    s.announce(announcement("h", "offline", "e1", 100))
    s.beat(beat("h", "e1", 90))
    assert s.hosts["h"].offline, "a late beat of the old epoch"
    s.beat(beat("h", "e2", 200))
    assert not s.hosts["h"].offline
    assert s.hosts["h"].epoch == "e2"


def hv(host: str, liveness: Liveness, labels: list[str]) -> HostView:
    return dataclasses.replace(local_view(beat(host, "e", 1, labels=labels)), liveness=liveness)


def test_the_local_view_is_the_agents_heartbeat() -> None:
    now = int(time.time() * 1000)
    v = local_view(beat("h9", "e9", now - 1500, interval_ms=1000, labels=["rack-z"], last_seq=7))
    assert (v.host_id, v.liveness, v.labels, v.epoch) == ("h9", Liveness.ALIVE, ["rack-z"], "e9")
    assert v.last_seen_ms is not None and 1500 <= v.last_seen_ms < 60_000
    assert v.last_seq == 7 and v.interval_ms == 1000 and v.heartbeat is not None


def test_expected_splits_the_hosts_a_target_reaches_by_liveness() -> None:
    vs = [hv("h3", Liveness.ALIVE, ["rack-b"]), hv("h1", Liveness.ALIVE, ["rack-a", "gpu"]),
          hv("h2", Liveness.STALE, ["rack-a"]), hv("h4", Liveness.GONE, ["gpu"])]
    assert expected(vs, "all") == (["h1", "h3"], ["h2", "h4"])
    assert expected(vs, "group.rack-a") == (["h1"], ["h2"])
    assert expected(vs, "group.gpu") == (["h1"], ["h4"])
    assert expected(vs, "host.h4") == ([], ["h4"])
    assert expected(vs, "group.none") == ([], [])
    for bad in ("h1", "group.", "host.", "everything"):
        with pytest.raises(ValueError):
            expected(vs, bad)


# --------------------------------------------------------------- the cluster


def test_a_fresh_process_sees_every_host_alive_at_once(
        viewer_url: str, hosts: list[str], heartbeat_ms: int) -> None:
    package = Path(presence.__file__).resolve().parent.parent
    script = (
        "import json, sys, time\n"
        "t = time.monotonic()\n"
        "import pika\n"
        "from hostbus.presence import fleet_view\n"
        "def open_connection():\n"
        "    p = pika.URLParameters(sys.argv[1])\n"
        "    return pika.BlockingConnection(p)\n"
        "v = fleet_view(open_connection)\n"
        "print(json.dumps({'took': time.monotonic() - t, 'hosts': [\n"
        "    {'host_id': h.host_id, 'liveness': h.liveness.value, 'labels': h.labels,\n"
        "     'last_seen_ms': h.last_seen_ms, 'epoch': h.epoch, 'interval_ms': h.interval_ms,\n"
        "     'health': h.health.status.value, 'agent': h.versions.agent} for h in v]}))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(package), *filter(None, [os.environ.get("PYTHONPATH")])]))
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script, viewer_url], env=env, check=True,
                         capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    result = json.loads(out.stdout)
    seen = {h["host_id"]: h for h in result["hosts"]}
    labels = {"h1": ["rack-a", "gpu"], "h2": ["rack-a"], "h3": ["rack-b"]}
    for host in hosts:
        h = seen[host]
        assert h["liveness"] == "alive", h
        assert sorted(h["labels"]) == sorted(labels[host]), h
        assert h["last_seen_ms"] is not None and 0 <= h["last_seen_ms"] <= 3 * heartbeat_ms, h
        assert h["interval_ms"] == heartbeat_ms and h["epoch"], h
        assert h["health"] == "ok" and h["agent"], h
    ids = [h["host_id"] for h in result["hosts"]]
    assert ids == sorted(ids)
    assert result["took"] < 3.0, result["took"]
    assert elapsed < 5.0, elapsed


def test_expected_of_the_cluster(url: str, hosts: list[str]) -> None:
    views = fleet_view(opener(url))
    mine = [v for v in views if v.host_id in hosts]
    alive, not_alive = expected(mine, "group.rack-a")
    assert (alive, not_alive) == (["h1", "h2"], [])
    assert expected(mine, "group.rack-b") == (["h3"], [])
    assert expected(mine, "group.gpu") == (["h1"], [])
    assert expected(mine, "host.h2") == (["h2"], [])
    assert expected(mine, "all") == (sorted(hosts), [])
    alive, not_alive = expected(views, "group.rack-a")
    assert {"h1", "h2"} <= set(alive) and "h3" not in alive + not_alive


def test_still_consuming_asks_the_broker(url: str, hosts: list[str]) -> None:
    ghost = "pyev-no-such-host"
    assert still_consuming(opener(url), [*hosts, ghost]) == set(hosts)
    assert still_consuming(opener(url), []) == set()
    conn = opener(url)("presence test")
    try:
        # A missing queue closes its channel: the next host is asked on another.
        answers = probe(conn, [ghost, hosts[0], ghost, hosts[1]])
        assert answers == {ghost: False, hosts[0]: True, hosts[1]: True}
        assert conn.is_open
    finally:
        conn.close()



def test_the_connections_fleet_view(url: str, socket_path: str, hosts: list[str]) -> None:
    with hostbus.Connection(url=url) as conn:
        views = {v.host_id: v for v in conn.hosts()}
    assert all(views[h].liveness == Liveness.ALIVE for h in hosts)
    with hostbus.Connection(socket=socket_path) as local:
        (one,) = local.hosts()
    assert one.liveness == Liveness.ALIVE and one.heartbeat is not None
    assert one.last_seen_ms is not None and one.last_seen_ms < 60_000


# ---- a scripted broker for §10.4's steps


class FakeFleet:
    """The two presence streams, the agents' command queues, and what the view asked."""

    def __init__(self) -> None:
        self.roster: list[tuple[str, Any, bytes, int]] = []  # key, props, body, time ms
        self.beats: list[tuple[str, Any, bytes, int]] = []
        self.consumers: dict[str, int] = {}  # host -> consumers of its queue (absent: no queue)
        self.reads: list[tuple[str, Any]] = []
        self.declared: list[str] = []
        self.channels = 0
        self.open = True

    def announce(self, a: dict[str, Any]) -> None:
        self.roster.append((f"{a['host_id']}.{a['action']}", pika.BasicProperties(
            content_type="application/msgpack", type="announcement"), msgpack.packb(a), a["time"]))

    def beat(self, hb: dict[str, Any]) -> None:
        self.beats.append((f"{hb['host_id']}.heartbeat", pika.BasicProperties(
            content_type="application/json", type="heartbeat"), json.dumps(hb).encode(), hb["time"]))

    def marker(self, key: str) -> None:
        for stream in (self.roster, self.beats):
            stream.append((key, pika.BasicProperties(type="sync"), b"", now_ms()))

    # the connection
    def channel(self) -> FakeFleetChannel:
        self.channels += 1
        return FakeFleetChannel(self)

    def process_data_events(self, time_limit: float | None = 0) -> None:
        for ch in list(FakeFleetChannel.live):
            ch.pump()

    @property
    def is_open(self) -> bool:
        return self.open

    def close(self) -> None:
        self.open = False


class FakeFleetChannel:
    live: list[FakeFleetChannel] = []

    def __init__(self, fleet: FakeFleet) -> None:
        self.fleet = fleet
        self.is_open = True
        self.cursors: dict[str, tuple[list[tuple[str, Any, bytes, int]], int, Callable[..., None]]] = {}
        FakeFleetChannel.live.append(self)

    def basic_qos(self, prefetch_count: int) -> None:
        pass

    def confirm_delivery(self) -> None:
        pass

    def basic_publish(self, exchange: str, routing_key: str, body: bytes, properties: Any) -> None:
        assert exchange == "hostbus.presence" and routing_key.startswith("_sync.") and body == b""
        assert properties.type == "sync"
        self.fleet.marker(routing_key)

    def basic_consume(self, queue: str, callback: Callable[..., None], auto_ack: bool,
                      arguments: dict[str, Any]) -> str:
        offset = arguments["x-stream-offset"]
        self.fleet.reads.append((queue, offset))
        stream = self.fleet.roster if queue == "hostbus.presence.roster" else self.fleet.beats
        if offset == "first":
            at = 0
        else:
            assert isinstance(offset, dt.datetime) and offset.tzinfo is not None
            since = int(offset.timestamp()) * 1000
            at = next((i for i, m in enumerate(stream) if m[3] >= since), len(stream))
        tag = f"c{len(self.fleet.reads)}"
        self.cursors[tag] = (stream, at, callback)
        return tag

    def basic_cancel(self, tag: str) -> None:
        del self.cursors[tag]

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        pass

    def pump(self) -> None:
        for tag, (stream, at, cb) in list(self.cursors.items()):
            if at < len(stream) and tag in self.cursors:
                key, props, body, _ = stream[at]
                self.cursors[tag] = (stream, at + 1, cb)
                # What was put into a stream through the default exchange
                # carries the stream's name as its routing key.
                exchange = "" if key.startswith("hostbus.") else "hostbus.presence"
                cb(self, pika.spec.Basic.Deliver(delivery_tag=at + 1, exchange=exchange, routing_key=key),
                   props, body)

    def queue_declare(self, queue: str, passive: bool = False) -> Any:
        assert passive
        host = queue.removeprefix("hostbus.agent.")
        self.fleet.declared.append(host)
        if host not in self.fleet.consumers:
            self.is_open = False
            raise pika.exceptions.ChannelClosedByBroker(404, f"NOT_FOUND - no queue '{queue}'")
        return pika.frame.Method(1, pika.spec.Queue.DeclareOk(queue, 0, self.fleet.consumers[host]))

    def close(self) -> None:
        self.is_open = False


def now_ms() -> int:
    return int(time.time() * 1000)


def wire_beat(host: str, epoch: str, ago_ms: int, interval_ms: int = 5000) -> dict[str, Any]:
    return beat(host, epoch, now_ms() - ago_ms, interval_ms).to_wire()


def wire_announcement(host: str, action: str, epoch: str | None, ago_ms: int,
                      interval_ms: int = 5000) -> dict[str, Any]:
    return announcement(host, action, epoch, now_ms() - ago_ms, interval_ms=interval_ms).to_wire()


def test_the_view_asks_the_broker_and_reads_further_back_only_when_needed() -> None:
    fleet = FakeFleet()
    for h in ("up", "late", "hung", "dead", "left"):
        fleet.announce(wire_announcement(h, "online", "e", 600_000))
    fleet.announce(wire_announcement("left", "offline", "e", 20_000))
    fleet.beat(wire_beat("hung", "e", 40_000))
    fleet.marker("_sync.someone-elses")
    fleet.beat(wire_beat("late", "e", 10_000))
    fleet.beat(wire_beat("dead", "e", 9_000))
    fleet.beat(wire_beat("up", "e", 1_000))
    fleet.consumers = {"up": 1, "late": 1, "hung": 1, "left": 0}
    views = {v.host_id: v for v in fleet_view(lambda: fleet)}
    assert [(q, o if isinstance(o, str) else "time") for q, o in fleet.reads] == [
        ("hostbus.presence.roster", "first"), ("hostbus.presence.beats", "time"),
        ("hostbus.presence.beats", "time")], "one interval, then three as some are connected"
    first_window = now_ms() - int(fleet.reads[1][1].timestamp() * 1000)
    second_window = now_ms() - int(fleet.reads[2][1].timestamp() * 1000)
    assert 8_000 <= first_window < 10_000 and 17_000 <= second_window < 19_000
    assert sorted(fleet.declared) == ["dead", "hung", "late"], "the silent hosts, not the offline one"
    assert views["up"].liveness == Liveness.ALIVE and views["up"].connected is None
    assert views["late"].liveness == Liveness.ALIVE, "connected, a beat missed"
    assert views["late"].last_seen_ms is not None and views["late"].connected is True
    assert views["hung"].liveness == Liveness.STALE and views["hung"].last_seen_ms is None
    assert views["dead"].liveness == Liveness.GONE and views["dead"].connected is False
    assert views["left"].liveness == Liveness.GONE
    assert not fleet.open, "the view closes its connection"


def test_what_was_put_into_the_presence_streams_directly_is_skipped() -> None:
    """The default exchange reaches the presence streams too, and every host
    may write to it: a goodbye or a heartbeat put there directly claims a
    host the broker's topic permissions did not check it for. The view
    skips both: the host said goodbye to is alive, the one beaten for gone."""
    fleet = FakeFleet()
    fleet.announce(wire_announcement("up", "online", "e", 60_000))
    fleet.announce(wire_announcement("ghost", "online", "e", 60_000))
    fleet.beat(wire_beat("up", "e", 1_000))
    bye = wire_announcement("up", "offline", "e", 500)
    fleet.roster.append(("hostbus.presence.roster", pika.BasicProperties(
        content_type="application/msgpack", type="announcement"), msgpack.packb(bye), bye["time"]))
    beat_ = wire_beat("ghost", "e", 500)
    fleet.beats.append(("hostbus.presence.beats", pika.BasicProperties(
        content_type="application/json", type="heartbeat"), json.dumps(beat_).encode(), beat_["time"]))
    fleet.consumers = {"up": 1, "ghost": 0}
    views = {v.host_id: v for v in fleet_view(lambda: fleet)}
    assert views["up"].liveness == Liveness.ALIVE
    assert views["ghost"].liveness == Liveness.GONE


def test_the_view_reads_no_further_when_no_silent_host_is_connected() -> None:
    fleet = FakeFleet()
    fleet.announce(wire_announcement("up", "online", "e", 60_000, interval_ms=1000))
    fleet.announce(wire_announcement("dead", "online", "e", 60_000, interval_ms=1000))
    fleet.beat(wire_beat("up", "e", 500, interval_ms=1000))
    fleet.consumers = {"up": 1, "dead": 0}
    views = {v.host_id: v for v in fleet_view(lambda: fleet)}
    assert [q for q, _ in fleet.reads] == ["hostbus.presence.roster", "hostbus.presence.beats"]
    assert fleet.declared == ["dead"]
    assert (views["up"].liveness, views["dead"].liveness) == (Liveness.ALIVE, Liveness.GONE)


def test_a_slow_beating_host_lengthens_the_first_window() -> None:
    fleet = FakeFleet()
    fleet.announce(wire_announcement("slow", "online", "e", 60_000, interval_ms=30_000))
    fleet.beat(wire_beat("slow", "e", 20_000, interval_ms=30_000))
    fleet.consumers = {"slow": 1}
    views = fleet_view(lambda: fleet)
    windows = [now_ms() - int(o.timestamp() * 1000) for q, o in fleet.reads if q.endswith("beats")]
    assert len(windows) == 2 and 33_000 <= windows[1] < 35_000, windows
    assert fleet.declared == [], "heard from within its interval"
    assert views[0].liveness == Liveness.ALIVE and views[0].last_seen_ms is not None
