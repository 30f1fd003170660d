"""The autoscaling decision: exact cases, then properties over random pools and queues."""

from __future__ import annotations

import itertools
import math
from typing import Any

import attrs
import pytest
from hypothesis import given, settings, strategies as st

from supervisor import ConfigError
from supervisor._scale import Autoscale, Decision, PoolScaler, decide, retirees

NOW = 1000.0


def ask(policy: Autoscale, **state: Any) -> Decision:
    """``decide`` with a quiet pool as the default state."""
    state.setdefault("current", policy.min)
    state.setdefault("waiting", 0)
    state.setdefault("idle_agents", 0)
    state.setdefault("idle_since", None)
    state.setdefault("last_change", None)
    state.setdefault("now", NOW)
    state.setdefault("max_agents_room", None)
    return decide(policy, **state)


class TestPolicy:
    @pytest.mark.parametrize(
        ("fields", "words"),
        [
            ({"max": 0}, "Autoscale.max must be an int >= 1 (got 0)"),
            ({"max": 4, "min": -1}, "Autoscale.min must be an int >= 0 (got -1)"),
            ({"max": 4, "min": 1.5}, "Autoscale.min must be an int >= 0 (got 1.5)"),
            ({"max": True}, "Autoscale.max must be an int >= 1 (got True)"),
            (
                {"max": 4, "target_waiting": 0},
                "Autoscale.target_waiting must be a finite number > 0",
            ),
            (
                {"max": 4, "cooldown": -1},
                "Autoscale.cooldown must be a finite number >= 0 (got -1)",
            ),
            (
                {"max": 4, "scale_down_after": float("inf")},
                "Autoscale.scale_down_after must be a finite number >= 0 (got inf)",
            ),
            ({"max": 2, "min": 3}, "min 3 is larger than max 2; lower min or raise max"),
        ],
    )
    def test_a_bad_field_is_named_with_its_value_and_a_fix(
        self, fields: dict[str, Any], words: str
    ) -> None:
        """Each error names the field, the value and what to write instead."""
        with pytest.raises(ConfigError) as err:
            Autoscale(**fields)
        assert words in str(err.value)
        assert "e.g. Autoscale(" in str(err.value) or "lower min" in str(err.value)

    def test_the_defaults_spawn_on_demand(self) -> None:
        """min defaults to 0, one agent per waiting item, 60 s idle, 10 s cooldown."""
        policy = Autoscale(max=3)
        assert (0, 3, 1.0, 60.0, 10.0) == attrs.astuple(policy)

    def test_bad_state_is_refused(self) -> None:
        """More idle members than members, or a negative count, is a caller's bug."""
        with pytest.raises(ConfigError, match="idle_agents 3 is more than the pool's 2"):
            ask(Autoscale(max=4), current=2, idle_agents=3)
        with pytest.raises(ConfigError, match=r"waiting=\.\.\.\) must be an int >= 0 \(got -1\)"):
            ask(Autoscale(max=4), waiting=-1)
        with pytest.raises(ConfigError, match="max_agents_room"):
            ask(Autoscale(max=4), max_agents_room=1.5)


class TestCases:
    def test_work_arriving_at_an_empty_pool_spawns_one_agent_per_item(self) -> None:
        """min 0, 3 items wait: grow from 0 to 3 at once."""
        d = ask(Autoscale(max=8), current=0, waiting=3)
        assert Decision("grow", 3, d.reason) == d
        assert "3 items waiting and no member idle: grow to 3" in d.reason

    def test_target_waiting_adds_one_agent_per_n_items(self) -> None:
        """7 items, 2 per agent: 4 more agents (rounded up)."""
        assert 5 == ask(Autoscale(max=8, target_waiting=2), current=1, waiting=7).target

    def test_growth_is_capped_by_max_and_by_the_hubs_room(self) -> None:
        """10 waiting wants +10; max 8 and 2 free slots in the hub allow +2."""
        d = ask(Autoscale(max=8), current=3, waiting=10, max_agents_room=2)
        assert ("grow", 5) == (d.action, d.target)
        assert "capped from 13" in d.reason
        full = ask(Autoscale(max=8), current=3, waiting=10, max_agents_room=0)
        assert ("stay", 3) == (full.action, full.target)
        assert "max_agents" in full.reason

    def test_an_idle_member_means_no_growth(self) -> None:
        """Items wait but a member is idle: the dispatcher will hand them out."""
        assert "stay" == ask(Autoscale(max=8), current=2, waiting=5, idle_agents=1).action

    def test_idle_members_retire_after_the_idle_period_down_to_min(self) -> None:
        """3 of 4 idle for 60 s with min 2: shrink to 2; a second earlier: stay."""
        policy = Autoscale(min=2, max=8, scale_down_after=60)
        early = ask(policy, current=4, idle_agents=3, idle_since=NOW - 59)
        assert ("stay", 4) == (early.action, early.target)
        late = ask(policy, current=4, idle_agents=3, idle_since=NOW - 60)
        assert ("shrink", 2) == (late.action, late.target)
        assert "3 members idle for 60s with nothing waiting: shrink to 2" == late.reason

    def test_nothing_changes_within_the_cooldown(self) -> None:
        """Work waits with no idle member, but the pool changed 5 s ago (cooldown 10 s)."""
        d = ask(Autoscale(max=8, cooldown=10), current=1, waiting=4, last_change=NOW - 5)
        assert ("stay", 1) == (d.action, d.target)
        assert "cooling down: changed 5s ago, cooldown 10s" == d.reason

    def test_a_pool_resized_out_of_bounds_comes_back(self) -> None:
        """Below min: grow to min; above max: shrink to max."""
        assert Decision("grow", 2, "0 members, below min 2: grow to 2") == ask(
            Autoscale(min=2, max=4), current=0
        )
        assert ("shrink", 4) == attrs.astuple(ask(Autoscale(max=4), current=9))[:2]


