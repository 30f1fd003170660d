"""The pure restart plan against a small, independent model of OTP's rules (issues 7, 13).

:class:`PlanMachine` keeps its own picture of one supervisor: its members in start order
(each running, waiting for a scheduled group restart, or stopped on purpose; removed
members are gone from the list), a virtual clock, every restart it allowed, and the
scheduled restarts with their due times. Whenever a running member exits it asks
:func:`~supervisor._plan.plan` what to do, works out on its own what OTP's rules say,
checks that the two agree, and then carries the plan out on the model. Terminating a
member asks :func:`~supervisor._plan.cancelled_with` which scheduled restarts are
called off and checks that against the model too.

The plain tests below cover what the machine does not: user policies that raise or
answer nonsense, and ``cancelled_with`` on its own.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Sequence

import attrs
import hypothesis.strategies as st
import pytest
from hypothesis import event, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from strategies import (
    BackoffPolicy,
    ExponentialBackoff,
    FixedBackoff,
    Intensity,
    IntensityDecision,
    NoBackoff,
    OneForAll,
    OneForOne,
    RestartStrategy,
    RestForOne,
)
from supervisor import RestartType
from supervisor._plan import MemberView, Plan, PlanKind, cancelled_with, plan

PERMANENT = RestartType.PERMANENT
TRANSIENT = RestartType.TRANSIENT
TEMPORARY = RestartType.TEMPORARY

MAX_MEMBERS = 6

# Halves and whole seconds only: every sum is exact in binary floating point, so the
# model can hit the edge of the intensity window exactly (OTP keeps a restart that is
# exactly ``window`` old: ``R >= Now - Period``).
TIME_STEPS = st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0])

BACKOFFS: st.SearchStrategy[BackoffPolicy] = st.one_of(
    st.just(NoBackoff()),
    st.builds(FixedBackoff, seconds=st.sampled_from([0.0, 0.5, 1.0, 3.0])),
    # Long enough for other things to happen while a restart is pending (issue 13).
    st.builds(FixedBackoff, seconds=st.sampled_from([2.0, 10.0, 30.0])),
    st.builds(FixedBackoff, seconds=st.sampled_from([2.0, 10.0, 30.0])),
    st.builds(
        ExponentialBackoff,
        initial=st.sampled_from([0.5, 1.0]),
        factor=st.sampled_from([1.0, 2.0]),
        cap=st.sampled_from([4.0, 8.0]),
        jitter=st.sampled_from([0.0, 0.0, 0.5]),
        reset_after=st.sampled_from([1.0, 3.0]),
    ),
)


class State(enum.Enum):
    """A member's state in the model (a removed member is no longer in the list)."""

    RUNNING = "running"
    PENDING = "pending"  # waiting for the scheduled group restart ``token``
    STOPPED = "stopped"  # down on purpose: terminated, or transient and ended normally


@attrs.define
class ModelMember:
    id: str
    restart: RestartType
    state: State = State.RUNNING
    token: int | None = None
    started_at: float = 0.0
    attempt: int = 0

    @property
    def up(self) -> bool:
        return self.state is not State.STOPPED


def expected_delay(backoff: BackoffPolicy, attempt: int) -> tuple[float, float]:
    """The smallest and largest delay the backoff promises, worked out by hand."""
    if isinstance(backoff, NoBackoff):
        return (0.0, 0.0)
    if isinstance(backoff, FixedBackoff):
        return (backoff.seconds, backoff.seconds)
    assert isinstance(backoff, ExponentialBackoff)
    d = backoff.initial
    for _ in range(attempt - 1):
        d = min(backoff.cap, d * backoff.factor)
    d = min(backoff.cap, d)
    return (d * (1 - backoff.jitter), d)


def expected_attempt(backoff: BackoffPolicy, previous: int, uptime: float) -> int:
    """No and Fixed backoff never grow, so every failure is attempt 1; exponential
    backoff counts consecutive failures until a run of ``reset_after`` seconds."""
    if isinstance(backoff, ExponentialBackoff) and uptime < backoff.reset_after:
        return previous + 1
    return 1


