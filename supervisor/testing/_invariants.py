"""Invariant checks on a :class:`~supervisor.testing.Trace`.

Each check derives what *should* have happened from the spec and from what the trace
shows, and raises :class:`InvariantViolation` naming the first record that disagrees.
The expectations are written from the documented semantics (OTP's, where hubvisor
follows OTP), not by calling the runtime's own decision code again: the built-in
strategies and policies have independent oracles here, and a custom policy can be
given one (see ``oracles`` of :func:`check_siblings`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

from strategies import (
    ExponentialBackoff,
    FixedBackoff,
    Intensity,
    NoBackoff,
    OneForAll,
    OneForOne,
    RestForOne,
)

from .._events import (
    ChildBackingOff,
    ChildExited,
    ChildHeartbeat,
    ChildHung,
    ChildRestarting,
    ChildRunning,
    ChildSpawnFailed,
    ChildStarting,
    ChildStatus,
    ChildStopped,
    Event,
    SupervisorEscalated,
    SupervisorStarted,
    SupervisorStopped,
    SupervisorStopping,
)
from .._runtime import pool_member
from .._spec import AnySpec, ChildSpec, PoolSpec, RestartType, SupervisorSpec
from ..work import (
    WorkAssigned,
    WorkCompleted,
    WorkDeadLettered,
    WorkFailed,
    WorkReclaimed,
    WorkRefused,
    WorkSubmitted,
)
from ._run import (
    BackoffChosen,
    CrashApplied,
    IntensityRecorded,
    Record,
    Snapshot,
    StrategyChosen,
    SubmitApplied,
    Trace,
    WorkSnapshot,
)
from ._schedule import Hang
from ._sim import WireRecord

__all__ = [
    "STRATEGY_ORACLES",
    "InvariantViolation",
    "StrategyOracle",
    "check_all",
    "check_backoff",
    "check_hangs",
    "check_intensity",
    "check_live_limits",
    "check_registry",
    "check_restart_types",
    "check_shutdown",
    "check_siblings",
    "check_work",
    "check_work_completions",
    "check_work_deliveries",
    "check_work_holders",
    "check_work_outcomes",
    "check_work_reclaim",
]

_EPS = 1e-9

StrategyOracle = Callable[[str, Sequence[str]], Iterable[str]]
"""``(failed, children in start order) -> ids that should restart``."""


def _one_for_one(failed: str, children: Sequence[str]) -> list[str]:
    return [failed]


def _one_for_all(failed: str, children: Sequence[str]) -> list[str]:
    return list(children)


def _rest_for_one(failed: str, children: Sequence[str]) -> list[str]:
    seen = False
    rest = []
    for c in children:
        seen = seen or c == failed
        if seen:
            rest.append(c)
    return rest


STRATEGY_ORACLES: Mapping[type, StrategyOracle] = {
    OneForOne: _one_for_one,
    OneForAll: _one_for_all,
    RestForOne: _rest_for_one,
}
"""The expected restart set of each built-in strategy, written independently of it."""


class InvariantViolation(AssertionError):
    """A trace broke an invariant; the message names the check, the record and why."""


# --------------------------------------------------------------------------------------
# Reading the spec


@attrs.frozen
class _Tree:
    sups: Mapping[str, SupervisorSpec | PoolSpec]
    kids: Mapping[tuple[str, str], AnySpec]
    workers: int

    @classmethod
    def of(cls, root: SupervisorSpec) -> _Tree:
        """The tree of ``root``, read once per spec: a pool's member specs (up to
        ``max_size`` of them, each an ``attrs.evolve``) were most of a check's cost."""
        hit = _TREES.get(id(root))
        if hit is not None and hit[0] is root:
            return hit[1]
        if len(_TREES) >= 64:
            _TREES.clear()
        tree = cls._read(root)
        _TREES[id(root)] = (root, tree)  # holding root keeps its id from being reused
        return tree

    @classmethod
    def _read(cls, root: SupervisorSpec) -> _Tree:
        sups: dict[str, SupervisorSpec | PoolSpec] = {}
        kids: dict[tuple[str, str], AnySpec] = {}
        workers = 0

        def walk(spec: SupervisorSpec | PoolSpec, path: str) -> None:
            nonlocal workers
            sups[path] = spec
            if isinstance(spec, PoolSpec):
                for n in range(1, spec.max_size + 1):
                    kids[path, spec.member_id(n)] = pool_member(spec, n)
                workers += spec.max_size
                return
            for child in spec.children:
                kids[path, child.id] = child
                if isinstance(child, ChildSpec):
                    workers += 1
                else:
                    walk(child, f"{path}/{child.name}")

        walk(root, root.name)
        return cls(sups, kids, workers)

    def restart(self, sup: str, child: str) -> RestartType:
        spec = self.kids.get((sup, child))
        return spec.restart if spec is not None else RestartType.PERMANENT


_TREES: dict[int, tuple[SupervisorSpec, _Tree]] = {}


def _split(path: str) -> tuple[str, str] | None:
    """``"root/a/b"`` -> ``("root/a", "b")``; the root has no parent."""
    if "/" not in path:
        return None
    parent, _, name = path.rpartition("/")
    return parent, name


# --------------------------------------------------------------------------------------
# Reconstructing restart decisions from the trace


@attrs.define(eq=False)
class _Decision:
    sup: str
    index: int
    at: float
    allowed: bool
    epoch: int  # which run of the supervisor (it restarts as a whole under its parent)
    states: dict[str, str]
    failed: str | None = None
    backoff: BackoffChosen | None = None
    strategy: StrategyChosen | None = None
    escalated: SupervisorEscalated | None = None
    backing_off: ChildBackingOff | None = None
    group: list[str] | None = None
    collecting: bool = False
    stopped: bool = False  # the supervisor was stopped before the group was known
    restarted: dict[str, ChildRestarting] = attrs.field(factory=dict)
    cancelled: dict[str, float] = attrs.field(factory=dict)  # stopped or rescheduled: when
    # siblings the decision stopped first (``stopped`` reason ``restarting``): when
    sibling_stops: dict[str, float] = attrs.field(factory=dict)

    def restarts_due(self) -> float | None:
        """When the group's restarts without backoff began or were due: the instant its
        last running sibling was stopped (the decision's own instant if there was none);
        ``None`` while a sibling is still being stopped."""
        if self.restarted:
            return min(r.at for r in self.restarted.values())
        if self.strategy is None:
            return None
        siblings = [
            x
            for x in self.strategy.result
            if x != self.failed and self.states.get(x) in ("up", "pending")
        ]
        if any(x not in self.sibling_stops for x in siblings):
            return None
        return max([self.at, *(self.sibling_stops[x] for x in siblings)])


@attrs.define(eq=False)
class _Analysis:
    trace: Trace
    tree: _Tree
    decisions: list[_Decision] = attrs.field(factory=list)
    structural: list[tuple[int, str]] = attrs.field(factory=list)


