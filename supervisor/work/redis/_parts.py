"""What the store's actor and the control-op reads use of their queue: the state one
:class:`~supervisor.work.redis.RedisWorkQueue` shares with them (so neither imports it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import trio

from .._item import WorkItem
from .._queue import MemoryWorkQueue
from ._claim import HubClaim
from ._codec import Keys
from ._outbox import Outbox

if TYPE_CHECKING:
    import redis

    from ._deps import RedisDeps


class QueueParts(Protocol):
    """The queue's settings, its local decisions and the writes it holds for Redis."""

    url: str  # without its password
    _url: str
    prefix: str
    lease: float
    keep_finished: float
    timeout: float
    replicas: int  # WAIT for this many replicas after a round that writes (0: no WAIT)
    replicas_timeout: float
    writes: Outbox
    claim: HubClaim
    keys: Keys
    _local: MemoryWorkQueue  # the items this hub holds
    _pending: dict[str, WorkItem]  # submitted, not in Redis yet
    _stored: dict[str, trio.Event]
    dupes: dict[str, str]  # submitted with a key Redis had: -> the kept id (issue 21)
    _types: set[str]  # every type seen (submitted or served)
    known_types: set[str] | None  # every type the hubs announced (None: not read yet)
    _deps: RedisDeps  # dependent items (issue 21)

    def _keys(self, agent_type: str, item_id: str = "") -> tuple[str, ...]: ...

    def _make_client(self, connections: int) -> redis.Redis: ...

    def _lose(self, item: WorkItem, reason: str) -> None: ...

    def _finish(self, item: WorkItem, agent: str) -> None: ...

    def _release_held(self) -> None: ...

    def get(self, item_id: str) -> WorkItem: ...

    def retry(self, item_id: str, now: float) -> WorkItem: ...

    def poke(self) -> None: ...
