"""The SQLite work store: one hub's durable queues in a file of its state directory."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import trio

from ..._errors import ConfigError, ControlError
from .._item import ItemStatus, Verdict, WorkItem, _now
from .._ordering import LocalOrdering
from .._store import ActorCounters, StoreHost
from ._actor import Actor, build_round, committed, wall
from ._db import Database, Opened, Round
from ._files import DB_NAME, default_state_dir
from ._local import TrackedQueue

_log = logging.getLogger("hubvisor")

__all__ = ["SqliteWorkQueue"]


class _Controls:
    """What the work service asks of a queue with dependencies, keys and tiers (issue
    21), answered by the queue that decides (``_local``)."""

    _local: TrackedQueue

    def _ready(self, need: bool = False) -> bool:
        raise NotImplementedError

    @property
    def settled(self) -> list[WorkItem]:
        """Items cancelled by a dependency, not reported yet (see MemoryWorkQueue)."""
        return self._local.settled

    def depth_for(self, agent_type: str, labels: Mapping[str, str]) -> int:
        """Queued items of ``agent_type`` a pool with ``labels`` may take."""
        return self._local.depth_for(agent_type, labels)

    def blocked(self, agent_type: str) -> int:
        """Items of ``agent_type`` waiting for their dependencies."""
        return self._local.blocked(agent_type)

    def keyed(self, agent_type: str, key: str) -> WorkItem | None:
        """The kept item of ``agent_type`` submitted with ``key``, if any."""
        self._ready()
        return self._local.keyed(agent_type, key)


class _Reporting(ActorCounters):
    """Where the store is and what it wrote (the start line, ``status``, benchmarks)."""

    path: Path | None
    fsync: Literal["normal", "always"]
    _db: Database | None
    _stats: tuple[int, int, float]
    _waiting: dict[str, trio.Event]

    def describe(self) -> str:
        """Where the work lives (the hub logs it at start; ``status`` shows it)."""
        where = self.path or "the state directory of the hub's id (not open yet)"
        return f"kept in SQLite at {where} (fsync {self.fsync}; this hub alone)"

    # For tests, benchmarks and metrics.

    @property
    def write_stats(self) -> tuple[int, int, float]:
        """Since the file was opened: rounds committed, item rows they wrote or deleted,
        and the seconds those transactions took in the worker thread."""
        db = self._db
        return self._stats if db is None else (db.commits, db.rows, db.commit_seconds)

    @property
    def held(self) -> int:
        """Submits waiting for their commit."""
        return len(self._waiting)


class SqliteWorkQueue(_Controls, _Reporting, LocalOrdering):
    """A :class:`~supervisor.WorkStore` that keeps one hub's work in SQLite, so that a
    restart, a crash or a reboot of the hub loses nothing acknowledged.

    Decisions stay in memory and synchronous (a :class:`~supervisor.MemoryWorkQueue`);
    the file (``<state_dir>/work.sqlite3``, WAL mode) is the record, written behind by the
    store's actor in a worker thread, one transaction per round, so a slow disk never
    delays supervision. A submit is answered (:meth:`stored`) only once its commit is
    done. See ``docs/work-sqlite.md``.

    Args:
        state_dir: the hub's state directory (created 0700); ``None``: the
            :func:`default_state_dir` of the hub's id, resolved when the hub starts.
        keep_finished: completed, failed and dead items kept (the oldest are deleted
            beyond that); queued and assigned ones are always kept.
        fsync: ``"normal"`` (``synchronous=NORMAL``: a power loss may lose the last
            commits, a process crash none) or ``"always"`` (``FULL``: an fsync per commit).
        timeout: seconds to wait for the file's lock (another process writing it), and
            at stop for the last write.
        max_held: submits that may wait for their commit; past that a submit is refused
            until the disk catches up.

    Example::

        hub = Hub(spec, work=WorkService(SqliteWorkQueue("/var/lib/myhub")))
    """

    shared = False
    """One hub's store: every item ends here, so nobody needs to read it again."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        keep_finished: int = 10_000,
        fsync: Literal["normal", "always"] = "normal",
        timeout: float = 5.0,
        max_held: int = 10_000,
    ) -> None:
        _check_options(keep_finished, fsync, timeout, max_held)
        self.state_dir: Path | None = (
            None if state_dir is None else Path(state_dir).expanduser().absolute()
        )
        """The state directory (``None`` until the hub id resolves it)."""
        self.path: Path | None = None if self.state_dir is None else self.state_dir / DB_NAME
        """The database file (``None`` until the state directory is known)."""
        self.keep_finished = keep_finished
        self.fsync: Literal["normal", "always"] = fsync
        self.timeout = float(timeout)
        self.max_held = max_held
        self.opened: Opened | None = None
        """What opening the file found (``None`` before)."""
        self._local = TrackedQueue(keep_finished=keep_finished)
        self._db: Database | None = None
        self._opening = False
        self._closed = False
        self._db_clean = False  # what the file's clean-stop flag says now
        self._waiting: dict[str, trio.Event] = {}  # submitted, not committed yet
        self._served: set[str] = set()  # agent types served (the file's and this run's)
        self._written_types: set[str] = set()
        self._host: StoreHost | None = None
        self._rounds_built = 0
        self._stats: tuple[int, int, float] = (0, 0, 0.0)
        self.poisoned = 0
        """Changes that could never be written (a value that is not JSON; logged)."""
        self._actor = Actor(self)

    def __repr__(self) -> str:
        where = str(self.state_dir) if self.state_dir is not None else None
        return f"SqliteWorkQueue({where!r}, keep_finished={self.keep_finished})"

    # ----------------------------------------------------------------------------------
    # the file

    def check_hub_id(self, hub_id: str) -> None:
        """Before the hub starts: resolve the state directory, create it, take its lock,
        open and check the file and read it (what a dead hub's agents held goes back to
        the queue). A no-op once open.

        Raises:
            ControlError: another hub has the directory (naming its pid), or the file
                cannot be used (not a database, a newer schema, read-only, disk full);
                the message names the path and the fix.
        """
        if self._db is None:
            db, opened = self._open_files(hub_id)
            self._install(db, opened, hub_id)

    def _open_files(self, hub_id: str) -> tuple[Database, Opened]:
        """Open the file (blocking; touches nothing the trio thread uses)."""
        if self._closed:
            raise ControlError(f"the work store {self.path} was closed; make a new one")
        directory = self.state_dir if self.state_dir is not None else default_state_dir(hub_id)
        db = Database(directory, fsync=self.fsync, timeout=self.timeout)
        opened = db.open(
            hub_id=hub_id, keep_finished=self.keep_finished, max_held=self.max_held, now=time.time()
        )
        return db, opened

    def _install(self, db: Database, opened: Opened, hub_id: str) -> None:
        self.state_dir, self.path = db.directory, db.path
        self._db, self.opened = db, opened
        self._local.hub_id = hub_id
        restored = opened.restored
        self._local.install(restored.items, restored.pos, opened.next_id)
        self._served |= opened.types
        self._written_types |= opened.types
        queued = sum(1 for i in restored.items if i.status is ItemStatus.QUEUED)
        _log.debug(
            "work: %s holds %d items queued and %d finished",
            db.path,
            queued,
            len(restored.items) - queued,
        )
        if restored.reclaimed:
            _log.warning(
                "work: %d item(s) the agents of the last hub on %s held went back to the "
                "queue, the attempt counted (%d of them dead: it was their last delivery)",
                len(restored.reclaimed),
                db.path,
                sum(1 for i in restored.reclaimed if i.status is ItemStatus.DEAD),
            )
        if not opened.clean:
            _log.warning(
                "work: the last hub on %s did not stop cleanly; item ids skip %d (some may "
                "have been handed out unwritten)",
                db.path,
                opened.skipped,
            )

    def _ready(self, need: bool = False) -> bool:
        """Open the file now if it is not and can be (its directory is known)."""
        if self._db is not None:
            return True
        if not (self._closed or self._opening or self.state_dir is None):
            self.check_hub_id(self._local.hub_id)
            return True
        if need:
            if self._closed:
                raise ControlError(f"the work store {self.path} is closed")
            raise ControlError(
                "the SQLite work store opens when the hub starts (its state directory "
                "depends on the hub id); submit once the hub runs, or give "
                "SqliteWorkQueue(state_dir) a directory"
            )
        return False

    def close(self) -> None:
        """Let go of the file and of the directory's lock (idempotent). The clean-stop
        flag is written when every change is (so the next start hands out ids exactly
        where this one stopped)."""
        self._closed = True
        self._stats = self.write_stats  # the file's counts, kept once it is closed
        db, self._db = self._db, None
        if db is None:
            return
        clean = not self._local.dirty and not self._waiting
        wait = self.timeout
        if clean != self._db_clean:
            try:
                db.write(Round([], last_id=self._local.last_id, clean=clean), wait)
            except Exception as exc:
                _log.warning("work: could not mark %s closed (%s)", db.path, exc)
                wait = 0.0  # a write still runs (a hung disk): waited for once already
        db.close(wait)

    def flush_sync(self) -> None:
        """Write every change now, blocking (tests; a last write outside trio).

        Raises:
            ControlError: the write failed (the changes stay held for the next one).
        """
        self._ready(need=True)
        r = build_round(self, None)
        try:
            self._write(r)
        except Exception as exc:
            self._local.put_back(r.ids)
            raise ControlError(f"writing {self.path} failed ({type(exc).__name__}: {exc})") from exc
        committed(self, r)

    # What the actor calls.

    def _has_writes(self) -> bool:
        return bool(self._local.dirty) or not self._served <= self._written_types

    def _write(self, r: Round, wait: float | None = None) -> None:
        """Write one round (in a worker thread; a test may slow it down)."""
        db = self._db
        if db is None:
            raise ControlError(f"the work store {self.path} is closed")
        db.write(r, wait)

    # ----------------------------------------------------------------------------------
    # WorkQueue: decided in memory, written behind

    def get(self, item_id: str) -> WorkItem:
        """The item with ``item_id``."""
        self._ready()
        return self._local.get(item_id)

    def items(self) -> Iterable[WorkItem]:
        """Every item kept, oldest first."""
        self._ready()
        return self._local.items()

    def held_by(self, agent: str) -> WorkItem | None:
        """The item ``agent`` holds, if any."""
        return self._local.held_by(agent)

    def has_work(self, agent_type: str) -> bool:
        """Whether an item of ``agent_type`` is queued."""
        return self._local.has_work(agent_type)

    def depth(self, agent_type: str) -> int:
        """How many items of ``agent_type`` are queued."""
        self._ready()
        return self._local.depth(agent_type)

    # --- ordering (issue 21; the rest: LocalOrdering) ---

    def retry_later(self, item_id: str, seconds: float) -> WorkItem | None:
        """Hold a queued item ``seconds`` (see :meth:`MemoryWorkQueue.retry_later`)."""
        item = self._local.retry_later(item_id, seconds)
        if item is not None:
            self._local.touch(item_id)
            self._actor.wake.set()
        return item

    # --- end ordering ---

    def submit(
        self,
        agent_type: str,
        payload: Any,
        *,
        max_deliveries: int,
        source: str,
        now: float,
        key: str | None = None,
        after: Iterable[str] = (),
        require: dict[str, str] | None = None,
        priority: int = 0,
        not_before: float | None = None,
    ) -> WorkItem:
        """Queue the item; :meth:`stored` waits for its commit. With ``key``, the kept
        item of that type and key is returned instead, if any (its commit, when still
        pending, is what :meth:`stored` waits for); ``after``: see
        :meth:`MemoryWorkQueue.submit`.

        Raises:
            ControlError: ``max_held`` submits already wait for their commit (the disk is
                slow or failing), or the file cannot be opened.
        """
        self._ready(need=True)
        if key is not None:
            existing = self._local.keyed(agent_type, key)
            if existing is not None:
                return existing
        if len(self._waiting) >= self.max_held:
            raise ControlError(
                f"{len(self._waiting)} submitted items wait to be written to {self.path}, the "
                f"cap (SqliteWorkQueue(max_held={self.max_held})); the disk is slow or failing "
                "(see the hub's log): submit again when it catches up"
            )
        item = self._local.submit(
            agent_type,
            payload,
            max_deliveries=max_deliveries,
            source=source,
            now=wall(now),
            key=key,
            after=after,
            require=require,
            priority=priority,
            not_before=not_before,
        )
        self._waiting[item.id] = trio.Event()
        self._actor.wake.set()
        return item

    def assign(
        self, agent_type: str, agent: str, now: float, labels: Mapping[str, str] | None = None
    ) -> WorkItem | None:
        """Give the oldest queued item of ``agent_type`` (that ``labels`` match) to ``agent``."""
        item = self._local.assign(agent_type, agent, wall(now), labels)
        if item is not None:
            self._actor.wake.set()
        return item

    def complete(self, item_id: str, attempt: int, agent: str, result: Any, now: float) -> Verdict:
        """The agent finished the item (fenced)."""
        return self._changed(self._local.complete(item_id, attempt, agent, result, wall(now)))

    def fail(
        self, item_id: str, attempt: int, agent: str, error: str, retry: bool, now: float
    ) -> Verdict:
        """The agent failed the item (fenced)."""
        return self._changed(self._local.fail(item_id, attempt, agent, error, retry, wall(now)))

    def hand_back(self, item_id: str, attempt: int, agent: str, now: float) -> Verdict:
        """The agent gives the item back; no delivery is spent (fenced)."""
        return self._changed(self._local.hand_back(item_id, attempt, agent, wall(now)))

    def progress(
        self, item_id: str, attempt: int, agent: str, progress: Any, checkpoint: Any
    ) -> Verdict:
        """Keep the progress and the checkpoint (fenced)."""
        return self._changed(self._local.progress(item_id, attempt, agent, progress, checkpoint))

    def reclaim(
        self, agent: str, reason: Literal["exit", "hang", "stop", "unreachable"], now: float
    ) -> Verdict:
        """Take back what ``agent`` holds (see :meth:`MemoryWorkQueue.reclaim`)."""
        return self._changed(self._local.reclaim(agent, reason, wall(now)))

    def retry(self, item_id: str, now: float) -> WorkItem:
        """Queue a dead or failed item again, with fresh deliveries."""
        self._ready()
        item = self._local.retry(item_id, wall(now))
        self._actor.wake.set()
        return item

    # -- cancel and time limits (issue 21) --

    def cancel(self, item_id: str, reason: str, now: float) -> WorkItem:
        """End a queued or assigned item ``cancelled`` (see :meth:`MemoryWorkQueue.cancel`)."""
        self._ready()
        item = self._local.cancel(item_id, reason, wall(now))
        self._actor.wake.set()
        return item

    def time_out(self, item_id: str, attempt: int, reason: str, now: float) -> Verdict:
        """End the attempt ``timed_out`` (see :meth:`MemoryWorkQueue.time_out`)."""
        return self._changed(self._local.time_out(item_id, attempt, reason, wall(now)))

    def _changed(self, verdict: Verdict) -> Verdict:
        if verdict.accepted:
            self._actor.wake.set()
        return verdict

    # ----------------------------------------------------------------------------------
    # WorkStore

    @property
    def known_types(self) -> set[str] | None:
        """The agent types a hub on this file ever served, and those served now (an
        agent's ``SUBMIT=`` must name one); ``None`` before the file is open."""
        if self._db is None:
            return None
        now = self._host.agent_types() if self._host is not None else set()
        return self._served | now

    async def run(self, host: StoreHost, *, task_status: trio.TaskStatus[None]) -> None:
        """Serve as the service's store until cancelled (opening the file first, in a
        worker thread, if :meth:`check_hub_id` did not); then hand back in the record
        what agents still hold, without spending a delivery, and write everything,
        waiting up to ``timeout`` seconds (each item not written is logged by id).

        Raises:
            ServiceFailed: the file cannot be opened (the reason and the fix).
        """
        await self._actor.run(host, task_status=task_status)

    def poke(self) -> None:
        """Idle agents appeared: nothing to fetch (every item is here already)."""

    async def stored(self, item_id: str, timeout: float) -> bool:
        """Wait until the submitted item is committed (False after ``timeout`` seconds:
        it is held and written when the disk allows)."""
        event = self._waiting.get(item_id)
        if event is None:
            return True
        with trio.move_on_after(timeout):
            await event.wait()
        return event.is_set()

    async def fetch(self, item_id: str) -> WorkItem:
        """The item (every item is here)."""
        return self.get(item_id)

    async def retry_any(self, item_id: str) -> WorkItem:
        """Queue a dead or failed item again."""
        return self.retry(item_id, _now())

    async def cluster(self) -> dict[str, Any]:
        """Refused: a SQLite store serves one hub."""
        raise ControlError(
            f"this hub keeps its work in SQLite at {self.path}, alone; start hubs with "
            "--redis URL to share queues between them"
        )


def _check_options(keep_finished: Any, fsync: Any, timeout: Any, max_held: Any) -> None:
    """Refuse bad :class:`SqliteWorkQueue` arguments, naming the value and the fix."""
    for name, value, low in (("keep_finished", keep_finished, 0), ("max_held", max_held, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(
                f"SqliteWorkQueue({name}=...) must be an int >= {low} (got {value!r})"
            )
    if fsync not in ("normal", "always"):
        raise ConfigError(
            f"SqliteWorkQueue(fsync=...) must be 'normal' or 'always' (got {fsync!r})"
        )
    if (
        not isinstance(timeout, int | float)
        or isinstance(timeout, bool)
        or not 0 < timeout < math.inf
    ):
        raise ConfigError(f"SqliteWorkQueue(timeout=...) must be seconds > 0 (got {timeout!r})")