def _fail(trace: Trace, index: int | None, check: str, message: str) -> InvariantViolation:
    lines = trace.format().splitlines()
    if index is not None:
        # Show the trace up to the offending record (records and lines correspond 1:1).
        end = index + 1
        lines = lines[max(0, end - 40) : end]
        where = f"\n\ntrace up to the offending record (#{index}):\n" + "\n".join(lines)
    else:
        where = "\n\ntrace:\n" + "\n".join(lines[-40:])
    schedule = "\n".join(f"  {c!r}" for c in trace.schedule.crashes)
    tree = "\n".join(_outline(trace.spec, 1))
    work = "".join(f"\n  {w!r}" for w in trace.schedule.work)
    if work:
        work = "\nwork:" + work
    return InvariantViolation(
        f"[{check}] {message}\n\ntree:\n{tree}\n\nschedule:\n{schedule or '  (no crashes)'}"
        f"\nstubborn: {sorted(trace.schedule.stubborn)}{work}{where}"
    )


def _outline(spec: AnySpec, depth: int) -> list[str]:
    """A compact, indented view of a spec tree for failure messages."""
    pad = "  " * depth
    if isinstance(spec, ChildSpec):
        extra = f" heartbeat_timeout={spec.heartbeat_timeout:g}" if spec.heartbeat_timeout else ""
        return [f"{pad}{spec.id} {spec.restart.value} shutdown={spec.shutdown}{extra}"]
    policies = f"{spec.strategy!r} {spec.intensity!r} {spec.backoff!r}"
    if isinstance(spec, PoolSpec):
        return [
            f"{pad}{spec.name} (pool of {spec.size} {spec.template.restart.value}) "
            f"{spec.restart.value} {policies}"
        ]
    lines = [f"{pad}{spec.name} {spec.restart.value} {policies}"]
    for child in spec.children:
        lines.extend(_outline(child, depth + 1))
    return lines


def _analyse(trace: Trace) -> _Analysis:
    """The decisions in ``trace``; :func:`check_all` runs four checks on one trace, and
    they share one analysis (nothing changes an analysis once made)."""
    if _ANALYSED and _ANALYSED[0][0] is trace:
        return _ANALYSED[0][1]
    an = _read_decisions(trace)
    _ANALYSED[:] = [(trace, an)]
    return an


_ANALYSED: list[tuple[Trace, _Analysis]] = []


def _read_decisions(trace: Trace) -> _Analysis:
    an = _Analysis(trace, _Tree.of(trace.spec))
    states: dict[str, dict[str, str]] = {}
    epochs: dict[str, int] = {}
    open_: dict[str, _Decision] = {}
    pending: dict[tuple[str, str], _Decision] = {}

    def close(sup: str, stop_at: float | None = None) -> None:
        d = open_.get(sup)
        if d is not None and d.collecting:
            d.collecting = False
            d.stopped = stop_at is not None
            # Restarts without backoff all happen at one instant: once the running
            # siblings are stopped (at the decision's instant if none takes time to
            # stop). A stop of the supervisor before or at that instant may have cut them
            # short (a stubborn sibling can take its whole shutdown time, during which
            # the parent may stop this supervisor), so the group is only known if the
            # stop (if any) came later. With a backoff the group is what `backing_off`
            # announced; if a stop came first, it is unknown.
            no_delay = d.backoff is not None and d.backoff.delay == 0
            if d.group is None and no_delay:
                due = d.restarts_due()
                if stop_at is None or (due is not None and stop_at > due + _EPS):
                    d.group = list(d.restarted)
        if d is not None and (d.strategy is not None or d.escalated is not None):
            del open_[sup]

    for i, r in enumerate(trace.log):
        sup = getattr(r, "supervisor", "")
        st = states.setdefault(sup, {})
        if isinstance(r, IntensityRecorded):
            close(sup, None)
            if sup in open_:
                an.structural.append(
                    (i, f"{sup!r} counted a second restart before deciding on the first")
                )
            d = _Decision(sup, i, r.at, r.allowed, epochs.get(sup, 0), dict(st))
            open_[sup] = d
            an.decisions.append(d)
        elif isinstance(r, BackoffChosen):
            d_open = open_.get(sup)
            if d_open is None or d_open.strategy is not None or d_open.backoff is not None:
                an.structural.append((i, f"{sup!r} chose a backoff delay with no counted restart"))
            else:
                d_open.backoff = r
        elif isinstance(r, StrategyChosen):
            d_open = open_.get(sup)
            if d_open is None or d_open.strategy is not None:
                an.structural.append(
                    (i, f"{sup!r} chose children to restart without counting the restart")
                )
                continue
            d_open.strategy = r
            d_open.failed = r.failed
            d_open.collecting = True
        elif isinstance(r, Event):
            _on_event(an, i, r, sup, st, states, epochs, open_, pending, close)
    for sup in list(open_):
        close(sup, None)
    return an


def _on_event(
    an: _Analysis,
    i: int,
    r: Event,
    sup: str,
    st: dict[str, str],
    states: dict[str, dict[str, str]],
    epochs: dict[str, int],
    open_: dict[str, _Decision],
    pending: dict[tuple[str, str], _Decision],
    close: Callable[[str, float | None], None],
) -> None:
    d = open_.get(sup)
    if isinstance(r, ChildStarting):
        st[r.child_id] = "up"
    elif isinstance(r, ChildExited | ChildSpawnFailed):
        st[r.child_id] = "down"
    elif isinstance(r, SupervisorStarted | SupervisorStopped):
        if isinstance(r, SupervisorStarted):
            # Its children started before this event; after its last stop they all
            # were down, so their states need no reset.
            epochs[sup] = epochs.get(sup, 0) + 1
        else:
            close(sup, r.at)
            for key in [k for k in pending if k[0] == sup]:
                pending.pop(key).cancelled[key[1]] = r.at
        parent = _split(sup)
        if parent is not None:
            states.setdefault(parent[0], {})[parent[1]] = (
                "up" if isinstance(r, SupervisorStarted) else "down"
            )
    elif isinstance(r, SupervisorStopping):
        # From here on nothing in this supervisor restarts: a decision being carried out
        # is cut short (like a stop at this instant) and pending backoffs are void.
        close(sup, r.at)
        for key in [k for k in pending if k[0] == sup]:
            pending.pop(key).cancelled[key[1]] = r.at
    elif isinstance(r, ChildStopped):
        if r.reason == "restarting" and d is not None and d.collecting:
            d.sibling_stops[r.child_id] = r.at
        if r.reason != "restarting":
            close(sup, r.at if r.reason == "shutdown" else None)
        st[r.child_id] = "down"
        owner = pending.pop((sup, r.child_id), None)
        if owner is not None:
            owner.cancelled[r.child_id] = r.at
    elif isinstance(r, SupervisorEscalated):
        close(sup, None)
        d = open_.get(sup)
        if d is None or d.strategy is not None:
            an.structural.append((i, f"{sup!r} escalated without counting a restart"))
        else:
            d.escalated = r
            d.failed = r.child_id
            del open_[sup]
    elif isinstance(r, ChildBackingOff):
        if d is None or not d.collecting or d.failed != r.child_id:
            an.structural.append((i, f"{sup!r} backs off with no restart decision for it"))
            return
        d.backing_off = r
        d.group = list(r.restarting)
        d.collecting = False
        del open_[sup]
        for x in r.restarting:
            st[x] = "pending"
            earlier = pending.get((sup, x))
            if earlier is not None:
                earlier.cancelled[x] = r.at
            pending[sup, x] = d
    elif isinstance(r, ChildRestarting):
        st[r.child_id] = "up"
        if d is not None and d.collecting and d.backoff is not None and d.backoff.delay == 0:
            if r.cause == d.failed:
                d.restarted[r.child_id] = r
                return
            close(sup, None)
        owner = pending.pop((sup, r.child_id), None)
        if owner is not None:
            owner.restarted[r.child_id] = r


