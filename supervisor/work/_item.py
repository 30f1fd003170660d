"""The work item, its verdicts and events, and the checks every submit passes."""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from .._errors import ControlError
from .._events import Event
from .._notify import MAX_MESSAGE

DEFAULT_MAX_DELIVERIES = 3
MAX_PAYLOAD = MAX_MESSAGE // 2  # bytes of JSON; an ASSIGN must fit in one record
MAX_CHECKPOINT = MAX_MESSAGE // 4  # bytes of JSON; payload + checkpoint fit in one ASSIGN
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


class ItemStatus(enum.StrEnum):
    """Where a work item is."""

    QUEUED = "queued"
    ASSIGNED = "assigned"
    COMPLETED = "completed"
    FAILED = "failed"  # the agent said so, with retry=false: final
    DEAD = "dead"  # used up max_deliveries: in the dead-letter list
    CANCELLED = "cancelled"  # `work cancel`, or a dependency did not complete: final


FINAL: frozenset[ItemStatus] = frozenset(
    {ItemStatus.COMPLETED, ItemStatus.FAILED, ItemStatus.DEAD, ItemStatus.CANCELLED}
)
"""The statuses in which an item has ended: nothing more happens to it unless retried
(:meth:`WorkService.wait <supervisor.WorkService.wait>` returns then; ``"final"`` in its
JSON). A new final status is added here, and nowhere else."""


@attrs.frozen
class AttemptRecord:
    """How one attempt of an item ended."""

    attempt: int
    agent: str
    outcome: str  # completed, failed, handed_back, reclaimed:exit|hang|stop, cancelled, timed_out
    reason: str
    at: float
    hub: str = ""  # the hub whose agent made the attempt ("" when not known)