class TestPoolScaler:
    def test_the_idle_period_starts_at_the_first_idle_look_and_ends_with_work(self) -> None:
        """Idle members with nothing waiting start the period; an item waiting (or no
        idle member) ends it; a resize starts the cooldown and a new period."""
        scaler = PoolScaler(Autoscale(min=1, max=4, scale_down_after=10, cooldown=5))
        scaler.observe(waiting=0, idle_agents=2, now=100)
        scaler.observe(waiting=0, idle_agents=1, now=104)
        assert 100 == scaler.idle_since
        early = scaler.decide(current=3, waiting=0, idle_agents=2, now=109, max_agents_room=None)
        assert "stay" == early.action
        late = scaler.decide(current=3, waiting=0, idle_agents=2, now=110, max_agents_room=None)
        assert ("shrink", 1) == (late.action, late.target)
        scaler.changed(110)
        assert (None, 110) == (scaler.idle_since, scaler.last_change)
        busy = scaler.decide(current=1, waiting=3, idle_agents=0, now=112, max_agents_room=None)
        assert ("stay", None) == (busy.action, scaler.idle_since)  # cooling down, not idle
        grown = scaler.decide(current=1, waiting=3, idle_agents=0, now=115, max_agents_room=1)
        assert ("grow", 2) == (grown.action, grown.target)


# --------------------------------------------------------------------------------------
# Properties


@st.composite
def policies(draw: st.DrawFn) -> Autoscale:
    low = draw(st.integers(0, 5))
    return Autoscale(
        min=low,
        max=draw(st.integers(max(1, low), 20)),
        target_waiting=draw(st.sampled_from([0.5, 1, 2, 3, 7.5])),
        scale_down_after=draw(st.integers(0, 30)),
        cooldown=draw(st.integers(0, 20)),
    )


@st.composite
def states(draw: st.DrawFn) -> dict[str, Any]:
    current = draw(st.integers(0, 30))
    return {
        "current": current,
        "waiting": draw(st.integers(0, 100)),
        "idle_agents": draw(st.integers(0, current)),
        "idle_since": draw(st.none() | st.floats(0, 100).map(lambda ago: NOW - ago)),
        "last_change": draw(st.none() | st.floats(0, 50).map(lambda ago: NOW - ago)),
        "now": NOW,
        "max_agents_room": draw(st.none() | st.integers(0, 30)),
    }


