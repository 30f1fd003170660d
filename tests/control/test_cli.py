"""The hubvisor command: run, demo, check, signals, and children dying with the hub."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from supervisor import SupervisorSpec
from supervisor._cli import load_spec, main
from tests.helpers import TIMEOUT, alive, until

SPEC = """
from supervisor import ChildSpec, SupervisorSpec
from strategies import Intensity

spec = SupervisorSpec(
    name="hub",
    intensity=Intensity(1, 60),
    children=[
        ChildSpec(id=f"s{{i}}", argv={argv!r}, shutdown={shutdown!r}, start_period=0.1)
        for i in range(3)
    ],
)
"""


def write_spec(tmp_path: Path, argv: list[str], shutdown: float = 2.0) -> Path:
    path = tmp_path / "tree.py"
    path.write_text(SPEC.format(argv=argv, shutdown=shutdown))
    return path


class Hubvisor:
    """A ``hubvisor`` process whose log lines a test can wait for."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._buf = b""

    async def wait_line(self, pattern: str) -> re.Match[str]:
        with trio.fail_after(TIMEOUT):
            while True:
                for line in self.lines:
                    if m := re.search(pattern, line):
                        self.lines.remove(line)
                        return m
                assert self.proc.stderr is not None
                chunk = await self.proc.stderr.receive_some(65536)
                if not chunk:
                    raise AssertionError(f"hubvisor ended before {pattern!r}")
                self._buf += chunk
                *done, self._buf = self._buf.split(b"\n")
                self.lines.extend(d.decode() for d in done)

    async def rest(self) -> str:
        assert self.proc.stderr is not None
        chunks = [self._buf]
        while chunk := await self.proc.stderr.receive_some(65536):
            chunks.append(chunk)
        return "\n".join(self.lines) + b"".join(chunks).decode()


async def start_hubvisor(*args: str) -> Hubvisor:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "supervisor", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return Hubvisor(proc)


async def child_pids(hv: Hubvisor, n: int) -> list[int]:
    pids = []
    for _ in range(n):
        m = await hv.wait_line(r"starting \(pid (\d+)")
        pids.append(int(m.group(1)))
    await hv.wait_line(r"hub started")
    return pids


async def finish(hv: Hubvisor) -> tuple[int, str]:
    with trio.fail_after(TIMEOUT):
        text = await hv.rest()
        code = await hv.proc.wait()
    assert hv.proc.stderr is not None
    await hv.proc.stderr.aclose()
    return code, text


class TestSignals:
    async def test_sigkill_of_the_hub_kills_its_children(self, tmp_path: Path) -> None:
        """Children die with the hub even when it is SIGKILLed (parent-death signal)."""
        hv = await start_hubvisor("run", str(write_spec(tmp_path, ["sleep", "1000"])))
        pids = await child_pids(hv, 3)
        assert all(alive(p) for p in pids)

        hv.proc.send_signal(signal.SIGKILL)
        code, _ = await finish(hv)

        assert -signal.SIGKILL == code
        await until(lambda: not any(alive(p) for p in pids))

    async def test_sigint_stops_the_tree_in_order(self, tmp_path: Path) -> None:
        """Ctrl-C stops every child in reverse order and exits 0."""
        hv = await start_hubvisor("run", str(write_spec(tmp_path, ["sleep", "1000"])))
        pids = await child_pids(hv, 3)

        hv.proc.send_signal(signal.SIGINT)
        code, text = await finish(hv)
        stopped = re.findall(r"hub/(s\d) stopped \(shutdown\)", text)

        assert 0 == code
        assert ["s2", "s1", "s0"] == stopped
        assert not any(alive(p) for p in pids)

    async def test_sigterm_stops_too(self, tmp_path: Path) -> None:
        """SIGTERM to the hub is a graceful stop as well."""
        hv = await start_hubvisor("run", str(write_spec(tmp_path, ["sleep", "1000"])))
        pids = await child_pids(hv, 3)

        hv.proc.send_signal(signal.SIGTERM)
        code, text = await finish(hv)

        assert 0 == code and "SIGTERM received" in text
        assert not any(alive(p) for p in pids)

    async def test_second_sigint_kills_at_once(self, tmp_path: Path) -> None:
        """A second Ctrl-C SIGKILLs children that are slow to stop, and exits 130."""
        stubborn = ["sh", "-c", "trap '' TERM INT; exec sleep 1000"]
        hv = await start_hubvisor("run", str(write_spec(tmp_path, stubborn, shutdown=600)))
        pids = await child_pids(hv, 3)

        hv.proc.send_signal(signal.SIGINT)
        await hv.wait_line("stopping the tree")
        hv.proc.send_signal(signal.SIGINT)
        code, text = await finish(hv)

        assert 130 == code and "killing every child" in text
        assert not any(alive(p) for p in pids)

    async def test_escalation_at_the_root_exits_nonzero(self, tmp_path: Path) -> None:
        """When the root gives up, the hub exits 1 saying which child exhausted which limit."""
        path = write_spec(tmp_path, [sys.executable, "-c", "raise SystemExit(4)"])
        hv = await start_hubvisor("run", str(path))
        code, text = await finish(hv)

        assert 1 == code
        assert re.search(r"supervisor 'hub' gave up: child 's\d' \(exited with code 4\)", text)
        assert "1 restarts in 60s" in text


