"""Event subscriptions that survive lost connections (docs/protocol.md §10.1, §10.5).

Every event is kept by the broker in the stream ``hostbus.events`` (a day by
default). A :class:`Subscription` reads that stream from where it is told to
start: ``"next"`` (from now), ``"first"`` (the oldest kept), a stream offset
(an ``int``: a stored :attr:`Subscription.position` plus one) or a time (a
``datetime``). It filters by its topic patterns itself, so it still sees
every sequence number of every host and can tell a lost event from one it
was not sent. A :class:`Resync` (with a fresh ``host.snapshot``) is reported
only when events really were lost (a gap in a host's ``seq``, a new epoch:
the agent restarted; an offset older than the broker keeps), and when an
agent announces itself with its full inventory (``agent.online``).

A subscription whose connection drops reconnects on its own and resumes
right after the last event it read: nothing missed, nothing twice. (Started
at ``"next"`` and cut off before its first event, it starts at ``"next"``
again: it knows no offset yet.)

Everything runs on the caller's thread: the connection is only read while
:meth:`Subscription.next` waits. A connection the broker closed meanwhile
for want of heartbeats is reopened where it stopped.
"""

from __future__ import annotations

import collections
import datetime as _dt
import enum
import inspect
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, Union

import msgpack
import pika
import pika.exceptions

from . import types as t
from .errors import NotFoundError

__all__ = [
    "EVENT_STREAM",
    "EventNotification",
    "Notification",
    "OpenConnection",
    "Resync",
    "ResyncReason",
    "Snapshot",
    "Start",
    "Subscription",
    "check_pattern",
    "published_as",
    "stream_channel",
    "topic_matches",
]

log = logging.getLogger("hostbus.events")

#: The stream every event is kept in.
EVENT_STREAM = "hostbus.events"
#: The exchange agents publish events on, each under its own key.
EVENT_EXCHANGE = "hostbus.evt"

#: Opens a fresh ``pika.BlockingConnection`` (the runtime builds it with the
#: user's URLs and TLS settings). When it takes an argument, it is given a
#: role, such as ``"subscription 0f3a9c2e51b7"``, for the connection's
#: ``client_properties["connection_name"]`` to end with (see
#: :func:`open_named`).
OpenConnection = Union[Callable[[], Any], Callable[[str], Any]]

#: ``host.snapshot`` of one host.
Snapshot = Callable[[str], "t.Inventory"]

#: Where a subscription starts: ``"next"``, ``"first"``, a stream offset or a time.
Start = Union[str, int, _dt.datetime]

# Errors that mean the connection (or its channel) is gone: reconnect.
_LOST: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPError,
    OSError,
    EOFError,
)

_FIRST_PAUSE = 0.1
_MAX_PAUSE = 2.0

# --------------------------------------------------------------- wire helpers


def decode_body(content_type: str | None, body: bytes) -> Any:
    """A message body as plain data, by its ``content_type`` (absent: MessagePack)."""
    ct = (content_type or "").split(";", 1)[0].strip().lower()
    if ct in ("", "application/msgpack", "application/x-msgpack"):
        return msgpack.unpackb(body, raw=False)
    if ct == "application/json":
        return json.loads(body)
    raise ValueError(f"unsupported content type {content_type!r}")


def open_named(open_connection: OpenConnection, role: str) -> Any:
    """``open_connection(role)``, or ``open_connection()`` when it takes no
    argument (its connections are then named however it names them)."""
    opener: Callable[..., Any] = open_connection
    try:
        params = list(inspect.signature(opener).parameters.values())
    except (TypeError, ValueError):
        params = []
    if any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params):
        return opener(role)
    return opener()


# --------------------------------------------------------------- patterns


