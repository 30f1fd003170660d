"""The supervision runtime: one trio nursery per supervisor, one actor per child.

A :class:`Supervisor` is an actor and the only owner of its state. Its children's
actors (:class:`~supervisor._child.ProcessActor` for a process, a nested supervisor's
task for a subtree) report exits to it over a memory channel (its inbox), timers post
"restart due" messages there, and run-time control requests arrive there too, so every
change to a supervisor's records happens in its own task, one message at a time, as in
OTP's ``gen_server`` based supervisor. What to do about an exit is decided by the pure
:func:`~supervisor._plan.plan`; the supervisor only carries plans out.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeAlias

import attrs
import trio

from strategies import OneForOne

from ._child import (
    ChildExit,
    ChildPhase,
    ProcessActor,
    child_env,
    spawn_actor,
)
from ._context import RuntimeContext
from ._errors import (
    ChildNotFound,
    ControlError,
    SpawnError,
    SupervisorEscalation,
)
from ._events import (
    ChildBackingOff,
    ChildRestarting,
    ChildSpawnFailed,
    ChildStopped,
    SupervisorEscalated,
    SupervisorStarted,
    SupervisorStopped,
    SupervisorStopping,
)
from ._plan import MemberView, Plan, PlanKind, cancelled_with, plan
from ._process import SpawnResourceError
from ._spec import AnySpec, ChildSpec, PoolSpec, RestartType, SupervisorSpec

__all__ = ["ChildInfo", "ChildState", "Supervisor"]

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


_RESOURCE_RETRY = (0.1, 5.0)  # first and largest delay before retrying a spawn the hub
# could not afford (out of fds, processes, memory), doubling in between


# --------------------------------------------------------------------------------------
# Messages to a supervisor's inbox (besides ChildExit, which the child actors send)


@attrs.frozen
class _RestartDue:
    token: int


@attrs.frozen
class _Stop:
    pass


@attrs.define(eq=False)
class _Call:
    fn: Callable[[], Awaitable[Any]]
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


@attrs.define(eq=False)
class _Pending:
    """What the caller of a control request waits for once the loop has started the
    stops it needs (each in a task of its own): the loop resolves it when they end."""

    waiting: int = 0
    done: trio.Event = attrs.field(factory=trio.Event)
    error: BaseException | None = None

    def resolve(self, error: BaseException | None = None) -> None:
        self.waiting -= 1
        if error is not None and self.error is None:
            self.error = error
        if self.waiting <= 0:
            self.done.set()


@attrs.define(eq=False)
class _StopOp:
    """One member stopped on request, in its own task; ``then`` runs in the loop once
    the member has ended (start it again, forget it...)."""

    member: _Member
    reason: str
    kind: str  # terminate, delete, restart, shrink
    then: Callable[[], Awaitable[None]] | None
    pending: _Pending


@attrs.frozen
class _Stopped:
    op: int


_Message: TypeAlias = ChildExit | _RestartDue | _Call | _Stop | _Stopped


class _Lifecycle(enum.Enum):
    """A member's state as its supervisor owns it (one enum, no flag pairs)."""

    ACTIVE = "active"  # it has a process or a nested supervisor: see that one's phase
    BACKING_OFF = "backing_off"  # scheduled to start again when its token falls due
    STOPPING = "stopping"  # its supervisor is stopping it
    STOPPED = "stopped"  # down; the spec is kept


