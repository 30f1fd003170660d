"""Dependent items (``submit --after``) and idempotent submits (``submit --key``) with real
agents (tests/raw_agent.py, steered by the payloads), on the memory and SQLite backends;
the Redis backend refuses both with an error naming the option and the backend, and every
backend refuses ``--require`` (routing to tiers is not built yet).

Every wait is on a real outcome (``hub.work.wait``), never on a sleep.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from supervisor import (
    ControlError,
    Event,
    Hub,
    ItemStatus,
    MemoryWorkQueue,
    PoolSpec,
    SqliteWorkQueue,
    WorkService,
)
from supervisor.control.server import serve_control
from supervisor.work import MAX_AFTER

from ..control.test_commands import agent, cli, cli_json, tree
from ..helpers import TIMEOUT, is_, running, wait_event

BACKENDS = ("memory", "sqlite")


def work(backend: str, tmp_path: Path, keep_finished: int = 10_000) -> WorkService:
    if backend == "memory":
        return WorkService(MemoryWorkQueue(keep_finished=keep_finished))
    return WorkService(SqliteWorkQueue(tmp_path / "state", keep_finished=keep_finished))


@asynccontextmanager
async def served(
    backend: str, tmp_path: Path, *children: Any, keep_finished: int = 10_000
) -> AsyncIterator[tuple[Hub, trio.MemoryReceiveChannel[Event], Path]]:
    """A hub with ``backend``'s work store serving its control socket."""
    path = tmp_path / "hub.sock"
    spec = tree(*children) if children else tree(agent("a1"), agent("a2"))
    service = work(backend, tmp_path, keep_finished)
    try:
        async with (
            running(spec, work=service, hub_id="deps") as (hub, events),
            trio.open_nursery() as nursery,
        ):
            await nursery.start(serve_control, hub, path)
            yield hub, events, path
            nursery.cancel_scope.cancel()
    finally:
        if isinstance(service.queue, SqliteWorkQueue):
            service.queue.close()


async def ended(hub: Hub, item_id: str) -> Any:
    with trio.fail_after(TIMEOUT):
        return await hub.work.wait(item_id)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_item_runs_only_after_its_dependencies_completed(
    backend: str, tmp_path: Path
) -> None:
    """Two agents idle: the dependent item waits (queued, not handed out) until both of
    its dependencies completed, then runs; ``work show`` names what it waits for."""
    async with served(backend, tmp_path) as (hub, _, path):
        slow = hub.work.submit("w", {"n": 1, "sleep": 0.4})
        quick = hub.work.submit("w", {"n": 2})
        shown = await cli_json(path, "submit", "w", '{"n": 3}', "--after", f"{slow.id},{quick.id}")
        later = shown["id"]
        assert [slow.id, quick.id] == shown["after"]
        done = await ended(hub, later)
        first = await ended(hub, slow.id)
        assert ItemStatus.COMPLETED == done.status
        assert 6 == done.result["double"]
        assert [] == done.waiting_on
        assert done.history[0].at >= first.finished_at  # started after its dependency ended
        assert (done.started_at or 0) >= (first.finished_at or 0)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_dependency_that_fails_cancels_its_dependents_naming_it(
    backend: str, tmp_path: Path
) -> None:
    """A FAIL (retry=false) of the dependency cancels the dependent, and the one waiting for
    that in turn, with the reason; an event says so; a dependency already failed cancels a
    new dependent at once."""
    async with served(backend, tmp_path) as (hub, events, path):
        bad = hub.work.submit("w", {"fail": "disk full", "sleep": 0.2})
        mid = hub.work.submit("w", {"n": 2}, after=[bad.id])
        last = hub.work.submit("w", {"n": 3}, after=mid.id)
        got = await ended(hub, last.id)
        assert ItemStatus.CANCELLED == got.status
        assert f"dependency {mid.id} ended cancelled" in (got.error or "")
        mid_now = await ended(hub, mid.id)
        assert f"dependency {bad.id} ended failed: disk full" == mid_now.error
        assert 0 == mid_now.attempt, "a cancelled dependent never ran"
        event = await wait_event(events, is_("work_dependency_ended", item_id=mid.id))
        assert bad.id in getattr(event, "reason", "")
        shown = await cli_json(path, "submit", "w", '{"n": 4}', "--after", bad.id)
        assert "cancelled" == shown["status"] and bad.id in shown["error"]
        listed = await cli_json(path, "work", "list", "--status", "cancelled")
        assert {mid.id, last.id, shown["id"]} == {i["id"] for i in listed}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_second_submit_with_the_same_key_answers_the_first_item(
    backend: str, tmp_path: Path
) -> None:
    """Same type and key: the first item's id, nothing created (also once it completed,
    while it is kept); another type or key: a new item. Once the item is pruned
    (keep_finished) the key is free again."""
    async with served(backend, tmp_path, keep_finished=1) as (hub, _, path):
        first = await cli_json(path, "submit", "w", '{"n": 5}', "--key", "task-17")
        again = await cli_json(path, "submit", "w", '{"n": 99}', "--key", "task-17")
        assert first["id"] == again["id"] and "task-17" == again["key"]
        assert {"n": 5} == again["payload"]
        assert 10 == (await ended(hub, first["id"])).result["double"]
        assert first["id"] == hub.work.submit("w", {"n": 1}, key="task-17").id
        # Submitted once the first ended, so it ends last (two agents could otherwise
        # finish it first, and keep_finished=1 would prune it instead of the first).
        other = hub.work.submit("w", {"n": 6}, key="task-18")
        assert other.id != first["id"]
        await ended(hub, other.id)  # keep_finished=1: the first item is pruned now
        fresh = hub.work.submit("w", {"n": 7}, key="task-17")
        assert fresh.id not in (first["id"], other.id)
        assert 3 == len({first["id"], other.id, fresh.id})


