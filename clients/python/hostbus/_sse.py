"""Event subscriptions over a local agent's HTTP binding (docs/http.md "Events").

``GET /v1/events`` on the agent's Unix socket is a server-sent event stream
of the host's events: first a ``hello`` (the agent's epoch and last
sequence number), then one message per event, and a ``: keep-alive``
comment every 15 s. The agent keeps no history: a subscription starts at
the next event only, and has no position. Each (re)connection starts with
a ``hello``, which tells whether events were missed meanwhile (a gap, or a
new epoch: then a :class:`~hostbus.events.Resync`).

The stream is read by a thread of the subscription's own; decoding,
filtering and snapshots happen on the caller's thread, in
:meth:`SocketSubscription.next`.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import httpx

from . import errors
from .errors import Error
from .events import (
    Iterating,
    EventNotification,
    Notification,
    Resync,
    ResyncReason,
    Snapshot,
    Start,
    Tracker,
    check_pattern,
)

__all__ = [
    "EVENTS_PATH",
    "SocketSubscription",
    "SseMessage",
    "SseParser",
    "EventNotification",
    "Resync",
    "ResyncReason",
]

log = logging.getLogger("hostbus.events")

#: The agent's event stream.
EVENTS_PATH = "/v1/events"

# The longest line or message kept (a longer one is dropped whole).
_LIMIT = 64 << 20

_EOL = re.compile(rb"[\r\n]")

# The agent sends a keep-alive every 15 s: a stream silent for longer is dead.
_READ_TIMEOUT = 45.0

_FIRST_PAUSE = 0.1
_MAX_PAUSE = 2.0

# Messages read ahead of the subscriber.
_QUEUE = 1024


@dataclass(frozen=True)
class SseMessage:
    """One server-sent message: its ``event`` field (``message`` when it had none) and its data."""

    event: str
    data: str


class SseParser:
    """Server-sent events framing, the WHATWG EventSource rules: lines end
    with LF, CR or CRLF (also across chunks); a line starting with ``:`` is
    a comment; ``field: value`` loses one space after the colon; ``data``
    lines join with LF; an empty line ends a message, and a message without
    data is dropped. ``id`` and ``retry`` are not used."""

    def __init__(self) -> None:
        self._line = bytearray()
        self._after_cr = False
        self._event: str | None = None
        self._data: list[str] | None = None
        self._size = 0
        self._overflow = False

    def push(self, chunk: bytes) -> list[SseMessage]:
        """Takes in the next chunk of the stream; the messages it ended."""
        out: list[SseMessage] = []
        i, n = 0, len(chunk)
        if self._after_cr and n and chunk[0] == 0x0A:
            i = 1  # the LF of a CRLF split across chunks
        if n:
            self._after_cr = False
        while i < n:
            m = _EOL.search(chunk, i)
            if m is None:
                self._append(chunk[i:])
                break
            j = m.start()
            self._append(chunk[i:j])
            self._end_line(out)
            if chunk[j] == 0x0D:
                if j + 1 == n:
                    self._after_cr = True
                    i = n
                else:
                    i = j + 2 if chunk[j + 1] == 0x0A else j + 1
            else:
                i = j + 1
        return out

    def _append(self, part: bytes) -> None:
        if not part:
            return
        if len(self._line) + len(part) > _LIMIT:
            self._overflow = True
            return
        self._line += part

    def _end_line(self, out: list[SseMessage]) -> None:
        line = bytes(self._line)
        self._line.clear()
        if not line:
            event, data = self._event, self._data
            self._event, self._data, self._size = None, None, 0
            if self._overflow:
                self._overflow = False
                log.warning("an event-stream message longer than %d bytes was dropped", _LIMIT)
            elif data is not None:
                out.append(SseMessage(event if event is not None else "message", "\n".join(data)))
            return
        text = line.decode("utf-8", errors="replace")
        name, colon, value = text.partition(":")
        if colon:
            if name == "":
                return  # a comment: the agent's keep-alives
            if value.startswith(" "):
                value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            if self._size + len(value) >= _LIMIT:
                self._overflow = True
            else:
                if self._data is None:
                    self._data = []
                self._data.append(value)
                self._size += len(value) + 1


def _refusal(status: int, body: bytes) -> Error:
    """The error for an agent's refusal of the stream request."""
    try:
        reply = json.loads(body)
        if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
            return errors.from_wire(reply["error"])
    except ValueError:
        pass
    text = body.decode("utf-8", errors="replace")[:500]
    return errors.InternalError(f"the agent answered {EVENTS_PATH} with {status}: {text}")


def _socket_client(path: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url="http://agent")


# What the reader thread hands over: a message, or the end of one stream.
_Item = SseMessage | None


