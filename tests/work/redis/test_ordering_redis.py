"""Issue 21's ordering on Redis: ``priority``, ``delay`` and ``not_before`` are not
built yet and are refused with a ControlError naming the option and Redis (nothing is
queued); retry delays work (held by the hub that holds the item's lease)."""

from __future__ import annotations

import itertools

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
            ({"priority": 5}, "--priority"),
            ({"delay": 30}, "--delay/--not-before"),
            ({"not_before": "2099-01-01T00:00:00Z"}, "more than a year ahead"),
            ({"not_before": 4_000_000_000}, "more than a year ahead"),
        ]:
            with pytest.raises(ControlError, match=option):
                hub.work.submit("w", {"n": 1}, **options)  # type: ignore[arg-type]
        with pytest.raises(ControlError, match="not supported with --redis yet"):
            hub.work.submit("w", {"n": 1}, delay=5)
        assert not hub.work.items()  # nothing queued by a refused submit
        item = hub.work.submit("w", {"fail_retry": "flaky"})
        with trio.fail_after(TIMEOUT):
            done = await hub.work.wait(item.id)
        assert done.status is ItemStatus.DEAD and len(done.history) == 3
        ats = [h.at for h in done.history]
        assert all(b - a >= 0.29 for a, b in itertools.pairwise(ats)), ats
        await hub.stop()
