"""The code stays typed, linted and formatted (mypy --strict, ruff)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# The project's own files: README invites users to write their tree.py in the clone, and
# `make test` must not lint that (mypy checks the packages pyproject.toml names).
OWN_DIRS = ["supervisor", "agents", "strategies", "tests", "benchmarks", "docs/examples"]
OWN_PATHS = [*OWN_DIRS, "pyproject.toml"]

COMMANDS = {
    "ruff-check": ["ruff", "check", *OWN_PATHS],
    "ruff-format": ["ruff", "format", "--check", *OWN_PATHS],
    "mypy": ["mypy"],
}


def run_tool(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("name", list(COMMANDS))
def test_tool_is_clean(name: str) -> None:
    """The tool reports nothing to fix."""
    result = run_tool(COMMANDS[name], ROOT)

    assert 0 == result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["ruff-check", "ruff-format"])
def test_a_users_own_file_in_the_clone_is_not_linted(name: str, tmp_path: Path) -> None:
    """A badly formatted tree.py at the clone's root (README's example) fails no lint step,
    while the same file inside a project package does."""
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copy(ROOT / "pyproject.toml", clone)
    for path in OWN_DIRS:
        (clone / path).mkdir(parents=True)
    bad = "import os,sys\nx=[1,\n2]\nif x == None: print( 'unused' )\n"
    (clone / "tree.py").write_text(bad)

    assert 0 == run_tool(COMMANDS[name], clone).returncode

    (clone / "supervisor" / "bad.py").write_text(bad)
    assert 0 != run_tool(COMMANDS[name], clone).returncode
