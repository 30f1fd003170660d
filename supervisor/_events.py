"""Typed lifecycle events and the in-order event bus that publishes them."""

from __future__ import annotations

import signal
from collections.abc import Iterable
from typing import Literal

import attrs
import trio

from ._errors import UnknownEventKind

__all__ = [
    "SUBSCRIPTION_BUFFER",
    "ChildBackingOff",
    "ChildExited",
    "ChildHeartbeat",
    "ChildHung",
    "ChildOutput",
    "ChildRestarting",
    "ChildRunning",
    "ChildSpawnFailed",
    "ChildStarting",
    "ChildStatus",
    "ChildStopped",
    "Event",
    "EventBus",
    "ExitStatus",
    "Subscription",
    "SupervisorEscalated",
    "SupervisorStarted",
    "SupervisorStopped",
    "SupervisorStopping",
    "event_kinds",
]


@attrs.frozen
class ExitStatus:
    """How a process ended: an exit ``code``, or the ``signal`` that killed it."""

    code: int | None = None
    signal: int | None = None

    @classmethod
    def from_wait_status(cls, status: int) -> ExitStatus:
        """Build from an ``os.waitpid`` status."""
        import os

        if os.WIFSIGNALED(status):
            return cls(signal=os.WTERMSIG(status))
        return cls(code=os.WEXITSTATUS(status))

    @property
    def normal(self) -> bool:
        """Exit code 0."""
        return self.code == 0

    def describe(self) -> str:
        """E.g. ``"exited with code 1"`` or ``"killed by SIGKILL"``."""
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        return f"exited with code {self.code}"


@attrs.frozen(kw_only=True)
class Event:
    """Base of all events.

    Attributes:
        at: ``trio.current_time()`` when it happened (virtual under ``MockClock``).
        supervisor: path of the supervisor that owns the child, e.g. ``"hub/worker-pool"``.
        child_id: the child (or nested supervisor) the event is about.
    """

    at: float
    supervisor: str
    child_id: str

    kind: str = attrs.field(init=False, default="event")


@attrs.frozen(kw_only=True)
class ChildStarting(Event):
    """A process was spawned; it is *starting* until it is running."""

    pid: int
    incarnation: int
    agent_type: str | None = None
    kind: str = attrs.field(init=False, default="starting")


@attrs.frozen(kw_only=True)
class ChildRunning(Event):
    """The process outlived its start period (or said READY)."""

    pid: int
    kind: str = attrs.field(init=False, default="running")


@attrs.frozen(kw_only=True)
class ChildSpawnFailed(Event):
    """The process could not be spawned at all; counts as a failed start."""

    error: str
    kind: str = attrs.field(init=False, default="spawn_failed")


@attrs.frozen(kw_only=True)
class ChildExited(Event):
    """The process ended.

    Attributes:
        expected: the supervisor stopped it (stop, restart of a sibling, shutdown).
        failed_start: it ended within its start period.
        hung: the hub killed it because it was found hung (no heartbeat).
    """

    pid: int
    status: ExitStatus
    expected: bool
    failed_start: bool
    uptime: float
    hung: bool = False
    kind: str = attrs.field(init=False, default="exited")


@attrs.frozen(kw_only=True)
class ChildBackingOff(Event):
    """The supervisor waits ``delay`` seconds before restarting ``restarting``."""

    delay: float
    attempt: int
    restarting: tuple[str, ...]
    kind: str = attrs.field(init=False, default="backing_off")


@attrs.frozen(kw_only=True)
class ChildRestarting(Event):
    """The supervisor restarts ``child_id`` because ``cause`` failed."""

    cause: str
    kind: str = attrs.field(init=False, default="restarting")


@attrs.frozen(kw_only=True)
class ChildStopped(Event):
    """The child is stopped (``reason``: ``"restarting"`` when a sibling's failure stopped it
    and it is about to restart; otherwise it stays stopped unless asked to run again)."""

    reason: Literal["shutdown", "terminated", "removed", "exited", "restarting"]
    kind: str = attrs.field(init=False, default="stopped")


@attrs.frozen(kw_only=True)
class SupervisorStarted(Event):
    """A supervisor started all its children; ``child_id`` is the supervisor's name."""

    kind: str = attrs.field(init=False, default="supervisor_started")


@attrs.frozen(kw_only=True)
class SupervisorStopping(Event):
    """A stop of this supervisor was asked for: from now on nothing in it restarts, and its
    children stop in reverse start order (``child_id`` is the supervisor's name)."""

    kind: str = attrs.field(init=False, default="supervisor_stopping")


@attrs.frozen(kw_only=True)
class SupervisorStopped(Event):
    """A supervisor stopped all its children and ended."""

    kind: str = attrs.field(init=False, default="supervisor_stopped")


@attrs.frozen(kw_only=True)
class SupervisorEscalated(Event):
    """A supervisor gave up: ``child_id`` exceeded ``limit``; it fails to its parent."""

    limit: str
    reason: str
    kind: str = attrs.field(init=False, default="escalated")


@attrs.frozen(kw_only=True)
class ChildHeartbeat(Event):
    """The child said ``HEARTBEAT`` on its notify channel."""

    pid: int
    kind: str = attrs.field(init=False, default="heartbeat")


@attrs.frozen(kw_only=True)
class ChildStatus(Event):
    """The child reported its ``status`` (e.g. ``"idle"``, ``"busy"``) on its notify channel."""

    pid: int
    status: str
    kind: str = attrs.field(init=False, default="status")


@attrs.frozen(kw_only=True)
class ChildHung(Event):
    """The child stayed silent past its heartbeat timeout; its supervisor kills it.

    Attributes:
        silence: seconds since its last notify message (or its spawn).
    """

    pid: int
    silence: float
    kind: str = attrs.field(init=False, default="hung")


