"""Durable work on Redis Streams: throughput, reclaim time after a hub SIGKILL, and what a
redis-server SIGKILL loses under each persistence setting; baselines in the same run.

Usage: python benchmarks/bench_work_redis.py [--agents 20] [--items 3000] [--reclaims 5]
                                             [--lease 1.0] [--loss] [--json FILE]
       python benchmarks/bench_work_redis.py --wait-cost [--json FILE]
       python benchmarks/bench_work_redis.py --in-process N [--agents 20] [--items 3000]

A private ``redis-server`` (``appendonly yes``, ``appendfsync everysec``) on a free
loopback port serves every measurement; it is stopped at the end.

* Throughput, items/s through ``--agents`` no-op agents: the in-memory queue (one hub in
  this process) beside the Redis queue (one hub in this process, the same way: submit
  all, wait for the last completion); then ``hubvisor run --redis`` processes, one and
  two sharing the Redis, draining ``--items`` items preloaded into the stream (timed
  from the first to the last outcome in the record, by the server's entry ids). Beside
  them: ``redis-benchmark`` on the same server (SET and XADD, one connection, no
  pipelining: the round-trip floor a hub round pays).
* Reclaim: hub A (2 agents busy for 30 s) and hub B share the Redis with ``--lease``;
  SIGKILL A, and time until B's agents hold both items (the server's clock decides
  when a lease ran out: expected lease .. lease x 1.25 plus a round).
* ``--loss``: for no persistence, ``everysec`` and ``always``: submit 200 items through
  ``hubvisor submit``'s op, SIGKILL redis-server right after the last answer, restart
  it, count the items that survived.
* ``--in-process N`` (alone): N runs of the memory queue and the Redis queue in turn,
  one hub in this process each (as the suite's target, issue 24): items/s, the hub's and
  redis-server's CPU per item in the timed window, and the ratio of each round.
* ``--wait-cost`` (alone): a master and one replica; one hub in this process submits,
  awaiting each submit until stored, without and with ``WAIT 1`` (``--redis-replicas
  1``), alternating in the same run: ms per acknowledged submit, and a batch's rate.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor import ChildSpec, Hub, MemoryWorkQueue, PoolSpec, WorkService  # noqa: E402
from supervisor.control.client import request  # noqa: E402
from supervisor.work.redis import RedisWorkQueue, enqueue  # noqa: E402

HUBVISOR = str(Path(sys.executable).with_name("hubvisor"))
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_BENCHMARK = shutil.which("redis-benchmark") or "/usr/bin/redis-benchmark"

# A no-op agent (answers every ASSIGN at once); with {"sleep": s} it sleeps first.
AGENT = r"""
import json, os, socket, time
s = socket.socket(fileno=int(os.environ["HUBVISOR_NOTIFY_FD"]))
s.send(b"HELLO=1"); s.send(b"READY")
while True:
    data = s.recv(65536)
    if not data or data == b"STOP":
        break
    if data.startswith(b"ASSIGN="):
        a = json.loads(data[7:])
        time.sleep((a["payload"] or {}).get("sleep", 0) if isinstance(a["payload"], dict) else 0)
        s.send(b"RESULT=" + json.dumps({"item": a["item"], "attempt": a["attempt"],
                                          "result": 1}, separators=(",", ":")).encode())
"""

SPEC = """
import sys
from supervisor import ChildSpec, PoolSpec
AGENT = {agent!r}
tree = [PoolSpec(agent_type="{type}", size={size}, template=ChildSpec(
    id="{type}", argv=[sys.executable, "-c", AGENT], agent_type="{type}", shutdown=1.0))]
