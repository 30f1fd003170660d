"""Pools that scale with the work: the hub service that applies :func:`~supervisor.decide`.

Every ``tick`` seconds, for each running pool whose spec declares ``autoscale``, it reads
what the work service sees (items of the pool's type waiting, the pool's idle members),
the pool's size and the hub's room under ``max_agents``, asks the pool's
:class:`~supervisor.PoolScaler` (the pure decision plus its two remembered times), and
resizes the pool when told to, publishing a ``scaled`` event with the reason. With no
autoscaling pool in the tree it waits for one to start and costs nothing.

Shrinking stops idle members only (:func:`~supervisor._scale.retirees`): the work service
first takes them out of dispatch, so none gets an item between the decision and its
stop, then each is deleted from the pool (the next growth reuses its number). A member
that holds an item is never stopped to shrink; a pool above ``max`` comes down as its
members become idle.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Literal

import attrs
import trio

from ._errors import ConfigError, HubvisorError
from ._events import Event
from ._scale import PoolScaler, retirees
from ._spec import PoolSpec

if TYPE_CHECKING:
    from ._hub import Hub
    from ._runtime import Supervisor

__all__ = ["AutoscaleService", "PoolScaled"]

_log = logging.getLogger("hubvisor")


@attrs.frozen(kw_only=True)
class PoolScaled(Event):
    """An autoscaling pool was resized (``child_id``: the pool's name)."""

    action: Literal["grow", "shrink"]
    size: int
    target: int
    reason: str
    kind: str = attrs.field(init=False, default="scaled")


@attrs.define
class _Pool:
    scaler: PoolScaler
    last: str = ""  # the last decision's reason (for status)
    last_at: float | None = None


class AutoscaleService:
    """The hub service that resizes autoscaling pools (the hub starts one by itself).

    Args:
        tick: seconds between two looks at the pools.
    """

    name = "autoscale"

    def __init__(self, *, tick: float = 0.5) -> None:
        if not isinstance(tick, int | float) or not 0 < tick < math.inf:
            raise ConfigError(f"AutoscaleService(tick=...) must be seconds > 0 (got {tick!r})")
        self.tick = float(tick)
        self.pools: dict[str, _Pool] = {}
        """Per pool path: its scaler and the last decision's reason."""

    def status(self) -> dict[str, dict[str, Any]]:
        """What ``hubvisor status`` shows: each autoscaling pool's bounds and last word."""
        return {
            path: {
                "min": p.scaler.policy.min,
                "max": p.scaler.policy.max,
                "last": p.last,
                "last_change": p.scaler.last_change,
            }
            for path, p in self.pools.items()
        }

    async def run(self, hub: Hub, *, task_status: trio.TaskStatus[None]) -> None:
        """Look at the pools every ``tick`` while any autoscales; else wait for one."""
        started = hub.bus.subscribe(kinds=("supervisor_started",))
        task_status.started()
        try:
            while True:
                pools = [
                    s
                    for s in hub.supervisors()
                    if isinstance(s.spec, PoolSpec) and s.spec.autoscale is not None
                ]
                if not pools:
                    self.pools.clear()
                    await started.receive()  # a pool may start later (start_child)
                    continue
                for sup in pools:
                    await self._look(hub, sup)
                live = {s.path for s in pools}
                for path in [p for p in self.pools if p not in live]:
                    del self.pools[path]
                await trio.sleep(self.tick)
        finally:
            started.close()

    async def _look(self, hub: Hub, sup: Supervisor) -> None:
        spec = sup.spec
        assert isinstance(spec, PoolSpec) and spec.autoscale is not None
        pool = self.pools.get(sup.path)
        if pool is None or pool.scaler.policy != spec.autoscale:
            pool = self.pools[sup.path] = _Pool(PoolScaler(spec.autoscale))
        members = [c.id for c in sup.which_children()]
        limit = hub.max_agents
        room = None if limit is None else limit - hub.count_children()["workers"]
        now = trio.current_time()
        decision = pool.scaler.decide(
            current=len(members),
            waiting=hub.work.waiting(spec.agent_type, spec.labels),
            idle_agents=hub.work.idle_among(spec.agent_type, members),
            now=now,
            max_agents_room=room,
        )
        if decision.action == "stay" or decision.target == len(members):
            return
        if decision.action == "shrink":
            target = await self._retire(hub, sup, members, len(members) - decision.target)
            if target == len(members):
                return  # its idle members were given work meanwhile
        else:
            target = decision.target
            try:
                await hub.resize(sup.path, target)
            except HubvisorError as exc:  # the pool is stopping, max_agents moved...
                _log.warning("autoscale %s: %s: %s", sup.path, decision.reason, exc)
                return
        pool.scaler.changed(trio.current_time())
        pool.last, pool.last_at = decision.reason, now
        _log.info("autoscale %s: %s", sup.path, decision.reason)
        hub.bus.publish(
            PoolScaled(
                at=now,
                supervisor=sup.path,
                child_id=spec.name,
                action=decision.action,
                size=len(members),
                target=target,
                reason=decision.reason,
            )
        )

    async def _retire(self, hub: Hub, sup: Supervisor, members: list[str], count: int) -> int:
        """Stop ``count`` idle members of the pool (fewer if fewer are idle); the size
        the pool has after."""
        assert isinstance(sup.spec, PoolSpec)
        idle = hub.work.idle_members(sup.spec.agent_type, members)
        claimed = hub.work.retire(retirees(members, idle, count))
        gone = 0

        async def delete(member: str) -> None:
            nonlocal gone
            try:
                await sup.delete_child(member)
                gone += 1
            except HubvisorError as exc:  # the pool is stopping, the member went...
                _log.warning("autoscale %s: could not retire %s: %s", sup.path, member, exc)
                hub.work.unretire(member)

        async with trio.open_nursery() as nursery:
            for member in claimed:
                nursery.start_soon(delete, member)
        return len(members) - gone
