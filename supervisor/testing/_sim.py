"""A simulated process backend: fake processes driven by the trio clock.

It plugs into the real runtime in place of :class:`~supervisor.OSProcessBackend`, so the
strategies, backoff, intensity and event code that run are the production ones. Under
``trio.testing.MockClock(autojump_threshold=0)`` minutes of backoff pass in
milliseconds and the same script gives the same trace.
"""

from __future__ import annotations

import math
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import attrs
import trio

from .._errors import SpawnError
from .._events import ExitStatus
from .._process import SpawnRequest

__all__ = ["SimBehaviour", "SimulatedNotify", "SimulatedProcess", "SimulatedProcessBackend"]


@attrs.frozen(kw_only=True)
class SimBehaviour:
    """What one simulated process does.

    Args:
        lifetime: seconds after spawn at which it ends by itself (``inf``: never).
        exit_code: its exit code when it ends by itself...
        exit_signal: ...or the signal that kills it then (overrides ``exit_code``).
        on_stop: what it does on its stop signal: ``"exit"`` (exit code 0 after
            ``stop_delay``), ``"die"`` (killed by the signal at once) or ``"ignore"``
            (only SIGKILL ends it).
        stop_delay: seconds it takes to exit after the stop signal with ``"exit"``.
        spawn_error: if set, spawning fails with this message (like a missing executable).
        ready_after: seconds after spawn at which it sends ``READY`` on its notify
            channel (``None``: never).
        heartbeat_interval: it sends ``HEARTBEAT`` every this many seconds after spawn
            (``None``: never).
        hang_at: seconds after spawn at which it stops sending anything while staying
            alive, like a hung agent (``None``: never hangs).
    """

    lifetime: float = math.inf
    exit_code: int = 1
    exit_signal: int | None = None
    on_stop: Literal["exit", "die", "ignore"] = "exit"
    stop_delay: float = 0.0
    spawn_error: str | None = None
    ready_after: float | None = None
    heartbeat_interval: float | None = None
    hang_at: float | None = None


@attrs.define(eq=False)
class SimulatedProcess:
    """A fake process: a :class:`~supervisor.ProcessHandle` that lives on the trio clock."""

    pid: int
    child_id: str
    behaviour: SimBehaviour
    spawned_at: float
    stdout: None = None
    stderr: None = None
    signals: list[int] = attrs.field(factory=list)
    _status: ExitStatus | None = None
    _pending: tuple[float, ExitStatus] | None = None
    _changed: trio.Event = attrs.field(factory=trio.Event)
    notify: SimulatedNotify | None = None

    def __attrs_post_init__(self) -> None:
        b = self.behaviour
        if math.isfinite(b.lifetime):
            status = (
                ExitStatus(signal=b.exit_signal)
                if b.exit_signal is not None
                else ExitStatus(code=b.exit_code)
            )
            self._pending = (self.spawned_at + b.lifetime, status)

    @property
    def status(self) -> ExitStatus | None:
        """How it ended, once it has."""
        return self._status

    def _schedule(self, at: float, status: ExitStatus) -> None:
        if self._pending is None or at < self._pending[0]:
            self._pending = (at, status)
            self._changed.set()

    def signal_group(self, sig: int) -> None:
        """Deliver ``sig``; SIGKILL always ends it at once."""
        if self._status is not None:
            return
        self.signals.append(sig)
        now = trio.current_time()
        if sig == signal.SIGKILL:
            self._schedule(now, ExitStatus(signal=signal.SIGKILL))
        elif self.behaviour.on_stop == "die":
            self._schedule(now, ExitStatus(signal=sig))
        elif self.behaviour.on_stop == "exit":
            self._schedule(now + self.behaviour.stop_delay, ExitStatus(code=0))

    def crash(self, code: int = 1, sig: int | None = None) -> None:
        """End it now, as if it crashed (``sig`` set: killed by that signal)."""
        if self._status is None:
            status = ExitStatus(signal=sig) if sig is not None else ExitStatus(code=code)
            self._pending = (trio.current_time(), status)
            self._changed.set()

    async def wait(self) -> ExitStatus:
        """Sleep on the trio clock until it ends."""
        while self._status is None:
            pending = self._pending
            deadline = pending[0] if pending is not None else math.inf
            with trio.move_on_at(deadline):
                await self._changed.wait()
                self._changed = trio.Event()
                continue
            assert pending is not None
            self._status = pending[1]
        return self._status


