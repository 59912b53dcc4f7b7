"""The AMQP transport, on pika: one broker connection for calls, owned by
an I/O thread, so that a `Connection` may be used from many threads, the
broker's heartbeats are answered while the program does something else,
and replies are routed to their callers by correlation id.

pika's BlockingConnection may only be used from the thread that made it;
the one thread-safe entry is `add_callback_threadsafe`, through which
callers hand publishes to the I/O thread.
"""

from __future__ import annotations

import itertools
import queue
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import pika
import pika.exceptions

from . import _wire
from .errors import AuthError, ConnectionError, Error, NoRouteError

_NAMES = itertools.count(1)


def login_of(url: str) -> str | None:
    """The user of an AMQP URL (`amqp://user:pass@host/vhost`)."""
    user = urllib.parse.urlsplit(url).username
    return urllib.parse.unquote(user) if user else None


class Broker:
    """How to reach the broker: its URLs (tried in order), TLS, and the name
    every connection of this client carries (`connection_name`, shown by
    `rabbitmqctl list_connections`)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        name: str,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        connect_timeout: float = 10.0,
        heartbeat: int = 10,
    ) -> None:
        if not urls:
            raise ValueError("no broker URL")
        self.urls = list(urls)
        self.name = name
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat

    def parameters(self, role: str) -> list[Any]:
        """Connection parameters for each URL; the connection's name is
        `role` when it names the SDK already, else `<name> <role>`."""
        label = role if role.startswith("hostbus-python") else f"{self.name} {role}"
        out = []
        for url in self.urls:
            p = pika.URLParameters(url)
            p.client_properties = {"connection_name": label, "product": "hostbus-python"}
            p.socket_timeout = self.connect_timeout
            p.blocked_connection_timeout = 30
            p.heartbeat = self.heartbeat
            p.connection_attempts = 1
            if url.startswith("amqps://"):
                ctx = ssl.create_default_context(cafile=self.ca_file)
                if self.cert_file:
                    ctx.load_cert_chain(self.cert_file, self.key_file)
                host = urllib.parse.urlsplit(url).hostname or "localhost"
                p.ssl_options = pika.SSLOptions(ctx, host)
            out.append(p)
        return out

    def open(self, role: str) -> Any:
        """A new blocking connection (for the fleet view and subscriptions,
        which use it from one thread)."""
        try:
            return pika.BlockingConnection(self.parameters(role))
        except pika.exceptions.AMQPError as e:
            raise self.refusal(e) from e

    def refusal(self, e: BaseException) -> Error:
        """The error of a connection that did not open: `AuthError` when the
        broker refused the login (sending again will not help), else
        `ConnectionError`."""
        where = ", ".join(self._shown())
        if isinstance(e, (pika.exceptions.ProbableAuthenticationError, pika.exceptions.ProbableAccessDeniedError)) or (
            isinstance(e, pika.exceptions.AMQPConnectionError) and "ACCESS_REFUSED" in repr(e)
        ):
            return AuthError(f"the broker at {where} refused the login: {e!r}")
        return ConnectionError(f"cannot reach the broker at {where}: {e!r}")

    def _shown(self) -> list[str]:
        shown = []
        for u in self.urls:
            s = urllib.parse.urlsplit(u)
            shown.append(f"{s.scheme}://{s.hostname}:{s.port or (5671 if s.scheme == 'amqps' else 5672)}")
        return shown


Route = Callable[[Any, bytes], None]
"""Receives one reply (its pika properties and body)."""


class Session:
    """One broker connection for calls, driven by its own thread. It dies
    with its connection: pending calls then fail with `ConnectionError` and
    the next call opens a new session."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._closing = False
        self.alive = False
        self._conn: Any = None
        self._channel: Any = None
        self._thread = threading.Thread(target=self._run, name=f"hostbus-amqp-{next(_NAMES)}", daemon=True)
        self._thread.start()
        self._ready.wait(broker.connect_timeout + 5)
        if self._error is not None:
            raise broker.refusal(self._error)
        if not self.alive:
            raise ConnectionError("the broker connection did not open in time")

    def _run(self) -> None:
        try:
            self._conn = pika.BlockingConnection(self._broker.parameters("calls"))
            ch = self._conn.channel()
            ch.confirm_delivery()
            # Direct reply-to: consume (no-ack) before publishing, on the same channel.
            ch.basic_consume(_wire.DIRECT_REPLY_TO, self._on_reply, auto_ack=True)
            self._channel = ch
            self.alive = True
        except BaseException as e:  # noqa: BLE001 - reported to the opener
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        lost: BaseException | None = None
        try:
            while not self._closing:
                self._conn.process_data_events(time_limit=1)
        except BaseException as e:  # noqa: BLE001 - any failure ends the session
            lost = e
        self.alive = False
        self._fail_all(lost)
        try:
            if self._conn.is_open:
                self._conn.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass

    def _on_reply(self, _ch: Any, _method: Any, props: Any, body: bytes) -> None:
        corr = props.correlation_id
        with self._lock:
            route = self._routes.get(corr) if corr else None
        if route is not None:
            route(props, body)

    def _fail_all(self, cause: BaseException | None) -> None:
        with self._lock:
            routes = list(self._routes.values())
            self._routes.clear()
        for r in routes:
            r(None, b"")  # None properties: the connection is gone
        _ = cause

    def route(self, correlation_id: str, to: Route) -> None:
        with self._lock:
            self._routes[correlation_id] = to

    def unroute(self, correlation_id: str) -> None:
        with self._lock:
            self._routes.pop(correlation_id, None)

    def publish(self, routing_key: str, body: bytes, props: Any) -> Future[None]:
        """Publishes a command (mandatory, confirmed); the future ends with the
        broker's confirm, or `NoRouteError` when no queue is bound to the key."""
        fut: Future[None] = Future()

        def do() -> None:
            try:
                self._channel.basic_publish(_wire.COMMAND_EXCHANGE, routing_key, body, props, mandatory=True)
                fut.set_result(None)
            except pika.exceptions.UnroutableError:
                fut.set_exception(NoRouteError(f"no host is bound to routing key {routing_key!r}", code=None))
            except pika.exceptions.NackError:
                fut.set_exception(ConnectionError(f"the broker refused the command for {routing_key!r}"))
            except BaseException as e:
                fut.set_exception(ConnectionError(f"the broker connection was lost while publishing: {e!r}"))
                raise

        try:
            self._conn.add_callback_threadsafe(do)
        except Exception as e:  # noqa: BLE001 - a closed connection
            self.alive = False
            fut.set_exception(ConnectionError(f"the broker connection is closed: {e!r}"))
        return fut

    def close(self) -> None:
        self._closing = True
        if self._thread.is_alive() and self._conn is not None:
            try:
                self._conn.add_callback_threadsafe(lambda: None)
            except Exception:  # noqa: BLE001
                pass
        self._thread.join(5)


