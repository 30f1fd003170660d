"""Dependent items (``submit --after``) on Redis (issue 21), shared by every hub.

A dependency may be of another agent type, so in another hash slot on Redis Cluster:
no one script can see both an item and its dependencies. Each step is a script in one
type's slot, idempotent, and a periodic reconcile by any live hub repairs a hub killed
between two steps (a finished item's status never changes back):

1. **submit** (the dependent's slot): the usual submit script, run inside
   :data:`_SUBMIT_AFTER`, then the item leaves the delayed set for
   ``P:work:{T}:blocked``; its hash keeps ``after`` and ``wait`` (the references not
   completed yet, JSON).
2. **link** (each dependency's slot, once the submit is in Redis): the dependency's
   ``P:work:{D}:dependents:<id>`` set gets the new item; the reply is the dependency's
   status. An unknown one refuses the submit (``stored`` raises) and the item is dropped.
   Ordered after the submit, so a dependency that ends later finds the item to release.
3. **settle** (the dependent's slot): a dependency ended. Completed: it leaves ``wait``;
   when ``wait`` is empty the item goes into the type's delayed set with score now (the
   usual promotion puts it in its stream). Ended otherwise: the item is cancelled,
   naming it. The hub that finished a dependency (or linked one already ended) runs it.
4. **notify** (the finished item's slot): after every final write this hub makes, read
   the item's dependents (one script call per finish), then settle each one.

Cost: one ``notify`` per finish, in the finish's batch call (``_batch.py``): one read
when nothing depends on the item; per dependent item one
link per dependency and one settle per dependency that ends; every ``lease`` each hub
reads up to :data:`RECONCILE_BUDGET` blocked items per type it knows, and their
dependencies' statuses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import attrs
import redis
import trio

from ..._errors import ControlError
from ..._redis_link import in_thread
from .._item import ItemStatus, WorkItem
from ._codec import _text
from ._outbox import _Op
from ._scripts import _SHA, _SUBMIT

if TYPE_CHECKING:
    from ._queue import RedisWorkQueue

__all__ = ["RECONCILE_BUDGET", "DepsParts", "RedisDeps"]

_log = logging.getLogger("hubvisor")

BLOCKED_NB = "9000000000000000"
"""The not-before time (ms) the submit script is given for a dependent item: it parks
the item in the delayed set, out of any stream, until :data:`_SUBMIT_AFTER` moves it."""

RECONCILE_BUDGET = 200
"""Blocked items per type one reconcile pass reads at most (a random sample)."""

_FINAL = ("completed", "failed", "dead", "cancelled")

# KEYS: those of _SUBMIT (q, item, keys, keyage, delayed), then the type's blocked set.
# ARGV: those of _SUBMIT, then the ``after`` references (JSON), the item's own not-before
# time ('' or ms) and 2 (how many arguments are this script's). The submit script runs
# as it is (with BLOCKED_NB as the not-before time); a new item then leaves the delayed
# set for the blocked one. Run again (a lost reply), it changes nothing.
_SUBMIT_AFTER = (
    r"""
local blocked = table.remove(KEYS)
local mine = tonumber(table.remove(ARGV))
local own = {}
for i = mine, 1, -1 do own[i] = table.remove(ARGV) end
local function plain()
"""
    + _SUBMIT
    + r"""
end
local r = plain()
local k = KEYS[2]
if r == 1 and redis.call('HEXISTS', k, 'after') == 0
    and redis.call('HGET', k, 'nb') == '"""
    + BLOCKED_NB
    + r"""' then
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('HSET', k, 'after', own[1], 'wait', own[1], 'nb', own[2])
  redis.call('SADD', blocked, ARGV[1])
end
return r
"""
)

# KEYS: the dependency's type's key index (``P:work:{D}:keys``). ARGV: the dependent's
# id, the reference (an id, or ``TYPE:KEY``), the item-hash prefix, the dependents-set
# prefix. Returns {0} (unknown) or {1, id, status, error}.
_LINK = r"""
local ref, prefix = ARGV[2], ARGV[3]
local id = ref
local colon = string.find(ref, ':', 1, true)
if colon then
  id = redis.call('HGET', KEYS[1], string.sub(ref, colon + 1))
  if not id then return {0} end
end
local h = redis.call('HMGET', prefix .. id, 'st', 'error')
if not h[1] then return {0} end
redis.call('SADD', ARGV[4] .. id, ARGV[1])
return {1, id, h[1], h[2] or ''}
"""

