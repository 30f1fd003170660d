"""The work service's dispatch: which agents are idle, what each holds, and what their
answers do to the queue (the decisions of the service's actor, in its own task)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs
import trio

from .._context import AgentMessage
from .._errors import ControlError
from .._events import (
    ChildExited,
    ChildHung,
    ChildRunning,
    ChildStarting,
    Event,
    SupervisorStopping,
)
from .._notify import MAX_MESSAGE, NotifyMessage
from ._item import (
    MAX_CHECKPOINT,
    ItemStatus,
    Verdict,
    WorkAssigned,
    WorkCompleted,
    WorkDeadLettered,
    WorkFailed,
    WorkItem,
    WorkReclaimed,
    WorkRefused,
    _now,
)
from ._ordering import fail_then_delay, reclaim_then_delay, wait_for_wake
from ._queue import WorkQueue
from ._store import WorkStore

if TYPE_CHECKING:
    from .._hub import Hub

_log = logging.getLogger("hubvisor")
_Why = Literal["exit", "hang", "stop", "unreachable"]  # why an agent's item is reclaimed

_REFUSED_LOG_EVERY = 10.0  # seconds between two reports of one agent's refused messages


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
    labels: Mapping[str, str] = attrs.field(factory=dict)  # its pool's (routing to tiers)
    version: int = 1  # the protocol version of its HELLO (2: it honours CANCEL)
    giving_up: tuple[str, int] | None = None  # told to give up this attempt: gets nothing new

    @property
    def idle(self) -> bool:
        return (
            self.hello
            and self.running
            and not self.gone
            and not self.resting
            and not self.retiring
            and self.giving_up is None
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


class Dispatch:
    """Hands queued items to idle agents and folds the agents' lives and answers into
    the queue. The work service owns one and runs :meth:`run` in its nursery.

    Args:
        queue: the service's queue.
        store: the shared store behind it, if any.
        handback_pause: seconds an agent that handed an item back rests.
        submit: how an agent's ``SUBMIT=`` is queued (the service's checks).
    """

    def __init__(
        self,
        queue: WorkQueue,
        store: WorkStore | None,
        *,
        handback_pause: float,
        submit: Callable[..., WorkItem],
    ) -> None:
        self.queue = queue
        self.store = store
        self.handback_pause = handback_pause
        self._submit = submit
        self.changed: Callable[[str], None] = lambda item_id: None  # wakes its waiters
        self.labels_of: Callable[[str], Mapping[str, str]] = lambda path: {}  # a pool's
        self.hub: Hub | None = None  # set when the service runs
        self.nursery: trio.Nursery | None = None
        self.agents: dict[str, _Agent] = {}
        self.idle: dict[str, dict[str, None]] = {}  # type -> idle agents, oldest first
        self.notes: dict[str, str | None] = {}  # assignments the registry has yet to hear
        self._wake = trio.Event()
        self._refusals = _Summary(_REFUSED_LOG_EVERY)
        self.refused = 0
        self.acks_dropped = 0

    # ----------------------------------------------------------------------------------
    # What the service asks (any task)

    def types(self) -> set[str]:
        """The agent types live now."""
        return {a.agent_type for a in self.agents.values() if a.agent_type}

    def counts(self) -> dict[str, int]:
        """Live agents per type."""
        counts: dict[str, int] = {}
        for agent in self.agents.values():
            if agent.agent_type:
                counts[agent.agent_type] = counts.get(agent.agent_type, 0) + 1
        return counts

    def idle_counts(self) -> dict[str, int]:
        """Idle agents per type."""
        return {t: len(idle) for t, idle in self.idle.items() if idle}

    def idle_members(self, agent_type: str, agent_ids: Iterable[str]) -> list[str]:
        """Those of ``agent_ids`` that are idle agents of ``agent_type``, in that order."""
        idle = self.idle.get(agent_type, {})
        return [agent_id for agent_id in agent_ids if agent_id in idle]

    def retire(self, agent_ids: Iterable[str]) -> list[str]:
        """Take the idle ones of ``agent_ids`` out of dispatch (:meth:`WorkService.retire`)."""
        taken = []
        for agent_id in agent_ids:
            agent = self.agents.get(agent_id)
            if agent is None or agent.agent_type is None:
                continue
            if agent_id in self.idle.get(agent.agent_type, {}) and agent.idle:
                agent.retiring = True
                self.not_idle(agent_id, agent)
                taken.append(agent_id)
        return taken

    def unretire(self, agent_id: str) -> None:
        """Put an agent :meth:`retire` took back in dispatch."""
        agent = self.agents.get(agent_id)
        if agent is not None and agent.retiring:
            agent.retiring = False
            self.set_idle(agent_id)
            self.poke()

    def lost(self, item: WorkItem, reason: str) -> None:
        """The store gave ``item`` to another hub (this one's lease ran out)."""
        agent_id = item.agent or ""
        if agent_id:
            self.notes[agent_id] = None
        self.publish(
            WorkRefused,
            agent_id,
            agent=self.agents.get(agent_id),
            item_id=item.id,
            attempt=item.attempt,
            reason=reason,
        )
        self.poke()

    def wake_rested(self) -> None:
        """A new run of the service: the pauses of the failed run are over."""
        for agent_id, agent in list(self.agents.items()):
            if agent.resting:
                agent.resting = False
                self.set_idle(agent_id)

    # ----------------------------------------------------------------------------------
    # The actor's side

    def poke(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Hand queued items to idle agents whenever either may have changed."""
        while True:
            await wait_for_wake(self._wake, self.queue)  # or the earliest delayed item
            self._wake = trio.Event()
            for agent_type, idle in list(self.idle.items()):
                _hand_out(self, agent_type, idle)
            self._tell_registry()

    @property
    def _host(self) -> Hub:
        """The hub (only the running service's actor calls what needs it)."""
        assert self.hub is not None, "the work service is not running"
        return self.hub

    def _tell_registry(self) -> None:
        if self.notes:
            self._host.registry.note_assignments(self.notes)
            self.notes = {}

    def _reachable(self, agent_id: str) -> int | None:
        """The pid of the incarnation the service knows as ``agent_id``, if it is live,
        idle and not being stopped (an id is reused by the next incarnation)."""
        agent = self.agents.get(agent_id)
        port = self._host.agents
        if agent is None or not agent.idle or port.live(agent_id) != agent.pid:
            return None
        return None if port.stopping(agent_id, agent.pid) else agent.pid

    def _assign(self, agent_type: str, agent_id: str) -> bool:
        """Give ``agent_id`` an item; False when none queued matches its pool's labels."""
        if (pid := self._reachable(agent_id)) is None:
            return True  # exited, replaced or being stopped: its exit event will come
        item = _take(self.queue, agent_type, agent_id, self.agents[agent_id].labels)
        if item is None:
            return False
        message = _assign_message(item)
        if len(message.value or "") + 7 > MAX_MESSAGE and item.checkpoint is not None:
            _log.warning("work %s: its checkpoint is too big to send; starting over", item.id)
            item.checkpoint = None
            message = _assign_message(item)
        agent = self.agents[agent_id]
        self.publish(WorkAssigned, agent_id, agent=agent, item_id=item.id, attempt=item.attempt)
        self.notes[agent_id] = item.id
        sent = self._host.agents.send_nowait(agent_id, message, pid=pid, verify=False)
        if sent is None and self.nursery is not None:  # a channel that can only wait
            self.nursery.start_soon(self._send_slowly, pid, agent_id, item.attempt, message)
        elif not sent:
            self._unreachable(agent_id, agent)
        return True

    async def _send_slowly(
        self, pid: int, agent_id: str, attempt: int, message: NotifyMessage
    ) -> None:
        if not await self._host.agents.send(agent_id, message, pid=pid, verify=False):
            held = self.queue.held_by(agent_id)
            if held is not None and held.attempt == attempt:
                self._unreachable(agent_id, self.agents.get(agent_id))
                self.poke()

    def _unreachable(self, agent_id: str, agent: _Agent | None) -> None:
        # It could not take it (gone, or its queue is full: it does not read): the item
        # goes back without spending a delivery, and this incarnation gets nothing more.
        if agent is not None:
            agent.gone = True
        self._reclaim(agent_id, "unreachable")

    def _reclaim(self, agent_id: str, reason: _Why, gone: _Agent | None = None) -> None:
        held = self.queue.held_by(agent_id)
        if held is None:
            return
        attempt = held.attempt
        verdict = reclaim_then_delay(self, agent_id, reason, _now())  # exit, hang: delayed
        if not verdict.accepted or verdict.item is None:  # pragma: no cover - held above
            return
        item = verdict.item
        agent = self.agents.get(agent_id) or gone  # gone: an exited agent (its supervisor)
        self.notes[agent_id] = None
        if item.status is ItemStatus.DEAD:
            self.publish(
                WorkDeadLettered,
                agent_id,
                agent=agent,
                item_id=item.id,
                attempt=attempt,
                reason=item.error or reason,
            )
        else:
            self.publish(
                WorkReclaimed,
                agent_id,
                agent=agent,
                item_id=item.id,
                attempt=attempt,
                reason=reason,
            )

    def set_idle(self, agent_id: str) -> None:
        agent = self.agents.get(agent_id)
        if agent is None or not agent.idle or agent.agent_type is None:
            return
        if self._stopping(agent_id):
            agent.gone = True  # its supervisor is stopping it alone (a sibling's restart...)
            return
        if self.queue.held_by(agent_id) is None:
            idle = self.idle.setdefault(agent.agent_type, {})
            if agent_id not in idle:
                idle[agent_id] = None
                if self.store is not None and not self.queue.has_work(agent.agent_type):
                    self.store.poke()

    def _stopping(self, agent_id: str) -> bool:
        agent = self.agents.get(agent_id)
        return agent is not None and self._host.agents.stopping(agent_id, agent.pid)

    def not_idle(self, agent_id: str, agent: _Agent | None) -> None:
        if agent is not None and agent.agent_type is not None:
            self.idle.get(agent.agent_type, {}).pop(agent_id, None)

    def on_event(self, event: Event) -> None:
        match event:
            case ChildStarting():
                old = self.agents.get(event.child_id)
                self.not_idle(event.child_id, old)
                self.agents[event.child_id] = _agent_of(event, self.labels_of)
            case ChildRunning():
                agent = self._live(event.child_id, event.pid)
                if agent is not None:
                    agent.running = True
                    self.set_idle(event.child_id)
            case ChildHung():
                agent = self._live(event.child_id, event.pid)
                if agent is not None:
                    agent.gone = True
                    self.not_idle(event.child_id, agent)
                    self._reclaim(event.child_id, "hang")
            case ChildExited():
                agent = self._live(event.child_id, event.pid)
                if agent is not None:
                    self.not_idle(event.child_id, agent)
                    del self.agents[event.child_id]
                    self._reclaim(event.child_id, "stop" if event.expected else "exit", agent)
            case SupervisorStopping():
                for agent_id, agent in self.agents.items():
                    if _under(agent.supervisor, event.supervisor):
                        agent.gone = True
                        self.not_idle(agent_id, agent)
            case _:
                pass

    def _live(self, agent_id: str, pid: int) -> _Agent | None:
        agent = self.agents.get(agent_id)
        return agent if agent is not None and agent.pid == pid else None

    def on_message(self, msg: AgentMessage) -> None:
        agent = self._live(msg.agent_id, msg.pid)
        if agent is None:
            return  # an incarnation already gone: whatever it held was reclaimed
        if msg.kind == "hello":
            agent.hello = True
            self.set_idle(msg.agent_id)
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
            verdict = fail_then_delay(self, msg.agent_id, body, retry, now)
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
            self.set_idle(msg.agent_id)

    def _rest(self, agent_id: str, agent: _Agent) -> None:
        self.not_idle(agent_id, agent)
        if self.handback_pause <= 0 or self.nursery is None:
            self.set_idle(agent_id)
            return
        agent.resting = True
        self.nursery.start_soon(self._wake_after_rest, agent_id, agent)

    async def _wake_after_rest(self, agent_id: str, agent: _Agent) -> None:
        await trio.sleep(self.handback_pause)
        if self.agents.get(agent_id) is agent and agent.resting:
            agent.resting = False
            self.set_idle(agent_id)
            self.poke()

    def _answered(self, msg: AgentMessage, item: WorkItem, attempt: int) -> None:
        self.notes[msg.agent_id] = None
        cls, fields = _answer_event(msg.kind, item)
        agent = self.agents.get(msg.agent_id)
        self.publish(cls, msg.agent_id, agent=agent, item_id=item.id, attempt=attempt, **fields)

    def _refuse(self, msg: AgentMessage, item_id: str, attempt: int, reason: str) -> None:
        self.refused += 1
        repeats = self._refusals.due(msg.agent_id, _now())
        if not repeats:  # reported within the last interval: counted, reported with the next
            return
        self.publish(
            WorkRefused,
            msg.agent_id,
            agent=self.agents.get(msg.agent_id),
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
        port = self._host.agents
        if port.live(agent_id) is None:
            return  # gone: nothing to tell it (not an ACK dropped)
        body = {"item": item_id, "attempt": attempt, "accepted": verdict.accepted}
        if verdict.reason:
            body["reason"] = verdict.reason[:200]
        # Never waits: an agent that does not read its channel loses its ACKs (counted),
        # it cannot stall the service for the others.
        ack = NotifyMessage("ack", json.dumps(body, separators=(",", ":")))
        if not port.send_nowait(agent_id, ack):
            self.acks_dropped += 1

    def _agent_submit(self, msg: AgentMessage, body: Mapping[str, Any]) -> None:
        try:
            self._submit(
                body["type"],
                body.get("payload"),
                max_deliveries=body.get("max_deliveries"),
                source=f"agent:{msg.agent_id}",
                **{k: body[k] for k in _AGENT_SUBMIT_OPTIONS if body.get(k) is not None},
            )
        except ControlError as exc:
            self.refused += 1
            repeats = self._refusals.due(f"{msg.agent_id} SUBMIT", _now())
            if repeats:
                _log.warning("%s: refused SUBMIT: %s%s", msg.agent_id, exc, _repeats(repeats))

    def publish(
        self, cls: Any, child_id: str, *, agent: _Agent | None = None, **fields: Any
    ) -> None:
        if "item_id" in fields:  # every work event, after the queue changed its item
            self.changed(fields["item_id"])
        if self.hub is None:
            return
        supervisor = agent.supervisor if agent is not None else ""
        self.hub.bus.publish(cls(at=_now(), supervisor=supervisor, child_id=child_id, **fields))


_AGENT_SUBMIT_OPTIONS = (
    "key",
    "after",
    "priority",
    "delay",
    "not_before",
    "require",
    "time_limit",
)  # the work controls (issue 21) an agent's SUBMIT may carry, checked as any submit's

# -- routing to tiers (issue 21) --------------------------------------------------------


def _hand_out(dispatch: Dispatch, agent_type: str, idle: dict[str, None]) -> None:
    """Hand queued items of ``agent_type`` to its idle agents, oldest agent first; one
    that no queued item's ``require`` matches (its pool's labels) stays idle."""
    for agent_id in list(idle):
        if not dispatch.queue.has_work(agent_type):
            break
        del idle[agent_id]
        if not dispatch._assign(agent_type, agent_id):
            idle[agent_id] = None


def _take(
    queue: WorkQueue, agent_type: str, agent_id: str, labels: Mapping[str, str]
) -> WorkItem | None:
    if labels:
        return queue.assign(agent_type, agent_id, _now(), labels)  # type: ignore[call-arg]
    return queue.assign(agent_type, agent_id, _now())


def _agent_of(event: ChildStarting, labels_of: Callable[[str], Mapping[str, str]]) -> _Agent:
    return _Agent(event.agent_type, event.supervisor, event.pid, labels=labels_of(event.supervisor))


# -- end of routing to tiers --------------------------------------------------------------


def _repeats(count: int) -> str:
    if count <= 1:
        return ""
    return f" ({count} times since the last report; one report per {_REFUSED_LOG_EVERY:g}s at most)"


def _answer_event(kind: str, item: WorkItem) -> tuple[type[Event], dict[str, Any]]:
    """The event an accepted answer of ``kind`` publishes, and its own fields."""
    if kind == "result":
        return WorkCompleted, {}
    if kind == "handback":
        return WorkReclaimed, {"reason": "handback"}
    if item.status is ItemStatus.DEAD:
        return WorkDeadLettered, {"reason": item.error or "failed"}
    return WorkFailed, {"error": item.error or "", "final": item.status is ItemStatus.FAILED}


def _assign_message(item: WorkItem) -> NotifyMessage:
    body = {
        "item": item.id,
        "attempt": item.attempt,
        "type": item.agent_type,
        "payload": item.payload,
        "checkpoint": item.checkpoint,
    }
    return NotifyMessage("assign", json.dumps(body, separators=(",", ":")))


def _under(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(ancestor + "/")
