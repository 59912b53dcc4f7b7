"""The harness of these tests, checked with raw pika (docs/protocol.md §12)
before the SDK is trusted with anything: the cluster answers, the logins
have their roles, h1's socket serves, heartbeats come at the announced
interval, and `ctl close-connections` closes exactly the connections it
names. Nothing here breaks the cluster (no agent killed, no broker stopped):
the SDK's tests that do so live in a file named to sort last.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

import msgpack
import pika
import pika.exceptions
import pytest

if TYPE_CHECKING:
    from conftest import Ctl


class HostbusError(Exception):
    def __init__(self, err: dict[str, Any]) -> None:
        super().__init__(f'{err["code"]}: {err["message"]}')
        self.code = err["code"]


def call(url: str, host: str, command: str, request: dict[str, Any], timeout_s: float = 15) -> Any:
    """Sends `command` to `host` as docs/protocol.md §12 does; its result."""
    params = pika.URLParameters(url)
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        replies: dict[str, bytes] = {}
        ch.basic_consume(
            "amq.rabbitmq.reply-to",
            lambda _ch, _m, props, body: replies.__setitem__(props.correlation_id, body),
            auto_ack=True,
        )
        cid = str(uuid.uuid4())
        now_ms = int(time.time() * 1000)
        ch.basic_publish(
            exchange="hostbus.cmd",
            routing_key="host." + host,
            body=msgpack.packb(request),
            properties=pika.BasicProperties(
                message_id=cid,
                correlation_id=cid,
                reply_to="amq.rabbitmq.reply-to",
                type=command,
                content_type="application/msgpack",
                timestamp=now_ms // 1000,
                expiration=str(int(timeout_s * 1000)),
                user_id=params.credentials.username,
                delivery_mode=2,
                headers={
                    "x-hostbus-version": "1.1",
                    "x-hostbus-deadline": now_ms + int(timeout_s * 1000),
                },
            ),
        )
        deadline = time.monotonic() + timeout_s
        while cid not in replies and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.2)
        if cid not in replies:
            raise TimeoutError(f"{host} did not answer {command} within {timeout_s} s")
        reply = msgpack.unpackb(replies[cid])
        if "error" in reply:
            raise HostbusError(reply["error"])
        return reply["ok"] if "ok" in reply else reply["task"]
    finally:
        conn.close()


def test_every_host_answers_a_ping_over_amqp(url: str, hosts: list[str]) -> None:
    assert hosts == ["h1", "h2", "h3"]
    for host in hosts:
        pong = call(url, host, "host.ping", {"echo": "harness"})
        assert (pong["host_id"], pong["echo"]) == (host, "harness")


def test_h1_has_the_quickstart_vms(url: str) -> None:
    names = {vm["name"] for vm in call(url, "h1", "vm.list", {})["vms"]}
    assert {"web01", "db01", "batch01"} <= names, names


def test_the_viewer_reads_and_may_not_operate(viewer_url: str) -> None:
    web01 = next(vm for vm in call(viewer_url, "h1", "vm.list", {})["vms"] if vm["name"] == "web01")
    with pytest.raises(HostbusError) as refused:
        call(viewer_url, "h1", "vm.start", {"uuid": web01["uuid"]})
    assert refused.value.code == "PERMISSION_DENIED"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=15)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(15)
        s.connect(self.path)
        self.sock = s


def test_h1_serves_http_on_its_socket_to_root_as_admin(socket_path: str) -> None:
    conn = _UnixHTTPConnection(socket_path)
    try:
        conn.request("GET", "/v1/heartbeat")
        r = conn.getresponse()
        assert r.status == 200, r.read()
        assert json.loads(r.read())["host_id"] == "h1"
        # An operation needs more than read-only: root is admin here.
        conn.request(
            "POST",
            "/v1/commands/host.ping",
            body=json.dumps({"echo": "socket"}),
            headers={"Content-Type": "application/json"},
        )
        r = conn.getresponse()
        assert r.status == 200, r.read()
        assert json.loads(r.read())["ok"]["echo"] == "socket"
    finally:
        conn.close()


def test_heartbeats_come_at_the_announced_interval(url: str, heartbeat_ms: int) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(queue, "hostbus.presence", "h1.heartbeat")
        seen: list[float] = []
        ch.basic_consume(queue, lambda *_: seen.append(time.monotonic()), auto_ack=True)
        deadline = time.monotonic() + 10 * heartbeat_ms / 1000
        while len(seen) < 3 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert len(seen) >= 3, f"{len(seen)} heartbeats in {10 * heartbeat_ms} ms"
        gap_ms = (seen[-1] - seen[0]) / (len(seen) - 1) * 1000
        assert 0.5 * heartbeat_ms < gap_ms < 2 * heartbeat_ms, gap_ms
    finally:
        conn.close()


def test_close_connections_closes_the_named_connection_only(url: str, ctl: Ctl) -> None:
    named = pika.URLParameters(url)
    named.client_properties = {"connection_name": "harness-probe"}
    probe = pika.BlockingConnection(named)
    other = pika.BlockingConnection(pika.URLParameters(url))
    try:
        assert ctl.close_connections("harness-probe") == 1
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                probe.process_data_events(time_limit=0.1)
        assert not probe.is_open
        other.process_data_events(time_limit=0.5)
        assert other.is_open, "a connection without the name stays open"
        assert ctl.close_connections("harness-probe") == 0, "it is gone"
    finally:
        for c in (probe, other):
            if c.is_open:
                c.close()
