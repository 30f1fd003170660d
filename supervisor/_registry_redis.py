"""The Redis mirror of the registry: batched, pipelined, outage-proof.

The registry actor only notes which agents changed (a set of ids, so repeated updates of
one agent coalesce) and appends to a bounded event log. The mirror's writer task turns
that into one pipelined batch per flush (every ``batch_max`` changes or ``batch_interval``
seconds, whichever comes first) and runs it with redis-py's *sync* client in a worker
thread (``trio.to_thread.run_sync``, one thread at a time), on one dedicated connection.
Nothing here runs Redis I/O on the trio thread, and the supervisors never wait for it.

When Redis is down or slow, each failed flush puts its agent ids back (the latest state
is read from the registry at the next try, so memory stays one entry per agent), the
writer retries with exponential backoff, and one warning is logged per outage. The first
flush after an outage (and the first one after start) is a full resync in one
``MULTI``/``EXEC``: every key of this hub is deleted and rewritten from the registry, so
Redis converges to the truth and ghosts left by an earlier hub with the same id vanish.
Every key of a hub carries a lease (a TTL the writer refreshes), so a hub that died
without cleaning up disappears from Redis when its lease runs out.

A retried flush never writes an event twice, even when the failed try was partly (or
wholly) executed by Redis and only its reply was lost: every event carries a sequence
number of this mirror, and one Lua script (atomic in Redis) appends only the events past
the highest number Redis has seen from this mirror (kept in
``<prefix>:events:seq:<hub_id>:<writer>``, under the hub's lease like its other keys;
only a retry that comes after a network partition longer than the lease could repeat
one batch). The agent writes are idempotent by nature.

The final flush, when the hub stops, is bounded for real: its worker-thread calls are
abandoned when the registry's ``final_flush_timeout`` runs out, and the connection is
shut down under them so the thread ends at once instead of waiting for a stalled server.

The key layout is in ``docs/registry.md``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._errors import InvalidMirrorConfig
from ._extras import require
from ._redis_cluster import SCHEMES as CLUSTER_SCHEMES
from ._redis_link import Backoff, Outage, clean_error, in_thread, make_client, redact_url
from ._registry import AgentRecord

if TYPE_CHECKING:
    import redis

    from ._registry import Registry

__all__ = ["RedisMirror"]

_log = logging.getLogger("hubvisor.registry")

# KEYS[1]: the stream, KEYS[2]: this mirror's last written event number.
# ARGV[1]: lease in ms, ARGV[2]: maxlen, ARGV[3]: the events as one JSON array of
# [number, [field, value, field, value, ...]]. Appends only the events past the last
# number, atomically, and returns how many. One JSON argument for the whole batch, not
# two per field: redis-py encodes every argument in Python, and that was most of the
# mirror's cost (cjson decodes it in Redis, which has the CPU to spare).
_XADD_ONCE = """
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local top = last
local added = 0
for _, event in ipairs(cjson.decode(ARGV[3])) do
  local seq = event[1]
  if seq > last then
    redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', unpack(event[2]))
    added = added + 1
    if seq > top then
      top = seq
    end
  end
end
redis.call('SET', KEYS[2], string.format('%d', top), 'PX', ARGV[1])
return added
"""

# Write a batch of agent hashes and give each the lease as its TTL: KEYS are the agents'
# hash keys; ARGV[1] is the lease in ms, ARGV[2] the field names (a JSON array), ARGV[3]
# one JSON array of values per key, in the order of the names. One command and three
# arguments for the whole batch instead of an HSET and a PEXPIRE per agent and two
# arguments per field: the hub's cost is per command and per argument (packing).
_HSET_EXPIRE = """
local names = cjson.decode(ARGV[2])
local rows = cjson.decode(ARGV[3])
local args = {}
for k = 1, #KEYS do
  local row = rows[k]
  for j = 1, #names do
    args[2 * j - 1] = names[j]
    args[2 * j] = row[j]
  end
  redis.call('HSET', KEYS[k], unpack(args))
  redis.call('PEXPIRE', KEYS[k], ARGV[1])
