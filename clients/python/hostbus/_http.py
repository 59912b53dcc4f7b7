"""The HTTP transport: one host through its agent's Unix socket
(docs/http.md), on httpx. The same commands, replies and errors as on
the bus; the envelope travels as headers."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from . import _wire
from .errors import ConnectionError, InternalError, NoRouteError


class Socket:
    """An agent's HTTP binding on a Unix socket. Thread-safe (httpx's
    client is)."""

    def __init__(self, path: str, *, connect_timeout: float = 10.0) -> None:
        self.path = path
        self._client = httpx.Client(
            transport=httpx.HTTPTransport(uds=path),
            base_url="http://hostbus-agent",
            timeout=httpx.Timeout(None, connect=connect_timeout),
        )
        self._host: str | None = None
        self._lock = threading.Lock()

    def local_host(self) -> str:
        """The id of the host this agent serves (from its heartbeat)."""
        with self._lock:
            if self._host is None:
                beat = self.heartbeat()
                host = beat.get("host_id") if isinstance(beat, dict) else None
                if not isinstance(host, str):
                    raise InternalError(f"the agent at {self.path} sent a heartbeat without host_id")
                self._host = host
            return self._host

    def heartbeat(self) -> Any:
        try:
            r = self._client.get("/v1/heartbeat")
        except httpx.TransportError as e:
            raise ConnectionError(f"cannot reach the agent at {self.path}: {e!r}") from e
        if r.status_code != 200:
            raise _wire.parse_error_reply(r.headers.get("content-type"), r.content, None)
        return r.json()

    def check_host(self, host: str) -> None:
        local = self.local_host()
        if host != local:
            raise NoRouteError(f"the socket {self.path} serves host {local}, not {host}")

    def call(
        self,
        command: str,
        body: bytes,
        *,
        content_type: str,
        command_id: str,
        deadline_ms: int,
        asynchronous: bool,
    ) -> _wire.Reply:
        headers = {
            "content-type": content_type,
            "accept": content_type,
            _wire.COMMAND_ID_HEADER: command_id,
            _wire.DEADLINE_HEADER: str(deadline_ms),
            _wire.VERSION_HEADER: _version(),
        }
        if asynchronous:
            headers[_wire.ASYNC_HEADER] = "true"
        remaining = max(0.001, (deadline_ms - _wire.now_ms()) / 1000)
        try:
            r = self._client.post(f"/v1/commands/{command}", content=body, headers=headers, timeout=httpx.Timeout(remaining, connect=min(remaining, 10.0)))
        except httpx.TimeoutException as e:
            raise _Timeout(str(e)) from e
        except httpx.TransportError as e:
            raise ConnectionError(f"the agent's socket {self.path}: {e!r}") from e
        return _wire.parse_reply(r.headers.get("content-type"), r.content, r.headers.get(_wire.HOST_HEADER))

    def events(self) -> httpx.Client:
        """The client the SSE subscription streams `/v1/events` with."""
        return self._client

    def close(self) -> None:
        self._client.close()


class _Timeout(Exception):
    """No answer from the socket before the deadline."""


def _version() -> str:
    from .types import PROTOCOL_VERSION

    return PROTOCOL_VERSION