# KEYS: the finished item's dependents set, its hash. ARGV: seconds the set is kept.
# Returns {} (not final, or nothing depends on it: most items, one read) or {status,
# error, key, {dependent ids}}.
_NOTIFY = r"""
local m = redis.call('SMEMBERS', KEYS[1])
if #m == 0 then return {} end
local h = redis.call('HMGET', KEYS[2], 'st', 'error', 'key')
local st = h[1]
if not st then return {} end
if st ~= 'completed' and st ~= 'failed' and st ~= 'dead' and st ~= 'cancelled' then
  return {}
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return {st, h[2] or '', h[3] or '', m}
"""

# KEYS: the dependent's type's blocked set, delayed set, log, the dependent's hash.
# ARGV: its id, the dependency's id, its ``TYPE:KEY`` ('' without a key), its status
# ('waiting': not ended, the reference is only resolved to the id), the reason to cancel
# with, now (Unix s), seconds a cancelled item is kept. Returns {1, released|waiting|
# cancelled} or {0, why}.
_SETTLE = r"""
local id, k = ARGV[1], KEYS[4]
if redis.call('SISMEMBER', KEYS[1], id) == 0 then return {0, 'not blocked'} end
local h = redis.call('HMGET', k, 'st', 'wait', 'nb', 'att')
if h[1] ~= 'queued' then redis.call('SREM', KEYS[1], id); return {0, 'not queued'} end
local wait = cjson.decode(h[2] or '[]')
local at = nil
for i, ref in ipairs(wait) do
  if ref == ARGV[2] or (ARGV[3] ~= '' and ref == ARGV[3]) then at = i end
end
if not at then return {0, 'not waiting'} end
local st = ARGV[4]
if st == 'waiting' then
  wait[at] = ARGV[2]
  redis.call('HSET', k, 'wait', cjson.encode(wait))
  return {1, 'waiting'}
end
if st == 'completed' then
  table.remove(wait, at)
  if #wait > 0 then
    redis.call('HSET', k, 'wait', cjson.encode(wait))
    return {1, 'waiting'}
  end
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local nb = tonumber(h[3] or '') or 0
  if nb < ms then nb = ms end
  redis.call('SREM', KEYS[1], id)
  redis.call('HSET', k, 'wait', '[]')
  redis.call('ZADD', KEYS[2], nb, id)
  return {1, 'released'}
end
redis.call('SREM', KEYS[1], id)
redis.call('HSET', k, 'st', 'cancelled', 'error', ARGV[5], 'finished', ARGV[6], 'wait', '[]')
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 100000, '*', 'item', id, 'attempt', h[4] or '0',
  'hub', '', 'agent', '', 'outcome', 'cancelled')
redis.call('EXPIRE', k, ARGV[7])
return {1, 'cancelled'}
"""

# A submit refused for an unknown dependency: the item goes. KEYS: the blocked set, the
# item's hash. ARGV: its id.
_DROP = r"""
redis.call('SREM', KEYS[1], ARGV[1])
return redis.call('DEL', KEYS[2])
"""

_SHA.update(
    {s: hashlib.sha1(s.encode()).hexdigest() for s in (_SUBMIT_AFTER, _LINK, _NOTIFY, _SETTLE)}
)
_SHA[_DROP] = hashlib.sha1(_DROP.encode()).hexdigest()


def type_of(item_id: str) -> str:
    """The agent type of an item id (``<type>-<chars>``)."""
    return item_id.rsplit("-", 1)[0]


def ref_type(ref: str) -> str:
    """The agent type of a dependency reference: an id, or ``TYPE:KEY`` (as the memory
    queue reads it: agent types have no ``:``)."""
    agent_type, colon, _ = ref.partition(":")
    return agent_type if colon else type_of(ref)


def ended(dep_id: str, status: str, error: str) -> str:
    """Why a dependent is cancelled (the wording of the memory and SQLite queues)."""
    why = f": {error}" if error else ""
    return f"dependency {dep_id} ended {status}{why}"[:500]


