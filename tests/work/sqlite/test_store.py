"""The SQLite store's file: what a hub finds when it opens it again (after a clean close,
after a SIGKILL), one hub per directory, and every file it refuses, with the fix."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from supervisor import ControlError, ItemStatus, SqliteWorkQueue
from supervisor._errors import ConfigError
from supervisor.work.sqlite import _schema as schema, default_state_dir
from supervisor.work.sqlite._codec import RESTART_REASON

from .conftest import meta, rows

QUEUED, DEAD = ItemStatus.QUEUED, ItemStatus.DEAD


def submit(q: SqliteWorkQueue, agent_type: str = "w", n: int = 0, deliveries: int = 3) -> str:
    return q.submit(agent_type, {"n": n}, max_deliveries=deliveries, source="t", now=1.0).id


def order(q: SqliteWorkQueue, agent_type: str) -> list[str]:
    """The ids of ``agent_type``'s queue, front first (assigning each to a fresh agent)."""
    got: list[str] = []
    while (item := q.assign(agent_type, f"probe-{agent_type}-{len(got)}", 9.0)) is not None:
        got.append(item.id)
    return got


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


# --------------------------------------------------------------------------------------
# Reopening


def test_a_clean_close_keeps_every_item_as_it_was_and_ids_go_on_exactly(state: Path) -> None:
    q = SqliteWorkQueue(state)
    a, b, c, d = (submit(q, n=n, deliveries=1 if n == 1 else 3) for n in range(4))
    assert q.assign("w", "x", 2.0) is not None  # a
    assert q.progress(a, 1, "x", {"pct": 50}, {"line": 7}).accepted
    assert q.complete(a, 1, "x", {"ok": True}, 3.0).accepted
    q.assign("w", "y", 4.0)  # b, one delivery
    assert q.reclaim("y", "exit", 5.0).accepted  # b: dead
    q.assign("w", "z", 6.0)  # c
    assert q.hand_back(c, 1, "z", 7.0).accepted  # c back at the front: c d
    q.retry(b, 8.0)  # c d b
    before = {i.id: (i.to_json(), i.checkpoint) for i in q.items()}
    q.flush_sync()
    q.close()
    assert "1" == meta(state)["clean"]

    again = SqliteWorkQueue(state)
    assert before == {i.id: (i.to_json(), i.checkpoint) for i in again.items()}
    assert "w-5" == submit(again)  # no id skipped after a clean close
    assert [c, d, b, "w-5"] == order(again, "w")
    assert again.opened is not None and again.opened.clean and not again.opened.restored.reclaimed
    again.close()


def test_keep_finished_pruning_deletes_the_rows_and_holds_across_a_reopen(state: Path) -> None:
    q = SqliteWorkQueue(state, keep_finished=2)
    ids = [submit(q, n=n) for n in range(5)]
    for n, item_id in enumerate(ids[:4]):
        q.assign("w", f"a{n}", 1.0)
        assert q.complete(item_id, 1, f"a{n}", n, 2.0 + n).accepted
    q.flush_sync()
    assert [ids[2], ids[3], ids[4]] == list(rows(state))  # the two oldest finished: deleted
    q.close()

    again = SqliteWorkQueue(state, keep_finished=1)  # a smaller bound prunes at open
    assert [ids[3], ids[4]] == [i.id for i in again.items()]
    again.close()
    assert [ids[3], ids[4]] == list(rows(state))


CRASHING_HUB = r"""
import sys, time
from supervisor import SqliteWorkQueue
q = SqliteWorkQueue(sys.argv[1], max_held=100)
def submit(t, n, deliveries=3):
    return q.submit(t, {"n": n}, max_deliveries=deliveries, source="t", now=1.0).id
a, b, c, d = submit("w", 1), submit("w", 2, deliveries=1), submit("w", 3), submit("qc", 4)
q.assign("w", "w-1", 2.0)  # a
q.assign("w", "w-2", 2.0)  # b: its only delivery
q.progress(a, 1, "w-1", {"pct": 50}, {"line": 7})
q.assign("w", "w-3", 2.0)  # c
q.hand_back(c, 1, "w-3", 3.0)  # c back in line, first
q.flush_sync()
q.submit("w", {"n": 5}, max_deliveries=3, source="t", now=4.0)  # never written
print(a, b, c, d, flush=True)
time.sleep(60)
"""


