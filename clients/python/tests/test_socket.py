"""The HTTP transport over an agent's Unix socket: the same services,
records and errors as over the bus, and one command id whatever binding
carries it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import hostbus
from hostbus import types as t


@pytest.fixture(scope="module")
def local(socket_path: str) -> Iterator[hostbus.Connection]:
    with hostbus.Connection(socket=socket_path, timeout=15) as c:
        yield c


def test_the_socket_serves_its_host_with_the_same_services(local: hostbus.Connection) -> None:
    host = local.host()
    assert host.ping(echo="over http").echo == "over http"
    assert host.info().host_id == host.host_id
    names = {v.name for v in host.vms().list()}
    assert names, "the socket's host has VMs"
    running = host.vms().list(power_state=t.PowerState.RUNNING)
    with pytest.raises(hostbus.BadPowerStateError) as e:
        host.vms().get(running[0].name).start()
    assert e.value.params["current"] == "running" and e.value.host == host.host_id
    with pytest.raises(hostbus.NoRouteError):
        local.host("some-other-host").ping()
    with pytest.raises(hostbus.UnsupportedError):
        local.all().host_ping()
    (view,) = local.hosts()
    assert view.host_id == host.host_id


def test_json_and_msgpack_give_the_same_records(socket_path: str) -> None:
    with hostbus.Connection(socket=socket_path, content_type="json") as as_json, hostbus.Connection(socket=socket_path) as as_msgpack:
        a = as_json.host().vms().list()
        b = as_msgpack.host().vms().list()
        assert [v.uuid for v in a] == [v.uuid for v in b]


def test_one_command_id_over_both_bindings(local: hostbus.Connection, url: str) -> None:
    host_id = local.host().host_id
    name = f"pyboth-{uuid.uuid4().hex[:8]}"
    spec = t.VmSpec(name=name, memory_kib=65536, vcpus=1)
    command_id = str(uuid.uuid4())
    over_http = local.host().vms().define(spec, command_id=command_id)
    with hostbus.Connection(url=url, timeout=15) as bus:
        over_amqp = bus.host(host_id).vms().define(spec, command_id=command_id)
        assert over_amqp.uuid == over_http.uuid, "the bus answered the socket's command from the journal"
        bus.host(host_id).vms().get(over_amqp.uuid).undefine()
    with pytest.raises(hostbus.NotFoundError):
        local.host().vms().get(over_http.uuid).get()
