"""``supervisor.Client`` and ``supervisor.AsyncClient`` against a real ``hubvisor run``
process whose pool of real agents (tests/raw_agent.py, steered by the payloads) does the
work; and, where the hub's own waiters must be seen, an in-process hub.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from supervisor import (
    AsyncClient,
    Client,
    ControlClientError,
    ItemFailed,
    NoHubRunning,
    NotStored,
    WaitTimeout,
)
from supervisor._client import _alive, submitted
from supervisor.control.client import HubRefused

from . import raw_agent
from .control.test_commands import served, tree
from .helpers import TIMEOUT, is_, until, wait_event
from .redis_hubs import wait_for

ROOT = Path(__file__).resolve().parent.parent
SPEC = f"""
from supervisor import ChildSpec, PoolSpec
from strategies import Intensity
spec = [
    PoolSpec(
        agent_type="TYPE",
        size=3,
        template=ChildSpec(id="TYPE", argv={raw_agent.argv()!r}, agent_type="TYPE", shutdown=2.0),
        intensity=Intensity(max_restarts=100, window=1.0),
    )
]
"""


class Hubvisor:
    """A real ``hubvisor run`` process serving its control socket at ``path``."""

    def __init__(self, tmp: Path, *args: str, agent_type: str = "w") -> None:
        spec = tmp / "spec.py"
        spec.write_text(SPEC.replace("TYPE", agent_type))
        self.path = tmp / "hub.sock"
        self.log = tmp / "hub.log"
        with self.log.open("ab") as log:
            argv = [
                sys.executable,
                "-m",
                "supervisor",
                "run",
                str(spec),
                "--socket",
                str(self.path),
            ]
            self.proc = subprocess.Popen(
                [*argv, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        wait_for(self.ready, TIMEOUT, "the hub to serve with its agents running")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the hub exited:\n{self.log.read_text()[-3000:]}")
        try:
            with Client(self.path, timeout=5) as hub:
                agents = hub.status()["agents"]
        except ControlClientError:
            return False
        return len(agents) == 3 and all(a["status"] == "idle" for a in agents)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck hub
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def hubvisor(tmp_path: Path) -> Iterator[Hubvisor]:
    hub = Hubvisor(tmp_path)
    yield hub
    hub.stop()


def test_a_batch_submitted_over_one_connection_is_waited_for_with_results(
    hubvisor: Hubvisor,
) -> None:
    """A scheduler's round: submit a batch (one connection for all), wait for all of
    them, read them back with show/list/status."""
    with Client(hubvisor.path) as hub:
        ids = [hub.submit("w", {"n": n}) for n in range(20)]
        conn = hub._conn
        assert conn is not None and all(i.startswith("w-") for i in ids)
        results = hub.wait_many(ids, timeout=TIMEOUT)
        assert list(results) == ids
        assert [2 * n for n in range(20)] == [r["double"] for r in results.values()]
        assert 0 == hub.wait(ids[3])["double"] - 6
        ended = [item["id"] for item in hub.as_completed(ids[:5])]  # ended already: at once
        assert set(ids[:5]) == set(ended)
        shown = hub.show(ids[0])
        assert ("completed", True, 1) == (shown["status"], shown["final"], shown["attempt"])
        assert set(ids) == {i["id"] for i in hub.list(status="completed")}
        status = hub.status()
        assert 20 == status["hub"]["work"]["completed"] and 3 == len(status["agents"])
        assert hub._conn is conn  # every request went over the one connection


def test_typed_errors_for_a_failed_item_a_timeout_and_an_unknown_id(hubvisor: Hubvisor) -> None:
    with Client(hubvisor.path) as hub:
        bad = hub.submit("w", {"fail": "disk full"}, max_deliveries=2)
        with pytest.raises(ItemFailed) as failed:
            hub.wait(bad, timeout=TIMEOUT)
        assert (bad, "failed", "disk full") == (
            failed.value.item_id,
            failed.value.status,
            failed.value.error,
        )
        assert ["failed"] == [h["outcome"] for h in failed.value.history]
        assert f"work item {bad!r} ended failed: disk full" in str(failed.value)

        held = hub.submit("w", {"hold": True})
        quick = hub.submit("w", {"n": 1})
        with pytest.raises(WaitTimeout) as late:
            hub.wait_many([quick, held], timeout=0.5)
        assert (held,) == late.value.item_ids
        assert late.value.items[0]["status"] in ("queued", "assigned")
        assert isinstance(late.value, TimeoutError)
        assert {"double": 2} == {"double": hub.wait(quick)["double"]}

        with pytest.raises(HubRefused, match="no work item 'w-404'"):
            hub.wait("w-404")
        with pytest.raises(HubRefused, match="no work item 'w-404'"):
            hub.show("w-404")
        with pytest.raises(HubRefused, match="has no field 'flavour'"):
            hub.submit("w", {"n": 1}, flavour=5)  # an option this hub does not know
        again = hub.retry(bad)
        assert again["status"] in ("queued", "assigned") and again["deliveries"] <= 1
    with (
        pytest.raises(NoHubRunning, match="no hub is running at"),
        Client(hubvisor.path.with_name("nobody.sock")) as nobody,
    ):
        nobody.status()


def test_not_stored_is_raised_only_when_asked_for() -> None:
    """``require_stored``: a submit the store did not make durable raises NotStored."""
    assert "w-1" == submitted({"id": "w-1", "stored": False}, require_stored=False)
    assert "w-1" == submitted({"id": "w-1", "stored": True}, require_stored=True)
    with pytest.raises(NotStored, match="do not submit it again"):
        submitted({"id": "w-1", "stored": False}, require_stored=True)


def test_a_connection_the_hub_closed_as_idle_is_opened_again(tmp_path: Path) -> None:
    """The kept connection outlives the hub's idle timeout (0.3 s here): the next request
    goes over a new one; one found open but answered 'idle' is sent again (nothing was
    done with it)."""
    hubvisor = Hubvisor(tmp_path, "--control-idle-timeout", "0.3")
    try:
        with Client(hubvisor.path) as hub:
            first = hub.submit("w", {"n": 1})
            conn = hub._conn
            assert conn is not None
            wait_for(lambda: not _alive(conn.sock), TIMEOUT, "the hub to close it as idle")
            second = hub.submit("w", {"n": 2})
            assert hub._conn is not conn
            stale = hub._conn
            assert stale is not None
            wait_for(lambda: not _alive(stale.sock), TIMEOUT, "the hub to close it as idle")
            import supervisor._client as client_module

            real = client_module._alive
            client_module._alive = lambda sock: True  # as if it closed it just after a check
            try:
                third = hub.submit("w", {"n": 3})
            finally:
                client_module._alive = real
            assert [2, 4, 6] == [
                r["double"] for r in hub.wait_many([first, second, third], TIMEOUT).values()
            ]
            assert 3 == len({i for i in (first, second, third)})  # none sent twice
            assert 3 == len(hub.list())
    finally:
        hubvisor.stop()


async def test_async_client_submits_waits_and_raises_the_same_errors(
    tmp_path: Path,
) -> None:
    hubvisor = await trio.to_thread.run_sync(Hubvisor, tmp_path)
    try:
        async with AsyncClient(hubvisor.path) as hub:
            ids = [await hub.submit("w", {"n": n}) for n in range(10)]
            bad = await hub.submit("w", {"fail": "nope"})
            with trio.fail_after(TIMEOUT):
                results = await hub.wait_many(ids)
                seen = []
                async with hub.as_completed([*ids, bad]) as items:
                    async for item in items:
                        seen.append(item["id"])
                with pytest.raises(ItemFailed, match="ended failed: nope"):
                    await hub.wait(bad)
            assert [2 * n for n in range(10)] == [r["double"] for r in results.values()]
            assert set(seen) == {*ids, bad}
            held = await hub.submit("w", {"hold": True})
            with pytest.raises(WaitTimeout):
                await hub.wait(held, timeout=0.2)
            with pytest.raises(HubRefused, match="no work item 'w-404'"):
                await hub.show("w-404")
            assert "completed" == (await hub.show(ids[0]))["status"]
            assert 11 <= len(await hub.list())
            assert 3 == len((await hub.status())["agents"])
            # Tasks sharing the client take turns on its one connection.
            async with trio.open_nursery() as nursery:
                for n in range(5):
                    nursery.start_soon(hub.submit, "w", {"n": n})
        with pytest.raises(NoHubRunning):
            await AsyncClient(tmp_path / "nobody.sock").status()
    finally:
        await trio.to_thread.run_sync(hubvisor.stop)


async def test_a_cancelled_async_wait_leaves_no_waiter_in_the_hub(tmp_path: Path) -> None:
    async with served(tree(), tmp_path) as (hub, events, path):
        client = AsyncClient(path)
        held = await client.submit("w", {"hold": True})
        await wait_event(events, is_("work_assigned"))
        with trio.move_on_after(0.3):
            await client.wait(held)
        await until(lambda: hub.work.waiters == 0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.wait, held)
            await until(lambda: hub.work.waiters == 1)
            nursery.cancel_scope.cancel()
        await until(lambda: hub.work.waiters == 0)
        await client.aclose()


def test_the_sync_client_imports_no_trio() -> None:
    """A program that only submits and waits pays for no trio, hub or work queues."""
    code = (
        "import sys, supervisor\n"
        "supervisor.Client, supervisor.ItemFailed, supervisor.NoHubRunning\n"
        "heavy = {'trio', 'attrs', 'rich', 'supervisor._hub', 'supervisor.work'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "[]" == out.stdout.strip()


def test_the_docs_scheduler_example_runs_and_retries_no_task_twice(tmp_path: Path) -> None:
    """docs/examples/scheduler.py (shown whole in docs/client.md) against a real hub: ten
    tasks completed, the failing one retried once under its id and reported; no task
    submitted twice."""
    example = ROOT / "docs" / "examples" / "scheduler.py"
    assert example.read_text() in (ROOT / "docs" / "client.md").read_text()
    hubvisor = Hubvisor(tmp_path, agent_type="worker")
    try:
        env = {**os.environ, "HUBVISOR_SOCKET": str(hubvisor.path), "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, str(example)], env=env, capture_output=True, text=True, timeout=120
        )
        with Client(hubvisor.path) as hub:
            items = hub.list()
    finally:
        hubvisor.stop()
    assert 1 == done.returncode, done.stderr
    failed = next(i for i in items if i["status"] == "failed")
    assert (
        f"10 completed, 1 failed after one retry each\n  {failed['id']}: bad input\n" == done.stdout
    )
    assert 11 == len(items)  # each task submitted once
    assert ["failed", "failed"] == [h["outcome"] for h in failed["history"]]  # retried once
    assert all(i["attempt"] == 1 for i in items if i["status"] == "completed")


# -- cancel and time limits (issue 21) --


def test_cancel_and_time_limit_through_the_client_and_the_cli(hubvisor: Hubvisor) -> None:
    """``Client.cancel`` ends a held item cancelled (its v1 agent is stopped; the wait
    raises ItemFailed); ``submit(..., time_limit=)`` ends each attempt timed_out and the
    item dead when no delivery is left; ``hubvisor work cancel`` refuses an ended item
    (exit 1) and ``--time-limit`` is a submit option of the CLI."""
    with Client(hubvisor.path) as hub:
        held = hub.submit("w", {"hold": True})
        until_sync(lambda: hub.show(held)["status"] == "assigned")
        cancelled = hub.cancel(held, reason="not needed")
        assert ("cancelled", True) == (cancelled["status"], cancelled["final"])
        with pytest.raises(ItemFailed) as failed:
            hub.wait(held, timeout=TIMEOUT)
        assert ("cancelled", "cancelled: not needed") == (
            failed.value.status,
            failed.value.error,
        )
        slow = hub.submit("w", {"sleep": 60}, time_limit=0.3, max_deliveries=1)
        with pytest.raises(ItemFailed) as dead:
            hub.wait(slow, timeout=TIMEOUT)
        assert "dead" == dead.value.status
        assert ["timed_out"] == [h["outcome"] for h in dead.value.history]
        assert 0.3 == hub.show(slow)["time_limit"]
    cli = [sys.executable, "-m", "supervisor"]
    sock = ["--socket", str(hubvisor.path)]
    again = subprocess.run(
        [*cli, "work", "cancel", held, *sock], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert 1 == again.returncode
    assert "has ended (cancelled)" in again.stderr
    out = subprocess.run(
        [*cli, "submit", "w", '{"hold": true}', "--time-limit", "600", *sock],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert 0 == out.returncode, out.stderr
    item_id = out.stdout.strip()
    done = subprocess.run(
        [*cli, "work", "cancel", item_id, *sock], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert (0, f"{item_id}: cancelled") == (done.returncode, done.stdout.strip())


def until_sync(predicate: Any) -> None:
    wait_for(predicate, TIMEOUT, "the condition")
