"""Issue 18's Redis faults, each against a real ``redis-server`` (tests/redis_server.py)
and real agent processes; the hubs run in this process or as ``hubvisor run`` processes
(tests/redis_hubs.py).
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from supervisor import ControlError, Hub, ItemStatus, WorkService
from supervisor._errors import ServiceFailed
from supervisor.work.redis import RedisWorkQueue
from supervisor.work.redis._outbox import _Op
from supervisor.work.redis._scripts import _FENCED

from ...helpers import until
from ...redis_hubs import HUBVISOR, HubProc, item, outcomes, record, wait_for
from ...redis_server import RedisServer, redis_server, redis_server_factory
from ..test_service import agent

__all__ = ["redis_server", "redis_server_factory"]

pytestmark = pytest.mark.slow


def held(hub: Hub) -> RedisWorkQueue:
    queue = hub.work.queue
    assert isinstance(queue, RedisWorkQueue)
    return queue


# Fault 1 ------------------------------------------------------------------------------


async def test_an_error_with_a_lone_surrogate_is_stored_readable_and_work_goes_on(
    redis_server: RedisServer, client: Any
) -> None:
    """A FAIL whose error holds '\\udcff' (a Latin-1 file name read with surrogateescape)
    raised UnicodeEncodeError in redis-py and ended the store: the hub dispatched nothing
    more. It is written escaped, and the next item completes."""
    hub = Hub([agent("a1")], work=WorkService(RedisWorkQueue(redis_server.url)), hub_id="A")
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        bad = hub.work.submit("w", {"fail_bytes": b"lint failed in caf\xff.py".hex()})
        await until(lambda: len(record(client)) == 1)
        good = hub.work.submit("w", {"n": 4})
        await until(lambda: len(record(client)) == 2)
        assert held(hub).errors == 0
        await hub.stop()
    assert item(client, bad.id)["st"] == "failed"
    error = item(client, bad.id)["error"]  # escaped here (or made safe at the boundary)
    assert error.startswith("lint failed in caf") and error.endswith(".py")
    assert item(client, good.id)["result"]["double"] == 8


async def test_a_write_that_can_never_be_sent_is_dropped_by_name_and_the_others_land(
    redis_server: RedisServer, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """No exception type ends the store's actor: a round that fails for a reason other
    than an outage is logged once with its traceback, retried, and the one write that
    cannot be encoded is dropped, named; the writes around it are kept and land."""
    queue = RedisWorkQueue(redis_server.url, lease=2)
    hub = Hub([agent("a1")], work=WorkService(queue), hub_id="A")
    with caplog.at_level(logging.INFO, logger="hubvisor"):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            keys = queue._keys("w", "w-poison")
            args = ("progress", "A", queue.token, 1, time.time(), object(), "")
            before = hub.work.submit("w", {"n": 1})
            queue._push(_Op(_FENCED, keys, args, "w-poison", "progress"))
            after = hub.work.submit("w", {"n": 2})
            assert await hub.work.stored(before.id, 20)
            assert await hub.work.stored(after.id, 20)
            await until(lambda: len(record(client)) == 2)
            await hub.stop()
    assert queue.errors >= 1 and queue.poisoned == 1
    assert "work w-poison: its progress can never be written to Redis" in caplog.text
    assert caplog.text.count("a Redis round failed") == 1
    assert "Traceback" in caplog.text


# Fault 3 ------------------------------------------------------------------------------


async def test_a_handed_back_item_goes_to_an_idle_agent_of_another_hub(
    redis_server: RedisServer, client: Any
) -> None:
    """Hub A's only agent hands the item back: it is released to the stream (no delivery
    spent), and hub B's idle agent completes it."""
    a = Hub([agent("h1")], work=WorkService(RedisWorkQueue(redis_server.url, lease=2)), hub_id="A")
    b = Hub([agent("b1")], work=WorkService(RedisWorkQueue(redis_server.url, lease=2)), hub_id="B")
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        given = a.work.submit("w", {"handback_if": "h1", "n": 3})
        await until(lambda: "handed_back" in (item(client, given.id).get("hist") or ""))
        await nursery.start(b.serve)
        await until(lambda: len(record(client)) == 1)
        await a.stop()
        await b.stop()
    (row,) = record(client)
    assert (row["item"], row["hub"], row["outcome"]) == (given.id, "B", "completed")
    stored = item(client, given.id)
    assert stored["result"]["by"] == "b1"
    assert stored["dlv"] == "1"  # the hand-back spent no delivery
    assert '"A/h1"' in stored["hist"] and "handed_back" in stored["hist"]


