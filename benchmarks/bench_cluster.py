"""Hubs on a Redis Cluster: items/s with 1, 2 and 4 hubs on a 3-master Cluster, beside
the same hubs on one redis-server, in the same run.

Usage: python benchmarks/bench_cluster.py [--items 3000] [--types 6] [--agents 24]
                                          [--repeats 3] [--json FILE]

The Cluster is the test fixture's (tests/redis_cluster.py: 3 masters, a replica each,
``redis-server --cluster-enabled yes`` on loopback ports, no persistence); the single
server persists nothing either. Both are stopped at the end.

Each measurement: ``--types`` agent types spread evenly over the Cluster's masters, and
``--agents`` no-op agents in all (as many per type), split over the hubs (1 hub: all of
them; 4 hubs: a quarter each), so the work the agents do is the same and only the hubs'
coordination changes. The hubs (``hubvisor run``) start and are idle; then ``--items``
items are queued at once (``enqueue``, evenly over the types) and the rate is items / the
time from the first to the last outcome in the record (the servers' entry ids; every
node runs on this machine's clock). Each run uses a key prefix of its own. The
configurations alternate, ``--repeats`` times; the table gives medians with min-max.

On one machine, hubs standing in for hosts share its cores with their agents and every
Redis node: the figures compare configurations with each other, not with real hosts.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The same no-op agent, hubvisor and redis-server as the one-server benchmark.
from bench_work_redis import AGENT, HUBVISOR, REDIS_SERVER  # noqa: E402

from supervisor.control.client import request  # noqa: E402
from supervisor.work.redis import enqueue  # noqa: E402
from tests.redis_cluster import RedisClusterProcs, types_spread  # noqa: E402

POOL = """PoolSpec(agent_type={type!r}, size={size}, template=ChildSpec(
    id={type!r}, argv=[sys.executable, "-c", AGENT], agent_type={type!r}, shutdown=1.0)),
"""


def spec(types: list[str], size: int) -> str:
    pools = "".join(POOL.format(type=t, size=size) for t in types)
    return (
        "import sys\nfrom supervisor import ChildSpec, PoolSpec\n"
        f"AGENT = {AGENT!r}\ntree = [\n{pools}]\n"
    )


class Server:
    """One redis-server that persists nothing (as the Cluster's nodes)."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="hubvisor-bench-cluster-single-")
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", self.dir, "--loglevel", "warning"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=10)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class HubProc:
    """One ``hubvisor run``, started and waited for until its agents are idle."""

    def __init__(self, tmp: Path, hub_id: str, args: list[str], text: str) -> None:
        path = tmp / f"spec-{hub_id}.py"
        path.write_text(text)
        self.socket = tmp / f"{hub_id}.sock"
        argv = [HUBVISOR, "run", str(path), "--hub-id", hub_id, "--socket", str(self.socket)]
        self.hub_id = hub_id
        self.proc = subprocess.Popen(
            [*argv, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"hub {self.hub_id} exited with {self.proc.returncode}")
        try:
            status = request(self.socket, {"op": "status"}, 5)
        except Exception:
            return False
        return bool(status["agents"]) and all(a["status"] == "idle" for a in status["agents"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait(ok: Any, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def _rate(
    client: Any, url: list[str], tmp: Path, run: str, hubs: int, types: list[str], args: Any
) -> float:
    """items/s of ``hubs`` hubs draining ``args.items`` items of ``types``."""
    prefix = f"bench{run}"
    size = max(1, args.agents // len(types) // hubs)
    text = spec(types, size)
    common = [*url, "--redis-prefix", prefix, "--lease", "10"]
    procs = [HubProc(tmp, f"{run}h{n}", common, text) for n in range(hubs)]
    try:
        _wait(lambda: all(p.ready() for p in procs), "the hubs' agents to be idle")
        per = args.items // len(types)
        for t in types:
            enqueue(client, t, list(range(per)), prefix=prefix)
        logs = [f"{prefix}:work:{{{t}}}:log" for t in types]
        _wait(lambda: sum(client.xlen(k) for k in logs) >= per * len(types), "the last item")
        first = min(int(client.xrange(k, count=1)[0][0].split("-")[0]) for k in logs)
        last = max(int(client.xrevrange(k, count=1)[0][0].split("-")[0]) for k in logs)
    finally:
        for p in procs:
            p.stop()
    return (per * len(types) - 1) / max((last - first) / 1000, 1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--types", type=int, default=6, help="a multiple of 3")
    parser.add_argument("--agents", type=int, default=24, help="in all, split over the hubs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    counts = (1, 2, 4)
    rates: dict[str, list[float]] = {
        f"{where}/{n}": [] for where in ("single", "cluster") for n in counts
    }
    cluster = RedisClusterProcs()
    server = Server()
    tmp = Path(tempfile.mkdtemp(prefix="hubvisor-bench-cluster-"))
    try:
        cluster.start()
        types = types_spread(cluster, max(1, args.types // 3), stem="b")
        cc = cluster.client()
        sc = server.client()
        targets = {
            "single": (sc, ["--redis", server.url]),
            "cluster": (cc, ["--redis-cluster", cluster.seeds]),
        }
        run = 0
        for _ in range(args.repeats):
            for n in counts:
                for where, (client, url) in targets.items():
                    run += 1
                    rate = _rate(client, url, tmp, str(run), n, types, args)
                    rates[f"{where}/{n}"].append(rate)
                    print(f"  run {run}: {where}, {n} hub(s): {rate:,.0f} items/s", flush=True)
        cc.close()
        sc.close()
    finally:
        server.close()
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)
    _table(rates, counts, types, args)
    if args.json is not None:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": None}, "rates": rates}, indent=2)
        )


def _table(
    rates: dict[str, list[float]], counts: tuple[int, ...], types: list[str], args: Any
) -> None:
    print(
        f"\nitems/s, {args.items} items of {len(types)} types, {args.agents} no-op agents in "
        f"all; median (min-max) of {args.repeats}"
    )
    print(f"{'hubs':>5} | {'one redis-server':>26} | {'3-master Cluster':>26} | cluster/single")
    for n in counts:
        cells = []
        for where in ("single", "cluster"):
            r = sorted(rates[f"{where}/{n}"])
            cells.append(f"{statistics.median(r):7,.0f} ({r[0]:,.0f}-{r[-1]:,.0f})")
        ratio = statistics.median(rates[f"cluster/{n}"]) / statistics.median(rates[f"single/{n}"])
        print(f"{n:>5} | {cells[0]:>26} | {cells[1]:>26} | {ratio:.2f}x")


if __name__ == "__main__":
    main()
