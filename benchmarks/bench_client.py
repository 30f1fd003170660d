"""How fast a client command starts: ``hubvisor status`` against no hub, against
``python -c "import click, rich.console"`` measured in the same run; 100 items
submitted by one ``hubvisor submit TYPE -`` against 100 ``hubvisor submit`` processes;
and N items submitted by ``supervisor.Client`` (one connection) and by
``supervisor.AsyncClient`` against ``hubvisor submit`` processes (issue 21: 0.28 s each).

Usage: python benchmarks/bench_client.py [-n 15] [--no-submit] [--clients 1000]
       [--spawns 50]

Target (issue 19): the client command takes at most 2x the baseline (median of N runs
each, interleaved, so both see the same machine). Prints the medians, the ratio and
whether the target is met. The command is run the way the ``hubvisor`` console script
runs it (``from supervisor._cli import main; main()``), exiting 3 for "no hub".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
    with serving(tmp) as sock:
        lines = "".join(json.dumps({"n": i}) + "\n" for i in range(items))
        one = timed([*HUBVISOR, "submit", "w", "-", "--socket", str(sock)], 0, stdin=lines)
        many = sum(
            timed([*HUBVISOR, "submit", "w", json.dumps({"n": i}), "--socket", str(sock)], 0)
            for i in range(items)
        )
        print(f"submit    {items} items, one `submit w -` (JSON lines)   {one * 1000:7.1f} ms")
        print(f"submit    {items} items, {items} `submit w PAYLOAD` runs    {many * 1000:7.1f} ms")


def bench_clients(tmp: Path, items: int, spawns: int) -> None:
    """N submits through Client and AsyncClient (one connection each) against
    ``spawns`` ``hubvisor submit`` processes, per item."""
    client_code = (
        "import sys, time; from supervisor import Client\n"
        "n = int(sys.argv[2]); t = time.perf_counter()\n"
        "with Client(sys.argv[1]) as hub:\n"
        "    ids = [hub.submit('w', {'n': i}) for i in range(n)]\n"
        "print(time.perf_counter() - t, len(set(ids)))\n"
    )
    async_code = (
        "import sys, time, trio; from supervisor import AsyncClient\n"
        "async def main():\n"
        "    n = int(sys.argv[2]); t = time.perf_counter()\n"
        "    async with AsyncClient(sys.argv[1]) as hub:\n"
        "        ids = [await hub.submit('w', {'n': i}) for i in range(n)]\n"
        "    print(time.perf_counter() - t, len(set(ids)))\n"
        "trio.run(main)\n"
    )
    with serving(tmp) as sock:
        took = {}
        for name, code in (("Client", client_code), ("AsyncClient", async_code)):
            whole = time.perf_counter()
            out = subprocess.run(
                [PY, "-c", code, str(sock), str(items)],
                env=ENV,
                cwd=CWD,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            whole = time.perf_counter() - whole
            if int(out[1]) != items:
                sys.exit(f"{name}: {out[1]} distinct ids for {items} submits")
            took[name] = float(out[0])
            print(
                f"submit    {items} items, {name + ':':12} {took[name]:7.3f} s in the client "
                f"({took[name] / items * 1e6:6.0f} us each; the whole process {whole:.2f} s)"
            )
        spawned = sum(
            timed([*HUBVISOR, "submit", "w", json.dumps({"n": i}), "--socket", str(sock)], 0)
            for i in range(spawns)
        )
        each = spawned / spawns
        print(
            f"submit    {spawns} `hubvisor submit` processes: {spawned:.2f} s "
            f"({each * 1000:.0f} ms each; {items} would take ~{each * items:.0f} s)"
        )
        print(
            f"ratio     a `hubvisor submit` process / a Client submit: "
            f"{each / (took['Client'] / items):.0f}x"
        )


@contextlib.contextmanager
def serving(tmp: Path) -> Iterator[Path]:
    """A ``hubvisor run`` hub serving at the yielded path; its one agent of type ``w`` never
    takes work, so the items stay queued (well under the 10,000 a type may have)."""
    spec = tmp / "spec.py"
    spec.write_text(
        "from supervisor import ChildSpec, PoolSpec\n"
        "spec = [PoolSpec(agent_type='w', template=ChildSpec(id='t', argv=['sleep', '1000']),"
        " size=1)]\n"
    )
    sock = tmp / "hub.sock"
    sock.unlink(missing_ok=True)
    hub = subprocess.Popen(
        [*HUBVISOR, "run", str(spec), "--socket", str(sock)],
        env={**ENV, "XDG_STATE_HOME": str(tmp / "state")},  # a store on disk stays in tmp
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
        yield sock
    finally:
        hub.terminate()
        hub.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=15, help="runs of each command")
    parser.add_argument("--no-submit", action="store_true", help="skip the submit comparison")
    parser.add_argument(
        "--clients", type=int, default=1000, metavar="N", help="submits through the clients"
    )
    parser.add_argument(
        "--spawns", type=int, default=50, metavar="M", help="`hubvisor submit` runs to compare"
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="the hubvisor tree to time")
    args = parser.parse_args()
    ENV["PYTHONPATH"] = str(args.root)
    with tempfile.TemporaryDirectory() as tmp:
        bench_status(args.n, Path(tmp))
        if not args.no_submit:
            bench_submit(Path(tmp))
            bench_clients(Path(tmp), args.clients, args.spawns)


if __name__ == "__main__":
    main()
