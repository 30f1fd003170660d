"""The Redis side of the registry's mirror: what a batch writes, as commands and scripts,
and the worker-thread step that sends batches without waiting for the replies of those
before (see :mod:`supervisor._registry_redis`, which decides what and when).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import redis

    from ._registry_redis import RedisMirror

__all__ = ["Batch", "release", "step", "write"]

# KEYS[1]: the stream, KEYS[2]: this mirror's last written event number.
# ARGV[1]: lease in ms, ARGV[2]: maxlen, ARGV[3]: the events as one JSON array of
# [number, {field: value, ...}], ARGV[4]: the field names in their order (a JSON array).
# Appends only the events past the last number, atomically, and returns how many. One
# JSON argument for the whole batch, not two per field: redis-py encodes every argument
# in Python, and that was most of the mirror's cost (cjson decodes it in Redis, which has
# the CPU to spare).
_XADD_ONCE = """
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local top = last
local added = 0
local names = cjson.decode(ARGV[4])
local args = {}
for _, event in ipairs(cjson.decode(ARGV[3])) do
  local seq = event[1]
  if seq > last then
    local fields = event[2]
    for j = 1, #names do
      args[2 * j - 1] = names[j]
      args[2 * j] = fields[names[j]]
    end
    redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', unpack(args))
    added = added + 1
    if seq > top then
      top = seq
    end
  end
end
redis.call('SET', KEYS[2], string.format('%d', top), 'PX', ARGV[1])
return added
"""

# Write a batch of agents: each one's hash, with the lease as its TTL, and its id into
# the hub's agent set and its type's set. KEYS[1]: the agent set, KEYS[2..]: the type
# sets; ARGV[1]: the lease in ms, ARGV[2]: the field names (a JSON array, "id" first),
# ARGV[3]: one JSON array of values per agent, in the order of the names, ARGV[4]: the
# prefix of the agents' keys, ARGV[5]: per agent the index in KEYS of its type's set (0:
# none). One command and a few arguments for the whole batch: the hub's cost is per
# command and per argument (redis-py packs each), and it is what bounds the mirror.
_WRITE_AGENTS = """
local names = cjson.decode(ARGV[2])
local rows = cjson.decode(ARGV[3])
local kinds = cjson.decode(ARGV[5])
local args = {}
local members = {}
for k = 1, #KEYS do
  members[k] = {}
end
for k = 1, #rows do
  local row = rows[k]
  for j = 1, #names do
    args[2 * j - 1] = names[j]
    args[2 * j] = row[j]
  end
  local key = ARGV[4] .. row[1]
  redis.call('HSET', key, unpack(args))
  redis.call('PEXPIRE', key, ARGV[1])
  table.insert(members[1], row[1])
  if kinds[k] > 0 then
    table.insert(members[kinds[k]], row[1])
  end
