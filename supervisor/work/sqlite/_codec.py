"""Items as rows and back, and what a hub finds when it opens the file again."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import attrs

from ..._errors import ControlError
from .._item import FINAL, AttemptRecord, ItemStatus, WorkItem, _used_up
from .._queue import _HISTORY
from ._local import seq_of

RESTART_REASON = "hub restarted: its agents went with it"
"""Why an item held when the hub died went back to the queue (its history says so)."""

STOP_REASON = "stop"

Row = tuple[str, int, str, str, int, str]
"""``(id, seq, type, status, pos, body)``: one row of ``items``."""

_FINAL = FINAL

__all__ = ["RESTART_REASON", "Restored", "Row", "decode", "encode", "handed_back", "restore"]


def encode(item: WorkItem, pos: int) -> Row:
    """The row of ``item`` at place ``pos`` (``TypeError``/``ValueError``: a value in it
    is not JSON)."""
    body = item.to_json()
    body["checkpoint"] = item.checkpoint
    text = json.dumps(body, separators=(",", ":"))
    return (item.id, seq_of(item.id), item.agent_type, str(item.status), pos, text)


def decode(row: Row) -> WorkItem:
    """The item of a row (``KeyError``/``TypeError``/``ValueError``: not an item)."""
    return WorkItem.from_json(json.loads(row[5]))


def handed_back(item: WorkItem, now: float, hub: str) -> WorkItem:
    """A copy of the assigned ``item`` as a graceful stop leaves it in the record: back
    in the queue, its delivery refunded (the hub is going: not the item's fault), the
    attempt in its history as ``reclaimed:stop``. The item itself is left as it is."""
    history = [
        *item.history,
        AttemptRecord(item.attempt, item.agent or "", "reclaimed:stop", STOP_REASON, now, hub),
    ][-_HISTORY:]
    return attrs.evolve(
        item,
        status=ItemStatus.QUEUED,
        deliveries=max(0, item.deliveries - 1),
        agent=None,
        history=history,
    )


@attrs.define
class Restored:
    """What a hub finds in the file it opens, ready to be held."""

    items: list[WorkItem]
    """Every item kept, oldest first (none assigned)."""
    pos: dict[str, int]
    """Each item's place in its list."""
    reclaimed: list[WorkItem]
    """The items that were assigned when the last hub died: back in the queue (at its
    front, the oldest first) with the lost attempt counted, or dead if that was their
    last delivery."""
    pruned: list[str]
    """Finished items beyond ``keep_finished`` (the oldest), to delete."""


def restore(
    rows: Iterable[Row], *, keep_finished: int, now: float, hub: str, path: Path
) -> Restored:
    """Read the rows; take back the items the last hub's agents held (as a hub restarted
    with its id does on Redis: the attempt counted, as for an agent's exit); prune the
    finished items beyond ``keep_finished``.

    Raises:
        ControlError: a row is not an item (the file was written by something else).
    """
    items: list[WorkItem] = []
    pos: dict[str, int] = {}
    for row in rows:
        try:
            item = decode(row)
        except (KeyError, TypeError, ValueError) as exc:
            raise ControlError(
                f"the row of item {row[0]!r} in {path} is not a work item ({type(exc).__name__}: "
                f"{exc}); the file was changed by something else than hubvisor: move it away, "
                "or give the hub another state directory with --state-dir"
            ) from None
        items.append(item)
        pos[item.id] = int(row[4])
    lo = min(pos.values(), default=0)
    hi = max(pos.values(), default=0)
    held = sorted(
        (i for i in items if i.status is ItemStatus.ASSIGNED),
        key=lambda i: seq_of(i.id),
        reverse=True,  # each goes to the front: the oldest ends up first
    )
    for item in held:
        record = AttemptRecord(
            item.attempt, item.agent or "", "reclaimed:exit", RESTART_REASON, now, hub
        )
        item.history.append(record)
        del item.history[:-_HISTORY]
        item.agent = None
        if item.deliveries >= item.max_deliveries:
            item.error = _used_up(item)
            item.status = ItemStatus.DEAD
            item.finished_at = now
            hi += 1
            pos[item.id] = hi
        else:
            item.status = ItemStatus.QUEUED
            lo -= 1
            pos[item.id] = lo
    finished = sorted(
        (i for i in items if i.status in _FINAL), key=lambda i: (pos[i.id], seq_of(i.id))
    )
    pruned = [i.id for i in finished[: max(0, len(finished) - keep_finished)]]
    gone = set(pruned)
    for item_id in pruned:
        del pos[item_id]
    return Restored(
        items=[i for i in items if i.id not in gone],
        pos=pos,
        reclaimed=[i for i in held if i.id not in gone],
        pruned=pruned,
    )