@attrs.define
class WorkItem:
    """One piece of work and everything that happened to it.

    ``attempt`` is the fence: it grows with every assignment, and only the agent holding
    the current attempt may answer. ``deliveries`` counts the attempts that count
    against ``max_deliveries`` (a hand-back on a graceful stop does not; a crash does).
    """

    id: str
    agent_type: str
    payload: Any
    max_deliveries: int
    created_at: float
    source: str = "api"
    status: ItemStatus = ItemStatus.QUEUED
    attempt: int = 0
    deliveries: int = 0
    agent: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: str | None = None
    progress: Any = None
    checkpoint: Any = None
    history: list[AttemptRecord] = attrs.field(factory=list)
    # -- dependencies, idempotent keys, routing to tiers (issue 21) ---------------------
    key: str | None = None
    """The submit's idempotency key (one live item per type and key)."""
    after: list[str] = attrs.field(factory=list)
    """The items this one waits for (``submit --after``)."""
    waiting_on: list[str] = attrs.field(factory=list)
    """Those of ``after`` not completed yet: the item is not handed out while any is."""
    require: dict[str, str] = attrs.field(factory=dict)
    """Pool labels an agent's pool must have to be given the item (``submit --require``)."""
    # -- end of dependencies, keys, tiers -------------------------------------------------
    # --- ordering (issue 21): priority, delayed items, retry delays ---
    priority: int = 0
    """Higher first among the ready items of its type; FIFO within a priority."""
    not_before: float | None = None
    """Unix time (wall clock) before which the item is not handed out: a ``--delay`` /
    ``--not-before`` or a retry delay (``None``: ready)."""
    # --- end ordering ---
    # -- cancel and time limits (issue 21) --
    time_limit: float | None = None  # seconds per attempt (None: the pool's default, if any)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (for the control socket and ``--json``)."""
        return {
            "id": self.id,
            "type": self.agent_type,
            "status": str(self.status),
            "final": self.status in FINAL,
            "attempt": self.attempt,
            "deliveries": self.deliveries,
            "max_deliveries": self.max_deliveries,
            "agent": self.agent,
            "payload": self.payload,
            "result": self.result,
            "error": self.error,
            "progress": self.progress,
            "source": self.source,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "history": [attrs.asdict(h) for h in self.history],
            **_controls_json(self),
            "priority": self.priority,
            "not_before": self.not_before,
            "time_limit": self.time_limit,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkItem:
        """The item :meth:`to_json` described (its ``checkpoint`` too, when ``data`` has
        one). A field ``data`` lacks takes its default and a key the item does not know
        is ignored, so a record written before or after a field was added still loads.

        Raises:
            KeyError, TypeError, ValueError: ``data`` is not an item's JSON.
        """
        status = data.get("status", "queued")
        return cls(
            id=str(data["id"]),
            agent_type=str(data["type"]),
            payload=data.get("payload"),
            max_deliveries=int(data["max_deliveries"]),
            created_at=float(data.get("created_at") or 0.0),
            source=str(data.get("source") or "api"),
            status=ItemStatus(status),
            attempt=int(data.get("attempt") or 0),
            deliveries=int(data.get("deliveries") or 0),
            agent=data.get("agent"),
            started_at=_float_or_none(data.get("started_at")),
            finished_at=_float_or_none(data.get("finished_at")),
            result=data.get("result"),
            error=data.get("error"),
            progress=data.get("progress"),
            checkpoint=data.get("checkpoint"),
            history=[
                AttemptRecord(**{k: v for k, v in h.items() if k in _RECORD_FIELDS})
                for h in data.get("history") or ()
            ],
            **_controls_from_json(data),
            priority=int(data.get("priority") or 0),
            not_before=_float_or_none(data.get("not_before")),
            time_limit=_float_or_none(data.get("time_limit")),
        )


_RECORD_FIELDS = frozenset(f.name for f in attrs.fields(AttemptRecord))


# -- dependencies, idempotent keys, routing to tiers (issue 21) --------------------------

MAX_AFTER = 100
"""The most items one item may wait for (``submit --after``)."""
MAX_KEY = 200
"""The longest idempotency key, in characters (``submit --key``)."""
MAX_REQUIRE = 16
"""The most labels one item may require (``submit --require``)."""


def _controls_json(item: WorkItem) -> dict[str, Any]:
    return {
        "key": item.key,
        "after": list(item.after),
        "waiting_on": list(item.waiting_on),
        "require": dict(item.require),
    }


def _controls_from_json(data: Mapping[str, Any]) -> dict[str, Any]:
    key = data.get("key")
    return {
        "key": None if key is None else str(key),
        "after": [str(i) for i in data.get("after") or ()],
        "waiting_on": [str(i) for i in data.get("waiting_on") or ()],
        "require": {str(k): str(v) for k, v in (data.get("require") or {}).items()},
    }


def check_controls(
    key: Any, after: Any, require: Any
) -> tuple[str | None, list[str], dict[str, str]]:
    """``key``, ``after`` and ``require`` as a submit takes them, or a :class:`ControlError`
    naming the option and the fix."""
    if key is not None and (not isinstance(key, str) or not key or len(key) > MAX_KEY):
        raise ControlError(
            f"--key must be a non-empty string of at most {MAX_KEY} characters (got "
            f"{key!r:.80}), e.g. --key build-1234"
        )
    if isinstance(after, str):
        after = [a for a in after.split(",") if a]
    if after is None:
        after = []
    if not isinstance(after, list | tuple) or not all(isinstance(a, str) and a for a in after):
        raise ControlError(
            f"--after must name item ids, e.g. --after worker-1,worker-2 (got {after!r:.80})"
        )
    after = list(dict.fromkeys(after))
    if len(after) > MAX_AFTER:
        raise ControlError(
            f"--after names {len(after)} items, over the cap of {MAX_AFTER}; chain through an "
            "item that waits for some of them"
        )
    if require is None:
        require = {}
    if isinstance(require, list | tuple):
        pairs: dict[str, str] = {}
        for r in require:
            name, eq, value = str(r).partition("=")
            if not eq or not name:
                raise ControlError(
                    f"--require takes LABEL=VALUE, e.g. --require tier=large (got {r!r:.80})"
                )
            pairs[name] = value
        require = pairs
    if not isinstance(require, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in require.items()
    ):
        raise ControlError(
            f"--require takes LABEL=VALUE, e.g. --require tier=large (got {require!r:.80})"
        )
    if len(require) > MAX_REQUIRE:
        raise ControlError(f"--require names {len(require)} labels, over the cap of {MAX_REQUIRE}")
    return key, after, dict(require)


def _dependency_ended(dep: WorkItem) -> str:
    """The reason a dependent item is cancelled: its dependency ``dep`` did not complete."""
    why = f": {dep.error}" if dep.error else ""
    return f"dependency {dep.id} ended {dep.status}{why}"[:500]


# -- end of dependencies, keys, tiers ----------------------------------------------------


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


@attrs.frozen
class Verdict:
    """The queue's answer to an agent's message: taken, or refused and why."""

    accepted: bool
    reason: str = ""
    item: WorkItem | None = None


# --------------------------------------------------------------------------------------
# Events


@attrs.frozen(kw_only=True)
class WorkSubmitted(Event):
    """A work item was queued (``child_id``: the submitting agent, or ``""``)."""

    item_id: str
    agent_type: str
    kind: str = attrs.field(init=False, default="work_submitted")


@attrs.frozen(kw_only=True)
class WorkAssigned(Event):
    """An item was handed to agent ``child_id`` (attempt ``attempt``)."""

    item_id: str
    attempt: int
    kind: str = attrs.field(init=False, default="work_assigned")


@attrs.frozen(kw_only=True)
class WorkCompleted(Event):
    """Agent ``child_id`` completed an item."""

    item_id: str
    attempt: int
    kind: str = attrs.field(init=False, default="work_completed")


@attrs.frozen(kw_only=True)
class WorkFailed(Event):
    """Agent ``child_id`` reported a failure; ``final``: no retry (status failed)."""

    item_id: str
    attempt: int
    error: str
    final: bool
    kind: str = attrs.field(init=False, default="work_failed")


@attrs.frozen(kw_only=True)
class WorkReclaimed(Event):
    """An item went back to the queue: its agent exited, hung, was stopped, or handed it
    back (``reason``: ``exit``, ``hang``, ``stop``, ``handback``, ``unreachable``)."""

    item_id: str
    attempt: int
    reason: str
    kind: str = attrs.field(init=False, default="work_reclaimed")


@attrs.frozen(kw_only=True)
class WorkDeadLettered(Event):
    """An item used up its deliveries and moved to the dead-letter list."""

    item_id: str
    attempt: int
    reason: str
    kind: str = attrs.field(init=False, default="work_dead")


@attrs.frozen(kw_only=True)
class WorkRefused(Event):
    """An agent's answer was refused (a stale attempt, or an item it does not hold).

    One agent's refusals are reported at most once per 10 s: ``repeats`` is how many
    refusals of that agent this event stands for (this one and those not reported since
    the last event), so a flood of stale answers cannot flood the bus or the log.
    """

    item_id: str
    attempt: int
    reason: str
    repeats: int = 1
    kind: str = attrs.field(init=False, default="work_refused")


@attrs.frozen(kw_only=True)
class WorkDependencyEnded(Event):
    """An item waiting for others (``submit --after``) was cancelled: one of them ended
    dead, failed or cancelled (``reason`` names it)."""

    item_id: str
    reason: str
    kind: str = attrs.field(init=False, default="work_dependency_ended")


# -- cancel and time limits (issue 21) --


@attrs.frozen(kw_only=True)
class WorkCancelled(Event):
    """An item was cancelled (``hubvisor work cancel``); ``child_id``: the agent that held
    it and is told to give it up (``""`` when it was queued)."""

    item_id: str
    attempt: int
    reason: str
    kind: str = attrs.field(init=False, default="work_cancelled")


@attrs.frozen(kw_only=True)
class WorkTimedOut(Event):
    """Agent ``child_id`` ran past the item's time limit: the attempt ended ``timed_out``
    (a delivery spent); ``final``: no delivery was left (the item is dead)."""

    item_id: str
    attempt: int
    time_limit: float
    final: bool
    kind: str = attrs.field(init=False, default="work_timed_out")


def _check_time_limit(value: Any, where: str = "time_limit") -> float | None:
    """``value`` as seconds > 0, or None; a :class:`ControlError` naming it otherwise."""
    if value is None:
        return None
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not 0 < value < float("inf")
    ):
        raise ControlError(f"{where} must be seconds > 0, e.g. 600 (got {value!r:.80})")
    return float(value)


