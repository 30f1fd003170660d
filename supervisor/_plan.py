"""The restart decision as one pure function, OTP's ``do_restart`` without the doing.

When a child exits, its supervisor asks :func:`plan` what to do and then carries the
answer out: it never decides anything while it awaits. ``plan`` reads only its
arguments (the policies, the members as values, the restart history, the clock reading
and a random source for jitter) and returns a :class:`Plan`; property tests drive it
alone against a model of OTP's rules.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping, Sequence

import attrs

from strategies import BackoffPolicy, IntensityPolicy, RestartStrategy

from ._spec import RestartType

__all__ = ["MemberView", "Plan", "PlanKind", "cancelled_with", "plan"]


@attrs.frozen
class MemberView:
    """What the plan needs to know of one member of the supervisor.

    Attributes:
        id: the member's id.
        restart: its restart type.
        up: it runs, or is scheduled to start again; ``False`` for a member that is
            down on purpose (terminated, or a transient child that ended normally),
            which a sibling's restart leaves down.
    """

    id: str
    restart: RestartType
    up: bool = True


class PlanKind(enum.Enum):
    """The four answers to "a child exited"."""

    STAY_DOWN = "stay_down"
    """A transient child ended normally: it stays stopped, its spec is kept."""
    REMOVE = "remove"
    """A temporary child ended, however it ended: its spec is forgotten."""
    RESTART = "restart"
    """Stop ``stop``, forget ``remove``, then start ``restart`` after ``delay``."""
    ESCALATE = "escalate"
    """The supervisor gives up: it stops every child and reports ``reason`` upwards."""


@attrs.frozen
class Plan:
    """What a supervisor does about one exit.

    Attributes:
        kind: see :class:`PlanKind`.
        stop: the running siblings to stop first, in start order (the supervisor stops
            them in reverse start order).
        remove: temporary members whose specs are forgotten (the failed child itself
            for ``REMOVE``; temporary siblings of a group restart, which OTP never
            restarts).
        restart: the members to start again, in start order, the failed one included.
        delay: seconds to wait before starting them (the backoff).
        attempt: the failed child's consecutive-failure count after this exit.
        history: the restart times to keep for the next intensity decision.
        reason: for ``ESCALATE``, why, in words.
    """

    kind: PlanKind
    stop: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    delay: float = 0.0
    attempt: int = 0
    history: tuple[float, ...] = ()
    reason: str = ""


def plan(
    failed: str,
    *,
    normal: bool,
    reason: str,
    uptime: float,
    attempt: int,
    members: Sequence[MemberView],
    strategy: RestartStrategy,
    intensity: IntensityPolicy,
    backoff: BackoffPolicy,
    history: tuple[float, ...],
    now: float,
    rng: random.Random,
) -> Plan:
    """Decide what happens after child ``failed`` exited (``normal``: with code 0).

    Args:
        failed: the id of the child that exited; it must be in ``members``.
        normal: whether the exit was normal (a transient child stays down then).
        reason: the exit in words, kept in an escalation's reason.
        uptime: how long the child ran (a long run resets the backoff).
        attempt: the child's consecutive-failure count before this exit.
        members: every member of the supervisor, in start order.
        strategy, intensity, backoff: the supervisor's policies. A policy that raises
            or answers nonsense yields an ``ESCALATE`` plan naming the bug.
        history: restart times kept by the previous decision.
        now: the current time (trio's clock).
        rng: the random source of backoff jitter.
    """
    by_id = {m.id: m for m in members}
    me = by_id[failed]
    if me.restart is RestartType.TEMPORARY:
        return Plan(PlanKind.REMOVE, remove=(failed,), attempt=attempt, history=history)
    if me.restart is RestartType.TRANSIENT and normal:
        return Plan(PlanKind.STAY_DOWN, attempt=attempt, history=history)
    try:
        decision = intensity.record(history, now)
        if not decision.allowed:
            return Plan(PlanKind.ESCALATE, history=tuple(decision.history), reason=reason)
        attempt = 1 if backoff.resets_after(uptime) else attempt + 1
        delay = float(backoff.delay(attempt, rng))
        if not 0 <= delay < math.inf:  # also catches NaN
            raise ValueError(f"delay({attempt}) returned {delay!r}, not a finite number >= 0")
        ids = set(strategy.to_restart(failed, [m.id for m in members]))
        if failed not in ids:
            raise ValueError(
                f"to_restart({failed!r}, ...) returned {sorted(ids)!r} without the failed child"
            )
    except Exception as exc:
        # A user-written policy that raises or answers nonsense must not crash the hub:
        # the supervisor gives up in order, and its parent's policy decides.
        return Plan(
            PlanKind.ESCALATE,
            history=history,
            reason=f"{reason}; then its supervisor's policy failed: "
            f"{type(exc).__name__}: {exc} (fix the policy object)",
        )
    # Siblings down on purpose stay down; the failed child itself always comes back.
    group = [m for m in members if m.id in ids and (m.up or m.id == failed)]
    siblings = [m for m in group if m.id != failed]
    return Plan(
        PlanKind.RESTART,
        stop=tuple(m.id for m in siblings),
        # OTP: a temporary child is never restarted, not even for a sibling.
        remove=tuple(m.id for m in siblings if m.restart is RestartType.TEMPORARY),
        restart=tuple(m.id for m in group if m.restart is not RestartType.TEMPORARY or m is me),
        delay=delay,
        attempt=attempt,
        history=tuple(decision.history),
    )


def cancelled_with(target: str, pending: Mapping[str, int | None]) -> tuple[str, ...]:
    """The members whose scheduled restart is called off when ``target`` is terminated.

    ``pending`` maps each member waiting to restart to the token of the group restart
    it waits for. Terminating a member of a pending group restart leaves the rest of
    that group down until it is restarted on purpose (OTP's rest-for-one and
    one-for-all); members of other pending restarts are not affected.
    """
    token = pending.get(target)
    if token is None:
        return ()
    return tuple(i for i, t in pending.items() if t == token and i != target)