@attrs.define(eq=False)
class _Member:
    spec: AnySpec
    pool_index: int | None = None
    state: _Lifecycle = _Lifecycle.STOPPED
    incarnation: int = 0
    proc: ProcessActor | None = None
    sub: Supervisor | None = None
    started_at: float | None = None
    restarts: int = 0
    attempt: int = 0
    resource_retries: int = 0  # spawns in a row the hub could not afford
    token: int | None = None  # which scheduled restart it waits for (BACKING_OFF only)
    stop_op: int | None = None  # the request stopping it in a task of its own (STOPPING)
    restart_cause: str | None = None
    last_exit: str | None = None
    ring: deque[tuple[float, str]] = attrs.field(factory=lambda: deque(maxlen=1000))

    def __attrs_post_init__(self) -> None:
        if isinstance(self.spec, ChildSpec):
            self.ring = deque(maxlen=self.spec.output.ring_lines)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def is_worker(self) -> bool:
        return isinstance(self.spec, ChildSpec)

    @property
    def alive(self) -> bool:
        """Its process or nested supervisor has not ended yet."""
        if self.state not in (_Lifecycle.ACTIVE, _Lifecycle.STOPPING):
            return False
        if self.proc is not None:
            return not self.proc.done
        return self.sub is not None and not self.sub.ended

    def child_state(self) -> ChildState:
        if self.state is not _Lifecycle.ACTIVE:
            return ChildState(self.state.value)
        if self.proc is not None:
            return _PHASE_STATE[self.proc.phase]
        if self.sub is not None and not self.sub.ended:
            return ChildState.RUNNING if self.sub.serving else ChildState.STARTING
        return ChildState.STOPPED  # failed to start; its supervisor will decide

    def view(self) -> MemberView:
        # Up: running, or waiting to restart. A member whose process ended but whose exit
        # its supervisor has not handled yet is down: a sibling's group restart leaves it
        # to its own exit report, which then restarts it by policy (and counts).
        # A member a request is stopping is down on purpose: a sibling's group restart
        # leaves it to that request, as it leaves a terminated member down.
        up = self.state is _Lifecycle.BACKING_OFF or (self.alive and self.stop_op is None)
        return MemberView(self.id, self.spec.restart, up=up)


