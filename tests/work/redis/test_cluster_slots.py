"""Every server-side script of the work store acts on keys of one hash slot, as Redis
Cluster demands (it refuses a script whose keys span slots with CROSSSLOT): computed with
redis-py's ``key_slot`` for several agent types, then run for real on a Redis Cluster."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from supervisor.work._item import ItemStatus, WorkItem
from supervisor.work.redis import RedisWorkQueue, enqueue
from supervisor.work.redis._scripts import _CANCEL, _RETRY, _SHA
from supervisor.work.redis._store import _Round

from ...redis_cluster import RedisClusterProcs, redis_cluster, types_on_masters

__all__ = ["redis_cluster"]

TYPES = ["w", "coder", "a.b-c_d", "x:y", "naïve", "t0", "t1", "t2"]
BY_SHA = {sha: script for script, sha in _SHA.items()}


class Recorder:
    """Stands in for a pipeline: records each call (method, args)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def pipeline(self, **_: Any) -> Recorder:
        return self

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kw: Any) -> None:
            assert not kw or name == "zadd", (name, kw)
            self.calls.append((name, args + tuple(kw.values())))

        return record

    def execute(self, **_: Any) -> list[Any]:
        return []


def script_calls(agent_type: str, prefix: str = "hv") -> list[tuple[str, tuple[Any, ...]]]:
    """Every script call a hub and the admin helpers make for ``agent_type``, as the real
    code builds them (store round, control queries, enqueue, goodbye)."""
    q = RedisWorkQueue("redis://localhost", prefix=prefix, lease=2)
    q.claim.hub_id = "hubA"
    q.submit(agent_type, {"n": 1}, max_deliveries=3, source="t", now=0)
    q.submit(agent_type, {"n": 2}, key="k1", not_before=time.time() - 1, max_deliveries=3)
    item = WorkItem(
        id=f"{agent_type}-x1", agent_type=agent_type, payload={}, max_deliveries=3, created_at=0.0
    )
    item.status = ItemStatus.ASSIGNED
    for op, extra in (
        ("start", (1, "a1")),
        ("progress", ('"p"', "")),
        ("requeue", (1, "[]", "")),
        ("finish", ("completed", 1, "[]", '"r"', "", "a1", 60)),
        ("release", (1, "[]")),
    ):
        q._fenced(item, op, *extra)
    actor = q._actor
    actor.serves = {agent_type}
    actor.recover = {agent_type}
    reads = actor._reads({agent_type: 2}, renew=True, claim=True)
    r = _Round(
        ops=q.writes.take(),
        renewals=[(item, q._keys(agent_type, item.id), ("renew", "hubA", q.token, 1, 0))],
        beat=q.claim.fields({agent_type: 1}, {agent_type}),
        beats=[agent_type],
        lag_types=[agent_type],
        checks=[item],
        reads=reads,
        claimed=True,
    )
    pipe = Recorder()
    actor._fill(pipe, r)
    q.claim.add_goodbye(pipe)
    keys = q._keys(agent_type, item.id)
    pipe.execute_command("EVAL", _RETRY, 4, *keys, item.id)
    pipe.execute_command("EVAL", _CANCEL, 4, *keys, item.id, time.time(), "cancelled", 60)
    admin = Recorder()
    enqueue(admin, agent_type, [{"n": 3}], prefix=prefix)  # type: ignore[arg-type]
    return [*pipe.calls, *admin.calls]


def keys_of(method: str, args: tuple[Any, ...]) -> tuple[str, ...]:
    """The keys a recorded call acts on."""
    if method == "execute_command":
        method, args = str(args[0]).lower(), args[1:]
    if method in ("eval", "evalsha"):
        return tuple(args[2 : 2 + int(args[1])])
    return (args[0],)


def is_script(method: str, args: tuple[Any, ...]) -> bool:
    return method in ("eval", "evalsha") or (method == "execute_command" and "EVAL" in args[0])


@pytest.mark.parametrize("agent_type", TYPES)
def test_every_script_call_keeps_to_one_slot(agent_type: str) -> None:
    calls = script_calls(agent_type)
    scripts = [(m, a) for m, a in calls if is_script(m, a)]
    assert len(scripts) >= 14  # submits, fenced ops, takes, claim, beats, hub, retry, cancel
    type_slot = key_slot(agent_type.encode())
    for method, args in scripts:
        keys = keys_of(method, args)
        slots = {key_slot(k.encode()) for k in keys}
        assert len(slots) == 1, (method, keys, slots)
        if not keys[0].startswith("hv:work:hub:"):  # a type's keys: the type's slot
            assert slots == {type_slot}, (method, keys)


def test_the_hash_tag_is_the_agent_type_whatever_it_holds() -> None:
    for agent_type in TYPES:
        calls = script_calls(agent_type, prefix="p:q")
        for method, args in calls:
            for key in keys_of(method, args):
                if "{" + agent_type + "}" in key:
                    assert key_slot(key.encode()) == key_slot(agent_type.encode())


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterProcs) -> Iterator[Any]:
    c = redis_cluster.client()
    yield c
    c.close()


def test_every_script_runs_on_a_real_cluster_without_crossslot(
    redis_cluster: RedisClusterProcs, cluster_client: Any
) -> None:
    types = types_on_masters(redis_cluster, 3, stem="slot")
    for script in _SHA:
        cluster_client.script_load(script)
    for agent_type in types:
        pipe = cluster_client.pipeline(transaction=False)
        calls = script_calls(agent_type, prefix=f"slots{time.monotonic_ns()}")
        for method, args in calls:
            getattr(pipe, method)(*args)
        replies = pipe.execute(raise_on_error=False)
        errors = [(c, r) for c, r in zip(calls, replies, strict=True) if isinstance(r, Exception)]
        assert not errors, errors
        # each script's own answer is that of a keyed script (no CROSSSLOT, no wrong node)
        for (method, _args), reply in zip(calls, replies, strict=True):
            assert not isinstance(reply, redis.ResponseError), (method, reply)