async def test_a_key_survives_a_restart_of_a_sqlite_hub(tmp_path: Path) -> None:
    """The key is in the item's record: a hub restarted on the file answers the same id."""
    async with served("sqlite", tmp_path) as (hub, _, _path):
        item = hub.work.submit("w", {"n": 1}, key="k")
        assert await hub.work.stored(item.id)
        await ended(hub, item.id)
    async with served("sqlite", tmp_path) as (hub, _, _path):
        assert item.id == hub.work.submit("w", {"n": 2}, key="k").id


@pytest.mark.parametrize("backend", BACKENDS)
async def test_bad_dependencies_keys_and_requirements_are_refused_naming_the_option(
    backend: str, tmp_path: Path
) -> None:
    async with served(backend, tmp_path) as (hub, _, path):
        with pytest.raises(ControlError, match="--after names 'w-404', which is no work item"):
            hub.work.submit("w", {"n": 1}, after=["w-404"])
        many = [f"w-{i}" for i in range(MAX_AFTER + 1)]
        with pytest.raises(ControlError, match=f"over the cap of {MAX_AFTER}"):
            hub.work.submit("w", {"n": 1}, after=many)
        with pytest.raises(ControlError, match="--key must be a non-empty string"):
            hub.work.submit("w", {"n": 1}, key="")
        result = await cli(path, "submit", "w", '{"n": 1}', "--require", "tier=large")
        assert 0 != result.exit_code
        assert "--require tier=large: no pool of type 'w' in the hub has those labels" in (
            result.output
        )
        assert [] == hub.work.items(), "a refused submit created nothing"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_planners_review_waits_for_the_pieces_it_split_off(
    backend: str, tmp_path: Path
) -> None:
    """The demo's agents (agents/planning.py, worker, qc, review as real processes): the
    planner's task review runs only once every worker item of its pieces completed."""
    from supervisor._demo import _agent

    def pool(kind: str, size: int) -> PoolSpec:
        template = attrs.evolve(_agent(kind), env={"HUBVISOR_DEMO_WORK_SECONDS": "0.05"})
        return PoolSpec(agent_type=kind, template=template, size=size)

    children = [pool("planning", 1), pool("worker", 2), pool("qc", 1), pool("review", 2)]
    async with served(backend, tmp_path, *children) as (hub, _, _path):
        plan = hub.work.submit("planning", {"task": "t", "seed": 3, "pieces": 3, "lines": 5})
        assert ItemStatus.COMPLETED == (await ended(hub, plan.id)).status
        review = next(
            i for i in hub.work.items() if i.agent_type == "review" and "pieces" in i.payload
        )
        assert 3 == len(review.after) and review.key == f"{plan.id}/review"
        done = await ended(hub, review.id)
        assert {"task": "t", "pieces": 3} == done.result
        pieces = [hub.work.get(i) for i in review.after]
        assert all(p.status is ItemStatus.COMPLETED for p in pieces)
        assert {f"{plan.id}/piece-{n}" for n in range(3)} == {p.key for p in pieces}
        assert all((done.started_at or 0) >= (p.finished_at or 0) for p in pieces)