_PHASE_STATE = {
    ChildPhase.STARTING: ChildState.STARTING,
    ChildPhase.RUNNING: ChildState.RUNNING,
    ChildPhase.EXITED: ChildState.STOPPED,
}


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
        if isinstance(spec, PoolSpec):
            self._members = [
                _Member(pool_member(spec, n), pool_index=n) for n in range(1, spec.size + 1)
            ]
        else:
            self._members = [_Member(child) for child in spec.children]
        # The members by id, kept beside the ordered list: an exit, a restart and a
        # control request each find their member without a scan (a pool may hold 1,000).
        self._index = {m.id: m for m in self._members}
        self._due: dict[int, list[_Member]] = {}  # token -> the group waiting for it
        self._send, self._inbox = trio.open_memory_channel[_Message](math.inf)
        self._nursery: trio.Nursery | None = None
        self._history: tuple[float, ...] = ()
        self._next_token = 0
        self._ops: dict[int, _StopOp] = {}  # stops on request in flight, by op number
        self._stopped = trio.Event()
        # A latch, not a record: set once by stop() (from any task) so that nothing in
        # the subtree restarts from that moment on; only this task acts on it.
        self._stop_requested = False
        self._started = False
        self.serving = False
        """The children were started and the supervisor is handling its inbox."""
        self.ended = False
        """The supervisor has stopped every child and ended."""

    # ----------------------------------------------------------------------------------
    # Public control API

    @property
    def is_pool(self) -> bool:
        """Whether this supervisor runs a :class:`PoolSpec`."""
        return isinstance(self.spec, PoolSpec)

    def which_children(self) -> list[ChildInfo]:
        """The children in start order, with state, pid, restarts and uptime."""
        now = trio.current_time()
        rows = []
        for m in self._members:
            state = m.child_state()
            active = state in (ChildState.STARTING, ChildState.RUNNING)
            rows.append(
                ChildInfo(
                    id=m.id,
                    kind="worker" if m.is_worker else "supervisor",
                    state=state,
                    pid=m.proc.pid if m.proc is not None and not m.proc.done else None,
                    restarts=m.restarts,
                    uptime=now - m.started_at if active and m.started_at is not None else None,
                    agent_type=m.spec.agent_type if isinstance(m.spec, ChildSpec) else None,
                    last_exit=m.last_exit,
                )
            )
        return rows

    def count_children(self) -> dict[str, int]:
        """Counts like OTP's ``count_children``: specs, active, workers, supervisors."""
        return {
            "specs": len(self._members),
            "active": sum(
                m.child_state() in (ChildState.STARTING, ChildState.RUNNING) for m in self._members
            ),
            "workers": sum(m.is_worker for m in self._members),
            "supervisors": sum(not m.is_worker for m in self._members),
        }

    def children_supervisors(self) -> list[Supervisor]:
        """The running nested supervisors, in start order."""
        return [m.sub for m in self._members if m.sub is not None and not m.sub.ended]

    def child_specs(self) -> list[AnySpec]:
        """The specs of the children, in start order (those started later included)."""
        return [m.spec for m in self._members]

    def logs(self, child_id: str, lines: int | None = None) -> list[str]:
        """The last ``lines`` captured output lines of a child (``[stderr]`` marks stderr)."""
        return [text for _, text in self.timed_logs(child_id, lines)]

    def timed_logs(self, child_id: str, lines: int | None = None) -> list[tuple[float, str]]:
        """Like :meth:`logs`, each line with the wall-clock time the hub read it."""
        ring = list(self._member(child_id).ring)
        return ring if lines is None else ring[-lines:] if lines > 0 else []

    async def start_child(self, spec: ChildSpec | SupervisorSpec | PoolSpec) -> None:
        """Add a child after the others and start it (OTP ``start_child``)."""
        _check_spec_type(spec)
        await self._call(lambda: self._do_start_child(spec))

    async def terminate_child(self, child_id: str) -> None:
        """Stop a child; it stays stopped until restarted, and a temporary child is
        forgotten (OTP). A group restart it was waiting for is called off: the siblings
        that would have restarted with it stay down too."""
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

        Safe to call more than once, from several tasks, and before :meth:`serve` has
        started (``serve`` then starts nothing and returns); returns when the
        supervisor has ended (at once if it never started).
        """
        if self.ended:
            return
        self._drain()
        if not self._started:
            return  # serve() has not started: it will start nothing
        self._send.send_nowait(_Stop())
        with trio.CancelScope(shield=True):
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
        if self._started:
            raise ControlError(f"supervisor {self.path!r} is already serving")
        workers = sum(m.is_worker for m in self._members)
        self._ctx.claim_agents(workers, f"starting supervisor {self.path!r}")
        self._started = True
        outcome: SupervisorEscalation | None = None
        owns_reserve = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if not self._ctx.stalls.running:  # the first supervisor of the hub runs it
                    self._ctx.stalls.running = True
                    nursery.start_soon(self._ctx.stalls.run)
                    reserve = getattr(self._ctx.backend, "reserve", None)
                    if reserve is not None and not reserve.active:
                        reserve.open()
                        owns_reserve = reserve
                for m in list(self._members):
                    if self._stop_requested:
                        break
                    await self._start_member(m)
                self._publish(SupervisorStarted, child_id=self.spec.name)
                self.serving = True
                task_status.started(self)
                if not self._stop_requested:
                    outcome = await self._loop()
                # Stop the children while their actors still run, so each stops gracefully.
                await self._stop_members(list(self._members), reason="shutdown")
                nursery.cancel_scope.cancel()
        finally:
            # Reached on cancellation and errors too: nothing may outlive the supervisor.
            with trio.CancelScope(shield=True):
                await self._stop_members(list(self._members), reason="shutdown")
            self.serving = False
            self.ended = True
            self._ctx.count_agents(-sum(m.is_worker for m in self._members))
            self._fail_pending_calls()
            self._end_stop_ops()
            if owns_reserve is not None:
                owns_reserve.close()
            self._stopped.set()
            self._publish(SupervisorStopped, child_id=self.spec.name)
        return outcome

    async def _loop(self) -> SupervisorEscalation | None:
        while True:
            msg = await self._inbox.receive()
            if isinstance(msg, _Stop):
                return None
            if isinstance(msg, _Call):
                await self._run_call(msg)
                if self._stop_requested:
                    return None
            elif isinstance(msg, ChildExit):
                outcome = await self._on_exit(msg)
                if outcome is not None:
                    return outcome
            elif isinstance(msg, _Stopped):
                await self._on_stopped(msg.op)
            else:
                await self._on_restart_due(msg.token)

    async def _run_call(self, call: _Call) -> None:
        try:
            call.result = await call.fn()
        except ControlError as exc:
            call.error = exc
        except Exception as exc:
            # A request that fails for another reason is a bug somewhere, but it must not
            # take supervision down, and its caller must hear of it.
            _log.exception("%s: a control request failed", self.path)
            error = ControlError(
                f"supervisor {self.path!r}: the request failed with {type(exc).__name__}: "
                f"{exc}; the supervisor keeps running (please report this as a bug)"
            )
            error.__cause__ = exc
            call.error = error
        finally:
            call.done.set()

    def _end_stop_ops(self) -> None:
        # The supervisor ended while requests waited for stops: every member is down
        # now, which is what a terminate or delete asked for; a restart did not happen.
        for op in self._ops.values():
            error = None
            if op.kind == "restart":
                error = ControlError(
                    f"supervisor {self.path!r} ended before {op.member.id!r} was restarted"
                )
            op.pending.resolve(error)
        self._ops.clear()

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
        if self.ended or self._nursery is None:
            raise ControlError(f"supervisor {self.path!r} is not running")
        call = _Call(fn)
        self._send.send_nowait(call)
        await call.done.wait()
        if call.error is not None:
            raise call.error
        if isinstance(call.result, _Pending):
            # The loop started stops in tasks of their own and went on: wait for them
            # here, not in the loop.
            await call.result.done.wait()
            if call.result.error is not None:
                raise call.result.error
            return None
        return call.result

    def _publish(self, cls: Any, **fields: Any) -> None:
        self._ctx.bus.publish(cls(at=trio.current_time(), supervisor=self.path, **fields))

    # ----------------------------------------------------------------------------------
    # Starting children

    async def _start_member(self, m: _Member) -> None:
        assert self._nursery is not None
        m.incarnation += 1
        m.state = _Lifecycle.ACTIVE
        m.token = None
        m.proc = None
        m.sub = None
        m.started_at = trio.current_time()
        if isinstance(m.spec, ChildSpec):
            self._spawn(m, m.spec)
            return
        sub = Supervisor(m.spec, context=self._ctx, parent_path=self.path)
        m.sub = sub
        try:
            await self._nursery.start(self._sub_actor, m.id, sub, m.incarnation)
        except Exception as exc:  # e.g. max_agents reached while it was backing off
            self._failed_start(m, f"failed to start: {exc}", str(exc))

    def _spawn(self, m: _Member, spec: ChildSpec) -> None:
        assert self._nursery is not None
        env = child_env(spec, path=self.path, hub_id=self._ctx.hub_id, extra=self._ctx.env)
        try:
            m.proc = spawn_actor(
                spec,
                env=env,
                incarnation=m.incarnation,
                path=self.path,
                context=self._ctx,
                ring=m.ring,
                report=self._send.send_nowait,
            )
        except SpawnResourceError as exc:
            self._retry_spawn(m, str(exc))
            return
        except SpawnError as exc:
            self._failed_start(m, f"failed to spawn: {exc}", str(exc))
            return
        m.resource_retries = 0
        self._nursery.start_soon(m.proc.run)

    def _retry_spawn(self, m: _Member, error: str) -> None:
        """The hub could not afford the spawn (out of fds, processes, memory): the
        child did nothing wrong, so this is no crash and costs no restart intensity.
        Start it again after a backoff that grows while the shortage lasts."""
        assert self._nursery is not None
        m.last_exit = error
        self._publish(ChildSpawnFailed, child_id=m.id, error=error)
        first, cap = _RESOURCE_RETRY
        delay = min(cap, first * 2 ** min(m.resource_retries, 16))
        m.resource_retries += 1
        _log.error(
            "%s/%s: the hub is short of resources, not the child's fault: %s; trying again "
            "in %.1fs (attempt %d, not counted as a restart)",
            self.path,
            m.id,
            error,
            delay,
            m.resource_retries,
        )
        self._next_token += 1
        token = self._next_token
        self._due[token] = [m]
        m.state = _Lifecycle.BACKING_OFF
        m.token = token
        m.restart_cause = None
        self._publish(
            ChildBackingOff,
            child_id=m.id,
            delay=delay,
            attempt=m.resource_retries,
            restarting=(m.id,),
        )
        self._nursery.start_soon(self._timer, delay, token)

    def _failed_start(self, m: _Member, reason: str, error: str) -> None:
        """A start that failed is a crash at uptime 0: it goes through the policy."""
        m.last_exit = error
        self._publish(ChildSpawnFailed, child_id=m.id, error=error)
        self._send.send_nowait(ChildExit(m.id, m.incarnation, reason, normal=False))

    async def _sub_actor(
        self,
        member_id: str,
        sub: Supervisor,
        incarnation: int,
        *,
        task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        started = trio.current_time()
        outcome = await sub._serve(task_status=task_status)
        reason = f"escalated: {outcome}" if outcome else "stopped"
        uptime = trio.current_time() - started
        self._send.send_nowait(
            ChildExit(member_id, incarnation, reason, outcome is None, uptime=uptime)
        )

    # ----------------------------------------------------------------------------------
    # Stopping children

    async def _stop_member(self, m: _Member, reason: str) -> None:
        was_active = m.alive or m.state is _Lifecycle.BACKING_OFF
        m.token = None
        m.stop_op = None  # a request stopping it finds it done (see _on_stopped)
        if m.alive:
            m.state = _Lifecycle.STOPPING
            if m.sub is not None:
                await m.sub.stop()
            elif m.proc is not None:
                await m.proc.stop()
                m.last_exit = m.proc.exit_reason
        m.state = _Lifecycle.STOPPED
        m.started_at = None
        if was_active or reason in ("terminated", "removed"):
            self._publish(ChildStopped, child_id=m.id, reason=reason)

    def _stop_for_request(
        self,
        m: _Member,
        reason: str,
        kind: str,
        pending: _Pending,
        then: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Stop the live member ``m`` in a task of its own, so the loop goes on handling
        exits, restarts and requests meanwhile (a graceful stop can take its whole
        ``shutdown``); once it has ended, the loop marks it stopped, runs ``then`` and
        resolves ``pending``."""
        assert self._nursery is not None and m.alive
        self._next_token += 1
        op = self._next_token
        m.state = _Lifecycle.STOPPING
        m.token = None
        m.stop_op = op
        pending.waiting += 1
        self._ops[op] = _StopOp(m, reason, kind, then, pending)
        self._nursery.start_soon(self._stopper, m, op)

    async def _stopper(self, m: _Member, op: int) -> None:
        if m.sub is not None:
            await m.sub.stop()
        elif m.proc is not None:
            await m.proc.stop()
        self._send.send_nowait(_Stopped(op))

    async def _on_stopped(self, op_id: int) -> None:
        op = self._ops.pop(op_id, None)
        if op is None:
            return
        m = op.member
        if m.stop_op != op_id:
            op.pending.resolve()  # stopped meanwhile by another path (an escalation)
            return
        m.stop_op = None
        if m.proc is not None:
            m.last_exit = m.proc.exit_reason
        m.state = _Lifecycle.STOPPED
        m.started_at = None
        self._publish(ChildStopped, child_id=m.id, reason=op.reason)
        error: BaseException | None = None
        if op.then is not None:
            try:
                await op.then()
            except ControlError as exc:
                error = exc
        op.pending.resolve(error)

    def _busy_stopping(self, m: _Member) -> ControlError:
        return ControlError(
            f"child {m.id!r} of {self.path!r} is being stopped by an earlier request; "
            "try again once it has stopped"
        )

    async def _stop_members(self, members: Sequence[_Member], reason: str) -> None:
        """Stop in reverse start order; a pool's members all at once."""
        if self.is_pool:
            async with trio.open_nursery() as nursery:
                for m in members:
                    nursery.start_soon(self._stop_member, m, reason)
        else:
            for m in reversed(members):
                await self._stop_member(m, reason)

    # ----------------------------------------------------------------------------------
    # Carrying out restart plans

    def _find(self, child_id: str) -> _Member | None:
        return self._index.get(child_id)

    def _lookup(self, ids: Sequence[str]) -> list[_Member]:
        """The members of ``ids``, in that order (a plan lists them in start order)."""
        return [m for i in ids if (m := self._index.get(i)) is not None]

    def _member(self, child_id: str) -> _Member:
        m = self._find(child_id)
        if m is None:
            raise ChildNotFound(
                f"supervisor {self.path!r} has no child {child_id!r}; its children are "
                f"{[m.id for m in self._members]!r}"
            )
        return m

    async def _on_exit(self, msg: ChildExit) -> SupervisorEscalation | None:
        m = self._find(msg.member_id)
        if m is None or m.incarnation != msg.incarnation:
            return None  # a report from an incarnation already replaced or forgotten
        if msg.expected or m.state is not _Lifecycle.ACTIVE:
            # We stopped it, or it died while a sibling's restart was stopping it and
            # that restart already covers it (OTP drops the EXIT of a child it is
            # terminating; counting it would cost a second restart).
            return None
        m.last_exit = msg.reason
        m.started_at = None
        if self._stop_requested:
            m.state = _Lifecycle.STOPPED
            self._publish(ChildStopped, child_id=m.id, reason="shutdown")
            return None
        if type(self.spec.strategy) is OneForOne:
            # OneForOne restarts the failed member alone, whatever its siblings are: the
            # plan is the same with the failed member only, and an exit in a pool of N
            # costs no N views.
            members = [m.view()]
        else:
            members = [x.view() for x in self._members]
        decision = plan(
            m.id,
            normal=msg.normal,
            reason=msg.reason,
            uptime=msg.uptime,
            attempt=m.attempt,
            members=members,
            strategy=self.spec.strategy,
            intensity=self.spec.intensity,
            backoff=self.spec.backoff,
            history=self._history,
            now=trio.current_time(),
            rng=self._ctx.rng,
        )
        self._history = decision.history
        m.attempt = decision.attempt
        return await self._carry_out(m, decision)

    async def _carry_out(self, m: _Member, p: Plan) -> SupervisorEscalation | None:
        if p.kind is PlanKind.ESCALATE:
            return await self._escalate(m, p.reason)
        if p.kind is not PlanKind.RESTART:
            m.state = _Lifecycle.STOPPED
            self._publish(ChildStopped, child_id=m.id, reason="exited")
            if p.kind is PlanKind.REMOVE:
                self._remove(m)
            return None
        m.state = _Lifecycle.STOPPED
        await self._stop_members(self._lookup(p.stop), "restarting")
        group = self._lookup(p.restart)
        if self._stop_requested:
            # A stop was asked for while the siblings were stopping: the restart is void,
            # and every child of the group stays down.
            for x in group:
                self._publish(ChildStopped, child_id=x.id, reason="shutdown")
            return None
        for x in self._lookup(p.remove):
            self._remove(x)
        self._next_token += 1
        token = self._next_token
        self._due[token] = group
        for x in group:
            x.state = _Lifecycle.BACKING_OFF
            x.token = token
            x.restart_cause = m.id
        if p.delay > 0:
            self._publish(
                ChildBackingOff,
                child_id=m.id,
                delay=p.delay,
                attempt=p.attempt,
                restarting=tuple(x.id for x in group),
            )
            assert self._nursery is not None
            self._nursery.start_soon(self._timer, p.delay, token)
        else:
            await self._on_restart_due(token)
        return None

    async def _timer(self, delay: float, token: int) -> None:
        await trio.sleep(delay)
        self._send.send_nowait(_RestartDue(token))

    async def _on_restart_due(self, token: int) -> None:
        for m in self._due.pop(token, ()):
            if m.token != token or self._stop_requested or self._index.get(m.id) is not m:
                continue  # stopped, removed or re-scheduled since (or while an earlier start ran)
            if m.resource_retries == 0:  # a retry of a spawn the hub could not afford is none
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
        if self._index.get(m.id) is m:
            del self._index[m.id]
        if m.is_worker:
            self._ctx.count_agents(-1)

    # ----------------------------------------------------------------------------------
    # Control requests (run inside the loop)

    async def _do_start_child(self, spec: AnySpec) -> None:
        if self.is_pool:
            raise ControlError(
                f"{self.path!r} is a pool; grow it with resize() instead of start_child()"
            )
        if self._find(spec.id) is not None:
            raise ControlError(
                f"supervisor {self.path!r} already has a child {spec.id!r}; pick another id "
                "or delete_child() it first"
            )
        # A worker is counted here; a nested supervisor counts its own when it starts.
        self._ctx.check_agents(_count_workers(spec), f"starting {spec.id!r}")
        m = _Member(spec)
        if m.is_worker:
            self._ctx.count_agents(1)
        self._members.append(m)
        self._index[m.id] = m
        await self._start_member(m)

    async def _stop_for_good(self, m: _Member, reason: str) -> None:
        """Stop ``m`` on request, and call off the group restart it was waiting for."""
        pending = {x.id: x.token for x in self._members if x.state is _Lifecycle.BACKING_OFF}
        await self._stop_member(m, reason)
        for other in cancelled_with(m.id, pending):
            x = self._find(other)
            if x is not None and x.state is _Lifecycle.BACKING_OFF:
                await self._stop_member(x, "terminated")

    async def _do_terminate(self, child_id: str) -> _Pending | None:
        m = self._member(child_id)
        if m.stop_op is not None:
            op = self._ops[m.stop_op]
            if op.kind not in ("terminate", "delete"):
                raise self._busy_stopping(m)
            return op.pending  # it is being stopped for good already: wait for that
        if m.alive:
            pending = _Pending()

            async def forget() -> None:
                if m.spec.restart is RestartType.TEMPORARY and self._index.get(m.id) is m:
                    self._remove(m)  # OTP forgets a temporary child however it ends

            self._stop_for_request(m, "terminated", "terminate", pending, forget)
            return pending
        await self._stop_for_good(m, "terminated")
        if m.spec.restart is RestartType.TEMPORARY:
            self._remove(m)  # OTP forgets a temporary child however it ends
        return None

    async def _do_restart(self, child_id: str) -> _Pending | None:
        m = self._member(child_id)
        if m.stop_op is not None:
            raise self._busy_stopping(m)
        if m.alive:
            pending = _Pending()

            async def start() -> None:
                if self._index.get(m.id) is m and not self._stop_requested:
                    m.restarts += 1
                    self._publish(ChildRestarting, child_id=m.id, cause="restart_child")
                    await self._start_member(m)

            self._stop_for_request(m, "terminated", "restart", pending, start)
            return pending
        if m.state is _Lifecycle.BACKING_OFF:
            await self._stop_member(m, reason="terminated")
        m.restarts += 1
        self._publish(ChildRestarting, child_id=m.id, cause="restart_child")
        await self._start_member(m)
        return None

    async def _do_delete(self, child_id: str) -> _Pending | None:
        m = self._member(child_id)
        if m.stop_op is not None:
            raise self._busy_stopping(m)
        if m.alive:
            pending = _Pending()
            self._stop_for_request(m, "removed", "delete", pending, self._forget(m))
            return pending
        await self._stop_for_good(m, "removed")
        self._remove(m)
        return None

    async def _do_resize(self, size: int) -> _Pending | None:
        spec = self.spec
        if not isinstance(spec, PoolSpec):
            raise ControlError(f"{self.path!r} is not a pool; only pools can be resized")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= spec.max_size:
            raise ControlError(
                f"pool {self.path!r}: size must be an int in 0..max_size={spec.max_size} "
                f"(got {size!r}); raise PoolSpec.max_size to grow further"
            )
        # Members a shrink or delete is still stopping are on their way out.
        staying = [m for m in self._members if not self._leaving(m)]
        current = len(staying)
        if size > current:
            used = {m.pool_index for m in self._members}
            free = [n for n in range(1, spec.max_size + 1) if n not in used]
            if len(free) < size - current:
                raise ControlError(
                    f"pool {self.path!r}: members are still stopping from an earlier "
                    f"shrink, so there is room for {current + len(free)} now; try again "
                    "once they have stopped"
                )
            self._ctx.claim_agents(size - current, f"growing pool {self.path!r} to {size}")
            numbers = free[: size - current]
            new = [_Member(pool_member(spec, n), pool_index=n) for n in numbers]
            self._members = sorted([*self._members, *new], key=lambda m: m.pool_index or 0)
            self._index.update((m.id, m) for m in new)
            for m in new:
                await self._start_member(m)
        elif size < current:
            victims = sorted(staying, key=lambda m: m.pool_index or 0)[size:]
            for m in victims:
                if m.stop_op is not None:
                    raise self._busy_stopping(m)
            pending = _Pending()
            for m in victims:
                if m.alive:  # stopped in tasks of their own, all at once, then forgotten
                    self._stop_for_request(m, "removed", "shrink", pending, self._forget(m))
                else:
                    await self._stop_member(m, reason="removed")
                    self._remove(m)
            return pending if pending.waiting else None
        return None

    def _leaving(self, m: _Member) -> bool:
        return m.stop_op is not None and self._ops[m.stop_op].kind in ("shrink", "delete")

    def _forget(self, m: _Member) -> Callable[[], Awaitable[None]]:
        async def forget() -> None:
            if self._index.get(m.id) is m:
                self._remove(m)

        return forget

    def _drain(self) -> None:
        # From the moment a stop is asked for, nothing in this subtree restarts: a
        # backoff timer that fires while older siblings are still stopping is ignored.
        if self._started and not self._stop_requested:
            self._publish(SupervisorStopping, child_id=self.spec.name)
        self._stop_requested = True
        for sub in self.children_supervisors():
            sub._drain()


