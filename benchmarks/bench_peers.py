"""Start and stop N `sleep` children under hubvisor and under supervisord, same run.

Usage: python benchmarks/bench_peers.py [-n 200] [--repeat 3]

supervisord is installed into its own virtual environment (its import name,
``supervisor``, is also hubvisor's), at ``$HUBVISOR_PEER_VENV`` or
``/tmp/hubvisor-peer-venv``. Both run N ``sleep 1000`` programs with no start period
(supervisord: ``startsecs=0``), and the clock runs:

* start: from launching the daemon until every child runs (hubvisor: until the tree
  reports started; supervisord: until ``supervisorctl status`` shows N RUNNING);
* stop: from asking for shutdown (SIGTERM to the daemon) until the daemon exited.

Ratios are hubvisor / supervisord measured in this run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER = Path(os.environ.get("HUBVISOR_PEER_VENV", "/tmp/hubvisor-peer-venv"))
SLEEP = shutil.which("sleep") or "/bin/sleep"


def ensure_supervisord() -> Path:
    exe = PEER / "bin" / "supervisord"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER)], check=True)
        subprocess.run([str(PEER / "bin" / "pip"), "install", "-q", "supervisor"], check=True)
    return exe


def bench_supervisord(n: int, workdir: Path) -> tuple[float, float]:
    conf = workdir / "supervisord.conf"
    sock = workdir / "s.sock"
    conf.write_text(
        f"[unix_http_server]\nfile={sock}\n"
        f"[supervisord]\nnodaemon=true\nlogfile={workdir}/sd.log\npidfile={workdir}/sd.pid\n"
        "minfds=4096\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        f"[supervisorctl]\nserverurl=unix://{sock}\n"
        f"[program:sleep]\ncommand={SLEEP} 1000\nnumprocs={n}\n"
        "process_name=%(program_name)s-%(process_num)d\n"
        "startsecs=0\nstopwaitsecs=5\nautorestart=true\nstdout_logfile=NONE\nstderr_logfile=NONE\n"
    )
    t0 = time.perf_counter()
    daemon = subprocess.Popen(
        [str(PEER / "bin" / "supervisord"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ctl = [str(PEER / "bin" / "supervisorctl"), "-c", str(conf), "status"]
    while True:
        out = subprocess.run(ctl, capture_output=True, text=True).stdout
        if len(re.findall(r"\bRUNNING\b", out)) >= n:
            break
        time.sleep(0.05)
    started = time.perf_counter() - t0
    t0 = time.perf_counter()
    daemon.send_signal(signal.SIGTERM)
    daemon.wait()
    return started, time.perf_counter() - t0


def bench_hubvisor(n: int, workdir: Path) -> tuple[float, float]:
    spec = workdir / "tree.py"
    spec.write_text(
        "from supervisor import ChildSpec, PoolSpec\n"
        f"spec = [PoolSpec(agent_type='sleep', size={n}, max_size={n}, template=ChildSpec("
        f"id='t', argv=[{SLEEP!r}, '1000'], start_period=0, shutdown=5))]\n"
    )
    t0 = time.perf_counter()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "run", str(spec), "--control-socket", "none"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert daemon.stderr is not None
    for line in daemon.stderr:
        if b"hub started" in line:
            break
    started = time.perf_counter() - t0
    t0 = time.perf_counter()
    daemon.send_signal(signal.SIGTERM)
    daemon.stderr.read()
    daemon.wait()
    return started, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    ensure_supervisord()
    results: dict[str, list[tuple[float, float]]] = {"hubvisor": [], "supervisord": []}
    for _ in range(args.repeat):
        for name, bench in (("hubvisor", bench_hubvisor), ("supervisord", bench_supervisord)):
            with tempfile.TemporaryDirectory() as tmp:
                results[name].append(bench(args.n, Path(tmp)))
    med = {
        k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
        for k, v in results.items()
    }
    print(f"{args.n} sleep children, median of {args.repeat} runs, {os.cpu_count()} CPUs")
    print(f"{'daemon':<12} {'start s':>8} {'stop s':>8}")
    for name, (start, stop) in med.items():
        print(f"{name:<12} {start:8.3f} {stop:8.3f}")
    h, s = med["hubvisor"], med["supervisord"]
    print(f"hubvisor / supervisord: start {h[0] / s[0]:.2f}x, stop {h[1] / s[1]:.2f}x")


if __name__ == "__main__":
    main()
