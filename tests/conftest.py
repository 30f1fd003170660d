"""Shared fixtures: every test is checked for leaked processes and file descriptors."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "dev",
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Every run of the suite is deterministic: the same examples on every run and every
# machine (CI does not set any variable for us), so a red run is a real regression and
# never a lucky draw. Looking for new counterexamples is a deliberate act: --explore.
settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True)
settings.load_profile("ci")

EXPLORE_EXAMPLES = "HUBVISOR_EXPLORE_EXAMPLES"
"""Set (to a number of examples) by ``--explore``; property tests with their own
``max_examples`` read it through ``explore_examples`` in tests/testing/test_tree_properties.py."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hubvisor")
    group.addoption(
        "--explore",
        action="store_true",
        default=False,
        help="property tests look for new counterexamples: fresh random examples on every "
        "run (not derandomized) and many of them (see --explore-examples "
        "and docs/property-testing.md)",
    )
    group.addoption(
        "--explore-examples",
        type=int,
        default=2000,
        metavar="N",
        help="examples per property test with --explore (default: 2000)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("--explore"):
        os.environ.pop(EXPLORE_EXAMPLES, None)
        return
    n = config.getoption("--explore-examples")
    os.environ[EXPLORE_EXAMPLES] = str(n)
    settings.register_profile(
        "explore",
        parent=settings.get_profile("dev"),
        derandomize=False,
        max_examples=n,
        print_blob=True,  # a failure prints the @reproduce_failure line to replay it
    )
    settings.load_profile("explore")


# Every process a test starts inherits this marker, so leftovers can be found even after
# they were reparented to init.
MARKER = f"HUBVISOR_TEST_RUN={uuid.uuid4().hex}"
os.environ["HUBVISOR_TEST_RUN"] = MARKER.split("=", 1)[1]
# Hubs started by the tests put their control sockets here, not in the user's runtime
# directory, so test runs never collide with each other or with a real hub.
os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="hubvisor-tests-")

PY = sys.executable


def marked_processes() -> list[int]:
    """Pids of live (non-zombie) processes that carry this test run's marker."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if MARKER.encode() not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def zombie_children() -> list[int]:
    """Pids of this process's children that exited and were never reaped."""
    zombies = []
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and fields[1] == me:
            zombies.append(int(entry.name))
    return zombies


def wait_until(predicate: object, timeout: float = 5.0) -> bool:
    """Poll ``predicate`` (a callable) until true or ``timeout`` real seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():  # type: ignore[operator]
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def own_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's hubs keep their SQLite work store (the default state directory,
    ``$XDG_STATE_HOME/hubvisor/<hub id>/``) in the test's own directory: no test sees
    another's work, and none writes to the user's state directory."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("HUBVISOR_STATE_DIR", raising=False)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """After each test: no marked process alive, no zombie child, no new open fd."""
    fds_before = set(os.listdir("/proc/self/fd"))
    yield
    # A group SIGKILL is asynchronous: give the kernel a moment to finish the kills.
    assert wait_until(lambda: not marked_processes()), (
        f"processes left behind: {marked_processes()}"
    )
    assert not zombie_children(), f"unreaped children: {zombie_children()}"
    fds_after = set(os.listdir("/proc/self/fd"))
    leaked = fds_after - fds_before
    assert not leaked, f"file descriptors leaked: {sorted(leaked)}"
