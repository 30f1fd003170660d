"""Durable work on Redis Streams, shared by several hubs.

The decisions stay local and synchronous (a :class:`~supervisor._work.MemoryWorkQueue`
over the items this hub holds), and Redis is the record, written behind them by one actor
that batches every write of a round into one pipeline:

* one stream and consumer group per agent type; each hub is a consumer, and an entry
  pending on a hub is *leased* to it. The live hub renews its leases (``XCLAIM ... JUSTID``
  resets the entry's idle time); another hub takes entries idle longer than the lease
  (``XAUTOCLAIM``). The lease is counted by the server's clock, never the hubs'.
* every write that acts on an item (an attempt starting, a result, a failure, a dead
  letter, a release) is a server-side script that checks the item is still leased to this
  hub's incarnation (hub id + boot token) before it acts, so a late answer from a hub that
  lost its lease is refused, whatever the clocks say.
* while Redis is unreachable the hub goes on supervising and deciding; writes wait in
  order in memory and go out when it returns. Nothing is acknowledged (``XACK``) that was
  not done.

Key layout (``P`` is the prefix, ``T`` an agent type, ``H`` a hub id); keys of one agent
type share the hash tag ``{T}``, so the scripts work on Redis Cluster:

* ``P:work:{T}:q`` the stream, group ``hubs``; ``P:work:{T}:item:<id>`` one hash per item;
  ``P:work:{T}:dead`` dead letters with their history; ``P:work:{T}:log`` one entry per
  final outcome (the record).
* ``P:work:hubs`` (sorted set of hub ids) and ``P:work:hub:{H}`` (hash with a TTL of one
  lease: host, pid, token, agents per type) for ``hubvisor status --cluster``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import socket
import string
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs
import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._errors import ConfigError, ControlError
from ._redis import redact_url
from ._work import AttemptRecord, ItemStatus, MemoryWorkQueue, Verdict, WorkItem

if TYPE_CHECKING:
    from ._work import WorkService

__all__ = ["RedisWorkQueue", "cluster_status", "enqueue", "persistence_warning"]

_log = logging.getLogger("hubvisor")

GROUP = "hubs"
_FINAL = {"completed", "failed", "dead"}

# Shared by the scripts that take entries: adopt one entry for this hub, or drop a stale
# one. ARGV: hub, token, count, item-key prefix, now, lease ms (claim only).
_ADOPT = r"""
local q, dead, logk = KEYS[1], KEYS[2], KEYS[3]
local hub, tok, prefix, now = ARGV[1], ARGV[2], ARGV[4], ARGV[5]
local out = {}
local function adopt(eid, fields)
  local iid = nil
  if fields then
    for i = 1, #fields, 2 do if fields[i] == 'item' then iid = fields[i + 1] end end
  end
  if not iid then redis.call('XACK', q, 'hubs', eid); return end
  local k = prefix .. iid
  local h = redis.call('HMGET', k, 'st', 'entry', 'hub', 'tok', 'agent', 'att', 'dlv', 'max',
    'hist')
  local st = h[1]
  if (not st) or h[2] ~= eid or st == 'completed' or st == 'failed' or st == 'dead' then
    redis.call('XACK', q, 'hubs', eid); redis.call('XDEL', q, eid); return
  end
  if h[3] == hub and h[4] == tok then
    table.insert(out, {'mine', redis.call('HGETALL', k)}); return
  end
  if st == 'assigned' and h[3] ~= '' then
    -- an attempt was running on a hub that is gone: it counts as a delivery
    local hist = cjson.decode(h[9] or '[]')
    table.insert(hist, {attempt = tonumber(h[6]), agent = h[3] .. '/' .. (h[5] or ''),
      outcome = 'reclaimed:hub', reason = 'hub ' .. h[3] .. ' lost its lease', at = tonumber(now)})
    while #hist > 20 do table.remove(hist, 1) end
    local enc = cjson.encode(hist)
    if tonumber(h[7]) >= tonumber(h[8]) then
      local err = 'used all ' .. h[8] .. ' deliveries; the last on hub ' .. h[3] ..
        ', which lost its lease'
      redis.call('HSET', k, 'st', 'dead', 'hist', enc, 'error', err, 'finished', now,
        'agent', '', 'hub', hub, 'tok', tok)
      redis.call('XACK', q, 'hubs', eid); redis.call('XDEL', q, eid)
      redis.call('XADD', dead, '*', 'item', iid, 'error', err, 'history', enc)
      redis.call('XADD', logk, 'MAXLEN', '~', 100000, '*', 'item', iid, 'attempt', h[6],
        'hub', hub, 'agent', '', 'outcome', 'dead')
      table.insert(out, {'dead', redis.call('HGETALL', k)}); return
    end
    redis.call('HSET', k, 'hist', enc)
  end
  redis.call('HSET', k, 'hub', hub, 'tok', tok, 'st', 'taken', 'agent', '')
  table.insert(out, {'item', redis.call('HGETALL', k)})
