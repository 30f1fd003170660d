"""The Redis work store's own rules, one at a time, against a real ``redis-server``:
settings, the hub id's claim, a dead hub's work taken over, stops and queries."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
import trio

from supervisor import ConfigError, ControlError, Hub, ItemStatus, WorkService
from supervisor._errors import ServiceFailed
from supervisor.work.redis import RedisWorkQueue, enqueue, persistence_warning
from supervisor.work.redis._codec import _alive, _safe, _wall
from supervisor.work.redis._outbox import _Op
from supervisor.work.redis._scripts import _FENCED, _SUBMIT, _TAKE

from ...helpers import until
from ...redis_hubs import item, record
from ...redis_server import RedisServer, free_port, redis_server, redis_server_factory
from ..test_service import agent
from .test_outages import _Service

__all__ = ["redis_server", "redis_server_factory"]

pytestmark = pytest.mark.slow


def a_dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_settings_are_checked_and_shown() -> None:
    with pytest.raises(ConfigError, match="lease"):
        RedisWorkQueue("redis://localhost", lease=0)
    with pytest.raises(ConfigError, match="without braces"):
        RedisWorkQueue("redis://localhost", prefix="a{b}")
    queue = RedisWorkQueue("redis://:secret@localhost:6379/0", lease=3)
    assert "secret" not in repr(queue) and "lease=3.0" in repr(queue)
    with pytest.raises(ConfigError, match="bad Redis URL"):
        RedisWorkQueue("redis://localhost:notaport/0").check_hub_id("A")


def test_held_writes_past_the_cap_refuse_submits_and_drop_new_progress() -> None:
    """No Redis needed: the cap is on what the hub holds."""
    queue = RedisWorkQueue("redis://localhost", max_held=2, max_held_bytes=10**9)
    first = queue.submit("w", {"n": 1}, max_deliveries=1, source="t", now=0)
    assert queue.get(first.id) is first and queue.depth("w") == 0
    queue._push(_Op(_FENCED, ("k",), ("progress", "x" * 10), "w-x", "progress"))
    assert len(queue.writes.ops) == 2
    queue._push(_Op(_FENCED, ("k",), ("progress", "y" * 10), "w-y", "progress"))
    assert queue.dropped_progress == 1  # a new item's progress, at the cap
    queue._push(_Op(_FENCED, ("k",), ("progress", "z" * 99), "w-x", "progress"))
    assert queue.coalesced == 1 and queue.writes.ops[1].args[1] == "z" * 99
    with pytest.raises(ControlError, match="submit again when Redis answers"):
        queue.submit("w", {"n": 2}, max_deliveries=1, source="t", now=0)
    assert queue._actor.demand() == {}


def test_small_helpers() -> None:
    assert _wall(5.0) == 5.0  # outside trio: already wall-clock time
    assert _safe("caf\udcff.py") == "caf\\udcff.py"  # valid UTF-8, readable
    assert not _alive(0) and not _alive(a_dead_pid()) and _alive(1)


def test_a_server_that_only_snapshots_is_warned_about(redis_server: RedisServer) -> None:
    with redis_server.client() as c:
        c.config_set("appendonly", "no")
        c.config_set("save", "900 1")
        assert "snapshots only" in (persistence_warning(c) or "")


async def test_a_hub_that_cannot_reach_redis_at_start_supervises_on() -> None:
    queue = RedisWorkQueue(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5, lease=0.4)
    queue.check_hub_id("A")  # unreachable: only logged
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run, _Service())
        assert queue.outage
        submitted = queue.submit("w", {"n": 1}, max_deliveries=1, source="t", now=0)
        assert not await queue.stored(submitted.id, 0.2)
        nursery.cancel_scope.cancel()


async def test_the_hub_id_is_a_claim_checked_at_every_renewal(
    redis_server: RedisServer, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A live hub elsewhere with this id: refused at start. Taken over while it runs: a
    dead incarnation on this host is replaced, a live one elsewhere stops the store."""
    key = "hubvisor:work:hub:{A}"
    client.hset(key, mapping={"host": "elsewhere", "pid": 42, "token": "theirs"})
    with pytest.raises(ControlError, match=r"is live in Redis \(pid 42 on elsewhere"):
        RedisWorkQueue(redis_server.url).check_hub_id("A")
    with pytest.raises(ExceptionGroup) as failed:
        async with trio.open_nursery() as nursery:
            await nursery.start(RedisWorkQueue(redis_server.url).run, _Service())
    assert failed.group_contains(ServiceFailed, match="pid 42 on elsewhere")
    # A previous run of this hub on this host, gone: taken over at start.
    client.hset(key, mapping={"host": socket.gethostname(), "pid": a_dead_pid()})
    queue = RedisWorkQueue(redis_server.url, lease=0.5)
    with (
        caplog.at_level(logging.INFO, logger="hubvisor"),
        pytest.raises(ExceptionGroup) as failed,
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.run, _Service())
            assert client.hget(key, "token") == queue.token
            # Again while it runs (its key was rewritten by a dead run): it goes on.
            client.hset(key, mapping={"token": "old", "pid": a_dead_pid()})
            await until(lambda: client.hget(key, "token") == queue.token)
            # A live hub elsewhere claimed the id meanwhile: the store stops.
            client.hset(key, mapping={"token": "x", "host": "elsewhere", "pid": 7})
    assert failed.group_contains(ServiceFailed, match="pid 7 on elsewhere")
    assert caplog.text.count("restarted (was pid") == 2
    assert client.hget(key, "token") == "x"  # the loser leaves the winner's key alone