end
return #KEYS
"""


@attrs.frozen
class _Batch:
    """What one flush writes; built on the trio thread, executed in a worker thread."""

    full: bool
    closing: bool
    writes: tuple[tuple[str, dict[str, str], str | None, str | None, float | None], ...]
    removes: tuple[tuple[str, str | None], ...]
    events: tuple[tuple[int, dict[str, str]], ...]  # (sequence number, fields)


class RedisMirror:
    """Copies the registry to Redis under ``prefix`` (see ``docs/registry.md``).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]`` or ``rediss://...`` for TLS
            (TLS options as query parameters, e.g. ``?ssl_ca_certs=/etc/ca.pem``). The
            password never appears in logs or errors.
        prefix: the first element of every key.
        batch_interval: seconds a change may wait before it is written.
        batch_max: flush as soon as this many changes are pending (``1``: unbatched).
        lease: seconds this hub's keys live without a refresh (the writer refreshes them
            every ``lease / 3``); a dead hub's keys vanish after this.
        events_maxlen: the event stream is trimmed to this many entries.
        max_pending_events: events kept while Redis is unreachable (the oldest are
            dropped and counted in ``events_dropped``).
        timeout: socket connect/read timeout in seconds; bounds how long one flush can
            hang on a stalled server.
        backoff_max: the longest wait between two retries during an outage.

    Example::

        registry = Registry(mirror=RedisMirror("redis://:secret@10.0.0.5:6379/0"))
        hub = Hub(specs, registry=registry)
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "hubvisor",
        batch_interval: float = 0.1,
        batch_max: int = 500,
        lease: float = 30.0,
        events_maxlen: int = 10_000,
        max_pending_events: int = 10_000,
        timeout: float = 2.0,
        backoff_max: float = 5.0,
    ) -> None:
        self._cluster = _check_options(  # a Redis Cluster: keys tagged (_tag)
            url,
            prefix,
            {
                "batch_interval": batch_interval,
                "lease": lease,
                "timeout": timeout,
                "backoff_max": backoff_max,
            },
            {
                "batch_max": batch_max,
                "events_maxlen": events_maxlen,
                "max_pending_events": max_pending_events,
            },
        )
        self._url = url
        self.prefix = prefix
        self.batch_interval = batch_interval
        self.batch_max = batch_max
        self.lease = lease
        self.events_maxlen = events_maxlen
        self.timeout = timeout
        self.backoff_max = backoff_max
        self._dirty: set[str] = set()
        self._events: deque[tuple[int, dict[str, str]]] = deque(maxlen=max_pending_events)
        self._seq = 0  # number of the last event recorded
        self._writer = secrets.token_hex(6)  # this mirror, in its event-number key
        self._written: dict[str, str | None] = {}  # agent id -> type, as Redis has it
        self._work = trio.Event()
        self._full = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        self._registry: Registry | None = None
        self._client: redis.Redis | None = None
        self._offset = 0.0
        self._need_resync = True
        self._closing = False
        self._outage = Outage()
        self._hub_id = "hub"
        self.flushes = 0
        """Batches written so far."""
        self.failures = 0
        """Flushes that failed (Redis down, slow or refusing)."""
        self.events_dropped = 0
        """Events lost because Redis was unreachable for too long."""
        self.last_error: str | None = None
        """The last error, password removed."""
        self.final_flush_cut = False
        """Whether the final flush was cut short (``final_flush_timeout``)."""

    def __repr__(self) -> str:
        return f"<RedisMirror {redact_url(self._url)} prefix={self.prefix!r}>"

    @property
    def url(self) -> str:
        """The Redis URL with the password replaced by ``***``."""
        return redact_url(self._url)

    @property
    def connected(self) -> bool:
        """Whether the last flush succeeded."""
        return not self._outage.active and self.flushes > 0

    @property
    def outages(self) -> int:
        """Times Redis became unreachable."""
        return self._outage.count

    # ----------------------------------------------------------------------------------
    # Keys

    def hub_key(self, hub_id: str | None = None) -> str:
        """``<prefix>:hub:<hub_id>``: the hub's hash (and the stem of its other keys)."""
        return f"{self.prefix}:hub:{_tag(hub_id or self._hub_id, self._cluster)}"

    def agent_key(self, agent_id: str, hub_id: str | None = None) -> str:
        """``<prefix>:hub:<hub_id>:agent:<agent_id>``: one agent's hash."""
        return f"{self.hub_key(hub_id)}:agent:{agent_id}"

    def agents_key(self, hub_id: str | None = None) -> str:
        """``<prefix>:hub:<hub_id>:agents``: the set of the hub's live agent ids."""
        return f"{self.hub_key(hub_id)}:agents"

    def type_key(self, agent_type: str, hub_id: str | None = None) -> str:
        """``<prefix>:hub:<hub_id>:type:<agent_type>``: live agent ids of one type."""
        return f"{self.hub_key(hub_id)}:type:{agent_type}"

    def heartbeats_key(self, hub_id: str | None = None) -> str:
        """``<prefix>:hub:<hub_id>:heartbeats``: sorted set, agent id -> last heartbeat."""
        return f"{self.hub_key(hub_id)}:heartbeats"

    @property
    def hubs_key(self) -> str:
        """``<prefix>:hubs``: sorted set, hub id -> Unix time its lease ends."""
        return f"{self.prefix}:hubs"

    @property
    def events_key(self) -> str:
        """``<prefix>:events``: the capped event stream of every hub."""
        return f"{self.prefix}:events"

    def events_seq_key(self, hub_id: str | None = None) -> str:
        """``<prefix>:events:seq:<hub_id>:<writer>``: the number of the last event this
        mirror appended (so a retried flush never appends one twice)."""
        return f"{_tag(self.events_key, self._cluster)}:seq:{hub_id or self._hub_id}:{self._writer}"

    # ----------------------------------------------------------------------------------
    # Called by the registry actor: note only, never block

    def changed(self, agent_id: str) -> None:
        """Note that ``agent_id`` changed; the writer reads its latest state later."""
        self._dirty.add(agent_id)
        self._poke()

    def record(self, kind: str, agent: AgentRecord, detail: str) -> None:
        """Queue an event stream entry."""
        if len(self._events) == self._events.maxlen:
            self.events_dropped += 1
        self._seq += 1
        self._events.append(
            (
                self._seq,
                {
                    "hub": self._hub_id,
                    "agent": agent.id,
                    "kind": kind,
                    "pid": str(agent.pid),
                    "type": agent.agent_type or "",
                    "detail": detail,
                    "at": f"{self._wall(trio.current_time()):.6f}",
                },
            )
        )
        self._poke()

    def _poke(self) -> None:
        self._work.set()
        if len(self._dirty) + len(self._events) >= self.batch_max:
            self._full.set()

    # ----------------------------------------------------------------------------------
    # The writer

    def _wall(self, at: float) -> float:
        return at + self._offset

    def _make_client(self) -> redis.Redis:
        return make_client(
            self._url,
            timeout=self.timeout,
            connections=1,  # one dedicated connection, opened in the worker thread
            client_name=f"hubvisor-{self._hub_id}",
            error=InvalidMirrorConfig,
        )

    async def run(
        self, registry: Registry, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Write changes out until cancelled (the registry runs this)."""
        self._registry = registry
        self._hub_id = registry.hub_id
        self._offset = time.time() - trio.current_time()
        self._client = self._make_client()
        task_status.started()
        refresh_every = self.lease / 3
        next_refresh = trio.current_time() + refresh_every
        backoff = Backoff(0.1, self.backoff_max, jitter=True)
        try:
            while not self._closing:
                with trio.move_on_at(next_refresh):
                    await self._work.wait()
                if trio.current_time() >= next_refresh:
                    # Refresh the lease of every key: rewrite every live agent (a full
                    # resync if there is none, which rewrites the hub's own keys).
                    next_refresh = trio.current_time() + refresh_every
                    self._dirty.update(registry.snapshot())
                    self._need_resync = self._need_resync or not self._dirty
                else:
                    with trio.move_on_after(self.batch_interval):
                        await self._full.wait()
                if self._closing:
                    break
                ok = await self._flush_once()
                if ok:
                    backoff.reset()
                else:
                    await trio.sleep(backoff.next())
        finally:
            if self._closing is False:
                self._close_client()

    def _close_client(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):  # closing a broken connection
                client.close()

    async def drain(self) -> bool:
        """Write everything pending now (tests, benchmarks); ``False`` if Redis failed."""
        while self._dirty or self._events or self._need_resync:
            if not await self._flush_once():
                return False
        async with self._limiter:  # and wait for a flush the writer has in flight
            pass
        return True

    async def flush_final(self) -> None:
        """Write what is pending, then remove this hub's keys (all its agents are gone).

        Cancel it to cut it short (the registry does after ``final_flush_timeout``): it
        returns at once, shutting the connection down under a worker thread that is
        still waiting for Redis, and logs what was not written.
        """
        self._closing = True
        try:
            while self._dirty or self._events or self._need_resync:
                if not await self._flush_once(closing=False):
                    return
            await self._flush_once(closing=True)
        except trio.Cancelled:
            self.final_flush_cut = True
            if self._dirty or self._events:  # else only the goodbye (key deletion) is lost
                _log.warning(
                    "registry: the final flush to Redis at %s was cut short; %d agent "
                    "changes and %d events not written (the hub's keys expire with its lease)",
                    self.url,
                    len(self._dirty),
                    len(self._events),
                )
            raise
        finally:
            self._close_client()

    def _take(self, closing: bool) -> _Batch:
        assert self._registry is not None
        full = self._need_resync or closing
        if full:
            ids = sorted(self._registry.snapshot()) if not closing else []
            self._dirty.clear()
        else:
            ids = []
            while self._dirty and len(ids) < self.batch_max:
                ids.append(self._dirty.pop())
        writes = []
        removes = []
        for agent_id in ids:
            rec = self._registry.get(agent_id)
            if rec is None:
                removes.append((agent_id, self._written.get(agent_id)))
            else:
                hb = self._wall(rec.last_heartbeat) if rec.last_heartbeat is not None else None
                writes.append(
                    (
                        agent_id,
                        _fields(rec, self._offset),
                        rec.agent_type,
                        self._written.get(agent_id),
                        hb,
                    )
                )
        n = max(0, self.batch_max - len(ids)) if not full else len(self._events)
        events = tuple(self._events.popleft() for _ in range(min(n, len(self._events))))
        return _Batch(full, closing, tuple(writes), tuple(removes), events)

    def _put_back(self, batch: _Batch) -> None:
        if batch.full:
            self._need_resync = True
        for agent_id, *_ in batch.writes:
            self._dirty.add(agent_id)
        for agent_id, _ in batch.removes:
            self._dirty.add(agent_id)
        room = (self._events.maxlen or 0) - len(self._events)
        keep = batch.events[-room:] if room > 0 else ()
        self.events_dropped += len(batch.events) - len(keep)
        self._events.extendleft(reversed(keep))

    async def _flush_once(self, closing: bool = False) -> bool:
        """Write one batch; ``False`` (and everything put back) if Redis failed.

        Flushes run one at a time, each taking from the front of what is pending and
        putting a failed batch back there, so events reach Redis in their order (which
        the append-once script relies on).
        """
        async with self._limiter:
            return await self._flush_locked(closing)

    async def _flush_locked(self, closing: bool) -> bool:
        import redis

        if self._client is None:  # closed (final flush cut short) or not yet running
            return False
        batch = self._take(closing)
        if not (batch.full or batch.writes or batch.removes or batch.events):
            return True
        self._work = trio.Event()
        self._full = trio.Event()
        try:
            # Abandonable: a cancel (the end of final_flush_timeout) returns at once;
            # flush_final then shuts the connection down under the thread.
            await in_thread(self._execute, batch, abandon_on_cancel=True)
        except trio.Cancelled:
            self._put_back(batch)  # maybe written anyway: a retry would not duplicate it
            raise
        except (redis.RedisError, OSError) as exc:
            self._put_back(batch)
            self._work.set()
            self.failures += 1
            self.last_error = self._clean(exc)
            if self._outage.down(trio.current_time()):
                _log.warning(
                    "registry: Redis at %s is unavailable (%s); keeping the latest state of "
                    "each agent and retrying with backoff",
                    self.url,
                    self.last_error,
                )
            return False
        self.flushes += 1
        if batch.full:
            self._need_resync = False
            self._written = {}
        for agent_id, _, agent_type, _, _ in batch.writes:
            self._written[agent_id] = agent_type
        for agent_id, _ in batch.removes:
            self._written.pop(agent_id, None)
        lasted = self._outage.up(trio.current_time())
        if lasted is not None:
            _log.warning(
                "registry: Redis at %s is back after %.1fs; resynced %d agents",
                self.url,
                lasted,
                len(batch.writes),
            )
        if self._dirty or self._events:
            self._work.set()
            if len(self._dirty) + len(self._events) >= self.batch_max:
                self._full.set()
        return True

    def _clean(self, exc: BaseException) -> str:
        return clean_error(exc, self._url)

    # ----------------------------------------------------------------------------------
    # In the worker thread

    def _execute(self, batch: _Batch) -> None:
        import redis

        client = self._client
        if client is None:  # closed while a flush was queued
            raise redis.ConnectionError("the mirror is closed")
        try:
            _write(self, client, batch)
        except redis.TimeoutError:
            raise  # a stalled server: retrying now would only stall again
        except redis.ConnectionError:
            if self._client is not client:
                raise  # closed under us (final flush cut short): do not reconnect
            # The connection may be stale (the server restarted while we were idle):
            # one fresh connection before calling it an outage. A dead server refuses
            # the new connection at once. Retrying is safe: the agent writes are
            # idempotent and the events are appended once (see _XADD_ONCE).
            _write(self, client, batch)


def _fields(rec: AgentRecord, offset: float) -> dict[str, str]:
    """An agent's hash (times as Unix time: trio's plus ``offset``)."""
    return {
        "id": rec.id,
        "type": rec.agent_type or "",
        "status": rec.status,
        "pid": str(rec.pid),
        "hub": rec.hub_id,
        "supervisor": rec.supervisor,
        "spawned_at": f"{rec.spawned_at + offset:.6f}",
        "last_heartbeat": (
            f"{rec.last_heartbeat + offset:.6f}" if rec.last_heartbeat is not None else ""
        ),
        "assignment": rec.assignment or "",
        "restarts": str(rec.restarts),
        "last_exit": rec.last_exit or "",
    }


def _tag(key: str, cluster: bool) -> str:
    """On a Redis Cluster, ``{key}``: a hash tag, so each hub's keys share one slot (each
    script and DEL stays in it) and the event numbers share the event stream's."""
    return f"{{{key}}}" if cluster else key