class SocketSubscription(Iterating):
    """An iterator of notifications (:class:`EventNotification`, with
    ``offset`` ``None``, and :class:`Resync`) read from an agent's event
    stream over its HTTP binding: the same interface as
    :class:`hostbus.events.Subscription`.

    ``agent`` is the agent's Unix socket, or an ``httpx.Client`` whose
    ``base_url`` reaches the agent (the connection's own: it is left open).
    Only ``start="next"`` is served (else ``ValueError``): the agent keeps
    no history. Raises at once if the agent cannot be reached
    (``hostbus.ConnectionError``) or refuses (the error it answered with);
    after that, a lost stream is reopened (after 0.1 s, doubling up to 2 s).
    """

    def __init__(
        self,
        agent: str | httpx.Client,
        patterns: Sequence[str] = ("#",),
        start: Start = "next",
        snapshot: Snapshot | None = None,
    ) -> None:
        if isinstance(start, bool) or start != "next":
            raise ValueError(
                f"an agent socket serves events from the next one only (the agent keeps no "
                f"history): start={start!r} needs the broker's event stream"
            )
        if isinstance(patterns, str):
            raise TypeError("patterns is a list of patterns, not one string")
        pats = list(patterns) or ["#"]
        for p in pats:
            check_pattern(p)
        # A client of the caller's (which it also calls with) is left open.
        self._own_client = not isinstance(agent, httpx.Client)
        self._client = _socket_client(agent) if isinstance(agent, str) else agent
        self._tracker = Tracker(pats, snapshot)
        # Bounded: a subscriber that does not keep up holds the agent back,
        # whose buffer then drops events, which shows as a gap (a resync).
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=_QUEUE)
        self._pending: list[Notification] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._closed = False
        #: How many times the stream was reopened.
        self.reconnections = 0
        try:
            resp = self._open()  # fails at once
        except BaseException:
            self._close_client()
            raise
        self._thread = threading.Thread(
            target=self._run, args=(resp,), name="hostbus-sse", daemon=True)
        self._thread.start()

    # ---- public

    @property
    def position(self) -> int | None:
        """Always ``None``: the agent's stream has no offsets."""
        return None

    @property
    def patterns(self) -> list[str]:
        return list(self._tracker.patterns)

    def next(self, timeout: float | None = None) -> Notification | None:
        """The next notification; ``None`` when none came within ``timeout`` seconds."""
        if self._closed:
            raise ValueError("the subscription is closed")
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            if self._pending:
                return self._pending.pop(0)
            try:
                if deadline is None:
                    item = self._queue.get()
                else:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if item is None:
                continue
            self._pending.extend(self._message(item))

    def close(self) -> None:
        """Ends the subscription and closes its stream."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with self._lock:
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=2.0)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> SocketSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- messages (caller's thread)

    def _message(self, m: SseMessage) -> list[Notification]:
        try:
            raw = json.loads(m.data)
            if not isinstance(raw, dict):
                raise ValueError("not a map")
            if m.event == "hello":
                return self._tracker.hello(
                    str(raw["host_id"]), str(raw["epoch"]), int(raw["last_seq"]))
            return self._tracker.event(raw, None, None)
        except (ValueError, LookupError, TypeError) as e:  # one bad message does not end the stream
            log.warning("undecodable %s message of the agent's event stream skipped: %s",
                        m.event, e)
            return []

    # ---- the stream (reader thread)

    def _open(self) -> httpx.Response:
        try:
            req = self._client.build_request(
                "GET", EVENTS_PATH,
                headers={"accept": "text/event-stream"},
                timeout=httpx.Timeout(10.0, read=_READ_TIMEOUT),
            )
            resp = self._client.send(req, stream=True)
        except httpx.TransportError as e:
            raise errors.ConnectionError(f"the agent's event stream {EVENTS_PATH}: {e!r}") from e
        if resp.status_code != 200:
            try:
                body = resp.read()
            finally:
                resp.close()
            raise _refusal(resp.status_code, body)
        stream = resp.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self._lock:
            self._sock = sock if isinstance(sock, socket.socket) else None
        return resp

    def _put(self, item: _Item) -> None:
        """Hands an item over, waiting for room (until closed)."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _run(self, resp: httpx.Response) -> None:
        pause = _FIRST_PAUSE
        current: httpx.Response | None = resp
        try:
            while not self._stop.is_set():
                if current is None:
                    try:
                        current = self._open()
                        self.reconnections += 1
                    except Exception as e:  # noqa: BLE001 - retried
                        log.info("event subscription: cannot reopen the agent's stream yet: %s", e)
                        if self._stop.wait(pause):
                            break
                        pause = min(pause * 2, _MAX_PAUSE)
                        continue
                resp, current = current, None
                parser = SseParser()
                try:
                    for chunk in resp.iter_raw():
                        for m in parser.push(chunk):
                            if m.event == "hello":
                                pause = _FIRST_PAUSE
                            self._put(m)
                        if self._stop.is_set():
                            break
                except Exception as e:  # noqa: BLE001 - reconnect
                    if not self._stop.is_set():
                        log.info("event subscription: the agent's stream failed: %s", e)
                finally:
                    with self._lock:
                        self._sock = None
                    resp.close()
                if self._stop.is_set():
                    break
                log.info("event subscription: the agent's event stream ended; reconnecting")
                self._put(None)
                if self._stop.wait(pause):
                    break
                pause = min(pause * 2, _MAX_PAUSE)
        finally:
            self._close_client()

    def _close_client(self) -> None:
        if self._own_client:
            self._client.close()
