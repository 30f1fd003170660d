"""Issue 21's ordering on Redis: a delayed item waits in Redis (moved into its
priority's stream by a take once the server's clock passed its time), on whichever hub
submitted it; priorities are decided by the take script across hubs (one stream per
level in use); retry delays are held by the hub that holds the item."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
import trio

from strategies import FixedBackoff
from supervisor import Hub, ItemStatus, WorkService
from supervisor._errors import ControlError
from supervisor.work.redis import RedisWorkQueue

from ...helpers import TIMEOUT, until
from ...redis_hubs import record
from ...redis_server import RedisServer
from ..test_service import agent

pytestmark = pytest.mark.slow


async def test_bad_delays_are_refused_on_redis_and_retries_wait_their_delay(
    redis_server: RedisServer,
) -> None:
    work = WorkService(RedisWorkQueue(redis_server.url), retry_backoff=FixedBackoff(0.3))
    hub = Hub([agent("a1")], work=work, hub_id="A")
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        for options, option in [
            ({"priority": 10**7}, "priority"),
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


def _expected(items: list[tuple[str, int]]) -> list[str]:
    """Ids in the order a take must give them: higher priority first, FIFO within one."""
    order = sorted(range(len(items)), key=lambda n: (-items[n][1], n))
    return [items[n][0] for n in order]


def _is_subsequence(part: list[str], whole: list[str]) -> bool:
    rest = iter(whole)
    return all(x in rest for x in part)


async def test_priorities_are_taken_highest_first_across_hubs(
    redis_server: RedisServer, client: Any
) -> None:
    """B (no agents of w) submits items of mixed priorities (one delayed, due before any
    hub takes); then A and C, one agent each, take them from Redis. Each take script
    gives the highest priority first, FIFO within one: so each hub's sequence (one agent
    does one item after another) is in the order of the whole, every item done once, and
    each level's stream is gone once empty (the set of levels too)."""
    b = Hub(
        [agent("q1", agent_type="other")],
        work=WorkService(RedisWorkQueue(redis_server.url)),
        hub_id="B",
    )
    prios = [0, 5, 0, -3, 5, 10, 0, -3, 10, 1, 0, 5]
    async with trio.open_nursery() as nursery:
        await nursery.start(b.serve)
        late = b.work.submit("w", {"n": 99}, priority=7, delay=0.3)
        submitted = [(late.id, 7)]
        for n, p in enumerate(prios):
            submitted.append((b.work.submit("w", {"n": n}, priority=p).id, p))
        with trio.fail_after(TIMEOUT):
            for item_id, _ in submitted:
                assert await b.work.stored(item_id)
        assert 5 == (await b.work.fetch(submitted[2][0])).priority  # in its hash (`pr`)
        assert "5" == client.hget(f"hubvisor:work:{{w}}:item:{submitted[2][0]}", "pr")
        assert {"10", "5", "1", "-3"} == set(client.zrange("hubvisor:work:{w}:prios", 0, -1))
        assert 2 == client.xlen("hubvisor:work:{w}:q:10")
        with trio.fail_after(TIMEOUT):  # the delayed one is due (by the server's clock)
            while client.time()[0] * 1000 + client.time()[1] // 1000 < late.not_before * 1000:
                await trio.sleep(0.05)
        cluster = await b.work.queue.cluster()
        assert 12 == cluster["queues"]["w"]["waiting"]  # the delayed one is not counted yet
        hubs = [
            Hub([agent(f"{h}1")], work=WorkService(RedisWorkQueue(redis_server.url)), hub_id=h)
            for h in ("A", "C")
        ]
        for hub in hubs:
            await nursery.start(hub.serve)
        with trio.fail_after(TIMEOUT):
            for item_id, _ in submitted:
                assert (await b.work.wait(item_id)).status is ItemStatus.COMPLETED
        rows = record(client)
        assert sorted(i for i, _ in submitted) == sorted(r["item"] for r in rows)  # once each
        whole = _expected(submitted)
        for h in ("A", "C"):
            mine = [r["item"] for r in rows if r["hub"] == h]
            assert _is_subsequence(mine, whole), (h, mine, whole)
        # emptied levels leave the set (at the next take of a hub with an idle agent)
        await until(lambda: not client.exists("hubvisor:work:{w}:prios"))
        assert [] == client.keys("hubvisor:work:{w}:q:*")
        for hub in (*hubs, b):
            await hub.stop()
