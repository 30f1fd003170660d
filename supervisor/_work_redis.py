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

from ._errors import ConfigError, ControlError, ServiceFailed
from ._redis_link import redact_url
from .work import AttemptRecord, ItemStatus, MemoryWorkQueue, Verdict, WorkItem

if TYPE_CHECKING:
    from .work import WorkService

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
  local prev = h[3] or ''
  if prev == hub and h[4] == tok then
    table.insert(out, {'mine', redis.call('HGETALL', k), prev}); return
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
      local dl = redis.call('XADD', dead, '*', 'item', iid, 'error', err, 'history', enc)
      redis.call('HSET', k, 'dl', dl)
      redis.call('XADD', logk, 'MAXLEN', '~', 100000, '*', 'item', iid, 'attempt', h[6],
        'hub', hub, 'agent', '', 'outcome', 'dead')
      table.insert(out, {'dead', redis.call('HGETALL', k), prev}); return
    end
    redis.call('HSET', k, 'hist', enc)
  end
  redis.call('HSET', k, 'hub', hub, 'tok', tok, 'st', 'taken', 'agent', '')
  table.insert(out, {'item', redis.call('HGETALL', k), prev})
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

# The server's clock of one type's hubs, in the hash KEYS[4] (``P:work:{T}:alive``):
# ``hub:<id>`` is the server time (ms) of that hub's last proof of life, ``clock:last`` the
# last time any hub of the type was heard, ``clock:resumed`` the end of the last silence
# longer than half a lease (the server stalled, or every hub did). Nobody is judged dead
# until a whole lease has passed since then: every hub gets its chance to renew first.
_CLOCK = r"""
local function tick(alive, lease)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local last = tonumber(redis.call('HGET', alive, 'clock:last') or '0')
  if now - last > lease / 2 then redis.call('HSET', alive, 'clock:resumed', now) end
  redis.call('HSET', alive, 'clock:last', now)
  return now
end
"""

# A hub's proof of life for one type. KEYS: alive. ARGV: hub, lease ms.
_BEAT = (
    _CLOCK
    + r"""
local now = tick(KEYS[1], tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'hub:' .. ARGV[1], now)
return now
"""
)

# Take the entries of hubs whose proof of life is older than the lease (never from the
# idle time of an entry alone: a stalled server stalls every hub's renewals with it).
# KEYS: q, dead, log, alive. ARGV: hub, token, count, item prefix, now, lease ms.
_CLAIM = (
    _ADOPT
    + _CLOCK
    + r"""
local lease, budget = tonumber(ARGV[6]), tonumber(ARGV[3])
local alive = KEYS[4]
local now = tick(alive, lease)
local resumed = tonumber(redis.call('HGET', alive, 'clock:resumed') or '0')
if now - resumed < lease then return out end
local start = '-'
for _ = 1, 10 do
  local rows = redis.call('XPENDING', q, 'hubs', 'IDLE', lease, start, '+', budget)
  for _, row in ipairs(rows) do
    local eid, owner = row[1], row[2]
    local beat = tonumber(redis.call('HGET', alive, 'hub:' .. owner) or '0')
    if owner == hub or now - beat > lease then
      local got = redis.call('XCLAIM', q, 'hubs', hub, lease, eid)
      if got[1] then adopt(got[1][1], got[1][2]) else redis.call('XACK', q, 'hubs', eid) end
    end
    if #out >= budget then return out end
  end
  if #rows < budget then break end
  start = '(' .. rows[#rows][1]
end
return out
"""
)

# The hub id is a claim: the hub key holds the token of the incarnation that owns it.
# KEYS: hub key. ARGV: token, the dead incarnation's token it may replace, lease ms, then
# field, value pairs. Returns {1} or {0, host, pid, token} of the owner.
_HUB = r"""
local cur = redis.call('HGET', KEYS[1], 'token')
if cur and cur ~= ARGV[1] and cur ~= ARGV[2] then
  local h = redis.call('HMGET', KEYS[1], 'host', 'pid')
  return {0, h[1] or '?', h[2] or '0', cur}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1}
"""