_POOL_MEMBERS: dict[tuple[int, int], tuple[PoolSpec, ChildSpec]] = {}


def pool_member(pool: PoolSpec, n: int) -> ChildSpec:
    """``pool.member(n)``, built once per pool and number: specs are frozen, and each
    build is an ``attrs.evolve`` with every validator run again (a pool restarts with its
    supervisor, and ``supervisor.testing`` reads the members of every pool often)."""
    key = (id(pool), n)
    hit = _POOL_MEMBERS.get(key)
    if hit is not None and hit[0] is pool:
        return hit[1]
    if len(_POOL_MEMBERS) >= 4096:
        _POOL_MEMBERS.clear()
    member = pool.member(n)
    _POOL_MEMBERS[key] = (pool, member)  # holding the pool keeps its id from being reused
    return member


def _check_spec_type(spec: object) -> None:
    if not isinstance(spec, ChildSpec | SupervisorSpec | PoolSpec):
        raise ControlError(
            f"start_child needs a ChildSpec, SupervisorSpec or PoolSpec, got {spec!r}; "
            "build one, e.g. ChildSpec(id='worker-9', argv=[...])"
        )


def _count_workers(spec: AnySpec) -> int:
    if isinstance(spec, ChildSpec):
        return 1
    if isinstance(spec, PoolSpec):
        return spec.size
    return sum(_count_workers(c) for c in spec.children)
