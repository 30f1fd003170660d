"""A round of the work store on a Redis Cluster when some masters do not answer.

On a Cluster the store sends a round by node (``_Pipeline.execute_by_node`` of
:mod:`supervisor._redis_cluster`): when a master is down (it died; its replica is not
promoted yet) its commands come back as ``redis.ConnectionError`` replies while the other
masters' commands went through. :func:`answered_part` keeps the part of the round that
was answered, so that the types on healthy masters keep flowing: their writes count as
written, their items are taken; the writes of the types on the master that is down are
held again (first, in order) and sent in the next rounds until it answers. Every write is
a script that is safe to run twice, so a part sent again is no harm.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import attrs
import redis
import trio

if TYPE_CHECKING:
    from ._outbox import _Op
    from ._parts import QueueParts
    from ._store import StoreActor, _Clock, _Round

_log = logging.getLogger("hubvisor")

PACE = 0.1
"""Seconds between rounds while a master does not answer (its writes are held, so the
store never idles: this keeps it from asking the dead master in a busy loop)."""

__all__ = ["PACE", "NodesDown", "answered_part", "marks_of", "masters_before", "replicated"]


def _unanswered(reply: Any) -> bool:
    return isinstance(reply, redis.ConnectionError | redis.TimeoutError)


def _type_of(key: str) -> str:
    """The agent type of a key (its hash tag ``{TYPE}``)."""
    return key.partition("{")[2].partition("}")[0]


@attrs.define
class Part:
    """The answered part of a round, and what was not answered."""

    round: _Round
    replies: list[Any]
    held: list[_Op]  # writes not answered, in order: to be held again
    types: set[str]  # the agent types some command of which was not answered
    error: str  # one of the errors, for the log


def answered_part(r: _Round, replies: list[Any]) -> Part | None:
    """The round cut down to what was answered, in the layout ``StoreActor._apply``
    reads; None when every command was answered (the usual case)."""
    if not any(_unanswered(x) for x in replies):
        return None
    error = str(next(x for x in replies if _unanswered(x)))
    at = 0
    keep: list[int] = []
    types: set[str] = set()

    def part(n: int) -> list[int]:
        nonlocal at
        at += n
        return list(range(at - n, at))

    def kept(things: list[Any], positions: list[int], type_of: Any) -> list[Any]:
        out = []
        for thing, n in zip(things, positions, strict=True):
            if _unanswered(replies[n]):
                types.add(type_of(thing))
            else:
                out.append(thing)
                keep.append(n)
        return out

    held = [op for n, op in enumerate(r.ops) if _unanswered(replies[n])]
    ops = kept(r.ops, part(len(r.ops)), lambda op: _type_of(op.keys[0]))
    renewals = kept(r.renewals, part(len(r.renewals)), lambda x: x[0].agent_type)
    beat = r.beat
    if beat is not None:  # the hub's heartbeat, in another slot: all of it or none
        positions = part(3 + len(json.loads(beat["types"])))
        if any(_unanswered(replies[n]) for n in positions):
            beat = None
        else:
            keep.extend(positions)
    beats = kept(r.beats, part(len(r.beats)), lambda t: t)
    lag_types = kept(r.lag_types, part(len(r.lag_types)), lambda t: t)
    checks = kept(r.checks, part(len(r.checks)), lambda item: item.agent_type)
    reads = kept(r.reads, part(len(r.reads)), lambda x: x[1])
    keep.extend(range(at, len(replies)))  # a WAIT (never on a Cluster)
    cut = attrs.evolve(
        r,
        ops=ops,
        renewals=renewals,
        beat=beat,
        beats=beats,
        lag_types=lag_types,
        checks=checks,
        reads=reads,
    )
    return Part(cut, [replies[n] for n in keep], held, types, error)


def marks_of(q: QueueParts, ops: list[_Op]) -> list[str | None]:
    """Per write, the key its master's WAIT is preceded by (``P:work:{T}:replicated``)."""
    return [q.keys.of(_type_of(op.keys[0]), "replicated") for op in ops]


def masters_before(q: QueueParts, client: Any, r: _Round) -> list[str | None] | None:
    """With ``replicas`` on a Cluster: the masters of the round's writes before it runs
    (None: no Cluster, no ``replicas`` or no write; no WAIT of its own then)."""
    from ..._redis_cluster import is_cluster, masters_of

    if not (q.replicas and r.ops and is_cluster(client)):
        return None
    return masters_of(client, marks_of(q, r.ops))


def replicated(
    q: QueueParts, client: Any, r: _Round, replies: list[Any], before: list[str | None] | None
) -> list[Any]:
    """With ``replicas`` on a Cluster (issue 23): ``replies`` after a WAIT to each master
    the round's writes went to (:func:`~supervisor._redis_cluster.wait_masters`); the
    reply of each write whose master confirmed fewer replicas is a ``NotReplicated`` (a
    ``redis.ConnectionError``), so :func:`answered_part` holds it again, as one that
    master did not answer, while the writes other masters confirmed count."""
    from ..._redis_cluster import wait_masters
    from ._store import NotReplicated

    if not (q.replicas and r.ops):
        return replies
    marks = [
        None if _unanswered(x) else mark
        for mark, x in zip(marks_of(q, r.ops), replies, strict=False)
    ]
    ms = int(q.replicas_timeout * 1000)
    short = wait_masters(client, marks, q.replicas, ms, before)
    replies = list(replies)
    for n, why in short.items():
        replies[n] = NotReplicated(why)
    return replies


class NodesDown:
    """Says once when some types' master stops answering and once when all answer again."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.types: set[str] = set()

    def cut(
        self, actor: StoreActor, r: _Round, replies: list[Any]
    ) -> tuple[_Round, list[Any], Part | None]:
        """The round and replies to apply: on a Cluster whose master did not answer, the
        answered part (:func:`answered_part`), the unanswered writes held again at once
        (first, in order)."""
        part = answered_part(r, replies)
        if part is None:
            return r, replies, None
        actor.q.writes.put_back(part.held)
        return part.round, part.replies, part

    async def after(self, actor: StoreActor, clock: _Clock, now: float, part: Part | None) -> None:
        """After a round: when it was answered only in part (``part``), read back what
        this hub holds in Redis (the round's first, whole try may have taken items whose
        replies were lost: as after an outage) and wait :data:`PACE`; when every master
        answers again, renew (and beat) at once."""
        if part is None:
            if self.types:  # renew (and beat) at once now that their master answers
                clock.next_renew = now
            self._whole()
            return
        actor.recover |= actor.serves
        new = part.types - self.types
        self.types |= part.types
        if new:
            _log.warning(
                "work: Redis Cluster at %s: the master of %s does not answer (%s); "
                "their writes held (%d in all), the other types go on",
                self.url,
                ", ".join(sorted(new)),
                part.error,
                len(actor.q.writes.ops),
            )
        await trio.sleep(PACE)

    def _whole(self) -> None:
        """A round was answered whole."""
        if self.types:
            _log.warning(
                "work: Redis Cluster at %s answers for %s again; held writes written",
                self.url,
                ", ".join(sorted(self.types)),
            )
            self.types = set()
