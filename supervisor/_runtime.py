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

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from strategies import OneForOne

from ._child import ChildExit
from ._errors import ControlError, SupervisorEscalation
from ._events import (
    ChildBackingOff,
    ChildRestarting,
    ChildStopped,
    SupervisorEscalated,
    SupervisorStarted,
    SupervisorStopped,
)
from ._members import (
    ChildInfo,
    ChildState,
    _Call,
    _check_spec_type,
    _Lifecycle,
    _Member,
    _Message,
    _Pending,
    _SiblingStopped,
    _Stop,
    _Stopped,
)
from ._plan import Plan, PlanKind, plan
from ._requests import SupervisorRequests
from ._spec import AnySpec, ChildSpec, PoolSpec, SupervisorSpec

__all__ = ["ChildInfo", "ChildState", "Supervisor"]

_log = logging.getLogger("hubvisor")


class Supervisor(SupervisorRequests):
    """A running supervisor; get one from :class:`~supervisor.Hub` or ``nursery.start``.

    Example::

        async with trio.open_nursery() as nursery:
            sup = await nursery.start(Supervisor(spec).serve)
            print(sup.which_children())
            await sup.stop()
    """

    # ----------------------------------------------------------------------------------
    # Public control API

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
        await self._call(lambda: self._do_start_child(spec), about=frozenset([spec.id]))

    async def terminate_child(self, child_id: str) -> None:
        """Stop a child; it stays stopped until restarted, and a temporary child is
        forgotten (OTP). A group restart it was waiting for is called off: the siblings
        that would have restarted with it stay down too."""
        await self._call(lambda: self._do_terminate(child_id), about=frozenset([child_id]))

    async def restart_child(self, child_id: str) -> None:
        """Start a stopped child, or stop and start a running one (no intensity cost)."""
        await self._call(lambda: self._do_restart(child_id), about=frozenset([child_id]))

    async def delete_child(self, child_id: str) -> None:
        """Stop a child if it runs and forget its spec."""
        await self._call(lambda: self._do_delete(child_id), about=frozenset([child_id]))

    async def resize(self, size: int) -> None:
        """Grow or shrink a pool to ``size`` members (stopping the highest-numbered)."""
        await self._call(lambda: self._do_resize(size), about=None)

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
        stopping = False
        while True:
            if stopping and self._group is None:
                # A group restart under way when the stop came has ended (void): the
                # exits that waited for it are handled as the stop's, then the loop ends.
                held, self._held = self._held, deque()
                for msg in held:
                    if isinstance(msg, ChildExit):
                        await self._on_exit(msg)
                    else:
                        self._held.append(msg)  # a call: failed once the loop has ended
                return None
            msg = await self._next()
            if isinstance(msg, _Stop):
                stopping = True
            elif isinstance(msg, _SiblingStopped):
                group = self._on_sibling_stopped(msg)
                if group is not None:
                    await self._restart_group(group.failed, group.plan)
            elif self._waits(msg, stopping):
                self._held.append(msg)
            elif isinstance(msg, _Call):
                await self._run_call(msg)
                stopping = stopping or self._stop_requested
            elif isinstance(msg, ChildExit):
                outcome = await self._on_exit(msg)
                if outcome is not None:
                    return outcome
            elif isinstance(msg, _Stopped):
                await self._on_stopped(msg.op)
            else:
                await self._on_restart_due(msg.token)

    async def _next(self) -> _Message:
        """The next message: one held for a group restart that has been carried out since,
        else the inbox's."""
        if self._held and self._group is None:
            return self._held.popleft()
        return await self._inbox.receive()

    def _waits(self, msg: _Message, stopping: bool) -> bool:
        """Whether ``msg`` waits for the group restart whose siblings are stopping.

        Exits wait, as in OTP, whose supervisor takes the next exit only once a restart
        is done: a restart decided meanwhile would see the group half stopped. So do
        requests naming a member of the group (or any member, like a resize), and every
        request once the supervisor is stopping. Timers, other requests and the ends of
        stops on request do not wait.
        """
        if isinstance(msg, _Call):
            if stopping:
                return True
            group = self._group
            return group is not None and (msg.about is None or bool(msg.about & group.ids))
        return isinstance(msg, ChildExit) and self._group is not None

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

    def _fail_pending_calls(self) -> None:
        while True:
            try:
                msg = self._held.popleft() if self._held else self._inbox.receive_nowait()
            except trio.WouldBlock:
                return
            if isinstance(msg, _Call):
                msg.error = ControlError(f"supervisor {self.path!r} ended before the request ran")
                msg.done.set()

    async def _call(
        self, fn: Callable[[], Awaitable[Any]], about: frozenset[str] | None = frozenset()
    ) -> Any:
        if self.ended or self._nursery is None:
            raise ControlError(f"supervisor {self.path!r} is not running")
        call = _Call(fn, about)
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

    # ----------------------------------------------------------------------------------
    # Carrying out restart plans

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
        siblings = self._lookup(p.stop)
        if any(x.alive for x in siblings):
            self._stop_group(m, p, siblings)  # restarts the group once they have ended
            return None
        await self._stop_members(siblings, "restarting")  # backing off: nothing to wait for
        await self._restart_group(m, p)
        return None

    async def _restart_group(self, m: _Member, p: Plan) -> None:
        """The rest of a restart plan, once the siblings have stopped: forget the
        temporary ones and start the group again after the backoff."""
        group = self._lookup(p.restart)
        if self._stop_requested:
            # A stop was asked for while the siblings were stopping: the restart is void,
            # and every child of the group stays down.
            for x in group:
                self._publish(ChildStopped, child_id=x.id, reason="shutdown")
            return
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

    def _nested(self, spec: SupervisorSpec | PoolSpec) -> Supervisor:
        return Supervisor(spec, context=self._ctx, parent_path=self.path)