def test_a_sigkilled_hub_leaves_its_held_items_first_in_line_with_the_attempt_counted(
    state: Path,
) -> None:
    """A real process opens the file, hands items to agents, writes, submits one more
    and is SIGKILLed: the next open finds the held items back at the front of their
    queue (the oldest first, before the one handed back), the lost attempt counted and
    in their history (dead if it was the last delivery), the unwritten submit gone, its
    directory lock free, and ids skipping past any the dead hub could have handed out."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_HUB, str(state)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        a, b, c, d = proc.stdout.readline().split()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    q = SqliteWorkQueue(state)
    items = {i.id: i for i in q.items()}
    assert [a, b, c, d] == list(items)  # w-5 was never written: never acknowledged
    held = items[a]
    assert (QUEUED, 1, 1, None) == (held.status, held.attempt, held.deliveries, held.agent)
    assert ({"pct": 50}, {"line": 7}) == (held.progress, held.checkpoint)
    assert [(1, "w-1", "reclaimed:exit", RESTART_REASON)] == [
        (h.attempt, h.agent, h.outcome, h.reason) for h in held.history
    ]
    dead = items[b]
    assert (DEAD, 1) == (dead.status, dead.deliveries)
    assert dead.error == f"used all 1 deliveries: {RESTART_REASON}"
    assert ["handed_back"] == [h.outcome for h in items[c].history]
    assert 0 == items[c].deliveries
    assert "w-105" == submit(q)  # last written id 4, and up to max_held=100 unwritten
    assert [a, c, "w-105"] == order(q, "w")
    assert [d] == order(q, "qc")
    q.close()


def test_a_restart_that_dies_before_writing_counts_the_attempt_once(state: Path) -> None:
    q = SqliteWorkQueue(state)
    a = submit(q)
    q.assign("w", "x", 1.0)
    q.flush_sync()
    q.close()  # as a crash: the file still says x holds it
    shutil.copytree(state, state.with_name("copy"))
    for directory in (state, state.with_name("copy"), state.with_name("copy")):
        again = SqliteWorkQueue(directory)
        item = again.get(a)
        assert (QUEUED, 1, 1) == (item.status, item.attempt, item.deliveries)
        assert 1 == len(item.history)
        again.close()


# --------------------------------------------------------------------------------------
# One hub per directory


def test_a_second_opener_in_the_same_process_is_refused_naming_the_pid(state: Path) -> None:
    first = SqliteWorkQueue(state)
    first.check_hub_id("a")
    second = SqliteWorkQueue(state)
    with pytest.raises(ControlError) as caught:
        second.check_hub_id("b")
    assert f"another hub (pid {os.getpid()}) uses the state directory {state}" in str(caught.value)
    assert "--state-dir" in str(caught.value)
    first.close()
    second.check_hub_id("b")  # free once the first let go
    second.close()


HOLDER = r"""
import sys, time
from supervisor import SqliteWorkQueue
SqliteWorkQueue(sys.argv[1]).check_hub_id("other")
print("ready", flush=True)
time.sleep(60)
"""


def test_a_hub_in_another_process_keeps_the_directory_until_it_dies(state: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and "ready\n" == proc.stdout.readline()
        with pytest.raises(ControlError, match=rf"another hub \(pid {proc.pid}\) uses the state"):
            SqliteWorkQueue(state).check_hub_id("me")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    q = SqliteWorkQueue(state)  # the kernel let go of a dead hub's lock
    q.check_hub_id("me")
    q.close()


def open_fds_in(state: Path) -> list[int]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(state)):
            found.append(int(fd))
    return found


def test_no_file_of_the_store_is_inherited_by_a_child(state: Path) -> None:
    """The lock and the database are close-on-exec: an agent that outlives its hub must
    not keep the directory locked (nor the file open)."""
    q = SqliteWorkQueue(state)
    submit(q)
    q.flush_sync()
    fds = open_fds_in(state)
    assert len(fds) >= 2  # the lock, the database (and its WAL files)
    for fd in fds:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, os.readlink(f"/proc/self/fd/{fd}")
    listing = subprocess.run(
        ["ls", "-l", "/proc/self/fd/"], capture_output=True, text=True, close_fds=False, check=True
    ).stdout
    assert str(state) not in listing
    q.close()
    assert [] == open_fds_in(state)


# --------------------------------------------------------------------------------------
# Files it refuses


def refused(state: Path) -> str:
    q = SqliteWorkQueue(state)
    with pytest.raises(ControlError) as caught:
        q.check_hub_id("h")
    assert [] == open_fds_in(state), "a refused open keeps nothing open (nor the lock)"
    return str(caught.value)


def test_a_file_that_is_not_a_database_is_refused_with_the_fix(state: Path) -> None:
    state.mkdir()
    (state / "work.sqlite3").write_bytes(b"this is not SQLite\n" * 300)
    message = refused(state)
    assert f"{state / 'work.sqlite3'} is not a SQLite database or is damaged" in message
    assert f"mv {state / 'work.sqlite3'} " in message
    assert message == refused(state)  # not "locked": the failed open let go of the lock


def test_a_damaged_database_is_refused_not_started_fresh(state: Path) -> None:
    q = SqliteWorkQueue(state)
    for n in range(200):
        submit(q, n=n)
    q.flush_sync()
    q.close()
    path = state / "work.sqlite3"
    data = bytearray(path.read_bytes())
    data[4096:12288] = b"\xff" * 8192  # pages of the items table
    path.write_bytes(bytes(data))
    assert "is not a SQLite database or is damaged" in refused(state)


def test_a_newer_schema_is_refused_naming_both_versions(state: Path) -> None:
    q = SqliteWorkQueue(state)
    q.check_hub_id("h")
    q.close()
    with closing(sqlite3.connect(state / "work.sqlite3", isolation_level=None)) as conn:
        conn.execute("PRAGMA user_version = 7")
    message = refused(state)
    assert "holds work store schema 7, newer than this hubvisor knows (schema 1)" in message
    assert "--state-dir" in message


def test_another_programs_database_is_refused(state: Path) -> None:
    state.mkdir()
    with closing(sqlite3.connect(state / "work.sqlite3", isolation_level=None)) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER)")
    assert "is a SQLite database, but not hubvisor's work store" in refused(state)


def test_an_older_schema_is_migrated_in_place_keeping_its_items(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Schema 2 has a place to go: a migration function per version, run in order."""
    q = SqliteWorkQueue(state)
    a = submit(q)
    q.flush_sync()
    q.close()

    def to_v2(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE items ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")

    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(schema.MIGRATIONS, 2, to_v2)
    again = SqliteWorkQueue(state)
    assert [a] == [i.id for i in again.items()]
    again.close()
    with closing(sqlite3.connect(state / "work.sqlite3", isolation_level=None)) as conn:
        assert 2 == conn.execute("PRAGMA user_version").fetchone()[0]
        assert [(a, 0)] == conn.execute("SELECT id, priority FROM items").fetchall()


def test_a_state_directory_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    message = refused(tmp_path / "file" / "state")
    assert f"cannot create the state directory {tmp_path / 'file' / 'state'}" in message


def open_read_only(target: Path, state: Path) -> str:
    """Open ``state`` in a process for which ``target`` is read-only; its error."""
    code = (
        "import sys\nfrom supervisor import SqliteWorkQueue, ControlError\n"
        "try:\n    SqliteWorkQueue(sys.argv[1]).check_hub_id('h')\n"
        "except ControlError as e:\n    print(e)\nelse:\n    print('opened')\n"
    )
    argv = [sys.executable, "-c", code, str(state)]
    if os.geteuid() != 0:  # pragma: no cover - CI runs as root
        mode = target.stat().st_mode
        target.chmod(0o500 if target.is_dir() else 0o400)
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        finally:
            target.chmod(mode)
    if shutil.which("unshare") is None:  # pragma: no cover
        pytest.skip("root, and no unshare(1) to mount a read-only file system")
    script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"'
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(target), *argv],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:  # pragma: no cover - a container without CAP_SYS_ADMIN
        pytest.skip(f"cannot mount a read-only file system here: {done.stderr.strip()}")
    return done.stdout


