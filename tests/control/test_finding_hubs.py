"""How a client command finds its hub: ``--socket``, ``--hub-id``, ``$HUBVISOR_SOCKET``,
``$HUBVISOR_HUB_ID``, else the one hub running in the socket directory; and what it says
(exit 3) when it finds none. Real ``hubvisor run`` hubs, in a socket directory of their own.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner, Result

from supervisor._cli import main
from tests.control.test_cli import Hubvisor, finish, start_hubvisor

SPEC = """
from supervisor import ChildSpec, SupervisorSpec

spec = SupervisorSpec(
    name={name!r},
    children=[ChildSpec(id="s0", argv=["sleep", "1000"], shutdown=2.0, start_period=0.1)],
)
"""


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A socket directory of this test's own (the hubs started here inherit it)."""
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    monkeypatch.delenv("HUBVISOR_SOCKET", raising=False)
    monkeypatch.delenv("HUBVISOR_HUB_ID", raising=False)
    return xdg / "hubvisor"


@asynccontextmanager
async def hub(tmp_path: Path, name: str) -> AsyncIterator[Hubvisor]:
    """``hubvisor run`` of a one-child tree named ``name``, stopped at the end."""
    spec = tmp_path / f"{name}.py"
    spec.write_text(SPEC.format(name=name))
    hv = await start_hubvisor("run", str(spec), "--work", "memory")
    try:
        await hv.wait_line(f"{name} started")
        yield hv
        hv.proc.terminate()
        assert 0 == (await finish(hv))[0]
    finally:
        if hv.proc.returncode is None:
            hv.proc.kill()
            await finish(hv)


async def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """``hubvisor ARGS`` (no --socket), run by click's runner in a thread."""
    return await trio.to_thread.run_sync(lambda: CliRunner(env=env).invoke(main, list(args)))


def hub_of(result: Result) -> tuple[str, int]:
    assert 0 == result.exit_code, result.output
    found = json.loads(result.stdout)["hub"]
    return found["id"], found["pid"]


async def test_the_one_hub_running_is_found_without_an_id(tmp_path: Path, runtime: Path) -> None:
    """`hubvisor status` while a tree named `mytree` runs reaches it; so do the other
    commands; a socket left by a dead hub next to it is not a hub that runs."""
    stale = socket.socket(socket.AF_UNIX)
    runtime.mkdir(mode=0o700, parents=True)
    stale.bind(str(runtime / "dead.sock"))
    stale.close()  # bound, never listening: like a hub that was SIGKILLed
    async with hub(tmp_path, "mytree") as hv:
        assert ("mytree", hv.proc.pid) == hub_of(await cli("status", "--json"))
        listed = await cli("ctl", "list")
        assert 0 == listed.exit_code and "s0" in listed.stdout, listed.output
        for args in (["work", "list"], ["logs", "s0"], ["events", "-n", "1"], ["top", "--once"]):
            assert 0 == (await cli(*args)).exit_code, args


async def test_every_command_honours_hubvisor_hub_id(tmp_path: Path, runtime: Path) -> None:
    """With two hubs running: $HUBVISOR_HUB_ID picks one for every command, --hub-id
    beats it, and with neither the command lists the hubs (id, pid, socket), exit 3."""
    async with hub(tmp_path, "alpha") as alpha, hub(tmp_path, "beta") as beta:
        env = {"HUBVISOR_HUB_ID": "beta"}
        assert ("beta", beta.proc.pid) == hub_of(await cli("status", "--json", env=env))
        assert ("alpha", alpha.proc.pid) == hub_of(
            await cli("status", "--json", "--hub-id", "alpha", env=env)
        )
        for args in (
            ["work", "list"],
            ["ctl", "list"],
            ["ctl", "status"],
            ["logs", "s0"],
            ["events", "-n", "1"],
            ["top", "--once"],
            ["work", "show", "nothing-1"],  # the hub answers: no such item (exit 1)
        ):
            result = await cli(*args, env=env)
            assert result.exit_code in (0, 1) and "no hub" not in result.output, args
        assert (
            "no work item 'nothing-1'" in (await cli("work", "show", "nothing-1", env=env)).output
        )

        lost = await cli("status")
        assert 3 == lost.exit_code
        assert lost.stderr.startswith(f"no hub is running at {runtime / 'hub.sock'}; ")
        for hv, name in ((alpha, "alpha"), (beta, "beta")):
            assert f"  {name}  pid {hv.proc.pid}  {runtime / name}.sock\n" in lost.stderr
        assert "--hub-id ID (or HUBVISOR_HUB_ID=ID)" in lost.stderr
        gone = await cli("status", env={"HUBVISOR_HUB_ID": "gamma"})
        assert 3 == gone.exit_code and f"{runtime / 'gamma.sock'}; the hubs" in gone.stderr


async def test_no_hub_says_none_runs_and_how_to_start_one(runtime: Path) -> None:
    for args in (["status"], ["submit", "w", "{}"], ["stop"], ["ctl", "list"], ["top"]):
        result = await cli(*args)
        assert 3 == result.exit_code, args
        assert result.stderr == (
            f"no hub is running at {runtime / 'hub.sock'}; start one with `hubvisor run "
            f"SPEC` (no hub runs in {runtime})\n"
        )
