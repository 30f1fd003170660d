"""Dependent items (``submit --after``) on Redis (issue 21): released when every
dependency completed, cancelled naming the one that ended otherwise, across agent types
(other hash slots) and hubs, repaired by any hub's reconcile when the hub that finished a
dependency died before it settled the dependents (supervisor/work/redis/_deps.py)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings

from supervisor import ControlError, ItemStatus, MemoryWorkQueue, WorkService
from supervisor.testing import WorkSnapshot, work_schedules
from supervisor.work._item import WorkItem, _dependency_ended
from supervisor.work.redis import RedisWorkQueue
from supervisor.work.redis._deps import RedisDeps, annotate, ended, unknown

from ...helpers import TIMEOUT, is_, running, until, wait_event
from ...redis_cluster import RedisClusterProcs, redis_cluster, types_on_masters
from ...redis_hubs import SPEC, HubProc, record, wait_for
from ...redis_server import RedisServer, redis_server, redis_server_factory
from ...testing.test_work_backends import ONE_SERVER, RESILIENT, examples, redis_queue
from ..test_service import agent

__all__ = ["redis_cluster", "redis_queue", "redis_server", "redis_server_factory"]


# The in-process hubs run without the orphan keeper (keeper=False): under load its
# process was seen left unreaped at a hub's stop (a zombie the leak check catches), which
# is no part of what these tests check.


def blocked_ids(client: Any, agent_type: str) -> set[str]:
    return set(client.smembers(f"hubvisor:work:{{{agent_type}}}:blocked"))


async def test_an_item_waits_for_a_dependency_of_another_type_and_runs_after_it(
    redis_server: RedisServer, client: Any
) -> None:
    """The dependent (type v) is parked in v's blocked set, counted ``blocked`` by status
    and the metric, until its dependency (type w, another slot) completed; then it runs."""
    from supervisor._metrics import _waiting_by_reason

    service = WorkService(RedisWorkQueue(redis_server.url, lease=1))
    async with running(
        [agent("a1"), agent("b1", agent_type="v")], work=service, hub_id="A", keeper=False
    ) as (
        hub,
        _,
    ):
        dep = hub.work.submit("w", {"n": 1, "sleep": 1.0})
        assert await hub.work.stored(dep.id)
        then = hub.work.submit("v", {"n": 2}, after=[dep.id])
        assert await hub.work.stored(then.id)
        shown = await hub.work.fetch(then.id)
        assert ItemStatus.QUEUED == shown.status
        assert ([dep.id], [dep.id]) == (shown.after, shown.waiting_on)
        assert then.id in blocked_ids(client, "v")
        await until(lambda: hub.work.queue.blocked("v") == 1)  # type: ignore[attr-defined]
        gauge = _waiting_by_reason(hub, {"v"})
        assert 1 == {s.labels["reason"]: s.value for s in gauge.samples}["dependencies"]
        with trio.fail_after(TIMEOUT):
            done = await hub.work.wait(then.id)
            first = await hub.work.wait(dep.id)
        assert (ItemStatus.COMPLETED, ItemStatus.COMPLETED) == (done.status, first.status)
        assert done.started_at is not None and first.finished_at is not None
        assert done.started_at >= first.finished_at - 0.01  # the clocks of one host
        assert not blocked_ids(client, "v")
        await until(lambda: hub.work.queue.blocked("v") == 0)  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", ["failed", "cancelled"])
async def test_a_dependency_that_ends_otherwise_cancels_the_item_naming_it(
    redis_server: RedisServer, client: Any, how: str
) -> None:
    """A dependency that fails (or is cancelled while queued, on no agent) cancels its
    dependents with the reason the memory queue gives, and theirs in turn (a chain)."""
    service = WorkService(RedisWorkQueue(redis_server.url, lease=1))
    async with running(
        [agent("a1"), agent("b1", agent_type="v")], work=service, hub_id="A", keeper=False
    ) as (
        hub,
        events,
    ):
        if how == "failed":
            dep = hub.work.submit("w", {"fail": "no luck", "sleep": 0.3})
        else:
            dep = hub.work.submit("z", {"n": 1})  # no agent of type z: stays queued
        assert await hub.work.stored(dep.id)
        then = hub.work.submit("v", {"n": 2}, after=[dep.id])
        last = hub.work.submit("w", {"n": 3}, after=[then.id])
        assert await hub.work.stored(then.id) and await hub.work.stored(last.id)
        if how == "cancelled":
            await hub.work.cancel_any(dep.id, "not needed")
        with trio.fail_after(TIMEOUT):
            first = await hub.work.wait(dep.id)
            done = await hub.work.wait(then.id)
            chained = await hub.work.wait(last.id)
            ended_event = await wait_event(events, is_("work_dependency_ended", item_id=then.id))
    assert ItemStatus.CANCELLED == done.status == chained.status
    assert _dependency_ended(first) == done.error == ended_event.reason  # type: ignore[attr-defined]
    assert f"dependency {then.id} ended cancelled: {done.error}"[:500] == chained.error
    assert first.error and (how == "failed") == ("no luck" in first.error)
    assert not blocked_ids(client, "v") and not blocked_ids(client, "w")


async def test_an_unknown_dependency_is_refused_in_the_memory_queues_words(
    redis_server: RedisServer, client: Any
) -> None:
    memory = MemoryWorkQueue()
    service = WorkService(RedisWorkQueue(redis_server.url, lease=1))
    async with running([agent("a1")], work=service, hub_id="A", keeper=False) as (hub, _):
        known = hub.work.submit("w", {"n": 1}, key="k1")
        assert await hub.work.stored(known.id)
        for ref in ("w-nosuch1", "w:nokey"):
            with pytest.raises(ControlError) as mem:
                memory.submit("w", {}, max_deliveries=1, source="t", now=0, after=[ref])
            item = hub.work.submit("w", {"n": 2}, after=[known.id, ref])
            with pytest.raises(ControlError) as red:
                await hub.work.stored(item.id)
            assert str(mem.value) == str(red.value) == unknown(ref)
            await until(lambda i=item: not client.exists(f"hubvisor:work:{{w}}:item:{i.id}"))  # type: ignore[misc]
        by_key = hub.work.submit("w", {"n": 3}, after=["w:k1"])  # TYPE:KEY names it
        assert await hub.work.stored(by_key.id)
        with trio.fail_after(TIMEOUT):
            assert ItemStatus.COMPLETED == (await hub.work.wait(by_key.id)).status
    assert not blocked_ids(client, "w")


async def test_submitted_on_one_hub_released_by_the_hub_that_completed_the_dependency(
    redis_server: RedisServer, client: Any
) -> None:
    """Hub B (agents of type v) submits an item after one of type w, which only hub A
    runs: A completes the dependency and releases the item; B's agent runs it."""
    a = WorkService(RedisWorkQueue(redis_server.url, lease=1))
    b = WorkService(RedisWorkQueue(redis_server.url, lease=1))
    async with (
        running([agent("a1")], work=a, hub_id="A", keeper=False) as (hub_a, _),
        running([agent("b1", agent_type="v")], work=b, hub_id="B", keeper=False) as (hub_b, _),
    ):
        dep = hub_b.work.submit("w", {"n": 1, "sleep": 0.5})
        assert await hub_b.work.stored(dep.id)
        then = hub_b.work.submit("v", {"n": 2}, after=[dep.id])
        assert await hub_b.work.stored(then.id)
        with trio.fail_after(TIMEOUT):
            done = await hub_b.work.wait(then.id)
        assert ItemStatus.COMPLETED == done.status
        assert "A/" in (await hub_b.work.fetch(dep.id)).history[-1].agent
        assert done.history[-1].agent in ("b1", "B/b1")  # only B runs type v
        assert hub_a.work.queue._deps.settled >= 1  # type: ignore[attr-defined]


