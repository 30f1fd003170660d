"""Durable work on Redis Streams, shared by several hubs.

The decisions stay local and synchronous (a :class:`~supervisor.MemoryWorkQueue`
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

* ``P:work:{T}:q`` the stream, group ``hubs`` (priority 0; ``P:work:{T}:q:<p>`` the
  stream of priority ``p``, ``P:work:{T}:prios`` the levels in use: issue 21);
  ``P:work:{T}:item:<id>`` one hash per item;
  ``P:work:{T}:dead`` dead letters with their history; ``P:work:{T}:log`` one entry per
  final outcome (the record).
* ``P:work:hubs`` (sorted set of hub ids) and ``P:work:hub:{H}`` (hash with a TTL of one
  lease: host, pid, token, agents per type) for ``hubvisor status --cluster``.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

import attrs
import redis
import trio

from ..._errors import ConfigError, ControlError, ServiceFailed
from ..._redis_link import make_client, redact_url
from .._item import AttemptRecord, ItemStatus, Verdict, WorkItem
from .._ordering import LocalOrdering
from .._queue import MemoryWorkQueue
from .._store import ActorCounters, StoreHost
from ._cancel import CancelParts
from ._claim import HubClaim
from ._codec import Keys, _dumps, _safe, _text, _wall
from ._deps import DepsParts, RedisDeps
from ._outbox import Outbox, _Op
from ._query import Queries
from ._scripts import _FENCED, _ID_CHARS, _RETRY, _SUBMIT
from ._store import StoreActor
from ._tiers import requirement

__all__ = ["RedisWorkQueue"]


_log = logging.getLogger("hubvisor")

_RECORD_FIELDS = tuple(f.name for f in attrs.fields(AttemptRecord))  # scalars: see _hist


class _Counters(ActorCounters):
    """What the store's actor, its claim and held writes count, read on the queue
    (tests, metrics), and the kept items by key this hub knows (issue 21)."""

    _actor: StoreActor
    writes: Outbox
    claim: HubClaim

    # What the store's actor keeps, read here.

    @property
    def hub_id(self) -> str:
        """The hub's id (its consumer name in Redis)."""
        return self.claim.hub_id

    @property
    def token(self) -> str:
        """This incarnation's fence: entries are leased to (hub id, token)."""
        return self.claim.token

    @property
    def conflict(self) -> ServiceFailed | None:
        """Set when another live hub holds this hub's id: the store stops."""
        return self.claim.conflict

    def items(self) -> Iterable[WorkItem]:
        raise NotImplementedError

    @property
    def coalesced(self) -> int:
        """Progress writes replaced by a later progress of the same item before sent."""
        return self.writes.coalesced

    @property
    def dropped_progress(self) -> int:
        """Progress writes not kept because the held writes were at their cap."""
        return self.writes.dropped_progress

    @property
    def poisoned(self) -> int:
        """Writes dropped because they can never be sent (logged with the item's id)."""
        return self.writes.poisoned

    def keyed(self, agent_type: str, key: str) -> WorkItem | None:
        """The item of ``agent_type`` with ``key`` this hub holds or submitted, if any
        (Redis decides for the others, atomically, when the submit is written)."""
        return next((i for i in self.items() if (i.agent_type, i.key) == (agent_type, key)), None)


