"""The command line of a running hub: status, submit, work, scale, restart, stop, logs, events.

Agents here are a small script that speaks the agent protocol on the raw socket (like
tests/work/test_service.py's), so what the commands show is real work done by real processes.
Most tests serve an in-process hub on a temporary socket and run the commands with
click's runner (or as real ``hubvisor`` processes where a follow must be interrupted);
one runs the whole thing as a ``hubvisor run`` daemon.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner, Result

from strategies import Intensity
from supervisor import ChildSpec, Event, Hub, PoolSpec, SupervisorSpec
from supervisor._cli import main
from supervisor.control.handlers import Stream
from supervisor.control.server import serve_control
from tests import raw_agent
from tests.control.test_cli import finish, start_hubvisor
from tests.helpers import PY, TIMEOUT, is_, running, until, wait_all, wait_event

AGENT = raw_agent.PROGRAM  # tests/raw_agent.py: steered by the payloads

AGENT_KEYS = {"id", "type", "pid", "status", "restarts", "assignment", "last_exit"}
ITEM_KEYS = {"id", "type", "status", "attempt", "agent", "result"}


def agent(cid: str, agent_type: str = "w") -> ChildSpec:
    return ChildSpec(
        id=cid,
        argv=[PY, "-c", AGENT],
        agent_type=agent_type,
        shutdown=2.0,
        heartbeat_timeout=10.0,
        start_period=0.2,
    )


def tree(*children: Any) -> SupervisorSpec:
    return SupervisorSpec(
        name="hub",
        children=list(children) or [PoolSpec(agent_type="w", template=agent("t"), size=2)],
        intensity=Intensity(20, 10),
    )


@asynccontextmanager
async def served(
    spec: SupervisorSpec, tmp_path: Path
) -> AsyncIterator[tuple[Hub, trio.MemoryReceiveChannel[Event], Path]]:
    """A hub serving its control socket at ``tmp_path/hub.sock``."""
    path = tmp_path / "hub.sock"
    async with running(spec) as (hub, events), trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, path)
        yield hub, events, path
        nursery.cancel_scope.cancel()


async def cli(path: Path, *args: str, stdin: str | None = None) -> Result:
    """``hubvisor ARGS --socket PATH``, run by click's runner in a thread."""
    return await trio.to_thread.run_sync(
        lambda: CliRunner().invoke(main, [*args, "--socket", str(path)], input=stdin)
    )


async def cli_json(path: Path, *args: str) -> Any:
    result = await cli(path, *args, "--json")
    assert 0 == result.exit_code, result.output
    return json.loads(result.stdout)


async def completed(path: Path, item_id: str) -> dict[str, Any]:
    """Poll ``work show ITEM --json`` until the item is completed, failed or dead."""
    with trio.fail_after(TIMEOUT):
        while True:
            item: dict[str, Any] = await cli_json(path, "work", "show", item_id)
            if item["status"] in ("completed", "failed", "dead"):
                return item
            await trio.sleep(0.05)


