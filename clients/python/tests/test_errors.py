"""Errors from real agents arrive as their classes, with their codes and
parameters; a command resent with its command id is answered, not run
again."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import hostbus
from hostbus import errors
from hostbus import types as t


@pytest.fixture(scope="module")
def conn(url: str) -> Iterator[hostbus.Connection]:
    with hostbus.Connection(url=url, timeout=15) as c:
        yield c


def test_not_found_invalid_bad_state_and_already_exists(conn: hostbus.Connection, hosts: list[str]) -> None:
    h1 = conn.host(hosts[0])
    missing = str(uuid.uuid4())
    with pytest.raises(hostbus.NotFoundError) as e:
        h1.vms().get(missing).get()
    assert type(e.value) is errors.VmNotFoundError and e.value.params == {"vm": missing}
    assert e.value.host == hosts[0] and not e.value.retryable
    with pytest.raises(errors.VmNotFoundError):
        h1.vms().get("no-such-vm").start()
    with pytest.raises(hostbus.InvalidArgumentError) as bad:
        h1.vms().define(t.VmSpec(name="bad name!", memory_kib=1024, vcpus=1))
    assert bad.value.code == "INVALID_ARGUMENT" and bad.value.params["field"] == "spec.name"
    with pytest.raises(hostbus.BadPowerStateError) as running:
        h1.vms().get("web01").start()
    assert isinstance(running.value, hostbus.BadStateError)
    assert (running.value.params["current"], running.value.params["operation"]) == ("running", "start")
    with pytest.raises(hostbus.AlreadyExistsError) as exists:
        h1.vms().define(t.VmSpec(name="web01", memory_kib=1024, vcpus=1))
    assert exists.value.params["name"] == "web01"
    with pytest.raises(hostbus.InvalidArgumentError) as unknown:
        h1.call("vm.frobnicate", {})
    assert unknown.value.code == "UNKNOWN_COMMAND"


def test_an_unknown_host_is_no_route(conn: hostbus.Connection) -> None:
    with pytest.raises(hostbus.NoRouteError) as e:
        conn.host("no-such-host").ping(timeout=5)
    assert isinstance(e.value, hostbus.NotFoundError) and e.value.code is None


def test_a_read_only_login_may_read_and_not_change(viewer_url: str, hosts: list[str]) -> None:
    with hostbus.Connection(url=viewer_url, timeout=15) as viewer:
        h1 = viewer.host(hosts[0])
        assert "web01" in {v.name for v in h1.vms().list()}
        with pytest.raises(hostbus.AuthError) as denied:
            h1.vms().get("web01").destroy()
        assert denied.value.code == "PERMISSION_DENIED"
        assert denied.value.params == {"user": "viewer", "command": "vm.destroy"}
        assert isinstance(denied.value, hostbus.PermissionDeniedError)


def test_a_command_resent_with_its_id_is_answered_from_the_journal(conn: hostbus.Connection, hosts: list[str]) -> None:
    vms = conn.host(hosts[0]).vms()
    name = f"pyjournal-{uuid.uuid4().hex[:8]}"
    define_id = str(uuid.uuid4())
    made = vms.define(t.VmSpec(name=name, memory_kib=65536, vcpus=1), command_id=define_id)
    # The same id again: the same VM, not ALREADY_EXISTS.
    again = vms.define(t.VmSpec(name=name, memory_kib=65536, vcpus=1), command_id=define_id)
    assert again.uuid == made.uuid
    start_id = str(uuid.uuid4())
    vm = vms.get(made.uuid)
    assert vm.start(command_id=start_id).power_state is t.PowerState.RUNNING
    assert vm.destroy().power_state is t.PowerState.HALTED
    # Resending the start answers what it did then; the VM stays halted.
    assert vm.start(command_id=start_id).power_state is t.PowerState.RUNNING
    assert vm.get().power_state is t.PowerState.HALTED
    vm.undefine()
    with pytest.raises(ValueError):
        vm.get(command_id="not-a-uuid")


def test_a_task_is_cancelled_between_its_steps(conn: hostbus.Connection, slow_host: str) -> None:
    vms = conn.host(slow_host).vms()
    name = f"pycancel-{uuid.uuid4().hex[:8]}"
    spec = t.VmSpec(
        name=name,
        memory_kib=65536,
        vcpus=1,
        disks=[t.DiskSpec(target=f"vd{c}", source=t.DiskSourceNewVolume(pool="default", capacity_bytes=1 << 20)) for c in "abc"],
    )
    task = vms.define_async(spec)
    assert task.record is not None and task.record.cancellable
    first: list[t.TaskRecord] = []

    def cancel_once(record: t.TaskRecord) -> None:
        if record.progress > 0 and not first:
            first.append(record)
            assert task.cancel().status in (t.TaskStatus.CANCELLING, t.TaskStatus.CANCELLED)

    with pytest.raises(hostbus.CancelledError) as cancelled:
        task.wait(progress=cancel_once, timeout=60)
    assert first, "the task never reported progress before it ended"
    assert cancelled.value.code == "CANCELLED" and cancelled.value.params["task"] == task.id
    assert task.get().status is t.TaskStatus.CANCELLED
    with pytest.raises(errors.VmNotFoundError):
        vms.get_by_name(name)
    left = {v.name for v in conn.host(slow_host).pools().get("default").volumes().list()}
    assert not {n for n in left if n.startswith(name)}, f"the cancelled define left volumes: {left}"


def test_a_call_whose_connection_is_killed_is_resent_with_its_id_and_runs_once(url: str, slow_host: str, ctl: Any) -> None:
    """The broker closes the call's connection while the agent runs it (a
    define that pauses between its steps): the SDK sends it again with the
    same command id over a new connection and gets the one VM it made."""
    name = f"pyresend-{uuid.uuid4().hex[:8]}"
    spec = t.VmSpec(
        name=name,
        memory_kib=65536,
        vcpus=1,
        disks=[t.DiskSpec(target=f"vd{c}", source=t.DiskSourceNewVolume(pool="default", capacity_bytes=1 << 20)) for c in "ab"],
    )
    with hostbus.Connection(url=url, timeout=30, name=f"pyresend-{uuid.uuid4().hex[:6]}") as conn:
        vms = conn.host(slow_host).vms()
        assert vms.list() is not None  # the calls connection is open
        closed: list[int] = []
        killer = threading.Timer(0.8, lambda: closed.append(ctl.close_connections(conn.name)))
        killer.start()
        # Synchronously (its plain method runs it as a task): the reply
        # comes after the steps, over the connection that is killed.
        made = vms.call("vm.define", t.VmDefineRequest(spec=spec))
        killer.join()
        assert closed == [1], f"the calls connection was not found to close: {closed}"
        assert made.name == name
        assert [v.uuid for v in vms.list() if v.name == name] == [made.uuid], "one VM, not two"
        vms.get(made.uuid).undefine(remove_storage=True)
