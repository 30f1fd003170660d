"""Issue 21's routing to tiers on Redis: ``submit --require tier=large`` and
``PoolSpec(labels=...)``, decided by the take script for every hub sharing the Redis (one
stream per priority and requirement set: supervisor/work/redis/_tiers.py). Real
redis-server, real agent processes."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from redis.crc import key_slot

from supervisor import Hub, ItemStatus, PoolSpec, WorkService
from supervisor.work._item import WorkItem
from supervisor.work.redis import RedisWorkQueue
from supervisor.work.redis._admin import cluster_status
from supervisor.work.redis._codec import _pairs
from supervisor.work.redis._scripts import _CANCEL, _LAG, _RETRY, _SHA, _TAKE
from supervisor.work.redis._store import _Round
from supervisor.work.redis._tiers import requirement

from ...control.test_commands import agent, tree
from ...helpers import TIMEOUT, until
from ...redis_cluster import RedisClusterProcs, redis_cluster, types_on_masters
from ...redis_hubs import record
from ...redis_server import RedisServer
from .test_cluster_slots import Recorder, keys_of

__all__ = ["redis_cluster"]

pytestmark = pytest.mark.slow


def pool(tier: str, size: int = 1) -> PoolSpec:
    """A pool of type ``w`` for one tier (member ids ``w-<tier>-agent-N``)."""
    return PoolSpec(
        agent_type="w", name=f"w-{tier}", template=agent("t"), size=size, labels={"tier": tier}
    )


def hub_of(url: str, hub_id: str, *children: Any, lease: float = 10.0) -> Hub:
    return Hub(tree(*children), work=WorkService(RedisWorkQueue(url, lease=lease)), hub_id=hub_id)


def submitter(url: str) -> Hub:
    """A hub with no agent of type ``w``: it only submits."""
    return hub_of(url, "S", agent("q1", agent_type="other"))


async def ended(hub: Hub, item_id: str) -> Any:
    with trio.fail_after(TIMEOUT):
        return await hub.work.wait(item_id)


def stream_of(require: dict[str, str], priority: int = 0) -> str:
    return f"hubvisor:work:{{w}}:q:{priority}:{requirement(require)[0]}"


async def test_one_hub_with_two_pools_of_one_type_routes_each_item_to_its_tier(
    redis_server: RedisServer, client: Any
) -> None:
    """A hub with a small and a large pool of ``w``: every item that requires
    tier=large is done by the large pool's agent, tier=small by the small one's, plain
    items by either; a tier no pool has is accepted (another hub may serve it) and
    counted by status --cluster as served by no live hub."""
    hub = hub_of(redis_server.url, "A", pool("small"), pool("large"))
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        large = [hub.work.submit("w", {"n": n}, require=["tier=large"]).id for n in range(4)]
        small = [hub.work.submit("w", {"n": n}, require={"tier": "small"}).id for n in range(4)]
        plain = [hub.work.submit("w", {"n": n}).id for n in range(4)]
        huge = hub.work.submit("w", {"n": 9}, require=["tier=huge"])  # accepted on Redis
        # a delayed one is promoted into its priority's and tier's stream from its hash
        later = hub.work.submit("w", {"n": 7}, require=["tier=large"], priority=3, delay=0.3)
        for ids, by in ((large, {"w-large-agent-1"}), (small, {"w-small-agent-1"})):
            for item_id in ids:
                done = await ended(hub, item_id)
                assert done.status is ItemStatus.COMPLETED
                assert {done.result["by"]} <= by, (item_id, done.history)
        assert {"w-small-agent-1", "w-large-agent-1"} >= {
            (await ended(hub, i)).result["by"] for i in plain
        }
        done = await ended(hub, later.id)
        assert "w-large-agent-1" == done.result["by"]
        assert (done.started_at or 0) >= (later.not_before or 0) - 0.01
        shown = await hub.work.fetch(large[0])
        assert {"tier": "large"} == shown.require
        rid, text = requirement({"tier": "large"})
        assert text == client.hget("hubvisor:work:{w}:reqs", rid)
        assert rid == client.hget(f"hubvisor:work:{{w}}:item:{large[0]}", "rq")
        with trio.fail_after(TIMEOUT):
            assert await hub.work.stored(huge.id)
        assert ItemStatus.QUEUED is (await hub.work.fetch(huge.id)).status
        assert 1 == client.xlen(stream_of({"tier": "huge"}))
        with trio.fail_after(TIMEOUT):
            while True:  # the hub's heartbeat has published its tiers
                cluster = await hub.work.cluster()
                if cluster["queues"]["w"].get("unserved") == 1:
                    break
                await trio.sleep(0.05)
        assert {"tier=huge": 1} == cluster["queues"]["w"]["require"]
        published = json.loads(client.hget("hubvisor:work:hub:{A}", "tiers"))
        assert [{"tier": "large"}, {"tier": "small"}] == sorted(
            published["w"], key=lambda s: s["tier"]
        )
        await hub.stop()


async def test_two_hubs_each_with_one_tier_and_an_item_no_hub_serves_until_one_starts(
    redis_server: RedisServer, client: Any
) -> None:
    """Hub A serves tier=small, hub B tier=large; S submits. Each tiered item is done on
    its tier's hub only (the record says which); a tier=huge item stays queued, counted
    by status --cluster as served by no live hub, until hub C with a huge pool starts and
    does it."""
    url = redis_server.url
    s, a, b = submitter(url), hub_of(url, "A", pool("small")), hub_of(url, "B", pool("large"))
    async with trio.open_nursery() as nursery:
        for hub in (s, a, b):
            await nursery.start(hub.serve)
        huge = s.work.submit("w", {"n": 0}, require=["tier=huge"])
        items = {
            tier: [s.work.submit("w", {"n": n}, require=[f"tier={tier}"]).id for n in range(5)]
            for tier in ("small", "large")
        }
        plain = [s.work.submit("w", {"n": n}).id for n in range(4)]
        for item_id in [*items["small"], *items["large"], *plain]:
            assert (await ended(s, item_id)).status is ItemStatus.COMPLETED
        hub_of_item = {r["item"]: r["hub"] for r in record(client)}
        assert {"A"} == {hub_of_item[i] for i in items["small"]}
        assert {"B"} == {hub_of_item[i] for i in items["large"]}
        assert {"A", "B"} >= {hub_of_item[i] for i in plain}
        assert huge.id not in hub_of_item
        cluster = await s.work.cluster()
        assert (1, 1, {"tier=huge": 1}) == (
            cluster["queues"]["w"]["waiting"],
            cluster["queues"]["w"]["unserved"],
            cluster["queues"]["w"]["require"],
        )
        c = hub_of(url, "C", pool("huge"))
        await nursery.start(c.serve)
        done = await ended(s, huge.id)
        assert done.status is ItemStatus.COMPLETED and done.result["by"] == "w-huge-agent-1"
        assert "C" == {r["item"]: r["hub"] for r in record(client)}[huge.id]
        cluster = await s.work.cluster()
        assert 0 == cluster["queues"]["w"]["waiting"]
        assert "unserved" not in cluster["queues"]["w"]
        for hub in (a, b, c, s):
            await hub.stop()


async def test_priorities_are_respected_within_a_tier(
    redis_server: RedisServer, client: Any
) -> None:
    """S submits plain and tier=large items of mixed priorities; then A, with one agent of
    the large tier, takes them one at a time: highest priority first, FIFO within a level
    across the plain and the tiered streams (its agent may do both); the small items
    (and the streams of what it did) are left alone."""
    url = redis_server.url
    s = submitter(url)
    async with trio.open_nursery() as nursery:
        await nursery.start(s.serve)
        submitted: list[tuple[str, int]] = []
        for n, (p, tiered) in enumerate(
            [(0, True), (5, False), (0, False), (5, True), (-2, True), (5, False), (0, True),
             (9, True), (-2, False), (5, True)]
        ):  # fmt: skip
            require = ["tier=large"] if tiered else None
            item = s.work.submit("w", {"n": n}, priority=p, require=require)
            submitted.append((item.id, p))
        small = s.work.submit("w", {"n": 99}, priority=50, require=["tier=small"])
        with trio.fail_after(TIMEOUT):
            for item_id, _ in [*submitted, (small.id, 50)]:
                assert await s.work.stored(item_id)
        a = hub_of(url, "A", pool("large"))
        await nursery.start(a.serve)
        for item_id, _ in submitted:
            assert (await ended(s, item_id)).status is ItemStatus.COMPLETED
        order = sorted(range(len(submitted)), key=lambda n: (-submitted[n][1], n))
        assert [submitted[n][0] for n in order] == [r["item"] for r in record(client)]
        assert ItemStatus.QUEUED is (await s.work.fetch(small.id)).status
        await until(lambda: not client.exists(stream_of({"tier": "large"}, 5)))
        assert 1 == client.xlen(stream_of({"tier": "small"}, 50))
        for hub in (a, s):
            await hub.stop()


async def test_a_dead_hubs_tiered_item_goes_back_to_its_own_stream_and_its_tier(
    redis_server: RedisServer, client: Any
) -> None:
    """A hub that vanished (no proof of life) holds a tier=large item: hub M, which serves
    only tier=small, never takes it, however long; hub L (tier=large) takes it from its
    own stream once the lease ran out and does it. A graceful stop of L while its agent
    holds another large item gives it back to that item's own stream."""
    url = redis_server.url
    s = submitter(url)
    async with trio.open_nursery() as nursery:
        await nursery.start(s.serve)
        item = s.work.submit("w", {"n": 4}, require=["tier=large"])
        with trio.fail_after(TIMEOUT):
            assert await s.work.stored(item.id)
        # a ghost hub takes it (the real take script, for a large pool) and vanishes
        keys = ("hubvisor:work:{w}:q", "hubvisor:work:{w}:dead", "hubvisor:work:{w}:log")
        args = ("ghost", "tok", 1, "hubvisor:work:{w}:item:", 0, ">", '[{"tier":"large"}]')
        got = client.eval(_TAKE, 3, *keys, *args)
        assert 1 == len(got)
        sq = stream_of({"tier": "large"})
        assert 1 == client.xpending(sq, "hubs")["pending"]
        m = hub_of(url, "M", pool("small"), lease=0.5)
        await nursery.start(m.serve)
        with trio.fail_after(TIMEOUT):  # M's claims run each 1/8 s and pass it by
            rounds = m.work.queue.rounds  # type: ignore[attr-defined]
            while m.work.queue.rounds < rounds + 20:  # type: ignore[attr-defined]
                await trio.sleep(0.05)
        assert "ghost" == client.hget(f"hubvisor:work:{{w}}:item:{item.id}", "hub")
        large = hub_of(url, "L", pool("large"), lease=0.5)
        await nursery.start(large.serve)
        done = await ended(s, item.id)
        assert done.status is ItemStatus.COMPLETED and done.result["by"] == "w-large-agent-1"
        assert [("L", item.id)] == [(r["hub"], r["item"]) for r in record(client)]
        held = s.work.submit("w", {"hold": True}, require=["tier=large"])
        await until(lambda: client.hget(f"hubvisor:work:{{w}}:item:{held.id}", "st") == "assigned")
        await large.stop()  # gives the held item back, to its own stream
        await until(lambda: client.hget(f"hubvisor:work:{{w}}:item:{held.id}", "st") == "queued")
        fields = client.hgetall(f"hubvisor:work:{{w}}:item:{held.id}")
        assert ("queued", "") == (fields["st"], fields["hub"])
        assert [fields["entry"]] == [e[0] for e in client.xrange(sq)]
        assert "M" not in {r["hub"] for r in record(client)}
        for hub in (m, s):
            await hub.stop()


