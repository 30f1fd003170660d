"""The SQLite store's writer: a submit answered only after its commit, the cap on those
waiting, a disk that fails or is slow (supervision goes on, nothing acknowledged lost,
a restart on time), and what a stop writes."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
import trio

from supervisor import ControlError, Hub, ItemStatus, SqliteWorkQueue, WorkService
from supervisor._errors import ServiceFailed

from ...helpers import TIMEOUT, is_, until, wait_event
from ..test_service import agent
from .conftest import FakeHost, GatedQueue, meta, rows


def submit(q: SqliteWorkQueue, n: int = 0, agent_type: str = "w") -> str:
    return q.submit(agent_type, {"n": n}, max_deliveries=3, source="t", now=trio.current_time()).id


def warnings(caplog: pytest.LogCaptureFixture, fragment: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if fragment in r.getMessage()]


# --------------------------------------------------------------------------------------
# Commits


async def test_a_submit_is_stored_only_once_its_commit_is_done(tmp_path: Path) -> None:
    q = GatedQueue(tmp_path)
    q.gate.clear()  # the disk does not answer
    async with trio.open_nursery() as nursery:
        await nursery.start(q.run, FakeHost())
        a = submit(q)
        assert not await q.stored(a, 0.3)
        assert a not in rows(tmp_path)
        q.gate.set()
        assert await q.stored(a, TIMEOUT)
        assert "queued" == rows(tmp_path)[a]["status"]
        nursery.cancel_scope.cancel()
    q.close()


async def test_submits_waiting_for_their_commit_are_capped_and_the_cap_named(
    tmp_path: Path,
) -> None:
    q = GatedQueue(tmp_path, max_held=3)
    q.gate.clear()
    async with trio.open_nursery() as nursery:
        await nursery.start(q.run, FakeHost())
        held = [submit(q, n) for n in range(3)]
        with pytest.raises(ControlError) as caught:
            submit(q, 3)
        assert (
            f"3 submitted items wait to be written to {tmp_path / 'work.sqlite3'}, the cap "
            "(SqliteWorkQueue(max_held=3)); the disk is slow or failing"
        ) in str(caught.value)
        assert held == [i.id for i in q.items()]  # the refused one is nowhere
        q.gate.set()
        await until(lambda: q.held == 0)
        later = submit(q, 4)
        assert await q.stored(later, TIMEOUT)
        nursery.cancel_scope.cancel()
    q.close()
    assert [*held, later] == list(rows(tmp_path))


async def test_a_burst_is_written_in_rounds_of_at_most_1000_items(tmp_path: Path) -> None:
    """One transaction holds at most 1,000 items (each serialized on the trio thread:
    a round must not stall supervision); the rest go in the next rounds at once."""
    q = GatedQueue(tmp_path)
    q.gate.clear()
    async with trio.open_nursery() as nursery:
        await nursery.start(q.run, FakeHost())
        burst = [submit(q, n) for n in range(2500)]
        await until(lambda: q.writing.is_set())
        q.gate.set()
        for item_id in burst:
            assert await q.stored(item_id, TIMEOUT)
        nursery.cancel_scope.cancel()
    q.close()
    assert [1000, 1000, 500] == q.sizes[:3]
    assert 2500 == len(rows(tmp_path))


# --------------------------------------------------------------------------------------
# A failing disk


async def test_a_locked_file_is_an_outage_logged_once_and_nothing_acknowledged_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process holds the file's write lock: rounds fail ("database is locked"),
    one warning says so, decisions go on in memory and submits wait; when the lock is
    let go everything held is written and one line says so."""
    q = SqliteWorkQueue(tmp_path, timeout=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(q.run, FakeHost())
        first = submit(q, 1)
        assert await q.stored(first, TIMEOUT)
        with closing(sqlite3.connect(tmp_path / "work.sqlite3", isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            during = submit(q, 2)
            assert q.assign("w", "x", trio.current_time()) is not None  # first, at once
            assert q.complete(first, 1, "x", "done", trio.current_time()).accepted
            await until(lambda: q.errors >= 3)
            assert q.outage
            assert not await q.stored(during, 0.1)
            other.execute("ROLLBACK")
        assert await q.stored(during, TIMEOUT)
        await until(lambda: not q.outage)
        nursery.cancel_scope.cancel()
    q.close()
    assert 1 == len(warnings(caplog, "cannot write to"))
    assert "database is locked" in warnings(caplog, "cannot write to")[0]
    assert 1 == len(warnings(caplog, "written again after"))
    found = rows(tmp_path)
    assert ("completed", "done") == (found[first]["status"], found[first]["result"])
    assert "queued" == found[during]["status"]


async def test_a_full_disk_is_an_outage_and_the_held_changes_land_when_there_is_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite's own "database or disk is full" (the file may not grow past its page
    limit): the same outage, and the same recovery once it may grow again."""
    q = SqliteWorkQueue(tmp_path)
    q.check_hub_id("hub")
    assert q._db is not None and q._db.conn is not None
    conn = q._db.conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    async with trio.open_nursery() as nursery:
        await nursery.start(q.run, FakeHost())
        big = [q.submit("w", "x" * 30_000, max_deliveries=3, source="t", now=0.0).id]
        await until(lambda: q.outage)
        big.append(q.submit("w", "y" * 30_000, max_deliveries=3, source="t", now=0.0).id)
        assert "full" in warnings(caplog, "cannot write to")[0]
        with q._db._use:  # between two rounds: the file may grow again
            conn.execute("PRAGMA max_page_count = 1000000")
        for item_id in big:
            assert await q.stored(item_id, TIMEOUT)
        nursery.cancel_scope.cancel()
    q.close()
    assert big == list(rows(tmp_path))
    assert 1 == len(warnings(caplog, "cannot write to"))


async def test_a_slow_disk_does_not_delay_a_restart_nor_the_work(tmp_path: Path) -> None:
    """Every write takes 5 s (a sleep in the writer's thread): an agent that crashes on
    its item is restarted and given the item again at once, while a write sleeps."""
    q = GatedQueue(tmp_path, delay=5.0)
    hub = Hub([agent("a1")], work=WorkService(q), hub_id="slow")
    events = hub.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await wait_event(events, is_("running", "a1"))
        first = hub.work.submit("w", {"n": 1})
        await until(lambda: q.writing.is_set())  # its write sleeps 5 s from now
        item = hub.work.submit("w", {"crash": True, "n": 2})
        exited = await wait_event(events, is_("exited", "a1"))
        assert q.writing.is_set(), "the writer is mid-write (sleeping) when the agent exits"
        restarted = await wait_event(events, is_("running", "a1"))
        again = await wait_event(events, is_("work_assigned", "a1", attempt=2))
        done = await wait_event(events, is_("work_completed", "a1"))
        assert restarted.at - exited.at < 1.0
        assert done.at - exited.at < 2.5
        assert q.writing.is_set(), "all of it while the same write still sleeps"
        assert ItemStatus.COMPLETED == hub.work.get(item.id).status
        assert again.at < done.at
        q.delay = 0.0  # the stop's own write is not slowed
        await hub.stop()
    q.close()
    assert ["completed", "completed"] == [rows(tmp_path)[i.id]["status"] for i in (first, item)]


# --------------------------------------------------------------------------------------
# The stop


async def test_a_stop_hands_back_what_agents_hold_without_spending_a_delivery(
    tmp_path: Path,
) -> None:
    """The store's run is cancelled while an agent holds an item: the record has it back
    at the front of its queue, the delivery refunded, the attempt in its history as
    ``reclaimed:stop``, and the file marked clean (the next start skips no id and takes
    nothing back). The decisions in memory are left as they were."""
    q = SqliteWorkQueue(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(q.run, FakeHost(hub_id="h1", types={"w"}))
        a, b = submit(q, 1), submit(q, 2)
        assert q.assign("w", "w-agent-1", trio.current_time()) is not None
        await until(lambda: rows(tmp_path).get(a, {}).get("status") == "assigned")
        nursery.cancel_scope.cancel()
    assert ItemStatus.ASSIGNED == q.get(a).status
    q.close()
    found = rows(tmp_path)
    assert ("queued", 0, None) == (found[a]["status"], found[a]["deliveries"], found[a]["agent"])
    assert [(1, "w-agent-1", "reclaimed:stop", "h1")] == [
        (h["attempt"], h["agent"], h["outcome"], h["hub"]) for h in found[a]["history"]
    ]
    assert found[a]["_pos"] < found[b]["_pos"]
    assert "1" == meta(tmp_path)["clean"]

    again = SqliteWorkQueue(tmp_path)
    assert [a, b] == [i.id for i in again.items()]  # (opens the file)
    opened = again.opened
    assert opened is not None and not opened.restored.reclaimed
    assert again.known_types == {"w"}  # the types a hub on the file served
    first = again.assign("w", "x", 0.0)
    assert first is not None and a == first.id
    assert "w-3" == submit(again)  # no id skipped
    again.close()


async def test_a_round_given_up_on_at_a_stop_never_lands_over_the_stops_write(
    tmp_path: Path,
) -> None:
    """A round still waiting for the disk when the hub stops is given up on; the stop
    writes the items as they are (handed back). When the old round's thread gets the
    file after that, it must not write its older state over it."""
    q = GatedQueue(tmp_path, gate_stop=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(q.run, FakeHost())
        q.gate.clear()
        a = submit(q)
        assert q.assign("w", "x", trio.current_time()) is not None
        await until(lambda: q.writing.is_set())  # the round with a assigned, at the gate
        nursery.cancel_scope.cancel()
    assert ("queued", 0) == (rows(tmp_path)[a]["status"], rows(tmp_path)[a]["deliveries"])
    q.gate.set()
    await until(lambda: q.writes_done >= 2)
    q.close()
    assert ("queued", 0) == (rows(tmp_path)[a]["status"], rows(tmp_path)[a]["deliveries"])


async def test_a_stop_on_a_hung_disk_waits_its_timeout_and_names_what_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    q = GatedQueue(tmp_path, timeout=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(q.run, FakeHost())
        q.gate.clear()
        ids = [submit(q, n) for n in range(60)]
        await until(lambda: q.writing.is_set())
        started = time.monotonic()
        nursery.cancel_scope.cancel()
    took = time.monotonic() - started
    assert 0.4 < took < 3.0
    (lost,) = warnings(caplog, "submitted item(s) not written")
    assert "60 submitted item(s) not written to " in lost
    assert "so lost (their submits were never answered)" in lost
    assert lost.endswith(f"{', '.join(ids[:50])} and 10 more")  # one line, 50 ids named
    q.gate.set()
    await until(lambda: q.writes_done >= 2)  # the round given up on and the stop's write
    q.close()


async def test_a_hub_without_check_hub_id_opens_the_default_directory_of_its_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Python API: ``Hub(spec, work=WorkService(SqliteWorkQueue()))`` opens (in a
    worker thread) the state directory of the hub's id when the hub starts; its stop
    hands the held item back, and a hub started again finds it queued."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    state = tmp_path / "hubvisor" / "api"
    for run in range(2):
        q = SqliteWorkQueue()
        hub = Hub([agent("a1")], work=WorkService(q), hub_id="api")
        events = hub.bus.subscribe()
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            assert state / "work.sqlite3" == q.path
            if run == 0:
                item = hub.work.submit("w", {"hold": True})
                assert await hub.work.stored(item.id)
            await wait_event(events, is_("work_assigned", "a1", item_id=item.id))
            await hub.stop()
        q.close()
        held = rows(state)[item.id]
        assert ("queued", 0) == (held["status"], held["deliveries"])
        assert ["reclaimed:stop"] * (run + 1) == [h["outcome"] for h in held["history"]]
        assert {"api"} == {h["hub"] for h in held["history"]}


async def test_a_file_that_cannot_be_opened_stops_the_hub_with_the_reason(
    tmp_path: Path,
) -> None:
    (tmp_path / "work.sqlite3").write_bytes(b"garbage" * 1000)
    hub = Hub([agent("a1")], work=WorkService(SqliteWorkQueue(tmp_path)), hub_id="bad")
    with pytest.raises((ServiceFailed, ExceptionGroup)) as failed:
        await hub.serve()
    if failed.errisinstance(ExceptionGroup):
        assert failed.group_contains(ServiceFailed, match="is not a SQLite database")
    else:
        assert "is not a SQLite database" in str(failed.value)


async def test_cluster_says_the_work_is_kept_alone_and_how_to_share_it(tmp_path: Path) -> None:
    q = SqliteWorkQueue(tmp_path)
    q.check_hub_id("h")
    with pytest.raises(ControlError) as caught:
        await q.cluster()
    assert f"keeps its work in SQLite at {tmp_path / 'work.sqlite3'}, alone" in str(caught.value)
    assert "--redis URL" in str(caught.value)
    q.close()
