"""The supervision runtime: one trio nursery per supervisor, one actor task per child.

A :class:`Supervisor` is an actor. Its children's actors report exits to it over a
memory channel (its inbox), timers post "restart due" messages there, and run-time
control requests arrive there too, so all of a supervisor's state changes happen in one
task, one message at a time, as in OTP's ``gen_server`` based supervisor. The decisions
themselves are the pure policy objects of :mod:`strategies`.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import os
import random
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import attrs
import trio

from ._errors import (
    ChildNotFound,
    ControlError,
    MaxAgentsExceeded,
    SpawnError,
    SupervisorEscalation,
)
from ._events import (
    ChildBackingOff,
    ChildExited,
    ChildHeartbeat,
    ChildHung,
    ChildOutput,
    ChildRestarting,
    ChildRunning,
    ChildSpawnFailed,
    ChildStarting,
    ChildStatus,
    ChildStopped,
    EventBus,
    ExitStatus,
    SupervisorEscalated,
    SupervisorStarted,
    SupervisorStopped,
    SupervisorStopping,
)
from ._notify import InvalidNotifyMessage, NotifySource, parse_notify
from ._process import OSProcessBackend, ProcessBackend, ProcessHandle, SpawnRequest
from ._spec import BRUTAL_KILL, AnySpec, ChildSpec, PoolSpec, RestartType, SupervisorSpec

__all__ = ["ChildInfo", "ChildState", "RuntimeContext", "Supervisor"]

_PUMP_GRACE = 1.0  # seconds to drain a child's pipes after it exited
_BAD_NOTIFY_LOG_EVERY = 60.0  # seconds between two log lines about one child's bad messages
_HEARTBEAT_EVENT_GAP = 0.1  # at most 10 ChildHeartbeat events/s per child, however fast it beats

_log = logging.getLogger("hubvisor")


class ChildState(enum.Enum):
    """Where a child is in its lifecycle, as ``which_children`` reports it."""

    STARTING = "starting"
    RUNNING = "running"
    BACKING_OFF = "backing_off"
    STOPPING = "stopping"
    STOPPED = "stopped"


@attrs.frozen
class ChildInfo:
    """One row of :meth:`Supervisor.which_children`."""

    id: str
    kind: Literal["worker", "supervisor"]
    state: ChildState
    pid: int | None
    restarts: int
    uptime: float | None
    agent_type: str | None
    last_exit: str | None


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

    def claim_agents(self, n: int, what: str) -> None:
        """Count ``n`` more worker children, or raise :class:`MaxAgentsExceeded`."""
        if self.max_agents is not None and self.agents + n > self.max_agents:
            raise MaxAgentsExceeded(
                f"{what} would make {self.agents + n} agents, more than max_agents="
                f"{self.max_agents}; stop some agents or raise max_agents"
            )
        self.agents += n


# --------------------------------------------------------------------------------------
# Messages to a supervisor's inbox


@attrs.frozen
class _Exited:
    member_id: str
    incarnation: int
    reason: str
    normal: bool


@attrs.frozen
class _RestartDue:
    token: int


@attrs.define(eq=False)
class _Call:
    fn: Callable[[], Awaitable[Any]]
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


_Message: TypeAlias = _Exited | _RestartDue | _Call


@attrs.define(eq=False)
class _Member:
    spec: AnySpec
    pool_index: int | None = None
    state: ChildState = ChildState.STOPPED
    incarnation: int = 0
    pid: int | None = None
    handle: ProcessHandle | None = None
    sub: Supervisor | None = None
    started_at: float | None = None
    restarts: int = 0
    attempt: int = 0
    restart_token: int | None = None
    restart_cause: str | None = None
    stopping: bool = False
    done: trio.Event | None = None
    last_exit: str | None = None
    ring: deque[str] = attrs.field(factory=lambda: deque(maxlen=1000))
    unresponsive: tuple[int, str] | None = None  # (incarnation, why it was killed)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def is_worker(self) -> bool:
        return isinstance(self.spec, ChildSpec)

    @property
    def alive(self) -> bool:
        return self.done is not None and not self.done.is_set()


class Supervisor:
    """A running supervisor; get one from :class:`~supervisor.Hub` or ``nursery.start``.

    Example::

        async with trio.open_nursery() as nursery:
            sup = await nursery.start(Supervisor(spec).serve)
            print(sup.which_children())
            await sup.stop()
    """

    def __init__(
        self,
        spec: SupervisorSpec | PoolSpec,
        *,
        context: RuntimeContext | None = None,
        parent_path: str = "",
    ) -> None:
        self.spec = spec
        self.path = f"{parent_path}/{spec.name}" if parent_path else spec.name
        self._ctx = context or RuntimeContext()
        self._members: list[_Member] = []
        if isinstance(spec, PoolSpec):
            self._members = [_Member(spec.member(n), pool_index=n) for n in range(1, spec.size + 1)]
        else:
            self._members = [_Member(child) for child in spec.children]
        for m in self._members:
            self._size_ring(m)
        self._send, self._inbox = trio.open_memory_channel[_Message](math.inf)
        self._nursery: trio.Nursery | None = None
        self._history: tuple[float, ...] = ()
        self._next_token = 0
        self._stopped = trio.Event()
        self._stop_requested = False
        self._started = False
        self._ended = False

    # ----------------------------------------------------------------------------------
    # Public control API

    @property
    def is_pool(self) -> bool:
        """Whether this supervisor runs a :class:`PoolSpec`."""
        return isinstance(self.spec, PoolSpec)

    def which_children(self) -> list[ChildInfo]:
        """The children in start order, with state, pid, restarts and uptime."""
        now = trio.current_time()
        return [
            ChildInfo(
                id=m.id,
                kind="worker" if m.is_worker else "supervisor",
                state=m.state,
                pid=m.pid,
                restarts=m.restarts,
                uptime=(now - m.started_at)
                if m.started_at is not None and m.state in (ChildState.STARTING, ChildState.RUNNING)
                else None,
                agent_type=self._agent_type(m),
                last_exit=m.last_exit,
            )
            for m in self._members
        ]

    def count_children(self) -> dict[str, int]:
        """Counts like OTP's ``count_children``: specs, active, workers, supervisors."""
        return {
            "specs": len(self._members),
            "active": sum(
                m.state in (ChildState.STARTING, ChildState.RUNNING) for m in self._members
            ),
            "workers": sum(m.is_worker for m in self._members),
            "supervisors": sum(not m.is_worker for m in self._members),
        }

    def children_supervisors(self) -> list[Supervisor]:
        """The running nested supervisors, in start order."""
        return [m.sub for m in self._members if m.sub is not None]

    def logs(self, child_id: str, lines: int | None = None) -> list[str]:
        """The last ``lines`` captured output lines of a child (``[stderr]`` marks stderr)."""
        ring = list(self._member(child_id).ring)
        return ring if lines is None else ring[-lines:] if lines > 0 else []

    async def start_child(self, spec: ChildSpec | SupervisorSpec | PoolSpec) -> None:
        """Add a child after the others and start it (OTP ``start_child``)."""
        await self._call(lambda: self._do_start_child(spec))

    async def terminate_child(self, child_id: str) -> None:
        """Stop a child and keep its spec; it stays stopped until restarted."""
        await self._call(lambda: self._do_terminate(child_id))

    async def restart_child(self, child_id: str) -> None:
        """Start a stopped child, or stop and start a running one (no intensity cost)."""
        await self._call(lambda: self._do_restart(child_id))

    async def delete_child(self, child_id: str) -> None:
        """Stop a child if it runs and forget its spec."""
        await self._call(lambda: self._do_delete(child_id))

    async def resize(self, size: int) -> None:
        """Grow or shrink a pool to ``size`` members (stopping the highest-numbered)."""
        await self._call(lambda: self._do_resize(size))

    async def stop(self) -> None:
        """Stop every child in reverse start order (a pool: all at once) and end.

        Safe to call more than once and from several tasks; returns when the
        supervisor has ended.
        """
        if self._ended:
            return
        self._drain()
        if not self._started:
            return  # serve() has not started: it will start nothing
        with trio.CancelScope(shield=True):
            with contextlib.suppress(ControlError):  # it may have ended meanwhile
                await self._call(self._do_stop_all)
            await self._stopped.wait()

    # ----------------------------------------------------------------------------------
    # Running

    async def serve(
        self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the children in order and supervise them until stopped.

        Raises:
            SupervisorEscalation: the restart intensity was exceeded; every child has
                been stopped by then.
        """
        outcome = await self._serve(task_status=task_status)
        if outcome is not None:
            raise outcome

    async def _serve(
        self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
    ) -> SupervisorEscalation | None:
        outcome: SupervisorEscalation | None = None
        if self._started:
            raise ControlError(f"supervisor {self.path!r} is already serving")
        self._started = True
        # The hub checked max_agents for the whole tree before starting it.
        self._ctx.agents += sum(m.is_worker for m in self._members)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for m in list(self._members):
                    if self._stop_requested:
                        break
                    await self._start_member(m)
                self._publish(SupervisorStarted, child_id=self.spec.name)
                task_status.started(self)
                outcome = await self._loop()
                nursery.cancel_scope.cancel()
        finally:
            # Reached on cancellation and errors too: nothing may outlive the supervisor.
            with trio.CancelScope(shield=True):
                await self._stop_members(list(self._members), reason="shutdown")
            self._ended = True
            self._release_agents()
            self._fail_pending_calls()
            self._stopped.set()
            self._publish(SupervisorStopped, child_id=self.spec.name)
        return outcome

    async def _loop(self) -> SupervisorEscalation | None:
        async for msg in self._inbox:
            if isinstance(msg, _Call):
                try:
                    msg.result = await msg.fn()
                except ControlError as exc:
                    msg.error = exc
                finally:
                    msg.done.set()
                if self._stop_requested:
                    return None
            elif isinstance(msg, _Exited):
                outcome = await self._on_exit(msg)
                if outcome is not None:
                    return outcome
            else:
                await self._on_restart_due(msg.token)
        return None  # pragma: no cover - the inbox is never closed while serving

    def _fail_pending_calls(self) -> None:
        while True:
            try:
                msg = self._inbox.receive_nowait()
            except trio.WouldBlock:
                return
            if isinstance(msg, _Call):
                msg.error = ControlError(f"supervisor {self.path!r} ended before the request ran")
                msg.done.set()

    async def _call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        if self._ended or self._nursery is None:
            raise ControlError(f"supervisor {self.path!r} is not running")
        call = _Call(fn)
        self._send.send_nowait(call)
        await call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    # ----------------------------------------------------------------------------------
    # Starting children

    def _agent_type(self, m: _Member) -> str | None:
        if isinstance(m.spec, ChildSpec):
            return m.spec.agent_type
        return None

    def _size_ring(self, m: _Member) -> None:
        if isinstance(m.spec, ChildSpec):
            m.ring = deque(m.ring, maxlen=m.spec.output.ring_lines)

    def _publish(self, cls: Any, **fields: Any) -> None:
        self._ctx.bus.publish(cls(at=trio.current_time(), supervisor=self.path, **fields))

    def _child_env(self, spec: ChildSpec) -> dict[str, str]:
        env = dict(os.environ) if spec.inherit_env else {}
        env.update(self._ctx.env)
        env.update(spec.env)
        env["HUBVISOR_AGENT_ID"] = spec.id
        env["HUBVISOR_SUPERVISOR"] = self.path
        env["HUBVISOR_HUB_ID"] = self._ctx.hub_id
        if spec.agent_type is not None:
            env["HUBVISOR_AGENT_TYPE"] = spec.agent_type
        return env

    async def _start_member(self, m: _Member) -> None:
        assert self._nursery is not None
        m.incarnation += 1
        m.stopping = False
        m.restart_token = None
        m.done = trio.Event()
        m.started_at = trio.current_time()
        if isinstance(m.spec, ChildSpec):
            self._start_process(m, m.spec)
        else:
            m.state = ChildState.STARTING
            sub = Supervisor(m.spec, context=self._ctx, parent_path=self.path)
            m.sub = sub
            await self._nursery.start(self._sub_actor, m, sub, m.incarnation)
            m.state = ChildState.RUNNING

    def _start_process(self, m: _Member, spec: ChildSpec) -> None:
        assert self._nursery is not None and m.done is not None
        request = SpawnRequest(
            child_id=spec.id,
            argv=spec.argv,
            env=self._child_env(spec),
            cwd=spec.cwd,
            capture_output=spec.output.capture,
            notify=spec.notify,
        )
        try:
            handle = self._ctx.backend.spawn(request)
        except SpawnError as exc:
            m.state = ChildState.STOPPED
            m.pid = None
            m.handle = None
            m.last_exit = str(exc)
            m.done.set()
            self._publish(ChildSpawnFailed, child_id=spec.id, error=str(exc))
            self._send.send_nowait(_Exited(m.id, m.incarnation, f"failed to spawn: {exc}", False))
            return
        m.handle = handle
        m.pid = handle.pid
        m.state = ChildState.STARTING
        self._ctx.handles[handle.pid] = handle
        self._publish(
            ChildStarting,
            child_id=spec.id,
            pid=handle.pid,
            incarnation=m.incarnation,
            agent_type=spec.agent_type,
        )
        self._nursery.start_soon(self._process_actor, m, spec, handle, m.incarnation)

    async def _process_actor(
        self, m: _Member, spec: ChildSpec, handle: ProcessHandle, incarnation: int
    ) -> None:
        assert m.done is not None
        done = m.done
        started = trio.current_time()
        status: ExitStatus | None = None
        source: NotifySource | None = getattr(handle, "notify", None)
        try:
            async with trio.open_nursery() as nursery:
                for stream, name in ((handle.stdout, "stdout"), (handle.stderr, "stderr")):
                    if stream is not None:
                        nursery.start_soon(self._pump, m, spec, stream, name)
                timer = trio.CancelScope()
                watch = trio.CancelScope()
                ready_watch = trio.CancelScope()  # a scope serves one `with` block only
                if spec.ready == "start_period":
                    nursery.start_soon(self._running_timer, m, spec, handle, incarnation, timer)
                elif spec.ready_timeout is not None:
                    nursery.start_soon(
                        self._ready_deadline, m, spec, handle, incarnation, timer, ready_watch
                    )
                if source is not None:
                    nursery.start_soon(
                        self._notify_actor, m, spec, handle, source, incarnation, timer, watch
                    )
                try:
                    status = await handle.wait()
                finally:
                    timer.cancel()
                    watch.cancel()
                    ready_watch.cancel()
                # The group is dead; give the pipes a moment to drain, not forever (an
                # escaped grandchild could hold them open).
                nursery.cancel_scope.deadline = trio.current_time() + _PUMP_GRACE
        except BaseException:
            # Cancelled from outside (the hub is going down abruptly): never leave the
            # process behind.
            with trio.CancelScope(shield=True):
                await self._kill_process(spec, handle)
            raise
        finally:
            if source is not None:
                source.close()
            self._ctx.handles.pop(handle.pid, None)
            if m.incarnation == incarnation:
                m.pid = None
                m.handle = None
            done.set()
        uptime = trio.current_time() - started
        if spec.ready == "notify":
            failed_start = m.incarnation == incarnation and m.state is ChildState.STARTING
        else:
            failed_start = uptime < spec.start_period
        expected = m.stopping and m.incarnation == incarnation
        reason, normal = status.describe(), status.normal
        if m.unresponsive is not None and m.unresponsive[0] == incarnation and not expected:
            reason = f"{m.unresponsive[1]}, then {reason}"
            normal = False
        m.last_exit = reason
        self._publish(
            ChildExited,
            child_id=spec.id,
            pid=handle.pid,
            status=status,
            expected=expected,
            failed_start=failed_start,
            uptime=uptime,
        )
        if not expected and m.incarnation == incarnation:
            m.state = ChildState.STOPPED
            self._send.send_nowait(_Exited(m.id, incarnation, reason, normal))

    async def _running_timer(
        self,
        m: _Member,
        spec: ChildSpec,
        handle: ProcessHandle,
        incarnation: int,
        scope: trio.CancelScope,
    ) -> None:
        with scope:
            await trio.sleep(spec.start_period)
            self._set_running(m, spec, handle.pid, incarnation)

    async def _ready_deadline(
        self,
        m: _Member,
        spec: ChildSpec,
        handle: ProcessHandle,
        incarnation: int,
        timer: trio.CancelScope,
        watch: trio.CancelScope,
    ) -> None:
        assert spec.ready_timeout is not None
        with timer:  # READY cancels it
            await trio.sleep(spec.ready_timeout)
        if timer.cancel_called:
            return
        with watch:  # the process exiting cancels it
            await self._kill_unresponsive(
                m,
                spec,
                handle,
                incarnation,
                f"not READY within {spec.ready_timeout:g}s",
                spec.ready_timeout,
            )

    async def _kill_unresponsive(
        self,
        m: _Member,
        spec: ChildSpec,
        handle: ProcessHandle,
        incarnation: int,
        why: str,
        silence: float,
    ) -> None:
        """Kill a child that stopped answering like a stop (graceful, then SIGKILL); its
        exit then goes through the normal restart path. Returns only by cancellation."""
        if m.incarnation != incarnation or m.stopping:
            return
        m.unresponsive = (incarnation, why)
        self._publish(ChildHung, child_id=spec.id, pid=handle.pid, silence=silence)
        # Only the process exiting (which cancels the caller's scope) ends the wait.
        await self._signal_then_kill(spec, handle, trio.sleep_forever)
        await trio.sleep_forever()

    def _set_running(self, m: _Member, spec: ChildSpec, pid: int, incarnation: int) -> None:
        if m.incarnation == incarnation and m.state is ChildState.STARTING:
            m.state = ChildState.RUNNING
            self._publish(ChildRunning, child_id=spec.id, pid=pid)

    async def _notify_actor(
        self,
        m: _Member,
        spec: ChildSpec,
        handle: ProcessHandle,
        source: NotifySource,
        incarnation: int,
        timer: trio.CancelScope,
        scope: trio.CancelScope,
    ) -> None:
        """Read the child's notify messages and run its heartbeat watchdog.

        Cancelled (through ``scope``) as soon as the process has exited.
        """
        timeout = spec.heartbeat_timeout
        last = trio.current_time()
        rejected = 0
        logged_at = beat_at = -math.inf
        with scope:
            while True:
                deadline = last + timeout if timeout is not None else math.inf
                with trio.move_on_at(deadline):
                    try:
                        data = await source.receive()
                    except (OSError, trio.ClosedResourceError):
                        data = b""
                    if not data:  # every writer closed its end: no more heartbeats
                        await trio.sleep_until(deadline)
                    now = trio.current_time()
                    try:
                        msg = parse_notify(data)
                    except InvalidNotifyMessage as exc:
                        rejected += 1
                        self._ctx.notify_rejected += 1
                        if now - logged_at >= _BAD_NOTIFY_LOG_EVERY:
                            logged_at = now
                            _log.warning(
                                "%s/%s (pid %d): dropped a notify message: %s (%d dropped so far)",
                                self.path,
                                spec.id,
                                handle.pid,
                                exc,
                                rejected,
                            )
                        continue
                    last = now
                    if msg.kind == "ready":
                        timer.cancel()
                        self._set_running(m, spec, handle.pid, incarnation)
                    elif msg.kind == "heartbeat":
                        if now - beat_at >= _HEARTBEAT_EVENT_GAP:
                            beat_at = now
                            self._publish(ChildHeartbeat, child_id=spec.id, pid=handle.pid)
                    else:
                        self._publish(
                            ChildStatus, child_id=spec.id, pid=handle.pid, status=msg.value
                        )
                    continue
                break  # the watchdog fired
            # Hung. The process exiting cancels this scope.
            assert timeout is not None
            await self._kill_unresponsive(
                m,
                spec,
                handle,
                incarnation,
                f"hung (no heartbeat for {timeout:g}s)",
                trio.current_time() - last,
            )

    async def _pump(
        self, m: _Member, spec: ChildSpec, stream: trio.abc.ReceiveStream, name: str
    ) -> None:
        limit = spec.output.max_line_bytes
        pending = b""
        skipping = False  # inside an over-long line whose head was already emitted
        prefix = "" if name == "stdout" else "[stderr] "
        try:
            while chunk := await stream.receive_some(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if skipping:
                        skipping = False  # the tail of a line already cut and emitted
                        continue
                    self._emit_line(m, spec, name, prefix, line[:limit], len(line) > limit)
                if len(pending) > limit:
                    # No newline for a long while: emit the head now, drop the rest of the
                    # line, so a child writing without newlines cannot grow our memory.
                    if not skipping:
                        self._emit_line(m, spec, name, prefix, pending[:limit], True)
                    skipping = True
                    pending = b""
            if pending and not skipping:
                self._emit_line(m, spec, name, prefix, pending, False)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def _emit_line(
        self, m: _Member, spec: ChildSpec, name: str, prefix: str, raw: bytes, cut: bool
    ) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r") + ("…" if cut else "")
        m.ring.append(prefix + text)
        if spec.output.events:
            self._publish(ChildOutput, child_id=spec.id, stream=name, line=text)

    async def _sub_actor(
        self,
        m: _Member,
        sub: Supervisor,
        incarnation: int,
        *,
        task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        assert m.done is not None
        done = m.done
        try:
            outcome = await sub._serve(task_status=task_status)
        finally:
            done.set()
        if m.incarnation == incarnation:
            m.sub = None
        if outcome is not None:
            m.last_exit = str(outcome)
        if not (m.stopping and m.incarnation == incarnation) and m.incarnation == incarnation:
            m.state = ChildState.STOPPED
            reason = f"escalated: {outcome}" if outcome else "stopped"
            self._send.send_nowait(_Exited(m.id, incarnation, reason, outcome is None))

    # ----------------------------------------------------------------------------------
    # Stopping children

    async def _signal_then_kill(
        self,
        spec: ChildSpec,
        handle: ProcessHandle,
        ended: Callable[[], Awaitable[object]],
        *,
        warn: bool = False,
    ) -> None:
        """The graceful-stop escalation, in one place: ``stop_signal`` to the group, up to
        ``shutdown`` seconds for ``ended()`` to return, then SIGKILL to the group
        (``BRUTAL_KILL``: SIGKILL at once). With ``warn``, say which pid ignored the
        signal and which setting to raise."""
        if spec.shutdown == BRUTAL_KILL:
            handle.signal_group(signal.SIGKILL)
            return
        handle.signal_group(spec.stop_signal)
        with trio.move_on_after(spec.shutdown):
            await ended()
            return
        if warn:
            self._publish(
                ChildOutput,
                child_id=spec.id,
                stream="stderr",
                line=f"[hubvisor] pid {handle.pid} ignored {spec.stop_signal.name} for "
                f"{spec.shutdown:g}s; sending SIGKILL to its group (raise ChildSpec.shutdown "
                "if it needs longer to stop)",
            )
        handle.signal_group(signal.SIGKILL)

    async def _kill_process(self, spec: ChildSpec, handle: ProcessHandle) -> None:
        """Graceful stop of one process we still wait for ourselves."""
        await self._signal_then_kill(spec, handle, handle.wait)
        await handle.wait()

    async def _stop_member(self, m: _Member, reason: str) -> None:
        m.stopping = True
        was_active = m.alive or m.state is ChildState.BACKING_OFF
        m.restart_token = None
        if m.alive:
            m.state = ChildState.STOPPING
            assert m.done is not None
            if m.sub is not None:
                await m.sub.stop()
            elif m.handle is not None and isinstance(m.spec, ChildSpec):
                await self._signal_then_kill(m.spec, m.handle, m.done.wait, warn=True)
            await m.done.wait()
        m.state = ChildState.STOPPED
        m.started_at = None
        if was_active or reason in ("terminated", "removed"):
            self._publish(ChildStopped, child_id=m.id, reason=reason)

    async def _stop_members(self, members: Sequence[_Member], reason: str) -> None:
        """Stop in reverse start order; a pool's members all at once."""
        if self.is_pool:
            async with trio.open_nursery() as nursery:
                for m in members:
                    nursery.start_soon(self._stop_member, m, reason)
        else:
            for m in reversed(members):
                await self._stop_member(m, reason)

    def _release_agents(self) -> None:
        self._ctx.agents -= sum(m.is_worker for m in self._members)

    # ----------------------------------------------------------------------------------
    # Restart decisions

    def _member(self, child_id: str) -> _Member:
        for m in self._members:
            if m.id == child_id:
                return m
        raise ChildNotFound(
            f"supervisor {self.path!r} has no child {child_id!r}; its children are "
            f"{[m.id for m in self._members]!r}"
        )

    async def _on_exit(self, msg: _Exited) -> SupervisorEscalation | None:
        try:
            m = self._member(msg.member_id)
        except ChildNotFound:
            return None
        if m.incarnation != msg.incarnation or m.stopping or m.state is ChildState.BACKING_OFF:
            # A stale report: that incarnation was already replaced or stopped, or it
            # died while a sibling's restart was stopping it and that restart already
            # covers it (OTP drops the EXIT of a child it is terminating; counting it
            # would cost a second restart, but only when the restart has a backoff).
            return None
        if self._stop_requested:
            self._publish(ChildStopped, child_id=m.id, reason="shutdown")
            return None
        restart = m.spec.restart
        if restart is RestartType.TEMPORARY or (restart is RestartType.TRANSIENT and msg.normal):
            self._publish(ChildStopped, child_id=m.id, reason="exited")
            if restart is RestartType.TEMPORARY:
                self._remove(m)
            return None
        try:
            decision = self.spec.intensity.record(self._history, trio.current_time())
            self._history = decision.history
            if not decision.allowed:
                return await self._escalate(m, msg.reason)
            uptime = trio.current_time() - m.started_at if m.started_at is not None else 0.0
            if self.spec.backoff.resets_after(uptime):
                m.attempt = 0
            m.attempt += 1
            delay = float(self.spec.backoff.delay(m.attempt, self._ctx.rng))
            if not delay >= 0:  # also catches NaN
                raise ValueError(f"delay({m.attempt}) returned {delay!r}, not a number >= 0")
            order = [x.id for x in self._members]
            ids = list(self.spec.strategy.to_restart(m.id, order))
            if m.id not in ids:
                raise ValueError(
                    f"to_restart({m.id!r}, ...) returned {ids!r} without the failed child"
                )
        except Exception as exc:
            # A user-written policy that raises or answers nonsense must not crash the
            # hub: the supervisor gives up in order, and its parent's policy decides.
            return await self._escalate(
                m,
                f"{msg.reason}; then its supervisor's policy failed: "
                f"{type(exc).__name__}: {exc} (fix the policy object)",
            )
        group: list[_Member] = []
        for x in self._members:
            if x.id not in ids:
                continue
            if x is not m and x.state is ChildState.STOPPED and x.restart_token is None:
                continue  # terminated on purpose, or ended normally: stays stopped
            group.append(x)
        siblings = [x for x in group if x is not m]
        await self._stop_members(siblings, reason="restarting")
        if self._stop_requested:
            # A stop was asked for while the siblings were stopping: the restart is void,
            # and every child of the group stays down.
            for x in group:
                x.restart_token = None
                self._publish(ChildStopped, child_id=x.id, reason="shutdown")
            return None
        for x in list(siblings):
            if x.spec.restart is RestartType.TEMPORARY:
                # OTP: a temporary child is never restarted, not even for a sibling.
                self._remove(x)
                group.remove(x)
        self._next_token += 1
        token = self._next_token
        for x in group:
            x.restart_token = token
            x.restart_cause = m.id
            x.stopping = False
            x.state = ChildState.BACKING_OFF
        if delay > 0:
            self._publish(
                ChildBackingOff,
                child_id=m.id,
                delay=delay,
                attempt=m.attempt,
                restarting=tuple(x.id for x in group),
            )
            assert self._nursery is not None
            self._nursery.start_soon(self._timer, delay, token)
        else:
            await self._on_restart_due(token)
        return None

    async def _timer(self, delay: float, token: int) -> None:
        await trio.sleep(delay)
        self._send.send_nowait(_RestartDue(token))

    async def _on_restart_due(self, token: int) -> None:
        for m in [m for m in self._members if m.restart_token == token]:
            if m.restart_token != token or self._stop_requested:
                continue  # stopped or re-scheduled while an earlier start ran
            m.restarts += 1
            self._publish(ChildRestarting, child_id=m.id, cause=m.restart_cause or m.id)
            await self._start_member(m)

    async def _escalate(self, m: _Member, reason: str) -> SupervisorEscalation:
        try:
            limit = str(self.spec.intensity.describe())
        except Exception as exc:
            limit = f"{self.spec.intensity!r} (whose describe() raised {exc!r})"
        await self._stop_members(list(self._members), reason="shutdown")
        self._publish(SupervisorEscalated, child_id=m.id, limit=limit, reason=reason)
        return SupervisorEscalation(self.path, m.id, limit, reason)

    def _remove(self, m: _Member) -> None:
        self._members.remove(m)
        if m.is_worker:
            self._ctx.agents -= 1

    # ----------------------------------------------------------------------------------
    # Control requests (run inside the loop)

    async def _do_start_child(self, spec: AnySpec) -> None:
        if self.is_pool:
            raise ControlError(
                f"{self.path!r} is a pool; grow it with resize() instead of start_child()"
            )
        if not isinstance(spec, ChildSpec | SupervisorSpec | PoolSpec):
            raise ControlError(
                f"start_child needs a ChildSpec, SupervisorSpec or PoolSpec, got {spec!r}"
            )
        if any(m.id == spec.id for m in self._members):
            raise ControlError(
                f"supervisor {self.path!r} already has a child {spec.id!r}; pick another id "
                "or delete_child() it first"
            )
        self._ctx.claim_agents(_count_workers(spec), f"starting {spec.id!r}")
        m = _Member(spec)
        self._size_ring(m)
        self._members.append(m)
        await self._start_member(m)

    async def _do_terminate(self, child_id: str) -> None:
        m = self._member(child_id)
        await self._stop_member(m, reason="terminated")
        m.restart_token = None

    async def _do_restart(self, child_id: str) -> None:
        m = self._member(child_id)
        if m.alive or m.state is ChildState.BACKING_OFF:
            await self._stop_member(m, reason="terminated")
        m.restarts += 1
        self._publish(ChildRestarting, child_id=m.id, cause="restart_child")
        await self._start_member(m)

    async def _do_delete(self, child_id: str) -> None:
        m = self._member(child_id)
        await self._stop_member(m, reason="removed")
        self._remove(m)

    async def _do_resize(self, size: int) -> None:
        spec = self.spec
        if not isinstance(spec, PoolSpec):
            raise ControlError(f"{self.path!r} is not a pool; only pools can be resized")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= spec.max_size:
            raise ControlError(
                f"pool {self.path!r}: size must be an int in 0..max_size={spec.max_size} "
                f"(got {size!r}); raise PoolSpec.max_size to grow further"
            )
        current = len(self._members)
        if size > current:
            self._ctx.claim_agents(size - current, f"growing pool {self.path!r} to {size}")
            used = {m.pool_index for m in self._members}
            free = (n for n in range(1, spec.max_size + 1) if n not in used)
            new = [_Member(spec.member(n), pool_index=n) for n in sorted(free)[: size - current]]
            for m in new:
                self._size_ring(m)
            self._members = sorted([*self._members, *new], key=lambda m: m.pool_index or 0)
            for m in new:
                await self._start_member(m)
        elif size < current:
            victims = sorted(self._members, key=lambda m: m.pool_index or 0)[size:]
            await self._stop_members(victims, reason="removed")
            for m in victims:
                self._remove(m)

    def _drain(self) -> None:
        # From the moment a stop is asked for, nothing in this subtree restarts: a
        # backoff timer that fires while older siblings are still stopping is ignored.
        if self._started and not self._stop_requested:
            self._publish(SupervisorStopping, child_id=self.spec.name)
        self._stop_requested = True
        for sub in self.children_supervisors():
            sub._drain()

    async def _do_stop_all(self) -> None:
        self._stop_requested = True
        await self._stop_members(list(self._members), reason="shutdown")


def _count_workers(spec: AnySpec) -> int:
    if isinstance(spec, ChildSpec):
        return 1
    if isinstance(spec, PoolSpec):
        return spec.size
    return sum(_count_workers(c) for c in spec.children)