def _demo_missing(text: str) -> list[str]:
    """What the demo has not shown yet in ``text`` (its log so far)."""
    missing = []
    for kind in ("worker", "qc", "planning", "review"):
        if f"{kind}-agent-1 starting" not in text:
            missing.append(f"{kind}-agent-1 starting")
        if not re.search(rf"work {kind}-\d+ completed by", text):
            missing.append(f"a {kind} item completed")
    crashed = re.findall(r"work (worker-\d+) reclaimed from worker-crashy \(attempt 1\)", text)
    if not any(re.search(rf"work {i} completed by \S+ \(attempt [2-9]\)", text) for i in crashed):
        missing.append("an item reclaimed from worker-crashy completed elsewhere")
    for line in ("worker-crashy crashed: exited with code 1", "worker-hangy HUNG", "restarting"):
        if line not in text:
            missing.append(line)
    if not re.search(r"reclaimed from worker-hangy \(attempt 1\): its agent hung", text):
        missing.append("an item reclaimed from worker-hangy")
    return missing


class TestDemo:
    async def test_demo_runs_crashes_restarts_and_stops(self) -> None:
        """The demo shows every agent type doing work through the whole pipeline, a crash
        whose item is reclaimed and finished elsewhere, a hang detected and killed, and a
        clean stop (SIGTERM once all of it was seen: event-driven, not a fixed duration
        that a loaded machine may not fill)."""
        hv = await start_hubvisor(
            "demo",
            "--duration",
            "300",
            "--every",
            "0.5",
            "--crash-rate",
            "1",
            "--hang-rate",
            "1",
            "--log-level",
            "debug",  # a line per completed item, not only the summaries
        )
        assert hv.proc.stderr is not None
        seen = b""
        with trio.move_on_after(TIMEOUT * 4):
            while _demo_missing(seen.decode(errors="replace")):
                chunk = await hv.proc.stderr.receive_some(65536)
                if not chunk:
                    break
                seen += chunk
        hv.proc.send_signal(signal.SIGTERM)
        hv._buf = seen
        code, text = await finish(hv)

        assert 0 == code, text
        assert not _demo_missing(text), (_demo_missing(text), text)
        # The last line, but for the warning naming the queued items lost with the hub.
        # and the summaries of the work done and of the stop.
        tail = [
            line
            for line in text.rstrip().splitlines()
            if "lost with the hub" not in line
            and " INFO    work: " not in line
            and " INFO    hub stop: " not in line
        ]
        assert tail[-1].endswith("hub stopped"), text[-2000:]


