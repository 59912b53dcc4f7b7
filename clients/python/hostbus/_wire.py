"""The bytes on the wire: encodings, envelope values, reply bodies
(docs/protocol.md §3 to §5). Shared by both transports."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import InternalError

MSGPACK = "application/msgpack"
JSON = "application/json"
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
COMMAND_EXCHANGE = "hostbus.cmd"
VERSION_HEADER = "x-hostbus-version"
DEADLINE_HEADER = "x-hostbus-deadline"
ASYNC_HEADER = "x-hostbus-async"
STATUS_HEADER = "x-hostbus-status"
HOST_HEADER = "x-hostbus-host"
COMMAND_ID_HEADER = "x-hostbus-command-id"


def content_type_of(name: str) -> str:
    """`msgpack` or `json` (or a full media type) as the media type sent."""
    full = {"msgpack": MSGPACK, "json": JSON}.get(name, name)
    if full not in (MSGPACK, JSON):
        raise ValueError(f"content type {name!r}: use 'msgpack' or 'json'")
    return full


def encode(content_type: str, value: Any) -> bytes:
    """One value in the content type's encoding (a map keyed by field name)."""
    if content_type == JSON:
        return json.dumps(value, separators=(",", ":")).encode()
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def decode(content_type: str | None, body: bytes) -> Any:
    """A body by its content type (absent or empty: MessagePack)."""
    ct = (content_type or "").split(";", 1)[0].strip().lower()
    if ct == JSON:
        return json.loads(body)
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


def now_ms() -> int:
    return int(time.time() * 1000)


def new_command_id() -> str:
    return str(uuid.uuid4())


def check_command_id(command_id: str) -> str:
    """A command id must be a UUID (the agent refuses anything else)."""
    try:
        return str(uuid.UUID(command_id))
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"command id {command_id!r} is not a UUID") from None


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


@dataclass
class Reply:
    """One reply: `status` is `ok`, `task` or `error`, `value` the body's
    value under that key, `host` the answering host."""

    status: str
    value: Any
    host: str | None


def parse_reply(content_type: str | None, body: bytes, host: str | None) -> Reply:
    """A reply body: a map with exactly one key, `ok`, `task` or `error`."""
    try:
        v = decode(content_type, body)
    except Exception as e:  # noqa: BLE001 - any decoder failure is the same fault
        raise InternalError(f"undecodable reply from {host}: {e}", host=host) from e
    if not isinstance(v, dict) or len(v) != 1:
        raise InternalError(f"reply from {host} is not a one-key map: {v!r:.200}", host=host)
    ((status, value),) = v.items()
    if status not in ("ok", "task", "error"):
        raise InternalError(f"reply from {host} has unknown status {status!r}", host=host)
    return Reply(str(status), value, host)


def parse_error_reply(content_type: str | None, body: bytes, host: str | None) -> Exception:
    """The exception of a reply that must be an error (an HTTP refusal)."""
    from .errors import from_wire

    try:
        reply = parse_reply(content_type, body, host)
    except Exception as e:  # noqa: BLE001
        return e
    if reply.status != "error":
        return InternalError(f"expected an error reply, got {reply.status}", host=host)
    return from_wire(reply.value, host)
