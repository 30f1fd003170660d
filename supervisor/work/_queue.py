"""The queue protocol and the in-memory queue: every decision on an item, synchronous."""

from __future__ import annotations

import bisect
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import trio

from .._errors import ControlError
from ._deps import DependencyIndex, _matches
from ._item import (
    FINAL,
    AttemptRecord,
    ItemStatus,
    Verdict,
    WorkItem,
    _used_up,
)

_HISTORY = 20  # attempts kept per item


@runtime_checkable
class WorkQueue(Protocol):
    """Holds work items and decides every transition; the service only feeds it.

    Every method is synchronous and decides from its arguments and the queue's state
    alone (``now`` is passed in), so a backend can be property-tested without a hub.
    """

    def submit(
        self,
        agent_type: str,
        payload: Any,
        *,
        max_deliveries: int,
        source: str,
        now: float,
        priority: int = 0,
        not_before: float | None = None,
    ) -> WorkItem:
        """Queue a new item and return it (``priority``: higher first among the ready
        items; ``not_before``: a Unix time before which it is not handed out)."""
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


_trio_offset: tuple[object, float] | None = None  # (trio run, Unix time - trio time)


def wall_clock() -> float:
    """Unix time as trio's clock moves (issue 21's delays): ``time.time()`` read once per
    trio run, then advanced by ``trio.current_time()``, so a delay runs out in virtual
    time under a ``MockClock`` as it does in real time (outside trio: ``time.time()``)."""
    global _trio_offset
    try:
        run = trio.lowlevel.current_root_task()
        now = trio.current_time()
    except RuntimeError:
        return time.time()
    if _trio_offset is None or _trio_offset[0] is not run:
        _trio_offset = (run, time.time() - now)
    return now + _trio_offset[1]


def unix_time(at: float) -> float:
    """The Unix time of ``at`` on trio's clock, as :func:`wall_clock` reads it (issue 22:
    what users see is Unix time on every backend); outside trio: ``at`` as it is."""
    try:
        now = trio.current_time()
    except RuntimeError:
        return at
    return at - now + wall_clock()


class Lanes:
    """One type's ready items (issue 21): a FIFO per priority, the highest first, behind
    the API of the ``deque`` the queue used before (``append`` and ``appendleft`` go to
    the back or the front of the item's own priority; ``popleft`` takes the first of the
    highest). Every operation is O(1) but ``remove`` and ``in`` (O(n), as a deque's)."""

    def __init__(self, priority_of: Callable[[str], int], ids: Iterable[str] = ()) -> None:
        self._priority_of = priority_of
        self._lanes: dict[int, deque[str]] = {}
        self._keys: list[int] = []  # the lanes' priorities, negated, ascending
        self._len = 0
        for item_id in ids:
            self.append(item_id)

    def _lane(self, priority: int) -> deque[str]:
        lane = self._lanes.get(priority)
        if lane is None:
            lane = self._lanes[priority] = deque()
            bisect.insort(self._keys, -priority)
        return lane

    def _drop_if_empty(self, priority: int) -> None:
        if not self._lanes[priority]:
            del self._lanes[priority]
            self._keys.remove(-priority)

    def append(self, item_id: str) -> None:
        self._lane(self._priority_of(item_id)).append(item_id)
        self._len += 1

    def appendleft(self, item_id: str) -> None:
        self._lane(self._priority_of(item_id)).appendleft(item_id)
        self._len += 1

    def popleft(self) -> str:
        if not self._keys:
            raise IndexError("pop from an empty queue")
        priority = -self._keys[0]
        item_id = self._lanes[priority].popleft()
        self._len -= 1
        self._drop_if_empty(priority)
        return item_id

    def remove(self, item_id: str) -> None:
        own = self._priority_of(item_id)  # its lane first (a queued item's is)
        lanes = sorted(self._lanes.items(), key=lambda kv: kv[0] != own)
        for priority, lane in lanes:
            if item_id in lane:
                lane.remove(item_id)
                self._len -= 1
                self._drop_if_empty(priority)
                return
        raise ValueError(f"{item_id!r} is not queued")

    def __contains__(self, item_id: object) -> bool:
        return any(item_id in lane for lane in self._lanes.values())

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self._lanes[-k] for k in self._keys)

    def __getitem__(self, index: int) -> str:
        if index == 0 and self._keys:
            return self._lanes[-self._keys[0]][0]
        if index == -1 and self._keys:
            return self._lanes[-self._keys[-1]][-1]
        return list(self)[index]


