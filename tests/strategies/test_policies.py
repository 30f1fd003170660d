"""Restart policy objects: pure functions, property-tested."""

from __future__ import annotations

import random

import hypothesis.strategies as st
import pytest
from hypothesis import given

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

ids = st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=1, max_size=12, unique=True)


@st.composite
def children_and_failed(draw: st.DrawFn) -> tuple[list[str], str]:
    children = draw(ids)
    return children, draw(st.sampled_from(children))


class TestSiblings:
    @given(children_and_failed())
    def test_one_for_one(self, case: tuple[list[str], str]) -> None:
        """One-for-one restarts exactly the failed child."""
        children, failed = case

        assert [failed] == list(OneForOne().to_restart(failed, children))

    @given(children_and_failed())
    def test_one_for_all(self, case: tuple[list[str], str]) -> None:
        """One-for-all restarts every child, in start order."""
        children, failed = case

        assert children == list(OneForAll().to_restart(failed, children))

    @given(children_and_failed())
    def test_rest_for_one_is_the_suffix(self, case: tuple[list[str], str]) -> None:
        """Rest-for-one restarts exactly the suffix that starts at the failed child."""
        children, failed = case
        result = list(RestForOne().to_restart(failed, children))

        assert failed == result[0]
        assert children[len(children) - len(result) :] == result

    @pytest.mark.parametrize("strategy", [OneForOne(), OneForAll(), RestForOne()])
    def test_unknown_child(self, strategy: RestartStrategy) -> None:
        """A failed id that is not a child is a clear error."""
        with pytest.raises(ValueError, match="'z' is not among the children"):
            strategy.to_restart("z", ["a", "b"])

    def test_protocol(self) -> None:
        """The built-ins satisfy the protocol."""
        for s in (OneForOne(), OneForAll(), RestForOne()):
            assert isinstance(s, RestartStrategy)


class TestBackoff:
    @given(
        initial=st.floats(0.001, 10),
        factor=st.floats(1, 10),
        extra=st.floats(0, 1000),
        jitter=st.floats(0, 1),
        attempt=st.integers(1, 10_000),
        seed=st.integers(0, 2**32),
    )
    def test_exponential_capped_and_within_bounds(
        self, initial: float, factor: float, extra: float, jitter: float, attempt: int, seed: int
    ) -> None:
        """Every delay lies within bounds(), and bounds never exceed the cap."""
        policy = ExponentialBackoff(
            initial=initial, factor=factor, cap=initial + extra, jitter=jitter
        )
        low, high = policy.bounds(attempt)
        delay = policy.delay(attempt, random.Random(seed))

        assert low <= delay <= high <= policy.cap

    @given(
        initial=st.floats(0.001, 10),
        factor=st.floats(1, 10),
        extra=st.floats(0, 1000),
        attempt=st.integers(1, 10_000),
    )
    def test_exponential_grows_monotonically(
        self, initial: float, factor: float, extra: float, attempt: int
    ) -> None:
        """Without jitter the delay never shrinks from one attempt to the next."""
        policy = ExponentialBackoff(initial=initial, factor=factor, cap=initial + extra)
        rng = random.Random(0)

        assert policy.delay(attempt, rng) <= policy.delay(attempt + 1, rng)
        assert initial == pytest.approx(policy.delay(1, rng))

    @given(reset_after=st.floats(0, 1000), uptime=st.floats(0, 2000))
    def test_exponential_resets_after_stable(self, reset_after: float, uptime: float) -> None:
        """The policy resets exactly when the child stayed up reset_after seconds."""
        policy = ExponentialBackoff(reset_after=reset_after)

        assert (uptime >= reset_after) == policy.resets_after(uptime)

    def test_exponential_values(self) -> None:
        """1, 2, 4, 8, then the cap."""
        policy = ExponentialBackoff(initial=1, factor=2, cap=10)
        rng = random.Random(0)

        assert [1, 2, 4, 8, 10, 10] == [policy.delay(n, rng) for n in range(1, 7)]
        assert 10 == policy.delay(10**9, rng)  # no overflow on a long crash loop

    def test_fixed_and_none(self) -> None:
        """Fixed waits the same; none waits nothing; both are always stable."""
        rng = random.Random(0)

        assert 2.5 == FixedBackoff(2.5).delay(7, rng)
        assert (2.5, 2.5) == FixedBackoff(2.5).bounds(3)
        assert 0 == NoBackoff().delay(3, rng)
        assert (0, 0) == NoBackoff().bounds(3)
        assert FixedBackoff(1).resets_after(0) and NoBackoff().resets_after(0)
        assert 0 == ExponentialBackoff(initial=0, cap=5).delay(3, rng)
        for p in (NoBackoff(), FixedBackoff(), ExponentialBackoff()):
            assert isinstance(p, BackoffPolicy)

    @pytest.mark.parametrize(
        ("kwargs", "fragment"),
        [
            ({"factor": 0.5}, "factor must be >= 1"),
            ({"jitter": 2}, "jitter must be in [0, 1]"),
            ({"initial": 5, "cap": 1}, "cap (1) must be >= initial (5)"),
            ({"initial": -1}, "must be >= 0"),
            ({"cap": float("inf")}, "finite number"),
        ],
    )
    def test_exponential_rejects(self, kwargs: dict[str, float], fragment: str) -> None:
        """Bad parameters name the field and the fix."""
        with pytest.raises(ValueError) as info:
            ExponentialBackoff(**kwargs)

        assert fragment in str(info.value)

    def test_attempt_must_be_positive(self) -> None:
        """Attempts count from 1."""
        with pytest.raises(ValueError, match="attempt must be >= 1"):
            ExponentialBackoff().delay(0, random.Random(0))

    def test_fixed_rejects_negative(self) -> None:
        """A fixed delay cannot be negative."""
        with pytest.raises(ValueError, match="FixedBackoff.seconds must be >= 0"):
            FixedBackoff(-1)


class TestIntensity:
    @given(
        max_restarts=st.integers(0, 10),
        window=st.floats(0.1, 100),
        gaps=st.lists(st.floats(0, 50), min_size=1, max_size=40),
    )
    def test_matches_sliding_window_count(
        self, max_restarts: int, window: float, gaps: list[float]
    ) -> None:
        """A restart is refused exactly when more than max fall within the window."""
        policy = Intensity(max_restarts, window)
        history: tuple[float, ...] = ()
        times: list[float] = []
        now = 0.0
        for gap in gaps:
            now += gap
            times.append(now)
            decision = policy.record(history, now)
            in_window = [t for t in times if t >= now - window]

            assert (len(in_window) <= max_restarts) == decision.allowed
            assert tuple(in_window) == decision.history
            history = decision.history

    def test_zero_means_never(self) -> None:
        """With max_restarts=0 the first failure escalates."""
        assert not Intensity(0, 5).record((), 0).allowed

    def test_describe_and_protocol(self) -> None:
        """The limit reads well in messages; it satisfies the protocol."""
        assert "3 restarts in 5s" == Intensity(3, 5).describe()
        assert isinstance(Intensity(), IntensityPolicy)

    @pytest.mark.parametrize(
        ("args", "fragment"), [((-1, 5), "max_restarts"), ((1, 0), "window"), ((True, 5), "int")]
    )
    def test_rejects(self, args: tuple[int, float], fragment: str) -> None:
        """Bad limits are refused."""
        with pytest.raises(ValueError, match=fragment):
            Intensity(*args)
