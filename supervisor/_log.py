"""Lifecycle events as readable log lines, as text or JSON lines (``--log-format``)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

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

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = [
    "LIFECYCLE_KINDS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_LOG_ERROR",
    "STOP_KINDS",
    "SUMMARY_EVERY",
    "WORK_LOG_KINDS",
    "JsonFormatter",
    "TextFormatter",
    "event_level",
    "format_event",
    "log_events",
    "log_kinds",
    "log_stop_summary",
    "setup_logging",
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


def format_event(event: Event) -> str:  # long: one case per event type of a closed table
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
            error = _bounded(error)
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
            reason = _bounded(reason)
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


MAX_LOG_ERROR = 300
"""The most characters of an item's error a log line shows (then ``…``); ``hubvisor work
show ID`` shows it whole (a dead item's summary cuts each attempt's error at 200)."""


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_LOG_ERROR else text[:MAX_LOG_ERROR] + "…"


def log_kinds(output: bool = False) -> frozenset[str]:
    """The event kinds the log shows: lifecycle and work outcomes, plus child output
    lines if ``output``."""
    return LIFECYCLE_KINDS | WORK_LOG_KINDS | ({"output"} if output else set())


def event_level(event: Event) -> int:
    """WARNING for failures (crashes, failed starts, escalations, time limits), DEBUG for
    an item completed on its first attempt (the log sums them up every
    :data:`SUMMARY_EVERY` seconds), INFO for the rest (an item completed after a failure or
    reclaim too)."""
    if isinstance(event, WorkCompleted) and event.attempt <= 1:
        return logging.DEBUG
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


SUMMARY_EVERY = 10.0
"""Seconds between two lines ``work: N completed, M failed in the last 10 s`` (INFO;
only when something ended)."""

_SUMMED = ("work_completed", "work_failed")


async def log_events(
    events: trio.abc.ReceiveChannel[Event], summary_every: float = SUMMARY_EVERY
) -> None:
    """Log each event of ``events`` as one line until the channel ends, and every
    ``summary_every`` seconds how many items completed and failed (when any did; once
    more for the rest when the channel ends).

    Example::

        events = hub.bus.subscribe(log_kinds(output=True))  # before hub.serve()
        nursery.start_soon(log_events, events)
    """
    counts = dict.fromkeys(_SUMMED, 0)
    since = [trio.current_time()]

    def summarise() -> None:
        now = trio.current_time()
        if any(counts.values()):
            logger.info(
                "work: %d completed, %d failed in the last %.3g s",
                counts["work_completed"],
                counts["work_failed"],
                now - since[0],
                extra={"event_kind": "work_summary", **counts},
            )
        counts.update(dict.fromkeys(_SUMMED, 0))
        since[0] = now

    async def tick() -> None:
        while True:
            await trio.sleep(summary_every)
            summarise()

    async with events, trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        async for event in events:
            if event.kind in counts:
                counts[event.kind] += 1
            _log_event(event)
        nursery.cancel_scope.cancel()
    summarise()


def _log_event(event: Event) -> None:
    """``logger.log(level, "%s", format_event(event), extra=...)`` without looking up the
    caller's frame for every record (a burst of N exits logs N lines; the record's
    ``pathname``/``lineno`` would name this module anyway)."""
    level = event_level(event)
    if logger.isEnabledFor(level):
        record = logger.makeRecord(
            logger.name, level, __file__, 0, "%s", (format_event(event),), None,
            "log_events", _fields(event),
        )  # fmt: skip
        logger.handle(record)


STOP_KINDS = frozenset({"stopped", "supervisor_stopped", "work_reclaimed"})
"""The event kinds :func:`log_stop_summary` counts."""


async def log_stop_summary(hub: Hub, events: trio.abc.ReceiveChannel[Event]) -> None:
    """Count the agents stopped and the items handed back until ``events`` (subscribed
    to :data:`STOP_KINDS` before the hub started) ends, as the hub's bus does after its
    stop; then log one line of what the hub leaves: those counts, and the items not done
    that its work store keeps (or that are lost, in memory only)."""
    stopped: list[str] = []
    supervisors: set[str] = set()
    handed_back = 0
    async with events:
        async for event in events:
            if isinstance(event, ChildStopped) and event.reason == "shutdown":
                stopped.append(f"{event.supervisor}/{event.child_id}")
            elif isinstance(event, SupervisorStopped):
                supervisors.add(event.supervisor)
            elif isinstance(event, WorkReclaimed) and event.reason == "stop":
                handed_back += 1
    agents = sum(1 for path in stopped if path not in supervisors)  # not nested supervisors
    unfinished = sum(1 for i in hub.work.items() if i.status in ("queued", "assigned"))
    kept = hub.work.store is not None
    where = "kept by the work store" if kept else "lost with the hub (--work memory)"
    logger.info(
        "hub stop: %d agent%s stopped, %d item%s handed back, %d item%s not done %s",
        agents,
        _s(agents),
        handed_back,
        _s(handed_back),
        unfinished,
        _s(unfinished),
        where,
        extra={
            "event_kind": "hub_stop",
            "agents_stopped": agents,
            "handed_back": handed_back,
            "not_done": unfinished,
            "kept": kept,
        },
    )


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _fields(event: Event) -> dict[str, Any]:
    """What a JSON log line says of ``event`` besides its message."""
    about_supervisor = event.kind in (
        "supervisor_started",
        "supervisor_stopping",
        "supervisor_stopped",
    )
    return {
        "event_kind": event.kind,
        "supervisor": event.supervisor,
        "agent": None if about_supervisor else event.child_id,
        "item": getattr(event, "item_id", None),
    }


LOG_LEVELS = ("debug", "info", "warning", "error")
"""The values of ``--log-level``."""
LOG_FORMATS = ("text", "json")
"""The values of ``--log-format``."""


_ISO_SECOND: list[Any] = [None, ""]  # the last whole second formatted, and its text


def _iso(created: float) -> str:
    """``created`` (Unix time) in ISO 8601 with milliseconds and the local zone's offset.

    The text of a second (and its offset, which can change only between seconds) is
    made once: a burst of records in one second formats only the milliseconds.
    """
    second = int(created // 1)
    us = round((created - second) * 1e6)  # as datetime.fromtimestamp rounds
    if us >= 1_000_000:
        return datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")
    if _ISO_SECOND[0] != second:
        text = datetime.fromtimestamp(second).astimezone().isoformat(timespec="seconds")
        _ISO_SECOND[:] = [second, text]
    text = _ISO_SECOND[1]
    return f"{text[:19]}.{us // 1000:03d}{text[19:]}"


class TextFormatter(logging.Formatter):
    """``2026-12-07T09:30:00.123+01:00 INFO    message``: one line a record (a traceback,
    when there is one, follows it)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso(record.created)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (ISO 8601 with the zone), ``level`` (``debug``,
    ``info``, ``warning``, ``error``), ``event`` (the event's kind, ``work_summary`` for
    the summaries, ``null`` for other lines), ``supervisor``, ``agent`` (the child),
    ``item`` (the work item), each ``null`` when it does not apply, ``message`` (the text
    line), and ``traceback`` when there is one; a summary also has ``completed`` and
    ``failed``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "event": getattr(record, "event_kind", None),
            "supervisor": getattr(record, "supervisor", None),
            "agent": getattr(record, "agent", None),
            "item": getattr(record, "item", None),
            "message": record.getMessage(),
        }
        if line["event"] == "work_summary":
            line["completed"] = getattr(record, "work_completed", 0)
            line["failed"] = getattr(record, "work_failed", 0)
        if line["event"] == "hub_stop":
            for key in ("agents_stopped", "handed_back", "not_done", "kept"):
                line[key] = getattr(record, key, None)
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Log to ``stream`` (default stderr) at ``level`` (one of :data:`LOG_LEVELS`) as
    ``fmt`` (``text`` or ``json``), unless the root logger has a handler already (as
    :func:`logging.basicConfig`)."""
    if level not in LOG_LEVELS or fmt not in LOG_FORMATS:
        raise ValueError(
            f"log level {level!r} / format {fmt!r}: the level must be one of "
            f"{', '.join(LOG_LEVELS)} and the format text or json"
        )
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