end
redis.pcall('XGROUP', 'CREATE', q, 'hubs', '0', 'MKSTREAM')
"""

_TAKE = (
    _ADOPT
    + r"""
local r = redis.call('XREADGROUP', 'GROUP', 'hubs', hub, 'COUNT', ARGV[3], 'STREAMS', q, ARGV[6])
if r and r[1] then for _, e in ipairs(r[1][2]) do adopt(e[1], e[2]) end end
return out
"""
)

_CLAIM = (
    _ADOPT
    + r"""
local cursor, budget = '0-0', tonumber(ARGV[3])
for _ = 1, 10 do
  local r = redis.call('XAUTOCLAIM', q, 'hubs', hub, ARGV[6], cursor, 'COUNT', budget)
  for _, e in ipairs(r[2]) do adopt(e[1], e[2]) end
  cursor = r[1]
  if cursor == '0-0' or #out >= budget then break end
end
return out
"""
)

_SUBMIT = r"""
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
local entry = redis.call('XADD', KEYS[1], '*', 'item', ARGV[1])
redis.call('HSET', KEYS[2], 'id', ARGV[1], 'type', ARGV[2], 'payload', ARGV[3], 'max', ARGV[4],
  'src', ARGV[5], 'created', ARGV[6], 'st', 'queued', 'att', 0, 'dlv', 0, 'hub', '', 'tok', '',
  'agent', '', 'entry', entry, 'hist', '[]')
return 1
"""

# KEYS: q, dead, log, item. ARGV: op, hub, token, attempt, now, then per op.
_FENCED = r"""
local q, dead, logk, k = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, hub, tok, a, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local h = redis.call('HMGET', k, 'st', 'hub', 'tok', 'att', 'entry', 'id', 'agent')
local st = h[1]
if not st then return {0, 'no such item in Redis'} end
if h[2] ~= hub or h[3] ~= tok then
  return {0, 'lease lost: the item is held by hub ' .. (h[2] ~= '' and h[2] or '(none)')}
end
local att = tonumber(h[4])
local final = st == 'completed' or st == 'failed' or st == 'dead'
if op == 'start' then
  if final then return {1, 'finished'} end
  if a < att then return {0, 'stale attempt'} end
  redis.call('HSET', k, 'st', 'assigned', 'att', a, 'dlv', ARGV[6], 'agent', ARGV[7],
    'started', now, 'progress', '')
  return {1, ''}
elseif op == 'progress' then
  if st ~= 'assigned' or att ~= a then return {0, 'stale attempt'} end
  redis.call('HSET', k, 'progress', ARGV[6])
  if ARGV[7] ~= '' then redis.call('HSET', k, 'ckpt', ARGV[7]) end
  return {1, ''}
elseif op == 'requeue' then
  if final then return {1, 'finished'} end
  if a < att then return {0, 'stale attempt'} end
  redis.call('HSET', k, 'st', 'taken', 'att', a, 'dlv', ARGV[6], 'agent', '', 'hist', ARGV[7],
    'error', ARGV[8])
  return {1, ''}
elseif op == 'finish' then
  local target = ARGV[6]
  if final then
    if st == target and att == a then return {1, 'done already'} end
    return {0, 'the item is ' .. st .. ' already'}
  end
  if a < att then return {0, 'stale attempt'} end
  redis.call('HSET', k, 'st', target, 'att', a, 'dlv', ARGV[7], 'hist', ARGV[8], 'result', ARGV[9],
    'error', ARGV[10], 'finished', now, 'agent', ARGV[11])
  redis.call('XACK', q, 'hubs', h[5]); redis.call('XDEL', q, h[5])
  redis.call('XADD', logk, 'MAXLEN', '~', 100000, '*', 'item', h[6], 'attempt', a, 'hub', hub,
    'agent', ARGV[11], 'outcome', target)
  if target == 'dead' then
    redis.call('XADD', dead, '*', 'item', h[6], 'error', ARGV[10], 'history', ARGV[8])
  else
    redis.call('EXPIRE', k, ARGV[12])
  end
  return {1, ''}
elseif op == 'release' then
  if final then return {1, 'finished'} end
  redis.call('XACK', q, 'hubs', h[5]); redis.call('XDEL', q, h[5])
  local entry = redis.call('XADD', q, '*', 'item', h[6])
  redis.call('HSET', k, 'st', 'queued', 'hub', '', 'tok', '', 'agent', '', 'entry', entry,
    'dlv', ARGV[6], 'hist', ARGV[7])
  return {1, ''}
elseif op == 'renew' then
  if final then return {0, 'finished'} end
  redis.call('XCLAIM', q, 'hubs', hub, 0, h[5], 'JUSTID')
  return {1, ''}