end
for k = 1, #KEYS do
  local ids = members[k]
  for i = 1, #ids, 1000 do
    redis.call('SADD', KEYS[k], unpack(ids, i, math.min(i + 999, #ids)))
  end
end
return #rows
"""


@attrs.frozen
class Batch:
    """What one flush writes; built on the trio thread, executed in a worker thread."""

    full: bool
    closing: bool
    writes: tuple[tuple[str, dict[str, str], str | None, str | None, float | None], ...]
    removes: tuple[tuple[str, str | None], ...]
    events: tuple[tuple[int, dict[str, str]], ...]  # (sequence number, fields)


def write(m: RedisMirror, client: redis.Redis, batch: Batch) -> None:
    """Write ``batch`` in one pipeline (a full resync in one MULTI/EXEC, except on a Redis
    Cluster: its keys span slots, so there the resync is not atomic)."""
    pipeline(m, client, batch).execute()


def pipeline(m: RedisMirror, client: redis.Redis, batch: Batch) -> Any:
    """The pipeline that writes ``batch``, not yet executed."""
    hub = m._hub_id
    lease_ms = int(m.lease * 1000)
    stale: Sequence[Any] = []
    if batch.full:
        stale = list(client.scan_iter(match=f"{m.hub_key(hub)}:*", count=1000))
    pipe: Any = client.pipeline(transaction=batch.full and not m._cluster)
    if batch.full:  # DEL and EVAL by command: a Cluster pipeline has neither method
        pipe.execute_command("DEL", m.hub_key(hub), *stale)
    for agent_id, agent_type in batch.removes:
        pipe.delete(m.agent_key(agent_id, hub))
        pipe.srem(m.agents_key(hub), agent_id)
        pipe.zrem(m.heartbeats_key(hub), agent_id)
        if agent_type is not None:
            pipe.srem(m.type_key(agent_type, hub), agent_id)
    # The set and heartbeat updates of a batch go out as one command per key, not
    # one per agent: each command costs the hub packing and a reply to parse, and
    # the Python side is what limits the mirror's rate.
    by_type: dict[str, int] = {}  # type -> its set's index in the script's KEYS
    beats: dict[str, float] = {}
    kinds: list[int] = []
    rows: list[list[str]] = []
    for agent_id, fields, agent_type, old_type, hb in batch.writes:
        rows.append(list(fields.values()))  # "id" first (_fields)
        if old_type is not None and old_type != agent_type and not batch.full:
            pipe.srem(m.type_key(old_type, hub), agent_id)
        kinds.append(0 if agent_type is None else by_type.setdefault(agent_type, len(by_type) + 2))
        if hb is not None:
            beats[agent_id] = hb
    if batch.writes:
        names = _json(list(batch.writes[0][1]))  # every agent's hash has these fields
        keys = [m.agents_key(hub), *(m.type_key(t, hub) for t in by_type)]
        pipe.execute_command(
            "EVAL", _WRITE_AGENTS, len(keys), *keys, lease_ms, names, _json(rows),
            m.agent_key("", hub), _json(kinds),
        )  # fmt: skip
    if beats:
        pipe.zadd(m.heartbeats_key(hub), beats)
    types = set(by_type)
    if batch.events:
        names = _json(list(batch.events[0][1]))  # every entry has these fields (record)
        pipe.execute_command(
            "EVAL", _XADD_ONCE, 2, m.events_key, m.events_seq_key(hub), lease_ms,
            m.events_maxlen, _json(batch.events), names,
        )  # fmt: skip
    now = time.time()
    if batch.closing:
        pipe.delete(m.hub_key(hub))
        pipe.zrem(m.hubs_key, hub)
        pipe.delete(m.events_seq_key(hub))
    else:
        pipe.hset(
            m.hub_key(hub),
            mapping={
                "hub": hub,
                "host": socket.gethostname(),
                "pid": str(os.getpid()),
                "lease_ms": str(lease_ms),
                "updated_at": f"{now:.6f}",
            },
        )
        for key in (
            m.hub_key(hub),
            m.agents_key(hub),
            m.heartbeats_key(hub),
            m.events_seq_key(hub),
            *(m.type_key(t, hub) for t in types),
        ):
            pipe.pexpire(key, lease_ms)
        pipe.zadd(m.hubs_key, {hub: now + m.lease})
        pipe.zremrangebyscore(m.hubs_key, "-inf", now)
    return pipe


def step(
    m: RedisMirror, flying: list[Batch], batch: Batch | None, replies: int
) -> tuple[int, bool]:
    """In the worker thread: send ``batch`` without reading its replies, then read the
    ``replies`` of the oldest batch in flight. A broken connection gets one fresh one (as
    in ``RedisMirror._execute``): everything in flight is rewritten on it, in order. Returns the
    commands sent and whether everything was rewritten."""
    import redis

    client = m._client
    if client is None:  # closed while a flush was queued
        raise redis.ConnectionError("the mirror is closed")
    if m._stale:
        m._stale = False
        release(m, broken=True)
    try:
        sent = 0
        if batch is not None:
            if m._conn is None:
                m._conn = client.connection_pool.get_connection()
            stack = [args for args, _ in pipeline(m, client, batch).command_stack]
            m._conn.send_packed_command(m._conn.pack_commands(stack))
            sent = len(stack)
        if replies:
            error = None
            for _ in range(replies):  # every reply, so none is left unread
                try:
                    m._conn.read_response()
                except redis.ResponseError as exc:
                    error = error or exc
            if error is not None:
                raise error
        return sent, False
    except redis.ConnectionError:
        release(m, broken=True)
        if m._client is not client:
            raise  # closed under us (see _execute)
        for b in [*flying, batch]:
            if b is not None:
                write(m, client, b)
        return 0, True
    except BaseException:
        release(m, broken=True)  # replies of later batches may be pending on it
        raise


def release(m: RedisMirror, broken: bool = False) -> None:
    """Give the connection batches were sent on back to the pool (closed if ``broken``)."""
    conn, m._conn = m._conn, None
    if conn is not None and m._client is not None:
        if broken:
            with contextlib.suppress(Exception):
                conn.disconnect()
        m._client.connection_pool.release(conn)


def _json(value: Any) -> str:
    """``value`` as the JSON a script argument carries (UTF-8 as is: cjson copies it)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
