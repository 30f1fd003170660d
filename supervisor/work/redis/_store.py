"""The work store's actor: one round at a time, each one pipeline to Redis.

A round sends, in this order: the held writes, the renewals of this hub's leases, its
heartbeat (the claim of its hub id) and its proof of life per type, the reads of the
queues' lag, the read-back of finished items kept here, then the taking scripts; the
script calls on one agent type's keys go as one call (:mod:`._batch`). While
Redis does not answer, the writes stay held (in order) and the round is retried with
backoff; the hub goes on supervising and deciding meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import attrs
import redis
import trio

from ..._errors import ControlError, ServiceFailed
from ..._redis_cluster import is_cluster
from ..._redis_link import Backoff, Outage, clean_error, config_problem, in_thread
from .._item import ItemStatus, WorkItem
from .._store import StoreHost
from ._admin import persistence_warning
from ._batch import Batcher
from ._codec import _item_from, _pairs, _text
from ._nodes import NodesDown, masters_before, replicated
from ._outbox import _Op
from ._parts import QueueParts
from ._scripts import _BEAT, _CLAIM, _FENCED, _LAG, _SHA, _TAKE
from ._tiers import claim_spec, demand_of, served_labels, tier_demand

_log = logging.getLogger("hubvisor")

_CHECKS = 50  # finished items read back per round at most

__all__ = ["NotReplicated", "StoreActor"]


class NotReplicated(redis.ConnectionError):
    """``WAIT`` after a round confirmed fewer replicas than ``replicas`` asks: the round's
    writes are held and sent again, as in an outage (issue 23)."""


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
    claimed: bool  # the hub held its id when the round was built
    lag_specs: dict[str, str] = attrs.field(factory=dict)  # type -> label sets (_tiers.py)


@attrs.define
class _Clock:
    """When the actor renews its leases, claims stale entries and polls for more."""

    lease: float
    next_renew: float
    next_claim: float
    last_take: float
    last_round: float
    poll: float = 0.01
    renew: bool = False
    claim: bool = False

    def due(self, now: float) -> None:
        self.renew, self.claim = now >= self.next_renew, now >= self.next_claim

    def ran(self, now: float) -> None:
        """A round went through at ``now``."""
        self.last_round = now
        if self.renew:
            self.next_renew = now + self.lease / 3
        if self.claim:
            self.next_claim = now + self.lease / 4


class StoreActor:
    """Keeps one :class:`~supervisor.work.redis.RedisWorkQueue` in step with Redis: its
    writer, its leases, its heartbeat and its reads of new work."""

    def __init__(self, queue: QueueParts) -> None:
        self.q = queue
        self.host: StoreHost | None = None
        self.client: redis.Redis | None = None
        self.wake = trio.Event()
        self.outage = Outage()
        # Never back off past a quarter lease: the hub must renew within its lease.
        self.backoff = Backoff(0.05, min(2.0, queue.lease / 4))
        if queue._url.startswith("redis+sentinel://"):  # a failover is brief: ask often
            self.backoff.cap = min(self.backoff.cap, 0.5)
        self.failures = 0
        self.errors = 0
        self.rounds = 0
        self.batches = 0  # batch script calls sent (one per type and round: _batch.py)
        self.lag: dict[str, int] = {}  # entries no hub has taken yet, per type
        self.serves: set[str] = set()  # types this hub has agents of: it takes only those
        # Types whose entries pending on this hub id (a restart, a lost reply) are read
        # back first: every type the first time it is seen, all of them after an outage.
        self.recover: set[str] = set()
        self.announced: set[str] = set()  # types the hub's heartbeat has told Redis of
        self.nodes_down = NodesDown(queue.url)  # on a Cluster: masters that do not answer

    # ----------------------------------------------------------------------------------
    # life

    async def run(self, host: StoreHost, *, task_status: trio.TaskStatus[None]) -> None:
        """See :meth:`RedisWorkQueue.run`."""
        q = self.q
        self.host = host
        q.claim.hub_id = host.hub_id
        self.client = q._make_client(1)
        try:
            try:
                await self._start()
            except ControlError as exc:  # a live hub with this id
                raise ServiceFailed(str(exc)) from None
            except redis.RedisError as exc:
                problem = config_problem(exc, q._url)
                if problem is not None:
                    raise ServiceFailed(problem) from None
                _log.warning(
                    "work: Redis at %s unreachable at start (%s); supervising on, writes held "
                    "until it answers",
                    q.url,
                    clean_error(exc, q._url),
                )
                self.outage.down(trio.current_time())
            task_status.started()
            await self._loop()
        finally:
            with trio.CancelScope(shield=True):
                await _final_flush(self.q, self.client)

    async def _start(self) -> None:
        assert self.client is not None
        q = self.q
        warning = await in_thread(persistence_warning, self.client)
        if warning:
            _log.warning("work: %s", warning)
        await in_thread(q.claim.register, self.client)
        await in_thread(q.claim.first_beat, self.client, self._beat_fields())
        _log.info(
            "work: durable queues on Redis at %s (prefix %r, lease %.1f s, hub %s)",
            q.url,
            q.prefix,
            q.lease,
            q.claim.hub_id,
        )

    def _beat_fields(self) -> dict[str, Any]:
        agents = self.host.agent_counts() if self.host is not None else {}
        fields = self.q.claim.fields(agents, self.q._types)
        # the label sets its pools serve per type (issue 21: status --cluster)
        fields["tiers"] = json.dumps(served_labels(self.host), sort_keys=True)
        return fields

    async def _loop(self) -> None:
        now = trio.current_time()
        clock = _Clock(self.q.lease, now, now, now, now)
        while True:
            now = trio.current_time()
            demand = self.demand()
            serves = self.host.agent_types() if self.host else set()
            self.recover |= serves - self.serves
            self.serves = serves
            self.q._types |= serves
            idle = not self.q.writes.ops and not self.recover
            if idle and await self._wait(clock, now, demand):
                continue
            clock.due(now)
            r = self._build(clock, demand)
            try:
                replies = await in_thread(self._round, r)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                self.q.writes.put_back(r.ops)
                self._down(exc)
                await trio.sleep(self.backoff.next())
                continue
            except Exception as exc:  # never ends the store: logged, counted, retried
                self.q.writes.put_back(r.ops)
                self._failed(exc)
                await trio.sleep(self.backoff.next())
                continue
            r, replies, part = self.nodes_down.cut(self, r, replies)  # a master may be down
            taken = self._done(clock, now, r, replies)
            await self.nodes_down.after(self, clock, now, part)
            if demand:
                clock.last_take = now
                clock.poll = 0.01 if taken else min(0.25, clock.poll * 2)
            if taken and self.host is not None:
                self.host.poke()

    async def _wait(self, clock: _Clock, now: float, demand: Mapping[str, int]) -> bool:
        """Nothing to write: wait for a poke or the next thing due. True: it waited."""
        deadline = min(clock.next_renew, clock.next_claim)
        if demand:
            deadline = min(deadline, clock.last_take + clock.poll)
        if not self.q.claim.claimed:  # claim the hub id again soon
            deadline = min(deadline, clock.last_round + 0.05)
        if deadline <= now:
            return False
        with trio.move_on_at(deadline):
            await self.wake.wait()
        self.wake = trio.Event()
        return True

    def _build(self, clock: _Clock, demand: Mapping[str, int]) -> _Round:
        claimed = self.q.claim.claimed  # takes nothing until it holds its id (checked)
        beat = None
        if clock.renew or not claimed or self.q._types != self.announced:
            beat = self._beat_fields()
        lag_types = [] if beat is None else self._lag_types()
        return _Round(
            ops=self.q.writes.take(),
            renewals=self._renewals() if clock.renew else [],
            beat=beat,
            beats=self._beat_types() if clock.renew or clock.claim else [],
            lag_types=lag_types,
            checks=self._checks() if clock.renew else [],
            reads=self._reads(demand, clock.renew, clock.claim) if claimed else [],
            claimed=claimed,
            lag_specs={t: claim_spec(self.host, t) for t in lag_types},  # issue 21: tiers
        )

    def _down(self, exc: BaseException) -> None:
        """Redis did not answer a round."""
        q = self.q
        if not self.outage.down(trio.current_time()):
            pass  # logged when it began
        elif isinstance(exc, NotReplicated):
            _log.warning(
                "work: Redis at %s: %s; %d writes held (not yet counted as written) and "
                "sent again until the replicas confirm them; supervising on",
                q.url,
                exc,
                len(q.writes.ops),
            )
        else:
            problem = config_problem(exc, q._url)
            _log.warning(
                "work: Redis at %s unreachable (%s); supervising on, %d writes held",
                q.url,
                problem or clean_error(exc, q._url),
                len(q.writes.ops),
            )
        q.claim.claimed = False
        self.recover = set(self.serves)

    def _failed(self, exc: BaseException) -> None:
        """A round failed with an error that is no outage."""
        self.errors += 1
        self.failures += 1
        if self.failures == 1:
            _log.exception(
                "work: a Redis round failed (%s); its writes are kept and it is retried",
                clean_error(exc, self.q._url),
            )
        if self.failures >= 2:
            self._drop_poison()

    def _done(self, clock: _Clock, now: float, r: _Round, replies: list[Any]) -> int:
        """A round went through: apply its replies; how many items it took."""
        q = self.q
        if self.outage.up(trio.current_time()) is not None:
            _log.warning("work: Redis at %s answers again; held writes written", q.url)
        self.backoff.reset()
        self.failures = 0
        clock.ran(now)
        if r.beat is not None:
            self.announced = set(json.loads(r.beat["types"]))
        self.rounds += 1
        if r.claimed:
            self.recover = set()
        try:
            taken = self._apply(r, replies)
        except Exception:  # a reply of a shape never seen: log it, never stop the work
            _log.exception("work: could not apply a Redis round; reading back what is held")
            self.recover, taken = set(self.serves), 0
        if q.claim.conflict is not None:
            _log.error("work: %s", q.claim.conflict)
            raise q.claim.conflict
        q.writes.drained()
        return taken

    def _drop_poison(self) -> None:
        """Drop the held writes that can never be sent (their arguments cannot be
        encoded), each logged with its item; the others stay, in order."""
        assert self.client is not None
        pool = self.client.connection_pool
        packer = pool.connection_class(**pool.connection_kwargs)  # never connected
        for op in self.q.writes.drop_poison(packer):
            if op.kind == "submit":
                self.q._pending.pop(op.item_id, None)

    # ----------------------------------------------------------------------------------
    # what a round holds

    def demand(self) -> dict[str, int]:
        """Items per type the idle agents could take beyond those held here."""
        if self.host is None:
            return {}
        return demand_of(self.host, self.q._local, self.host.idle_counts())

    def _reads(
        self, demand: Mapping[str, int], renew: bool, claim: bool
    ) -> list[tuple[str, str, tuple[Any, ...]]]:
        """The taking scripts of this round: (script, type, args)."""
        q = self.q
        reads: list[tuple[str, str, tuple[Any, ...]]] = []
        now = time.time()
        for agent_type in sorted(self.serves | set(demand)):
            base = (q.claim.hub_id, q.claim.token)
            prefix = q.keys.items(agent_type)
            if agent_type in self.recover:
                reads.append((_TAKE, agent_type, (*base, 1000, prefix, now, "0", "*")))
            if claim:  # only the tiers this hub serves (issue 21)
                lease_ms = int(q.lease * 1000)
                spec = claim_spec(self.host, agent_type)
                reads.append((_CLAIM, agent_type, (*base, 100, prefix, now, lease_ms, spec)))
            if demand.get(agent_type):  # one take per pool label set (issue 21)
                idle = self.host.idle_counts().get(agent_type, 0) if self.host else 0
                for spec, n in tier_demand(self.host, q._local, agent_type, idle):
                    reads.append((_TAKE, agent_type, (*base, n, prefix, now, ">", spec)))
        return reads

    def _beat_types(self) -> list[str]:
        """The types this hub proves it is alive for: those it serves or holds items of."""
        held = {
            i.agent_type
            for i in self.q._local.items()
            if i.status in (ItemStatus.QUEUED, ItemStatus.ASSIGNED)
        }
        return sorted(self.serves | held)

    def _checks(self) -> list[WorkItem]:
        """Dead or failed items kept here whose state in Redis is read back (another hub
        may have retried them): at most 50 a round, in turn."""
        # Not one whose own final write is still held here: Redis shows the state before
        # it, and forgetting the item then made its entry look like one to take back.
        held = {op.item_id for op in self.q.writes.ops}
        final = [
            i
            for i in self.q._local.items()
            if i.status in (ItemStatus.DEAD, ItemStatus.FAILED) and i.id not in held
        ]
        if len(final) <= _CHECKS:
            return final
        start = (self.rounds * _CHECKS) % len(final)
        return (final + final)[start : start + _CHECKS]

    def _renewals(self) -> list[tuple[WorkItem, tuple[str, ...], tuple[Any, ...]]]:
        q, now = self.q, time.time()
        return [
            (
                item,
                q._keys(item.agent_type, item.id),
                ("renew", q.claim.hub_id, q.claim.token, item.attempt, now),
            )
            for item in q._local.items()
            if item.status in (ItemStatus.QUEUED, ItemStatus.ASSIGNED)
        ]

    def _lag_types(self) -> list[str]:
        """The types whose untaken entries this hub counts: those it serves and those an
        autoscaling pool watches (it may have no agent yet)."""
        watched = self.host.watched if self.host is not None else set()
        return sorted(self.serves | watched)

    # ----------------------------------------------------------------------------------
    # in the worker thread

    def _round(self, r: _Round) -> list[Any]:
        """One pipeline (in a worker thread; it reads nothing the trio thread changes):
        writes in order, lease renewals, the hub's heartbeat and its proof of life per
        type, then the taking scripts."""
        client = self.client
        assert client is not None
        for _ in range(2):
            pipe: Any = client.pipeline(transaction=False)
            batch = Batcher(self.q.prefix)  # one script call per type (_batch.py)
            self._fill(batch, r)
            batch.send(pipe)
            waits = _add_wait(self.q, pipe, r)
            by_node = is_cluster(client)  # a master that is down holds back only its part
            before = masters_before(self.q, client, r)  # a Cluster's replicas: see _waited
            run = pipe.execute_by_node if by_node else pipe.execute
            replies: list[Any] = batch.replies(run(raise_on_error=False))
            self.batches += batch.batches
            for reply in replies:
                if isinstance(reply, redis.ConnectionError | redis.TimeoutError) and not by_node:
                    raise reply
            if not any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                replies = _waited(self.q, client, r, replies, waits, before)
                break
            # A restarted (or flushed) server forgot the scripts: none of them ran, so
            # the round runs again once they are loaded (the other commands are
            # idempotent).
            for script in _SHA:
                client.script_load(script)
        return replies

    def _fill(self, pipe: Any, r: _Round) -> None:
        q = self.q
        lease_ms = int(q.lease * 1000)
        for op in r.ops:
            pipe.evalsha(_SHA[op.script], len(op.keys), *op.keys, *op.args)
        for _item, keys, args in r.renewals:
            pipe.evalsha(_SHA[_FENCED], 4, *keys, *args)
        if r.beat is not None:
            q.claim.add_beat(pipe, r.beat)
        for agent_type in r.beats:
            pipe.evalsha(_SHA[_BEAT], 1, q.keys.of(agent_type, "alive"), q.claim.hub_id, lease_ms)
        for agent_type in r.lag_types:  # over every priority's stream of the tiers it serves
            spec = r.lag_specs.get(agent_type, "*")
            pipe.evalsha(_SHA[_LAG], 1, q.keys.of(agent_type, "q"), spec)
        for item in r.checks:
            pipe.hget(q.keys.items(item.agent_type) + item.id, "st")
        for script, agent_type, args in r.reads:
            keys = q._keys(agent_type)
            if script is _CLAIM:
                keys = (*keys, q.keys.of(agent_type, "alive"))
            elif script is _TAKE:  # due delayed items move into the stream first
                keys = (*keys, q.keys.of(agent_type, "delayed"))
            pipe.evalsha(_SHA[script], len(keys), *keys, *args)

    # ----------------------------------------------------------------------------------
    # the replies

    def _apply(self, r: _Round, replies: list[Any]) -> int:
        q, at = self.q, 0

        def part(n: int) -> list[Any]:
            nonlocal at
            at += n
            return replies[at - n : at]

        for op, reply in zip(r.ops, part(len(r.ops)), strict=True):
            self.written(op, reply)
        for (item, _keys, _args), reply in zip(r.renewals, part(len(r.renewals)), strict=True):
            if not isinstance(reply, Exception) and not int(reply[0]):
                reason = _text(reply[1])
                if reason == "cancelled":  # by another hub: tell the agent holding it
                    _cancelled_elsewhere(self.host, item)
                elif reason != "finished":
                    q._lose(item, reason)
        if r.beat is not None:
            claim, *_, known = part(3 + len(json.loads(r.beat["types"])))
            q.claim.on_reply(claim)
            if not isinstance(known, Exception):
                q.known_types = {_text(t) for t in known}
        part(len(r.beats))
        _note_lag(self.lag, r.lag_types, part(len(r.lag_types)))
        for item, reply in zip(r.checks, part(len(r.checks)), strict=True):
            if not isinstance(reply, Exception) and _text(reply or "") != str(item.status):
                q._local.forget(item.id)  # another hub retried it: Redis has it
        return _adopt(q, self.host, r.reads, part(len(r.reads)))

    def written(self, op: _Op, reply: Any) -> None:
        """Redis answered a held write."""
        if isinstance(reply, Exception):
            _log.warning("work %s: Redis refused %s: %s", op.item_id, op.kind, reply)
            return
        if op.kind == "submit":
            self.q._pending.pop(op.item_id, None)
            if isinstance(reply, bytes | str) and _text(reply) != "1":  # a kept item's key
                self.q.dupes[op.item_id] = _text(reply)
                while len(self.q.dupes) > 10_000:  # the oldest answers are long read
                    del self.q.dupes[next(iter(self.q.dupes))]
            if op.on_reply is not None:  # issue 21: a dependent item, its links follow
                op.on_reply(reply)  # (they take its event: stored once they answer)
            event = self.q._stored.pop(op.item_id, None)
            if event is not None:
                event.set()
        elif op.on_reply is not None:
            op.on_reply(reply)


def _note_lag(lag: dict[str, int], types: list[str], replies: list[Any]) -> None:
    """The entries no hub has taken yet, per type, from the round's lag reads."""
    for agent_type, reply in zip(types, replies, strict=True):
        lag[agent_type] = 0 if isinstance(reply, Exception) else int(reply)