# --------------------------------------------------------------------------------------
# The checks


def _raise_structural(an: _Analysis) -> None:
    if an.structural:
        i, msg = an.structural[0]
        raise _fail(an.trace, i, "decisions", msg)


def check_siblings(trace: Trace, *, oracles: Mapping[type, StrategyOracle] | None = None) -> None:
    """The right siblings restart for each supervisor's strategy.

    For every restart decision: the children that restart are exactly the strategy's
    set (from ``oracles``, keyed by the strategy's type, falling back to
    :data:`STRATEGY_ORACLES`), less the siblings that were not running or backing off
    (stopped on purpose, ended normally, or not yet handled after their own crash) and
    less temporary siblings, which are stopped and removed instead. A strategy with no
    oracle is checked against its own answer only (the runtime must follow it).
    """
    an = _analyse(trace)
    _raise_structural(an)
    table = {**STRATEGY_ORACLES, **(oracles or {})}
    for d in an.decisions:
        if d.strategy is None or d.failed is None:
            continue
        s = d.strategy
        spec = an.tree.sups[d.sup]
        oracle = table.get(type(spec.strategy))
        wanted = list(oracle(s.failed, s.children)) if oracle is not None else list(s.result)
        if oracle is not None and set(wanted) != set(s.result):
            raise _fail(
                trace,
                trace.log.index(s),
                "siblings",
                f"{d.sup!r} ({spec.strategy!r}) restarts {list(s.result)} when "
                f"{s.failed!r} fails among {list(s.children)}; expected {sorted(set(wanted))}",
            )

        def eligible(x: str, d: _Decision = d) -> bool:
            if x == d.failed:
                return True
            if an.tree.restart(d.sup, x) is RestartType.TEMPORARY:
                return False
            return d.states.get(x) in ("up", "pending")

        expected = [x for x in s.children if x in wanted and eligible(x)]
        if d.group is None:
            continue  # the supervisor was stopped before it restarted anything
        if expected != d.group:
            raise _fail(
                trace,
                d.index,
                "siblings",
                f"after {d.failed!r} failed at {d.at:g}, {d.sup!r} ({spec.strategy!r}) "
                f"restarts {d.group}; expected {expected} (children then: "
                f"{ {x: d.states.get(x, 'down') for x in s.children} })",
            )


def check_restart_types(trace: Trace) -> None:
    """Temporary children never restart; transient ones do not after a normal exit.

    Also: a failure is counted once, when the supervisor handles it. A child that is
    already scheduled to restart (or running again) when its old exit is handled must
    not cost a second restart; and every failure is handled (a decision, a stop, or the
    supervisor ending).

    A child that ends while a sibling's restart that includes it is under way (its
    supervisor is stopping the others first) is restarted with that group, whatever
    its exit: the restart was decided while it ran, as in OTP, where the supervisor
    drops the exit of a child it is terminating.
    """
    an = _analyse(trace)
    _raise_structural(an)
    tree = an.tree
    log = trace.log
    absorbed = _absorbed(an)
    for d in an.decisions:
        if d.failed is None:
            continue
        kind = tree.restart(d.sup, d.failed)
        if kind is RestartType.TEMPORARY:
            raise _fail(
                trace, d.index, "restart-types", f"temporary child {d.failed!r} cost a restart"
            )
        state = d.states.get(d.failed, "down")
        if state != "down":
            raise _fail(
                trace,
                d.index,
                "restart-types",
                f"{d.sup!r} counted a failure of {d.failed!r} at {d.at:g} although it was "
                f"{'already scheduled to restart' if state == 'pending' else 'running again'}"
                "; the exit was handled as part of an earlier restart and must be ignored",
            )
    hung: set[int] = set()
    for i, r in enumerate(log):
        if isinstance(r, ChildHung):
            hung.add(r.pid)
        if (
            isinstance(r, ChildRestarting)
            and tree.restart(r.supervisor, r.child_id) is RestartType.TEMPORARY
        ):
            raise _fail(trace, i, "restart-types", f"temporary child {r.child_id!r} was restarted")
        failure = _failure_of(r)
        if failure is None:
            continue
        if i in absorbed:
            continue
        sup, child, normal = failure
        if isinstance(r, ChildExited) and r.pid in hung:
            normal = False  # killed by the watchdog: whatever its exit code, it failed
        kind = tree.restart(sup, child)
        if kind is RestartType.TEMPORARY or (kind is RestartType.TRANSIENT and normal):
            _expect_no_restart(trace, i, sup, child, kind)
        _expect_handled(an, i, sup, child)


def _absorbed(an: _Analysis) -> set[int]:
    """Indices of failures that happened inside a decided group restart of that child."""
    log = an.trace.log
    index = {id(r): i for i, r in enumerate(log)}
    found: set[int] = set()
    for d in an.decisions:
        if d.strategy is None or d.group is None:
            continue
        start = index[id(d.strategy)]
        for x in d.group:
            end = index[id(d.restarted[x])] if x in d.restarted else len(log)
            for j in range(start + 1, end):
                failure = _failure_of(log[j])
                if failure is not None and failure[:2] == (d.sup, x):
                    found.add(j)
    return found


def _failure_of(r: Record) -> tuple[str, str, bool] | None:
    """``(supervisor, child, normal)`` if ``r`` is a failure its supervisor must handle."""
    if isinstance(r, ChildExited) and not r.expected:
        return r.supervisor, r.child_id, r.status.normal
    if isinstance(r, ChildSpawnFailed):
        return r.supervisor, r.child_id, False
    if isinstance(r, SupervisorEscalated):
        parent = _split(r.supervisor)
        if parent is not None:
            return parent[0], parent[1], False
    return None