class MemoryWorkQueue(DependencyIndex):
    """The in-memory :class:`WorkQueue` (the embedded default): lost with the hub.

    Args:
        keep_finished: how many completed/failed/dead items to keep for inspection
            (the oldest are forgotten beyond that; queued and assigned ones never are).
    """

    def __init__(self, *, keep_finished: int = 10_000) -> None:
        self.hub_id = ""
        """The hub named in each :class:`AttemptRecord` (the work service sets it)."""
        self._items: dict[str, WorkItem] = {}
        self._queues: dict[str, Lanes] = {}  # type -> its ready items (by priority)
        self._held: dict[str, str] = {}  # agent -> item id
        self._finished: deque[str] = deque()
        self._keep = keep_finished
        self._ids = itertools.count(1)
        self._keys: dict[tuple[str, str], str] = {}  # (type, key) -> the kept item's id
        self._dependents: dict[str, list[str]] = {}  # item id -> ids waiting on it
        self._blocked: dict[str, set[str]] = {}  # type -> ids waiting for dependencies
        self._settling: list[tuple[WorkItem, float]] | None = None  # a cascade under way
        self.settled: list[WorkItem] = []
        """Items cancelled because a dependency ended otherwise than completed, not yet
        reported (the work service takes them for its events)."""
        # --- ordering (issue 21) ---
        self.clock: Callable[[], float] = wall_clock
        """The wall clock delays are read against (Unix seconds; a test sets its own)."""
        self._delayed: dict[str, list[tuple[float, int, bool, str]]] = {}  # type -> heap
        self._delayed_ids: dict[str, dict[str, None]] = {}  # type -> ids in the heap
        self._delay_seq = itertools.count()
        # --- end ordering ---
        self.stamp: Callable[[float], float] = unix_time
        """The Unix time stored in an item for the ``now`` its methods get (the hub's
        trio clock; a store whose methods get Unix time already sets ``float``)."""

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
        """Whether an item of ``agent_type`` is queued and ready (its delay passed)."""
        self._promote(agent_type)
        return bool(self._queues.get(agent_type))

    def depth(self, agent_type: str) -> int:
        """How many items of ``agent_type`` are queued and ready (not delayed)."""
        self._promote(agent_type)
        return len(self._queues.get(agent_type, ()))

    # --- ordering (issue 21): priorities, delayed items ---

    def delayed(self, agent_type: str) -> int:
        """How many items of ``agent_type`` are queued but wait for their time."""
        self._promote(agent_type)
        return len(self._delayed_ids.get(agent_type, ()))

    def next_ready(self) -> float | None:
        """The earliest Unix time a delayed item (of any type) becomes ready, if any:
        always in the future (the items whose time came are made ready first, so a
        dispatch that sleeps until then never spins on an item no agent takes yet)."""
        best: float | None = None
        for agent_type in list(self._delayed):
            self._promote(agent_type)
        for agent_type, heap in self._delayed.items():
            ids = self._delayed_ids.get(agent_type, {})
            while heap and heap[0][3] not in ids:
                heapq.heappop(heap)  # dropped meanwhile (forgotten, cancelled)
            if heap and (best is None or heap[0][0] < best):
                best = heap[0][0]
        return best

    def _promote(self, agent_type: str) -> None:
        """Move the items of ``agent_type`` whose time came to the ready queue."""
        heap = self._delayed.get(agent_type)
        if not heap:
            return
        ids = self._delayed_ids[agent_type]
        now = self.clock()
        while heap and heap[0][0] <= now:
            _at, _seq, front, item_id = heapq.heappop(heap)
            if item_id not in ids:
                continue
            del ids[item_id]
            item = self._items.get(item_id)
            if item is None or item.status is not ItemStatus.QUEUED:
                continue
            item.not_before = None
            self._requeue(item, front=front)

    def _unqueue(self, item: WorkItem) -> None:
        """Take a queued item out of its ready queue or the delayed ones (its heap entry
        is dropped lazily)."""
        queue = self._queues.get(item.agent_type)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(item.id)
        self._delayed_ids.get(item.agent_type, {}).pop(item.id, None)

    def _place(self, item: WorkItem, *, front: bool) -> None:
        """Put a queued item where it waits: the delayed heap until ``not_before``, else
        its type's ready queue, in priority order (higher first), at the front or the
        back of its priority."""
        if item.not_before is not None and item.not_before > self.clock():
            entry = (item.not_before, next(self._delay_seq), front, item.id)
            heapq.heappush(self._delayed.setdefault(item.agent_type, []), entry)
            self._delayed_ids.setdefault(item.agent_type, {})[item.id] = None
            return
        item.not_before = None
        lanes = self._queues.get(item.agent_type)
        if lanes is None:
            lanes = self._queues[item.agent_type] = Lanes(self._priority_of)
        if front:
            lanes.appendleft(item.id)
        else:
            lanes.append(item.id)

    def _priority_of(self, item_id: str) -> int:
        item = self._items.get(item_id)
        return item.priority if item is not None else 0

    def retry_later(self, item_id: str, seconds: float) -> WorkItem | None:
        """Hold a queued item (one a failed attempt just put back) for ``seconds`` before
        it is delivered again: out of the ready queue, into the delayed ones, at the
        front of its priority when its time comes. The item, or ``None`` when it is not
        queued (nothing done). A queue without this method retries at once."""
        item = self._items.get(item_id)
        if item is None or item.status is not ItemStatus.QUEUED or seconds <= 0:
            return None
        self._unqueue(item)
        item.not_before = self.clock() + seconds
        self._place(item, front=True)
        return item

    # --- end ordering ---

    # transitions

    def submit(
        self,
        agent_type: str,
        payload: Any,
        *,
        max_deliveries: int,
        source: str,
        now: float,
        key: str | None = None,
        after: Iterable[str] = (),
        require: dict[str, str] | None = None,
        priority: int = 0,
        not_before: float | None = None,
    ) -> WorkItem:
        """Queue a new item; its id is ``<type>-<n>``. With ``key``, the kept item of
        ``agent_type`` submitted with that key, if any, is returned instead (nothing is
        created); with ``after``, the item waits until those items completed (see
        :meth:`_wait_for`). ``priority``: higher first; ``not_before``: a Unix time
        before which it is not handed out."""
        if key is not None:
            existing = self.keyed(agent_type, key)
            if existing is not None:
                return existing
        deps = list({d.id: d for d in map(self.get_dependency, after)}.values())
        after = [d.id for d in deps]
        item = WorkItem(
            id=f"{agent_type}-{next(self._ids)}",
            agent_type=agent_type,
            payload=payload,
            max_deliveries=max_deliveries,
            created_at=self.stamp(now),
            source=source,
            key=key,
            after=after,
            require=dict(require or {}),
            priority=priority,
            not_before=not_before,
        )
        self._items[item.id] = item
        if key is not None:
            self._keys[(agent_type, key)] = item.id
        if not self._wait_for(item, deps, now):
            self._place(item, front=False)
        return item

    def assign(
        self, agent_type: str, agent: str, now: float, labels: Mapping[str, str] | None = None
    ) -> WorkItem | None:
        """Give the oldest queued item of ``agent_type`` to ``agent`` (whose pool has
        ``labels``: the oldest one whose ``require`` they match)."""
        if agent in self._held:
            raise ControlError(f"agent {agent!r} already holds {self._held[agent]!r}")
        self._promote(agent_type)  # delayed items whose time came (issue 21)
        queue = self._queues.get(agent_type)
        if not queue:
            return None
        picked = _pick(queue, self._items, labels or {})
        if picked is None:
            return None
        item = self._items[picked]
        item.status = ItemStatus.ASSIGNED
        item.progress = None  # the new attempt reports its own (the checkpoint stays)
        item.attempt += 1
        item.deliveries += 1
        item.agent = agent
        item.started_at = self.stamp(now)
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
        at = self.stamp(now)
        item.history.append(AttemptRecord(item.attempt, agent, outcome, reason, at, self.hub_id))
        del item.history[:-_HISTORY]
        self._held.pop(agent, None)
        item.agent = None

    def _finish(self, item: WorkItem, status: ItemStatus, now: float) -> None:
        item.status = status
        item.finished_at = self.stamp(now)
        self._finished.append(item.id)
        while len(self._finished) > self._keep:
            old = self._finished.popleft()
            if self._items.get(old) is not None and self._items[old].status in FINAL:
                self._unkey(self._items.pop(old))
        self._settle_dependents(item, now)

    def _requeue(self, item: WorkItem, *, front: bool) -> None:
        item.status = ItemStatus.QUEUED
        # front: it waited its turn once already (the front of its priority)
        self._place(item, front=front)

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
        self._unkey(item)
        self._unqueue(item)
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
        item.not_before = None  # a retry by hand is not delayed
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
            self._unqueue(item)  # ready, delayed or waiting for its dependencies
            self._unblock(item)
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


def _pick(queue: Lanes, items: dict[str, WorkItem], labels: Mapping[str, str]) -> str | None:
    """Take the first id of ``queue`` (priority order) whose item's ``require`` matches
    ``labels``."""
    for n, item_id in enumerate(queue):
        if _matches(items[item_id].require, labels):
            if n == 0:
                return queue.popleft()
            queue.remove(item_id)
            return item_id
    return None
