"""A placeholder agent for ``hubvisor demo``: works, heartbeats, crashes now and then.

Run as ``python -m agents.placeholder --crash-rate 0.1``. It prints a line per unit of
"work", exits with code 1 at random with probability ``crash-rate`` per unit, and stops
cleanly on SIGTERM. Real agents replace it in a later release.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from types import FrameType


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="agents.placeholder")
    parser.add_argument("--crash-rate", type=float, default=0.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    me = os.environ.get("HUBVISOR_AGENT_ID", "agent")
    rng = random.Random(args.seed)

    class Stop(Exception):
        pass

    def on_term(signum: int, frame: FrameType | None) -> None:
        # Raise, rather than set a flag: time.sleep() resumes after a handler returns
        # (PEP 475), which would delay a graceful stop by up to one interval.
        raise Stop

    signal.signal(signal.SIGTERM, on_term)
    task = 0
    try:  # a SIGTERM may arrive as soon as "ready" is out, even inside print()
        print(f"{me}: ready", flush=True)
        while True:
            time.sleep(args.interval * (0.5 + rng.random()))
            task += 1
            if rng.random() < args.crash_rate:
                print(f"{me}: crashing on task {task}", file=sys.stderr, flush=True)
                return 1
            print(f"{me}: finished task {task}", flush=True)
    except Stop:
        print(f"{me}: stopping after {task} tasks", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
