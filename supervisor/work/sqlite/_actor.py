"""The store's actor: writes what changed behind the decisions, one transaction a round,
in a worker thread; rides out a failing disk; hands back and writes everything at stop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ..._errors import ControlError, ServiceFailed
from ..._redis_link import Backoff, Outage
from .._item import ItemStatus
from .._store import StoreHost
from ._codec import encode, handed_back
from ._db import Database, Opened, Round
from ._local import seq_of

if TYPE_CHECKING:
    from ._queue import SqliteWorkQueue

_log = logging.getLogger("hubvisor")

ROUND_ITEMS = 1000  # items written in one transaction at most
_IDS_SHOWN = 50  # item ids one log line names
_GATHER = 0.002
"""Seconds a round waits after the first change woke it, for others to join it: fewer,
larger transactions (each costs a thread hand-off and a WAL append) for 2 ms more before
a submit is answered."""

__all__ = ["ROUND_ITEMS", "Actor", "build_round", "committed", "wall"]


def wall(now: float) -> float:
    """The wall-clock time of trio's ``now``: the record outlives this process's clock."""
    try:
        return now + time.time() - trio.current_time()
    except RuntimeError:  # outside trio (the queue driven alone)
        return now


class Actor:
    """Keeps one :class:`SqliteWorkQueue`'s file in step with its decisions."""

    def __init__(self, queue: SqliteWorkQueue) -> None:
        self.q = queue
        self.wake = trio.Event()
        self.outage = Outage()
        self.backoff = Backoff(0.05, 2.0)
        self.rounds = 0
        self.errors = 0

    async def run(self, host: StoreHost, *, task_status: trio.TaskStatus[None]) -> None:
        """See :meth:`SqliteWorkQueue.run`."""
        q = self.q
        q._host = host
        if q._db is None:
            await self._open(host.hub_id)
        q._local.hub_id = host.hub_id
        for item in q._local.items():  # a run that ended wrote them handed back
            if item.status is ItemStatus.ASSIGNED:
                q._local.touch(item.id)
        task_status.started()
        try:
            await self._loop()
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await self._final()
                if not isinstance(exc, Exception):
                    # Cancelled: the hub is stopping. Let go of the file and its lock (a
                    # failed run keeps them: the service restarts it).
                    await trio.to_thread.run_sync(q.close)
            raise

    async def _open(self, hub_id: str) -> None:
        q = self.q
        if q._closed:
            raise ServiceFailed(
                f"the work store {q.path or q.state_dir} was closed; make a new one"
            )
        opened: list[tuple[Database, Opened]] = []

        def work() -> None:
            opened.append(q._open_files(hub_id))

        q._opening = True
        try:
            await trio.to_thread.run_sync(work)
        except ControlError as exc:
            raise ServiceFailed(str(exc)) from None
        finally:
            q._opening = False
            if opened:  # even if cancelled meanwhile: close() then lets go of the lock
                db, found = opened[0]
                q._install(db, found, hub_id)

    # --------------------------------------------------------------------------------
    # rounds

    async def _loop(self) -> None:
        q = self.q
        while True:
            self.wake = trio.Event()  # a change from now on wakes the next round
            if q._host is not None:
                q._served |= q._host.agent_types()
            if q._closed or not q._has_writes():
                await self.wake.wait()
                await trio.sleep(_GATHER)
                continue
            r = build_round(q, ROUND_ITEMS)
            try:
                await trio.to_thread.run_sync(q._write, r, abandon_on_cancel=True)
            except Exception as exc:  # never ends the store: logged once, retried
                q._local.put_back(r.ids)
                self._failed(exc)
                await trio.sleep(self.backoff.next())
                continue
            except BaseException:  # cancelled: it may still land; the final write redoes it
                q._local.put_back(r.ids)
                raise
            committed(q, r)
            self.rounds += 1
            lasted = self.outage.up(trio.current_time())
            if lasted is not None:
                _log.warning(
                    "work: %s written again after %.1f s; the changes held meanwhile are in it",
                    q.path,
                    lasted,
                )
            self.backoff.reset()

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.outage.down(trio.current_time()):
            _log.warning(
                "work: cannot write to %s (%s: %s); supervising on, %d changed items held in "
                "memory and written when it works again (submits wait for it)",
                self.q.path,
                type(exc).__name__,
                exc,
                len(self.q._local.dirty),
            )

    # --------------------------------------------------------------------------------
    # stop

    async def _final(self) -> None:
        """Hand back in the record what agents still hold (no delivery spent: the hub is
        going, not the item's fault) and write every change, with the clean-stop flag,
        waiting up to ``timeout`` seconds (real ones); each item not written is logged."""
        q = self.q
        if q._db is None or q._closed:
            return
        r = build_round(q, None)
        now = wall(trio.current_time())
        held = sorted(
            (i for i in q._local.items() if i.status is ItemStatus.ASSIGNED),
            key=lambda i: seq_of(i.id),
            reverse=True,  # each goes to the front: the oldest ends up first
        )
        back = []
        for item in held:
            q._local.lo -= 1
            back.append(encode(handed_back(item, now, q._local.hub_id), q._local.lo))
        mine = {row[0] for row in back}
        r.upserts = [row for row in r.upserts if row[0] not in mine] + back
        r.ids = list(dict.fromkeys([*r.ids, *mine]))
        r.clean = True
        error = await _bounded(lambda: q._write(r, q.timeout), q.timeout)
        if error is None:
            committed(q, r)
            if held:
                _log.info("work: %d held item(s) handed back in %s at stop", len(held), q.path)
            return
        q._local.put_back(r.ids)
        _unwritten(q, r.ids, error)


