"""The parent-death signal is set exactly when no orphan keeper covers the child.

A child carrying the mark of the keeper running now is started with one exec (no
``setpriv``): the keeper kills it once the hub is gone. Any other child — a bare
backend, a child without the mark, the hub's children while its keeper is down — gets
``PR_SET_PDEATHSIG`` as before. The child reports its own ``PR_GET_PDEATHSIG``.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest
import trio

from supervisor import ChildSpec, Hub
from supervisor._keeper import MARK_ENV, OrphanKeeper
from supervisor._process import _SETPRIV, OSProcessBackend, SpawnRequest

pytestmark = pytest.mark.skipif(
    _SETPRIV is None or not sys.platform.startswith("linux"), reason="setpriv, Linux only"
)

# Prints the parent-death signal the process runs with (prctl PR_GET_PDEATHSIG = 2).
PRINT_PDEATHSIG = (
    "import ctypes; v = ctypes.c_int(); "
    "ctypes.CDLL(None).prctl(2, ctypes.byref(v), 0, 0, 0); print(v.value, flush=True)"
)


async def _pdeathsig_of(backend: OSProcessBackend, env: dict[str, str]) -> int:
    request = SpawnRequest(child_id="probe", argv=(sys.executable, "-c", PRINT_PDEATHSIG), env=env)
    handle = backend.spawn(request)
    assert handle.stdout is not None and handle.stderr is not None
    out = b""
    with trio.fail_after(30):
        while chunk := await handle.stdout.receive_some():
            out += chunk
        await handle.wait()
    await handle.stdout.aclose()
    await handle.stderr.aclose()
    return int(out)


async def test_a_bare_backend_sets_the_parent_death_signal() -> None:
    assert signal.SIGKILL == await _pdeathsig_of(OSProcessBackend(), dict(os.environ))


async def test_a_child_with_the_running_keepers_mark_gets_none() -> None:
    backend = OSProcessBackend(keeper_mark="abc")
    marked = {**os.environ, MARK_ENV: "abc"}
    other = {**os.environ, MARK_ENV: "another keeper's"}

    assert 0 == await _pdeathsig_of(backend, marked)
    assert signal.SIGKILL == await _pdeathsig_of(backend, other)
    assert signal.SIGKILL == await _pdeathsig_of(backend, dict(os.environ))


async def test_the_hubs_keeper_sets_its_mark_while_its_process_lives() -> None:
    """The backend knows the keeper's mark from the keeper's start until it dies (then
    children get the signal again until the next keeper runs) and after the hub stops."""
    keeper = OrphanKeeper()
    spec = ChildSpec(id="a", argv=[sys.executable, "-c", "import time; time.sleep(100)"])
    hub = Hub([spec], services=[keeper])
    backend = hub.context.backend
    assert isinstance(backend, OSProcessBackend)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        assert keeper.mark == backend.keeper_mark
        first = keeper.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        with trio.fail_after(10):
            while backend.keeper_mark is not None:
                await trio.sleep(0.01)
        with trio.fail_after(10):
            while keeper.starts < 2:
                await trio.sleep(0.01)
        assert keeper.mark == backend.keeper_mark
        await hub.stop()
    assert backend.keeper_mark is None
