"""``--redis-replicas N`` on a Redis Cluster (issue 23): after a round that writes, the
hub sends ``WAIT N`` to each master the round wrote to, on that master's own connection
after a write of its own there (WAIT counts the replicas that have its connection's last
write); the writes of a master that confirmed fewer replicas are held and sent again, as
on a single server, while the writes other masters confirmed count. Here one master's
replica is paused (SIGSTOP): its WAIT comes back short, the other master's does not."""

from __future__ import annotations

import logging
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from redis.crc import key_slot

from supervisor import Hub, WorkService
from supervisor._redis_cluster import masters_of, wait_masters
from supervisor.work.redis import RedisWorkQueue

from ...redis_cluster import ClusterNodeProc, RedisClusterProcs, redis_cluster, types_on_masters
from ...redis_hubs import HubProc, wait_for
from ..test_service import agent
from .test_cluster_hubs import log_of, spec

pytestmark = pytest.mark.slow

__all__ = ["redis_cluster"]

PREFIX = "cw"


def replica_for(cluster: RedisClusterProcs, agent_type: str) -> ClusterNodeProc:
    """The replica of the master that serves ``agent_type``'s slot."""
    return cluster.replica_of(cluster.master_of(key_slot(agent_type.encode())))


def on_replica(node: ClusterNodeProc, key: str) -> bool:
    """Whether the replica ``node`` has ``key`` (read from the replica itself)."""
    with node.client() as c:
        c.execute_command("READONLY")
        return bool(c.exists(key))


@pytest.fixture
def paused() -> Iterator[list[ClusterNodeProc]]:
    """Replicas the test paused (SIGSTOP): resumed at the end whatever happens."""
    nodes: list[ClusterNodeProc] = []
    try:
        yield nodes
    finally:
        for node in nodes:
            if node.proc is not None:
                node.proc.send_signal(signal.SIGCONT)


def pause(node: ClusterNodeProc, paused: list[ClusterNodeProc]) -> None:
    assert node.proc is not None
    paused.append(node)
    node.proc.send_signal(signal.SIGSTOP)


def resume(node: ClusterNodeProc) -> None:
    assert node.proc is not None
    node.proc.send_signal(signal.SIGCONT)


def test_wait_goes_to_each_master_and_a_short_one_names_only_its_writes(
    redis_cluster: RedisClusterProcs, paused: list[ClusterNodeProc]
) -> None:
    down, up = types_on_masters(redis_cluster, 2, stem="cwm")
    marks: list[str | None] = [f"{PREFIX}:work:{{{t}}}:replicated" for t in (down, up, down)]
    with redis_cluster.client() as c:
        assert wait_masters(c, [*marks, None], 1, 2000) == {}
        now = masters_of(c, marks)
        assert now[0] == now[2] != now[1]
        moved = wait_masters(c, marks, 1, 2000, before=[now[0], now[1], "127.0.0.1:1"])
        assert list(moved) == [2] and "moved from 127.0.0.1:1" in moved[2], moved
        wrong = SimpleNamespace(  # a stale slot map: the mark's SET is MOVED
            nodes_manager=SimpleNamespace(
                get_node_from_slot=lambda _slot: c.get_node(node_name=now[1])
            ),
            get_redis_connection=c.get_redis_connection,
        )
        refused = wait_masters(wrong, [marks[0]], 1, 2000)
        assert "MovedError" in refused[0], refused  # never a WAIT that counts an older write
        replica = replica_for(redis_cluster, down)
        pause(replica, paused)
        short = wait_masters(c, [*marks, None], 1, 300)
        assert sorted(short) == [0, 2], short  # only the paused replica's master
        assert "confirmed 0 of 1 replica(s) in 0.3 s" in short[0]
        assert wait_masters(c, [marks[1]], 1, 2000) == {}  # the other master confirms
        resume(replica)
        wait_for(lambda: wait_masters(c, marks, 1, 1000) == {}, 60, "the replica to confirm")