class Follower:
    """A real ``hubvisor logs -f`` or ``events -f`` process whose stdout a test reads."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.buf = b""

    async def line(self, pattern: str) -> str:
        """The next line that matches ``pattern`` (earlier ones are skipped)."""
        assert self.proc.stdout is not None
        with trio.fail_after(TIMEOUT):
            while True:
                while b"\n" in self.buf:
                    raw, self.buf = self.buf.split(b"\n", 1)
                    if re.search(pattern, raw.decode()):
                        return raw.decode()
                chunk = await self.proc.stdout.receive_some(65536)
                assert chunk, f"the follower ended before {pattern!r}"
                self.buf += chunk


@asynccontextmanager
async def follower(path: Path, *args: str) -> AsyncIterator[Follower]:
    proc = await trio.lowlevel.open_process(
        [PY, "-m", "supervisor", *args, "--socket", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        yield Follower(proc)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a follower's way out
        with trio.fail_after(TIMEOUT):
            code = await proc.wait()
        assert proc.stdout is not None
        await proc.stdout.aclose()
        assert 130 == code


# --------------------------------------------------------------------------------------
# status


async def test_status_table_and_json_schema(tmp_path: Path) -> None:
    """Every agent with its type, status, restarts, assignment and last exit; --json has
    the schema; piped output carries no colour codes."""
    crash = tmp_path / "crash"
    crash.touch()
    spec = tree(agent("a1"), agent("a2"))
    async with served(spec, tmp_path) as (hub, events, path):
        await wait_event(events, is_("running", "a2"))
        crashing = hub.work.submit("w", {"crash_if": str(crash)}, max_deliveries=1)
        await until(lambda: hub.work.get(crashing.id).status == "dead")
        crashed_id = hub.work.get(crashing.id).history[-1].agent
        # The crashed one is back: its new incarnation's running event and heartbeat (a1's
        # first running event may come after a2's, and the dead incarnation's events can
        # still be unread: only the new pid counts).
        rows = {r.info.id: r for r in hub.which_children()}
        await until(lambda: _restarted_pid(hub, crashed_id) is not None)
        new_pid = _restarted_pid(hub, crashed_id)
        await wait_event(events, is_("running", crashed_id, pid=new_pid))
        held = hub.work.submit("w", {"hold": True})
        await until(lambda: hub.work.get(held.id).status == "assigned")
        holder = hub.work.get(held.id).agent
        other = next(i for i in rows if i != crashed_id)
        await wait_all(events, is_("heartbeat", crashed_id, pid=new_pid), is_("heartbeat", other))

        status = await cli_json(path, "status")
        table = await cli(path, "status")

    assert 1 == status["schema_version"]
    assert {"id": "hub", "agents": 2} == {k: status["hub"][k] for k in ("id", "agents")}
    work = {"queued": 0, "assigned": 1, "completed": 0, "failed": 0, "dead": 1, "cancelled": 0}
    assert work == status["hub"]["work"]
    agents = {a["id"]: a for a in status["agents"]}
    assert {"a1", "a2"} == set(agents)
    assert all(
        AGENT_KEYS | {"uptime", "heartbeat_age", "supervisor"} <= set(a) for a in agents.values()
    )
    assert (held.id, "busy") == (agents[holder]["assignment"], agents[holder]["status"])
    crashed = next(a for a in agents.values() if a["restarts"] == 1)
    assert "exited with code 3" == crashed["last_exit"]
    assert all(a["type"] == "w" and a["pid"] > 0 for a in agents.values())
    assert all(0 <= a["heartbeat_age"] < 5 for a in agents.values())

    assert 0 == table.exit_code, table.output
    assert "\x1b" not in table.output
    header = next(line for line in table.output.splitlines() if " type " in line)
    assert header.split() == [
        "id", "type", "pid", "status", "uptime", "restarts", "heartbeat", "assignment", "last", "exit"
    ]  # fmt: skip
    assert re.search(rf"{holder} +w +\d+ +\w+ .* {held.id}( |$)", table.output, re.M)
    assert re.search(r"exited with code 3", table.output)
    assert table.output.startswith("hub: hub (pid ")


NO_HUB_COMMANDS = [
    ["status"],
    ["status", "--json"],
    ["submit", "w", "{}"],
    ["work", "list"],
    ["work", "show", "w-1"],
    ["work", "retry", "w-1"],
    ["scale", "w", "2"],
    ["restart", "a1"],
    ["stop"],
    ["logs", "a1"],
    ["logs", "a1", "-f"],
    ["events"],
    ["events", "-f"],
    ["ctl", "list"],
]


@pytest.mark.parametrize("args", NO_HUB_COMMANDS, ids=" ".join)
def test_no_hub_is_exit_3_with_the_message(tmp_path: Path, args: list[str]) -> None:
    path = tmp_path / "none.sock"
    if args[0] == "ctl":
        args = ["ctl", "--socket", str(path), *args[1:]]
    else:
        args = [*args, "--socket", str(path)]

    result = CliRunner().invoke(main, args)

    assert 3 == result.exit_code
    assert result.stderr.startswith(f"no hub is running at {path}; ")
    assert "" == result.stdout


def test_the_default_socket_follows_hub_id_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --socket: $HUBVISOR_SOCKET, else the default path of --hub-id (``hub``)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("HUBVISOR_SOCKET", raising=False)
    assert f"at {tmp_path}/hubvisor/hub.sock;" in CliRunner().invoke(main, ["status"]).stderr
    result = CliRunner().invoke(main, ["status", "--hub-id", "staging"])
    assert f"at {tmp_path}/hubvisor/staging.sock;" in result.stderr
    monkeypatch.setenv("HUBVISOR_SOCKET", str(tmp_path / "env.sock"))
    assert f"at {tmp_path}/env.sock;" in CliRunner().invoke(main, ["work", "list"]).stderr


# --------------------------------------------------------------------------------------
# work


async def test_a_daemon_runs_submitted_work_and_stops(tmp_path: Path) -> None:
    """End to end with `hubvisor run`: submit (argument and stdin), work show completed,
    work list --json, status --json, stop."""
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    spec = tmp_path / "tree.py"
    spec.write_text(
        "from supervisor import ChildSpec, PoolSpec\n"
        f"t = ChildSpec(id='t', argv=[{PY!r}, {str(script)!r}], shutdown=2.0, start_period=0.2)\n"
        "spec = [PoolSpec(agent_type='w', template=t, size=2)]\n"
    )
    path = tmp_path / "hub.sock"
    hv = await start_hubvisor("run", str(spec), "--socket", str(path))
    try:
        await hv.wait_line("hub started")
        submitted = await cli(path, "submit", "w", '{"n": 21}')
        assert 0 == submitted.exit_code, submitted.output
        first = submitted.stdout.strip()
        assert re.fullmatch(r"w-\d+", first)
        piped = await cli(path, "submit", "w", "-", "--max-deliveries", "2", stdin='{"n": 4}')
        second = piped.stdout.strip()

        done = await completed(path, first)
        assert ITEM_KEYS <= set(done)
        assert ("completed", 1) == (done["status"], done["attempt"])
        assert 42 == done["result"]["double"]
        assert re.fullmatch(r"w-agent-\d", done["result"]["by"])
        assert 8 == (await completed(path, second))["result"]["double"]
        assert 2 == (await cli_json(path, "work", "show", second))["max_deliveries"]

        listed = await cli_json(path, "work", "list")
        assert [first, second] == [i["id"] for i in listed]
        assert all(ITEM_KEYS <= set(i) and i["status"] == "completed" for i in listed)
        assert [] == await cli_json(path, "work", "list", "--status", "dead")
        shown = await cli(path, "work", "show", first)
        assert "status: completed" in shown.stdout and '"double": 42' in shown.stdout
        # The history names the hub whose agent made each attempt (the tree's name here).
        assert re.search(r"attempt 1 by w-agent-\d on \S+: completed", shown.stdout), shown.stdout

        status = await cli_json(path, "status")
        assert ["w-agent-1", "w-agent-2"] == [a["id"] for a in status["agents"]]
        assert all(a["assignment"] is None for a in status["agents"])
        # One agent may have done both items while the other, on a loaded machine, has
        # not said READY yet: wait for both to be idle rather than assume it.
        with trio.fail_after(TIMEOUT):
            while not all(a["status"] == "idle" for a in status["agents"]):
                await trio.sleep(0.05)
                status = await cli_json(path, "status")

        stopped = await cli(path, "stop")
        assert (0, "stopping\n") == (stopped.exit_code, stopped.stdout)
        code, _ = await finish(hv)
        assert 0 == code
    finally:
        if hv.proc.returncode is None:
            hv.proc.kill()
            await finish(hv)


async def test_retry_of_a_dead_item(tmp_path: Path) -> None:
    """A dead item is queued again by `work retry` and completes once its cause is gone."""
    crash = tmp_path / "crash"
    crash.touch()
    async with served(tree(agent("a1")), tmp_path) as (hub, events, path):
        item = hub.work.submit("w", {"n": 5, "crash_if": str(crash)}, max_deliveries=1)
        dead = await completed(path, item.id)
        assert ("dead", 1, 0) == (dead["status"], dead["attempt"], len(dead["result"] or []))
        assert ["reclaimed:exit"] == [h["outcome"] for h in dead["history"]]
        dead_listed = await cli_json(path, "work", "list", "--status", "dead")
        assert [item.id] == [i["id"] for i in dead_listed]

        crash.unlink()
        retried = await cli(path, "work", "retry", item.id)
        assert 0 == retried.exit_code, retried.output
        assert f"{item.id}: queued again" in retried.stdout
        done = await completed(path, item.id)
        assert ("completed", 2, 10) == (done["status"], done["attempt"], done["result"]["double"])

        again = await cli(path, "work", "retry", item.id)
        assert 1 == again.exit_code
        assert "is completed; only dead or failed items can be retried" in again.output


async def test_errors_name_the_value_and_how_to_list(tmp_path: Path) -> None:
    async with served(tree(), tmp_path) as (hub, events, path):
        bad = await cli(path, "submit", "w", "{n: 1}")
        assert 2 == bad.exit_code
        assert "'{n: 1}' is not JSON (Expecting property name" in bad.output
        assert """e.g. '{"n": 3}'""" in bad.output
        empty = await cli(path, "submit", "w", "-", stdin="")
        assert 2 == empty.exit_code and "stdin is empty" in empty.output
        typo = await cli(path, "submit", "wrk", "{}")
        assert 1 == typo.exit_code
        assert "no agents of type 'wrk' in the hub" in typo.output
        assert "the types are w" in typo.output
        assert [] == hub.work.items()

        for args, fragment in [
            (["work", "show", "w-99"], "no work item 'w-99'; `hubvisor work list` lists them"),
            (["work", "retry", "w-99"], "no work item 'w-99'"),
            (["restart", "ghost"], "no child 'ghost' in the hub; `hubvisor status` lists"),
            (["logs", "ghost"], "no child 'ghost' in the hub; `hubvisor status` lists"),
            (["logs", "ghost", "-f"], "no child 'ghost'"),
            (["scale", "nope", "1"], "no pool 'nope' in the hub; give a pool's agent type (w)"),
            (["events", "--kind", "nope"], "unknown event kind(s) ['nope']"),
        ]:
            result = await cli(path, *args)
            assert 1 == result.exit_code, args
            assert fragment in result.output, (args, result.output)
            assert "Traceback" not in result.output
        status = await cli(path, "work", "list", "--status", "lost")
        assert 2 == status.exit_code and "'lost' is not one of" in status.output


async def test_scale_and_restart(tmp_path: Path) -> None:
    async with served(tree(), tmp_path) as (hub, events, path):
        scaled = await cli(path, "scale", "w", "3")
        assert (0, "w: 3 members\n") == (scaled.exit_code, scaled.stdout)
        agents = (await cli_json(path, "status"))["agents"]
        assert ["w-agent-1", "w-agent-2", "w-agent-3"] == [a["id"] for a in agents]
        assert {"w"} == {a["type"] for a in agents}

        before = next(a["pid"] for a in agents if a["id"] == "w-agent-2")
        restarted = await cli(path, "restart", "w-agent-2")
        assert (0, "w-agent-2: restarted\n") == (restarted.exit_code, restarted.stdout)
        agents = (await cli_json(path, "status"))["agents"]
        assert before != next(a["pid"] for a in agents if a["id"] == "w-agent-2")

        assert 0 == (await cli(path, "scale", "w", "1")).exit_code
        assert ["w-agent-1"] == [a["id"] for a in (await cli_json(path, "status"))["agents"]]


# --------------------------------------------------------------------------------------
# logs and events

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"


async def test_logs_with_timestamps(tmp_path: Path) -> None:
    async with served(tree(agent("a1")), tmp_path) as (hub, events, path):
        item = hub.work.submit("w", {"n": 1})
        await completed(path, item.id)

        logs = await cli(path, "logs", "a1")
        last = await cli(path, "logs", "a1", "-n", "1")
        as_json = await cli(path, "logs", "a1", "--json")

    assert 0 == logs.exit_code, logs.output
    assert re.fullmatch(rf"{STAMP}  hello from a1 pid \d+\n{STAMP}  doing {item.id}\n", logs.stdout)
    assert re.fullmatch(rf"{STAMP}  doing {item.id}\n", last.stdout)
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert ["a1", "a1"] == [line["id"] for line in lines]
    assert f"doing {item.id}" == lines[1]["line"]
    assert lines[0]["at"] <= lines[1]["at"]


async def test_logs_follow_sees_the_agent_restarted_after_it_began(tmp_path: Path) -> None:
    """`logs -f` goes on across the agent's incarnations: the same id, a new process."""
    async with served(tree(agent("a1")), tmp_path) as (hub, events, path):
        await wait_event(events, is_("running", "a1"))
        (first,) = [r.info.pid for r in hub.which_children() if r.info.id == "a1"]
        async with follower(path, "logs", "a1", "-f") as follow:
            assert re.fullmatch(rf"{STAMP}  hello from a1 pid {first}", await follow.line("hello"))
            await hub.restart_child("a1")
            (second,) = [r.info.pid for r in hub.which_children() if r.info.id == "a1"]
            assert second != first
            assert re.fullmatch(
                rf"{STAMP}  hello from a1 pid {second}", await follow.line(f"pid {second}")
            )
            item = hub.work.submit("w", {"n": 2})
            await follow.line(f"doing {item.id}")  # work done after the restart, too


