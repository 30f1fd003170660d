"""README.md's two quick-start commands: what they run, and how their installer fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SCRIPT = ROOT / "scripts" / "quickstart"
BASH = shutil.which("bash") or "/bin/bash"


def quick_start_commands() -> list[str]:
    """The commands of the first shell block under README.md's "Quick start"."""
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]


def recipe(target: str) -> list[str]:
    """The recipe lines of ``target`` in the Makefile."""
    makefile = (ROOT / "Makefile").read_text()
    rule = re.search(rf"^{target}:[^\n]*\n((?:\t[^\n]*\n)*)", makefile, re.M)
    assert rule is not None, f"no rule for {target!r} in the Makefile"
    return [line.strip() for line in rule.group(1).splitlines()]


def quickstart(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BASH, str(SCRIPT), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def fake_python(path: Path, version: str) -> Path:
    """An "interpreter" that only answers the installer's version question."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


def test_readme_quick_start_starts_with_the_two_commands() -> None:
    """The first lines of the quick start are the demo command, then the test command."""
    assert ["make demo", "make test"] == quick_start_commands()


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run's one command is README's test command, which runs the tests with pytest."""
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [
        line.split("#", 1)[0].strip()
        for line in ci.splitlines()
        if line.split("#", 1)[0].strip() and not line.startswith(("set ", "cd "))
    ]

    assert ["exec make test"] == commands
    assert ".venv/bin/python -m pytest" in recipe("test")[-1]
    assert recipe("demo")[-1].startswith(".venv/bin/hubvisor demo")


def test_old_python_is_refused_with_a_message(tmp_path: Path) -> None:
    """A Python older than 3.11 stops the install before anything is created."""
    python = fake_python(tmp_path / "python3.10", "3.10")
    venv = tmp_path / "venv"

    result = quickstart("env", PYTHON=str(python), VENV=str(venv))

    assert 1 == result.returncode
    assert "needs Python >= 3.11" in result.stderr
    assert "is Python 3.10" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not venv.exists()


def test_missing_python_is_refused_with_a_message(tmp_path: Path) -> None:
    """An interpreter that does not run is named, with what to install."""
    result = quickstart("env", PYTHON=str(tmp_path / "nothing"), VENV=str(tmp_path / "venv"))

    assert 1 == result.returncode
    assert "cannot run" in result.stderr
    assert "Install Python 3.11 or newer" in result.stderr


def test_old_environment_is_refused_with_a_message(tmp_path: Path) -> None:
    """An existing environment on an old Python is named, with how to recreate it."""
    venv = tmp_path / "venv"
    fake_python(venv / "bin" / "python", "3.9")

    result = quickstart("env", VENV=str(venv))

    assert 1 == result.returncode
    assert "is Python 3.9" in result.stderr
    assert f"remove {venv}" in result.stderr


def test_installed_environment_starts_at_once(tmp_path: Path) -> None:
    """With the stamp newer than pyproject.toml, nothing runs, not even the interpreter."""
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\ntouch {tmp_path / 'ran'}\nexit 1\n")
    python.chmod(0o755)
    (venv / ".quickstart-installed").touch()

    result = quickstart("env", VENV=str(venv))

    assert 0 == result.returncode, result.stderr
    assert "" == result.stdout + result.stderr
    assert not (tmp_path / "ran").exists()


def test_missing_redis_without_apt_is_refused_with_a_message(tmp_path: Path) -> None:
    """No redis-server and no apt-get: the message says what to install."""
    bin_dir = tmp_path / "bin"  # a PATH with neither redis-server nor apt-get
    bin_dir.mkdir()
    for tool in ("dirname", "id"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)

    result = quickstart("redis", PATH=str(bin_dir))

    assert 1 == result.returncode
    assert "need redis-server" in result.stderr
    assert "apt-get is not available" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
