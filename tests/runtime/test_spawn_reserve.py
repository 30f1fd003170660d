"""The fd reserve is let go only for a spawn that runs out of descriptors (issue 24).

A full fd table is covered end to end by ``test_stalls_and_stops.py::
test_fault5_a_full_fd_table_does_not_take_the_hub_down`` (mode ``reserve``: the restart
succeeds with the table full, through the retry with the reserve let go).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from supervisor._process import OSProcessBackend, SpawnRequest


async def test_a_spawn_with_room_keeps_the_reserve() -> None:
    """A spawn with descriptors to spare neither closes nor reopens the reserve's."""
    backend = OSProcessBackend()
    backend.reserve.open()
    try:
        held = list(backend.reserve._fds)
        assert len(held) == backend.reserve.size
        stats = [os.fstat(fd) for fd in held]
        handle = backend.spawn(
            SpawnRequest(child_id="t", argv=("/bin/true",), env={}, capture_output=True)
        )
        assert held == backend.reserve._fds
        assert [(s.st_dev, s.st_ino) for s in stats] == [
            (s.st_dev, s.st_ino) for s in map(os.fstat, held)
        ]
        status = await handle.wait()
        assert status.normal
        for stream in (handle.stdout, handle.stderr):
            assert stream is not None
            await stream.aclose()
    finally:
        backend.reserve.close()


async def test_a_partly_filled_reserve_is_topped_up_by_the_next_spawn() -> None:
    """A reserve short of descriptors (the table was full when it filled) takes them
    back after the next spawn, as it did when it was let go around every spawn."""
    backend = OSProcessBackend()
    backend.reserve.open()
    try:
        for _ in range(3):
            os.close(backend.reserve._fds.pop())
        handle = backend.spawn(
            SpawnRequest(child_id="t", argv=("/bin/true",), env={}, capture_output=False)
        )
        assert backend.reserve.size == len(backend.reserve._fds)
        assert (await handle.wait()).normal
    finally:
        backend.reserve.close()


FULL_TABLE = """
import os, resource, sys, trio
from supervisor._process import OSProcessBackend, SpawnRequest

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
backend = OSProcessBackend()
backend.reserve.open()
hog = []
try:
    while True:
        hog.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
handle = backend.spawn(
    SpawnRequest(child_id="t", argv=("/bin/true",), env={}, capture_output=True, notify=True)
)
print("spawned", handle.pid > 0)
for fd in hog:
    os.close(fd)
backend.reserve.top_up()
print("held", len(backend.reserve._fds))
print("status", trio.run(handle.wait).normal)
"""


def test_a_spawn_that_runs_out_of_descriptors_lets_the_reserve_go() -> None:
    """With the fd table full, a spawn (notify channel, both pipes) fails for want of
    descriptors, is tried again with the reserve let go, and succeeds; the reserve is
    whole again once descriptors are free."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", FULL_TABLE], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert 0 == proc.returncode, proc.stderr[-3000:]
    assert ["spawned True", "held 10", "status True"] == proc.stdout.split("\n")[:3]