async def test_events_as_json_lines_and_follow_sees_work_events(tmp_path: Path) -> None:
    async with served(tree(agent("a1")), tmp_path) as (hub, events, path):
        await wait_event(events, is_("running", "a1"))
        kinds = ["--kind", "work_submitted", "--kind", "work_completed"]
        first = hub.work.submit("w", {"n": 1})
        async with follower(path, "events", "-f", *kinds) as follow:
            # Kept events come first (the first item), then new ones as they happen.
            await follow.line(rf'"work_completed".*"item_id": "{first.id}"')
            second = hub.work.submit("w", {"n": 2})
            submitted = json.loads(await follow.line(rf'"work_submitted".*"{second.id}"'))
            done = json.loads(await follow.line(rf'"work_completed".*"{second.id}"'))
        assert {"kind", "time", "at", "supervisor", "child_id", "item_id"} <= set(submitted)
        assert ("a1", 1) == (done["child_id"], done["attempt"])
        assert submitted["time"] <= done["time"]

        recent = await cli(path, "events", "-n", "3")
        assert 0 == recent.exit_code
        lines = [json.loads(line) for line in recent.stdout.splitlines()]
        assert 3 == len(lines)
        assert "heartbeat" not in {e["kind"] for e in lines}
        started = await cli(path, "events", "--kind", "running")
        assert {"a1"} == {json.loads(line)["child_id"] for line in started.stdout.splitlines()}


