"""The hub's recent events for ``hubvisor events``: a hub service, the event ring.

:class:`EventRing` keeps the last :data:`~supervisor.control.ops.EVENTS_KEPT` events as
JSON-ready dicts and feeds the ``events -f`` streams. ``run_hub`` gives the hub one as a
service (so it sees every event from the start); :func:`serve_control` starts its own for
a hub that has none.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._errors import ControlError, HubvisorError
from .._events import Event, check_kinds
from .ops import EVENTS_KEPT, Args

if TYPE_CHECKING:
    from .._hub import Hub
    from .stream import Stream

__all__ = ["NOISY_KINDS", "EventRing", "event_json", "find_ring"]

NOISY_KINDS = frozenset({"output", "heartbeat"})
"""Event kinds the event ring does not keep and ``events`` shows only when named."""


def _plain(inst: Any, field: Any, value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, bool | int | float | str | list | tuple | dict):
        return value
    return value if attrs.has(type(value)) else str(value)


def event_json(event: Event, wall: float) -> dict[str, Any]:
    """An event as a JSON-ready dict: ``kind``, ``time`` (Unix time), then its fields,
    ``at`` in Unix time too (one clock for users; the hub's own clock stays inside)."""
    fields = attrs.asdict(event, value_serializer=_plain)
    return {"kind": event.kind, "time": round(wall, 6), **fields, "at": round(wall, 6)}


class EventRing:
    """The last ``keep`` events of a hub, and the ``events -f`` streams: a hub service."""

    name = "event-ring"

    def __init__(self, keep: int = EVENTS_KEPT) -> None:
        self.kept: deque[tuple[Event, float]] = deque(maxlen=keep)
        """The last events: each ``(event, wall time)`` as it came, made JSON-ready
        (:func:`event_json`) only when somebody reads it (events are frozen)."""
        self.running = False
        """Whether :meth:`run` is subscribed to a hub's events."""
        self._followers: list[tuple[Stream, frozenset[str] | None]] = []

    async def run(
        self, hub: Hub, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep ``hub``'s events until cancelled."""
        events = hub.bus.subscribe()
        self.running = True
        task_status.started()
        try:
            with events:
                async for event in events:
                    self._add(event)
        finally:
            self.running = False

    def _add(self, event: Event) -> None:
        noisy = event.kind in NOISY_KINDS
        wanted = [
            out
            for out, kinds in self._followers
            if (kinds is None and not noisy) or (kinds is not None and event.kind in kinds)
        ]
        if noisy and not wanted:
            return
        wall = time.time() - max(0.0, trio.current_time() - event.at)
        if not noisy:
            # Kept as it came: a hub nobody asks for events made each one JSON-ready
            # for nothing (about a tenth of the hub's CPU per restart, py-spy at N=1,000).
            self.kept.append((event, wall))
        if wanted:
            data = event_json(event, wall)
            for out in wanted:
                out.send(data)

    @contextlib.contextmanager
    def follow(self, out: Stream, kinds: frozenset[str] | None) -> Iterator[None]:
        """Send every new event of ``kinds`` to ``out`` while inside."""
        entry = (out, kinds)
        self._followers.append(entry)
        try:
            yield
        finally:
            self._followers.remove(entry)

    async def stream(self, hub: Hub, args: Args, out: Stream) -> None:
        """The ``events`` op: the kept events (the last ``lines``), then new ones with
        ``follow``."""
        try:
            kinds = check_kinds(args.get("kinds"))
        except HubvisorError as exc:
            raise ControlError(str(exc)) from None
        kept = [event_json(*e) for e in self.kept if kinds is None or e[0].kind in kinds]
        lines = args.get("lines")
        # The last ``lines`` of them, or all when fewer are kept (``kept[len(kept) - lines:]``
        # started at a negative index then, and kept too few: 2 of 4 for ``-n 6``).
        for event in kept if lines is None else kept[-lines:] if lines else []:
            out.backlog(event)
        if args.get("follow"):
            with self.follow(out, kinds):
                await trio.sleep_forever()


def find_ring(hub: Hub) -> EventRing | None:
    """The event ring among ``hub``'s services, if it has one."""
    return next((s for s in hub.services if isinstance(s, EventRing)), None)
