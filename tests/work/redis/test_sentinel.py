"""Hubs behind Redis Sentinel: one master, one replica, 3 Sentinels (tests/redis_sentinel.py),
real ``redis-server`` processes; hubs as real ``hubvisor run`` processes."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import trio

from supervisor import Hub, WorkService
from supervisor._errors import ConfigError
from supervisor._redis_link import clean_error, make_client, redact_url
from supervisor._redis_sentinel import parse, sentinel_url
from supervisor.work.redis import RedisWorkQueue

from ...helpers import until
from ...redis_hubs import HubProc, item, outcomes, record, wait_for
from ...redis_sentinel import MASTER, SentinelTopology, sentinel_env, sentinels
from ...redis_server import RedisServer, redis_server, redis_server_factory
from ..test_service import agent

__all__ = ["redis_server", "redis_server_factory", "sentinel_env", "sentinels"]

pytestmark = pytest.mark.slow


# The URL ------------------------------------------------------------------------------


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    assert parse("redis+sentinel://h1:26379,[::1]:26380/mymaster/2") == (
        [("h1", 26379), ("::1", 26380)],
        "mymaster",
        2,
        None,
        None,
    )
    assert parse("redis+sentinel://u:p%40ss@h:1/m") == ([("h", 1)], "m", 0, "u", "p@ss")
    assert parse("redis+sentinel://:pw@h:1/m")[3:] == (None, "pw")
    for bad in ("redis+sentinel://h:1", "redis+sentinel://h/m", "redis+sentinel://h:1/m/x"):
        with pytest.raises(ValueError):
            parse(bad)


def test_the_cli_builds_the_url_from_the_master_and_the_sentinels() -> None:
    assert (
        sentinel_url("mymaster", "redis://:pw@10.0.0.5:26379/3, redis://10.0.0.6:26379")
        == "redis+sentinel://:pw@10.0.0.5:26379,10.0.0.6:26379/mymaster/3"
    )
    assert sentinel_url("m", "h:1") == "redis+sentinel://h:1/m"
    with pytest.raises(ValueError, match="redis://host:port"):
        sentinel_url("m", "redis://:secret@h")  # no port
    with pytest.raises(ValueError, match="master's name"):
        sentinel_url("a/b", "h:1")


def test_a_sentinel_url_is_shown_without_its_password_and_a_bad_one_names_the_form() -> None:
    url = "redis+sentinel://:s3cret@h1:1,h2:2/m/0"
    assert redact_url(url) == "redis+sentinel://:***@h1:1,h2:2/m/0"
    assert "s3cret" not in clean_error(ValueError(f"oops {url}"), url)
    with pytest.raises(ConfigError, match=r"redis\+sentinel://10.0.0.5:26379") as err:
        make_client(
            "redis+sentinel://:s3cret@h1/m",
            timeout=1,
            connections=1,
            client_name="t",
            error=ConfigError,
        )
    assert "s3cret" not in str(err.value)


# Against the topology -----------------------------------------------------------------


def test_the_fixture_has_a_master_a_linked_replica_and_3_sentinels(
    sentinel_env: SentinelTopology,
) -> None:
    master, replica = sentinel_env.master(), sentinel_env.replica()
    assert master.port != replica.port
    with master.client() as c:
        c.set("k", "v")
        assert c.wait(1, 5000) == 1
    with replica.client() as c:
        assert c.get("k") == "v"
    for s in sentinel_env.sentinels:
        with s.client() as c:
            assert len(c.sentinel_slaves(MASTER)) == 1


def test_make_client_writes_to_the_master_the_sentinels_name(
    sentinel_env: SentinelTopology,
) -> None:
    client = make_client(
        sentinel_env.url(), timeout=2, connections=1, client_name="t", error=ConfigError
    )
    try:
        client.set("via", "sentinel")
        role = client.execute_command("ROLE")[0]
    finally:
        client.close()
    assert (role.decode() if isinstance(role, bytes) else role) == "master"
    with sentinel_env.master().client() as c:
        assert c.get("via") == "sentinel"


@pytest.fixture
def sentinel_hubs(tmp_path: Path, sentinel_env: SentinelTopology) -> Iterator[Any]:
    started: list[HubProc] = []

    def make(hub_id: str, **kw: Any) -> HubProc:
        args = ("--redis-sentinel", MASTER, *kw.pop("args", ()))
        h = HubProc(tmp_path, hub_id, sentinel_env.sentinel_urls, args=args, **kw)
        started.append(h)
        return h

    yield make
    for h in started:
        h.stop()


def test_two_hubs_share_work_through_the_master_the_sentinels_name(
    sentinel_env: SentinelTopology, sentinel_hubs: Any
) -> None:
    a = sentinel_hubs("A", size=2, lease=2.0).start()
    b = sentinel_hubs("B", size=2, lease=2.0).start()
    ids = []
    for n in range(30):
        answer = (a if n % 2 else b).submit({"n": n, "sleep": 0.05})
        assert answer["stored"], answer
        ids.append(answer["id"])
    with sentinel_env.master().client() as client:
        wait_for(lambda: len(record(client)) >= 30, 60, "every item to complete")
        assert sorted(outcomes(client)) == sorted(ids)
        assert set(outcomes(client).values()) == {1}
        assert {row["hub"] for row in record(client)} == {"A", "B"}
        assert item(client, ids[3])["result"]["double"] == 6
        # the registry mirror writes there too
        wait_for(lambda: client.exists("hubvisor:hub:A", "hubvisor:hub:B") == 2, 30, "mirror")
    assert "redis+sentinel://127.0.0.1:" in a.log.read_text()
    where = a.call("status", cluster=True)["cluster"]["redis"]["sentinel"]
    assert where == {"service": MASTER, "master": f"127.0.0.1:{sentinel_env.master_port()}"}


def test_redis_sentinel_without_redis_naming_the_sentinels_is_refused(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from supervisor._cli import main

    spec = tmp_path / "spec.py"
    spec.write_text("tree = []\n")
    result = CliRunner().invoke(main, ["run", str(spec), "--redis-sentinel", "mymaster"])
    assert result.exit_code == 2
    assert "--redis-sentinel MASTER needs --redis naming the Sentinels" in result.output
    result = CliRunner().invoke(
        main, ["run", str(spec), "--redis-sentinel", "mymaster", "--redis", "redis://h"]
    )
    assert result.exit_code == 2
    assert "redis://host:port" in result.output


# --redis-replicas: acknowledged means replicated -------------------------------------


async def test_with_replicas_1_every_acknowledged_write_is_on_the_replica(
    sentinel_env: SentinelTopology,
) -> None:
    queue = RedisWorkQueue(sentinel_env.url(), lease=5, replicas=1)
    hub = Hub([agent("a1"), agent("a2")], work=WorkService(queue), hub_id="A")
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        items = [hub.work.submit("w", {"n": n}) for n in range(20)]
        assert all([await hub.work.stored(i.id) for i in items])
        # stored means on the replica too, at the moment of the answer
        with sentinel_env.replica().client() as replica:
            assert all(replica.exists(f"hubvisor:work:{{w}}:item:{i.id}") for i in items)
        with sentinel_env.master().client() as client:
            await until(lambda: len(record(client)) >= 20)
        await hub.stop()
    with sentinel_env.replica().client() as replica:
        assert sorted(outcomes(replica)) == sorted(i.id for i in items)
        assert set(outcomes(replica).values()) == {1}


async def test_replicas_that_never_confirm_hold_the_writes_and_submit_says_not_stored(
    sentinel_env: SentinelTopology, caplog: pytest.LogCaptureFixture
) -> None:
    """N=2 with one replica: WAIT never confirms; the submit answers stored: false after
    its timeout, the write is held (logged once) and sent again, nothing is lost."""
    queue = RedisWorkQueue(sentinel_env.url(), lease=5, replicas=2, replicas_timeout=0.2)
    hub = Hub([agent("a1")], work=WorkService(queue), hub_id="A")
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        first = hub.work.submit("w", {"n": 1})
        assert not await hub.work.stored(first.id, 2.0)
        second = hub.work.submit("w", {"n": 2})
        assert not await hub.work.stored(second.id, 1.0)
        # still held as submitted (not yet written), in the round in flight or the outbox
        assert {i.id for i in queue.items()} >= {first.id, second.id}
        assert all(i.status == "queued" for i in queue.items())
        assert queue.outage
        await hub.stop()
    warned = [r.message for r in caplog.records if "WAIT confirmed" in r.message]
    assert len(warned) == 1, warned  # once for the whole condition
    assert "WAIT confirmed 1 of 2 replica(s)" in warned[0]
    with sentinel_env.master().client() as client:  # on the master: held, not lost
        assert client.exists(f"hubvisor:work:{{w}}:item:{first.id}")
        assert client.exists(f"hubvisor:work:{{w}}:item:{second.id}")
        assert not record(client)  # no result was counted as written


# Failover ------------------------------------------------------------------------------


def test_sigkill_of_the_master_while_work_flows_loses_nothing_and_restarts_no_agent(
    sentinel_env: SentinelTopology, sentinel_hubs: Any
) -> None:
    """Seeded and bounded: two hubs (--redis-replicas 1, lease 8 s) share 40 items; the
    master is SIGKILLed while they flow and the Sentinels promote the replica. The hubs
    hold their writes meanwhile and write them to the new master: every submitted item
    completes exactly once, no agent is restarted, no lease is lost. Prints the failover
    pause: from the kill until the first write the new master accepted."""
    rng = random.Random(23)
    args = ("--redis-replicas", "1")
    a = sentinel_hubs("A", size=2, lease=8.0, args=args).start()
    b = sentinel_hubs("B", size=2, lease=8.0, args=args).start()
    agents = {h.hub_id: sorted(h.agent_pids()) for h in (a, b)}
    ids = []
    for n in range(24):
        answer = (a if n % 2 else b).submit({"n": n, "sleep": rng.choice([0.1, 0.3, 0.6])})
        assert answer["stored"], answer  # on the replica too
        ids.append(answer["id"])
    with sentinel_env.master().client() as client:
        wait_for(lambda: len(record(client)) >= 6, 60, "work to flow")
    killed, killed_at = time.monotonic(), time.time()
    old = sentinel_env.kill_master()
    new = next(node for node in sentinel_env.nodes if node is not old)
    probe: dict[str, Any] = {}
    submitter = threading.Thread(target=lambda: probe.update(a.submit({"n": 99})))
    submitter.start()  # a submit in the failover: held, then written to the new master

    promoted: list[float] = []

    def a_round_went_through() -> bool:  # each hub's first round there has its heartbeat
        if not promoted and client.execute_command("ROLE")[0] == "master":
            promoted.append(time.monotonic() - killed)
        scores = [client.zscore("hubvisor:work:hubs", h) for h in ("A", "B")]
        return any(score is not None and score > killed_at for score in scores)

    with new.client() as client:
        wait_for(a_round_went_through, 60, "the new master to accept the first write")
    pause = time.monotonic() - killed
    print(
        f"failover pause (kill -> first write on the new master): {pause:.2f} s "
        f"(replica promoted after {promoted[0] if promoted else pause:.2f} s)"
    )
    submitter.join(30)
    ids.append(probe["id"])
    for n in range(24, 40):  # while the new master has no replica: held, then written
        answer = (a if n % 2 else b).submit({"n": n, "sleep": 0.1})
        ids.append(answer["id"])
        if n == 26:
            sentinel_env.wait_whole()  # the old master back, as the new one's replica
    with sentinel_env.master().client() as client:
        try:
            wait_for(lambda: set(ids) <= set(outcomes(client)), 90, "every item to complete")
        except AssertionError:
            missing = [i for i in ids if i not in outcomes(client)]
            raise AssertionError(
                f"{len(missing)} never completed: {missing[:5]}\nA:\n"
                f"{a.log.read_text()[-3000:]}\nB:\n{b.log.read_text()[-3000:]}"
            ) from None
        counts = outcomes(client)
        assert set(counts) == set(ids)
        assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
        assert {row["outcome"] for row in record(client)} == {"completed"}
    assert {h.hub_id: sorted(h.agent_pids()) for h in (a, b)} == agents  # none restarted
    for h in (a, b):
        log = h.log.read_text()
        assert "lease lost" not in log and "took over" not in log, log[-3000:]
    assert pause < 30, pause


def test_a_hub_sigkilled_during_the_failover_has_its_work_taken_on_the_new_master(
    sentinel_env: SentinelTopology, sentinel_hubs: Any
) -> None:
    """The master and hub A are SIGKILLed together while both hubs hold work: B writes
    its held writes to the promoted replica and, once A's lease ran out there, takes A's
    items; every item submitted completes exactly once, B restarts no agent."""
    args = ("--redis-replicas", "1")
    a = sentinel_hubs("A", size=2, lease=4.0, args=args).start()
    b = sentinel_hubs("B", size=2, lease=4.0, args=args).start()
    b_agents = sorted(b.agent_pids())
    ids = [(a if n % 2 else b).submit({"n": n, "sleep": 1.0})["id"] for n in range(16)]
    with sentinel_env.master().client() as client:

        def both_busy() -> bool:
            held = [item(client, i).get("hub") for i in ids]
            return {"A", "B"} <= {h for h, i in zip(held, ids, strict=True) if h} and (
                sum(item(client, i).get("st") == "assigned" for i in ids) >= 3
            )

        wait_for(both_busy, 60, "both hubs to hold work")
    sentinel_env.kill_master()
    a.kill()
    sentinel_env.wait_whole()  # promoted, and the old master back as its replica
    with sentinel_env.master().client() as client:
        try:
            wait_for(lambda: set(ids) <= set(outcomes(client)), 90, "every item to complete")
        except AssertionError:
            missing = [i for i in ids if i not in outcomes(client)]
            raise AssertionError(
                f"{len(missing)} never completed: {[item(client, i) for i in missing[:3]]}"
                f"\nB:\n{b.log.read_text()[-4000:]}"
            ) from None
        counts = outcomes(client)
        assert set(counts) == set(ids)
        assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    assert sorted(b.agent_pids()) == b_agents


async def test_a_final_write_that_a_failover_lost_is_written_again(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Without --redis-replicas a failover can promote a replica that lacks a result the
    hub wrote: the item is pending on the hub again. The hub's read-back after the outage
    finds it, finished here, and writes its outcome again (it never stays pending)."""
    raw = redis.Redis(port=redis_server.port)  # bytes: DUMP and RESTORE
    c = redis_server.client()
    q, log, key = "hubvisor:work:{w}:q", "hubvisor:work:{w}:log", "hubvisor:work:{w}:item:"
    queue = RedisWorkQueue(redis_server.url, lease=5)
    hub = Hub([agent("a1")], work=WorkService(queue), hub_id="A")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            it = hub.work.submit("w", {"n": 4, "sleep": 1.0})
            key += it.id
            await until(lambda: c.hget(key, "st") == "assigned")
            replica = {k: raw.dump(k) for k in (q, key)}  # what a lagging replica had
            await until(lambda: len(record(c)) == 1)
            for k, value in replica.items():  # the failover: that replica is the master
                raw.restore(k, 0, value, replace=True)
            raw.delete(log)
            assert c.xpending(q, "hubs")["pending"] == 1
            raw.client_kill_filter(_type="normal", skipme=True)  # the hub's link breaks
            await until(lambda: len(record(c)) == 1)
            await until(lambda: c.xpending(q, "hubs")["pending"] == 0)
            await hub.stop()
        assert c.hget(key, "st") == "completed"
        assert outcomes(c) == {it.id: 1}
        assert any("written again" in r.message for r in caplog.records)
    finally:
        raw.close()
        c.close()
