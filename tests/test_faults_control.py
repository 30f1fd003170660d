"""Regression tests for the control-socket, metrics and CLI faults of issue 18.

Fault 1 (client side: text from the hub and from clients made safe), 5 (bounded control
and metrics connections), 13 (NaN and Infinity refused), 14 (``events -n N``) and 15
(one-line errors on Python 3.11.0-3.11.3).
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from supervisor import Hub, PoolSpec, SupervisorSpec
from supervisor._cli import main
from supervisor._control import _EventRing, _rings, request, serve_control
from tests.helpers import sleeper

ROOT = Path(__file__).resolve().parent.parent


def tree() -> SupervisorSpec:
    return SupervisorSpec(
        name="hub",
        children=[sleeper("solo"), PoolSpec(agent_type="w", template=sleeper("t"), size=2)],
    )


async def ask(path: Path, req: dict[str, Any]) -> Any:
    return await trio.to_thread.run_sync(request, path, req)


# --------------------------------------------------------------------------------------
# Fault 14: `events -n N` returned too few when fewer than N events were kept


@pytest.mark.parametrize(
    ("lines", "shown"), [(6, [0, 1, 2, 3]), (4, [0, 1, 2, 3]), (3, [1, 2, 3]), (0, [])]
)
async def test_fault14_events_n_gives_the_last_n_kept_or_all_of_them(
    tmp_path: Path, lines: int, shown: list[int]
) -> None:
    """With 4 events kept, ``events -n 6`` prints all 4 (it printed 2), ``-n 3`` the last 3."""
    hub = Hub(tree())
    ring = _EventRing(hub, keep=4)
    for n in range(4):
        ring.kept.append({"kind": "running", "n": n})
    _rings[hub] = ring  # serve_control keeps a ring already there
    path = tmp_path / "hub.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, path)

        result = await trio.to_thread.run_sync(
            lambda: CliRunner().invoke(main, ["events", "-n", str(lines), "--socket", str(path)])
        )

        assert 0 == result.exit_code, result.output
        assert shown == [json.loads(line)["n"] for line in result.stdout.splitlines()]
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------------------
# Fault 15: a 43-line ExceptionGroup instead of one line on Python 3.11.0-3.11.3


def _raises_in_except_star(tree_: ast.AST) -> list[int]:
    """Line numbers of ``raise`` statements inside the handlers of ``try ... except*``."""
    found = []
    for node in ast.walk(tree_):
        if isinstance(node, ast.TryStar):
            for handler in node.handlers:
                for inner in ast.walk(handler):
                    if isinstance(inner, ast.Raise):
                        found.append(inner.lineno)
    return found


def test_fault15_ast_check_finds_a_raise_inside_except_star() -> None:
    """The check below does see the pattern (so its silence means something)."""
    code = "try:\n    f()\nexcept* ValueError as g:\n    if g:\n        raise KeyError\n"

    assert [5] == _raises_in_except_star(ast.parse(code))


def test_fault15_no_raise_inside_an_except_star_block() -> None:
    """No exception is raised inside ``except*`` anywhere: on 3.11.0-3.11.3 (CPython
    gh-103590) it comes out wrapped in the group it replaced, a traceback for the user."""
    offenders = []
    for package in ("supervisor", "agents", "strategies"):
        for source in sorted((ROOT / package).rglob("*.py")):
            lines = _raises_in_except_star(ast.parse(source.read_text(), str(source)))
            offenders += [f"{source.relative_to(ROOT)}:{n}" for n in lines]

    assert [] == offenders


SPEC15 = """
from supervisor import ChildSpec, SupervisorSpec
spec = SupervisorSpec(
    name="hub15", children=[ChildSpec(id="a", argv=["sleep", "1000"], shutdown=2, start_period=0.1)]
)
"""


def _pythons() -> list[Any]:
    """This interpreter, and Debian 12's python3 (3.11.2, which has the CPython bug) when
    the machine has it: the hub's pure-Python dependencies are found on this one's path."""
    found: list[Any] = [pytest.param([sys.executable], id="this-python")]
    debian = Path("/usr/bin/python3.11")
    if debian.exists():
        version = subprocess.run(
            [str(debian), "-c", "import sys; print(sys.version_info[:3] < (3, 11, 4))"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if version == "True":
            found.append(pytest.param([str(debian)], id="python-3.11.2"))
    return found


def _run15(python: list[str], tmp_path: Path, env: dict[str, str], *args: str) -> Any:
    spec = tmp_path / "tree.py"
    spec.write_text(SPEC15)
    paths = [str(ROOT), *(p for p in sys.path if p.endswith("site-packages"))]
    return subprocess.run(
        [*python, "-m", "supervisor", "run", str(spec), "--duration", "5", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(paths)},
    )


@pytest.mark.parametrize("python", _pythons())
def test_fault15_taken_socket_is_one_line_and_exit_1(python: list[str], tmp_path: Path) -> None:
    """`run` with another hub listening at the socket: one line, exit 1 (docs/control.md)."""
    path = tmp_path / "hub.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        other.listen(1)

        result = _run15(python, tmp_path, {}, "--socket", str(path))

    assert 1 == result.returncode
    assert [f"Error: another hub is already listening at {path}"] == [
        line[: len(f"Error: another hub is already listening at {path}")]
        for line in result.stderr.splitlines()
    ], result.stderr


@pytest.mark.parametrize("python", _pythons())
def test_fault15_unsafe_directory_is_one_line_and_exit_1(python: list[str], tmp_path: Path) -> None:
    """`run` refusing a default socket directory others may write: one line, exit 1."""
    base = tmp_path / f"hubvisor-{os.getuid()}"
    base.mkdir()
    base.chmod(0o777)
    env = {"TMPDIR": str(tmp_path), "XDG_RUNTIME_DIR": ""}

    result = _run15(python, tmp_path, env)

    assert 1 == result.returncode
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: the control directory {base} has mode 0777"), line
    assert "chmod 700" in line