# Fault 6 ------------------------------------------------------------------------------


async def test_progress_during_a_redis_freeze_is_coalesced_and_held_writes_are_capped(
    redis_server: RedisServer, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """5,000 progress records of 15 KB during a freeze held 5,000 writes (75 MB) before;
    now one per item. Submits past the cap are refused with the reason; when Redis is
    back everything acknowledged lands and the latest progress is the one written."""
    queue = RedisWorkQueue(redis_server.url, lease=30, timeout=1, max_held=50)
    hub = Hub([agent("a1")], work=WorkService(queue), hub_id="A")
    with caplog.at_level(logging.INFO, logger="hubvisor"):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            busy = hub.work.submit("w", {"hold": True})
            await until(lambda: item(client, busy.id).get("st") == "assigned")
            attempt = hub.work.get(busy.id).attempt
            redis_server.pause()
            try:
                blob = "x" * 15_000
                for n in range(5000):
                    verdict = queue.progress(busy.id, attempt, "a1", {"n": n, "b": blob}, None)
                    assert verdict.accepted
                assert len(queue.writes.ops) <= 2  # one held, at most one in flight
                assert queue.writes.held_bytes < 40_000
                assert queue.coalesced >= 4990
                before, accepted, refused = len(queue.writes.ops), [], None
                for n in range(200):
                    try:
                        accepted.append(hub.work.submit("w", {"n": n, "hold": True}))
                    except ControlError as exc:
                        refused = str(exc)
                        break
                assert refused is not None and "submit again when Redis answers" in refused
                assert len(accepted) == 50 - before
                assert "its cap (50 writes" in caplog.text
            finally:
                redis_server.resume()
            for submitted in accepted:
                assert await hub.work.stored(submitted.id, 20)
            await until(lambda: "accepted again" in caplog.text)
            hub.work.submit("w", {"n": 1})  # accepted again
            stored = item(client, busy.id)
            assert '"n":4999' in stored["progress"]
            await hub.stop()


# Fault 7 ------------------------------------------------------------------------------


async def test_a_redis_stall_longer_than_the_lease_takes_no_work_from_a_live_hub(
    redis_server: RedisServer, client: Any
) -> None:
    """Lease 2 s, an item of 8 s on hub A with one delivery, hub B idle, three stalls of
    the server of 3 s each: B took the item (``reclaimed:hub``) and dead-lettered it, and
    A's result was refused. Now every hub gets a lease to renew after a stall: A keeps
    it and its result is accepted."""
    a = Hub([agent("a1")], work=WorkService(RedisWorkQueue(redis_server.url, lease=2)), hub_id="A")
    b = Hub([agent("b1")], work=WorkService(RedisWorkQueue(redis_server.url, lease=2)), hub_id="B")
    async with trio.open_nursery() as nursery:
        # B first: its connection is the older, its sweep is served first after a stall.
        await nursery.start(b.serve)
        mine = b.work.submit("w", {"sleep": 14, "n": 1})  # B's agent is busy meanwhile
        await until(lambda: item(client, mine.id).get("st") == "assigned")
        await nursery.start(a.serve)
        long = a.work.submit("w", {"sleep": 8, "n": 5}, max_deliveries=1)
        await until(lambda: item(client, long.id).get("st") == "assigned")
        for _ in range(3):  # the server stalls 3 s, three times (as DEBUG SLEEP 3 does)
            redis_server.pause()
            await trio.sleep(3)
            redis_server.resume()
            await trio.sleep(0.2)
        await until(lambda: len(record(client)) == 2)
        await a.stop()
        await b.stop()
    rows = {row["item"]: row for row in record(client)}
    assert (rows[long.id]["hub"], rows[long.id]["outcome"]) == ("A", "completed")
    assert "reclaimed" not in item(client, long.id)["hist"]
    assert held(a).lost == 0


# Fault 8 ------------------------------------------------------------------------------


@pytest.fixture
def hubs(tmp_path: Path, redis_server: RedisServer) -> Any:
    started: list[HubProc] = []

    def make(hub_id: str, **kw: Any) -> HubProc:
        h = HubProc(tmp_path, hub_id, redis_server.url, **kw)
        started.append(h)
        return h

    yield make
    for h in started:
        h.stop()


def test_two_hubs_started_with_one_id_while_redis_is_down_one_stops_taking_work(
    redis_server: RedisServer, client: Any, hubs: Any, tmp_path: Path
) -> None:
    """Both start while Redis is down (neither can check); when it returns, the hub id
    is a claim with a token: the first to renew holds it, the other stops taking work,
    naming the holder's pid and host. No item runs on both."""
    redis_server.kill()
    first = hubs("A", size=1, lease=1.5).start()
    twin = HubProc(tmp_path, "A", redis_server.url, size=1, lease=1.5)
    twin.socket = tmp_path / "twin.sock"
    twin.log = tmp_path / "twin.log"
    hubs_: list[HubProc] = [first, twin]
    try:
        twin.start()
        redis_server.start()

        def loser() -> HubProc | None:
            for h in hubs_:
                if "is live in Redis" in h.log.read_text():
                    return h
            return None

        lost = wait_for(loser, 60, "one hub to lose the claim of id A")
        winner = twin if lost is first else first
        message = next(
            line for line in lost.log.read_text().splitlines() if "is live in Redis" in line
        )
        assert f"pid {winner.pid} on " in message and f"this hub (pid {lost.pid}" in message
        assert lost.proc is not None
        assert 1 == lost.proc.wait(timeout=60)  # it stops, loudly (ServiceFailed)
        ids = [winner.submit({"n": n, "sleep": 0.2})["id"] for n in range(4)]
        wait_for(lambda: len(record(client)) == 4, 60, "the winner to complete them")
        assert sorted(outcomes(client)) == sorted(ids)
        assert all(item(client, i)["att"] == "1" for i in ids)  # ran once, on one hub
    finally:
        twin.stop()


# Fault 11 -----------------------------------------------------------------------------


def test_a_stop_during_a_redis_outage_names_each_item_it_could_not_write(
    redis_server: RedisServer, client: Any, hubs: Any
) -> None:
    """SIGSTOP redis, submit to A, SIGTERM A: the item was in neither Redis nor a log.
    The hub waits a bounded time at stop and logs the id of each item it loses."""
    a = hubs("A", size=1, lease=30).start()
    redis_server.pause()
    try:
        answer = a.submit({"n": 1})
        assert answer["stored"] is False
        a.signal(signal.SIGTERM)
        assert a.proc is not None
        a.proc.wait(timeout=60)
    finally:
        redis_server.resume()
    text = a.log.read_text()
    assert f"work {answer['id']}: submitted but not in Redis at stop" in text
    assert "the item is lost; submit it again" in text


def test_a_stop_while_redis_is_briefly_frozen_writes_what_the_hub_holds(
    redis_server: RedisServer, client: Any, hubs: Any
) -> None:
    """The bounded wait at stop: Redis answers again within it, the held item lands."""
    a = hubs("A", size=1, lease=30, agent_type="other").start()  # takes no "w" work
    redis_server.pause()
    try:
        answer = a.submit({"n": 1})
        assert answer["stored"] is False
        a.signal(signal.SIGTERM)
    finally:
        time.sleep(0.5)  # a real outage of half a second, well inside the wait
        redis_server.resume()
    assert a.proc is not None
    a.proc.wait(timeout=60)
    assert item(client, answer["id"])["st"] == "queued"
    assert "not in Redis at stop" not in a.log.read_text()


async def test_a_wrong_password_or_database_fails_at_start_with_the_fix(
    redis_server_factory: type[RedisServer], tmp_path: Path
) -> None:
    server = redis_server_factory(password="right")
    wrong = server.url.replace(":right@", ":wrong@")
    with pytest.raises(ControlError, match=r"refused the credentials.*redis://:PASSWORD@"):
        RedisWorkQueue(wrong).check_hub_id("A")
    missing = server.url.replace(":right@", "")
    with pytest.raises(ControlError, match="refused the credentials"):
        RedisWorkQueue(missing).check_hub_id("A")
    with pytest.raises(ControlError, match="no such database"):
        RedisWorkQueue(server.url.replace("/0", "/99")).check_hub_id("A")
    # In a hub (no check before): the store ends with ServiceFailed, the fix named.
    with pytest.raises(ExceptionGroup) as failed:
        async with trio.open_nursery() as nursery:
            await nursery.start(RedisWorkQueue(wrong, timeout=1).run, _Service())
    assert failed.group_contains(ServiceFailed, match="refused the credentials")
    password = "hubvisor-secret-password"
    hub = HubProc(tmp_path, "A", server.url.replace(":right@", f":{password}@"))
    shown = subprocess.run(
        [HUBVISOR, "run", str(hub.spec), "--redis", hub.url, "--socket", str(hub.socket)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode != 0
    assert "refused the credentials" in shown.stderr
    assert password not in shown.stderr + shown.stdout


class _Service:
    """What a store asks of its work service, for a store run alone."""

    hub_id = "A"
    watched: set[str] = set()

    def agent_counts(self) -> dict[str, int]:
        return {}

    def agent_types(self) -> set[str]:
        return set()

    def idle_counts(self) -> dict[str, int]:
        return {}


# Smaller ------------------------------------------------------------------------------


async def test_a_hub_shows_an_item_another_hub_retried_and_completed_as_it_is_now(
    redis_server: RedisServer, client: Any, tmp_path: Path
) -> None:
    """Hub A dead-lettered an item; hub B retried and completed it: A's ``work show``,
    ``work list`` and the cluster's dead count said dead. They follow Redis now."""
    flag = tmp_path / "crash"
    flag.touch()
    a = Hub([agent("a1")], work=WorkService(RedisWorkQueue(redis_server.url, lease=1)), hub_id="A")
    b = Hub([agent("b1")], work=WorkService(RedisWorkQueue(redis_server.url, lease=1)), hub_id="B")
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        doomed = a.work.submit("w", {"crash_if": str(flag), "n": 2}, max_deliveries=1)
        await until(lambda: item(client, doomed.id).get("st") == "dead")
        assert doomed.id in {i.id for i in a.work.items("dead")}
        assert (await a.work.cluster())["queues"]["w"]["dead"] == 1
        busy = a.work.submit("w", {"hold": True})  # A's agent is busy from now on
        await until(lambda: item(client, busy.id).get("st") == "assigned")
        flag.unlink()
        await nursery.start(b.serve)
        await b.work.retry_any(doomed.id)
        await until(lambda: item(client, doomed.id).get("st") == "completed")
        await until(lambda: doomed.id not in {i.id for i in a.work.items("dead")})
        assert (await a.work.fetch(doomed.id)).status == ItemStatus.COMPLETED
        assert (await a.work.cluster())["queues"]["w"]["dead"] == 0
        await a.stop()
        await b.stop()
    assert [r["hub"] for r in record(client) if r["item"] == doomed.id] == ["A", "B"]


def test_a_takeover_of_a_dead_hubs_items_is_logged(
    redis_server: RedisServer, client: Any, hubs: Any
) -> None:
    a = hubs("A", size=1, lease=1.0).start()
    the_id = a.submit({"n": 1, "hold": True})["id"]
    wait_for(lambda: item(client, the_id).get("st") == "assigned", 30, "A's agent to hold it")
    b = hubs("B", size=1, lease=1.0).start()
    a.kill()
    wait_for(lambda: "took over" in b.log.read_text(), 30, "B to take A's item")
    assert re.search(r"took over 1 w item\(s\) from hub A, whose lease ran out", b.log.read_text())


# Fault 6, on Redis: an agent's SUBMIT for a type no hub serves -------------------------


async def test_an_agent_submitting_for_a_type_no_hub_announced_is_refused(
    redis_server: RedisServer, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """With a shared store a client may queue work for hubs not started yet, but an
    agent's SUBMIT= must name a type some hub sharing the store announced: a flood of
    SUBMITs for a type nobody runs was held for Redis up to the cap (64 MiB of writes,
    hub RSS 45 -> 220 MiB in tests/test_stress.py) and then queued there for ever."""
    queue = RedisWorkQueue(redis_server.url)
    hub = Hub([agent("a1")], work=WorkService(queue), hub_id="A")
    with caplog.at_level(logging.WARNING, logger="hubvisor"):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            # The hub announces its types once its agent runs, and reads every hub's back.
            await until(lambda: "w" in (queue.known_types or set()))
            nobody = hub.work.submit("w", {"n": 1, "submit": "nobody"})
            mine = hub.work.submit("w", {"n": 2, "submit": "w"})
            await until(lambda: len(record(client)) >= 3)  # both, and the agent's own w item
            await hub.stop()
    assert {"w"} == {i.agent_type for i in hub.work.items()}
    assert not client.exists("hubvisor:work:{nobody}:q")
    assert "no agents of type 'nobody' on any hub sharing the store" in caplog.text
    assert {nobody.id, mine.id} <= set(outcomes(client))
    # A client still queues work for a type whose hubs have not started (durable meanwhile).
    assert hub.work.submit("later", {"n": 3}).agent_type == "later"
