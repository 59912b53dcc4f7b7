"""The fleet view: every host the broker remembers, alive, stale or gone,
complete at once in a fresh process (docs/protocol.md §10.2 to §10.4).

Agents announce themselves in the stream ``hostbus.presence.roster``
(``<host>.online`` at every session start, ``.offline`` at a clean stop,
``.forget`` when an operator removes a host) and beat into
``hostbus.presence.beats``. :func:`fleet_view` publishes a sync marker,
reads the roster from its start and the heartbeats of the last interval up
to that marker, asks the broker (a passive ``queue.declare`` of each
silent host's command queue) whether the hosts not heard from are still
connected, and only then, if some are, reads three intervals of
heartbeats to tell alive from stale.
"""

from __future__ import annotations

import datetime as _dt
import enum
import logging
import time
import uuid
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Iterable, Sequence

import pika
import pika.exceptions

from .events import OpenConnection, close_quietly, decode_body, field, from_wire, stream_offset_of

__all__ = [
    "BEAT_STREAM",
    "HostView",
    "Liveness",
    "PRESENCE_EXCHANGE",
    "ROSTER_STREAM",
    "expected",
    "fleet_view",
    "probe",
    "still_consuming",
]

log = logging.getLogger("hostbus.presence")

PRESENCE_EXCHANGE = "hostbus.presence"
ROSTER_STREAM = "hostbus.presence.roster"
BEAT_STREAM = "hostbus.presence.beats"

# Read heartbeats this far back first: one default interval and a margin.
_FIRST_LOOKBACK_MS = 8000
_FIRST_MARGIN_MS = 3000
# Then, only if needed, at least this far: three default intervals and a margin.
_MIN_LOOKBACK_MS = 17000
_LOOKBACK_MARGIN_MS = 2000
# Stream deliveries in flight (streams need a prefetch); acked in quarters.
_PREFETCH = 2000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Liveness(str, enum.Enum):
    """How alive a host looks."""

    #: A heartbeat arrived within three intervals.
    ALIVE = "alive"
    #: Silent for three intervals or more, but its agent is still connected
    #: to the broker (hung, or its heartbeats are delayed); before the broker
    #: was asked, silent for three to ten intervals.
    STALE = "stale"
    #: The agent said goodbye, is not connected to the broker, or has been
    #: silent for ten intervals without the broker being asked.
    GONE = "gone"


@dataclass
class HostView:
    """What the fleet view knows of one host."""

    host_id: str
    liveness: Liveness
    #: The host's labels (``group.<label>`` targets reach it).
    labels: list[str]
    #: The agent's epoch (of its latest session seen).
    epoch: str | None
    #: Milliseconds since the host was last heard of (its last heartbeat, or
    #: its latest announcement); ``None`` when that was before the windows
    #: read (gone for longer than that).
    last_seen_ms: int | None
    #: Heartbeat interval, ms.
    interval_ms: int
    #: ``Versions`` (agent, protocol, libvirt, hypervisor); ``None`` when unknown.
    versions: Any
    #: Commands the agent serves (from its announcement).
    capabilities: list[str]
    #: ``Health`` from the last heartbeat; ``None`` when none was seen.
    health: Any
    #: ``Load`` from the last heartbeat; ``None`` when none was seen.
    load: Any
    #: ``Placement`` from the last heartbeat; ``None`` when none was seen
    #: (placement then counts it enabled).
    placement: Any
    #: How other hosts' libvirt reaches this one's (from its announcement).
    migration_uri: str | None
    #: The last heartbeat seen (``Heartbeat``), or ``None``.
    heartbeat: Any
    #: When its latest announcement was published, ms since the Unix epoch.
    announced_at: int | None
    #: Whether its agent was connected to the broker when asked (a host is
    #: asked about once silent); ``None`` when not asked.
    connected: bool | None = None
    #: When the agent's latest session started, ms since the Unix epoch.
    started_at: int | None = None
    #: The agent's last event sequence number (from its last heartbeat).
    last_seq: int | None = None


# --------------------------------------------------------------- state