end
return {0, 'unknown op ' .. op}
"""

_RETRY = r"""
local k = KEYS[4]
local st = redis.call('HGET', k, 'st')
if not st then return {0, 'no such item'} end
if st ~= 'dead' and st ~= 'failed' then return {0, 'it is ' .. st} end
local entry = redis.call('XADD', KEYS[1], '*', 'item', ARGV[1])
redis.call('HSET', k, 'st', 'queued', 'dlv', 0, 'error', '', 'hub', '', 'tok', '', 'agent', '',
  'entry', entry, 'finished', '')
redis.call('PERSIST', k)
return {1, ''}
"""

_ID_CHARS = string.ascii_lowercase + string.digits
# Rounds call the scripts by digest (EVALSHA): a few bytes per call instead of the body.
_SHA = {
    script: hashlib.sha1(script.encode()).hexdigest()
    for script in (_TAKE, _CLAIM, _SUBMIT, _FENCED, _RETRY)
}


@attrs.frozen
class _Op:
    """One write waiting for the next round, and what to do with its reply."""

    script: str
    keys: tuple[str, ...]
    args: tuple[Any, ...]
    item_id: str
    kind: str
    on_reply: Callable[[Any], None] | None = None


class RedisWorkQueue:
    """A :class:`~supervisor._work.WorkQueue` whose record is Redis Streams, shared by
    every hub that uses the same Redis and prefix.

    Args:
        url: ``redis://[:password@]host[:port][/db]`` or ``rediss://`` for TLS.
        prefix: the key prefix (shared with the registry mirror's).
        lease: seconds an entry stays leased to a hub that stops renewing it (it renews
            every third of that); another hub takes it after that long.
        keep_finished: seconds a completed or failed item's hash is kept in Redis (dead
            ones are kept until retried or deleted).
        timeout: seconds one Redis round may take before it counts as an outage.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "hubvisor",
        lease: float = 10.0,
        keep_finished: float = 86_400.0,
        timeout: float = 5.0,
    ) -> None:
        if not isinstance(lease, int | float) or not (0.1 <= lease < math.inf):
            raise ConfigError(f"RedisWorkQueue(lease=...) must be >= 0.1 seconds (got {lease!r})")
        if not prefix or any(c in prefix for c in "{} "):
            raise ConfigError(
                f"RedisWorkQueue(prefix=...) must be non-empty without braces or spaces "
                f"(got {prefix!r})"
            )
        self.url = redact_url(url)
        self.prefix = prefix
        self.lease = float(lease)
        self.keep_finished = keep_finished
        self.timeout = timeout
        self._url = url
        self._local = MemoryWorkQueue()
        self._pending: dict[str, WorkItem] = {}  # submitted, not in Redis yet
        self._stored: dict[str, trio.Event] = {}
        self._outbox: deque[_Op] = deque()
        self._ids = 0
        self._boot = "".join(secrets.choice(_ID_CHARS) for _ in range(6))
        self.token = secrets.token_hex(8)
        """This incarnation's fence: entries are leased to (hub id, token)."""
        self.hub_id = ""
        self.outage = False
        self.lost = 0
        """Items this hub lost to another (its lease expired before it wrote)."""
        self.rounds = 0
        self._service: WorkService | None = None
        self._wake = trio.Event()
        self._client: redis.Redis | None = None
        self._query: redis.Redis | None = None
        self._types: set[str] = set()  # every type seen (submitted or served)
        self._serves: set[str] = set()  # types this hub has agents of: it takes only those
        self._lag: dict[str, int] = {}  # entries no hub has taken yet, per type

    def __repr__(self) -> str:
        return f"RedisWorkQueue({self.url!r}, prefix={self.prefix!r}, lease={self.lease})"

    # ----------------------------------------------------------------------------------
    # keys

    def _k(self, agent_type: str, name: str) -> str:
        return _type_key(self.prefix, agent_type, name)

    def _item_prefix(self, agent_type: str) -> str:
        return self._k(agent_type, "item:")

    def _keys(self, agent_type: str, item_id: str = "") -> tuple[str, ...]:
        keys = (self._k(agent_type, "q"), self._k(agent_type, "dead"), self._k(agent_type, "log"))
        return (*keys, self._item_prefix(agent_type) + item_id) if item_id else keys

    # ----------------------------------------------------------------------------------
    # WorkQueue: local decisions, written behind

    def get(self, item_id: str) -> WorkItem:
        """The item, if this hub holds it or submitted it (see :meth:`fetch` for any)."""
        if item_id in self._pending:
            return self._pending[item_id]
        return self._local.get(item_id)

    def items(self) -> Iterable[WorkItem]:
        """The items this hub holds or submitted, oldest first."""
        return [*self._pending.values(), *self._local.items()]

    def held_by(self, agent: str) -> WorkItem | None:
        """The item ``agent`` holds, if any."""
        return self._local.held_by(agent)

    def depth(self, agent_type: str) -> int:
        """Items of ``agent_type`` waiting: held here for an agent, plus those no hub has
        taken yet (as of this hub's last heartbeat round)."""
        return self._local.depth(agent_type) + self._lag.get(agent_type, 0)

    def has_work(self, agent_type: str) -> bool:
        """Whether this hub holds a queued item of ``agent_type`` (taken from Redis)."""
        return self._local.has_work(agent_type)

    def submit(
        self, agent_type: str, payload: Any, *, max_deliveries: int, source: str, now: float
    ) -> WorkItem:
        """Queue the item for the next round's write (:meth:`stored` waits for it)."""
        self._ids += 1
        item = WorkItem(
            id=f"{agent_type}-{self._boot}{self._ids}",
            agent_type=agent_type,
            payload=payload,
            max_deliveries=max_deliveries,
            created_at=time.time(),
            source=source,
        )
        self._pending[item.id] = item
        self._stored[item.id] = trio.Event()
        args = (item.id, agent_type, _dumps(payload), max_deliveries, source, item.created_at)
        keys = (self._k(agent_type, "q"), self._item_prefix(agent_type) + item.id)
        self._push(_Op(_SUBMIT, keys, args, item.id, "submit"))
        self._types.add(agent_type)
        return item

    def assign(self, agent_type: str, agent: str, now: float) -> WorkItem | None:
        """Give the oldest item this hub holds to ``agent``; the attempt is written."""
        item = self._local.assign(agent_type, agent, _wall(now))
        if item is not None:
            self._fenced(item, "start", item.deliveries, agent)
        return item

    def complete(self, item_id: str, attempt: int, agent: str, result: Any, now: float) -> Verdict:
        """Decide locally; the result is written (fenced) in the next round."""
        verdict = self._local.complete(item_id, attempt, agent, result, _wall(now))
        if verdict.accepted and verdict.item is not None:
            self._finish(verdict.item, agent)
        return verdict

    def fail(
        self, item_id: str, attempt: int, agent: str, error: str, retry: bool, now: float
    ) -> Verdict:
        """Decide locally; the failure is written (fenced) in the next round."""
        verdict = self._local.fail(item_id, attempt, agent, error, retry, _wall(now))
        if verdict.accepted and verdict.item is not None:
            self._after(verdict.item, agent)
        return verdict

    def hand_back(self, item_id: str, attempt: int, agent: str, now: float) -> Verdict:
        """Decide locally; the item stays leased to this hub for its other agents."""
        verdict = self._local.hand_back(item_id, attempt, agent, _wall(now))
        if verdict.accepted and verdict.item is not None:
            self._after(verdict.item, agent)
        return verdict

    def progress(
        self, item_id: str, attempt: int, agent: str, progress: Any, checkpoint: Any
    ) -> Verdict:
        """Keep the progress; the checkpoint is written so another hub can resume."""
        verdict = self._local.progress(item_id, attempt, agent, progress, checkpoint)
        if verdict.accepted and verdict.item is not None:
            ckpt = "" if checkpoint is None else _dumps(checkpoint)
            self._fenced(verdict.item, "progress", _dumps(progress), ckpt)
        return verdict

    def reclaim(
        self, agent: str, reason: Literal["exit", "hang", "stop", "unreachable"], now: float
    ) -> Verdict:
        """Take back what ``agent`` holds (see :meth:`MemoryWorkQueue.reclaim`)."""
        verdict = self._local.reclaim(agent, reason, _wall(now))
        if verdict.accepted and verdict.item is not None:
            self._after(verdict.item, agent)
        return verdict

    def retry(self, item_id: str, now: float) -> WorkItem:
        """Queue a dead or failed item this hub holds again (any hub's: ``retry_any``)."""
        item = self._local.get(item_id)
        if item.status not in (ItemStatus.DEAD, ItemStatus.FAILED):
            raise ControlError(
                f"work item {item_id!r} is {item.status}; only dead or failed items can be retried"
            )
        self._local.forget(item_id)
        self._push(_Op(_RETRY, self._keys(item.agent_type, item_id), (item_id,), item_id, "retry"))
        item.status = ItemStatus.QUEUED
        item.deliveries = 0
        item.error = None
        return item

    # ----------------------------------------------------------------------------------
    # writes

    def _push(self, op: _Op) -> None:
        self._outbox.append(op)
        self._wake.set()

    def _fenced(self, item: WorkItem, op: str, *extra: Any) -> None:
        args = (op, self.hub_id, self.token, item.attempt, time.time(), *extra)
        keys = self._keys(item.agent_type, item.id)
        self._push(_Op(_FENCED, keys, args, item.id, op, self._on_fenced(item, op)))

    def _after(self, item: WorkItem, agent: str) -> None:
        if item.status is ItemStatus.QUEUED:  # still leased here, for another agent
            hist = _dumps([attrs.asdict(h) for h in item.history])
            self._fenced(item, "requeue", item.deliveries, hist, item.error or "")
        else:
            self._finish(item, agent)

    def _finish(self, item: WorkItem, agent: str) -> None:
        hist = _dumps([attrs.asdict(h) for h in item.history])
        result = "" if item.result is None else _dumps(item.result)
        self._fenced(
            item,
            "finish",
            str(item.status),
            item.deliveries,
            hist,
            result,
            item.error or "",
            agent,
            int(self.keep_finished),
        )

    def _on_fenced(self, item: WorkItem, op: str) -> Callable[[Any], None]:
        def on_reply(reply: Any) -> None:
            ok, reason = int(reply[0]), _text(reply[1])
            if ok or op == "progress":
                return
            if reason.startswith("lease lost") or reason.startswith("no such item"):
                self._lose(item, reason)
            else:
                _log.warning("work %s: Redis refused %s: %s", item.id, op, reason)

        return on_reply

    def _lose(self, item: WorkItem, reason: str) -> None:
        """Another hub holds the item now: forget it here (its agent's answer will be
        refused) and say so."""
        if self._local.forget(item.id) is None:
            return
        self.lost += 1
        _log.warning(
            "work %s: %s; this hub's attempt %d no longer counts", item.id, reason, item.attempt
        )
        if self._service is not None:
            self._service.lost(item, reason)

    # ----------------------------------------------------------------------------------
    # the actor

    async def stored(self, item_id: str, timeout: float) -> bool:
        """Wait until the submitted item is in Redis (False after ``timeout`` seconds:
        it is held here and written when Redis answers)."""
        event = self._stored.get(item_id)
        if event is None:
            return item_id not in self._pending
        with trio.move_on_after(timeout):
            await event.wait()
        return event.is_set()

    def poke(self) -> None:
        """Something changed (idle agents, new writes): run a round soon."""
        self._wake.set()

    async def run(self, service: WorkService, *, task_status: trio.TaskStatus[None]) -> None:
        """Serve as the service's store until cancelled; then release what this hub holds
        and write what is left (bounded by ``timeout``)."""
        self._service = service
        self.hub_id = service.hub_id
        self._client = self._make_client(1)
        try:
            await self._start()
        except redis.RedisError as exc:
            _log.warning(
                "work: Redis at %s unreachable at start (%s); supervising on, writes held "
                "until it answers",
                self.url,
                _clean(exc),
            )
            self.outage = True
        task_status.started()
        try:
            await self._loop()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(self.timeout):
                await self._close()

    def _make_client(self, connections: int) -> redis.Redis:
        try:
            return redis.Redis.from_url(
                self._url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                max_connections=connections,
                retry=Retry(NoBackoff(), 0),
                client_name=f"hubvisor-work-{self.hub_id or 'query'}",
            )
        except (ValueError, redis.RedisError) as exc:
            raise ConfigError(
                f"bad Redis URL {self.url}: {_clean(exc)}; e.g. redis://localhost:6379/0"
            ) from None

    async def _start(self) -> None:
        assert self._client is not None
        warning = await trio.to_thread.run_sync(persistence_warning, self._client)
        if warning:
            _log.warning("work: %s", warning)
        await trio.to_thread.run_sync(self._register)
        self._heartbeat_sync()
        _log.info(
            "work: durable queues on Redis at %s (prefix %r, lease %.1f s, hub %s)",
            self.url,
            self.prefix,
            self.lease,
            self.hub_id,
        )

    def _hub_key(self, hub_id: str | None = None) -> str:
        return _hub_key(self.prefix, hub_id or self.hub_id)

    def check_hub_id(self, hub_id: str) -> None:
        """Before the hub starts: refuse (:class:`ControlError`) when a live hub already
        uses ``hub_id`` on this Redis. An unreachable Redis is only logged: the hub then
        starts, supervises, and writes when Redis answers."""
        self.hub_id = hub_id
        client = self._make_client(1)
        try:
            self._client = client
            self._register()
        except redis.RedisError as exc:
            _log.warning(
                "work: Redis at %s unreachable (%s); starting anyway", self.url, _clean(exc)
            )
        finally:
            self._client = None
            client.close()

    def _register(self) -> None:
        """Refuse to run beside a live hub of the same id; take over a dead one's."""
        assert self._client is not None
        old = _decode_map(self._client.hgetall(self._hub_key()))
        if old and old.get("token") != self.token:
            same_host = old.get("host") == socket.gethostname()
            pid = int(old.get("pid") or 0)
            if not same_host or _alive(pid):
                where = f"pid {pid} on {old.get('host')}"
                raise ControlError(
                    f"hub id {self.hub_id!r} is live in Redis ({where}, lease "
                    f"{self.lease:g} s); stop it, wait out its lease, or pick another --hub-id"
                )
            _log.info("work: hub %s restarted (was pid %d): taking its work back", self.hub_id, pid)

    def _heartbeat_sync(self) -> None:
        assert self._client is not None
        pipe = self._client.pipeline(transaction=False)
        self._add_heartbeat(pipe, self._heartbeat_fields())
        pipe.execute()

    def _heartbeat_fields(self) -> dict[str, Any]:
        """What ``status --cluster`` shows of this hub (read in trio's thread)."""
        agents = self._service.agent_counts() if self._service is not None else {}
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": self.token,
            "lease_ms": int(self.lease * 1000),
            "agents": json.dumps(agents, sort_keys=True),
            "types": json.dumps(sorted(self._types)),
        }

    def _add_heartbeat(self, pipe: Any, fields: dict[str, Any]) -> None:
        key = self._hub_key()
        pipe.hset(key, mapping=fields)
        pipe.pexpire(key, int(self.lease * 1000))
        pipe.zadd(f"{self.prefix}:work:hubs", {self.hub_id: time.time()})
        for agent_type in json.loads(fields["types"]):
            pipe.sadd(f"{self.prefix}:work:types", agent_type)

    async def _loop(self) -> None:
        renew_every = self.lease / 3
        claim_every = self.lease / 4
        next_renew = next_claim = last_take = trio.current_time()
        # Types whose entries pending on this hub id (a restart, a lost reply) are read
        # back first: every type the first time it is seen, all of them after an outage.
        recover: set[str] = set()
        poll, backoff = 0.01, 0.0
        announced: set[str] = set()  # types the hub's heartbeat has told Redis of
        while True:
            now = trio.current_time()
            demand = self._demand()
            serves = self._service.agent_types() if self._service else set()
            recover |= serves - self._serves
            self._serves = serves
            self._types |= serves
            if not self._outbox and not recover:
                deadline = min(next_renew, next_claim)
                if demand:
                    deadline = min(deadline, last_take + poll)
                if deadline > now:
                    with trio.move_on_at(deadline):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    continue
            renew, claim = now >= next_renew, now >= next_claim
            ops = [self._outbox.popleft() for _ in range(min(len(self._outbox), 1000))]
            reads = self._reads(demand, renew, claim, recover)
            renewals = self._renewals() if renew else []
            beat = self._heartbeat_fields() if renew or self._types != announced else None
            lag_types = [] if beat is None else self._lag_types()
            try:
                replies = await trio.to_thread.run_sync(
                    self._round, ops, renewals, beat, lag_types, reads
                )
            except redis.RedisError as exc:
                self._outbox.extendleft(reversed(ops))
                if not self.outage:
                    _log.warning(
                        "work: Redis at %s unreachable (%s); supervising on, %d writes held",
                        self.url,
                        _clean(exc),
                        len(self._outbox),
                    )
                self.outage = True
                recover = set(self._serves)
                backoff = min(2.0, max(0.05, backoff * 2))
                await trio.sleep(backoff)
                continue
            if self.outage:
                _log.warning("work: Redis at %s answers again; held writes written", self.url)
            self.outage, backoff = False, 0.0
            if beat is not None:
                announced = set(json.loads(beat["types"]))
            self.rounds += 1
            recover = set()
            if renew:
                next_renew = now + renew_every
            if claim:
                next_claim = now + claim_every
            try:
                taken = self._apply(ops, renewals, reads, replies)
                if beat is not None:
                    self._note_lag(lag_types, replies, len(reads))
            except Exception:  # a reply of a shape never seen: log it, never stop the work
                _log.exception("work: could not apply a Redis round; reading back what is held")
                recover, taken = set(self._serves), 0
            if demand:
                last_take = now
                poll = 0.01 if taken else min(0.25, poll * 2)
            if taken and self._service is not None:
                self._service.poke()

    def _demand(self) -> dict[str, int]:
        if self._service is None:
            return {}
        idle = self._service.idle_counts()
        return {t: n - self._local.depth(t) for t, n in idle.items() if n > self._local.depth(t)}

    def _reads(
        self, demand: Mapping[str, int], renew: bool, claim: bool, recover: set[str]
    ) -> list[tuple[str, str, tuple[Any, ...]]]:
        """The taking scripts of this round: (script, type, args)."""
        reads: list[tuple[str, str, tuple[Any, ...]]] = []
        now = time.time()
        for agent_type in sorted(self._serves | set(demand)):
            base = (self.hub_id, self.token)
            prefix = self._item_prefix(agent_type)
            if agent_type in recover:
                reads.append((_TAKE, agent_type, (*base, 1000, prefix, now, "0")))
            if claim:
                lease_ms = int(self.lease * 1000)
                reads.append((_CLAIM, agent_type, (*base, 100, prefix, now, lease_ms)))
            if demand.get(agent_type):
                reads.append((_TAKE, agent_type, (*base, demand[agent_type], prefix, now, ">")))
        return reads

    def _round(
        self,
        ops: list[_Op],
        renewals: list[tuple[WorkItem, tuple[str, ...], tuple[Any, ...]]],
        beat: dict[str, Any] | None,
        lag_types: list[str],
        reads: list[tuple[str, str, tuple[Any, ...]]],
    ) -> list[Any]:
        """One pipeline (in a worker thread; it reads nothing the trio thread changes):
        writes in order, lease renewals and the hub's heartbeat, then the taking scripts."""
        client = self._client
        assert client is not None
        for _ in range(2):
            pipe = client.pipeline(transaction=False)
            for op in ops:
                pipe.evalsha(_SHA[op.script], len(op.keys), *op.keys, *op.args)
            for _item, keys, args in renewals:
                pipe.evalsha(_SHA[_FENCED], 4, *keys, *args)
            if beat is not None:
                self._add_heartbeat(pipe, beat)
            for agent_type in lag_types:
                pipe.xinfo_groups(self._k(agent_type, "q"))
            for script, agent_type, args in reads:
                pipe.evalsha(_SHA[script], 3, *self._keys(agent_type), *args)
            replies: list[Any] = pipe.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, redis.ConnectionError | redis.TimeoutError):
                    raise reply
            if not any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                break
            # A restarted (or flushed) server forgot the scripts: none of them ran, so
            # the round runs again once they are loaded (the other commands are
            # idempotent).
            for script in _SHA:
                client.script_load(script)
        return replies

    def _renewals(self) -> list[tuple[WorkItem, tuple[str, ...], tuple[Any, ...]]]:
        now = time.time()
        return [
            (
                item,
                self._keys(item.agent_type, item.id),
                ("renew", self.hub_id, self.token, item.attempt, now),
            )
            for item in self._local.items()
            if item.status in (ItemStatus.QUEUED, ItemStatus.ASSIGNED)
        ]

    def _apply(
        self,
        ops: list[_Op],
        renewals: list[tuple[WorkItem, tuple[str, ...], tuple[Any, ...]]],
        reads: list[tuple[str, str, tuple[Any, ...]]],
        replies: list[Any],
    ) -> int:
        at = 0
        for op in ops:
            reply = replies[at]
            at += 1
            if isinstance(reply, Exception):
                _log.warning("work %s: Redis refused %s: %s", op.item_id, op.kind, reply)
                continue
            if op.kind == "submit":
                self._pending.pop(op.item_id, None)
                event = self._stored.pop(op.item_id, None)
                if event is not None:
                    event.set()
            elif op.on_reply is not None:
                op.on_reply(reply)
        for item, _keys, _args in renewals:
            reply = replies[at]
            at += 1
            if not isinstance(reply, Exception) and not int(reply[0]):
                reason = _text(reply[1])
                if reason != "finished":
                    self._lose(item, reason)
        at = len(replies) - len(reads)
        taken = 0
        for (_script, agent_type, _args), reply in zip(reads, replies[at:], strict=True):
            if isinstance(reply, Exception):
                _log.warning("work: taking %s items from Redis failed: %s", agent_type, reply)
                continue
            for kind, flat in reply:
                fields = _pairs(flat)
                kind = _text(kind)
                if kind == "dead":
                    if self._service is not None:
                        self._service.dead_elsewhere(_item_from(fields))
                    continue
                if kind == "mine" and self._known(fields["id"]):
                    continue
                item = _item_from(fields)
                item.status = ItemStatus.QUEUED
                self._local.adopt(item)
                taken += 1
        return taken

    def _lag_types(self) -> list[str]:
        """The types whose untaken entries this hub counts: those it serves and those an
        autoscaling pool watches (it may have no agent yet)."""
        watched = self._service.watched if self._service is not None else set()
        return sorted(self._serves | watched)

    def _note_lag(self, types: list[str], replies: list[Any], reads: int) -> None:
        end = len(replies) - reads
        for agent_type, reply in zip(types, replies[end - len(types) : end], strict=True):
            lag = 0
            if not isinstance(reply, Exception):  # no stream yet: nothing waits
                for group in reply:
                    g = {_text(k): v for k, v in group.items()}
                    if _text(g.get("name")) == GROUP:
                        lag = int(g.get("lag") or 0)
            self._lag[agent_type] = lag

    def _known(self, item_id: str) -> bool:
        try:
            self._local.get(item_id)
        except ControlError:
            return False
        return True

    async def _close(self) -> None:
        """Give back what this hub holds (so others take it at once) and write the rest."""
        for item in list(self._local.items()):
            if item.status in (ItemStatus.QUEUED, ItemStatus.ASSIGNED):
                hist = _dumps([attrs.asdict(h) for h in item.history])
                if item.status is ItemStatus.ASSIGNED:  # the hub is going: not the item's fault
                    item.deliveries = max(0, item.deliveries - 1)
                self._fenced(item, "release", item.deliveries, hist)
        ops = list(self._outbox)
        self._outbox.clear()
        if self._client is None:
            return
        client = self._client

        def final() -> None:
            pipe = client.pipeline(transaction=False)
            for op in ops:
                pipe.eval(op.script, len(op.keys), *op.keys, *op.args)
            pipe.delete(self._hub_key())
            pipe.zrem(f"{self.prefix}:work:hubs", self.hub_id)
            pipe.execute(raise_on_error=False)

        try:
            await trio.to_thread.run_sync(final, abandon_on_cancel=True)
        except redis.RedisError as exc:
            if ops:
                _log.warning(
                    "work: %d writes not written at stop (Redis: %s); the items' leases run "
                    "out and another hub (or this one, restarted) takes them",
                    len(ops),
                    _clean(exc),
                )
        finally:
            client.close()
            if self._query is not None:
                self._query.close()
                self._query = None

    # ----------------------------------------------------------------------------------
    # queries (control ops)

    def _query_client(self) -> redis.Redis:
        if self._query is None:
            self._query = self._make_client(2)
        return self._query

    async def fetch(self, item_id: str) -> WorkItem:
        """The item, from this hub if it holds it, else from Redis."""
        try:
            return self.get(item_id)
        except ControlError:
            pass
        agent_type = item_id.rsplit("-", 1)[0]
        client = self._query_client()
        key = self._item_prefix(agent_type) + item_id
        fields = await trio.to_thread.run_sync(lambda: _decode_map(client.hgetall(key)))
        if not fields:
            raise ControlError(f"no work item {item_id!r}; `hubvisor work list` lists them")
        return _item_from(fields)

    async def retry_any(self, item_id: str) -> WorkItem:
        """Queue a dead or failed item again, whichever hub held it."""
        try:
            local = self._local.get(item_id)
        except ControlError:
            local = None
        if local is not None:
            item = self.retry(item_id, 0.0)
            self.poke()
            return item
        agent_type = item_id.rsplit("-", 1)[0]
        client = self._query_client()
        keys = self._keys(agent_type, item_id)
        reply = await trio.to_thread.run_sync(lambda: client.eval(_RETRY, 4, *keys, item_id))
        if not int(reply[0]):
            raise ControlError(
                f"work item {item_id!r} cannot be retried: {_text(reply[1])}; only dead or "
                "failed items can"
            )
        self.poke()
        return await self.fetch(item_id)

    async def cluster(self) -> dict[str, Any]:
        """Every hub sharing this Redis and the queues per type (``status --cluster``)."""
        client = self._query_client()
        return await trio.to_thread.run_sync(cluster_status, client, self.prefix)