async def test_a_hub_gone_between_the_finish_and_the_release_is_repaired_by_another(
    redis_server: RedisServer, client: Any
) -> None:
    """Hub A completes the dependency but never settles its dependents (as when it dies
    right after the finish's round), then stops: a reconcile (B's, or A's own before it
    stopped), within about a lease, releases the item B submitted, and B's agent runs
    it."""
    qa = RedisWorkQueue(redis_server.url, lease=1)
    qa._deps.finished = lambda item_id: None  # type: ignore[method-assign]
    a = WorkService(qa)
    b = WorkService(RedisWorkQueue(redis_server.url, lease=1))
    async with running([agent("b1", agent_type="v")], work=b, hub_id="B", keeper=False) as (
        hub_b,
        _,
    ):
        dep = hub_b.work.submit("w", {"n": 1})  # no agent of type w yet: it waits
        assert await hub_b.work.stored(dep.id)
        then = hub_b.work.submit("v", {"n": 2}, after=[dep.id])
        assert await hub_b.work.stored(then.id)  # linked
        async with running([agent("a1")], work=a, hub_id="A", keeper=False) as (hub_a, _):
            with trio.fail_after(TIMEOUT):
                await hub_a.work.wait(dep.id)
        with trio.fail_after(TIMEOUT):
            done = await hub_b.work.wait(then.id)
        assert ItemStatus.COMPLETED == done.status
        assert 0 == qa._deps.settled  # A never settled it: a reconcile did (B's, or A's own)
        assert 1 == hub_b.work.queue._deps.repaired + qa._deps.repaired  # type: ignore[attr-defined]


