"""Where a streaming op's handler puts its items (:class:`Stream`), and what an
``events`` source offers it (:class:`Events`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .ops import Args

if TYPE_CHECKING:
    from .._hub import Hub

__all__ = ["Events", "Stream"]


class Events(Protocol):
    """The hub's recent events (:class:`~supervisor.control.events.EventRing`)."""

    async def stream(self, hub: Hub, args: Args, out: Stream) -> None:
        """Put the kept events, then (with ``follow``) new ones, into ``out``."""


class Stream:
    """Where a streaming op's handler puts its items: the hub writes each as one line.

    Never blocks. :meth:`backlog` items (what the hub already keeps: the recent lines or
    events a stream starts with) are always sent; :meth:`send` items (new ones, as they
    happen) are dropped while ``limit`` items wait for a slow client, so a client that
    reads slowly (or not at all) costs the hub at most ``limit`` items. The client learns
    how many it lost, and where: ``{"ok": true, "dropped": N}`` comes before the first
    item after the gap. ``ring``: the server's event ring (for ``events``).
    """

    def __init__(self, limit: int = 1000, ring: Events | None = None) -> None:
        self.limit = limit
        self.ring = ring
        self.dropped = 0
        """New items lost so far because the client read too slowly."""
        self._gap = 0
        self._send, self._receive = trio.open_memory_channel[tuple[int, Any]](math.inf)

    def backlog(self, item: Any) -> None:
        """Queue an item the hub already holds (never dropped)."""
        self._send.send_nowait((self._gap, item))
        self._gap = 0

    def send(self, item: Any) -> bool:
        """Queue a new item, or drop it (and count it) if the client is ``limit`` behind."""
        if self._send.statistics().current_buffer_used >= self.limit:
            self._gap += 1
            self.dropped += 1
            return False
        self.backlog(item)
        return True
