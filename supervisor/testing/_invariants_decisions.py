"""Reading a trace for the tree checks: the spec's shape, and each restart decision the
trace shows (which child failed, what its supervisor restarted or cancelled, whether it
escalated), reconstructed without calling the runtime's own decision code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs

from .._events import (
    ChildBackingOff,
    ChildExited,
    ChildRestarting,
    ChildSpawnFailed,
    ChildStarting,
    ChildStopped,
    Event,
    SupervisorEscalated,
    SupervisorStarted,
    SupervisorStopped,
    SupervisorStopping,
)
from .._members import pool_member
from .._spec import AnySpec, ChildSpec, PoolSpec, RestartType, SupervisorSpec
from ._invariants import EPS as _EPS
from ._run import (
    BackoffChosen,
    IntensityRecorded,
    StrategyChosen,
    Trace,
)

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
