"""`hubvisor stop --wait` and `logs -f` at a hub's stop, with real processes: the waiter
exits when the hub is gone, with its exit status; a follower ends 0 when the hub stops
well, 1 when it dies."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import trio

from tests.control.test_cli import Hubvisor, finish, start_hubvisor
from tests.helpers import TIMEOUT

SPEC = """
from supervisor import ChildSpec, SupervisorSpec

spec = SupervisorSpec(
    name="waits",
    children=[ChildSpec(id="s0", argv={argv!r}, shutdown={shutdown!r}, start_period=0.1)],
)
"""
TALKS = ["sh", "-c", "echo hello; exec sleep 1000"]
STUBBORN = ["sh", "-c", "trap '' TERM; echo hello; while :; do sleep 0.1; done"]


async def start(tmp_path: Path, argv: list[str], shutdown: float = 2.0) -> tuple[Hubvisor, Path]:
    tmp_path.mkdir(exist_ok=True)
    spec = tmp_path / "tree.py"
    spec.write_text(SPEC.format(argv=argv, shutdown=shutdown))
    path = tmp_path / "hub.sock"
    hv = await start_hubvisor("run", str(spec), "--socket", str(path), "--work", "memory")
    await hv.wait_line("waits started")
    return hv, path


async def hubvisor(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(
            [sys.executable, "-m", "supervisor", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def cleanup(hv: Hubvisor) -> None:
    """Kill a hub a failed test left running."""
    if hv.proc.returncode is None:
        hv.proc.kill()
        await finish(hv)


async def test_stop_wait_exits_when_the_hub_is_gone(tmp_path: Path) -> None:
    hv, path = await start(tmp_path, TALKS)
    try:
        done = await hubvisor("stop", "--wait", "--socket", str(path))
        assert (0, b"stopped (exit status 0)\n") == (done.returncode, done.stdout), done.stderr
        assert hv.proc.poll() is not None or not _running(hv.proc.pid)  # gone (or a zombie)
        assert 0 == (await finish(hv))[0]
    finally:
        await cleanup(hv)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_stop_wait_exits_with_the_hubs_exit_status(tmp_path: Path) -> None:
    """A hub killed by a second Ctrl-C while it stops exits 130: so does the waiter."""
    hv, path = await start(tmp_path, STUBBORN, shutdown=60.0)
    try:
        async with trio.open_nursery() as nursery:
            result: list[subprocess.CompletedProcess[bytes]] = []

            async def wait() -> None:
                result.append(await hubvisor("stop", "--wait", "--socket", str(path)))

            nursery.start_soon(wait)
            await hv.wait_line("waits stopping")  # the waiter's stop arrived
            hv.proc.send_signal(signal.SIGINT)
            await hv.wait_line("stopping the tree")
            hv.proc.send_signal(signal.SIGINT)  # the second one kills every child
        assert 130 == result[0].returncode, result[0]
        assert b"stopped (exit status 130)\n" == result[0].stdout
        assert 130 == (await finish(hv))[0]
    finally:
        await cleanup(hv)


async def test_stop_wait_times_out_with_124(tmp_path: Path) -> None:
    hv, path = await start(tmp_path, STUBBORN, shutdown=60.0)
    try:
        done = await hubvisor("stop", "--wait", "--timeout", "0.5", "--socket", str(path))
        assert 124 == done.returncode, done
        assert b"had not stopped after 0.5s; it goes on stopping" in done.stderr
        assert hv.proc.returncode is None  # still stopping
    finally:
        await cleanup(hv)


async def follow(path: Path) -> trio.Process:
    """``hubvisor logs s0 -f``, once it has printed the child's first line."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "supervisor", "logs", "s0", "-f", "--socket", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    seen = b""
    with trio.fail_after(TIMEOUT):
        while b"hello" not in seen:
            chunk = await proc.stdout.receive_some(4096)
            assert chunk, "logs -f ended before the child's line"
            seen += chunk
    return proc


async def ended(proc: trio.Process) -> tuple[int, bytes]:
    assert proc.stdout is not None and proc.stderr is not None
    with trio.fail_after(TIMEOUT):
        while await proc.stdout.receive_some(4096):
            pass
        err = b""
        while chunk := await proc.stderr.receive_some(4096):
            err += chunk
        code = await proc.wait()
    await proc.stdout.aclose()
    await proc.stderr.aclose()
    return code, err


async def test_logs_f_ends_0_when_the_hub_stops_and_1_when_it_dies(tmp_path: Path) -> None:
    hv, path = await start(tmp_path / "a", TALKS)
    try:
        proc = await follow(path)
        hv.proc.terminate()
        assert (0, b"") == await ended(proc)
        assert 0 == (await finish(hv))[0]
    finally:
        await cleanup(hv)

    hv, path = await start(tmp_path / "b", TALKS)
    try:
        proc = await follow(path)
        hv.proc.kill()  # no last word
        code, err = await ended(proc)
        assert 1 == code and b"ended the stream" in err, err
    finally:
        await cleanup(hv)