def _expect_no_restart(trace: Trace, i: int, sup: str, child: str, kind: RestartType) -> None:
    for j in range(i + 1, len(trace.log)):
        r = trace.log[j]
        if isinstance(r, SupervisorStopped) and r.supervisor == sup:
            return
        if isinstance(r, ChildRestarting) and (r.supervisor, r.child_id) == (sup, child):
            raise _fail(
                trace,
                j,
                "restart-types",
                f"{kind.value} child {child!r} of {sup!r} restarted after it ended "
                f"{'normally' if kind is RestartType.TRANSIENT else ''} (record #{i})",
            )
        if isinstance(r, StrategyChosen) and r.supervisor == sup and r.failed == child:
            raise _fail(trace, j, "restart-types", f"{kind.value} child {child!r} cost a restart")
        if (
            kind is RestartType.TEMPORARY
            and isinstance(r, StrategyChosen)
            and r.supervisor == sup
            and child in r.children
            and _handled_before(trace, i, j, sup, child)
        ):
            raise _fail(
                trace,
                j,
                "restart-types",
                f"temporary child {child!r} of {sup!r} ended but is still among the children",
            )


def _handled_before(trace: Trace, i: int, j: int, sup: str, child: str) -> bool:
    return any(
        isinstance(r, ChildStopped) and (r.supervisor, r.child_id) == (sup, child)
        for r in trace.log[i:j]
    )


def _expect_handled(an: _Analysis, i: int, sup: str, child: str) -> None:
    log = an.trace.log
    for r in log[i + 1 :]:
        if getattr(r, "supervisor", None) == sup:
            if isinstance(r, SupervisorStopped | SupervisorEscalated):
                return
            if isinstance(r, ChildStopped | ChildStarting) and r.child_id == child:
                return
            if isinstance(r, StrategyChosen) and r.failed == child:
                return
            if isinstance(r, ChildBackingOff) and child in r.restarting:
                return
            if isinstance(r, ChildRestarting) and r.child_id == child:
                return
        if isinstance(r, SupervisorStarted) and r.supervisor == f"{sup}/{child}":
            return
    raise _fail(an.trace, i, "restart-types", f"the failure of {child!r} was never handled")


def check_intensity(trace: Trace) -> None:
    """A supervisor escalates exactly when more than ``max_restarts`` fall within ``window``.

    Restarts are counted per run of each supervisor, once per restart decision, with
    OTP's inclusive window: those at ``t >= now - window``. Before it escalates, a
    supervisor has stopped all its children; the root's escalation is the run's outcome.
    For an intensity policy other than :class:`~strategies.Intensity`, only "escalate
    iff the policy said no" is checked.
    """
    an = _analyse(trace)
    _raise_structural(an)
    by_run: dict[tuple[str, int], list[_Decision]] = {}
    for d in an.decisions:
        by_run.setdefault((d.sup, d.epoch), []).append(d)
    for (sup, _), decisions in by_run.items():
        policy = an.tree.sups[sup].intensity
        times: list[float] = []
        for d in decisions:
            times.append(d.at)
            if isinstance(policy, Intensity):
                recent = [t for t in times if t >= d.at - policy.window]
                exceeded = len(recent) > policy.max_restarts
                if exceeded == d.allowed:
                    raise _fail(
                        trace,
                        d.index,
                        "intensity",
                        f"{sup!r} ({policy!r}): {len(recent)} restarts within "
                        f"{policy.window:g}s at {d.at:g} (times {recent}), but the policy "
                        f"said {'allowed' if d.allowed else 'exceeded'}",
                    )
            if d.allowed == (d.escalated is not None) and d.failed is not None:
                raise _fail(
                    trace,
                    d.index,
                    "intensity",
                    f"{sup!r} {'escalated' if d.allowed else 'did not escalate'} after the "
                    f"restart at {d.at:g} was {'allowed' if d.allowed else 'refused'}",
                )
    _check_escalations_stop_everything(an)
    root_escalated = [
        r
        for r in trace.log
        if isinstance(r, SupervisorEscalated) and r.supervisor == trace.spec.name
    ]
    if bool(root_escalated) != (trace.outcome is not None):
        raise _fail(
            trace,
            None,
            "intensity",
            f"the root escalated {len(root_escalated)} time(s) but the run's outcome is "
            f"{trace.outcome!r}",
        )


def _check_escalations_stop_everything(an: _Analysis) -> None:
    live: dict[int, str] = {}
    for i, r in enumerate(an.trace.log):
        if isinstance(r, ChildStarting):
            live[r.pid] = r.supervisor
        elif isinstance(r, ChildExited):
            live.pop(r.pid, None)
        elif isinstance(r, SupervisorEscalated):
            under = [
                p for p, s in live.items() if s == r.supervisor or s.startswith(r.supervisor + "/")
            ]
            if under:
                raise _fail(
                    an.trace,
                    i,
                    "intensity",
                    f"{r.supervisor!r} escalated while processes {under} of its subtree ran",
                )


def _expected_bounds(policy: object, attempt: int) -> tuple[float, float] | None:
    if isinstance(policy, NoBackoff):
        return (0.0, 0.0)
    if isinstance(policy, FixedBackoff):
        return (policy.seconds, policy.seconds)
    if isinstance(policy, ExponentialBackoff):
        d = policy.initial
        for _ in range(attempt - 1):
            d *= policy.factor
            if d >= policy.cap:
                break
        d = min(d, policy.cap)
        return (d * (1 - policy.jitter), d)
    bounds = getattr(policy, "bounds", None)
    return bounds(attempt) if callable(bounds) else None