class _Dispatch:
    """What the store reads of a hub's dispatch: one idle agent of the large tier."""

    def __init__(self, agent_type: str) -> None:
        self.agents = {"a1": SimpleNamespace(agent_type=agent_type, labels={"tier": "large"})}
        self.idle = {agent_type: {"a1": None}}


class _Host:
    def __init__(self, agent_type: str) -> None:
        self._dispatch = _Dispatch(agent_type)
        self._hub = None
        self.agent_type = agent_type

    def idle_counts(self) -> dict[str, int]:
        return {self.agent_type: 1}


def tiered_calls(agent_type: str, prefix: str) -> list[tuple[str, tuple[Any, ...]]]:
    """The script calls a hub makes for tiered items of ``agent_type``: submits (with a
    priority, a delay), a round's takes by pool labels, claim, fenced ops, retry, cancel."""
    q = RedisWorkQueue("redis://localhost", prefix=prefix, lease=2)
    q.claim.hub_id = "hubA"
    large: dict[str, Any] = {"require": {"tier": "large"}, "max_deliveries": 3}
    q.submit(agent_type, {"n": 1}, **large)
    q.submit(agent_type, {"n": 2}, priority=4, **large)
    q.submit(agent_type, {"n": 3}, not_before=time.time() - 1, **large)
    item = WorkItem(
        id=f"{agent_type}-x1", agent_type=agent_type, payload={}, max_deliveries=3, created_at=0.0
    )
    for op, extra in (("start", (1, "a1")), ("release", (1, "[]"))):
        q._fenced(item, op, *extra)
    actor = q._actor
    actor.host = _Host(agent_type)  # type: ignore[assignment]
    actor.serves = {agent_type}
    reads = actor._reads(actor.demand(), renew=True, claim=True)
    assert len(reads) == 2 and '[{"tier":"large"}]' in reads[-1][2]
    r = _Round(ops=q.writes.take(), renewals=[], beat=None, beats=[], lag_types=[agent_type],
               checks=[], reads=reads, claimed=True)  # fmt: skip
    pipe = Recorder()
    actor._fill(pipe, r)
    keys = q._keys(agent_type, item.id)
    pipe.execute_command("EVAL", _RETRY, 4, *keys, item.id)
    pipe.execute_command("EVAL", _CANCEL, 4, *keys, item.id, time.time(), "cancelled", 60)
    return pipe.calls


