"""The Redis mirror with batches in flight (``RedisMirror(max_in_flight=...)``) against a
real redis-server: the bound holds and is reached, Redis ends up holding exactly what one
batch at a time writes, and a connection broken under batches in flight loses and repeats
nothing."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import supervisor._registry_redis as registry_redis
import supervisor._registry_redis_io as registry_redis_io
from supervisor import ChildExited, ChildRunning, ChildStarting, ExitStatus, Registry
from supervisor._events import Event
from supervisor._registry_redis import RedisMirror

from ..redis_server import RedisServer, redis_server, redis_server_factory

__all__ = ["redis_server", "redis_server_factory"]  # fixtures, imported for pytest

pytestmark = pytest.mark.slow

TIMEOUT = 60.0
N = 600


def _events() -> list[Event]:
    """N new agents of three kinds of type, then updates: a third run, every fifth
    restarts with another type, every seventh exits (its keys go)."""
    out: list[Event] = []
    for i in range(N):
        agent_type = ("a", "b", None)[i % 3]
        out.append(
            ChildStarting(
                at=float(i), supervisor="root", child_id=f"x{i}", pid=1000 + i, incarnation=1,
                agent_type=agent_type,
            )
        )  # fmt: skip
    for i in range(N):
        if i % 3 == 0:
            out.append(ChildRunning(at=N + i, supervisor="root", child_id=f"x{i}", pid=1000 + i))
        if i % 5 == 0:
            out.append(
                ChildStarting(
                    at=N + i, supervisor="root", child_id=f"x{i}", pid=5000 + i, incarnation=2,
                    agent_type="c",
                )
            )  # fmt: skip
        if i % 7 == 0:
            out.append(
                ChildExited(
                    at=N + i, supervisor="root", child_id=f"x{i}", pid=1000 + i,
                    status=ExitStatus(code=0), expected=True, failed_start=False, uptime=1.0,
                )
            )  # fmt: skip
    return out


async def _mirror_all(url: str, hub_id: str, in_flight: int) -> RedisMirror:
    mirror = RedisMirror(url, batch_max=20, batch_interval=0.05, max_in_flight=in_flight)
    reg = Registry(hub_id=hub_id, mirror=mirror)
    async with trio.open_nursery() as nursery:
        await nursery.start(reg.run)
        assert await mirror.drain()
        for event in _events():
            reg.submit(event)
        await reg.sync()
        with trio.fail_after(TIMEOUT):
            while not await mirror.drain():
                await trio.sleep(0.05)
        reg.final_flush_timeout = 0  # keep the keys: the test reads them
        reg.stop()
    return mirror


def _contents(server: RedisServer, hub_id: str) -> dict[str, Any]:
    """What Redis holds for ``hub_id``, without the times (each run has its own clock)."""
    stem = f"hubvisor:hub:{hub_id}"
    with server.client() as c:
        agents = {}
        for key in c.keys(f"{stem}:agent:*"):
            fields = c.hgetall(key)
            del fields["spawned_at"], fields["hub"]
            agents[key.removeprefix(stem)] = fields
        sets = {
            key.removeprefix(stem): c.smembers(key)
            for key in [f"{stem}:agents", *c.keys(f"{stem}:type:*")]
        }
        events = [
            (f["agent"], f["kind"], f["detail"], f["pid"], f["type"])
            for _, f in c.xrange("hubvisor:events")
            if f["hub"] == hub_id
        ]
    return {"agents": agents, "sets": sets, "events": events}


async def test_batches_in_flight_are_bounded_and_redis_ends_the_same(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/bounds.md: at most ``max_in_flight`` batches are sent and not yet answered;
    with a backlog the bound is reached. What Redis holds afterwards (agents, sets, the
    event stream, in order, each event once) is what one batch at a time writes."""
    seen: list[int] = []
    step = registry_redis_io.step

    def counting(m: Any, flying: list[Any], batch: Any, replies: int) -> Any:
        seen.append(len(flying) + (batch is not None))
        return step(m, flying, batch, replies)

    monkeypatch.setattr(registry_redis, "step", counting)
    one = await _mirror_all(redis_server.url, "one", 1)
    assert seen == []  # one at a time: never the pipelined path
    three = await _mirror_all(redis_server.url, "three", 3)
    assert max(seen) == 3, f"in flight at most: {max(seen)}"
    assert one.failures == three.failures == 0
    expected = _contents(redis_server, "one")
    # an exit with the first pid does not end a restarted agent (every 35th)
    assert len(expected["agents"]) == N - len([i for i in range(0, N, 7) if i % 5])
    restarts, exits = len(range(0, N, 5)), len([i for i in range(0, N, 7) if i % 5])
    assert len(expected["events"]) == N + restarts + exits  # "running" is no stream event
    assert _contents(redis_server, "three") == expected


async def test_a_connection_broken_under_batches_in_flight_loses_and_repeats_nothing(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection breaks after Redis ran part of the batches in flight: they are
    written again on a fresh one (no outage), every agent is there and every event once,
    in order."""
    import redis as redis_lib

    original = redis_lib.connection.AbstractConnection.read_response
    reads = [0]

    def breaking(self: Any, *args: Any, **kwargs: Any) -> Any:
        reads[0] += 1
        if reads[0] == 40:  # a few batches into the backlog, with others in flight
            self.disconnect()
            raise redis_lib.ConnectionError("connection lost with batches in flight (test)")
        return original(self, *args, **kwargs)

    one = await _mirror_all(redis_server.url, "one", 1)
    monkeypatch.setattr(redis_lib.connection.AbstractConnection, "read_response", breaking)
    three = await _mirror_all(redis_server.url, "three", 3)
    assert reads[0] > 40, "the fault was not injected"
    assert one.outages == three.outages == 0
    assert _contents(redis_server, "three") == _contents(redis_server, "one")