def _add_wait(q: QueueParts, pipe: Any, r: _Round) -> bool:
    """With ``replicas``: one ``WAIT`` after a round that writes (its reply comes last);
    whether it was added. Never in a Cluster's pipeline (WAIT has no key): there a WAIT
    goes to each master the round wrote to after it (:func:`_waited`)."""
    if not (q.replicas and r.ops) or hasattr(pipe, "execute_by_node"):
        return False
    pipe.wait(q.replicas, int(q.replicas_timeout * 1000))
    return True


def _waited(
    q: QueueParts,
    client: Any,
    r: _Round,
    replies: list[Any],
    waits: bool,
    before: list[str | None] | None,
) -> list[Any]:
    """The round's replies once its WAIT confirmed them: the pipeline's own (``waits``:
    its last reply, :func:`_confirmed`), or on a Cluster one to each master written to
    (``before``: their masters before the round; :func:`._nodes.replicated`)."""
    if waits:
        _confirmed(q, replies.pop())
    return replicated(q, client, r, replies, before) if before is not None else replies


def _confirmed(q: QueueParts, reply: Any) -> None:
    """Raise :class:`NotReplicated` unless WAIT's ``reply`` confirms enough replicas."""
    got = reply if isinstance(reply, int) else -1
    if got < q.replicas:
        shown = got if got >= 0 else f"an error ({reply})"
        raise NotReplicated(
            f"WAIT confirmed {shown} of {q.replicas} replica(s) in {q.replicas_timeout:g} s"
        )


