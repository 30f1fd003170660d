"""The writes a hub holds for Redis, in order, under a cap (for outages)."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from ._codec import _size
from ._scripts import _SHA

_log = logging.getLogger("hubvisor")

ROUND_OPS = 1000  # writes sent in one round at most


@attrs.define
class _Op:
    """One write waiting for the next round, and what to do with its reply (a progress
    write not yet sent takes the next progress of its item in its place)."""

    script: str
    keys: tuple[str, ...]
    args: tuple[Any, ...]
    item_id: str
    kind: str
    on_reply: Callable[[Any], None] | None = None
    size: int = 0


class Outbox:
    """The held writes, oldest first: results, failures and attempt starts always kept;
    the progress of an item kept as its latest only; past ``max_held`` writes (or
    ``max_held_bytes``) new progress is dropped and :meth:`full` says so (the queue then
    refuses submits)."""

    def __init__(self, url: str, max_held: int, max_held_bytes: int) -> None:
        self.url = url
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self.ops: deque[_Op] = deque()
        self.held_bytes = 0
        self._progress_ops: dict[str, _Op] = {}  # item -> its progress write not yet sent
        self.full_since: float | None = None  # when the held writes reached the cap
        self.coalesced = 0
        self.dropped_progress = 0
        self.poisoned = 0

    def push(self, op: _Op) -> bool:
        """Hold ``op`` for the next round; False when it was merged or dropped."""
        slot = self._progress_ops.get(op.item_id) if op.kind == "progress" else None
        if slot is not None and op.args[-1] == "":
            # no checkpoint in this one: the checkpoint of the one it replaces still
            # holds (as in the queue, a checkpoint stays until a newer one replaces it)
            op.args = (*op.args[:-1], slot.args[-1])
        op.size = _size(op.args)
        if op.kind == "progress":
            if slot is not None:  # not sent yet: the latest progress takes its place
                self.held_bytes += op.size - slot.size
                slot.args, slot.size, slot.on_reply = op.args, op.size, op.on_reply
                self.coalesced += 1
                return False
            if self.full():
                self.dropped_progress += 1  # the item keeps it locally; results go out
                return False
            self._progress_ops[op.item_id] = op
        else:  # a later progress of this item queues behind this write
            self._progress_ops.pop(op.item_id, None)
        self.ops.append(op)
        self.held_bytes += op.size
        self.full()
        return True

    def full(self) -> bool:
        """Whether the held writes are at their cap (logged once when they reach it)."""
        full = len(self.ops) >= self.max_held or self.held_bytes >= self.max_held_bytes
        if full and self.full_since is None:
            self.full_since = time.monotonic()
            _log.error(
                "work: %d writes (%d KiB) held for Redis at %s, its cap (%d writes, %d KiB): "
                "new submits are refused until Redis takes them; results, failures and "
                "attempt starts are kept, progress only as each item's latest",
                len(self.ops),
                self.held_bytes // 1024,
                self.url,
                self.max_held,
                self.max_held_bytes // 1024,
            )
        return full

    def drained(self) -> None:
        """After a round: say when the held writes left their cap."""
        if self.full_since is not None and not self.full():
            _log.warning(
                "work: Redis took the held writes after %.1f s at their cap; submits are "
                "accepted again",
                time.monotonic() - self.full_since,
            )
            self.full_since = None

    def take(self) -> list[_Op]:
        """The writes of the next round (the oldest :data:`ROUND_OPS`), out of the box."""
        ops = [self.ops.popleft() for _ in range(min(len(self.ops), ROUND_OPS))]
        for op in ops:
            self.held_bytes -= op.size
            if self._progress_ops.get(op.item_id) is op:
                del self._progress_ops[op.item_id]
        return ops

    def put_back(self, ops: list[_Op]) -> None:
        """A round that failed: its writes go first in the next one."""
        self.ops.extendleft(reversed(ops))
        self.held_bytes += sum(op.size for op in ops)

    def take_all(self) -> list[_Op]:
        """Every held write (the final flush at stop)."""
        ops = list(self.ops)
        self.ops.clear()
        self._progress_ops.clear()
        self.held_bytes = 0
        return ops

    def drop_poison(self, packer: Any) -> list[_Op]:
        """Drop the held writes that can never be sent (``packer`` cannot encode their
        arguments), each logged with its item; the others stay, in order. Returns the
        dropped ones."""
        kept: deque[_Op] = deque()
        dropped = []
        for op in self.ops:
            try:
                packer.pack_command("EVALSHA", _SHA[op.script], len(op.keys), *op.keys, *op.args)
            except Exception as exc:
                self.poisoned += 1
                self.held_bytes -= op.size
                if self._progress_ops.get(op.item_id) is op:
                    del self._progress_ops[op.item_id]
                dropped.append(op)
                _log.error(
                    "work %s: its %s can never be written to Redis (%s: %s); dropped",
                    op.item_id,
                    op.kind,
                    type(exc).__name__,
                    exc,
                )
                continue
            kept.append(op)
        self.ops = kept
        return dropped
