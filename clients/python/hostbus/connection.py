"""`Connection`: the entry point, as in the oVirt SDK. It reaches the
fleet through the broker (AMQP), or one host through its agent's Unix
socket (HTTP), with the same services on both."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from . import _amqp, _http, _wire
from . import types as t
from .broadcast import BroadcastResult
from .errors import ConnectionError, Error, InternalError, NoRouteError, TimeoutError, UnsupportedError, from_wire
from .services import BroadcastService, HostService

if TYPE_CHECKING:
    from .presence import HostView

T = TypeVar("T")

# How long a read on the read lane waits for its reply before it is sent
# again with the same id (then twice as long, ...).
_READ_RESEND = 2.0

# How long a broadcast waits for an alive host that has not answered before
# asking the broker whether its agent still consumes (docs/protocol.md §10.4).
_ASK_AFTER = 0.5


class Connection:
    """A connection to the hosts.

    Through the broker (every host of the fleet)::

        conn = hostbus.Connection(url="amqp://ops:secret@broker:5672/%2f")

    or to one host through its agent's socket, with no broker at all
    (docs/http.md)::

        conn = hostbus.Connection(socket="/run/hostbus/agent.sock")

    `timeout` is the default deadline of a call, in seconds: it travels with
    the command, so an agent does not run a command nobody waits for any
    more. A call whose connection is lost on the way is sent again, with
    the same command id, until its deadline: the agent runs a command id at
    most once and answers a repeat from its journal. `task_timeout` bounds
    how long the plain form of a long command (a define, a clone, a
    migration) waits for its task.

    The connection is thread-safe; close it when done (or use `with`).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        urls: Sequence[str] | None = None,
        socket: str | None = None,
        timeout: float = 10.0,
        task_timeout: float = 3600.0,
        content_type: str = "msgpack",
        user: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        name: str | None = None,
    ) -> None:
        all_urls = ([url] if url else []) + list(urls or [])
        if socket is None and not all_urls:
            env = os.environ.get("HOSTBUS_URL")
            if env:
                all_urls = [env]
        if socket is not None and all_urls:
            raise ValueError("give a broker url or a socket, not both")
        if socket is None and not all_urls:
            raise ValueError("give a broker url (or set HOSTBUS_URL) or an agent's socket")
        self.timeout = timeout
        self.task_timeout = task_timeout
        self.content_type = _wire.content_type_of(content_type)
        self._socket = _http.Socket(socket) if socket is not None else None
        self.name = name or f"hostbus-python {os.getpid()}"
        """What the broker shows of this client's connections (their
        `connection_name` starts with it)."""
        self._broker = (
            _amqp.Broker(all_urls, name=self.name, ca_file=ca_file, cert_file=cert_file, key_file=key_file)
            if all_urls
            else None
        )
        self.user = user or (_amqp.login_of(all_urls[0]) if all_urls else None)
        self._session: _amqp.Session | None = None
        self._session_lock = threading.Lock()
        self._closed = False

    # -- services ----------------------------------------------------------

    def host(self, host_id: str | None = None) -> HostService:
        """One host's service. Over a socket the host may be left out: it is
        the one the agent serves."""
        if host_id is None:
            if self._socket is None:
                raise ValueError("name the host: a broker connection reaches many")
            host_id = self._socket.local_host()
        return HostService(self, host_id)

    def all(self) -> BroadcastService:
        """Every host of the fleet, for a broadcast (`conn.all().vm_list()`)."""
        return BroadcastService(self, "all")

    def group(self, label: str) -> BroadcastService:
        """Every host carrying `label`, for a broadcast."""
        return BroadcastService(self, f"group.{label}")

    def hosts(self, *, timeout: float | None = None) -> list[HostView]:
        """The fleet view: every host the broker knows of, alive, stale or
        gone, complete at once (docs/protocol.md §10.4). Over a socket: the
        one host, from its heartbeat."""
        from . import presence

        if self._socket is not None:
            return [_local_view(t.Heartbeat.from_wire(self._socket.heartbeat()))]
        broker = self._need_broker("the fleet view")
        return presence.fleet_view(broker.open, timeout=timeout or self.timeout)

    def events(self, patterns: str | Iterable[str] = "#", *, start: Any = "next", resync: bool = True) -> Any:
        """A subscription to the events whose routing key
        (`<host>.<class>.<action>`) matches one of `patterns`, from `start`
        (`"next"`, `"first"`, a stream offset, or a `datetime`); it resumes
        by itself after a lost connection and, with `resync`, reports the
        hosts whose events were missed with their `host.snapshot`
        (docs/protocol.md §10.1, §10.5). Over a socket: the agent's events
        from now on."""
        pats = [patterns] if isinstance(patterns, str) else list(patterns)
        snapshot: Callable[[str], t.Inventory] | None = (lambda h: self.host(h).snapshot()) if resync else None
        if self._socket is not None:
            from . import _sse

            if start != "next":
                raise UnsupportedError("a subscription over an agent's socket starts at 'next': the agent keeps no event history")
            return _sse.SocketSubscription(self._socket.events(), pats, snapshot=snapshot)
        from . import events

        broker = self._need_broker("a subscription")
        return events.Subscription(broker.open, pats, start=start, snapshot=snapshot)

    def test(self, host_id: str | None = None) -> bool:
        """Whether a host answers a ping (oVirt's `Connection.test`)."""
        try:
            self.host(host_id or self._any_host()).ping()
        except Error:
            return False
        return True

    def close(self) -> None:
        """Closes the broker connection or the socket's client."""
        self._closed = True
        with self._session_lock:
            if self._session is not None:
                self._session.close()
                self._session = None
        if self._socket is not None:
            self._socket.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls -------------------------------------------------------------

    def _any_host(self) -> str:
        if self._socket is not None:
            return self._socket.local_host()
        views = self.hosts()
        if not views:
            raise InternalError("the fleet view knows no host")
        return views[0].host_id

    def _need_broker(self, what: str) -> _amqp.Broker:
        if self._broker is None:
            raise UnsupportedError(f"{what} needs the broker; this connection is to an agent's socket")
        return self._broker

    def _live_session(self) -> _amqp.Session:
        broker = self._need_broker("this")
        with self._session_lock:
            if self._closed:
                raise ConnectionError("the connection is closed")
            if self._session is None or not self._session.alive:
                self._session = _amqp.Session(broker)
            return self._session

    def _round_trip(self, host: str, command: str, request: Any, *, timeout: float | None, command_id: str | None, asynchronous: bool) -> _wire.Reply:
        """Sends one command to `host` and returns its reply, resending it
        with the same command id when the connection is lost, until the
        deadline."""
        from .catalogue import COMMANDS

        info = COMMANDS.get(command)
        read = info is not None and not info.changes
        cid = _wire.check_command_id(command_id) if command_id else _wire.new_command_id()
        limit = self.timeout if timeout is None else timeout
        deadline_ms = _wire.now_ms() + int(limit * 1000)
        until = time.monotonic() + limit
        wire = request.to_wire() if hasattr(request, "to_wire") else request
        body = _wire.encode(self.content_type, wire)
        pause = 0.1
        while True:
            try:
                if self._socket is not None:
                    self._socket.check_host(host)
                    try:
                        return self._socket.call(command, body, content_type=self.content_type, command_id=cid, deadline_ms=deadline_ms, asynchronous=asynchronous)
                    except _http._Timeout:
                        raise _no_reply(command, host, limit, cid) from None
                return self._attempt(host, command, body, cid, deadline_ms, until, asynchronous, read, limit)
            except ConnectionError:
                if self._closed or time.monotonic() + pause >= until:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    def _attempt(self, host: str, command: str, body: bytes, cid: str, deadline_ms: int, until: float, asynchronous: bool, read: bool, limit: float) -> _wire.Reply:
        session = self._live_session()
        replies = _amqp.Replies()
        session.route(cid, replies)
        try:
            # A read goes on the read lane (docs/protocol.md §2): the agent's
            # classic read queue; when no read queue takes it (the agent is
            # away, or older), its durable queue; when no reply comes, it is
            # sent again with the same id (its queue went with a broker node).
            lane = read and not asynchronous
            props = _amqp.command_properties(command, cid, content_type=self.content_type, user=self.user, deadline_ms=deadline_ms, asynchronous=asynchronous, read=read, read_lane=lane)
            resend = _READ_RESEND
            while True:
                key = f"read.host.{host}" if lane else f"host.{host}"
                try:
                    session.publish(key, body, props).result(timeout=max(0.0, until - time.monotonic()) + 1)
                except NoRouteError:
                    if not lane:
                        raise
                    lane = False
                    props = _amqp.command_properties(command, cid, content_type=self.content_type, user=self.user, deadline_ms=deadline_ms, asynchronous=asynchronous, read=read)
                    continue
                wait = max(0.0, until - time.monotonic())
                try:
                    rprops, rbody = replies.queue.get(timeout=min(wait, resend) if lane else wait)
                    break
                except Exception:  # queue.Empty
                    if not lane or time.monotonic() >= until:
                        raise _no_reply(command, host, limit, cid) from None
                    resend *= 2
            if rprops is None:
                raise ConnectionError("the broker connection was lost while waiting for the reply")
            return _amqp.reply_of(rprops, rbody)
        except TimeoutError:
            raise
        except Error:
            raise
        except Exception as e:  # a confirm that did not come in time
            raise _no_reply(command, host, limit, cid) from e
        finally:
            session.unroute(cid)

    def _call(self, host: str, command: str, request: Any, decode: Callable[[Any], T], *, timeout: float | None, command_id: str | None) -> T:
        reply = self._round_trip(host, command, request, timeout=timeout, command_id=command_id, asynchronous=False)
        if reply.status == "error":
            raise from_wire(reply.value, reply.host or host)
        if reply.status == "task":
            raise InternalError(f"{command} answered with a task to a synchronous call", host=host)
        try:
            return decode(reply.value)
        except ValueError as e:
            raise InternalError(f"{command}: undecodable response from {host}: {e}", host=host) from e

    def _submit(self, host: str, command: str, request: Any, *, timeout: float | None, command_id: str | None) -> t.TaskRecord:
        reply = self._round_trip(host, command, request, timeout=timeout, command_id=command_id, asynchronous=True)
        if reply.status == "error":
            raise from_wire(reply.value, reply.host or host)
        if reply.status != "task":
            raise InternalError(f"{command} was not accepted as a task (status {reply.status})", host=host)
        return t.TaskRecord.from_wire(reply.value)

    def _broadcast(self, target: str, command: str, request: Any, decode: Callable[[Any], T], *, timeout: float | None) -> BroadcastResult[T]:
        """One command to every host of `target`; waits for the alive hosts
        the fleet view expects, and reports every expected host that did
        not answer."""
        from . import presence
        from .catalogue import COMMANDS

        broker = self._need_broker("a broadcast")
        limit = self.timeout if timeout is None else timeout
        until = time.monotonic() + limit
        deadline_ms = _wire.now_ms() + int(limit * 1000)
        views = self.hosts(timeout=limit)
        waiting, not_alive = presence.expected(views, target)
        result: BroadcastResult[T] = BroadcastResult(target=target, expected=sorted(set(waiting) | set(not_alive)))
        info = COMMANDS.get(command)
        read = info is not None and not info.changes
        wire = request.to_wire() if hasattr(request, "to_wire") else request
        body = _wire.encode(self.content_type, wire)
        cid = _wire.new_command_id()
        session = self._live_session()
        replies = _amqp.Replies()
        session.route(cid, replies)
        pending = set(waiting)
        asked = False
        started = time.monotonic()
        try:
            props = _amqp.command_properties(command, cid, content_type=self.content_type, user=self.user, deadline_ms=deadline_ms, asynchronous=False, read=read)
            try:
                if read:
                    try:
                        lane_props = _amqp.command_properties(command, cid, content_type=self.content_type, user=self.user, deadline_ms=deadline_ms, asynchronous=False, read=read, read_lane=True)
                        session.publish(f"read.{target}", body, lane_props).result(timeout=limit)
                    except NoRouteError:
                        # No agent of the target has a read lane.
                        session.publish(target, body, props).result(timeout=limit)
                else:
                    session.publish(target, body, props).result(timeout=limit)
            except NoRouteError:
                result.missing = sorted(result.expected)
                return result
            while pending and time.monotonic() < until:
                if not asked and time.monotonic() - started >= _ASK_AFTER:
                    asked = True
                    consuming = presence.still_consuming(broker.open, sorted(pending))
                    pending &= consuming
                    if not pending:
                        break
                wait = min(0.1, max(0.0, until - time.monotonic()))
                try:
                    rprops, rbody = replies.queue.get(timeout=wait)
                except Exception:  # queue.Empty
                    continue
                if rprops is None:
                    raise ConnectionError("the broker connection was lost during a broadcast")
                reply = _amqp.reply_of(rprops, rbody)
                h = reply.host or "?"
                pending.discard(h)
                if reply.status == "error":
                    result.errors[h] = from_wire(reply.value, h)
                elif reply.status == "ok":
                    try:
                        result.replies[h] = decode(reply.value)
                    except ValueError as e:
                        result.errors[h] = InternalError(f"undecodable response: {e}", host=h)
            # Replies that came with the last one.
            while True:
                try:
                    rprops, rbody = replies.queue.get_nowait()
                except Exception:  # queue.Empty
                    break
                if rprops is None:
                    break
                reply = _amqp.reply_of(rprops, rbody)
                h = reply.host or "?"
                if reply.status == "error":
                    result.errors[h] = from_wire(reply.value, h)
                elif reply.status == "ok":
                    result.replies[h] = decode(reply.value)
        finally:
            session.unroute(cid)
        answered = set(result.replies) | set(result.errors)
        result.missing = sorted(set(result.expected) - answered)
        return result


def _local_view(beat: t.Heartbeat) -> HostView:
    """The one host an agent's socket serves, from its current heartbeat: it
    answered, so it is alive."""
    from .presence import HostView, Liveness

    return HostView(
        host_id=beat.host_id,
        liveness=Liveness.ALIVE,
        labels=list(beat.labels),
        epoch=beat.epoch,
        last_seen_ms=max(0, _wire.now_ms() - beat.time),
        interval_ms=beat.interval_ms,
        versions=beat.versions,
        capabilities=list(beat.capabilities),
        health=beat.health,
        load=beat.load,
        placement=beat.placement,
        migration_uri=None,
        heartbeat=beat,
        announced_at=None,
        connected=True,
        started_at=beat.started_at,
        last_seq=beat.last_seq,
    )


def _no_reply(command: str, host: str, limit: float, cid: str) -> TimeoutError:
    return TimeoutError(
        f"no reply to {command} from {host} within {limit:g} s; it may have run: retry with command_id={cid}",
        host=host,
        params={"command_id": cid},
    )
