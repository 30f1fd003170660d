"""A simulated process backend: fake processes driven by the trio clock.

It plugs into the real runtime in place of :class:`~supervisor.OSProcessBackend`, so the
strategies, backoff, intensity and event code that run are the production ones. Under
``trio.testing.MockClock(autojump_threshold=0)`` minutes of backoff pass in
milliseconds and the same script gives the same trace.
"""

from __future__ import annotations

import json
import math
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import attrs
import trio
import trio.testing

from .._errors import SpawnError
from .._events import ExitStatus
from .._notify import PROTOCOL_VERSION, NotifyMessage, encode, parse_from_hub
from .._process import SpawnRequest

__all__ = [
    "SimBehaviour",
    "SimWork",
    "SimulatedNotify",
    "SimulatedProcess",
    "SimulatedProcessBackend",
    "WireRecord",
    "sim_result",
]


def sim_clock() -> trio.testing.MockClock:
    """A ``MockClock(autojump_threshold=0)`` whose time is read without the real clock.

    At rate 0 a ``MockClock``'s time is ``virtual base + 0 * (real - real base)``: its
    virtual base, exactly, yet each read calls ``time.perf_counter()`` and a run reads
    the time hundreds of times (3 % of a run). ``MockClock`` cannot be subclassed, so
    this one's two reading methods are replaced by ones that return the same floats from
    the virtual base; it stays a ``MockClock`` (``jump``, autojump). If a trio release
    renames the attribute, the clock is left as it is.
    """
    clock = trio.testing.MockClock(autojump_threshold=0)
    if not isinstance(getattr(clock, "_virtual_base", None), float) or clock.rate != 0:
        return clock  # pragma: no cover - another trio's MockClock: keep it as it is

    def current_time() -> float:
        return clock._virtual_base if clock.rate == 0 else real_current_time()

    def deadline_to_sleep_time(deadline: float) -> float:
        if clock.rate != 0:
            return real_deadline_to_sleep_time(deadline)
        return 0 if deadline - clock._virtual_base <= 0 else 999999999

    real_current_time, real_deadline_to_sleep_time = (
        clock.current_time,
        clock.deadline_to_sleep_time,
    )
    clock.current_time = current_time  # type: ignore[method-assign]
    clock.deadline_to_sleep_time = deadline_to_sleep_time  # type: ignore[method-assign]
    return clock


