"""The Redis mirror against a real redis-server: layout, SIGKILL, outages, ghosts, auth."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from strategies import Intensity
from supervisor import ChildStarting, ChildState, Hub, PoolSpec, Registry, SupervisorSpec
from supervisor._cli import main
from supervisor._redis_link import redact_url
from supervisor._registry_redis import RedisMirror

from ..helpers import sleeper, wait_event
from ..redis_server import RedisServer, redis_server, redis_server_factory

__all__ = ["redis_server", "redis_server_factory"]  # fixtures, imported for pytest

pytestmark = pytest.mark.slow

TIMEOUT = 30.0


def pool(size: int = 3, agent_type: str = "worker") -> PoolSpec:
    return PoolSpec(
        agent_type=agent_type,
        template=sleeper("w", shutdown=1.0, start_period=0.05),
        size=size,
        intensity=Intensity(100, 10),
    )


def make_hub(
    server: RedisServer, hub_id: str = "h1", size: int = 3, **mirror: Any
) -> tuple[Hub, RedisMirror]:
    mirror.setdefault("batch_interval", 0.05)
    m = RedisMirror(server.url, **mirror)
    hub = Hub(
        SupervisorSpec(name="root", children=[pool(size)], intensity=Intensity(100, 10)),
        hub_id=hub_id,
        registry=Registry(mirror=m),
    )
    return hub, m


def redis_view(server: RedisServer, hub_id: str = "h1", prefix: str = "hubvisor") -> dict[str, Any]:
    """What an operator reads: agent id -> (pid, status) of the hub's live agents."""
    with server.client() as c:
        ids = c.smembers(f"{prefix}:hub:{hub_id}:agents")
        out = {}
        for agent_id in ids:
            h = c.hgetall(f"{prefix}:hub:{hub_id}:agent:{agent_id}")
            out[agent_id] = (int(h["pid"]), h["status"]) if h else None
        return out


def tree_view(hub: Hub) -> dict[str, Any]:
    """The truth: agent id -> (pid, registry status) of the tree's live workers."""
    out = {}
    for row in hub.which_children():
        info = row.info
        if info.kind == "worker" and info.state in (ChildState.STARTING, ChildState.RUNNING):
            rec = hub.registry.get(info.id)
            out[info.id] = (info.pid, rec.status if rec else None)
    return out


async def converged(hub: Hub, server: RedisServer, hub_id: str = "h1") -> dict[str, Any]:
    """Wait until Redis shows exactly the tree's live agents with the same pids/status."""
    with trio.fail_after(TIMEOUT):
        while True:
            await hub.registry.sync()
            truth = tree_view(hub)
            seen = await trio.to_thread.run_sync(redis_view, server, hub_id)
            if seen == truth and all(v is not None for v in truth.values()):
                return seen
            await trio.sleep(0.02)


async def test_redis_holds_exactly_the_live_agents_also_after_sigkill(
    redis_server: RedisServer,
) -> None:
    """Redis shows the hub's agents (ids, pids, types, leases); a SIGKILLed agent's
    restart shows up with its new pid within moments; a clean stop removes the hub."""
    hub, mirror = make_hub(redis_server)
    events = hub.bus.subscribe(["starting"])
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        seen = await converged(hub, redis_server)
        assert 3 == len(seen)
        with redis_server.client() as c:
            assert set(seen) == c.smembers("hubvisor:hub:h1:type:worker")
            rec = c.hgetall("hubvisor:hub:h1:agent:worker-agent-1")
            assert {"worker", "h1", "0"} <= {rec["type"], rec["hub"], rec["restarts"]}
            assert 0 < c.pttl("hubvisor:hub:h1:agent:worker-agent-1") <= 30_000
            assert 0 < c.pttl("hubvisor:hub:h1:agents") <= 30_000
            assert c.zscore("hubvisor:hubs", "h1") is not None

        for _ in range(3):  # drain the three first starts
            await events.receive()
        victim = seen["worker-agent-2"][0]
        os.kill(victim, signal.SIGKILL)
        new = await wait_event(events, lambda e: e.child_id == "worker-agent-2")
        assert isinstance(new, ChildStarting) and new.pid != victim
        t0 = trio.current_time()
        seen = await converged(hub, redis_server)
        lag = trio.current_time() - t0
        assert new.pid == seen["worker-agent-2"][0]
        # One batch interval (0.05s) plus a flush; generous for a loaded CI machine.
        assert lag < 1.0, f"Redis showed the restart {lag:.3f}s after it happened"
        with redis_server.client() as c:
            assert "1" == c.hget("hubvisor:hub:h1:agent:worker-agent-2", "restarts")
            kinds = [(f["agent"], f["kind"]) for _, f in c.xrange("hubvisor:events")]
            assert ("worker-agent-2", "crashed") in kinds
        await hub.stop()
    with redis_server.client() as c:
        assert [] == c.keys("hubvisor:hub:h1*")
        assert c.zscore("hubvisor:hubs", "h1") is None
    assert 0 == mirror.failures