def _cancelled_elsewhere(host: Any, item: WorkItem) -> None:
    """Another hub cancelled ``item`` in Redis: the service ends it here too (its agent is
    told to give it up; the write of that end is refused as done already)."""
    cancel = getattr(host, "cancel", None)
    if cancel is None:
        return
    with contextlib.suppress(ControlError):  # it ended here meanwhile
        cancel(item.id, "cancelled on another hub")


def _unwritten(ops: list[_Op], error: str, url: str) -> None:
    """Say, per item, what a stop could not write to Redis."""
    lost = sorted({op.item_id for op in ops if op.kind == "submit"})
    for item_id in lost:
        _log.error(
            "work %s: submitted but not in Redis at stop (Redis at %s: %s): the item is "
            "lost; submit it again",
            item_id,
            url,
            error,
        )
    for item_id in sorted({op.item_id for op in ops} - set(lost)):
        _log.warning(
            "work %s: its last writes did not reach Redis at stop (%s); its lease runs "
            "out and another hub (or this one, restarted) takes it",
            item_id,
            error,
        )


def _adopt(
    q: QueueParts,
    host: StoreHost | None,
    reads: list[tuple[str, str, tuple[Any, ...]]],
    replies: list[Any],
) -> int:
    """Adopt the items the taking scripts gave this hub; how many."""
    taken = 0
    took: dict[tuple[str, str], int] = {}
    for (_script, agent_type, _args), reply in zip(reads, replies, strict=True):
        if isinstance(reply, Exception):
            _log.warning("work: taking %s items from Redis failed: %s", agent_type, reply)
            continue
        for kind, flat, prev in reply:
            fields = _pairs(flat)
            kind, prev = _text(kind), _text(prev)
            if kind != "mine" and prev:
                took[(prev, agent_type)] = took.get((prev, agent_type), 0) + 1
            if kind == "dead":
                if host is not None:
                    host.dead_elsewhere(_item_from(fields))
                continue
            if kind == "mine" and _holds(q, fields["id"]):
                _write_final_again(q, fields["id"])
                continue
            item = _item_from(fields)
            item.status = ItemStatus.QUEUED
            q._local.adopt(item)
            taken += 1
    for (prev, agent_type), n in sorted(took.items()):
        _log.warning(
            "work: took over %d %s item(s) from hub %s, whose lease ran out",
            n,
            agent_type,
            prev if prev != q.claim.hub_id else f"{prev} (a previous run of this hub)",
        )
    return taken


