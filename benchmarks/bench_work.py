"""Work dispatch: latency from submit to an idle agent's receipt, and items per second
through a pool of no-op agents; each beside a baseline measured in the same run.

Usage: python benchmarks/bench_work.py [--agents 100] [--items 20000] [--latency 500]

* Latency: one idle agent; submit an item, the agent notes ``time.monotonic()`` (the
  same clock across processes) when the ASSIGN arrives and answers at once. The
  baseline is the transport floor: the same agent program answering a raw record sent
  by a plain trio loop on its own socketpair, no hub.
* Throughput: ``--agents`` no-op agents under one hub; submit ``--items`` at once and
  wait for the last completion. The baseline: the same agents fed by a minimal trio
  dispatcher (one record out, one back per item) on plain socketpairs.

Targets (issue 8): latency p50 under 2 ms in-memory; over 5,000 items/s with 100 agents.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor import ChildSpec, Hub, PoolSpec

# The no-op agent: HELLO, READY, then answer every ASSIGN (or raw "X") at once, with the
# receipt time. It speaks the protocol on the raw socket: no imports beyond the stdlib.
AGENT = r"""
import json, os, socket, time
s = socket.socket(fileno=int(os.environ["HUBVISOR_NOTIFY_FD"]))
s.send(b"HELLO=1"); s.send(b"READY")
while True:
    data = s.recv(65536)
    t = time.monotonic()
    if not data or data == b"STOP":
        break
    if data.startswith(b"ASSIGN="):
        a = json.loads(data[7:])
        s.send(b"RESULT=" + json.dumps({"item": a["item"], "attempt": a["attempt"],
                                          "result": t}, separators=(",", ":")).encode())
    elif data.startswith(b"X"):
        s.send(b"Y%r" % t)
"""


def _spawn_raw(n: int) -> tuple[list[subprocess.Popen[bytes]], list[socket.socket]]:
    procs, socks = [], []
    for _ in range(n):
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ, HUBVISOR_NOTIFY_FD=str(child.fileno()))
        procs.append(
            subprocess.Popen([sys.executable, "-c", AGENT], env=env, pass_fds=[child.fileno()])
        )
        child.close()
        socks.append(parent)
    return procs, socks


async def _raw_ready(sock: trio.socket.SocketType) -> None:
    assert await sock.recv(100) == b"HELLO=1"
    assert await sock.recv(100) == b"READY"


async def baseline_latency(samples: int) -> list[float]:
    procs, socks = _spawn_raw(1)
    sock = trio.socket.from_stdlib_socket(socks[0])
    try:
        await _raw_ready(sock)
        lat = []
        for _ in range(samples):
            t0 = time.monotonic()
            await sock.send(b"X")
            answer = await sock.recv(100)
            lat.append(float(answer[1:]) - t0)
        return lat
    finally:
        sock.close()
        for p in procs:
            p.wait()


async def baseline_throughput(agents: int, items: int) -> float:
    procs, socks = _spawn_raw(agents)
    tsocks = [trio.socket.from_stdlib_socket(s) for s in socks]
    try:
        for s in tsocks:
            await _raw_ready(s)
        left = items
        t0 = time.monotonic()

        async def feed(s: trio.socket.SocketType) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await s.send(b"X")
                await s.recv(100)

        async with trio.open_nursery() as nursery:
            for s in tsocks:
                nursery.start_soon(feed, s)
        return items / (time.monotonic() - t0)
    finally:
        for s in tsocks:
            s.close()
        for p in procs:
            p.wait()


def _hub(agents: int) -> Hub:
    template = ChildSpec(id="t", argv=[sys.executable, "-c", AGENT], shutdown=2.0)
    return Hub([PoolSpec(agent_type="noop", template=template, size=agents, max_size=agents)])


async def _all_idle(hub: Hub, n: int) -> None:
    # Idle = said HELLO and is running: wait until a probe item per agent came back.
    probes = [hub.work.submit("noop", {}) for _ in range(n)]
    while any(hub.work.get(p.id).status != "completed" for p in probes):
        await trio.sleep(0.01)


async def hub_latency(samples: int) -> list[float]:
    hub = _hub(1)
    lat = []
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await _all_idle(hub, 1)
        for _ in range(samples):
            t0 = time.monotonic()
            item = hub.work.submit("noop", {})
            while hub.work.get(item.id).status != "completed":
                await trio.sleep(0)
            lat.append(float(hub.work.get(item.id).result) - t0)
        await hub.stop()
    return lat


async def hub_throughput(agents: int, items: int) -> float:
    hub = _hub(agents)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await _all_idle(hub, agents)
        events = hub.bus.subscribe(kinds=["work_completed"], max_buffer=items + 10)
        t0 = time.monotonic()
        for _ in range(items):
            hub.work.submit("noop", {})
        done = 0
        async for _ in events:
            done += 1
            if done == items:
                break
        rate = items / (time.monotonic() - t0)
        await hub.stop()
    return rate


def _p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--latency", type=int, default=500, help="latency samples")
    args = parser.parse_args()
    # The no-op agents do not heartbeat (nothing to watch); keep the hub's warning quiet.
    logging.getLogger("hubvisor").setLevel(logging.ERROR)

    base = await baseline_latency(args.latency)
    ours = await hub_latency(args.latency)
    print(f"dispatch latency, submit -> agent receipt ({args.latency} samples)")
    print(f"  raw socketpair (floor): p50 {_p(base, 0.5):.3f} ms  p99 {_p(base, 0.99):.3f} ms")
    print(
        f"  hubvisor              : p50 {_p(ours, 0.5):.3f} ms  p99 {_p(ours, 0.99):.3f} ms"
        f"  ({statistics.median(ours) / statistics.median(base):.1f}x the floor)"
    )
    base_rate = await baseline_throughput(args.agents, args.items)
    rate = await hub_throughput(args.agents, args.items)
    print(f"throughput, {args.items} no-op items through {args.agents} agents")
    print(f"  minimal trio dispatcher: {base_rate:,.0f} items/s")
    print(f"  hubvisor               : {rate:,.0f} items/s ({rate / base_rate:.2f}x)")
    print(
        json.dumps(
            {
                "latency_p50_ms": _p(ours, 0.5),
                "latency_floor_p50_ms": _p(base, 0.5),
                "items_per_s": rate,
                "baseline_items_per_s": base_rate,
            }
        )
    )


if __name__ == "__main__":
    trio.run(main)
