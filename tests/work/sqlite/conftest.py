"""Helpers for the SQLite store's tests: a stand-in for the work service (what a store
asks of its host), a writer held at a gate, and the file read directly."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import attrs

from supervisor import SqliteWorkQueue, WorkItem
from supervisor.work.sqlite._db import Round


@attrs.define
class FakeHost:
    """The :class:`~supervisor.work.StoreHost` a store runs under, without a hub."""

    hub_id: str = "hub"
    watched: set[str] = attrs.field(factory=set)
    types: set[str] = attrs.field(factory=set)

    def agent_types(self) -> set[str]:
        return set(self.types)

    def agent_counts(self) -> dict[str, int]:
        return {}

    def idle_counts(self) -> dict[str, int]:
        return {}

    def poke(self) -> None:
        pass

    def lost(self, item: WorkItem, reason: str) -> None:
        pass

    def dead_elsewhere(self, item: WorkItem) -> None:
        pass


class GatedQueue(SqliteWorkQueue):
    """A store whose writer (in its worker thread) waits at ``gate`` before each write,
    or sleeps ``delay`` seconds: a disk that does not answer, or a slow one."""

    def __init__(self, *args: Any, delay: float = 0.0, gate_stop: bool = True, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.gate = threading.Event()
        self.gate.set()
        self.gate_stop = gate_stop  # False: the stop's own write passes the gate
        self.delay = delay
        self.writing = threading.Event()  # a write is waiting at the gate or sleeping
        self.writes_done = 0
        self.sizes: list[int] = []  # rows each write held

    def _write(self, r: Round, wait: float | None = None) -> None:
        self.writing.set()
        if self.delay:
            threading.Event().wait(self.delay)  # the slow disk (a real wait in the thread)
        if self.gate_stop or r.clean is not True:
            self.gate.wait(60)
        self.sizes.append(len(r.upserts) + len(r.deletes))
        try:
            super()._write(r, wait)
        finally:
            self.writing.clear()
            self.writes_done += 1


def rows(state_dir: Path) -> dict[str, dict[str, Any]]:
    """The items in the file, read with a connection of its own: id -> body (+ status
    and pos columns)."""
    conn = sqlite3.connect(state_dir / "work.sqlite3")
    try:
        found = {}
        for item_id, status, pos, body in conn.execute(
            "SELECT id, status, pos, body FROM items ORDER BY seq"
        ):
            found[item_id] = {**json.loads(body), "_status": status, "_pos": pos}
        return found
    finally:
        conn.close()


def meta(state_dir: Path) -> dict[str, str]:
    """The file's meta table."""
    conn = sqlite3.connect(state_dir / "work.sqlite3")
    try:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    finally:
        conn.close()