def strategy_set(strategy: RestartStrategy, failed: str, ids: Sequence[str]) -> set[str]:
    """OTP's three strategies, written again from their definitions."""
    if isinstance(strategy, OneForOne):
        return {failed}
    if isinstance(strategy, OneForAll):
        return set(ids)
    assert isinstance(strategy, RestForOne)
    return set(ids[list(ids).index(failed) :])


class PlanMachine(RuleBasedStateMachine):
    """One supervisor under OTP's rules, as a model; ``plan`` must agree with it."""

    def __init__(self) -> None:
        super().__init__()
        self.initial: list[tuple[str, RestartType]] = []
        self.members: list[ModelMember] = []
        self.strategy: RestartStrategy = OneForOne()
        self.intensity = Intensity()
        self.backoff: BackoffPolicy = NoBackoff()
        self.clock = 0.0
        self.restarts: list[float] = []  # every restart allowed since the (re)start
        self.kept: tuple[float, ...] = ()  # the history the last plan said to keep
        self.dues: dict[int, float] = {}  # scheduled group restarts: token -> due time
        self.next_token = 0
        self.next_id = 0
        self.seed = 0

    # ---------------------------------------------------------------------------------
    # Set-up and helpers

    @initialize(
        types=st.lists(
            st.sampled_from([PERMANENT, PERMANENT, TRANSIENT, TEMPORARY]), min_size=1, max_size=5
        ),
        # Group restarts are where the interesting interleavings are: weigh them up.
        strategy=st.sampled_from([OneForOne(), OneForAll(), OneForAll(), RestForOne()]),
        max_restarts=st.sampled_from([0, 1, 2, 3, 5, 8]),
        window=st.sampled_from([0.5, 1.0, 2.0, 5.0, 10.0]),
        backoff=BACKOFFS,
    )
    def configure(
        self,
        types: list[RestartType],
        strategy: RestartStrategy,
        max_restarts: int,
        window: float,
        backoff: BackoffPolicy,
    ) -> None:
        self.initial = [(f"c{i}", t) for i, t in enumerate(types)]
        self.next_id = len(types)
        self.strategy = strategy
        self.intensity = Intensity(max_restarts=max_restarts, window=window)
        self.backoff = backoff
        self.start_all()

    def start_all(self) -> None:
        """Start (or, after an escalation, let the parent restart) the supervisor."""
        self.members = [ModelMember(i, t, started_at=self.clock) for i, t in self.initial]
        self.restarts = []
        self.kept = ()
        self.dues = {}

    def find(self, member_id: str) -> ModelMember:
        (m,) = [m for m in self.members if m.id == member_id]
        return m

    def views(self) -> list[MemberView]:
        return [MemberView(m.id, m.restart, up=m.up) for m in self.members]

    def pending(self) -> dict[str, int | None]:
        return {m.id: m.token for m in self.members if m.state is State.PENDING}

    def fire(self, token: int) -> None:
        """A scheduled group restart falls due: its members start."""
        del self.dues[token]
        for m in self.members:
            if m.state is State.PENDING and m.token == token:
                m.state = State.RUNNING
                m.token = None
                m.started_at = self.clock

    def forget_empty_tokens(self) -> None:
        live = {m.token for m in self.members if m.state is State.PENDING}
        for token in [t for t in self.dues if t not in live]:
            del self.dues[token]

    def advance(self, dt: float) -> None:
        """Let time pass; scheduled restarts that fall due meanwhile fire in due order."""
        target = self.clock + dt
        while self.dues and min(self.dues.values()) <= target:
            token = min(self.dues, key=lambda t: (self.dues[t], t))
            self.clock = max(self.clock, self.dues[token])
            self.fire(token)
        self.clock = target

    def stop_on_purpose(self, m: ModelMember) -> None:
        m.state = State.STOPPED
        m.token = None

    # ---------------------------------------------------------------------------------
    # Rules

    @rule(dt=TIME_STEPS, until_next_restart=st.booleans())
    def time_passes(self, dt: float, until_next_restart: bool) -> None:
        """Time passes by ``dt``, or until the next scheduled restart falls due."""
        if until_next_restart and self.dues:
            token = min(self.dues, key=lambda t: (self.dues[t], t))
            self.clock = max(self.clock, self.dues[token])
            self.fire(token)
        else:
            self.advance(dt)

    @rule(data=st.data(), dt=TIME_STEPS)
    def member_crashes(self, data: st.DataObject, dt: float) -> None:
        self.member_exits(data, dt, normal=False)

    @rule(data=st.data(), dt=TIME_STEPS, normal=st.booleans())
    def member_exits(self, data: st.DataObject, dt: float, normal: bool) -> None:
        """A running member exits ``dt`` seconds from now, with code 0 if ``normal``."""
        self.advance(dt)
        running = [m for m in self.members if m.state is State.RUNNING]
        if not running:
            return
        me = data.draw(st.sampled_from(running), label="failed")
        uptime = self.clock - me.started_at
        views = self.views()
        self.seed += 1

        def ask(members: Sequence[MemberView]) -> Plan:
            return plan(
                me.id,
                normal=normal,
                reason="exit 0" if normal else "exit 1",
                uptime=uptime,
                attempt=me.attempt,
                members=members,
                strategy=self.strategy,
                intensity=self.intensity,
                backoff=self.backoff,
                history=self.kept,
                now=self.clock,
                rng=random.Random(self.seed),
            )

        p = ask(views)
        assert p == ask(list(views)), "plan() is not a pure function of its arguments"
        assert views == self.views(), "plan() changed its arguments"
        event(f"plan: {p.kind.value}")

        self.check_plan_invariants(me, p)
        self.check_against_model(me, normal, uptime, p)
        self.carry_out(me, p)

    def check_plan_invariants(self, me: ModelMember, p: Plan) -> None:
        """What must hold of any plan, whatever the model thinks of it."""
        order = [m.id for m in self.members]
        by_id = {m.id: m for m in self.members}
        assert set(p.restart) <= set(order)
        assert set(p.stop) <= set(order)
        assert set(p.remove) <= set(order)
        for field in (p.restart, p.stop, p.remove):
            assert list(field) == sorted(field, key=order.index), f"{field} not in start order"
            assert len(set(field)) == len(field)
        assert all(by_id[i].restart is TEMPORARY for i in p.remove), "removes a non-temporary"
        assert not set(p.remove) & set(p.restart), "restarts a member it removes"
        assert not any(by_id[i].state is State.STOPPED for i in p.stop), "stops a stopped one"
        assert me.id not in p.stop, "the failed child has already stopped"
        assert len(p.history) <= self.intensity.max_restarts + 1
        assert list(p.history) == sorted(p.history)
        if p.kind in (PlanKind.RESTART, PlanKind.ESCALATE):
            window = self.clock - self.intensity.window
            assert all(window <= t <= self.clock for t in p.history), "history not pruned"
        else:
            assert p.history == self.kept, "an exit that restarts nothing changed the history"
        assert math.isfinite(p.delay) and p.delay >= 0
        if p.kind is PlanKind.RESTART:
            assert me.id in p.restart
            assert set(p.stop) <= set(p.restart) | set(p.remove)
            assert all(by_id[i].up for i in p.restart)
            assert p.history and p.history[-1] == self.clock
            assert len(p.history) <= self.intensity.max_restarts
            assert p.attempt >= 1
        else:
            assert not p.stop and not p.restart and p.delay == 0
        if p.kind is PlanKind.ESCALATE:
            assert p.reason

    def check_against_model(self, me: ModelMember, normal: bool, uptime: float, p: Plan) -> None:
        """What OTP's rules (with this project's backoff) say ``plan`` should answer."""
        if me.restart is TEMPORARY:
            assert p == Plan(
                PlanKind.REMOVE, remove=(me.id,), attempt=me.attempt, history=self.kept
            )
            return
        if me.restart is TRANSIENT and normal:
            assert p == Plan(PlanKind.STAY_DOWN, attempt=me.attempt, history=self.kept)
            return
        in_window = [t for t in self.restarts if self.clock - t <= self.intensity.window]
        if len(in_window) + 1 > self.intensity.max_restarts:
            assert p.kind is PlanKind.ESCALATE, (
                f"{len(in_window) + 1} restarts within {self.intensity.window}s, "
                f"max {self.intensity.max_restarts}: expected an escalation, got {p}"
            )
            assert p.reason == ("exit 0" if normal else "exit 1")
            return
        assert p.kind is PlanKind.RESTART, f"expected a restart, got {p}"
        chosen = strategy_set(self.strategy, me.id, [m.id for m in self.members])
        # The group: the strategy's set, less the siblings down on purpose (this
        # project's rule; supervisor.erl's start_children would start them again too).
        # A sibling waiting for an earlier restart is up: it is stopped (its timer
        # called off) and rescheduled with this group.
        group = [m for m in self.members if m.id in chosen and (m.up or m is me)]
        siblings = [m for m in group if m is not me]
        assert p.stop == tuple(m.id for m in siblings)
        assert p.remove == tuple(m.id for m in siblings if m.restart is TEMPORARY)
        assert p.restart == tuple(m.id for m in group if m.restart is not TEMPORARY)
        attempt = expected_attempt(self.backoff, me.attempt, uptime)
        assert p.attempt == attempt
        low, high = expected_delay(self.backoff, attempt)
        assert low <= p.delay <= high, f"delay {p.delay} not in [{low}, {high}]"
        assert p.history == (*in_window, self.clock)

    def carry_out(self, me: ModelMember, p: Plan) -> None:
        if p.kind is PlanKind.ESCALATE:
            # The supervisor stops everything and its parent starts it again.
            self.start_all()
            return
        if p.kind is PlanKind.REMOVE:
            self.members.remove(me)
            return
        if p.kind is PlanKind.STAY_DOWN:
            self.stop_on_purpose(me)
            return
        self.restarts.append(self.clock)
        self.kept = p.history
        me.attempt = p.attempt
        self.members = [m for m in self.members if m.id not in p.remove]
        self.next_token += 1
        token = self.next_token
        for m in self.members:
            if m.id in p.restart:
                m.state = State.PENDING
                m.token = token
        self.dues[token] = self.clock + p.delay
        self.forget_empty_tokens()  # the old tokens of rescheduled pending siblings
        if p.delay == 0:
            self.fire(token)
        else:
            event(f"scheduled a restart of {len(p.restart)}")

    def terminate(self, m: ModelMember) -> None:
        """OTP's ``terminate_child``: the rest of its pending group stays down too."""
        before = {x.id: (x.state, x.token) for x in self.members}
        got = cancelled_with(m.id, self.pending())
        expected = tuple(
            x.id
            for x in self.members
            if m.state is State.PENDING
            and x.state is State.PENDING
            and x.token == m.token
            and x is not m
        )
        assert got == expected
        if m.state is State.PENDING:
            event(f"terminate of a pending member called off {len(got)} others")
        self.stop_on_purpose(m)
        for other in got:
            self.stop_on_purpose(self.find(other))
        if m.restart is TEMPORARY:
            self.members.remove(m)  # OTP forgets a temporary child however it ends
        self.forget_empty_tokens()
        # Nobody else changed: other pending restarts still stand.
        for x in self.members:
            if x is not m and x.id not in got:
                assert (x.state, x.token) == before[x.id]

    @rule(data=st.data(), during_pending_restart=st.booleans())
    def terminate_child(self, data: st.DataObject, during_pending_restart: bool) -> None:
        pending = [m for m in self.members if m.state is State.PENDING]
        candidates = pending if pending and during_pending_restart else self.members
        if candidates:
            self.terminate(data.draw(st.sampled_from(candidates), label="terminated"))

    @rule(data=st.data())
    def restart_child(self, data: st.DataObject) -> None:
        stopped = [m for m in self.members if m.state is State.STOPPED]
        if not stopped:
            return
        m = data.draw(st.sampled_from(stopped), label="restarted")
        m.state = State.RUNNING
        m.started_at = self.clock  # no intensity cost, as in OTP

    @rule(restart=st.sampled_from(list(RestartType)))
    def start_child(self, restart: RestartType) -> None:
        if len(self.members) >= MAX_MEMBERS:
            return
        self.members.append(ModelMember(f"c{self.next_id}", restart, started_at=self.clock))
        self.next_id += 1

    # ---------------------------------------------------------------------------------
    # Invariants of the model itself (a broken model would make agreement meaningless)

    @invariant()
    def model_is_consistent(self) -> None:
        ids = [m.id for m in self.members]
        assert len(set(ids)) == len(ids)
        for m in self.members:
            assert (m.state is State.PENDING) == (m.token is not None)
            if m.state is State.PENDING:
                assert m.token in self.dues
                assert m.restart is not TEMPORARY, "a temporary member is never restarted"
        assert set(self.dues) == {m.token for m in self.members if m.token is not None}
        assert len(self.kept) <= self.intensity.max_restarts


PlanMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestPlanMachine = PlanMachine.TestCase


# -------------------------------------------------------------------------------------
# Plain tests


def decide(
    failed: str = "b",
    *,
    members: Sequence[MemberView] | None = None,
    strategy: object = None,
    intensity: object = None,
    backoff: object = None,
    normal: bool = False,
    history: tuple[float, ...] = (),
    now: float = 100.0,
) -> Plan:
    if members is None:
        members = [MemberView(i, PERMANENT) for i in "abc"]
    return plan(
        failed,
        normal=normal,
        reason="exit 3",
        uptime=0.0,
        attempt=0,
        members=members,
        strategy=strategy if strategy is not None else OneForOne(),  # type: ignore[arg-type]
        intensity=intensity if intensity is not None else Intensity(3, 5),  # type: ignore[arg-type]
        backoff=backoff if backoff is not None else NoBackoff(),  # type: ignore[arg-type]
        history=history,
        now=now,
        rng=random.Random(0),
    )


@attrs.frozen
class RaisingStrategy:
    def to_restart(self, failed: str, children: Sequence[str]) -> Sequence[str]:
        raise RuntimeError("strategy bug")


@attrs.frozen
class SiblingsOnly:
    def to_restart(self, failed: str, children: Sequence[str]) -> Sequence[str]:
        return [c for c in children if c != failed]


