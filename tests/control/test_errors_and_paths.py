"""Regression tests for the control-socket and ``hubvisor ctl`` faults of issue 7 (5, 8, 10)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from supervisor import ControlError, Hub, PoolSpec, SupervisorSpec
from supervisor._cli import main
from supervisor._daemon import run_hub
from supervisor.control.client import ControlClientError, request
from supervisor.control.paths import default_socket_path
from supervisor.control.server import serve_control
from tests.control.test_cli import finish, start_hubvisor
from tests.helpers import TIMEOUT, running, sleeper, until

STUBBORN = ["sh", "-c", "trap '' TERM; exec sleep 1000"]  # ignores SIGTERM: killed at shutdown


def tree(*extra: Any) -> SupervisorSpec:
    return SupervisorSpec(
        name="hub",
        children=[
            sleeper("solo"),
            PoolSpec(agent_type="w", template=sleeper("t"), size=2),
            *extra,
        ],
    )


def exchange(path: Path, data: bytes) -> list[dict[str, Any]]:
    """Send ``data`` on one connection, close the sending side, return every answer."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return [json.loads(line) for line in received.splitlines()]


async def ctl(*args: str) -> tuple[int, str]:
    result = await trio.to_thread.run_sync(lambda: CliRunner().invoke(main, ["ctl", *args]))
    return result.exit_code, result.output


# --------------------------------------------------------------------------------------
# Fault 5: one malformed line took the whole hub down


async def test_fault5_deeply_nested_control_line_leaves_hub_running(tmp_path: Path) -> None:
    """60,000 '[' get an error answer; the same connection and the hub keep working."""
    path = tmp_path / "hub.sock"
    async with running(tree()) as (hub, _), trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, path)

        nested, after = await trio.to_thread.run_sync(
            exchange, path, b"[" * 60_000 + b"\n" + b'{"op": "count"}\n'
        )

        assert not nested["ok"] and "nested more than 32 levels deep" in nested["error"]
        assert {"ok": True, "result": hub.count_children()} == after
        assert 3 == (await trio.to_thread.run_sync(request, path, {"op": "count"}))["workers"]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b"\xff\xfe\x00garbage", "not a JSON object"),
        (b'{"op": "list"', "not a JSON object"),
        (b'{"op": "count", "x": ' + b"9" * 5000 + b"}", "not a JSON object"),
        (b"[" * 900 + b"]" * 900, "nested more than 32 levels deep"),
        (b"[" * 30 + b"]" * 30, "a request is a JSON object"),
        (b'{"op": "logs", "id": "solo", "lines": NaN}', "NaN is not JSON (the protocol forbids"),
        (b'{"op": "logs", "id": "solo", "lines": -1}', "'lines' must be an int >= 0 (got -1)"),
        (b'{"op": "resize", "pool": "w", "size": true}', "'size' must be an int >= 0"),
        (b'{"op": "terminate", "id": {"a": [1]}}', "got a JSON object"),
        (b'{"op": "terminate"}', "needs 'id'"),
        (b'{"op": "list", "verbose": 1}', "request 'list' has no field 'verbose'"),
        (b'{"op": ["list"]}', "a request is a JSON object"),
        (b'{"op": "budget", "request": {"op": "stop", "now": 1}}', "has no field 'now'"),
        (b"x" * 70_000, "longer than 65536 bytes"),
        (b'{"op": "count", "pad": "' + b" " * 200_000 + b'"}', "longer than 65536 bytes"),
    ],
)
async def test_fault5_any_malformed_line_gets_an_error_answer(
    tmp_path: Path, line: bytes, fragment: str
) -> None:
    """Each kind of bad line is answered with an error naming the problem; then a good one."""
    path = tmp_path / "hub.sock"
    async with running(tree()) as (hub, _), trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, path)

        answers = await trio.to_thread.run_sync(exchange, path, line + b'\n{"op": "count"}\n')

        assert 2 == len(answers), answers
        assert not answers[0]["ok"] and fragment in answers[0]["error"], answers[0]
        assert answers[1]["ok"] and 3 == answers[1]["result"]["workers"]
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------------------
# Fault 8: a taken control socket printed a nested ExceptionGroup


