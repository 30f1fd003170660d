"""The queue protocol and the in-memory queue: every decision on an item, synchronous."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from typing import Any, Literal, Protocol, runtime_checkable

from .._errors import ControlError
from ._item import FINAL, AttemptRecord, ItemStatus, Verdict, WorkItem, _used_up

_HISTORY = 20  # attempts kept per item


@runtime_checkable
class WorkQueue(Protocol):
    """Holds work items and decides every transition; the service only feeds it.

    Every method is synchronous and decides from its arguments and the queue's state
    alone (``now`` is passed in), so a backend can be property-tested without a hub.
    """

    def submit(
        self, agent_type: str, payload: Any, *, max_deliveries: int, source: str, now: float
    ) -> WorkItem:
        """Queue a new item and return it."""
        ...

    def has_work(self, agent_type: str) -> bool:
        """Whether an item of ``agent_type`` is queued."""
        ...

    def assign(self, agent_type: str, agent: str, now: float) -> WorkItem | None:
        """Give the oldest queued item of ``agent_type`` to ``agent`` (a new attempt)."""
        ...

    def complete(self, item_id: str, attempt: int, agent: str, result: Any, now: float) -> Verdict:
        """The agent finished the item."""
        ...

    def fail(
        self, item_id: str, attempt: int, agent: str, error: str, retry: bool, now: float
    ) -> Verdict:
        """The agent failed the item; with ``retry`` it is queued again while deliveries
        remain, else it is final."""
        ...

    def hand_back(self, item_id: str, attempt: int, agent: str, now: float) -> Verdict:
        """The agent gives the item back unfinished; no delivery is spent."""
        ...

    def progress(
        self, item_id: str, attempt: int, agent: str, progress: Any, checkpoint: Any
    ) -> Verdict:
        """The agent reports progress and a checkpoint for the next attempt."""
        ...

    def reclaim(
        self, agent: str, reason: Literal["exit", "hang", "stop", "unreachable"], now: float
    ) -> Verdict:
        """The agent is gone (or being killed): its item goes back, or dead-letters."""
        ...

    def retry(self, item_id: str, now: float) -> WorkItem:
        """Queue a dead or failed item again with fresh deliveries."""
        ...

    def get(self, item_id: str) -> WorkItem:
        """The item, or :class:`ControlError` naming the unknown id."""
        ...

    def items(self) -> Iterable[WorkItem]:
        """Every item, oldest first."""
        ...

    def held_by(self, agent: str) -> WorkItem | None:
        """The item ``agent`` holds, if any."""
        ...

    def depth(self, agent_type: str) -> int:
        """Items of ``agent_type`` waiting for an agent (the service's ``max_queued`` cap
        and the autoscaler read it)."""
        ...

    # -- cancel and time limits (issue 21) --

    def cancel(self, item_id: str, reason: str, now: float) -> WorkItem:
        """End a queued or assigned item ``cancelled`` (an assigned one's attempt is
        released: any later answer for it is refused); a :class:`ControlError` for an
        item already ended."""
        ...

    def time_out(self, item_id: str, attempt: int, reason: str, now: float) -> Verdict:
        """The attempt ran past its time limit: it ends ``timed_out`` (its delivery
        spent); the item is queued again while deliveries remain, else dead."""
        ...


class MemoryWorkQueue:
    """The in-memory :class:`WorkQueue` (the embedded default): lost with the hub.

    Args:
        keep_finished: how many completed/failed/dead items to keep for inspection
            (the oldest are forgotten beyond that; queued and assigned ones never are).
    """

    def __init__(self, *, keep_finished: int = 10_000) -> None:
        self.hub_id = ""
        """The hub named in each :class:`AttemptRecord` (the work service sets it)."""
        self._items: dict[str, WorkItem] = {}
        self._queues: dict[str, deque[str]] = {}
        self._held: dict[str, str] = {}  # agent -> item id
        self._finished: deque[str] = deque()
        self._keep = keep_finished
        self._ids = itertools.count(1)

    # reading

    def get(self, item_id: str) -> WorkItem:
        """The item with ``item_id``."""
        try:
            return self._items[item_id]
        except KeyError:
            raise ControlError(
                f"no work item {item_id!r}; `hubvisor work list` lists them"
            ) from None

    def items(self) -> Iterable[WorkItem]:
        """Every item kept, oldest first."""
        return list(self._items.values())

    def held_by(self, agent: str) -> WorkItem | None:
        """The item ``agent`` holds, if any."""
        item_id = self._held.get(agent)
        return self._items[item_id] if item_id is not None else None

    def has_work(self, agent_type: str) -> bool:
        """Whether an item of ``agent_type`` is queued."""
        return bool(self._queues.get(agent_type))

    def depth(self, agent_type: str) -> int:
        """How many items of ``agent_type`` are queued."""
        return len(self._queues.get(agent_type, ()))

    # transitions

    def submit(
        self, agent_type: str, payload: Any, *, max_deliveries: int, source: str, now: float
    ) -> WorkItem:
        """Queue a new item; its id is ``<type>-<n>``."""
        item = WorkItem(
            id=f"{agent_type}-{next(self._ids)}",
            agent_type=agent_type,
            payload=payload,
            max_deliveries=max_deliveries,
            created_at=now,
            source=source,
        )
        self._items[item.id] = item
        self._queues.setdefault(agent_type, deque()).append(item.id)
        return item

    def assign(self, agent_type: str, agent: str, now: float) -> WorkItem | None:
        """Give the oldest queued item of ``agent_type`` to ``agent``."""
        if agent in self._held:
            raise ControlError(f"agent {agent!r} already holds {self._held[agent]!r}")
        queue = self._queues.get(agent_type)
        if not queue:
            return None
        item = self._items[queue.popleft()]
        item.status = ItemStatus.ASSIGNED
        item.progress = None  # the new attempt reports its own (the checkpoint stays)
        item.attempt += 1
        item.deliveries += 1
        item.agent = agent
        item.started_at = now
        self._held[agent] = item.id
        return item

    def _fence(self, item_id: str, attempt: int, agent: str) -> WorkItem | str:
        item = self._items.get(item_id)
        if item is None:
            return f"no item {item_id!r}"
        if item.status is not ItemStatus.ASSIGNED or item.attempt != attempt:
            return (
                f"stale: {item_id!r} attempt {attempt} is not the current one "
                f"(status {item.status}, attempt {item.attempt})"
            )
        if item.agent != agent:
            return f"{item_id!r} attempt {attempt} is held by {item.agent!r}, not {agent!r}"
        return item

    def _release(self, item: WorkItem, agent: str, outcome: str, reason: str, now: float) -> None:
        item.history.append(AttemptRecord(item.attempt, agent, outcome, reason, now, self.hub_id))
        del item.history[:-_HISTORY]
        self._held.pop(agent, None)
        item.agent = None

    def _finish(self, item: WorkItem, status: ItemStatus, now: float) -> None:
        item.status = status
        item.finished_at = now
        self._finished.append(item.id)
        while len(self._finished) > self._keep:
            old = self._finished.popleft()
            if self._items.get(old) is not None and self._items[old].status in FINAL:
                del self._items[old]

    def _requeue(self, item: WorkItem, *, front: bool) -> None:
        item.status = ItemStatus.QUEUED
        queue = self._queues.setdefault(item.agent_type, deque())
        if front:  # it waited its turn once already
            queue.appendleft(item.id)
        else:
            queue.append(item.id)

    def complete(self, item_id: str, attempt: int, agent: str, result: Any, now: float) -> Verdict:
        """Mark the item completed with ``result`` (fenced)."""
        item = self._fence(item_id, attempt, agent)
        if isinstance(item, str):
            return Verdict(False, item)
        self._release(item, agent, "completed", "", now)
        item.result = result
        item.error = None  # an earlier attempt's failure is history now
        self._finish(item, ItemStatus.COMPLETED, now)
        return Verdict(True, item=item)

    def fail(
        self, item_id: str, attempt: int, agent: str, error: str, retry: bool, now: float
    ) -> Verdict:
        """Record a failure; queue again while deliveries remain, else dead-letter."""
        item = self._fence(item_id, attempt, agent)
        if isinstance(item, str):
            return Verdict(False, item)
        self._release(item, agent, "failed", error, now)
        item.error = error
        if not retry:
            self._finish(item, ItemStatus.FAILED, now)
        elif item.deliveries >= item.max_deliveries:
            item.error = _used_up(item)
            self._finish(item, ItemStatus.DEAD, now)
        else:
            self._requeue(item, front=True)
        return Verdict(True, item=item)

    def hand_back(self, item_id: str, attempt: int, agent: str, now: float) -> Verdict:
        """Queue the item again at the front; the delivery is not spent."""
        item = self._fence(item_id, attempt, agent)
        if isinstance(item, str):
            return Verdict(False, item)
        self._release(item, agent, "handed_back", "", now)
        item.deliveries -= 1
        self._requeue(item, front=True)
        return Verdict(True, item=item)

    def progress(
        self, item_id: str, attempt: int, agent: str, progress: Any, checkpoint: Any
    ) -> Verdict:
        """Keep the progress and the checkpoint (fenced)."""
        item = self._fence(item_id, attempt, agent)
        if isinstance(item, str):
            return Verdict(False, item)
        item.progress = progress
        if checkpoint is not None:
            item.checkpoint = checkpoint
        return Verdict(True, item=item)

    def reclaim(
        self, agent: str, reason: Literal["exit", "hang", "stop", "unreachable"], now: float
    ) -> Verdict:
        """Take back what ``agent`` holds: a stop refunds the delivery, an exit or hang
        spends it, and an item with no deliveries left is dead-lettered."""
        item = self.held_by(agent)
        if item is None:
            return Verdict(False, f"{agent!r} holds nothing")
        self._release(item, agent, f"reclaimed:{reason}", reason, now)
        if reason in ("stop", "unreachable"):
            item.deliveries -= 1
        if item.deliveries >= item.max_deliveries:
            item.error = _used_up(item)
            self._finish(item, ItemStatus.DEAD, now)
        else:
            self._requeue(item, front=True)
        return Verdict(True, item=item)

    def adopt(self, item: WorkItem) -> None:
        """Hold ``item`` (taken from a shared store) and queue it behind the others."""
        self._items[item.id] = item
        self._requeue(item, front=False)

    def forget(self, item_id: str) -> WorkItem | None:
        """Drop the item (another hub took it): whoever holds it here is refused later."""
        item = self._items.pop(item_id, None)
        if item is None:
            return None
        queue = self._queues.get(item.agent_type)
        if queue is not None and item_id in queue:
            queue.remove(item_id)
        if item.agent is not None and self._held.get(item.agent) == item_id:
            del self._held[item.agent]
        return item

    def retry(self, item_id: str, now: float) -> WorkItem:
        """Queue a dead or failed item again, with its deliveries reset."""
        item = self.get(item_id)
        if item.status not in (ItemStatus.DEAD, ItemStatus.FAILED):
            raise ControlError(
                f"work item {item_id!r} is {item.status}; only dead or failed items can be retried"
            )
        with_finished = [i for i in self._finished if i != item_id]
        self._finished = deque(with_finished)
        item.deliveries = 0
        item.error = None
        item.finished_at = None
        self._requeue(item, front=False)
        return item

    # -- cancel and time limits (issue 21) --

    def cancel(self, item_id: str, reason: str, now: float) -> WorkItem:
        """End a queued or assigned item ``cancelled``: a queued one leaves its queue, an
        assigned one's attempt is released (recorded ``cancelled``; a later answer for it
        is refused by the fence). Returns the item (its last history record names the
        agent that held it)."""
        item = self.get(item_id)
        if item.status is ItemStatus.QUEUED:
            queue = self._queues.get(item.agent_type)
            if queue is not None and item_id in queue:
                queue.remove(item_id)
        elif item.status is ItemStatus.ASSIGNED:
            self._release(item, item.agent or "", "cancelled", reason, now)
        else:
            raise ControlError(
                f"work item {item_id!r} has ended ({item.status}); only queued or assigned "
                "items can be cancelled"
            )
        item.error = f"cancelled: {reason}" if reason else "cancelled"
        self._finish(item, ItemStatus.CANCELLED, now)
        return item

    def time_out(self, item_id: str, attempt: int, reason: str, now: float) -> Verdict:
        """End attempt ``attempt`` ``timed_out`` (fenced: it must be the current one): its
        delivery stays spent; the item is queued again at the front while deliveries
        remain, else dead-lettered."""
        item = self._items.get(item_id)
        if item is None or item.agent is None:
            return Verdict(False, f"{item_id!r} is not assigned")
        fenced = self._fence(item_id, attempt, item.agent)
        if isinstance(fenced, str):
            return Verdict(False, fenced)
        self._release(item, item.agent, "timed_out", reason, now)
        item.error = f"timed out: {reason}"
        if item.deliveries >= item.max_deliveries:
            item.error = _used_up(item)
            self._finish(item, ItemStatus.DEAD, now)
        else:
            self._requeue(item, front=True)
        return Verdict(True, item=item)
