"""Durable work on Redis Streams: real ``redis-server`` processes (AOF on) and real hubs.

Every test reads the record (one ``log`` stream entry per final outcome) from Redis
itself: each item must end there exactly once, completed by the attempt that held it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from supervisor import ControlError, Hub, WorkService
from supervisor.work.redis import RedisWorkQueue

from ...helpers import alive, until
from ...redis_hubs import HUBVISOR, HubProc, item, outcomes, record, wait_for
from ...redis_server import RedisServer, redis_server, redis_server_factory
from ..test_service import agent

__all__ = ["redis_server", "redis_server_factory"]

pytestmark = pytest.mark.slow


# In one process -----------------------------------------------------------------------


async def test_items_flow_through_redis_and_each_ends_once_in_the_record(
    redis_server: RedisServer,
    client: Any,
) -> None:
    queue = RedisWorkQueue(redis_server.url, lease=2)
    hub = Hub([agent("a1"), agent("a2")], work=WorkService(queue), hub_id="A")
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        items = [hub.work.submit("w", {"n": n}) for n in range(30)]
        assert all([await hub.work.stored(i.id) for i in items])
        await until(lambda: len(record(client)) >= 30)
        cluster = await hub.work.cluster()
        await hub.stop()
    assert set(outcomes(client).values()) == {1}
    assert {i.id for i in items} == set(outcomes(client))
    for i, n in zip(items, range(30), strict=True):
        stored = item(client, i.id)
        assert stored["st"] == "completed"
        assert stored["result"]["double"] == 2 * n
    assert client.xpending("hubvisor:work:{w}:q", "hubs")["pending"] == 0
    assert [h["id"] for h in cluster["hubs"]] == ["A"]
    assert cluster["hubs"][0]["alive"] is True
    # A stopped hub leaves the cluster view at once.
    assert client.zrange("hubvisor:work:hubs", 0, -1) == []


async def test_a_result_written_after_the_lease_moved_on_is_refused_on_the_server(
    redis_server: RedisServer,
    client: Any,
) -> None:
    """The fence is checked by Redis: a hub (token) that no longer holds the item cannot
    complete it, whatever its own memory says."""
    queue = RedisWorkQueue(redis_server.url, lease=2)
    hub = Hub([agent("a1")], work=WorkService(queue), hub_id="A")
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        done = hub.work.submit("w", {"n": 1})
        await until(lambda: len(record(client)) == 1)
        # Another incarnation took the item over in Redis (as after a lease expiry).
        key = f"hubvisor:work:{{w}}:item:{done.id}"
        client.hset(key, mapping={"st": "assigned", "tok": "someone-else"})
        replies = []
        queue._fenced(done, "finish", "completed", 1, "[]", '"forged"', "", "a1", 60)
        at = next(i for i, op in enumerate(queue.writes.ops) if op.kind == "finish")
        queue.writes.ops[at] = attrs_evolve(queue.writes.ops[at], replies.append)
        await until(lambda: bool(replies))
        await hub.stop()
    assert replies[0][0] == 0
    assert b"lease lost" in replies[0][1]
    assert client.hget(key, "result") != '"forged"'
    assert len(record(client)) == 1


def attrs_evolve(op: Any, on_reply: Any) -> Any:
    import attrs

    return attrs.evolve(op, on_reply=on_reply)


async def test_a_server_that_persists_nothing_is_warned_about(
    redis_server_factory: type[RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory(appendfsync=None)
    hub = Hub([agent("a1")], work=WorkService(RedisWorkQueue(server.url)), hub_id="A")
    with caplog.at_level(logging.WARNING, logger="hubvisor"):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await hub.stop()
    assert "persists nothing" in caplog.text
    assert "appendonly yes" in caplog.text


async def test_work_queued_before_a_hub_restart_completes_after_it(
    redis_server: RedisServer,
    client: Any,
) -> None:
    first = Hub(
        [agent("q1", agent_type="other")],
        work=WorkService(RedisWorkQueue(redis_server.url)),
        hub_id="A",
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(first.serve)
        ids = [first.work.submit("w", {"n": n}).id for n in range(5)]
        assert all([await first.work.stored(i) for i in ids])
        await first.stop()
    assert record(client) == []
    second = Hub([agent("a1")], work=WorkService(RedisWorkQueue(redis_server.url)), hub_id="A")
    async with trio.open_nursery() as nursery:
        await nursery.start(second.serve)
        await until(lambda: len(record(client)) == 5)
        await second.stop()
    assert sorted(outcomes(client)) == sorted(ids)


async def test_redis_down_the_hub_supervises_on_and_writes_its_results_when_it_returns(
    redis_server: RedisServer,
    client: Any,
) -> None:
    queue = RedisWorkQueue(redis_server.url, lease=30, timeout=1)
    hub = Hub([agent("a1")], work=WorkService(queue), hub_id="A")
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        # Items the hub holds (taken) before the outage: it finishes them during it.
        held = [hub.work.submit("w", {"n": n}).id for n in range(3)]
        await until(lambda: len(record(client)) == 3)
        redis_server.kill()
        later = [hub.work.submit("w", {"n": n}) for n in range(3)]
        assert [await hub.work.stored(i.id, timeout=0.5) for i in later] == [False] * 3
        await until(lambda: queue.outage)
        # Supervision goes on: an agent killed while Redis is down is restarted.
        (old,) = [r.info.pid for r in hub.which_children() if r.info.id == "a1"]
        assert old is not None
        os.kill(old, signal.SIGKILL)
        await until(
            lambda: (
                next(r.info.pid for r in hub.which_children() if r.info.id == "a1")
                not in (None, old)
            )
        )
        redis_server.start()
        await until(lambda: len(record(client)) == 6)
        await hub.stop()
    assert sorted(outcomes(client)) == sorted(held + [i.id for i in later])


# Hubs in their own processes ----------------------------------------------------------


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


def test_sigkill_of_a_hub_holding_work_hands_it_to_the_other_within_the_lease(
    redis_server: RedisServer, client: Any, hubs: Any
) -> None:
    a = hubs("A", size=2, lease=1.5).start()
    b = hubs("B", size=2, lease=1.5).start()
    b.signal(signal.SIGSTOP)  # A takes the first items
    ids = [a.submit({"n": n, "sleep": 3})["id"] for n in range(4)]
    wait_for(
        lambda: sum(item(client, i)["st"] == "assigned" for i in ids) == 2, 30, "A's agents busy"
    )
    b.signal(signal.SIGCONT)
    agents = a.agent_pids()
    killed = time.monotonic()
    a.kill()
    wait_for(lambda: len(record(client)) >= 4, 30, "B to complete A's items")
    took = time.monotonic() - killed
    assert sorted(outcomes(client)) == sorted(ids)
    assert set(outcomes(client).values()) == {1}
    assert all(row["hub"] == "B" for row in record(client))
    # lease + the items' own 3 s + a margin for a loaded machine
    assert took < 1.5 + 3 + 10, took
    wait_for(lambda: not any(alive(p) for p in agents), 5, "A's agents to die with it")


def test_a_zombie_hub_cannot_complete_or_overwrite_what_replaced_it(
    redis_server: RedisServer, client: Any, hubs: Any
) -> None:
    a = hubs("A", size=1, lease=1.0).start()
    b = hubs("B", size=1, lease=1.0)
    b_started = False
    the_id = a.submit({"n": 7, "sleep": 1.5})["id"]
    wait_for(lambda: item(client, the_id).get("st") == "assigned", 30, "A's agent to start it")
    a.signal(signal.SIGSTOP)  # its agent finishes and answers into the stopped hub's socket
    try:
        b.start()
        b_started = True
        wait_for(lambda: len(record(client)) == 1, 30, "B to take over and complete it")
        first = item(client, the_id)
        assert first["result"]["who"].startswith("B/")
    finally:
        a.signal(signal.SIGCONT)
    # A wakes up with its agent's late RESULT for attempt 1: A may accept it locally, but
    # Redis refuses the write (A's lease is gone), so the record keeps B's.
    wait_for(lambda: "lease lost" in a.log.read_text(), 30, "A to learn it lost the item")
    a.stop()
    assert b_started
    assert outcomes(client)[the_id] == 1
    assert item(client, the_id)["result"] == first["result"]
    assert int(item(client, the_id)["att"]) >= 2


def test_sigkill_and_restart_of_redis_while_work_flows_loses_nothing_submitted(
    redis_server: RedisServer, client: Any, hubs: Any
) -> None:
    a = hubs("A", size=2, lease=2.0).start()
    ids = []
    for n in range(40):
        if n == 15:
            redis_server.kill()
        if n == 18:  # three submits answered "held by the hub" meanwhile
            redis_server.start()
        answer = a.submit({"n": n, "sleep": 0.05})
        ids.append(answer["id"])
    wait_for(lambda: len(record(client)) >= 40, 60, "every submitted item to complete")
    assert sorted(outcomes(client)) == sorted(ids)
    assert set(outcomes(client).values()) == {1}


def test_a_hub_restarted_with_its_id_takes_its_own_work_back_at_once(
    redis_server: RedisServer, client: Any, hubs: Any
) -> None:
    a = hubs("A", size=2, lease=60).start()  # a lease far longer than the test
    ids = [a.submit({"n": n, "sleep": 2})["id"] for n in range(2)]
    wait_for(lambda: all(item(client, i)["st"] == "assigned" for i in ids), 30, "A busy")
    a.kill()
    started = time.monotonic()
    again = hubs("A", size=2, lease=60).start()
    wait_for(lambda: len(record(client)) == 2, 30, "the restarted hub to finish them")
    assert time.monotonic() - started < 30  # not the 60 s lease
    assert sorted(outcomes(client)) == sorted(ids)
    for i in ids:
        assert item(client, i)["dlv"] == "2"  # the killed attempt counted
    again.stop()


def test_status_cluster_shows_every_hub_and_a_dead_one_with_the_work_it_had(
    redis_server: RedisServer, client: Any, hubs: Any
) -> None:
    a = hubs("A", size=2, lease=1.0).start()
    b = hubs("B", size=1, lease=1.0, agent_type="other").start()  # takes no "w" work
    ids = [a.submit({"n": n, "sleep": 60})["id"] for n in range(3)]
    wait_for(lambda: sum(item(client, i)["st"] == "assigned" for i in ids) == 2, 30, "A busy")
    live = b.call("status", cluster=True)["cluster"]
    assert {h["id"]: h["alive"] for h in live["hubs"]} == {"A": True, "B": True}
    assert {h["id"]: h["agents"] for h in live["hubs"]} == {"A": {"w": 2}, "B": {"other": 1}}
    # A takes only as many as it has idle agents: the third waits for any hub.
    assert live["queues"]["w"] == {"waiting": 1, "in_flight": 2, "dead": 0}
    a.kill()
    wait_for(
        lambda: (
            not next(
                h for h in b.call("status", cluster=True)["cluster"]["hubs"] if h["id"] == "A"
            )["alive"]
        ),
        30,
        "A's lease to run out",
    )
    dead = b.call("status", cluster=True)["cluster"]
    (a_row,) = [h for h in dead["hubs"] if h["id"] == "A"]
    assert a_row["holding"] == {"w": 2}
    shown = subprocess.run(
        [HUBVISOR, "status", "--cluster", "--socket", str(b.socket)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert shown.returncode == 0, shown.stderr
    assert "dead" in shown.stdout
    assert "2 w" in shown.stdout
    assert "alive" in shown.stdout


def test_a_second_live_hub_with_the_same_id_is_refused(
    redis_server: RedisServer, hubs: Any, tmp_path: Path
) -> None:
    hubs("A", size=1).start()
    twin = HubProc(tmp_path, "A", redis_server.url, size=1)
    twin.socket = tmp_path / "twin.sock"
    with pytest.raises(AssertionError, match="is live in Redis"):
        twin.start()


def test_chaos_two_hubs_agent_and_hub_kills_and_a_redis_restart(
    redis_server: RedisServer, client: Any, hubs: Any
) -> None:
    """Seeded and bounded: 60 items; SIGKILLs of random agents, of hub A once, and one
    Redis restart. Every item ends in the record exactly once; nothing is left running."""
    rng = random.Random(9)
    a = hubs("A", size=2, lease=1.5).start()
    b = hubs("B", size=2, lease=1.5).start()
    ids: list[str] = []
    every_agent: set[int] = set()
    unsure: list[str] = []
    for step in range(60):
        target = a if step % 2 and step < 20 else b
        answer = target.submit({"n": step, "sleep": rng.choice([0, 0.05, 0.2])})
        if answer["stored"] or target is b:
            ids.append(answer["id"])  # in Redis, or held by a hub that lives on
        else:  # held only by A, which is SIGKILLed below: it may be lost, never doubled
            unsure.append(answer["id"])
        for h in (a, b):
            if h.proc is not None and h.proc.poll() is None:
                every_agent.update(h.agent_pids())
        if step % 7 == 3:
            victim = rng.choice(b.agent_pids() or [0])
            if victim:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
        if step == 20:
            a.kill()
        if step == 35:
            redis_server.kill()
        if step == 37:
            redis_server.start()
    try:
        wait_for(lambda: set(ids) <= set(outcomes(client)), 90, "every item to end")
    except AssertionError:
        missing = [i for i in ids if i not in outcomes(client)]
        detail = {i: item(client, i) for i in missing[:5]}
        pending = client.xpending_range("hubvisor:work:{w}:q", "hubs", "-", "+", 100)
        raise AssertionError(
            f"{len(missing)} items never ended: {detail}\npending: {pending}\n"
            f"B's log:\n{b.log.read_text()[-4000:]}"
        ) from None
    counts = outcomes(client)
    assert set(counts) - set(unsure) == set(ids)
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    b.stop()
    wait_for(lambda: not any(alive(p) for p in every_agent), 10, "no agent left")


async def test_any_hub_shows_and_retries_an_item_another_hub_finished(
    redis_server: RedisServer, client: Any
) -> None:
    doer = Hub([agent("a1")], work=WorkService(RedisWorkQueue(redis_server.url)), hub_id="A")
    other = Hub(
        [agent("q1", agent_type="other")],
        work=WorkService(RedisWorkQueue(redis_server.url)),
        hub_id="B",
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(doer.serve)
        await nursery.start(other.serve)
        failed = other.work.submit("w", {"fail": "no such file"})  # B has no "w" agents
        await until(lambda: len(record(client)) == 1)
        seen = await other.work.fetch(failed.id)  # B never held it: read from Redis
        assert seen.status == "failed" and seen.error == "no such file"
        assert [h.agent for h in seen.history] == ["A/a1"]  # the history names the hub
        again = await other.work.retry_any(failed.id)
        # queued again with fresh deliveries (A may have taken it already: it races us)
        assert again.status in ("queued", "assigned") and again.deliveries <= 1
        await until(lambda: len(record(client)) == 2)  # A took it again, failed again
        assert [r["outcome"] for r in record(client)] == ["failed", "failed"]
        done = other.work.submit("w", {"n": 2})
        await until(lambda: len(record(client)) == 3)
        with pytest.raises(ControlError, match="cannot be retried: it is completed"):
            await other.work.retry_any(done.id)
        await doer.stop()
        await other.stop()
