"""No orphan ever: a keeper process that kills every process the hub's agents started
once the hub is gone, however it went.

What each layer covers:

* **Process groups + parent-death signal** (the runtime): each agent runs in its own
  process group; stopping it signals the whole group, and when the hub dies, the kernel
  SIGKILLs each *direct* child. Grandchildren that stayed in the group die with a group
  stop, but not with the hub. While a keeper runs, the agents carrying its mark are
  started without the parent-death signal (its ``setpriv`` exec cost every start about
  1 ms): the keeper covers them, and more.
* **The keeper** (this module): every agent is started with a mark in its environment
  (``HUBVISOR_KEEPER_MARK=<random>``), which its descendants inherit — whatever they do
  with sessions, process groups or double forks to daemonize. The keeper is a tiny
  stdlib-only process in its own session whose stdin is a pipe from the hub; the kernel
  closes that pipe when the hub exits by any means (SIGKILL included). At end of file the
  keeper SIGKILLs every process carrying the mark, again and again until none has been
  seen for a few rounds (a process forking meanwhile is caught on the next round), then
  exits. The hub restarts a keeper that dies while the hub runs.
* **Not covered**: a descendant that clears its environment (``env -i``) and leaves the
  agent's process group. Run the hub in a cgroup (``systemd-run --scope``, a unit with
  ``KillMode=control-group``, a container) to cover those too: cgroups are the only
  mechanism a process cannot leave.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["MARK_ENV", "OrphanKeeper"]

_log = logging.getLogger("hubvisor")

MARK_ENV = "HUBVISOR_KEEPER_MARK"
"""The environment variable that marks every process of the hub's agents."""

# The keeper itself: stdlib only (started with -I, so it starts in ~20 ms and imports
# nothing of the hub's). It waits for the end of its stdin, then sweeps.
_KEEPER = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
mark = sys.argv[1]
within = float(sys.argv[2])
while os.read(0, 65536):
    pass
needle = ("HUBVISOR_KEEPER_MARK=" + mark).encode()
me = os.getpid()
deadline = time.monotonic() + within
quiet = 0
killed = 0
while time.monotonic() < deadline and quiet < 5:
    found = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open("/proc/" + name + "/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            try:
                os.kill(int(name), signal.SIGKILL)
                found += 1
            except OSError:
                pass
    killed += found
    quiet = 0 if found else quiet + 1
    time.sleep(0.005)
if killed and len(sys.argv) > 3:
    sys.stderr.write("hubvisor keeper: killed %d processes the agents left behind\n" % killed)
"""


class OrphanKeeper:
    """The hub service that starts (and restarts) the keeper and marks every agent.

    Args:
        within: seconds the keeper keeps sweeping after the hub is gone (a descendant
            that forks faster than that could outlast it; none does in practice).

    ``hubvisor run``, ``hubvisor demo`` and ``Hub(spec)`` start one (``Hub(spec,
    keeper=False)``: none; ``Hub(spec, services=[OrphanKeeper(within=...)])``: this one).
    """

    name = "keeper"

    def __init__(self, *, within: float = 1.0) -> None:
        self.within = within
        self.mark = secrets.token_hex(16)
        self.starts = 0
        """How many keepers were started (more than 1: one died and was replaced)."""
        self.pid: int | None = None

    async def run(self, hub: Hub, *, task_status: trio.TaskStatus[None]) -> None:
        """Mark the agents (before the tree starts) and keep a keeper running."""
        hub.agents.add_env({MARK_ENV: self.mark})
        env = {k: v for k, v in os.environ.items() if k != MARK_ENV}
        argv = [sys.executable, "-I", "-c", _KEEPER, self.mark, str(self.within), "report"]
        from ._process import OSProcessBackend  # it imports this module

        backend = hub.context.backend
        started = False
        try:
            while True:
                proc = await trio.lowlevel.open_process(
                    argv,
                    stdin=subprocess.PIPE,
                    start_new_session=True,  # a signal to the hub's group does not reach it
                    env=env,
                )
                self.starts += 1
                self.pid = proc.pid
                if isinstance(backend, OSProcessBackend):  # it covers the hub's death now
                    backend.keeper_mark = self.mark
                if not started:
                    started = True
                    task_status.started()
                try:
                    await proc.wait()
                finally:
                    if isinstance(backend, OSProcessBackend):  # parent-death signal again
                        backend.keeper_mark = None
                    with trio.CancelScope(shield=True):
                        if proc.stdin is not None:
                            # The hub is stopping (this task is cancelled): the end of the
                            # pipe is the keeper's cue to sweep what the agents left.
                            await proc.stdin.aclose()
                        with trio.move_on_after(self.within + 10):
                            await proc.wait()
                    if proc.returncode is None:  # pragma: no cover - it exits at once
                        proc.kill()
                        with trio.CancelScope(shield=True), trio.move_on_after(10):
                            await proc.wait()  # reaped, not left a zombie of the hub
                _log.warning(
                    "orphan keeper (pid %s) ended (%s) while the hub runs; starting another",
                    proc.pid,
                    proc.returncode,
                )
                await trio.sleep(0.5)
        finally:
            self.pid = None