class RedisWorkQueue(
    _Counters, LocalOrdering, CancelParts, DepsParts
):  # retry delays: held by this hub
    """A :class:`~supervisor.work.WorkQueue` whose record is Redis Streams, shared by
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
        replicas: N > 0: writes count as written once ``WAIT N`` confirmed them (held
            and sent again until then); ``replicas_timeout``: WAIT's seconds.
    """

    shared = True  # every hub on the Redis: an item may end on another

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
        replicas: int = 0,
        replicas_timeout: float | None = None,
    ) -> None:
        if not isinstance(lease, int | float) or not (0.1 <= lease < math.inf):
            raise ConfigError(f"RedisWorkQueue(lease=...) must be >= 0.1 seconds (got {lease!r})")
        if not prefix or any(c in prefix for c in "{} "):
            raise ConfigError(
                f"RedisWorkQueue(prefix=...) must be non-empty without braces or spaces "
                f"(got {prefix!r})"
            )
        self.replicas = replicas
        self.replicas_timeout = _check_replicas(replicas, replicas_timeout, timeout, url)
        self.url = redact_url(url)
        self.prefix = prefix
        self.lease = float(lease)
        self.keep_finished = keep_finished
        self.timeout = timeout
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self._url = url
        self._local = MemoryWorkQueue()
        self._local.stamp = float  # its methods get Unix time (_wall) already
        self._pending: dict[str, WorkItem] = {}  # submitted, not in Redis yet
        self._stored: dict[str, trio.Event] = {}
        self.dupes: dict[str, str] = {}  # submitted with a key Redis had: -> the kept id
        self.writes = Outbox(self.url, max_held, max_held_bytes)
        """The writes held for Redis (in order)."""
        self.keys = Keys(prefix)
        self.claim = HubClaim(prefix, self.lease)
        """This incarnation's hold on its hub id."""
        self.lost = 0
        """Items this hub lost to another (its lease expired before it wrote)."""
        self._ids = 0
        self._boot = "".join(secrets.choice(_ID_CHARS) for _ in range(6))
        self._types: set[str] = set()  # every type seen (submitted or served)
        self.known_types: set[str] | None = None
        """Every agent type a hub sharing this Redis has announced, as of the last
        heartbeat round (``None`` before one was answered)."""
        self._actor = StoreActor(self)
        self._queries = Queries(self)
        self._deps = RedisDeps(self)  # dependent items (submit --after, issue 21)

    def __repr__(self) -> str:
        return f"RedisWorkQueue({self.url!r}, prefix={self.prefix!r}, lease={self.lease})"

    # ----------------------------------------------------------------------------------
    # keys

    def _keys(self, agent_type: str, item_id: str = "") -> tuple[str, ...]:
        return self.keys.fenced(agent_type, item_id)

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
        return self._local.depth(agent_type) + self._actor.lag.get(agent_type, 0)

    def has_work(self, agent_type: str) -> bool:
        """Whether this hub holds a queued item of ``agent_type`` (taken from Redis)."""
        return self._local.has_work(agent_type)

    def submit(
        self, agent_type: str, payload: Any, *, key: str | None = None, **kw: Any
    ) -> WorkItem:
        """Queue the item for the next round's write (:meth:`stored` waits for it); ``kw``:
        ``max_deliveries``, ``source``, ``now`` and ``not_before`` (see :class:`WorkQueue`).
        With ``key`` the submit script decides atomically: when an item of the type with
        that key is kept in Redis, nothing is created and :meth:`resolved` names that item.

        Raises:
            ControlError: the hub holds ``max_held`` writes (or ``max_held_bytes``) that
                Redis has not taken yet. An unknown ``after`` is refused once the
                submit reaches Redis (:meth:`stored` raises it); a ``require`` no pool
                here matches is accepted: another hub may serve it.
        """
        after = list(kw.pop("after", None) or ())  # issue 21: _deps.py
        require = dict(kw.pop("require", None) or {})  # issue 21: names the item's stream
        time_limit = kw.pop("time_limit", None)  # issue 21: written in the item's hash
        max_deliveries, source, not_before, priority = _options(kw)
        _check_room(self)
        self._ids += 1
        item = WorkItem(
            id=f"{agent_type}-{self._boot}{self._ids}",
            agent_type=agent_type,
            payload=payload,
            max_deliveries=max_deliveries,
            created_at=time.time(),
            source=source,
            not_before=not_before,
            time_limit=time_limit,
            priority=priority,
            require=require,
        )
        self._pending[item.id] = item
        self._stored[item.id] = trio.Event()
        args: tuple[Any, ...] = (
            item.id, agent_type, _dumps(payload), max_deliveries, source, item.created_at
        )  # fmt: skip
        keys: tuple[str, ...] = (
            self.keys.of(agent_type, "q"),
            self.keys.items(agent_type) + item.id,
        )
        extended = key is not None or not_before is not None or time_limit is not None
        if extended or priority or require:
            item.key = key
            keys += (
                self.keys.of(agent_type, "keys"),
                self.keys.of(agent_type, "keyage"),
                self.keys.of(agent_type, "delayed"),
            )
            nb = "" if not_before is None else int(not_before * 1000)
            tl = "" if time_limit is None else repr(float(time_limit))
            args += (key or "", self.keys.items(agent_type), item.created_at, nb, tl, priority)
            args += requirement(require)  # issue 21: routing to tiers (_tiers.py)
        op = _Op(_SUBMIT, keys, args, item.id, "submit")
        self._push(self._deps.submit_op(item, keys, args, after) if after else op)
        self._types.add(agent_type)
        return item

    def assign(
        self, agent_type: str, agent: str, now: float, labels: Any = None, **_: Any
    ) -> WorkItem | None:
        """Give the oldest item this hub holds to ``agent`` (whose pool has ``labels``:
        the oldest one whose ``require`` they match); the attempt is written."""
        item = self._local.assign(agent_type, agent, _wall(now), labels)
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
        item = self.get(item_id)  # one just submitted is known too (queued: refused)
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
        if self.writes.push(op):
            self._actor.wake.set()
        if op.kind == "finish":  # issue 21: its dependents, if any, are settled
            self._deps.finished(op.item_id)

    def _fenced(self, item: WorkItem, op: str, *extra: Any) -> None:
        args = (op, self.claim.hub_id, self.claim.token, item.attempt, time.time(), *extra)
        keys = self._keys(item.agent_type, item.id)
        self._push(_Op(_FENCED, keys, args, item.id, op, self._on_fenced(item, op)))

    def _hist(self, item: WorkItem) -> str:
        """The item's history as written to Redis: each attempt names its hub."""
        return _dumps(
            [
                {
                    **{name: getattr(h, name) for name in _RECORD_FIELDS},  # attrs.asdict's
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
        if self._actor.host is not None:
            self._actor.host.lost(item, reason)

    def _release_held(self) -> None:
        """The hub is stopping: give back what it holds, so others take it at once."""
        for item in list(self._local.items()):
            if item.status in (ItemStatus.QUEUED, ItemStatus.ASSIGNED):
                if item.status is ItemStatus.ASSIGNED:  # the hub is going: not the item's fault
                    item.deliveries = max(0, item.deliveries - 1)
                self._fenced(item, "release", item.deliveries, self._hist(item))

    # ----------------------------------------------------------------------------------
    # the actor

    async def stored(self, item_id: str, timeout: float) -> bool:
        """Wait until the submitted item is in Redis (False after ``timeout`` seconds:
        it is held here and written when Redis answers)."""
        event = self._deps.event(item_id)  # issue 21: a dependent item's, once linked
        if event is None:
            return self._deps.checked(item_id, item_id not in self._pending)
        with trio.move_on_after(timeout):
            await event.wait()
        return self._deps.checked(item_id, event.is_set())  # an unknown dependency raises

    def poke(self) -> None:
        """Something changed (idle agents, new writes): run a round soon."""
        self._actor.wake.set()

    async def run(self, host: StoreHost, *, task_status: trio.TaskStatus[None]) -> None:
        """Serve as the service's store until cancelled; then release what this hub holds
        and write what is left, waiting up to ``timeout`` for Redis (each item whose
        write did not land is logged by id).

        Raises:
            ServiceFailed: Redis refused the credentials or the configuration at start,
                or another live hub holds this hub's id (at start or when Redis returns).
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._deps.run)  # issue 21: counts, reconcile
                await self._actor.run(host, task_status=task_status)
                nursery.cancel_scope.cancel()
        finally:
            self._queries.close()

    def _make_client(self, connections: int) -> redis.Redis:
        return make_client(
            self._url,
            timeout=self.timeout,
            connections=connections,
            client_name=f"hubvisor-work-{self.claim.hub_id or 'query'}",
            error=ConfigError,
            # Text that is not UTF-8 (a lone surrogate from an agent's error) is
            # written escaped, never raised on: one item's text cannot stop the store.
            encoding_errors="backslashreplace",
        )

    def check_hub_id(self, hub_id: str) -> None:
        """Before the hub starts: refuse (:class:`ControlError`) when a live hub already
        uses ``hub_id`` on this Redis, or Redis refuses the credentials or the database.
        An unreachable Redis is only logged: the hub then starts, supervises, and claims
        its id when Redis answers (it stops if another hub holds it by then)."""
        self.claim.check(hub_id, self._make_client(1), self._url)

    def describe(self) -> str:
        """Where the work lives (logged at start)."""
        return (
            f"kept in Redis at {self.url}, prefix {self.prefix!r}, shared with every hub "
            f"that uses it (lease {self.lease:g} s)"
        )

    def close(self) -> None:
        """Nothing to let go of: the store's clients close when its run ends."""

    # ----------------------------------------------------------------------------------
    # queries (control ops)

    async def fetch(self, item_id: str) -> WorkItem:
        """The item, from this hub if it holds it, else from Redis (a finished item kept
        here is read again: another hub may have retried it since)."""
        return await self._queries.fetch(item_id)

    async def retry_any(self, item_id: str) -> WorkItem:
        """Queue a dead or failed item again, whichever hub held it."""
        return await self._queries.retry_any(item_id)

    async def cluster(self) -> dict[str, Any]:
        """Every hub sharing this Redis and the queues per type (``status --cluster``)."""
        return await self._queries.cluster()


def _check_replicas(replicas: Any, replicas_timeout: Any, timeout: float, url: str) -> float:
    """WAIT's timeout; a bad ``replicas``/``replicas_timeout`` refused (issue 23). On a
    Cluster the WAIT goes to each master a round wrote to (``_nodes.replicated``)."""
    if replicas_timeout is None:
        replicas_timeout = min(1.0, timeout / 2)
    if not isinstance(replicas, int) or replicas < 0:
        raise ConfigError(f"RedisWorkQueue(replicas=...) must be an int >= 0 (got {replicas!r})")
    if not isinstance(replicas_timeout, int | float) or not 0 < replicas_timeout < timeout:
        raise ConfigError(
            f"RedisWorkQueue(replicas_timeout=...) must be > 0 and below timeout={timeout:g} "
            f"s (got {replicas_timeout!r}): WAIT must answer before the round times out"
        )
    return float(replicas_timeout)


# --- ordering (issue 21) ---


def _check_room(q: RedisWorkQueue) -> None:
    """Refuse a submit while the hub holds ``max_held`` writes Redis has not taken."""
    if q.writes.full():
        raise ControlError(
            f"the hub holds {len(q.writes.ops)} writes ({q.writes.held_bytes // 1024} KiB) "
            f"that Redis at {q.url} has not taken (its cap: {q.max_held} writes, "
            f"{q.max_held_bytes // 1024} KiB); submit again when Redis answers"
        )


def _options(kw: dict[str, Any]) -> tuple[int, str, float | None, int]:
    """``max_deliveries``, ``source``, ``not_before`` and ``priority`` of a submit (the
    priority picks the item's stream in Redis: docs/work-redis.md)."""
    source = str(kw.get("source", "api"))
    return int(kw["max_deliveries"]), source, kw.get("not_before"), int(kw.get("priority", 0))


# --- end ordering ---
