"""The database file: opening it, checking it is ours and of a version we know, and
bringing an older one up to date.

The schema version is ``PRAGMA user_version``; ``PRAGMA application_id`` marks the file
as hubvisor's. :data:`MIGRATIONS` maps each version to the function that brings a file of
the version before it up to it, each run in its own transaction, so a file of any older
version opens (version 0 is a new, empty file). A file of a newer version is refused: an
older hubvisor would not understand it.

Schema 1:

* ``items``: one row per item kept: ``id``, ``seq`` (the ``n`` of ``<type>-<n>``, for
  order), ``type``, ``status``, ``pos`` (its place in its type's queue while queued, in
  the finished list once finished) and ``body``, the item as JSON
  (:meth:`WorkItem.to_json` and its checkpoint), so a field added to items needs no
  migration.
* ``meta``: ``last_id`` (the last ``n`` handed out), ``clean`` (``1``: the last hub
  stopped cleanly, so ``last_id`` is exact), ``max_held`` (how many ids that hub could
  hand out past ``last_id``), ``hub_id``.
* ``types``: every agent type a hub on this file served.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from ..._errors import ControlError

SCHEMA_VERSION = 1
APPLICATION_ID = 0x48554256  # "HUBV"

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "explain", "open_database"]


def _to_v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE items ("
        " id TEXT PRIMARY KEY,"
        " seq INTEGER NOT NULL,"
        " type TEXT NOT NULL,"
        " status TEXT NOT NULL,"
        " pos INTEGER NOT NULL,"
        " body TEXT NOT NULL)"
    )
    conn.execute("CREATE INDEX items_seq ON items (seq)")
    conn.execute("CREATE INDEX items_status ON items (status, type, pos)")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("CREATE TABLE types (type TEXT PRIMARY KEY)")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _to_v1}
"""Version -> the function that brings a file of the version before it up to it (in a
transaction; ``user_version`` is set after it). Schema 2 goes here as ``2: _to_v2``."""


def open_database(
    path: Path, *, fsync: Literal["normal", "always"], timeout: float
) -> sqlite3.Connection:
    """Open (or create) the database at ``path``, check it and migrate it.

    The connection is in autocommit mode (the writer opens its own transactions), may be
    used from any thread (one at a time), and waits up to ``timeout`` seconds for a lock.

    Raises:
        ControlError: the file is not a SQLite database or is damaged, is of a newer or
            unknown schema, cannot be written, or its disk is full; the message names
            the file and the fix.
    """
    try:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise ControlError(explain(exc, path)) from None
    try:
        _check_and_migrate(conn, path)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ControlError(
                f"{path} cannot use write-ahead logging (journal mode {mode!r}); put the "
                "state directory on a local file system with --state-dir"
            )
        conn.execute(f"PRAGMA synchronous = {'FULL' if fsync == 'always' else 'NORMAL'}")
    except sqlite3.Error as exc:
        conn.close()
        raise ControlError(explain(exc, path)) from None
    except BaseException:
        conn.close()
        raise
    return conn


def _check_and_migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    app = int(conn.execute("PRAGMA application_id").fetchone()[0])
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    if app != APPLICATION_ID and (app != 0 or version != 0 or tables):
        raise ControlError(
            f"{path} is a SQLite database, but not hubvisor's work store (application id "
            f"{app:#x}, schema {version}, tables {', '.join(tables[:5]) or '(none)'}); move it "
            "away, or give the hub another state directory with --state-dir"
        )
    if version > SCHEMA_VERSION:
        raise ControlError(
            f"{path} holds work store schema {version}, newer than this hubvisor knows "
            f"(schema {SCHEMA_VERSION}); run the hubvisor that wrote it (or a newer one), "
            "or give this one another state directory with --state-dir"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        migrate = MIGRATIONS.get(target)
        if migrate is None:  # pragma: no cover - a gap in MIGRATIONS is a bug
            raise ControlError(f"no migration to work store schema {target} for {path}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrate(conn)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def explain(exc: BaseException, path: Path) -> str:
    """What SQLite's ``exc`` means for the work store at ``path``, and the fix."""
    text = str(exc)
    low = text.lower()
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return (
            f"{path} is not a SQLite database or is damaged (sqlite: {text}); move it away "
            f"(e.g. `mv {path} {path}.bad`; the hub then starts with no work) or give the hub "
            "another state directory with --state-dir"
        )
    if "readonly" in low or "read-only" in low or "unable to open" in low:
        return (
            f"cannot write {path} (sqlite: {text}); make the file and its directory "
            f"{path.parent} writable by this user, or give the hub another state directory "
            "with --state-dir"
        )
    if "locked" in low or "busy" in low:
        return (
            f"{path} is locked by another process (sqlite: {text}); stop whatever has it "
            "open, or give the hub another state directory with --state-dir"
        )
    if "full" in low:
        return (
            f"the disk holding {path} is full (sqlite: {text}); free space on it, or give "
            "the hub another state directory with --state-dir"
        )
    return (
        f"cannot use the work store {path} (sqlite: {text}); check the file and its "
        "directory, or give the hub another state directory with --state-dir"
    )
