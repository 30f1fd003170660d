"""Invariant checks on a :class:`~supervisor.testing.Trace`: dependencies and idempotent
keys of work items (issue 21, ``Submit(key=..., after=...)``).

Both read the schedule's submits as the runner applied them
(:class:`~supervisor.testing.SubmitApplied`): a ``TYPE:KEY`` name stands for the kept
item of that type first made by a submit with that key (kept: the queue's snapshots
still list it; once pruned, the key is free again).
"""

from __future__ import annotations

import attrs

from ..work import (
    WorkAssigned,
    WorkCancelled,
    WorkCompleted,
    WorkDeadLettered,
    WorkDependencyEnded,
    WorkFailed,
    WorkSubmitted,
)
from ._invariants import fail as _fail
from ._run import Record, SubmitApplied, SubmitRefused, Trace, WorkSnapshot

__all__ = ["check_work_dependencies", "check_work_keys", "dependencies_of"]


@attrs.define(eq=False)
class _Keys:
    """The kept item of each ``(type, key)``, as the trace tells."""

    kept: dict[tuple[str, str], str] = attrs.field(factory=dict)

    def see(self, r: Record) -> None:
        if isinstance(r, SubmitApplied) and r.submit.key is not None:
            self.kept.setdefault((r.submit.agent_type, r.submit.key), r.item_id)
        elif isinstance(r, WorkSnapshot):
            ids = {s.id for s in r.items}
            for name, item in list(self.kept.items()):
                if item not in ids:  # pruned: the key is free again
                    del self.kept[name]

    def named(self, name: str) -> str | None:
        agent_type, _, key = name.partition(":")
        return self.kept.get((agent_type, key))


def dependencies_of(trace: Trace) -> dict[str, tuple[str, ...]]:
    """The ids each item submitted with ``after`` waits for (its ``TYPE:KEY`` names as
    the trace resolves them; a name that names no kept item is left out)."""
    keys = _Keys()
    deps: dict[str, tuple[str, ...]] = {}
    for r in trace.log:
        if isinstance(r, SubmitApplied) and r.created and r.submit.after:
            found = (keys.named(n) for n in r.submit.after)
            deps[r.item_id] = tuple(d for d in found if d is not None)
        keys.see(r)
    return deps


def check_work_keys(trace: Trace) -> None:
    """A second submit of a type and key, while the first item is kept, creates nothing:
    the service answers the kept item's id (``SubmitApplied.item_id``) and publishes no
    ``work_submitted``; a first submit with a key makes a new item (not one made by
    another submit). With :func:`check_work_completions` (no item completed twice), no
    key's work is done twice while its item is kept.
    """
    keys = _Keys()
    seen: set[str] = set()  # items made so far
    fresh: list[str] = []  # work_submitted since the runner's last record
    for i, r in enumerate(trace.log):
        if isinstance(r, WorkSubmitted):
            fresh.append(r.item_id)
        elif isinstance(r, SubmitApplied):
            _check_keyed_submit(trace, i, r, keys, seen, fresh)
            seen.update(fresh)
            seen.add(r.item_id)
            fresh = []
        elif isinstance(r, SubmitRefused):
            seen.update(fresh)
            fresh = []
        keys.see(r)


def _check_keyed_submit(
    trace: Trace, i: int, r: SubmitApplied, keys: _Keys, seen: set[str], fresh: list[str]
) -> None:
    """:func:`check_work_keys` at one applied submit (``fresh``: the items published by
    it)."""
    key = r.submit.key
    if key is None:
        return
    kept = keys.kept.get((r.submit.agent_type, key))
    made = [x for x in fresh if x not in seen]
    if kept is None:
        if r.item_id in seen:
            raise _fail(
                trace,
                i,
                "work-keys",
                f"the first submit with key {key!r} (type {r.submit.agent_type!r}) was "
                f"answered with {r.item_id!r}, an item made by another submit",
            )
        return
    if r.item_id != kept or made or r.created:
        extra = f" and created {made}" if made else ""
        raise _fail(
            trace,
            i,
            "work-keys",
            f"a second submit with key {key!r} (type {r.submit.agent_type!r}) was answered "
            f"with {r.item_id!r}{extra}; {kept!r} has that key and is kept, so the answer "
            "is its id and nothing is created",
        )


_ENDS = (WorkDeadLettered, WorkCancelled, WorkDependencyEnded)


