"""What every supervisor of one hub shares: the :class:`RuntimeContext`, and the
:class:`StallMeter` that measures how long the hub's own loop did not run."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import attrs
import trio

from ._errors import MaxAgentsExceeded
from ._events import EventBus
from ._process import OSProcessBackend, ProcessBackend, ProcessHandle

if TYPE_CHECKING:
    from ._child import AgentMessage, OutputLine, ProcessActor

__all__ = ["RuntimeContext", "StallMeter"]

_STALL_TICK = 0.25  # seconds between two looks of the stall meter


@attrs.define(eq=False)
class StallMeter:
    """How long this hub's event loop did not run (stopped, swapped out, blocked).

    One task per hub wakes every :data:`_STALL_TICK` seconds while some child is
    watched; any lateness of a wake-up is time the loop did not run. Watchdogs read
    :meth:`stalled` and extend a child's deadline by the stall since its last record, so
    the hub's own stall never counts against its agents. One task for the whole hub, not
    one per child: 1,000 heartbeating agents cost nothing more.
    """

    tick: float = _STALL_TICK
    total: float = 0.0
    """Seconds of stall measured so far (a stall in progress not included)."""
    watchers: int = 0
    """Watchdogs reading the meter; with none, it sleeps."""
    running: bool = False
    _last: float | None = None  # when the meter last ran (None: it is not measuring)
    _wake: trio.Event = attrs.field(factory=trio.Event)

    def stalled(self) -> float:
        """Seconds of stall so far, including one in progress (the ticker is overdue)."""
        if self._last is None:
            return self.total
        return self.total + max(0.0, trio.current_time() - self._last - self.tick)

    def watch(self) -> None:
        """A watchdog starts reading the meter."""
        self.watchers += 1
        self._wake.set()

    def unwatch(self) -> None:
        """A watchdog stops reading the meter."""
        self.watchers -= 1

    async def run(self) -> None:
        """Measure while anybody watches; run in one task per hub."""
        self.running = True
        try:
            while True:
                if self.watchers <= 0:
                    self._last = None
                    self._wake = trio.Event()
                    await self._wake.wait()
                self._last = trio.current_time()
                while self.watchers > 0:
                    await trio.sleep(self.tick)
                    now = trio.current_time()
                    self.total += max(0.0, now - self._last - self.tick)
                    self._last = now
        finally:
            self.total = self.stalled()
            self._last = None
            self.running = False


@attrs.define(eq=False)
class RuntimeContext:
    """What every supervisor of one hub shares.

    Args:
        backend: starts processes (real ones by default; ``supervisor.testing`` passes a
            simulated one).
        bus: where lifecycle events go.
        rng: the random source of backoff jitter (seed it for reproducible runs).
        max_agents: the most worker children the tree may hold at once (``None``: no limit).
        hub_id: put in every child's environment as ``HUBVISOR_HUB_ID``.
        env: extra environment variables for every child.

    ``agents`` counts the worker members of the serving supervisors: each supervisor
    counts its own direct workers while it serves, so a subtree is counted once.
    """

    backend: ProcessBackend = attrs.field(factory=OSProcessBackend)
    bus: EventBus = attrs.field(factory=EventBus)
    rng: random.Random = attrs.field(factory=random.Random)
    max_agents: int | None = None
    hub_id: str = "hub"
    env: Mapping[str, str] = attrs.field(factory=dict)
    agents: int = 0
    handles: dict[int, ProcessHandle] = attrs.field(factory=dict)
    notify_rejected: int = 0
    agent_sink: Callable[[AgentMessage], None] | None = None
    """Where agents' work-protocol messages go (the work service sets it)."""
    output_taps: list[Callable[[OutputLine], None]] = attrs.field(factory=list)
    """Called with every output line of every child (see :meth:`Hub.tap_output`)."""
    actors: dict[str, ProcessActor] = attrs.field(factory=dict)
    """The live process actor of each worker child, by id (to send it messages)."""
    stalls: StallMeter = attrs.field(factory=StallMeter)
    """How long the hub's loop did not run (heartbeat watchdogs discount it)."""

    def check_agents(self, n: int, what: str) -> None:
        """Raise :class:`MaxAgentsExceeded` if ``n`` more workers would pass the limit."""
        if self.max_agents is not None and self.agents + n > self.max_agents:
            raise MaxAgentsExceeded(
                f"{what} would make {self.agents + n} agents, more than max_agents="
                f"{self.max_agents}; stop some agents or raise max_agents"
            )

    def claim_agents(self, n: int, what: str) -> None:
        """Count ``n`` more worker children, or raise :class:`MaxAgentsExceeded`."""
        self.check_agents(n, what)
        self.agents += n
