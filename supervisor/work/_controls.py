"""Cancel and time limits (issue 21): what the work service does beside dispatch to end
an item ``cancelled`` or an attempt ``timed_out`` and make its agent give it up
(``CANCEL`` to a protocol-v2 agent, a stop after the grace; a v1 agent is stopped).
docs/work-controls.md has the semantics."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from .._context import AgentMessage
from .._errors import ConfigError, ControlError
from .._notify import NotifyMessage
from ._item import (
    ItemStatus,
    WorkCancelled,
    WorkDeadLettered,
    WorkItem,
    WorkTimedOut,
    _check_time_limit,
    _now,
)
from ._ordering import after_failure

if TYPE_CHECKING:
    from ._dispatch import Dispatch, _Agent
    from ._store import WorkStore

__all__ = ["DEFAULT_CANCEL_GRACE", "Controls"]

_log = logging.getLogger("hubvisor")

DEFAULT_CANCEL_GRACE = 10.0  # seconds a v2 agent has to give up a cancelled item


class Controls:
    """Cancel and time limits over one service's :class:`Dispatch` (in its actor).

    Args:
        dispatch: the service's dispatch.
        time_limits: default seconds per attempt, per agent type.
        cancel_grace: seconds an agent told ``CANCEL`` has to answer before it is stopped.
    """

    def __init__(
        self, dispatch: Dispatch, time_limits: Mapping[str, float] | None, cancel_grace: float
    ) -> None:
        self.d = dispatch
        self.time_limits = _check_limits(time_limits, cancel_grace)
        self.cancel_grace = float(cancel_grace)
        self._timed: set[tuple[str, int]] = set()  # attempts whose limit is watched

    # What the service asks

    def check_submit(self, time_limit: Any) -> float | None:
        """The submit's ``time_limit`` as seconds, or a :class:`ControlError` (a bad value,
        or a backend that cannot store it)."""
        limit = _check_time_limit(time_limit)
        if limit is not None and not getattr(self.d.queue, "stores_time_limit", True):
            raise ControlError(
                f"time_limit is not supported with the {type(self.d.queue).__name__} "
                "backend yet; set a default per agent type with "
                "WorkService(time_limits=...) instead"
            )
        return limit

    def cancel(self, item_id: str, reason: str) -> WorkItem:
        """End the item ``cancelled``; an agent holding it is told to give it up."""
        d = self.d
        try:
            before: WorkItem | None = d.queue.get(item_id)
        except ControlError:
            before = None  # the queue's cancel says why
        assigned = before is not None and before.status is ItemStatus.ASSIGNED
        agent_id = before.agent if before is not None and assigned else None
        attempt = before.attempt if before is not None else 0
        item = d.queue.cancel(item_id, reason, _now())
        agent = d.agents.get(agent_id) if agent_id else None
        if agent_id:
            d.notes[agent_id] = None
        d.publish(
            WorkCancelled,
            agent_id or "",
            agent=agent,
            item_id=item.id,
            attempt=attempt,
            reason=reason,
        )
        if agent_id:
            why = "cancelled" + (f": {reason}" if reason else "")
            self._give_up(agent_id, item.id, attempt, why)
        d.poke()
        return item

    async def cancel_any(self, store: WorkStore | None, item_id: str, reason: str) -> WorkItem:
        """:meth:`cancel`, or with a shared store one this hub does not hold, there."""
        if store is None or not hasattr(store, "cancel_any"):
            return self.cancel(item_id, reason)
        try:
            self.d.queue.get(item_id)
        except ControlError:
            item: WorkItem = await store.cancel_any(item_id, reason)
            self.d.changed(item_id)  # a waiter here reads it again
            return item
        return self.cancel(item_id, reason)

    # What the actor feeds it

    def on_message(self, msg: AgentMessage) -> None:
        """Before dispatch reads it: a HELLO's version; an answer for an attempt its agent
        was told to give up (it did: it may get work again)."""
        agent = self.d.agents.get(msg.agent_id)
        if agent is None or agent.pid != msg.pid:
            return
        if msg.kind == "hello":
            agent.version = int(str(msg.value or "1"))
        elif msg.kind in ("result", "fail", "handback") and agent.giving_up is not None:
            body = getattr(msg.value, "data", None)
            if not isinstance(body, dict):
                try:
                    body = json.loads(msg.value or "{}")
                except ValueError:
                    return
            if (
                isinstance(body, dict)
                and (body.get("item"), body.get("attempt")) == agent.giving_up
            ):
                agent.giving_up = None

    def changed(self, item_id: str) -> None:
        """Something happened to the item (every work event): a new attempt starts its
        time limit, if it has one."""
        try:
            item = self.d.queue.get(item_id)
        except ControlError:
            return
        key = (item.id, item.attempt)
        if item.status is not ItemStatus.ASSIGNED or key in self._timed or item.agent is None:
            return
        limit = item.time_limit
        if limit is None:
            limit = self.time_limits.get(item.agent_type)
        if limit is not None and self.d.nursery is not None:
            self._timed.add(key)
            self.d.nursery.start_soon(self._watch_limit, item.agent, item.id, item.attempt, limit)

    # The limit

    async def _watch_limit(self, agent_id: str, item_id: str, attempt: int, limit: float) -> None:
        """Time the attempt in the hub's running time: a stall of the hub's loop moves
        the deadline on by the stall (as heartbeats are judged)."""
        try:
            await self._sleep_out(agent_id, item_id, attempt, limit)
        finally:
            self._timed.discard((item_id, attempt))

    async def _sleep_out(self, agent_id: str, item_id: str, attempt: int, limit: float) -> None:
        d = self.d
        stalls = d._host.agents.stalls
        stalls.watch()
        try:
            mark = stalls.stalled()
            deadline = trio.current_time() + limit
            while True:
                await trio.sleep_until(deadline + (stalls.stalled() - mark))
                if not self._holds(agent_id, item_id, attempt):
                    return  # answered, reclaimed or cancelled first
                if trio.current_time() >= deadline + (stalls.stalled() - mark):
                    break
        finally:
            stalls.unwatch()
        reason = f"time limit {limit:g}s"
        verdict = d.queue.time_out(item_id, attempt, reason, _now())
        if not verdict.accepted or verdict.item is None:
            return
        after_failure(d, verdict.item, None)  # a failure: its retry delay, as any
        item, agent = verdict.item, d.agents.get(agent_id)
        d.notes[agent_id] = None
        dead = item.status is ItemStatus.DEAD
        d.publish(
            WorkTimedOut,
            agent_id,
            agent=agent,
            item_id=item_id,
            attempt=attempt,
            time_limit=limit,
            final=dead,
        )
        if dead:
            d.publish(
                WorkDeadLettered,
                agent_id,
                agent=agent,
                item_id=item_id,
                attempt=attempt,
                reason=item.error or reason,
            )
            _log.warning("work %s dead-lettered: %s", item_id, item.error)
        self._give_up(agent_id, item_id, attempt, f"ran past its {reason}")
        d.poke()

    def _holds(self, agent_id: str, item_id: str, attempt: int) -> bool:
        held = self.d.queue.held_by(agent_id)
        return held is not None and held.id == item_id and held.attempt == attempt

    # Giving up

    def _give_up(self, agent_id: str, item_id: str, attempt: int, why: str) -> None:
        """The agent's attempt was taken from it: a v2 agent is sent ``CANCEL`` and
        stopped if it has not answered within ``cancel_grace``; a v1 agent is stopped at
        once. It gets no new item until it answered (or is gone)."""
        d = self.d
        agent = d.agents.get(agent_id)
        if agent is None:
            return
        d.not_idle(agent_id, agent)
        agent.giving_up = (item_id, attempt)
        port = d._host.agents
        if agent.version < 2:
            port.condemn(agent_id, f"{item_id} {why} (protocol v1: no CANCEL)", pid=agent.pid)
            return
        body = {"item": item_id, "attempt": attempt, "reason": why[:200]}
        cancel = NotifyMessage("cancel", json.dumps(body, separators=(",", ":")))
        sent = port.send_nowait(agent_id, cancel, pid=agent.pid, verify=False)
        if sent is False:
            port.condemn(agent_id, f"{item_id} {why}; CANCEL could not be sent", pid=agent.pid)
            return
        if d.nursery is not None:
            if sent is None:  # a channel that can only wait
                d.nursery.start_soon(
                    lambda: port.send(agent_id, cancel, pid=agent.pid, verify=False)
                )
            d.nursery.start_soon(self._grace, agent_id, agent, item_id, attempt, why)

    async def _grace(
        self, agent_id: str, agent: _Agent, item_id: str, attempt: int, why: str
    ) -> None:
        await trio.sleep(self.cancel_grace)
        if self.d.agents.get(agent_id) is agent and agent.giving_up == (item_id, attempt):
            _log.warning(
                "%s did not give up %s within %gs of CANCEL; stopping it",
                agent_id,
                item_id,
                self.cancel_grace,
            )
            self.d._host.agents.condemn(
                agent_id,
                f"{item_id} {why}, not given up within {self.cancel_grace:g}s",
                pid=agent.pid,
            )


def _check_limits(time_limits: Any, cancel_grace: Any) -> dict[str, float]:
    """Refuse bad ``time_limits`` and ``cancel_grace``, naming the value and the fix."""
    if (
        not isinstance(cancel_grace, int | float)
        or isinstance(cancel_grace, bool)
        or not 0 <= cancel_grace < math.inf
    ):
        raise ConfigError(
            f"WorkService(cancel_grace=...) must be seconds >= 0 (got {cancel_grace!r})"
        )
    if time_limits is None:
        return {}
    if not isinstance(time_limits, Mapping):
        raise ConfigError(
            "WorkService(time_limits=...) must map agent types to seconds, e.g. "
            f'{{"worker": 600}} (got {time_limits!r:.80})'
        )
    limits = {}
    for agent_type, seconds in time_limits.items():
        try:
            limit = _check_time_limit(seconds, f"WorkService(time_limits=...)[{agent_type!r}]")
        except ControlError as exc:
            raise ConfigError(str(exc)) from None
        if limit is not None:
            limits[str(agent_type)] = limit
    return limits
