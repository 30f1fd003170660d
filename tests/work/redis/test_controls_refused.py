"""Idempotent submits on Redis (decided atomically by the submit script, across hubs;
docs/work-controls.md). ``--after`` and ``--require`` on Redis: test_deps_redis.py and
test_tiers_redis.py."""

from __future__ import annotations

from typing import Any

import trio

from supervisor import ItemStatus, WorkService
from supervisor.work.redis import RedisWorkQueue

from ...helpers import TIMEOUT, running, until
from ...redis_server import RedisServer, redis_server
from ..test_service import agent

__all__ = ["redis_server"]


async def test_a_key_answers_the_kept_item_across_hubs_until_its_hash_expires(
    redis_server: RedisServer, client: Any
) -> None:
    """Hub A runs the agent; hub B (no agent of the type) submits with the same key: the
    script answers A's item, B creates nothing — before and after it completed. Once the
    item's hash expired (keep_finished=1 s) the key creates a new item."""
    a = WorkService(RedisWorkQueue(redis_server.url, keep_finished=1))
    b = WorkService(RedisWorkQueue(redis_server.url, keep_finished=1))
    async with (
        running([agent("a1")], work=a, hub_id="A") as (hub_a, _),
        running([agent("q1", agent_type="other")], work=b, hub_id="B") as (hub_b, _),
    ):
        first = hub_a.work.submit("w", {"n": 4, "sleep": 0.3}, key="task-1")
        assert await hub_a.work.stored(first.id)
        second = hub_a.work.submit("w", {"n": 5}, key="task-1")
        assert await hub_a.work.stored(second.id)
        assert first.id == (await hub_a.work.resolve(second)).id
        again = hub_b.work.submit("w", {"n": 6}, key="task-1")
        assert await hub_b.work.stored(again.id)
        kept = await hub_b.work.resolve(again)
        assert first.id == kept.id and {"n": 4, "sleep": 0.3} == kept.payload
        assert "task-1" == kept.key
        assert not client.exists(f"hubvisor:work:{{w}}:item:{again.id}"), "created nothing"
        with trio.fail_after(TIMEOUT):
            done = await hub_a.work.wait(first.id)
        assert ItemStatus.COMPLETED == done.status
        late = hub_b.work.submit("w", {"n": 7}, key="task-1")
        assert await hub_b.work.stored(late.id)
        assert first.id == (await hub_b.work.resolve(late)).id
        await until(lambda: not client.exists(f"hubvisor:work:{{w}}:item:{first.id}"), 10)
        fresh = hub_b.work.submit("w", {"n": 8}, key="task-1")
        assert await hub_b.work.stored(fresh.id)
        assert fresh.id == (await hub_b.work.resolve(fresh)).id != first.id
        # the index holds about the kept items' keys: the expired ones go as keys come
        for n in range(6):
            item = hub_b.work.submit("w", {"n": n}, key=f"other-{n}")
            assert await hub_b.work.stored(item.id)
        assert client.hlen("hubvisor:work:{w}:keys") <= 7