def check_backoff(trace: Trace) -> None:
    """Every backoff delay is within the policy's bounds, and the restart waits exactly that.

    Also: ``attempt`` counts consecutive restarts of a child (1 again once the policy
    says the child ran long enough), and a delay of 0 publishes no ``backing_off``.
    Built-in policies are checked against bounds computed here; others against their
    own ``bounds``.
    """
    an = _analyse(trace)
    _raise_structural(an)
    attempts: dict[tuple[str, int, str], int] = {}
    for d in an.decisions:
        b = d.backoff
        if b is None or d.failed is None:
            continue
        policy = an.tree.sups[d.sup].backoff
        bounds = _expected_bounds(policy, b.attempt)
        if bounds is not None and not (
            bounds[0] - _EPS <= b.delay <= bounds[1] + _EPS and math.isfinite(b.delay)
        ):
            raise _fail(
                trace,
                trace.log.index(b),
                "backoff",
                f"{d.sup!r} ({policy!r}) waits {b.delay!r}s before restart number "
                f"{b.attempt} of {d.failed!r}; the bounds are {bounds}",
            )
        key = (d.sup, d.epoch, d.failed)
        if b.reset is not None:
            want = 1 if b.reset else attempts.get(key, 0) + 1
            if b.attempt != want:
                raise _fail(
                    trace,
                    trace.log.index(b),
                    "backoff",
                    f"restart of {d.failed!r} in {d.sup!r} is attempt {b.attempt}, expected "
                    f"{want} (reset={b.reset}, uptime={b.uptime})",
                )
        attempts[key] = b.attempt
        if b.delay > 0:
            if d.backing_off is None and not d.stopped and d.strategy is not None:
                raise _fail(
                    trace, d.index, "backoff", f"a delay of {b.delay}s published no backing_off"
                )
            bo = d.backing_off
            if bo is not None:
                if bo.delay != b.delay or bo.attempt != b.attempt:
                    raise _fail(
                        trace,
                        trace.log.index(bo),
                        "backoff",
                        f"backing_off says {bo.delay}s/attempt {bo.attempt}, the policy "
                        f"chose {b.delay}s/attempt {b.attempt}",
                    )
                for x in bo.restarting:
                    due = bo.at + bo.delay
                    if x not in d.restarted and d.cancelled.get(x, math.inf) > due + _EPS:
                        raise _fail(
                            trace,
                            trace.log.index(bo),
                            "backoff",
                            f"{x!r} was not restarted at {due:g}, {bo.delay:g}s after "
                            f"backing off at {bo.at:g}, nor stopped before",
                        )
                for x, restart in d.restarted.items():
                    if abs(restart.at - (bo.at + bo.delay)) > 1e-6:
                        raise _fail(
                            trace,
                            trace.log.index(restart),
                            "backoff",
                            f"{x!r} restarted at {restart.at:g}, not {bo.delay:g}s after "
                            f"backing off at {bo.at:g}",
                        )
        elif d.backing_off is not None:
            raise _fail(
                trace, trace.log.index(d.backing_off), "backoff", "backing_off with delay 0"
            )


def check_live_limits(trace: Trace) -> None:
    """Never two processes of one child at once, nor more than the tree (or ``max_agents``)
    allows; a pool never runs more than ``max_size`` members."""
    tree = _Tree.of(trace.spec)
    limit = tree.workers if trace.max_agents is None else min(tree.workers, trace.max_agents)
    live: dict[int, tuple[str, str]] = {}
    for i, r in enumerate(trace.log):
        if isinstance(r, ChildStarting):
            key = (r.supervisor, r.child_id)
            if key in live.values():
                raise _fail(trace, i, "live-limits", f"{r.child_id!r} started while still running")
            live[r.pid] = key
            if len(live) > limit:
                raise _fail(trace, i, "live-limits", f"{len(live)} live processes; at most {limit}")
            sup = tree.sups.get(r.supervisor)
            if isinstance(sup, PoolSpec):
                n = sum(1 for s, _ in live.values() if s == r.supervisor)
                if n > sup.max_size:
                    raise _fail(trace, i, "live-limits", f"pool {r.supervisor!r} runs {n} members")
        elif isinstance(r, ChildExited) and live.pop(r.pid, None) is None:
            raise _fail(trace, i, "live-limits", f"pid {r.pid} exited but never started")


def check_shutdown(trace: Trace) -> None:
    """After the tree stopped (or the root escalated) nothing runs and nothing happens."""
    live: set[int] = set()
    running: dict[str, int] = {}
    end: int | None = None
    for i, r in enumerate(trace.log):
        if end is not None and isinstance(r, Event):
            raise _fail(trace, i, "shutdown", "an event after the root supervisor stopped")
        if isinstance(r, ChildStarting):
            live.add(r.pid)
        elif isinstance(r, ChildExited):
            live.discard(r.pid)
        elif isinstance(r, SupervisorStarted):
            running[r.supervisor] = running.get(r.supervisor, 0) + 1
        elif isinstance(r, SupervisorStopped):
            running[r.supervisor] = running.get(r.supervisor, 0) - 1
            if r.supervisor == trace.spec.name:
                end = i
    if end is None:
        raise _fail(trace, None, "shutdown", "the root supervisor never stopped")
    if live:
        raise _fail(trace, end, "shutdown", f"processes {sorted(live)} never exited")
    if any(n != 0 for n in running.values()):
        raise _fail(trace, end, "shutdown", f"supervisors left running: {running}")
    if trace.leftover:
        raise _fail(trace, end, "shutdown", f"simulated processes {trace.leftover} still alive")


def check_registry(trace: Trace) -> None:
    """At every quiet moment the tree's children (and the registry, if the hub has one)
    name exactly the live processes."""
    for i, r in enumerate(trace.log):
        if not isinstance(r, Snapshot):
            continue
        in_tree = sorted(pid for *_, pid in r.tree if pid is not None)
        if in_tree != sorted(r.live):
            raise _fail(
                trace,
                i,
                "registry",
                f"which_children() names pids {in_tree}, the live processes are {list(r.live)}",
            )
        if r.registry is not None:
            live = {cid: pid for _, cid, _, pid in r.tree if pid is not None}
            if dict(r.registry) != live:
                raise _fail(
                    trace,
                    i,
                    "registry",
                    f"the registry holds {dict(sorted(r.registry.items()))}, the live "
                    f"children are {dict(sorted(live.items()))}",
                )


def check_hangs(trace: Trace) -> None:
    """A process that stops heartbeating is caught exactly ``heartbeat_timeout`` after its
    last message (or its spawn; an agent's work messages count), unless it ended first;
    a healthy one never is."""
    tree = _Tree.of(trace.spec)
    log = trace.log
    hung_at = {r.pid: (i, r) for i, r in enumerate(log) if isinstance(r, ChildHung)}
    caught: set[int] = set()
    for i, r in enumerate(log):
        if not (isinstance(r, CrashApplied) and isinstance(r.crash.how, Hang)) or r.pid is None:
            continue
        start = next((e for e in log[:i] if isinstance(e, ChildStarting) and e.pid == r.pid), None)
        if start is None:
            continue
        child = tree.kids.get((start.supervisor, start.child_id))
        if not isinstance(child, ChildSpec) or child.heartbeat_timeout is None:
            continue
        timeout = child.heartbeat_timeout
        # Every valid message is a sign of life: heartbeats, statuses, and an agent's
        # work-protocol messages (HELLO, RESULT...).
        last = max(
            [start.at]
            + [
                e.at
                for e in log[:i]
                if (isinstance(e, ChildHeartbeat | ChildStatus) and e.pid == r.pid)
                or (isinstance(e, WireRecord) and e.sender == "agent" and e.pid == r.pid)
            ]
        )
        due = last + timeout
        exited = next((e for e in log[i:] if isinstance(e, ChildExited) and e.pid == r.pid), None)
        if r.pid in hung_at:
            caught.add(r.pid)
            j, hung = hung_at[r.pid]
            if abs(hung.at - due) > 1e-6:
                raise _fail(
                    trace,
                    j,
                    "hangs",
                    f"{start.child_id!r} (pid {r.pid}) was caught hanging at {hung.at:g}; its "
                    f"last message was at {last:g} and heartbeat_timeout={timeout:g}",
                )
        elif (
            exited is None
            or (exited.expected and _stop_began(exited, child, trace) > due + 1e-6)
            or (not exited.expected and exited.at >= due - 1e-6)
        ):
            after = [j for j in range(i, len(log)) if log[j].at <= due + 1e-6]
            raise _fail(
                trace,
                after[-1] if after else i,
                "hangs",
                f"{start.child_id!r} (pid {r.pid}) hung at {r.at:g} and was never caught "
                f"(due at {due:g})",
            )
    for pid, (j, _) in hung_at.items():
        if pid not in caught:
            raise _fail(trace, j, "hangs", f"pid {pid} was called hung but kept heartbeating")


