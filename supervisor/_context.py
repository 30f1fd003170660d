"""What every supervisor of one hub shares, private to the runtime.

:class:`RuntimeContext` holds the hub's process backend, event bus, jitter source,
agent count, live process actors, output taps and agent-message subscribers; the
supervisors and process actors change it through its methods. Services never touch it:
they go through the hub and its :class:`~supervisor._port.AgentPort` (``hub.agents``).
:class:`StallMeter` measures how long the hub's own loop did not run. The records the
runtime hands out (:class:`AgentMessage`, :class:`OutputLine`) live here too, so this
module imports no actor.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Protocol

import attrs
import trio

from ._errors import MaxAgentsExceeded
from ._events import EventBus
from ._notify import NotifyMessage
from ._process import OSProcessBackend, ProcessBackend, ProcessHandle
from ._spec import ChildSpec

__all__ = ["AgentMessage", "LiveActor", "OutputLine", "RuntimeContext", "StallMeter"]

_STALL_TICK = 0.25  # seconds between two looks of the stall meter


@attrs.frozen
class AgentMessage:
    """A protocol message from an agent that is not the process actor's own (READY,
    HEARTBEAT, STATUS and a wrong HELLO version are): the work protocol's HELLO,
    PROGRESS, RESULT, FAIL, HANDBACK, SUBMIT. Subscribers of ``hub.agents`` receive
    them in the order the agent sent them."""

    agent_id: str
    agent_type: str | None
    supervisor: str
    pid: int
    incarnation: int
    kind: str
    value: str | None


@attrs.frozen
class OutputLine:
    """One line a child wrote, for output taps (``hubvisor logs -f``).

    Attributes:
        at: wall-clock time (``time.time()``) when the hub read it.
        child_id: the child.
        supervisor: its supervisor's path.
        stream: ``"stdout"`` or ``"stderr"``.
        line: the text, without the newline (cut lines end with ``…``).
    """

    at: float
    child_id: str
    supervisor: str
    stream: str
    line: str


class LiveActor(Protocol):
    """What the context knows of the actor of one live process
    (:class:`~supervisor._child.ProcessActor`)."""

    spec: ChildSpec
    path: str
    incarnation: int

    @property
    def pid(self) -> int: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def done(self) -> bool: ...

    def send_nowait(self, message: NotifyMessage, *, verify: bool = True) -> bool | None: ...

    async def send(
        self, message: NotifyMessage, timeout: float = ..., *, verify: bool = True
    ) -> bool: ...

    def condemn(self, why: str) -> bool: ...


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


def _env_dict(env: Mapping[str, str]) -> dict[str, str]:
    return dict(env)


@attrs.define(eq=False)
class RuntimeContext:
    """What every supervisor of one hub shares; its fields are private to the runtime.

    Args:
        backend: starts processes (real ones by default; ``supervisor.testing`` passes a
            simulated one).
        bus: where lifecycle events go.
        rng: the random source of backoff jitter (seed it for reproducible runs).
        max_agents: the most worker children the tree may hold at once (``None``: no limit).
        hub_id: put in every child's environment as ``HUBVISOR_HUB_ID``.
        env: extra environment variables for every child.

    :attr:`agents` counts the worker members of the serving supervisors: each supervisor
    counts its own direct workers while it serves, so a subtree is counted once.
    """

    _backend: ProcessBackend = attrs.field(factory=OSProcessBackend, alias="backend")
    _bus: EventBus = attrs.field(factory=EventBus, alias="bus")
    _rng: random.Random = attrs.field(factory=random.Random, alias="rng")
    _max_agents: int | None = attrs.field(default=None, alias="max_agents")
    _hub_id: str = attrs.field(default="hub", alias="hub_id")
    _env: dict[str, str] = attrs.field(factory=dict, converter=_env_dict, alias="env")
    _agents: int = attrs.field(default=0, init=False)
    _handles: dict[int, ProcessHandle] = attrs.field(factory=dict, init=False)
    _notify_rejected: int = attrs.field(default=0, init=False)
    _sinks: list[Callable[[AgentMessage], None]] = attrs.field(factory=list, init=False)
    _taps: list[Callable[[OutputLine], None]] = attrs.field(factory=list, init=False)
    _actors: dict[str, LiveActor] = attrs.field(factory=dict, init=False)
    _stalls: StallMeter = attrs.field(factory=StallMeter, init=False)

    # ----------------------------------------------------------------------------------
    # Read-only views

    @property
    def backend(self) -> ProcessBackend:
        """The process backend."""
        return self._backend

    @property
    def bus(self) -> EventBus:
        """Where lifecycle events go."""
        return self._bus

    @bus.setter
    def bus(self, bus: EventBus) -> None:
        # supervisor.testing puts a recording bus in before the hub serves.
        self._bus = bus

    @property
    def rng(self) -> random.Random:
        """The random source of backoff jitter."""
        return self._rng

    @property
    def max_agents(self) -> int | None:
        """The most worker children the tree may hold at once (``None``: no limit)."""
        return self._max_agents

    @property
    def hub_id(self) -> str:
        """The hub's id (``HUBVISOR_HUB_ID`` of every child)."""
        return self._hub_id

    @property
    def agents(self) -> int:
        """Worker children counted now (see the class docstring)."""
        return self._agents

    @property
    def notify_rejected(self) -> int:
        """Notify messages from agents the hub rejected."""
        return self._notify_rejected

    @property
    def stalls(self) -> StallMeter:
        """How long the hub's loop did not run (heartbeat watchdogs discount it)."""
        return self._stalls

    @property
    def env(self) -> Mapping[str, str]:
        """Extra environment variables for every child (add with :meth:`add_env`)."""
        return MappingProxyType(self._env)

    # ----------------------------------------------------------------------------------
    # The agent count

    def check_agents(self, n: int, what: str) -> None:
        """Raise :class:`MaxAgentsExceeded` if ``n`` more workers would pass the limit."""
        if self._max_agents is not None and self._agents + n > self._max_agents:
            raise MaxAgentsExceeded(
                f"{what} would make {self._agents + n} agents, more than max_agents="
                f"{self._max_agents}; stop some agents or raise max_agents"
            )

    def claim_agents(self, n: int, what: str) -> None:
        """Count ``n`` more worker children, or raise :class:`MaxAgentsExceeded`."""
        self.check_agents(n, what)
        self._agents += n

    def count_agents(self, n: int) -> None:
        """Count ``n`` more (or, negative, fewer) worker children, unchecked."""
        self._agents += n

    # ----------------------------------------------------------------------------------
    # Live processes and what they send

    def attach(self, actor: LiveActor, handle: ProcessHandle) -> None:
        """A process actor was created: it is the live one of its child id."""
        self._handles[handle.pid] = handle
        self._actors[actor.spec.id] = actor

    def detach(self, actor: LiveActor, handle: ProcessHandle) -> None:
        """A process actor's process has ended."""
        self._handles.pop(handle.pid, None)
        if self._actors.get(actor.spec.id) is actor:
            del self._actors[actor.spec.id]

    def actor(self, agent_id: str) -> LiveActor | None:
        """The live actor of ``agent_id``, if any."""
        return self._actors.get(agent_id)

    def live_actors(self) -> list[LiveActor]:
        """Every live actor, in start order."""
        return list(self._actors.values())

    def signal_all(self, sig: signal.Signals) -> None:
        """Signal the process group of every running child."""
        for handle in list(self._handles.values()):
            handle.signal_group(sig)

    @property
    def routed(self) -> bool:
        """Whether anybody receives agent messages (else there is no need to build one)."""
        return bool(self._sinks)

    def route(self, message: AgentMessage) -> None:
        """Hand an agent's message to every subscriber."""
        for sink in list(self._sinks):
            sink(message)

    def subscribe(self, sink: Callable[[AgentMessage], None]) -> None:
        """Call ``sink`` with every agent message from now on (once, however often
        subscribed)."""
        if sink not in self._sinks:
            self._sinks.append(sink)

    def unsubscribe(self, sink: Callable[[AgentMessage], None]) -> None:
        """Stop calling ``sink`` (a sink not subscribed is ignored)."""
        if sink in self._sinks:
            self._sinks.remove(sink)

    def reject_notify(self) -> None:
        """Count a notify message the hub rejected."""
        self._notify_rejected += 1

    def add_tap(self, tap: Callable[[OutputLine], None]) -> None:
        """Call ``tap`` with every output line of every child."""
        self._taps.append(tap)

    def remove_tap(self, tap: Callable[[OutputLine], None]) -> None:
        """Stop calling ``tap``."""
        self._taps.remove(tap)

    @property
    def tapped(self) -> bool:
        """Whether any tap receives output lines."""
        return bool(self._taps)

    def tap(self, line: OutputLine) -> None:
        """Hand an output line to every tap."""
        for tap in self._taps:
            tap(line)

    def add_env(self, env: Mapping[str, str], *, replace: bool = True) -> None:
        """Add variables to the environment of every child started from now on;
        ``replace=False`` keeps a variable already set."""
        for key, value in env.items():
            if replace or key not in self._env:
                self._env[key] = value