def _check_duration(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        from ._errors import InvalidSchedule

        raise InvalidSchedule(
            f"SimWork.{attribute.name} must be a finite number of virtual seconds >= 0 "
            f"(got {value!r}); e.g. SimWork(duration=1.5)"
        )


@attrs.frozen(kw_only=True)
class SimWork:
    """How a simulated agent takes work (give it as ``SimBehaviour(work=SimWork())``).

    The agent speaks the work protocol like :class:`agents.BaseAgent`: it says
    ``HELLO=1`` at spawn, takes each ``ASSIGN`` in turn, "works" on it for a virtual
    while, and answers with ``RESULT`` (its result is :func:`sim_result`) or ``FAIL``.
    On its stop signal (with ``on_stop="exit"``) or a ``STOP`` message it hands the held
    item back (``HANDBACK``) before it exits; a crash or a hang of its process (a
    :class:`~supervisor.testing.Crash` in the schedule) cuts the item short, silently.

    The payload of an item, if it is a JSON object, can steer the work:

    * ``"seconds"``: how long this item takes (instead of ``duration``);
    * ``"fail"``: ``"final"`` answers ``FAIL`` with ``retry=false``; ``"retry"`` answers
      ``FAIL`` (retry) on every attempt; an integer ``k`` fails attempts ``1..k`` and
      completes the next;
    * ``"stale": true``: first sends a forged ``RESULT`` for the next attempt (the hub
      must refuse it), then the real one;
    * ``"twice": true``: sends its ``RESULT`` twice (the second must be refused);
    * ``"ignore_cancel": true``: keeps working on the item when the hub says ``CANCEL``
      (its time limit ran out, or it was cancelled), so the hub stops it after its
      ``cancel_grace``. Otherwise a ``CANCEL`` for the attempt it works on (or has in
      its buffer) makes it give the attempt up at once and answer ``FAIL`` with
      ``retry=false``, as :class:`agents.BaseAgent` does (the hub refuses that answer).

    Args:
        duration: virtual seconds an item takes by default.
    """

    duration: float = attrs.field(default=1.0, validator=_check_duration)


def sim_result(payload: Any, attempt: int, agent: str) -> dict[str, Any]:
    """The result a :class:`SimWork` agent reports: derived from the item's payload, the
    attempt and the agent's id, so a check can tell which attempt's answer was kept."""
    return {"payload": payload, "attempt": attempt, "agent": agent}


@attrs.frozen(kw_only=True)
class WireRecord:
    """A work-protocol message on a simulated agent's channel (heartbeats aside).

    Attributes:
        at: the virtual time.
        child_id: the agent.
        pid: the agent's process.
        sender: ``"agent"`` (read by the hub) or ``"hub"`` (taken by the agent).
        word: the message's keyword, e.g. ``"RESULT"``, ``"ASSIGN"``.
        body: its decoded JSON object (``None`` for a message without one).
    """

    at: float
    child_id: str
    pid: int
    sender: Literal["agent", "hub"]
    word: str
    body: Any = None
    kind: str = attrs.field(init=False, default="wire")


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
        work: if set, it is an agent that takes work (see :class:`SimWork`); it needs
            the notify channel (``ChildSpec.notify``, the default).
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
    work: SimWork | None = None


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
        if sig != signal.SIGKILL and self.behaviour.on_stop == "exit" and self.notify:
            self.notify.stopping()
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

    def ends_by(self, at: float) -> bool:
        """Whether it has ended, or is due to end, at or before ``at``."""
        if self._status is not None:
            return True
        return self._pending is not None and self._pending[0] <= at

    async def wait(self) -> ExitStatus:
        """Sleep on the trio clock until it ends."""
        while self._status is None:
            pending = self._pending
            if pending is None:
                # Nothing due: no deadline, so no cancel scope (same schedule, cheaper).
                await self._changed.wait()
                self._changed = trio.Event()
                continue
            with trio.move_on_at(pending[0]):
                await self._changed.wait()
                self._changed = trio.Event()
                continue
            self._status = pending[1]
        return self._status


@attrs.define(eq=False)
class SimulatedNotify:
    """The hub's end of a simulated process's notify channel, and the agent behind it.

    It yields the messages its :class:`SimBehaviour` schedules (``READY`` once, then a
    ``HEARTBEAT`` per ``heartbeat_interval`` until ``hang_at``) on the trio clock, and
    whatever a test injects with :meth:`send`. With ``SimBehaviour(work=SimWork())`` it
    is also a work-taking agent: it says ``HELLO=1`` at spawn, and the hub's messages
    (:meth:`send_nowait`, :meth:`send_to_agent`) drive its work (see :class:`SimWork`).
    """

    behaviour: SimBehaviour
    spawned_at: float
    sent: list[bytes] = attrs.field(factory=list)
    _queue: deque[bytes] = attrs.field(factory=deque)
    _wake: trio.Event = attrs.field(factory=trio.Event)
    _ready_sent: bool = False
    _beats: int = 0
    closed: bool = False
    process: SimulatedProcess | None = attrs.field(default=None, kw_only=True)
    """The process this channel belongs to (its end cuts the agent's work short)."""
    on_wire: Callable[[WireRecord], None] | None = attrs.field(default=None, kw_only=True)
    """Called with a :class:`WireRecord` for every work-protocol message either way."""
    received: list[NotifyMessage] = attrs.field(factory=list, kw_only=True)
    """Every message the hub sent to the agent, in order."""
    holding: Mapping[str, Any] | None = attrs.field(default=None, init=False)
    """The ``ASSIGN`` body of the item the agent works on now, if any."""
    _inbox: deque[Mapping[str, Any]] = attrs.field(factory=deque, init=False)
    _due: float = attrs.field(default=math.inf, init=False)
    _hello_sent: bool = attrs.field(default=False, init=False)
    _stopping: bool = attrs.field(default=False, init=False)

    def send(self, data: bytes) -> None:
        """Deliver ``data`` as a message from the process (e.g. ``b"STATUS=busy"``)."""
        self._queue.append(data)
        self._wake.set()

    # ----------------------------------------------------------------------------------
    # The agent's side

    def _silent(self, at: float) -> bool:
        """Whether the agent sends nothing at ``at``: hung, or its process has ended."""
        b = self.behaviour
        if b.hang_at is not None and at >= self.spawned_at + b.hang_at:
            return True
        return b.work is not None and self.process is not None and self.process.ends_by(at)

    def _next(self) -> tuple[float, str]:
        b = self.behaviour
        options: list[tuple[float, int, str]] = []
        if b.work is not None and not self._hello_sent:
            options.append((self.spawned_at, 0, "hello"))
        if b.ready_after is not None and not self._ready_sent:
            options.append((self.spawned_at + b.ready_after, 1, "ready"))
        if self.holding is not None:
            options.append((self._due, 2, "answer"))
        if b.heartbeat_interval is not None:
            beat = self.spawned_at + (self._beats + 1) * b.heartbeat_interval
            options.append((beat, 3, "heartbeat"))
        if not options:
            return math.inf, ""
        when, _, what = min(options)
        return (math.inf, "") if self._silent(when) else (when, what)

    def _produce(self, what: str) -> None:
        if what == "hello":
            self._hello_sent = True
            self._queue.append(f"HELLO={PROTOCOL_VERSION}".encode())
        elif what == "ready":
            self._ready_sent = True
            self._queue.append(b"READY")
        elif what == "answer":
            # (a CANCEL at the very instant it was due may have taken the item already)
            if self.holding is not None and trio.current_time() >= self._due:
                self._answer()
        else:
            self._beats += 1
            self._queue.append(b"HEARTBEAT")

    def _say(self, word: str, body: Mapping[str, Any]) -> None:
        self._queue.append(f"{word}={json.dumps(body, separators=(',', ':'))}".encode())
        self._wake.set()

    def _begin(self, body: Mapping[str, Any]) -> None:
        assert self.behaviour.work is not None
        self.holding = body
        payload = body.get("payload")
        seconds = payload.get("seconds") if isinstance(payload, dict) else None
        if (
            not isinstance(seconds, int | float)
            or isinstance(seconds, bool)
            or not 0 <= seconds < math.inf
        ):
            seconds = self.behaviour.work.duration
        self._due = trio.current_time() + seconds
        self._wake.set()

    def _answer(self) -> None:
        body, self.holding, self._due = self.holding, None, math.inf
        assert body is not None
        item, attempt, payload = body["item"], body["attempt"], body.get("payload")
        steer = payload if isinstance(payload, dict) else {}
        fail = steer.get("fail")
        fenced = {"item": item, "attempt": attempt}
        if fail == "final":
            self._say("FAIL", {**fenced, "error": "final failure", "retry": False})
        elif fail == "retry" or (
            isinstance(fail, int) and not isinstance(fail, bool) and attempt <= fail
        ):
            self._say("FAIL", {**fenced, "error": f"failed attempt {attempt}", "retry": True})
        else:
            if steer.get("stale"):
                self._say("RESULT", {"item": item, "attempt": attempt + 1, "result": "forged"})
            agent = self.process.child_id if self.process is not None else ""
            result = {**fenced, "result": sim_result(payload, attempt, agent)}
            self._say("RESULT", result)
            if steer.get("twice"):
                self._say("RESULT", result)
        if self._inbox:
            self._begin(self._inbox.popleft())

    def _hand_back_all(self) -> None:
        held = [self.holding, *self._inbox] if self.holding is not None else [*self._inbox]
        self.holding, self._due = None, math.inf
        self._inbox.clear()
        for body in held:
            self._say("HANDBACK", {"item": body["item"], "attempt": body["attempt"]})

    def stopping(self) -> None:
        """The process got its stop signal and will exit: a work-taking agent that is not
        hung hands back what it holds (and every item it is given from now on)."""
        if self.behaviour.work is None:
            return
        self._stopping = True
        if not self._silent(trio.current_time()):
            self._hand_back_all()

    def _on_hub(self, message: NotifyMessage) -> None:
        now = trio.current_time()
        body: dict[str, Any] = json.loads(message.value) if message.value is not None else {}
        self._wire("hub", message.kind.upper(), body or None)
        if self.behaviour.work is None or self._silent(now):
            if message.kind == "assign" and self.behaviour.work is not None:
                self._inbox.append(body)  # taken into its buffer, never answered
            return
        if message.kind == "assign":
            if self._stopping:
                self._say("HANDBACK", {"item": body["item"], "attempt": body["attempt"]})
            elif self.holding is None:
                self._begin(body)
            else:
                self._inbox.append(body)
        elif message.kind == "stop":
            self._stopping = True
            self._hand_back_all()
            if self.process is not None:
                self.process._schedule(now + self.behaviour.stop_delay, ExitStatus(code=0))
        elif message.kind == "ping":
            self._queue.append(b"HEARTBEAT")
            self._wake.set()
        elif message.kind == "cancel":
            self._on_cancel(body)

    def _on_cancel(self, body: Mapping[str, Any]) -> None:
        """``CANCEL``: give the attempt up (the held one, or one waiting in the buffer)
        and answer ``FAIL``, unless its payload says ``"ignore_cancel"``."""
        fenced = (body.get("item"), body.get("attempt"))
        held = [self.holding] if self.holding is not None else []
        for assign in [*held, *self._inbox]:
            if (assign.get("item"), assign.get("attempt")) != fenced:
                continue
            payload = assign.get("payload")
            if isinstance(payload, dict) and payload.get("ignore_cancel"):
                return
            if assign is self.holding:
                self.holding, self._due = None, math.inf
            else:
                self._inbox.remove(assign)
            error = f"cancelled: {body.get('reason', '')}"
            self._say(
                "FAIL", {"item": fenced[0], "attempt": fenced[1], "error": error, "retry": False}
            )
            if self.holding is None and self._inbox:
                self._begin(self._inbox.popleft())
            return

    def _wire(self, sender: Literal["agent", "hub"], word: str, body: Any) -> None:
        if self.on_wire is not None and self.process is not None:
            self.on_wire(
                WireRecord(
                    at=trio.current_time(),
                    child_id=self.process.child_id,
                    pid=self.process.pid,
                    sender=sender,
                    word=word,
                    body=body,
                )
            )

    # ----------------------------------------------------------------------------------
    # The hub's side

    def _deliver(self) -> bytes:
        data = self._queue.popleft()
        self.sent.append(data)
        if self.on_wire is not None:
            word, eq, rest = data.decode("utf-8", "replace").partition("=")
            if word in _WORK_WORDS:
                body: Any = None
                if eq and word != "HELLO":
                    try:
                        body = json.loads(rest)
                    except ValueError:
                        body = rest
                self._wire("agent", word, body)
        return data

    async def receive(self) -> bytes:
        """The next message, sleeping on the trio clock until it is due."""
        while not self._queue:
            when, what = self._next()
            if when == math.inf:
                # Nothing due: no deadline, so no cancel scope (same schedule, cheaper).
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            with trio.move_on_at(when):
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            self._produce(what)
        return self._deliver()

    def receive_nowait(self) -> bytes | None:
        """A message already sent (a last ``RESULT`` or ``HANDBACK`` before the exit);
        ``None`` once the process has ended and none is left.

        Raises:
            trio.WouldBlock: none is waiting and the process runs.
        """
        if self._queue:
            return self._deliver()
        if self.process is not None and self.process.status is not None:
            return None
        raise trio.WouldBlock

    def send_nowait(self, message: NotifyMessage, *, verify: bool = True) -> bool:
        """The hub sends ``message`` to the agent (it always has room).

        Raises:
            InvalidNotifyMessage: not a valid hub-to-agent message.
            trio.ClosedResourceError: the hub's end was closed.
            trio.BrokenResourceError: the process has ended (or ends at this instant).
        """
        data = encode(message, verify=verify)
        if self.closed:
            raise trio.ClosedResourceError("the notify channel is closed")
        if self.process is not None and self.process.ends_by(trio.current_time()):
            raise trio.BrokenResourceError("the agent's end is gone: it exited")
        parsed = parse_from_hub(data)  # what the agent reads, as a real one would
        self.received.append(parsed)
        self._on_hub(parsed)
        return True

    async def send_to_agent(self, message: NotifyMessage) -> None:
        """As :meth:`send_nowait`, after a checkpoint."""
        await trio.lowlevel.checkpoint()
        self.send_nowait(message)

    def close(self) -> None:
        """Mark the channel closed (the runtime does this when the process ended)."""
        self.closed = True


_WORK_WORDS = frozenset({"HELLO", "PROGRESS", "RESULT", "FAIL", "HANDBACK", "SUBMIT"})


Script = Callable[[SpawnRequest, int], SimBehaviour]


@attrs.define(eq=False)
class SimulatedProcessBackend:
    """Spawns :class:`SimulatedProcess` objects; deterministic for a given script.

    Args:
        script: the behaviour of each spawn: a mapping from child id to the behaviours
            of its successive spawns (the last one repeats), or a function of the spawn
            request and the spawn number of that child (1-based).
        default: the behaviour of children the mapping does not name (runs forever).
        on_wire: called with a :class:`WireRecord` for every work-protocol message of
            every simulated agent (heartbeats aside).

    Example::

        backend = SimulatedProcessBackend({"a": [SimBehaviour(lifetime=1.0)]})
        hub = Hub(spec, backend=backend)
    """

    script: Mapping[str, Sequence[SimBehaviour]] | Script = attrs.field(factory=dict)
    default: SimBehaviour = attrs.field(factory=SimBehaviour)
    processes: list[SimulatedProcess] = attrs.field(factory=list)
    _spawns: dict[str, int] = attrs.field(factory=dict)
    _next_pid: int = 10_000
    on_wire: Callable[[WireRecord], None] | None = attrs.field(default=None, kw_only=True)
    """Called with every work-protocol message of every process (see :class:`WireRecord`)."""

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
            proc.notify = SimulatedNotify(
                behaviour, proc.spawned_at, process=proc, on_wire=self.on_wire
            )
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