def test_the_tier_scripts_run_on_a_real_cluster_without_crossslot(
    redis_cluster: RedisClusterProcs,
) -> None:
    """Every tiered call keeps to its type's slot (the keys the scripts derive from
    KEYS[1] too: a real Cluster refuses a key of another slot), and status --cluster
    reads the tiers on it."""
    with redis_cluster.client() as c:
        for script in _SHA:
            c.script_load(script)
        for agent_type in types_on_masters(redis_cluster, 3, stem="tier"):
            prefix = f"tiers{time.monotonic_ns()}"
            calls = tiered_calls(agent_type, prefix)
            for method, args in calls:
                assert {key_slot(k.encode()) for k in keys_of(method, args)} == {
                    key_slot(agent_type.encode())
                }
            pipe = c.pipeline(transaction=False)
            for method, args in calls:
                getattr(pipe, method)(*args)
            replies = pipe.execute(raise_on_error=False)
            errors = [
                (m, r) for (m, _), r in zip(calls, replies, strict=True) if isinstance(r, Exception)
            ]
            assert not errors, errors
            taken = replies[-3]  # the take for the large pool: the priority 4 item first
            assert ['{"n":2}'] == [_pairs(f)["payload"] for _, f, _ in taken]
            c.sadd(f"{prefix}:work:types", agent_type)  # as a hub's heartbeat does
            queues = cluster_status(c, prefix)["queues"][agent_type]
            # the other two (one promoted from the delayed set): no live hub serves them
            assert (2, 2, {"tier=large": 2}) == (
                queues["waiting"],
                queues["unserved"],
                queues["require"],
            )


