"""The records of one supervisor: its members and their lifecycle, the rows it reports
(:class:`ChildInfo`), and the messages of its inbox."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import attrs
import trio

from ._child import ChildExit, ChildPhase, ProcessActor
from ._errors import ControlError
from ._plan import MemberView, Plan
from ._spec import AnySpec, ChildSpec, PoolSpec, SupervisorSpec

if TYPE_CHECKING:
    from ._runtime import Supervisor

__all__ = ["ChildInfo", "ChildState"]


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
    # The children the request acts on (``None``: any of them, as a resize may). While a
    # group restart stops its members, a request naming one of them waits for it.
    about: frozenset[str] | None = frozenset()
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


@attrs.define(eq=False)
class _GroupStop:
    """A group restart (one-for-all, rest-for-one...) stopping its live siblings in a
    task of its own: ``failed`` exited and ``plan`` said to stop ``siblings`` (in start
    order; stopped in reverse, a pool's all at once). The loop applies each stop as it is
    reported and carries the rest of the plan out once ``left`` is 0."""

    failed: _Member
    plan: Plan
    siblings: list[_Member]
    left: int
    ids: frozenset[str]  # the failed member's and its siblings'


@attrs.frozen(eq=False)
class _SiblingStopped:
    """The group stopper's report that ``member`` has ended (``was_alive``: it had to be
    stopped; else it was backing off, or ended by itself first); it goes on with the next
    member once the loop has applied this one and set ``applied``."""

    group: _GroupStop
    member: _Member
    was_alive: bool
    applied: trio.Event


_Message: TypeAlias = ChildExit | _RestartDue | _Call | _Stop | _Stopped | _SiblingStopped


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