# --------------------------------------------------------------------------------------


def _check_payload(payload: Any) -> None:
    """Refuse a payload that is not strict JSON or is too big (see :meth:`WorkService.submit`).

    A lone surrogate (e.g. a file name decoded with ``surrogateescape``) is refused, not
    replaced: the caller holds the data and can fix it (``os.fsencode`` it, or send the
    bytes as hex), whereas replacing it would hand agents a name that does not exist.
    Agents' records are made safe where the hub parses them instead (see
    :func:`supervisor._notify.safe_text`): refusing those would lose their answer.
    """
    try:
        text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        if "Out of range float" in str(exc):
            raise ControlError(
                f"the payload holds NaN or Infinity, which JSON does not allow; send null, a "
                f"string or a finite number (got {payload!r:.80})"
            ) from None
        raise ControlError(
            f"the payload must be JSON ({type(exc).__name__}: {exc}); got {payload!r:.80}"
        ) from None
    except (TypeError, RecursionError) as exc:
        raise ControlError(
            f"the payload must be JSON ({type(exc).__name__}: {exc}); got {payload!r:.80}"
        ) from None
    if len(text) > MAX_PAYLOAD:
        raise ControlError(
            f"the payload is {len(text)} bytes of JSON, over {MAX_PAYLOAD}; put large inputs "
            "in a file or store and pass their name"
        )
    if "\\u" in text:
        bad = _SURROGATE_RE.search(json.dumps(payload, ensure_ascii=False))
        if bad is not None:
            raise ControlError(
                f"the payload holds a lone surrogate ({bad.group()!r}), which is not UTF-8 "
                "(a file name decoded with surrogateescape?); encode such names, e.g. "
                "os.fsencode(name).hex(), or decode them with errors='replace'"
            )


