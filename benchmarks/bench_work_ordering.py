"""Work dispatch with priorities, delays and keys in use (issue 21), beside the plain
queue in the same run.

Usage: python benchmarks/bench_work_ordering.py [--agents 100] [--items 20000]
[--latency 500] [--delayed 10000]

* Latency: one idle agent; submit an item and time it to the agent's receipt (as
  bench_work.py). Plain: priority 0, no delays. Ordered: the same, with ``--delayed``
  items of the same type waiting an hour (the heap dispatch checks) and each item of a
  random priority from -5 to 5, submitted with an idempotency key of its own.
* Throughput: ``--agents`` no-op agents; submit ``--items`` at once and wait for the last
  completion. Plain, then ordered: random priorities -5..5 and ``--delayed`` items
  waiting an hour, plus a tenth of the items with a 0.2 s delay (they go through the
  delayed heap and the dispatch timer), each with an idempotency key of its own (the key
  index looked up and kept).

The ratio ordered/plain is printed for each (1.0: no cost).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_work import AGENT, _all_idle, _p

from supervisor import ChildSpec, Hub, PoolSpec, WorkService


def _hub(agents: int) -> Hub:
    """bench_work's hub of no-op agents, its queue uncapped (the delayed items count)."""
    template = ChildSpec(id="t", argv=[sys.executable, "-c", AGENT], shutdown=2.0)
    pool = PoolSpec(agent_type="noop", template=template, size=agents, max_size=agents)
    return Hub([pool], work=WorkService(max_queued=None))


async def latency(samples: int, delayed: int, ordered: bool) -> list[float]:
    hub = _hub(1)
    rng = random.Random(1)
    lat = []
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await _all_idle(hub, 1)
        if ordered:
            for _ in range(delayed):
                hub.work.submit("noop", {}, delay=3600)
        for n in range(samples):
            priority = rng.randint(-5, 5) if ordered else 0
            key = {"key": f"lat-{n}"} if ordered else {}
            t0 = time.monotonic()
            item = hub.work.submit("noop", {}, priority=priority, **key)
            while hub.work.get(item.id).status != "completed":
                await trio.sleep(0)
            lat.append(float(hub.work.get(item.id).result) - t0)
        await hub.stop()
    return lat


async def throughput(agents: int, items: int, delayed: int, ordered: bool) -> float:
    hub = _hub(agents)
    rng = random.Random(2)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await _all_idle(hub, agents)
        if ordered:
            for _ in range(delayed):
                hub.work.submit("noop", {}, delay=3600)
        events = hub.bus.subscribe(kinds=["work_completed"], max_buffer=items + 10)
        t0 = time.monotonic()
        for n in range(items):
            if ordered:
                delay = 0.2 if n % 10 == 0 else None
                priority = rng.randint(-5, 5)
                hub.work.submit("noop", {}, priority=priority, delay=delay, key=f"t-{n}")
            else:
                hub.work.submit("noop", {})
        done = 0
        async for _ in events:
            done += 1
            if done == items:
                break
        rate = items / (time.monotonic() - t0)
        await hub.stop()
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--latency", type=int, default=500, help="latency samples")
    parser.add_argument("--delayed", type=int, default=10000, help="items waiting an hour")
    args = parser.parse_args()
    logging.getLogger("hubvisor").setLevel(logging.ERROR)

    plain = await latency(args.latency, args.delayed, ordered=False)
    ordered = await latency(args.latency, args.delayed, ordered=True)
    ratio_lat = statistics.median(ordered) / statistics.median(plain)
    print(f"dispatch latency, submit -> agent receipt ({args.latency} samples)")
    print(f"  plain queue           : p50 {_p(plain, 0.5):.3f} ms  p99 {_p(plain, 0.99):.3f} ms")
    print(
        f"  priorities + keys + {args.delayed} delayed: p50 {_p(ordered, 0.5):.3f} ms  "
        f"p99 {_p(ordered, 0.99):.3f} ms  ({ratio_lat:.2f}x plain)"
    )
    rate_plain = await throughput(args.agents, args.items, args.delayed, ordered=False)
    rate_ordered = await throughput(args.agents, args.items, args.delayed, ordered=True)
    print(f"throughput, {args.items} no-op items through {args.agents} agents")
    print(f"  plain queue           : {rate_plain:,.0f} items/s")
    print(
        f"  priorities + delays + keys: {rate_ordered:,.0f} items/s "
        f"({rate_ordered / rate_plain:.2f}x plain)"
    )
    print(
        json.dumps(
            {
                "latency_p50_ms": _p(plain, 0.5),
                "ordered_latency_p50_ms": _p(ordered, 0.5),
                "items_per_s": rate_plain,
                "ordered_items_per_s": rate_ordered,
            }
        )
    )


if __name__ == "__main__":
    trio.run(main)