def _stop_began(exited: ChildExited, child: ChildSpec, trace: Trace) -> float:
    """When the end of a process began: a watched process that its supervisor was
    already stopping is not flagged as hung (the stop is under way)."""
    if not exited.expected:
        return exited.at
    if child.id in trace.schedule.stubborn and isinstance(child.shutdown, float):
        return exited.at - child.shutdown  # it ignored the stop signal until SIGKILL
    return exited.at


def check_all(trace: Trace, *, oracles: Mapping[type, StrategyOracle] | None = None) -> None:
    """Run every check on ``trace`` (``oracles``: see :func:`check_siblings`), and the
    work checks (:func:`check_work`) when work was submitted.

    Raises:
        InvariantViolation: the first broken invariant, with the schedule and the trace
            up to the offending record.
    """
    check_siblings(trace, oracles=oracles)
    check_restart_types(trace)
    check_intensity(trace)
    check_backoff(trace)
    check_live_limits(trace)
    check_shutdown(trace)
    check_registry(trace)
    check_hangs(trace)
    if trace.has_work:
        check_work(trace)


# --------------------------------------------------------------------------------------
# Work: the queue and the service under crashes and hangs

_FINISHED = ("completed", "failed", "dead")


@attrs.define(eq=False)
class _Agents:
    """Which agent processes live, run, said ``HELLO`` or hung, as the trace tells."""

    current: dict[str, int] = attrs.field(factory=dict)  # child id -> newest pid
    types: dict[int, str | None] = attrs.field(factory=dict)  # pid -> agent type
    live: set[int] = attrs.field(factory=set)
    running: set[int] = attrs.field(factory=set)
    hello: set[int] = attrs.field(factory=set)
    hung: set[int] = attrs.field(factory=set)
    exited: dict[int, ChildExited] = attrs.field(factory=dict)

    def see(self, r: Record) -> None:
        if isinstance(r, ChildStarting):
            self.current[r.child_id] = r.pid
            self.types[r.pid] = r.agent_type
            self.live.add(r.pid)
        elif isinstance(r, ChildExited):
            self.live.discard(r.pid)
            self.exited[r.pid] = r
        elif isinstance(r, ChildRunning):
            self.running.add(r.pid)
        elif isinstance(r, ChildHung):
            self.hung.add(r.pid)
        elif isinstance(r, WireRecord) and r.sender == "agent" and r.word == "HELLO":
            self.hello.add(r.pid)

    def pid_of(self, child: str) -> int | None:
        return self.current.get(child)


_RELEASES = (WorkCompleted, WorkFailed, WorkReclaimed, WorkDeadLettered)


def _item_event(r: Record) -> str | None:
    if isinstance(r, (WorkSubmitted, WorkAssigned, WorkRefused, *_RELEASES)):
        return str(r.item_id)
    return None


def check_work_holders(trace: Trace) -> None:
    """No item is held by two live agents at once, and a live agent holds at most one.

    An item is held from its ``work_assigned`` until its ``work_completed``,
    ``work_failed``, ``work_reclaimed`` or ``work_dead``; its holder is the process of
    the agent at the assignment. A holder whose process has exited no longer counts
    (that its item was reclaimed then is :func:`check_work_reclaim`'s business).
    """
    agents = _Agents()
    held: dict[str, tuple[str, int | None, int]] = {}  # item -> (child, pid, attempt)
    holding: dict[int, str] = {}  # pid -> item
    for i, r in enumerate(trace.log):
        agents.see(r)
        if isinstance(r, WorkAssigned):
            pid = agents.pid_of(r.child_id)
            before = held.get(r.item_id)
            if before is not None and before[1] in agents.live:
                raise _fail(
                    trace,
                    i,
                    "work-holders",
                    f"{r.item_id!r} was assigned to {r.child_id!r} (attempt {r.attempt}) "
                    f"while {before[0]!r} (pid {before[1]}) still held attempt {before[2]}",
                )
            other = holding.get(pid) if pid is not None else None
            if other is not None and other != r.item_id and pid in agents.live:
                raise _fail(
                    trace,
                    i,
                    "work-holders",
                    f"{r.child_id!r} (pid {pid}) was given {r.item_id!r} while it held "
                    f"{other!r}: an agent holds at most one item",
                )
            if before is not None and before[1] is not None:
                holding.pop(before[1], None)
            held[r.item_id] = (r.child_id, pid, r.attempt)
            if pid is not None:
                holding[pid] = r.item_id
        elif isinstance(r, _RELEASES):
            gone = held.pop(r.item_id, None)
            if gone is not None and gone[1] is not None and holding.get(gone[1]) == r.item_id:
                del holding[gone[1]]


