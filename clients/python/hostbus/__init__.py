"""hostbus: drive virtualization hosts through the hostbus bus.

    import hostbus

    with hostbus.Connection(url="amqp://guest:guest@localhost:5682/%2f") as conn:
        for view in conn.hosts():
            print(view.host_id, view.liveness)
        vm = conn.host("h1").vms().get("web01").start()
        print(vm.name, vm.power_state)

The types (`hostbus.types`), errors (`hostbus.errors`), the catalogue
(`hostbus.catalogue`) and the services (`hostbus.services`) are generated
from the protocol's JSON Schema (clients/python/generate.py); the
connection, its two transports, the fleet view and subscriptions are
written by hand. docs/python.md is the guide.
"""

from . import catalogue, errors, events, presence, types
from .broadcast import BroadcastResult
from .connection import Connection
from .errors import (
    AlreadyExistsError,
    AuthError,
    BadPowerStateError,
    BadStateError,
    BusyError,
    CancelledError,
    ConnectionError,
    Error,
    ExpiredError,
    InternalError,
    InvalidArgumentError,
    NoRouteError,
    NotFoundError,
    PermissionDeniedError,
    TimeoutError,
    UnavailableError,
    UnsupportedError,
)
from .services import (
    BroadcastService,
    HostService,
    NetworkService,
    NetworksService,
    PoolService,
    PoolsService,
    SnapshotService,
    SnapshotsService,
    TaskService,
    TasksService,
    VmService,
    VmsService,
    VolumeService,
    VolumesService,
)
from .events import EventNotification, Resync, ResyncReason, Subscription
from .presence import HostView, Liveness
from .types import PROTOCOL_VERSION

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "AlreadyExistsError",
    "AuthError",
    "BadPowerStateError",
    "BadStateError",
    "BroadcastResult",
    "BroadcastService",
    "BusyError",
    "CancelledError",
    "Connection",
    "ConnectionError",
    "Error",
    "EventNotification",
    "ExpiredError",
    "HostService",
    "HostView",
    "InternalError",
    "InvalidArgumentError",
    "Liveness",
    "NetworkService",
    "NetworksService",
    "NoRouteError",
    "NotFoundError",
    "PermissionDeniedError",
    "PoolService",
    "PoolsService",
    "Resync",
    "ResyncReason",
    "SnapshotService",
    "SnapshotsService",
    "Subscription",
    "TaskService",
    "TasksService",
    "TimeoutError",
    "UnavailableError",
    "UnsupportedError",
    "VmService",
    "VmsService",
    "VolumeService",
    "VolumesService",
    "catalogue",
    "errors",
    "events",
    "presence",
    "types",
]