@attrs.frozen
class NoneStrategy:
    def to_restart(self, failed: str, children: Sequence[str]) -> Sequence[str]:
        return None  # type: ignore[return-value]


@attrs.frozen
class ConstantBackoff:
    value: float

    def delay(self, attempt: int, rng: random.Random) -> float:
        return self.value

    def resets_after(self, uptime: float) -> bool:
        return True

    def bounds(self, attempt: int) -> tuple[float, float]:
        return (0.0, 0.0)


@attrs.frozen
class ResetRaises(ConstantBackoff):
    def resets_after(self, uptime: float) -> bool:
        raise KeyError("uptime")


@attrs.frozen
class RaisingIntensity:
    def record(self, history: Sequence[float], now: float) -> IntensityDecision:
        raise ZeroDivisionError("intensity bug")

    def describe(self) -> str:
        return "broken"


@attrs.frozen
class WrongAnswerIntensity:
    def record(self, history: Sequence[float], now: float) -> IntensityDecision:
        return "yes"  # type: ignore[return-value]

    def describe(self) -> str:
        return "broken"


class TestBrokenPolicies:
    """A user policy that raises or answers nonsense escalates, naming the bug."""

    @pytest.mark.parametrize(
        ("policies", "words"),
        [
            ({"strategy": RaisingStrategy()}, "RuntimeError: strategy bug"),
            ({"strategy": SiblingsOnly()}, "without the failed child"),
            ({"strategy": NoneStrategy()}, "TypeError"),
            ({"backoff": ConstantBackoff(math.nan)}, "delay(1) returned nan"),
            ({"backoff": ConstantBackoff(-1.0)}, "delay(1) returned -1.0"),
            ({"backoff": ConstantBackoff(math.inf)}, "delay(1) returned inf"),
            ({"backoff": ResetRaises(0.0)}, "KeyError: 'uptime'"),
            ({"intensity": RaisingIntensity()}, "ZeroDivisionError: intensity bug"),
            ({"intensity": WrongAnswerIntensity()}, "AttributeError"),
        ],
        ids=[
            "strategy-raises",
            "strategy-omits-failed",
            "strategy-returns-none",
            "backoff-nan",
            "backoff-negative",
            "backoff-infinite",
            "backoff-reset-raises",
            "intensity-raises",
            "intensity-wrong-type",
        ],
    )
    def test_escalates_naming_the_bug(self, policies: dict[str, object], words: str) -> None:
        p = decide(**policies)  # type: ignore[arg-type]

        assert p.kind is PlanKind.ESCALATE
        assert p.reason.startswith("exit 3; then its supervisor's policy failed: ")
        assert words in p.reason
        assert "(fix the policy object)" in p.reason
        assert not p.stop and not p.restart and not p.remove

    def test_a_sibling_strategy_without_the_failed_child_is_named(self) -> None:
        p = decide(strategy=SiblingsOnly())

        assert "to_restart('b', ...) returned ['a', 'c'] without the failed child" in p.reason

    @pytest.mark.parametrize(
        ("restart", "normal", "kind"),
        [(TEMPORARY, False, PlanKind.REMOVE), (TRANSIENT, True, PlanKind.STAY_DOWN)],
    )
    def test_policies_are_not_asked_when_nothing_restarts(
        self, restart: RestartType, normal: bool, kind: PlanKind
    ) -> None:
        """A child that is not restarted costs no intensity and needs no policy at all."""
        members = [MemberView("a", PERMANENT), MemberView("b", restart)]
        p = decide(
            members=members,
            normal=normal,
            strategy=RaisingStrategy(),
            intensity=RaisingIntensity(),
            backoff=ConstantBackoff(math.nan),
            history=(99.0,),
        )

        assert p.kind is kind
        assert p.history == (99.0,)