@pytest.mark.parametrize(
    ("which", "expected"),
    [
        ("directory", "cannot write in the state directory {state} ("),
        ("file", "cannot write {state}/work.sqlite3 (sqlite: attempt to write a readonly"),
        ("parent", "cannot create the state directory {state} ("),
    ],
)
def test_a_read_only_directory_or_file_is_refused_naming_it(
    tmp_path: Path, which: str, expected: str
) -> None:
    state = tmp_path / "state"
    if which != "parent":
        q = SqliteWorkQueue(state)
        submit(q)
        q.flush_sync()
        q.close()
    target = {"directory": state, "file": state / "work.sqlite3", "parent": tmp_path}[which]
    message = open_read_only(target, state)
    assert expected.format(state=state) in message
    assert "--state-dir" in message


# --------------------------------------------------------------------------------------
# Where, and the arguments


def test_the_default_state_directory_follows_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/srv/state")
    assert Path("/srv/state/hubvisor/build") == default_state_dir("build")
    for unusable in ("", "relative/dir"):
        monkeypatch.setenv("XDG_STATE_HOME", unusable)
        assert Path.home() / ".local/state/hubvisor/build" == default_state_dir("build")
    monkeypatch.delenv("XDG_STATE_HOME")
    assert Path.home() / ".local/state/hubvisor/build" == default_state_dir("build")