@dataclass
class _Entry:
    host_id: str
    epoch: str | None = None
    started_at: int | None = None
    interval_ms: int = 5000
    labels: list[str] = dc_field(default_factory=list)
    versions: Any = None
    capabilities: list[str] = dc_field(default_factory=list)
    migration_uri: str | None = None
    #: When last heard of: the latest heartbeat's or announcement's time.
    last: int | None = None
    announced_at: int | None = None
    beat: Any = None
    beat_raw: dict[str, Any] | None = None
    offline: bool = False
    connected: bool | None = None


class _State:
    """What the view knows of each host, and the forgotten ones. Pure data."""

    def __init__(self) -> None:
        self.hosts: dict[str, _Entry] = {}
        # Hosts forgotten, and when: what they published before is ignored.
        self.forgotten: dict[str, int] = {}

    def _entry(self, host: str, t: int) -> _Entry | None:
        f = self.forgotten.get(host)
        if f is not None and t <= f:
            return None
        e = self.hosts.get(host)
        if e is None:
            e = self.hosts[host] = _Entry(host)
        return e

    def announce(self, raw: dict[str, Any]) -> None:
        host = str(raw["host_id"])
        action = str(raw.get("action"))
        t = int(raw.get("time") or 0)
        if action == "forget":
            e = self.hosts.get(host)
            if e is None or (e.last or 0) <= t:
                self.hosts.pop(host, None)
            self.forgotten[host] = max(self.forgotten.get(host, 0), t)
            return
        if action not in ("online", "offline"):
            return
        e = self._entry(host, t)
        if e is None:
            return
        if e.last is not None and e.last > t and action == "online":
            return
        epoch = raw.get("epoch")
        if epoch is not None:
            if str(epoch) != e.epoch:
                e.beat = e.beat_raw = None
            e.epoch = str(epoch)
        e.started_at = int(raw.get("started_at") or 0)
        if int(raw.get("interval_ms") or 0) > 0:
            e.interval_ms = int(raw["interval_ms"])
        e.labels = [str(x) for x in raw.get("labels") or []]
        if raw.get("versions") is not None:
            e.versions = from_wire("Versions", raw["versions"])
        if raw.get("capabilities"):
            e.capabilities = [str(x) for x in raw["capabilities"]]
        if action == "online":
            mu = raw.get("migration_uri")
            e.migration_uri = None if mu is None else str(mu)
        e.offline = action == "offline"
        e.connected = None
        e.last = max(e.last or 0, t)
        e.announced_at = max(e.announced_at or 0, t)

    def beat(self, raw: dict[str, Any]) -> None:
        host = str(raw["host_id"])
        t = int(raw.get("time") or 0)
        e = self._entry(host, t)
        if e is None:
            return
        if e.last is not None and e.last > t:
            return
        epoch = str(raw.get("epoch"))
        if epoch != e.epoch:
            e.offline = False
            e.epoch = epoch
            e.started_at = int(raw.get("started_at") or 0)
        elif e.offline:
            return  # a late beat of an epoch that said goodbye
        e.interval_ms = int(raw.get("interval_ms") or e.interval_ms)
        e.labels = [str(x) for x in raw.get("labels") or []]
        if raw.get("versions") is not None:
            e.versions = from_wire("Versions", raw["versions"])
        e.last = t
        e.beat_raw = raw
        e.beat = None  # decoded when viewed
        e.connected = None

    def view(self, e: _Entry, now: int, lookback_ms: int) -> HostView:
        age = None if e.last is None else max(0, now - e.last)
        interval = max(1, e.interval_ms)
        if e.offline:
            liveness = Liveness.GONE
        elif age is not None and age < 3 * interval:
            liveness = Liveness.ALIVE
        elif e.connected is True:
            liveness = Liveness.STALE
        elif e.connected is False:
            liveness = Liveness.GONE
        elif age is not None and age < 10 * interval:
            liveness = Liveness.STALE
        else:
            liveness = Liveness.GONE
        if e.beat is None and e.beat_raw is not None:
            e.beat = from_wire("Heartbeat", e.beat_raw)
        hb = e.beat
        return HostView(
            host_id=e.host_id,
            liveness=liveness,
            labels=list(e.labels),
            epoch=e.epoch,
            last_seen_ms=age if age is not None and age <= lookback_ms else None,
            interval_ms=e.interval_ms,
            versions=e.versions,
            capabilities=list(e.capabilities),
            health=None if hb is None else field(hb, "health"),
            load=None if hb is None else field(hb, "load"),
            placement=None if hb is None else field(hb, "placement"),
            migration_uri=e.migration_uri,
            heartbeat=hb,
            announced_at=e.announced_at,
            connected=e.connected,
            started_at=e.started_at,
            last_seq=None if e.beat_raw is None else int(e.beat_raw.get("last_seq") or 0),
        )


