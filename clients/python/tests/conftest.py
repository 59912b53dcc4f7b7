"""Fixtures of the SDK's tests: the cluster that tests/tests/python_sdk.rs
starts for them (a private RabbitMQ node; agents h1, h2, h3 of the
quickstart cluster on libvirt's test driver; h1's HTTP socket) and its
control script. They read that suite's environment and fail, naming what is
missing, when it is not set: run these tests through

    cargo test -p hostbus-tests --test python_sdk

(scripts/test does). The cluster is shared by the whole session, and the
control script can break it for good (kill an agent, stop the broker):
tests that do so go in a file named to sort last.
"""

from __future__ import annotations

import os
import subprocess

import pytest


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        pytest.fail(
            f"{name} is not set: these tests run against the cluster of "
            "`cargo test -p hostbus-tests --test python_sdk`, which sets it",
            pytrace=False,
        )
    return value


@pytest.fixture(scope="session")
def url() -> str:
    """AMQP URL of the `guest` login, `admin` on every agent."""
    return _env("HOSTBUS_TEST_URL")


@pytest.fixture(scope="session")
def viewer_url() -> str:
    """AMQP URL of the `viewer` login, `read-only` on every agent."""
    return _env("HOSTBUS_TEST_VIEWER_URL")


@pytest.fixture(scope="session")
def hosts() -> list[str]:
    """The host ids, `["h1", "h2", "h3"]`: h1 labelled `rack-a`, `gpu`
    (VMs web01, db01, batch01, ...), h2 `rack-a`, h3 `rack-b`."""
    return _env("HOSTBUS_TEST_HOSTS").split(",")


@pytest.fixture(scope="session")
def socket_path() -> str:
    """h1's HTTP socket (docs/http.md); the tests run as root, `admin` there."""
    return _env("HOSTBUS_TEST_SOCKET")


@pytest.fixture(scope="session")
def heartbeat_ms() -> int:
    """The agents' heartbeat interval in milliseconds."""
    return int(_env("HOSTBUS_TEST_HEARTBEAT_MS"))


class CtlError(Exception):
    """The control script failed; the message carries what it printed."""


class Ctl:
    """The cluster's control script (`HOSTBUS_TEST_CTL`). Each call returns
    once the change is done: the agent dead, the broker stopped or
    answering again, the connections closed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.path, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
        )

    def _check(self, *args: str) -> str:
        r = self._run(*args)
        if r.returncode != 0:
            raise CtlError(f"ctl {' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r.stdout

    def kill_agent(self, host: str) -> None:
        """SIGKILLs agent `host` (it stays dead)."""
        self._check("kill-agent", host)

    def broker_stop(self) -> None:
        """Stops the RabbitMQ app: its AMQP port refuses connections."""
        self._check("broker", "stop")

    def broker_start(self) -> None:
        """Starts it again: it answers AMQP (the agents reconnect on their own)."""
        self._check("broker", "start")

    def close_connections(self, name: str) -> int:
        """Closes, on the broker, every client connection whose
        `connection_name` client property contains `name`; how many (0:
        none matched)."""
        r = self._run("close-connections", name)
        if r.returncode == 3:
            return 0
        if r.returncode != 0:
            raise CtlError(f"ctl close-connections {name} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return int(r.stdout.strip())


@pytest.fixture(scope="session")
def ctl() -> Ctl:
    """The cluster's control script (see `Ctl`)."""
    return Ctl(_env("HOSTBUS_TEST_CTL"))