FAULT8_SPEC = """
from supervisor import ChildSpec, SupervisorSpec
spec = SupervisorSpec(
    name={name!r}, children=[ChildSpec(id="a", argv=["sleep", "1000"], shutdown=2, start_period=0.1)]
)
"""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_fault8_socket_of_a_live_hub_is_a_clear_error_not_a_traceback(
    tmp_path: Path,
) -> None:
    """A second hub with the same id says another hub listens at PATH and how to fix it.

    The first hub keeps serving; once it is gone, a stale socket file is taken over.
    """
    name = f"fault8-{os.getpid()}"
    spec = tmp_path / "tree.py"
    spec.write_text(FAULT8_SPEC.format(name=name))
    path = default_socket_path(name)
    first = await start_hubvisor("run", str(spec))
    try:
        await first.wait_line("control socket: ")
        await first.wait_line(f"{name} started")

        # --work memory: the same id's state directory (SQLite, the default) is refused
        # first otherwise (tests/work/test_durable_default.py); this is the socket's test.
        second = await trio.to_thread.run_sync(
            run_cli, "run", str(spec), "--duration", "5", "--work", "memory"
        )

        assert 1 == second.returncode
        assert f"another hub is already listening at {path}" in second.stderr
        assert "another hub id" in second.stderr and "--control-socket" in second.stderr
        assert "Traceback" not in second.stderr and "ExceptionGroup" not in second.stderr
        assert 1 == len(await trio.to_thread.run_sync(request, path, {"op": "list"}))
    finally:
        if first.proc.returncode is None:
            first.proc.send_signal(signal.SIGINT)
        assert 0 == (await finish(first))[0]

    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # bound, never listening: like a hub that was SIGKILLed

    third = await trio.to_thread.run_sync(run_cli, "run", str(spec), "--duration", "0.5")

    assert 0 == third.returncode, third.stderr
    assert f"control socket: {path}" in third.stderr
    assert not path.exists()


def test_fault8_in_process_error_is_one_control_error(tmp_path: Path) -> None:
    """run_hub raises the ControlError itself, not the nurseries' nested ExceptionGroups."""
    path = tmp_path / "hub.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        other.listen(1)  # someone is listening there

        with pytest.raises(ControlError, match="another hub is already listening at") as err:
            run_hub(tree(), control_socket=str(path), duration=5)

    assert type(err.value) is ControlError


# --------------------------------------------------------------------------------------
# Fault 10: ctl's raw TimeoutError, unguarded answers and a foreign socket directory


async def test_fault10_slow_terminate_is_a_clear_timeout_message(tmp_path: Path) -> None:
    """An answer slower than --timeout is an error saying so, not a TimeoutError traceback."""
    path = tmp_path / "hub.sock"
    spec = tree(sleeper("stubborn", argv=STUBBORN, shutdown=2.0))
    async with running(spec) as (hub, _), trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, path)
        await until(
            lambda: any(r.info.id == "stubborn" and r.info.pid for r in hub.which_children())
        )

        code, out = await ctl("--socket", str(path), "terminate", "stubborn", "--timeout", "0.3")

        assert 1 == code
        assert "did not answer 'terminate' within 0.3s" in out and "--timeout" in out
        assert "Traceback" not in out
        # The hub carries the terminate out all the same.
        await until(
            lambda: any(
                r.info.id == "stubborn" and r.info.state.value == "stopped"
                for r in hub.which_children()
            )
        )
        nursery.cancel_scope.cancel()