def _check_options(url: Any, prefix: str, floats: dict[str, Any], ints: dict[str, Any]) -> bool:
    """Refuse bad :class:`RedisMirror` arguments, naming the value and the fix, and a
    missing redis-py now rather than at the first flush (MissingExtra names the extra).
    Returns whether ``url`` names a Redis Cluster."""
    require("redis")
    schemes = ("redis://", "rediss://", "unix://", "redis+sentinel://", *CLUSTER_SCHEMES)
    if not isinstance(url, str) or not url.startswith(schemes):
        shown = redact_url(url) if isinstance(url, str) else repr(url)
        raise InvalidMirrorConfig(
            f"Redis URL must start with redis://, rediss://, unix:// or redis+cluster:// "
            f"(got {shown}); e.g. redis://localhost:6379/0"
        )
    if url.startswith("redis+sentinel://"):  # issue 23: checked now, not at the first flush
        from ._redis_sentinel import EXAMPLE, parse

        try:
            parse(url)
        except ValueError as exc:
            raise InvalidMirrorConfig(
                f"bad Redis Sentinel URL {redact_url(url)}: {exc}; e.g. {EXAMPLE}"
            ) from None
    if not prefix or any(c.isspace() for c in prefix):
        raise InvalidMirrorConfig(f"Redis prefix must be a non-empty word (got {prefix!r})")
    for name, value in floats.items():
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise InvalidMirrorConfig(f"RedisMirror {name} must be a number > 0 (got {value!r})")
    for name, ivalue in ints.items():
        if not isinstance(ivalue, int) or ivalue < 1:
            raise InvalidMirrorConfig(f"RedisMirror {name} must be an int >= 1 (got {ivalue!r})")
    return url.startswith(CLUSTER_SCHEMES)


