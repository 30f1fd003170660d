"""Crash schedules: what happens to which simulated process, at which virtual time."""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Iterable
from typing import Any, TypeAlias, cast

import attrs

from ._errors import InvalidSchedule

__all__ = ["Crash", "Exit", "Hang", "How", "Kill", "Schedule", "Submit"]


@attrs.frozen
class Exit:
    """The process exits by itself with ``code`` (0 is a normal exit)."""

    code: int = 1


@attrs.frozen
class Kill:
    """The process is killed by ``signal`` that the supervisor did not send."""

    signal: int = int(signal.SIGKILL)


@attrs.frozen
class Hang:
    """The process stops heartbeating but keeps running (the watchdog must catch it)."""


How: TypeAlias = Exit | Kill | Hang


def _check_at(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidSchedule(
            f"Crash.at must be a finite number of virtual seconds >= 0 after the tree "
            f"started (got {value!r}); e.g. Crash(at=1.5, child_id='worker-1')"
        )


def _check_how(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, Exit | Kill | Hang):
        raise InvalidSchedule(
            f"Crash.how must be Exit(code), Kill(signal) or Hang() (got {value!r}); "
            "e.g. Crash(at=1.0, child_id='a', how=Exit(1))"
        )


@attrs.frozen
class Crash:
    """At ``at`` virtual seconds after the tree started, the newest process of ``child_id``
    ends as ``how`` says.

    A crash that finds no live process of that child (it is backing off, stopped or was
    removed) does nothing; the trace records it as not applied.

    Example::

        Crash(at=2.0, child_id="planner", how=Kill(signal.SIGSEGV))
    """

    at: float = attrs.field(validator=_check_at)
    child_id: str
    how: How = attrs.field(default=Exit(1), validator=_check_how)


def _check_submit_at(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidSchedule(
            f"Submit.at must be a finite number of virtual seconds >= 0 after the tree "
            f"started (got {value!r}); e.g. Submit(at=1.0, agent_type='worker')"
        )


def _check_agent_type(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidSchedule(
            f"Submit.agent_type must be a non-empty agent type (got {value!r}); "
            "e.g. Submit(at=1.0, agent_type='worker')"
        )


def _check_payload(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise InvalidSchedule(
            f"Submit.payload must be JSON ({exc}); got {value!r:.80}, e.g. payload={{'n': 1}}"
        ) from None


def _check_max_deliveries(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise InvalidSchedule(
            f"Submit.max_deliveries must be an int >= 1 or None (got {value!r}); "
            "e.g. Submit(at=1.0, agent_type='worker', max_deliveries=2)"
        )


def _check_priority(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidSchedule(f"Submit.priority must be an int (got {value!r})")


def _check_delay(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (
        not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1e6
    ):
        raise InvalidSchedule(f"Submit.delay must be seconds >= 0 or None (got {value!r})")


# --- dependencies and keys (issue 21) ---

MAX_KEY = 200  # supervisor.work.MAX_KEY
MAX_AFTER = 100  # supervisor.work.MAX_AFTER


def _check_key(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not 0 < len(value) <= MAX_KEY):
        raise InvalidSchedule(
            f"Submit.key must be a non-empty string of at most {MAX_KEY} characters or None "
            f"(got {value!r:.80}); e.g. Submit(at=1.0, agent_type='worker', key='task-1')"
        )


def _to_after(value: object) -> tuple[str, ...]:
    example = "e.g. Submit(at=2.0, agent_type='worker', after=('worker:task-1',))"
    if isinstance(value, str) or value is None:
        raise InvalidSchedule(
            f"Submit.after must be a sequence of 'TYPE:KEY' names (got {value!r}); {example}"
        )
    try:
        names = tuple(cast(Iterable[object], value))
    except TypeError:
        raise InvalidSchedule(
            f"Submit.after must be a sequence of 'TYPE:KEY' names (got {value!r}); {example}"
        ) from None
    for name in names:
        agent_type, colon, key = name.partition(":") if isinstance(name, str) else ("", "", "")
        if not (colon and agent_type and key):
            raise InvalidSchedule(
                f"Submit.after names {name!r}; name an earlier submit of the schedule as "
                f"'TYPE:KEY' (its agent_type and key); {example}"
            )
    if len(names) > MAX_AFTER:
        raise InvalidSchedule(
            f"Submit.after names {len(names)} items; at most {MAX_AFTER} (the work service's "
            "MAX_AFTER): wait for some of them through an item that waits for the rest"
        )
    return names  # type: ignore[return-value]  # each checked a 'TYPE:KEY' str above


# --- end dependencies and keys ---


def _check_time_limit(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (
        not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf
    ):
        raise InvalidSchedule(
            f"Submit.time_limit must be seconds > 0 or None (got {value!r}); "
            "e.g. Submit(at=1.0, agent_type='worker', payload={'seconds': 5}, time_limit=2)"
        )


@attrs.frozen(eq=False)
class Submit:
    """At ``at`` virtual seconds after the tree started, submit an item of work for agents
    of ``agent_type`` (``hub.work.submit(agent_type, payload, max_deliveries=...)``).

    ``max_deliveries=None`` takes the work service's default (3). The payload of an
    item for a :class:`~supervisor.testing.SimWork` agent can steer its work (how long it
    takes, a failure...): see :class:`~supervisor.testing.SimWork`.

    ``key`` and ``after`` (issue 21) are the dependencies and idempotent keys of
    docs/work-controls.md: ``after`` names earlier submits of the schedule by
    ``'TYPE:KEY'``; the run passes both to ``hub.work.submit`` and records the id answered
    (:class:`~supervisor.testing.SubmitApplied`) or the refusal.

    Example::

        Submit(at=1.0, agent_type="worker", payload={"n": 1, "seconds": 2.5})
        Submit(at=1.0, agent_type="worker", key="a")
        Submit(at=2.0, agent_type="review", after=("worker:a",))
    """

    at: float = attrs.field(validator=_check_submit_at)
    agent_type: str = attrs.field(validator=_check_agent_type)
    payload: Any = attrs.field(default=None, validator=_check_payload)
    max_deliveries: int | None = attrs.field(default=None, validator=_check_max_deliveries)
    # --- ordering (issue 21) ---
    priority: int = attrs.field(default=0, validator=_check_priority)
    """``submit(priority=...)``: higher first among the ready items of the type."""
    delay: float | None = attrs.field(default=None, validator=_check_delay)
    """``submit(delay=...)``: virtual seconds before the item may be handed out."""
    # --- end ordering ---
    # --- dependencies and keys (issue 21) ---
    key: str | None = attrs.field(default=None, validator=_check_key, kw_only=True)
    """``submit(key=...)``: a second submit of the type and key, while the first item is
    kept, answers that item and creates none."""
    after: tuple[str, ...] = attrs.field(default=(), converter=_to_after, kw_only=True)
    """``submit(after=...)``: ``'TYPE:KEY'`` names of earlier submits of the schedule (with
    that ``agent_type`` and ``key``) the item waits for."""
    # --- end dependencies and keys ---
    time_limit: float | None = attrs.field(default=None, validator=_check_time_limit, kw_only=True)
    """``submit(time_limit=...)``: virtual seconds each attempt may run (issue 21); a
    :class:`~supervisor.testing.SimWork` agent whose ``seconds`` exceed it runs too long."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Submit):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[Any, ...]:
        payload = json.dumps(self.payload, sort_keys=True)
        return (
            self.at,
            self.agent_type,
            payload,
            self.max_deliveries,
            self.priority,
            self.delay,
            self.key,
            self.after,
            self.time_limit,
        )


def _to_work(value: Iterable[Submit]) -> tuple[Submit, ...]:
    try:
        work = tuple(value)
    except TypeError:
        work = (value,)  # type: ignore[assignment]  # reported just below
    for w in work:
        if not isinstance(w, Submit):
            raise InvalidSchedule(
                f"Schedule.work must hold Submit objects (got {w!r}); "
                "e.g. Schedule(work=[Submit(at=1.0, agent_type='worker')])"
            )
    ordered = tuple(sorted(work, key=lambda w: w.at))
    _check_names(ordered)
    return ordered


def _check_names(work: tuple[Submit, ...]) -> None:
    """Each ``after`` name must be the ``TYPE:KEY`` of an earlier submit (in time order,
    stable for equal times), so the run applies it after the item it names."""
    named: set[str] = set()
    for w in work:
        for name in w.after:
            if name not in named:
                raise InvalidSchedule(
                    f"Submit(at={w.at:g}, agent_type={w.agent_type!r}).after names {name!r}, "
                    "which no earlier submit of the schedule has as its agent_type:key; "
                    f"submit it first, e.g. Submit(at=0.0, agent_type={name.partition(':')[0]!r}, "
                    f"key={name.partition(':')[2]!r})"
                )
        if w.key is not None:
            named.add(f"{w.agent_type}:{w.key}")


def _to_crashes(value: Iterable[Crash]) -> tuple[Crash, ...]:
    try:
        crashes = tuple(value)
    except TypeError:
        crashes = (value,)  # type: ignore[assignment]  # reported just below
    for c in crashes:
        if not isinstance(c, Crash):
            raise InvalidSchedule(
                f"Schedule.crashes must hold Crash objects (got {c!r}); "
                "e.g. Schedule([Crash(at=1.0, child_id='a')])"
            )
    # Stable: crashes at the same time apply in the order given.
    return tuple(sorted(crashes, key=lambda c: c.at))


def _to_ids(value: Iterable[str]) -> frozenset[str]:
    try:
        ids = frozenset(value) if not isinstance(value, str) else None
    except TypeError:
        ids = None
    if ids is None or not all(isinstance(i, str) for i in ids):
        raise InvalidSchedule(
            f"Schedule.stubborn must be a set of child ids (got {value!r}); "
            "e.g. stubborn={'worker-1'}"
        )
    return ids


@attrs.frozen
class Schedule:
    """A whole scenario for :func:`~supervisor.testing.run_schedule`.

    Args:
        crashes: what happens when; kept sorted by time (stable for equal times).
        stubborn: ids of children whose processes ignore their stop signal, so that only
            SIGKILL after the ``shutdown`` timeout ends them.
        work: items to submit when (:class:`Submit`); kept sorted by time (stable). With
            work, the children with an ``agent_type`` are simulated agents that take it
            (:class:`~supervisor.testing.SimWork`).
    """

    crashes: tuple[Crash, ...] = attrs.field(default=(), converter=_to_crashes)
    stubborn: frozenset[str] = attrs.field(default=frozenset(), converter=_to_ids)
    work: tuple[Submit, ...] = attrs.field(default=(), converter=_to_work, kw_only=True)

    @property
    def end(self) -> float:
        """The time of the last crash or submission (0 for an empty schedule)."""
        last = self.crashes[-1].at if self.crashes else 0.0
        return max(last, self.work[-1].at) if self.work else last