def test_the_reasons_are_those_of_the_memory_queue() -> None:
    dep = WorkItem(id="w-1", agent_type="w", payload={}, max_deliveries=1, created_at=0.0)
    dep.status, dep.error = ItemStatus.DEAD, "x" * 600
    assert _dependency_ended(dep) == ended("w-1", "dead", "x" * 600)
    assert isinstance(RedisDeps, type)


# -- Redis Cluster: every new script keeps to one slot -----------------------------------


def dependency_ops(agent_type: str, dep_type: str) -> list[tuple[str, tuple[str, ...]]]:
    """(script, keys) of every write the dependencies make, built as the real code builds
    them: a dependent's submit (plain and with a key and a delay), its links (by id and
    by ``TYPE:KEY``), a drop, a notify, the settles (released, waiting, cancelled)."""
    from supervisor.work.redis._deps import _LINK, _NOTIFY, _SETTLE

    q = RedisWorkQueue("redis://localhost", prefix="hv", lease=2)
    deps = q._deps
    q.submit(agent_type, {}, max_deliveries=1, after=[f"{dep_type}-a1"])
    q.submit(agent_type, {}, max_deliveries=1, key="k", not_before=1.0, after=[f"{dep_type}:k"])
    ops = q.writes.take()
    item = WorkItem(
        id=f"{agent_type}-x1",
        agent_type=agent_type,
        payload={},
        max_deliveries=1,
        created_at=0.0,
        after=[f"{dep_type}-a1", f"{dep_type}:k"],
    )
    for op in ops:
        assert op.on_reply is not None
        op.on_reply("1")  # in Redis: the links follow
    deps._linking[item.id] = deps._linking.pop(ops[0].item_id)
    deps._linking[item.id].refs = item.after
    deps._on_linked(item.id, f"{dep_type}-a1")([1, f"{dep_type}-a1", "queued", ""])
    deps._on_linked(item.id, f"{dep_type}:k")([0])  # unknown: dropped
    deps.finished(f"{dep_type}-a1")
    deps.settle(item.id, f"{dep_type}-a1", "", "completed", "")
    deps.settle(item.id, f"{dep_type}-a1", f"{dep_type}:k", "waiting", "")
    deps.settle(item.id, f"{dep_type}-a1", "", "dead", "why")
    more = q.writes.take()
    scripts = {op.script for op in more}
    assert {_LINK, _NOTIFY, _SETTLE} <= scripts
    return [(op.script, op.keys) for op in [*ops, *more]]


@pytest.mark.parametrize("types", [("w", "v"), ("a.b-c_d", "t0"), ("naïve", "w")])
def test_every_dependency_script_keeps_to_one_slot(types: tuple[str, str]) -> None:
    from redis.crc import key_slot

    calls = dependency_ops(*types)
    assert len(calls) >= 9
    for _script, keys in calls:
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys


async def test_dependencies_across_masters_of_a_real_cluster(
    redis_cluster: RedisClusterProcs,
) -> None:
    """On a Redis Cluster, the dependency's type and the dependent's on two masters: the
    item runs after its dependency completed; one after a failing one is cancelled."""
    t0, t1 = types_on_masters(redis_cluster, 2, stem="dep")
    url = redis_cluster.url
    service = WorkService(RedisWorkQueue(url, lease=1, prefix=f"deps{time.monotonic_ns()}"))
    async with running(
        [agent("a1", agent_type=t0), agent("b1", agent_type=t1)], work=service, hub_id="A"
    ) as (hub, _):
        dep = hub.work.submit(t0, {"n": 1, "sleep": 0.3})
        bad = hub.work.submit(t0, {"fail": "no"})
        assert await hub.work.stored(dep.id) and await hub.work.stored(bad.id)
        then = hub.work.submit(t1, {"n": 2}, after=[dep.id])
        never = hub.work.submit(t1, {"n": 3}, after=[dep.id, bad.id])
        assert await hub.work.stored(then.id) and await hub.work.stored(never.id)
        with trio.fail_after(TIMEOUT):
            done = await hub.work.wait(then.id)
            cancelled = await hub.work.wait(never.id)
        assert ItemStatus.COMPLETED == done.status
        assert ItemStatus.CANCELLED == cancelled.status
        assert cancelled.error is not None and cancelled.error.startswith(f"dependency {bad.id}")


