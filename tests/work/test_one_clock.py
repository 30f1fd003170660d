"""One clock for what users see (issue 22): an item's times are Unix time on every
backend (the memory queue stamped the hub's trio clock), and a reclaim event names the
agent's supervisor whether the agent exited or hung."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import SqliteWorkQueue, WorkReclaimed, WorkService
from supervisor.work.redis import RedisWorkQueue

from ..helpers import TIMEOUT, is_, running, wait_event
from ..redis_server import RedisServer, redis_server, redis_server_factory
from .test_service import agent, finished

__all__ = ["redis_server", "redis_server_factory"]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def work(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WorkService]:
    if request.param == "memory":
        yield WorkService()
    elif request.param == "sqlite":
        queue = SqliteWorkQueue(tmp_path / "state")
        yield WorkService(queue)
        queue.close()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        yield WorkService(RedisWorkQueue(server.url, lease=2))


async def test_item_times_are_unix_time_on_every_backend(work: WorkService) -> None:
    """created_at, started_at, finished_at and each attempt's time lie between the Unix
    times read before the submit and after the end, in the item and in its JSON."""
    async with running([agent("a1")], work=work) as (hub, events):
        await wait_event(events, is_("running", "a1"))
        before = time.time()
        item = await finished(hub, hub.work.submit("w", {"n": 1, "crash": True}), events)
        after = time.time()

    data = item.to_json()  # what `work show --json` prints
    stamps = [data["created_at"], data["started_at"], data["finished_at"]]
    stamps += [h["at"] for h in data["history"]]
    assert 5 == len(stamps)  # reclaimed (the crash), then completed
    assert all(before - 1 <= at <= after + 1 for at in stamps), (before, stamps, after)
    assert stamps == [item.created_at, item.started_at, item.finished_at] + [
        h.at for h in item.history
    ]


@pytest.mark.parametrize("payload", [{"crash": True}, {"hang": True}], ids=["exit", "hang"])
async def test_a_reclaim_event_names_the_supervisor_for_exits_and_hangs(
    payload: dict[str, Any],
) -> None:
    """The ``supervisor`` of a reclaim was empty for an agent that exited (set for a
    hang): both name the agent's supervisor now."""
    async with running([agent("a1")]) as (hub, events):
        await wait_event(events, is_("running", "a1"))
        hub.work.submit("w", {"n": 1, **payload})
        event = await wait_event(events, is_("work_reclaimed"), timeout=TIMEOUT)

    assert isinstance(event, WorkReclaimed)
    assert ("hub", "a1") == (event.supervisor, event.child_id)
    assert ("exit" if "crash" in payload else "hang") == event.reason


async def test_events_print_unix_time_in_time_and_at(tmp_path: Path) -> None:
    """``hubvisor events``: ``at`` is Unix time like ``time`` (it was the hub's clock)."""
    from tests.control.test_commands import agent as raw, cli, served, tree

    async with served(tree(raw("a1")), tmp_path) as (hub, events, path):
        await wait_event(events, is_("running", "a1"))
        before = time.time()
        item = hub.work.submit("w", {"n": 1})
        await finished(hub, item, events)
        printed = await cli(path, "events", "--kind", "work_completed")
        after = time.time()

    (done,) = [json.loads(line) for line in printed.stdout.splitlines()]
    assert done["at"] == done["time"] and before - 1 <= done["at"] <= after + 1
