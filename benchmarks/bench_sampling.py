"""What checking resource limits costs: one pass of the /proc sampler over N agent
process groups, as CPU time and as a share of one core at one check a second.

Usage: python benchmarks/bench_sampling.py [-n 1000] [--passes 10]

N ``sleep`` processes, each in a process group of its own (as agents are), then
``--passes`` calls of ``supervisor._proc.sample_groups`` (the reader LimitsService and
the metrics endpoint use), timed with ``time.process_time`` (CPU, not wall). Baseline in
the same run: one ``os.listdir('/proc')``, the floor of any /proc-based sampler.
Target (issue 11): sampling 1,000 agents once a second under 2 % of a core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor._proc import sample_groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=10)
    args = parser.parse_args()
    procs = [subprocess.Popen(["sleep", "1000"], start_new_session=True) for _ in range(args.n)]
    try:
        pgids = [p.pid for p in procs]
        sample_groups(pgids)  # warm the page cache of /proc
        costs, floors = [], []
        for _ in range(args.passes):
            t = time.process_time()
            found = sample_groups(pgids)
            costs.append(time.process_time() - t)
            t = time.process_time()
            os.listdir("/proc")
            floors.append(time.process_time() - t)
        assert len(found) == args.n, len(found)
        cost = statistics.median(costs)
        print(
            f"{args.n} groups, {len(os.listdir('/proc'))} /proc entries: one pass "
            f"{cost * 1000:.1f} ms CPU (min {min(costs) * 1000:.1f}, max {max(costs) * 1000:.1f}) "
            f"= {cost * 100:.2f} % of a core at one check a second; listdir(/proc) alone "
            f"{statistics.median(floors) * 1000:.2f} ms"
        )
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


if __name__ == "__main__":
    main()