# --------------------------------------------------------------------------------------
# Streams stay bounded


def test_a_stream_drops_new_items_past_its_limit_and_says_where() -> None:
    out = Stream(limit=2)
    out.backlog("old-1")
    assert out.send("a")
    assert not out.send("b")  # two wait: the client is behind
    assert not out.send("c")
    out.backlog("old-2")  # kept lines are never dropped
    assert 2 == out.dropped
    assert [(0, "old-1"), (0, "a"), (2, "old-2")] == [
        out._receive.receive_nowait() for _ in range(3)
    ]
    assert out.send("d")


async def test_a_follower_that_does_not_read_costs_the_hub_a_bounded_buffer(
    tmp_path: Path,
) -> None:
    """An agent writes 6 MB while a `logs -f` client reads nothing: the hub drops lines
    past its limit, and the client learns how many and where."""
    async with served(tree(agent("a1")), tmp_path) as (hub, events, path):
        await wait_event(events, is_("running", "a1"))
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))
            sock.sendall(b'{"op": "tail", "id": "a1", "follow": true, "lines": 1}\n')
            answers = Answers(sock)
            (hello,) = await trio.to_thread.run_sync(answers.read, TIMEOUT, 1)
            assert hello["item"]["line"].startswith("hello from a1")

            spew = hub.work.submit("w", {"spew": 3000, "size": 2000})
            await until(lambda: hub.work.get(spew.id).status == "completed")
            await until(lambda: hub.logs("a1", 1) == ["spew done"])
            # Read what the hub kept for us until it has nothing more to send, then up to
            # the line of one more item.
            got = await trio.to_thread.run_sync(answers.read, 1.0, None)
            last = hub.work.submit("w", {"n": 1})
            with trio.fail_after(TIMEOUT):
                while not got or got[-1].get("item", {}).get("line") != f"doing {last.id}":
                    got += await trio.to_thread.run_sync(answers.read, TIMEOUT, 1)

    kinds = [next(k for k in a if k != "ok") for a in got]
    # Lost lines are counted where they were lost: each count comes right before the next
    # line that was kept.
    assert all(kinds[i + 1] == "item" for i, k in enumerate(kinds) if k == "dropped")
    items = kinds.count("item") - 1  # without the last item's line
    dropped = sum(a.get("dropped", 0) for a in got)
    # "doing", 3000 lines and "spew done" were written while the client read nothing.
    assert 3002 == items + dropped
    # The client read nothing while they were written: the hub kept what its stream holds
    # (1,000) plus what the socket buffers and its output tap had not handed on yet, and
    # dropped the rest. How much the tap still held when the client began reading depends
    # on scheduling, so only the accounting is exact.
    assert dropped > 0
    assert items >= 1000