class Replies:
    """The replies to one correlation id, as they come."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[Any, bytes]] = queue.Queue()

    def __call__(self, props: Any, body: bytes) -> None:
        self.queue.put((props, body))


def reply_of(props: Any, body: bytes) -> _wire.Reply:
    headers = props.headers or {}
    host = headers.get(_wire.HOST_HEADER)
    if isinstance(host, bytes):
        host = host.decode("utf-8", "replace")
    return _wire.parse_reply(props.content_type, body, host if isinstance(host, str) else None)


def command_properties(
    command: str,
    command_id: str,
    *,
    content_type: str,
    user: str | None,
    deadline_ms: int,
    asynchronous: bool,
    read: bool,
    reply: bool = True,
    read_lane: bool = False,
) -> Any:
    """The AMQP properties of a command (docs/protocol.md §3.1); on the read
    lane without a per-message TTL (the agent refuses a late read itself)."""
    now = _wire.now_ms()
    headers: dict[str, Any] = {_wire.VERSION_HEADER: _protocol_version(), _wire.DEADLINE_HEADER: deadline_ms}
    if asynchronous:
        headers[_wire.ASYNC_HEADER] = True
    return pika.BasicProperties(
        message_id=command_id,
        correlation_id=command_id,
        reply_to=_wire.DIRECT_REPLY_TO if reply else None,
        type=command,
        content_type=content_type,
        timestamp=now // 1000,
        expiration=None if read_lane else str(max(0, deadline_ms - now)),
        user_id=user,
        # A read answered on direct reply-to is transient (§3.1).
        delivery_mode=1 if (read and reply) else 2,
        headers=headers,
    )


def _protocol_version() -> str:
    from .types import PROTOCOL_VERSION

    return PROTOCOL_VERSION