# --------------------------------------------------------------------------------------
# helpers


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
    pipe = client.pipeline(transaction=False)
    for n, payload in enumerate(payloads, 1):
        item_id = f"{agent_type}-{boot}{n}"
        ids.append(item_id)
        key = _type_key(prefix, agent_type, f"item:{item_id}")
        args = (item_id, agent_type, _dumps(payload), max_deliveries, source, time.time())
        pipe.eval(_SUBMIT, 2, q, key, *args)
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
        q = _type_key(prefix, agent_type, "q")
        waiting = in_flight = 0
        try:
            for group in client.xinfo_groups(q):
                g = {_text(k): v for k, v in group.items()}
                if _text(g.get("name")) == GROUP:
                    waiting = int(g.get("lag") or 0)
                    in_flight = int(g.get("pending") or 0)
            summary = client.xpending(q, GROUP)
            for row in summary.get("consumers") or []:
                name = _text(row["name"])
                pending.setdefault(name, {})[agent_type] = int(row["pending"])
        except redis.ResponseError:  # no stream or group yet
            pass
        dead = int(client.xlen(_type_key(prefix, agent_type, "dead")))
        queues[agent_type] = {"waiting": waiting, "in_flight": in_flight, "dead": dead}
    hubs = []
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
    return {"prefix": prefix, "hubs": hubs, "queues": queues}


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


