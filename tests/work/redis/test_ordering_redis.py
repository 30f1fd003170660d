"""Issue 21's ordering on Redis: a delayed item waits in Redis (moved into the stream
by a take once the server's clock passed its time), on whichever hub submitted it;
``priority`` is not built yet and is refused with a ControlError naming the option and
Redis (nothing is queued); retry delays are held by the hub that holds the item."""

from __future__ import annotations

import itertools
import time

import pytest
import trio

from strategies import FixedBackoff
from supervisor import Hub, ItemStatus, WorkService
from supervisor._errors import ControlError
from supervisor.work.redis import RedisWorkQueue

from ...helpers import TIMEOUT
from ...redis_server import RedisServer
from ..test_service import agent

pytestmark = pytest.mark.slow


async def test_priority_and_delays_are_refused_on_redis_and_retries_wait_their_delay(
    redis_server: RedisServer,
) -> None:
    work = WorkService(RedisWorkQueue(redis_server.url), retry_backoff=FixedBackoff(0.3))
    hub = Hub([agent("a1")], work=work, hub_id="A")
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        for options, option in [
            ({"priority": 5}, "--priority .* not supported with --redis yet"),
            ({"not_before": "2099-01-01T00:00:00Z"}, "more than a year ahead"),
        ]:
            with pytest.raises(ControlError, match=option):
                hub.work.submit("w", {"n": 1}, **options)  # type: ignore[arg-type]
        assert not hub.work.items()  # nothing queued by a refused submit
        item = hub.work.submit("w", {"fail_retry": "flaky"})
        with trio.fail_after(TIMEOUT):
            done = await hub.work.wait(item.id)
        assert done.status is ItemStatus.DEAD and len(done.history) == 3
        ats = [h.at for h in done.history]
        assert all(b - a >= 0.29 for a, b in itertools.pairwise(ats)), ats
        await hub.stop()


async def test_a_delayed_item_waits_in_redis_until_its_time_on_any_hub(
    redis_server: RedisServer,
) -> None:
    """B (no agents of w) submits an item delayed 1 s and one ready; A's agent does the
    ready one at once and the delayed one only after its time (by the server's clock)."""
    doer = Hub([agent("a1")], work=WorkService(RedisWorkQueue(redis_server.url)), hub_id="A")
    other = Hub(
        [agent("q1", agent_type="other")],
        work=WorkService(RedisWorkQueue(redis_server.url)),
        hub_id="B",
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(doer.serve)
        await nursery.start(other.serve)
        submitted = time.time()
        later = other.work.submit("w", {"n": 1}, delay=1.0)
        ready = other.work.submit("w", {"n": 2})
        assert later.not_before is not None and later.not_before >= submitted + 1.0
        with trio.fail_after(TIMEOUT):
            assert await other.work.stored(later.id)
            shown = await other.work.fetch(later.id)
            assert shown.status is ItemStatus.QUEUED and shown.not_before == pytest.approx(
                later.not_before, abs=0.002
            )
            first = await other.work.wait(ready.id)
            done = await other.work.wait(later.id)
        assert first.status is done.status is ItemStatus.COMPLETED
        started = doer.work.get(later.id).started_at  # A's copy; wall time on Redis
        assert started is not None and started >= later.not_before - 0.01
        assert done.not_before is None
        await doer.stop()
        await other.stop()
