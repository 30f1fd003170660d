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

import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._context import AgentMessage
from .._errors import ConfigError, ControlError
from .._events import Event
from .._spec import _ID_RE
from ._controls import DEFAULT_CANCEL_GRACE, Controls
from ._deps import blocked_count
from ._dispatch import Dispatch
from ._item import (
    DEFAULT_MAX_DELIVERIES,
    FINAL,
    ItemStatus,
    WorkDeadLettered,
    WorkDependencyEnded,
    WorkItem,
    WorkSubmitted,
    _check_payload,
    _now,
    check_controls,
    check_priority,
    not_before_of,
)
from ._ordering import DEFAULT_RETRY_BACKOFF, RETRY_DELAYS, BackoffPolicy, RetryDelays
from ._queue import MemoryWorkQueue, WorkQueue
from ._store import WorkStore
from ._waiters import DEFAULT_MAX_WAITERS, Waiters

if TYPE_CHECKING:
    from .._hub import Hub

_log = logging.getLogger("hubvisor")

DEFAULT_MAX_QUEUED = 10_000  # items queued per agent type before submit refuses
DEFAULT_HANDBACK_PAUSE = 1.0  # seconds an agent that handed an item back rests
_LOST_IDS_SHOWN = 20  # item ids a memory-mode hub names when it stops with work left


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
        max_waiters: the most :meth:`wait` calls under way at once (one per item waited
            for, ``hubvisor work wait`` too); one more is refused, naming the cap.
        retry_backoff: how long a failed attempt's item waits before it is delivered
            again (a FAIL with retry, an exit, a hang; never a stop or a hand-back): a
            :mod:`strategies` backoff policy (``delay(n)`` for the item's n-th failed
            delivery), or a mapping agent type -> policy (per pool; ``"*"``: the
            others), or ``None``: at once. Default: 1 s doubling to 60 s, 20 % jitter. A
            FAIL's ``retry_after`` seconds overrides it.
        time_limits: the default time limit per attempt, in seconds, of each agent
            type's items (its pool's), e.g. ``{"worker": 600}``; an item's own
            ``time_limit`` wins. No entry: no limit.
        cancel_grace: seconds an agent told ``CANCEL`` (a cancelled or timed-out item)
            has to give the item up before it is stopped.

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
        max_waiters: int = DEFAULT_MAX_WAITERS,
        retry_backoff: BackoffPolicy | Mapping[str, BackoffPolicy] | None = DEFAULT_RETRY_BACKOFF,
        time_limits: Mapping[str, float] | None = None,
        cancel_grace: float = DEFAULT_CANCEL_GRACE,
    ) -> None:
        _check_options(max_deliveries, max_queued, handback_pause, max_waiters)
        self.max_queued = max_queued
        self.handback_pause = float(handback_pause)
        self.queue: WorkQueue = queue if queue is not None else MemoryWorkQueue()
        self._store = self.queue if isinstance(self.queue, WorkStore) else None
        self.max_deliveries = max_deliveries
        self._waiters = Waiters(max_waiters)
        self._dispatch = Dispatch(
            self.queue, self._store, handback_pause=self.handback_pause, submit=self.submit
        )
        RETRY_DELAYS[self._dispatch] = RetryDelays(retry_backoff)
        self._controls = Controls(self._dispatch, time_limits, cancel_grace)
        self._dispatch.changed = self._changed
        self._send, self._inbox = trio.open_memory_channel[Event | AgentMessage | None](math.inf)
        self._hub: Hub | None = None
        self._feed: trio.MemorySendChannel[Event | AgentMessage | None] | None = None
        self._progress: dict[tuple[str, int], AgentMessage] = {}  # latest unread, per agent
        self.progress_coalesced = 0
        """PROGRESS records superseded by a later one before the service read them."""
        self._types: Any = None  # () -> the agent types the hub's tree may run
        self.watched: set[str] = set()
        """Agent types someone asked :meth:`waiting` about (an autoscaling pool's), so a
        store counts their waiting items even while no agent of theirs runs."""

    @property
    def refused(self) -> int:
        """Agent answers refused (stale attempts, items not held, bad payloads)."""
        return self._dispatch.refused

    @property
    def acks_dropped(self) -> int:
        """ACKs of refusals an agent had no room for (it does not read its channel)."""
        return self._dispatch.acks_dropped

    # ----------------------------------------------------------------------------------
    # API (any task)

    def submit(
        self,
        agent_type: str,
        payload: Any,
        *,
        max_deliveries: int | None = None,
        source: str = "api",
        key: str | None = None,
        after: Iterable[str] | str | None = None,
        require: Any = None,
        priority: int = 0,
        delay: float | None = None,
        not_before: float | str | None = None,
        time_limit: float | None = None,
    ) -> WorkItem:
        """Queue an item for agents of ``agent_type``; returns it (``.id``).

        ``key``: while an item of the type submitted with it is kept, that item is
        returned. ``after``: ids it waits for. ``require``: pool labels. ``priority``:
        higher first. ``delay`` (s) / ``not_before`` (Unix or ISO 8601 time): not before
        then. ``time_limit``: seconds per attempt (default: ``time_limits``). See
        docs/work-controls.md.

        Raises:
            ControlError: a bad type, payload (not JSON, over :data:`MAX_PAYLOAD` bytes) or
                option, or one the queue does not support.
        """
        controls, existing = _controls(self, agent_type, key, after, require)
        if existing is not None:
            return existing
        _check_agent_type(agent_type)
        _check_payload(payload)
        deliveries = _deliveries(self.max_deliveries if max_deliveries is None else max_deliveries)
        priority = check_priority(priority)
        at = not_before_of(delay, not_before, getattr(self.queue, "clock", time.time)())
        if self._types is not None:
            _check_type(self._types(), self.store, agent_type, source)
        _check_room(self, agent_type)
        limit = self._controls.check_submit(time_limit)
        ordering = _ordering(priority, at, self.queue, limit)  # only when asked
        item = self.queue.submit(
            agent_type,
            payload,
            max_deliveries=deliveries,
            source=source,
            now=_now(),
            **controls,
            **ordering,
        )
        item.time_limit = limit
        self._dispatch.publish(WorkSubmitted, "", item_id=item.id, agent_type=agent_type)
        _publish_settled(self.queue, self._dispatch)
        self._dispatch.poke()
        return item

    def serve_types(self, types: Any) -> None:
        """Tell the service which agent types its hub's tree runs or may grow: ``types()``
        returns them (the hub calls this); :meth:`submit` refuses the others."""
        self._types = types

    def retry(self, item_id: str) -> WorkItem:
        """Queue a dead or failed item again (``hubvisor work retry ID``)."""
        item = self.queue.retry(item_id, _now())
        self._dispatch.poke()
        return item

    def get(self, item_id: str) -> WorkItem:
        """The item with ``item_id``."""
        return self.queue.get(item_id)

    # -- cancel and time limits (issue 21) --

    def cancel(self, item_id: str, reason: str = "") -> WorkItem:
        """End a queued or assigned item ``cancelled``; its agent is told ``CANCEL`` (v2;
        stopped after ``cancel_grace``) or stopped (v1), and later answers for the attempt
        are refused (docs/work-controls.md). ControlError: unknown, or ended already."""
        return self._controls.cancel(item_id, reason)

    async def cancel_any(self, item_id: str, reason: str = "") -> WorkItem:
        """:meth:`cancel`, for an item any hub sharing the store holds."""
        return await self._controls.cancel_any(self.store, item_id, reason)

    def _changed(self, item_id: str) -> None:
        self._waiters.fire(item_id)
        self._controls.changed(item_id)

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

    async def resolve(self, item: WorkItem) -> WorkItem:
        """The item a submit answers once :meth:`stored` (a key Redis had: the kept one)."""
        kept = getattr(self.store, "dupes", {}).get(item.id, item.id)
        return item if kept == item.id else await self.fetch(kept)

    async def fetch(self, item_id: str) -> WorkItem:
        """The item with ``item_id``, from the shared store if this hub does not hold it."""
        return self.get(item_id) if self.store is None else await self.store.fetch(item_id)

    async def wait(self, item_id: str, timeout: float | None = None) -> WorkItem:
        """The item once it has ended: completed, failed or dead (a status of
        :data:`~supervisor.work.FINAL`); inspect its ``status``, ``result`` and ``error``.

        Event-driven: the service wakes the waiter when something happens to the item. With
        a store shared by other hubs (Redis) the item may end on another hub, so the waiter
        also reads it from the store every 0.5 s, backing off to 2 s. An item already ended
        is returned at once. Cancelling the call removes its waiter.

        Args:
            item_id: the item (of this hub, or with a store of any hub sharing it).
            timeout: seconds to wait at most (``None``: as long as it takes).

        Raises:
            WaitTimeout: ``timeout`` ran out first (the item goes on; the error holds it
                as last seen).
            ControlError: no such item, a bad timeout, more than ``max_waiters`` waits at
                once, or the hub stopped before the item ended.

        .. versionadded:: 21
        """
        shared = self.store is not None and self.store.shared
        return await self._waiters.wait(item_id, timeout, self._read, shared)

    async def _read(self, item_id: str) -> WorkItem:
        """The item as a waiter sees it: this hub's copy when it has ended here (the store
        may not have it written yet), else :meth:`fetch`."""
        try:
            item = self.get(item_id)
        except ControlError:
            item = None
        if item is not None and (self.store is None or item.status in FINAL):
            return item
        return await self.fetch(item_id)

    @property
    def waiters(self) -> int:
        """:meth:`wait` calls under way (one per item waited for)."""
        return self._waiters.count

    @property
    def max_waiters(self) -> int:
        """The most :meth:`wait` calls under way at once."""
        return self._waiters.max_waiters

    def check_waiters(self, n: int) -> None:
        """Refuse ``n`` more :meth:`wait` calls beyond ``max_waiters`` (a
        :class:`ControlError` naming the cap), before any of them starts."""
        self._waiters.check_room(n)

    async def retry_any(self, item_id: str) -> WorkItem:
        """:meth:`retry`, for an item any hub sharing the store held."""
        if self.store is None:
            return self.retry(item_id)
        item = await self.store.retry_any(item_id)
        self._dispatch.poke()
        return item

    async def cluster(self) -> dict[str, Any]:
        """Every hub sharing the store and the queues per type (``status --cluster``)."""
        if self.store is None:
            raise ControlError(
                "this hub keeps its work in memory, alone; start it with --redis URL to "
                "share durable queues with other hubs"
            )
        return await self.store.cluster()

    # What the autoscaler asks.

    def waiting(self, agent_type: str, labels: Mapping[str, str] | None = None) -> int:
        """Items of ``agent_type`` queued for an agent (with a shared store: those this hub
        holds plus those waiting in the store, as last seen); with ``labels`` (a pool's),
        those whose ``require`` they match only."""
        self.watched.add(agent_type)
        depth_for = getattr(self.queue, "depth_for", None)
        if labels is not None and depth_for is not None:
            return int(depth_for(agent_type, labels))
        return int(self.queue.depth(agent_type))

    def delayed(self, agent_type: str) -> int:
        """Items of ``agent_type`` queued but waiting for their time (not in :meth:`waiting`)."""
        count = getattr(self.queue, "delayed", None)
        return int(count(agent_type)) if count is not None else 0

    def idle_among(self, agent_type: str, agent_ids: Iterable[str]) -> int:
        """How many of ``agent_ids`` are idle agents of ``agent_type`` (ready, no item)."""
        return len(self._dispatch.idle_members(agent_type, agent_ids))

    def idle_members(self, agent_type: str, agent_ids: Iterable[str]) -> list[str]:
        """Those of ``agent_ids`` that are idle agents of ``agent_type``, in that order."""
        return self._dispatch.idle_members(agent_type, agent_ids)

    def retire(self, agent_ids: Iterable[str]) -> list[str]:
        """Take the idle ones of ``agent_ids`` out of dispatch, to be stopped: no item
        goes to them from now on. Returns those (an agent that got an item meanwhile is
        left alone). :meth:`unretire` undoes it."""
        return self._dispatch.retire(agent_ids)

    def unretire(self, agent_id: str) -> None:
        """Put an agent :meth:`retire` took back in dispatch (its stop did not happen)."""
        self._dispatch.unretire(agent_id)

    # What a store asks of the service (:class:`StoreHost`; from the service's tasks).

    @property
    def hub_id(self) -> str:
        """The hub's id (the store's consumer name)."""
        return self._hub.hub_id if self._hub is not None else "hub"

    def agent_types(self) -> set[str]:
        """The agent types this hub runs now."""
        return self._dispatch.types()

    def agent_counts(self) -> dict[str, int]:
        """Live agents per type."""
        return self._dispatch.counts()

    def idle_counts(self) -> dict[str, int]:
        """Idle agents per type (what the store may take for)."""
        return self._dispatch.idle_counts()

    def poke(self) -> None:
        """New items were taken from the store (or it cancelled dependents): dispatch."""
        _report_then_poke(self.queue, self._dispatch)

    def lost(self, item: WorkItem, reason: str) -> None:
        """The store gave ``item`` to another hub (this one's lease ran out)."""
        self._dispatch.lost(item, reason)

    def dead_elsewhere(self, item: WorkItem) -> None:
        """Taking ``item`` from a hub that lost its lease used its last delivery."""
        self._dispatch.publish(
            WorkDeadLettered, "", item_id=item.id, attempt=item.attempt, reason=item.error or ""
        )

    # ----------------------------------------------------------------------------------
    # The actor

    async def run(self, hub: Hub, *, task_status: trio.TaskStatus[None]) -> None:
        """Serve as a hub service (see :class:`~supervisor.Service`).

        A run that fails leaves the bus subscription and the agents' sink in place, so
        what happens until the hub restarts it waits in the inbox instead of being lost;
        the run that ends with the hub (cancelled) removes both.
        """
        self._hub = self._dispatch.hub = hub
        self._dispatch.labels_of = lambda path: _labels_of(hub, path)
        if isinstance(self.queue, MemoryWorkQueue):
            self.queue.hub_id = self.hub_id
        if self._feed is None:
            self._feed = self._send.clone()
            hub.bus.attach(self._feed, _SERVICE_KINDS)
        hub.agents.subscribe_messages(self._sink)
        self._dispatch.wake_rested()  # its pause ended with the failed run
        self._waiters.start()
        dispatch = self._dispatch
        try:
            async with trio.open_nursery() as nursery:
                dispatch.nursery = nursery
                if self.store is not None:
                    await nursery.start(self.store.run, self)
                task_status.started()
                nursery.start_soon(dispatch.run)
                dispatch.poke()
                async for msg in self._inbox:
                    if isinstance(msg, AgentMessage):
                        self._controls.on_message(msg)
                        if msg.kind == "progress":  # the latest one of this agent's
                            msg = self._progress.pop((msg.agent_id, msg.pid), msg)
                        dispatch.on_message(msg)
                    elif msg is not None:
                        self._on_event(msg)
                    _publish_settled(self.queue, dispatch)
                    dispatch.poke()
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled: the hub is stopping
                _stopping(self, hub)
            raise
        finally:
            dispatch.nursery = None

    def _on_event(self, event: Event) -> None:
        self._dispatch.on_event(event)

    def _detach(self, hub: Any) -> None:
        hub.agents.unsubscribe_messages(self._sink)
        if self._feed is not None:
            self._feed.close()  # the bus forgets a closed subscription: nothing piles up
            self._feed = None

    def _sink(self, msg: AgentMessage) -> None:
        """Take an agent's message (runtime side): a PROGRESS record replaces the one of
        the same agent still unread, so a fast reporter queues one, never thousands."""
        if msg.kind == "progress":
            key = (msg.agent_id, msg.pid)
            if key in self._progress:
                self._progress[key] = _keep_checkpoint(self._progress[key], msg)
                self.progress_coalesced += 1
                return
            self._progress[key] = msg
        self._send.send_nowait(msg)