def check_work_reclaim(trace: Trace) -> None:
    """Reclaim happens at the exit: the item a process holds when it exits goes back
    (``work_reclaimed``, reason ``exit``, or ``stop`` for an exit the supervisor asked
    for) or is dead-lettered at the same virtual time; the item of a process found hung
    goes back (reason ``hang``) the moment ``hung`` is published. Conversely a reclaim
    for ``exit``, ``stop`` or ``hang`` happens only then, and one for ``unreachable``
    only at the assignment it undoes.
    """
    agents = _Agents()
    held: dict[str, tuple[str, int | None, int, float]] = {}  # item -> child, pid, attempt, at
    # item -> (index, time, reasons accepted, what happened)
    due: dict[str, tuple[int, float, tuple[str, ...], str]] = {}
    wired = any(isinstance(r, WireRecord) for r in trace.log)
    failed: set[tuple[object, object, int | None]] = set()  # FAILs sent: item, attempt, pid
    for i, r in enumerate(trace.log):
        if isinstance(r, WireRecord) and r.sender == "agent" and r.word == "FAIL":
            body = r.body if isinstance(r.body, dict) else {}
            failed.add((body.get("item"), body.get("attempt"), r.pid))
        for item, (j, at, _, what) in list(due.items()):
            if r.at > at + _EPS:
                raise _fail(
                    trace,
                    j,
                    "work-reclaim",
                    f"{item!r} was not reclaimed when {what} at {at:g} (nothing happened "
                    f"to it by {r.at:g})",
                )
        agents.see(r)
        if isinstance(r, ChildExited | ChildHung):
            for item, (child, pid, _attempt, _) in held.items():
                if pid == r.pid and item not in due:
                    if isinstance(r, ChildHung):
                        reasons: tuple[str, ...] = ("hang",)
                        what = f"its holder {child!r} (pid {pid}) was found hung"
                    else:
                        reasons = ("stop",) if r.expected else ("exit",)
                        what = f"its holder {child!r} (pid {pid}) exited"
                    due[item] = (i, r.at, reasons, what)
        elif isinstance(r, WorkAssigned):
            pid = agents.pid_of(r.child_id)
            held[r.item_id] = (r.child_id, pid, r.attempt, r.at)
            if pid is None or pid not in agents.live or pid in agents.hung:
                due[r.item_id] = (
                    i,
                    r.at,
                    ("unreachable", "exit", "stop", "hang"),
                    f"it was assigned to {r.child_id!r}, whose process was gone",
                )
        elif isinstance(r, WorkReclaimed | WorkDeadLettered):
            holder = held.pop(r.item_id, None)
            expect = due.pop(r.item_id, None)
            reason = r.reason if isinstance(r, WorkReclaimed) else None
            if reason == "handback":
                if expect is not None:
                    raise _fail(
                        trace,
                        i,
                        "work-reclaim",
                        f"{r.item_id!r} was handed back by {r.child_id!r} after {expect[3]}",
                    )
                continue
            if reason == "unreachable" and (
                holder is None or abs(holder[3] - r.at) > _EPS or holder[2] != r.attempt
            ):
                raise _fail(
                    trace,
                    i,
                    "work-reclaim",
                    f"{r.item_id!r} was reclaimed as unreachable at {r.at:g}, not at its "
                    "assignment",
                )
            if expect is None:
                if reason == "unreachable":
                    continue
                if (
                    isinstance(r, WorkDeadLettered)
                    and holder is not None
                    and (not wired or (r.item_id, r.attempt, holder[1]) in failed)
                ):
                    continue  # dead-lettered by its holder's FAIL: not a reclaim
                if isinstance(r, WorkReclaimed):
                    raise _fail(
                        trace,
                        i,
                        "work-reclaim",
                        f"{r.item_id!r} was reclaimed from {r.child_id!r} (reason {reason!r}) "
                        "though its holder neither exited nor was found hung then",
                    )
                raise _fail(
                    trace,
                    i,
                    "work-reclaim",
                    f"{r.item_id!r} was dead-lettered by {r.child_id!r} while its holder "
                    "neither answered, exited nor hung",
                )
            if reason is not None and reason not in expect[2]:
                raise _fail(
                    trace,
                    i,
                    "work-reclaim",
                    f"{r.item_id!r} was reclaimed with reason {reason!r} when {expect[3]}; "
                    f"expected {' or '.join(repr(x) for x in expect[2])}",
                )
        elif isinstance(r, WorkCompleted | WorkFailed):
            held.pop(r.item_id, None)
            expect = due.pop(r.item_id, None)
            if expect is not None:
                raise _fail(
                    trace,
                    i,
                    "work-reclaim",
                    f"{r.item_id!r} was answered by {r.child_id!r} after {expect[3]}, instead "
                    "of being reclaimed",
                )
    for item, (j, _at, _, what) in due.items():
        raise _fail(trace, j, "work-reclaim", f"{item!r} was never reclaimed after {what}")


def check_work_completions(trace: Trace) -> None:
    """No item is completed twice, and a completed item never changes.

    A ``work_completed`` comes from the agent holding the item's current attempt, after
    that agent sent a ``RESULT`` for that attempt (so a refused, stale or forged result
    never completes an item); after it, nothing happens to the item but refusals; and
    in every later :class:`~supervisor.testing.WorkSnapshot` the queue still has it
    completed, with that attempt and the result that agent sent.
    """
    agents = _Agents()
    wired = any(isinstance(r, WireRecord) for r in trace.log)
    sent: dict[tuple[object, object, int], object] = {}
    current: dict[str, tuple[str, int | None, int]] = {}  # item -> child, pid, attempt
    done: dict[str, tuple[int, WorkCompleted, object]] = {}
    for i, r in enumerate(trace.log):
        agents.see(r)
        if isinstance(r, WireRecord) and r.sender == "agent" and r.word == "RESULT":
            body = r.body if isinstance(r.body, dict) else {}
            sent.setdefault((body.get("item"), body.get("attempt"), r.pid), body.get("result"))
        item = _item_event(r)
        if item is not None and item in done and not isinstance(r, WorkRefused):
            _, first, _ = done[item]
            what = "completed again" if isinstance(r, WorkCompleted) else f"then {r.kind}"
            raise _fail(
                trace,
                i,
                "work-completions",
                f"{item!r} was completed by {first.child_id!r} (attempt {first.attempt}) at "
                f"{first.at:g}, and {what} by {getattr(r, 'child_id', '')!r}",
            )
        if isinstance(r, WorkAssigned):
            current[r.item_id] = (r.child_id, agents.pid_of(r.child_id), r.attempt)
        elif isinstance(r, WorkCompleted):
            holder = current.get(r.item_id)
            if holder is None or holder[0] != r.child_id or holder[2] != r.attempt:
                held = (
                    f"attempt {holder[2]} is held by {holder[0]!r}"
                    if holder is not None
                    else "it was never assigned"
                )
                raise _fail(
                    trace,
                    i,
                    "work-completions",
                    f"{r.item_id!r} was completed by {r.child_id!r} with attempt {r.attempt}, "
                    f"but {held}: a stale answer completed it",
                )
            key = (r.item_id, r.attempt, holder[1] if holder[1] is not None else -1)
            if wired and key not in sent:
                raise _fail(
                    trace,
                    i,
                    "work-completions",
                    f"{r.item_id!r} was completed for {r.child_id!r} (attempt {r.attempt}), "
                    "which sent no RESULT for that attempt",
                )
            done[r.item_id] = (i, r, sent.get(key))
        elif isinstance(r, _RELEASES):
            current.pop(r.item_id, None)
        elif isinstance(r, WorkSnapshot):
            states = {s.id: s for s in r.items}
            for item_id, (_, ev, result) in done.items():
                s = states.get(item_id)
                if s is None:
                    raise _fail(
                        trace,
                        i,
                        "work-completions",
                        f"completed item {item_id!r} is lost from the queue's record",
                    )
                if s.status != "completed" or s.attempt != ev.attempt:
                    raise _fail(
                        trace,
                        i,
                        "work-completions",
                        f"{item_id!r} was completed with attempt {ev.attempt}; the queue now "
                        f"says {s.status} with attempt {s.attempt}",
                    )
                if wired and s.result != result:
                    raise _fail(
                        trace,
                        i,
                        "work-completions",
                        f"{item_id!r} holds the result {s.result!r}; the completing agent "
                        f"{ev.child_id!r} sent {result!r}",
                    )
            for s in r.items:
                if s.status == "completed" and s.id not in done:
                    raise _fail(
                        trace,
                        i,
                        "work-completions",
                        f"the queue has {s.id!r} completed, but no work_completed was published",
                    )