class TestGroupRestart:
    def test_siblings_down_on_purpose_stay_down_and_temporaries_go(self) -> None:
        members = [
            MemberView("a", PERMANENT),
            MemberView("b", TRANSIENT, up=False),
            MemberView("c", PERMANENT),
            MemberView("d", TEMPORARY),
            MemberView("e", TRANSIENT),
        ]
        p = decide("c", members=members, strategy=OneForAll(), backoff=FixedBackoff(2.0))

        assert p.kind is PlanKind.RESTART
        assert p.stop == ("a", "d", "e")
        assert p.remove == ("d",)
        assert p.restart == ("a", "c", "e")
        assert p.delay == 2.0
        assert p.attempt == 1
        assert p.history == (100.0,)

    def test_intensity_counts_the_restart_exactly_window_old(self) -> None:
        """OTP keeps a restart exactly ``period`` seconds old (``R >= Now - Period``)."""
        edge = decide(intensity=Intensity(1, 5), history=(95.0,), now=100.0)
        past = decide(intensity=Intensity(1, 5), history=(94.5,), now=100.0)

        assert edge.kind is PlanKind.ESCALATE
        assert past.kind is PlanKind.RESTART
        assert past.history == (100.0,)


class TestCancelledWith:
    def test_a_member_not_pending_calls_off_nothing(self) -> None:
        pending: dict[str, int | None] = {"a": 1, "b": 1}

        assert cancelled_with("c", pending) == ()
        assert cancelled_with("c", {}) == ()
        assert cancelled_with("c", {"c": None, "a": None}) == ()

    def test_two_pending_restarts_are_independent(self) -> None:
        pending: dict[str, int | None] = {"a": 1, "b": 2, "c": 1, "d": 2, "e": 3}

        assert cancelled_with("a", pending) == ("c",)
        assert cancelled_with("d", pending) == ("b",)
        assert cancelled_with("e", pending) == ()

    @pytest.mark.parametrize(
        ("strategy", "group", "terminated", "cancelled"),
        [
            (OneForAll(), ("a", "b", "c"), "a", ("b", "c")),
            (RestForOne(), ("b", "c"), "c", ("b",)),
            (OneForOne(), ("b",), "b", ()),
        ],
    )
    def test_terminating_a_member_of_a_pending_group_leaves_the_group_down(
        self,
        strategy: RestartStrategy,
        group: tuple[str, ...],
        terminated: str,
        cancelled: tuple[str, ...],
    ) -> None:
        """Issue 13: ``b`` fails, its group waits out the backoff, one member is
        terminated: the rest of that group stays down; ``a`` of another plan is not."""
        p = decide("b", strategy=strategy, backoff=FixedBackoff(5.0))
        assert p.restart == group
        pending: dict[str, int | None] = dict.fromkeys(p.restart, 7)
        if "a" not in pending:
            pending["a"] = 6  # waiting for another, earlier restart

        assert cancelled_with(terminated, pending) == cancelled
        if "a" not in group:
            assert cancelled_with("a", pending) == ()