def _ordering(priority: int, at: float | None, queue: Any, limit: float | None) -> dict[str, Any]:
    """The submit options a queue gets only when asked (a queue without them works); a
    queue that writes the item at submit (Redis) gets its ``time_limit`` too."""
    ordering: dict[str, Any] = {}
    if priority:
        ordering["priority"] = priority
    if at is not None:
        ordering["not_before"] = at
    if limit is not None and getattr(queue, "submit_takes_time_limit", False):
        ordering["time_limit"] = limit
    return ordering


def _stopping(service: WorkService, hub: Any) -> None:
    """The hub stops (the run was cancelled): let go of the bus and the agents, end the
    waits, and name the items lost with an in-memory queue."""
    service._detach(hub)
    service._waiters.stop(
        "it is lost with the hub (kept in its memory only)"
        if service.store is None
        else "its store keeps it: wait again on a hub that serves it"
    )
    if service.store is None:
        _report_unfinished(service.queue.items())


def _check_agent_type(agent_type: Any) -> None:
    if not isinstance(agent_type, str) or not _ID_RE.match(agent_type):
        raise ControlError(
            f"work needs an agent type: letters, digits, '_', '.' or '-', e.g. 'worker' "
            f"(got {agent_type!r:.80})"
        )


def _deliveries(deliveries: Any) -> int:
    if not isinstance(deliveries, int) or isinstance(deliveries, bool) or deliveries < 1:
        raise ControlError(f"max_deliveries must be an int >= 1 (got {deliveries!r})")
    return deliveries


