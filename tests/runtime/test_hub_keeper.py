"""``Hub()`` in Python starts the orphan keeper as ``hubvisor run`` does (issue 22): a
Python hub killed with SIGKILL leaves no descendant of its agents either."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor import ChildSpec, Hub, OrphanKeeper
from supervisor.testing import SimulatedProcessBackend

from ..helpers import alive
from ..redis_hubs import wait_for
from .test_keeper import AGENT

pytestmark = pytest.mark.slow

HUB = """
import sys, trio
from supervisor import ChildSpec, Hub
AGENT, OUT = sys.argv[1], sys.argv[2]
hub = Hub([ChildSpec(id="forker", argv=[sys.executable, "-c", AGENT, OUT], shutdown=1.0)])
trio.run(hub.serve)
"""


def test_a_python_hub_killed_leaves_no_descendant(tmp_path: Path) -> None:
    """The default Hub(spec), SIGKILLed: the agent's grandchild in its own session and
    its daemonized great-grandchild die too (the keeper swept them)."""
    out = tmp_path / "pids"
    hub = subprocess.Popen(
        [sys.executable, "-c", HUB, AGENT, str(out)],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "hub.log").open("wb"),
    )
    try:
        wait_for(out.exists, 30, "the agent to start its descendants")
        pids = [int(p) for p in out.read_text().split()]
        agent, grandchild, daemon = pids
        assert os.getsid(grandchild) == grandchild  # really left the agent's group
        assert os.getpgid(daemon) != os.getpgid(agent)
    finally:
        killed = time.monotonic()
        hub.kill()
        hub.wait()
    wait_for(lambda: not any(alive(p) for p in pids), 5, "every descendant to die")
    took = time.monotonic() - killed
    assert took < 2.0, f"descendants outlived the hub by {took:.2f} s"


def test_the_keeper_is_the_default_for_real_processes_only_and_never_twice() -> None:
    spec = ChildSpec(id="a", argv=["true"])
    hub = Hub([spec])
    assert isinstance(hub.keeper, OrphanKeeper) and hub.keeper in hub.services
    assert Hub([spec], keeper=False).keeper is None
    simulated = Hub([ChildSpec(id="a", argv=["sim"])], backend=SimulatedProcessBackend({}))
    assert simulated.keeper is None  # no real process to outlive the hub
    given = OrphanKeeper()
    hub = Hub([spec], services=[given])
    assert hub.keeper is None
    assert [given] == [s for s in hub.services if isinstance(s, OrphanKeeper)]
