"""Cancel and time limits on Redis (issue 21): the part of
:class:`~supervisor.work.redis.RedisWorkQueue` that ends an item ``cancelled`` or an
attempt ``timed_out``, decided locally like every other step and written behind by the
fenced script; an item this hub does not hold is cancelled by the atomic ``_CANCEL``
script (:meth:`Queries.cancel_any <supervisor.work.redis._query.Queries.cancel_any>`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

from ..._errors import ControlError
from .._item import Verdict, WorkItem
from ._codec import _safe, _wall
from ._outbox import _Op
from ._scripts import _FENCED

if TYPE_CHECKING:
    from ._queue import RedisWorkQueue

__all__ = ["CancelParts"]


class CancelParts:
    """Mixed into :class:`~supervisor.work.redis.RedisWorkQueue`."""

    stores_time_limit = True
    submit_takes_time_limit = True
    """An item's own ``time_limit`` is given to :meth:`submit`, written in the item's
    hash (``tl``) with it: any hub that takes the item applies it."""

    def cancel(self, item_id: str, reason: str, now: float) -> WorkItem:
        """End an item this hub holds ``cancelled``, written (fenced) in the next round.

        Raises:
            ControlError: the item ended, is not in Redis yet, or this hub does not hold
                it (:meth:`cancel_any` cancels that one in Redis).
        """
        q = cast("RedisWorkQueue", self)
        if item_id in q._pending:
            raise ControlError(
                f"work item {item_id!r} is not in Redis yet; cancel it once `hubvisor "
                "submit` has answered"
            )
        try:
            held_by = q._local.get(item_id).agent
        except ControlError:
            raise ControlError(
                f"work item {item_id!r} is not held by this hub; cancel it with "
                "`hubvisor work cancel` (or WorkService.cancel_any), which reaches Redis"
            ) from None
        item = q._local.cancel(item_id, reason, _wall(now))
        last = item.history[-1].agent.split("/")[-1] if item.history else ""
        # The fenced finish, as every end is written; no reply handler: a refusal means
        # another hub cancelled it in Redis first (this hub learnt it from a renewal).
        args = (
            "finish",
            q.claim.hub_id,
            q.claim.token,
            item.attempt,
            time.time(),
            str(item.status),
            item.deliveries,
            q._hist(item),
            "",
            _safe(item.error or ""),
            held_by or last,
            int(q.keep_finished),
        )
        q._push(_Op(_FENCED, q._keys(item.agent_type, item.id), args, item.id, "finish"))
        return item

    def time_out(self, item_id: str, attempt: int, reason: str, now: float) -> Verdict:
        """Decide locally; the timed-out attempt is written (fenced) in the next round, as
        a failure with retry is (queued again here, or dead)."""
        q = cast("RedisWorkQueue", self)
        try:
            agent = q._local.get(item_id).agent
        except ControlError:
            agent = None
        verdict = q._local.time_out(item_id, attempt, reason, _wall(now))
        if verdict.accepted and verdict.item is not None:
            q._after(verdict.item, agent or "")
        return verdict

    async def cancel_any(self, item_id: str, reason: str) -> WorkItem:
        """Cancel an item whichever hub holds it, in Redis (see :meth:`cancel` for one
        held here)."""
        q = cast("RedisWorkQueue", self)
        return await q._queries.cancel_any(item_id, reason)
