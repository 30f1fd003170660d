"""Priorities, delayed items and retry delays (issue 21) with real agent processes, on
the memory queue and the SQLite store (Redis: tests/work/redis/test_ordering_redis.py)."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from strategies import FixedBackoff
from supervisor import ItemStatus, SqliteWorkQueue, WorkService
from supervisor._errors import ControlError

from ..helpers import TIMEOUT, is_, running, wait_event
from .test_service import agent, finished

BACKENDS = ["memory", "sqlite"]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Callable[..., WorkService]]:
    """``service(backend, **kw)``: a work service on that backend (its file closed at
    the end of the test)."""
    opened: list[SqliteWorkQueue] = []

    def make(backend: str, **kw: Any) -> WorkService:
        queue = None
        if backend == "sqlite":
            queue = SqliteWorkQueue(tmp_path / "state")
            opened.append(queue)
        return WorkService(queue, **kw)

    yield make
    for queue in opened:
        queue.close()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_ready_items_go_highest_priority_first_fifo_within(
    backend: str, service: Callable[..., WorkService]
) -> None:
    """While a1 holds a blocker, items of priorities 0, 5, 0, 9 queue; a1 is killed (its
    blocker waits out a retry delay) and the restarted a1 takes 9, 5, then the two 0s in
    the order they came."""
    work = service(backend, retry_backoff=FixedBackoff(600.0))
    async with running([agent("a1")], work=work) as (hub, events):
        blocker = hub.work.submit("w", {"hang": True})
        await wait_event(events, is_("work_assigned", "a1"))
        items = [hub.work.submit("w", {"n": n}, priority=p) for n, p in enumerate([0, 5, 0, 9])]
        assert [i.priority for i in items] == [0, 5, 0, 9]
        (row,) = hub.which_children()
        assert row.info.pid is not None
        os.kill(row.info.pid, signal.SIGKILL)
        for item in items:
            assert (await finished(hub, item, events)).status is ItemStatus.COMPLETED
        order = sorted(items, key=lambda i: hub.work.get(i.id).finished_at or 0)
        assert [i.id for i in order] == [items[3].id, items[1].id, items[0].id, items[2].id]
        got = hub.work.get(blocker.id)  # its exit's retry delay: it waits
        assert got.status is ItemStatus.QUEUED and got.not_before is not None
        assert got.not_before > time.time() + 500
        assert (hub.work.waiting("w"), hub.work.delayed("w")) == (0, 1)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_delayed_item_is_not_handed_out_before_its_time(
    backend: str, service: Callable[..., WorkService]
) -> None:
    async with running([agent("a1")], work=service(backend)) as (hub, events):
        await wait_event(events, is_("running", "a1"))
        submitted = time.time()
        later = hub.work.submit("w", {"n": 1}, delay=0.6)
        now = hub.work.submit("w", {"n": 2})
        at = later.not_before
        assert at is not None and at >= submitted + 0.6
        assert hub.work.delayed("w") == 1
        assert (await finished(hub, now, events)).status is ItemStatus.COMPLETED
        done = await finished(hub, later, events)
        assert done.status is ItemStatus.COMPLETED
        assert time.time() >= at  # it ran only after its time
        assert done.not_before is None  # ready once its time came
        assert hub.work.delayed("w") == 0


async def test_not_before_in_iso_is_honoured_and_bad_values_are_refused() -> None:
    async with running([agent("a1")]) as (hub, events):
        at = time.time() + 0.5
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1e6):06d}"
        item = hub.work.submit("w", {"n": 3}, not_before=iso)  # naive: local time
        assert item.not_before == pytest.approx(at, abs=1e-3)
        done = await finished(hub, item, events)
        assert done.status is ItemStatus.COMPLETED and time.time() >= at
        with pytest.raises(ControlError, match="priority must be an int"):
            hub.work.submit("w", {}, priority=1.5)  # type: ignore[arg-type]
        with pytest.raises(ControlError, match="delay must be seconds"):
            hub.work.submit("w", {}, delay=-1)
        with pytest.raises(ControlError, match="ISO 8601"):
            hub.work.submit("w", {}, not_before="soon")


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_failed_attempt_is_retried_after_the_pools_backoff(
    backend: str, service: Callable[..., WorkService]
) -> None:
    """FAIL retry=true three times: each redelivery waits the pool's backoff (0.3 s here),
    not the 5 ms of before; the item ends dead after its three deliveries."""
    work = service(backend, retry_backoff={"w": FixedBackoff(0.3)})
    async with running([agent("a1")], work=work) as (hub, events):
        item = hub.work.submit("w", {"fail_retry": "flaky"})
        done = await finished(hub, item, events)
        assert done.status is ItemStatus.DEAD
        ats = [h.at for h in done.history]
        assert len(ats) == 3
        gaps = [b - a for a, b in itertools.pairwise(ats)]
        assert all(g >= 0.29 for g in gaps), gaps


@pytest.mark.parametrize("backend", BACKENDS)
async def test_fail_retry_after_overrides_the_backoff(
    backend: str, service: Callable[..., WorkService]
) -> None:
    work = service(backend, retry_backoff=None)  # at once, but the agent asks
    async with running([agent("a1")], work=work) as (hub, events):
        item = hub.work.submit("w", {"fail_retry": "rate limited", "retry_after": 0.4})
        await wait_event(events, is_("work_failed", "a1"))
        got = hub.work.get(item.id)
        assert got.status is ItemStatus.QUEUED and got.not_before is not None
        assert got.not_before == pytest.approx(time.time() + 0.4, abs=0.2)
        done = await finished(hub, item, events)
        ats = [h.at for h in done.history]
        assert all(b - a >= 0.39 for a, b in itertools.pairwise(ats)), ats


async def test_a_stop_hands_back_without_delay() -> None:
    """A stop is not the item's fault: it is queued at once, not after the backoff."""
    work = WorkService(retry_backoff=FixedBackoff(600.0))
    async with running([agent("a1")], work=work) as (hub, events):
        item = hub.work.submit("w", {"hold": True})
        await wait_event(events, is_("work_assigned", "a1"))
        with trio.fail_after(TIMEOUT):
            await hub.restart_child("a1")
        reclaimed = await wait_event(events, is_("work_reclaimed", "a1"))
        assert reclaimed.reason == "stop"  # type: ignore[attr-defined]
        assert hub.work.get(item.id).not_before is None


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_agents_submit_carries_the_work_controls(
    backend: str, service: Callable[..., WorkService]
) -> None:
    """An agent's SUBMIT with priority, delay, time_limit and require makes an item with
    them (checked as any submit); one with a bad value is refused, creating nothing."""
    async with running([agent("a1")], work=service(backend)) as (hub, events):
        opts = {"priority": 7, "delay": 600, "time_limit": 30, "require": {}}
        parent = hub.work.submit("w", {"submit": "w", "n": 1, "submit_opts": opts})
        assert (await finished(hub, parent, events)).status is ItemStatus.COMPLETED
        (child,) = [i for i in hub.work.items() if i.source == "agent:a1"]
        assert (child.priority, child.time_limit) == (7, 30.0)
        assert child.not_before is not None and child.not_before > time.time() + 500
        assert (child.status, hub.work.delayed("w")) == (ItemStatus.QUEUED, 1)

        bad = hub.work.submit("w", {"submit": "w", "n": 2, "submit_opts": {"priority": "high"}})
        assert (await finished(hub, bad, events)).status is ItemStatus.COMPLETED
        assert [child.id] == [i.id for i in hub.work.items() if i.source == "agent:a1"]
        assert hub.work.refused >= 1