class TestProperties:
    @given(policies(), states())
    def test_a_change_never_leaves_the_bounds_nor_the_room(
        self, policy: Autoscale, state: dict[str, Any]
    ) -> None:
        """A grow goes up, to at most max and the room; a shrink goes down, to at least
        min; a stay keeps the size."""
        d = decide(policy, **state)
        current, room = state["current"], state["max_agents_room"]
        if d.action == "grow":
            assert current < d.target <= policy.max
            assert room is None or d.target - current <= room
        elif d.action == "shrink":
            assert policy.min <= d.target < current
        else:
            assert current == d.target
        assert d.reason

    @given(policies(), states())
    def test_never_a_change_within_the_cooldown(
        self, policy: Autoscale, state: dict[str, Any]
    ) -> None:
        """Changed less than ``cooldown`` seconds ago: the size stays, whatever else holds."""
        d = decide(policy, **state)
        last = state["last_change"]
        if last is not None and NOW - last < policy.cooldown:
            assert ("stay", state["current"]) == (d.action, d.target)

    @given(policies(), states())
    def test_it_grows_or_shrinks_only_for_a_reason(
        self, policy: Autoscale, state: dict[str, Any]
    ) -> None:
        """Growth needs work waiting with no idle member (or a size below min); a
        shrink needs members idle for the period with nothing waiting (or a size above
        max)."""
        d = decide(policy, **state)
        current, waiting, idle = state["current"], state["waiting"], state["idle_agents"]
        since = state["idle_since"]
        if d.action == "grow":
            assert current < policy.min or (waiting > 0 and idle == 0)
        if d.action == "shrink":
            retire = (
                waiting == 0
                and idle > 0
                and since is not None
                and NOW - since >= policy.scale_down_after
            )
            assert current > policy.max or retire
            assert current > policy.max or current - d.target <= idle

    @settings(max_examples=300)
    @given(
        policies(),
        st.lists(st.integers(0, 12), min_size=1, max_size=40),
        st.none() | st.integers(1, 25),
    )
    def test_a_simulated_queue_drains_then_the_pool_shrinks_to_min(
        self, policy: Autoscale, arrivals: list[int], max_agents: int | None
    ) -> None:
        """Items arrive for a while; each agent does one per second; the pool follows
        ``decide`` every second (through a ``PoolScaler``). It stays within its bounds and the hub's max_agents,
        changes at most once per cooldown, does all the work, and ends at min."""
        room_for = max_agents if max_agents is None else max(max_agents, policy.min)
        size, queue, done = policy.min, 0, 0
        scaler = PoolScaler(policy)
        changes: list[int] = []
        steps = len(arrivals) + sum(arrivals) + 2 * (policy.cooldown + policy.scale_down_after) + 10
        for t in range(steps):
            queue += arrivals[t] if t < len(arrivals) else 0
            taken = min(size, queue)  # each member takes one item and finishes it this second
            queue -= taken
            done += taken
            d = scaler.decide(
                current=size,
                waiting=queue,
                idle_agents=size - taken,
                now=t,
                max_agents_room=None if room_for is None else room_for - size,
            )
            if d.target != size:
                size = d.target
                scaler.changed(t)
                changes.append(t)
            assert policy.min <= size <= policy.max
            assert room_for is None or size <= room_for
        assert sum(arrivals) == done
        assert 0 == queue
        assert policy.min == size
        gaps = [b - a for a, b in itertools.pairwise(changes)]
        assert all(gap >= policy.cooldown for gap in gaps)

    @given(policies(), st.integers(1, 50), st.integers(1, 10))
    def test_with_work_waiting_and_room_it_grows(
        self, policy: Autoscale, waiting: int, room: int
    ) -> None:
        """A pool below max with items waiting, no idle member and room in the hub grows
        once the cooldown is over."""
        current = policy.max - 1 if policy.max - 1 >= policy.min else policy.min
        if current >= policy.max:
            return  # min == max: nothing to grow into
        d = ask(
            policy,
            current=current,
            waiting=waiting,
            last_change=NOW - policy.cooldown,
            max_agents_room=room,
        )
        assert "grow" == d.action
        wanted = current + math.ceil(waiting / policy.target_waiting)
        assert min(policy.max, current + room, wanted) == d.target


class TestRetirees:
    """Which members a shrink stops: idle ones only."""

    @given(
        size=st.integers(min_value=0, max_value=12),
        idle_bits=st.lists(st.booleans(), min_size=12, max_size=12),
        count=st.integers(min_value=-2, max_value=14),
    )
    def test_a_shrink_stops_only_idle_members_the_newest_first(
        self, size: int, idle_bits: list[bool], count: int
    ) -> None:
        """Never a busy member, never more than asked, as many as asked when enough are
        idle, and the highest-numbered idle ones first."""
        members = [f"w-agent-{n}" for n in range(1, size + 1)]
        idle = [m for m, bit in zip(members, idle_bits, strict=False) if bit]
        picked = retirees(members, [*idle, "stranger"], count)

        assert set(picked) <= set(idle)
        assert len(picked) == len(set(picked)) == min(max(0, count), len(idle))
        assert picked == sorted(idle, key=members.index, reverse=True)[: len(picked)]

    def test_the_busy_newest_member_stays_and_the_idle_oldest_goes(self) -> None:
        """Issue 18 fault 9: agent-2 was stopped mid-item while idle agent-1 was kept."""
        assert ["w-agent-1"] == retirees(["w-agent-1", "w-agent-2"], ["w-agent-1"], 1)