def test_the_tier_scripts_keep_to_the_types_slot() -> None:
    """Every key a tiered take, submit or status reads is in the type's slot (the keys
    the scripts derive from KEYS[1] included): Cluster runs them without CROSSSLOT."""
    for agent_type in ("w", "a.b-c_d", "x:y"):
        q = f"hv:work:{{{agent_type}}}:q"
        rid = requirement({"tier": "large", "gpu": "a100"})[0]
        derived = [f"{q}:0:{rid}", f"{q}:-3:{rid}", q[:-1] + "tiers", q[:-1] + "reqs"]
        assert {key_slot(k.encode()) for k in derived} == {key_slot(agent_type.encode())}
    assert _TAKE in _SHA


REQS = [{}, {"tier": "small"}, {"tier": "large"}, {"tier": "large", "gpu": "yes"}]
POOLS = [{}, {"tier": "small"}, {"tier": "large"}, {"tier": "large", "gpu": "yes", "zone": "b"}]


def test_random_takes_give_each_pool_only_what_it_matches_in_order(client: Any) -> None:
    """Seeded random submits (requirement, priority) and takes (a pool's labels, a count)
    straight through the scripts: each take gives exactly the first items, in priority
    order and first in, first out within one, among those the pool's labels match; none
    twice, none a pool does not match. The lag a hub reads for its depth counts the
    waiting items its pools' labels match."""
    from supervisor.work._deps import _matches
    from supervisor.work.redis._scripts import _SUBMIT

    q = "hubvisor:work:{w}:q"
    b = q[:-1]
    submit, take = client.register_script(_SUBMIT), client.register_script(_TAKE)
    lag = client.register_script(_LAG)
    for seed in range(25):
        rng = random.Random(seed)
        client.flushdb()
        waiting: list[tuple[str, int, dict[str, str], int]] = []  # id, priority, require, n
        for step in range(60):
            if rng.random() < 0.6:
                req, p = rng.choice(REQS), rng.choice([0, 0, 3, -1])
                iid = f"w-s{seed}x{step}"
                keys = [q, b + "item:" + iid, b + "keys", b + "keyage", b + "delayed"]
                args = [iid, "w", "{}", 3, "t", 0, "", b + "item:", 0, "", "", p, *requirement(req)]
                submit(keys=keys, args=args)
                waiting.append((iid, p, req, step))
                continue
            labels, count = rng.choice(POOLS), rng.randint(1, 3)
            spec = json.dumps([labels], separators=(",", ":"))
            keys = [q, b + "dead", b + "log", b + "delayed"]
            got = take(keys=keys, args=["A", "tok", count, b + "item:", 0, ">", spec])
            ids = [_pairs(flat)["id"] for _kind, flat, _prev in got]
            fits = sorted(
                (w for w in waiting if _matches(w[2], labels)), key=lambda w: (-w[1], w[3])
            )
            assert [w[0] for w in fits[:count]] == ids, (seed, step, labels)
            waiting = [w for w in waiting if w[0] not in ids]
        for labels in POOLS:  # a hub's depth counts what its pools could take only
            spec = json.dumps([labels], separators=(",", ":"))
            assert sum(1 for w in waiting if _matches(w[2], labels)) == lag(keys=[q], args=[spec])
        assert len(waiting) == lag(keys=[q])  # no labels given: every stream