async def test_redis_killed_and_restarted_mid_run_converges(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With redis-server SIGKILLed while agents crash and restart, the hub carries on;
    one warning is logged for the outage, and once Redis is back it holds exactly the
    live agents with their current pids."""
    caplog.set_level(logging.WARNING, logger="hubvisor.registry")
    hub, mirror = make_hub(redis_server, size=4, timeout=0.5, backoff_max=0.2)
    starts = hub.bus.subscribe(["starting"])
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        seen = await converged(hub, redis_server)
        for _ in range(4):
            await starts.receive()

        await trio.to_thread.run_sync(redis_server.kill)
        killed = {}
        for agent_id in ("worker-agent-1", "worker-agent-3", "worker-agent-1"):
            pid = tree_view(hub)[agent_id][0]
            os.kill(pid, signal.SIGKILL)
            new = await wait_event(starts, lambda e, a=agent_id: e.child_id == a)  # type: ignore[misc]
            killed[agent_id] = new.pid  # type: ignore[attr-defined]
            with trio.fail_after(TIMEOUT):  # let the writer fail a few times meanwhile
                while mirror.failures < 2:
                    await trio.sleep(0.02)
        failures = mirror.failures
        await trio.to_thread.run_sync(redis_server.start)  # empty: no data survives

        seen = await converged(hub, redis_server)
        assert {a: killed[a] for a in killed} == {a: seen[a][0] for a in killed}
        assert seen["worker-agent-2"] == (tree_view(hub)["worker-agent-2"][0], "idle")
        await hub.stop()
    assert failures >= 2
    assert 1 == mirror.outages
    unavailable = [r for r in caplog.records if "unavailable" in r.getMessage()]
    back = [r for r in caplog.records if "is back" in r.getMessage()]
    assert (1, 1) == (len(unavailable), len(back))


async def test_paused_redis_never_delays_a_restart(redis_server: RedisServer) -> None:
    """With redis-server frozen (SIGSTOP), a SIGKILLed agent is restarted at once;
    Redis catches up after it resumes."""
    hub, mirror = make_hub(redis_server, size=2, timeout=3.0)
    starts = hub.bus.subscribe(["starting"])
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        seen = await converged(hub, redis_server)
        for _ in range(2):
            await starts.receive()
        redis_server.pause()
        try:
            await hub.registry.assign("worker-agent-2", "job-1")  # a write that will hang
            await trio.sleep(0.2)  # the writer is now blocked on the frozen server
            t0 = trio.current_time()
            os.kill(seen["worker-agent-1"][0], signal.SIGKILL)
            await wait_event(starts, lambda e: e.child_id == "worker-agent-1", timeout=10)
            restart_took = trio.current_time() - t0
        finally:
            redis_server.resume()
        await converged(hub, redis_server)
        await hub.stop()
    assert restart_took < 1.0, f"restart took {restart_took:.2f}s with Redis frozen"


async def test_a_new_hub_cleans_the_ghosts_of_a_dead_one(redis_server: RedisServer) -> None:
    """A hub that died without cleaning up leaves keys with a lease; the next hub with
    the same id removes them on its first write, and the lease expires them anyway."""
    # A long lease: the ghosts must outlive the check below on a loaded machine (with
    # 1 s they expired before it at load 300); the lease's own expiry is checked last.
    dead, _ = make_hub(redis_server, hub_id="g", size=3, lease=60.0)
    dead.registry.final_flush_timeout = 0  # like a SIGKILLed hub: no goodbye
    async with trio.open_nursery() as nursery:
        await nursery.start(dead.serve)
        await converged(dead, redis_server, "g")
        await dead.stop()
    ghosts = redis_view(redis_server, "g")
    assert 3 == len(ghosts)
    with redis_server.client() as c:
        assert 0 < c.pttl("hubvisor:hub:g:agent:worker-agent-3") <= 60_000

    heir, _ = make_hub(redis_server, hub_id="g", size=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(heir.serve)
        seen = await converged(heir, redis_server, "g")
        assert ["worker-agent-1"] == list(seen)
        assert seen["worker-agent-1"][0] != ghosts["worker-agent-1"][0]
        with redis_server.client() as c:
            assert [] == c.keys("hubvisor:hub:g:agent:worker-agent-[23]")
        await heir.stop()

    lonely, _ = make_hub(redis_server, hub_id="lease", size=1, lease=0.5)
    lonely.registry.final_flush_timeout = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(lonely.serve)
        await converged(lonely, redis_server, "lease")
        await lonely.stop()
    with trio.fail_after(TIMEOUT):
        while await trio.to_thread.run_sync(lambda: redis_server.client().keys("*:lease*")):
            await trio.sleep(0.05)


async def test_password_works_and_never_shows(
    redis_server_factory: type[RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    """A password URL works; a wrong one fails with a logged error that names neither
    the password nor the URL's secret part."""
    caplog.set_level(logging.DEBUG)
    server = redis_server_factory(password="correct-horse-1")
    hub, _ = make_hub(server)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await converged(hub, server)
        await hub.stop()

    wrong = RedisMirror(f"redis://:wr0ng-s3cret@127.0.0.1:{server.port}/0", batch_interval=0.05)
    hub = Hub([sleeper("a")], hub_id="h2", registry=Registry(mirror=wrong))
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        with trio.fail_after(TIMEOUT):
            while wrong.failures == 0:
                await trio.sleep(0.02)
        await hub.stop()
    assert wrong.last_error is not None
    text = caplog.text + repr(wrong) + wrong.url + wrong.last_error
    assert "wr0ng-s3cret" not in text and "correct-horse-1" not in text
    assert "redis://:***@127.0.0.1" in wrong.url
    assert "unavailable" in caplog.text


async def test_event_stream_is_capped(redis_server: RedisServer) -> None:
    """The event stream never grows past events_maxlen entries."""
    hub, _ = make_hub(redis_server, size=3, events_maxlen=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await converged(hub, redis_server)
        for n in (1, 2, 3):
            await hub.restart_child(f"worker-agent-{n}")
        await converged(hub, redis_server)
        with redis_server.client() as c:
            assert 4 == c.xlen("hubvisor:events")
        await hub.stop()


def test_urls_are_checked_and_redacted() -> None:
    """Bad URLs and options fail clearly, without showing the password."""
    assert "redis://u:***@h:1/0" == redact_url("redis://u:pw@h:1/0")
    assert "rediss://:***@h/0" == redact_url("rediss://:pw@h/0")
    assert "redis://h:1" == redact_url("redis://h:1")
    with pytest.raises(ValueError, match=r"http://:\*\*\*@h") as err:
        RedisMirror("http://:pw@h")
    assert "pw@" not in str(err.value)
    with pytest.raises(ValueError, match="batch_max must be an int >= 1"):
        RedisMirror("redis://h", batch_max=0)
    with pytest.raises(ValueError, match="lease must be a number > 0"):
        RedisMirror("redis://h", lease=-1)


def test_cli_demo_mirrors_to_redis(redis_server: RedisServer) -> None:
    """`hubvisor demo --redis URL` shows the demo's live agents in Redis, with live
    pids, and removes them when it stops."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "supervisor",
            "demo",
            "--crash-rate",
            "0",
            "--hang-rate",
            "0",
            "--every",
            "1000",  # one task, at the start; then the agents go idle
            "--duration",
            "30",
            "--control-socket",
            "none",
            "--redis-prefix",
            "clitest",
        ],
        env={**os.environ, "HUBVISOR_REDIS_URL": redis_server.url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        seen: dict[str, Any] = {}
        while time.monotonic() < deadline:
            seen = redis_view(redis_server, "hub", "clitest")
            if len(seen) == 8 and all(v is not None and v[1] == "idle" for v in seen.values()):
                break
            time.sleep(0.05)
        assert 8 == len(seen), seen
        for pid, _ in seen.values():
            os.kill(pid, 0)  # alive
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"REDIS_URL={redis_server.url}".encode() in environ  # agents find it
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    assert 0 == proc.returncode, err.decode()
    with redis_server.client() as c:
        assert [] == c.keys("clitest:hub:*")
    assert b"mirrored to Redis at redis://127.0.0.1" in err


def test_cli_refuses_a_bad_redis_url_without_showing_the_password() -> None:
    """A bad --redis URL is a usage error whose message hides the password."""
    result = CliRunner().invoke(main, ["demo", "--redis", "http://:hunter2@x:1"])
    assert 2 == result.exit_code
    assert "hunter2" not in result.output and "http://:***@x:1" in result.output


async def test_tls_with_password(redis_server_factory: type[RedisServer]) -> None:
    """A rediss:// URL with a password and a CA file mirrors the registry over TLS."""
    server = redis_server_factory(password="tls-pw-42", tls=True)
    assert server.url.startswith("rediss://:tls-pw-42@")
    hub, mirror = make_hub(server)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        assert 3 == len(await converged(hub, server))
        await hub.stop()
    assert 0 == mirror.failures
    assert "tls-pw-42" not in repr(mirror)


# --------------------------------------------------------------------------------------
# Fault 12: retries never duplicate events; the final flush is bounded


def _starting(i: int) -> ChildStarting:
    return ChildStarting(
        at=float(i), supervisor="root", child_id=f"a{i}", pid=1000 + i, incarnation=1
    )


@pytest.mark.parametrize("executed", ["all-but-last", "all"])
async def test_fault12_retry_after_partial_pipeline_writes_each_event_once(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, executed: str
) -> None:
    """A flush whose pipeline Redis executed partly (or wholly) before the connection
    broke is retried; every event-stream entry is still there exactly once."""
    import redis as redis_lib

    mirror = RedisMirror(redis_server.url, batch_interval=0.05)
    reg = Registry(hub_id="dup", mirror=mirror)
    original = redis_lib.client.Pipeline._execute_pipeline
    armed = []

    def broken(self: Any, connection: Any, commands: Any, raise_on_error: bool) -> Any:
        if not armed or armed.pop():
            return original(self, connection, commands, raise_on_error)
        sent = commands[:-1] if executed == "all-but-last" else commands
        connection.send_packed_command(connection.pack_commands([a for a, _ in sent]))
        for _ in sent:
            connection.read_response()  # Redis executed them...
        connection.disconnect()  # ...and then the connection broke
        raise redis_lib.ConnectionError("connection lost mid-pipeline (test)")

    monkeypatch.setattr(redis_lib.client.Pipeline, "_execute_pipeline", broken)
    async with trio.open_nursery() as nursery:
        await nursery.start(reg.run)
        assert await mirror.drain()  # the first (full, MULTI/EXEC) flush
        armed.append(False)  # break the next plain pipeline once
        for i in range(5):
            reg.submit(_starting(i))
        await reg.sync()
        with trio.fail_after(TIMEOUT):
            while not await mirror.drain():
                await trio.sleep(0.05)
        assert not armed, "the fault was not injected"
        reg.stop()
    with redis_server.client() as c:
        entries = [f for _, f in c.xrange("hubvisor:events") if f["hub"] == "dup"]
    assert sorted(f"a{i}" for i in range(5)) == sorted(e["agent"] for e in entries)


async def test_fault12_final_flush_is_bounded_against_a_stalled_redis(
    redis_server: RedisServer,
) -> None:
    """With Redis stopped (SIGSTOP: connections open, nothing answered) the registry's
    final flush returns within final_flush_timeout plus a little, although one Redis
    call may block for the mirror's socket timeout (10 s here)."""
    mirror = RedisMirror(redis_server.url, batch_interval=0.05, timeout=10.0)
    reg = Registry(hub_id="stall", mirror=mirror, final_flush_timeout=0.5)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(reg.run)
            assert await mirror.drain()
            redis_server.pause()
            for i in range(3):
                reg.submit(_starting(i))
            await reg.sync()
            await trio.sleep(0.2)  # the writer is now blocked in a flush
            t0 = trio.current_time()
            reg.stop()
        took = trio.current_time() - t0
    finally:
        redis_server.resume()
    assert took < 0.5 + 0.5, f"final flush took {took:.2f}s"
    assert mirror.final_flush_cut


def test_fault12_bad_options_raise_the_hierarchys_error() -> None:
    """RedisMirror raises InvalidMirrorConfig (a HubvisorError and a ValueError)."""
    from supervisor import HubvisorError, InvalidMirrorConfig

    with pytest.raises(InvalidMirrorConfig) as err:
        RedisMirror("http://h")
    assert isinstance(err.value, HubvisorError) and isinstance(err.value, ValueError)
    with pytest.raises(InvalidMirrorConfig, match="batch_max"):
        RedisMirror("redis://h", batch_max=0)


async def test_batched_scripts_write_every_field_exactly(redis_server: RedisServer) -> None:
    """The batch scripts carry the fields as JSON: values with quotes, backslashes,
    non-ASCII text and empty strings reach the hashes and the event stream unchanged."""
    mirror = RedisMirror(redis_server.url, batch_interval=0.05)
    reg = Registry(hub_id="exact", mirror=mirror)
    odd = 'a"\\b é ✓ 😀'
    async with trio.open_nursery() as nursery:
        await nursery.start(reg.run)
        assert await mirror.drain()
        reg.submit(
            ChildStarting(
                at=1.0, supervisor=odd, child_id=f"id-{odd}", pid=4242, incarnation=1,
                agent_type="t",
            )
        )  # fmt: skip
        reg.submit(_starting(7))
        await reg.sync()
        assert await mirror.drain()
        rec = reg.get(f"id-{odd}")
        assert rec is not None
        reg.final_flush_timeout = 0
        reg.stop()
    with redis_server.client() as c:
        h = c.hgetall(f"hubvisor:hub:exact:agent:id-{odd}")
        plain = c.hgetall("hubvisor:hub:exact:agent:a7")
        entries = [f for _, f in c.xrange("hubvisor:events") if f["hub"] == "exact"]
    assert h["supervisor"] == odd and h["id"] == f"id-{odd}" and h["pid"] == "4242"
    assert h["assignment"] == "" and h["last_heartbeat"] == "" and h["type"] == "t"
    assert float(h["spawned_at"]) == pytest.approx(1.0 + mirror._offset)
    assert plain["type"] == "" and plain["id"] == "a7"
    assert [e["agent"] for e in entries] == [f"id-{odd}", "a7"]
    assert entries[0]["detail"] == "pid 4242" and entries[0]["kind"] == "started"
