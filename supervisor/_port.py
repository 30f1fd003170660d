"""The services' door into the hub's agents: :class:`AgentPort`, as ``hub.agents``.

A service (the work queues, the limits, your own) reaches the live agents only through
this port: send a message to an agent, ask whether an incarnation is stopping or which
pid is live, stop one gracefully for a reason, receive the agents' work-protocol
messages, and add to the environment of every child. It names no actor and no field of
the runtime, so the runtime can change behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

import attrs

from ._context import AgentMessage, LiveActor, RuntimeContext, StallMeter
from ._notify import NotifyMessage
from ._spec import ChildSpec

__all__ = ["AgentMessage", "AgentPort", "LiveAgent"]

SEND_TIMEOUT: Final = 1.0
"""Seconds a hub-to-agent message may wait for room in the agent's queue (default)."""


@attrs.frozen
class LiveAgent:
    """One live incarnation of a worker child, as :meth:`AgentPort.running` lists it."""

    agent_id: str
    supervisor: str
    pid: int
    incarnation: int
    spec: ChildSpec


class AgentPort:
    """What services may do with the hub's live agents (``hub.agents``).

    Every method that acts on an agent takes its id and, optionally, the ``pid`` of the
    incarnation meant: an id is reused by the next incarnation, and a message or a stop
    meant for one must not reach the next.
    """

    def __init__(self, context: RuntimeContext) -> None:
        self._ctx = context

    def _actor(self, agent_id: str, pid: int | None) -> LiveActor | None:
        actor = self._ctx.actor(agent_id)
        if actor is None or actor.done or (pid is not None and actor.pid != pid):
            return None
        return actor

    def live(self, agent_id: str) -> int | None:
        """The pid of the live incarnation of ``agent_id`` (stopping or not), if any."""
        actor = self._actor(agent_id, None)
        return actor.pid if actor is not None else None

    def stopping(self, agent_id: str, pid: int) -> bool:
        """Whether the incarnation ``pid`` of ``agent_id`` is live and being stopped (it
        gets no new work from then on)."""
        actor = self._actor(agent_id, pid)
        return actor is not None and actor.stopping

    def get(self, agent_id: str) -> LiveAgent | None:
        """The live incarnation of ``agent_id``, if any."""
        actor = self._actor(agent_id, None)
        return _view(actor) if actor is not None else None

    def running(self) -> list[LiveAgent]:
        """Every live incarnation that is not being stopped, in start order."""
        return [_view(a) for a in self._ctx.live_actors() if not a.done and not a.stopping]

    def send_nowait(
        self, agent_id: str, message: NotifyMessage, *, pid: int | None = None, verify: bool = True
    ) -> bool | None:
        """Send a hub-to-agent message without waiting: ``True`` sent, ``False`` the agent
        cannot take it now (no live incarnation, not ``pid``, no channel, or its queue is
        full), ``None`` its channel cannot send without waiting (use :meth:`send`).
        ``verify=False``: the caller built it from checked values."""
        actor = self._actor(agent_id, pid)
        if actor is None:
            return False
        return actor.send_nowait(message, verify=verify)

    async def send(
        self,
        agent_id: str,
        message: NotifyMessage,
        timeout: float = SEND_TIMEOUT,
        *,
        pid: int | None = None,
        verify: bool = True,
    ) -> bool:
        """Send a hub-to-agent message, waiting up to ``timeout`` seconds for room in the
        agent's queue; ``False`` if the agent cannot take it."""
        actor = self._actor(agent_id, pid)
        if actor is None:
            return False
        return await actor.send(message, timeout, verify=verify)

    def condemn(self, agent_id: str, why: str, *, pid: int | None = None) -> bool:
        """Stop the live incarnation gracefully because of ``why`` (e.g. over a resource
        limit): its exit is then a failure whose reason starts with ``why``, and its
        supervisor's restart policy decides what follows. ``False`` if there is none, or
        it is already stopping or ended."""
        actor = self._actor(agent_id, pid)
        return actor is not None and actor.condemn(why)

    @property
    def stalls(self) -> StallMeter:
        """The hub's stall meter: a deadline counted in the hub's running time (a time
        limit) extends itself by the stall, as the watchdogs do."""
        return self._ctx.stalls

    def subscribe_messages(self, sink: Callable[[AgentMessage], None]) -> None:
        """Call ``sink`` (from the hub's trio thread, without waiting) with every agent
        message that is not the runtime's own: the work protocol's HELLO, PROGRESS,
        RESULT, FAIL, HANDBACK and SUBMIT, in the order each agent sent them."""
        self._ctx.subscribe(sink)

    def unsubscribe_messages(self, sink: Callable[[AgentMessage], None]) -> None:
        """Stop calling ``sink`` (one not subscribed is ignored)."""
        self._ctx.unsubscribe(sink)

    unsubscribe = unsubscribe_messages

    def add_env(self, env: Mapping[str, str], *, replace: bool = True) -> None:
        """Add variables to the environment of every child started from now on;
        ``replace=False`` keeps one already set. A service that marks the agents calls
        it in ``run`` before ``task_status.started()`` (the tree starts after that)."""
        self._ctx.add_env(env, replace=replace)

    @property
    def notify_rejected(self) -> int:
        """Notify messages from agents the hub rejected (malformed, reserved status...)."""
        return self._ctx.notify_rejected


def _view(actor: LiveActor) -> LiveAgent:
    return LiveAgent(actor.spec.id, actor.path, actor.pid, actor.incarnation, actor.spec)
