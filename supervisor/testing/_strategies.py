"""Hypothesis strategies for supervision specs and crash schedules.

Import them as ``from supervisor.testing import supervision_specs, schedules`` and
Hypothesis itself as ``import hypothesis.strategies as st`` (hubvisor's own
``strategies`` package holds restart policies). Everything shrinks towards small
trees of permanent children under one-for-one, and towards few, early, simple crashes.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Sequence
from typing import Any

import attrs
import hypothesis.strategies as st

from strategies import (
    BackoffPolicy,
    ExponentialBackoff,
    FixedBackoff,
    Intensity,
    IntensityPolicy,
    NoBackoff,
    OneForAll,
    OneForOne,
    RestartStrategy,
    RestForOne,
)

from .._spec import BRUTAL_KILL, AnySpec, ChildSpec, PoolSpec, RestartType, SupervisorSpec
from ._errors import InvalidSchedule
from ._schedule import Crash, Exit, Hang, How, Kill, Schedule, Submit

__all__ = [
    "agent_specs",
    "agent_types",
    "backoff_policies",
    "crash_schedules",
    "crashes",
    "intensities",
    "restart_strategies",
    "schedules",
    "specs_and_schedules",
    "specs_and_work_schedules",
    "submissions",
    "supervision_specs",
    "work_payloads",
    "work_schedules",
    "worker_ids",
]


@functools.cache
def _grid(lo: int, hi: int, step: float) -> st.SearchStrategy[float]:
    # Times on a coarse grid collide often (several crashes at one instant, a crash
    # exactly at a window's edge), which is where supervision bugs live.
    return st.integers(lo, hi).map(lambda k: k * step)


def restart_strategies() -> st.SearchStrategy[RestartStrategy]:
    """One of the built-in strategies (shrinks to :class:`~strategies.OneForOne`)."""
    return st.sampled_from([OneForOne(), RestForOne(), OneForAll()])


def intensities(*, max_restarts: int = 5) -> st.SearchStrategy[IntensityPolicy]:
    """:class:`~strategies.Intensity` limits with small windows and small maxima."""
    return st.builds(
        Intensity,
        max_restarts=st.integers(0, max_restarts),
        window=_grid(1, 40, 0.5),
    )


def backoff_policies() -> st.SearchStrategy[BackoffPolicy]:
    """No backoff, fixed, or exponential with jitter (delays on a 0.25 s grid)."""
    exponential = st.builds(
        lambda initial, factor, extra, jitter, reset: ExponentialBackoff(
            initial=initial, factor=factor, cap=initial + extra, jitter=jitter, reset_after=reset
        ),
        _grid(1, 8, 0.25),
        st.sampled_from([1.0, 1.5, 2.0, 3.0]),
        _grid(0, 20, 0.25),
        st.sampled_from([0.0, 0.1, 0.5]),
        _grid(1, 20, 1.0),
    )
    return st.one_of(st.just(NoBackoff()), st.builds(FixedBackoff, _grid(1, 12, 0.25)), exponential)


# Strategies are built once: building (and validating) them inside every draw would
# cost more than running the example.
_RESTART_TYPES = st.sampled_from(
    [RestartType.PERMANENT, RestartType.TRANSIENT, RestartType.TEMPORARY]
)
_SHUTDOWNS = st.sampled_from([1.0, 0.5, 5.0, BRUTAL_KILL])
_HEARTBEAT_TIMEOUTS = st.sampled_from([None, 3.0, 1.5])
_POOL_SIZES = st.integers(1, 3)


@functools.cache
def _integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.integers(lo, hi)


@functools.cache
def _kinds(*kinds: str) -> st.SearchStrategy[str]:
    return st.sampled_from(kinds)


def _child(draw: st.DrawFn, cid: str, heartbeats: bool) -> ChildSpec:
    timeout = draw(_HEARTBEAT_TIMEOUTS) if heartbeats else None
    return ChildSpec(
        id=cid,
        argv=["simulated"],
        restart=draw(_RESTART_TYPES),
        shutdown=draw(_SHUTDOWNS),
        notify=timeout is not None,
        heartbeat_timeout=timeout,
    )


@st.composite
def supervision_specs(
    draw: st.DrawFn,
    *,
    max_depth: int = 2,
    max_children: int = 4,
    pools: bool = True,
    heartbeats: bool = False,
    strategies: st.SearchStrategy[RestartStrategy] | None = None,
    intensity: st.SearchStrategy[IntensityPolicy] | None = None,
    backoff: st.SearchStrategy[BackoffPolicy] | None = None,
) -> SupervisorSpec:
    """Trees of supervisors, pools and workers with random restart types and policies.

    Ids are unique in the tree: workers ``c1``, ``c2``...; supervisors ``s1``...
    (the root is ``root``); pools ``p1-pool`` with members ``p1-agent-1``...

    Args:
        max_depth: nesting levels below the root.
        max_children: children per supervisor (at least one).
        pools: include :class:`~supervisor.PoolSpec` children.
        heartbeats: give some workers a ``heartbeat_timeout`` (the simulated processes
            heartbeat three times per timeout until a :class:`Hang` crash stops them).
        strategies: restart strategies to draw (default :func:`restart_strategies`),
            e.g. ``st.just(MyStrategy())`` to test a custom one.
        intensity: intensity policies to draw (default :func:`intensities`).
        backoff: backoff policies to draw (default :func:`backoff_policies`).
    """
    strat = strategies if strategies is not None else _DEFAULT_STRATEGIES
    inten = intensity if intensity is not None else _DEFAULT_INTENSITIES
    back = backoff if backoff is not None else _DEFAULT_BACKOFFS
    counters = {"c": 0, "s": 0, "p": 0}

    def next_id(prefix: str) -> str:
        counters[prefix] += 1
        return f"{prefix}{counters[prefix]}"

    def node(depth: int, name: str) -> SupervisorSpec:
        kinds = ["worker"]
        if depth < max_depth:
            kinds.append("supervisor")
            if pools:
                kinds.append("pool")
        n = draw(_integers(1, max_children))
        children: list[AnySpec] = []
        for _ in range(n):
            kind = draw(_kinds(*kinds))
            if kind == "worker":
                children.append(_child(draw, next_id("c"), heartbeats))
            elif kind == "supervisor":
                sub = node(depth + 1, next_id("s"))
                children.append(
                    SupervisorSpec(
                        name=sub.name,
                        children=sub.children,
                        strategy=sub.strategy,
                        intensity=sub.intensity,
                        backoff=sub.backoff,
                        restart=draw(_RESTART_TYPES),
                    )
                )
            else:
                children.append(_pool(draw, next_id("p"), heartbeats, strat, inten, back))
        return SupervisorSpec(
            name=name,
            children=children,
            strategy=draw(strat),
            intensity=draw(inten),
            backoff=draw(back),
        )

    return node(0, "root")


def _pool(
    draw: st.DrawFn,
    agent_type: str,
    heartbeats: bool,
    strat: st.SearchStrategy[RestartStrategy],
    inten: st.SearchStrategy[IntensityPolicy],
    back: st.SearchStrategy[BackoffPolicy],
) -> PoolSpec:
    """One pool of :func:`supervision_specs` (its draws in the order they always had)."""
    size = draw(_POOL_SIZES)
    return PoolSpec(
        agent_type=agent_type,
        template=_child(draw, "template", heartbeats),
        size=size,
        max_size=size,
        strategy=draw(strat),
        intensity=draw(inten),
        backoff=draw(back),
        restart=draw(_RESTART_TYPES),
    )


_DEFAULT_STRATEGIES = restart_strategies()
_DEFAULT_INTENSITIES = intensities()
_DEFAULT_BACKOFFS = backoff_policies()


def worker_ids(spec: SupervisorSpec | PoolSpec) -> list[str]:
    """The ids of every worker the tree starts (pool members up to their size)."""
    if isinstance(spec, PoolSpec):
        return [spec.member_id(n) for n in range(1, spec.size + 1)]
    ids: list[str] = []
    for child in spec.children:
        ids.extend([child.id] if isinstance(child, ChildSpec) else worker_ids(child))
    return ids


@functools.cache
def _hows(hang: bool) -> st.SearchStrategy[How]:
    simple: list[How] = [
        Exit(1),
        Exit(0),
        Kill(int(signal.SIGKILL)),
        Kill(int(signal.SIGSEGV)),
        Kill(int(signal.SIGTERM)),
    ]
    options: list[st.SearchStrategy[How]] = [
        st.sampled_from(simple),
        st.builds(Exit, st.integers(2, 255)),
    ]
    if hang:
        options.append(st.just(Hang()))
    return st.one_of(*options)


def crashes(
    ids: Sequence[str], *, at: st.SearchStrategy[float] | None = None, hang: bool = False
) -> st.SearchStrategy[Crash]:
    """One crash of one of ``ids``: exit 1 or 0, other codes, or a signal (or a hang)."""
    if not ids:
        raise InvalidSchedule(
            "crashes() needs at least one child id to crash (got an empty list); pass e.g. "
            "worker_ids(spec)"
        )
    return st.builds(
        Crash,
        at=at if at is not None else _grid(0, 120, 0.25),
        child_id=st.sampled_from(list(ids)),
        how=_hows(hang),
    )


@st.composite
def crash_schedules(
    draw: st.DrawFn,
    spec: SupervisorSpec,
    *,
    max_crashes: int = 10,
    step: float = 0.25,
    max_gap: float = 10.0,
    hang: bool = False,
) -> tuple[Crash, ...]:
    """Crashes of the tree's workers, in time order.

    Gaps between successive crashes are drawn on a ``step`` grid up to ``max_gap``
    (so crashes often coincide or fall exactly on an intensity window's edge); they
    shrink to 0 and the list shrinks to fewer crashes.
    """
    steps = draw(_crash_steps(tuple(worker_ids(spec)), max_crashes, step, max_gap, hang))
    t = 0.0
    out = []
    for gap, cid, how in steps:
        t += gap
        out.append(Crash(at=t, child_id=cid, how=how))
    return tuple(out)


@functools.lru_cache(maxsize=256)
def _crash_steps(
    ids: tuple[str, ...], max_crashes: int, step: float, max_gap: float, hang: bool
) -> st.SearchStrategy[list[tuple[float, str, How]]]:
    """The (gap, child id, how) lists of :func:`crash_schedules`, built once per tree
    shape: building and validating them in every draw cost a third of the draw."""
    gaps = _grid(0, int(max_gap / step), step)
    return st.lists(
        st.tuples(gaps, st.sampled_from(ids), _hows(hang)), min_size=1, max_size=max_crashes
    )


@functools.lru_cache(maxsize=256)
def _stubborn(ids: tuple[str, ...]) -> st.SearchStrategy[frozenset[str]]:
    return st.frozensets(st.sampled_from(ids), max_size=2)


@st.composite
def schedules(
    draw: st.DrawFn, spec: SupervisorSpec, *, max_crashes: int = 10, hang: bool = False
) -> Schedule:
    """A :class:`Schedule`: :func:`crash_schedules` plus some children that ignore SIGTERM."""
    ids = worker_ids(spec)
    return Schedule(
        crashes=draw(crash_schedules(spec, max_crashes=max_crashes, hang=hang)),
        stubborn=draw(_stubborn(tuple(ids))),
    )


def specs_and_schedules(
    *, max_crashes: int = 10, hang: bool = False, **spec_options: Any
) -> st.SearchStrategy[tuple[SupervisorSpec, Schedule]]:
    """A spec from :func:`supervision_specs` (``spec_options`` go there) and a schedule
    for it; ``hang=True`` also gives workers heartbeats and schedules :class:`Hang`."""
    if hang:
        spec_options.setdefault("heartbeats", True)
    return supervision_specs(**spec_options).flatmap(
        lambda spec: st.tuples(st.just(spec), schedules(spec, max_crashes=max_crashes, hang=hang))
    )


# --------------------------------------------------------------------------------------
# Work


def agent_types(spec: SupervisorSpec | PoolSpec) -> list[str]:
    """The agent types of the tree's workers (pool members included), sorted."""
    if isinstance(spec, PoolSpec):
        return [spec.agent_type]
    found: set[str] = set()
    for child in spec.children:
        if isinstance(child, ChildSpec):
            if child.agent_type is not None:
                found.add(child.agent_type)
        else:
            found.update(agent_types(child))
    return sorted(found)


def _as_agents(draw: st.DrawFn, spec: SupervisorSpec, types: list[str]) -> SupervisorSpec:
    children: list[AnySpec] = []
    for child in spec.children:
        if isinstance(child, ChildSpec):
            children.append(
                attrs.evolve(child, agent_type=draw(st.sampled_from(types)), notify=True)
            )
        elif isinstance(child, PoolSpec):
            children.append(attrs.evolve(child, template=attrs.evolve(child.template, notify=True)))
        else:
            children.append(_as_agents(draw, child, types))
    return attrs.evolve(spec, children=children)


def _pool_types(spec: SupervisorSpec) -> list[str]:
    found: list[str] = []
    for child in spec.children:
        if isinstance(child, PoolSpec):
            found.append(child.agent_type)
        elif isinstance(child, SupervisorSpec):
            found.extend(_pool_types(child))
    return found


@st.composite
def agent_specs(draw: st.DrawFn, /, **spec_options: Any) -> SupervisorSpec:
    """Trees from :func:`supervision_specs` (``spec_options`` go there) whose workers are
    all agents that take work: every plain worker gets an agent type (``"w"`` or one of
    the tree's pool types, so a type may have agents in a pool and elsewhere) and the
    notify channel; pool members take their pool's type (``p1``...)."""
    spec = draw(supervision_specs(**spec_options))
    return _as_agents(draw, spec, ["w", *_pool_types(spec)])


def work_payloads() -> st.SearchStrategy[dict[str, Any]]:
    """Payloads that steer a :class:`~supervisor.testing.SimWork` agent: an ``n``, and
    maybe ``seconds`` of work, a ``fail`` (``"final"``, ``"retry"``, or the number of
    attempts that fail), a forged ``stale`` result first, a result sent ``twice``.
    Shrinks to ``{"n": 0}``."""
    return _PAYLOADS


_PAYLOADS = st.fixed_dictionaries(
    {"n": st.integers(0, 99)},
    optional={
        "seconds": _grid(0, 24, 0.25),
        "fail": st.sampled_from([1, 2, "final", "retry"]),
        "stale": st.just(True),
        "twice": st.just(True),
    },
)
_MAX_DELIVERIES = st.one_of(st.none(), st.integers(1, 4))


@st.composite
def submissions(
    draw: st.DrawFn,
    spec: SupervisorSpec,
    *,
    max_items: int = 6,
    step: float = 0.25,
    max_at: float = 20.0,
    ordering: bool = True,
    dependencies: bool = False,
    time_limits: bool = False,
    delays: bool | None = None,
) -> tuple[Submit, ...]:
    """Work for the tree's agent types: up to ``max_items`` :class:`Submit` at times on a
    ``step`` grid up to ``max_at`` (so they meet the crashes of :func:`crash_schedules`),
    with :func:`work_payloads` and ``max_deliveries`` of 1 to 4 or the default, some of
    a priority other than 0 or with a delay (issue 21: :func:`check_work_order`; none with
    ``ordering=False``; ``delays=False``: priorities without delays, for a queue whose
    delays run on another clock than the run's, such as Redis's, by its server's). With
    ``dependencies=True`` (issue 21: :func:`check_work_dependencies`,
    :func:`check_work_keys`) some get a key of a few (so keys repeat) and some wait for
    earlier keyed ones (``after``); off by default, for queues without them. With
    ``time_limits=True`` (:func:`check_work_time_limits`) some get a ``time_limit`` of
    0.5 to 3 s, and some of those ``"ignore_cancel"`` in their payload."""
    types = agent_types(spec)
    if not types:
        raise InvalidSchedule(
            "submissions() needs a tree with agents (children with an agent_type); "
            "draw it from agent_specs()"
        )
    work = tuple(
        draw(
            st.lists(
                st.builds(
                    Submit,
                    at=_grid(0, int(max_at / step), step),
                    agent_type=st.sampled_from(types),
                    payload=_PAYLOADS,
                    max_deliveries=_MAX_DELIVERIES,
                    priority=st.sampled_from([0, 0, 0, 1, 5] if ordering else [0]),
                    delay=st.sampled_from(
                        [None, None, None, 0.5, 2.0] if ordering and delays is not False else [None]
                    ),
                ),
                min_size=1,
                max_size=max_items,
            )
        )
    )
    work = _with_dependencies(draw, work) if dependencies else work
    return _with_time_limits(draw, work) if time_limits else work


_LIMITS = st.sampled_from([None, None, 0.5, 1.5, 3.0])
_IGNORE_CANCEL: st.SearchStrategy[bool] = st.booleans()


def _with_time_limits(draw: st.DrawFn, work: tuple[Submit, ...]) -> tuple[Submit, ...]:
    """Give some of ``work`` a time limit (often shorter than its work), and some of
    those an agent that ignores ``CANCEL`` (shrinks to none)."""
    out = []
    for w in work:
        limit = draw(_LIMITS)
        if limit is not None and isinstance(w.payload, dict) and draw(_IGNORE_CANCEL):
            w = attrs.evolve(w, payload={**w.payload, "ignore_cancel": True})
        out.append(attrs.evolve(w, time_limit=limit))
    return tuple(out)


_KEYS = st.sampled_from([None, None, "a", "b", "c"])
_MOVE: st.SearchStrategy[bool] = st.booleans()


def _with_dependencies(draw: st.DrawFn, work: tuple[Submit, ...]) -> tuple[Submit, ...]:
    """Give some of ``work`` (in time order) a key, and some an ``after`` naming keys of
    earlier submits, often moved to the time of the last one named so that it waits
    (shrinks to none of either)."""
    named: dict[str, float] = {}  # TYPE:KEY -> when it was first submitted
    out: list[Submit] = []
    for w in sorted(work, key=lambda w: w.at):
        after: tuple[str, ...] = ()
        at = w.at
        if named:
            after = tuple(draw(st.lists(st.sampled_from(sorted(named)), max_size=2, unique=True)))
            move: bool = bool(after) and draw(_MOVE)
            if move:
                at = max(named[n] for n in after)
        key = draw(_KEYS)
        out.append(attrs.evolve(w, at=at, key=key, after=after))
        if key is not None:
            named.setdefault(f"{w.agent_type}:{key}", at)
    return tuple(out)


@st.composite
def work_schedules(
    draw: st.DrawFn,
    spec: SupervisorSpec,
    *,
    max_crashes: int = 8,
    max_items: int = 6,
    hang: bool = False,
    ordering: bool = True,
    dependencies: bool = False,
    time_limits: bool = False,
    delays: bool | None = None,
) -> Schedule:
    """A :class:`Schedule` with work: :func:`submissions` plus crashes (and hangs, with
    ``hang=True``) of the tree's agents in the same stretch of time, so agents often
    crash or hang while they hold an item, and some children that ignore SIGTERM."""
    base = draw(schedules(spec, max_crashes=max_crashes, hang=hang))
    work = draw(
        submissions(
            spec,
            max_items=max_items,
            ordering=ordering,
            dependencies=dependencies,
            time_limits=time_limits,
            delays=delays,
        )
    )
    return attrs.evolve(base, work=work)


def specs_and_work_schedules(
    *,
    max_crashes: int = 8,
    max_items: int = 6,
    hang: bool = False,
    ordering: bool = True,
    dependencies: bool = False,
    time_limits: bool = False,
    delays: bool | None = None,
    **spec_options: Any,
) -> st.SearchStrategy[tuple[SupervisorSpec, Schedule]]:
    """A tree from :func:`agent_specs` (``spec_options`` go there) and a
    :func:`work_schedules` for it; ``hang=True`` also gives agents heartbeats and
    schedules :class:`Hang`."""
    if hang:
        spec_options.setdefault("heartbeats", True)
    return agent_specs(**spec_options).flatmap(
        lambda spec: st.tuples(
            st.just(spec),
            work_schedules(
                spec,
                max_crashes=max_crashes,
                max_items=max_items,
                hang=hang,
                ordering=ordering,
                dependencies=dependencies,
                time_limits=time_limits,
                delays=delays,
            ),
        )
    )
