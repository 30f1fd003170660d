"""No orphan ever: when the hub dies by any means, every process its agents started dies
within a second — a grandchild in its own session and a daemonized great-grandchild too.
Real ``hubvisor run`` processes, real descendants, observed through /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from supervisor import ChildSpec, Hub
from supervisor._keeper import MARK_ENV, OrphanKeeper

from ..helpers import alive
from ..redis_hubs import HUBVISOR, wait_for

pytestmark = pytest.mark.slow

# An agent that starts a grandchild in a session of its own (setsid) and a great-grandchild
# that daemonizes (double fork, setsid, chdir /, closes its fds), writes their pids to a
# file, and then stays up.
AGENT = r"""
import os, subprocess, sys, time
out = sys.argv[1]
grand = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"], start_new_session=True)
r, w = os.pipe()
if os.fork() == 0:  # the daemon: fork, setsid, fork again, tell its pid, detach
    os.setsid()
    if os.fork() == 0:
        os.write(w, str(os.getpid()).encode())
        os.close(w); os.close(r)
        os.chdir("/")
        for fd in (0, 1, 2):
            os.close(fd)
        time.sleep(1000)
    os._exit(0)
os.close(w)
daemon = int(os.read(r, 64))
with open(out + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {grand.pid} {daemon}")
os.rename(out + ".tmp", out)
print("ready", flush=True)
time.sleep(1000)
"""

SPEC = """
import sys
from supervisor import ChildSpec
AGENT = {agent!r}
tree = [ChildSpec(id="forker", argv=[sys.executable, "-c", AGENT, {out!r}], shutdown=1.0)]
"""


def _start(tmp_path: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    out = tmp_path / "pids"
    spec = tmp_path / "spec.py"
    spec.write_text(SPEC.format(agent=AGENT, out=str(out)))
    hub = subprocess.Popen(
        [HUBVISOR, "run", str(spec), "--socket", str(tmp_path / "s.sock")],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "hub.log").open("wb"),
    )
    wait_for(out.exists, 30, "the agent to start its descendants")
    pids = [int(p) for p in out.read_text().split()]
    assert all(alive(p) for p in pids)
    return hub, pids


def test_sigkill_of_the_hub_leaves_no_descendant_of_any_agent(tmp_path: Path) -> None:
    hub, pids = _start(tmp_path)
    agent, grandchild, daemon = pids
    # They really left: their own sessions, the daemon re-parented away from the agent.
    assert os.getsid(grandchild) == grandchild
    assert os.getsid(daemon) == os.getpgid(daemon) != os.getpgid(agent)
    killed = time.monotonic()
    hub.kill()
    hub.wait()
    wait_for(lambda: not any(alive(p) for p in pids), 5, "every descendant to die")
    took = time.monotonic() - killed
    assert took < 1.0, f"descendants outlived the hub by {took:.2f} s"


def test_a_graceful_stop_leaves_no_descendant_either(tmp_path: Path) -> None:
    hub, pids = _start(tmp_path)
    hub.send_signal(signal.SIGTERM)
    assert hub.wait(timeout=30) == 0
    wait_for(lambda: not any(alive(p) for p in pids), 5, "every descendant to die")


async def test_a_keeper_that_dies_is_replaced_and_the_agents_carry_the_mark() -> None:
    keeper = OrphanKeeper()
    spec = ChildSpec(id="a", argv=[sys.executable, "-c", "import time; time.sleep(100)"])
    hub = Hub([spec], services=[keeper])
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        (row,) = hub.which_children()
        assert row.info.pid is not None
        # The pid exists from the spawn on; its environment reads empty until its exec
        # is done (a race seen once in a full run): wait for the exec, then look.
        environ_file = Path(f"/proc/{row.info.pid}/environ")
        with trio.fail_after(10):
            while not (environ := environ_file.read_bytes().split(b"\0")) or environ == [b""]:
                await trio.sleep(0.01)
        assert f"{MARK_ENV}={keeper.mark}".encode() in environ
        first = keeper.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        with trio.fail_after(10):
            while keeper.starts < 2:
                await trio.sleep(0.02)
        assert keeper.pid not in (None, first)
        await hub.stop()
    assert keeper.pid is None