def _used_up(item: WorkItem) -> str:
    """Why an item is dead, from its history: e.g. ``used all 3 deliveries: failed (disk
    full), hang, exit``."""
    spent = [
        f"failed ({_cut(h.reason)})" if h.outcome == "failed" else h.reason
        for h in item.history
        if h.outcome in ("failed", "timed_out", "reclaimed:exit", "reclaimed:hang")
    ]
    return f"used all {item.max_deliveries} deliveries: {_once_each(spent[-item.max_deliveries :])}"


_MAX_REASON = 200  # characters of one attempt's error in a dead item's summary (then …)


def _cut(error: str) -> str:
    """``error`` cut at ``_MAX_REASON`` characters (the history keeps it whole)."""
    return error if len(error) <= _MAX_REASON else error[:_MAX_REASON] + "…"


def _once_each(reasons: list[str]) -> str:
    """``reasons`` joined, a run of equal ones said once: ``failed (disk full) (3 times)``."""
    runs: list[list[Any]] = []
    for reason in reasons:
        if runs and runs[-1][0] == reason:
            runs[-1][1] += 1
        else:
            runs.append([reason, 1])
    return ", ".join(r if n == 1 else f"{r} ({n} times)" for r, n in runs)


# --- ordering (issue 21) ---
MAX_PRIORITY = 1_000_000  # |priority| at most this (a sane bound, named in the error)
MAX_DELAY = 366 * 86_400.0  # seconds a delay may be at most (a year)


def check_priority(priority: Any) -> int:
    """The ``priority`` of a submit, or :class:`ControlError` naming it and the fix."""
    if (
        not isinstance(priority, int)
        or isinstance(priority, bool)
        or not -MAX_PRIORITY <= priority <= MAX_PRIORITY
    ):
        raise ControlError(
            f"priority must be an int from {-MAX_PRIORITY} to {MAX_PRIORITY} (higher first; "
            f"got {priority!r:.80})"
        )
    return priority


def not_before_of(delay: Any, not_before: Any, wall: float) -> float | None:
    """The Unix time before which a submitted item waits, from ``delay`` (seconds from
    ``wall``) or ``not_before`` (a Unix time, or an ISO 8601 time; one without a zone is
    local time); both ``None``: ready at once.

    Raises:
        ControlError: both given, a negative or non-finite delay, a delay over a year,
            or a time that does not parse.
    """
    import datetime
    import math

    if delay is not None and not_before is not None:
        raise ControlError("give either delay or not_before, not both")
    if delay is not None:
        if (
            not isinstance(delay, int | float)
            or isinstance(delay, bool)
            or not math.isfinite(delay)
            or not 0 <= delay <= MAX_DELAY
        ):
            raise ControlError(
                f"delay must be seconds from 0 to {MAX_DELAY:.0f} (a year); got {delay!r:.80}"
            )
        return wall + float(delay) if delay > 0 else None
    if not_before is None:
        return None
    if isinstance(not_before, str):
        try:
            parsed = datetime.datetime.fromisoformat(not_before)
        except ValueError:
            raise ControlError(
                f"not_before must be an ISO 8601 time such as 2026-12-07T09:30:00+00:00 "
                f"(without a zone: local time) or a Unix time; got {not_before!r:.80}"
            ) from None
        at = parsed.timestamp()  # a naive time is taken as local time
    elif isinstance(not_before, int | float) and not isinstance(not_before, bool):
        at = float(not_before)
    else:
        raise ControlError(
            f"not_before must be an ISO 8601 time or a Unix time; got {not_before!r:.80}"
        )
    if not math.isfinite(at) or at - wall > MAX_DELAY:
        raise ControlError(
            f"not_before {not_before!r:.80} is more than a year ahead; give a nearer time"
        )
    return at if at > wall else None


# --- end ordering ---


def _now() -> float:
    try:
        return trio.current_time()
    except RuntimeError:  # outside trio (a test of the queue alone)
        return 0.0