class Answers:
    """Reads answer lines from a raw socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def read(self, timeout: float, count: int | None) -> list[dict[str, Any]]:
        """``count`` answers, or (``None``) every answer until ``timeout`` s of silence."""
        self.sock.settimeout(timeout)
        found: list[dict[str, Any]] = []
        while count is None or len(found) < count:
            while b"\n" in self.buf and (count is None or len(found) < count):
                line, self.buf = self.buf.split(b"\n", 1)
                found.append(json.loads(line))
            if count is not None and len(found) == count:
                break
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                if count is None:
                    break
                raise
            assert chunk, "the hub closed the stream"
            self.buf += chunk
        return found


def test_the_docs_show_every_command() -> None:
    """docs/control.md names each top-level command built from the table."""
    from supervisor.control.ops import OPS

    docs = (Path(__file__).resolve().parents[2] / "docs" / "control.md").read_text()
    for op in OPS.values():
        if op.cli is not None:
            assert f"hubvisor {op.cli}" in docs, op.cli


def test_status_colours_only_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a terminal the status is coloured (piped it is plain: checked above)."""
    from rich.console import Console

    from supervisor.control import printers

    def terminal(**kw: Any) -> Console:
        return Console(force_terminal=True, color_system="standard", **{"width": 200, **kw})

    monkeypatch.setattr(printers, "Console", terminal)
    row = {
        "id": "a1",
        "type": "w",
        "supervisor": "hub",
        "pid": 7,
        "status": "hung",
        "uptime": 3.0,
        "restarts": 1,
        "heartbeat_age": 12.5,
        "assignment": "w-1",
        "last_exit": "killed by SIGKILL",
    }
    hub = {"id": "hub", "pid": 1, "agents": 1, "work": {"queued": 0}}
    printers.PRINTERS["status"]({"schema_version": 1, "hub": hub, "agents": [row]}, {})

    out = capsys.readouterr().out
    assert "\x1b[" in out and "killed by SIGKILL" in out


