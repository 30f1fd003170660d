"""Invariant check on a :class:`~supervisor.testing.Trace`: time limits of work items
(issue 21, ``Submit(time_limit=...)``)."""

from __future__ import annotations

import attrs

from .._events import ChildExited, ChildStarting
from ..work import (
    WorkAssigned,
    WorkCancelled,
    WorkCompleted,
    WorkDeadLettered,
    WorkFailed,
    WorkReclaimed,
    WorkTimedOut,
)
from ._invariants import EPS as _EPS, fail as _fail
from ._run import SubmitApplied, Trace, WorkSnapshot
from ._sim import WireRecord

__all__ = ["check_work_time_limits"]

_ENDS = (WorkCompleted, WorkFailed, WorkReclaimed, WorkDeadLettered, WorkCancelled)
_ANSWERS = ("RESULT", "FAIL", "HANDBACK")


@attrs.frozen
class _Attempt:
    index: int
    item: str
    attempt: int
    child: str
    pid: int | None
    deadline: float  # the assignment + the time limit


def check_work_time_limits(trace: Trace) -> None:
    """An attempt of an item submitted with ``time_limit`` ends by its deadline (its
    assignment plus the limit): answered, reclaimed, cancelled, or ``work_timed_out`` at
    the deadline, not before (a time-out spends the delivery: see
    :func:`check_work_deliveries`). No answer for a timed-out attempt is accepted after
    (no ``work_completed``, ``work_failed`` or hand-back for it). Its agent, if it still
    ran, is told at once (``CANCEL`` for that attempt, or ``STOP``) and gives it up
    (answers it) or has exited
    within the service's ``cancel_grace`` plus its ``shutdown`` time, and by the quiet
    moment before the stop in any case.
    """
    _check_told(trace)
    limits: dict[str, float] = {}
    current: dict[str, int | None] = {}  # child -> newest pid
    live: set[int] = set()
    held: dict[str, _Attempt] = {}
    timed: dict[tuple[str, int], _Attempt] = {}  # timed out, holder not yet given up
    ended: set[tuple[str, int]] = set()
    answered: set[tuple[object, object, int]] = set()  # item, attempt, pid
    grace = trace.cancel_grace + _grace_slack(trace)
    for i, r in enumerate(trace.log):
        _check_overdue(trace, r.at, held, timed, grace)
        if isinstance(r, SubmitApplied) and r.created and r.submit.time_limit is not None:
            limits[r.item_id] = r.submit.time_limit
        elif isinstance(r, ChildStarting):
            current[r.child_id] = r.pid
            live.add(r.pid)
        elif isinstance(r, ChildExited):
            live.discard(r.pid)
            for key, a in list(timed.items()):
                if a.pid == r.pid:
                    del timed[key]
        elif isinstance(r, WorkAssigned) and r.item_id in limits:
            pid = current.get(r.child_id)
            deadline = r.at + limits[r.item_id]
            held[r.item_id] = _Attempt(i, r.item_id, r.attempt, r.child_id, pid, deadline)
        elif isinstance(r, WorkTimedOut):
            took = held.pop(r.item_id, None)
            _timed_out(trace, i, r, took, live, timed, ended)
            if (
                took is not None
                and (took.item, took.attempt) in timed
                and (took.item, took.attempt, took.pid) in answered
            ):
                del timed[(took.item, took.attempt)]  # it answered at the deadline itself
        elif isinstance(r, _ENDS):
            h = held.get(r.item_id)
            if h is not None and h.attempt == r.attempt:
                del held[r.item_id]
            if (r.item_id, r.attempt) in ended and not isinstance(r, WorkDeadLettered):
                raise _fail(
                    trace,
                    i,
                    "work-time-limits",
                    f"{r.item_id!r} attempt {r.attempt} timed out, and then {r.kind} was "
                    f"accepted for it from {r.child_id!r}",
                )
        elif isinstance(r, WireRecord) and r.sender == "agent" and r.word in _ANSWERS:
            body = r.body if isinstance(r.body, dict) else {}
            answered.add((body.get("item"), body.get("attempt"), r.pid))
            t = timed.get((body.get("item"), body.get("attempt")))  # type: ignore[arg-type]
            if t is not None and t.pid == r.pid:
                del timed[(t.item, t.attempt)]
        elif isinstance(r, WorkSnapshot) and (r.quiesced or r.final) and timed:
            a = next(iter(timed.values()))
            raise _fail(
                trace,
                i,
                "work-time-limits",
                f"{a.child!r} (pid {a.pid}) still holds {a.item!r} attempt {a.attempt}, "
                "which timed out: it was neither given up nor stopped",
            )


