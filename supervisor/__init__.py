"""hubvisor's supervision tree: specs, runtime, hub and events.

The import name is ``supervisor`` (supervisord's package has the same name, so the two
cannot share one environment).

Every public name is imported on first use (PEP 562), so ``hubvisor status`` and the other
client commands, which import ``supervisor._cli``, do not pay for trio, the runtime or the
work queues; ``from supervisor import X`` and ``supervisor.X`` work as usual.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._aclient import AsyncClient as AsyncClient
    from ._client import Client as Client
    from ._context import RuntimeContext as RuntimeContext
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
        ItemFailed as ItemFailed,
        MaxAgentsExceeded as MaxAgentsExceeded,
        NotStored as NotStored,
        ServiceFailed as ServiceFailed,
        SpawnError as SpawnError,
        SupervisorEscalation as SupervisorEscalation,
        UnknownEventKind as UnknownEventKind,
        WaitTimeout as WaitTimeout,
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
    from ._hub import (
        Hub as Hub,
        Service as Service,
        TreeRow as TreeRow,
    )
    from ._keeper import (
        MARK_ENV as MARK_ENV,
        OrphanKeeper as OrphanKeeper,
    )
    from ._limits import (
        ChildOverLimit as ChildOverLimit,
        LimitsService as LimitsService,
    )
    from ._log import (
        format_event as format_event,
    )
    from ._metrics import (
        MetricsService as MetricsService,
    )
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
    from ._registry_redis import (
        RedisMirror as RedisMirror,
    )
    from ._runtime import (
        ChildInfo as ChildInfo,
        ChildState as ChildState,
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
    from .control.client import (
        ControlClientError as ControlClientError,
        NoHubRunning as NoHubRunning,
    )
    from .work import (
        ItemStatus as ItemStatus,
        MemoryWorkQueue as MemoryWorkQueue,
        Verdict as Verdict,
        WorkAssigned as WorkAssigned,
        WorkCompleted as WorkCompleted,
        WorkDeadLettered as WorkDeadLettered,
        WorkDependencyEnded as WorkDependencyEnded,
        WorkFailed as WorkFailed,
        WorkItem as WorkItem,
        WorkQueue as WorkQueue,
        WorkReclaimed as WorkReclaimed,
        WorkRefused as WorkRefused,
        WorkService as WorkService,
        WorkSubmitted as WorkSubmitted,
    )
    from .work.redis import (
        RedisWorkQueue as RedisWorkQueue,
    )
    from .work.sqlite import (
        SqliteWorkQueue as SqliteWorkQueue,
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
    "AsyncClient",
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
    "Client",
    "ConfigError",
    "ControlClientError",
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
    "ItemFailed",
    "ItemStatus",
    "LimitsService",
    "MaxAgentsExceeded",
    "MemoryWorkQueue",
    "MetricsService",
    "NoHubRunning",
    "NotStored",
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
    "SqliteWorkQueue",
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
    "WaitTimeout",
    "WorkAssigned",
    "WorkCompleted",
    "WorkDeadLettered",
    "WorkDependencyEnded",
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

_EXPORTS: dict[str, str] = {
    "AsyncClient": "_aclient",
    "Client": "_client",
    "ControlClientError": "control.client",
    "NoHubRunning": "control.client",
    "ChildNotFound": "_errors",
    "ConfigError": "_errors",
    "ControlError": "_errors",
    "HubvisorError": "_errors",
    "InvalidChildSpec": "_errors",
    "InvalidMirrorConfig": "_errors",
    "InvalidPolicy": "_errors",
    "InvalidPoolSpec": "_errors",
    "InvalidSpec": "_errors",
    "InvalidSupervisorSpec": "_errors",
    "ItemFailed": "_errors",
    "MaxAgentsExceeded": "_errors",
    "NotStored": "_errors",
    "ServiceFailed": "_errors",
    "SpawnError": "_errors",
    "SupervisorEscalation": "_errors",
    "UnknownEventKind": "_errors",
    "WaitTimeout": "_errors",
    "ChildBackingOff": "_events",
    "ChildExited": "_events",
    "ChildHeartbeat": "_events",
    "ChildHung": "_events",
    "ChildOutput": "_events",
    "ChildRestarting": "_events",
    "ChildRunning": "_events",
    "ChildSpawnFailed": "_events",
    "ChildStarting": "_events",
    "ChildStatus": "_events",
    "ChildStopped": "_events",
    "Event": "_events",
    "EventBus": "_events",
    "ExitStatus": "_events",
    "SUBSCRIPTION_BUFFER": "_events",
    "Subscription": "_events",
    "SupervisorEscalated": "_events",
    "SupervisorStarted": "_events",
    "SupervisorStopped": "_events",
    "SupervisorStopping": "_events",
    "event_kinds": "_events",
    "Hub": "_hub",
    "Service": "_hub",
    "TreeRow": "_hub",
    "MARK_ENV": "_keeper",
    "OrphanKeeper": "_keeper",
    "ChildOverLimit": "_limits",
    "LimitsService": "_limits",
    "format_event": "_log",
    "MetricsService": "_metrics",
    "OSProcessBackend": "_process",
    "ProcessBackend": "_process",
    "ProcessHandle": "_process",
    "SpawnRequest": "_process",
    "RedisMirror": "_registry_redis",
    "AgentRecord": "_registry",
    "AgentStatus": "_registry",
    "REGISTRY_KINDS": "_registry",
    "RESERVED_STATUSES": "_registry",
    "Reclaimed": "_registry",
    "Registry": "_registry",
    "RegistryMirror": "_registry",
    "ChildInfo": "_runtime",
    "ChildState": "_runtime",
    "RuntimeContext": "_context",
    "Supervisor": "_runtime",
    "Autoscale": "_scale",
    "Decision": "_scale",
    "PoolScaler": "_scale",
    "decide": "_scale",
    "BRUTAL_KILL": "_spec",
    "ChildSpec": "_spec",
    "INFINITY": "_spec",
    "OutputSpec": "_spec",
    "PoolSpec": "_spec",
    "RestartType": "_spec",
    "SupervisorSpec": "_spec",
    "check_specs": "_spec",
    "ItemStatus": "work",
    "MemoryWorkQueue": "work",
    "Verdict": "work",
    "WorkAssigned": "work",
    "WorkCompleted": "work",
    "WorkDeadLettered": "work",
    "WorkDependencyEnded": "work",
    "WorkFailed": "work",
    "WorkItem": "work",
    "WorkQueue": "work",
    "WorkReclaimed": "work",
    "WorkRefused": "work",
    "WorkService": "work",
    "WorkSubmitted": "work",
    "RedisWorkQueue": "work.redis",
    "SqliteWorkQueue": "work.sqlite",
}
"""Each public name and the private module that defines it."""


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{module_name}", __name__)
    # Show `supervisor.ChildSpec`, not `supervisor._spec.ChildSpec`, in reprs and docs:
    # every name of the module at once, so the first use of any of them fixes all.
    for public, home in _EXPORTS.items():
        if home == module_name:
            obj = getattr(module, public)
            home_module = getattr(obj, "__module__", "")
            if home_module.startswith(("supervisor._", "supervisor.work.", "supervisor.control.")):
                with contextlib.suppress(AttributeError, TypeError):  # e.g. a str constant
                    obj.__module__ = __name__
            globals()[public] = obj
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
