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
from typing import Any, Callable, Iterable, Sequence, TypeVar

import pika
import pika.exceptions

from . import types as t
from .errors import AuthError, ConnectionError, Error, NotFoundError
from .events import (OpenConnection, close_quietly, decode_body, open_named, published_as,
                     stream_channel, stream_offset_of)

__all__ = [
    "BEAT_STREAM",
    "HostView",
    "Liveness",
    "PRESENCE_EXCHANGE",
    "ROSTER_STREAM",
    "expected",
    "fleet_view",
    "local_view",
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
    #: of heartbeats read (gone for longer than that).
    last_seen_ms: int | None
    #: Heartbeat interval, ms.
    interval_ms: int
    #: Agent, protocol, libvirt and hypervisor versions (empty strings when
    #: none were seen).
    versions: t.Versions
    #: Commands the agent serves (from its announcement).
    capabilities: list[str]
    #: Health from the last heartbeat (``down``, "no heartbeat seen", when none was).
    health: t.Health
    #: Load from the last heartbeat (zeros when none was seen).
    load: t.Load
    #: Whether it takes new VMs (``host.disable``), from the last heartbeat
    #: (enabled when none was seen): placement skips a disabled host.
    placement: t.Placement
    #: How other hosts' libvirt reaches this one's for migrations (from its
    #: announcement); ``None``: it takes none.
    migration_uri: str | None
    #: The last heartbeat seen, or ``None``.
    heartbeat: t.Heartbeat | None
    #: When its latest announcement was published, ms since the Unix epoch.
    announced_at: int | None
    #: Whether its agent was connected to the broker when asked (a host is
    #: asked about once silent); ``None`` when not asked.
    connected: bool | None = None
    #: When the agent's latest session started, ms since the Unix epoch.
    started_at: int = 0
    #: The agent's last event sequence number (from its last heartbeat; 0 without).
    last_seq: int = 0


def _no_versions() -> t.Versions:
    return t.Versions(agent="", protocol="", libvirt="", hypervisor="")


def _no_health() -> t.Health:
    return t.Health(status=t.HealthStatus.DOWN, hypervisor_connected=False,
                    message="no heartbeat seen")


def _idle() -> t.Load:
    return t.Load(in_flight=0, commands_total=0, tasks_running=0, vms_active=0,
                  load_avg_milli=0, memory_free_kib=0)


# --------------------------------------------------------------- state


@dataclass
class _Entry:
    host_id: str
    epoch: str | None = None
    started_at: int = 0
    interval_ms: int = 5000
    labels: list[str] = dc_field(default_factory=list)
    versions: t.Versions | None = None
    capabilities: list[str] = dc_field(default_factory=list)
    migration_uri: str | None = None
    #: When last heard of: the latest heartbeat's or announcement's time.
    last: int | None = None
    announced_at: int | None = None
    beat: t.Heartbeat | None = None
    offline: bool = False
    connected: bool | None = None


class _State:
    """What the view knows of each host, and the forgotten ones. Pure data."""

    def __init__(self) -> None:
        self.hosts: dict[str, _Entry] = {}
        # Hosts forgotten, and when: what they published before is ignored.
        self.forgotten: dict[str, int] = {}

    def _entry(self, host: str, time_ms: int) -> _Entry | None:
        f = self.forgotten.get(host)
        if f is not None and time_ms <= f:
            return None
        e = self.hosts.get(host)
        if e is None:
            e = self.hosts[host] = _Entry(host)
        return e

    def announce(self, a: t.Announcement) -> None:
        if a.action == t.RosterAction.FORGET:
            # Only what the host publishes after this brings it back.
            e = self.hosts.get(a.host_id)
            if e is None or (e.last or 0) <= a.time:
                self.hosts.pop(a.host_id, None)
            self.forgotten[a.host_id] = max(self.forgotten.get(a.host_id, 0), a.time)
            return
        if a.action not in (t.RosterAction.ONLINE, t.RosterAction.OFFLINE):
            return
        e = self._entry(a.host_id, a.time)
        if e is None:
            return
        if e.last is not None and e.last > a.time and a.action == t.RosterAction.ONLINE:
            return
        if a.epoch is not None:
            if a.epoch != e.epoch:
                e.beat = None
            e.epoch = a.epoch
        e.started_at = a.started_at
        if a.interval_ms > 0:
            e.interval_ms = a.interval_ms
        e.labels = list(a.labels)
        if a.versions is not None:
            e.versions = a.versions
        if a.capabilities:
            e.capabilities = list(a.capabilities)
        if a.action == t.RosterAction.ONLINE:
            e.migration_uri = a.migration_uri
        e.offline = a.action == t.RosterAction.OFFLINE
        e.connected = None
        e.last = max(e.last or 0, a.time)
        e.announced_at = max(e.announced_at or 0, a.time)

    def beat(self, hb: t.Heartbeat) -> None:
        e = self._entry(hb.host_id, hb.time)
        if e is None:
            return
        if e.last is not None and e.last > hb.time:
            return
        if hb.epoch != e.epoch:
            e.offline = False
            e.epoch = hb.epoch
            e.started_at = hb.started_at
        elif e.offline:
            return  # a late beat of an epoch that said goodbye
        e.interval_ms = hb.interval_ms
        e.labels = list(hb.labels)
        e.versions = hb.versions
        e.last = hb.time
        e.beat = hb
        e.connected = None

    def view(self, e: _Entry, now: int, lookback_ms: int) -> HostView:
        age = None if e.last is None else max(0, now - e.last)
        interval = max(1, e.interval_ms)
        if e.offline:
            liveness = Liveness.GONE
        elif e.connected is False:
            # Asked since its last beat: no consumer (§10.4 step 4), however
            # recent that beat (a later beat clears the answer).
            liveness = Liveness.GONE
        elif age is not None and age < 3 * interval:
            liveness = Liveness.ALIVE
        elif e.connected is True:
            liveness = Liveness.STALE
        elif age is not None and age < 10 * interval:
            liveness = Liveness.STALE
        else:
            liveness = Liveness.GONE
        hb = e.beat
        return HostView(
            host_id=e.host_id,
            liveness=liveness,
            labels=list(e.labels),
            epoch=e.epoch,
            last_seen_ms=age if age is not None and age <= lookback_ms else None,
            interval_ms=e.interval_ms,
            versions=e.versions or _no_versions(),
            capabilities=list(e.capabilities),
            health=hb.health if hb is not None else _no_health(),
            load=hb.load if hb is not None else _idle(),
            placement=hb.placement if hb is not None else t.Placement(),
            migration_uri=e.migration_uri,
            heartbeat=hb,
            announced_at=e.announced_at,
            connected=e.connected,
            started_at=e.started_at,
            last_seq=hb.last_seq if hb is not None else 0,
        )


def local_view(hb: t.Heartbeat) -> HostView:
    """The view of the one host an agent's socket serves, from the heartbeat
    it answered with just now: alive (it answered)."""
    state = _State()
    state.beat(hb)
    view = state.view(state.hosts[hb.host_id], max(_now_ms(), hb.time), 1 << 62)
    view.liveness = Liveness.ALIVE
    return view


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
        conn = open_named(open_connection, "fleet view")
    except (pika.exceptions.AMQPError, OSError, Error):
        return set(wanted)  # not asked: still waited for
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
        self.ch = stream_channel(conn)
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

    def read(self, streams: Sequence[tuple[str, Any]]) -> list[list[Any]]:
        """Reads each ``(stream, x-stream-offset)`` up to this view's marker
        (all at once); per stream, its messages' bodies as plain data."""
        out: list[list[Any]] = [[] for _ in streams]
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
                host = raw.get("host_id") if isinstance(raw, dict) else None
                what = "heartbeat" if streams[i][0] == BEAT_STREAM else (
                    raw.get("action") if isinstance(raw, dict) else None)
                if not published_as(str(method.exchange), key, PRESENCE_EXCHANGE, f"{host}.{what}"):
                    return
                out[i].append(raw)
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


D = TypeVar("D")


def _decoded(decode: Callable[[Any], D], raws: Iterable[Any]) -> list[D]:
    """What decodes of ``raws`` (what a newer or broken peer sent that does
    not is skipped, as the Rust SDK does)."""
    out: list[D] = []
    for raw in raws:
        try:
            out.append(decode(raw))
        except (ValueError, LookupError, TypeError) as e:
            log.debug("undecodable presence message skipped: %r", e)
    return out


def _since(lookback_ms: int) -> _dt.datetime:
    """An ``x-stream-offset`` ``lookback_ms`` ago (an AMQP timestamp, seconds)."""
    return _dt.datetime.fromtimestamp((_now_ms() - lookback_ms) // 1000, tz=_dt.timezone.utc)


def fleet_view(open_connection: OpenConnection, timeout: float = 10.0) -> list[HostView]:
    """Every host the broker remembers (announced in the last seven days and
    not forgotten), alive, stale or gone, sorted by host id: §10.4 step by
    step, on a connection of its own (``open_connection()``, or
    ``open_connection("fleet view")`` when it takes a role), closed before
    returning. When the broker's history does not all arrive within
    ``timeout`` seconds, returns what it read (and logs a warning)."""
    deadline = time.monotonic() + timeout
    conn = open_named(open_connection, "fleet view")
    try:
        return _read_fleet(conn, deadline)
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code == 404:
            raise NotFoundError(
                f"the presence exchange or streams do not exist on this broker ({e.reply_text}): "
                "no agent of this version has connected yet (agents declare them), or an "
                "administrator must run `hostctl admin setup`") from e
        if e.reply_code == 403:
            raise AuthError(
                f"the fleet view needs to read {ROSTER_STREAM} and {BEAT_STREAM} and to publish "
                f"on {PRESENCE_EXCHANGE} with `_sync.` keys (docs/security.md): {e.reply_text}") from e
        raise ConnectionError(f"the fleet view's channel was closed: {e!r}") from e
    except pika.exceptions.NackError as e:
        raise ConnectionError("the broker refused the fleet view's sync marker") from e
    except pika.exceptions.AMQPError as e:
        raise ConnectionError(f"the fleet view lost its broker connection: {e!r}") from e
    finally:
        close_quietly(conn)


def _read_fleet(conn: Any, deadline: float) -> list[HostView]:
    """§10.4 on ``conn``."""
    reader = _Reader(conn, deadline)
    # 2., 3.: the roster from its start and one interval of heartbeats, at once.
    raw_roster, raw_beats = reader.read(
        [(ROSTER_STREAM, "first"), (BEAT_STREAM, _since(_FIRST_LOOKBACK_MS))])
    roster = _decoded(t.Announcement.from_wire, raw_roster)
    beats = _decoded(t.Heartbeat.from_wire, raw_beats)
    state = _State()
    for a in roster:
        state.announce(a)
    longest = max([a.interval_ms for a in roster] + [b.interval_ms for b in beats] + [0])
    lookback = max(_MIN_LOOKBACK_MS, 3 * longest + _LOOKBACK_MARGIN_MS)
    for b in beats:
        state.beat(b)
    first = max(_FIRST_LOOKBACK_MS, longest + _FIRST_MARGIN_MS)
    if first > _FIRST_LOOKBACK_MS:
        # Some host beats slowly: read one of its intervals.
        (again,) = reader.read([(BEAT_STREAM, _since(first))])
        for b in _decoded(t.Heartbeat.from_wire, again):
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
        for b in _decoded(t.Heartbeat.from_wire, again):
            state.beat(b)
    for host, connected in answers.items():
        e = state.hosts.get(host)
        if e is not None:
            e.connected = connected
    now = _now_ms()
    return [state.view(state.hosts[h], now, lookback) for h in sorted(state.hosts)]


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
