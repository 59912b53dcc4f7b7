"""What a broadcast returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .errors import Error

T = TypeVar("T")


@dataclass
class BroadcastResult(Generic[T]):
    """The answers of every host a broadcast reached.

    `replies` holds each answering host's response, `errors` each host that
    answered with an error, and `missing` every host the fleet view expected
    (alive, stale or gone, reached by the target) that did not answer before
    the deadline or, alive but without a consumer, could not.
    """

    target: str
    replies: dict[str, T] = field(default_factory=dict)
    errors: dict[str, Error] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every expected host answered, and none with an error."""
        return not self.missing and not self.errors
