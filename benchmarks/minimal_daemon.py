"""The reference: a minimal event-driven process supervisor, about 50 lines.

Usage: python benchmarks/minimal_daemon.py N PROGRAM [ARGS...]

Starts N copies of PROGRAM (stdio to /dev/null, no shell, inherited environment), then
blocks in ``os.wait()`` and starts a replacement the moment any copy exits. SIGTERM or
SIGINT: SIGTERM to every copy, wait for all of them, exit 0.

It does nothing hubvisor does beyond that (no process groups, no parent-death signal, no
output capture, no backoff, no events, no control socket): it is what a supervisor
costs when it does only the supervising, so the benchmark suite (``suite.py``) gives
every figure as a ratio to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


class _Stop(Exception):
    pass


def _on_signal(signum: int, frame: object) -> None:
    raise _Stop


def main() -> None:
    n, argv = int(sys.argv[1]), sys.argv[2:]
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    live: dict[int, subprocess.Popen[bytes]] = {}

    def start() -> None:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        live[proc.pid] = proc

    try:
        for _ in range(n):
            start()
        while True:
            pid, _status = os.wait()
            if live.pop(pid, None) is not None:
                start()
    except _Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in live.values():
            proc.send_signal(signal.SIGTERM)
        for proc in live.values():
            proc.wait()


if __name__ == "__main__":
    main()