def _write(m: RedisMirror, client: redis.Redis, batch: _Batch) -> None:
    """Write ``batch`` in one pipeline (a full resync in one MULTI/EXEC, except on a Redis
    Cluster: its keys span slots, so there the resync is not atomic)."""
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
    by_type: dict[str, list[str]] = {}
    beats: dict[str, float] = {}
    keys: list[str] = []
    rows: list[list[str]] = []
    for agent_id, fields, agent_type, old_type, hb in batch.writes:
        keys.append(m.agent_key(agent_id, hub))
        rows.append(list(fields.values()))
        if old_type is not None and old_type != agent_type and not batch.full:
            pipe.srem(m.type_key(old_type, hub), agent_id)
        if agent_type is not None:
            by_type.setdefault(agent_type, []).append(agent_id)
        if hb is not None:
            beats[agent_id] = hb
    if batch.writes:
        names = _json(list(batch.writes[0][1]))  # every agent's hash has these fields
        pipe.execute_command("EVAL", _HSET_EXPIRE, len(keys), *keys, lease_ms, names, _json(rows))
        pipe.sadd(m.agents_key(hub), *(w[0] for w in batch.writes))
    for agent_type, ids in by_type.items():
        pipe.sadd(m.type_key(agent_type, hub), *ids)
    if beats:
        pipe.zadd(m.heartbeats_key(hub), beats)
    types = set(by_type)
    if batch.events:
        events = _json([(seq, [x for kv in f.items() for x in kv]) for seq, f in batch.events])
        pipe.execute_command(
            "EVAL", _XADD_ONCE, 2, m.events_key, m.events_seq_key(hub), lease_ms,
            m.events_maxlen, events,
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
    pipe.execute()


def _json(value: Any) -> str:
    """``value`` as the JSON a script argument carries (UTF-8 as is: cjson copies it)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