def _check_room(service: WorkService, agent_type: str) -> None:
    """Refuse a submit beyond the type's ``max_queued`` (ready, delayed and blocked)."""
    if service.max_queued is None:
        return
    queue = service.queue
    waiting = int(queue.depth(agent_type)) + _blocked(queue, agent_type)
    waiting += service.delayed(agent_type)
    if waiting >= service.max_queued:
        raise ControlError(
            f"the queue of {agent_type!r} is full: {waiting} items wait, the cap is "
            f"WorkService(max_queued={service.max_queued}); retry when agents have "
            "taken some, add agents, or raise max_queued"
        )


def _check_type(
    types: Iterable[str], store: WorkStore | None, agent_type: str, source: str
) -> None:
    """Refuse a type no agent would ever take. Alone: one the tree never runs. With a
    durable store, a client (the API, the CLI, the socket) may queue work for hubs not
    started yet, durable meanwhile; an agent's ``SUBMIT=`` (machine-made, at any rate)
    must name a type the tree runs or the store has seen served (any type before the
    store was first read)."""
    served = set(types)
    if agent_type in served:
        return
    where = "in the hub"
    if store is not None:
        if not source.startswith("agent:"):
            return
        known = store.known_types
        if known is None or agent_type in known:
            return
        served |= known
        where = "on any hub sharing the store"
    raise ControlError(
        f"no agents of type {agent_type!r} {where}, so the item would wait forever; "
        f"the types are {', '.join(sorted(served)) or '(none)'}"
    )