async def test_sigterm_to_the_hub_hands_every_held_item_back_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """End to end with real BaseAgent workers busy on long items: SIGTERM to `hubvisor
    run` stops everything; each agent hands its item back within its shutdown time
    (nothing spent), the hub exits 0 and no process is left (the conftest checks)."""
    spec = tmp_path / "tree.py"
    spec.write_text(
        "import sys\n"
        "from supervisor import ChildSpec, PoolSpec\n"
        "t = ChildSpec(id='t', argv=[sys.executable, '-m', 'agents.worker'], shutdown=10.0,\n"
        "              heartbeat_timeout=3.0, env={'HUBVISOR_DEMO_WORK_SECONDS': '600'})\n"
        "spec = [PoolSpec(agent_type='worker', template=t, size=2)]\n"
    )
    path = tmp_path / "hub.sock"
    hv = await start_hubvisor("run", str(spec), "--socket", str(path))
    try:
        await hv.wait_line("hub started")
        payload = '{"task": "t", "piece": %d, "seed": 1, "lines": 10}'
        ids = [(await cli(path, "submit", "worker", payload % n)).stdout.strip() for n in (0, 1)]
        with trio.fail_after(TIMEOUT):
            for item_id in ids:
                while (await cli_json(path, "work", "show", item_id))["status"] != "assigned":
                    await trio.sleep(0.05)
        hv.proc.send_signal(signal.SIGTERM)
        code, text = await finish(hv)
    finally:
        if hv.proc.returncode is None:
            hv.proc.kill()
            await finish(hv)
    assert 0 == code, text
    for item_id in ids:
        assert re.search(
            rf"work {item_id} reclaimed from worker-agent-\d \(attempt 1\): its agent handed "
            "it back",
            text,
        ), text
    assert "crashed" not in text and "SIGKILL" not in text


