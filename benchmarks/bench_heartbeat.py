"""hubvisor's idle CPU with N agents heartbeating every second, beside no heartbeats.

Usage: python benchmarks/bench_heartbeat.py [-n 1000] [--idle 10] [--repeat 3]

Runs ``hubvisor run`` on one pool of N bash agents, observed from outside as in
``suite.py``, twice per repeat:

* ``heartbeat``: each agent writes ``HEARTBEAT`` to its notify channel every second
  (``heartbeat_timeout=3``, so the hub also runs a watchdog per agent);
* ``quiet``: the same agents with the notify channel but no heartbeat (they only sleep).

It reports the hub's CPU (all threads) over ``--idle`` seconds once every agent runs and
a settling pause has passed, as % of one core. The target (issue 10): under 5 % with
heartbeats at N = 1,000, under 0.1 % without. With ``HUBVISOR_BENCH_PYSPY=path/to/py-spy``
it then records 8 s of each hub with py-spy (raw collapsed stacks in the temp folder).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite import ROOT, _env, children, cpu_seconds, rss_mib

BASH = "/bin/bash"
PYSPY = os.environ.get("HUBVISOR_BENCH_PYSPY")  # a py-spy executable: profile each hub
AGENT = {
    "heartbeat": 'while :; do echo HEARTBEAT >&"$HUBVISOR_NOTIFY_FD"; sleep 1; done',
    "quiet": "while :; do sleep 1; done",
}


def run(kind: str, n: int, idle: float, settle: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="hvbench-hb-") as tmp:
        tree = Path(tmp) / "tree.py"
        timeout = "3.0" if kind == "heartbeat" else "None"
        tree.write_text(
            "from strategies import Intensity, NoBackoff\n"
            "from supervisor import ChildSpec, OutputSpec, PoolSpec, SupervisorSpec\n"
            f"template = ChildSpec(id='a', argv=[{BASH!r}, '-c', {AGENT[kind]!r}],\n"
            f"    start_period=0, shutdown=5, heartbeat_timeout={timeout})\n"
            "spec = SupervisorSpec(name='hb', intensity=Intensity(10**9, 1), children=[\n"
            f"    PoolSpec(agent_type='a', template=template, size={n}, max_size={n},\n"
            "             intensity=Intensity(10**9, 1), backoff=NoBackoff())])\n"
        )
        hub = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "run", str(tree), "--control-socket", "none"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_env(),
            cwd=ROOT,
        )
        try:
            deadline = time.monotonic() + 120
            while len(children(hub.pid)) < n:
                if time.monotonic() > deadline or hub.poll() is not None:
                    raise SystemExit(f"{kind}: the hub did not start {n} agents")
                time.sleep(0.05)
            time.sleep(settle)
            c0, w0 = cpu_seconds(hub.pid), time.perf_counter()
            time.sleep(idle)
            c1, w1 = cpu_seconds(hub.pid), time.perf_counter()
            if PYSPY:  # the profile command of docs/benchmarks.md, on the same hub
                out = f"{tempfile.gettempdir()}/hubvisor-heartbeat-{kind}.txt"
                record = [PYSPY, "record", "-r", "500", "-f", "raw", "-d", "8", "-o", out]
                subprocess.run([*record, "--pid", str(hub.pid)], capture_output=True)
                print(f"{kind}: py-spy profile in {out}")
            return max(0.0, c1 - c0) / (w1 - w0) * 100, rss_mib(hub.pid)
        finally:
            hub.send_signal(signal.SIGTERM)
            try:
                hub.wait(timeout=60)
            except subprocess.TimeoutExpired:
                hub.kill()
                hub.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows: dict[str, list[tuple[float, float]]] = {"heartbeat": [], "quiet": []}
    for _ in range(args.repeat):
        for kind in rows:
            rows[kind].append(run(kind, args.n, args.idle, args.settle))
    print(f"hubvisor with {args.n} bash agents, CPU over {args.idle:g} s, {args.repeat} runs")
    for kind, values in rows.items():
        cpu = [v[0] for v in values]
        rss = statistics.median(v[1] for v in values)
        runs = ", ".join(f"{c:.2f}" for c in cpu)
        cpu_median = statistics.median(cpu)
        print(f"{kind:10} CPU {cpu_median:6.2f} % of a core ({runs}); RSS {rss:.1f} MiB")


if __name__ == "__main__":
    main()
