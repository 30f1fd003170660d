"""Waiting for work items to end: :meth:`WorkService.wait <supervisor.WorkService.wait>`.

Event-driven: every work event the service publishes about an item (through
:meth:`Dispatch.publish <supervisor.work._dispatch.Dispatch.publish>`) wakes the waiters of
that item, which read it again; nothing polls while the hub holds the work alone. With a
store, an item may also end on another hub sharing it, which publishes nothing here:
then a waiter also reads the item again every :data:`POLL_FIRST` seconds, backing off
to :data:`POLL_MAX`. Bounded: a waiter is removed when its wait returns, raises or is
cancelled, and at most ``max_waiters`` wait at once. The waiters read the store one at a
time (a store's query client holds few connections: Redis's two), so many waiters slow
their own polling down, never the hub; a read the store fails (an outage) is tried again
at the next poll, the wait goes on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import trio

from .._errors import ControlError, WaitTimeout
from ._item import FINAL, WorkItem

DEFAULT_MAX_WAITERS = 10_000
"""Waits (one per item waited for) under way at once in one hub, by default."""
POLL_FIRST = 0.5
"""Seconds before a waiter first reads its item again from a store (another hub may end
it); doubling to :data:`POLL_MAX`."""
POLL_MAX = 2.0
"""The longest pause between two reads of a waited-for item in a store."""

Read = Callable[[str], Awaitable[WorkItem]]

_log = logging.getLogger("hubvisor")


class _Waiter:
    """One wait under way: ``changed`` is set when something happened to its item."""

    __slots__ = ("changed", "item_id")

    def __init__(self, item_id: str) -> None:
        self.item_id = item_id
        self.changed = trio.Event()


class Waiters:
    """The waits under way in one work service, by item id (see the module's docstring).

    Args:
        max_waiters: the most waits at once; one more is refused with a
            :class:`ControlError` naming the cap.
    """

    def __init__(self, max_waiters: int = DEFAULT_MAX_WAITERS) -> None:
        self.max_waiters = max_waiters
        self.count = 0
        """Waits under way."""
        self._by_item: dict[str, set[_Waiter]] = {}
        self._stopped: str | None = None  # why a wait ends at once: the service stopped
        self._reading = trio.CapacityLimiter(1)  # the waiters' reads, one at a time

    def check_room(self, n: int = 1) -> None:
        """Refuse ``n`` more waits beyond the cap, naming it and the fix."""
        if self.count + n > self.max_waiters:
            raise ControlError(
                f"{self.count} waits for work items are under way and {n} more were asked "
                f"for: the most this hub serves at once is WorkService(max_waiters="
                f"{self.max_waiters}); wait for fewer items at once (or poll `hubvisor work "
                "show ID`), or raise max_waiters"
            )

    def fire(self, item_id: str) -> None:
        """Something happened to ``item_id``: its waiters read it again."""
        for waiter in self._by_item.get(item_id, ()):
            waiter.changed.set()

    def start(self) -> None:
        """The service runs (again): waits wait."""
        self._stopped = None

    def stop(self, note: str) -> None:
        """The service stopped with its hub: every wait ends with an error (``note``: what
        becomes of the items), and so does any later wait for an item not ended."""
        self._stopped = note
        for waiters in self._by_item.values():
            for waiter in waiters:
                waiter.changed.set()

    @contextmanager
    def _watch(self, item_id: str) -> Iterator[_Waiter]:
        self.check_room()
        waiter = _Waiter(item_id)
        self._by_item.setdefault(item_id, set()).add(waiter)
        self.count += 1
        try:
            yield waiter
        finally:
            self.count -= 1
            waiters = self._by_item[item_id]
            waiters.discard(waiter)
            if not waiters:
                del self._by_item[item_id]

    async def wait(self, item_id: str, timeout: float | None, read: Read, poll: bool) -> WorkItem:
        """The item once it has ended (see :meth:`WorkService.wait`); ``read(item_id)``
        reads it, ``poll``: read it again now and then too (a store another hub shares).
        """
        _check_timeout(timeout)
        await trio.lowlevel.checkpoint()  # even for an item that has ended already
        with self._watch(item_id) as waiter:
            async with self._reading:  # outside the timeout: an unknown id is an error
                item = await read(item_id)
            pause = POLL_FIRST
            with trio.move_on_after(math.inf if timeout is None else timeout):
                while True:
                    if item.status in FINAL:
                        return item
                    if self._stopped is not None:
                        raise ControlError(
                            f"the hub stopped before work item {item_id!r} ended (it is "
                            f"{item.status}); {self._stopped}"
                        )
                    if poll:
                        with trio.move_on_after(pause):
                            await waiter.changed.wait()
                        pause = min(POLL_MAX, pause * 2)
                    else:
                        await waiter.changed.wait()
                    waiter.changed = trio.Event()  # before the read: no change is missed
                    item = await self._read_again(item_id, item, read, poll)
        assert timeout is not None
        raise WaitTimeout([item_id], timeout, [item])

    async def _read_again(self, item_id: str, last: WorkItem, read: Read, poll: bool) -> WorkItem:
        """The item read again; with a store, ``last`` when the store fails the read."""
        try:
            async with self._reading:
                return await read(item_id)
        except ControlError:
            raise
        except Exception as exc:  # a store outage: the wait goes on, reading later
            if not poll:
                raise
            _log.debug("wait for %s: reading it failed (%s); trying again", item_id, exc)
            return last


def _check_timeout(timeout: object) -> None:
    if timeout is None:
        return
    if (
        not isinstance(timeout, int | float)
        or isinstance(timeout, bool)
        or math.isnan(timeout)
        or timeout < 0
    ):
        raise ControlError(
            f"a wait's timeout must be seconds >= 0, or None to wait as long as it takes "
            f"(got {timeout!r})"
        )
