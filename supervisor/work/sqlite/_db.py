"""The state directory's database, as the store uses it: opened once (lock, checks,
load, the restart's own write), then written one round per transaction.

Every method that touches the file blocks: the store calls them from a worker thread
(or before the hub starts). One connection, used by one thread at a time (``_use``).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Literal

import attrs

from ..._errors import ControlError
from ._codec import Restored, Row, encode, restore
from ._files import DB_NAME, StateLock, make_state_dir
from ._schema import explain, open_database

_log = logging.getLogger("hubvisor")

__all__ = ["Database", "Opened", "Round"]

_UPSERT = (
    "INSERT INTO items (id, seq, type, status, pos, body) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET status = excluded.status, pos = excluded.pos, "
    "body = excluded.body"
)
_META = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


@attrs.define
class Round:
    """One transaction: the rows of the items changed since the last one, the rows of
    the items pruned meanwhile to delete, the id counter, new agent types."""

    ids: list[str]
    """The dirty ids the round stands for (dirty again if it fails)."""
    number: int = 0
    """Rounds are numbered as built; one older than a round already written is not
    written (every id it held was in that one, newer: a round given up on at a stop
    must not land after the stop's own write). 0: not numbered."""
    upserts: list[Row] = attrs.field(factory=list)
    deletes: list[str] = attrs.field(factory=list)
    last_id: int = 0
    types: list[str] = attrs.field(factory=list)
    clean: bool | None = None
    """Set the clean-stop flag to this (``None``: leave it)."""


@attrs.define
class Opened:
    """What opening the file found."""

    restored: Restored
    next_id: int
    types: set[str]
    clean: bool
    """Whether the last hub on the file stopped cleanly (else ids were skipped)."""
    skipped: int
    """Ids never handed out, skipped after an unclean stop."""


class Database:
    """The file ``<state dir>/work.sqlite3`` and the lock of its directory."""

    def __init__(
        self, directory: Path, *, fsync: Literal["normal", "always"], timeout: float
    ) -> None:
        self.directory = directory
        self.path = directory / DB_NAME
        self.fsync: Literal["normal", "always"] = fsync
        self.timeout = timeout
        self.lock = StateLock(directory)
        self.conn: sqlite3.Connection | None = None
        self._use = threading.Lock()
        self._close_later = False
        self.written = 0  # the number of the last round written
        self.commits = 0
        """Rounds committed (the open's own write not counted)."""
        self.rows = 0
        """Item rows those rounds wrote or deleted."""
        self.commit_seconds = 0.0
        """Seconds those transactions took, in the worker thread."""

    # --------------------------------------------------------------------------------
    # open

    def open(self, *, hub_id: str, keep_finished: int, max_held: int, now: float) -> Opened:
        """Take the directory's lock, open and check the file, read it, take back what
        the last hub's agents held, and write that (with ``clean = 0``: this hub has
        not stopped yet) in one transaction.

        Raises:
            ControlError: any problem, naming the directory or file and the fix; the
                lock is not kept then.
        """
        make_state_dir(self.directory)
        self.lock.acquire()
        try:
            conn = open_database(self.path, fsync=self.fsync, timeout=self.timeout)
            try:
                opened = self._load(conn, hub_id, keep_finished, max_held, now)
            except BaseException as exc:
                conn.close()
                if isinstance(exc, sqlite3.Error):
                    raise ControlError(explain(exc, self.path)) from None
                raise
        except BaseException:
            self.lock.release()
            raise
        self.conn = conn
        return opened

    def _load(
        self, conn: sqlite3.Connection, hub_id: str, keep: int, max_held: int, now: float
    ) -> Opened:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        rows: list[Row] = conn.execute(
            "SELECT id, seq, type, status, pos, body FROM items ORDER BY seq"
        ).fetchall()
        types = {str(r[0]) for r in conn.execute("SELECT type FROM types")}
        clean = meta.get("clean", "1") == "1"  # a new file is clean
        last = _int(meta.get("last_id"))
        # After an unclean stop, up to max_held ids may have been handed out (an item
        # submitted and assigned before its commit): never hand them out again.
        skipped = 0 if clean else _int(meta.get("max_held"), max_held)
        next_id = max(last + skipped, max((r[1] for r in rows), default=0)) + 1
        previous = meta.get("hub_id") or hub_id
        restored = restore(rows, keep_finished=keep, now=now, hub=previous, path=self.path)
        conn.execute("BEGIN IMMEDIATE")
        try:
            pos = restored.pos
            conn.executemany(_UPSERT, [encode(i, pos[i.id]) for i in restored.reclaimed])
            conn.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in restored.pruned])
            conn.executemany(
                _META,
                [
                    ("last_id", str(next_id - 1)),
                    ("clean", "0"),
                    ("max_held", str(max_held)),
                    ("hub_id", hub_id),
                ],
            )
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return Opened(restored, next_id, types, clean, skipped)

    # --------------------------------------------------------------------------------
    # write

    def write(self, r: Round, wait: float | None = None) -> None:
        """Write ``r`` in one transaction (in a worker thread). ``wait``: seconds to wait
        for a write still running in another thread (``None``: as long as it takes).

        Raises:
            sqlite3.Error, OSError: the write failed; nothing of it was written.
            TimeoutError: another write still runs after ``wait`` seconds.
        """
        if not self._use.acquire(timeout=-1 if wait is None else max(0.0, wait)):
            raise TimeoutError(f"a write to {self.path} still runs after {wait:g} s")
        try:
            conn = self.conn
            if conn is None:
                raise ControlError(f"the work store {self.path} is closed")
            if r.number and r.number < self.written:
                return  # stale: a newer round wrote its items as they are now
            began = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_UPSERT, r.upserts)
                conn.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in r.deletes])
                meta = [("last_id", str(r.last_id))]
                if r.clean is not None:
                    meta.append(("clean", "1" if r.clean else "0"))
                conn.executemany(_META, meta)
                conn.executemany(
                    "INSERT OR IGNORE INTO types (type) VALUES (?)", [(t,) for t in r.types]
                )
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            self.written = max(self.written, r.number)
            self.commits += 1
            self.rows += len(r.upserts) + len(r.deletes)
            self.commit_seconds += time.perf_counter() - began
        finally:
            if self._close_later:
                self._close()
            self._use.release()

    # --------------------------------------------------------------------------------
    # close

    def close(self, wait: float) -> bool:
        """Close the file and let go of the lock. A write still running in another
        thread (one the hub stopped waiting for) gets ``wait`` seconds; after that the
        file is closed when it ends. Returns whether it was closed now."""
        if not self._use.acquire(timeout=max(0.0, wait)):
            self._close_later = True
            _log.warning(
                "work: a write to %s still runs at close; the file is closed (and its "
                "lock let go) when it ends",
                self.path,
            )
            return False
        try:
            self._close()
        finally:
            self._use.release()
        return True

    def _close(self) -> None:
        conn, self.conn = self.conn, None
        try:
            if conn is not None:
                conn.close()
        except sqlite3.Error as exc:  # pragma: no cover - close fails only if misused
            _log.warning("work: closing %s: %s", self.path, exc)
        finally:
            self.lock.release()


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        # A broken connection cannot roll back: the next write says so.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