def topic_matches(pattern: str, key: str) -> bool:
    """Whether a topic pattern (``*`` one word, ``#`` zero or more) matches a routing key."""
    p = pattern.split(".")
    k = key.split(".")

    def rec(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(k)
        if p[i] == "#":
            return rec(i + 1, j) or (j < len(k) and rec(i, j + 1))
        if j == len(k):
            return False
        return (p[i] == "*" or p[i] == k[j]) and rec(i + 1, j + 1)

    return rec(0, 0)


def check_pattern(pattern: str) -> None:
    """Raises ``ValueError`` unless ``pattern`` is an event pattern like ``*.vm.*`` or ``h1.#``."""
    ok = bool(pattern) and all(
        w in ("*", "#")
        or (w != "" and all(c.islower() and c.isascii() or c.isdigit() or c in "-_" for c in w))
        for w in pattern.split(".")
    )
    if not ok:
        raise ValueError(f"`{pattern}` is not an event pattern like `*.vm.*` or `h1.#`")


def pattern_host(pattern: str) -> str | None:
    """The host a pattern is about, when it names one."""
    h = pattern.split(".", 1)[0]
    return None if h in ("*", "#") else h


# --------------------------------------------------------------- notifications


class ResyncReason(str, enum.Enum):
    """Why a host's state must be replaced by a fresh inventory."""

    #: Sequence numbers of this epoch never reached the subscriber (the
    #: agent was cut off from the broker, or the agent's HTTP buffer overflowed).
    GAP = "gap"
    #: The agent restarted: a new epoch.
    NEW_EPOCH = "new_epoch"
    #: The agent (re)connected and announced itself with its full inventory
    #: (``agent.online``), with no event lost before it.
    AGENT_ONLINE = "agent_online"
    #: The broker no longer keeps the events from the offset asked for.
    HISTORY_LOST = "history_lost"


@dataclass(frozen=True)
class EventNotification:
    """An event matching the subscription's patterns."""

    event: t.Event
    #: Its stream offset (``None`` over an agent's socket).
    offset: int | None
    #: Its routing key, ``<host>.<class>.<action>`` (what the patterns matched).
    key: str = ""


@dataclass(frozen=True)
class Resync:
    """The subscriber's view of ``host_id`` must be replaced by ``inventory``."""

    host_id: str
    reason: ResyncReason
    #: The host's full state; ``None`` without a snapshot function, or when
    #: the snapshot failed (see ``error``).
    inventory: t.Inventory | None
    #: The stream offset of the event that showed the loss, if any.
    offset: int | None = None
    #: Why ``inventory`` is missing, when the snapshot failed.
    error: BaseException | None = None


Notification = Union[EventNotification, Resync]


def _forget(*_args: Any, **_kwargs: Any) -> None:
    """A reject that does nothing (see :func:`stream_channel`)."""


def stream_channel(conn: Any) -> Any:
    """A channel of ``conn`` for stream consumers. pika rejects the
    deliveries a cancelled consumer still had pending or in flight, and a
    stream answers ``basic.reject`` by closing the whole connection (540
    NOT_IMPLEMENTED): a fleet view that cancelled its beats consumer with
    beats in flight lost its connection. A stream needs no reject (it keeps
    every message; acks are only credit), so this channel drops them."""
    ch = conn.channel()
    impl = getattr(ch, "_impl", None)  # a BlockingChannel's pika.channel.Channel
    if impl is not None:
        impl.basic_reject = _forget  # over pika's method, for this channel only
    return ch


def published_as(exchange: str, key: str, want_exchange: str, want_key: str) -> bool:
    """Whether a stream message came through ``want_exchange`` under
    ``want_key``, the routing key its body gives: only then did the
    broker's topic permissions check that its publisher may speak for the
    host it names. The default exchange reaches every queue by name,
    streams included, and hosts may write to it (their replies go through
    it), so a host could append a message claiming to be another's
    (docs/security.md); such a message is skipped, with a warning."""
    if exchange == want_exchange and key == want_key:
        return True
    log.warning("skipped a stream message published on %r under %r, not on %r under %r "
                "(forged, or a peer's defect)", exchange, key, want_exchange, want_key)
    return False


def _key_of(raw: dict[str, Any]) -> str:
    """An event's routing key from its wire map (unknown enum values as sent)."""
    return f"{raw.get('host_id')}.{raw.get('class')}.{raw.get('action')}"


class Tracker:
    """Per-host ``(epoch, seq)`` tracking and the resync rule of §10.1,
    shared by the broker and socket subscriptions. Pure logic: hand it
    events, get notifications."""

    def __init__(self, patterns: Sequence[str], snapshot: Snapshot | None) -> None:
        self.patterns = list(patterns)
        self.snapshot = snapshot
        #: host -> (epoch, last seq seen or reflected)
        self.seen: dict[str, tuple[str, int]] = {}

    def followed(self, host: str) -> bool:
        """Whether the patterns follow ``host``'s events."""
        return any(pattern_host(p) in (None, host) for p in self.patterns)

    def matches(self, key: str) -> bool:
        return any(topic_matches(p, key) for p in self.patterns)

    def _order(self, host: str, epoch: str, seq: int) -> ResyncReason | None | bool:
        """``None``: the next one (or the first seen); ``False``: old or a
        duplicate; a reason: events were lost before it."""
        known = self.seen.get(host)
        if known is None:
            return None
        e, last = known
        if e != epoch:
            return ResyncReason.NEW_EPOCH
        if seq <= last:
            return False
        if seq > last + 1:
            return ResyncReason.GAP
        return None

    def _snapshot(self, host: str) -> tuple[t.Inventory | None, BaseException | None]:
        if self.snapshot is None:
            return None, None
        try:
            return self.snapshot(host), None
        except Exception as e:  # noqa: BLE001 - reported in the Resync
            log.warning("host.snapshot of %s failed: %s", host, e)
            return None, e

    def resync(self, host: str, reason: ResyncReason, offset: int | None) -> Resync:
        """Snapshots ``host`` and makes its inventory the new baseline."""
        inv, err = self._snapshot(host)
        if inv is not None and inv.epoch is not None:
            self.seen[host] = (inv.epoch, inv.seq)
        return Resync(host, reason, inv, offset, err)

    def hosts(self) -> list[str]:
        """Every host seen or named by a pattern."""
        named = {h for h in map(pattern_host, self.patterns) if h is not None}
        return sorted(set(self.seen) | named)

    def event(self, raw: Any, key: str | None, offset: int | None) -> list[Notification]:
        """Takes in one event (its wire map: ``DecodeError`` when it is not
        one); the notifications it makes."""
        ev = t.Event.from_wire(raw)
        host, epoch, seq = ev.host_id, ev.epoch, ev.seq
        order = self._order(host, epoch, seq)
        if order is False:
            return []
        online = ev.class_ == t.ObjectClass.AGENT and ev.action == t.EventAction.ONLINE
        reason = order if isinstance(order, ResyncReason) else None
        if reason is None and online:
            reason = ResyncReason.AGENT_ONLINE
        out: list[Notification] = []
        last = seq
        keep = True
        if reason is not None and self.followed(host):
            carried = ev.inventory if online else None
            inv, err = (carried, None) if carried is not None else self._snapshot(host)
            if inv is not None and inv.epoch == epoch:
                if inv.seq >= seq and carried is None:
                    # The inventory already reflects this event.
                    keep = False
                last = max(last, inv.seq)
            out.append(Resync(host, reason, inv, offset, err))
        self.seen[host] = (epoch, last)
        if keep:
            key = key or _key_of(raw)
            if self.matches(key):
                out.append(EventNotification(ev, offset, key))
        return out

    def hello(self, host: str, epoch: str, last_seq: int) -> list[Notification]:
        """Where an agent stands when its event stream (re)opens: a host seen
        before resyncs when it restarted or published events not seen."""
        order = self._order(host, epoch, last_seq + 1)
        if order is False:
            return []
        self.seen[host] = (epoch, last_seq)
        if isinstance(order, ResyncReason) and self.followed(host):
            return [self.resync(host, order, None)]
        return []


# --------------------------------------------------------------- pika helpers


def _stream_offset(start: Start) -> Any:
    """The ``x-stream-offset`` consumer argument for ``start``."""
    if isinstance(start, bool):
        raise TypeError("start must be 'next', 'first', an offset or a datetime")
    if isinstance(start, str):
        if start not in ("next", "first"):
            raise ValueError(f"start must be 'next', 'first', an offset or a datetime, not {start!r}")
        return start
    if isinstance(start, int):
        if start < 0:
            raise ValueError(f"a stream offset is not negative: {start}")
        return start
    if isinstance(start, _dt.datetime):
        # pika sends an aware datetime as an AMQP timestamp (seconds, UTC).
        if start.tzinfo is None:
            start = start.astimezone()
        return start.astimezone(_dt.timezone.utc)
    raise TypeError("start must be 'next', 'first', an offset or a datetime")


def stream_offset_of(properties: Any) -> int | None:
    """A stream delivery's offset (its ``x-stream-offset`` header)."""
    headers = getattr(properties, "headers", None) or {}
    o = headers.get("x-stream-offset")
    return o if isinstance(o, int) and not isinstance(o, bool) else None


def close_quietly(conn: Any) -> None:
    """Closes a connection, whatever state it is in."""
    try:
        if conn is not None and conn.is_open:
            conn.close()
    except Exception:  # noqa: BLE001 - it is being given up on
        pass


@dataclass
class _Delivery:
    generation: int
    tag: int
    exchange: str
    key: str
    content_type: str | None
    body: bytes
    offset: int | None


@dataclass
class _Lost:
    """The broker no longer had offset ``asked``: it started at ``first``."""

    asked: int
    first: int


class Iterating:
    """Iteration over a subscription: `next(None)` until it is closed."""

    _closed: bool

    def next(self, timeout: float | None = None) -> Notification | None:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Notification]:
        return self

    def __next__(self) -> Notification:
        if self._closed:
            raise StopIteration
        n = self.next(None)
        assert n is not None
        return n


