"""The generated modules are what the schema gives today, and they decode
the protocol crate's golden fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import msgpack
import pytest

import hostbus
from hostbus import catalogue, errors, types as t

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent.parent
GOLDEN = ROOT / "protocol" / "tests" / "golden"


def test_the_generated_modules_are_current() -> None:
    run = subprocess.run([sys.executable, str(HERE.parent / "generate.py"), "--check"], capture_output=True, text=True)
    assert run.returncode == 0, f"stale generated modules: {run.stderr}"


def test_every_command_of_the_schema_is_in_the_catalogue_with_its_types() -> None:
    schema = json.loads((ROOT / "docs" / "protocol.schema.json").read_text())
    names = [c["name"] for c in schema["commands"]]
    assert list(catalogue.COMMANDS) == names
    for c in schema["commands"]:
        info = catalogue.COMMANDS[c["name"]]
        assert info.request.__name__ == c["request"]["$ref"].rsplit("/", 1)[-1]
        assert info.response.__name__ == c["response"]["$ref"].rsplit("/", 1)[-1]
        assert (info.access, info.runs) == (c["access"], c["runs"])
    assert {e["code"] for e in schema["error_codes"]} <= set(errors.BY_CODE)


def test_every_error_code_maps_to_its_family_class() -> None:
    schema = json.loads((ROOT / "docs" / "protocol.schema.json").read_text())
    family_class = {
        "invalid_argument": hostbus.InvalidArgumentError,
        "not_found": hostbus.NotFoundError,
        "bad_state": hostbus.BadStateError,
        "permission_denied": hostbus.AuthError,
        "expired": hostbus.ExpiredError,
        "busy": hostbus.BusyError,
        "unavailable": hostbus.UnavailableError,
        "timeout": hostbus.TimeoutError,
        "cancelled": hostbus.CancelledError,
        "already_exists": hostbus.AlreadyExistsError,
        "unsupported": hostbus.UnsupportedError,
        "internal": hostbus.InternalError,
    }
    for e in schema["error_codes"]:
        err = errors.from_wire({"code": e["code"], "params": {p: "x" for p in e["params"]}, "message": "m"})
        assert isinstance(err, family_class[e["family"]]), e["code"]
        assert isinstance(err, hostbus.Error)
        assert err.code == e["code"] and err.retryable == e["retryable"]
        assert set(err.params) == set(e["params"])
    # An expired command is a timeout too, and both are Python's own.
    assert issubclass(hostbus.ExpiredError, hostbus.TimeoutError)
    assert issubclass(hostbus.TimeoutError, TimeoutError)
    assert issubclass(hostbus.ConnectionError, ConnectionError)
    unknown = errors.from_wire({"code": "SOMETHING_NEW", "params": {"a": "b"}, "message": "later"})
    assert type(unknown) is hostbus.InternalError and unknown.code == "SOMETHING_NEW"


def _golden(name: str) -> object:
    path = GOLDEN / name
    if name.endswith(".json"):
        return json.loads(path.read_text())
    return msgpack.unpackb(bytes.fromhex("".join(path.read_text().split())), raw=False)


def _decoder(stem: str) -> Callable[[Any], Any]:
    """The type a golden fixture holds, by its name."""
    if stem.startswith("request-"):
        return catalogue.COMMANDS[stem[len("request-"):].replace("-", ".", 1).replace("-", "_")].request.from_wire
    replies: dict[str, Callable[[Any], Any]] = {
        "reply-ok-pong": lambda v: t.Pong.from_wire(v["ok"]),
        "reply-ok-vm": lambda v: t.VmRecord.from_wire(v["ok"]),
        "reply-task": lambda v: t.TaskRecord.from_wire(v["task"]),
        "reply-error": lambda v: t.Error.from_wire(v["error"]),
    }
    if stem in replies:
        return replies[stem]
    for prefix, kind in (("event", t.Event), ("heartbeat", t.Heartbeat), ("announcement", t.Announcement)):
        if stem.startswith(prefix):
            return kind.from_wire
    raise AssertionError(f"golden fixture {stem}: which type is it? (add it here)")


@pytest.mark.parametrize("name", sorted(p.name for p in GOLDEN.glob("*.json")))
def test_golden_fixtures_decode_alike_in_both_encodings_and_encode_back(name: str) -> None:
    stem = name[: -len(".json")]
    decode = _decoder(stem)
    raw = _golden(name)
    decoded = decode(raw)
    assert decoded == decode(_golden(f"{stem}.msgpack.hex"))
    # What the SDK sends decodes to the same thing.
    wire = decoded.to_wire()
    if stem.startswith("reply-"):
        assert isinstance(raw, dict)
        wire = {next(iter(raw)): wire}
    assert decode(wire) == decoded


def test_unknown_enum_values_decode_to_unknown_and_records_keep_their_class() -> None:
    assert t.PowerState("hibernating") is t.PowerState.UNKNOWN
    assert t.ErrorCode("NEW_CODE") is t.ErrorCode.UNKNOWN
    assert t.record_from_wire("none") is None
    assert isinstance(t.record_from_wire({"pool": _pool()}), t.PoolRecord)
    with pytest.raises(t.DecodeError):
        t.record_from_wire({"gadget": {}})
    with pytest.raises(t.DecodeError):
        t.VmUuid.from_wire({})
    with pytest.raises(t.DecodeError):
        t.VmUuid.from_wire(["6a8f1b8e-8a8e-4d47-9d6f-3c1f00000001"])


def _pool() -> dict[str, object]:
    return {
        "uuid": "6a8f1b8e-8a8e-4d47-9d6f-3c1f00000001", "name": "p", "kind": "dir", "state": "running",
        "capacity_bytes": 1, "allocation_bytes": 0, "available_bytes": 1, "autostart": False,
        "persistent": True, "volumes": 0, "generation": 1,
    }
