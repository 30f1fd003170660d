"""Redis and Prometheus support are extras: without them the hub runs, and asking for
them fails with the extra to install (pyproject.toml's ``redis`` and ``metrics``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Run in a child interpreter in which the extras' packages cannot be imported: a module
# set to None in sys.modules raises ImportError on import, as a missing one does.
BLOCK = """
import sys
for name in ("redis", "hiredis", "prometheus_client"):
    sys.modules[name] = None
"""

CLI = (
    BLOCK
    + """
from supervisor._cli import main
sys.argv = ["hubvisor", *sys.argv[1:]]
main()
"""
)

TREE = """
import sys
from supervisor import ChildSpec, SupervisorSpec

spec = SupervisorSpec(
    name="hub",
    children=[ChildSpec(id="lonely-agent", argv=[sys.executable, "-m", "agents.placeholder"], shutdown=5)],
)
"""


def blocked(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with redis, hiredis and prometheus_client unimportable."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_library_names_the_extra_to_install() -> None:
    """RedisMirror, RedisWorkQueue and MetricsService fail with the extra and pip command;
    everything else imports."""
    code = (
        BLOCK
        + """
import supervisor
from supervisor import Hub, MemoryWorkQueue, SqliteWorkQueue, ChildSpec
for build in (
    lambda: supervisor.RedisMirror("redis://localhost:6379/0"),
    lambda: supervisor.RedisWorkQueue,
    lambda: supervisor.MetricsService,
):
    try:
        build()
    except ImportError as exc:
        print(type(exc).__name__, exc.name, "|", exc)
"""
    )
    result = blocked(code)

    assert 0 == result.returncode, result.stderr
    lines = result.stdout.splitlines()
    assert 3 == len(lines), result.stdout
    redis_hint = "Redis support needs the redis extra"
    for line in lines[:2]:
        assert line.startswith("MissingExtra redis | " + redis_hint), line
        assert line.endswith("install it: pip install 'hubvisor[redis]'"), line
    assert lines[2].startswith("MissingExtra prometheus_client | "), lines[2]
    assert "needs the metrics extra" in lines[2]
    assert lines[2].endswith("install it: pip install 'hubvisor[metrics]'"), lines[2]


@pytest.mark.parametrize(
    ("option", "value", "extra"),
    [("--redis", "redis://localhost:6379/0", "redis"), ("--metrics", "127.0.0.1:0", "metrics")],
)
def test_the_cli_names_the_extra_as_a_bad_option(
    option: str, value: str, extra: str, tmp_path: Path
) -> None:
    """`run --redis`/`--metrics` without the extra: exit 2, one message, no traceback."""
    tree = tmp_path / "tree.py"
    tree.write_text(TREE)

    result = blocked(CLI, "run", str(tree), option, value)

    assert 2 == result.returncode
    assert f"Invalid value for {option}" in result.stderr
    assert f"needs the {extra} extra" in result.stderr
    assert f"pip install 'hubvisor[{extra}]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_and_run_work_without_the_extras(tmp_path: Path) -> None:
    """`check` and `run` (work in SQLite, no metrics) need neither redis nor prometheus."""
    tree = tmp_path / "tree.py"
    tree.write_text(TREE)

    checked = blocked(CLI, "check", str(tree))
    ran = blocked(CLI, "run", str(tree), "--duration", "1")

    assert 0 == checked.returncode, checked.stderr
    assert 0 == ran.returncode, ran.stderr
    assert "Traceback" not in ran.stderr
    assert "lonely-agent" in ran.stderr  # it was started


@pytest.mark.slow
def test_the_demo_works_without_the_extras() -> None:
    """README's `make demo` command with redis and prometheus_client missing."""
    result = blocked(CLI, "demo", "--duration", "2", timeout=120)

    assert 0 == result.returncode, result.stderr[-2000:]
    assert "worker-agent-1" in result.stderr
    assert "Traceback" not in result.stderr
