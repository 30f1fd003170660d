"""The reads behind the control ops (``work show``, ``work retry``, ``status --cluster``),
on a client of their own, never the actor's."""

from __future__ import annotations

import time
from typing import Any

import redis

from ..._errors import ControlError
from ..._redis_link import in_thread
from .._item import ItemStatus, WorkItem
from ._admin import cluster_status
from ._codec import _decode_map, _item_from, _text
from ._deps import annotate
from ._parts import QueueParts
from ._scripts import _CANCEL, _RETRY


class Queries:
    """What the control ops read of one :class:`RedisWorkQueue`'s items, here or in Redis."""

    def __init__(self, queue: QueueParts) -> None:
        self.q = queue
        self._query: redis.Redis | None = None

    def _client(self) -> redis.Redis:
        if self._query is None:
            self._query = self.q._make_client(2)
        return self._query

    def close(self) -> None:
        """Close the client (the store stops)."""
        if self._query is not None:
            self._query.close()
            self._query = None

    async def fetch(self, item_id: str) -> WorkItem:
        """The item, from this hub if it holds it, else from Redis (a finished item kept
        here is read again: another hub may have retried it since)."""
        try:
            local: WorkItem | None = self.q.get(item_id)
        except ControlError:
            local = None
        if local is not None and (
            item_id in self.q._pending or local.status in (ItemStatus.QUEUED, ItemStatus.ASSIGNED)
        ):
            return local
        agent_type = item_id.rsplit("-", 1)[0]
        client = self._client()
        key = self.q.keys.items(agent_type) + item_id
        fields = await in_thread(lambda: _decode_map(client.hgetall(key)))
        if not fields:
            if local is not None:  # expired in Redis (keep_finished): this copy is all
                return local
            raise ControlError(f"no work item {item_id!r}; `hubvisor work list` lists them")
        item = _item_from(fields)
        annotate(item, fields)  # issue 21: after, waiting_on
        if local is not None and item.status != local.status:
            self.q._local.forget(item_id)  # another hub took it further: Redis has it
        return item

    async def retry_any(self, item_id: str) -> WorkItem:
        """Queue a dead or failed item again, whichever hub held it."""
        try:
            local = self.q._local.get(item_id)
        except ControlError:
            local = None
        if local is not None:
            item = self.q.retry(item_id, 0.0)
            self.q.poke()
            return item
        agent_type = item_id.rsplit("-", 1)[0]
        client = self._client()
        keys = self.q._keys(agent_type, item_id)
        reply = await in_thread(lambda: client.eval(_RETRY, 4, *keys, item_id))
        if not int(reply[0]):
            raise ControlError(
                f"work item {item_id!r} cannot be retried: {_text(reply[1])}; only dead or "
                "failed items can"
            )
        self.q.poke()
        return await self.fetch(item_id)

    async def cancel_any(self, item_id: str, reason: str) -> WorkItem:
        """Cancel an item this hub does not hold, in Redis (one atomic script): a queued
        one ends at once; the hub holding one learns it at its next lease renewal and
        tells its agent."""
        agent_type = item_id.rsplit("-", 1)[0]
        client = self._client()
        keys = self.q._keys(agent_type, item_id)
        error = f"cancelled: {reason}" if reason else "cancelled"
        args = (item_id, time.time(), error, int(self.q.keep_finished))
        reply = await in_thread(lambda: client.eval(_CANCEL, 4, *keys, *args))
        if not int(reply[0]):
            why = _text(reply[1])
            if why == "no such item":
                raise ControlError(f"no work item {item_id!r}; `hubvisor work list` lists them")
            raise ControlError(
                f"work item {item_id!r} cannot be cancelled: {why}; only queued or "
                "assigned items can"
            )
        self.q._deps.finished(item_id)  # issue 21: its dependents are settled
        return await self.fetch(item_id)

    async def cluster(self) -> dict[str, Any]:
        """Every hub sharing this Redis and the queues per type (``status --cluster``)."""
        client = self._client()
        return await in_thread(cluster_status, client, self.q.prefix)