@attrs.frozen(kw_only=True)
class ChildOutput(Event):
    """One line the child wrote (without the newline; cut lines end with ``…``)."""

    stream: Literal["stdout", "stderr"]
    line: str
    kind: str = attrs.field(init=False, default="output")


SUBSCRIPTION_BUFFER = 10_000
"""Events a :meth:`EventBus.subscribe` channel holds before it drops (and counts) more.

About a few MB per subscriber at most; a subscriber that reads its channel never comes
near it, and one that stops reading cannot grow the hub's memory without bound.
"""


def event_kinds() -> frozenset[str]:
    """Every event ``kind`` a subscription may name: those of :class:`Event` and of all
    its subclasses defined so far (your own event classes included)."""
    kinds: set[str] = set()
    todo: list[type[Event]] = [Event]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        default = attrs.fields(cls).kind.default
        if isinstance(default, str):
            kinds.add(default)
    return frozenset(kinds)


def check_kinds(kinds: Iterable[str] | None) -> frozenset[str] | None:
    """``kinds`` as a frozenset, or raise :class:`UnknownEventKind` naming the unknown ones."""
    if kinds is None:
        return None
    if isinstance(kinds, str):
        raise UnknownEventKind(
            f"kinds must be a collection of event kinds, not the string {kinds!r}; "
            f"e.g. kinds=[{kinds!r}]"
        )
    wanted = frozenset(kinds)
    known = event_kinds()
    unknown = wanted - known
    if unknown:
        raise UnknownEventKind(
            f"unknown event kind(s) {sorted(unknown)!r}: a subscription to them would never "
            f"receive anything; known kinds are {sorted(known)!r}"
        )
    return wanted


@attrs.define(eq=False)
class Subscription:
    """One subscriber of an :class:`EventBus` and how it fares.

    Attributes:
        kinds: the event kinds it receives (``None``: all).
        max_buffer: how many undelivered events its channel holds.
        delivered: events put into its channel so far.
        dropped: events it lost because its channel was full (it read too slowly).
    """

    send: trio.MemorySendChannel[Event] = attrs.field(repr=False)
    kinds: frozenset[str] | None
    max_buffer: float
    receive: trio.MemoryReceiveChannel[Event] | None = attrs.field(default=None, repr=False)
    delivered: int = 0
    dropped: int = 0


@attrs.define
class EventBus:
    """Publishes events to subscribers, each receiving them in the order they happened.

    ``publish`` never blocks, so a slow subscriber cannot stall supervision. Every
    subscription is bounded (:data:`SUBSCRIPTION_BUFFER` events unless you ask otherwise): a
    subscriber that falls behind loses the events that do not fit, and the bus counts
    them, per subscription (:meth:`subscription`) and in total (:attr:`dropped`).
    A consumer that must not lose events (the registry) attaches a channel of its own
    with :meth:`attach` and only the kinds it needs.
    """

    _subscribers: list[Subscription] = attrs.field(factory=list)
    _dropped: int = 0

    def subscribe(
        self, kinds: Iterable[str] | None = None, max_buffer: float = SUBSCRIPTION_BUFFER
    ) -> trio.MemoryReceiveChannel[Event]:
        """Return a channel receiving every later event (of ``kinds`` only, if given).

        Args:
            kinds: event kinds, e.g. ``["starting", "exited"]`` (``None``: all).
            max_buffer: events held for the reader; more are dropped and counted
                (``math.inf``: unbounded, at your own risk).

        Raises:
            UnknownEventKind: a kind that no event has (e.g. a typo).
        """
        wanted = check_kinds(kinds)
        send, receive = trio.open_memory_channel[Event](max_buffer)
        self._subscribers.append(Subscription(send, wanted, max_buffer, receive))
        return receive

    def attach(
        self, send: trio.MemorySendChannel[Event], kinds: Iterable[str] | None = None
    ) -> Subscription:
        """Deliver every later event into ``send``, a channel the caller made.

        For an actor whose inbox also receives other messages (the registry): events and
        those messages then arrive in one channel, in the order they were sent. The bus
        closes ``send`` on :meth:`close`, so pass a clone if you keep sending to it.
        The channel's own buffer size applies (events that do not fit are dropped and
        counted).

        Raises:
            UnknownEventKind: a kind that no event has.
        """
        wanted = check_kinds(kinds)
        sub = Subscription(send, wanted, send.statistics().max_buffer_size)
        self._subscribers.append(sub)
        return sub

    def subscription(self, channel: trio.MemoryReceiveChannel[Event]) -> Subscription:
        """The :class:`Subscription` behind a channel :meth:`subscribe` returned.

        Raises:
            KeyError: the channel is not (or no longer) subscribed to this bus.
        """
        for sub in self._subscribers:
            if sub.receive is channel:
                return sub
        raise KeyError("that channel is not a live subscription of this bus")

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """The live subscriptions, oldest first."""
        return tuple(self._subscribers)

    @property
    def dropped(self) -> int:
        """Events lost so far by subscribers that fell behind (ended ones included)."""
        return self._dropped

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every interested subscriber without waiting."""
        alive = []
        for sub in self._subscribers:
            if sub.kinds is not None and event.kind not in sub.kinds:
                alive.append(sub)
                continue
            try:
                sub.send.send_nowait(event)
            except trio.WouldBlock:
                sub.dropped += 1
                self._dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue  # the subscriber closed its end: forget it
            else:
                sub.delivered += 1
            alive.append(sub)
        self._subscribers = alive

    def close(self) -> None:
        """End every subscription (their channels raise ``EndOfChannel``)."""
        for sub in self._subscribers:
            sub.send.close()
        self._subscribers = []