def build_round(q: SqliteWorkQueue, limit: int | None) -> Round:
    """The next round's rows (the oldest ``limit`` changed items, or all), from the
    items' current state: built on the trio thread, written in a worker."""
    local = q._local
    ids = local.take_dirty(len(local.dirty) if limit is None else limit)
    q._rounds_built += 1
    r = Round(
        ids,
        number=q._rounds_built,
        last_id=local.last_id,
        types=sorted(q._served - q._written_types),
    )
    if q._db_clean:
        r.clean = False  # the hub runs again: the file no longer says it stopped
    for item_id in ids:
        item = local._items.get(item_id)
        if item is None:
            r.deletes.append(item_id)
            continue
        try:
            r.upserts.append(encode(item, local.pos.get(item_id, 0)))
        except (TypeError, ValueError, RecursionError) as exc:
            q.poisoned += 1
            _log.error(
                "work %s: cannot be written to %s (%s: %s); kept in memory only",
                item_id,
                q.path,
                type(exc).__name__,
                exc,
            )
    return r


def committed(q: SqliteWorkQueue, r: Round) -> None:
    """Round ``r`` is in the file: answer the submits it held."""
    written = {row[0] for row in r.upserts}
    for item_id in r.ids:
        if item_id in written:
            event = q._waiting.pop(item_id, None)
            if event is not None:
                event.set()
    q._written_types.update(r.types)
    if r.clean is not None:
        q._db_clean = r.clean


async def _bounded(fn: Callable[[], None], timeout: float) -> BaseException | None:
    """Run ``fn`` in a thread of its own and wait for it up to ``timeout`` real seconds
    (not trio's clock: a stop must not wait on a hung disk, and a mock clock must not
    cut it short). The error it raised, or :class:`TimeoutError` (it goes on, alone)."""
    done = threading.Event()
    errors: list[BaseException | None] = []

    def work() -> None:
        try:
            fn()
            errors.append(None)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=work, name="hubvisor-sqlite-stop", daemon=True).start()
    if not await trio.to_thread.run_sync(done.wait, timeout):
        return TimeoutError(f"no answer in {timeout:g} s")
    return errors[0]


def _unwritten(q: SqliteWorkQueue, ids: list[str], error: BaseException) -> None:
    """Say which items the stop could not write: a submitted one is lost (its submit was
    never answered), the others are found as last written."""
    why = f"{type(error).__name__}: {error}"
    lost = [i for i in ids if i in q._waiting]
    rest = [i for i in ids if i not in q._waiting]
    if lost:
        _log.error(
            "work: %d submitted item(s) not written to %s at stop (%s), so lost (their "
            "submits were never answered): %s",
            len(lost),
            q.path,
            why,
            _shown(lost),
        )
    if rest:
        _log.warning(
            "work: the last changes of %d item(s) were not written to %s at stop (%s); the "
            "next start finds them as last written (held ones back in the queue): %s",
            len(rest),
            q.path,
            why,
            _shown(rest),
        )


def _shown(ids: list[str]) -> str:
    more = f" and {len(ids) - _IDS_SHOWN} more" if len(ids) > _IDS_SHOWN else ""
    return ", ".join(ids[:_IDS_SHOWN]) + more