async def test_a_dead_hubs_item_with_no_delivery_left_is_dead_lettered_and_logged(
    redis_server: RedisServer, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Hub X took two items and started one, then died (no proof of life): B takes
    both after the lease, the running one with its last delivery spent is dead."""
    q, dead, log = "hubvisor:work:{w}:q", "hubvisor:work:{w}:dead", "hubvisor:work:{w}:log"
    prefix = "hubvisor:work:{w}:item:"
    running, waiting = enqueue(client, "w", [{"n": 1}, {"n": 2}], max_deliveries=1)
    client.eval(_TAKE, 3, q, dead, log, "X", "tx", 2, prefix, time.time(), ">")
    client.eval(_FENCED, 4, q, dead, log, prefix + running, "start", "X", "tx", 1, 0, 1, "x1")
    hub = Hub(
        [agent("b1")], work=WorkService(RedisWorkQueue(redis_server.url, lease=0.5)), hub_id="B"
    )
    with caplog.at_level(logging.INFO, logger="hubvisor"):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await until(lambda: len(record(client)) == 2)
            await hub.stop()
    assert {r["item"]: r["outcome"] for r in record(client)} == {
        running: "dead",
        waiting: "completed",
    }
    assert "took over 2 w item(s) from hub X, whose lease ran out" in caplog.text
    assert "hub X, which lost its lease" in item(client, running)["error"]


async def test_a_hub_that_loses_an_item_forgets_it_and_says_so(
    redis_server: RedisServer, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    queue = RedisWorkQueue(redis_server.url, lease=0.6)
    hub = Hub([agent("a1")], work=WorkService(queue), hub_id="A")
    with caplog.at_level(logging.INFO, logger="hubvisor"):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            held = hub.work.submit("w", {"hold": True})
            await until(lambda: item(client, held.id).get("st") == "assigned")
            client.hset(f"hubvisor:work:{{w}}:item:{held.id}", mapping={"hub": "Z", "tok": "z"})
            await until(lambda: queue.lost == 1)
            with pytest.raises(ControlError):
                hub.work.get(held.id)
            assert (await hub.work.fetch(held.id)).status == ItemStatus.ASSIGNED  # from Redis
            with pytest.raises(ControlError, match="no work item"):
                await hub.work.fetch("w-nosuch1")
            # A write Redis refuses for another reason is logged, not fatal.
            queue._push(_Op(_SUBMIT, ("only-one-key",), (), "w-bad", "submit"))
            await until(lambda: "work w-bad: Redis refused submit" in caplog.text)
            await hub.stop()
    assert f"work {held.id}: lease lost: the item is held by hub Z" in caplog.text


async def test_a_stop_during_an_outage_logs_each_item_it_could_not_write(
    redis_server: RedisServer, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    queue = RedisWorkQueue(redis_server.url, lease=30, timeout=0.5)
    hub = Hub([agent("a1", agent_type="other")], work=WorkService(queue), hub_id="A")
    with caplog.at_level(logging.INFO, logger="hubvisor"):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            redis_server.kill()
            lost = hub.work.submit("w", {"n": 1})
            await until(lambda: queue.outage)
            await hub.stop()
    assert f"work {lost.id}: submitted but not in Redis at stop" in caplog.text


async def test_a_retry_of_an_item_this_hub_holds_and_the_cluster_of_a_bare_type(
    redis_server: RedisServer, client: Any, tmp_path: Any
) -> None:
    flag = tmp_path / "crash"
    flag.touch()
    client.sadd("hubvisor:work:types", "ghost")  # a type with no stream yet
    hub = Hub([agent("a1")], work=WorkService(RedisWorkQueue(redis_server.url)), hub_id="A")
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        doomed = hub.work.submit("w", {"crash_if": str(flag), "n": 3}, max_deliveries=1)
        await until(lambda: item(client, doomed.id).get("st") == "dead")
        await until(lambda: doomed.id in {i.id for i in hub.work.items("dead")})
        waiting = hub.work.submit("other", {})  # no agent of its type: it waits
        assert await hub.work.stored(waiting.id)
        with pytest.raises(ControlError, match="it is queued; only dead or failed"):
            await hub.work.retry_any(waiting.id)
        flag.unlink()
        again = await hub.work.retry_any(doomed.id)
        assert again.status == ItemStatus.QUEUED and again.deliveries == 0
        await until(lambda: item(client, doomed.id).get("st") == "completed")
        cluster = await hub.work.cluster()
        assert cluster["queues"]["ghost"] == {"waiting": 0, "in_flight": 0, "dead": 0}
        assert cluster["queues"]["other"]["waiting"] == 1
        assert cluster["queues"]["w"]["dead"] == 0
        await hub.stop()
