"""The work controls not built on Redis yet (``--key``, ``--after``) and ``--require``
(not built on any backend) are refused on a hub with a Redis store, naming the option and
the backend; nothing is created (docs/work-controls.md)."""

from __future__ import annotations

import pytest

from supervisor import ControlError, WorkService
from supervisor.work.redis import RedisWorkQueue

from ...helpers import running
from ...redis_server import RedisServer, redis_server
from ..test_service import agent

__all__ = ["redis_server"]


async def test_keys_dependencies_and_requirements_are_refused_on_redis(
    redis_server: RedisServer,
) -> None:
    service = WorkService(RedisWorkQueue(redis_server.url))
    async with running([agent("a1")], work=service, hub_id="A") as (hub, _):
        first = hub.work.submit("w", {"n": 1})
        with pytest.raises(ControlError, match="--key: RedisWorkQueue does not support"):
            hub.work.submit("w", {"n": 1}, key="k")
        with pytest.raises(ControlError, match="--after: RedisWorkQueue does not support"):
            hub.work.submit("w", {"n": 1}, after=[first.id])
        with pytest.raises(ControlError, match="--require: RedisWorkQueue does not support"):
            hub.work.submit("w", {"n": 1}, require=["tier=large"])
        assert [first.id] == [i.id for i in hub.work.items()]
