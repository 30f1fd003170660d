"""The control socket of a running hub and the ``hubvisor ctl`` client."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from supervisor import ControlError, PoolSpec, SupervisorSpec
from supervisor._cli import main
from supervisor.control.client import ControlClientError, request
from supervisor.control.paths import default_socket_path
from supervisor.control.server import serve_control
from tests.helpers import running, sleeper


async def ask(path: Path, req: dict[str, Any]) -> Any:
    return await trio.to_thread.run_sync(request, path, req)


async def ctl(path: Path, *args: str) -> tuple[int, str]:
    result = await trio.to_thread.run_sync(
        lambda: CliRunner().invoke(main, ["ctl", "--socket", str(path), *args])
    )
    return result.exit_code, result.output


def tree() -> SupervisorSpec:
    return SupervisorSpec(
        name="hub",
        children=[sleeper("solo"), PoolSpec(agent_type="w", template=sleeper("t"), size=2)],
    )


async def test_requests_and_errors(tmp_path: Path) -> None:
    """Every op works; bad requests get an error answer and the socket keeps serving."""
    path = tmp_path / "hub.sock"
    async with running(tree()) as (hub, _), trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

        rows = await ask(path, {"op": "list"})
        assert ["solo", "w-pool", "w-agent-1", "w-agent-2"] == [r["id"] for r in rows]
        assert 3 == (await ask(path, {"op": "count"}))["workers"]

        await ask(path, {"op": "terminate", "id": "solo"})
        assert (
            "stopped"
            == next(r for r in await ask(path, {"op": "list"}) if r["id"] == "solo")["state"]
        )
        await ask(path, {"op": "restart", "id": "solo"})
        await ask(path, {"op": "resize", "pool": "w", "size": 3})
        assert 4 == (await ask(path, {"op": "count"}))["workers"]
        assert [] == await ask(path, {"op": "logs", "id": "solo", "lines": 5})

        for bad, fragment in [
            ({"op": "terminate", "id": "ghost"}, "no child 'ghost'"),
            ({"op": "dance"}, "unknown op 'dance'"),
            ({"op": "resize", "pool": "w", "size": "3"}, "'size' as a int"),
            ({"op": "logs", "id": "solo", "lines": "x"}, "'lines' must be an int"),
            (["list"], "a request is a JSON object"),
        ]:
            with pytest.raises(ControlClientError, match=fragment):
                await ask(path, bad)  # type: ignore[arg-type]

        # Garbage on the wire: an error answer, and the same connection still works.
        with socket.socket(socket.AF_UNIX) as sock:
            await trio.to_thread.run_sync(sock.connect, str(path))
            await trio.to_thread.run_sync(sock.sendall, b"{not json\n" + b'{"op": "count"}\n')
            data = b""
            while data.count(b"\n") < 2:
                data += await trio.to_thread.run_sync(sock.recv, 65536)
        first, second = (json.loads(x) for x in data.splitlines())
        assert not first["ok"] and second["ok"]

        nursery.cancel_scope.cancel()
    assert not path.exists()


async def test_ctl_commands(tmp_path: Path) -> None:
    """The ctl subcommands print tables and results, and errors as usage failures."""
    path = tmp_path / "hub.sock"
    async with running(tree()) as (hub, _), trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, path)

        code, out = await ctl(path, "list")
        assert 0 == code and "w-agent-2" in out and ("running" in out or "starting" in out)
        code, out = await ctl(path, "list", "--json")
        assert 0 == code and 4 == len(json.loads(out))
        assert (0, "specs: 4\nactive: 4\nworkers: 3\nsupervisors: 1\n") == await ctl(path, "count")
        assert (0, "w: 1 members\n") == await ctl(path, "resize", "w", "1")
        assert (0, "solo: terminated\n") == await ctl(path, "terminate", "solo")
        assert (0, "solo: restarted\n") == await ctl(path, "restart", "solo")
        assert (0, "") == await ctl(path, "logs", "solo", "-n", "3")
        code, out = await ctl(path, "restart", "ghost")
        assert 1 == code and "no child 'ghost'" in out
        assert (0, "stopping\n") == await ctl(path, "stop")
        with trio.fail_after(30):
            await hub.root._stopped.wait()
        nursery.cancel_scope.cancel()


async def test_no_hub_listening(tmp_path: Path) -> None:
    """A missing hub is a clear error naming the socket, with exit status 3."""
    code, out = await ctl(tmp_path / "none.sock", "list")

    assert 3 == code and f"no hub is running at {tmp_path / 'none.sock'}; start one" in out


async def test_stale_socket_is_taken_over_and_live_one_refused(tmp_path: Path) -> None:
    """A socket left by a dead hub is replaced; a live hub's socket is not stolen."""
    path = tmp_path / "hub.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # bound, never listening: like a hub that was SIGKILLed
    async with running(tree()) as (hub, _), trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, path)
        with pytest.raises(ControlError, match="another hub is already listening"):
            await serve_control(hub, path)
        assert 4 == len(await ask(path, {"op": "list"}))
        nursery.cancel_scope.cancel()


def test_default_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default socket lives in the runtime directory, named after the hub id."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/7")
    assert Path("/run/user/7/hubvisor/alpha.sock") == default_socket_path("alpha")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_socket_path("alpha").name == "alpha.sock"