class Subscription(Iterating):
    """An iterator of notifications (:class:`EventNotification` and
    :class:`Resync`) read from the broker's event stream.

    ``open_connection`` returns a fresh ``pika.BlockingConnection``; it is
    called for the first connection and for every reconnection, with the
    subscription's :attr:`name` (``"subscription <id>"``) when it takes an
    argument, for the connection's ``connection_name`` to end with (so that
    one subscription's connections can be told apart in
    ``rabbitmqctl list_connections``).
    ``patterns`` are topic patterns on routing keys
    ``<host>.<class>.<action>`` (``h1.vm.*``, ``*.task.finished``, ``#``;
    all when empty). ``snapshot(host)`` returns a fresh ``host.snapshot``
    inventory for resyncs (without it, resyncs carry no inventory).

    Raises at once if the broker cannot be reached (what ``open_connection``
    raises) or the stream does not exist (``NotFoundError``); after that, a lost connection is reopened (after 0.1 s, doubling
    up to 2 s) and reading resumes after the last event read.
    """

    def __init__(
        self,
        open_connection: OpenConnection,
        patterns: Sequence[str] = ("#",),
        start: Start = "next",
        snapshot: Snapshot | None = None,
        prefetch: int = 1000,
    ) -> None:
        if isinstance(patterns, str):
            raise TypeError("patterns is a list of patterns, not one string")
        pats = list(patterns) or ["#"]
        for p in pats:
            check_pattern(p)
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self._start_arg = _stream_offset(start)
        self._open = open_connection
        self._prefetch = prefetch
        self._ack_every = max(1, prefetch // 4)
        self._tracker = Tracker(pats, snapshot)
        self.id = uuid.uuid4().hex[:12]
        #: The role its connections are opened for (``open_connection(name)``):
        #: their ``connection_name`` ends with it.
        self.name = f"subscription {self.id}"
        # The offset the next delivery should have, once known.
        self._asked: int | None = start if isinstance(start, int) and not isinstance(start, bool) else None
        self._position: int | None = None
        self._deliveries: collections.deque[_Delivery | _Lost] = collections.deque()
        self._pending: collections.deque[tuple[Notification, int | None]] = collections.deque()
        self._conn: Any = None
        self._ch: Any = None
        self._tag: str | None = None
        self._generation = 0
        self._first_of_connection = True
        self._unacked = 0
        self._pause = _FIRST_PAUSE
        self._retry_at = 0.0
        self._closed = False
        #: How many times a lost connection was reopened.
        self.reconnections = 0
        self._connected_once = False
        self._connect()

    # ---- public

    @property
    def position(self) -> int | None:
        """The stream offset of the last event taken (notified, or filtered
        out after the last notification taken): resume after it with
        ``start=position + 1``."""
        return self._position

    @property
    def patterns(self) -> list[str]:
        return list(self._tracker.patterns)

    def next(self, timeout: float | None = None) -> Notification | None:
        """The next notification; ``None`` when none came within ``timeout``
        seconds (``None``: wait as long as it takes). Reconnects meanwhile
        if the connection is lost."""
        if self._closed:
            raise ValueError("the subscription is closed")
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        polled = False
        while True:
            if self._pending:
                n, pos = self._pending.popleft()
                if pos is not None:
                    self._position = pos
                return n
            if self._deliveries:
                self._take(self._deliveries.popleft())
                continue
            now = time.monotonic()
            remaining = None if deadline is None else deadline - now
            if remaining is not None and remaining <= 0 and polled:
                return None
            if self._conn is None:
                if now < self._retry_at:
                    wait = self._retry_at - now
                    if remaining is not None and remaining < wait:
                        time.sleep(max(0.0, remaining))
                        return None
                    time.sleep(wait)
                    continue
                try:
                    self._connect()
                except _LOST as e:
                    log.info("%s: cannot reconnect yet: %s", self.name, e)
                    self._retry_at = time.monotonic() + self._pause
                    self._pause = min(self._pause * 2, _MAX_PAUSE)
                polled = True
                continue
            limit = 1.0 if remaining is None else max(0.0, min(remaining, 1.0))
            try:
                self._conn.process_data_events(time_limit=limit)
                ch = self._ch
                if ch is not None and (not ch.is_open or self._tag not in ch.consumer_tags):
                    raise pika.exceptions.ChannelClosed(0, "the stream consumer ended")
            except _LOST as e:
                if self._conn is not None:  # else lost already, by an ack
                    self._lost(e)
            polled = True

    def close(self) -> None:
        """Ends the subscription and closes its connection. Store
        :attr:`position` first to resume later."""
        if self._closed:
            return
        self._closed = True
        close_quietly(self._conn)
        self._conn = self._ch = None
        self._deliveries.clear()
        self._pending.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed:
                close_quietly(self._conn)
        except Exception:  # noqa: BLE001
            pass

    # ---- connection

    def _connect(self) -> None:
        """Opens a connection and a consumer at the offset to resume from."""
        start = self._asked if self._asked is not None else self._start_arg
        conn = open_named(self._open, self.name)
        try:
            ch = stream_channel(conn)
            ch.basic_qos(prefetch_count=self._prefetch)
            self._generation += 1
            gen = self._generation

            def on_message(_ch: Any, method: Any, props: Any, body: bytes) -> None:
                self._received(gen, method, props, body)

            tag = ch.basic_consume(
                EVENT_STREAM,
                on_message,
                auto_ack=False,
                arguments={"x-stream-offset": start},
            )
        except pika.exceptions.ChannelClosedByBroker as e:
            close_quietly(conn)
            if e.reply_code == 404:
                raise NotFoundError(
                    f"the stream {EVENT_STREAM} does not exist on this broker: no agent of this "
                    "version has connected yet (agents declare it), or an administrator must run "
                    "`hostctl admin setup`") from e
            raise
        except BaseException:
            close_quietly(conn)
            raise
        if self._connected_once:
            self.reconnections += 1
        self._connected_once = True
        self._conn, self._ch, self._tag = conn, ch, str(tag)
        self._first_of_connection = True
        self._unacked = 0
        self._pause = _FIRST_PAUSE
        log.debug("%s: consuming %s at %r", self.name, EVENT_STREAM, start)

    def _lost(self, e: BaseException) -> None:
        log.info("%s: connection lost (%s); resuming after the last event read",
                 self.name, e)
        close_quietly(self._conn)
        self._conn = self._ch = None
        self._tag = None
        self._generation += 1
        self._retry_at = time.monotonic() + self._pause
        self._pause = min(self._pause * 2, _MAX_PAUSE)

    def _received(self, gen: int, method: Any, props: Any, body: bytes) -> None:
        """A delivery arrived (inside ``process_data_events``)."""
        if gen != self._generation:
            return
        offset = stream_offset_of(props)
        d = _Delivery(gen, int(method.delivery_tag), str(method.exchange), str(method.routing_key),
                      getattr(props, "content_type", None), bytes(body), offset)
        if offset is not None and self._asked is not None:
            if offset < self._asked:
                # The broker starts at a chunk's beginning.
                self._ack(d)
                return
            if self._first_of_connection and offset > self._asked:
                self._deliveries.append(_Lost(self._asked, offset))
        self._first_of_connection = False
        if offset is not None:
            self._asked = offset + 1
        self._deliveries.append(d)

    def _ack(self, d: _Delivery) -> None:
        """Acks in batches (a stream needs acks only for credit)."""
        if d.generation != self._generation or self._ch is None:
            return
        self._unacked += 1
        if self._unacked >= self._ack_every:
            self._unacked = 0
            try:
                self._ch.basic_ack(delivery_tag=d.tag, multiple=True)
            except _LOST as e:
                self._lost(e)

    # ---- processing

    def _take(self, item: _Delivery | _Lost) -> None:
        if isinstance(item, _Lost):
            log.warning("%s: offsets %d..%d are no longer kept; resyncing every host followed",
                        self.name, item.asked, item.first - 1)
            for host in self._tracker.hosts():
                self._pending.append(
                    (self._tracker.resync(host, ResyncReason.HISTORY_LOST, None), None))
            return
        self._ack(item)
        try:
            raw = decode_body(item.content_type, item.body)
            if not published_as(item.exchange, item.key, EVENT_EXCHANGE, _key_of(raw)):
                out = []
            else:
                out = self._tracker.event(raw, item.key, item.offset)
        except (ValueError, LookupError, TypeError, msgpack.UnpackException) as e:  # one bad event does not end it
            log.warning("%s: undecodable event at offset %s skipped: %s",
                        self.name, item.offset, e)
            out = []
        if not out:
            if item.offset is not None:
                self._position = item.offset
            return
        for i, n in enumerate(out):
            self._pending.append((n, item.offset if i == len(out) - 1 else None))