def test_check_hub_id_resolves_the_default_directory_created_0700(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    q = SqliteWorkQueue()
    assert (None, None) == (q.state_dir, q.path)
    q.check_hub_id("build")
    assert tmp_path / "hubvisor" / "build" == q.state_dir
    assert tmp_path / "hubvisor" / "build" / "work.sqlite3" == q.path
    assert 0o700 == (q.state_dir.stat().st_mode & 0o777)
    assert "build" == meta(q.state_dir)["hub_id"]
    q.close()
    q.close()  # idempotent


def test_a_submit_before_the_directory_is_known_says_when_it_opens() -> None:
    with pytest.raises(ControlError, match=r"opens when the hub starts .* give SqliteWorkQueue"):
        SqliteWorkQueue().submit("w", 1, max_deliveries=1, source="t", now=0.0)


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"keep_finished": -1}, "keep_finished=...) must be an int >= 0 (got -1)"),
        ({"max_held": 0}, "max_held=...) must be an int >= 1 (got 0)"),
        ({"fsync": "sometimes"}, "fsync=...) must be 'normal' or 'always' (got 'sometimes')"),
        ({"timeout": 0}, "timeout=...) must be seconds > 0 (got 0)"),
    ],
)
def test_bad_arguments_are_refused_naming_the_value(kw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SqliteWorkQueue("/nonexistent", **kw)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(("fsync", "level"), [("normal", 1), ("always", 2)])
def test_fsync_sets_the_synchronous_level(state: Path, fsync: Any, level: int) -> None:
    q = SqliteWorkQueue(state, fsync=fsync)
    q.check_hub_id("h")
    assert q._db is not None and q._db.conn is not None
    assert level == q._db.conn.execute("PRAGMA synchronous").fetchone()[0]
    assert "wal" == q._db.conn.execute("PRAGMA journal_mode").fetchone()[0]
    q.close()


def test_an_item_body_with_a_field_added_or_missing_still_loads() -> None:
    """Items are JSON bodies: a field a later hubvisor adds is ignored here, one an
    earlier hubvisor did not write takes its default (no migration for either)."""
    from supervisor import WorkItem

    item = WorkItem.from_json(
        {
            "id": "w-3",
            "type": "w",
            "max_deliveries": 2,
            "priority": 5,  # unknown here
            "history": [
                {
                    "attempt": 1,
                    "agent": "a",
                    "outcome": "failed",
                    "reason": "x",
                    "at": 1.0,
                    "cost": 3,
                }
            ],
        }
    )
    assert ("w-3", "w", QUEUED, 0, None, "api") == (
        item.id,
        item.agent_type,
        item.status,
        item.attempt,
        item.checkpoint,
        item.source,
    )
    assert ("failed", "") == (item.history[0].outcome, item.history[0].hub)
    full = WorkItem.from_json({**item.to_json(), "checkpoint": {"line": 3}})
    assert (item.to_json(), {"line": 3}) == (full.to_json(), full.checkpoint)
