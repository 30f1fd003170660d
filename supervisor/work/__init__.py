"""Work for agents: per-type queues with fenced at-least-once delivery, as a hub service.

* :mod:`._item`: the item, its attempts, the queue's verdicts and the work events.
* :mod:`._queue`: the :class:`WorkQueue` protocol and :class:`MemoryWorkQueue`, which
  make every decision synchronously (property-tested alone).
* :mod:`._store`: :class:`WorkStore`, a queue whose record is shared (Redis Streams,
  :mod:`supervisor.work.redis`), and :class:`StoreHost`, what such a store asks back.
* :mod:`._dispatch` and :mod:`._service`: :class:`WorkService`, the hub service that
  feeds the queue and hands items to idle agents; :mod:`._waiters`: its waits for items
  to end (:meth:`WorkService.wait`).
"""

from ._item import (
    DEFAULT_MAX_DELIVERIES as DEFAULT_MAX_DELIVERIES,
    FINAL as FINAL,
    MAX_AFTER as MAX_AFTER,
    MAX_CHECKPOINT as MAX_CHECKPOINT,
    MAX_PAYLOAD as MAX_PAYLOAD,
    AttemptRecord as AttemptRecord,
    ItemStatus as ItemStatus,
    Verdict as Verdict,
    WorkAssigned as WorkAssigned,
    WorkCancelled as WorkCancelled,
    WorkCompleted as WorkCompleted,
    WorkDeadLettered as WorkDeadLettered,
    WorkDependencyEnded as WorkDependencyEnded,
    WorkFailed as WorkFailed,
    WorkItem as WorkItem,
    WorkReclaimed as WorkReclaimed,
    WorkRefused as WorkRefused,
    WorkSubmitted as WorkSubmitted,
    WorkTimedOut as WorkTimedOut,
)
from ._queue import MemoryWorkQueue as MemoryWorkQueue, WorkQueue as WorkQueue
from ._service import WorkService as WorkService
from ._store import StoreHost as StoreHost, WorkStore as WorkStore

__all__ = [
    "ItemStatus",
    "MemoryWorkQueue",
    "Verdict",
    "WorkAssigned",
    "WorkCancelled",
    "WorkCompleted",
    "WorkDeadLettered",
    "WorkDependencyEnded",
    "WorkFailed",
    "WorkItem",
    "WorkQueue",
    "WorkReclaimed",
    "WorkRefused",
    "WorkService",
    "WorkStore",
    "WorkSubmitted",
    "WorkTimedOut",
]