def _item_from(fields: Mapping[str, str]) -> WorkItem:
    hist = json.loads(fields.get("hist") or "[]")
    status = fields.get("st", "queued")
    return WorkItem(
        id=fields["id"],
        agent_type=fields["type"],
        payload=json.loads(fields["payload"]),
        max_deliveries=int(fields["max"]),
        created_at=float(fields.get("created") or 0),
        source=fields.get("src", "api"),
        status=ItemStatus(status) if status in set(ItemStatus) else ItemStatus.QUEUED,
        attempt=int(fields.get("att") or 0),
        deliveries=int(fields.get("dlv") or 0),
        agent=fields.get("agent") or None,
        result=json.loads(fields["result"]) if fields.get("result") else None,
        error=fields.get("error") or None,
        checkpoint=json.loads(fields["ckpt"]) if fields.get("ckpt") else None,
        history=[AttemptRecord(**h) for h in hist],
    )


def _type_key(prefix: str, agent_type: str, name: str) -> str:
    """A key of one agent type's queue; they share the hash tag ``{type}``."""
    return f"{prefix}:work:{{{agent_type}}}:{name}"


def _hub_key(prefix: str, hub_id: str) -> str:
    """A hub's liveness key (hash tag ``{hub id}``)."""
    return f"{prefix}:work:hub:{{{hub_id}}}"


def _wall(now: float) -> float:
    """The wall-clock time of trio's ``now``: the record in Redis is read by other hosts."""
    try:
        return now + time.time() - trio.current_time()
    except RuntimeError:  # outside trio
        return now


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}


def _decode_map(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _clean(exc: BaseException) -> str:
    return redact_url(str(exc)) or type(exc).__name__


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
