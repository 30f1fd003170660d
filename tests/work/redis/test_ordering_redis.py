"""Issue 21's ordering on Redis, not built yet: ``priority``, ``delay`` and
``not_before`` are refused with a ControlError naming the option and Redis (nothing is
queued), and a failed item is retried at once with one logged note."""

from __future__ import annotations

import logging

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


async def test_priority_and_delays_are_refused_on_redis_and_retries_are_at_once(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    work = WorkService(RedisWorkQueue(redis_server.url), retry_backoff=FixedBackoff(600.0))
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
        with caplog.at_level(logging.WARNING, logger="hubvisor"):
            item = hub.work.submit("w", {"fail_retry": "flaky"})
            with trio.fail_after(TIMEOUT):
                done = await hub.work.wait(item.id)
        assert done.status is ItemStatus.DEAD and len(done.history) == 3
        notes = [r for r in caplog.records if "retry delays are not supported" in r.message]
        assert len(notes) <= 1  # once per process (an earlier test may have said it)
        await hub.stop()
