"""Invariant checks on a :class:`~supervisor.testing.Trace`: the supervision tree.

Each check derives what *should* have happened from the spec and from what the trace
shows, and raises :class:`InvariantViolation` naming the first record that disagrees.
The expectations are written from the documented semantics (OTP's, where hubvisor
follows OTP), not by calling the runtime's own decision code again: the built-in
strategies and policies have independent oracles here, and a custom policy can be
given one (see ``oracles`` of :func:`check_siblings`). The work checks are in
:mod:`._invariants_work`; :func:`check_all` runs both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

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
    ChildSpawnFailed,
    ChildStarting,
    ChildStatus,
    ChildStopped,
    Event,
    SupervisorEscalated,
    SupervisorStarted,
    SupervisorStopped,
)
from .._spec import ChildSpec, PoolSpec, RestartType
from ._invariants import EPS as _EPS, fail as _fail
from ._invariants_decisions import _analyse, _Analysis, _Decision, _split, _Tree
from ._invariants_work import check_work
from ._run import (
    CrashApplied,
    Record,
    Snapshot,
    StrategyChosen,
    Trace,
)
from ._schedule import Hang
from ._sim import WireRecord

__all__ = [
    "STRATEGY_ORACLES",
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
]

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
        elif isinstance(r, WireRecord) and r.sender == "hub" and r.word == "STOP":
            hung.add(r.pid)  # issue 21: stopped by the hub (a CANCEL not obeyed): a failure
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
