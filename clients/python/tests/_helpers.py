"""Helpers the SDK's tests share (not fixtures)."""

from __future__ import annotations

from typing import Callable

import pika


def opener(url: str) -> Callable[[str], pika.BlockingConnection]:
    """The runtime's ``open_connection``: a fresh connection named for its role."""

    def open_connection(role: str) -> pika.BlockingConnection:
        params = pika.URLParameters(url)
        params.client_properties = {"connection_name": f"hostbus-python {role}"}
        return pika.BlockingConnection(params)

    return open_connection
