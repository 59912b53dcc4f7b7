"""Checks the generated `from_wire` functions use: a value from the wire
has the shape the schema says, or decoding fails with a `DecodeError`
naming what was wrong (never a bare KeyError or TypeError)."""

from __future__ import annotations

from typing import Any


class DecodeError(ValueError):
    """A message from the wire does not have the shape of its type."""


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DecodeError(f"{what}: expected a map, got {type(value).__name__}")
    return value


def _req(v: dict[str, Any], key: str, what: str) -> Any:
    try:
        return v[key]
    except KeyError:
        raise DecodeError(f"{what}: missing field `{key}`") from None


def _str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise DecodeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise DecodeError(f"expected an integer, got {type(value).__name__}")


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise DecodeError(f"expected a boolean, got {type(value).__name__}")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise DecodeError(f"expected an array, got {type(value).__name__}")
    return value


def _dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DecodeError(f"expected a map, got {type(value).__name__}")
    return value