async def _final_flush(q: QueueParts, client: redis.Redis | None) -> None:
    """Give back what this hub holds (so others take it at once) and write the rest,
    waiting up to ``timeout`` for Redis; each item whose writes did not land is logged
    by id (a submitted one is lost)."""
    q._release_held()
    ops = q.writes.take_all()
    if client is None:
        return
    claimed = q.claim.claimed

    def final() -> None:
        pipe: Any = client.pipeline(transaction=False)  # EVAL by command: Cluster too
        for op in ops:
            pipe.execute_command("EVAL", op.script, len(op.keys), *op.keys, *op.args)
        if claimed:
            q.claim.add_goodbye(pipe)
        if q.replicas and ops and not is_cluster(client):  # issue 23: say so when the
            pipe.wait(q.replicas, int(q.replicas_timeout * 1000))  # replicas do not confirm
        replies = pipe.execute(raise_on_error=False)
        if q.replicas and ops and is_cluster(client):  # a WAIT to each master written to
            _final_wait_by_master(q, client, ops)
        elif (
            q.replicas and ops and not (isinstance(replies[-1], int) and replies[-1] >= q.replicas)
        ):
            _log.warning(
                "work: the writes at stop were not confirmed by %d replica(s) (WAIT: %s); a "
                "failover now could lose them",
                q.replicas,
                replies[-1],
            )

    done, error = not ops and not claimed, ""
    try:
        with trio.move_on_after(q.timeout):
            while not done:
                try:
                    await in_thread(final, abandon_on_cancel=True)
                    done = True
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    error = config_problem(exc, q._url) or clean_error(exc, q._url)
                    await trio.sleep(min(0.25, q.timeout / 8))
                except Exception as exc:  # never retried: it would fail again
                    error = clean_error(exc, q._url)
                    break
    finally:
        client.close()
    if not done and ops:
        _unwritten(ops, error or f"no answer in {q.timeout:g} s", q.url)