class TestCommands:
    def test_check_ok_and_bad(self, tmp_path: Path) -> None:
        """check validates without starting anything and names problems."""
        good = write_spec(tmp_path, ["sleep", "1"])
        result = CliRunner().invoke(main, ["check", str(good)])
        assert 0 == result.exit_code and "OK" in result.output

        bad = tmp_path / "bad.py"
        bad.write_text(
            "from supervisor import ChildSpec\n"
            "def spec():\n    return [ChildSpec(id='a', argv='sleep 1')]\n"
        )
        result = CliRunner().invoke(main, ["check", str(bad)])
        assert 1 == result.exit_code and "never a shell string" in result.output

    def test_load_spec_forms(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Specs load from files and modules, by default name or explicit attribute."""
        path = write_spec(tmp_path, ["sleep", "1"])
        assert isinstance(load_spec(str(path)), SupervisorSpec)
        assert isinstance(load_spec(f"{path}:spec"), SupervisorSpec)
        monkeypatch.syspath_prepend(str(tmp_path))
        assert isinstance(load_spec("tree:spec"), SupervisorSpec)
        assert isinstance(load_spec("supervisor._demo:demo_spec"), SupervisorSpec)

    @pytest.mark.parametrize(
        ("target", "fragment"),
        [
            ("missing.py", "no such file"),
            ("no_such_module_xyz", "cannot import"),
            ("supervisor._demo:nothing", "has no attribute nothing"),
            ("supervisor._demo:__name__", "must be a SupervisorSpec"),
        ],
    )
    def test_run_bad_targets(self, target: str, fragment: str) -> None:
        """A spec that cannot be loaded is a usage error naming it."""
        result = CliRunner().invoke(main, ["run", target])

        assert 2 == result.exit_code
        assert fragment in result.output

    def test_run_refuses_too_many_agents(self, tmp_path: Path) -> None:
        """--max-agents is checked before anything starts."""
        path = write_spec(tmp_path, ["sleep", "1"])
        result = CliRunner().invoke(main, ["run", str(path), "--max-agents", "2"])

        assert 1 == result.exit_code and "max_agents=2" in result.output


def test_children_env(tmp_path: Path) -> None:
    """Children learn their id, type, supervisor and hub from the environment."""
    out = tmp_path / "env.txt"
    code = (
        "import os, pathlib; pathlib.Path(os.environ['OUT']).write_text("
        "' '.join(os.environ.get(k, '-') for k in ('HUBVISOR_AGENT_ID', 'HUBVISOR_AGENT_TYPE', "
        "'HUBVISOR_SUPERVISOR', 'HUBVISOR_HUB_ID')))"
    )
    spec_file = tmp_path / "envtree.py"
    spec_file.write_text(
        "import sys\n"
        "from supervisor import ChildSpec, PoolSpec\n"
        f"spec = [PoolSpec(agent_type='qc', template=ChildSpec(id='t', argv=[sys.executable, '-c', {code!r}], "
        f"env={{'OUT': {str(out)!r}}}, restart='transient'), size=1)]\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", "run", str(spec_file), "--duration", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert 0 == result.returncode, result.stderr
    assert "qc-agent-1 qc hub/qc-pool hub" == out.read_text()


async def test_run_in_process_logs_lifecycle_and_output(caplog: pytest.LogCaptureFixture) -> None:
    """The CLI's runner logs lifecycle lines and, with --output, child output lines."""
    import logging

    from supervisor import ChildSpec, Hub
    from supervisor._daemon import _run

    spec = SupervisorSpec(
        name="hub",
        children=[
            ChildSpec(
                id="talk", argv=[sys.executable, "-c", "print('hello')"], restart="transient"
            ),
            ChildSpec(id="fail", argv=["no-such-program-xyz"], restart="temporary"),
        ],
    )
    caplog.set_level(logging.INFO, logger="hubvisor")
    code = await _run(Hub(spec), duration=1.0, output=True)
    text = caplog.text

    assert 0 == code
    assert "hub/talk | hello" in text
    assert "hub/fail failed to start: child 'fail': executable 'no-such-program-xyz'" in text
    assert "hub/talk exited: exited with code 0" in text
    assert "--duration 1s reached" in text


def test_placeholder_agent_crashes_at_its_rate(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo's placeholder agent crashes with code 1 when its dice say so."""
    from agents.placeholder import main as placeholder

    assert 1 == placeholder(["--crash-rate", "1", "--interval", "0.001", "--seed", "3"])
    assert "crashing on task 1" in capsys.readouterr().err


async def test_placeholder_stops_promptly_on_sigterm() -> None:
    """The demo agent exits 0 right after SIGTERM, not after its current interval."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "agents.placeholder", "--interval", "100"],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    with trio.fail_after(TIMEOUT):
        assert b"ready" in await proc.stdout.receive_some(1024)
        t0 = trio.current_time()
        proc.send_signal(signal.SIGTERM)
        code = await proc.wait()
    await proc.stdout.aclose()

    assert 0 == code
    assert trio.current_time() - t0 < 10  # the interval is 50-150 s
