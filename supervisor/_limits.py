"""Resource limits per child: memory and CPU of each agent's whole process group.

:class:`LimitsService` samples, every ``interval`` seconds, the process groups of the
children whose spec sets ``memory_limit`` or ``cpu_limit`` (one pass over ``/proc``, in a
worker thread), and asks the actor of a child over its limit to stop it gracefully
(``hub.agents.condemn``): its exit is then a failure whose reason says why ("over
memory limit: 1.2 GiB > 1 GiB"), in events, ``status``, logs and metrics, and its
supervisor's restart policy decides what follows. With no limit in the tree it samples
nothing and costs nothing.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import attrs
import trio

from ._errors import ConfigError
from ._events import Event
from ._proc import sample_groups

if TYPE_CHECKING:
    from ._hub import Hub
    from ._port import LiveAgent

__all__ = ["ChildOverLimit", "LimitsService"]

_log = logging.getLogger("hubvisor")

CPU_STRIKES = 2
"""Checks in a row a child must be over its CPU limit before it is stopped."""


@attrs.frozen(kw_only=True)
class ChildOverLimit(Event):
    """The child's process group went over a limit of its spec; it is being stopped.

    Attributes:
        limit: ``"memory"`` (bytes) or ``"cpu"`` (cores).
        used: what the group used; ``allowed``: the spec's limit.
        reason: the words its exit will carry.
    """

    pid: int
    limit: str
    used: float
    allowed: float
    reason: str
    kind: str = attrs.field(init=False, default="over_limit")


class LimitsService:
    """The hub service that enforces ``ChildSpec.memory_limit`` and ``cpu_limit``.

    Args:
        interval: seconds between two checks (1,000 agents cost about 15 ms of CPU per
            check; see docs/metrics.md).
    """

    name = "limits"

    def __init__(self, *, interval: float = 1.0) -> None:
        if not isinstance(interval, int | float) or not (0 < interval < math.inf):
            raise ConfigError(
                f"LimitsService(interval=...) must be a number of seconds > 0 (got {interval!r})"
            )
        self.interval = float(interval)
        self.checks = 0
        """How many checks sampled at least one group."""
        self.stopped = 0
        """How many children it stopped for a limit."""

    async def run(self, hub: Hub, *, task_status: trio.TaskStatus[None]) -> None:
        """Check the limited children every ``interval`` until cancelled; while none runs,
        wait for one to start (an idle hub does nothing)."""
        starting = hub.bus.subscribe(kinds=("starting",))
        task_status.started()
        last_cpu: dict[int, tuple[float, float]] = {}  # pgid -> (cpu seconds, when)
        strikes: dict[int, int] = {}
        with starting:
            while True:
                if not _watched(hub):
                    last_cpu.clear()
                    strikes.clear()
                    while not _limited(hub.agents.get((await starting.receive()).child_id)):
                        pass  # a child without limits started: nothing to watch yet
                    continue
                while True:  # the events meanwhile say nothing new: the scan does
                    try:
                        starting.receive_nowait()
                    except trio.WouldBlock:
                        break
                await trio.sleep(self.interval)
                await self._check(hub, last_cpu, strikes)

    async def _check(
        self,
        hub: Hub,
        last_cpu: dict[int, tuple[float, float]],
        strikes: dict[int, int],
    ) -> None:
        agents = _watched(hub)
        if agents:
            usage = await trio.to_thread.run_sync(sample_groups, [a.pid for a in agents])
            now = trio.current_time()
            self.checks += 1
            for agent in agents:
                used = usage.get(agent.pid)
                if used is None:
                    continue
                spec = agent.spec
                over: tuple[str, float, float, str] | None = None
                if spec.memory_limit is not None and used.resident_bytes > spec.memory_limit:
                    over = (
                        "memory",
                        used.resident_bytes,
                        spec.memory_limit,
                        f"over memory limit: {_size(used.resident_bytes)} > "
                        f"{_size(spec.memory_limit)}",
                    )
                if spec.cpu_limit is not None:
                    before = last_cpu.get(agent.pid)
                    last_cpu[agent.pid] = (used.cpu_seconds, now)
                    if before is not None and now > before[1]:
                        cores = (used.cpu_seconds - before[0]) / (now - before[1])
                        hits = strikes.get(agent.pid, 0) + 1 if cores > spec.cpu_limit else 0
                        strikes[agent.pid] = hits
                        if hits >= CPU_STRIKES and over is None:
                            over = (
                                "cpu",
                                cores,
                                spec.cpu_limit,
                                f"over CPU limit: {cores:.2f} cores > {spec.cpu_limit:g} "
                                f"for {hits} checks",
                            )
                if over is not None and hub.agents.condemn(spec.id, over[3], pid=agent.pid):
                    self.stopped += 1
                    kind, amount, allowed, reason = over
                    hub.bus.publish(
                        ChildOverLimit(
                            at=now,
                            supervisor=agent.supervisor,
                            child_id=spec.id,
                            pid=agent.pid,
                            limit=kind,
                            used=amount,
                            allowed=allowed,
                            reason=reason,
                        )
                    )
            live = {a.pid for a in agents}
            for table in (last_cpu, strikes):
                for pid in [p for p in table if p not in live]:
                    del table[pid]


def _watched(hub: Hub) -> list[LiveAgent]:
    """The running children (not being stopped) whose spec sets a limit."""
    return [a for a in hub.agents.running() if _limited(a)]


def _limited(agent: LiveAgent | None) -> bool:
    return agent is not None and (
        agent.spec.memory_limit is not None or agent.spec.cpu_limit is not None
    )


def _size(n: float) -> str:
    """Bytes in words: ``1.2 GiB``, ``300 MiB``, ``512 KiB``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} B"
