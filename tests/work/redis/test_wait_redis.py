"""``hub.work.wait`` with a Redis store: an item that ends on another hub (read from Redis
now and then), and one that ends on the waiting hub itself (woken by its event)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from supervisor import Client, Hub, ItemFailed, ItemStatus, WaitTimeout, WorkService
from supervisor.work.redis import RedisWorkQueue

from ...helpers import TIMEOUT
from ...redis_hubs import HubProc
from ...redis_server import RedisServer, redis_server, redis_server_factory
from ..test_service import agent

__all__ = ["redis_server", "redis_server_factory"]

pytestmark = pytest.mark.slow


async def test_a_wait_sees_an_item_another_hub_ended(redis_server: RedisServer) -> None:
    """B submits for type w, which only A runs: B's waits end when A completes or fails
    the items (B reads them from Redis); A's own wait on an item it holds ends too."""
    doer = Hub([agent("a1")], work=WorkService(RedisWorkQueue(redis_server.url)), hub_id="A")
    other = Hub(
        [agent("q1", agent_type="other")],
        work=WorkService(RedisWorkQueue(redis_server.url)),
        hub_id="B",
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(doer.serve)
        await nursery.start(other.serve)
        done = other.work.submit("w", {"n": 4})
        bad = other.work.submit("w", {"fail": "no such file"})
        slow = other.work.submit("w", {"n": 1, "sleep": 1.0})
        with trio.fail_after(TIMEOUT):
            got = await other.work.wait(done.id)
            failed = await other.work.wait(bad.id)
            with pytest.raises(WaitTimeout) as caught:
                await other.work.wait(slow.id, timeout=0.1)
            assert caught.value.items[0].status in (ItemStatus.QUEUED, ItemStatus.ASSIGNED)
            ended = await doer.work.wait(slow.id)  # A holds it: its own event wakes it
            assert ItemStatus.COMPLETED == (await other.work.wait(slow.id)).status
        assert (ItemStatus.COMPLETED, 8, "a1") == (
            got.status,
            got.result["double"],
            got.result["by"],
        )
        assert (ItemStatus.FAILED, "no such file") == (failed.status, failed.error)
        assert ItemStatus.COMPLETED == ended.status
        assert 0 == other.work.waiters == doer.work.waiters
        await doer.stop()
        await other.stop()


def test_a_client_of_one_hub_waits_for_work_another_hub_process_does(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Two ``hubvisor run --redis`` processes: A runs no agent of type w (one of type
    other), B runs two. A Client of A submits a batch and waits for it: B does the work, A reads
    the ends from Redis; a failure reaches the client as ItemFailed."""
    a = HubProc(tmp_path, "A", redis_server.url, size=1, agent_type="other").start()
    b = HubProc(tmp_path, "B", redis_server.url, size=2).start()
    try:
        with Client(a.socket) as hub:
            ids = [hub.submit("w", {"n": n}) for n in range(5)]
            bad = hub.submit("w", {"fail": "nope"})
            results = hub.wait_many(ids, timeout=TIMEOUT)
            with pytest.raises(ItemFailed, match="ended failed: nope") as failed:
                hub.wait(bad, timeout=TIMEOUT)
        assert [2 * n for n in range(5)] == [r["double"] for r in results.values()]
        assert all(r["who"].startswith("B/") for r in results.values())
        assert [h["agent"].split("/")[0] for h in failed.value.history] == ["B"]
    finally:
        b.stop()
        a.stop()