def unknown(ref: str) -> str:
    """Why a submit naming ``ref`` is refused (the memory and SQLite queues' words)."""
    agent_type, colon, key = ref.partition(":")
    if colon:
        return (
            f"--after names {ref!r}, but no kept item of type {agent_type!r} was submitted "
            f"with key {key!r}; submit it first (with --key)"
        )
    return (
        f"--after names {ref!r}, which is no work item kept here (unknown, or finished and "
        "pruned by keep_finished); `hubvisor work list` lists them"
    )


@attrs.define
class _Linking:
    """A dependent item whose links are under way: the references and their replies."""

    refs: list[str]
    event: trio.Event | None
    replies: dict[str, Any] = attrs.field(factory=dict)


class DepsParts:
    """Mixed into :class:`~supervisor.work.redis.RedisWorkQueue`."""

    _deps: RedisDeps

    def blocked(self, agent_type: str) -> int:
        """Items of ``agent_type`` waiting for their dependencies in Redis (every hub's),
        as this hub last read them (each third of a lease)."""
        return self._deps.blocked(agent_type)

    @property
    def settled(self) -> list[WorkItem]:
        """The items this hub cancelled because a dependency ended otherwise than
        completed, not yet reported (the service publishes ``work_dependency_ended``)."""
        return self._deps.ended