async def test_a_submit_is_stored_once_its_own_masters_wait_confirmed(
    redis_cluster: RedisClusterProcs,
    paused: list[ClusterNodeProc],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With ``replicas=1``: a submit answers stored only once its item is on its master's
    replica; with one master's replica paused, that master's type is held (stored: false,
    sent again) while the other master's type is stored; resumed, the held one is too."""
    caplog.set_level(logging.WARNING, logger="hubvisor")
    down, up = types_on_masters(redis_cluster, 2, stem="cws")
    replicas = {t: replica_for(redis_cluster, t) for t in (down, up)}
    queue = RedisWorkQueue(redis_cluster.url, prefix=PREFIX, lease=10, replicas=1)
    hub = Hub([agent("a1")], work=WorkService(queue), hub_id="W")

    def key(agent_type: str, item_id: str) -> str:
        return f"{PREFIX}:work:{{{agent_type}}}:item:{item_id}"

    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        first = {t: hub.work.submit(t, {"n": 0}) for t in (down, up)}
        for t, it in first.items():  # stored means on that master's replica too
            assert await hub.work.stored(it.id, 30), t
            assert on_replica(replicas[t], key(t, it.id)), t
        pause(replicas[down], paused)
        held = hub.work.submit(down, {"n": 1})
        assert not await hub.work.stored(held.id, 3.0)  # its master's WAIT came back short
        stored: list[Any] = []
        for n in range(3):  # the other master's type goes on, replicated
            it = hub.work.submit(up, {"n": n + 1})
            assert await hub.work.stored(it.id, 30), f"a submit of {up} was held"
            assert on_replica(replicas[up], key(up, it.id))
            stored.append(it)
        assert not await hub.work.stored(held.id, 0.1)  # still held while paused
        resume(replicas[down])
        assert await hub.work.stored(held.id, 60)  # the replica confirms: stored
        assert on_replica(replicas[down], key(down, held.id))
        await hub.stop()
    warned = [r.getMessage() for r in caplog.records if "WAIT on" in r.getMessage()]
    assert warned and "confirmed 0 of 1 replica(s)" in warned[0], warned
    assert f"the master of {down} does not answer" in warned[0]
    assert up not in warned[0].partition("(")[0]  # the other master's type is not named
    assert any(f"answers for {down} again" in r.getMessage() for r in caplog.records)
    with redis_cluster.client() as c:  # nothing written twice: one item hash each
        for t, it in [*first.items(), (down, held), *((up, s) for s in stored)]:
            assert c.hget(key(t, it.id), "id") == it.id


async def test_writes_at_stop_that_a_master_does_not_confirm_are_logged(
    redis_cluster: RedisClusterProcs,
    paused: list[ClusterNodeProc],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At stop the hub writes what it holds and WAITs on each master written to; one
    whose replica does not confirm is named in a warning (a failover then could lose
    those writes); written all the same."""
    caplog.set_level(logging.WARNING, logger="hubvisor")
    (down,) = types_on_masters(redis_cluster, 1, stem="cwf")
    queue = RedisWorkQueue(
        redis_cluster.url, prefix=PREFIX, lease=10, replicas=1, replicas_timeout=0.3
    )
    hub = Hub([agent("a1")], work=WorkService(queue), hub_id="F")
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        pause(replica_for(redis_cluster, down), paused)
        held = hub.work.submit(down, {"n": 1})
        assert not await hub.work.stored(held.id, 1.0)
        await hub.stop()
    warned = [r.getMessage() for r in caplog.records if "writes at stop" in r.getMessage()]
    assert len(warned) == 1 and "confirmed 0 of 1 replica(s) in 0.3 s" in warned[0], warned
    with redis_cluster.client() as c:
        assert c.hget(f"{PREFIX}:work:{{{down}}}:item:{held.id}", "id") == held.id


def test_a_hub_with_redis_replicas_holds_only_the_type_whose_replica_lags(
    redis_cluster: RedisClusterProcs, paused: list[ClusterNodeProc], tmp_path: Path
) -> None:
    """``hubvisor run --redis-cluster ... --redis-replicas 1`` with agents: one master's
    replica paused, a submit of its type answers ``stored: false`` while the items of
    a type on another master are done; resumed, the held item is done; each
    exactly once."""
    down, up = types_on_masters(redis_cluster, 2, stem="cwh")
    args = ["--redis-cluster", redis_cluster.seeds, "--redis-prefix", PREFIX + "h"]
    args += ["--redis-replicas", "1", "--lease", "10"]
    hub = HubProc(tmp_path, "H", None, spec=spec([down, up]), args=tuple(args), call_timeout=30)
    ids: dict[str, list[str]] = {down: [], up: []}

    def done(t: str) -> set[str]:
        with redis_cluster.client() as c:
            return {r["item"] for r in log_of(c, PREFIX + "h", t)}

    try:
        hub.start()
        for t in (down, up):
            reply = hub.call("submit", type=t, payload={"n": 0})
            assert reply["stored"], reply
            ids[t].append(reply["id"])
        wait_for(lambda: done(down) | done(up) >= {*ids[down], *ids[up]}, 60, "first items")
        pause(replica_for(redis_cluster, down), paused)
        held = hub.call("submit", type=down, payload={"n": 1})
        assert not held["stored"], held  # its master's WAIT comes back short
        ids[down].append(held["id"])
        for n in range(2):  # (each round waits out the paused one's WAIT, 1 s: the
            # answer, due in 5 s, is checked by the in-process test above, not here)
            ids[up].append(hub.call("submit", type=up, payload={"n": n + 1})["id"])
        wait_for(lambda: done(up) >= set(ids[up]), 60, f"the {up} items done")
        # (the held item may be taken and done meanwhile: its master has the writes, the
        # hub does not count them as written and sends them again until confirmed)
        resume(paused[0])
        wait_for(lambda: done(down) >= set(ids[down]), 60, f"the held {down} item done")
    finally:
        hub.stop()
    with redis_cluster.client() as c:
        for t in (down, up):
            counts = Counter(r["item"] for r in log_of(c, PREFIX + "h", t))
            assert set(counts) == set(ids[t]) and set(counts.values()) == {1}, counts
    log = hub.log.read_text()
    assert f"the master of {down} does not answer (WAIT on" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_a_cluster_url_takes_replicas() -> None:
    """No refusal any more: ``replicas`` on a Cluster is WAIT per master."""
    assert RedisWorkQueue("redis+cluster://127.0.0.1:7000", replicas=1).replicas == 1
