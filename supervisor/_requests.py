"""Run-time control requests of a supervisor (start, terminate, restart, delete a child,
resize a pool), as its loop runs them: one message of its inbox each.

A request that must stop a live member starts the stop in a task of its own and returns
a :class:`~supervisor._members._Pending` its caller waits for, so the loop goes on
handling exits and other requests while a graceful stop takes its ``shutdown``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ._errors import ControlError
from ._events import (
    ChildRestarting,
    ChildStopped,
)
from ._members import (
    _count_workers,
    _Lifecycle,
    _Member,
    _Pending,
    pool_member,
)
from ._plan import cancelled_with
from ._spec import AnySpec, PoolSpec, RestartType
from ._supervisor_base import SupervisorBase

__all__ = ["SupervisorRequests"]


class SupervisorRequests(SupervisorBase):
    """The control requests of :class:`~supervisor._runtime.Supervisor` (run inside its
    loop)."""

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

    def _busy_stopping(self, m: _Member) -> ControlError:
        return ControlError(
            f"child {m.id!r} of {self.path!r} is being stopped by an earlier request; "
            "try again once it has stopped"
        )

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
