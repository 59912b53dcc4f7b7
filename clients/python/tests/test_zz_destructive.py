"""What the harness does to the cluster, last (this file sorts last): a
host killed under a broadcast, and the broker stopped under the socket
transport. Nothing after this file may need h3 or a stable broker."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

import hostbus
from hostbus import types as t


def test_the_socket_serves_while_the_broker_is_down(url: str, socket_path: str, ctl: Any) -> None:
    local = hostbus.Connection(socket=socket_path, timeout=15)
    bus = hostbus.Connection(url=url, timeout=3)
    host = local.host()
    name = f"pydown-{uuid.uuid4().hex[:8]}"
    command_id = str(uuid.uuid4())
    ctl.broker_stop()
    try:
        started = time.monotonic()
        with pytest.raises(hostbus.ConnectionError):
            bus.host(host.host_id).ping()
        assert time.monotonic() - started < 10, "a bus call without a broker fails by its deadline"
        assert host.ping(echo="no broker").echo == "no broker"
        made = host.vms().define(t.VmSpec(name=name, memory_kib=65536, vcpus=1), command_id=command_id)
        assert host.vms().get(name).start().power_state is t.PowerState.RUNNING
        assert name in {v.name for v in host.vms().list()}
    finally:
        ctl.broker_start()
    # Once the broker is back, the same command id over the bus is answered
    # from the journal the socket's command was written to.
    with hostbus.Connection(url=url, timeout=30) as back:
        again = back.host(host.host_id).vms().define(t.VmSpec(name=name, memory_kib=65536, vcpus=1), command_id=command_id)
        assert again.uuid == made.uuid
        vm = back.host(host.host_id).vms().get(made.uuid)
        vm.destroy()
        vm.undefine()
    local.close()
    bus.close()


def test_a_broadcast_names_the_host_that_was_killed(url: str, hosts: list[str], ctl: Any, heartbeat_ms: int) -> None:
    victim = hosts[2]
    with hostbus.Connection(url=url, timeout=10) as conn:
        # Every agent answers (they reconnect by themselves after the
        # broker's restart above, each at its own pace).
        deadline = time.monotonic() + 60
        while True:
            before = conn.all().host_ping()
            if set(hosts) <= set(before.replies) and before.complete:
                break
            assert time.monotonic() < deadline, f"not every agent answers: {before}"
            time.sleep(0.5)
        ctl.kill_agent(victim)
        started = time.monotonic()
        after = conn.all().host_ping()
        took = time.monotonic() - started
        assert set(after.replies) >= set(hosts) - {victim}
        assert victim not in after.replies and victim in after.missing, after
        assert victim in after.expected
        # The broker says at once that the killed agent consumes nothing:
        # the broadcast does not wait for its deadline.
        assert took < 8, f"the broadcast took {took:.1f} s"
        # A group with only the dead host: nobody answers, it is missing.
        group = conn.group("rack-b").vm_list()
        assert group.replies == {} and group.missing == [victim]
        # Calls to it time out (its queue keeps the command) with a retry hint.
        with pytest.raises(hostbus.TimeoutError) as silent:
            conn.host(victim).ping(timeout=2)
        assert "command_id" in silent.value.params
        # The fleet view calls it gone once three heartbeats are missed.
        deadline = time.monotonic() + 3 * heartbeat_ms / 1000 + 10
        while True:
            views = {v.host_id: v for v in conn.hosts()}
            if views[victim].liveness.value == "gone":
                break
            assert time.monotonic() < deadline, f"{victim} is still {views[victim].liveness}"
            time.sleep(0.5)
        assert all(views[h].liveness.value == "alive" for h in hosts if h != victim)
