"""The Redis mirror of the registry: batched, pipelined, outage-proof.

The registry actor only notes which agents changed (a set of ids, so repeated updates of
one agent coalesce) and appends to a bounded event log. The mirror's writer task turns
that into one pipelined batch per flush (every ``batch_max`` changes or ``batch_interval``
seconds, whichever comes first) and runs it with redis-py's *sync* client in a worker
thread (``trio.to_thread.run_sync``, one thread at a time), on one dedicated connection.
With a backlog, up to ``max_in_flight`` batches are sent before the replies of the first
are read (Redis runs them in order on the one connection; see :func:`_pipelined`).
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
import logging
import math
import secrets
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import trio

from ._errors import InvalidMirrorConfig
from ._extras import require
from ._redis_cluster import SCHEMES as CLUSTER_SCHEMES
from ._redis_link import Backoff, Outage, clean_error, in_thread, make_client, redact_url
from ._registry import AgentRecord
from ._registry_redis_io import Batch, release, step, write

if TYPE_CHECKING:
    import redis

    from ._registry import Registry

__all__ = ["RedisMirror"]

_log = logging.getLogger("hubvisor.registry")


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
        max_in_flight: with a backlog, batches sent before the replies of the first are
            read (``1``: each waits for the one before).

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
        max_in_flight: int = 4,
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
                "max_in_flight": max_in_flight,
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
        self.max_in_flight = max_in_flight
        self._in_flight: deque[tuple[Batch, int]] = deque()  # sent, replies unread
        self._conn: Any = None  # the connection they were sent on
        self._stale = False  # whether it may hold unread replies (a cancelled step)
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
                if self._in_flight and trio.current_time() < next_refresh:
                    pass  # read their replies at once (a backlog still refreshes the lease)
                elif not await _wait(self, next_refresh):
                    # Refresh the lease of every key: rewrite every live agent (a full
                    # resync if there is none, which rewrites the hub's own keys).
                    next_refresh = trio.current_time() + refresh_every
                    self._dirty.update(registry.snapshot())
                    self._need_resync = self._need_resync or not self._dirty
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
        _forget_in_flight(self)
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):  # closing a broken connection
                client.close()

    async def drain(self) -> bool:
        """Write everything pending now (tests, benchmarks); ``False`` if Redis failed."""
        while self._dirty or self._events or self._need_resync or self._in_flight:
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

    async def _flush_once(self, closing: bool = False) -> bool:
        """Write one batch; ``False`` (and everything put back) if Redis failed.

        Flushes run one at a time, each taking from the front of what is pending and
        putting a failed batch back there, so events reach Redis in their order (which
        the append-once script relies on).
        """
        async with self._limiter:
            if _pipelining(self, closing):
                return await _pipelined(self)
            while self._in_flight:  # read their replies first
                if not await _pipelined(self, send=False):
                    return False
            return await self._flush_locked(closing)

    async def _flush_locked(self, closing: bool) -> bool:
        import redis

        if self._client is None:  # closed (final flush cut short) or not yet running
            return False
        batch = _take(self, closing)
        if not (batch.full or batch.writes or batch.removes or batch.events):
            return True
        self._work = trio.Event()
        self._full = trio.Event()
        try:
            # Abandonable: a cancel (the end of final_flush_timeout) returns at once;
            # flush_final then shuts the connection down under the thread.
            await in_thread(self._execute, batch, abandon_on_cancel=True)
        except trio.Cancelled:
            _put_back(self, batch)  # maybe written anyway: a retry would not duplicate it
            raise
        except (redis.RedisError, OSError) as exc:
            _put_back(self, batch)
            _failed(self, exc)
            return False
        _done(self, batch)
        return True

    def _clean(self, exc: BaseException) -> str:
        return clean_error(exc, self._url)

    # ----------------------------------------------------------------------------------
    # In the worker thread

    def _execute(self, batch: Batch) -> None:
        import redis

        client = self._client
        if client is None:  # closed while a flush was queued
            raise redis.ConnectionError("the mirror is closed")
        try:
            write(self, client, batch)
        except redis.TimeoutError:
            raise  # a stalled server: retrying now would only stall again
        except redis.ConnectionError:
            if self._client is not client:
                raise  # closed under us (final flush cut short): do not reconnect
            # The connection may be stale (the server restarted while we were idle):
            # one fresh connection before calling it an outage. A dead server refuses
            # the new connection at once. Retrying is safe: the agent writes are
            # idempotent and the events are appended once (see _XADD_ONCE).
            write(self, client, batch)


# --------------------------------------------------------------------------------------
# The writer's steps (functions of the mirror, not methods: the class is at its size limit)


async def _wait(m: RedisMirror, refresh_at: float) -> bool:
    """Wait for changes, then up to ``batch_interval`` for a full batch; ``False`` if
    ``refresh_at`` came first (time to refresh the lease)."""
    with trio.move_on_at(refresh_at):
        await m._work.wait()
    if trio.current_time() >= refresh_at:
        return False
    with trio.move_on_after(m.batch_interval):
        await m._full.wait()
    return True


def _take(m: RedisMirror, closing: bool, with_events: bool = True) -> Batch:
    """The next batch: up to ``batch_max`` changed agents, then events (none with
    ``with_events=False``); everything on a full resync."""
    assert m._registry is not None
    full = m._need_resync or closing
    if full:
        ids = sorted(m._registry.snapshot()) if not closing else []
        m._dirty.clear()
    else:
        ids = []
        while m._dirty and len(ids) < m.batch_max:
            ids.append(m._dirty.pop())
    writes = []
    removes = []
    for agent_id in ids:
        rec = m._registry.get(agent_id)
        if rec is None:
            removes.append((agent_id, m._written.get(agent_id)))
        else:
            hb = m._wall(rec.last_heartbeat) if rec.last_heartbeat is not None else None
            old_type = m._written.get(agent_id)
            writes.append((agent_id, _fields(rec, m._offset), rec.agent_type, old_type, hb))
    n = max(0, m.batch_max - len(ids)) if not full else len(m._events)
    n = n if with_events else 0
    events = tuple(m._events.popleft() for _ in range(min(n, len(m._events))))
    return Batch(full, closing, tuple(writes), tuple(removes), events)


def _put_back(m: RedisMirror, batch: Batch) -> None:
    """A failed batch back to the front of what is pending."""
    if batch.full:
        m._need_resync = True
    for agent_id, *_ in batch.writes:
        m._dirty.add(agent_id)
    for agent_id, _ in batch.removes:
        m._dirty.add(agent_id)
    room = (m._events.maxlen or 0) - len(m._events)
    keep = batch.events[-room:] if room > 0 else ()
    m.events_dropped += len(batch.events) - len(keep)
    m._events.extendleft(reversed(keep))


def _done(m: RedisMirror, batch: Batch) -> None:
    """Note a batch Redis wrote."""
    m.flushes += 1
    if batch.full:
        m._need_resync = False
        m._written = {}
    for agent_id, _, agent_type, _, _ in batch.writes:
        m._written[agent_id] = agent_type
    for agent_id, _ in batch.removes:
        m._written.pop(agent_id, None)
    lasted = m._outage.up(trio.current_time())
    if lasted is not None:
        _log.warning(
            "registry: Redis at %s is back after %.1fs; resynced %d agents",
            m.url,
            lasted,
            len(batch.writes),
        )
    if m._dirty or m._events:
        m._work.set()
        if len(m._dirty) + len(m._events) >= m.batch_max:
            m._full.set()


def _failed(m: RedisMirror, exc: BaseException) -> None:
    """Note a failed flush (its batches are back in what is pending)."""
    m._work.set()
    m.failures += 1
    m.last_error = m._clean(exc)
    if m._outage.down(trio.current_time()):
        _log.warning(
            "registry: Redis at %s is unavailable (%s); keeping the latest state of "
            "each agent and retrying with backoff",
            m.url,
            m.last_error,
        )


def _pipelining(m: RedisMirror, closing: bool) -> bool:
    """Whether the next flush goes out without waiting for the one before: with a
    backlog of at least ``batch_max`` changes (or batches already in flight), never for a
    resync, the final flush or on a Redis Cluster (its pipelines span connections)."""
    if closing or m._closing or m._need_resync or m._cluster or m.max_in_flight < 2:
        return False
    return bool(m._in_flight) or len(m._dirty) + len(m._events) >= m.batch_max


async def _pipelined(m: RedisMirror, send: bool = True) -> bool:
    """Send the next batch (with ``send``, while fewer than ``max_in_flight`` are in
    flight), and read the replies of the oldest in flight when the bound is reached or
    nothing was sent. ``False`` if Redis failed: every batch in flight is then put back.

    All go out on one connection, so Redis runs them in the order sent; at most one batch
    in flight carries events, so a failed one is retried before any later event is sent
    (the append-once script keeps each event once, see ``_XADD_ONCE``).
    """
    import redis

    if m._client is None:
        return False
    batch = None
    if send and (m._dirty or m._events) and len(m._in_flight) < m.max_in_flight:
        batch = _take(m, False, with_events=not any(b.events for b, _ in m._in_flight))
        m._work = trio.Event()
        m._full = trio.Event()
        if not (batch.writes or batch.removes or batch.events):
            batch = None
    read = bool(m._in_flight) and (batch is None or len(m._in_flight) + 1 >= m.max_in_flight)
    if batch is None and not read:
        return True
    flying = [b for b, _ in m._in_flight]
    replies = m._in_flight[0][1] if read else 0
    try:
        sent, redone = await in_thread(step, m, flying, batch, replies, abandon_on_cancel=True)
    except BaseException as exc:
        m._in_flight.clear()
        m._stale = True  # replies may be left unread on the connection: close it
        for b in reversed([*flying, batch]):  # the oldest ends at the front
            if b is not None:
                _put_back(m, b)
        if not isinstance(exc, redis.RedisError | OSError):
            raise  # a cancel: maybe written anyway, a retry would not duplicate it
        _failed(m, exc)
        return False
    if redone:  # rewritten one by one on a fresh connection
        m._in_flight.clear()
        for b in [*flying, batch]:
            if b is not None:
                _done(m, b)
        return True
    if batch is not None:
        m._in_flight.append((batch, sent))
    if read:
        _done(m, m._in_flight.popleft()[0])
        if not m._in_flight:
            release(m)
    return True


def _forget_in_flight(m: RedisMirror) -> None:
    """The client closes: batches in flight go back to what is pending (rewritten, or
    reported as not written, by the final flush)."""
    while m._in_flight:
        _put_back(m, m._in_flight.pop()[0])  # the newest first: the oldest ends in front
    m._conn = None


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