def _body(msg: AgentMessage) -> dict[str, Any] | None:
    data = getattr(msg.value, "data", None)
    if isinstance(data, dict):
        return data
    try:
        body = json.loads(msg.value or "{}")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _keep_checkpoint(old: AgentMessage, new: AgentMessage) -> AgentMessage:
    """``new`` replaces ``old``, both unread PROGRESS of one agent: a checkpoint ``old``
    carried and ``new`` does not is kept with ``new`` (a later report without a checkpoint
    does not take the earlier one back, as it would not had both been read)."""
    before, after = _body(old), _body(new)
    if (
        before is None
        or after is None
        or before.get("checkpoint") is None
        or after.get("checkpoint") is not None
        or (before.get("item"), before.get("attempt")) != (after.get("item"), after.get("attempt"))
    ):
        return new
    merged = {**after, "checkpoint": before["checkpoint"]}
    return attrs.evolve(new, value=json.dumps(merged, separators=(",", ":")))


def _check_options(
    max_deliveries: Any, max_queued: Any, handback_pause: Any, max_waiters: Any
) -> None:
    """Refuse bad :class:`WorkService` arguments, naming the value and the fix."""
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
    if not isinstance(max_waiters, int) or isinstance(max_waiters, bool) or max_waiters < 1:
        raise ConfigError(
            f"WorkService(max_waiters=...) must be an int >= 1 (got {max_waiters!r}); e.g. "
            "max_waiters=10_000"
        )