# -- real hub processes ------------------------------------------------------------------

# Spec code run by hub A's process: the moment it would settle a dependent (the finish of
# the dependency and its notify are written), the hub SIGKILLs itself.
DIE_BEFORE_SETTLING = """
import os, signal
from supervisor.work.redis._deps import RedisDeps
RedisDeps.settle = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
"""


class DyingHub(HubProc):
    """A hub process that may be gone (SIGKILLed by its spec) by the time it serves."""

    def _ready(self) -> bool:
        assert self.proc is not None
        return self.proc.poll() == -signal.SIGKILL or super()._ready()


@pytest.mark.slow
def test_a_hub_sigkilled_between_the_finish_and_the_release(
    tmp_path: Path, redis_server: RedisServer, client: Any
) -> None:
    """Hub A (a ``hubvisor run`` process) completes the dependency, writes the finish
    and reads its dependents, and is SIGKILLed before it releases them; hub B, which
    submitted the dependent item (type v), releases it from its reconcile within about
    a lease and runs it."""
    spec_a = SPEC.replace("{size}", "1").replace("{type}", "w") + DIE_BEFORE_SETTLING
    a = DyingHub(tmp_path, "A", redis_server.url, spec=spec_a, lease=1.5)
    b = HubProc(tmp_path, "B", redis_server.url, agent_type="v", size=1, lease=1.5)
    try:
        b.start()
        dep = b.call("submit", type="w", payload={"n": 1})["id"]  # no agent of type w yet
        then = b.call("submit", type="v", payload={"n": 2}, after=[dep])
        assert then["status"] == "queued" and then["stored"] is True  # linked
        assert [dep] == then["waiting_on"]
        with pytest.raises(Exception, match="'w-nosuch1', which is no work item kept here"):
            b.call("submit", type="v", payload={"n": 3}, after=["w-nosuch1"])  # the socket
        a.start()
        assert a.proc is not None
        wait_for(lambda: a.proc is not None and a.proc.poll() is not None, 30, "A's SIGKILL")
        assert -signal.SIGKILL == a.proc.returncode
        assert "completed" == client.hget(f"hubvisor:work:{{w}}:item:{dep}", "st")
        assert client.sismember("hubvisor:work:{v}:blocked", then["id"]), "A released nothing"
        key = f"hubvisor:work:{{v}}:item:{then['id']}"
        wait_for(lambda: client.hget(key, "st") == "completed", 30, "B's reconcile and agent")
        assert [then["id"]] == [r["item"] for r in record(client, "v")]
    finally:
        a.kill()
        b.stop()


async def test_the_demo_planners_review_waits_for_its_pieces_on_redis(
    redis_server: RedisServer, client: Any
) -> None:
    """The demo's agents as real processes on Redis: the planner submits its pieces with
    keys and a review ``after`` them by ``worker:KEY`` (its SUBMITs); the review runs once
    every piece completed."""
    import attrs

    from supervisor import PoolSpec
    from supervisor._demo import _agent

    def pool(kind: str, size: int) -> PoolSpec:
        template = attrs.evolve(_agent(kind), env={"HUBVISOR_DEMO_WORK_SECONDS": "0.05"})
        return PoolSpec(agent_type=kind, template=template, size=size)

    children = [pool("planning", 1), pool("worker", 2), pool("qc", 1), pool("review", 2)]
    service = WorkService(RedisWorkQueue(redis_server.url, lease=1))
    async with running(children, work=service, hub_id="A", keeper=False) as (hub, _):
        plan = hub.work.submit("planning", {"task": "t", "seed": 3, "pieces": 3, "lines": 5})
        with trio.fail_after(TIMEOUT):
            assert ItemStatus.COMPLETED == (await hub.work.wait(plan.id)).status
        await until(lambda: client.hexists("hubvisor:work:{review}:keys", f"{plan.id}/review"))
        review_id = client.hget("hubvisor:work:{review}:keys", f"{plan.id}/review")
        with trio.fail_after(TIMEOUT):
            done = await hub.work.wait(review_id)
        assert {"task": "t", "pieces": 3} == done.result
        shown = await hub.work.fetch(review_id)
        assert [f"worker:{plan.id}/piece-{n}" for n in range(3)] == shown.after
        keys = client.hgetall("hubvisor:work:{worker}:keys")
        pieces = [await hub.work.fetch(keys[f"{plan.id}/piece-{n}"]) for n in range(3)]
        assert all(p.status is ItemStatus.COMPLETED for p in pieces)
        assert done.started_at is not None
        assert all(done.started_at >= (p.finished_at or 0) - 0.01 for p in pieces)