async def test_submit_reads_json_lines_from_stdin_over_one_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`submit TYPE -` with 100 JSON lines queues 100 items over one connection and prints
    one id a line, in order; a line that is not JSON stops it before anything is sent,
    naming the line; a request the hub (or the client) refuses stops it there, the lines
    before it sent and said so."""
    from supervisor.control import client

    connects = []
    real_connect = client._connect

    def counting(path: Path, timeout: float) -> Any:
        connects.append(path)
        return real_connect(path, timeout)

    monkeypatch.setattr(client, "_connect", counting)
    async with served(tree(), tmp_path) as (hub, _, path):
        lines = "".join(json.dumps({"n": n}) + "\n" for n in range(100))
        result = await cli(path, "submit", "w", "-", "--max-deliveries", "2", stdin=lines)

        assert 0 == result.exit_code, result.output
        ids = result.stdout.split()
        assert 100 == len(ids) == len(set(ids))
        assert 1 == len(connects)
        items = {item.id: item for item in hub.work.items()}
        assert [{"n": n} for n in range(100)] == [items[i].payload for i in ids]
        assert {2} == {item.max_deliveries for item in items.values()}

        bad = await cli(path, "submit", "w", "-", stdin='{"n": 1}\n\n{"n": 2}\n{n: 3}\n')
        assert 2 == bad.exit_code
        assert "stdin line 4 is not JSON" in bad.output and "nothing was sent" in bad.output
        assert 100 == len(hub.work.items())

        huge = json.dumps({"blob": "x" * 70_000})
        cut = await cli(path, "submit", "w", "-", stdin=f'{{"n": 1}}\n{huge}\n{{"n": 3}}\n')
        assert 1 == cut.exit_code
        assert "stdin line 2: the request is" in cut.output
        assert "the 1 lines before it were sent" in cut.output
        assert 101 == len(hub.work.items())


def _restarted_pid(hub: Any, child_id: str) -> int | None:
    """The pid of ``child_id`` once it was restarted (None before)."""
    for row in hub.which_children():
        if row.info.id == child_id and row.info.restarts >= 1:
            pid: int | None = row.info.pid
            return pid
    return None