# -- dependencies, idempotent keys, routing to tiers (issue 21) --------------------------


def _check_controls(queue: WorkQueue, key: Any, after: Any, require: Any) -> dict[str, Any]:
    """The submit's ``key``/``after``/``require`` for ``queue.submit`` (``{}``: none
    given), or a :class:`ControlError` naming the option (and the backend, when it does
    not have it)."""
    key, deps, labels = check_controls(key, after, require)
    if key is None and not deps and not labels:
        return {}
    if not isinstance(queue, MemoryWorkQueue) and not hasattr(queue, "keyed"):
        option = "--key" if key is not None else "--after" if deps else "--require"
        raise ControlError(
            f"{option}: {type(queue).__name__} does not support idempotent keys, "
            "dependencies or routing to tiers yet (the memory and SQLite work stores do); "
            "submit without it"
        )
    return {"key": key, "after": deps, "require": labels}


def _pools(hub: Hub | None, agent_type: str) -> list[tuple[str, Mapping[str, str]]] | None:
    """``(name, labels)`` of every pool of ``agent_type`` in the hub's tree (an agent
    outside a pool has no labels), or ``None`` with no hub."""
    if hub is None:
        return None
    from .._spec import PoolSpec

    pools: list[tuple[str, Mapping[str, str]]] = []
    for sup in hub.supervisors():
        spec = sup.spec
        if isinstance(spec, PoolSpec) and spec.agent_type == agent_type:
            pools.append((spec.name, spec.labels))
    return pools


