"""Registry update throughput into Redis, batched and unbatched, against redis-benchmark.

Usage: python benchmarks/bench_registry.py [-n 20000] [--unbatched-n 3000] [--repeat 3]
       [--max-in-flight K]

Starts a private ``redis-server`` on a free loopback port (``--save '' --appendonly
no``), then measures, in the same run and against the same server:

* ``registry batched``: N agent updates (each a new agent: a ``ChildStarting`` event, so
  nothing coalesces) submitted to a running :class:`~supervisor.Registry` with a
  :class:`~supervisor.RedisMirror` (``batch_max=500``, ``batch_interval=0.1``), timed
  from the first submit until Redis holds all of them (``mirror.drain()``). With a
  backlog up to ``max_in_flight`` batches are sent before the first's replies are read
  (the mirror's default; ``--max-in-flight 1`` for one at a time).
* ``registry unbatched``: the same with ``batch_max=1``: one pipeline, and one trip
  through ``trio.to_thread``, per update.
* ``redis-benchmark``: ``-t set`` with one connection (``-c 1``), and with one
  connection pipelining 100 commands (``-c 1 -P 100``), as the server's own ceiling.

Each update writes HSET + PEXPIRE + SADD (agents) + SADD (type) + XADD (event stream),
so the report also gives Redis commands per second (from the server's
``total_commands_processed``). Ratios compare with redis-benchmark in the same run.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor import ChildStarting, Registry
from supervisor._registry_redis import RedisMirror

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_BENCHMARK = shutil.which("redis-benchmark") or "/usr/bin/redis-benchmark"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            if redis.Redis(port=port).ping():
                return proc
        except redis.RedisError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.02)


def commands(port: int) -> int:
    return int(redis.Redis(port=port).info("stats")["total_commands_processed"])


async def registry_run(
    port: int, n: int, batch_max: int, max_in_flight: int | None = None
) -> tuple[float, int]:
    """Seconds to get ``n`` new agents into Redis, and the Redis commands it took."""
    redis.Redis(port=port).flushdb()
    mirror = RedisMirror(
        f"redis://127.0.0.1:{port}/0", batch_max=batch_max, batch_interval=0.1, lease=300
    )
    if max_in_flight is not None:
        mirror.max_in_flight = max_in_flight
    registry = Registry(hub_id="bench", mirror=mirror)
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        await mirror.drain()  # the first (resync) write, not timed
        before = commands(port)
        t0 = time.perf_counter()
        for i in range(n):
            registry.submit(
                ChildStarting(
                    at=trio.current_time(),
                    supervisor="hub/bench",
                    child_id=f"agent-{i}",
                    pid=100_000 + i,
                    incarnation=1,
                    agent_type="worker",
                )
            )
        await registry.sync()
        ok = await mirror.drain()
        elapsed = time.perf_counter() - t0
        used = commands(port) - before
        assert ok, f"Redis failed: {mirror.last_error}"
        registry.final_flush_timeout = 0
        registry.stop()
    count = redis.Redis(port=port).scard("hubvisor:hub:bench:agents")
    assert count == n, f"Redis holds {count} agents, expected {n}"
    return elapsed, used


def redis_benchmark(port: int, *extra: str) -> float:
    out = subprocess.run(
        [REDIS_BENCHMARK, "-p", str(port), "-q", "-t", "set", *extra],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"SET: ([\d.]+) requests per second", out.replace("\r", "\n"))
    if match is None:
        raise RuntimeError(f"cannot read redis-benchmark output: {out!r}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="updates, batched runs")
    parser.add_argument("--unbatched-n", type=int, default=3_000, help="updates, unbatched")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--max-in-flight", type=int, default=None, help="batches in flight (default: the mirror's)"
    )
    args = parser.parse_args()
    port = free_port()
    server = start_server(port)
    try:
        rows: dict[str, list[float]] = {}
        cmds: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            for name, n, batch in (
                ("registry batched", args.n, 500),
                ("registry unbatched", args.unbatched_n, 1),
            ):
                elapsed, used = trio.run(registry_run, port, n, batch, args.max_in_flight)
                rows.setdefault(name, []).append(n / elapsed)
                cmds.setdefault(name, []).append(used / elapsed)
            rows.setdefault("redis-benchmark SET -c 1", []).append(
                redis_benchmark(port, "-c", "1", "-n", "50000")
            )
            rows.setdefault("redis-benchmark SET -c 1 -P 100", []).append(
                redis_benchmark(port, "-c", "1", "-P", "100", "-n", "1000000")
            )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{'':34} {'median/s':>12} {'cmd/s':>12}   runs")
    for name, values in rows.items():
        c = f"{statistics.median(cmds[name]):12,.0f}" if name in cmds else f"{'':12}"
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"{name:34} {med[name]:12,.0f} {c}   {runs}")
    b, u = med["registry batched"], med["registry unbatched"]
    print()
    print(f"batched / unbatched:                     {b / u:6.1f}x")
    unbatched_cmds = statistics.median(cmds["registry unbatched"])
    batched_cmds = statistics.median(cmds["registry batched"])
    plain, piped = med["redis-benchmark SET -c 1"], med["redis-benchmark SET -c 1 -P 100"]
    print(f"registry unbatched upd/s / SET -c 1:      {u / plain:6.3f}")
    print(f"registry unbatched cmd/s / SET -c 1:      {unbatched_cmds / plain:6.3f}")
    print(f"registry batched upd/s / SET -c 1:        {b / plain:6.3f}")
    print(f"registry batched cmd/s / SET -c 1 -P 100: {batched_cmds / piped:6.3f}")


if __name__ == "__main__":
    main()