def _max_deliveries(trace: Trace) -> dict[str, int]:
    found: dict[str, int] = {}
    for r in trace.log:
        if isinstance(r, WorkSnapshot):
            for s in r.items:
                found.setdefault(s.id, s.max_deliveries)
        elif isinstance(r, SubmitApplied):
            found[r.item_id] = r.max_deliveries
    return found


def check_work_deliveries(trace: Trace) -> None:
    """Deliveries never exceed ``max_deliveries``, and a dead item used them all.

    A delivery is an assignment; a reclaim on a graceful stop, a hand-back and an
    unreachable agent give it back. An item is dead-lettered exactly when an exit, a
    hang or a ``FAIL`` (with retry) spends its last delivery, and the queue's count of
    deliveries agrees with the events at every :class:`~supervisor.testing.WorkSnapshot`.
    """
    limits = _max_deliveries(trace)
    count: dict[str, int] = {}
    for i, r in enumerate(trace.log):
        item = _item_event(r)
        limit = limits.get(item, 0) if item is not None else 0
        if isinstance(r, WorkAssigned):
            n = count[r.item_id] = count.get(r.item_id, 0) + 1
            if item in limits and n > limit:
                raise _fail(
                    trace,
                    i,
                    "work-deliveries",
                    f"{r.item_id!r} was delivered a {n}th time (attempt {r.attempt}); "
                    f"max_deliveries={limit}",
                )
        elif isinstance(r, WorkReclaimed):
            if r.reason in ("stop", "handback", "unreachable"):
                count[r.item_id] = count.get(r.item_id, 0) - 1
            elif item in limits and count.get(r.item_id, 0) >= limit:
                raise _fail(
                    trace,
                    i,
                    "work-deliveries",
                    f"{r.item_id!r} went back to the queue ({r.reason}) after using all its "
                    f"{limit} deliveries; it should have been dead-lettered",
                )
        elif isinstance(r, WorkFailed) and not r.final:
            if item in limits and count.get(r.item_id, 0) >= limit:
                raise _fail(
                    trace,
                    i,
                    "work-deliveries",
                    f"{r.item_id!r} failed (retry) and went back to the queue after using "
                    f"all its {limit} deliveries; it should have been dead-lettered",
                )
        elif isinstance(r, WorkDeadLettered):
            n = count.get(r.item_id, 0)
            if item in limits and n != limit:
                raise _fail(
                    trace,
                    i,
                    "work-deliveries",
                    f"{r.item_id!r} was dead-lettered after {n} of its {limit} deliveries",
                )
        elif isinstance(r, WorkSnapshot):
            for s in r.items:
                if s.id in count and s.deliveries != count[s.id]:
                    raise _fail(
                        trace,
                        i,
                        "work-deliveries",
                        f"the queue counts {s.deliveries} deliveries of {s.id!r}; the events "
                        f"show {count[s.id]}",
                    )


def check_work_outcomes(trace: Trace) -> None:
    """Every submitted item ends completed, failed or dead once the schedule quiesces.

    At the quiet moment before the tree is stopped (the schedule played out and the tree
    had ``settle`` seconds), every item is in the queue's record with the status its
    events say; an item still assigned is held by a live agent (one still working, or
    hung unnoticed); an item still queued has no idle agent of its type (live, running,
    said ``HELLO``, not hung, holding nothing) that could take it. If the tree gave up
    first, items may stay queued. After the hub stopped, no item is assigned.
    """
    agents = _Agents()
    status: dict[str, str] = {}
    types: dict[str, str] = {}
    holder: dict[str, str] = {}
    for i, r in enumerate(trace.log):
        agents.see(r)
        if isinstance(r, WorkSubmitted):
            status[r.item_id] = "queued"
            types[r.item_id] = r.agent_type
        elif isinstance(r, WorkAssigned):
            status[r.item_id] = "assigned"
            holder[r.item_id] = r.child_id
        elif isinstance(r, WorkCompleted):
            status[r.item_id] = "completed"
        elif isinstance(r, WorkFailed):
            status[r.item_id] = "failed" if r.final else "queued"
        elif isinstance(r, WorkReclaimed):
            status[r.item_id] = "queued"
        elif isinstance(r, WorkDeadLettered):
            status[r.item_id] = "dead"
        elif isinstance(r, WorkSnapshot) and (r.quiesced or r.final):
            _check_outcomes_at(trace, i, r, agents, status, types, holder)


def _check_outcomes_at(
    trace: Trace,
    i: int,
    snap: WorkSnapshot,
    agents: _Agents,
    status: Mapping[str, str],
    types: Mapping[str, str],
    holder: Mapping[str, str],
) -> None:
    states = {s.id: s for s in snap.items}
    when = "after the hub stopped" if snap.final else f"at {snap.at:g}, once the schedule quiesced"
    busy = {s.agent for s in snap.items if s.status == "assigned"}
    for item, want in status.items():
        s = states.get(item)
        if s is None:
            raise _fail(
                trace, i, "work-outcomes", f"{item!r} is lost: the queue has no record {when}"
            )
        if s.status != want:
            raise _fail(
                trace,
                i,
                "work-outcomes",
                f"{item!r} is {s.status} in the queue {when}; its events say {want}",
            )
        if s.status == "assigned":
            child = holder.get(item, "")
            pid = agents.pid_of(child)
            if snap.final or pid not in agents.live:
                raise _fail(
                    trace,
                    i,
                    "work-outcomes",
                    f"{item!r} is still assigned to {child!r} {when}, whose process "
                    f"{'is gone' if pid not in agents.live else 'was stopped'}: it is lost",
                )
        elif s.status == "queued" and not snap.final:
            idle = sorted(
                child
                for child, pid in agents.current.items()
                if agents.types.get(pid) == types.get(item)
                and pid in agents.live
                and pid in agents.running
                and pid in agents.hello
                and pid not in agents.hung
                and child not in busy
            )
            if idle:
                raise _fail(
                    trace,
                    i,
                    "work-outcomes",
                    f"{item!r} waits in the queue {when} while {idle} of its type "
                    f"{types.get(item)!r} are idle",
                )


def check_work(trace: Trace) -> None:
    """Every work invariant: :func:`check_work_outcomes`, :func:`check_work_holders`,
    :func:`check_work_completions`, :func:`check_work_reclaim` and
    :func:`check_work_deliveries` (:func:`check_all` runs them when work was submitted).
    """
    check_work_holders(trace)
    check_work_reclaim(trace)
    check_work_completions(trace)
    check_work_deliveries(trace)
    check_work_outcomes(trace)
