"""What a store (Redis Streams, SQLite) is to the work service, and what it asks back."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import trio

from ._item import WorkItem
from ._queue import WorkQueue


class StoreHost(Protocol):
    """What a :class:`WorkStore` asks of the service it runs under (and nothing more);
    :class:`~supervisor.WorkService` is one. Called from the store's own task."""

    @property
    def hub_id(self) -> str:
        """The hub's id: the store's consumer name."""
        ...

    @property
    def watched(self) -> set[str]:
        """Agent types whose waiting items to count even while none of their agents run
        (an autoscaling pool's)."""
        ...

    def agent_types(self) -> set[str]:
        """The agent types this hub runs now (the store takes items of those only)."""
        ...

    def agent_counts(self) -> dict[str, int]:
        """Live agents per type (shown in ``status --cluster``)."""
        ...

    def idle_counts(self) -> dict[str, int]:
        """Idle agents per type: how many items the store may take now."""
        ...

    def poke(self) -> None:
        """The store took new items: dispatch them."""
        ...

    def lost(self, item: WorkItem, reason: str) -> None:
        """Another hub holds ``item`` now (this hub's lease on it ran out)."""
        ...

    def dead_elsewhere(self, item: WorkItem) -> None:
        """Taking ``item`` over from a hub that lost its lease used its last delivery."""
        ...


@runtime_checkable
class WorkStore(WorkQueue, Protocol):
    """A :class:`WorkQueue` whose record lives in a store (Redis Streams, shared by hubs;
    SQLite, one hub's): it runs its own actor beside the service and answers the queries
    that need the store."""

    shared: bool
    """Whether other hubs share the store (an item may end on another hub, which
    publishes nothing here: waiters read such a store again now and then)."""

    @property
    def known_types(self) -> set[str] | None:
        """Every agent type some hub sharing the store serves or served, as last read
        (``None``: not read yet); :meth:`WorkService.submit` refuses the others."""
        ...

    def check_hub_id(self, hub_id: str) -> None:
        """Before the hub starts: raise :class:`~supervisor.ControlError` when a live hub
        already uses ``hub_id`` in the store (a no-op for a store without hub ids)."""
        ...

    def describe(self) -> str:
        """Where the work lives, in a few words (the hub logs it at start)."""
        ...

    def close(self) -> None:
        """Let go of what :meth:`check_hub_id` took (connections, locks); idempotent."""
        ...

    async def run(self, host: StoreHost, *, task_status: trio.TaskStatus[None]) -> None:
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


class ActorCounters:
    """What a store's write-behind actor counts, read on the store (tests, metrics,
    ``status``): the SQLite and Redis stores share it (their actor: ``_actor``)."""

    _actor: Any  # an actor with ``outage`` (an Outage), ``rounds`` and ``errors``

    @property
    def outage(self) -> bool:
        """Whether the store is unreachable (Redis) or its writes fail (SQLite) now."""
        return bool(self._actor.outage.active)

    @property
    def rounds(self) -> int:
        """Rounds written so far by the actor."""
        return int(self._actor.rounds)

    @property
    def errors(self) -> int:
        """Rounds that failed with an error that is not an outage (logged, retried)."""
        return int(self._actor.errors)
