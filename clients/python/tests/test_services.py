"""Every command of the catalogue, once, through the service it belongs to
(`conn.host("h2").vms().get("app").start()`), against real agents on
libvirt's test driver; the last test checks that none was left out."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import hostbus
from hostbus import _service, catalogue
from hostbus import types as t

SENT: set[str] = set()
"""Every command a service method sent in this module."""


@pytest.fixture(scope="module", autouse=True)
def record_commands() -> Iterator[None]:
    """Notes the command of every service call and task submission."""
    call, submit = _service.ServiceBase._call, _service.ServiceBase._submit

    def noting_call(self: Any, command: str, *args: Any) -> Any:
        SENT.add(command)
        return call(self, command, *args)

    def noting_submit(self: Any, command: str, *args: Any) -> Any:
        SENT.add(command)
        return submit(self, command, *args)

    _service.ServiceBase._call = noting_call  # type: ignore[method-assign]
    _service.ServiceBase._submit = noting_submit  # type: ignore[method-assign]
    yield
    _service.ServiceBase._call = call  # type: ignore[method-assign]
    _service.ServiceBase._submit = submit  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def conn(url: str) -> Iterator[hostbus.Connection]:
    with hostbus.Connection(url=url, timeout=15) as c:
        yield c


@pytest.fixture(scope="module")
def h2(conn: hostbus.Connection, hosts: list[str]) -> hostbus.HostService:
    return conn.host(hosts[1])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def small_vm(name: str, disks: int = 0) -> t.VmSpec:
    return t.VmSpec(
        name=name,
        memory_kib=131072,
        vcpus=1,
        disks=[
            t.DiskSpec(target=f"vd{chr(ord('a') + i)}", source=t.DiskSourceNewVolume(pool="default", capacity_bytes=8 << 20))
            for i in range(disks)
        ],
    )


def test_host_commands(h2: hostbus.HostService) -> None:
    pong = h2.ping(echo="hello")
    assert (pong.host_id, pong.echo) == (h2.host_id, "hello")
    info = h2.info()
    assert info.host_id == h2.host_id and info.cpus > 0
    caps = h2.capabilities()
    assert "vm.migrate" in caps.commands
    stats = h2.stats()
    assert stats.vms_total >= 3 and stats.memory_total_kib > 0
    inv = h2.snapshot()
    assert inv.host.host_id == h2.host_id and {v.name for v in inv.vms} >= {"api01", "api02", "cache01"}
    assert inv.epoch is not None and inv.seq >= 1
    off = h2.disable(reason="python tour")
    assert off.placement.enabled is False and off.placement.reason == "python tour"
    assert h2.enable().placement.enabled is True


def test_vm_lifecycle(h2: hostbus.HostService) -> None:
    vms = h2.vms()
    listed = vms.list()
    assert [v.name for v in listed] == sorted(v.name for v in listed)
    assert {v.name for v in vms.list(power_state=t.PowerState.RUNNING)} >= {"api01"}
    name = unique("py")
    vm = vms.define(small_vm(name, disks=1))
    assert vm.power_state is t.PowerState.HALTED and vm.disks[0].volume is not None
    assert vms.get_by_name(name).uuid == vm.uuid
    by_name = vms.get(name)
    by_uuid = vms.vm_service(vm.uuid)
    assert by_name.get() == by_uuid.get()
    assert by_name.start().power_state is t.PowerState.RUNNING
    assert by_name.pause().power_state is t.PowerState.PAUSED
    assert by_name.resume().power_state is t.PowerState.RUNNING
    assert by_name.suspend().power_state is t.PowerState.SUSPENDED
    assert by_name.resume().power_state is t.PowerState.RUNNING
    assert by_name.reboot().power_state is t.PowerState.RUNNING
    assert by_name.reset().power_state is t.PowerState.RUNNING
    assert by_name.set_memory(65536).memory_kib == 65536
    assert by_name.set_vcpus(1).vcpus == 1
    stats = by_name.stats()
    assert stats.uuid == vm.uuid and stats.power_state is t.PowerState.RUNNING
    assert by_name.shutdown(timeout_s=5).power_state is t.PowerState.HALTED
    assert by_name.start(paused=True).power_state is t.PowerState.PAUSED
    assert by_name.destroy().power_state is t.PowerState.HALTED
    # Devices, on the halted VM (the test driver changes no running one).
    disk = t.DiskSpec(target="vdb", source=t.DiskSourceNewVolume(pool="default", capacity_bytes=4 << 20))
    assert [d.target for d in by_name.attach_disk(disk).disks] == ["vda", "vdb"]
    assert [d.target for d in by_name.detach_disk("vdb").disks] == ["vda"]
    h2.pools().get("default").volumes().get(f"{name}-vdb.qcow2").delete()
    mac = "52:54:00:aa:bb:cc"
    assert [n.mac for n in by_name.attach_nic(t.NicSpec(network="default", mac=mac)).nics] == [mac]
    assert by_name.detach_nic(mac).nics == []
    # Snapshots, by the VM's uuid found from its name.
    snaps = by_name.snapshots()
    made = snaps.create("s1", description="before")
    assert (made.vm, made.name, made.description) == (vm.uuid, "s1", "before")
    assert [s.name for s in snaps.list()] == ["s1"]
    assert snaps.get("s1").revert().uuid == vm.uuid
    snaps.get("s1").delete()
    assert snaps.list() == []
    # A template, cloned; the clone is an ordinary VM.
    assert by_name.set_template(True).template is True
    copy = by_name.clone(unique("pyclone"))
    assert copy.template is False and copy.uuid != vm.uuid and copy.power_state is t.PowerState.HALTED
    assert by_name.set_template(False).template is False
    vms.get(copy.uuid).undefine(remove_storage=True)
    by_name.undefine(remove_storage=True)
    with pytest.raises(hostbus.NotFoundError) as gone:
        by_uuid.get()
    assert gone.value.code == "VM_NOT_FOUND" and isinstance(gone.value, hostbus.errors.VmNotFoundError)


def test_a_migration_to_its_own_host_is_refused(h2: hostbus.HostService) -> None:
    api01 = h2.vms().get("api01")
    with pytest.raises(hostbus.InvalidArgumentError) as refused:
        api01.migrate(h2.host_id)
    assert refused.value.params["field"] == "destination", refused.value
    assert api01.get().power_state is t.PowerState.RUNNING


def test_the_host_to_host_steps_are_for_agents_only(h2: hostbus.HostService) -> None:
    vm = h2.vms().get_by_name("api02")
    with pytest.raises(hostbus.AuthError) as denied:
        h2.vms().migrate_prepare(
            uuid=vm.uuid, name=vm.name, source="elsewhere", task=str(uuid.uuid4()), live=False, memory_kib=vm.memory_kib, generation=vm.generation
        )
    assert denied.value.code == "PERMISSION_DENIED" and denied.value.params["command"] == "vm.migrate_prepare"
    with pytest.raises(hostbus.AuthError):
        h2.vms().migrate_abort(uuid=vm.uuid, name=vm.name)


def test_pools_and_volumes(h2: hostbus.HostService) -> None:
    pools = h2.pools()
    assert {p.name for p in pools.list()} >= {"default", "iso"}
    assert pools.get("default").get().state is t.PoolState.RUNNING
    name = unique("pypool")
    made = pools.define(t.PoolSpec(name=name, kind=t.PoolKind.DIR, target_path=f"/tmp/{name}"))
    assert made.state is t.PoolState.INACTIVE
    pool = pools.get(name)
    assert pool.start().state is t.PoolState.RUNNING
    assert pool.refresh().name == name
    volumes = pool.volumes()
    vol = volumes.create(t.VolumeSpec(name="v1", capacity_bytes=1 << 20))
    assert (vol.pool, vol.name, vol.format) == (name, "v1", t.DiskFormat.QCOW2)
    # libvirt's test driver resizes no volume: the refusal is structured.
    with pytest.raises(hostbus.UnsupportedError) as refused:
        volumes.get("v1").resize(2 << 20)
    assert refused.value.code == "OPERATION_NOT_SUPPORTED"
    assert volumes.get("v1").clone("v2").name == "v2"
    assert [v.name for v in volumes.list()] == ["v1", "v2"]
    assert volumes.get("v2").get().capacity_bytes == 1 << 20
    volumes.get("v2").delete()
    volumes.get("v1").delete()
    assert pool.stop().state is t.PoolState.INACTIVE
    pool.undefine()
    with pytest.raises(hostbus.errors.PoolNotFoundError):
        pool.get()


def test_networks(h2: hostbus.HostService) -> None:
    nets = h2.networks()
    assert {n.name for n in nets.list()} >= {"default"}
    assert nets.get("default").get().name == "default"
    name = unique("pynet")[:15]
    made = nets.define(t.NetworkSpec(name=name, forward=t.ForwardMode.ISOLATED, bridge=f"vb{uuid.uuid4().hex[:8]}"))
    assert made.active is False
    net = nets.get(name)
    assert net.start().active is True
    assert net.stop().active is False
    net.undefine()
    with pytest.raises(hostbus.errors.NetworkNotFoundError):
        net.get()


def test_tasks(h2: hostbus.HostService) -> None:
    name = unique("pytask")
    seen: list[int] = []
    task = h2.vms().define_async(small_vm(name))
    assert task.record is not None and task.record.command == "vm.define"
    done = task.wait(progress=lambda r: seen.append(r.progress))
    assert done.status is t.TaskStatus.SUCCESS and seen[-1] == 100
    assert isinstance(done.result, t.VmRecord) and done.result.name == name
    assert h2.tasks().get(task.id).get().status is t.TaskStatus.SUCCESS
    assert task.id in {r.id for r in h2.tasks().list()}
    assert task.id in {r.id for r in h2.tasks().list(status=t.TaskStatus.SUCCESS)}
    with pytest.raises(hostbus.errors.TaskNotCancellableError):
        h2.tasks().get(task.id).cancel()
    h2.vms().get(done.result.uuid).undefine()


def test_zz_every_command_went_through_a_service() -> None:
    left = set(catalogue.COMMANDS) - SENT
    assert not left, f"commands no service method sent in this module: {sorted(left)}"
