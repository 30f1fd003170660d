"""How fast a client command starts: ``hubvisor status`` against no hub, against
``python -c "import click, rich.console"`` measured in the same run; and 100 items
submitted by one ``hubvisor submit TYPE -`` against 100 ``hubvisor submit`` processes.

Usage: python benchmarks/bench_client.py [-n 15] [--no-submit]

Target (issue 19): the client command takes at most 2x the baseline (median of N runs
each, interleaved, so both see the same machine). Prints the medians, the ratio and
whether the target is met. The command is run the way the ``hubvisor`` console script
runs it (``from supervisor._cli import main; main()``), exiting 3 for "no hub".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
PY = sys.executable
HUBVISOR = [PY, "-c", "import sys; from supervisor._cli import main; sys.exit(main())"]
BASELINE = [PY, "-c", "import click, rich.console"]
TARGET = 2.0
CWD = tempfile.gettempdir()  # not the tree: `python -c` puts the working directory first


def timed(argv: list[str], expect: int, stdin: str | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=ENV, capture_output=True, text=True, input=stdin, cwd=CWD)
    took = time.perf_counter() - start
    if done.returncode != expect:
        sys.exit(f"{argv[3:]} exited {done.returncode}, not {expect}: {done.stderr}")
    return took


def bench_status(n: int, tmp: Path) -> None:
    status = [*HUBVISOR, "status", "--socket", str(tmp / "nobody.sock")]
    timed(BASELINE, 0), timed(status, 3)  # warm the page cache and .pyc files
    base, client = [], []
    for _ in range(n):  # interleaved: a burst of load hits both alike
        base.append(timed(BASELINE, 0))
        client.append(timed(status, 3))
    b, c = statistics.median(base), statistics.median(client)
    ratio = c / b
    print(f"baseline  python -c 'import click, rich.console'  median {b * 1000:6.1f} ms (n={n})")
    print(f"client    hubvisor status (no hub, exit 3)        median {c * 1000:6.1f} ms (n={n})")
    verdict = "met" if ratio <= TARGET else "missed"
    print(f"ratio     {ratio:.2f}x (target <= {TARGET:g}x: {verdict})")


def bench_submit(tmp: Path, items: int = 100) -> None:
    spec = tmp / "spec.py"
    spec.write_text(
        "from supervisor import ChildSpec, PoolSpec\n"
        "spec = [PoolSpec(agent_type='w', template=ChildSpec(id='t', argv=['sleep', '1000']),"
        " size=1)]\n"
    )
    sock = tmp / "hub.sock"
    hub = subprocess.Popen(
        [*HUBVISOR, "run", str(spec), "--socket", str(sock)],
        env=ENV,
        cwd=CWD,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if time.monotonic() > deadline or hub.poll() is not None:
                sys.exit("the hub did not start")
            time.sleep(0.05)
        lines = "".join(json.dumps({"n": i}) + "\n" for i in range(items))
        one = timed([*HUBVISOR, "submit", "w", "-", "--socket", str(sock)], 0, stdin=lines)
        many = sum(
            timed([*HUBVISOR, "submit", "w", json.dumps({"n": i}), "--socket", str(sock)], 0)
            for i in range(items)
        )
        print(f"submit    {items} items, one `submit w -` (JSON lines)   {one * 1000:7.1f} ms")
        print(f"submit    {items} items, {items} `submit w PAYLOAD` runs    {many * 1000:7.1f} ms")
    finally:
        hub.terminate()
        hub.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=15, help="runs of each command")
    parser.add_argument("--no-submit", action="store_true", help="skip the submit comparison")
    parser.add_argument("--root", type=Path, default=ROOT, help="the hubvisor tree to time")
    args = parser.parse_args()
    ENV["PYTHONPATH"] = str(args.root)
    with tempfile.TemporaryDirectory() as tmp:
        bench_status(args.n, Path(tmp))
        if not args.no_submit:
            bench_submit(Path(tmp))


if __name__ == "__main__":
    main()
