"""``hubvisor top`` as a person uses it: a real hub, top in a terminal (tmux), the screen read."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from supervisor._proc import GroupUsage
from supervisor._top import _CPU, Snapshot, _bytes, _Keys, _socket, poll, render, top
from supervisor.control.client import request

from .. import raw_agent

PY = sys.executable
TIMEOUT = 30.0

# tests/raw_agent.py: each takes an item and holds it payload["sleep"] seconds.
SPEC = r"""
from supervisor import ChildSpec, PoolSpec, SupervisorSpec

spec = SupervisorSpec(
    name="tophub",
    children=[
        PoolSpec(
            agent_type="w",
            template=ChildSpec(
                id="w", argv=raw_agent.argv(), shutdown=1.0, ready="notify"
            ),
            size=2,
        )
    ],
)
"""
SPEC = SPEC.replace("raw_agent.argv()", repr(raw_agent.argv()))


def wait_for(what: str, check: Callable[[], object], timeout: float = TIMEOUT) -> object:
    """Poll ``check`` (real time: another process's state has no event here) until it
    returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Path]:
    """A real hub (`hubvisor run` in a subprocess) with two agents; its socket path."""
    spec = tmp_path / "tree.py"
    spec.write_text(SPEC)
    sock = tmp_path / "hub.sock"
    log = (tmp_path / "hub.log").open("w")
    proc = subprocess.Popen(
        [PY, "-m", "supervisor", "run", str(spec), "--socket", str(sock)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def agents_idle() -> bool:
            if not sock.exists():
                return False
            agents = request(sock, {"op": "status"})["agents"]
            return [a["status"] for a in agents] == ["idle", "idle"]

        wait_for("two idle agents", agents_idle)
        yield sock
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hub that hangs on stop
            proc.kill()
            proc.wait()
        log.close()


class Tmux:
    """A private tmux server (its socket in the test's directory, so nothing is left in
    /tmp/tmux-UID) with one detached session."""

    def __init__(self, where: Path) -> None:
        self.socket = where / "tmux.sock"

    def run(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        ).stdout

    def start(self, command: str) -> None:
        self.run("new-session", "-d", "-s", "top", "-x", "160", "-y", "50", command)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top")

    def wait_screen(self, what: str, ready: Callable[[str], bool]) -> str:
        """Capture the screen until ``ready`` holds for it; fail showing the last one."""
        deadline = time.monotonic() + TIMEOUT
        while not ready(screen := self.screen()):
            if time.monotonic() > deadline:
                raise AssertionError(f"never saw {what} on the screen; it shows:\n{screen}")
            time.sleep(0.1)
        return screen

    def kill(self) -> None:
        self.run("kill-server")


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed: `hubvisor top` is tested in a tmux terminal")
    t = Tmux(tmp_path)
    try:
        yield t
    finally:
        t.kill()


def top_command(sock: Path, rc: Path) -> str:
    """A shell command running top on ``sock``, then writing its exit status to ``rc``."""
    top = [PY, "-c", "from supervisor._top import top; top()", "--socket", str(sock)]
    top += ["--interval", "0.2"]
    # The terminal's own size, not one a test runner may have put in the environment.
    top = ["env", "-u", "COLUMNS", "-u", "LINES", *top]
    return f"cd {shlex.quote(os.getcwd())}; {shlex.join(top)}; echo $? > {shlex.quote(str(rc))}"


class TestTop:
    def test_top_shows_the_agents_and_the_queue_live_and_quits_on_q(
        self, hub: Path, tmux: Tmux, tmp_path: Path
    ) -> None:
        """Five items for two agents that hold them: the screen shows both agents busy
        with an item, the queue line `w  3 waiting  0 later  2 in flight  2 agents  0 idle`, and
        CPU and memory read from /proc; q ends top with status 0."""
        rc = tmp_path / "rc"
        tmux.start(top_command(hub, rc))
        for _ in range(5):
            request(hub, {"op": "submit", "type": "w", "payload": {"sleep": 60}})
        queue = re.compile(r"^\s*w\s+3\s+0\s+2\s+2\s+0\s*$", re.M)
        busy = re.compile(
            r"^\s+(w-agent-[12])\s+w\s+\d+\s+busy\s+\d+%\s+[\d.]+M\s+0\s+[\d.]+s\s+w-\d",
            re.M,
        )
        screen = tmux.wait_screen(
            "the agents busy and the queue line",
            lambda s: bool(queue.search(s)) and len(busy.findall(s)) == 2,
        )
        assert "hubvisor top  hub: tophub (pid " in screen
        assert {"w-agent-1", "w-agent-2"} == {m for m in re.findall(r"w-agent-\d", screen)}
        assert "pool/" in screen  # the pool's supervisor heads its agents
        assert not rc.exists()  # still running

        tmux.run("send-keys", "-t", "top", "q")
        wait_for("top to exit after q", rc.exists)
        assert "0" == rc.read_text().strip()

    def test_top_says_when_the_hub_goes_away_and_ctrl_c_quits(
        self, hub: Path, tmux: Tmux, tmp_path: Path
    ) -> None:
        """The hub stops while top runs: top keeps the last frame and says no hub is
        running there; Ctrl-C ends it."""
        rc = tmp_path / "rc"
        tmux.start(top_command(hub, rc))
        tmux.wait_screen("the agents", lambda s: "w-agent-2" in s)
        request(hub, {"op": "stop"})
        wait_for("the hub's socket to go", lambda: not hub.exists())
        screen = tmux.wait_screen("top's notice", lambda s: "no hub is running at" in s)
        assert "retrying every 0.2s" in screen
        tmux.run("send-keys", "-t", "top", "C-c")
        wait_for("top to exit after Ctrl-C", rc.exists)
        assert "0" == rc.read_text().strip()

    def test_no_hub_exits_3_with_the_message(self, tmp_path: Path) -> None:
        """Like every command: no hub at the socket, exit status 3 and one line."""
        sock = tmp_path / "none.sock"
        done = subprocess.run(
            [PY, "-c", "from supervisor._top import top; top()", "--socket", str(sock)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert 3 == done.returncode
        assert f"no hub is running at {sock}" in done.stderr


class TestFrame:
    def test_the_tree_is_indented_and_cpu_and_memory_come_from_the_sample(self) -> None:
        """A nested supervisor's agents are indented under it; CPU and memory are shown
        for agents with a sample and '-' for the others."""
        from rich.console import Console

        rows = [
            {"supervisor": "hub", "id": "outer", "kind": "supervisor", "state": "running",
             "pid": None, "restarts": 0, "uptime": 1.0, "agent_type": None, "last_exit": None},
            {"supervisor": "hub/outer", "id": "inner-agent", "kind": "worker",
             "state": "running", "pid": 42, "restarts": 2, "uptime": 1.0, "agent_type": "w",
             "last_exit": "killed by SIGKILL"},
            {"supervisor": "hub", "id": "lonely", "kind": "worker", "state": "backing_off",
             "pid": None, "restarts": 1, "uptime": None, "agent_type": "w", "last_exit": None},
        ]  # fmt: skip
        status = {
            "hub": {"id": "hub", "pid": 1, "agents": 2, "work": {"queued": 4}},
            "agents": [
                {"id": "inner-agent", "type": "w", "status": "busy", "heartbeat_age": 0.5,
                 "assignment": "w-7", "last_exit": "killed by SIGKILL"},
                {"id": "lonely", "type": "w", "status": "backing_off", "heartbeat_age": None,
                 "assignment": None, "last_exit": None},
            ],
        }  # fmt: skip
        snap = Snapshot(rows, status, {"w": 4}, {"w": 1}, 0.0, later={"w": 1})
        console = Console(width=160, record=True, color_system=None)
        console.print(render(snap, {42: GroupUsage(1.0, 3 * 1024 * 1024, 2)}, {42: 12.4}))
        text = console.export_text()
        lines = {line.split()[0]: line for line in text.splitlines() if line.split()}
        assert re.search(
            r"^\s{3}inner-agent\s+w\s+42\s+busy\s+12%\s+3\.0M\s+2\s+0\.5s\s+w-7\s+killed by SIGKILL",
            lines["inner-agent"],
        )
        assert re.search(r"^\s{1}lonely\s+w\s+-\s+backing_off\s+-\s+-\s+1\s+-\s+-", lines["lonely"])
        # waiting 3 (ready), later 1 (delayed or waiting on others), in flight 1, 2 agents
        assert re.search(r"^\s*w\s+3\s+1\s+1\s+2\s+0\s*$", lines["w"])
        assert "work: 4 queued" in text
        json.dumps(status)  # the frame needs nothing the control socket cannot send

    def test_a_tree_taller_than_the_terminal_keeps_the_queues_and_counts_the_rest(
        self,
    ) -> None:
        """100 agents in a 30-line terminal: the frame fits in 30 lines, the queue line
        is there, and the last row says how many rows are left out."""
        from rich.console import Console

        rows = [
            {"supervisor": "hub", "id": f"w-agent-{n}", "kind": "worker", "state": "running",
             "pid": None, "restarts": 0, "uptime": 1.0, "agent_type": "w", "last_exit": None}
            for n in range(1, 101)
        ]  # fmt: skip
        status = {"hub": {"id": "hub", "pid": 1, "agents": 100, "work": {}}, "agents": []}
        snap = Snapshot(rows, status, {"w": 7}, {}, 0.0)
        console = Console(width=160, height=30, record=True, color_system=None)
        console.print(render(snap, {}, {}, height=30))
        lines = console.export_text().rstrip("\n").split("\n")
        assert len(lines) <= 30
        assert any(re.match(r"^\s*w\s+7\s+0\s+0\s+0\s+0\s*$", line) for line in lines)
        shown = sum(1 for line in lines if re.match(r"^\s*w-agent-\d+\s", line))
        assert f"… {100 - shown} more rows: enlarge the terminal" in lines[-2] + lines[-1]
        assert shown >= 15


# --------------------------------------------------------------------------------------
# Without a terminal: polling, keys, the command in-process


def _served_hub() -> Any:
    """An in-process hub (two sleepers in a pool of type w) serving its control socket
    from a thread of its own, for the blocking client top is."""
    import threading

    import trio

    from supervisor import PoolSpec, SupervisorSpec
    from supervisor.control.server import serve_control
    from tests.helpers import running, sleeper

    class Served:
        def __init__(self, path: Path) -> None:
            self.path = path
            self.ready = threading.Event()
            self.stop: Callable[[], None] = lambda: None
            self.thread = threading.Thread(target=trio.run, args=(self.main,))

        async def main(self) -> None:
            spec = SupervisorSpec(
                name="hub",
                children=[PoolSpec(agent_type="w", template=sleeper("w"), size=2)],
            )
            async with running(spec) as (hub, _), trio.open_nursery() as nursery:
                await nursery.start(serve_control, hub, self.path)
                hub.work.submit("w", {"n": 1})
                token = trio.lowlevel.current_trio_token()
                self.stop = lambda: token.run_sync_soon(nursery.cancel_scope.cancel)
                self.ready.set()

        def __enter__(self) -> Served:
            self.thread.start()
            assert self.ready.wait(TIMEOUT)
            return self

        def __exit__(self, *exc: object) -> None:
            self.stop()
            self.thread.join(TIMEOUT)

    return Served


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Path]:
    with _served_hub()(tmp_path / "hub.sock") as hub:
        yield hub.path


class TestPoll:
    def test_poll_reads_the_tree_the_agents_and_the_queues(self, served: Path) -> None:
        """One poll: every child, the status, and the queues by type from the status."""
        snap = poll(served)

        assert {"w-pool", "w-agent-1", "w-agent-2"} <= {r["id"] for r in snap.rows}
        assert "hub" == snap.status["hub"]["id"]
        assert {"w": 1} == dict(snap.queued) and {} == {k: v for k, v in snap.assigned.items() if v}

    def test_an_older_hub_without_queues_is_counted_from_its_items(self, tmp_path: Path) -> None:
        """A hub whose status has no queues: top counts its queued and assigned items."""
        import trio

        answers = {
            "list": [],
            "status": {"hub": {"id": "old"}, "agents": []},
        }
        items = {
            "queued": [{"type": "w"}, {"type": "w"}, {"type": "v"}],
            "assigned": [{"type": "v"}],
        }
        path = tmp_path / "old.sock"

        async def main() -> Snapshot:
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await sock.bind(str(path))
            sock.listen(8)

            async def answer(stream: trio.SocketStream) -> None:
                async with stream:
                    req = json.loads(await stream.receive_some(65536))
                    if req["op"] == "work_list":
                        result: Any = items[req["status"]]
                    else:
                        result = answers[req["op"]]
                    await stream.send_all(
                        json.dumps({"ok": True, "result": result}).encode() + b"\n"
                    )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, answer, [trio.SocketListener(sock)])
                snap = await trio.to_thread.run_sync(poll, path)
                nursery.cancel_scope.cancel()
            return snap

        snap = trio.run(main)

        assert {"w": 2, "v": 1} == dict(snap.queued)
        assert {"v": 1} == dict(snap.assigned)


class TestUsage:
    def test_cpu_is_the_share_of_one_core_between_two_samples(self) -> None:
        """The first sample has no rate; the next gives (cpu seconds used) / (seconds
        passed); a new incarnation whose counter went down has no rate."""
        cpu = _CPU()

        assert {} == cpu.update({7: GroupUsage(1.0, 0, 1)}, at=10.0)
        assert {7: pytest.approx(50.0)} == cpu.update({7: GroupUsage(2.0, 0, 1)}, at=12.0)
        assert {} == cpu.update({7: GroupUsage(0.5, 0, 1)}, at=13.0)
        assert {} == cpu.update({7: GroupUsage(0.6, 0, 1)}, at=13.0)  # no time passed

    @pytest.mark.parametrize(
        ("value", "text"),
        [(None, "-"), (512, "512B"), (2048, "2.0K"), (3 * 2**20, "3.0M"), (5 * 2**30, "5.0G")],
    )
    def test_memory_is_shown_in_binary_units(self, value: int | None, text: str) -> None:
        assert text == _bytes(value)


class TestKeys:
    def test_keys_from_a_pipe_and_its_end(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Piped stdin is read as it comes: a key, nothing within the timeout, then its
        end (after which top only waits)."""
        r, w = os.pipe()
        with os.fdopen(r) as stdin:
            monkeypatch.setattr(sys, "stdin", stdin)
            with _Keys() as keys:
                os.write(w, b"q")
                assert "q" == keys.wait(TIMEOUT)
                assert "" == keys.wait(0)
                os.close(w)
                assert "" == keys.wait(TIMEOUT)
                assert keys.fd is None
                assert "" == keys.wait(0)

    def test_a_terminal_is_put_in_cbreak_mode_and_restored(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On a terminal a key counts without Enter; the terminal's mode is restored."""
        import termios

        master, slave = os.openpty()
        try:
            before = termios.tcgetattr(slave)
            with os.fdopen(slave, closefd=False) as stdin:
                monkeypatch.setattr(sys, "stdin", stdin)
                with _Keys() as keys:
                    assert not termios.tcgetattr(slave)[3] & termios.ICANON
                    os.write(master, b"Q")
                    assert "Q" == keys.wait(TIMEOUT)
            assert before == termios.tcgetattr(slave)
        finally:
            os.close(master)
            os.close(slave)

    def test_no_stdin_at_all(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without a stdin to read, only Ctrl-C quits: waiting just waits."""
        monkeypatch.setattr(sys, "stdin", io.StringIO())
        with _Keys() as keys:
            assert keys.fd is None
            assert "" == keys.wait(0)


class TestCommand:
    def test_once_prints_one_frame(self, served: Path) -> None:
        """`top --once` prints one plain frame: the header, the queues and the agents."""
        result = CliRunner().invoke(top, ["--socket", str(served), "--once"])

        assert 0 == result.exit_code, result.output
        assert "hubvisor top  hub: hub (pid " in result.output
        assert re.search(r"^\s*w\s+1\s+0\s+0\s+2\s+0\s*$", result.output, re.M), result.output
        assert "w-agent-2" in result.output
        # Two samples: CPU is a number (one sample alone could only show "-").
        rows = [line for line in result.output.splitlines() if "w-agent-" in line]
        assert 2 == len(rows) and all(re.search(r" \d+% ", r) for r in rows), result.output

    def test_the_socket_comes_from_the_option_the_hub_id_or_the_environment(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        from supervisor.control.paths import default_socket_path

        monkeypatch.setenv("HUBVISOR_SOCKET", str(tmp_path / "env.sock"))
        assert tmp_path / "x.sock" == _socket(tmp_path / "x.sock", "other")
        assert default_socket_path("other") == _socket(None, "other")
        assert tmp_path / "env.sock" == _socket(None, None)

    def test_a_refusing_hub_is_exit_1_with_its_message(self, tmp_path: Path) -> None:
        """Something that answers garbage at the socket: one error line, exit 1."""
        path = tmp_path / "odd.sock"
        with socket.socket(socket.AF_UNIX) as odd:
            odd.bind(str(path))
            odd.listen(1)
            odd.settimeout(TIMEOUT)

            def garbage() -> None:
                conn, _ = odd.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(b"garbage\n")

            import threading

            answering = threading.Thread(target=garbage)
            answering.start()
            result = CliRunner().invoke(top, ["--socket", str(path), "--once"])
            answering.join(TIMEOUT)

        assert 1 == result.exit_code
        assert "not a hubvisor answer" in result.output

    def test_live_frames_until_q_saying_when_the_hub_is_gone(
        self, served: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The live view polls every interval; a poll that finds no hub keeps the last
        frame and says so; q quits with status 0."""
        import supervisor._top as top_module
        from supervisor.control.client import NoHubRunning

        r, w = os.pipe()
        polls = []
        real_poll = top_module.poll

        def poll_then_lose_the_hub(path: Path, timeout: float = 5.0) -> Snapshot:
            polls.append(path)
            if len(polls) == 1:
                return real_poll(path, timeout)
            os.write(w, b"q")  # the user quits after seeing this frame
            raise NoHubRunning(f"no hub is running at {path}")

        monkeypatch.setattr(top_module, "poll", poll_then_lose_the_hub)
        with os.fdopen(r) as stdin:
            monkeypatch.setattr(sys, "stdin", stdin)
            with pytest.raises(SystemExit) as done:
                top.main(["--socket", str(served), "--interval", "0.1"], prog_name="top")
        os.close(w)

        assert 0 == done.value.code
        assert 2 == len(polls)
        out = "".join(capsys.readouterr().out.split())  # the line may wrap anywhere
        assert "".join(f"no hub is running at {served} (retrying every 0.1s)".split()) in out

    def test_ctrl_c_ends_the_live_view(self, served: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        import supervisor._top as top_module

        def interrupted(path: Path, timeout: float = 5.0) -> Snapshot:
            raise KeyboardInterrupt

        real_poll = top_module.poll
        calls = []

        def poll_once(path: Path, timeout: float = 5.0) -> Snapshot:
            calls.append(path)
            return real_poll(path, timeout) if len(calls) == 1 else interrupted(path)

        monkeypatch.setattr(top_module, "poll", poll_once)
        monkeypatch.setattr(sys, "stdin", io.StringIO())
        with pytest.raises(SystemExit) as done:
            top.main(["--socket", str(served), "--interval", "0.1"], prog_name="top")

        assert 0 == done.value.code and 2 == len(calls)