@attrs.define(eq=False)
class SimulatedNotify:
    """The hub's end of a simulated process's notify channel.

    It yields the messages its :class:`SimBehaviour` schedules (``READY`` once, then a
    ``HEARTBEAT`` per ``heartbeat_interval`` until ``hang_at``) on the trio clock, and
    whatever a test injects with :meth:`send`.
    """

    behaviour: SimBehaviour
    spawned_at: float
    sent: list[bytes] = attrs.field(factory=list)
    _queue: deque[bytes] = attrs.field(factory=deque)
    _wake: trio.Event = attrs.field(factory=trio.Event)
    _ready_sent: bool = False
    _beats: int = 0
    closed: bool = False

    def send(self, data: bytes) -> None:
        """Deliver ``data`` as a message from the process (e.g. ``b"STATUS=busy"``)."""
        self._queue.append(data)
        self._wake.set()

    def _next(self) -> tuple[float, bytes]:
        b = self.behaviour
        hang = self.spawned_at + b.hang_at if b.hang_at is not None else math.inf
        when, msg = math.inf, b""
        if b.ready_after is not None and not self._ready_sent:
            when, msg = self.spawned_at + b.ready_after, b"READY"
        if b.heartbeat_interval is not None:
            beat = self.spawned_at + (self._beats + 1) * b.heartbeat_interval
            if beat < when:
                when, msg = beat, b"HEARTBEAT"
        return (when, msg) if when < hang else (math.inf, b"")

    async def receive(self) -> bytes:
        """The next message, sleeping on the trio clock until it is due."""
        while not self._queue:
            when, msg = self._next()
            with trio.move_on_at(when):
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            if msg == b"READY":
                self._ready_sent = True
            else:
                self._beats += 1
            self._queue.append(msg)
        data = self._queue.popleft()
        self.sent.append(data)
        return data

    def close(self) -> None:
        """Mark the channel closed (the runtime does this when the process ended)."""
        self.closed = True


Script = Callable[[SpawnRequest, int], SimBehaviour]


@attrs.define(eq=False)
class SimulatedProcessBackend:
    """Spawns :class:`SimulatedProcess` objects; deterministic for a given script.

    Args:
        script: the behaviour of each spawn: a mapping from child id to the behaviours
            of its successive spawns (the last one repeats), or a function of the spawn
            request and the spawn number of that child (1-based).
        default: the behaviour of children the mapping does not name (runs forever).

    Example::

        backend = SimulatedProcessBackend({"a": [SimBehaviour(lifetime=1.0)]})
        hub = Hub(spec, backend=backend)
    """

    script: Mapping[str, Sequence[SimBehaviour]] | Script = attrs.field(factory=dict)
    default: SimBehaviour = attrs.field(factory=SimBehaviour)
    processes: list[SimulatedProcess] = attrs.field(factory=list)
    _spawns: dict[str, int] = attrs.field(factory=dict)
    _next_pid: int = 10_000

    def behaviour_for(self, request: SpawnRequest, n: int) -> SimBehaviour:
        """The behaviour of spawn number ``n`` of ``request.child_id``."""
        if callable(self.script):
            return self.script(request, n)
        seq = self.script.get(request.child_id)
        if not seq:
            return self.default
        return seq[min(n, len(seq)) - 1]

    def spawn(self, request: SpawnRequest) -> SimulatedProcess:
        """Start a fake process, or raise :class:`~supervisor.SpawnError` if scripted so."""
        n = self._spawns.get(request.child_id, 0) + 1
        self._spawns[request.child_id] = n
        behaviour = self.behaviour_for(request, n)
        if behaviour.spawn_error is not None:
            raise SpawnError(f"child {request.child_id!r}: {behaviour.spawn_error}")
        self._next_pid += 1
        proc = SimulatedProcess(
            pid=self._next_pid,
            child_id=request.child_id,
            behaviour=behaviour,
            spawned_at=trio.current_time(),
        )
        if request.notify:
            proc.notify = SimulatedNotify(behaviour, proc.spawned_at)
        self.processes.append(proc)
        return proc

    def live(self) -> list[SimulatedProcess]:
        """The processes that have not ended."""
        return [p for p in self.processes if p.status is None]

    def current(self, child_id: str) -> SimulatedProcess:
        """The newest process of ``child_id``."""
        for proc in reversed(self.processes):
            if proc.child_id == child_id:
                return proc
        raise KeyError(f"no process was spawned for {child_id!r}")