def tiers(size: int = 1) -> list[PoolSpec]:
    """Two pools of type ``w``, one per tier, with distinct member ids."""
    return [
        PoolSpec(
            agent_type="w", name=f"w-{tier}", template=agent("t"), size=size, labels={"tier": tier}
        )
        for tier in ("small", "large")
    ]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_item_that_requires_a_tier_goes_only_to_that_tiers_pool(
    backend: str, tmp_path: Path
) -> None:
    """``--require tier=large``: done by the large pool's agent every time, while the small
    pool's agent is idle; items without a requirement go to either; a tier no pool has is
    refused, naming the pools."""
    async with served(backend, tmp_path, *tiers()) as (hub, _, path):
        large = [
            (await cli_json(path, "submit", "w", f'{{"n": {n}}}', "--require", "tier=large"))["id"]
            for n in range(4)
        ]
        plain = [hub.work.submit("w", {"n": n}).id for n in range(4)]
        for item_id in large:
            done = await ended(hub, item_id)
            assert "w-large-agent-1" == done.result["by"], done.history
            assert {"tier": "large"} == done.require
        assert {"w-small-agent-1", "w-large-agent-1"} >= {
            (await ended(hub, i)).result["by"] for i in plain
        }
        shown = await cli_json(path, "work", "show", large[0])
        assert {"tier": "large"} == shown["require"]
        result = await cli(path, "submit", "w", '{"n": 1}', "--require", "tier=huge")
        assert 0 != result.exit_code
        assert "--require tier=huge: no pool of type 'w' in the hub has those labels" in (
            result.output
        )
        assert "w-small {tier=small}" in result.output


def test_pools_of_one_type_have_distinct_member_ids_and_labels_are_checked() -> None:
    from supervisor import InvalidPoolSpec, check_specs
    from supervisor._spec import SupervisorSpec

    small, large = tiers(size=2)
    assert ["w-small-agent-1", "w-small-agent-2"] == [small.member_id(n) for n in (1, 2)]
    assert "w-agent-1" == PoolSpec(agent_type="w", template=agent("t")).member_id(1)
    check_specs(SupervisorSpec(name="hub", children=[small, large]))
    with pytest.raises(InvalidPoolSpec, match="PoolSpec.labels must map label names"):
        PoolSpec(agent_type="w", template=agent("t"), labels={"tier": 3})  # type: ignore[dict-item]


@pytest.mark.parametrize("make", [MemoryWorkQueue, "sqlite"])
def test_the_queue_gives_an_agent_the_oldest_item_its_labels_match(
    make: Any, tmp_path: Path
) -> None:
    q = (
        MemoryWorkQueue()
        if make is MemoryWorkQueue
        else SqliteWorkQueue(tmp_path, keep_finished=10)
    )
    try:
        big = q.submit("w", 1, max_deliveries=1, source="t", now=0, require={"tier": "large"})  # type: ignore[call-arg]
        small = q.submit("w", 2, max_deliveries=1, source="t", now=0)
        # what an autoscaling pool of each tier sees waiting
        assert (1, 2, 2) == (
            q.depth_for("w", {"tier": "small"}),  # type: ignore[attr-defined]
            q.depth_for("w", {"tier": "large"}),  # type: ignore[attr-defined]
            q.depth("w"),
        )
        got = q.assign("w", "a1", 1.0, {"tier": "small"})  # type: ignore[call-arg]
        assert got is not None and small.id == got.id
        assert q.assign("w", "a2", 1.0, {"tier": "small"}) is None  # type: ignore[call-arg]
        assert q.assign("w", "a2", 1.0) is None, "no labels: no item that requires one"
        got = q.assign("w", "a3", 1.0, {"tier": "large", "gpu": "1"})  # type: ignore[call-arg]
        assert got is not None and big.id == got.id
    finally:
        if isinstance(q, SqliteWorkQueue):
            q.close()


async def test_work_show_prints_the_key_dependencies_and_requirements(tmp_path: Path) -> None:
    async with served("memory", tmp_path, *tiers()) as (hub, _, path):
        first = hub.work.submit("w", {"hold": True}, key="k1", require={"tier": "large"})
        later = hub.work.submit("w", {"n": 1}, after=[first.id])
        shown = await cli(path, "work", "show", first.id)
        assert "key: k1" in shown.output and "require: tier=large" in shown.output
        shown = await cli(path, "work", "show", later.id)
        assert f"after: {first.id} (waiting on {first.id})" in shown.output


def test_a_long_chain_of_dependents_is_cancelled_without_recursion() -> None:
    """5000 items each waiting for the one before: the first one's failure cancels them
    all, each naming the one before it (no RecursionError)."""
    q = MemoryWorkQueue()
    first = q.submit("w", 0, max_deliveries=1, source="t", now=0)
    chain = [first]
    for n in range(5000):
        chain.append(q.submit("w", n, max_deliveries=1, source="t", now=0, after=[chain[-1].id]))  # type: ignore[call-arg]
    got = q.assign("w", "a1", 1.0)
    assert got is not None and first.id == got.id
    q.fail(first.id, 1, "a1", "boom", retry=False, now=2.0)
    assert all(i.status is ItemStatus.CANCELLED for i in chain[1:])
    assert f"dependency {chain[-2].id} ended cancelled" in (chain[-1].error or "")
    assert 0 == q.blocked("w") and 0 == q.depth("w")