"""


class Server:
    """A private redis-server with its own data directory."""

    def __init__(self, fsync: str | None = "everysec") -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="hubvisor-bench-redis-")
        self.fsync = fsync
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.extra: list[str] = []  # more redis-server arguments (e.g. --replicaof)

    def start(self) -> Server:
        persist = ["--appendonly", "no"]
        if self.fsync is not None:
            persist = ["--appendonly", "yes", "--appendfsync", self.fsync]
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--dir", self.dir, *persist, "--loglevel", "warning", *self.extra]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=10)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


def _pool(agent_type: str, size: int) -> PoolSpec:
    tpl = ChildSpec(id=agent_type, argv=[sys.executable, "-c", AGENT], agent_type=agent_type)
    return PoolSpec(agent_type=agent_type, size=size, template=tpl)


async def _in_process(queue: Any, agents: int, items: int) -> float:
    """Items/s through one hub in this process: submit all, wait for the last completion."""
    return (await _window(queue, agents, items))["rate"]


async def _window(queue: Any, agents: int, items: int, server: Any = None) -> dict[str, float]:
    """:func:`_in_process`'s run, with the CPU it cost per item in the timed window: this
    process (the hub: its trio thread and the store's worker thread) and, given the
    ``server`` (a redis client), redis-server (``INFO cpu``)."""
    hub = Hub([_pool("w", agents)], work=WorkService(queue), hub_id="bench")
    done = hub.bus.subscribe(kinds=("work_completed",))
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        # every agent idle first
        while sum(1 for r in hub.which_children() if r.info.pid) < agents:
            await trio.sleep(0.01)
        await trio.sleep(0.5)
        server_cpu = _server_cpu(server)
        cpu, start = time.process_time(), time.perf_counter()
        for n in range(items):
            hub.work.submit("w", n)
        count = 0
        async for _event in done:
            count += 1
            if count == items:
                break
        took = time.perf_counter() - start
        cpu, server_cpu = time.process_time() - cpu, _server_cpu(server) - server_cpu
        await hub.stop()
    return {
        "rate": items / took,
        "hub_us": cpu / items * 1e6,
        "server_us": server_cpu / items * 1e6,
    }


def _server_cpu(client: Any) -> float:
    """Seconds of CPU redis-server has used (0 without a client)."""
    if client is None:
        return 0.0
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _alternating(rounds: int, agents: int, items: int) -> dict[str, Any]:
    """``rounds`` runs of the memory queue and the Redis queue in turn (one hub in this
    process, the same way, a private redis-server): each run's rate, CPU per item, and
    the Redis queue's rate over the memory queue's of the same round."""
    server = Server(fsync="everysec").start()
    runs: dict[str, list[dict[str, float]]] = {"memory": [], "redis": []}
    try:
        client = server.client()
        for _ in range(rounds):
            runs["memory"].append(trio.run(_window, MemoryWorkQueue(), agents, items))
            client.flushall()
            runs["redis"].append(
                trio.run(_window, RedisWorkQueue(server.url), agents, items, client)
            )
    finally:
        server.close()
    ratios = [r["rate"] / m["rate"] for r, m in zip(runs["redis"], runs["memory"], strict=True)]
    return {"runs": runs, "ratios": ratios}


def _print_alternating(result: dict[str, Any], agents: int, items: int) -> None:
    def show(values: list[float], fmt: str) -> str:
        return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

    runs = result["runs"]
    print(f"items/s through {agents} no-op agents, {items} items, one hub in process, "
          f"{len(runs['redis'])} alternating runs: median (min-max)")  # fmt: skip
    for name in ("memory", "redis"):
        rs = runs[name]
        line = f"  {name:7s} {show([r['rate'] for r in rs], ',.0f')} items/s, hub CPU "
        line += f"{show([r['hub_us'] for r in rs], '.0f')} us/item"
        if name == "redis":
            line += f", redis-server CPU {show([r['server_us'] for r in rs], '.0f')} us/item"
        print(line)
    print(f"  Redis / memory, same round: {show(result['ratios'], '.2f')}")


class HubProc:
    def __init__(self, tmp: Path, hub_id: str, url: str, size: int, lease: float, kind: str = "w"):
        spec = tmp / f"spec-{kind}-{size}.py"
        spec.write_text(SPEC.format(agent=AGENT, type=kind, size=size))
        self.socket = tmp / f"{hub_id}.sock"
        argv = [HUBVISOR, "run", str(spec), "--redis", url, "--hub-id", hub_id]
        argv += ["--lease", str(lease), "--socket", str(self.socket)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                status = request(self.socket, {"op": "status"}, 5)
                if status["agents"] and all(a["status"] == "idle" for a in status["agents"]):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"hub {hub_id} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def _drain_rate(server: Server, tmp: Path, hubs: int, agents: int, items: int) -> float:
    client = server.client()
    client.flushall()
    enqueue(client, "w", list(range(items)))
    procs = [HubProc(tmp, f"h{i}", server.url, agents, 10.0) for i in range(hubs)]
    key = "hubvisor:work:{w}:log"
    deadline = time.monotonic() + 300
    while client.xlen(key) < items and time.monotonic() < deadline:
        time.sleep(0.05)
    first = client.xrange(key, count=1)[0][0]
    last = client.xrevrange(key, count=1)[0][0]
    for p in procs:
        p.stop()
    ms = int(last.split("-")[0]) - int(first.split("-")[0])
    return (items - 1) / max(ms / 1000, 1e-3)


def _redis_benchmark(port: int) -> dict[str, float]:
    out = {}
    for name, cmd in (("SET", ["-t", "set"]), ("XADD", ["XADD", "benchstream", "*", "f", "v"])):
        run = subprocess.run(
            [REDIS_BENCHMARK, "-p", str(port), "-c", "1", "-n", "50000", "-q", *cmd],
            capture_output=True,
            text=True,
            timeout=120,
        )
        found = re.findall(r"([\d.]+) requests per second", run.stdout)
        out[name] = float(found[-1]) if found else float("nan")
    return out


def _reclaim_once(server: Server, tmp: Path, lease: float) -> float:
    client = server.client()
    client.flushall()
    a = HubProc(tmp, "A", server.url, 2, lease)
    b = HubProc(tmp, "B", server.url, 2, lease)
    b.proc.send_signal(signal.SIGSTOP)  # A takes both items
    ids = enqueue(client, "w", [{"sleep": 30}, {"sleep": 30}])
    keys = [f"hubvisor:work:{{w}}:item:{i}" for i in ids]
    while not all(client.hget(k, "st") == "assigned" for k in keys):
        time.sleep(0.01)
    b.proc.send_signal(signal.SIGCONT)
    a.proc.kill()
    killed = time.monotonic()
    a.proc.wait()
    while not all(
        client.hget(k, "st") == "assigned" and client.hget(k, "hub") == "B" for k in keys
    ):
        time.sleep(0.005)
    took = time.monotonic() - killed
    b.stop()
    return took


def _loss(tmp: Path, fsync: str | None, items: int = 200) -> int:
    server = Server(fsync).start()
    try:
        hub = HubProc(tmp, "L", server.url, 1, 10.0, kind="other")  # takes no "w" work
        for n in range(items):
            request(hub.socket, {"op": "submit", "type": "other-not-served", "payload": n}, 10)
        server.kill()
        hub.proc.kill()  # it would rewrite what it still knows: measure Redis alone
        hub.proc.wait()
        server.start()
        client = server.client()
        kept = client.xlen("hubvisor:work:{other-not-served}:q")
        return items - kept
    finally:
        server.close()


async def _submit_cost(url: str, replicas: int, sequential: int, batch: int) -> dict[str, float]:
    """One hub in this process (no agent of the submitted type): ``sequential`` submits,
    each awaited until stored (ms per acknowledged submit, median and p99), then a batch
    of ``batch`` submitted at once and awaited (stored items/s)."""
    hub = Hub([_pool("idle", 1)], work=WorkService(RedisWorkQueue(url, replicas=replicas)))
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await trio.sleep(0.5)
        took = []
        for n in range(sequential):
            start = time.perf_counter()
            item = hub.work.submit("w", n)
            assert await hub.work.stored(item.id)
            took.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        items = [hub.work.submit("w", n) for n in range(batch)]
        for item in items:
            assert await hub.work.stored(item.id, 30)
        rate = batch / (time.perf_counter() - start)
        await hub.stop()
    took.sort()
    return {
        "median_ms": statistics.median(took),
        "p99_ms": took[int(len(took) * 0.99) - 1],
        "batch_per_s": rate,
    }


def _wait_cost(rounds: int, sequential: int, batch: int) -> dict[str, Any]:
    """``--redis-replicas``: the cost of ``WAIT 1`` per submit, with one replica linked to
    the master, alternating without and with WAIT in the same run."""
    master = Server(fsync=None).start()
    replica = Server(fsync=None)
    replica.extra = ["--replicaof", "127.0.0.1", str(master.port)]
    replica.start()
    try:
        deadline = time.monotonic() + 30
        while replica.client().info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not link to the master")
            time.sleep(0.05)
        runs: dict[str, list[dict[str, float]]] = {"0": [], "1": []}
        for _ in range(rounds):
            for n in (0, 1):
                master.client().flushall()
                runs[str(n)].append(trio.run(_submit_cost, master.url, n, sequential, batch))
    finally:
        replica.close()
        master.close()
    return {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}


def _print_wait_cost(cost: dict[str, Any], sequential: int, batch: int) -> None:
    print(f"--redis-replicas: one submit awaited until stored ({sequential} in a row), and")
    print(f"{batch} submitted at once; medians of the rounds, one replica on loopback:")
    for n, label in (("0", "no WAIT          "), ("1", "--redis-replicas 1")):
        c = cost[n]
        print(
            f"  {label}: {c['median_ms']:6.2f} ms per submit (p99 {c['p99_ms']:6.2f} ms), "
            f"batch {c['batch_per_s']:7,.0f} stored/s"
        )
    extra = cost["1"]["median_ms"] - cost["0"]["median_ms"]
    print(f"  WAIT adds {extra:+.2f} ms per acknowledged submit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--reclaims", type=int, default=5)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--loss", action="store_true", help="also measure the loss windows")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--in-process",
        type=int,
        default=0,
        metavar="N",
        help="only N alternating runs of the memory and Redis queues through one hub in "
        "process, with CPU per item (issue 24's target)",
    )
    parser.add_argument(
        "--wait-cost",
        action="store_true",
        help="only measure the cost of --redis-replicas 1 (WAIT) per submit",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.in_process:
        alternating = _alternating(args.in_process, args.agents, args.items)
        _print_alternating(alternating, args.agents, args.items)
        if args.json is not None:
            args.json.write_text(json.dumps({"in_process": alternating}, indent=2))
        return
    if args.wait_cost:
        cost = _wait_cost(rounds=3, sequential=300, batch=2000)
        _print_wait_cost(cost, 300, 2000)
        if args.json is not None:
            args.json.write_text(json.dumps({"wait_cost": cost}, indent=2))
        return
    results: dict[str, Any] = {"agents": args.agents, "items": args.items}
    server = Server().start()
    tmp = Path(tempfile.mkdtemp(prefix="hubvisor-bench-work-redis-"))
    try:
        results["redis_benchmark"] = _redis_benchmark(server.port)
        results["memory_in_process"] = trio.run(
            _in_process, MemoryWorkQueue(), args.agents, args.items
        )
        server.client().flushall()
        results["redis_in_process"] = trio.run(
            _in_process, RedisWorkQueue(server.url), args.agents, args.items
        )
        results["redis_one_hub"] = _drain_rate(server, tmp, 1, args.agents, args.items)
        results["redis_two_hubs"] = _drain_rate(server, tmp, 2, args.agents // 2, args.items)
        reclaims = [_reclaim_once(server, tmp, args.lease) for _ in range(args.reclaims)]
        results["reclaim_s"] = reclaims
        if args.loss:
            results["loss"] = {str(f): _loss(tmp, f) for f in (None, "everysec", "always")}
    finally:
        server.close()
        shutil.rmtree(tmp, ignore_errors=True)
    rb = results["redis_benchmark"]
    print(
        f"redis-benchmark, same server, 1 connection: SET {rb['SET']:,.0f}/s, "
        f"XADD {rb['XADD']:,.0f}/s"
    )
    print(f"items/s through {args.agents} no-op agents, {args.items} items:")
    print(f"  in-memory queue, one hub (in process):   {results['memory_in_process']:8,.0f}")
    print(
        f"  Redis queue, one hub (in process):       {results['redis_in_process']:8,.0f}"
        f"  ({results['redis_in_process'] / results['memory_in_process']:.2f}x in-memory)"
    )
    print(f"  Redis, one `hubvisor run` (drain):       {results['redis_one_hub']:8,.0f}")
    print(
        f"  Redis, two `hubvisor run` sharing it:    {results['redis_two_hubs']:8,.0f}"
        f"  ({args.agents // 2} agents each)"
    )
    r = sorted(results["reclaim_s"])
    print(
        f"reclaim after SIGKILL of a hub, lease {args.lease:g} s, {len(r)} runs: "
        f"min {r[0]:.2f} s, median {statistics.median(r):.2f} s, max {r[-1]:.2f} s"
    )
    if "loss" in results:
        for setting, lost in results["loss"].items():
            print(f"redis-server SIGKILL, persistence {setting}: lost {lost} of 200 submitted")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
