"""The simulation's clock reads the same times as ``MockClock(autojump_threshold=0)``."""

from __future__ import annotations

import trio
import trio.testing

from supervisor.testing._sim import sim_clock


def _times(clock: trio.testing.MockClock) -> list[float]:
    seen: list[float] = []

    async def main() -> None:
        seen.append(trio.current_time())
        for delay in (0.25, 1.0, 0.1, 7.5, 0.0, 1e-9, 3.3):
            await trio.sleep(delay)  # autojumps
            seen.append(trio.current_time())
        clock.jump(2.5)
        seen.append(trio.current_time())
        with trio.move_on_after(0.7):
            await trio.sleep_forever()
        seen.append(trio.current_time())
        seen.append(clock.deadline_to_sleep_time(trio.current_time() + 1))
        seen.append(clock.deadline_to_sleep_time(trio.current_time()))

    trio.run(main, clock=clock)
    return seen


def test_sim_clock_reads_the_mock_clock_times_exactly() -> None:
    clock = sim_clock()
    assert isinstance(clock, trio.testing.MockClock)
    assert clock.autojump_threshold == 0
    assert _times(clock) == _times(trio.testing.MockClock(autojump_threshold=0))


def test_sim_clock_with_a_rate_is_a_plain_mock_clock() -> None:
    clock = sim_clock()
    clock.rate = 1.0
    reference = trio.testing.MockClock(rate=1.0)
    assert clock.deadline_to_sleep_time(clock.current_time() + 10) > 9
    assert reference.deadline_to_sleep_time(reference.current_time() + 10) > 9
    assert clock.current_time() >= 0
