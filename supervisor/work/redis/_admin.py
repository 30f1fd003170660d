"""Work in Redis without a hub: queue items from any process, read the cluster's state,
check the server's persistence."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from typing import Any

import redis

from ..._redis_cluster import topology
from ..._redis_sentinel import sentinel_master
from ._codec import _decode_map, _dumps, _hub_key, _text, _type_key
from ._scripts import _ID_CHARS, _SUBMIT, GROUP
from ._tiers import published, tier_queues


def enqueue(
    client: redis.Redis,
    agent_type: str,
    payloads: Iterable[Any],
    *,
    prefix: str = "hubvisor",
    max_deliveries: int = 3,
    source: str = "enqueue",
) -> list[str]:
    """Queue items straight into Redis from any process, no hub needed (a producer, a
    batch job); returns their ids. Any hub with agents of ``agent_type`` takes them."""
    boot = "".join(secrets.choice(_ID_CHARS) for _ in range(6))
    q = _type_key(prefix, agent_type, "q")
    ids = []
    pipe: Any = client.pipeline(transaction=False)  # EVAL by command: Cluster pipelines too
    for n, payload in enumerate(payloads, 1):
        item_id = f"{agent_type}-{boot}{n}"
        ids.append(item_id)
        key = _type_key(prefix, agent_type, f"item:{item_id}")
        args = (item_id, agent_type, _dumps(payload), max_deliveries, source, time.time())
        pipe.execute_command("EVAL", _SUBMIT, 2, q, key, *args)
    pipe.sadd(f"{prefix}:work:types", agent_type)
    pipe.execute()
    return ids


def cluster_status(client: redis.Redis, prefix: str = "hubvisor") -> dict[str, Any]:
    """Every hub that shares ``client``'s Redis under ``prefix`` and the queues per type.

    A hub whose lease expired is ``alive: false`` and shows the work still pending on it.
    """
    hub_ids = sorted(_text(h) for h in client.zrange(f"{prefix}:work:hubs", 0, -1))
    types = sorted(_text(t) for t in client.smembers(f"{prefix}:work:types"))
    pending: dict[str, dict[str, int]] = {}
    queues: dict[str, dict[str, int]] = {}
    for agent_type in types:
        waiting = in_flight = 0
        for q in streams(client, prefix, agent_type):  # one per priority in use
            w, f = _stream_counts(client, q, agent_type, pending)
            waiting, in_flight = waiting + w, in_flight + f
        dead = int(client.xlen(_type_key(prefix, agent_type, "dead")))
        queues[agent_type] = {"waiting": waiting, "in_flight": in_flight, "dead": dead}
    hubs, live = [], []
    for hub_id in sorted(set(hub_ids) | set(pending)):
        key = _hub_key(prefix, hub_id)
        info = _decode_map(client.hgetall(key))
        ttl = int(client.pttl(key))
        lease_ms = int(info.get("lease_ms") or 0)
        hubs.append(
            {
                "id": hub_id,
                "alive": bool(info) and ttl > 0,
                "host": info.get("host"),
                "pid": int(info["pid"]) if info.get("pid") else None,
                "agents": json.loads(info.get("agents") or "{}"),
                "lease_age": round((lease_ms - ttl) / 1000, 3) if info and ttl > 0 else None,
                "holding": pending.get(hub_id, {}),
            }
        )
        if info and ttl > 0:  # issue 21: the label sets its pools serve, per type
            live.append(published(info))
    for agent_type in types:  # waiting per requirement set, and what no live hub serves
        queues[agent_type].update(tier_queues(client, prefix, agent_type, live))
    status = {"prefix": prefix, "hubs": hubs, "queues": queues}
    redis_nodes = topology(client, types)  # on a Redis Cluster: its nodes, types' masters
    if redis_nodes is None:  # behind Sentinel: the master it names now
        redis_nodes = sentinel_master(client)
    if redis_nodes is not None:
        status["redis"] = redis_nodes
    return status


def streams(client: redis.Redis, prefix: str, agent_type: str) -> list[str]:
    """The streams of ``agent_type``, highest priority first: ``P:work:{T}:q`` for
    priority 0, ``P:work:{T}:q:<p>`` for each other level in ``P:work:{T}:prios``, and
    ``P:work:{T}:q:<p>:<rid>`` for each requirement set's in ``P:work:{T}:tiers``."""
    q = _type_key(prefix, agent_type, "q")
    levels = [
        (int(_text(p)), "") for p in client.zrevrange(_type_key(prefix, agent_type, "prios"), 0, -1)
    ]
    for member in client.zrange(_type_key(prefix, agent_type, "tiers"), 0, -1):
        p, _, rid = _text(member).partition(":")
        levels.append((int(p), rid))
    order = sorted({(0, ""), *levels}, key=lambda lv: (-lv[0], lv[1]))
    return [f"{q}:{p}:{rid}" if rid else f"{q}:{p}" if p else q for p, rid in order]


def _stream_counts(
    client: redis.Redis, q: str, agent_type: str, pending: dict[str, dict[str, int]]
) -> tuple[int, int]:
    """One stream's entries not taken yet and taken (adding each hub's to ``pending``)."""
    waiting = in_flight = 0
    try:
        for group in client.xinfo_groups(q):
            g = {_text(k): v for k, v in group.items()}
            if _text(g.get("name")) == GROUP:
                waiting = int(g.get("lag") or 0)
                in_flight = int(g.get("pending") or 0)
        summary = client.xpending(q, GROUP)
        for row in summary.get("consumers") or []:
            held = pending.setdefault(_text(row["name"]), {})
            held[agent_type] = held.get(agent_type, 0) + int(row["pending"])
    except redis.ResponseError:  # no group yet (no hub took any): all of it waits
        waiting = int(client.xlen(q))
    return waiting, in_flight


def persistence_warning(client: redis.Redis) -> str | None:
    """A warning when the server keeps queued work in memory only (None when it persists)."""
    try:
        info = client.info("persistence")
    except redis.ResponseError:  # pragma: no cover - INFO disabled
        return None
    if int(info.get("aof_enabled", 0)):
        return None
    try:
        save = client.config_get("save").get("save", "")
    except redis.ResponseError:  # CONFIG disabled (managed Redis): trust its snapshots
        return None
    if save:
        return (
            f"Redis persists by snapshots only (save {save!r}): work submitted since the last "
            "snapshot is lost if redis-server dies; `appendonly yes` with `appendfsync "
            "everysec` bounds that to about a second"
        )
    return (
        "Redis persists nothing (no AOF, no snapshots): queued work is lost if redis-server "
        "restarts; set `appendonly yes` (appendfsync everysec: at most about a second lost; "
        "always: nothing)"
    )
