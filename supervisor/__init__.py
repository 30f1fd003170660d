"""hubvisor's supervision tree: specs, runtime, hub and events.

The import name is ``supervisor`` (supervisord's package has the same name, so the two
cannot share one environment).
"""

from __future__ import annotations

import contextlib
import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    ChildNotFound as ChildNotFound,
    ConfigError as ConfigError,
    ControlError as ControlError,
    HubvisorError as HubvisorError,
    InvalidChildSpec as InvalidChildSpec,
    InvalidMirrorConfig as InvalidMirrorConfig,
    InvalidPolicy as InvalidPolicy,
    InvalidPoolSpec as InvalidPoolSpec,
    InvalidSpec as InvalidSpec,
    InvalidSupervisorSpec as InvalidSupervisorSpec,
    MaxAgentsExceeded as MaxAgentsExceeded,
    ServiceFailed as ServiceFailed,
    SpawnError as SpawnError,
    SupervisorEscalation as SupervisorEscalation,
    UnknownEventKind as UnknownEventKind,
)
from ._events import (
    SUBSCRIPTION_BUFFER as SUBSCRIPTION_BUFFER,
    ChildBackingOff as ChildBackingOff,
    ChildExited as ChildExited,
    ChildHeartbeat as ChildHeartbeat,
    ChildHung as ChildHung,
    ChildOutput as ChildOutput,
    ChildRestarting as ChildRestarting,
    ChildRunning as ChildRunning,
    ChildSpawnFailed as ChildSpawnFailed,
    ChildStarting as ChildStarting,
    ChildStatus as ChildStatus,
    ChildStopped as ChildStopped,
    Event as Event,
    EventBus as EventBus,
    ExitStatus as ExitStatus,
    Subscription as Subscription,
    SupervisorEscalated as SupervisorEscalated,
    SupervisorStarted as SupervisorStarted,
    SupervisorStopped as SupervisorStopped,
    SupervisorStopping as SupervisorStopping,
    event_kinds as event_kinds,
)
from ._hub import Hub as Hub, Service as Service, TreeRow as TreeRow
from ._keeper import MARK_ENV as MARK_ENV, OrphanKeeper as OrphanKeeper
from ._limits import ChildOverLimit as ChildOverLimit, LimitsService as LimitsService
from ._log import format_event as format_event
from ._process import (
    OSProcessBackend as OSProcessBackend,
    ProcessBackend as ProcessBackend,
    ProcessHandle as ProcessHandle,
    SpawnRequest as SpawnRequest,
)
from ._registry import (
    REGISTRY_KINDS as REGISTRY_KINDS,
    RESERVED_STATUSES as RESERVED_STATUSES,
    AgentRecord as AgentRecord,
    AgentStatus as AgentStatus,
    Reclaimed as Reclaimed,
    Registry as Registry,
    RegistryMirror as RegistryMirror,
)
from ._registry_redis import RedisMirror as RedisMirror
from ._runtime import (
    ChildInfo as ChildInfo,
    ChildState as ChildState,
    RuntimeContext as RuntimeContext,
    Supervisor as Supervisor,
)
from ._scale import (
    Autoscale as Autoscale,
    Decision as Decision,
    PoolScaler as PoolScaler,
    decide as decide,
)
from ._spec import (
    BRUTAL_KILL as BRUTAL_KILL,
    INFINITY as INFINITY,
    ChildSpec as ChildSpec,
    OutputSpec as OutputSpec,
    PoolSpec as PoolSpec,
    RestartType as RestartType,
    SupervisorSpec as SupervisorSpec,
    check_specs as check_specs,
)
from .work import (
    ItemStatus as ItemStatus,
    MemoryWorkQueue as MemoryWorkQueue,
    Verdict as Verdict,
    WorkAssigned as WorkAssigned,
    WorkCompleted as WorkCompleted,
    WorkDeadLettered as WorkDeadLettered,
    WorkFailed as WorkFailed,
    WorkItem as WorkItem,
    WorkQueue as WorkQueue,
    WorkReclaimed as WorkReclaimed,
    WorkRefused as WorkRefused,
    WorkService as WorkService,
    WorkSubmitted as WorkSubmitted,
)

__all__ = [
    "BRUTAL_KILL",
    "INFINITY",
    "MARK_ENV",
    "REGISTRY_KINDS",
    "RESERVED_STATUSES",
    "SUBSCRIPTION_BUFFER",
    "AgentRecord",
    "AgentStatus",
    "Autoscale",
    "ChildBackingOff",
    "ChildExited",
    "ChildHeartbeat",
    "ChildHung",
    "ChildInfo",
    "ChildNotFound",
    "ChildOutput",
    "ChildOverLimit",
    "ChildRestarting",
    "ChildRunning",
    "ChildSpawnFailed",
    "ChildSpec",
    "ChildStarting",
    "ChildState",
    "ChildStatus",
    "ChildStopped",
    "ConfigError",
    "ControlError",
    "Decision",
    "Event",
    "EventBus",
    "ExitStatus",
    "Hub",
    "HubvisorError",
    "InvalidChildSpec",
    "InvalidMirrorConfig",
    "InvalidPolicy",
    "InvalidPoolSpec",
    "InvalidSpec",
    "InvalidSupervisorSpec",
    "ItemStatus",
    "LimitsService",
    "MaxAgentsExceeded",
    "MemoryWorkQueue",
    "MetricsService",
    "OSProcessBackend",
    "OrphanKeeper",
    "OutputSpec",
    "PoolScaler",
    "PoolSpec",
    "ProcessBackend",
    "ProcessHandle",
    "Reclaimed",
    "RedisMirror",
    "RedisWorkQueue",
    "Registry",
    "RegistryMirror",
    "RestartType",
    "RuntimeContext",
    "Service",
    "ServiceFailed",
    "SpawnError",
    "SpawnRequest",
    "Subscription",
    "Supervisor",
    "SupervisorEscalated",
    "SupervisorEscalation",
    "SupervisorSpec",
    "SupervisorStarted",
    "SupervisorStopped",
    "SupervisorStopping",
    "TreeRow",
    "UnknownEventKind",
    "Verdict",
    "WorkAssigned",
    "WorkCompleted",
    "WorkDeadLettered",
    "WorkFailed",
    "WorkItem",
    "WorkQueue",
    "WorkReclaimed",
    "WorkRefused",
    "WorkService",
    "WorkSubmitted",
    "check_specs",
    "decide",
    "event_kinds",
    "format_event",
]


if TYPE_CHECKING:
    from ._metrics import MetricsService as MetricsService
    from .work.redis import RedisWorkQueue as RedisWorkQueue

# They import redis-py or prometheus_client: only when used.
_LAZY = {"RedisWorkQueue": ".work.redis", "MetricsService": "._metrics"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        obj = getattr(module, name)
        obj.__module__ = __name__
        globals()[name] = obj
        return obj
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _fixup_module_metadata() -> None:
    # Show `supervisor.ChildSpec`, not `supervisor._spec.ChildSpec`, in reprs and docs.
    for name in __all__:
        if name in _LAZY:
            continue
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith(("supervisor._", "supervisor.work.")):
            with contextlib.suppress(AttributeError, TypeError):  # e.g. a str constant
                obj.__module__ = __name__


_fixup_module_metadata()
