"""Work for agents: per-type queues with fenced at-least-once delivery, as a hub service.

Two layers, so the decisions can be tested alone:

* :class:`MemoryWorkQueue` (behind the :class:`WorkQueue` protocol) holds the items and
  makes every decision synchronously: submit, assign, complete, fail, hand back,
  reclaim, dead-letter, retry. Every answer from an agent is *fenced*: it names the item
  and the attempt it was given, and anything but the current attempt of an item assigned
  to that agent is refused, so a late result from a reclaimed attempt never lands.
* :class:`WorkService` is the hub service (an actor) that feeds it: it learns from the
  bus which agents run, spoke ``HELLO`` and are idle, takes the agents' messages from the
  runtime, hands an item to an idle agent of its type (one at a time, no prefetch) and
  reclaims it the moment the agent exits or is found hung — liveness comes from the
  hub being the agents' parent, never from a timer counted from delivery.
"""

from __future__ import annotations

import enum
import itertools
import json
import logging
import math
import re
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import attrs
import trio

from ._child import AgentMessage
from ._errors import ConfigError, ControlError
from ._events import (
    ChildExited,
    ChildHung,
    ChildRunning,
    ChildStarting,
    Event,
    SupervisorStopping,
)
from ._notify import MAX_MESSAGE, NotifyMessage
from ._spec import _ID_RE

__all__ = [
    "ItemStatus",
    "MemoryWorkQueue",
    "Verdict",
    "WorkAssigned",
    "WorkCompleted",
    "WorkDeadLettered",
    "WorkFailed",
    "WorkItem",
    "WorkQueue",
    "WorkReclaimed",
    "WorkRefused",
    "WorkService",
    "WorkStore",
    "WorkSubmitted",
]

_log = logging.getLogger("hubvisor")

DEFAULT_MAX_DELIVERIES = 3
MAX_PAYLOAD = MAX_MESSAGE // 2  # bytes of JSON; an ASSIGN must fit in one record
MAX_CHECKPOINT = MAX_MESSAGE // 4  # bytes of JSON; payload + checkpoint fit in one ASSIGN
_HISTORY = 20  # attempts kept per item
DEFAULT_MAX_QUEUED = 10_000  # items queued per agent type before submit refuses
DEFAULT_HANDBACK_PAUSE = 1.0  # seconds an agent that handed an item back rests
_REFUSED_LOG_EVERY = 10.0  # seconds between two reports of one agent's refused messages
_LOST_IDS_SHOWN = 20  # item ids a memory-mode hub names when it stops with work left
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


class ItemStatus(enum.StrEnum):
    """Where a work item is."""

    QUEUED = "queued"
    ASSIGNED = "assigned"
    COMPLETED = "completed"
    FAILED = "failed"  # the agent said so, with retry=false: final
    DEAD = "dead"  # used up max_deliveries: in the dead-letter list


@attrs.frozen
class AttemptRecord:
    """How one attempt of an item ended."""

    attempt: int
    agent: str
    outcome: str  # completed, failed, handed_back, reclaimed:exit|hang|stop
    reason: str
    at: float
    hub: str = ""  # the hub whose agent made the attempt ("" when not known)