# --------------------------------------------------------------- broker


def probe(conn: Any, hosts: Iterable[str]) -> dict[str, bool]:
    """Asks the broker, for each host, whether its command queue
    ``hostbus.agent.<host>`` has a consumer (its agent is connected), with a
    passive ``queue.declare`` on a throwaway channel of ``conn`` (a queue
    that does not exist, ``404``, counts as none and closes the channel:
    another is opened). A host the broker could not be asked about is left
    out."""
    out: dict[str, bool] = {}
    ch: Any = None
    try:
        for host in hosts:
            if ch is None or not ch.is_open:
                try:
                    ch = conn.channel()
                except (pika.exceptions.AMQPError, OSError):
                    break
            try:
                ok = ch.queue_declare(f"hostbus.agent.{host}", passive=True)
                out[host] = int(ok.method.consumer_count) > 0
            except pika.exceptions.ChannelClosedByBroker as e:
                if e.reply_code == 404:
                    out[host] = False
                ch = None
            except (pika.exceptions.AMQPError, OSError):
                ch = None
    finally:
        if ch is not None:
            try:
                if ch.is_open:
                    ch.close()
            except (pika.exceptions.AMQPError, OSError):
                pass
    return out


def still_consuming(open_connection: OpenConnection, hosts: Iterable[str]) -> set[str]:
    """Of ``hosts``, those whose agent is still connected to the broker (its
    command queue has a consumer), or that the broker could not be asked
    about: a broadcast keeps waiting for these, and stops waiting for the
    others. Opens a connection of its own (see :func:`probe` to reuse one)."""
    wanted = list(hosts)
    if not wanted:
        return set()
    try:
        conn = open_connection("hostbus-python presence probe")
    except (pika.exceptions.AMQPError, OSError):
        return set(wanted)
    try:
        answers = probe(conn, wanted)
    finally:
        close_quietly(conn)
    return {h for h in wanted if answers.get(h, True)}


class _Reader:
    """Stream consumers of one fleet view, on one channel."""

    def __init__(self, conn: Any, deadline: float) -> None:
        self.conn = conn
        self.deadline = deadline
        self.ch = conn.channel()
        self.ch.basic_qos(prefetch_count=_PREFETCH)
        self.ch.confirm_delivery()
        self.marker = uuid.uuid4().hex
        # Waits for the broker's confirm (NackError when refused).
        self.ch.basic_publish(
            PRESENCE_EXCHANGE,
            f"_sync.{self.marker}",
            b"",
            pika.BasicProperties(type="sync"),
        )
        self.complete = True

    def read(self, streams: Sequence[tuple[str, Any]]) -> list[list[tuple[str, dict[str, Any]]]]:
        """Reads each ``(stream, x-stream-offset)`` up to this view's marker
        (all at once); per stream, its decoded messages as (routing key, map)."""
        out: list[list[tuple[str, dict[str, Any]]]] = [[] for _ in streams]
        done = [False for _ in streams]
        tags: list[str | None] = [None for _ in streams]
        unacked = [0 for _ in streams]
        every = _PREFETCH // 4
        mine = f"_sync.{self.marker}"

        def consumer(i: int) -> Any:
            def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
                unacked[i] += 1
                if unacked[i] >= every:
                    unacked[i] = 0
                    ch.basic_ack(delivery_tag=method.delivery_tag, multiple=True)
                if done[i]:
                    return
                key = str(method.routing_key)
                if key == mine:
                    done[i] = True
                    return
                if key.startswith("_sync.") or getattr(props, "type", None) == "sync":
                    return  # another reader's marker
                try:
                    raw = decode_body(getattr(props, "content_type", None), bytes(body))
                except Exception as e:  # noqa: BLE001 - skipped, as the Rust SDK does
                    log.debug("undecodable presence message %s at %s skipped: %s",
                              key, stream_offset_of(props), e)
                    return
                if isinstance(raw, dict) and "host_id" in raw:
                    out[i].append((key, raw))
            return on_message

        for i, (queue, offset) in enumerate(streams):
            tags[i] = str(self.ch.basic_consume(
                queue, consumer(i), auto_ack=False,
                arguments={"x-stream-offset": offset}))
        while not all(done):
            left = self.deadline - time.monotonic()
            if left <= 0:
                log.warning("fleet view: the broker's history did not arrive in time")
                self.complete = False
                break
            self.conn.process_data_events(time_limit=min(left, 1.0))
            if not self.ch.is_open:
                raise pika.exceptions.ChannelClosed(0, "the presence channel closed")
        for tag in tags:
            if tag is not None:
                self.ch.basic_cancel(tag)
        return out