def _ended_badly(r: Record) -> str | None:
    """The item ``r`` ends otherwise than completed (dead, failed, cancelled), if any."""
    if isinstance(r, _ENDS) or (isinstance(r, WorkFailed) and r.final):
        return str(r.item_id)
    return None


def check_work_dependencies(trace: Trace, *, written: float = 0.0) -> None:
    """No item is handed out before every item it waits for (``Submit(after=...)``)
    completed; an item one of whose dependencies ended dead, failed or cancelled is
    cancelled (``work_dependency_ended``, at the latest by the quiet moment before the
    stop; the queue has it ``cancelled`` from the next snapshot on) and never handed out.
    In every snapshot an item waiting for a dependency not completed is queued and
    ``blocked``, and one whose dependencies all completed is no longer blocked.

    ``written``: seconds a shared store may take to settle an item after the step that
    calls for it (Redis settles in the rounds after a finish or a submit): a snapshot
    within that time may still show it waiting; never the quiet moment before the stop.
    """
    deps = dependencies_of(trace)
    completed: dict[str, float] = {}  # item -> when it completed
    bad: dict[str, str] = {}  # item -> what ended it otherwise than completed
    due: dict[str, tuple[int, str]] = {}  # item -> (index, dependency): must be cancelled
    made: set[str] = set()
    for i, r in enumerate(trace.log):
        if isinstance(r, SubmitApplied) and r.created:
            made.add(r.item_id)
            for d in deps.get(r.item_id, ()):
                if d in bad and r.item_id not in bad:  # (not cancelled by the submit itself)
                    due.setdefault(r.item_id, (i, d))
        elif isinstance(r, WorkAssigned):
            waiting = [d for d in deps.get(r.item_id, ()) if d not in completed]
            if waiting:
                how = f"ended {bad[waiting[0]]}" if waiting[0] in bad else "not completed yet"
                raise _fail(
                    trace,
                    i,
                    "work-dependencies",
                    f"{r.item_id!r} was assigned to {r.child_id!r} while its dependency "
                    f"{waiting[0]!r} had {how}",
                )
        elif isinstance(r, WorkCompleted):
            completed.setdefault(r.item_id, r.at)
        elif isinstance(r, WorkSnapshot):
            _check_deps_at(trace, i, r, deps, completed, due, written)
        item = _ended_badly(r)
        if item is None:
            continue
        due.pop(item, None)
        if isinstance(r, WorkDependencyEnded) and not any(d in bad for d in deps.get(item, ())):
            raise _fail(
                trace,
                i,
                "work-dependencies",
                f"{item!r} was cancelled for a dependency ({r.reason}), but none of its "
                f"dependencies {list(deps.get(item, ()))} had ended otherwise than completed",
            )
        bad.setdefault(item, r.kind.removeprefix("work_").replace("dependency_ended", "cancelled"))
        for x, ds in deps.items():
            if item in ds and x in made and x not in bad and x not in completed:
                due.setdefault(x, (i, item))


def _check_deps_at(
    trace: Trace,
    i: int,
    snap: WorkSnapshot,
    deps: dict[str, tuple[str, ...]],
    completed: dict[str, float],
    due: dict[str, tuple[int, str]],
    written: float = 0.0,
) -> None:
    """:func:`check_work_dependencies` at a snapshot."""
    states = {s.id: s for s in snap.items}
    late = snap.quiesced or snap.final
    for item, (at, dep) in due.items():
        s = states.get(item)
        settling = snap.at - getattr(trace.log[at], "at", snap.at) <= written
        if late or (s is not None and s.status != "cancelled" and not settling):
            status = s.status if s is not None else "gone"
            raise _fail(
                trace,
                i,
                "work-dependencies",
                f"{item!r} waits for {dep!r}, which ended otherwise than completed; it is "
                f"{status} in the queue"
                + (" and no work_dependency_ended was published" if status == "cancelled" else "")
                + ": it must be cancelled",
            )
    for item, ds in deps.items():
        s = states.get(item)
        if s is None or s.status != "queued" or item in due:
            continue
        waiting = [d for d in ds if d not in completed]
        if waiting and not s.blocked:
            raise _fail(
                trace,
                i,
                "work-dependencies",
                f"{item!r} is queued ready while its dependency {waiting[0]!r} has not completed",
            )
        since = max((completed[d] for d in ds if d in completed), default=snap.at)
        if s.blocked and not waiting and (late or snap.at - since > written):
            raise _fail(
                trace,
                i,
                "work-dependencies",
                f"{item!r} still waits though its dependencies {list(ds)} all completed: "
                "it is lost",
            )
