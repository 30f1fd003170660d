"""Invariant checks on a :class:`~supervisor.testing.Trace`: work items under crashes
and hangs (holders, reclaims, completions, deliveries, outcomes).

Each check raises :class:`InvariantViolation` naming the first record that disagrees;
:func:`check_work` runs them all (and :func:`~supervisor.testing.check_all` runs it when
work was submitted).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from .._events import (
    ChildExited,
    ChildHung,
    ChildRunning,
    ChildStarting,
)
from ..work import (
    WorkAssigned,
    WorkCancelled,
    WorkCompleted,
    WorkDeadLettered,
    WorkDependencyEnded,
    WorkFailed,
    WorkReclaimed,
    WorkRefused,
    WorkSubmitted,
    WorkTimedOut,
)
from ._invariants import EPS as _EPS, fail as _fail
from ._invariants_deps import check_work_dependencies, check_work_keys, dependencies_of
from ._invariants_limits import check_work_time_limits
from ._run import (
    Record,
    SubmitApplied,
    Trace,
    WorkSnapshot,
)
from ._sim import WireRecord

__all__ = [
    "check_work",
    "check_work_completions",
    "check_work_deliveries",
    "check_work_dependencies",
    "check_work_holders",
    "check_work_keys",
    "check_work_order",
    "check_work_outcomes",
    "check_work_reclaim",
    "check_work_time_limits",
]


# --------------------------------------------------------------------------------------
# Work: the queue and the service under crashes and hangs

_FINISHED = ("completed", "failed", "dead")


@attrs.define(eq=False)
class _Agents:
    """Which agent processes live, run, said ``HELLO`` or hung, as the trace tells."""

    current: dict[str, int] = attrs.field(factory=dict)  # child id -> newest pid
    types: dict[int, str | None] = attrs.field(factory=dict)  # pid -> agent type
    live: set[int] = attrs.field(factory=set)
    running: set[int] = attrs.field(factory=set)
    hello: set[int] = attrs.field(factory=set)
    hung: set[int] = attrs.field(factory=set)
    exited: dict[int, ChildExited] = attrs.field(factory=dict)

    def see(self, r: Record) -> None:
        if isinstance(r, ChildStarting):
            self.current[r.child_id] = r.pid
            self.types[r.pid] = r.agent_type
            self.live.add(r.pid)
        elif isinstance(r, ChildExited):
            self.live.discard(r.pid)
            self.exited[r.pid] = r
        elif isinstance(r, ChildRunning):
            self.running.add(r.pid)
        elif isinstance(r, ChildHung):
            self.hung.add(r.pid)
        elif isinstance(r, WireRecord) and r.sender == "agent" and r.word == "HELLO":
            self.hello.add(r.pid)

    def pid_of(self, child: str) -> int | None:
        return self.current.get(child)


# A cancel and a time-out (issue 21) end the attempt too: its agent holds nothing after.
_RELEASES = (
    WorkCompleted,
    WorkFailed,
    WorkReclaimed,
    WorkDeadLettered,
    WorkCancelled,
    WorkTimedOut,
)


def _item_event(r: Record) -> str | None:
    if isinstance(r, (WorkSubmitted, WorkAssigned, WorkRefused, *_RELEASES)):
        return str(r.item_id)
    return None


def check_work_holders(trace: Trace) -> None:
    """No item is held by two live agents at once, and a live agent holds at most one.

    An item is held from its ``work_assigned`` until its ``work_completed``,
    ``work_failed``, ``work_reclaimed`` or ``work_dead``; its holder is the process of
    the agent at the assignment. A holder whose process has exited no longer counts
    (that its item was reclaimed then is :func:`check_work_reclaim`'s business).
    """
    agents = _Agents()
    held: dict[str, tuple[str, int | None, int]] = {}  # item -> (child, pid, attempt)
    holding: dict[int, str] = {}  # pid -> item
    for i, r in enumerate(trace.log):
        agents.see(r)
        if isinstance(r, WorkAssigned):
            pid = agents.pid_of(r.child_id)
            before = held.get(r.item_id)
            if before is not None and before[1] in agents.live:
                raise _fail(
                    trace,
                    i,
                    "work-holders",
                    f"{r.item_id!r} was assigned to {r.child_id!r} (attempt {r.attempt}) "
                    f"while {before[0]!r} (pid {before[1]}) still held attempt {before[2]}",
                )
            other = holding.get(pid) if pid is not None else None
            if other is not None and other != r.item_id and pid in agents.live:
                raise _fail(
                    trace,
                    i,
                    "work-holders",
                    f"{r.child_id!r} (pid {pid}) was given {r.item_id!r} while it held "
                    f"{other!r}: an agent holds at most one item",
                )
            if before is not None and before[1] is not None:
                holding.pop(before[1], None)
            held[r.item_id] = (r.child_id, pid, r.attempt)
            if pid is not None:
                holding[pid] = r.item_id
        elif isinstance(r, _RELEASES):
            gone = held.pop(r.item_id, None)
            if gone is not None and gone[1] is not None and holding.get(gone[1]) == r.item_id:
                del holding[gone[1]]


def check_work_reclaim(trace: Trace) -> None:
    """Reclaim happens at the exit: the item a process holds when it exits goes back
    (``work_reclaimed``, reason ``exit``, or ``stop`` for an exit the supervisor asked
    for) or is dead-lettered at the same virtual time; the item of a process found hung
    goes back (reason ``hang``) the moment ``hung`` is published. Conversely a reclaim
    for ``exit``, ``stop`` or ``hang`` happens only then, and one for ``unreachable``
    only at the assignment it undoes.
    """
    agents = _Agents()
    held: dict[str, tuple[str, int | None, int, float]] = {}  # item -> child, pid, attempt, at
    # item -> (index, time, reasons accepted, what happened)
    due: dict[str, tuple[int, float, tuple[str, ...], str]] = {}
    wired = any(isinstance(r, WireRecord) for r in trace.log)
    failed: set[tuple[object, object, int | None]] = set()  # FAILs sent: item, attempt, pid
    timed_dead: set[tuple[str, int]] = set()  # issue 21: final time-outs, dead-lettered next
    for i, r in enumerate(trace.log):
        if isinstance(r, WireRecord) and r.sender == "agent" and r.word == "FAIL":
            body = r.body if isinstance(r.body, dict) else {}
            failed.add((body.get("item"), body.get("attempt"), r.pid))
        for item, (j, at, _, what) in list(due.items()):
            if r.at > at + _EPS:
                raise _fail(
                    trace,
                    j,
                    "work-reclaim",
                    f"{item!r} was not reclaimed when {what} at {at:g} (nothing happened "
                    f"to it by {r.at:g})",
                )
        agents.see(r)
        if isinstance(r, ChildExited | ChildHung):
            for item, (child, pid, _attempt, _) in held.items():
                if pid == r.pid and item not in due:
                    if isinstance(r, ChildHung):
                        reasons: tuple[str, ...] = ("hang",)
                        what = f"its holder {child!r} (pid {pid}) was found hung"
                    else:
                        reasons = ("stop",) if r.expected else ("exit",)
                        what = f"its holder {child!r} (pid {pid}) exited"
                    due[item] = (i, r.at, reasons, what)
        elif isinstance(r, WorkAssigned):
            pid = agents.pid_of(r.child_id)
            held[r.item_id] = (r.child_id, pid, r.attempt, r.at)
            if pid is None or pid not in agents.live or pid in agents.hung:
                due[r.item_id] = (
                    i,
                    r.at,
                    ("unreachable", "exit", "stop", "hang"),
                    f"it was assigned to {r.child_id!r}, whose process was gone",
                )
        elif isinstance(r, WorkDeadLettered) and (r.item_id, r.attempt) in timed_dead:
            timed_dead.discard((r.item_id, r.attempt))
        elif isinstance(r, WorkReclaimed | WorkDeadLettered):
            expect = due.pop(r.item_id, None)
            _check_release(trace, i, r, held.pop(r.item_id, None), expect, wired, failed)
        elif isinstance(r, WorkCancelled | WorkTimedOut):  # issue 21: the attempt ended
            held.pop(r.item_id, None)
            due.pop(r.item_id, None)  # (a time limit at the instant of its holder's exit)
            if isinstance(r, WorkTimedOut) and r.final:
                timed_dead.add((r.item_id, r.attempt))  # its work_dead follows
        elif isinstance(r, WorkCompleted | WorkFailed):
            held.pop(r.item_id, None)
            expect = due.pop(r.item_id, None)
            if expect is not None:
                raise _fail(
                    trace,
                    i,
                    "work-reclaim",
                    f"{r.item_id!r} was answered by {r.child_id!r} after {expect[3]}, instead "
                    "of being reclaimed",
                )
    for item, (j, _at, _, what) in due.items():
        raise _fail(trace, j, "work-reclaim", f"{item!r} was never reclaimed after {what}")


def _check_release(
    trace: Trace,
    i: int,
    r: WorkReclaimed | WorkDeadLettered,
    holder: tuple[str, int | None, int, float] | None,
    expect: tuple[int, float, tuple[str, ...], str] | None,
    wired: bool,
    failed: set[tuple[object, object, int | None]],
) -> None:
    """:func:`check_work_reclaim` at a reclaim or dead-letter of ``r.item_id``, given its
    holder (child, pid, attempt, assigned at) and the reclaim that was due, if any."""
    reason = r.reason if isinstance(r, WorkReclaimed) else None
    if reason == "handback":
        if expect is not None:
            raise _fail(
                trace,
                i,
                "work-reclaim",
                f"{r.item_id!r} was handed back by {r.child_id!r} after {expect[3]}",
            )
        return
    if reason == "unreachable" and (
        holder is None or abs(holder[3] - r.at) > _EPS or holder[2] != r.attempt
    ):
        raise _fail(
            trace,
            i,
            "work-reclaim",
            f"{r.item_id!r} was reclaimed as unreachable at {r.at:g}, not at its assignment",
        )
    if expect is None:
        if reason == "unreachable":
            return
        if (
            isinstance(r, WorkDeadLettered)
            and holder is not None
            and (not wired or (r.item_id, r.attempt, holder[1]) in failed)
        ):
            return  # dead-lettered by its holder's FAIL: not a reclaim
        if isinstance(r, WorkReclaimed):
            raise _fail(
                trace,
                i,
                "work-reclaim",
                f"{r.item_id!r} was reclaimed from {r.child_id!r} (reason {reason!r}) "
                "though its holder neither exited nor was found hung then",
            )
        raise _fail(
            trace,
            i,
            "work-reclaim",
            f"{r.item_id!r} was dead-lettered by {r.child_id!r} while its holder "
            "neither answered, exited nor hung",
        )
    if reason is not None and reason not in expect[2]:
        raise _fail(
            trace,
            i,
            "work-reclaim",
            f"{r.item_id!r} was reclaimed with reason {reason!r} when {expect[3]}; "
            f"expected {' or '.join(repr(x) for x in expect[2])}",
        )


def check_work_completions(trace: Trace) -> None:
    """No item is completed twice, and a completed item never changes.

    A ``work_completed`` comes from the agent holding the item's current attempt, after
    that agent sent a ``RESULT`` for that attempt (so a refused, stale or forged result
    never completes an item); after it, nothing happens to the item but refusals; and
    in every later :class:`~supervisor.testing.WorkSnapshot` the queue still has it
    completed, with that attempt and the result that agent sent.
    """
    agents = _Agents()
    wired = any(isinstance(r, WireRecord) for r in trace.log)
    sent: dict[tuple[object, object, int], object] = {}
    current: dict[str, tuple[str, int | None, int]] = {}  # item -> child, pid, attempt
    done: dict[str, tuple[int, WorkCompleted, object]] = {}
    for i, r in enumerate(trace.log):
        agents.see(r)
        if isinstance(r, WireRecord) and r.sender == "agent" and r.word == "RESULT":
            body = r.body if isinstance(r.body, dict) else {}
            sent.setdefault((body.get("item"), body.get("attempt"), r.pid), body.get("result"))
        item = _item_event(r)
        if item is not None and item in done and not isinstance(r, WorkRefused):
            _, first, _ = done[item]
            what = "completed again" if isinstance(r, WorkCompleted) else f"then {r.kind}"
            raise _fail(
                trace,
                i,
                "work-completions",
                f"{item!r} was completed by {first.child_id!r} (attempt {first.attempt}) at "
                f"{first.at:g}, and {what} by {getattr(r, 'child_id', '')!r}",
            )
        if isinstance(r, WorkAssigned):
            current[r.item_id] = (r.child_id, agents.pid_of(r.child_id), r.attempt)
        elif isinstance(r, WorkCompleted):
            holder = current.get(r.item_id)
            if holder is None or holder[0] != r.child_id or holder[2] != r.attempt:
                held = (
                    f"attempt {holder[2]} is held by {holder[0]!r}"
                    if holder is not None
                    else "it was never assigned"
                )
                raise _fail(
                    trace,
                    i,
                    "work-completions",
                    f"{r.item_id!r} was completed by {r.child_id!r} with attempt {r.attempt}, "
                    f"but {held}: a stale answer completed it",
                )
            key = (r.item_id, r.attempt, holder[1] if holder[1] is not None else -1)
            if wired and key not in sent:
                raise _fail(
                    trace,
                    i,
                    "work-completions",
                    f"{r.item_id!r} was completed for {r.child_id!r} (attempt {r.attempt}), "
                    "which sent no RESULT for that attempt",
                )
            done[r.item_id] = (i, r, sent.get(key))
        elif isinstance(r, _RELEASES):
            current.pop(r.item_id, None)
        elif isinstance(r, WorkSnapshot):
            _check_completed_in_snapshot(trace, i, r, done, wired)


def _check_completed_in_snapshot(
    trace: Trace,
    i: int,
    r: WorkSnapshot,
    done: dict[str, tuple[int, WorkCompleted, object]],
    wired: bool,
) -> None:
    """:func:`check_work_completions` at a snapshot: every completed item is still
    completed, with its attempt and result, and nothing else is."""
    states = {s.id: s for s in r.items}
    for item_id, (_, ev, result) in done.items():
        s = states.get(item_id)
        if s is None:
            raise _fail(
                trace,
                i,
                "work-completions",
                f"completed item {item_id!r} is lost from the queue's record",
            )
        if s.status != "completed" or s.attempt != ev.attempt:
            raise _fail(
                trace,
                i,
                "work-completions",
                f"{item_id!r} was completed with attempt {ev.attempt}; the queue now "
                f"says {s.status} with attempt {s.attempt}",
            )
        if wired and s.result != result:
            raise _fail(
                trace,
                i,
                "work-completions",
                f"{item_id!r} holds the result {s.result!r}; the completing agent "
                f"{ev.child_id!r} sent {result!r}",
            )
    for s in r.items:
        if s.status == "completed" and s.id not in done:
            raise _fail(
                trace,
                i,
                "work-completions",
                f"the queue has {s.id!r} completed, but no work_completed was published",
            )


def _max_deliveries(trace: Trace) -> dict[str, int]:
    found: dict[str, int] = {}
    for r in trace.log:
        if isinstance(r, WorkSnapshot):
            for s in r.items:
                found.setdefault(s.id, s.max_deliveries)
        elif isinstance(r, SubmitApplied):
            found[r.item_id] = r.max_deliveries
    return found


def check_work_deliveries(trace: Trace) -> None:
    """Deliveries never exceed ``max_deliveries``, and a dead item used them all.

    A delivery is an assignment; a reclaim on a graceful stop, a hand-back and an
    unreachable agent give it back. An item is dead-lettered exactly when an exit, a
    hang or a ``FAIL`` (with retry) spends its last delivery, and the queue's count of
    deliveries agrees with the events at every :class:`~supervisor.testing.WorkSnapshot`.
    """
    limits = _max_deliveries(trace)
    count: dict[str, int] = {}
    for i, r in enumerate(trace.log):
        item = _item_event(r)
        limit = limits.get(item, 0) if item is not None else 0
        if isinstance(r, WorkAssigned):
            n = count[r.item_id] = count.get(r.item_id, 0) + 1
            if item in limits and n > limit:
                raise _fail(
                    trace,
                    i,
                    "work-deliveries",
                    f"{r.item_id!r} was delivered a {n}th time (attempt {r.attempt}); "
                    f"max_deliveries={limit}",
                )
        elif isinstance(r, WorkReclaimed):
            if r.reason in ("stop", "handback", "unreachable"):
                count[r.item_id] = count.get(r.item_id, 0) - 1
            elif item in limits and count.get(r.item_id, 0) >= limit:
                raise _fail(
                    trace,
                    i,
                    "work-deliveries",
                    f"{r.item_id!r} went back to the queue ({r.reason}) after using all its "
                    f"{limit} deliveries; it should have been dead-lettered",
                )
        elif isinstance(r, WorkFailed | WorkTimedOut) and not r.final:
            if item in limits and count.get(r.item_id, 0) >= limit:
                raise _fail(
                    trace,
                    i,
                    "work-deliveries",
                    f"{r.item_id!r} {_how(r)}"
                    " and went back to the queue after using "
                    f"all its {limit} deliveries; it should have been dead-lettered",
                )
        elif isinstance(r, WorkDeadLettered):
            n = count.get(r.item_id, 0)
            if item in limits and n != limit:
                raise _fail(
                    trace,
                    i,
                    "work-deliveries",
                    f"{r.item_id!r} was dead-lettered after {n} of its {limit} deliveries",
                )
        elif isinstance(r, WorkSnapshot):
            for s in r.items:
                if s.id in count and s.deliveries != count[s.id]:
                    raise _fail(
                        trace,
                        i,
                        "work-deliveries",
                        f"the queue counts {s.deliveries} deliveries of {s.id!r}; the events "
                        f"show {count[s.id]}",
                    )


def check_work_outcomes(trace: Trace) -> None:
    """Every submitted item ends completed, failed or dead once the schedule quiesces.

    At the quiet moment before the tree is stopped (the schedule played out and the tree
    had ``settle`` seconds), every item is in the queue's record with the status its
    events say; an item still assigned is held by a live agent (one still working, or
    hung unnoticed); an item still queued has no idle agent of its type (live, running,
    said ``HELLO``, not hung, holding nothing) that could take it. If the tree gave up
    first, items may stay queued. After the hub stopped, no item is assigned.
    """
    agents = _Agents()
    status: dict[str, str] = {}
    types: dict[str, str] = {}
    holder: dict[str, str] = {}
    for i, r in enumerate(trace.log):
        agents.see(r)
        if isinstance(r, WorkSubmitted):
            status[r.item_id] = "queued"
            types[r.item_id] = r.agent_type
        elif isinstance(r, WorkAssigned):
            status[r.item_id] = "assigned"
            holder[r.item_id] = r.child_id
        elif isinstance(r, WorkCompleted):
            if status.get(r.item_id) == "cancelled":
                raise _fail(trace, i, "work-cancelled", f"{r.item_id!r} completed after a cancel")
            status[r.item_id] = "completed"
        elif isinstance(r, WorkFailed):
            status[r.item_id] = "failed" if r.final else "queued"
        elif isinstance(r, WorkReclaimed):
            status[r.item_id] = "queued"
        elif isinstance(r, WorkDeadLettered):
            status[r.item_id] = "dead"
        elif isinstance(r, WorkCancelled | WorkDependencyEnded):  # issue 21: final
            status[r.item_id] = "cancelled"
        elif isinstance(r, WorkTimedOut):  # a delivery spent: queued again, or dead
            status[r.item_id] = "dead" if r.final else "queued"
        elif isinstance(r, WorkSnapshot) and (r.quiesced or r.final):
            _check_outcomes_at(trace, i, r, agents, status, types, holder)


def _check_outcomes_at(
    trace: Trace,
    i: int,
    snap: WorkSnapshot,
    agents: _Agents,
    status: Mapping[str, str],
    types: Mapping[str, str],
    holder: Mapping[str, str],
) -> None:
    states = {s.id: s for s in snap.items}
    when = "after the hub stopped" if snap.final else f"at {snap.at:g}, once the schedule quiesced"
    busy = {s.agent for s in snap.items if s.status == "assigned"}
    for item, want in status.items():
        s = states.get(item)
        if s is None:
            raise _fail(
                trace,
                i,
                "work-outcomes",
                f"{item!r} is lost: the queue has no record {when}",
            )
        if s.status != want:
            raise _fail(
                trace,
                i,
                "work-outcomes",
                f"{item!r} is {s.status} in the queue {when}; its events say {want}",
            )
        if s.status == "assigned":
            child = holder.get(item, "")
            pid = agents.pid_of(child)
            if snap.final or pid not in agents.live:
                raise _fail(
                    trace,
                    i,
                    "work-outcomes",
                    f"{item!r} is still assigned to {child!r} {when}, whose process "
                    f"{'is gone' if pid not in agents.live else 'was stopped'}: it is lost",
                )
        elif s.status == "queued" and not snap.final and not s.delayed and not s.blocked:
            idle = sorted(
                child
                for child, pid in agents.current.items()
                if agents.types.get(pid) == types.get(item)
                and pid in agents.live
                and pid in agents.running
                and pid in agents.hello
                and pid not in agents.hung
                and child not in busy
            )
            if idle:
                raise _fail(
                    trace,
                    i,
                    "work-outcomes",
                    f"{item!r} waits in the queue {when} while {idle} of its type "
                    f"{types.get(item)!r} are idle",
                )


# --- ordering (issue 21) ---


def check_work_order(trace: Trace, *, written: float = 0.0, held_first: bool = False) -> None:
    """No item is handed out before its delay passed, and priorities are respected among
    ready items: when an item of a type is assigned, no item of that type that was
    submitted, never assigned yet and whose delay has passed has a higher priority
    (an item put back after an attempt may go first within its priority, and waits out
    a retry delay the trace does not know: it is only checked not to jump a higher
    priority either).

    For a queue shared through a store (Redis): ``written``, the seconds a submitted
    item takes to be in the store (before that no take can see it); ``held_first``: an
    item put back after an attempt stays with the hub that held it and goes to its next
    idle agent, so only assignments of items never assigned before are checked.
    """
    submitted: dict[str, SubmitApplied] = {}
    fresh: dict[str, SubmitApplied] = {}  # never assigned yet
    deps = dependencies_of(trace)
    completed: dict[str, float] = {}  # item -> when (an item waiting for one is not ready)
    for i, r in enumerate(trace.log):
        if isinstance(r, WorkCompleted):
            completed.setdefault(r.item_id, r.at)
        if isinstance(r, SubmitApplied) and r.item_id not in submitted:  # a key answers once
            submitted[r.item_id] = fresh[r.item_id] = r
        elif isinstance(r, WorkAssigned) and r.item_id in submitted:
            sub = submitted[r.item_id]
            ready_at = sub.at + (sub.submit.delay or 0.0)
            if r.at < ready_at - _EPS:
                raise _fail(
                    trace,
                    i,
                    "work-order",
                    f"{r.item_id!r} was assigned at {r.at:g}, before its delay passed "
                    f"(submitted at {sub.at:g} with delay={sub.submit.delay:g})",
                )
            first = fresh.pop(r.item_id, None) is not None
            if held_first and not first:
                continue
            mine = sub.submit
            jumped = [
                f.item_id
                for f in fresh.values()
                if f.submit.agent_type == mine.agent_type
                and f.submit.priority > mine.priority
                and f.at + written + (f.submit.delay or 0.0) < r.at - 1e-6
                and all(completed.get(d, r.at) < r.at - 1e-6 for d in deps.get(f.item_id, ()))
            ]
            if jumped:
                raise _fail(
                    trace,
                    i,
                    "work-order",
                    f"{r.item_id!r} (priority {mine.priority}) was assigned while "
                    f"{jumped[0]!r} (priority {submitted[jumped[0]].submit.priority}) of the "
                    "same type was ready: higher priorities go first",
                )


# --- end ordering ---


def check_work(trace: Trace) -> None:
    """Every work invariant: :func:`check_work_outcomes`, :func:`check_work_holders`,
    :func:`check_work_completions`, :func:`check_work_reclaim`,
    :func:`check_work_deliveries`, :func:`check_work_order`,
    :func:`check_work_dependencies`, :func:`check_work_keys` and
    :func:`check_work_time_limits` (:func:`check_all` runs them when work was submitted).
    """
    check_work_holders(trace)
    check_work_reclaim(trace)
    check_work_completions(trace)
    check_work_deliveries(trace)
    check_work_outcomes(trace)
    check_work_order(trace)
    check_work_dependencies(trace)  # issue 21: dependencies and keys
    check_work_keys(trace)
    check_work_time_limits(trace)  # issue 21: time limits


def _how(r: WorkFailed | WorkTimedOut) -> str:
    return "timed out" if isinstance(r, WorkTimedOut) else "failed (retry)"