async def test_fault10_terminate_waits_up_to_the_childs_shutdown_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --timeout, ctl waits the child's shutdown time on top of its own timeout."""
    import supervisor.control.ops as control

    monkeypatch.setattr(control, "FAST_TIMEOUT", 0.5)
    path = tmp_path / "hub.sock"
    spec = tree(sleeper("stubborn", argv=STUBBORN, shutdown=1.5))
    async with running(spec) as (hub, _), trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, path)
        await until(
            lambda: any(r.info.id == "stubborn" and r.info.pid for r in hub.which_children())
        )
        budget = {"op": "budget", "request": {"op": "terminate", "id": "stubborn"}}
        assert 1.5 == await trio.to_thread.run_sync(request, path, budget)
        resize = {"op": "budget", "request": {"op": "resize", "pool": "w", "size": 0}}
        assert 2.0 == await trio.to_thread.run_sync(request, path, resize)

        t0 = trio.current_time()
        assert (0, "stubborn: terminated\n") == await ctl(
            "--socket", str(path), "terminate", "stubborn"
        )
        assert trio.current_time() - t0 >= 1.4  # it did wait for the shutdown time
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (b"garbage\n", "not a hubvisor answer"),
        (b"[1, 2]\n", "not a hubvisor answer"),
        (b'{"ok": "yes"}\n', "not a hubvisor answer"),
        (b"[" * 100_000 + b"\n", "not a hubvisor answer"),
        (b"\xff\xfe\n", "not a hubvisor answer"),
        (b"", "closed the connection before answering 'list'"),
        (b'{"ok": false, "error": "refused: reasons"}\n', "refused: reasons"),
    ],
)
async def test_fault10_garbage_answer_is_a_clear_error(
    tmp_path: Path, answer: bytes, fragment: str
) -> None:
    """Whatever a socket answers, the client raises ControlClientError, and ctl exits 1."""
    path = tmp_path / "fake.sock"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(4)
    fake = trio.SocketListener(sock)

    async def answer_garbage(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(answer)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, answer_garbage, [fake])

        with pytest.raises(ControlClientError, match=fragment.replace("(", r"\(")) as err:
            await trio.to_thread.run_sync(request, path, {"op": "list"})
        assert len(str(err.value)) < 400
        code, out = await ctl("--socket", str(path), "list")

        assert 1 == code and fragment in out and "Traceback" not in out
        nursery.cancel_scope.cancel()


@pytest.fixture
def tmp_default_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The default socket directory as /tmp/hubvisor-<uid>, under ``tmp_path``."""
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    base = default_socket_path("hub").parent
    assert base == tmp_path / f"hubvisor-{os.getuid()}"
    yield base


def foreign(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(base, 65534, 65534)  # nobody's
    else:  # pragma: no cover - CI runs as root; elsewhere, pretend to be someone else
        uid = os.getuid() + 1
        monkeypatch.setattr(os, "getuid", lambda: uid)
        base.rename(base.with_name(f"hubvisor-{uid}"))


def loose(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base.mkdir()
    base.chmod(0o777)


def linked(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = base.with_name("elsewhere")
    target.mkdir(mode=0o700)
    base.symlink_to(target)


@pytest.mark.parametrize(
    ("plant", "fragment", "fix"),
    [
        (foreign, "belongs to uid", "rm -r"),
        (loose, "has mode 0777", "chmod 700"),
        (linked, "is a symlink", "rm "),
    ],
    ids=["foreign", "loose", "symlink"],
)
async def test_fault10_foreign_loose_or_linked_socket_directory_is_refused(
    tmp_default_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    plant: Any,
    fragment: str,
    fix: str,
) -> None:
    """The hub will not listen, nor ctl talk, in a default directory it does not own privately."""
    plant(tmp_default_dir, monkeypatch)
    path = default_socket_path("hub")

    with pytest.raises(ControlError, match=fragment) as err:
        await serve_control(Hub(tree()), path)
    assert str(path.parent) in str(err.value) and fix in str(err.value)
    assert "--control-socket PATH" in str(err.value)
    assert not path.exists()

    code, out = await ctl("list")
    assert 1 == code and fragment in out and str(path.parent) in out and "--socket PATH" in out


async def test_fresh_default_directory_is_made_private(tmp_default_dir: Path) -> None:
    """The hub makes the default directory 0700 and ctl uses it without --socket."""
    async with running(tree()) as (hub, _), trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, default_socket_path("hub"))

        assert 0o700 == stat.S_IMODE(os.lstat(tmp_default_dir).st_mode)
        assert (0, "specs: 4\nactive: 4\nworkers: 3\nsupervisors: 1\n") == await ctl("count")
        nursery.cancel_scope.cancel()


async def test_a_file_that_is_not_a_socket_is_never_replaced(tmp_path: Path) -> None:
    """A hub given the path of an ordinary file (or a link) refuses it instead of deleting it."""
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    link = tmp_path / "link.sock"
    link.symlink_to(path)

    for taken in (path, link):
        with pytest.raises(ControlError, match="exists and is not a socket"):
            await serve_control(Hub(tree()), taken)

    assert "keep me" == path.read_text() and link.is_symlink()