def _final_wait_by_master(q: QueueParts, client: Any, ops: list[_Op]) -> None:
    """On a Cluster: log the writes at stop whose master's WAIT fell short (issue 23)."""
    from ..._redis_cluster import wait_masters
    from ._nodes import marks_of

    short = wait_masters(client, marks_of(q, ops), q.replicas, int(q.replicas_timeout * 1000))
    for why in sorted(set(short.values())):
        _log.warning(
            "work: writes at stop not confirmed by %d replica(s) (%s); a failover now "
            "could lose them",
            q.replicas,
            why,
        )


def _write_final_again(q: QueueParts, item_id: str) -> None:
    """Redis gave back as pending on this hub an item this hub finished: its final write
    was lost (a failover to a replica that lacked it, without ``--redis-replicas``).
    Write it again, else the item would stay pending here while this hub lives."""
    item = q._local.get(item_id)
    final = (ItemStatus.COMPLETED, ItemStatus.FAILED, ItemStatus.DEAD)
    if item.status not in final or any(op.item_id == item_id for op in q.writes.ops):
        return
    _log.warning(
        "work %s: Redis lost its %s outcome (a failover?); written again", item_id, item.status
    )
    q._finish(item, item.history[-1].agent if item.history else "")


def _holds(q: QueueParts, item_id: str) -> bool:
    """Whether this hub holds ``item_id`` already (a read back of its own entries)."""
    try:
        q._local.get(item_id)
    except ControlError:
        return False
    return True
