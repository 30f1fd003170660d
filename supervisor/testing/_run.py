"""Run a supervision spec against a crash schedule on the simulated backend.

Each run is one ``trio.run`` under ``MockClock(autojump_threshold=0)``: minutes of
backoff pass in milliseconds, and the same spec, schedule and seed give the same trace.

The production policy objects decide everything. The runner only wraps each of them in
a transparent probe that notes the question asked and the answer given (the same
object still answers), so invariant checks can see *when* a supervisor made a restart
decision, which the event stream alone does not always show (a restart with no backoff
publishes no ``backing_off`` event).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import attrs
import trio
import trio.testing

from strategies import BackoffPolicy, IntensityDecision, IntensityPolicy, RestartStrategy

from .._errors import ControlError, InvalidSupervisorSpec, SupervisorEscalation, UnknownEventKind
from .._events import Event, EventBus, event_kinds
from .._hub import Hub
from .._members import pool_member
from .._process import SpawnRequest
from .._spec import AnySpec, ChildSpec, PoolSpec, SupervisorSpec
from ..work import WorkQueue, WorkService
from ..work._controls import DEFAULT_CANCEL_GRACE
from ._errors import InvalidSchedule
from ._schedule import Crash, Exit, Hang, Kill, Schedule, Submit
from ._sim import SimBehaviour, SimulatedProcessBackend, SimWork, WireRecord, sim_clock

__all__ = [
    "BackoffChosen",
    "CrashApplied",
    "IntensityRecorded",
    "ItemState",
    "Record",
    "Snapshot",
    "StrategyChosen",
    "SubmitApplied",
    "SubmitRefused",
    "Trace",
    "WorkSnapshot",
    "run_schedule",
]


# --------------------------------------------------------------------------------------
# Probe records: what the policy objects were asked, interleaved with the events


@attrs.frozen(kw_only=True)
class IntensityRecorded:
    """Supervisor ``supervisor`` counted a restart at ``at``; ``allowed`` is the answer."""

    at: float
    supervisor: str
    allowed: bool
    kind: str = attrs.field(init=False, default="probe:intensity")


@attrs.frozen(kw_only=True)
class BackoffChosen:
    """The backoff policy chose ``delay`` for restart number ``attempt``.

    ``reset`` is the answer of ``resets_after(uptime)`` just before (``None`` if the
    runtime did not ask).
    """

    at: float
    supervisor: str
    attempt: int
    delay: float
    uptime: float | None
    reset: bool | None
    kind: str = attrs.field(init=False, default="probe:backoff")


@attrs.frozen(kw_only=True)
class StrategyChosen:
    """The restart strategy chose ``result`` when ``failed`` failed among ``children``."""

    at: float
    supervisor: str
    failed: str
    children: tuple[str, ...]
    result: tuple[str, ...]
    kind: str = attrs.field(init=False, default="probe:strategy")


@attrs.frozen(kw_only=True)
class CrashApplied:
    """The runner applied (or, with ``pid=None``, could not apply) a scheduled crash."""

    at: float
    crash: Crash
    pid: int | None
    kind: str = attrs.field(init=False, default="crash")


@attrs.frozen(kw_only=True)
class Snapshot:
    """The tree at a quiet moment (every task blocked) after a schedule step.

    Attributes:
        live: pids of simulated processes that have not ended.
        tree: ``(supervisor, child id, state, pid)`` for every child of every supervisor.
        registry: ``{agent id: pid}`` from the hub's registry, if the hub has one.
    """

    at: float
    live: tuple[int, ...]
    tree: tuple[tuple[str, str, str, int | None], ...]
    registry: Mapping[str, int | None] | None
    kind: str = attrs.field(init=False, default="snapshot")


@attrs.frozen(kw_only=True)
class SubmitApplied:
    """The runner submitted ``submit``; the work service named the item ``item_id`` and
    gave it ``max_deliveries`` (the service's default when the submission has none)."""

    at: float
    submit: Submit
    item_id: str
    max_deliveries: int
    created: bool = True
    """False when ``submit.key`` named a kept item: the service answered it, made none."""
    kind: str = attrs.field(init=False, default="submit")


@attrs.frozen(kw_only=True)
class SubmitRefused:
    """The work service refused ``submit`` (a ``ControlError``, whose text is ``error``):
    no item was made; the run goes on (issue 21: e.g. an ``after`` a queue cannot keep)."""

    at: float
    submit: Submit
    error: str
    kind: str = attrs.field(init=False, default="submit_refused")


@attrs.frozen(kw_only=True)
class ItemState:
    """One work item as the work service's queue holds it (see :class:`WorkSnapshot`)."""

    id: str
    agent_type: str
    status: str
    attempt: int
    deliveries: int
    max_deliveries: int
    agent: str | None
    result: object = None
    delayed: bool = False  # issue 21: queued, waiting for its time (a delay, a retry delay)
    blocked: bool = False  # issue 21: queued, waiting for its dependencies (``waiting_on``)


@attrs.frozen(kw_only=True)
class WorkSnapshot:
    """Every work item in the queue at a quiet moment (runs with work only).

    One is taken after each schedule step, one just before the tree is stopped
    (``final=False``, ``quiesced=True``: the schedule has played out and the tree had
    ``settle`` seconds) and one after it stopped (``final=True``).
    """

    at: float
    items: tuple[ItemState, ...]
    quiesced: bool = False
    final: bool = False
    kind: str = attrs.field(init=False, default="work")


Record: TypeAlias = (
    Event
    | IntensityRecorded
    | BackoffChosen
    | StrategyChosen
    | CrashApplied
    | Snapshot
    | SubmitApplied
    | SubmitRefused
    | WireRecord
    | WorkSnapshot
)


@attrs.define(eq=False)
class _Log:
    records: list[Record] = attrs.field(factory=list)

    def add(self, record: Record) -> None:
        self.records.append(record)


@attrs.define(eq=False, repr=False)
class _StrategyProbe:
    inner: RestartStrategy
    path: str
    log: _Log

    def __repr__(self) -> str:
        return repr(self.inner)

    def to_restart(self, failed: str, children: Sequence[str]) -> Sequence[str]:
        result = self.inner.to_restart(failed, children)
        self.log.add(
            StrategyChosen(
                at=trio.current_time(),
                supervisor=self.path,
                failed=failed,
                children=tuple(children),
                result=tuple(result),
            )
        )
        return result


@attrs.define(eq=False, repr=False)
class _IntensityProbe:
    inner: IntensityPolicy
    path: str
    log: _Log

    def __repr__(self) -> str:
        return repr(self.inner)

    def record(self, history: Sequence[float], now: float) -> IntensityDecision:
        decision = self.inner.record(history, now)
        self.log.add(IntensityRecorded(at=now, supervisor=self.path, allowed=decision.allowed))
        return decision

    def describe(self) -> str:
        return self.inner.describe()


@attrs.define(eq=False, repr=False)
class _BackoffProbe:
    inner: BackoffPolicy
    path: str
    log: _Log
    _last: tuple[float, bool] | None = None

    def __repr__(self) -> str:
        return repr(self.inner)

    def resets_after(self, uptime: float) -> bool:
        answer = self.inner.resets_after(uptime)
        self._last = (uptime, answer)
        return answer

    def delay(self, attempt: int, rng: random.Random) -> float:
        delay = self.inner.delay(attempt, rng)
        last, self._last = self._last, None
        self.log.add(
            BackoffChosen(
                at=trio.current_time(),
                supervisor=self.path,
                attempt=attempt,
                delay=delay,
                uptime=last[0] if last else None,
                reset=last[1] if last else None,
            )
        )
        return delay

    def bounds(self, attempt: int) -> tuple[float, float]:
        return self.inner.bounds(attempt)


def _probed(spec: AnySpec, parent: str, log: _Log) -> AnySpec:
    if isinstance(spec, ChildSpec):
        return spec
    path = f"{parent}/{spec.name}" if parent else spec.name
    probes: dict[str, Any] = {
        "strategy": _StrategyProbe(spec.strategy, path, log),
        "intensity": _IntensityProbe(spec.intensity, path, log),
        "backoff": _BackoffProbe(spec.backoff, path, log),
    }
    if isinstance(spec, PoolSpec):
        return attrs.evolve(spec, **probes)
    children = [_probed(c, path, log) for c in spec.children]
    return attrs.evolve(spec, children=children, **probes)


@attrs.define(eq=False)
class _RecordingBus(EventBus):
    """Notes every event in the run's log the moment it is published."""

    log: _Log = attrs.field(factory=_Log)

    def publish(self, event: Event) -> None:
        self.log.add(event)
        super().publish(event)


# --------------------------------------------------------------------------------------
# The trace

_NO_FIELD = object()  # a field the event does not have: equal to no value


@attrs.frozen(kw_only=True)
class Trace:
    """What happened in one run, in order.

    Attributes:
        spec: the spec as given (with the user's policy objects).
        schedule: the schedule that was applied.
        seed: the seed of backoff jitter and of trio's scheduler.
        max_agents: the hub's limit, if any.
        log: every event, probe record, applied crash and snapshot, in the order they
            happened.
        outcome: the root's escalation, if the whole tree gave up.
        leftover: pids of simulated processes still alive after the run (should be none).
        cancel_grace: the work service's ``cancel_grace`` (issue 21): seconds an agent
            told ``CANCEL`` has to give the attempt up before it is stopped.
    """

    spec: SupervisorSpec
    schedule: Schedule
    seed: int
    max_agents: int | None
    log: tuple[Record, ...]
    outcome: SupervisorEscalation | None
    leftover: tuple[int, ...]
    cancel_grace: float = DEFAULT_CANCEL_GRACE

    @property
    def events(self) -> list[Event]:
        """The lifecycle events only, as a ``hub.bus.subscribe()`` subscriber saw them."""
        return [r for r in self.log if isinstance(r, Event)]

    @property
    def has_work(self) -> bool:
        """Whether work was submitted in this run."""
        return any(isinstance(r, SubmitApplied) for r in self.log) or any(
            e.kind == "work_submitted" for e in self.events
        )

    def kinds(self) -> list[str]:
        """The ``kind`` of every event, e.g. ``["starting", "supervisor_started", ...]``."""
        return [e.kind for e in self.events]

    # --- helpers for your own properties (issue 22) ---

    def select(
        self, kind: str | None = None, child_id: str | None = None, **fields: object
    ) -> list[Event]:
        """The events of ``kind`` (any if ``None``) about ``child_id`` (any if ``None``)
        whose ``fields`` have the values given, in order, e.g.
        ``trace.select("exited", "planner", expected=False)``.

        Raises:
            UnknownEventKind: ``kind`` is no event's kind (a typo would match nothing).
        """
        if kind is not None and kind not in event_kinds():
            raise UnknownEventKind(
                f"no event has kind {kind!r}; the kinds are {sorted(event_kinds())}"
            )
        return [
            e
            for e in self.events
            if (kind is None or e.kind == kind)
            and (child_id is None or e.child_id == child_id)
            and all(getattr(e, k, _NO_FIELD) == v for k, v in fields.items())
        ]

    def count(self, kind: str | None = None, child_id: str | None = None, **fields: object) -> int:
        """How many events :meth:`select` gives, e.g. ``trace.count("restarting")``."""
        return len(self.select(kind, child_id, **fields))

    @property
    def hub_survived(self) -> bool:
        """Whether the root never gave up: the hub supervised until the run stopped it
        (``outcome`` is ``None``)."""
        return self.outcome is None

    @property
    def never_escalated(self) -> bool:
        """Whether no supervisor, nested ones included, gave up (no ``escalated`` event)."""
        return self.outcome is None and not self.select("escalated")

    @property
    def crashes_applied(self) -> list[CrashApplied]:
        """The scheduled crashes that hit a process (one whose child had none did nothing)."""
        return [r for r in self.log if isinstance(r, CrashApplied) and r.pid is not None]

    @property
    def snapshots(self) -> list[Snapshot]:
        """The :class:`Snapshot` of the tree after each schedule step, in order."""
        return [r for r in self.log if isinstance(r, Snapshot)]

    # --- end helpers ---

    def format(self, *, probes: bool = True) -> str:
        """One line per record, for failure messages and debugging."""
        lines = []
        for r in self.log:
            if not probes and not isinstance(r, Event):
                continue
            lines.append(f"{r.at:9.3f}  {_describe(r)}")
        return "\n".join(lines)


def _controls(submit: Submit) -> str:
    """The issue-21 options of a submit, for a trace line (empty when none)."""
    parts = []
    if submit.priority:
        parts.append(f"priority={submit.priority}")
    if submit.delay is not None:
        parts.append(f"delay={submit.delay:g}")
    if submit.key is not None:
        parts.append(f"key={submit.key!r}")
    if submit.after:
        parts.append(f"after={list(submit.after)!r}")
    if submit.time_limit is not None:
        parts.append(f"time_limit={submit.time_limit:g}")
    return "".join(f" {p}" for p in parts)


def _describe(r: Record) -> str:
    if isinstance(r, CrashApplied):
        applied = f"pid {r.pid}" if r.pid is not None else "no live process: skipped"
        return f"crash      {r.crash.child_id} {r.crash.how!r} ({applied})"
    if isinstance(r, Snapshot):
        return f"snapshot   live={list(r.live)}"
    if isinstance(r, SubmitApplied):
        return (
            f"submit     {r.submit.agent_type} {r.item_id} payload={r.submit.payload!r} "
            f"max_deliveries={r.max_deliveries}{_controls(r.submit)}"
            + ("" if r.created else " (key answered: nothing created)")
        )
    if isinstance(r, SubmitRefused):
        return f"submit     {r.submit.agent_type} refused{_controls(r.submit)}: {r.error}"
    if isinstance(r, WireRecord):
        arrow = "->" if r.sender == "agent" else "<-"
        body = f" {r.body}" if r.body is not None else ""
        return f"wire       {r.child_id} (pid {r.pid}) {arrow} {r.word}{body}"
    if isinstance(r, WorkSnapshot):
        when = "final " if r.final else "quiesced " if r.quiesced else ""
        items = " ".join(
            f"{i.id}:{i.status}@{i.attempt}" + (f"({i.agent})" if i.agent else "") for i in r.items
        )
        return f"work       {when}{items or '(no items)'}"
    fields = attrs.asdict(r, recurse=False)
    kind = fields.pop("kind")
    fields.pop("at")
    sup = fields.pop("supervisor", "")
    child = fields.pop("child_id", "")
    rest = " ".join(f"{k}={v!r}" for k, v in fields.items() if v is not None)
    return f"{kind:<10} {sup} {child} {rest}".rstrip()


# --------------------------------------------------------------------------------------
# Running


def run_schedule(
    spec: SupervisorSpec,
    schedule: Schedule | Sequence[Crash] = (),
    *,
    seed: int = 0,
    max_agents: int | None = None,
    settle: float = 60.0,
    behaviours: Mapping[str, SimBehaviour] | None = None,
    work: Sequence[Submit] = (),
    queue: Callable[[], WorkQueue] | None = None,
    agent_work: SimWork | None = None,
) -> Trace:
    """Run ``spec`` on simulated processes, apply ``schedule``, stop the tree; return the trace.

    Runs its own ``trio.run`` with ``MockClock(autojump_threshold=0)``, so call it from
    synchronous code (a plain ``@given`` test). Every crash applies at its virtual time,
    once every task has settled (so the tree's reaction to one crash is complete before
    the next one lands, even at the same instant). The tree is stopped ``settle`` virtual
    seconds after the last crash, unless the root escalated before.

    Args:
        spec: the tree to run (child ``argv`` is not executed).
        schedule: a :class:`Schedule`, or just a list of :class:`Crash`.
        seed: seeds backoff jitter and trio's task scheduler: same inputs, same trace.
        max_agents: passed to the :class:`~supervisor.Hub`.
        settle: virtual seconds to keep running after the last crash, so that pending
            backoffs elapse and restarts show in the trace.
        behaviours: the :class:`SimBehaviour` of every process of the named children
            (default: run until stopped, exit 0 on the stop signal).
        work: items to submit, added to ``schedule.work`` (see :class:`Submit`). In a
            run with work, every child with an ``agent_type`` (pool members included)
            not named in ``behaviours`` is a simulated agent that takes work
            (``SimBehaviour(work=agent_work, ready_after=0)``, heartbeating if watched),
            and the trace records the work events, every work-protocol message
            (:class:`WireRecord`) and the queue's items (:class:`WorkSnapshot`).
        queue: makes the work queue of the run (default: the hub's
            :class:`~supervisor.MemoryWorkQueue`), to property-test your own backend.
        agent_work: how the simulated agents work (default ``SimWork()``: 1 s an item).

    Returns:
        The :class:`Trace`; check it with :func:`check_all`.

    Example::

        trace = run_schedule(spec, [Crash(at=1.0, child_id="a")])
        check_all(trace)
    """
    if not isinstance(schedule, Schedule):
        schedule = Schedule(crashes=tuple(schedule))
    if work:
        schedule = attrs.evolve(schedule, work=(*schedule.work, *work))
    if not isinstance(spec, SupervisorSpec):
        raise InvalidSupervisorSpec(
            f"run_schedule needs a SupervisorSpec as the root (got {spec!r})"
        )
    if not (isinstance(settle, int | float) and 0 <= settle < math.inf):
        raise InvalidSchedule(
            f"settle must be a finite number of virtual seconds >= 0 (got {settle!r}); "
            "e.g. settle=60 lets pending backoffs elapse after the last crash"
        )
    _deterministic_scheduling(seed)
    clock = sim_clock()  # MockClock(autojump_threshold=0), cheaper to read
    try:
        return trio.run(
            _run,
            spec,
            schedule,
            seed,
            max_agents,
            settle,
            dict(behaviours or {}),
            queue,
            agent_work or SimWork(),
            clock=clock,
        )
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from group
        raise


def _deterministic_scheduling(seed: int) -> None:
    """Make trio's task order a function of ``seed`` alone.

    trio shuffles each batch of runnable tasks. Only in its deterministic mode, which its
    Hypothesis plugin switches on, does it first sort the batch by task creation order;
    otherwise the order depends on how tasks were queued, which depends on memory
    addresses (trio breaks ties between equal deadlines by ``id()``), so the same inputs
    can give different traces. That plugin is not loaded under
    ``HYPOTHESIS_NO_PLUGINS=1`` or when entry points are unavailable: switch the mode on
    here (what the plugin does), then seed the scheduler's random source.
    """
    core = trio._core._run
    if not getattr(core, "_ALLOW_DETERMINISTIC_SCHEDULING", True):
        setup = getattr(core, "_hypothesis_plugin_setup", None)
        if callable(setup):
            setup()  # also registers the source with Hypothesis, as the plugin does
        else:  # pragma: no cover - a trio without the plugin hook
            setattr(core, "_ALLOW_DETERMINISTIC_SCHEDULING", True)  # noqa: B010
    scheduler_random = getattr(core, "_r", None)
    if isinstance(scheduler_random, random.Random):
        scheduler_random.seed(seed)


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _script(
    spec: SupervisorSpec,
    schedule: Schedule,
    behaviours: dict[str, SimBehaviour],
    agent_work: SimWork,
) -> Callable[[SpawnRequest, int], SimBehaviour]:
    """How each simulated process behaves: as ``behaviours`` says, else a healthy agent
    (heartbeats well within its timeout, takes work when the schedule has some)."""
    workers = _workers(spec)
    with_work = bool(schedule.work)

    def script(request: SpawnRequest, n: int) -> SimBehaviour:
        base = behaviours.get(request.child_id)
        if base is None:
            base = SimBehaviour()
            child = workers.get(request.child_id)
            if child is not None and child.heartbeat_timeout is not None:
                # A healthy agent: heartbeats well within its timeout.
                base = SimBehaviour(heartbeat_interval=child.heartbeat_timeout / 3)
            if with_work and child is not None and child.agent_type is not None:
                base = attrs.evolve(base, work=agent_work, ready_after=0.0)
        if request.child_id in schedule.stubborn:
            return attrs.evolve(base, on_stop="ignore")
        return base

    return script


async def _run(
    spec: SupervisorSpec,
    schedule: Schedule,
    seed: int,
    max_agents: int | None,
    settle: float,
    behaviours: dict[str, SimBehaviour],
    queue: Callable[[], WorkQueue] | None,
    agent_work: SimWork,
) -> Trace:
    log = _Log()
    with_work = bool(schedule.work)
    script = _script(spec, schedule, behaviours, agent_work)
    backend = SimulatedProcessBackend(script, on_wire=log.add if with_work else None)
    probed = _probed(spec, "", log)
    assert isinstance(probed, SupervisorSpec)
    service = WorkService(queue()) if queue is not None else None
    hub = Hub(probed, backend=backend, seed=seed, max_agents=max_agents, work=service)
    hub.context.bus = _RecordingBus(log=log)
    outcome: SupervisorEscalation | None = None

    async def serve(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal outcome
        started = False

        class _Status:
            def started(self, value: object = None) -> None:
                nonlocal started
                started = True
                task_status.started()

        try:
            await hub.serve(task_status=_Status())
        except SupervisorEscalation as exc:
            outcome = exc
        if not started:
            task_status.started()
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        await nursery.start(serve)
        t0 = trio.current_time()
        # Submissions first at one instant, so a crash then can hit an agent holding one.
        steps: list[Submit | Crash] = sorted(
            [*schedule.work, *schedule.crashes],
            key=lambda s: (s.at, isinstance(s, Crash)),
        )
        for step in steps:
            await trio.sleep_until(t0 + step.at)
            await trio.testing.wait_all_tasks_blocked()
            if isinstance(step, Submit):
                log.add(_submit(hub, step))
                await trio.testing.wait_all_tasks_blocked()
            else:
                log.add(_apply(backend, step))
                await trio.testing.wait_all_tasks_blocked()
                log.add(_snapshot(hub, backend))
            if with_work:
                log.add(_work_snapshot(hub))
        await trio.sleep_until(t0 + schedule.end + settle)
        await trio.testing.wait_all_tasks_blocked()
        log.add(_snapshot(hub, backend))
        if with_work:
            log.add(_work_snapshot(hub, quiesced=True))
        await hub.stop()
    if with_work:
        log.add(_work_snapshot(hub, final=True))
    hub.bus.close()
    return Trace(
        spec=spec,
        schedule=schedule,
        seed=seed,
        max_agents=max_agents,
        log=tuple(log.records),
        outcome=outcome,
        leftover=tuple(p.pid for p in backend.live()),
        cancel_grace=_cancel_grace(hub),
    )


def _cancel_grace(hub: Hub) -> float:
    """The hub's work service's ``cancel_grace`` (its default if it does not say)."""
    controls = getattr(hub.work, "_controls", None)
    return float(getattr(controls, "cancel_grace", DEFAULT_CANCEL_GRACE))


def _apply(backend: SimulatedProcessBackend, crash: Crash) -> CrashApplied:
    now = trio.current_time()
    try:
        proc = backend.current(crash.child_id)
    except KeyError:
        return CrashApplied(at=now, crash=crash, pid=None)
    if proc.status is not None:
        return CrashApplied(at=now, crash=crash, pid=None)
    how = crash.how
    if isinstance(how, Exit):
        proc.crash(code=how.code)
    elif isinstance(how, Kill):
        proc.crash(sig=how.signal)
    elif isinstance(how, Hang):
        notify = proc.notify
        if notify is None:
            # No notify channel, so no heartbeats to stop: it runs on unnoticed.
            return CrashApplied(at=now, crash=crash, pid=proc.pid)
        # Stop its messages from now on (a second hang changes nothing), and wake its
        # sender so that a heartbeat it already waits to send is not sent.
        hang_at = now - notify.spawned_at
        if notify.behaviour.hang_at is None or hang_at < notify.behaviour.hang_at:
            notify.behaviour = attrs.evolve(notify.behaviour, hang_at=hang_at)
            notify._wake.set()
    return CrashApplied(at=now, crash=crash, pid=proc.pid)


def _submit(hub: Hub, submit: Submit) -> SubmitApplied | SubmitRefused:
    ordering: dict[str, Any] = {}  # issue 21: only when given
    if submit.priority:
        ordering["priority"] = submit.priority
    if submit.delay is not None:
        ordering["delay"] = submit.delay
    if submit.key is not None:
        ordering["key"] = submit.key
    if submit.after:
        ordering["after"] = list(submit.after)
    if submit.time_limit is not None:
        ordering["time_limit"] = submit.time_limit
    known = {i.id for i in hub.work.items()} if submit.key is not None else set()
    try:
        item = hub.work.submit(
            submit.agent_type, submit.payload, max_deliveries=submit.max_deliveries, **ordering
        )
    except ControlError as exc:
        return SubmitRefused(at=trio.current_time(), submit=submit, error=str(exc))
    return SubmitApplied(
        at=trio.current_time(),
        submit=submit,
        item_id=item.id,
        max_deliveries=item.max_deliveries,
        created=item.id not in known,
    )


def _work_snapshot(hub: Hub, *, quiesced: bool = False, final: bool = False) -> WorkSnapshot:
    items = tuple(
        ItemState(
            id=i.id,
            agent_type=i.agent_type,
            status=str(i.status),
            attempt=i.attempt,
            deliveries=i.deliveries,
            max_deliveries=i.max_deliveries,
            agent=i.agent,
            result=i.result,
            delayed=i.not_before is not None,
            blocked=bool(getattr(i, "waiting_on", ())),
        )
        for i in hub.work.items()
    )
    return WorkSnapshot(at=trio.current_time(), items=items, quiesced=quiesced, final=final)


def _workers(spec: SupervisorSpec | PoolSpec) -> dict[str, ChildSpec]:
    if isinstance(spec, PoolSpec):
        return {spec.member_id(n): pool_member(spec, n) for n in range(1, spec.max_size + 1)}
    found: dict[str, ChildSpec] = {}
    for child in spec.children:
        found.update({child.id: child} if isinstance(child, ChildSpec) else _workers(child))
    return found


def _snapshot(hub: Hub, backend: SimulatedProcessBackend) -> Snapshot:
    tree = tuple(
        (row.supervisor, row.info.id, row.info.state.value, row.info.pid)
        for row in hub.which_children()
    )
    registry = getattr(hub, "registry", None)
    agents: dict[str, int | None] | None = None
    if registry is not None:
        agents = {a.id: a.pid for a in registry.agents()}
    return Snapshot(
        at=trio.current_time(),
        live=tuple(sorted(p.pid for p in backend.live())),
        tree=tree,
        registry=agents,
    )