class RedisDeps:
    """The dependencies of one :class:`~supervisor.work.redis.RedisWorkQueue`."""

    def __init__(self, queue: RedisWorkQueue) -> None:
        self.q = queue
        self.counts: dict[str, int] = {}  # blocked items per type, as last read
        self.refused: dict[str, str] = {}  # item -> why its submit was refused
        self._linking: dict[str, _Linking] = {}
        self.settled = 0  # settle scripts that released or cancelled an item
        self.ended: list[WorkItem] = []  # cancelled here, to report (``settled``)
        self.repaired = 0  # of those, by a reconcile pass

    # -- keys

    def _blocked_key(self, agent_type: str) -> str:
        return self.q.keys.of(agent_type, "blocked")

    def _settle_keys(self, item_id: str) -> tuple[str, ...]:
        t = type_of(item_id)
        keys = self.q.keys
        return (
            self._blocked_key(t),
            keys.of(t, "delayed"),
            keys.of(t, "log"),
            keys.items(t) + item_id,
        )

    # -- submit

    def submit_op(
        self, item: WorkItem, keys: tuple[str, ...], args: tuple[Any, ...], after: list[str]
    ) -> _Op:
        """The write of a new dependent item (its links follow once it is in Redis)."""
        t = item.agent_type
        own_nb = "" if item.not_before is None else str(int(item.not_before * 1000))
        if len(keys) == 2:  # the submit script's long form: the delayed set is used
            keys += (self.q.keys.of(t, "keys"), self.q.keys.of(t, "keyage"))
            keys += (self.q.keys.of(t, "delayed"),)
            args = (*args[:6], "", self.q.keys.items(t), item.created_at, "", "", 0, *args[6:])
        args = (*args[:9], BLOCKED_NB, *args[10:])
        item.after = list(after)
        item.waiting_on = list(after)
        return _Op(
            _SUBMIT_AFTER,
            (*keys, self._blocked_key(t)),
            (*args, json.dumps(after), own_nb, 2),
            item.id,
            "submit",
            self._on_submitted(item),
        )

    def _on_submitted(self, item: WorkItem) -> Any:
        def on_reply(reply: Any) -> None:
            event = self.q._stored.pop(item.id, None)
            if _text(reply) != "1":  # a kept item's key: nothing was created
                if event is not None:
                    event.set()
                return
            self._linking[item.id] = _Linking(list(item.after), event)
            for ref in item.after:
                t = ref_type(ref)
                args = (item.id, ref, self.q.keys.items(t), self.q.keys.of(t, "dependents:"))
                op = _Op(_LINK, (self.q.keys.of(t, "keys"),), args, item.id, "link")
                op.on_reply = self._on_linked(item.id, ref)
                self.q._push(op)

        return on_reply

    def _on_linked(self, item_id: str, ref: str) -> Any:
        def on_reply(reply: Any) -> None:
            state = self._linking.get(item_id)
            if state is None:
                return
            state.replies[ref] = reply
            if len(state.replies) < len(state.refs):
                return
            del self._linking[item_id]
            self._linked(item_id, state)

        return on_reply

    def _linked(self, item_id: str, state: _Linking) -> None:
        """Every link answered: refuse the submit, or settle what ended already."""
        missing = [ref for ref in state.refs if not int(state.replies[ref][0])]
        if missing:
            self.refused[item_id] = unknown(missing[0])
            _log.warning("work %s: submit refused: %s", item_id, self.refused[item_id])
            while len(self.refused) > 10_000:  # nobody asked: the oldest go
                del self.refused[next(iter(self.refused))]
            keys = (self._blocked_key(type_of(item_id)), self._settle_keys(item_id)[3])
            self.q._push(_Op(_DROP, keys, (item_id,), item_id, "drop"))
        else:
            for ref in state.refs:
                _, dep_id, status, error = (_text(v) for v in state.replies[ref])
                if status in _FINAL:
                    self.settle(item_id, dep_id, ref, status, error)
                elif ref != dep_id:  # TYPE:KEY: the item waits for the id from now on
                    self.settle(item_id, dep_id, ref, "waiting", "")
        if state.event is not None:
            state.event.set()

    def event(self, item_id: str) -> trio.Event | None:
        """The event set once the submit of ``item_id`` is in Redis (a dependent item's:
        once its links answered too); ``None``: neither pending."""
        event = self.q._stored.get(item_id)
        if event is None and item_id in self._linking:
            event = self._linking[item_id].event
        return event

    def checked(self, item_id: str, stored: bool) -> bool:
        """``stored``, unless ``item_id``'s submit was refused (an unknown dependency):
        then a :class:`ControlError` saying why."""
        why = self.refused.pop(item_id, None)
        if why is not None:
            raise ControlError(why)
        return stored

    # -- a dependency ended

    def finished(self, item_id: str) -> None:
        """``item_id`` was written final (by this hub): settle its dependents."""
        t = type_of(item_id)
        keys = (self.q.keys.of(t, "dependents:") + item_id, self.q.keys.items(t) + item_id)
        op = _Op(_NOTIFY, keys, (int(self.q.keep_finished),), item_id, "notify")
        op.on_reply = self._on_notified(item_id)
        self.q._push(op)

    def _on_notified(self, dep_id: str) -> Any:
        def on_reply(reply: Any) -> None:
            if not reply:
                return
            status, error, key = (_text(v) for v in reply[:3])
            alias = f"{type_of(dep_id)}:{key}" if key else ""
            for member in reply[3]:
                self.settle(_text(member), dep_id, alias, status, error)

        return on_reply

    def settle(self, item_id: str, dep_id: str, alias: str, status: str, error: str) -> None:
        """Write that ``item_id``'s dependency ``dep_id`` ended with ``status``."""
        reason = ended(dep_id, status, error) if status != "completed" else ""
        args = (
            item_id,
            dep_id,
            alias if alias != dep_id else "",
            status,
            reason,
            time.time(),
            int(self.q.keep_finished),
        )
        op = _Op(_SETTLE, self._settle_keys(item_id), args, item_id, "settle")
        op.on_reply = self._on_settled(item_id, reason)
        self.q._push(op)

    def _on_settled(self, item_id: str, reason: str) -> Any:
        def on_reply(reply: Any) -> None:
            self._settled(item_id, reason, reply)

        return on_reply

    def _settled(self, item_id: str, reason: str, reply: Any) -> None:
        what = _text(reply[1]) if int(reply[0]) else ""
        if what == "cancelled":  # its own dependents in turn (a chain, one step a round)
            self.settled += 1
            self.ended.append(_cancelled(item_id, reason))
            del self.ended[:-10_000]  # nobody reads them (a queue alone): bounded
            self.finished(item_id)
            if self.q._actor.host is not None:  # the service reports it
                self.q._actor.host.poke()
        elif what == "released":
            self.settled += 1
            self.q.poke()

    # -- counts and the reconcile

    def blocked(self, agent_type: str) -> int:
        """Items of ``agent_type`` waiting for dependencies in Redis (as last read)."""
        return self.counts.get(agent_type, 0)

    async def run(self) -> None:
        """Read the blocked counts each third of a lease and reconcile each lease, until
        cancelled (an outage is the actor's to log: a pass is skipped)."""
        client = self.q._make_client(1)
        try:
            tick = 0
            while True:
                await trio.sleep(self.q.lease / 3)
                types = sorted(self.q._types | (self.q.known_types or set()))
                try:
                    counts, results = await in_thread(self._pass, client, types, tick % 3 == 0)
                except redis.RedisError:
                    continue
                finally:
                    tick += 1
                self.counts = counts
                for item_id, reason, reply in results:
                    self.repaired += 1
                    self._settled(item_id, reason, reply)
        finally:
            client.close()

    def _pass(
        self, client: redis.Redis, types: list[str], full: bool
    ) -> tuple[dict[str, int], list[tuple[str, str, Any]]]:
        """In a worker thread: the blocked counts, and with ``full`` the settles the
        blocked items' dependencies call for (run here, each idempotent)."""
        pipe = client.pipeline(transaction=False)
        for t in types:
            pipe.scard(self._blocked_key(t))
        counts = {t: int(n) for t, n in zip(types, pipe.execute(), strict=True)}
        if not full:
            return counts, []
        results: list[tuple[str, str, Any]] = []
        for t in types:
            if counts[t]:
                results += self._reconcile(client, t)
        return counts, results

    def _reconcile(self, client: redis.Redis, agent_type: str) -> list[tuple[str, str, Any]]:
        """Settle the blocked items of ``agent_type`` whose dependencies ended (a hub
        that ended one died before it settled them)."""
        keys = self.q.keys
        raw: Any = client.srandmember(self._blocked_key(agent_type), RECONCILE_BUDGET)
        members = [_text(m) for m in raw or ()]
        pipe = client.pipeline(transaction=False)
        for m in members:
            pipe.hmget(keys.items(agent_type) + m, "st", "wait")
        waits: list[tuple[str, str]] = []
        settles: list[tuple[str, str, str, str, str]] = []
        for m, (st, wait) in zip(members, pipe.execute(), strict=True):
            if st is None or _text(st) != "queued":  # cancelled or gone: leaves the set
                settles.append((m, "", "", "completed", ""))
                continue
            waits += [(m, str(ref)) for ref in json.loads(_text(wait or "[]"))]
        resolved = self._resolve(client, [ref for _, ref in waits])
        for (m, ref), found in zip(waits, resolved, strict=True):
            if found is None:
                settles.append((m, ref, ref, "gone", ""))
            elif found[1] in _FINAL:
                settles.append((m, found[0], ref, found[1], found[2]))
        out = []
        for item_id, dep_id, alias, status, error in settles:
            if status == "gone":
                reason = f"dependency {alias} is no longer in Redis (ended, then expired)"
            else:
                reason = ended(dep_id, status, error) if status != "completed" else ""
            args = (item_id, dep_id, alias, status, reason, time.time(), int(self.q.keep_finished))
            reply = client.eval(_SETTLE, 4, *self._settle_keys(item_id), *args)
            out.append((item_id, reason, reply))
        return out

    def _resolve(self, client: redis.Redis, refs: list[str]) -> list[tuple[str, str, str] | None]:
        """(id, status, error) of each reference, ``None`` for one not in Redis."""
        keys = self.q.keys
        pipe = client.pipeline(transaction=False)
        for ref in refs:
            t, colon, key = ref.partition(":")
            if colon:
                pipe.hget(keys.of(t, "keys"), key)
        ids = iter(pipe.execute())
        dep_ids = [_text(next(ids) or "") if ":" in ref else ref for ref in refs]
        pipe = client.pipeline(transaction=False)
        for dep_id in dep_ids:
            pipe.hmget(keys.items(type_of(dep_id)) + dep_id, "st", "error")
        out: list[tuple[str, str, str] | None] = []
        for dep_id, (st, error) in zip(dep_ids, pipe.execute(), strict=True):
            if not dep_id or st is None:
                out.append(None)
            else:
                out.append((dep_id, _text(st), _text(error or "")))
        return out


def _cancelled(item_id: str, reason: str) -> WorkItem:
    """What the service reports of an item a dependency's end cancelled."""
    item = WorkItem(
        id=item_id, agent_type=type_of(item_id), payload=None, max_deliveries=1, created_at=0.0
    )
    item.status, item.error = ItemStatus.CANCELLED, reason
    return item


def annotate(item: WorkItem, fields: dict[str, str]) -> None:
    """``after`` and ``waiting_on`` of an item read from its hash."""
    if fields.get("after"):
        item.after = [str(r) for r in json.loads(fields["after"])]
        item.waiting_on = [str(r) for r in json.loads(fields.get("wait") or "[]")]