# A hub that stops deletes its key only if it still owns the id.
_UNHUB = r"""
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then redis.call('DEL', KEYS[1]); return 1 end
return 0
"""

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
    local dl = redis.call('XADD', dead, '*', 'item', h[6], 'error', ARGV[10], 'history', ARGV[8])
    redis.call('HSET', k, 'dl', dl)
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
local dl = redis.call('HGET', k, 'dl')
if dl and dl ~= '' then redis.call('XDEL', KEYS[2], dl) end
local entry = redis.call('XADD', KEYS[1], '*', 'item', ARGV[1])
redis.call('HSET', k, 'st', 'queued', 'dlv', 0, 'error', '', 'hub', '', 'tok', '', 'agent', '',
  'entry', entry, 'finished', '', 'dl', '')
redis.call('PERSIST', k)
return {1, ''}
"""

_ID_CHARS = string.ascii_lowercase + string.digits
# Rounds call the scripts by digest (EVALSHA): a few bytes per call instead of the body.
_SHA = {
    script: hashlib.sha1(script.encode()).hexdigest()
    for script in (_TAKE, _CLAIM, _SUBMIT, _FENCED, _RETRY, _BEAT, _HUB, _UNHUB)
}


@attrs.define
class _Op:
    """One write waiting for the next round, and what to do with its reply (a progress
    write not yet sent takes the next progress of its item in its place)."""

    script: str
    keys: tuple[str, ...]
    args: tuple[Any, ...]
    item_id: str
    kind: str
    on_reply: Callable[[Any], None] | None = None
    size: int = 0


@attrs.define
class _Round:
    """What one round sends, in this order, in one pipeline."""

    ops: list[_Op]
    renewals: list[tuple[WorkItem, tuple[str, ...], tuple[Any, ...]]]
    beat: dict[str, Any] | None  # the hub's heartbeat (its claim of the hub id)
    beats: list[str]  # types this hub proves it is alive for
    lag_types: list[str]
    checks: list[WorkItem]  # dead/failed items kept here, read back
    reads: list[tuple[str, str, tuple[Any, ...]]]


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
        timeout: seconds one Redis round may take before it counts as an outage; at
            stop, the hub waits as long for what it holds to reach Redis.
        max_held: writes the hub holds for Redis while it does not answer; when they
            (or ``max_held_bytes`` of them) are reached, new submits are refused until
            Redis answers. Results, failures and attempt starts are always kept; the
            progress of an item is kept as its latest only.
        max_held_bytes: the bytes those held writes may take.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "hubvisor",
        lease: float = 10.0,
        keep_finished: float = 86_400.0,
        timeout: float = 5.0,
        max_held: int = 10_000,
        max_held_bytes: int = 64 * 1024 * 1024,
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
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self._url = url
        self._local = MemoryWorkQueue()
        self._pending: dict[str, WorkItem] = {}  # submitted, not in Redis yet
        self._stored: dict[str, trio.Event] = {}
        self._outbox: deque[_Op] = deque()
        self._held_bytes = 0
        self._progress_ops: dict[str, _Op] = {}  # item -> its progress write not yet sent
        self._full_since: float | None = None  # when the held writes reached the cap
        self.coalesced = 0
        """Progress writes replaced by a later progress of the same item before sent."""
        self.dropped_progress = 0
        """Progress writes not kept because the held writes were at their cap."""
        self.errors = 0
        """Rounds that failed with an error that is not an outage (logged, retried)."""
        self.poisoned = 0
        """Writes dropped because they can never be sent (logged with the item's id)."""
        self._ids = 0
        self._boot = "".join(secrets.choice(_ID_CHARS) for _ in range(6))
        self.token = secrets.token_hex(8)
        """This incarnation's fence: entries are leased to (hub id, token)."""
        self.hub_id = ""
        self._replaces = ""  # the token of a dead incarnation of this hub id
        self._claimed = False  # this incarnation holds the hub id in Redis (checked)
        self.conflict: ServiceFailed | None = None
        """Set when another live hub holds this hub's id: the store stops."""
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
        """Queue the item for the next round's write (:meth:`stored` waits for it).

        Raises:
            ControlError: the hub holds ``max_held`` writes (or ``max_held_bytes``) that
                Redis has not taken yet.
        """
        if self._full():
            raise ControlError(
                f"the hub holds {len(self._outbox)} writes ({self._held_bytes // 1024} KiB) "
                f"that Redis at {self.url} has not taken (its cap: {self.max_held} writes, "
                f"{self.max_held_bytes // 1024} KiB); submit again when Redis answers"
            )
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
        """Decide locally; the item is released to the stream (no delivery spent), so any
        agent of its type on any hub (this one's too) takes it."""
        verdict = self._local.hand_back(item_id, attempt, agent, _wall(now))
        if verdict.accepted and verdict.item is not None:
            item = verdict.item
            self._local.forget(item.id)
            self._fenced(item, "release", item.deliveries, self._hist(item))
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
        op.size = _size(op.args)
        if op.kind == "progress":
            slot = self._progress_ops.get(op.item_id)
            if slot is not None:  # not sent yet: the latest progress takes its place
                self._held_bytes += op.size - slot.size
                slot.args, slot.size, slot.on_reply = op.args, op.size, op.on_reply
                self.coalesced += 1
                return
            if self._full():
                self.dropped_progress += 1  # the item keeps it locally; results go out
                return
            self._progress_ops[op.item_id] = op
        else:  # a later progress of this item queues behind this write
            self._progress_ops.pop(op.item_id, None)
        self._outbox.append(op)
        self._held_bytes += op.size
        self._full()
        self._wake.set()

    def _full(self) -> bool:
        """Whether the held writes are at their cap (logged once when they reach it)."""
        full = len(self._outbox) >= self.max_held or self._held_bytes >= self.max_held_bytes
        if full and self._full_since is None:
            self._full_since = time.monotonic()
            _log.error(
                "work: %d writes (%d KiB) held for Redis at %s, its cap (%d writes, %d KiB): "
                "new submits are refused until Redis takes them; results, failures and "
                "attempt starts are kept, progress only as each item's latest",
                len(self._outbox),
                self._held_bytes // 1024,
                self.url,
                self.max_held,
                self.max_held_bytes // 1024,
            )
        return full

    def _take_ops(self) -> list[_Op]:
        """The writes of the next round (the oldest 1000), out of the outbox."""
        ops = [self._outbox.popleft() for _ in range(min(len(self._outbox), 1000))]
        for op in ops:
            self._held_bytes -= op.size
            if self._progress_ops.get(op.item_id) is op:
                del self._progress_ops[op.item_id]
        return ops

    def _put_back(self, ops: list[_Op]) -> None:
        """A round that failed: its writes go first in the next one."""
        self._outbox.extendleft(reversed(ops))
        self._held_bytes += sum(op.size for op in ops)

    def _fenced(self, item: WorkItem, op: str, *extra: Any) -> None:
        args = (op, self.hub_id, self.token, item.attempt, time.time(), *extra)
        keys = self._keys(item.agent_type, item.id)
        self._push(_Op(_FENCED, keys, args, item.id, op, self._on_fenced(item, op)))

    def _hist(self, item: WorkItem) -> str:
        """The item's history as written to Redis: each attempt names its hub."""
        return _dumps(
            [
                {
                    **attrs.asdict(h),
                    "agent": h.agent if "/" in h.agent else f"{self.hub_id}/{h.agent}",
                    "reason": _safe(h.reason),
                }
                for h in item.history
            ]
        )

    def _after(self, item: WorkItem, agent: str) -> None:
        if item.status is ItemStatus.QUEUED:  # still leased here, for another agent
            error = _safe(item.error or "")
            self._fenced(item, "requeue", item.deliveries, self._hist(item), error)
        else:
            self._finish(item, agent)

    def _finish(self, item: WorkItem, agent: str) -> None:
        result = "" if item.result is None else _dumps(item.result)
        self._fenced(
            item,
            "finish",
            str(item.status),
            item.deliveries,
            self._hist(item),
            result,
            _safe(item.error or ""),
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
        and write what is left, waiting up to ``timeout`` for Redis (each item whose
        write did not land is logged by id).

        Raises:
            ServiceFailed: Redis refused the credentials or the configuration at start,
                or another live hub holds this hub's id (at start or when Redis returns).
        """
        self._service = service
        self.hub_id = service.hub_id
        self._client = self._make_client(1)
        try:
            try:
                await self._start()
            except ControlError as exc:  # a live hub with this id
                raise ServiceFailed(str(exc)) from None
            except redis.RedisError as exc:
                problem = _config_problem(exc, self.url)
                if problem is not None:
                    raise ServiceFailed(problem) from None
                _log.warning(
                    "work: Redis at %s unreachable at start (%s); supervising on, writes held "
                    "until it answers",
                    self.url,
                    _clean(exc),
                )
                self.outage = True
            task_status.started()
            await self._loop()
        finally:
            with trio.CancelScope(shield=True):
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
                # Text that is not UTF-8 (a lone surrogate from an agent's error) is
                # written escaped, never raised on: one item's text cannot stop the store.
                encoding_errors="backslashreplace",
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
        fields = self._heartbeat_fields()
        await trio.to_thread.run_sync(self._heartbeat_sync, fields)
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
        uses ``hub_id`` on this Redis, or Redis refuses the credentials or the database.
        An unreachable Redis is only logged: the hub then starts, supervises, and claims
        its id when Redis answers (it stops if another hub holds it by then)."""
        self.hub_id = hub_id
        client = self._make_client(1)
        try:
            self._client = client
            self._register()
        except redis.RedisError as exc:
            problem = _config_problem(exc, self.url)
            if problem is not None:
                raise ControlError(problem) from None
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
        if old and old.get("token") not in (self.token, self._replaces):
            same_host = old.get("host") == socket.gethostname()
            pid = int(old.get("pid") or 0)
            if not same_host or _alive(pid):
                raise ControlError(self._conflict_message(old.get("host") or "?", pid))
            self._replaces = old.get("token") or ""
            _log.info("work: hub %s restarted (was pid %d): taking its work back", self.hub_id, pid)

    def _conflict_message(self, host: str, pid: int) -> str:
        return (
            f"hub id {self.hub_id!r} is live in Redis (pid {pid} on {host}, lease "
            f"{self.lease:g} s); this hub (pid {os.getpid()} on {socket.gethostname()}) "
            "takes no work under it: stop the other, wait out its lease, or pick another "
            "--hub-id"
        )

    def _heartbeat_sync(self, fields: dict[str, Any]) -> None:
        """The first claim of the hub id (in a worker thread)."""
        assert self._client is not None
        flat = [x for kv in fields.items() for x in kv]
        lease_ms = int(self.lease * 1000)
        key = self._hub_key()
        reply = self._client.eval(_HUB, 1, key, self.token, self._replaces, lease_ms, *flat)
        if not int(reply[0]):
            raise ControlError(self._conflict_message(_text(reply[1]), int(reply[2] or 0)))
        self._claimed = True
        self._client.zadd(f"{self.prefix}:work:hubs", {self.hub_id: time.time()})

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
        flat = [x for kv in fields.items() for x in kv]
        lease_ms = int(self.lease * 1000)
        key = self._hub_key()
        pipe.evalsha(_SHA[_HUB], 1, key, self.token, self._replaces, lease_ms, *flat)
        pipe.zadd(f"{self.prefix}:work:hubs", {self.hub_id: time.time()})
        for agent_type in json.loads(fields["types"]):
            pipe.sadd(f"{self.prefix}:work:types", agent_type)

    async def _loop(self) -> None:
        renew_every = self.lease / 3
        claim_every = self.lease / 4
        # Never back off past a quarter lease: the hub must renew within its lease.
        max_backoff = min(2.0, self.lease / 4)
        next_renew = next_claim = last_take = last_round = trio.current_time()
        # Types whose entries pending on this hub id (a restart, a lost reply) are read
        # back first: every type the first time it is seen, all of them after an outage.
        recover: set[str] = set()
        poll, backoff, failures = 0.01, 0.0, 0
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
                if not self._claimed:  # claim the hub id again soon
                    deadline = min(deadline, last_round + 0.05)
                if deadline > now:
                    with trio.move_on_at(deadline):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    continue
            renew, claim = now >= next_renew, now >= next_claim
            claimed = self._claimed  # takes nothing until it holds its id (checked)
            beat = None
            if renew or not claimed or self._types != announced:
                beat = self._heartbeat_fields()
            r = _Round(
                ops=self._take_ops(),
                renewals=self._renewals() if renew else [],
                beat=beat,
                beats=self._beat_types() if renew or claim else [],
                lag_types=[] if beat is None else self._lag_types(),
                checks=self._checks() if renew else [],
                reads=self._reads(demand, renew, claim, recover) if claimed else [],
            )
            try:
                replies = await trio.to_thread.run_sync(self._round, r)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                self._put_back(r.ops)
                if not self.outage:
                    problem = _config_problem(exc, self.url)
                    _log.warning(
                        "work: Redis at %s unreachable (%s); supervising on, %d writes held",
                        self.url,
                        problem or _clean(exc),
                        len(self._outbox),
                    )
                self.outage, self._claimed = True, False
                recover = set(self._serves)
                backoff = min(max_backoff, max(0.05, backoff * 2))
                await trio.sleep(backoff)
                continue
            except Exception as exc:  # never ends the store: logged, counted, retried
                self._put_back(r.ops)
                self.errors += 1
                failures += 1
                if failures == 1:
                    _log.exception(
                        "work: a Redis round failed (%s); its writes are kept and it is retried",
                        _clean(exc),
                    )
                if failures >= 2:
                    self._drop_poison()
                backoff = min(max_backoff, max(0.05, backoff * 2))
                await trio.sleep(backoff)
                continue
            if self.outage:
                _log.warning("work: Redis at %s answers again; held writes written", self.url)
            self.outage, backoff, failures = False, 0.0, 0
            last_round = now
            if beat is not None:
                announced = set(json.loads(beat["types"]))
            self.rounds += 1
            if claimed:
                recover = set()
            if renew:
                next_renew = now + renew_every
            if claim:
                next_claim = now + claim_every
            try:
                taken = self._apply(r, replies)
            except Exception:  # a reply of a shape never seen: log it, never stop the work
                _log.exception("work: could not apply a Redis round; reading back what is held")
                recover, taken = set(self._serves), 0
            if self.conflict is not None:
                _log.error("work: %s", self.conflict)
                raise self.conflict
            if self._full_since is not None and not self._full():
                _log.warning(
                    "work: Redis took the held writes after %.1f s at their cap; submits are "
                    "accepted again",
                    time.monotonic() - self._full_since,
                )
                self._full_since = None
            if demand:
                last_take = now
                poll = 0.01 if taken else min(0.25, poll * 2)
            if taken and self._service is not None:
                self._service.poke()

    def _drop_poison(self) -> None:
        """Drop the held writes that can never be sent (their arguments cannot be
        encoded), each logged with its item; the others stay, in order."""
        assert self._client is not None
        pool = self._client.connection_pool
        packer = pool.connection_class(**pool.connection_kwargs)  # never connected
        kept: deque[_Op] = deque()
        for op in self._outbox:
            try:
                packer.pack_command("EVALSHA", _SHA[op.script], len(op.keys), *op.keys, *op.args)
            except Exception as exc:
                self.poisoned += 1
                self._held_bytes -= op.size
                if self._progress_ops.get(op.item_id) is op:
                    del self._progress_ops[op.item_id]
                if op.kind == "submit":
                    self._pending.pop(op.item_id, None)
                _log.error(
                    "work %s: its %s can never be written to Redis (%s: %s); dropped",
                    op.item_id,
                    op.kind,
                    type(exc).__name__,
                    exc,
                )
                continue
            kept.append(op)
        self._outbox = kept

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

    def _beat_types(self) -> list[str]:
        """The types this hub proves it is alive for: those it serves or holds items of."""
        held = {
            i.agent_type
            for i in self._local.items()
            if i.status in (ItemStatus.QUEUED, ItemStatus.ASSIGNED)
        }
        return sorted(self._serves | held)

    def _checks(self) -> list[WorkItem]:
        """Dead or failed items kept here whose state in Redis is read back (another hub
        may have retried them): at most 50 a round, in turn."""
        final = [i for i in self._local.items() if i.status in (ItemStatus.DEAD, ItemStatus.FAILED)]
        if len(final) <= 50:
            return final
        start = (self.rounds * 50) % len(final)
        return (final + final)[start : start + 50]

    def _round(self, r: _Round) -> list[Any]:
        """One pipeline (in a worker thread; it reads nothing the trio thread changes):
        writes in order, lease renewals, the hub's heartbeat and its proof of life per
        type, then the taking scripts."""
        client = self._client
        assert client is not None
        lease_ms = int(self.lease * 1000)
        for _ in range(2):
            pipe = client.pipeline(transaction=False)
            for op in r.ops:
                pipe.evalsha(_SHA[op.script], len(op.keys), *op.keys, *op.args)
            for _item, keys, args in r.renewals:
                pipe.evalsha(_SHA[_FENCED], 4, *keys, *args)
            if r.beat is not None:
                self._add_heartbeat(pipe, r.beat)
            for agent_type in r.beats:
                pipe.evalsha(_SHA[_BEAT], 1, self._k(agent_type, "alive"), self.hub_id, lease_ms)
            for agent_type in r.lag_types:
                pipe.xinfo_groups(self._k(agent_type, "q"))
            for item in r.checks:
                pipe.hget(self._item_prefix(item.agent_type) + item.id, "st")
            for script, agent_type, args in r.reads:
                keys = self._keys(agent_type)
                if script is _CLAIM:
                    keys = (*keys, self._k(agent_type, "alive"))
                pipe.evalsha(_SHA[script], len(keys), *keys, *args)
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

    def _apply(self, r: _Round, replies: list[Any]) -> int:
        at = 0

        def part(n: int) -> list[Any]:
            nonlocal at
            at += n
            return replies[at - n : at]

        for op, reply in zip(r.ops, part(len(r.ops)), strict=True):
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
        for (item, _keys, _args), reply in zip(r.renewals, part(len(r.renewals)), strict=True):
            if not isinstance(reply, Exception) and not int(reply[0]):
                reason = _text(reply[1])
                if reason != "finished":
                    self._lose(item, reason)
        if r.beat is not None:
            claim, *_ = part(2 + len(json.loads(r.beat["types"])))
            self._on_claim(claim)
        part(len(r.beats))
        self._note_lag(r.lag_types, part(len(r.lag_types)))
        for item, reply in zip(r.checks, part(len(r.checks)), strict=True):
            if not isinstance(reply, Exception) and _text(reply or "") != str(item.status):
                self._local.forget(item.id)  # another hub retried it: Redis has it
        taken = 0
        took: dict[tuple[str, str], int] = {}
        for (_script, agent_type, _args), reply in zip(r.reads, part(len(r.reads)), strict=True):
            if isinstance(reply, Exception):
                _log.warning("work: taking %s items from Redis failed: %s", agent_type, reply)
                continue
            for kind, flat, prev in reply:
                fields = _pairs(flat)
                kind, prev = _text(kind), _text(prev)
                if kind != "mine" and prev:
                    took[(prev, agent_type)] = took.get((prev, agent_type), 0) + 1
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
        for (prev, agent_type), n in sorted(took.items()):
            _log.warning(
                "work: took over %d %s item(s) from hub %s, whose lease ran out",
                n,
                agent_type,
                prev if prev != self.hub_id else f"{prev} (a previous run of this hub)",
            )
        return taken

    def _on_claim(self, reply: Any) -> None:
        """The hub key's answer: this incarnation holds the hub id, or who does."""
        if isinstance(reply, Exception):
            _log.warning("work: Redis refused the hub's heartbeat: %s", reply)
            return
        if int(reply[0]):
            self._claimed = True
            return
        host, pid, token = _text(reply[1]), int(reply[2] or 0), _text(reply[3])
        self._claimed = False
        if host == socket.gethostname() and pid != os.getpid() and not _alive(pid):
            _log.info("work: hub %s restarted (was pid %d): taking its work back", self.hub_id, pid)
            self._replaces = token
            return
        self.conflict = ServiceFailed(self._conflict_message(host, pid))

    def _lag_types(self) -> list[str]:
        """The types whose untaken entries this hub counts: those it serves and those an
        autoscaling pool watches (it may have no agent yet)."""
        watched = self._service.watched if self._service is not None else set()
        return sorted(self._serves | watched)

    def _note_lag(self, types: list[str], replies: list[Any]) -> None:
        for agent_type, reply in zip(types, replies, strict=True):
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
        """Give back what this hub holds (so others take it at once) and write the rest,
        waiting up to ``timeout`` for Redis; each item whose writes did not land is logged
        by id (a submitted one is lost)."""
        for item in list(self._local.items()):
            if item.status in (ItemStatus.QUEUED, ItemStatus.ASSIGNED):
                if item.status is ItemStatus.ASSIGNED:  # the hub is going: not the item's fault
                    item.deliveries = max(0, item.deliveries - 1)
                self._fenced(item, "release", item.deliveries, self._hist(item))
        ops = list(self._outbox)
        self._outbox.clear()
        self._progress_ops.clear()
        self._held_bytes = 0
        client = self._client
        if client is None:
            return
        claimed = self._claimed

        def final() -> None:
            pipe = client.pipeline(transaction=False)
            for op in ops:
                pipe.eval(op.script, len(op.keys), *op.keys, *op.args)
            if claimed:
                pipe.eval(_UNHUB, 1, self._hub_key(), self.token)
                pipe.zrem(f"{self.prefix}:work:hubs", self.hub_id)
            pipe.execute(raise_on_error=False)

        done, error = not ops and not claimed, ""
        try:
            with trio.move_on_after(self.timeout):
                while not done:
                    try:
                        await trio.to_thread.run_sync(final, abandon_on_cancel=True)
                        done = True
                    except (redis.ConnectionError, redis.TimeoutError) as exc:
                        error = _config_problem(exc, self.url) or _clean(exc)
                        await trio.sleep(min(0.25, self.timeout / 8))
                    except Exception as exc:  # never retried: it would fail again
                        error = _clean(exc)
                        break
        finally:
            client.close()
            if self._query is not None:
                self._query.close()
                self._query = None
        if not done and ops:
            self._unwritten(ops, error or f"no answer in {self.timeout:g} s")

    def _unwritten(self, ops: list[_Op], error: str) -> None:
        """Say, per item, what a stop could not write to Redis."""
        lost = sorted({op.item_id for op in ops if op.kind == "submit"})
        for item_id in lost:
            _log.error(
                "work %s: submitted but not in Redis at stop (Redis at %s: %s): the item is "
                "lost; submit it again",
                item_id,
                self.url,
                error,
            )
        for item_id in sorted({op.item_id for op in ops} - set(lost)):
            _log.warning(
                "work %s: its last writes did not reach Redis at stop (%s); its lease runs "
                "out and another hub (or this one, restarted) takes it",
                item_id,
                error,
            )

    # ----------------------------------------------------------------------------------
    # queries (control ops)

    def _query_client(self) -> redis.Redis:
        if self._query is None:
            self._query = self._make_client(2)
        return self._query

    async def fetch(self, item_id: str) -> WorkItem:
        """The item, from this hub if it holds it, else from Redis (a finished item kept
        here is read again: another hub may have retried it since)."""
        try:
            local: WorkItem | None = self.get(item_id)
        except ControlError:
            local = None
        if local is not None and (
            item_id in self._pending or local.status in (ItemStatus.QUEUED, ItemStatus.ASSIGNED)
        ):
            return local
        agent_type = item_id.rsplit("-", 1)[0]
        client = self._query_client()
        key = self._item_prefix(agent_type) + item_id
        fields = await trio.to_thread.run_sync(lambda: _decode_map(client.hgetall(key)))
        if not fields:
            if local is not None:  # expired in Redis (keep_finished): this copy is all
                return local
            raise ControlError(f"no work item {item_id!r}; `hubvisor work list` lists them")
        item = _item_from(fields)
        if local is not None and item.status != local.status:
            self._local.forget(item_id)  # another hub took it further: Redis has it
        return item

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
        except redis.ResponseError:  # no group yet (no hub took any): all of it waits
            waiting = int(client.xlen(q))
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
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else str(value)


def _safe(text: str) -> str:
    """``text`` as valid UTF-8: a lone surrogate (bytes an agent read with
    surrogateescape) is written as its escape, ``\\udcff``, readable by anyone."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _size(args: Iterable[Any]) -> int:
    """About how many bytes a write's arguments hold (for the cap on held writes)."""
    return sum(len(a) if isinstance(a, str | bytes) else 16 for a in args)


def _config_problem(exc: BaseException, url: str) -> str | None:
    """The fix, when Redis refused this hub's credentials or database (no outage: it
    would never heal by waiting)."""
    text = _clean(exc)
    if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
        return (
            f"Redis at {url} refused the credentials ({text}); put the right password in "
            "the URL: redis://:PASSWORD@host:6379/0 (or redis://USER:PASSWORD@... for an "
            "ACL user)"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return (
            f"the Redis user of {url} may not run the work queue's commands ({text}); grant "
            "it the stream, hash and scripting commands (e.g. ACL SETUSER ... +@all ~PREFIX:*)"
        )
    if isinstance(exc, redis.ResponseError) and "DB index" in text:
        return f"Redis at {url} has no such database ({text}); pick one it has, e.g. /0"
    return None


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