@attrs.define
class WorkItem:
    """One piece of work and everything that happened to it.

    ``attempt`` is the fence: it grows with every assignment, and only the agent holding
    the current attempt may answer. ``deliveries`` counts the attempts that count
    against ``max_deliveries`` (a hand-back on a graceful stop does not; a crash does).
    """

    id: str
    agent_type: str
    payload: Any
    max_deliveries: int
    created_at: float
    source: str = "api"
    status: ItemStatus = ItemStatus.QUEUED
    attempt: int = 0
    deliveries: int = 0
    agent: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: str | None = None
    progress: Any = None
    checkpoint: Any = None
    history: list[AttemptRecord] = attrs.field(factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (for the control socket and ``--json``)."""
        return {
            "id": self.id,
            "type": self.agent_type,
            "status": str(self.status),
            "attempt": self.attempt,
            "deliveries": self.deliveries,
            "max_deliveries": self.max_deliveries,
            "agent": self.agent,
            "payload": self.payload,
            "result": self.result,
            "error": self.error,
            "progress": self.progress,
            "source": self.source,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "history": [attrs.asdict(h) for h in self.history],
        }


@attrs.frozen
class Verdict:
    """The queue's answer to an agent's message: taken, or refused and why."""

    accepted: bool
    reason: str = ""
    item: WorkItem | None = None


# --------------------------------------------------------------------------------------
# Events


@attrs.frozen(kw_only=True)
class WorkSubmitted(Event):
    """A work item was queued (``child_id``: the submitting agent, or ``""``)."""

    item_id: str
    agent_type: str
    kind: str = attrs.field(init=False, default="work_submitted")


@attrs.frozen(kw_only=True)
class WorkAssigned(Event):
    """An item was handed to agent ``child_id`` (attempt ``attempt``)."""

    item_id: str
    attempt: int
    kind: str = attrs.field(init=False, default="work_assigned")


@attrs.frozen(kw_only=True)
class WorkCompleted(Event):
    """Agent ``child_id`` completed an item."""

    item_id: str
    attempt: int
    kind: str = attrs.field(init=False, default="work_completed")


@attrs.frozen(kw_only=True)
class WorkFailed(Event):
    """Agent ``child_id`` reported a failure; ``final``: no retry (status failed)."""

    item_id: str
    attempt: int
    error: str
    final: bool
    kind: str = attrs.field(init=False, default="work_failed")


@attrs.frozen(kw_only=True)
class WorkReclaimed(Event):
    """An item went back to the queue: its agent exited, hung, was stopped, or handed it
    back (``reason``: ``exit``, ``hang``, ``stop``, ``handback``, ``unreachable``)."""

    item_id: str
    attempt: int
    reason: str
    kind: str = attrs.field(init=False, default="work_reclaimed")


@attrs.frozen(kw_only=True)
class WorkDeadLettered(Event):
    """An item used up its deliveries and moved to the dead-letter list."""

    item_id: str
    attempt: int
    reason: str
    kind: str = attrs.field(init=False, default="work_dead")


@attrs.frozen(kw_only=True)
class WorkRefused(Event):
    """An agent's answer was refused (a stale attempt, or an item it does not hold).

    One agent's refusals are reported at most once per 10 s: ``repeats`` is how many
    refusals of that agent this event stands for (this one and those not reported since
    the last event), so a flood of stale answers cannot flood the bus or the log.
    """

    item_id: str
    attempt: int
    reason: str
    repeats: int = 1
    kind: str = attrs.field(init=False, default="work_refused")


# --------------------------------------------------------------------------------------
# The queue


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
            if self._items.get(old) is not None and self._items[old].status in (
                ItemStatus.COMPLETED,
                ItemStatus.FAILED,
                ItemStatus.DEAD,
            ):
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


@runtime_checkable
class WorkStore(Protocol):
    """A :class:`WorkQueue` whose record lives in a shared store (Redis Streams): it runs
    its own actor beside the service and answers the queries that need the store."""

    async def run(self, service: WorkService, *, task_status: trio.TaskStatus[None]) -> None:
        """Keep the store in step until cancelled."""
        ...

    def poke(self) -> None:
        """Idle agents appeared: look for work soon."""
        ...

    async def stored(self, item_id: str, timeout: float) -> bool:
        """Wait until a submitted item is durable (False after ``timeout``)."""
        ...

    async def fetch(self, item_id: str) -> WorkItem:
        """The item, wherever it is."""
        ...

    async def retry_any(self, item_id: str) -> WorkItem:
        """Queue a dead or failed item again, whichever hub held it."""
        ...

    async def cluster(self) -> dict[str, Any]:
        """Every hub sharing the store, and the queues per type."""
        ...


# --------------------------------------------------------------------------------------
# The service


@attrs.define
class _Agent:
    """What the service knows of one live agent incarnation."""

    agent_type: str | None
    supervisor: str
    pid: int
    hello: bool = False
    running: bool = False
    gone: bool = False  # hung or being stopped: gets nothing new
    resting: bool = False  # handed an item back: eligible again after a short pause
    retiring: bool = False  # chosen to be stopped by the autoscaler: gets nothing new

    @property
    def idle(self) -> bool:
        return (
            self.hello and self.running and not self.gone and not self.resting and not self.retiring
        )


@attrs.define
class _Summary:
    """Counts repeated events per key and says when one is due to be reported: the first
    at once, then at most one per ``every`` seconds, carrying the count since the last."""

    every: float
    _last: dict[str, float] = attrs.field(factory=dict)
    _count: dict[str, int] = attrs.field(factory=dict)

    def due(self, key: str, now: float) -> int:
        """Count one for ``key``; the number to report now, or 0 (not yet)."""
        count = self._count.get(key, 0) + 1
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._count[key] = count
            return 0
        self._last[key] = now
        self._count[key] = 0
        return count


_SERVICE_KINDS = (
    "starting",
    "running",
    "hung",
    "exited",
    "supervisor_stopping",
    "supervisor_stopped",
)


class WorkService:
    """The hub service that hands work to agents and never loses it.

    Args:
        queue: the backend (default :class:`MemoryWorkQueue`).
        max_deliveries: deliveries an item gets by default before it is dead-lettered
            (crash- and hang-caused deliveries count; a hand-back does not).
        max_queued: the most items of one agent type that may wait for an agent; a
            submit beyond it is refused (``None``: no cap).
        handback_pause: seconds an agent that handed an item back waits before it is
            given work again (another idle agent gets the item first; the agent is not
            given up on).

    Submit with :meth:`submit` (the hub API and the CLI) or from an agent (``SUBMIT=``).
    Every path is checked the same way: a JSON payload (no NaN or Infinity, no lone
    surrogate), of an agent type the hub's tree runs or may grow (with a shared store,
    any type: another hub may run it), under the type's ``max_queued``.
    """

    name = "work"
    essential = True
    """The hub cannot run without it: if it keeps failing, the hub stops (see
    :class:`~supervisor.Service`)."""

    def __init__(
        self,
        queue: WorkQueue | None = None,
        *,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        max_queued: int | None = DEFAULT_MAX_QUEUED,
        handback_pause: float = DEFAULT_HANDBACK_PAUSE,
    ) -> None:
        if (
            not isinstance(max_deliveries, int)
            or isinstance(max_deliveries, bool)
            or (max_deliveries < 1)
        ):
            raise ConfigError(
                f"WorkService(max_deliveries=...) must be an int >= 1 (got {max_deliveries!r})"
            )
        if max_queued is not None and (
            not isinstance(max_queued, int) or isinstance(max_queued, bool) or max_queued < 1
        ):
            raise ConfigError(
                f"WorkService(max_queued=...) must be an int >= 1 or None (got {max_queued!r}); "
                "e.g. max_queued=10_000"
            )
        if (
            not isinstance(handback_pause, int | float)
            or isinstance(handback_pause, bool)
            or not 0 <= handback_pause < math.inf
        ):
            raise ConfigError(
                f"WorkService(handback_pause=...) must be seconds >= 0 (got {handback_pause!r})"
            )
        self.max_queued = max_queued
        self.handback_pause = float(handback_pause)
        self.queue: WorkQueue = queue if queue is not None else MemoryWorkQueue()
        self._store = self.queue if isinstance(self.queue, WorkStore) else None
        self.max_deliveries = max_deliveries
        self.refused = 0
        """Agent answers refused (stale attempts, items not held, bad payloads)."""
        self.acks_dropped = 0
        """ACKs of refusals an agent had no room for (it does not read its channel)."""
        self._agents: dict[str, _Agent] = {}
        self._idle: dict[str, dict[str, None]] = {}  # type -> idle agents, oldest first
        self._send, self._inbox = trio.open_memory_channel[Event | AgentMessage | None](math.inf)
        self._hub: Any = None
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._notes: dict[str, str | None] = {}  # assignments the registry has yet to hear
        self._feed: trio.MemorySendChannel[Event | AgentMessage | None] | None = None
        self._progress: dict[tuple[str, int], AgentMessage] = {}  # latest unread, per agent
        self.progress_coalesced = 0
        """PROGRESS records superseded by a later one before the service read them."""
        self._refusals = _Summary(_REFUSED_LOG_EVERY)
        self._types: Any = None  # () -> the agent types the hub's tree may run
        self.watched: set[str] = set()
        """Agent types someone asked :meth:`waiting` about (an autoscaling pool's), so a
        store counts their waiting items even while no agent of theirs runs."""

    # ----------------------------------------------------------------------------------
    # API (any task)

    def submit(
        self,
        agent_type: str,
        payload: Any,
        *,
        max_deliveries: int | None = None,
        source: str = "api",
    ) -> WorkItem:
        """Queue an item for agents of ``agent_type``; returns it (``.id``).

        Raises:
            ControlError: a bad type, a payload that is not JSON or is over
                :data:`MAX_PAYLOAD` bytes, or a bad ``max_deliveries``.
        """
        if not isinstance(agent_type, str) or not _ID_RE.match(agent_type):
            raise ControlError(
                f"work needs an agent type: letters, digits, '_', '.' or '-', e.g. 'worker' "
                f"(got {agent_type!r:.80})"
            )
        _check_payload(payload)
        deliveries = self.max_deliveries if max_deliveries is None else max_deliveries
        if not isinstance(deliveries, int) or isinstance(deliveries, bool) or deliveries < 1:
            raise ControlError(f"max_deliveries must be an int >= 1 (got {deliveries!r})")
        if self.store is None and self._types is not None:
            # Alone, an item of a type the tree never runs would wait forever. (With a
            # shared store another hub may run it: it waits there, durable.)
            types = set(self._types())
            if agent_type not in types:
                raise ControlError(
                    f"no agents of type {agent_type!r} in the hub, so the item would wait "
                    f"forever; the types are {', '.join(sorted(types)) or '(none)'}"
                )
        depth = getattr(self.queue, "depth", None)
        if self.max_queued is not None and depth is not None:
            waiting = int(depth(agent_type))
            if waiting >= self.max_queued:
                raise ControlError(
                    f"the queue of {agent_type!r} is full: {waiting} items wait, the cap is "
                    f"WorkService(max_queued={self.max_queued}); retry when agents have "
                    "taken some, add agents, or raise max_queued"
                )
        item = self.queue.submit(
            agent_type, payload, max_deliveries=deliveries, source=source, now=_now()
        )
        self._publish(WorkSubmitted, "", item_id=item.id, agent_type=agent_type)
        self._poke()
        return item

    def serve_types(self, types: Any) -> None:
        """Tell the service which agent types its hub's tree runs or may grow: ``types()``
        returns them (the hub calls this); :meth:`submit` refuses the others."""
        self._types = types

    def retry(self, item_id: str) -> WorkItem:
        """Queue a dead or failed item again (``hubvisor work retry ID``)."""
        item = self.queue.retry(item_id, _now())
        self._poke()
        return item

    def get(self, item_id: str) -> WorkItem:
        """The item with ``item_id``."""
        return self.queue.get(item_id)

    def items(self, status: str | None = None) -> list[WorkItem]:
        """Every item kept (of ``status`` only, if given), oldest first."""
        return [i for i in self.queue.items() if status is None or i.status == status]

    def assignment(self, agent_id: str) -> str | None:
        """The id of the item ``agent_id`` holds, if any."""
        item = self.queue.held_by(agent_id)
        return item.id if item is not None else None

    @property
    def store(self) -> WorkStore | None:
        """The shared store behind the queue (None for the in-memory queue)."""
        return self._store

    async def stored(self, item_id: str, timeout: float = 5.0) -> bool:
        """Whether a submitted item is durable (at once for the in-memory queue)."""
        return True if self.store is None else await self.store.stored(item_id, timeout)

    async def fetch(self, item_id: str) -> WorkItem:
        """The item with ``item_id``, from the shared store if this hub does not hold it."""
        return self.get(item_id) if self.store is None else await self.store.fetch(item_id)

    async def retry_any(self, item_id: str) -> WorkItem:
        """:meth:`retry`, for an item any hub sharing the store held."""
        if self.store is None:
            return self.retry(item_id)
        item = await self.store.retry_any(item_id)
        self._poke()
        return item

    async def cluster(self) -> dict[str, Any]:
        """Every hub sharing the store and the queues per type (``status --cluster``)."""
        if self.store is None:
            raise ControlError(
                "this hub keeps its work in memory, alone; start it with --redis URL to "
                "share durable queues with other hubs"
            )
        return await self.store.cluster()

    # What a store asks of the service (called from the service's own tasks).

    @property
    def hub_id(self) -> str:
        """The hub's id (the store's consumer name)."""
        return str(self._hub.context.hub_id) if self._hub is not None else "hub"

    def agent_types(self) -> set[str]:
        """The agent types this hub runs now."""
        return {a.agent_type for a in self._agents.values() if a.agent_type}

    def agent_counts(self) -> dict[str, int]:
        """Live agents per type."""
        counts: dict[str, int] = {}
        for agent in self._agents.values():
            if agent.agent_type:
                counts[agent.agent_type] = counts.get(agent.agent_type, 0) + 1
        return counts

    def waiting(self, agent_type: str) -> int:
        """Items of ``agent_type`` queued for an agent (with a shared store: those this hub
        holds plus those waiting in the store, as last seen)."""
        self.watched.add(agent_type)
        depth = getattr(self.queue, "depth", None)
        return int(depth(agent_type)) if depth is not None else 0

    def idle_among(self, agent_type: str, agent_ids: Iterable[str]) -> int:
        """How many of ``agent_ids`` are idle agents of ``agent_type`` (ready, no item)."""
        idle = self._idle.get(agent_type, {})
        return sum(1 for agent_id in agent_ids if agent_id in idle)

    def idle_members(self, agent_type: str, agent_ids: Iterable[str]) -> list[str]:
        """Those of ``agent_ids`` that are idle agents of ``agent_type``, in that order."""
        idle = self._idle.get(agent_type, {})
        return [agent_id for agent_id in agent_ids if agent_id in idle]

    def retire(self, agent_ids: Iterable[str]) -> list[str]:
        """Take the idle ones of ``agent_ids`` out of dispatch, to be stopped: no item
        goes to them from now on. Returns those (an agent that got an item meanwhile is
        left alone). :meth:`unretire` undoes it."""
        taken = []
        for agent_id in agent_ids:
            agent = self._agents.get(agent_id)
            if agent is None or agent.agent_type is None:
                continue
            if agent_id in self._idle.get(agent.agent_type, {}) and agent.idle:
                agent.retiring = True
                self._not_idle(agent_id, agent)
                taken.append(agent_id)
        return taken

    def unretire(self, agent_id: str) -> None:
        """Put an agent :meth:`retire` took back in dispatch (its stop did not happen)."""
        agent = self._agents.get(agent_id)
        if agent is not None and agent.retiring:
            agent.retiring = False
            self._set_idle(agent_id)
            self._poke()

    def idle_counts(self) -> dict[str, int]:
        """Idle agents per type (what the store may take for)."""
        return {t: len(idle) for t, idle in self._idle.items() if idle}

    def poke(self) -> None:
        """New items were taken from the store: dispatch."""
        self._poke()

    def lost(self, item: WorkItem, reason: str) -> None:
        """The store gave ``item`` to another hub (this one's lease ran out)."""
        agent_id = item.agent or ""
        if agent_id:
            self._notes[agent_id] = None
        self._publish(
            WorkRefused,
            agent_id,
            agent=self._agents.get(agent_id),
            item_id=item.id,
            attempt=item.attempt,
            reason=reason,
        )
        self._poke()

    def dead_elsewhere(self, item: WorkItem) -> None:
        """Taking ``item`` from a hub that lost its lease used its last delivery."""
        self._publish(
            WorkDeadLettered, "", item_id=item.id, attempt=item.attempt, reason=item.error or ""
        )

    # ----------------------------------------------------------------------------------
    # The actor

    async def run(self, hub: Any, *, task_status: trio.TaskStatus[None]) -> None:
        """Serve as a hub service (see :class:`~supervisor.Service`).

        A run that fails leaves the bus subscription and the agents' sink in place, so
        what happens until the hub restarts it waits in the inbox instead of being lost;
        the run that ends with the hub (cancelled) removes both.
        """
        self._hub = hub
        if isinstance(self.queue, MemoryWorkQueue):
            self.queue.hub_id = self.hub_id
        if self._feed is None:
            self._feed = self._send.clone()
            hub.bus.attach(self._feed, _SERVICE_KINDS)
        hub.context.agent_sink = self._sink
        for agent_id, agent in list(self._agents.items()):
            if agent.resting:  # its pause ended with the failed run
                agent.resting = False
                self._set_idle(agent_id)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.store is not None:
                    await nursery.start(self.store.run, self)
                task_status.started()
                nursery.start_soon(self._dispatcher)
                self._poke()
                async for msg in self._inbox:
                    if isinstance(msg, AgentMessage):
                        if msg.kind == "progress":  # the latest one of this agent's
                            msg = self._progress.pop((msg.agent_id, msg.pid), msg)
                        self._on_message(msg)
                    elif msg is not None:
                        self._on_event(msg)
                    self._poke()
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled: the hub is stopping
                self._detach(hub)
                self._report_unfinished()
            raise
        finally:
            self._nursery = None

    def _detach(self, hub: Any) -> None:
        hub.context.agent_sink = None
        if self._feed is not None:
            self._feed.close()  # the bus forgets a closed subscription: nothing piles up
            self._feed = None

    def _sink(self, msg: AgentMessage) -> None:
        """Take an agent's message (runtime side): a PROGRESS record replaces the one of
        the same agent still unread, so a fast reporter queues one, never thousands."""
        if msg.kind == "progress":
            key = (msg.agent_id, msg.pid)
            if key in self._progress:
                self._progress[key] = msg
                self.progress_coalesced += 1
                return
            self._progress[key] = msg
        self._send.send_nowait(msg)

    def _report_unfinished(self) -> None:
        """A memory-mode hub is stopping: say which items are lost with it."""
        if self.store is not None:
            return
        left = [
            i.id for i in self.queue.items() if i.status in (ItemStatus.QUEUED, ItemStatus.ASSIGNED)
        ]
        if left:
            shown = ", ".join(left[:_LOST_IDS_SHOWN])
            more = f" and {len(left) - _LOST_IDS_SHOWN} more" if len(left) > _LOST_IDS_SHOWN else ""
            _log.warning(
                "hub stopping with %d work item%s not done, kept in memory only and lost "
                "with the hub: %s%s (give the hub --redis URL for durable queues)",
                len(left),
                "" if len(left) == 1 else "s",
                shown,
                more,
            )

    def _poke(self) -> None:
        self._wake.set()

    async def _dispatcher(self) -> None:
        """Hand queued items to idle agents whenever either may have changed."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            for agent_type, idle in list(self._idle.items()):
                while idle and self.queue.has_work(agent_type):
                    agent_id = next(iter(idle))
                    del idle[agent_id]
                    self._assign(agent_type, agent_id)
            self._tell_registry()

    def _tell_registry(self) -> None:
        if self._notes:
            self._hub.registry.note_assignments(self._notes)
            self._notes = {}

    def _actor_of(self, agent_id: str) -> Any:
        """The live actor of the incarnation the service knows as ``agent_id``, if it is
        idle and not being stopped (an id is reused by the next incarnation)."""
        agent = self._agents.get(agent_id)
        actor = self._hub.context.actors.get(agent_id)
        if agent is None or not agent.idle or actor is None or actor.pid != agent.pid:
            return None
        return None if actor.stopping else actor

    def _assign(self, agent_type: str, agent_id: str) -> None:
        actor = self._actor_of(agent_id)
        if actor is None:
            return  # exited, replaced or being stopped: its exit event will come
        item = self.queue.assign(agent_type, agent_id, _now())
        if item is None:
            return
        message = _assign_message(item)
        if len(message.value or "") + 7 > MAX_MESSAGE and item.checkpoint is not None:
            _log.warning("work %s: its checkpoint is too big to send; starting over", item.id)
            item.checkpoint = None
            message = _assign_message(item)
        agent = self._agents[agent_id]
        self._publish(WorkAssigned, agent_id, agent=agent, item_id=item.id, attempt=item.attempt)
        self._notes[agent_id] = item.id
        sent = actor.send_nowait(message, verify=False)
        if sent is None and self._nursery is not None:  # a channel that can only wait
            self._nursery.start_soon(self._send_slowly, actor, agent_id, item.attempt, message)
        elif not sent:
            self._unreachable(agent_id, agent)

    async def _send_slowly(
        self, actor: Any, agent_id: str, attempt: int, message: NotifyMessage
    ) -> None:
        if not await actor.send(message, verify=False):
            held = self.queue.held_by(agent_id)
            if held is not None and held.attempt == attempt:
                self._unreachable(agent_id, self._agents.get(agent_id))
                self._poke()

    def _unreachable(self, agent_id: str, agent: _Agent | None) -> None:
        # It could not take it (gone, or its queue is full: it does not read): the item
        # goes back without spending a delivery, and this incarnation gets nothing more.
        if agent is not None:
            agent.gone = True
        self._reclaim(agent_id, "unreachable")

    def _reclaim(
        self, agent_id: str, reason: Literal["exit", "hang", "stop", "unreachable"]
    ) -> None:
        held = self.queue.held_by(agent_id)
        if held is None:
            return
        attempt = held.attempt
        verdict = self.queue.reclaim(agent_id, reason, _now())
        if not verdict.accepted or verdict.item is None:  # pragma: no cover - held above
            return
        item = verdict.item
        agent = self._agents.get(agent_id)
        self._notes[agent_id] = None
        if item.status is ItemStatus.DEAD:
            self._publish(
                WorkDeadLettered,
                agent_id,
                agent=agent,
                item_id=item.id,
                attempt=attempt,
                reason=item.error or reason,
            )
            _log.warning("work %s dead-lettered: %s", item.id, item.error)
        else:
            self._publish(
                WorkReclaimed,
                agent_id,
                agent=agent,
                item_id=item.id,
                attempt=attempt,
                reason=reason,
            )

    def _set_idle(self, agent_id: str) -> None:
        agent = self._agents.get(agent_id)
        if agent is None or not agent.idle or agent.agent_type is None:
            return
        if self._stopping(agent_id):
            agent.gone = True  # its supervisor is stopping it alone (a sibling's restart...)
            return
        if self.queue.held_by(agent_id) is None:
            idle = self._idle.setdefault(agent.agent_type, {})
            if agent_id not in idle:
                idle[agent_id] = None
                if self.store is not None and not self.queue.has_work(agent.agent_type):
                    self.store.poke()

    def _stopping(self, agent_id: str) -> bool:
        agent = self._agents.get(agent_id)
        actor = self._hub.context.actors.get(agent_id)
        return actor is not None and agent is not None and actor.pid == agent.pid and actor.stopping

    def _not_idle(self, agent_id: str, agent: _Agent | None) -> None:
        if agent is not None and agent.agent_type is not None:
            self._idle.get(agent.agent_type, {}).pop(agent_id, None)

    def _on_event(self, event: Event) -> None:
        match event:
            case ChildStarting():
                old = self._agents.get(event.child_id)
                self._not_idle(event.child_id, old)
                self._agents[event.child_id] = _Agent(event.agent_type, event.supervisor, event.pid)
            case ChildRunning():
                agent = self._live(event.child_id, event.pid)
                if agent is not None:
                    agent.running = True
                    self._set_idle(event.child_id)
            case ChildHung():
                agent = self._live(event.child_id, event.pid)
                if agent is not None:
                    agent.gone = True
                    self._not_idle(event.child_id, agent)
                    self._reclaim(event.child_id, "hang")
            case ChildExited():
                agent = self._live(event.child_id, event.pid)
                if agent is not None:
                    self._not_idle(event.child_id, agent)
                    del self._agents[event.child_id]
                    self._reclaim(event.child_id, "stop" if event.expected else "exit")
            case SupervisorStopping():
                for agent_id, agent in self._agents.items():
                    if _under(agent.supervisor, event.supervisor):
                        agent.gone = True
                        self._not_idle(agent_id, agent)
            case _:
                pass

    def _live(self, agent_id: str, pid: int) -> _Agent | None:
        agent = self._agents.get(agent_id)
        return agent if agent is not None and agent.pid == pid else None

    def _on_message(self, msg: AgentMessage) -> None:
        agent = self._live(msg.agent_id, msg.pid)
        if agent is None:
            return  # an incarnation already gone: whatever it held was reclaimed
        if msg.kind == "hello":
            agent.hello = True
            self._set_idle(msg.agent_id)
            return
        # Validated (and decoded) by the message table.
        body = getattr(msg.value, "data", None) or json.loads(msg.value or "{}")
        if msg.kind == "submit":
            self._agent_submit(msg, body)
            return
        item_id, attempt, now = body["item"], body["attempt"], _now()
        if msg.kind == "progress":
            checkpoint = body.get("checkpoint")
            if checkpoint is not None and len(json.dumps(checkpoint)) > MAX_CHECKPOINT:
                repeats = self._refusals.due(f"{msg.agent_id} checkpoint", now)
                if repeats:  # one line per agent per interval, however fast it reports
                    _log.warning(
                        "%s: checkpoint for %s over %d bytes of JSON, not kept%s",
                        msg.agent_id,
                        item_id,
                        MAX_CHECKPOINT,
                        _repeats(repeats),
                    )
                checkpoint = None
            verdict = self.queue.progress(
                item_id, attempt, msg.agent_id, body.get("progress"), checkpoint
            )
            if not verdict.accepted:
                self._refuse(msg, item_id, attempt, verdict.reason)
            return
        if msg.kind == "result":
            verdict = self.queue.complete(item_id, attempt, msg.agent_id, body.get("result"), now)
        elif msg.kind == "fail":
            retry = body.get("retry", True) is not False
            verdict = self.queue.fail(item_id, attempt, msg.agent_id, body["error"], retry, now)
        else:  # handback
            verdict = self.queue.hand_back(item_id, attempt, msg.agent_id, now)
        if verdict.accepted and verdict.item is not None:
            self._answered(msg, verdict.item, attempt)
        else:
            self._refuse(msg, item_id, attempt, verdict.reason)
        if not verdict.accepted:  # an accepted answer needs no reply
            self._ack(msg.agent_id, item_id, attempt, verdict)
        if msg.kind == "handback" and verdict.accepted:
            # It gave work back (it cannot do it now; one that is stopping is excluded by
            # its actor's stopping mark): it stays eligible, after a pause in which
            # another idle agent gets the item first (no hot loop of ASSIGN and HANDBACK).
            self._rest(msg.agent_id, agent)
        else:
            self._set_idle(msg.agent_id)

    def _rest(self, agent_id: str, agent: _Agent) -> None:
        self._not_idle(agent_id, agent)
        if self.handback_pause <= 0 or self._nursery is None:
            self._set_idle(agent_id)
            return
        agent.resting = True
        self._nursery.start_soon(self._wake_after_rest, agent_id, agent)

    async def _wake_after_rest(self, agent_id: str, agent: _Agent) -> None:
        await trio.sleep(self.handback_pause)
        if self._agents.get(agent_id) is agent and agent.resting:
            agent.resting = False
            self._set_idle(agent_id)
            self._poke()

    def _answered(self, msg: AgentMessage, item: WorkItem, attempt: int) -> None:
        self._notes[msg.agent_id] = None
        agent = self._agents.get(msg.agent_id)
        if msg.kind == "result":
            self._publish(
                WorkCompleted, msg.agent_id, agent=agent, item_id=item.id, attempt=attempt
            )
        elif msg.kind == "handback":
            self._publish(
                WorkReclaimed,
                msg.agent_id,
                agent=agent,
                item_id=item.id,
                attempt=attempt,
                reason="handback",
            )
        elif item.status is ItemStatus.DEAD:
            self._publish(
                WorkDeadLettered,
                msg.agent_id,
                agent=agent,
                item_id=item.id,
                attempt=attempt,
                reason=item.error or "failed",
            )
        else:
            self._publish(
                WorkFailed,
                msg.agent_id,
                agent=agent,
                item_id=item.id,
                attempt=attempt,
                error=item.error or "",
                final=item.status is ItemStatus.FAILED,
            )

    def _refuse(self, msg: AgentMessage, item_id: str, attempt: int, reason: str) -> None:
        self.refused += 1
        repeats = self._refusals.due(msg.agent_id, _now())
        if not repeats:  # reported within the last interval: counted, reported with the next
            return
        self._publish(
            WorkRefused,
            msg.agent_id,
            agent=self._agents.get(msg.agent_id),
            item_id=item_id,
            attempt=attempt,
            reason=reason,
            repeats=repeats,
        )
        _log.warning(
            "%s: refused %s for %s: %s%s",
            msg.agent_id,
            msg.kind.upper(),
            item_id,
            reason,
            _repeats(repeats),
        )

    def _ack(self, agent_id: str, item_id: str, attempt: int, verdict: Verdict) -> None:
        actor = self._hub.context.actors.get(agent_id)
        if actor is None:
            return
        body = {"item": item_id, "attempt": attempt, "accepted": verdict.accepted}
        if verdict.reason:
            body["reason"] = verdict.reason[:200]
        # Never waits: an agent that does not read its channel loses its ACKs (counted),
        # it cannot stall the service for the others.
        if not actor.send_nowait(NotifyMessage("ack", json.dumps(body, separators=(",", ":")))):
            self.acks_dropped += 1

    def _agent_submit(self, msg: AgentMessage, body: Mapping[str, Any]) -> None:
        try:
            self.submit(
                body["type"],
                body.get("payload"),
                max_deliveries=body.get("max_deliveries"),
                source=f"agent:{msg.agent_id}",
            )
        except ControlError as exc:
            self.refused += 1
            repeats = self._refusals.due(f"{msg.agent_id} SUBMIT", _now())
            if repeats:
                _log.warning("%s: refused SUBMIT: %s%s", msg.agent_id, exc, _repeats(repeats))

    def _publish(
        self, cls: Any, child_id: str, *, agent: _Agent | None = None, **fields: Any
    ) -> None:
        if self._hub is None:
            return
        supervisor = agent.supervisor if agent is not None else ""
        self._hub.bus.publish(cls(at=_now(), supervisor=supervisor, child_id=child_id, **fields))


def _repeats(count: int) -> str:
    if count <= 1:
        return ""
    return f" ({count} times since the last report; one report per {_REFUSED_LOG_EVERY:g}s at most)"


def _check_payload(payload: Any) -> None:
    """Refuse a payload that is not strict JSON or is too big (see :meth:`WorkService.submit`).

    A lone surrogate (e.g. a file name decoded with ``surrogateescape``) is refused, not
    replaced: the caller holds the data and can fix it (``os.fsencode`` it, or send the
    bytes as hex), whereas replacing it would hand agents a name that does not exist.
    Agents' records are made safe where the hub parses them instead (see
    :func:`supervisor._notify.safe_text`): refusing those would lose their answer.
    """
    try:
        text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        if "Out of range float" in str(exc):
            raise ControlError(
                f"the payload holds NaN or Infinity, which JSON does not allow; send null, a "
                f"string or a finite number (got {payload!r:.80})"
            ) from None
        raise ControlError(
            f"the payload must be JSON ({type(exc).__name__}: {exc}); got {payload!r:.80}"
        ) from None
    except (TypeError, RecursionError) as exc:
        raise ControlError(
            f"the payload must be JSON ({type(exc).__name__}: {exc}); got {payload!r:.80}"
        ) from None
    if len(text) > MAX_PAYLOAD:
        raise ControlError(
            f"the payload is {len(text)} bytes of JSON, over {MAX_PAYLOAD}; put large inputs "
            "in a file or store and pass their name"
        )
    if "\\u" in text:
        bad = _SURROGATE_RE.search(json.dumps(payload, ensure_ascii=False))
        if bad is not None:
            raise ControlError(
                f"the payload holds a lone surrogate ({bad.group()!r}), which is not UTF-8 "
                "(a file name decoded with surrogateescape?); encode such names, e.g. "
                "os.fsencode(name).hex(), or decode them with errors='replace'"
            )


def _assign_message(item: WorkItem) -> NotifyMessage:
    body = {
        "item": item.id,
        "attempt": item.attempt,
        "type": item.agent_type,
        "payload": item.payload,
        "checkpoint": item.checkpoint,
    }
    return NotifyMessage("assign", json.dumps(body, separators=(",", ":")))


def _used_up(item: WorkItem) -> str:
    """Why an item is dead, from its history: e.g. ``used all 3 deliveries: failed (disk
    full), hang, exit``."""
    spent = [
        f"failed ({h.reason})" if h.outcome == "failed" else h.reason
        for h in item.history
        if h.outcome == "failed" or h.outcome in ("reclaimed:exit", "reclaimed:hang")
    ]
    return f"used all {item.max_deliveries} deliveries: {', '.join(spent[-item.max_deliveries :])}"


def _under(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(ancestor + "/")


def _now() -> float:
    try:
        return trio.current_time()
    except RuntimeError:  # outside trio (a test of the queue alone)
        return 0.0
