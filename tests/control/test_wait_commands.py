"""``hubvisor work wait`` and ``hubvisor submit --wait``: output and exit statuses, and the
``work_wait`` op on the socket (a client going away, the idle timeout, the hub stopping).

Real agents (tests/raw_agent.py, steered by the payloads) do the work of an in-process hub
serving its control socket; the commands run with click's runner in a thread.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import trio

from supervisor import WorkService
from supervisor.control.ops import WAIT_TIMED_OUT, ControlLimits
from supervisor.control.server import serve_control
from tests.control.test_commands import cli, served, tree
from tests.helpers import TIMEOUT, is_, running, until, wait_event


async def test_work_wait_prints_each_item_as_it_ends_and_exits_by_the_worst(
    tmp_path: Path,
) -> None:
    """0 when all completed (results on stdout); 1 when one failed or is dead (the error
    on stderr); WAIT_TIMED_OUT when the timeout ran out (the item goes on); an unknown id
    is an error before anything is waited for."""
    async with served(tree(), tmp_path) as (hub, events, path):
        ok = [hub.work.submit("w", {"n": n}) for n in (1, 2)]
        bad = hub.work.submit("w", {"fail": "disk full"})
        with trio.fail_after(TIMEOUT):
            good = await cli(path, "work", "wait", ok[0].id, ok[1].id, ok[0].id)
            mixed = await cli(path, "work", "wait", ok[0].id, bad.id)
            as_json = await cli(path, "work", "wait", bad.id, "--json")
            held = hub.work.submit("w", {"hold": True})
            waited = await cli(path, "work", "wait", held.id, ok[0].id, "--timeout", "0.2")
            unknown = await cli(path, "work", "wait", ok[0].id, "w-404")
            ctl = await cli(path, "ctl", "work_wait", ok[1].id, "--json")
        assert 0 == hub.work.waiters

    assert 0 == good.exit_code, good.output
    lines = good.stdout.splitlines()
    assert 2 == len(lines)  # an id named twice is waited for once
    assert {f"{ok[0].id}: completed", f"{ok[1].id}: completed"} == {
        line.split(": {")[0] for line in lines
    }
    assert '"double": 2' in good.stdout

    assert 1 == mixed.exit_code
    assert f"{bad.id}: failed: disk full" in mixed.stderr
    assert f"{ok[0].id}: completed" in mixed.stdout

    assert 1 == as_json.exit_code
    item = json.loads(as_json.stdout)
    assert (bad.id, "failed", True, "disk full") == (
        item["id"],
        item["status"],
        item["final"],
        item["error"],
    )

    assert WAIT_TIMED_OUT == waited.exit_code, waited.output
    assert f"{ok[0].id}: completed" in waited.stdout
    assert f"{held.id}: still assigned when the wait ended after 0.2s; it goes on" in waited.stderr

    assert 1 == unknown.exit_code
    assert "no work item 'w-404'" in unknown.stderr
    assert "" == unknown.stdout  # refused whole: nothing waited for, nothing printed

    assert 0 == ctl.exit_code and ok[1].id == json.loads(ctl.stdout)["id"]


async def test_submit_wait_prints_the_result_or_the_error(tmp_path: Path) -> None:
    async with served(tree(), tmp_path) as (hub, events, path):
        with trio.fail_after(TIMEOUT):
            done = await cli(path, "submit", "w", '{"n": 21}', "--wait")
            failed = await cli(path, "submit", "w", '{"fail": "bad input"}', "--wait")
            as_json = await cli(path, "submit", "w", '{"n": 1}', "--wait", "--json")
            slow = await cli(path, "submit", "w", '{"hold": true}', "--wait", "--timeout", "0.2")
            lines = await cli(
                path, "submit", "w", "-", "--wait", stdin='{"n": 1}\n{"fail": "no"}\n'
            )

    assert 0 == done.exit_code, done.output
    assert 42 == json.loads(done.stdout)["double"]
    assert "" == done.stderr

    assert 1 == failed.exit_code
    assert "" == failed.stdout
    assert re.fullmatch(r"hubvisor: work item w-\d+ failed: bad input\n", failed.stderr)

    assert 0 == as_json.exit_code
    item = json.loads(as_json.stdout)
    assert ("completed", True, 2) == (item["status"], item["final"], item["result"]["double"])

    assert WAIT_TIMED_OUT == slow.exit_code
    assert re.fullmatch(
        r"hubvisor: work item w-\d+ is still assigned after 0.2s; it goes on "
        r"\(`hubvisor work wait w-\d+`\)\n",
        slow.stderr,
    )

    assert 1 == lines.exit_code  # one of the two failed
    assert re.fullmatch(r"w-\d+: completed: \{.*\}\n", lines.stdout)
    assert re.fullmatch(r"w-\d+: failed: no\n", lines.stderr)


def test_with_no_hub_work_wait_and_submit_wait_exit_3(tmp_path: Path) -> None:
    for args in (["work", "wait", "w-1"], ["submit", "w", "{}", "--wait"]):
        done = subprocess.run(
            [sys.executable, "-m", "supervisor", *args, "--socket", str(tmp_path / "no.sock")],
            capture_output=True,
            text=True,
        )
        assert 3 == done.returncode, done.stderr
        assert "no hub is running at" in done.stderr


async def test_a_client_closing_mid_wait_leaves_no_waiter_and_idle_does_not_cut_a_wait(
    tmp_path: Path,
) -> None:
    """The hub ends a wait whose client went away; a wait longer than the idle timeout
    (0.3 s here; the item takes 1 s) is not cut by it."""
    path = tmp_path / "hub.sock"
    limits = ControlLimits(idle_timeout=0.3)
    async with running(tree()) as (hub, events), trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve_control(hub, path, limits=limits, task_status=task_status)
        )
        held = hub.work.submit("w", {"hold": True})
        slow = hub.work.submit("w", {"n": 3, "sleep": 1.0})
        await wait_event(events, is_("work_assigned"))

        def ask(item_id: str, keep: bool) -> list[dict[str, object]]:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(path))
                sock.sendall(json.dumps({"op": "work_wait", "ids": [item_id]}).encode() + b"\n")
                if not keep:
                    return []
                with sock.makefile("rb") as reader:
                    return [json.loads(line) for line in reader]

        with trio.fail_after(TIMEOUT):
            await trio.to_thread.run_sync(ask, held.id, False)  # closes at once
            answers = await trio.to_thread.run_sync(ask, slow.id, True)
            await until(lambda: hub.work.waiters == 0)
        nursery.cancel_scope.cancel()
    assert [{"ok": True, "end": True}] == answers[1:]
    assert ("completed", 6) == (
        answers[0]["item"]["status"],
        answers[0]["item"]["result"]["double"],
    )


async def test_the_hub_stopping_ends_a_wait_with_an_error_saying_so(tmp_path: Path) -> None:
    async with served(tree(), tmp_path) as (hub, events, path):
        held = hub.work.submit("w", {"hold": True})
        await wait_event(events, is_("work_assigned"))
        outcome = []

        async def wait() -> None:
            outcome.append(await cli(path, "work", "wait", held.id))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await until(lambda: hub.work.waiters == 1)
            await hub.stop()
    assert 1 == outcome[0].exit_code
    assert (
        f"the hub stopped before work item {held.id!r} ended (it is queued); it is lost with "
        "the hub (kept in its memory only)"
    ) in outcome[0].stderr


async def test_a_work_wait_beyond_the_waiter_cap_is_refused_whole(tmp_path: Path) -> None:
    path = tmp_path / "hub.sock"
    work = WorkService(max_waiters=2)
    async with running(tree(), work=work) as (hub, _), trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, path)
        ids = [hub.work.submit("w", {"hold": True}).id for _ in range(3)]
        refused = await cli(path, "work", "wait", *ids)
        nursery.cancel_scope.cancel()
    assert 1 == refused.exit_code
    assert "0 waits for work items are under way and 3 more were asked for" in refused.stderr
    assert 0 == hub.work.waiters


async def test_a_hub_that_closes_the_connection_mid_wait_is_reported_as_stopped(
    tmp_path: Path,
) -> None:
    """When the hub's process goes (its control server cancelled before it could say why),
    the wait ends with an error saying the hub stopped, not a hang."""
    path = tmp_path / "fake.sock"
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    listener.listen(1)

    async def fake_hub() -> None:
        conn, _ = await listener.accept()
        with conn:
            await conn.recv(65536)  # the work_wait request: then it "stops"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake_hub)
        with trio.fail_after(TIMEOUT):
            done = await cli(path, "work", "wait", "w-1")
    listener.close()
    assert 1 == done.exit_code
    assert f"the hub at {path} closed the connection before the wait ended: it stopped" in (
        done.stderr
    )