def _since(lookback_ms: int) -> _dt.datetime:
    """An ``x-stream-offset`` ``lookback_ms`` ago (an AMQP timestamp, seconds)."""
    return _dt.datetime.fromtimestamp((_now_ms() - lookback_ms) // 1000, tz=_dt.timezone.utc)


def fleet_view(open_connection: OpenConnection, timeout: float = 10.0) -> list[HostView]:
    """Every host the broker remembers (announced in the last seven days and
    not forgotten), alive, stale or gone, sorted by host id: §10.4 step by
    step, on a connection of its own (``open_connection(name)``), closed
    before returning. When the broker's history does not all arrive within
    ``timeout`` seconds, returns what it read (and logs a warning)."""
    deadline = time.monotonic() + timeout
    conn = open_connection("hostbus-python presence")
    try:
        reader = _Reader(conn, deadline)
        # 2., 3.: the roster from its start and one interval of heartbeats, at once.
        roster, beats = reader.read([(ROSTER_STREAM, "first"), (BEAT_STREAM, _since(_FIRST_LOOKBACK_MS))])
        state = _State()
        for _, a in roster:
            state.announce(a)
        longest = max(
            [int(a.get("interval_ms") or 0) for _, a in roster]
            + [int(b.get("interval_ms") or 0) for _, b in beats]
            + [0]
        )
        lookback = max(_MIN_LOOKBACK_MS, 3 * longest + _LOOKBACK_MARGIN_MS)
        for _, b in beats:
            state.beat(b)
        first = max(_FIRST_LOOKBACK_MS, longest + _FIRST_MARGIN_MS)
        if first > _FIRST_LOOKBACK_MS:
            # Some host beats slowly: read one of its intervals.
            (again,) = reader.read([(BEAT_STREAM, _since(first))])
            for _, b in again:
                state.beat(b)
        # 4.: a host not heard from in that window is gone unless its agent
        # is still connected.
        now = _now_ms()
        unheard = [
            e.host_id for e in state.hosts.values()
            if not e.offline and (e.last is None or now - e.last >= first)
        ]
        answers = probe(conn, unheard)
        # 5.: only then does its last beat matter (alive with a beat missed, or stale).
        if any(answers.values()):
            (again,) = reader.read([(BEAT_STREAM, _since(lookback))])
            for _, b in again:
                state.beat(b)
        for host, connected in answers.items():
            e = state.hosts.get(host)
            if e is not None:
                e.connected = connected
        now = _now_ms()
        return [state.view(state.hosts[h], now, lookback) for h in sorted(state.hosts)]
    finally:
        close_quietly(conn)


def _reacher(target: str) -> Callable[[HostView], bool]:
    """Whether ``target`` reaches a host (``ValueError`` for a bad target)."""
    if target == "all":
        return lambda v: True
    kind, _, name = target.partition(".")
    if name and kind == "group":
        return lambda v: name in v.labels
    if name and kind == "host":
        return lambda v: v.host_id == name
    raise ValueError(f"`{target}` is not a target: `all`, `group.<label>` or `host.<id>`")


def expected(views: Iterable[HostView], target: str) -> tuple[list[str], list[str]]:
    """The hosts ``target`` (``all``, ``group.<label>``, ``host.<id>``)
    reaches, from a fleet view: (alive ones, which a broadcast waits for;
    stale and gone ones, reported missing unless they answer meanwhile),
    each sorted by host id."""
    reaches = _reacher(target)
    alive: list[str] = []
    not_alive: list[str] = []
    for v in sorted(views, key=lambda v: v.host_id):
        if reaches(v):
            (alive if v.liveness == Liveness.ALIVE else not_alive).append(v.host_id)
    return alive, not_alive
