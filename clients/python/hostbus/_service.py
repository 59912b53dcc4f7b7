"""The hand-written base of the generated service classes: how a service
sends its command, how a VM named by name finds its uuid, how a task is
followed, how a broadcast collects its answers."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from . import _wire
from . import types as t
from .broadcast import BroadcastResult
from .errors import CancelledError, Error, InternalError, TimeoutError

if TYPE_CHECKING:
    from .connection import Connection
    from .services import TaskService

T = TypeVar("T")
R = TypeVar("R")

FINAL = (t.TaskStatus.SUCCESS, t.TaskStatus.FAILURE, t.TaskStatus.CANCELLED)


class ServiceBase:
    """A service on one host of a connection."""

    def __init__(self, conn: Connection, host: str) -> None:
        self._conn = conn
        self._host = host

    @property
    def host_id(self) -> str:
        """The host this service addresses."""
        return self._host

    def _call(self, command: str, request: Any, decode: Callable[[Any], T], timeout: float | None, command_id: str | None) -> T:
        return self._conn._call(self._host, command, request, decode, timeout=timeout, command_id=command_id)

    def _submit(self, command: str, request: Any, timeout: float | None, command_id: str | None) -> TaskService:
        from .services import TaskService

        record = self._conn._submit(self._host, command, request, timeout=timeout, command_id=command_id)
        return TaskService(self, record.id, record)

    def call(self, command: str, request: Any = None, *, timeout: float | None = None, command_id: str | None = None) -> Any:
        """Sends any command of the catalogue to this host (`request`: a
        generated request object or a plain map) and returns its decoded
        response."""
        from .catalogue import COMMANDS

        info = COMMANDS.get(command)
        decode: Callable[[Any], Any] = info.response.from_wire if info else (lambda v: v)
        return self._call(command, request if request is not None else {}, decode, timeout, command_id)


class VmBase(ServiceBase):
    """A VM by name or uuid."""

    def __init__(self, parent: ServiceBase, key: str) -> None:
        super().__init__(parent._conn, parent._host)
        self._key = key
        self._resolved: str | None = key if _wire.is_uuid(key) else None

    def _uuid(self) -> str:
        if self._resolved is None:
            record = self._call("vm.get_by_name", t.ObjectName(name=self._key), t.VmRecord.from_wire, None, None)
            self._resolved = record.uuid
        return self._resolved

    @property
    def key(self) -> str:
        """The name or uuid this service was made with."""
        return self._key


class TaskBase(ServiceBase):
    """A task by id, with what it last looked like."""

    def __init__(self, parent: ServiceBase, id: str, record: t.TaskRecord | None = None) -> None:
        super().__init__(parent._conn, parent._host)
        self._id = id
        self.record = record
        """The task record as last seen (None until read)."""

    @property
    def id(self) -> str:
        """The task id: the command id of the command that started it."""
        return self._id

    def wait(self, *, timeout: float | None = None, progress: Callable[[t.TaskRecord], None] | None = None, poll: float = 0.2) -> t.TaskRecord:
        """Follows the task to its end (polling `task.get`) and returns its
        record; raises the task's error when it failed (`CancelledError`
        when cancelled), `TimeoutError` when it has not ended within
        `timeout` seconds (default: the connection's `task_timeout`; the task
        goes on). `progress` is called with the record whenever its progress
        or status changes."""
        limit = timeout if timeout is not None else self._conn.task_timeout
        until = time.monotonic() + limit
        seen: tuple[Any, int] | None = None
        record = self.record
        while True:
            if record is None or record.status not in FINAL:
                record = self._call("task.get", t.TaskId(id=self._id), t.TaskRecord.from_wire, None, None)
            self.record = record
            now = (record.status, record.progress)
            if progress is not None and now != seen:
                progress(record)
            seen = now
            if record.status in FINAL:
                break
            if time.monotonic() >= until:
                raise TimeoutError(f"task {self._id} ({record.command}) did not end within {limit:.0f} s; it is {record.status}", host=self._host)
            time.sleep(poll)
        if record.status == t.TaskStatus.SUCCESS:
            return record
        if record.error is not None:
            err = record.error
            from .errors import BY_CODE

            cls = BY_CODE.get(err.code.value, InternalError)
            raise cls(err.message, code=err.code.value, params=err.params, host=self._host)
        if record.status == t.TaskStatus.CANCELLED:
            raise CancelledError(f"task {self._id} was cancelled", code="CANCELLED", params={"task": self._id}, host=self._host)
        raise InternalError(f"task {self._id} ended {record.status} without an error", host=self._host)

    def wait_result(self, kind: type[R], *, timeout: float | None = None, progress: Callable[[t.TaskRecord], None] | None = None) -> R:
        """`wait()`, then the task's result, which must be a `kind`."""
        record = self.wait(timeout=timeout, progress=progress)
        if not isinstance(record.result, kind):
            raise InternalError(f"task {self._id} ({record.command}) succeeded with {type(record.result).__name__}, not {kind.__name__}", host=self._host)
        return record.result


class BroadcastBase:
    """A broadcast target: `all` or `group.<label>`."""

    def __init__(self, conn: Connection, target: str) -> None:
        self._conn = conn
        self._target = target

    @property
    def target(self) -> str:
        """The routing key: `all` or `group.<label>`."""
        return self._target

    def _broadcast(self, command: str, request: Any, decode: Callable[[Any], T], timeout: float | None) -> BroadcastResult[T]:
        return self._conn._broadcast(self._target, command, request, decode, timeout=timeout)

    def call(self, command: str, request: Any = None, *, timeout: float | None = None) -> BroadcastResult[Any]:
        """Any command of the catalogue to every host of the target."""
        from .catalogue import COMMANDS

        info = COMMANDS.get(command)
        decode: Callable[[Any], Any] = info.response.from_wire if info else (lambda v: v)
        return self._broadcast(command, request if request is not None else {}, decode, timeout)


__all__ = ["ServiceBase", "VmBase", "TaskBase", "BroadcastBase", "Error"]