def test_one_reconcile_pass_settles_at_most_200_blocked_items_of_a_type(
    redis_server: RedisServer, client: Any
) -> None:
    """250 items wait for one dependency that completed with nobody settling them: a
    reconcile pass releases 200 (RECONCILE_BUDGET), the next one the other 50."""
    from supervisor.work.redis._deps import RECONCILE_BUDGET

    q = RedisWorkQueue(redis_server.url, lease=1)
    client.hset("hubvisor:work:{w}:item:w-dep1", mapping={"id": "w-dep1", "st": "completed"})
    for n in range(250):
        q.submit("v", {"n": n}, max_deliveries=1, after=["w-dep1"])
    for op in q.writes.take():  # written as a hub's round writes them
        client.eval(op.script, len(op.keys), *op.keys, *op.args)
    assert 250 == client.scard("hubvisor:work:{v}:blocked")
    raw = redis_server.client()
    try:
        counts, results = q._deps._pass(raw, ["v"], True)
        assert {"v": 250} == counts
        assert RECONCILE_BUDGET == 200 == len(results)
        assert all(reply[1] == "released" for _id, _reason, reply in results)
        assert 50 == client.scard("hubvisor:work:{v}:blocked")
        assert 200 == client.zcard("hubvisor:work:{v}:delayed")  # the takes' promotion next
        counts, results = q._deps._pass(raw, ["v"], True)
        assert ({"v": 50}, 50) == (counts, len(results))
        assert 0 == client.scard("hubvisor:work:{v}:blocked")
    finally:
        raw.close()


# -- the work invariants of supervisor.testing, on Redis ---------------------------------


def _deps_queue() -> type:
    from tests.testing.test_work_backends import RecordedRedisQueue

    class DepsQueue(RecordedRedisQueue):
        """The whole record, with what each item waits for (its hash's ``wait``)."""

        def items(self) -> list[WorkItem]:
            out = super().items()
            for i in out:
                key = f"{self.prefix}:work:{{{i.agent_type}}}:item:{i.id}"
                got = self.view.hmget(key, "after", "wait")
                fields = dict(zip(("after", "wait"), got, strict=True))
                annotate(i, {k: str(v) for k, v in fields.items() if v})
            return out

    return DepsQueue


def test_the_work_invariants_hold_with_dependencies_and_keys_on_redis(
    redis_queue: Any,
) -> None:
    """The schedule of tests/testing/test_work_dependencies.py (keys, an item after one
    that completes, after one that fails, one submitted after its dependency failed) on
    Redis in virtual time: every check of supervisor.testing passes, settling allowed a
    few rounds (``written``), as Redis settles in the rounds after a finish or a submit;
    never an item handed out before its dependencies completed."""
    import functools

    from supervisor.testing import _invariants_work
    from tests.testing.test_work_backends import LATENCY, final, run
    from tests.testing.test_work_dependencies import SCHEDULE

    check = functools.partial(_invariants_work.check_work_dependencies, written=8 * LATENCY)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_invariants_work, "check_work_dependencies", check)
        trace = run(RESILIENT, SCHEDULE, lambda: redis_queue(_deps_queue()))
    statuses = sorted(s.status for s in final(trace).values())
    assert ["cancelled", "cancelled", "completed", "completed", "completed", "failed"] == statuses


@pytest.mark.slow
@settings(max_examples=examples(40), deadline=None, suppress_health_check=ONE_SERVER)
@given(schedule=work_schedules(RESILIENT, hang=True, dependencies=True, delays=False))
def test_dependencies_and_keys_hold_on_redis_while_agents_keep_being_restarted(
    redis_queue: Any, schedule: Any
) -> None:
    """Random schedules with keys and dependencies (and crashes, hangs) on Redis: every
    check passes (settling allowed a few rounds) and nothing is left waiting at the end."""
    import functools

    from supervisor.testing import _invariants_work
    from tests.testing.test_work_backends import LATENCY, run

    check = functools.partial(_invariants_work.check_work_dependencies, written=8 * LATENCY)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_invariants_work, "check_work_dependencies", check)
        trace = run(RESILIENT, schedule, lambda: redis_queue(_deps_queue()))
    quiesced = [r for r in trace.log if isinstance(r, WorkSnapshot) and r.quiesced][-1]
    assert [] == [(s.id, s.status) for s in quiesced.items if s.status in ("queued", "assigned")]