def _check_told(trace: Trace) -> None:
    """:func:`check_work_time_limits`: the live holder of a timed-out attempt is told at
    once, ``CANCEL`` for that attempt or ``STOP`` (a protocol-1 agent), unless it exits
    or answers the attempt at that instant (traces with wire records only)."""
    if not any(isinstance(r, WireRecord) for r in trace.log):
        return
    current: dict[str, int] = {}
    live: set[int] = set()
    due: dict[int, tuple[int, float, str, int]] = {}  # pid -> index, at, item, attempt
    for i, r in enumerate(trace.log):
        for pid, (j, at, item, attempt) in due.items():
            if r.at > at + _EPS:
                raise _fail(
                    trace,
                    j,
                    "work-time-limits",
                    f"{item!r} attempt {attempt} timed out, but its agent (pid {pid}) was "
                    "never told CANCEL for it (nor stopped)",
                )
        if isinstance(r, ChildStarting):
            current[r.child_id] = r.pid
            live.add(r.pid)
        elif isinstance(r, ChildExited):
            live.discard(r.pid)
            due.pop(r.pid, None)
        elif isinstance(r, WorkTimedOut):
            holder = current.get(r.child_id)
            if holder is not None and holder in live:
                due[holder] = (i, r.at, r.item_id, r.attempt)
        elif isinstance(r, WireRecord) and r.pid in due:
            body = r.body if isinstance(r.body, dict) else {}
            fenced = (body.get("item"), body.get("attempt")) == due[r.pid][2:]
            if r.word == "STOP" or (fenced and (r.word == "CANCEL" or r.sender == "agent")):
                del due[r.pid]
    for pid, (j, _, item, attempt) in due.items():
        raise _fail(
            trace,
            j,
            "work-time-limits",
            f"{item!r} attempt {attempt} timed out, but its "
            f"agent (pid {pid}) was never told CANCEL for it (nor stopped)",
        )


def _check_overdue(
    trace: Trace,
    now: float,
    held: dict[str, _Attempt],
    timed: dict[tuple[str, int], _Attempt],
    grace: float,
) -> None:
    """:func:`check_work_time_limits` at time ``now``: no attempt is held past its
    deadline, no agent still works on a timed-out one after the ``grace``."""
    for a in held.values():
        if now > a.deadline + _EPS:
            raise _fail(
                trace,
                a.index,
                "work-time-limits",
                f"{a.item!r} attempt {a.attempt} ran past its time limit: it was still "
                f"held by {a.child!r} at {now:g}, its deadline was {a.deadline:g}",
            )
    for a in timed.values():
        if now > a.deadline + grace + _EPS:
            raise _fail(
                trace,
                a.index,
                "work-time-limits",
                f"{a.child!r} (pid {a.pid}) neither gave up {a.item!r} attempt "
                f"{a.attempt} nor was stopped within cancel_grace="
                f"{trace.cancel_grace:g}s of its time-out",
            )


def _grace_slack(trace: Trace) -> float:
    """How long stopping an agent may take once its grace ran out: the longest
    ``shutdown`` of the tree's children (SIGKILL after it) and a virtual second."""
    longest = 0.0
    stack: list[object] = [trace.spec]
    while stack:
        spec = stack.pop()
        children = getattr(spec, "children", None)
        template = getattr(spec, "template", None)
        if children is not None:
            stack.extend(children)
        elif template is not None:
            stack.append(template)
        else:
            shutdown = getattr(spec, "shutdown", None)
            if isinstance(shutdown, int | float):
                longest = max(longest, float(shutdown))
    return longest + 1.0


def _timed_out(
    trace: Trace,
    i: int,
    r: WorkTimedOut,
    a: _Attempt | None,
    live: set[int],
    timed: dict[tuple[str, int], _Attempt],
    ended: set[tuple[str, int]],
) -> None:
    """:func:`check_work_time_limits` at a ``work_timed_out``."""
    if a is None or a.attempt != r.attempt:
        raise _fail(
            trace,
            i,
            "work-time-limits",
            f"{r.item_id!r} attempt {r.attempt} timed out, but it was not that attempt "
            "of an item submitted with a time limit",
        )
    if r.at < a.deadline - _EPS:
        raise _fail(
            trace,
            i,
            "work-time-limits",
            f"{r.item_id!r} attempt {r.attempt} timed out at {r.at:g}, before its "
            f"deadline {a.deadline:g}",
        )
    ended.add((r.item_id, r.attempt))
    if a.pid is not None and a.pid in live:
        timed[(r.item_id, r.attempt)] = attrs.evolve(a, index=i, deadline=r.at)
