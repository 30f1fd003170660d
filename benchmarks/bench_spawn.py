"""Start and stop N `sleep` children: hubvisor against plain subprocess, same run.

Usage: python benchmarks/bench_spawn.py [-n 1000] [--repeat 3]

Prints medians and ratios against the baseline measured in the same run (plain
``subprocess.Popen`` with no process group and no parent-death signal), so the numbers
compare across noisy machines. Measures:

* ``popen``: the baseline.
* ``popen+preexec``: the parent-death signal set from a ``preexec_fn`` (no vfork).
* ``popen+setpriv``: the mechanism hubvisor uses (own group, ``setpriv --pdeathsig``).
* ``hubvisor``: a pool of N children under a Hub: start = until every child has
  spawned and the pool reported started; stop = ``hub.stop()`` (SIGTERM to every group
  concurrently, wait, reap).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor import ChildSpec, Hub, PoolSpec

SLEEP = shutil.which("sleep") or "/bin/sleep"
SETPRIV = shutil.which("setpriv")


def _pdeathsig() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def bench_popen(n: int, **kw: object) -> tuple[float, float]:
    argv: list[str] = kw.pop("argv", [SLEEP, "1000"])  # type: ignore[assignment]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
        for _ in range(n)
    ]
    started = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()
    return started, time.perf_counter() - t0


def bench_hub(n: int) -> tuple[float, float]:
    template = ChildSpec(id="t", argv=[SLEEP, "1000"], shutdown=5.0, start_period=0.0)
    pool = PoolSpec(agent_type="sleep", template=template, size=n, max_size=n)
    hub = Hub([pool])
    times: dict[str, float] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            t0 = time.perf_counter()
            await nursery.start(hub.serve)
            times["start"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            await hub.stop()
            times["stop"] = time.perf_counter() - t0

    trio.run(main)
    return times["start"], times["stop"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cases: dict[str, Callable[[], tuple[float, float]]] = {
        "popen": lambda: bench_popen(args.n),
        "popen+preexec": lambda: bench_popen(args.n, process_group=0, preexec_fn=_pdeathsig),
        "hubvisor": lambda: bench_hub(args.n),
    }
    if SETPRIV:
        cases["popen+setpriv"] = lambda: bench_popen(
            args.n,
            process_group=0,
            argv=[SETPRIV, "--pdeathsig", "KILL", "--", SLEEP, "1000"],
        )
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    for _ in range(args.repeat):
        for name, case in cases.items():  # interleaved, so drift hits every case alike
            results[name].append(case())
    base_start = statistics.median(r[0] for r in results["popen"])
    base_stop = statistics.median(r[1] for r in results["popen"])
    print(f"{args.n} children, median of {args.repeat} runs, {os.cpu_count()} CPUs")
    print(f"{'case':<15} {'start s':>8} {'/s':>7} {'x base':>7} {'stop s':>8} {'x base':>7}")
    for name, rows in results.items():
        start = statistics.median(r[0] for r in rows)
        stop = statistics.median(r[1] for r in rows)
        print(
            f"{name:<15} {start:8.3f} {args.n / start:7.0f} {start / base_start:7.2f} "
            f"{stop:8.3f} {stop / base_stop:7.2f}"
        )


if __name__ == "__main__":
    main()
