"""A Redis Cluster master dies while work flows (SIGKILL; its replica is promoted by the
Cluster): the hubs keep their agents running, hold their writes, write them to the new
master, and every item ends exactly once in the record. The pause is measured."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from ...redis_cluster import RedisClusterProcs, redis_cluster, types_on_masters
from ...redis_hubs import HubProc, wait_for
from .test_cluster_hubs import log_of, spec

__all__ = ["redis_cluster"]

pytestmark = pytest.mark.slow

PREFIX = "fo"


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterProcs) -> Iterator[Any]:
    c = redis_cluster.client()
    yield c
    c.close()


def done(redis_cluster: RedisClusterProcs, *types: str) -> list[dict[str, str]] | None:
    """The record of ``types`` read by a fresh client (None while it cannot be read)."""
    try:
        with redis_cluster.client() as c:
            return [r for t in types for r in log_of(c, PREFIX, t)]
    except (redis.RedisError, redis.exceptions.RedisClusterException):
        return None


def first_write_after(redis_cluster: RedisClusterProcs, slot_key: str, since: float) -> float:
    """Seconds from ``since`` until a fresh client could write ``slot_key`` (the slot's
    new master answers)."""

    def wrote() -> bool:
        try:
            with redis_cluster.client() as c:
                return bool(c.set(slot_key, "1"))
        except (redis.RedisError, redis.exceptions.RedisClusterException):
            return False

    wait_for(wrote, 60, "the slot's replica to be promoted")
    return time.time() - since


def test_sigkill_of_a_busy_types_master_loses_nothing_and_stops_no_agent(
    redis_cluster: RedisClusterProcs, cluster_client: Any, tmp_path: Path
) -> None:
    busy, other = types_on_masters(redis_cluster, 2, stem="fo")
    text = spec([busy, other])
    args = ("--redis-cluster", redis_cluster.seeds, "--redis-prefix", PREFIX, "--lease", "10")
    hubs = [HubProc(tmp_path, h, None, spec=text, args=args) for h in ("A", "B")]
    ids: list[str] = []
    try:
        for hub in hubs:
            hub.start()
        pids = {hub.hub_id: sorted(hub.agent_pids()) for hub in hubs}
        for n in range(60):
            t = busy if n % 3 else other
            reply = hubs[n % 2].call("submit", type=t, payload={"n": n, "sleep": 0.3})
            assert reply["stored"], reply
            ids.append(reply["id"])
        wait_for(lambda: len(log_of(cluster_client, PREFIX, busy)) >= 5, 60, "work to flow")
        # Every acknowledged submit on the replica (the async replication caught up):
        # what the old master acknowledged after this may be lost with it, so it must be
        # something a hub writes again (a result: the item runs again, recorded once).
        master = redis_cluster.master_of(key_slot(busy.encode()))
        with master.client() as m:
            assert m.execute_command("WAIT", 1, 5000) == 1
        killed_at = time.time()
        master.kill()
        # submits while the slot has no master: held by the hubs, written after
        for n in range(60, 66):
            reply = hubs[n % 2].call("submit", type=busy, payload={"n": n})
            ids.append(reply["id"])
        pause = first_write_after(redis_cluster, f"{{{busy}}}:probe", killed_at)
        wait_for(
            lambda: {r["item"] for r in done(redis_cluster, busy, other) or []} >= set(ids),
            120,
            "every item to complete",
        )
        with redis_cluster.client() as c:
            stamps = [
                int(i.split("-")[0]) / 1000 for i, _ in c.xrange(f"{PREFIX}:work:{{{busy}}}:log")
            ]
        first = min(s for s in stamps if s > killed_at)
        print(
            f"\nfailover: slot writable again after {pause:.2f} s; the hubs' first "
            f"{busy} result after the kill at +{first - killed_at:.2f} s"
        )
        for hub in hubs:
            assert hub.proc is not None and hub.proc.poll() is None
            assert sorted(hub.agent_pids()) == pids[hub.hub_id], "an agent was restarted"
    finally:
        for hub in hubs:
            hub.stop()
    rows = done(redis_cluster, busy, other)
    assert rows is not None
    counts = Counter(r["item"] for r in rows)
    assert set(counts) == set(ids), set(ids) - set(counts)
    assert set(counts.values()) == {1}, {i: n for i, n in counts.items() if n > 1}
    assert {r["outcome"] for r in rows} == {"completed"}


def type_on_a_replicated_master(redis_cluster: RedisClusterProcs, stem: str) -> str:
    """The first ``stem<n>`` type whose slot's master has a live replica (after an earlier
    failover one master has none)."""
    with redis_cluster.client() as c:
        nodes = c.cluster_nodes()
    replicated = {
        n["master_id"] for n in nodes.values() if "slave" in n["flags"] and "fail" not in n["flags"]
    }
    masters = {
        int(addr.rsplit(":", 1)[1]) for addr, n in nodes.items() if n["node_id"] in replicated
    }
    n = 0
    while redis_cluster.master_of(key_slot(f"{stem}{n}".encode())).port not in masters:
        n += 1
    return f"{stem}{n}"


def test_a_hub_sigkilled_during_a_failover_loses_no_acknowledged_item(
    redis_cluster: RedisClusterProcs, tmp_path: Path
) -> None:
    busy = type_on_a_replicated_master(redis_cluster, "hk")
    args = ("--redis-cluster", redis_cluster.seeds, "--redis-prefix", PREFIX, "--lease", "8")
    a, b = (HubProc(tmp_path, h, None, spec=spec([busy]), args=args) for h in ("A", "B"))
    acknowledged: list[str] = []
    try:
        a.start()
        b.start()
        pids = sorted(b.agent_pids())
        for n in range(30):
            reply = (a, b)[n % 2].call("submit", type=busy, payload={"n": n, "sleep": 0.3})
            assert reply["stored"], reply
            acknowledged.append(reply["id"])
        wait_for(
            lambda: {r["hub"] for r in done(redis_cluster, busy) or []} == {"A", "B"},
            60,
            "work to flow through both hubs",
        )
        master = redis_cluster.master_of(key_slot(busy.encode()))
        with master.client() as m:
            assert m.execute_command("WAIT", 1, 5000) == 1
        master.kill()
        a.kill()  # a hub dies while the slot has no master: B takes its work after
        wait_for(
            lambda: {r["item"] for r in done(redis_cluster, busy) or []} >= set(acknowledged),
            120,
            "every acknowledged item to complete",
        )
        assert b.proc is not None and b.proc.poll() is None
        assert sorted(b.agent_pids()) == pids, "an agent of B was restarted"
    finally:
        a.stop()
        b.stop()
    rows = done(redis_cluster, busy)
    assert rows is not None
    counts = Counter(r["item"] for r in rows)
    assert set(counts) == set(acknowledged), set(acknowledged) - set(counts)
    assert set(counts.values()) == {1}, {i: n for i, n in counts.items() if n > 1}
    assert {r["hub"] for r in rows} == {"A", "B"}
