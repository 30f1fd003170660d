"""The base of :class:`~supervisor._runtime.Supervisor`: its records, and starting and
stopping its children (a process actor or a nested supervisor each).

Every method here runs in the supervisor's own task (its loop, or a task the loop
started): see :mod:`supervisor._runtime` for the actor and its rules.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from ._child import ChildExit, child_env, spawn_actor
from ._context import RuntimeContext
from ._errors import ChildNotFound, SpawnError
from ._events import (
    ChildBackingOff,
    ChildSpawnFailed,
    ChildStopped,
    SupervisorStopping,
)
from ._members import (
    _GroupStop,
    _Lifecycle,
    _Member,
    _Message,
    _Pending,
    _RestartDue,
    _SiblingStopped,
    _StopOp,
    _Stopped,
    pool_member,
)
from ._plan import Plan
from ._process import SpawnResourceError
from ._spec import ChildSpec, PoolSpec, SupervisorSpec

if TYPE_CHECKING:
    from ._runtime import Supervisor

__all__ = ["SupervisorBase"]

_log = logging.getLogger("hubvisor")

_RESOURCE_RETRY = (0.1, 5.0)  # first and largest delay before retrying a spawn the hub
# could not afford (out of fds, processes, memory), doubling in between


class SupervisorBase:
    """A supervisor's records and the start and stop of its members (see
    :class:`~supervisor._runtime.Supervisor`, the only subclass)."""

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
        self._group: _GroupStop | None = None  # a group restart stopping its siblings
        # Messages that wait for that group restart to be carried out (exits, requests
        # naming its members), in arrival order.
        self._held: deque[_Message] = deque()
        self._stopped = trio.Event()
        # A latch, not a record: set once by stop() (from any task) so that nothing in
        # the subtree restarts from that moment on; only this task acts on it.
        self._stop_requested = False
        self._started = False
        self.serving = False
        """The children were started and the supervisor is handling its inbox."""
        self.ended = False
        """The supervisor has stopped every child and ended."""

    @property
    def is_pool(self) -> bool:
        """Whether this supervisor runs a :class:`PoolSpec`."""
        return isinstance(self.spec, PoolSpec)

    def children_supervisors(self) -> list[Supervisor]:
        """The running nested supervisors, in start order."""
        return [m.sub for m in self._members if m.sub is not None and not m.sub.ended]

    def _publish(self, cls: Any, **fields: Any) -> None:
        self._ctx.bus.publish(cls(at=trio.current_time(), supervisor=self.path, **fields))

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

    def _remove(self, m: _Member) -> None:
        self._members.remove(m)
        if self._index.get(m.id) is m:
            del self._index[m.id]
        if m.is_worker:
            self._ctx.count_agents(-1)

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
        sub = self._nested(m.spec)
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

    async def _timer(self, delay: float, token: int) -> None:
        await trio.sleep(delay)
        self._send.send_nowait(_RestartDue(token))

    async def _stop_member(self, m: _Member, reason: str) -> None:
        was_active = m.alive or m.state is _Lifecycle.BACKING_OFF
        m.token = None
        m.stop_op = None  # a request stopping it finds it done (see _on_stopped)
        if m.alive:
            m.state = _Lifecycle.STOPPING
            await self._halt(m)
            if m.proc is not None:
                m.last_exit = m.proc.exit_reason
        m.state = _Lifecycle.STOPPED
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
        await self._halt(m)
        self._send.send_nowait(_Stopped(op))

    @staticmethod
    async def _halt(m: _Member) -> None:
        """Stop ``m``'s process or nested supervisor; return once it has ended."""
        if m.sub is not None:
            await m.sub.stop()
        elif m.proc is not None:
            await m.proc.stop()

    def _stop_group(self, failed: _Member, p: Plan, siblings: list[_Member]) -> None:
        """Stop the siblings of a group restart in a task of its own, so the loop goes on
        meanwhile (a stubborn sibling's graceful stop can take its whole ``shutdown``):
        timers restart other members on time and requests about other members run.
        The order stays OTP's: the task stops them in reverse start order (a pool's all
        at once), each once the loop has applied the one before (so the events come in
        the order of an inline stop); the loop restarts the group once all have ended."""
        assert self._nursery is not None and self._group is None
        ids = frozenset([failed.id, *(x.id for x in siblings)])
        group = _GroupStop(failed, p, siblings, len(siblings), ids)
        for x in siblings:
            x.token = None  # the backoff it waited for no longer starts it
            if x.alive:
                x.state = _Lifecycle.STOPPING
        self._group = group
        self._nursery.start_soon(self._group_stopper, group)

    async def _group_stopper(self, group: _GroupStop) -> None:
        # Reads the members, changes nothing: the loop applies each report.
        async def stop(x: _Member) -> None:
            was_alive = x.alive
            if was_alive:
                await self._halt(x)
            applied = trio.Event()
            self._send.send_nowait(_SiblingStopped(group, x, was_alive, applied))
            await applied.wait()

        if self.is_pool:
            async with trio.open_nursery() as nursery:
                for x in group.siblings:
                    nursery.start_soon(stop, x)
        else:
            for x in reversed(group.siblings):
                await stop(x)

    def _on_sibling_stopped(self, msg: _SiblingStopped) -> _GroupStop | None:
        """Mark a sibling of the group restart stopped; the group once it was the last."""
        x, group = msg.member, msg.group
        if group is not self._group:  # not the group under way (the loop ends after it)
            msg.applied.set()
            return None
        was_active = msg.was_alive or x.state is _Lifecycle.BACKING_OFF
        if msg.was_alive and x.proc is not None:
            x.last_exit = x.proc.exit_reason
        x.state = _Lifecycle.STOPPED
        x.started_at = None
        x.token = None
        if was_active:
            self._publish(ChildStopped, child_id=x.id, reason="restarting")
        msg.applied.set()
        group.left -= 1
        if group.left > 0:
            return None
        self._group = None
        return group

    def _drain(self) -> None:
        # From the moment a stop is asked for, nothing in this subtree restarts: a
        # backoff timer that fires while older siblings are still stopping is ignored.
        if self._started and not self._stop_requested:
            self._publish(SupervisorStopping, child_id=self.spec.name)
        self._stop_requested = True
        for sub in self.children_supervisors():
            sub._drain()

    def _nested(self, spec: SupervisorSpec | PoolSpec) -> Supervisor:
        """A nested supervisor for ``spec`` under this one (the subclass builds it)."""
        raise NotImplementedError
