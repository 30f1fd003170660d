"""Autoscaling of a pool from its queue: the policy and the pure decision.

:func:`decide` looks at one pool (its size, the items of its type waiting, its idle
members, when it last changed) and says grow, shrink or stay, with the size to go to
and why. It reads no clock and keeps no state: the caller passes ``now`` and what it
knows, and applies the decision (``hub.resize(pool, decision.target)``), so every rule
can be property-tested without a hub.

The rules, in order:

1. Within ``cooldown`` seconds of the last change: stay (no flapping).
2. Below ``min`` (the pool was resized by hand, or just declared): grow to ``min``;
   above ``max``: shrink to ``max``.
3. Items wait and no member is idle: grow by one agent per ``target_waiting`` waiting
   items (rounded up), up to ``max`` and the hub's room (``max_agents``).
4. Nothing waits and the pool has had idle members for ``scale_down_after`` seconds:
   retire the idle members, down to ``min``.
5. Otherwise stay.

:func:`retirees` says which members a shrink stops: idle ones only, never one that holds
an item (a shrink that finds fewer idle members than it wanted stops fewer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import attrs

from ._errors import ConfigError

__all__ = ["Autoscale", "Decision", "PoolScaler", "decide"]

_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _count(name: str, *, minimum: int, example: str) -> _Validator:
    def check(inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(
                f"Autoscale.{name} must be an int >= {minimum} (got {value!r}); "
                f"e.g. Autoscale({example})"
            )

    return check


def _seconds(name: str, *, positive: bool, example: str) -> _Validator:
    def check(inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value < 0 or (positive and value == 0):
            bound = "> 0" if positive else ">= 0"
            raise ConfigError(
                f"Autoscale.{name} must be a finite number {bound} (got {value!r}); "
                f"e.g. Autoscale({example})"
            )

    return check


@attrs.frozen(kw_only=True)
class Autoscale:
    """How a pool follows its queue (see :func:`decide` for the rules).

    Args:
        min: the fewest members; 0 spawns agents only when work arrives.
        max: the most members (the hub's ``max_agents`` may allow fewer).
        target_waiting: waiting items per new agent: with 1 every waiting item gets an
            agent, with 5 one agent is added per 5 waiting items.
        scale_down_after: seconds the pool must have had idle members and nothing
            waiting before they are retired.
        cooldown: seconds after a change during which the size stays as it is.

    Raises:
        ConfigError: a field out of range (naming it, the value and an example), or
            ``min`` above ``max``.

    Example::

        Autoscale(min=0, max=8, target_waiting=2, scale_down_after=60, cooldown=10)
    """

    min: int = attrs.field(default=0, validator=_count("min", minimum=0, example="min=0, max=8"))
    max: int = attrs.field(validator=_count("max", minimum=1, example="min=0, max=8"))
    target_waiting: float = attrs.field(
        default=1.0,
        validator=_seconds("target_waiting", positive=True, example="max=8, target_waiting=2"),
    )
    scale_down_after: float = attrs.field(
        default=60.0,
        validator=_seconds(
            "scale_down_after", positive=False, example="max=8, scale_down_after=60"
        ),
    )
    cooldown: float = attrs.field(
        default=10.0,
        validator=_seconds("cooldown", positive=False, example="max=8, cooldown=10"),
    )

    def __attrs_post_init__(self) -> None:
        if self.min > self.max:
            raise ConfigError(
                f"Autoscale: min {self.min} is larger than max {self.max}; lower min or raise max"
            )


@attrs.frozen
class Decision:
    """What :func:`decide` says: the action, the pool size to go to, and why.

    Attributes:
        action: ``"grow"``, ``"shrink"`` or ``"stay"``.
        target: the size to resize the pool to (the current size when staying).
        reason: one human sentence, e.g. ``"7 items wait and no member is idle: grow
            by 4 (1 per 2 waiting)"``, for events, logs and ``status``.
    """

    action: Literal["grow", "shrink", "stay"]
    target: int
    reason: str


def decide(
    policy: Autoscale,
    *,
    current: int,
    waiting: int,
    idle_agents: int,
    idle_since: float | None,
    last_change: float | None,
    now: float,
    max_agents_room: int | None,
) -> Decision:
    """Whether a pool grows, shrinks or stays, and to what size.

    Args:
        policy: the pool's :class:`Autoscale`.
        current: its size now (members, whatever their state).
        waiting: items of its agent type queued for an agent.
        idle_agents: members that are running and hold no item.
        idle_since: since when the pool has had idle members and nothing waiting,
            without a break (``None``: it has not; an item waiting or no idle member
            resets it).
        last_change: when the pool was last resized (by this or by hand; ``None``: never).
        now: the current time, on the same clock as the times above.
        max_agents_room: how many more agents the hub may start (``max_agents`` minus
            the agents it runs; ``None``: no limit).

    Returns:
        The :class:`Decision`; ``target`` never leaves ``[policy.min, policy.max]`` by a
        change, never grows past the room, and equals ``current`` within the cooldown.

    Raises:
        ConfigError: a count below 0, or more idle members than members.
    """
    _check_counts(current, waiting, idle_agents, max_agents_room)
    room = math.inf if max_agents_room is None else max(0, max_agents_room)
    ceiling = int(min(policy.max, current + room))  # the largest size a grow may reach

    def stay(reason: str) -> Decision:
        return Decision("stay", current, reason)

    if last_change is not None and now - last_change < policy.cooldown:
        return stay(
            f"cooling down: changed {now - last_change:.3g}s ago, cooldown {policy.cooldown:g}s"
        )
    if current < policy.min:
        if ceiling <= current:
            return stay(f"below min {policy.min} but the hub has no room (max_agents)")
        target = min(policy.min, ceiling)
        return Decision(
            "grow", target, f"{current} members, below min {policy.min}: grow to {target}"
        )
    if current > policy.max:
        return Decision(
            "shrink", policy.max, f"{current} members, above max {policy.max}: shrink to max"
        )
    if waiting > 0 and idle_agents == 0:
        return _grow(policy, current, waiting, ceiling)
    if waiting == 0 and idle_agents > 0 and idle_since is not None:
        idle_for = now - idle_since
        if idle_for < policy.scale_down_after:
            return stay(
                f"{idle_agents} idle for {idle_for:.3g}s, "
                f"retired after {policy.scale_down_after:g}s"
            )
        target = max(policy.min, current - idle_agents)
        if target == current:
            return stay(f"{idle_agents} idle but the pool is at min {policy.min}")
        return Decision(
            "shrink",
            target,
            f"{idle_agents} member{'s' if idle_agents != 1 else ''} idle for {idle_for:.3g}s "
            f"with nothing waiting: shrink to {target}",
        )
    if waiting > 0:
        return stay(f"{waiting} waiting, {idle_agents} idle member(s) will take them")
    return stay("nothing waiting, no member idle")


def _grow(policy: Autoscale, current: int, waiting: int, ceiling: int) -> Decision:
    """Items wait and no member is idle: grow by one per ``target_waiting`` items, up to
    ``ceiling`` (the policy's max or the hub's room)."""
    wanted = current + math.ceil(waiting / policy.target_waiting)
    why = f"{waiting} item{'s' if waiting != 1 else ''} waiting and no member idle"
    if ceiling <= current:
        limit = f"max {policy.max}" if current >= policy.max else "the hub's max_agents"
        return Decision("stay", current, f"{why}, but the pool is at {limit}")
    target = min(wanted, ceiling)
    capped = "" if target == wanted else f" (capped from {wanted})"
    per = f"1 per {policy.target_waiting:g} waiting"
    return Decision("grow", target, f"{why}: grow to {target}{capped}, {per}")


def _check_counts(
    current: int, waiting: int, idle_agents: int, max_agents_room: int | None
) -> None:
    """The checks of :func:`decide`'s counts (see its ``Raises``)."""
    for name, value in (("current", current), ("waiting", waiting), ("idle_agents", idle_agents)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"decide({name}=...) must be an int >= 0 (got {value!r})")
    if idle_agents > current:
        raise ConfigError(
            f"decide(): idle_agents {idle_agents} is more than the pool's {current} members; "
            "count only the pool's running members that hold no item"
        )
    if max_agents_room is not None and (
        not isinstance(max_agents_room, int) or isinstance(max_agents_room, bool)
    ):
        raise ConfigError(
            f"decide(max_agents_room=...) must be an int or None (got {max_agents_room!r})"
        )


def retirees(members: Sequence[str], idle: Iterable[str], count: int) -> list[str]:
    """The members a shrink by ``count`` stops: idle ones only, the last started first.

    Args:
        members: the pool's members in start order (``agent-1``, ``agent-2``...).
        idle: the members that are idle now (running, holding no item).
        count: how many members the decision wants gone.

    Returns:
        At most ``count`` members, each in ``members`` and in ``idle``, the
        highest-numbered first (the long-lived low numbers stay); fewer when fewer are
        idle: a busy member is never stopped to shrink a pool.
    """
    idle_now = set(idle)
    return [m for m in reversed(members) if m in idle_now][: max(0, count)]


@attrs.define
class PoolScaler:
    """The two times :func:`decide` needs, kept for one pool between calls.

    A service that autoscales keeps one per pool and, at each tick, calls
    :meth:`decide` with what it sees now, applies the decision, then calls
    :meth:`changed` once the pool was resized (and on a resize by hand, too). It reads no
    clock either: ``now`` comes from the caller (``trio.current_time()``).

    Example::

        scaler = PoolScaler(Autoscale(min=0, max=8))
        d = scaler.decide(current=2, waiting=5, idle_agents=0, now=trio.current_time(),
                          max_agents_room=hub_room)
        if d.action != "stay":
            await hub.resize("worker", d.target)
            scaler.changed(trio.current_time())

    Attributes:
        policy: the pool's :class:`Autoscale`.
        idle_since: since when the pool has had idle members and nothing waiting.
        last_change: when the pool was last resized.
    """

    policy: Autoscale
    idle_since: float | None = None
    last_change: float | None = None

    def observe(self, *, waiting: int, idle_agents: int, now: float) -> None:
        """Note what the pool looks like at ``now``: the idle period starts with the
        first look at idle members and nothing waiting, and ends with any other."""
        if waiting == 0 and idle_agents > 0:
            if self.idle_since is None:
                self.idle_since = now
        else:
            self.idle_since = None

    def decide(
        self,
        *,
        current: int,
        waiting: int,
        idle_agents: int,
        now: float,
        max_agents_room: int | None,
    ) -> Decision:
        """:meth:`observe`, then :func:`decide` with the kept times."""
        self.observe(waiting=waiting, idle_agents=idle_agents, now=now)
        return decide(
            self.policy,
            current=current,
            waiting=waiting,
            idle_agents=idle_agents,
            idle_since=self.idle_since,
            last_change=self.last_change,
            now=now,
            max_agents_room=max_agents_room,
        )

    def changed(self, now: float) -> None:
        """The pool was resized at ``now``: the cooldown starts, and the idle period
        starts over (the members it counted may be gone)."""
        self.last_change = now
        self.idle_since = None