def test_status_cluster_prints_what_no_hub_serves_and_the_waiting_per_requirement() -> None:
    from rich.console import Console

    from supervisor.control.printers import _show_cluster

    console = Console(record=True, width=120)
    queue = {"waiting": 4, "in_flight": 1, "dead": 0, "unserved": 3, "require": {"tier=huge": 3}}
    _show_cluster(console, {"prefix": "hubvisor", "hubs": [], "queues": {"w": queue}})
    text = console.export_text()
    assert "no hub serves" in text and "w --require tier=huge: 3 waiting" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("w "))
    assert row.split() == ["w", "4", "1", "0", "3"]


async def test_the_cli_submits_a_tier_no_pool_here_has_and_status_cluster_shows_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """``hubvisor submit --require tier=huge`` on a Redis hub with only a small pool is
    accepted (memory and SQLite refuse it); ``status --cluster`` prints it as waiting for
    a tier no live hub serves; ``work show`` names the requirement."""
    from supervisor.control.server import serve_control

    from ...control.test_commands import cli, cli_json

    hub = hub_of(redis_server.url, "A", pool("small"))
    path = tmp_path / "hub.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await nursery.start(serve_control, hub, path)
        item = await cli_json(path, "submit", "w", '{"n": 1}', "--require", "tier=huge")
        assert {"tier": "huge"} == (await cli_json(path, "work", "show", item["id"]))["require"]
        with trio.fail_after(TIMEOUT):
            while True:  # once the hub's heartbeat published its tiers and Redis has it
                shown = await cli(path, "status", "--cluster")
                if "w --require tier=huge: 1 waiting" in shown.output:
                    break
                await trio.sleep(0.05)
        assert 0 == shown.exit_code
        row = next(line for line in shown.output.splitlines() if line.strip().startswith("w "))
        assert ["w", "1", "0", "0", "1"] == row.split()
        await hub.stop()
        nursery.cancel_scope.cancel()
