"""Lifecycle events as readable log lines."""

from __future__ import annotations

import logging

import trio

from ._events import (
    ChildBackingOff,
    ChildExited,
    ChildHung,
    ChildOutput,
    ChildRestarting,
    ChildRunning,
    ChildSpawnFailed,
    ChildStarting,
    ChildStopped,
    Event,
    SupervisorEscalated,
    SupervisorStarted,
    SupervisorStopped,
    SupervisorStopping,
)
from .work import (
    WorkAssigned,
    WorkCancelled,
    WorkCompleted,
    WorkDeadLettered,
    WorkFailed,
    WorkReclaimed,
    WorkRefused,
    WorkSubmitted,
    WorkTimedOut,
)

__all__ = [
    "LIFECYCLE_KINDS",
    "WORK_LOG_KINDS",
    "event_level",
    "format_event",
    "log_events",
    "log_kinds",
]

logger = logging.getLogger("hubvisor")

WORK_LOG_KINDS = frozenset(
    {
        "work_completed",
        "work_failed",
        "work_reclaimed",
        "work_dead",
        "work_refused",
        "work_cancelled",
        "work_timed_out",
    }
)
"""The work events the log shows (submitted and assigned ones would drown the rest)."""

LIFECYCLE_KINDS = frozenset(
    {
        "starting",
        "running",
        "spawn_failed",
        "exited",
        "backing_off",
        "restarting",
        "stopped",
        "supervisor_started",
        "supervisor_stopping",
        "supervisor_stopped",
        "escalated",
        "hung",
    }
)


def format_event(event: Event) -> str:
    """One line for ``event``, e.g. ``hub/worker-pool/worker-agent-2 exited with code 1``."""
    who = f"{event.supervisor}/{event.child_id}"
    match event:
        case ChildStarting(pid=pid, incarnation=n):
            return f"{who} starting (pid {pid}, start #{n})"
        case ChildRunning(pid=pid):
            return f"{who} running (pid {pid})"
        case ChildSpawnFailed(error=error):
            return f"{who} failed to start: {error}"
        case ChildExited(status=status, expected=expected, failed_start=failed, uptime=up):
            what = "ended" if expected else ("failed to start" if failed else "crashed")
            if not expected and status.normal:
                what = "exited"
            if not expected and event.hung:
                what = "killed after hang"
            return f"{who} {what}: {status.describe()} after {up:.1f}s"
        case ChildBackingOff(delay=delay, attempt=attempt, restarting=ids):
            ids_text = ", ".join(ids)
            return (
                f"{who} backing off {delay:.2f}s (attempt {attempt}) before restarting {ids_text}"
            )
        case ChildRestarting(cause=cause):
            because = "" if cause == event.child_id else f" because {cause} failed"
            return f"{who} restarting{because}"
        case ChildStopped(reason=reason):
            return f"{who} stopped ({reason})"
        case ChildHung(pid=pid, silence=silence):
            return f"{who} HUNG: no heartbeat for {silence:.1f}s (pid {pid}); killing it"
        case SupervisorStarted():
            return f"{event.supervisor} started"
        case SupervisorStopping():
            return f"{event.supervisor} stopping"
        case SupervisorStopped():
            return f"{event.supervisor} stopped"
        case SupervisorEscalated(limit=limit, reason=reason):
            return f"{event.supervisor} GAVE UP: {event.child_id} ({reason}) exceeded {limit}"
        case ChildOutput(stream=stream, line=line):
            return f"{who} {'!' if stream == 'stderr' else '|'} {line}"
        case WorkSubmitted(item_id=item, agent_type=agent_type):
            return f"work {item} submitted for {agent_type}"
        case WorkAssigned(item_id=item, attempt=attempt):
            return f"work {item} assigned to {event.child_id} (attempt {attempt})"
        case WorkCompleted(item_id=item, attempt=attempt):
            return f"work {item} completed by {event.child_id} (attempt {attempt})"
        case WorkFailed(item_id=item, attempt=attempt, error=error, final=final):
            then = "for good" if final else "; it will be retried"
            return f"work {item} failed on {event.child_id} (attempt {attempt}): {error} {then}"
        case WorkReclaimed(item_id=item, attempt=attempt, reason=reason):
            why = {
                "exit": "its agent exited",
                "hang": "its agent hung",
                "stop": "its agent was stopped",
                "handback": "its agent handed it back",
                "unreachable": "its agent could not take it",
            }.get(reason, reason)
            return (
                f"work {item} reclaimed from {event.child_id} (attempt {attempt}): {why}; "
                "queued again"
            )
        case WorkDeadLettered(item_id=item, attempt=attempt, reason=reason):
            return (
                f"work {item} DEAD after attempt {attempt}: {reason} (hubvisor work retry {item})"
            )
        case WorkRefused(item_id=item, attempt=attempt, reason=reason, repeats=repeats):
            more = f" ({repeats} refusals since the last line)" if repeats > 1 else ""
            return (
                f"work {item}: refused an answer from {event.child_id} (attempt {attempt}): "
                f"{reason}{more}"
            )
        case WorkCancelled(item_id=item, attempt=attempt, reason=reason):
            held = f" (held by {event.child_id}, attempt {attempt})" if event.child_id else ""
            return f"work {item} cancelled{held}" + (f": {reason}" if reason else "")
        case WorkTimedOut(item_id=item, attempt=attempt, time_limit=limit, final=final):
            then = "; no delivery left" if final else "; it will be retried"
            return (
                f"work {item} timed out on {event.child_id} (attempt {attempt}, time limit "
                f"{limit:g}s){then}"
            )
    return f"{who} {event.kind}"  # pragma: no cover - every event type is matched above


def log_kinds(output: bool = False) -> frozenset[str]:
    """The event kinds the log shows: lifecycle and work outcomes, plus child output
    lines if ``output``."""
    return LIFECYCLE_KINDS | WORK_LOG_KINDS | ({"output"} if output else set())


def event_level(event: Event) -> int:
    """WARNING for failures (crashes, failed starts, escalations), INFO for the rest."""
    if event.kind in (
        "escalated",
        "spawn_failed",
        "hung",
        "work_dead",
        "work_reclaimed",
        "work_timed_out",
    ):
        return logging.WARNING
    if isinstance(event, ChildExited) and not event.expected and not event.status.normal:
        return logging.WARNING
    return logging.INFO


async def log_events(events: trio.abc.ReceiveChannel[Event]) -> None:
    """Log each event of ``events`` as one line until the channel ends.

    Example::

        events = hub.bus.subscribe(log_kinds(output=True))  # before hub.serve()
        nursery.start_soon(log_events, events)
    """
    async with events:
        async for event in events:
            logger.log(event_level(event), "%s", format_event(event))