def _check_require(hub: Hub | None, agent_type: str, require: Mapping[str, str]) -> None:
    """Refuse an item that no pool of ``agent_type`` in the hub would ever take."""
    pools = _pools(hub, agent_type)
    if not require or pools is None:
        return
    if any(all(labels.get(k) == v for k, v in require.items()) for _, labels in pools):
        return
    shown = ", ".join(
        f"{name} {{{', '.join(f'{k}={v}' for k, v in labels.items())}}}" for name, labels in pools
    )
    wanted = " ".join(f"{k}={v}" for k, v in require.items())
    raise ControlError(
        f"--require {wanted}: no pool of type {agent_type!r} in the hub has those labels, so "
        f"the item would wait forever; its pools: {shown or '(none)'} (give a pool "
        f"PoolSpec(labels={dict(require)!r}))"
    )


_blocked = blocked_count


def _labels_of(hub: Hub, path: str) -> Mapping[str, str]:
    """The labels of the pool at supervisor ``path`` (``{}``: not a pool)."""
    from .._spec import PoolSpec

    for sup in hub.supervisors():
        if sup.path == path and isinstance(sup.spec, PoolSpec):
            return sup.spec.labels
    return {}


def _publish_settled(queue: WorkQueue, dispatch: Dispatch) -> None:
    """Report the items a dependency's end cancelled (``work_dependency_ended``)."""
    settled: list[WorkItem] | None = getattr(queue, "settled", None)
    while settled:
        item = settled.pop(0)
        dispatch.publish(WorkDependencyEnded, "", item_id=item.id, reason=item.error or "")


def _report_then_poke(queue: WorkQueue, dispatch: Dispatch) -> None:
    """A store's poke: report the dependents it cancelled (Redis), then dispatch."""
    _publish_settled(queue, dispatch)
    dispatch.poke()


def _controls(
    service: WorkService, agent_type: str, key: Any, after: Any, require: Any
) -> tuple[dict[str, Any], WorkItem | None]:
    """The submit's checked controls for the queue, and the kept item its key names."""
    controls = _check_controls(service.queue, key, after, require)
    if controls.get("require") and hasattr(service.queue, "depth_for"):
        _check_require(service._hub, agent_type, controls["require"])
    existing = None if key is None else _keyed(service.queue, agent_type, key)
    return controls, existing


def _keyed(queue: WorkQueue, agent_type: str, key: str) -> WorkItem | None:
    keyed = getattr(queue, "keyed", None)
    return None if keyed is None else keyed(agent_type, key)


# -- end of dependencies, keys, tiers ----------------------------------------------------


def _report_unfinished(items: Iterable[WorkItem]) -> None:
    """A memory-mode hub is stopping: say which items are lost with it."""
    left = [i.id for i in items if i.status in (ItemStatus.QUEUED, ItemStatus.ASSIGNED)]
    if left:
        shown = ", ".join(left[:_LOST_IDS_SHOWN])
        more = f" and {len(left) - _LOST_IDS_SHOWN} more" if len(left) > _LOST_IDS_SHOWN else ""
        _log.warning(
            "hub stopping with %d work item%s not done, kept in memory only and lost "
            "with the hub: %s%s (drop --work memory to keep work in SQLite across restarts, "
            "or give the hub --redis URL to share it)",
            len(left),
            "" if len(left) == 1 else "s",
            shown,
            more,
        )
